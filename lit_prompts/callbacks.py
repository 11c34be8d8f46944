"""Callbacks the CLI adds to every run: export of the best prompt, and JSONL predictions."""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Literal
from weakref import proxy

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .safe_reading import read_checkpoint
from .sharding import is_sharded


def preempted(exception: BaseException) -> bool:
    """Whether a run stops on SIGTERM. Lightning's handler lets the step in hand finish, then raises
    ``SIGTERMException``: a ``SystemExit`` without a code, so the process would exit with status 0 as if
    done. Its code becomes 143 (128 + SIGTERM, what the signal itself would give) so that a scheduler or
    a script sees an unfinished run."""
    if not isinstance(exception, SIGTERMException):
        return False
    if exception.code is None:
        exception.code = 128 + signal.SIGTERM
    return True


class AtomicSave:
    """Mixed into the checkpoint callbacks: a checkpoint is written under a temporary name in its own
    folder, then renamed into place, so that a process killed while writing never leaves a truncated
    file under the real name. (Lightning writes into the system's temporary folder and then moves the
    file: with that folder on another filesystem, a tmpfs ``/tmp`` say, the move is a plain copy.)
    Strategies that save otherwise (sharded folders, asynchronous writes) and remote paths keep
    Lightning's own saving."""

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        strategy = trainer.strategy
        plain = type(strategy).save_checkpoint is Strategy.save_checkpoint  # one file, written by rank 0
        if not (plain and type(strategy.checkpoint_io) is TorchCheckpointIO and _is_local_file_protocol(filepath)):
            return super()._save_checkpoint(trainer, filepath)
        folder, name = os.path.split(filepath)
        partial = os.path.join(folder, f".{name}.partial")
        # ModelCheckpoint._save_checkpoint (lightning 2.6), with the rename before anything learns of the file.
        trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


class BestCheckpoint(AtomicSave, ModelCheckpoint):
    """``ModelCheckpoint`` whose ``monitor: auto`` (the default) becomes the task's own metric:
    ``val/accuracy`` for classification, ``val/f1`` (entity F1) for NER.

    Resumed in another folder than the checkpoint's, it keeps the best checkpoints it had (those whose
    files still exist), where Lightning would keep their path only: the next validation, however bad,
    would become the best and be exported."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.monitor == "auto":
            self.monitor = getattr(pl_module, "monitor", None)
        super().setup(trainer, pl_module, stage)

    def check_monitor_top_k(self, trainer: Trainer, current: torch.Tensor | None = None) -> bool:
        # A NaN or infinite score (a diverged model; the method logs NaN metrics when its outputs are
        # not finite) never competes: Lightning ranks NaN last, but saves it while fewer than top-k exist.
        if current is not None and not bool(torch.isfinite(current)):
            return False
        return super().check_monitor_top_k(trainer, current)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("dirpath", self.dirpath) == self.dirpath or self.monitor is None or self.save_top_k == 0:
            return  # same folder: Lightning restored everything
        if state_dict.get("monitor") != self.monitor:
            return
        kept = {path: score for path, score in (state_dict.get("best_k_models") or {}).items()
                if score is not None and os.path.isfile(path)}
        if not kept:
            return
        ranked = sorted(kept, key=lambda path: float(kept[path]), reverse=self.mode == "max")  # best first
        if self.save_top_k > 0:
            ranked = ranked[: self.save_top_k]
        self.best_k_models = {path: kept[path] for path in ranked}
        self.best_model_path, self.best_model_score = ranked[0], kept[ranked[0]]
        if len(ranked) == self.save_top_k:  # as Lightning sets them once top-k are saved
            self.kth_best_model_path, self.kth_value = ranked[-1], kept[ranked[-1]]
        # A better checkpoint later replaces these in best_k_models; Lightning deletes no file outside dirpath.


class LatestCheckpoint(AtomicSave, ModelCheckpoint):
    """The latest training state (``last.ckpt``): saved like any checkpoint after validation and at
    epoch ends, and also when fit stops between them (``max_steps`` in mid-epoch), which plain
    ``ModelCheckpoint`` skips, and when fit is stopped by SIGTERM (preemption), at the step reached, so
    that a run always resumes from where it ended."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # skips when this step is saved already
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # Lightning raises SIGTERMException between steps (or validation batches): the state is whole.
        # The check skips when not fitting, in the sanity check, or when this step is saved already.
        if preempted(exception) and not self._should_skip_saving_checkpoint(trainer):
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))
            rank_zero_info(f"SIGTERM: saved global step {trainer.global_step} to {self.best_model_path}")

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        """Saved once fit has ended, a checkpoint records the epoch as a resume needs it (lightning 2.6):
        - ``max_steps`` stopped fit in mid-epoch: Lightning counts the epoch as done, and resumed with a
          larger max_steps it would start the next one (the rest of this epoch never seen, its epoch count
          one ahead). Recorded as unfinished, as a checkpoint saved just before the stop is.
        - fit ended with the epoch: Lightning's own epoch-end checkpoints come before the epoch is counted
          as completed; after it, a resumed max_steps run would start the next epoch at its last batch
          and so skip it. Recorded as those are."""
        fit = trainer.fit_loop
        progress = (checkpoint.get("loops") or {}).get("fit_loop", {}).get("epoch_progress")
        epoch = fit.epoch_progress.current
        if progress is None or epoch.processed != epoch.started:  # in mid-epoch: as Lightning saves it
            return
        whole = fit.epoch_loop.batch_progress.current.ready >= trainer.num_training_batches
        for counts in (progress["total"], progress["current"]):
            if not whole and trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
                counts["processed"] = counts["completed"] = counts["started"] - 1
            elif whole and counts["completed"] == counts["processed"]:
                counts["completed"] = counts["processed"] - 1
        checkpoint["epoch"] = progress["current"]["completed"]


class ExportPrompt(Callback):
    """At the end of fit, export the best checkpoint's prompt (else the last state) as safetensors; also
    when fit is stopped by SIGTERM (preemption) after at least one step.

    Args:
        folder: where to write ``prompt.safetensors`` and ``prompt.json``; default ``<log_dir>/prompt``.
        format: ``lit_prompts`` (those two files), or ``peft``: also a PEFT adapter
            (``adapter_config.json`` + ``adapter_model.safetensors``) in the same folder.
    """

    def __init__(self, folder: str | None = None, format: Literal["lit_prompts", "peft"] = "lit_prompts"):
        self.folder = folder
        self.format = format

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.export(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if preempted(exception) and trainer.state.fn == TrainerFn.FITTING and trainer.global_step > 0:
            # LatestCheckpoint saves the state reached after this (checkpoint callbacks run last): keep it.
            try:
                self.export(trainer, pl_module)
            except Exception as error:  # the checkpoint must still be saved, and the run stop on SIGTERM
                rank_zero_warn(f"SIGTERM: the prompt was not exported: {error}")

    def export(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # trainer.log_dir is a broadcast under DDP: every rank must ask for it.
        folder = Path(self.folder or Path(trainer.log_dir or trainer.default_root_dir) / "prompt")
        if not hasattr(pl_module, "export_prompt"):
            return
        ckpt = trainer.checkpoint_callback
        best = ckpt.best_model_path if ckpt is not None else ""
        # The best checkpoint's tensors, else the live ones: sharded ones are gathered now, while every
        # rank is here (a collective).
        state = pl_module.trainable_state_dict() if not best and is_sharded(pl_module) else None
        if not trainer.is_global_zero:
            return
        summary, training = [], {"command": shlex.join(["python", "-m", "lit_prompts", *sys.argv[1:]])}
        if best:
            state = read_checkpoint(best)["state_dict"]
            if ckpt.best_model_score is not None:
                summary.append(f"best {ckpt.monitor} = {float(ckpt.best_model_score):.4f}")
                training.update(metric=ckpt.monitor, value=float(ckpt.best_model_score))
            summary.append(f"checkpoint: {best}")
            training["checkpoint"] = Path(best).name
        export = pl_module.export_peft if self.format == "peft" else pl_module.export_prompt
        path = export(folder, state, training=training)
        summary.append(f"prompt saved to {path} ({path.stat().st_size:,} bytes)")
        rank_zero_info("\n".join(summary))


def predict_sources(datamodule) -> list[str]:
    """The local files a data module reads to predict (a single-task module's predict split, or a
    multi-task module's mixed ``predict_files``)."""
    settings = getattr(datamodule, "hparams", {})
    files = settings.get("predict_files")
    if files is None and settings.get("data_files") and hasattr(datamodule, "splits"):
        files = settings["data_files"].get(datamodule.splits["predict"])
    return [files] if isinstance(files, str) else list(files or [])


class _ContinuedWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Lightning deletes an existing metrics.csv here; keep it, and its columns (rows are appended).
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


class ContinuedCSVLogger(CSVLogger):
    """``CSVLogger`` for a resumed run that logs into the version folder of the run it resumes (the CLI
    picks it then): the rows go on in the same ``metrics.csv``, where Lightning's would delete the
    earlier rows. Rows are also written whenever a checkpoint is, so that a killed run keeps them."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(log_dir=self.log_dir)
        return self._experiment

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.save()


class PredictionWriter(BasePredictionWriter):
    """Writes one JSON line per example as ``predict`` runs (one file per rank under DDP).

    Args:
        output: the JSONL path; default ``<log_dir>/predictions.jsonl``.
    """

    def __init__(self, output: str | None = None):
        super().__init__(write_interval="batch")
        self.output = output
        self._file = None

    def path(self, trainer: Trainer) -> Path:
        path = Path(self.output or Path(trainer.log_dir or trainer.default_root_dir) / "predictions.jsonl")
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        path = self.path(trainer)
        if any(path.resolve() == Path(source).resolve() for source in predict_sources(trainer.datamodule)):
            raise ValueError(f"predictions.output {path} is the file predict reads: name another output file")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for row in prediction:
            self._file.write(strict_json(row) + "\n")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._file.close()
        rank_zero_info(f"predictions written to {self.path(trainer)}")


def strict_json(row) -> str:
    """One JSON line with NaN and infinity written as null: Python's json would write them as bare NaN or
    Infinity, which JSON does not allow and strict readers refuse."""
    try:
        return json.dumps(row, allow_nan=False)
    except ValueError:
        return json.dumps(_finite_or_none(row), allow_nan=False)


def _finite_or_none(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value
