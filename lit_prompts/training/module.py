"""``PromptMethod``: the LightningModule that wires a prompt module, a ``PromptedBackbone`` and one
task format per task, and trains the prompt side only.

A method subclass (``PromptTuning``, ...) declares its settings and sets ``self.prompt`` to its
prompt module; everything else (steps, metrics, optimizer over trainable tensors only, prompt-only
checkpoints, export) is here. Data flows one way: prompt → backbone → task format → loss.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Literal

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from transformers import get_scheduler

from ..backbone import declared_pooling
from ..formats import BACKBONE_FORMS, Task, TaskFormat
from ..methods.base import NoPrompt
from ..prompted import Prompted, share_hidden_states
from ..prompted_backbone import PromptedBackbone
from ..sharding import builds_on_meta, is_sharded, shard_method, unsharded_class
from ..tasks import build_format
from ..tasks.classification import Pooling
from .arguments import check_choices
from .checkpointing import PromptCheckpointing
from .divergence import DivergenceGuard
from .evaluation import EvaluationHooks
from .init_from import start_from
from .legacy import refuse_old_hooks


def apply_lr_scales(optimizer: torch.optim.Optimizer) -> None:
    """Each group's ``lr_scale`` (``PromptMethod.parameter_groups``) multiplies its rate and leaves the group,
    so that the optimizer's state, which checkpoints hold, keeps plain values only."""
    for group in optimizer.param_groups:
        if "lr" in group:
            group["lr"] = group["lr"] * float(group.pop("lr_scale", 1.0))


class PromptMethod(PromptCheckpointing, DivergenceGuard, EvaluationHooks, LightningModule):
    """Base of all prompt methods: the backbone is frozen; only prompt-side tensors (and heads) train.

    Args:
        backbone: hub id, local folder, or ``pkg://package/path`` of a Hugging Face model.
        task: the task (linked from the data module).
        task_format: classification: ``head``, ``cloze`` or ``text_to_text``; ner: ``token`` or
            ``text_to_text``; qa: ``span`` or ``text_to_text`` (linked from the data module).
        label_names: the label set, or the tag set for ner (linked from the data module).
        verbalizer_token_ids: cloze only: the vocabulary id standing for each label (linked).
        backbone_dtype: the frozen weights' dtype; prompts and heads stay float32.
        quantization: load the frozen linear layers in ``4bit`` (NF4) or ``8bit`` through bitsandbytes
            (CUDA GPUs; extra ``quantization``); prompts and heads stay float32.
        attn_implementation: ``sdpa``, ``eager``, ``flash_attention_2``...; default: transformers' choice.
        prefix_positions: how real tokens are numbered beside a layer prefix (prefix tuning, P-tuning
            v2): ``none``, the prefix takes no positions and the text keeps 0..T-1, as without a prompt;
            ``first``, the prefix takes the first P and the text P..P+T-1, as PEFT's prefix tuning (a
            key/value cache) does: exports to PEFT's format are then exact. Decoders, BERT- and
            RoBERTa-style encoders.
        init_from: start the prompt (and, from a lit_prompts export of the same task, its heads) from
            a trained one: an exported folder, a PEFT adapter folder, a checkpoint or a Hub repo id
            (``org/name@revision``). The prompt must be plain (``reparameterize: false``, P-tuning
            ``encoder: none``) and of the same shape.
        pooling: head format: ``first``, ``last`` or ``mean`` over the text's real tokens; ``backbone`` (default):
            the pooling a sentence-transformers backbone was trained with (its Pooling module's config: CLS,
            mean or last token), else ``auto``: the last real token for decoders, the first for encoders (T5's
            encoder too: a head loads it alone). On all-MiniLM-L6-v2, trained to give mean-pooled sentence
            vectors, mean pooling lifted every method on SST-2 (docs/results.md, "The head's pooling"). Saved
            settings hold the pooling chosen.
        head_dropout: dropout before the classifier head.
        backbone_dropout: keep the frozen backbone's own dropout active while training (as PEFT
            does). Off by default: the frozen backbone is then a deterministic feature extractor,
            about 1.6x faster per CPU step, at equal SST-2 accuracy (docs/results.md).
        gradient_checkpointing: recompute the backbone's layer activations in the backward pass.
        predict_with: text-to-text classification ``predict``: ``labels`` (rank classification over
            the label words) or ``generate`` (free text).
        max_new_tokens: generation: the most tokens generated per example.
        num_beams: generation: 1 for greedy decoding, more for beam search.
        max_answer_tokens: qa span format: the longest answer decoded, in tokens.
        n_best: qa span format: start and end candidates tried per window.
        optimizer: optimizer over the trainable tensors only (default AdamW at ``default_lr``).
        lr_schedule: a ``transformers.get_scheduler`` name: linear, cosine, constant_with_warmup, ...
        warmup_steps: linear warmup steps (overrides ``warmup_ratio`` when > 0).
        warmup_ratio: warmup as a fraction of all training steps, in [0, 1].
        nonfinite: a step whose loss or gradients hold NaN or infinity: ``stop`` the run (an error names
            the step and the last finite checkpoint) or ``skip`` it (no update; counted in ``train/skipped_steps``).
    """

    default_lr: float = 1e-3
    # Arguments that say how to run a trained method, not what was trained: a command's own
    # values win over those stored in a checkpoint.
    inference_settings = ("predict_with", "max_new_tokens", "num_beams", "max_answer_tokens", "n_best")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        refuse_old_hooks(cls)

    @classmethod
    def default_lr_on(cls, facts) -> float:
        """The default learning rate on a backbone of these ``ArchitectureFacts`` (most methods: one rate)."""
        return cls.default_lr

    def __init__(
        self,
        backbone: str,
        task: Task = "classification",
        task_format: TaskFormat = "head",
        label_names: list[str] | None = None,
        verbalizer_token_ids: list[int] | None = None,
        backbone_dtype: Literal["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] = "float32",
        quantization: Literal["4bit", "8bit"] | None = None,
        attn_implementation: str | None = None,
        prefix_positions: Literal["none", "first"] = "none",
        init_from: str | None = None,
        pooling: Pooling = "backbone",
        head_dropout: float = 0.1,
        backbone_dropout: bool = False,
        gradient_checkpointing: bool = False,
        predict_with: Literal["labels", "generate"] = "labels",
        max_new_tokens: PositiveInt = 20,
        num_beams: PositiveInt = 1,
        max_answer_tokens: PositiveInt = 30,
        n_best: PositiveInt = 20,
        optimizer: OptimizerCallable | None = None,
        lr_schedule: str = "linear",
        warmup_steps: NonNegativeInt = 0,
        warmup_ratio: float = 0.0,
        nonfinite: Literal["stop", "skip"] = "stop",
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        check_choices(type(self), self.hparams)
        if not 0 <= warmup_ratio <= 1 or warmup_steps < 0:
            raise ValueError(f"warmup_ratio={warmup_ratio} must lie in [0, 1] and warmup_steps={warmup_steps} be >= 0")
        specs = self.task_specs()
        forms = {name: BACKBONE_FORMS.get(spec.get("task_format")) for name, spec in specs.items()}
        if len(set(forms.values())) != 1:
            raise ValueError(f"the tasks need different forms of the backbone ({forms}): use formats that share one "
                             "(head / token / span, or all text_to_text, or all cloze)")
        first_format = next(iter(specs.values()))["task_format"]
        self.backbone = PromptedBackbone.load(backbone, first_format, backbone_dtype, attn_implementation,
                                              on_meta=builds_on_meta(), quantization=quantization)
        if gradient_checkpointing:
            if not self.backbone.model.supports_gradient_checkpointing:
                raise ValueError(f"gradient_checkpointing: {type(self.backbone.model).__name__} does not support it")
            self.backbone.model.activation_checkpointing_enable()  # non-reentrant: prompts need no input grads
        if prefix_positions == "first":
            self.backbone.check_prefix_positions()
        self.optimizer_factory = optimizer
        facts = self.backbone.facts
        # Saved settings hold the pooling chosen, not the rule: a later load reads no other backbone's files.
        pooling = self.record_choice("pooling", self.head_pooling(pooling, specs.values()))
        settings = {k: self.hparams[k] for k in (*self.inference_settings, "head_dropout")}
        self.formats = nn.ModuleDict({
            name: build_format(s["task"], s["task_format"], s.get("label_names"), facts.hidden_size, self.where(name),
                               verbalizer_token_ids=s.get("verbalizer_token_ids"), pooling=pooling, **settings)
            for name, s in specs.items()
        })
        self.val_metrics = nn.ModuleDict({n: f.metrics().clone(prefix=self.metric_prefix("val", n)) for n, f in self.formats.items()})
        self.test_metrics = nn.ModuleDict({n: f.metrics().clone(prefix=self.metric_prefix("test", n)) for n, f in self.formats.items()})
        self.prompt: nn.Module = NoPrompt()  # a method sets its own
        self.started_from: str | None = None  # where init_from's values came from, once loaded
        # Lightning trains every module in the mode it finds it in: set the training modes now.
        self.train()

    def record_choice(self, setting: str, value):
        """Write what a rule chose for ``setting`` (``pooling: backbone``, P-tuning's ``encoder: null``) into the
        hyperparameters, the initial ones included, so checkpoints, exports and the loggers' ``hparams.yaml``
        all show the choice; returns ``value``."""
        self.hparams[setting] = value
        self.save_hyperparameters(self.hparams)  # (Lightning's public way to renew ``hparams_initial``)
        return value

    def head_pooling(self, pooling: Pooling, specs) -> str:
        """``first``, ``last`` or ``mean``: ``pooling`` itself, or what ``backbone`` and ``auto`` choose here."""
        if pooling == "backbone":
            heads = any(s["task_format"] == "head" for s in specs)  # (other formats pool nothing: read no files)
            declared = declared_pooling(self.hparams.backbone) if heads else None
            pooling = declared or "auto"
        if pooling == "auto":
            facts = self.backbone.facts
            pooling = "mean" if facts.is_encoder_decoder else "last" if facts.is_decoder_only else "first"
        return pooling

    # --- tasks ------------------------------------------------------------------------------------
    def task_specs(self) -> dict[str, dict]:
        """Task name -> {task, task_format, label_names, verbalizer_token_ids}: one task, named by
        its task (a multi-task method returns several)."""
        h = self.hparams
        return {h.task: {"task": h.task, "task_format": h.task_format, "label_names": h.label_names,
                         "verbalizer_token_ids": h.verbalizer_token_ids}}

    @property
    def is_multitask(self) -> bool:
        return False

    def where(self, task: str) -> str:
        return f"model.init_args.task_specs.{task}" if self.is_multitask else "model.init_args"

    @property
    def default_task(self) -> str:
        return next(iter(self.formats))

    def task_of(self, batch: dict) -> str:
        task = batch.get("task", self.default_task)
        if task not in self.formats:
            raise KeyError(f"task {task!r} is not one of the trained tasks {list(self.formats)}")
        return task

    def prompted(self, task: str) -> Prompted:
        """The prompt on the backbone for ``task``, as task formats read it."""
        return Prompted(self.backbone, self.prompt, task, self.hparams.get("prefix_positions", "none"))

    # Backwards-friendly views of the (first) task.
    @property
    def fingerprint(self) -> dict:
        return self.backbone.fingerprint

    @property
    def facts(self):
        return self.backbone.facts

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    @property
    def monitor(self) -> str:
        """The validation metric that picks the best checkpoint by default."""
        return "val/macro" if self.is_multitask else self.formats[self.default_task].monitor

    def prompt_length(self) -> int:
        """Positions the prompt puts in front of an input (its output for a one-token input)."""
        # On the backbone's device: Lightning calls ``setup`` (which asks this) with ``self.device``
        # already the accelerator's while the weights are still on the CPU.
        weights = self.backbone.model.get_input_embeddings().weight
        ids = torch.zeros(1, 1, dtype=torch.long, device=self.device if weights.is_meta else weights.device)
        with torch.no_grad():
            context = self.backbone.context({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, self.default_task)
            return self.prompt(context).prepended

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.train(mode and self.hparams.backbone_dropout)
        if mode and self.hparams.gradient_checkpointing:
            self.backbone.keep_checkpointing_active()
        return self

    # --- steps ------------------------------------------------------------------------------------
    def training_loss(self, batch: dict) -> Tensor:
        """The batch's task loss plus the prompt's own loss term, if any."""
        task = self.task_of(batch)
        run = self.prompted(task)
        loss = self.formats[task].loss(run, batch)
        return loss if run.aux_loss is None else loss + run.aux_loss

    def forward(self, batch: dict, run: Literal["loss", "evaluate", "predict"] = "loss", metrics=None):
        """One batch through prompt → backbone → task format: its training ``loss``, an ``evaluate``
        update of ``metrics`` (a ModuleDict by task), or the ``predict`` rows. Every step enters the
        model here, so that under FSDP the root unit (prompt and heads) is gathered around it."""
        if run == "loss":
            return self.training_loss(batch)
        if run == "evaluate":
            task = self.task_of(batch)
            return self.formats[task].update(self.prompted(task), batch, metrics[task])
        if "task_batches" in batch:
            return self.predict_mixed(batch)
        task = self.task_of(batch)
        rows = self.formats[task].predict(self.prompted(task), batch)
        return [{"task": task, **row} for row in rows] if self.is_multitask else rows

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        task, loss = self.task_of(batch), self(batch)
        size = len(batch["ids"])
        if self.is_multitask:
            self.log(f"train/{task}/loss", loss, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return self.loss_weight(task) * loss

    def loss_weight(self, task: str) -> float:
        return 1.0

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self(batch, "evaluate", self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self(batch, "evaluate", self.test_metrics)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        return self(batch, "predict")

    def predict_mixed(self, batch: dict) -> list[dict]:
        """A batch mixing tasks (``task_batches``, ``positions``): the tasks whose formats read hidden
        states share one backbone call with per-row prompts; rows come back in input order."""
        runs = {task: self.prompted(self.task_of({"task": task})) for task in batch["task_batches"]}
        share_hidden_states(runs, batch["task_batches"], [t for t in runs if self.formats[t].reads == "hidden"])
        rows = {}
        for task, sub_batch in batch["task_batches"].items():
            for position, row in zip(batch["positions"][task], self.formats[task].predict(runs[task], sub_batch)):
                rows[position] = {"task": task, **row}
        return [rows[i] for i in sorted(rows)]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            # Before configure_model shards anything (rank 0's values then reach every shard); a resumed
            # run's checkpoint replaces these values afterwards.
            self.apply_init_from()

    def apply_init_from(self) -> None:
        """Start the prompt (and fitting heads) from ``init_from``, once."""
        if self.hparams.get("init_from") and not self.started_from:
            self.started_from = start_from(self, self.hparams.init_from)

    def configure_model(self) -> None:
        """Under a sharding strategy (``ShardedPromptStrategy``: Lightning hands it a device mesh),
        shard the frozen backbone with FSDP; elsewhere the model is complete as built."""
        if self.device_mesh is not None and not is_sharded(self):
            shard_method(self, self.backbone, self.device_mesh["data_parallel"])

    # --- optimisation -----------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self) -> list[dict]:
        """The optimizer's parameter groups: ``{"params": [...], "lr_scale": s}``, where ``lr_scale``
        (default 1) multiplies the optimizer's learning rate for that group. One group by default; a
        method whose parameters move its prompt at different speeds per step gives them their own."""
        return [{"params": self.trainable_parameters()}]

    def configure_optimizers(self):
        factory = self.optimizer_factory or partial(torch.optim.AdamW, lr=self.default_lr)
        try:
            optimizer = factory(self.parameter_groups())
        except ValueError as error:  # torch's message names no setting: "Invalid learning rate: 0"
            raise ValueError(f"model.init_args.optimizer: {error} (check its init_args, e.g. lr > 0)") from None
        rates = [float(group["lr"]) for group in optimizer.param_groups if "lr" in group]
        if any(not rate > 0 for rate in rates):  # a zero rate trains nothing, silently
            raise ValueError(f"model.init_args.optimizer: lr={rates[0]} must be > 0")
        apply_lr_scales(optimizer)  # before the scheduler reads each group's base rate
        total = self.trainer.estimated_stepping_batches
        warmup = self.hparams.warmup_steps or int(self.hparams.warmup_ratio * total)
        scheduler = get_scheduler(self.hparams.lr_schedule, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        self.record_initial_prompt()  # drift from the initialisation (lit_prompts.inspection)
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.parameters())
        report = {"params/trainable": trainable, "params/total": total, "params/saved_pct": 100 * (1 - trainable / total)}
        rank_zero_info(
            f"{unsharded_class(type(self)).__name__} on {self.fingerprint['name']}: {trainable:,} trainable of {total:,} parameters "
            f"({report['params/saved_pct']:.2f}% saved versus fine-tuning everything)"
        )
        if self.logger is not None:
            self.logger.log_metrics(report, step=0)
        if not self.hparams.backbone_dropout:
            # The frozen backbone runs in eval mode on purpose (no dropout); Lightning's warning about
            # modules in eval mode at the start of training would only alarm on every run.
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
