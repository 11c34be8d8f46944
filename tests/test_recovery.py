"""Runs that go wrong: divergence (NaN or infinite loss and gradients), NaN predictions, preemption (SIGTERM)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, data_files_arg, review_rows, run_cli, write_jsonl
from safetensors.torch import load_file

from lit_prompts import PromptMethod, PromptTuning
from lit_prompts.callbacks import BestCheckpoint
from lit_prompts.tasks.classification import HeadClassification
from lit_prompts.training.divergence import DivergenceError


def prompt_args(backbone: str, *extra: str) -> list[str]:
    return ["--model=PromptTuning", f"--model.backbone={backbone}", "--model.num_virtual_tokens=3", *extra]


def run_error(capsys, *args, root) -> str:
    """The message of a run that stops with an error (the CLI prints it as one line and exits 1)."""
    with pytest.raises((SystemExit, DivergenceError)) as stopped:
        run_cli(*args, root=root)
    return str(stopped.value) if isinstance(stopped.value, DivergenceError) else capsys.readouterr().err


def assert_all_finite(root) -> list:
    """Every checkpoint and exported prompt under root holds finite tensors only; returns the files."""
    files = sorted(root.rglob("*.ckpt")) + sorted(root.rglob("*.safetensors"))
    for path in files:
        tensors = load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in tensors.values()), path
    return files


def logged(root, column: str) -> list[tuple[int, float]]:
    with open(root / "lightning_logs" / "version_0" / "metrics.csv") as f:
        return [(int(r["step"]), float(r[column])) for r in csv.DictReader(f) if r.get(column)]


def test_a_diverging_run_stops_before_the_bad_update_naming_the_last_finite_checkpoint(tiny_backbone, reviews, tmp_path, capsys):
    # One step per epoch, validated each epoch. Warmup keeps step 0 at lr 0 (a finite first
    # checkpoint); step 1's lr of 5e29 blows the tensors up to ~1e29, so step 2's loss is NaN.
    args = prompt_args(tiny_backbone("bert"), "--model.optimizer=SGD", "--model.optimizer.lr=1e30", "--model.warmup_steps=2",
                       "--data.batch_size=32", data_files_arg(reviews), "--trainer.max_epochs=6", "--seed_everything=0")
    message = run_error(capsys, "fit", *args, root=tmp_path)
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert "training diverged at global step 2 (epoch 2, batch 0): the loss is nan" in message
    assert f"last finite checkpoint: {checkpoints / 'last.ckpt'} (best so far: {checkpoints / 'best-0-1.ckpt'})" in message
    # The validation after step 1 saw NaN outputs: its metric is NaN, and that model is not the best.
    assert math.isnan(dict(logged(tmp_path, "val/accuracy"))[1])
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best-0-1.ckpt", "last.ckpt"]
    assert not (tmp_path / "lightning_logs" / "version_0" / "prompt").exists()
    assert len(assert_all_finite(tmp_path)) == 2


def test_skip_leaves_out_steps_with_a_nonfinite_loss_or_gradient(tiny_backbone, reviews, tmp_path, monkeypatch):
    # Step 1's loss is NaN; step 3's loss is finite but its gradient is NaN (0 * d sqrt(x)/dx at x = 0).
    before = {}
    training_loss = PromptMethod.training_loss

    def flaky_loss(self, batch):
        loss, step = training_loss(self, batch), self.trainer.global_step
        before[step] = self.prompt.prompt.detach().clone()
        if step == 1:
            return loss * math.nan
        return loss + 0 * torch.sqrt(self.prompt.prompt.sum() * 0) if step == 3 else loss

    monkeypatch.setattr(PromptMethod, "training_loss", flaky_loss)
    args = prompt_args(tiny_backbone("bert"), "--model.nonfinite=skip", "--data.batch_size=8", data_files_arg(reviews),
                       "--trainer.max_epochs=2")
    with pytest.warns(UserWarning, match=r"epoch 0 skipped 2 optimizer steps .*\(global steps 1, 3\); 2 in all"):
        run_cli("fit", *args, root=tmp_path)
    assert dict(logged(tmp_path, "train/skipped_steps")) == {0: 0, 1: 1, 2: 1, 3: 2, 4: 2, 5: 2, 6: 2, 7: 2}
    assert torch.equal(before[2], before[1]) and torch.equal(before[4], before[3]), "skipped steps update nothing"
    assert not torch.equal(before[1], before[0]) and not torch.equal(before[3], before[2]), "the others do"
    exported = tmp_path / "lightning_logs" / "version_0" / "prompt" / "prompt.safetensors"
    assert exported in assert_all_finite(tmp_path)


def test_nonfinite_tensors_are_never_exported_or_best(tiny_backbone, tmp_path):
    model = PromptTuning(backbone=tiny_backbone("bert"), num_virtual_tokens=2, label_names=["negative", "positive"])
    with torch.no_grad():
        model.prompt.prompt[0, 0] = math.inf
    with pytest.raises(DivergenceError, match=rf"not exporting a prompt to {tmp_path / 'out'}: the tensors \['prompt\.prompt'\]"):
        model.export_prompt(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    best = BestCheckpoint(monitor="val/accuracy", mode="max")
    assert not best.check_monitor_top_k(None, torch.tensor(math.nan)), "a NaN metric is not saved as a best"


def test_skip_cannot_repair_tensors_that_an_update_made_nonfinite(tiny_backbone):
    model = PromptTuning(backbone=tiny_backbone("bert"), num_virtual_tokens=2, label_names=["a", "b"], nonfinite="skip")
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_idx=2))
    model._trainer = SimpleNamespace(global_step=7, current_epoch=1, fit_loop=loop, checkpoint_callbacks=[],
                                     checkpoint_callback=None, precision_plugin=object())
    model.log = lambda *args, **kwargs: None  # (train/skipped_steps needs a real trainer)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1.0)
    for p in model.trainable_parameters():
        p.grad = torch.full_like(p, 3e38)  # finite, though their sum (the per-step check) overflows
    model.on_before_backward(torch.tensor(1.0))
    model.on_before_optimizer_step(optimizer)
    assert all(p.grad is not None for p in model.trainable_parameters()) and model.skipped_steps == 0
    with torch.no_grad():
        model.prompt.prompt[0, 0] = math.inf  # what an update that overflowed leaves
    for p in model.trainable_parameters():
        p.grad = torch.zeros_like(p)
    model.on_before_backward(torch.tensor(math.nan))
    with pytest.raises(DivergenceError, match=r"global step 7 \(epoch 1, batch 2\): the loss is nan; the tensors "
                       r"\['prompt\.prompt'\] already hold NaN.*none saved yet.*skipping steps cannot repair"):
        model.on_before_optimizer_step(optimizer)


def test_nan_scores_are_written_as_null_in_strict_json(tiny_backbone, reviews, tmp_path, monkeypatch):
    monkeypatch.setattr(HeadClassification, "scores", lambda self, model, batch: torch.full((len(batch["ids"]), 2), math.nan))
    output = tmp_path / "predictions.jsonl"
    files = {"train": reviews["train"], "test": reviews["unlabelled"]}
    run_cli("predict", *prompt_args(tiny_backbone("bert")), data_files_arg(files, splits=("train", "test")),
            f"--predictions.output={output}", root=tmp_path)

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    rows = [json.loads(line, parse_constant=refuse) for line in output.read_text().splitlines()]
    assert len(rows) == 8 and all(r["score"] is None and r["label"] in ("negative", "positive") for r in rows)


PREEMPTED_METHOD = """
import os
import signal

from lit_prompts import PromptTuning


class PreemptedPromptTuning(PromptTuning):
    \"\"\"Gets SIGTERM in the middle of global step 40, as a job being preempted would.\"\"\"

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 40:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().training_step(batch, batch_idx)
"""


@pytest.mark.integration  # a subprocess
def test_sigterm_saves_the_step_reached_exports_the_best_prompt_and_exits_143(tiny_backbone, reviews, tmp_path):
    # 32 steps per epoch, validated at each epoch end: the best checkpoint is step 32's.
    (tmp_path / "preempted.py").write_text(PREEMPTED_METHOD)
    train = write_jsonl(tmp_path / "train.jsonl", review_rows(64, seed=5))
    files = {"train": str(train), "validation": reviews["validation"]}
    args = prompt_args(tiny_backbone("bert"), "--data.batch_size=2", data_files_arg(files, splits=("train", "validation")))
    args[0] = "--model=preempted.PreemptedPromptTuning"
    command = [sys.executable, "-m", "lit_prompts", "fit", *args, "--trainer.max_epochs=20", "--trainer.accelerator=cpu",
               "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
               f"--trainer.default_root_dir={tmp_path}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 143, done.stderr
    folder = tmp_path / "lightning_logs" / "version_0"
    best, last = torch.load(folder / "checkpoints" / "best-0-32.ckpt", weights_only=True), torch.load(
        folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 41, "the step in hand when the signal came is finished and saved"
    # The exported prompt is the best checkpoint's, not the state reached (which last.ckpt holds).
    exported = load_file(folder / "prompt" / "prompt.safetensors")
    assert torch.equal(exported["prompt.prompt"], best["state_dict"]["prompt.prompt"])
    assert not torch.equal(exported["prompt.prompt"], last["state_dict"]["prompt.prompt"])
