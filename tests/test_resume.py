"""Exact resume through the CLI: a run stopped anywhere and resumed with ``fit --ckpt_path`` ends bitwise
equal to the run that was never stopped (the last checkpoint's trainable tensors), and reports and
exports the same best checkpoint, for every cell of

    {max_epochs, max_steps} x {validation at each epoch's end, validation in mid-epoch}
    x {last.ckpt of a run stopped in mid-epoch, an epoch-end checkpoint, last.ckpt after a crash}

plus a real ``kill -9`` of a training process, a resume into another folder, a kill while a checkpoint
is written, a multi-task run, and the DDP split of the training sampler. Dropout is on, so the RNG
state has to come back too.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST_TRAINER, data_files_arg, run_cli
from lightning.pytorch import Callback
from safetensors.torch import load_file
from torch.utils.data import DistributedSampler

from lit_prompts.data.collate import EpochShuffleSampler

# Validation at each epoch's end: 32 examples in batches of 8 make 4 steps an epoch (validation at 4, 8...).
# In mid-epoch: batches of 4 make 8 steps an epoch, validation every 3 of them (at 3, 6, 11, 14...), never
# at an epoch's end, as the shipped configs validate (val_check_interval in steps).
VALIDATION = {
    "at_epoch_end": ["--data.batch_size=8"],
    "mid_epoch": ["--data.batch_size=4", "--trainer.val_check_interval=3"],
}
STEPS_PER_EPOCH = {"at_epoch_end": 4, "mid_epoch": 8}
LENGTH = {
    ("max_epochs", "at_epoch_end"): ["--trainer.max_epochs=3"],  # 12 steps
    ("max_steps", "at_epoch_end"): ["--trainer.max_epochs=-1", "--trainer.max_steps=10"],  # stops in epoch 2
    ("max_epochs", "mid_epoch"): ["--trainer.max_epochs=2"],  # 16 steps
    ("max_steps", "mid_epoch"): ["--trainer.max_epochs=-1", "--trainer.max_steps=13"],  # stops in epoch 1
}
# How the first part of a run stops, by setup:
#   last_ckpt  fit ends by a smaller max_steps in mid-epoch, between validations: last.ckpt holds that step;
#   epoch_end  fit ends after one epoch: last.ckpt holds the epoch's end;
#   crash      the process dies at that step: last.ckpt is the latest validation's.
STOP_STEP = {
    ("last_ckpt", "at_epoch_end"): 6, ("last_ckpt", "mid_epoch"): 9,
    ("crash", "max_epochs", "at_epoch_end"): 9, ("crash", "max_steps", "at_epoch_end"): 7,
    ("crash", "max_epochs", "mid_epoch"): 13, ("crash", "max_steps", "mid_epoch"): 8,
}
CELLS = [(length, validation, stop) for length in ("max_epochs", "max_steps") for validation in VALIDATION
         for stop in ("last_ckpt", "epoch_end", "crash")]


def run_args(backbone: str, reviews: dict, length: str, validation: str) -> list[str]:
    return [
        "--model=PromptTuning", f"--model.backbone={backbone}", "--model.num_virtual_tokens=3",
        "--model.backbone_dropout=true", "--seed_everything=7", data_files_arg(reviews),
        # A schedule that does not depend on the run's length, so that a first part stopped by a smaller
        # max_steps trains as the whole run does (the default linear decay spans max_steps).
        "--model.lr_schedule=constant_with_warmup", "--model.warmup_steps=2",
        *VALIDATION[validation], *LENGTH[length, validation],
    ]


class Crash(Exception):
    pass


class CrashAt(Callback):
    """Ends the training process before the given step, as a crash would: nothing saves after it."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Crash(f"crash before step {self.step}")


def crash_at(step: int) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": f"{__name__}.CrashAt", "init_args": {"step": step}})


def version_folder(root: Path) -> Path:
    return root / "lightning_logs" / "version_0"


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def outcome(cli) -> dict:
    """What a finished run leaves: the last state, the best checkpoint and score, the exported prompt."""
    folder = Path(cli.trainer.log_dir)
    best = cli.trainer.checkpoint_callback
    return {
        "last": checkpoint(folder / "checkpoints" / "last.ckpt")["state_dict"],
        "global_step": cli.trainer.global_step,
        "best_score": None if best.best_model_score is None else float(best.best_model_score),
        "best_name": Path(best.best_model_path).name,
        "best_state": checkpoint(best.best_model_path)["state_dict"],
        "prompt": load_file(folder / "prompt" / "prompt.safetensors"),
    }


def assert_same_outcome(resumed: dict, whole: dict) -> None:
    assert resumed["global_step"] == whole["global_step"]
    assert resumed["last"].keys() == whole["last"].keys() == {
        "prompt.prompt", "formats.classification.head.1.weight", "formats.classification.head.1.bias"}
    for key in whole["last"]:
        assert torch.equal(resumed["last"][key], whole["last"][key]), f"last.ckpt {key}: max abs difference " \
            f"{(resumed['last'][key] - whole['last'][key]).abs().max():.3g}"
    # The tiny backbone's val/accuracy stays put, so the best is the first validation's (a tie does not
    # replace it), before every resume point: a resumed run that forgot it saves a later one as best.
    assert (resumed["best_name"], resumed["best_score"]) == (whole["best_name"], whole["best_score"])
    assert all(torch.equal(resumed["best_state"][k], whole["best_state"][k]) for k in whole["best_state"])
    assert resumed["prompt"].keys() == whole["prompt"].keys()
    for key in whole["prompt"]:
        assert torch.equal(resumed["prompt"][key], whole["prompt"][key]), f"exported {key}"


@pytest.fixture(scope="module")
def whole_run(tiny_backbone, reviews, tmp_path_factory):
    """``whole_run(length, validation)``: the outcome of the uninterrupted run, run once per module."""
    runs = {}

    def get(length: str, validation: str) -> dict:
        if (length, validation) not in runs:
            root = tmp_path_factory.mktemp(f"whole-{length}-{validation}")
            cli = run_cli("fit", *run_args(tiny_backbone("bert"), reviews, length, validation), root=root)
            runs[length, validation] = outcome(cli)
        return runs[length, validation]

    return get


def stop_first_part(args: list[str], length: str, validation: str, stop: str, root: Path) -> None:
    if stop == "last_ckpt":
        run_cli("fit", *args, f"--trainer.max_steps={STOP_STEP[stop, validation]}", root=root)
    elif stop == "epoch_end":
        one_epoch = "--trainer.max_epochs=1" if length == "max_epochs" else "--trainer.max_steps={}"
        run_cli("fit", *args, one_epoch.format(STEPS_PER_EPOCH[validation]), root=root)
    else:
        with pytest.raises(Crash):
            run_cli("fit", *args, crash_at(STOP_STEP[stop, length, validation]), root=root)


def metric_rows(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("length,validation,stop", CELLS, ids=["-".join(c) for c in CELLS])
def test_a_resumed_run_ends_as_the_uninterrupted_run(length, validation, stop, whole_run, tiny_backbone, reviews,
                                                     tmp_path):
    args = run_args(tiny_backbone("bert"), reviews, length, validation)
    stop_first_part(args, length, validation, stop, tmp_path)
    folder = version_folder(tmp_path)
    last = folder / "checkpoints" / "last.ckpt"
    resumed_at, prompt_then = checkpoint(last)["global_step"], checkpoint(last)["state_dict"]["prompt.prompt"]
    per_epoch = STEPS_PER_EPOCH[validation]
    whole = whole_run(length, validation)
    # The cell is what it says: the first part stopped inside the run, in mid-epoch or at an epoch's end.
    assert 0 < resumed_at < whole["global_step"]
    assert (resumed_at % per_epoch == 0) == (stop == "epoch_end" or validation == "at_epoch_end" and stop == "crash")
    rows_before = metric_rows(folder) if (folder / "metrics.csv").exists() else []

    cli = run_cli("fit", *args, f"--ckpt_path={last}", root=tmp_path)

    assert not torch.equal(prompt_then, whole["last"]["prompt.prompt"])  # it trained on after the resume point
    assert_same_outcome(outcome(cli), whole)
    # The resumed run logs into the folder it resumed from, after the rows the first part logged there.
    assert Path(cli.trainer.log_dir) == folder
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    rows = metric_rows(folder)
    assert rows[: len(rows_before)] == rows_before and (stop == "crash" or rows_before)
    assert len([r for r in rows[len(rows_before):] if r["train/loss"]]) == whole["global_step"] - resumed_at


def test_resumed_in_another_folder_keeps_its_best_checkpoint(whole_run, tiny_backbone, reviews, tmp_path):
    """Resumed into a new log folder, Lightning keeps only the best checkpoint's path: the next validation,
    however bad, became the best, and that prompt was exported."""
    args = run_args(tiny_backbone("bert"), reviews, "max_steps", "mid_epoch")
    stop_first_part(args, "max_steps", "mid_epoch", "crash", tmp_path / "first")
    last = version_folder(tmp_path / "first") / "checkpoints" / "last.ckpt"
    states = checkpoint(last)["callbacks"]
    best_before = Path(next(v for k, v in states.items() if k.startswith("BestCheckpoint"))["best_model_path"])
    cli = run_cli("fit", *args, f"--ckpt_path={last}", root=tmp_path / "elsewhere")
    whole = whole_run("max_steps", "mid_epoch")
    assert Path(cli.trainer.checkpoint_callback.best_model_path) == best_before  # still the first part's file
    resumed = outcome(cli)
    assert resumed["best_score"] == whole["best_score"] and resumed["best_name"] == whole["best_name"]
    assert all(torch.equal(resumed["prompt"][k], whole["prompt"][k]) for k in whole["prompt"])


SLOW_STEPS = '''
import time
from pathlib import Path
from lightning.pytorch import Callback

class SlowSteps(Callback):
    """Writes each finished step to a file, then sleeps: a test can kill the process at a step it picks."""

    def __init__(self, step_file: str, seconds: float = 0.3):
        self.step_file, self.seconds = Path(step_file), seconds

    def on_train_batch_end(self, trainer, *args):
        self.step_file.write_text(str(trainer.global_step))
        time.sleep(self.seconds)
'''


def test_kill_9_at_any_step_then_resume_from_last_ckpt(whole_run, tiny_backbone, reviews, tmp_path):
    """A real training process (max_steps, validation in mid-epoch) killed with SIGKILL two steps past a
    validation; the run resumed from the last.ckpt it left ends as the uninterrupted run."""
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "slow_steps.py").write_text(SLOW_STEPS)
    step_file, root = tmp_path / "step", tmp_path / "run"
    args = run_args(tiny_backbone("bert"), reviews, "max_steps", "mid_epoch")
    slow = {"class_path": "slow_steps.SlowSteps", "init_args": {"step_file": str(step_file)}}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "helpers"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "lit_prompts", "fit", *FAST_TRAINER, f"--trainer.default_root_dir={root}", *args,
               "--trainer.callbacks+=" + json.dumps(slow)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        # Validation (and last.ckpt) at step 6; killed after step 8, in the middle of the next stretch.
        while not (step_file.exists() and step_file.read_text().strip() in {str(s) for s in range(8, 11)}):
            assert process.poll() is None, f"training ended before the kill:\n{process.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no step 8 within 180 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    last = version_folder(root) / "checkpoints" / "last.ckpt"
    assert checkpoint(last)["global_step"] == 6
    cli = run_cli("fit", *args, f"--ckpt_path={last}", root=root)
    assert_same_outcome(outcome(cli), whole_run("max_steps", "mid_epoch"))
    assert Path(cli.trainer.log_dir) == version_folder(root)


class DiesWhileCopying(Exception):
    pass


def test_a_kill_while_last_ckpt_is_written_leaves_the_previous_one_whole(tiny_backbone, reviews, tmp_path, monkeypatch):
    """Lightning writes a checkpoint into the system's temporary folder, then moves it into place: with
    that folder on another filesystem (a tmpfs /tmp), the move is a copy, and a process killed during
    the copy left a truncated last.ckpt. Here the move crosses filesystems and the second copy of
    last.ckpt dies half-way."""
    folder = version_folder(tmp_path) / "checkpoints"
    rename, copyfile, copies = os.rename, shutil.copyfile, []

    def cross_device_rename(src, dst, *a, **k):
        if str(src).startswith(tempfile.gettempdir() + os.sep) and str(dst).startswith(str(folder)):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return rename(src, dst, *a, **k)

    def dying_copy(src, dst, *a, **k):
        if "last.ckpt" in Path(dst).name:
            copies.append(dst)
            if len(copies) == 2:
                Path(dst).write_bytes(Path(src).read_bytes()[: Path(src).stat().st_size // 2])
                raise DiesWhileCopying(dst)
        return copyfile(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", cross_device_rename)
    monkeypatch.setattr(shutil, "copyfile", dying_copy)
    args = run_args(tiny_backbone("bert"), reviews, "max_steps", "mid_epoch")
    with pytest.raises(DiesWhileCopying):
        run_cli("fit", *args, root=tmp_path)
    monkeypatch.undo()
    assert len(copies) == 2
    try:
        left = checkpoint(folder / "last.ckpt")
    except Exception as error:
        pytest.fail(f"last.ckpt is truncated: {error!r}")
    assert left["global_step"] == 3  # the first validation's, whole


def test_a_multitask_run_resumes_in_mid_epoch_exactly(tiny_backbone, reviews, ner_files, tmp_path):
    tasks = {
        "sentiment": {"task": "classification", "task_format": "head",
                      "data_files": {"train": reviews["train"], "validation": reviews["validation"]}},
        "entities": {"task": "ner", "task_format": "token",
                     "data_files": {"train": ner_files["train"], "validation": ner_files["validation"]}},
    }
    args = ["--model=MultiTaskPromptTuning", f"--model.backbone={tiny_backbone('bert')}", "--model.variant=mpt",
            "--model.placement=input", "--model.num_virtual_tokens=3", "--model.backbone_dropout=true",
            "--data=MultiTaskDataModule", "--data.tasks=" + json.dumps(tasks), "--data.batch_size=8",
            "--data.sampling=proportional", "--seed_everything=7", "--trainer.max_epochs=2",
            "--trainer.val_check_interval=3"]  # 8 batches an epoch; validation at 3 and 6 of each
    whole = run_cli("fit", *args, root=tmp_path / "whole")
    with pytest.raises(Crash):
        run_cli("fit", *args, crash_at(12), root=tmp_path / "resumed")
    last = version_folder(tmp_path / "resumed") / "checkpoints" / "last.ckpt"
    assert checkpoint(last)["global_step"] == 11  # epoch 1, after its third batch
    resumed = run_cli("fit", *args, f"--ckpt_path={last}", root=tmp_path / "resumed")
    a, b = outcome(whole), outcome(resumed)
    assert a["last"].keys() == b["last"].keys()
    assert all(torch.equal(a["last"][k], b["last"][k]) for k in a["last"])
    assert all(torch.equal(a["prompt"][k], b["prompt"][k]) for k in a["prompt"])


@pytest.mark.parametrize("length", [32, 33, 7])
def test_the_training_sampler_splits_ranks_as_distributed_sampler_does(length):
    """Under DDP the training sampler takes Lightning's place: the same shares, epoch by epoch, and a
    mid-epoch start continues a rank's share."""
    for world in (1, 2, 3):
        for rank in range(world):
            ours = EpochShuffleSampler(length, seed=7, num_replicas=world, rank=rank)
            theirs = DistributedSampler(range(length), num_replicas=world, rank=rank, shuffle=True, seed=7)
            for epoch in (0, 1, 4):
                ours.set_epoch(epoch), theirs.set_epoch(epoch)
                assert list(ours) == list(theirs) and len(ours) == len(theirs)
                ours.start = 3
                assert list(ours) == list(theirs)[3:]
                assert list(ours) == list(theirs)  # the start holds for one pass only
