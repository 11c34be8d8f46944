"""Mixed-task predict throughput: one pass over a file that mixes the tasks of a multi-task run,
versus predicting each task's rows on their own, one task after another (same model, same rows,
same batch size). Also counts rows whose prediction differs between the two.

    python scripts/bench_mixed_predict.py --config configs/multitask/sst2_conll2003_squad.yaml \\
        --ckpt path/to/best.ckpt --per-task 200 --batch-size 32

The rows are the first ``--per-task`` validation rows of each task in the config (its inputs only),
shuffled together. Times cover the predict loop only (reading and tokenizing excluded), best of
``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import yaml  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402

import lit_prompts  # noqa: E402
from lit_prompts.data import MultiTaskDataModule, PromptDataModule  # noqa: E402

INPUT_COLUMNS = ("text_column", "text_pair_column", "tokens_column", "question_column", "context_column", "id_column")
DEFAULT_COLUMNS = {"text_column": "text", "tokens_column": "tokens", "question_column": "question", "context_column": "context"}


def input_rows(name: str, spec: dict, backbone: str, n: int) -> list[dict]:
    """The first n validation rows of a task, its input columns only, tagged with the task."""
    module = PromptDataModule(backbone=backbone, **spec)
    split = module.reader.get(module.splits["validation"])
    columns = {spec.get(c, DEFAULT_COLUMNS.get(c)) for c in INPUT_COLUMNS} | {"id"}
    keep = [c for c in split.rows.column_names if c in columns]
    return [{"task": name, **row} for row in split.rows.select(range(min(n, len(split.rows)))).select_columns(keep).to_list()]


def timed_predict(model, tasks: dict, backbone: str, path: Path, batch_size: int, repeats: int) -> tuple[float, list[dict]]:
    data = MultiTaskDataModule(backbone=backbone, tasks=tasks, predict_files=str(path), eval_batch_size=batch_size)
    data.setup("predict")
    trainer = Trainer(accelerator="auto", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    best, rows = float("inf"), []
    for _ in range(repeats):
        loader = data.predict_dataloader()
        start = time.perf_counter()
        batches = trainer.predict(model, dataloaders=loader)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        rows = [row for batch in batches for row in batch]
    return best, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the multi-task fit config (its data.init_args.tasks)")
    parser.add_argument("--ckpt", required=True, help="a MultiTaskPromptTuning checkpoint")
    parser.add_argument("--per-task", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the figures to this JSON file")
    args = parser.parse_args()

    tasks = yaml.safe_load(Path(args.config).read_text())["data"]["init_args"]["tasks"]
    model = lit_prompts.load(args.ckpt)
    backbone = model.hparams.backbone
    rows = [r for name, spec in tasks.items() for r in input_rows(name, spec, backbone, args.per_task)]
    random.Random(args.seed).shuffle(rows)
    for i, row in enumerate(rows):
        row["id"] = f"{row['task']}-{row['id']}" if row.get("id") is not None else f"row{i}"  # unique across tasks
    folder = Path(tempfile.mkdtemp())
    mixed_file = folder / "mixed.jsonl"
    mixed_file.write_text("".join(json.dumps(r) + "\n" for r in rows))

    mixed_time, mixed = timed_predict(model, tasks, backbone, mixed_file, args.batch_size, args.repeats)
    sequential_time, sequential = 0.0, []
    for name in tasks:
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["task"] == name))
        seconds, predicted = timed_predict(model, {name: tasks[name]}, backbone, path, args.batch_size, args.repeats)
        print(f"  {name}: {sum(r['task'] == name for r in rows)} rows in {seconds:.2f} s")
        sequential_time += seconds
        sequential += predicted

    by_id = {r["id"]: r for r in sequential}
    differ = sum(
        {k: v for k, v in r.items() if k != "score"} != {k: v for k, v in by_id[r["id"]].items() if k != "score"}
        for r in mixed
    )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"{len(rows)} rows of {len(tasks)} tasks, batch {args.batch_size}, {device}")
    print(f"mixed batches:        {mixed_time:.2f} s ({len(rows) / mixed_time:.1f} rows/s)")
    print(f"one task at a time:   {sequential_time:.2f} s ({len(rows) / sequential_time:.1f} rows/s)")
    print(f"mixed / one at a time: {mixed_time / sequential_time:.2f}; rows predicted differently: {differ}")
    if args.output:
        figures = {"rows": len(rows), "tasks": list(tasks), "batch_size": args.batch_size, "device": device,
                   "mixed_s": mixed_time, "one_task_at_a_time_s": sequential_time, "rows_predicted_differently": differ}
        Path(args.output).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
