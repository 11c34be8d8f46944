"""``PromptMethod``: the plumbing every prompt method shares.

A method subclass only creates its prompt parameters and says how they enter the backbone (for
input-level methods: ``input_prompt``). This class owns the frozen backbone, the task heads and
losses per format, metrics, the optimizer over trainable tensors only, prompt-only checkpoints,
and export.
"""

from __future__ import annotations

import warnings
from functools import cached_property, partial
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from transformers import AutoTokenizer, get_scheduler
from transformers.modeling_layers import GradientCheckpointingLayer

from ..backbone import (
    ArchitectureFacts,
    backbone_fingerprint,
    load_backbone,
    resolve_path,
)
from ..tasks import get_task
from .checkpointing import PromptCheckpointing
from .divergence import NONFINITE_CHOICES, DivergenceGuard
from .scoring import pool_hidden, sequence_logprobs


class PromptMethod(PromptCheckpointing, DivergenceGuard, LightningModule):
    """Base class of all prompt methods: the backbone is frozen; only prompt-side tensors train.

    Args:
        backbone: hub id, local folder, or ``pkg://package/path`` of a Hugging Face model.
        task: ``classification``, ``ner`` or ``qa`` (linked from the data module).
        task_format: classification: ``head``, ``cloze`` or ``text_to_text``; ner: ``token`` or
            ``text_to_text``; qa: ``span`` or ``text_to_text`` (linked from the data module).
        label_names: the label set, or the tag set for ner (linked from the data module).
        verbalizer_token_ids: cloze only: the vocabulary id standing for each label (linked).
        backbone_dtype: ``float32`` or ``bfloat16`` for the frozen weights; prompts stay float32.
        attn_implementation: ``sdpa``, ``eager``, ``flash_attention_2``...; default: transformers' choice.
        pooling: head format: ``auto`` (first real token for encoders, last for decoders, mean
            for T5), ``first``, ``last`` or ``mean`` over real (non-prompt) tokens.
        head_dropout: dropout before the classifier head.
        backbone_dropout: keep the frozen backbone's own dropout active while training (as PEFT
            does). Off by default: the frozen backbone is then a deterministic feature extractor,
            its step is about 1.6x faster on CPU (no dropout masks, fused attention kernels) and
            needs less memory, at equal SST-2 accuracy (README, Results).
        gradient_checkpointing: recompute the backbone's layer activations in the backward pass
            (transformers' non-reentrant activation checkpointing) to save memory.
        predict_with: text-to-text ``predict``: ``labels`` (rank classification over the label
            words: label and score per example) or ``generate`` (free text from the backbone with
            the prompt in place).
        max_new_tokens: ``generate``: the most tokens generated per example.
        num_beams: ``generate``: 1 for greedy decoding, more for beam search.
        max_answer_tokens: qa span format: the longest answer decoded, in tokens.
        n_best: qa span format: start and end candidates tried per window.
        optimizer: optimizer over the trainable tensors only (default AdamW at ``default_lr``).
        lr_schedule: a ``transformers.get_scheduler`` name: linear, cosine, constant_with_warmup, ...
        warmup_steps: linear warmup steps (overrides ``warmup_ratio`` when > 0).
        warmup_ratio: warmup as a fraction of all training steps.
        nonfinite: a step whose loss or gradients hold NaN or infinity: ``stop`` the run (an error names
            the step and the last finite checkpoint) or ``skip`` it (no update; counted in ``train/skipped_steps``).
    """

    default_lr: float = 1e-3
    # Arguments that say how to run a trained method, not what was trained: a command's own
    # values win over those stored in a checkpoint.
    inference_settings = ("predict_with", "max_new_tokens", "num_beams", "max_answer_tokens", "n_best")

    def __init__(
        self,
        backbone: str,
        task: str = "classification",
        task_format: str = "head",
        label_names: list[str] | None = None,
        verbalizer_token_ids: list[int] | None = None,
        backbone_dtype: str = "float32",
        attn_implementation: str | None = None,
        pooling: str = "auto",
        head_dropout: float = 0.1,
        backbone_dropout: bool = False,
        gradient_checkpointing: bool = False,
        predict_with: str = "labels",
        max_new_tokens: int = 20,
        num_beams: int = 1,
        max_answer_tokens: int = 30,
        n_best: int = 20,
        optimizer: OptimizerCallable | None = None,
        lr_schedule: str = "linear",
        warmup_steps: int = 0,
        warmup_ratio: float = 0.0,
        nonfinite: Literal["stop", "skip"] = "stop",
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        if pooling not in ("auto", "first", "last", "mean"):
            raise ValueError(f"model.init_args.pooling={pooling!r} is not one of auto, first, last, mean")
        if predict_with not in ("labels", "generate"):
            raise ValueError(f"model.init_args.predict_with={predict_with!r} is not one of labels, generate")
        if nonfinite not in NONFINITE_CHOICES:
            raise ValueError(f"model.init_args.nonfinite={nonfinite!r} is not one of {', '.join(NONFINITE_CHOICES)}")
        if not 0 <= warmup_ratio <= 1 or warmup_steps < 0:
            raise ValueError(
                f"model.init_args.warmup_ratio={warmup_ratio} must lie in [0, 1] and warmup_steps={warmup_steps} be >= 0"
            )
        self.backbone = load_backbone(backbone, task_format, backbone_dtype, attn_implementation)
        if gradient_checkpointing:
            if not self.backbone.supports_gradient_checkpointing:
                raise ValueError(f"model.init_args.gradient_checkpointing: {type(self.backbone).__name__} does not support it")
            self.backbone.activation_checkpointing_enable()  # non-reentrant: prompts need no input grads
        # Lightning trains every module in the mode it finds it in (it never calls train()): set the
        # training modes now, on the whole module, through train() below.
        self.facts = ArchitectureFacts.from_config(self.backbone.config)
        self.fingerprint = backbone_fingerprint(backbone, self.backbone)
        self.optimizer_factory = optimizer
        if pooling == "auto":
            pooling = "mean" if self.facts.is_encoder_decoder else "last" if self.facts.is_decoder_only else "first"
        self.pooling = pooling
        self.build_task()
        self.train()

    def build_task(self) -> None:
        """The task, its head and its metrics (a multi-task method builds one of each per task)."""
        h = self.hparams
        self.task = get_task(h.task, h.task_format)
        self.head = self.new_head(h.task_format, h.label_names, h.verbalizer_token_ids, "model.init_args")
        metrics = self.task.metrics(h.label_names)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def new_head(self, task_format: str, label_names: list[str] | None, verbalizer_token_ids: list[int] | None,
                 where: str) -> nn.Module | None:
        """Checks a task's linked settings; returns the classifier over hidden states the format
        needs (a score per label; span: start, end), or None (cloze and text-to-text reuse the LM head)."""
        if not label_names:
            raise ValueError(f"{where}.label_names is empty (the CLI links it from the data module)")
        if task_format == "cloze" and (not verbalizer_token_ids or len(verbalizer_token_ids) != len(label_names)):
            raise ValueError(f"{where}: cloze format needs one verbalizer token id per label (linked from the data module)")
        if self.hparams.predict_with == "generate" and task_format != "text_to_text":
            raise ValueError(f"model.init_args.predict_with='generate' needs task_format text_to_text, not {task_format!r}")
        if task_format not in ("head", "token", "span"):
            return None
        return nn.Sequential(nn.Dropout(self.hparams.head_dropout), nn.Linear(self.facts.hidden_size, len(label_names)))

    # What the task in hand is (a multi-task method answers for the task of the batch in hand).
    @property
    def task_format(self) -> str:
        return self.hparams.task_format

    @property
    def label_names(self) -> list[str]:
        return self.hparams.label_names

    @property
    def verbalizer_token_ids(self) -> list[int] | None:
        return self.hparams.verbalizer_token_ids

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.train(mode and self.hparams.backbone_dropout)
        if mode and self.hparams.gradient_checkpointing:
            # transformers checkpoints a layer only while that layer is in training mode; flag the
            # checkpointed layers alone (not their children, whose attention dropout reads
            # ``self.training``) so that dropout stays as backbone_dropout says.
            for module in self.backbone.modules():
                if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
                    module.training = True
        return self

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self.trainer is not None else None
        # A multi-task data module holds one single-task module per task: check each.
        modules = getattr(datamodule, "modules", None) or ({"": datamodule} if datamodule is not None else {})
        for name, module in modules.items():
            self.check_data(module, f"data.init_args.tasks.{name}" if name else "data.init_args")

    def check_data(self, datamodule, where: str) -> None:
        """The data fits the prompt: template virtual tokens, and text plus prompt within the positions."""
        limit = getattr(self.backbone.config, "max_position_embeddings", None)
        prompt_length = self.input_prompt_length
        in_template = getattr(datamodule, "template_virtual_tokens", 0)
        if in_template and in_template != self.template_prompt_length:
            raise ValueError(
                f"{where}.template has {in_template} virtual tokens ([P:n]); {type(self).__name__} fills "
                f"{self.template_prompt_length} (P-tuning: set model.init_args.num_virtual_tokens={in_template})"
            )
        if limit and datamodule.hparams.max_length + prompt_length > limit:
            raise ValueError(
                f"{where}.max_length={datamodule.hparams.max_length} plus {prompt_length} virtual tokens "
                f"exceeds the {limit} positions of {self.fingerprint['name']!r}: lower max_length"
            )

    # --- what subclasses provide ----------------------------------------------------------------
    input_prompt_length: int = 0  # positions the input prompt takes (checked against the backbone's)
    template_prompt_length: int = 0  # prompt vectors a template's [P:n] markers can take

    def input_prompt(self, input_embeds: Tensor, attention_mask: Tensor) -> Tensor | None:
        """Virtual-token embeddings [batch, P, hidden] to prepend to the input, or None."""
        return None

    def template_prompt(self) -> Tensor | None:
        """Prompt vectors [P, hidden] for the ``[P:n]`` positions of a template (P-tuning), or None
        for methods that cannot place their prompt inside the text."""
        return None

    def install_layer_prompts(self) -> None:
        """Put per-layer prompts in place before a backbone call (deep-prompt methods)."""

    def vocab_embeddings(self, shape: tuple[int, ...]) -> Tensor:
        """Input embeddings (fp32) of random vocabulary tokens, ``[*shape, H]``: prompt vectors of
        the scale the backbone's inputs have. The first ids, which hold padding and special tokens in
        most vocabularies, are skipped."""
        table = self.backbone.get_input_embeddings().weight.detach().float()
        low = min(1000, table.shape[0] // 2)
        return table[torch.randint(low, table.shape[0], shape)].clone()

    # --- forward ----------------------------------------------------------------------------------
    def embed_inputs(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
        virtual_index: Tensor | None = None,
    ) -> dict:
        """Token embeddings with the method's prompt in place (prepended, or at a template's
        virtual positions given by ``virtual_index``), as keyword arguments for the backbone."""
        self.install_layer_prompts()
        embeddings = self.backbone.get_input_embeddings()
        embeds = embeddings(input_ids)
        if virtual_index is not None:
            vectors = self.template_prompt()
            if vectors is None:
                raise ValueError(
                    f"the data template has [P:n] virtual tokens, which {type(self).__name__} cannot fill: use "
                    "PTuning, or a template without them"
                )
            placed = vectors.to(embeds.dtype)[virtual_index.clamp(min=0)]
            embeds = torch.where((virtual_index >= 0).unsqueeze(-1), placed, embeds)
            prompt = None
        else:
            prompt = self.input_prompt(embeds, attention_mask)
        kwargs = {}
        if prompt is not None:
            b, p = prompt.shape[:2]
            embeds = torch.cat([prompt.to(embeds.dtype), embeds], dim=1)
            attention_mask = torch.cat([attention_mask.new_ones(b, p), attention_mask], dim=1)
            if token_type_ids is not None:
                token_type_ids = torch.cat([token_type_ids.new_zeros(b, p), token_type_ids], dim=1)
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.facts.is_decoder_only:
            # Decoders are left-padded: count positions over real tokens only, as generation does.
            kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            kwargs["use_cache"] = False  # a single pass: a cache would only hold tensors longer
        return {"inputs_embeds": embeds, "attention_mask": attention_mask, **kwargs}

    def num_prompt_tokens(self, inputs: dict, input_ids: Tensor) -> int:
        return inputs["inputs_embeds"].shape[1] - input_ids.shape[1]

    def prompted_inputs(self, batch: dict) -> tuple[dict, int]:
        """Backbone keyword arguments of a batch with the prompt in place, and how many positions a
        prepended prompt added in front."""
        inputs = self.embed_inputs(
            batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), batch.get("virtual_index")
        )
        return inputs, self.num_prompt_tokens(inputs, batch["input_ids"])

    def class_logits(self, batch: dict) -> Tensor:
        """[batch, num_labels] scores for head and cloze formats."""
        inputs, shift = self.prompted_inputs(batch)
        if self.task_format == "head":
            hidden = self.backbone(**inputs).last_hidden_state
            real = inputs["attention_mask"].clone()
            real[:, :shift] = 0  # pool over the example's own tokens, not the prompt
            return self.head(pool_hidden(hidden, real, self.pooling).float())
        logits = self.backbone(**inputs).logits  # cloze: masked-LM logits
        at_mask = logits[torch.arange(logits.shape[0], device=logits.device), batch["mask_index"] + shift]
        return at_mask[:, self.verbalizer_token_ids].float()

    def token_logits(self, batch: dict) -> Tensor:
        """[batch, seq, num_labels] scores of every input token (virtual positions removed)."""
        inputs, shift = self.prompted_inputs(batch)
        hidden = self.backbone(**inputs).last_hidden_state[:, shift:]
        return self.head(hidden).float()

    def sequence_scores(self, seqs: dict, reduction: str) -> Tensor:
        """Text-to-text: log-probability of each row's target tokens (sum or mean over tokens)."""
        inputs = self.embed_inputs(seqs["input_ids"], seqs["attention_mask"], virtual_index=seqs.get("virtual_index"))
        targets = seqs["target_ids"]
        if self.facts.is_encoder_decoder:
            decoder_inputs = self.backbone.prepare_decoder_input_ids_from_labels(targets)
            logits = self.backbone(**inputs, decoder_input_ids=decoder_inputs, use_cache=False).logits
        else:
            # Targets end every (left-padded) row: only the last positions need vocabulary logits.
            keep = int((targets != -100).sum(-1).max()) + 1
            logits = self.backbone(**inputs, logits_to_keep=keep).logits[:, :-1]
            targets = targets[:, -(keep - 1) :]
        return sequence_logprobs(logits.float(), targets, reduction)

    def scores(self, batch: dict) -> Tensor:
        """[batch, num_labels] scores in every format (rank classification for text-to-text)."""
        if self.task_format != "text_to_text":
            return self.class_logits(batch)
        return self.sequence_scores(batch["candidates"], "sum").view(len(batch["ids"]), -1)

    def training_loss(self, batch: dict) -> Tensor:
        if self.task_format == "text_to_text":  # every task: the target text's mean token loss
            loss = -self.sequence_scores(batch, "token_mean")
        else:
            loss = self.task.loss(self, batch)
        extra = self.auxiliary_loss()
        return loss if extra is None else loss + extra

    def auxiliary_loss(self) -> Tensor | None:
        """A method's own loss term from the last forward (e.g. a prompt pool's key-pull loss)."""
        return None

    # --- Lightning steps ----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.task.update(self, batch, self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.task.update(self, batch, self.test_metrics)

    def _log_metrics(self, metrics) -> None:
        # compute() gathers the metric states of every process (sums), so the values are global.
        self.log_dict(self.finite_or_nan(metrics.compute()), prog_bar=True, rank_zero_only=False)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        return self.task.predict(self, batch)

    @property
    def monitor(self) -> str:
        """The validation metric that picks the best checkpoint by default."""
        return self.task.monitor

    def generate(self, inputs: dict, **generate_kwargs) -> list[str]:
        """Generated continuations (decoder) or outputs (T5) of a batch's ``source`` inputs
        (input_ids, attention_mask, optional virtual_index) with the prompt in place, as text."""
        ids = self.generate_ids(inputs["input_ids"], inputs["attention_mask"], inputs.get("virtual_index"), **generate_kwargs)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def generate_ids(
        self, input_ids: Tensor, attention_mask: Tensor, virtual_index: Tensor | None = None, **generate_kwargs
    ) -> Tensor:
        """Token ids generated with the prompt in place: only the new tokens for decoders, the
        decoder output (from its start token) for T5. Greedy or beam search per ``num_beams``."""
        tokenizer = self.tokenizer
        inputs = self.embed_inputs(input_ids, attention_mask, virtual_index=virtual_index)
        inputs.pop("position_ids", None)  # generate derives them from the mask exactly as embed_inputs does
        inputs.pop("use_cache", None)
        settings = {
            "max_new_tokens": self.hparams.max_new_tokens,
            "num_beams": self.hparams.num_beams,
            "do_sample": False,
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            **generate_kwargs,
        }
        return self.backbone.generate(**inputs, **settings)

    @cached_property
    def tokenizer(self):
        return AutoTokenizer.from_pretrained(resolve_path(self.hparams.backbone))

    # --- optimisation -------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        factory = self.optimizer_factory or partial(torch.optim.AdamW, lr=self.default_lr)
        try:
            optimizer = factory(self.trainable_parameters())
        except ValueError as error:  # torch's message names no setting: "Invalid learning rate: 0"
            raise ValueError(f"model.init_args.optimizer: {error} (check its init_args, e.g. lr > 0)") from None
        rates = [float(group["lr"]) for group in optimizer.param_groups if "lr" in group]
        if any(not rate > 0 for rate in rates):  # a zero rate trains nothing, silently
            raise ValueError(f"model.init_args.optimizer: lr={rates[0]} must be > 0")
        total = self.trainer.estimated_stepping_batches
        warmup = self.hparams.warmup_steps or int(self.hparams.warmup_ratio * total)
        scheduler = get_scheduler(self.hparams.lr_schedule, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.parameters())
        report = {"params/trainable": trainable, "params/total": total, "params/saved_pct": 100 * (1 - trainable / total)}
        rank_zero_info(
            f"{type(self).__name__} on {self.fingerprint['name']}: {trainable:,} trainable of {total:,} parameters "
            f"({report['params/saved_pct']:.2f}% saved versus fine-tuning everything)"
        )
        if self.logger is not None:
            self.logger.log_metrics(report, step=0)
        if not self.hparams.backbone_dropout:
            # The frozen backbone runs in eval mode on purpose (no dropout); Lightning's warning about
            # modules in eval mode at the start of training would only alarm on every run.
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
