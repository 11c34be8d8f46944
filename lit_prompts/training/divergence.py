"""Divergence: a non-finite loss or gradient stops the run before the optimizer applies it (or, with
``nonfinite: skip``, the update is left out), and nothing non-finite is saved, chosen as best or exported.

Per optimizer step this costs one sum over the loss and the gradients the optimizer is about to apply,
and one host sync to read whether it is finite; the details (which tensor, which step) are only worked
out once something is wrong.
"""

from __future__ import annotations

import math
import os

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from ..safe_reading import nonfinite_names

NONFINITE_CHOICES = ("stop", "skip")


class DivergenceError(FloatingPointError):
    """Training produced NaN or infinity; the message names the step and the last finite checkpoint."""


def _sum_all(tensors: list[Tensor]) -> Tensor:
    """One scalar that is NaN or infinite if any tensor holds NaN or infinity. (Huge finite values can
    overflow it too: a flagged step is checked tensor by tensor before anything is done.) Half the cost
    of ``torch.nn.utils.get_total_norm`` on a tiny CPU model, where each kernel call counts."""
    return torch.stack([t.sum(dtype=torch.float32) for t in tensors]).sum()


def where_in_training(trainer) -> str:
    loop = trainer.fit_loop.epoch_loop
    return f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {loop.batch_idx})"


def last_finite_checkpoint(trainer) -> str:
    """The newest checkpoint file saved so far, and the best one (saving refuses non-finite tensors, so
    every file that exists is finite)."""
    saved = {}
    for callback in trainer.checkpoint_callbacks:
        for path in (getattr(callback, "best_model_path", ""), getattr(callback, "last_model_path", "")):
            if path and os.path.isfile(path):
                saved[path] = os.path.getmtime(path)
    if not saved:
        return "last finite checkpoint: none saved yet"
    newest = max(saved, key=saved.get)
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")
    also = f" (best so far: {best})" if best in saved and best != newest else ""
    return f"last finite checkpoint: {newest}{also}"


def check_finite_state(module, state: dict[str, Tensor]) -> None:
    """Refuse to save a checkpoint whose tensors hold NaN or infinity (an update that overflowed)."""
    broken = nonfinite_names(state)
    if broken:
        trainer = module._trainer
        where = where_in_training(trainer) if trainer is not None else "this point"
        last = last_finite_checkpoint(trainer) if trainer is not None else ""
        raise DivergenceError(
            f"training diverged: not saving a checkpoint at {where}, its tensors {broken} hold NaN or "
            f"infinity (an optimizer update overflowed); {last}. Lower the learning rate"
        )


class DivergenceGuard:
    """Mixed into ``PromptMethod``: reads ``hparams.nonfinite`` (``stop`` or ``skip``).

    - training: the loss and the gradients about to be applied are checked once per optimizer step;
      ``stop`` raises ``DivergenceError`` before the optimizer applies the step, ``skip`` drops its
      gradients (the optimizer then leaves every tensor as it is), counts it in ``train/skipped_steps``
      and names the skipped steps in a warning at the end of the epoch. Tensors that are already
      non-finite stop the run either way: no later step can repair them.
    - validation and test: if the backbone's outputs were non-finite, the metrics are logged as NaN,
      so that such a model is never picked as the best checkpoint.

    Under ``16-mixed`` precision the gradient scaler already skips non-finite steps (and lowers its
    scale): the training checks stand aside there.
    """

    skipped_steps: int = 0
    _skipped_in_epoch: tuple[int, ...] = ()
    _losses: tuple[Tensor, ...] = ()
    _finite_outputs: Tensor | None = None
    _outputs_hook = None

    # --- training -------------------------------------------------------------------------------
    def _scaler_handles_nonfinite(self) -> bool:
        return getattr(self.trainer.precision_plugin, "scaler", None) is not None

    def on_before_backward(self, loss: Tensor) -> None:
        self._losses += (loss.detach(),)  # checked with the gradients (several with gradient accumulation)

    def on_before_optimizer_step(self, optimizer) -> None:
        losses, self._losses = self._losses, ()
        if self._scaler_handles_nonfinite():
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        checked = [*grads, *(loss.to(grads[0].device) for loss in losses)] if grads else list(losses)
        if checked and not bool(torch.isfinite(_sum_all(checked))):  # the one host sync per step
            self._nonfinite_step(optimizer, losses)
        if self.hparams.get("nonfinite", "stop") == "skip":
            self.log("train/skipped_steps", float(self.skipped_steps))

    def _nonfinite_step(self, optimizer, losses: tuple[Tensor, ...]) -> None:
        trainer = self.trainer
        by_id = {id(p): n for n, p in self.named_parameters()}
        trained = {by_id.get(id(p), "?"): p for group in optimizer.param_groups for p in group["params"]}
        broken = nonfinite_names({n: p.detach() for n, p in trained.items()})
        bad_grads = nonfinite_names({n: p.grad for n, p in trained.items() if p.grad is not None})
        what = []
        bad_losses = [float(loss) for loss in losses if not bool(torch.isfinite(loss))]
        if bad_losses:
            what.append(f"the loss is {bad_losses[0]}")
        if bad_grads:
            what.append(f"the gradients of {bad_grads} hold NaN or infinity")
        if broken:
            what.append(f"the tensors {broken} already hold NaN or infinity (the previous update overflowed)")
        if not what:
            return  # finite values whose sum overflowed: nothing is wrong
        where = where_in_training(trainer)
        if self.hparams.get("nonfinite", "stop") == "skip" and not broken:
            optimizer.zero_grad(set_to_none=True)  # optimizers leave tensors without a gradient untouched
            self.skipped_steps += 1
            self._skipped_in_epoch += (trainer.global_step,)
            return
        advice = (
            " (skipping steps cannot repair non-finite tensors)" if broken
            else ", or set model.init_args.nonfinite=skip to skip such steps"
        )
        raise DivergenceError(
            f"training diverged at {where}: {'; '.join(what)}. The update was not applied; "
            f"{last_finite_checkpoint(trainer)}. Lower the learning rate{advice}"
        )

    def on_train_epoch_end(self) -> None:
        skipped = self._skipped_in_epoch
        if skipped:
            shown = ", ".join(map(str, skipped[:20])) + (f" and {len(skipped) - 20} more" if len(skipped) > 20 else "")
            rank_zero_warn(
                f"nonfinite=skip: epoch {self.trainer.current_epoch} skipped {len(skipped)} optimizer steps whose "
                f"loss or gradients held NaN or infinity (global steps {shown}); {self.skipped_steps} in all"
            )
            self._skipped_in_epoch = ()

    # --- validation and test --------------------------------------------------------------------
    def _watch_outputs(self) -> None:
        self._unwatch_outputs()
        self._finite_outputs = None

        def record(module, args, output) -> None:
            first = output[0] if isinstance(output, tuple) or hasattr(output, "to_tuple") else output
            if isinstance(first, Tensor) and first.is_floating_point():
                finite = torch.isfinite(first).all()
                self._finite_outputs = finite if self._finite_outputs is None else self._finite_outputs & finite

        # The frozen model itself: a PromptedBackbone's own forward is never called.
        backbone = getattr(getattr(self, "backbone", None), "model", None)
        if backbone is not None:
            self._outputs_hook = backbone.register_forward_hook(record)

    def _unwatch_outputs(self) -> None:
        if self._outputs_hook is not None:
            self._outputs_hook.remove()
            self._outputs_hook = None

    def on_validation_start(self) -> None:
        self._watch_outputs()

    def on_validation_end(self) -> None:
        self._unwatch_outputs()

    def on_test_start(self) -> None:
        self._watch_outputs()

    def on_test_end(self) -> None:
        self._unwatch_outputs()

    def finite_or_nan(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Metrics as computed, or all NaN when the model's outputs were not finite in this evaluation
        (the accuracy of a model that outputs NaN is a finite number, and would compete for best)."""
        finite, self._finite_outputs = self._finite_outputs, None
        local = finite is None or bool(finite)
        if self._trainer is None or self.trainer.strategy.reduce_boolean_decision(local, all=True):
            return values
        rank_zero_warn(
            f"at global step {self.trainer.global_step} the model's outputs held NaN or infinity: its metrics "
            "are logged as NaN, so that no checkpoint of it is chosen as best"
        )
        return {k: torch.full_like(v, math.nan, dtype=torch.float) for k, v in values.items()}
