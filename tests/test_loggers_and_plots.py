"""Loggers (CSV by default whatever is installed; TensorBoard on request; a missing package named with its
extra) and ``python -m lit_prompts plot`` over the logs they write."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
from conftest import data_files_arg, run_cli

from lit_prompts.cli import main
from lit_prompts.commands import plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fit(backbone: str, reviews: dict, root: Path, *extra: str):
    return run_cli("fit", "--model=PromptTuning", f"--model.backbone={backbone}", "--model.num_virtual_tokens=2",
                   "--data.batch_size=8", "--data.max_length=48", data_files_arg(reviews, ("train", "validation")),
                   "--trainer.max_epochs=2", *extra, root=root)


def csv_series(path: Path, name: str) -> list[int]:
    """The steps at which metrics.csv holds a value of ``name``."""
    with open(path, newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get(name)]


def event_scalars(folder: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


# ---- integration: real fits --------------------------------------------------------------------------


def test_default_logger_is_csv_and_plot_draws_its_curves(tiny_backbone, reviews, tmp_path, capsys):
    cli = fit(tiny_backbone("bert"), reviews, tmp_path)
    run = tmp_path / "lightning_logs" / "version_0"
    assert type(cli.trainer.logger).__name__ == "CSVLogger"
    if importlib.util.find_spec("tensorboard"):  # where Lightning's own default would be TensorBoard
        assert not list(run.glob("events.out.tfevents.*"))
    train_steps, val_steps = csv_series(run / "metrics.csv", "train/loss"), csv_series(run / "metrics.csv", "val/accuracy")
    assert len(train_steps) == cli.trainer.global_step == 8 and len(val_steps) == 2

    # Through the command line, on the root folder: the latest (only) version is found.
    capsys.readouterr()
    main(["plot", str(tmp_path)])
    output = run / "curves.png"
    assert capsys.readouterr().out.strip() == str(output)
    assert output.read_bytes().startswith(PNG_SIGNATURE)

    # What was drawn: the training loss and each validation metric, at the steps metrics.csv holds them.
    drawn = plot.main([str(run), f"--output={tmp_path / 'elsewhere' / 'curves.png'}"])
    assert (tmp_path / "elsewhere" / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "train/loss" in drawn and "val/accuracy" in drawn
    assert all(name == "train/loss" or name.startswith("val/") for name in drawn)
    assert drawn["train/loss"][0] == train_steps and drawn["val/accuracy"][0] == val_steps
    for name, (steps, _) in drawn.items():
        assert steps == csv_series(run / "metrics.csv", name)


def test_tensorboard_logger_writes_events_that_plot_reads(tiny_backbone, reviews, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    cli = fit(tiny_backbone("bert"), reviews, tmp_path, "--trainer.logger=TensorBoardLogger",
              f"--trainer.logger.save_dir={tmp_path}")
    run = tmp_path / "lightning_logs" / "version_0"
    assert type(cli.trainer.logger).__name__ == "TensorBoardLogger"
    assert list(run.glob("events.out.tfevents.*")) and not (run / "metrics.csv").exists()
    scalars = event_scalars(run)
    assert len(scalars["train/loss"]) == cli.trainer.global_step == 8
    assert len(scalars["val/accuracy"]) == 2
    assert (run / "checkpoints" / "last.ckpt").is_file()  # the run's other files keep their place

    drawn = plot.main([str(run)])
    assert (run / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    assert drawn["train/loss"][0] == scalars["train/loss"] and drawn["val/accuracy"][0] == scalars["val/accuracy"]


# ---- unit: no training ------------------------------------------------------------------------------


@pytest.mark.parametrize("logger,name,module,install", [
    ("WandbLogger", "WandbLogger", "wandb", "pip install 'lit-prompts[wandb]'"),
    ("MLFlowLogger", "MLFlowLogger", "mlflow", "pip install 'lit-prompts[mlflow]'"),
    ("[{class_path: CSVLogger, init_args: {save_dir: logs}}, {class_path: WandbLogger}]", "WandbLogger", "wandb",
     "pip install 'lit-prompts[wandb]'"),
], ids=["wandb", "mlflow", "wandb-in-a-list"])
def test_logger_with_missing_package_stops_with_the_extra_to_install(logger, name, module, install, monkeypatch, capsys,
                                                                     tmp_path):
    find_spec = importlib.util.find_spec  # the package is hidden, should it be installed here
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda spec_name, package=None: None if spec_name == module else find_spec(spec_name, package))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--model=PromptTuning", "--model.backbone=never-loaded", f"--trainer.logger={logger}"])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert f"--trainer.logger {name} needs the {module} package" in err and install in err
    assert "Traceback" not in err and [line for line in err.splitlines() if "error:" in line] == [
        f"python -m lit_prompts: error: --trainer.logger {name} needs the {module} package, which is not installed: {install}"]
    assert not list(tmp_path.iterdir()), "stopped before anything started"


def write_metrics(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    names = sorted({k for row in rows for k in row})
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.mark.parametrize("case", ["missing", "empty", "no_curves"])
def test_plot_names_the_folder_when_there_is_nothing_to_draw(case, tmp_path, capsys):
    folder = tmp_path / "run"
    expected = {"missing": "does not exist", "empty": "holds no logs", "no_curves": "neither train/loss nor val/ metrics"}
    if case == "empty":
        (folder / "lightning_logs" / "version_0").mkdir(parents=True)
    if case == "no_curves":
        write_metrics(folder, [{"step": 0, "epoch": 0, "params/trainable": 10}])
    with pytest.raises(SystemExit):
        main(["plot", str(folder)])
    err = capsys.readouterr().err
    assert str(folder) in err and expected[case] in err
    assert not (folder / "curves.png").exists()


def test_plot_takes_the_latest_version_and_smooths_many_points(tmp_path, capsys):
    for version in (0, 2, 10):  # 10 is the latest, though "version_2" sorts after it as text
        rows = [{"step": s, "epoch": s // 100, "train/loss": 1 / (s + 1)} for s in range(300)]
        rows += [{"step": s, "epoch": s // 100, "val/accuracy": s / 300, "val/macro_f1": s / 400} for s in (99, 199, 299)]
        write_metrics(tmp_path / "lightning_logs" / f"version_{version}", rows)
    drawn = plot.main([str(tmp_path)])
    latest = tmp_path / "lightning_logs" / "version_10"
    assert f"plotting the latest, {latest}" in capsys.readouterr().err
    assert (latest / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(drawn) == ["train/loss", "val/accuracy", "val/macro_f1"]
    assert drawn["train/loss"][0] == list(range(300)) and drawn["val/accuracy"][0] == [99, 199, 299]
    smooth = plot.smoothed([1.0] * 10 + [0.0] * 90, 100)
    assert smooth[0] == 1.0 and smooth[-1] < 0.01 and all(a >= b - 1e-9 for a, b in zip(smooth, smooth[1:]))
