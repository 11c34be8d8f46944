"""``python -m lit_prompts plot <run dir> [--output curves.png]``: the learning curves of a run.

The run dir is a ``lightning_logs/version_N`` folder, or a folder holding such folders (then the
latest version is plotted). The metrics come from the run's ``metrics.csv`` (the default CSV logger)
or, when it has none, its TensorBoard event files. One panel shows the training loss against the
step (smoothed, over the raw points when there are many), one more panel each validation metric.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from pathlib import Path

PROG = "python -m lit_prompts plot"
EVENTS = "events.out.tfevents.*"
MANY_POINTS = 50  # from this many training-loss points on, draw them faintly under a smoothed line

Series = dict[str, tuple[list[int], list[float]]]  # metric name -> (steps, values)


def main(args: list[str]) -> Series:
    parser = argparse.ArgumentParser(prog=PROG, description="Draw the learning curves of a run (training loss and "
                                     "validation metrics against the step) into an image; prints its path.")
    parser.add_argument("run", help="a lightning_logs/version_N folder, or a folder holding such folders (the latest is plotted)")
    parser.add_argument("--output", help="the image to write (default: <run dir>/curves.png)")
    options = parser.parse_args(args)
    run = find_run(Path(options.run))
    output = Path(options.output) if options.output else run / "curves.png"
    drawn = plot_curves(read_metrics(run), output, title=str(run))
    print(output)
    return drawn


def has_logs(folder: Path) -> bool:
    return (folder / "metrics.csv").is_file() or any(folder.glob(EVENTS))


def find_run(path: Path) -> Path:
    """The run folder itself, or the latest ``version_N`` below ``path`` (or below ``path/<logger name>``)."""
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist" if not path.exists() else f"{path} is not a folder")
    if has_logs(path):
        return path
    runs = [f for f in (*path.glob("version_*"), *path.glob("*/version_*")) if re.fullmatch(r"version_\d+", f.name) and has_logs(f)]
    if not runs:
        raise FileNotFoundError(f"{path} holds no logs: neither metrics.csv nor TensorBoard event files, here or in "
                                "a lightning_logs/version_N folder below it")
    run = max(runs, key=lambda f: (int(f.name.removeprefix("version_")), f.stat().st_mtime))
    if len(runs) > 1:
        print(f"{path} holds {len(runs)} runs: plotting the latest, {run}", file=sys.stderr)
    return run


def read_metrics(run: Path) -> Series:
    """Every logged scalar of a run, by name, as (steps, values) in the order they were logged."""
    series: Series = {}

    def add(name: str, step: int, value: float) -> None:
        steps, values = series.setdefault(name, ([], []))
        steps.append(step)
        values.append(value)

    if (run / "metrics.csv").is_file():
        with open(run / "metrics.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for name, value in row.items():
                    if name not in ("step", "epoch") and value not in ("", None) and row.get("step"):
                        add(name, int(float(row["step"])), float(value))
        return series
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise ValueError(f"{run} holds TensorBoard event files, which need the tensorboard package: "
                         "pip install 'lit-prompts[tensorboard]'") from None
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})  # 0: every point, not a sample
    events.Reload()
    for name in events.Tags()["scalars"]:
        for event in events.Scalars(name):
            add(name, event.step, event.value)
    return series


def smoothed(values: list[float], points: int) -> list[float]:
    """Exponential moving average over about a tenth of the points, debiased at the start (as TensorBoard's)."""
    weight = 1 - 2 / (max(1, points // 10) + 1)
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i) if weight else value)
    return out


def plot_curves(series: Series, output: Path, title: str = "") -> Series:
    """Draw ``train/loss`` and every ``val/...`` metric against the step into ``output``; returns what was drawn."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ValueError("plot needs matplotlib: pip install 'lit-prompts[plot]'") from None
    drawn = {name: s for name, s in series.items() if name == "train/loss" or name.startswith("val/")}
    if not drawn:
        found = ", ".join(sorted(series)) or "no metrics at all"
        raise ValueError(f"{title or 'the run'}: its logs hold neither train/loss nor val/ metrics (found: {found})")
    columns = min(3, len(drawn))
    rows = math.ceil(len(drawn) / columns)
    figure = Figure(figsize=(4.5 * columns, 3.4 * rows), layout="constrained")
    FigureCanvasAgg(figure)  # Agg: no display needed, and no global backend switched
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax, (name, (steps, values)) in zip(axes, drawn.items()):
        if name == "train/loss" and len(values) >= MANY_POINTS:
            ax.scatter(steps, values, s=4, alpha=0.25, color="tab:blue", label="raw")
            ax.plot(steps, smoothed(values, len(values)), color="tab:blue", label="smoothed")
            ax.legend(loc="upper right", fontsize="small")
        else:
            ax.plot(steps, values, marker="o", markersize=3, color="tab:blue" if name == "train/loss" else "tab:orange")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(drawn):]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title, fontsize="small")
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    return drawn
