"""Callbacks the CLI adds to every run: export of the best prompt, and JSONL predictions."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``monitor: auto`` (the default) becomes the task's own metric:
    ``val/accuracy`` for classification, ``val/f1`` (entity F1) for NER."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.monitor == "auto":
            self.monitor = getattr(pl_module, "monitor", None)
        super().setup(trainer, pl_module, stage)


class LatestCheckpoint(ModelCheckpoint):
    """The latest training state (``last.ckpt``): saved like any checkpoint after validation and at
    epoch ends, and also when fit stops between them (``max_steps`` in mid-epoch), which plain
    ``ModelCheckpoint`` skips, so that a run always resumes from where it ended."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # skips when this step is saved already
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


class ExportPrompt(Callback):
    """At the end of fit, export the best checkpoint's prompt (else the last state) as safetensors.

    Args:
        folder: where to write ``prompt.safetensors`` and ``prompt.json``; default ``<log_dir>/prompt``.
    """

    def __init__(self, folder: str | None = None):
        self.folder = folder

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # trainer.log_dir is a broadcast under DDP: every rank must ask for it.
        folder = Path(self.folder or Path(trainer.log_dir or trainer.default_root_dir) / "prompt")
        if not trainer.is_global_zero or not hasattr(pl_module, "export_prompt"):
            return
        ckpt = trainer.checkpoint_callback
        summary = []
        if ckpt is not None and ckpt.best_model_path:
            state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
            pl_module.load_state_dict(state, strict=False)
            if ckpt.best_model_score is not None:
                summary.append(f"best {ckpt.monitor} = {float(ckpt.best_model_score):.4f}")
            summary.append(f"checkpoint: {ckpt.best_model_path}")
        path = pl_module.export_prompt(folder)
        summary.append(f"prompt saved to {path} ({path.stat().st_size:,} bytes)")
        rank_zero_info("\n".join(summary))


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
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for row in prediction:
            self._file.write(json.dumps(row) + "\n")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._file.close()
        rank_zero_info(f"predictions written to {self.path(trainer)}")
