"""The defaults report: every method at its default settings on each task cell, over seeds, gathered
from ``scripts/benchmark.py`` outputs, with the targets checked.

    python scripts/benchmark.py --task conll2003 --steps 300 --seeds 0 1 2 --jobs 2 --output bench/conll2003 \\
        --methods PromptTuning PrefixTuning PTuning PTuningV2 PromptPool FullFineTuning
    (the same for the other cells: sst2, conll2003_sparse, squad, and the text-to-text cells on a decoder)
    python scripts/defaults_report.py bench/* --output bench/defaults.md

Each argument is a benchmark output folder (or its ``results.json``); a cell is a task on a backbone, and
its seeds may come from several folders (a seed run twice is refused). Only lit_prompts runs at the
methods' defaults count: an output made with ``--lr``, ``--set`` or ``--virtual-tokens`` is left out and
named (``--include-settings`` keeps it, marked). Prints a method x cell table of the metric's mean ± sd
(seeds), in points (accuracy and F1 x 100; SQuAD's F1 already is), and the targets:

- no run at a trivial solution (benchmark.py's flag: one class or no better than the majority class,
  no entity, every answer empty);
- every prompt method within 3 points of the best prompt method on a classification cell and 5 on an NER
  cell, at the same budget (full fine-tuning is the reference, not a competitor);
- deep prompts (prefix tuning, P-tuning v2) at least prompt tuning on CoNLL-2003 and SQuAD.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict, namedtuple
from pathlib import Path

from benchmark import METHODS, TASKS, parse_args

REFERENCE = "FullFineTuning"
DEEP = ("PrefixTuning", "PTuningV2")
WITHIN = {"classification": 3.0, "ner": 5.0}  # points behind the best prompt method
DEEP_AT_LEAST_INPUT = ("conll2003", "squad")
DEFAULT_BACKBONE = parse_args([]).backbone  # a cell on it is named by its task alone
Score = namedtuple("Score", "mean sd seeds trivial")  # in points; trivial: the seeds at a trivial solution


def settings_beyond_defaults(config: dict) -> list[str]:
    """The benchmark options of an output that change a method's settings."""
    given = [f"--lr {' '.join(config['lr'])}" if config.get("lr") else "",
             f"--set {' '.join(config['set'])}" if config.get("set") else "",
             f"--virtual-tokens {config['virtual_tokens']}" if config.get("virtual_tokens") else ""]
    return [g for g in given if g]


def cell_name(config: dict) -> str:
    backbone = config["backbone"]
    return config["task"] if backbone == DEFAULT_BACKBONE else f"{config['task']} ({Path(backbone.rstrip('/')).name})"


def read_output(path: Path) -> tuple[str, str, list[str], tuple, list[dict], list[str]]:
    """An output's task, cell name, settings beyond the defaults, budget, finished lit_prompts runs and
    failed ones' names; a file of another shape is refused, named."""
    try:
        result = json.loads(path.read_text())
        config = result["config"]
        if config["task"] not in TASKS:
            raise KeyError(f"task {config['task']!r}")
        name, extra = cell_name(config), settings_beyond_defaults(config)
        budget = (config["steps"], config["batch_size"], config["precision"], config.get("val_batches", 1.0))
        ours = [r for r in result["runs"] if r["impl"] == "lit_prompts"]
        failed = [r["name"] for r in ours if "error" in r or r.get("metric") is None]
        finished = [{"name": r["name"], "method": r["method"], "seed": r["seed"], "metric": float(r["metric"]),
                     "trivial": r.get("trivial")} for r in ours if r["name"] not in failed]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise SystemExit(f"{path}: not a benchmark.py results.json ({error})") from None
    return config["task"], name, extra, budget, finished, failed


def gather(paths: list[str], include_settings: bool = False) -> tuple[dict, list[str]]:
    """cell -> {"task", "budget", "methods": {method: {seed: run}}}, and notes on what was left out."""
    cells, notes, seen = {}, [], {}
    for given in paths:
        path = Path(given)
        path = path / "results.json" if path.is_dir() else path
        task, name, extra, budget, runs, failed = read_output(path)
        if extra and not include_settings:
            notes.append(f"{path}: left out, not at the defaults ({'; '.join(extra)})")
            continue
        name += f", {'; '.join(extra)}" if extra else ""
        cell = cells.setdefault(name, {"task": task, "budget": budget, "methods": defaultdict(dict)})
        if cell["budget"] != budget:
            raise SystemExit(f"{path}: budget (steps, batch, precision, validation) {budget} differs from "
                             f"{cell['budget']} of the other outputs of cell {name}")
        notes += [f"{path}: {run} has no metric (failed)" for run in failed]
        for run in runs:
            key = (name, run["method"], run["seed"])
            if key in seen:
                raise SystemExit(f"{path}: {run['name']} of cell {name} is also in {seen[key]}: give each seed once")
            seen[key] = path
            cell["methods"][run["method"]][run["seed"]] = run
    return cells, notes


def points(task: str, metric: float) -> float:
    return metric if TASKS[task]["task"] == "qa" else 100 * metric


def scores(cell: dict) -> dict[str, Score]:
    stats = {}
    for method, by_seed in cell["methods"].items():
        values = [points(cell["task"], r["metric"]) for r in by_seed.values()]
        stats[method] = Score(statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0,
                              len(values), sorted(s for s, r in by_seed.items() if r.get("trivial") is True))
    return stats


def report(cells: dict, notes: list[str]) -> tuple[list[str], list[str]]:
    """The markdown lines, and the targets not met."""
    names = list(cells)
    stats = {name: scores(cells[name]) for name in names}
    methods = [m for m in METHODS if any(m in stats[n] for n in names)]
    best = {n: max((m for m in stats[n] if m != REFERENCE), key=lambda m: stats[n][m].mean, default=None) for n in names}
    lines = ["| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for method in methods:
        row = []
        for n in names:
            if method not in stats[n]:
                row.append("not run")
                continue
            score = stats[n][method]
            text = f"**{score.mean:.2f}**" if method == best[n] else f"{score.mean:.2f}"
            spread = f" ± {score.sd:.2f}" if score.seeds > 1 else ""  # one seed has no spread to show
            row.append(f"{text}{spread} ({score.seeds})" + (f", trivial: seeds {score.trivial}" if score.trivial else ""))
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    lines += ["", "Budgets (steps, batch, precision, share of validation): "
              + "; ".join(f"{n} {cells[n]['budget']}" for n in names)]

    missed, checks = [], []
    for n in names:
        for method, score in stats[n].items():
            if score.trivial:
                missed.append(f"{n}: {method} at a trivial solution on seeds {score.trivial}")
        tolerance = WITHIN.get(TASKS[cells[n]["task"]]["task"])
        if tolerance is not None and best[n] is not None:
            top = stats[n][best[n]].mean
            for method, score in stats[n].items():
                if method not in (REFERENCE, best[n]):
                    behind = top - score.mean
                    checks.append(f"{n}: {method} {behind:.1f} behind {best[n]} (within {tolerance:g})")
                    if behind > tolerance:
                        missed.append(checks[-1])
        if cells[n]["task"] in DEEP_AT_LEAST_INPUT and "PromptTuning" in stats[n]:
            for method in (m for m in DEEP if m in stats[n]):
                ahead = stats[n][method].mean - stats[n]["PromptTuning"].mean
                checks.append(f"{n}: {method} {ahead:+.1f} against PromptTuning (at least 0)")
                if ahead < 0:
                    missed.append(checks[-1])
        most = max(score.seeds for score in stats[n].values())
        fewer = [f"{m} ({score.seeds})" for m, score in stats[n].items() if score.seeds < most]
        if fewer:
            notes.append(f"{n}: fewer seeds than {most} for {', '.join(fewer)}")
    lines += ["", "Targets:"] + [f"- {c}" for c in checks]
    lines += ["", "Not met:" if missed else "Every target met."] + [f"- {m}" for m in missed]
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return lines, missed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outputs", nargs="+", help="benchmark.py output folders (or their results.json)")
    p.add_argument("--output", help="also write the report to this markdown file")
    p.add_argument("--include-settings", action="store_true",
                   help="keep outputs made with --lr / --set / --virtual-tokens, as cells of their own")
    args = p.parse_args(argv)
    cells, notes = gather(args.outputs, args.include_settings)
    if not cells:
        raise SystemExit("no output at the defaults to report:\n" + "\n".join(notes))
    lines, _ = report(cells, notes)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
