"""Multi-task prompt tuning: one set of shared prompts trained on several tasks at once, on one
frozen backbone, in one run. Each task keeps its own small head (where its format needs one), its
own metrics (logged under its name) and a task-specific way of reading the shared prompts:

  mpt       (Wang et al. 2023, "Multitask Prompt Tuning") prompt_t = P ⊙ (u_t v_tᵀ): a shared prompt
            P [P, H] times a task's rank-r matrix, u_t [P, r], v_t [H, r]. P can start from a trained
            single-task prompt (``init_prompt``: an exported ``PromptTuning`` / ``PTuning`` folder).
  selector  a shared pool p_1..p_K [K, P, H] read per example through the task's selector:
            S_t(x) = softmax(W_t E(x) + b_t), prompt_t(x) = Σ_i S_t,i(x) p_i, with a shared query
            encoder E(x) = tanh(W_e x̄ + b_e) [d] over the mean input embedding x̄.

With ``placement: layers`` every prompt has a [P, H] slice per self-attention layer (shared prompt
[L, P, H], pool [K, L, P, H]) entering each layer as its key/value prefix like P-tuning v2's deep
prompts; the task matrix u_t v_tᵀ scales every layer's slice.

Trainable (L = 1 for ``placement: input``): mpt: L·P·H + T·r·(P + H); selector: K·L·P·H + d·H + d +
T·(K·d + K); plus each task's head (H·n_t + n_t for n_t labels, tags or span ends). The loss of a
batch of task t is α_t L_t.

Batches of one task (training, validation) carry ``batch["task"]``; a predict batch that mixes tasks
(``MultiTaskDataModule`` with ``predict_files``) carries one sub-batch per task, each run with its
task's prompt and head and the rows put back in input order.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..prefix_injection import PrefixInjector
from ..safe_reading import read_prompt_folder
from ..tasks import get_task
from .base import PromptMethod
from .checkpointing import PROMPT_FILE
from .scoring import pool_hidden

VARIANTS = ("mpt", "selector")
PLACEMENTS = ("input", "layers")
# Formats that load the same form of the backbone, so several tasks can share it.
BACKBONE_KINDS = {"head": "encoder", "token": "encoder", "span": "encoder", "text_to_text": "lm", "cloze": "masked_lm"}


class MultiTaskPromptTuning(PromptMethod):
    """Shared prompts for several tasks (``variant``: ``mpt`` or ``selector``, see the module docstring).

    Args:
        task_specs: task name -> {task, task_format, label_names, verbalizer_token_ids} (linked from
            the ``MultiTaskDataModule``).
        variant: ``mpt`` or ``selector``.
        num_virtual_tokens: prompt length P.
        placement: ``input`` (prepended to the embeddings) or ``layers`` (every self-attention layer).
        rank: mpt: r of the task matrices u_t v_tᵀ.
        init_prompt: mpt: folder of an exported single-task prompt that starts P: a ``PromptTuning``
            or ``PTuning`` prompt [P, H] (placement input), a ``PTuningV2`` one [L, P, H] (layers).
        pool_size: selector: K prompts in the shared pool.
        selector_hidden_size: selector: d, the width of the query encoder E(x).
        loss_weights: task name -> α_t (default 1 for every task).
        **kwargs: see ``PromptMethod``.
    """

    default_lr = 3e-2

    def __init__(self, task_specs: dict[str, dict] | None = None, variant: str = "mpt", num_virtual_tokens: int = 20,
                 placement: str = "input", rank: int = 1, init_prompt: str | None = None, pool_size: int = 8, selector_hidden_size: int = 128,
                 loss_weights: dict[str, float] | None = None, **kwargs):
        if not task_specs:
            raise ValueError("model.init_args.task_specs is empty (the CLI links it from a MultiTaskDataModule)")
        kinds = {name: BACKBONE_KINDS.get(spec.get("task_format")) for name, spec in task_specs.items()}
        if len(set(kinds.values())) != 1:
            raise ValueError(
                f"the tasks need different forms of the backbone ({kinds}): use formats that share one "
                "(head / token / span, or all text_to_text, or all cloze)"
            )
        if variant not in VARIANTS:
            raise ValueError(f"model.init_args.variant={variant!r} is not one of {VARIANTS}")
        if placement not in PLACEMENTS:
            raise ValueError(f"model.init_args.placement={placement!r} is not one of {PLACEMENTS}")
        unknown = set(loss_weights or {}) - set(task_specs)
        if unknown:
            raise ValueError(f"model.init_args.loss_weights names tasks {sorted(unknown)} that are not in {sorted(task_specs)}")
        if num_virtual_tokens < 1 or rank < 1 or pool_size < 1:
            raise ValueError("model.init_args.num_virtual_tokens, rank and pool_size must be >= 1")
        first = next(iter(task_specs.values()))
        # The backbone is loaded once, in the form the (first) task's format needs.
        kwargs.update(task=first["task"], task_format=first["task_format"], label_names=first["label_names"])
        self.active_task: str | None = None
        super().__init__(**kwargs)
        hidden, length = self.facts.hidden_size, num_virtual_tokens
        names = list(task_specs)
        self.injector = PrefixInjector(self.backbone) if placement == "layers" else None
        layers = () if self.injector is None else (len(self.injector),)
        if variant == "mpt":
            self.shared_prompt = nn.Parameter(self._initial_prompt((*layers, length), init_prompt))
            # u_t v_tᵀ starts near all-ones (the shared prompt unchanged); the noise lets the r
            # components of a task differ.
            scale = 1 / math.sqrt(rank)
            self.task_u = nn.ParameterDict({t: nn.Parameter(scale * (1 + 0.02 * torch.randn(length, rank))) for t in names})
            self.task_v = nn.ParameterDict({t: nn.Parameter(scale * (1 + 0.02 * torch.randn(hidden, rank))) for t in names})
        else:
            if init_prompt:
                raise ValueError("model.init_args.init_prompt is for variant 'mpt'")
            self.pool = nn.Parameter(self.vocab_embeddings((pool_size, *layers, length)))
            self.query_encoder = nn.Linear(hidden, selector_hidden_size)
            self.selectors = nn.ModuleDict({t: nn.Linear(selector_hidden_size, pool_size) for t in names})
        if placement == "input":
            self.input_prompt_length = length

    def _initial_prompt(self, shape: tuple[int, ...], folder: str | None) -> Tensor:
        if not folder:
            return self.vocab_embeddings(shape)
        path = Path(folder) / PROMPT_FILE
        if not path.exists():
            raise FileNotFoundError(f"model.init_args.init_prompt: {path} does not exist (export a trained prompt first)")
        _, tensors = read_prompt_folder(folder)
        names = ("prompt", "prompt_embedding") if len(shape) == 1 else ("deep_prompts",)
        found = [tensors[k] for k in names if k in tensors]
        if not found:
            raise ValueError(
                f"{path} holds no prompt for placement {self.hparams.placement!r} (tensors {sorted(tensors)}): "
                "export PromptTuning or PTuning for 'input', PTuningV2 for 'layers'"
            )
        wanted = (*shape, self.facts.hidden_size)
        if tuple(found[0].shape) != wanted:
            raise ValueError(
                f"{path}: prompt of shape {tuple(found[0].shape)}; this run needs {wanted} "
                "(set model.init_args.num_virtual_tokens, and use the same backbone)"
            )
        return found[0].float().clone()

    # --- one task, head and metrics per named task -------------------------------------------------
    def build_task(self) -> None:
        specs = self.hparams.task_specs
        self.tasks = {name: get_task(s["task"], s["task_format"]) for name, s in specs.items()}
        heads = {}
        for name, s in specs.items():
            head = self.new_head(s["task_format"], s.get("label_names"), s.get("verbalizer_token_ids"),
                                 f"model.init_args.task_specs.{name}")
            if head is not None:
                heads[name] = head
        self.heads = nn.ModuleDict(heads)
        self.val_metrics = nn.ModuleDict(
            {n: t.metrics(specs[n]["label_names"]).clone(prefix=f"val/{n}/") for n, t in self.tasks.items()}
        )
        self.test_metrics = nn.ModuleDict(
            {n: t.metrics(specs[n]["label_names"]).clone(prefix=f"test/{n}/") for n, t in self.tasks.items()}
        )

    @contextmanager
    def routed(self, task: str):
        """Within the block, prompt, head, format and labels are those of ``task``."""
        if task not in self.tasks:
            raise KeyError(f"task {task!r} is not one of the trained tasks {list(self.tasks)}")
        previous, self.active_task = self.active_task, task
        try:
            yield
        finally:
            self.active_task = previous

    def _spec(self, key: str):
        if self.active_task is None:
            raise RuntimeError("no task in hand: call inside `with method.routed(task):`")
        return self.hparams.task_specs[self.active_task].get(key)

    @property
    def task(self):
        return self.tasks[self.active_task]

    @property
    def task_format(self) -> str:
        return self._spec("task_format")

    @property
    def label_names(self) -> list[str]:
        return self._spec("label_names")

    @property
    def verbalizer_token_ids(self) -> list[int] | None:
        return self._spec("verbalizer_token_ids")

    @property
    def head(self) -> nn.Module | None:
        return self.heads[self.active_task] if self.active_task in self.heads else None

    # --- the prompt of the task in hand -----------------------------------------------------------
    def task_prompt(self, input_embeds: Tensor, attention_mask: Tensor) -> Tensor:
        """mpt: [(L,) P, H], one for the whole batch; selector: [B, (L,) P, H], one per example."""
        t = self.active_task
        if self.hparams.variant == "mpt":
            return self.shared_prompt * (self.task_u[t] @ self.task_v[t].T)  # the task matrix scales every layer
        return torch.einsum("bk,k...->b...", self.selection(input_embeds, attention_mask), self.pool)

    def selection(self, input_embeds: Tensor, attention_mask: Tensor) -> Tensor:
        """Selector variant: S_t(x) [B, K], each row summing to one."""
        query = torch.tanh(self.query_encoder(pool_hidden(input_embeds.float(), attention_mask, "mean")))
        return self.selectors[self.active_task](query).softmax(-1)

    def input_prompt(self, input_embeds: Tensor, attention_mask: Tensor) -> Tensor | None:
        prompt = self.task_prompt(input_embeds, attention_mask)
        per_example = self.hparams.variant == "selector"
        if self.injector is None:
            return prompt if per_example else prompt.unsqueeze(0).expand(input_embeds.shape[0], -1, -1)
        kv_heads = self.facts.num_key_value_heads
        self.injector.set([
            self.injector.project(layer, prompt[:, layer] if per_example else prompt[layer], kv_heads)
            for layer in range(len(self.injector))
        ])
        return None

    # --- Lightning steps ----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        task = batch["task"]
        with self.routed(task):
            loss = self.training_loss(batch)
        weight = (self.hparams.loss_weights or {}).get(task, 1.0)
        size = len(batch["ids"])
        self.log(f"train/{task}/loss", loss, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return weight * loss

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        with self.routed(batch["task"]):
            self.task.update(self, batch, self.val_metrics[batch["task"]])

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        with self.routed(batch["task"]):
            self.task.update(self, batch, self.test_metrics[batch["task"]])

    def _log_task_metrics(self, metrics: nn.ModuleDict, stage: str) -> None:
        # Each task's own metrics under its name, and the macro average of the tasks' monitored
        # metrics (on a 0-1 scale) to pick checkpoints by.
        monitored = []
        for name, collection in metrics.items():
            if not any(m.update_called for m in collection.values()):
                continue  # no data for this task in this stage
            values = collection.compute()
            self.log_dict(values, rank_zero_only=False)
            task = self.tasks[name]
            key = f"{stage}/{name}/{task.monitor.split('/', 1)[1]}"
            monitored.append(values[key] * task.monitor_scale)
            collection.reset()
        if monitored:
            self.log(f"{stage}/macro", torch.stack(monitored).mean(), prog_bar=True, rank_zero_only=False)

    def on_validation_epoch_end(self) -> None:
        self._log_task_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_task_metrics(self.test_metrics, "test")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        return predict_mixed(batch, self.predict_task)

    def predict_task(self, task: str, batch: dict) -> list[dict]:
        with self.routed(task):
            return self.task.predict(self, batch)

    @property
    def monitor(self) -> str:
        return "val/macro"

    # --- DDP: a step of one task leaves the other tasks' tensors unused -----------------------------
    uses_parameters_per_task = True

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # By now the strategy has wrapped the module; a DDP wrapper that does not look for unused
        # parameters would wait forever for the gradients of the tasks a batch does not hold.
        wrapper = self.trainer.strategy.model
        if isinstance(wrapper, DistributedDataParallel) and not wrapper.find_unused_parameters:
            raise ValueError(
                "MultiTaskPromptTuning trains per-task tensors that a batch of another task leaves unused: use "
                "trainer.strategy 'ddp_find_unused_parameters_true' (the CLI picks it for strategy 'ddp')"
            )


def predict_mixed(batch: dict, predict_task) -> list[dict]:
    """Rows of a predict batch, each predicted by ``predict_task(task, sub_batch)`` for its own task,
    in the batch's order and naming their task. A batch of one task (``batch["task"]``) works too."""
    if "task_batches" not in batch:
        batch = {"task_batches": {batch["task"]: batch}, "positions": {batch["task"]: list(range(len(batch["ids"])))}}
    rows: dict[int, dict] = {}
    for task, sub_batch in batch["task_batches"].items():
        for position, row in zip(batch["positions"][task], predict_task(task, sub_batch)):
            rows[position] = {"task": task, **row}
    return [rows[i] for i in sorted(rows)]
