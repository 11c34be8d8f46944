"""Collapse: validations whose predictions are trivial (one class for every example or right no more often
than that, no entity at all, every answer empty or the same) are a failed run even when nothing crashed. ``CollapseDetector`` warns
once when that lasts ``patience`` validations in a row, and prints it again when fit ends.

It reads what the validation metrics already counted (each task format's ``trivial_predictions``: a
few states summed over processes, before the method resets them), so it decodes nothing twice.
"""

from __future__ import annotations

import sys
import typing
import warnings

from jsonargparse.typing import PositiveInt
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn


class CollapseWarning(UserWarning):
    """Validation predictions were trivial for several validations in a row."""


class CollapseDetector(Callback):
    """Warns when the validation predictions are trivial ``patience`` validations in a row: one class for
    every example or accuracy no higher than the majority class's (classification), no entity (NER: every tag ``O``), every answer empty or the same
    (QA). The warning names the task's monitored metric, its value and the global step, and what to
    try; fit prints it again at its end while the run is still collapsed. Per task in a multi-task run.

    Args:
        enabled: check the validations of ``fit``; ``false`` switches the check off.
        patience: trivial validations in a row before it warns (once per task and fit).
    """

    def __init__(self, enabled: bool = True, patience: PositiveInt = 2):
        self.enabled, self.patience = enabled, patience
        self.streaks: dict[str, int] = {}
        self.found: dict[str, str | None] = {}  # this validation's trivial predictions, per task
        self.collapsed: dict[str, str] = {}  # task -> message, while its streak lasts
        self.warned: set[str] = set()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.streaks, self.found, self.collapsed, self.warned = {}, {}, {}, set()

    def _checking(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        return (self.enabled and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
                and hasattr(pl_module, "val_metrics") and hasattr(pl_module, "formats"))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Callbacks run before the method's own hook, which computes the metrics and resets them.
        if not self._checking(trainer, pl_module):
            return
        self.found = {}
        for task, metrics in pl_module.val_metrics.items():  # the same order in every process (collectives)
            judge = getattr(pl_module.formats[task], "trivial_predictions", None)
            if judge is not None:
                self.found[task] = judge(metrics)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After the method logged its metrics: their values are in trainer.callback_metrics.
        if not self._checking(trainer, pl_module):
            return
        for task, trivial in self.found.items():
            self.streaks[task] = self.streaks.get(task, 0) + 1 if trivial else 0
            if not trivial:
                self.collapsed.pop(task, None)
            elif self.streaks[task] >= self.patience:
                self.collapsed[task] = self.message(trainer, pl_module, task, trivial)
                if task not in self.warned and trainer.is_global_zero:
                    warnings.warn(self.collapsed[task], CollapseWarning, stacklevel=1)
                self.warned.add(task)
        self.found = {}

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.collapsed and trainer.is_global_zero:
            for message in self.collapsed.values():
                print(f"\nWARNING: {message}", file=sys.stderr, flush=True)

    def message(self, trainer: Trainer, pl_module: LightningModule, task: str, trivial: str) -> str:
        fmt = pl_module.formats[task]
        metric = fmt.monitor
        if getattr(pl_module, "is_multitask", False):
            metric = pl_module.metric_prefix("val", task) + metric.split("/", 1)[1]
        value = trainer.callback_metrics.get(metric)
        shown = f"{metric} = {float(value):.4f}" if value is not None else metric
        where = f"task {task!r}: " if getattr(pl_module, "is_multitask", False) else ""
        return (
            f"collapse: {where}{shown} at global step {trainer.global_step} (epoch {trainer.current_epoch}): the model "
            f"{trivial}, in {self.streaks[task]} validations in a row: it is not learning the task. Try "
            f"{'; '.join(remedies(trainer, pl_module))}. (--collapse.enabled false switches this check off.)"
        )


def remedies(trainer: Trainer, pl_module: LightningModule) -> list[str]:
    """What to change, for this method's settings."""
    hparams = pl_module.hparams
    rates = [group.get("initial_lr", group.get("lr")) for opt in trainer.optimizers for group in opt.param_groups]
    now = f", now {rates[0]:g}" if rates and isinstance(rates[0], (int, float)) else ""
    found = [f"another learning rate (--model.optimizer.lr{now}: higher if the loss barely moves, lower if it jumps)"]
    if "reparameterize" in hparams:
        found.append(f"--model.reparameterize {str(not hparams.reparameterize).lower()}")
    if "init" in hparams:
        others = [c for c in choices(type(pl_module), "init") if c != hparams.init]
        found.append(f"another initialisation (--model.init{' ' + ' or '.join(others) if others else ''}, now {hparams.init!r})")
    return found


def choices(cls: type, argument: str) -> list:
    """The values a ``Literal`` argument of ``cls.__init__`` takes (none found: [])."""
    try:
        hint = typing.get_type_hints(cls.__init__).get(argument)
    except Exception:  # an annotation that does not resolve: no choices to list
        return []
    return list(typing.get_args(hint)) if typing.get_origin(hint) is typing.Literal else []
