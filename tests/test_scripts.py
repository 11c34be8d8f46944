"""The benchmark scripts run end to end on a tiny backbone and report sane figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, review_rows, run_cli

pytestmark = pytest.mark.integration  # each runs a script in a subprocess


def test_step_time_benchmark_smoke(tiny_backbone, tmp_path):
    data = tmp_path / "train.tsv"
    rows = review_rows(16, seed=0)
    data.write_text("sentence\tlabel\n" + "".join(f"{r['text']}\t{int(r['label'] == 'positive')}\n" for r in rows))
    output = tmp_path / "bench.json"
    command = [sys.executable, str(REPO / "scripts" / "bench_step_time.py"), f"--backbone={tiny_backbone('bert')}",
               f"--data={data}", "--batch-size=4", "--virtual-tokens=2", "--warmup=1", "--steps=2", f"--output={output}",
               "--reparam-hidden-size=8", "--variants", "prompt", "prefix", "ptv2", "full", "prefix_forward",
               "peft_prefix"]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    result = json.loads(output.read_text())
    hidden, layers, head = 32, 2, 32 * 2 + 2
    variants = result["variants"]
    # PEFT's prefix tuning needs past_key_values, which transformers 5's BERT no longer takes: reported.
    assert set(variants) | set(result["unsupported"]) == {"prompt", "prefix", "ptv2", "full", "prefix_forward", "peft_prefix"}
    assert all(v["median_ms"] > 0 and len(v["times_ms"]) == 2 for v in variants.values())
    assert variants["prompt"]["trainable_params"] == 2 * hidden + head  # prompt + head
    mlp_out = layers * 2 * hidden  # keys and values of every layer
    assert variants["prefix"]["trainable_params"] == 2 * hidden + (hidden * 8 + 8) + (8 * mlp_out + mlp_out) + head
    assert variants["ptv2"]["trainable_params"] == layers * 2 * hidden + head
    assert variants["prefix"]["frozen_params_with_grad"] == 0 == variants["ptv2"]["frozen_params_with_grad"]
    assert variants["prompt"]["frozen_params_with_grad"] == 0
    assert variants["full"]["trainable_params"] == variants["full"]["total_params"]
    assert result["mean_padded_tokens_with_prompt"] == result["mean_padded_tokens"] + 2
    assert all(r > 0 for r in result["ratios"].values())


def test_mixed_predict_benchmark_smoke(tiny_backbone, reviews, ner_files, tmp_path):
    tasks = {"sentiment": {"task": "classification", "data_files": {"train": reviews["train"], "validation": reviews["validation"]}},
             "entities": {"task": "ner", "task_format": "token",
                          "data_files": {"train": ner_files["train"], "validation": ner_files["validation"]}}}
    run_cli("fit", "--model=MultiTaskPromptTuning", f"--model.backbone={tiny_backbone('bert')}", "--model.num_virtual_tokens=2",
            "--data=MultiTaskDataModule", "--data.tasks=" + json.dumps(tasks), "--data.batch_size=8",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", root=tmp_path)
    run = tmp_path / "lightning_logs" / "version_0"
    output = tmp_path / "mixed.json"
    command = [sys.executable, str(REPO / "scripts" / "bench_mixed_predict.py"), f"--config={run / 'config.yaml'}",
               f"--ckpt={run / 'checkpoints' / 'last.ckpt'}", "--per-task=6", "--batch-size=4", "--repeats=1",
               f"--output={output}"]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    result = json.loads(output.read_text())
    assert result["rows"] == 12 and result["tasks"] == ["sentiment", "entities"]
    assert result["mixed_s"] > 0 and result["one_task_at_a_time_s"] > 0
    assert result["rows_predicted_differently"] == 0


def sst2_like_files(folder) -> tuple[str, str]:
    for name, n, seed in (("train", 32, 0), ("dev", 16, 1)):
        rows = review_rows(n, seed=seed)
        (folder / f"{name}.tsv").write_text(
            "sentence\tlabel\n" + "".join(f"{r['text']}\t{int(r['label'] == 'positive')}\n" for r in rows))
    return f"--train-file={folder / 'train.tsv'}", f"--validation-file={folder / 'dev.tsv'}"


def run_benchmark(backbone: str, files: tuple[str, str], output, *options: str) -> dict:
    command = [sys.executable, str(REPO / "scripts" / "benchmark.py"), f"--backbone={backbone}", *files, *options,
               "--peft", "--steps=5", "--batch-size=8", "--virtual-tokens=2", "--seeds", "0", "--forward-batches=2",
               f"--output={output}"]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    result = json.loads((output / "results.json").read_text())
    for row in result["summary"]:
        assert row["median_step_ms"] > 0 and row["tokens_per_s"] > 0 and row["peak_mem_mb"] >= 0
        assert row["step_over_forward"] > 0  # a no-grad forward over the last training batches was timed
        assert 0 <= row["metric_mean"] <= 1 and row["metric_name"] == "val/accuracy" and row["seeds"] == [0]
        assert 0 < row["exported_bytes"] <= 4 * row["trainable_params"] + 16 * 1024
    for run in result["runs"]:
        assert run["median_forward_ms"] > 0
    return result


def test_method_comparison_benchmark_smoke(tiny_backbone, tmp_path):
    output = tmp_path / "bench"
    result = run_benchmark(tiny_backbone("bert"), sst2_like_files(tmp_path), output, "--methods", "PromptTuning", "PTuningV2")
    hidden, layers, head = 32, 2, 32 * 2 + 2
    summary = {(r["impl"], r["method"]): r for r in result["summary"]}
    assert set(summary) == {("lit_prompts", "PromptTuning"), ("peft", "PromptTuning"), ("lit_prompts", "PTuningV2")}
    assert len(result["runs"]) == 3
    assert summary["lit_prompts", "PromptTuning"]["trainable_params"] == 2 * hidden + head
    assert summary["lit_prompts", "PTuningV2"]["trainable_params"] == layers * 2 * hidden + head
    assert summary["peft", "PromptTuning"]["trainable_params"] == 2 * hidden + head  # PEFT's prompt + classifier
    assert "PromptTuning: step time lit_prompts / PEFT" in result["ratios"]
    # No --lr: each run trains at its method's own default, which it records; PEFT at its twin's.
    trained = {(r["impl"], r["method"]): r["trained_lr"] for r in result["runs"]}
    assert trained == {("lit_prompts", "PromptTuning"): 3e-2, ("peft", "PromptTuning"): 3e-2, ("lit_prompts", "PTuningV2"): 3e-2}
    assert all(r["lr"] is None and "--model.optimizer" not in r.get("command", "") for r in result["runs"])
    report = (output / "results.md").read_text()
    assert report.startswith("`python scripts/benchmark.py") and "| PTuningV2 | lit_prompts |" in report
    assert (output / "metric_vs_params.png").stat().st_size > 0 and (output / "step_time.png").stat().st_size > 0

    # The defaults report reads this output: at --virtual-tokens 2 only on request, and without PEFT's run.
    gathered = [sys.executable, str(REPO / "scripts" / "defaults_report.py"), str(output)]
    refused = subprocess.run(gathered, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "left out, not at the defaults (--virtual-tokens 2)" in refused.stderr
    table = subprocess.run([*gathered, "--include-settings"], check=True, capture_output=True, text=True, timeout=120).stdout
    points = {m: 100 * r["metric_mean"] for (impl, m), r in summary.items() if impl == "lit_prompts"}
    assert table.splitlines()[0] == f"| method | sst2 ({Path(result['config']['backbone']).name}), --virtual-tokens 2 |"
    assert f"| PromptTuning | {'**' * (points['PromptTuning'] >= points['PTuningV2'])}{points['PromptTuning']:.2f}" in table


def test_method_comparison_benchmark_text_to_text_on_a_decoder(tiny_backbone, tmp_path):
    """The decoder preset: lit_prompts' and PEFT's prefix tuning (PEFT's causal-LM model, scored by
    the same rank classification over the label words)."""
    result = run_benchmark(tiny_backbone("llama"), sst2_like_files(tmp_path), tmp_path / "bench",
                           "--task=sst2_text_to_text", "--methods", "PrefixTuning", "--set", "PrefixTuning.reparameterize=true")
    summary = {(r["impl"], r["method"]): r for r in result["summary"]}
    assert set(summary) == {("lit_prompts", "PrefixTuning"), ("peft", "PrefixTuning")}
    # The MLP's own default rate (1e-3, not the plain prefix's 3e-2) reaches the run and its PEFT twin.
    assert summary["lit_prompts", "PrefixTuning"]["trained_lr"] == 1e-3 == summary["peft", "PrefixTuning"]["trained_lr"]
    assert "| PrefixTuning | lit_prompts | 0.001 |" in (tmp_path / "bench" / "results.md").read_text()
    assert "PrefixTuning: step time lit_prompts / PEFT" in result["ratios"]


def test_large_backbone_benchmark_smoke(tmp_path):
    """The GPU benchmark's CPU smoke run: every method trains, 4-bit is reported as not runnable here."""
    output = tmp_path / "large.json"
    command = [sys.executable, str(REPO / "scripts" / "bench_large_backbone.py"), "--tiny", "--device=cpu",
               "--steps=1", "--warmup=0", "--seq=16", "--batch-size=2", "--virtual-tokens=2",
               "--checkpointing", "off", "on", f"--output={output}"]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    result = json.loads(output.read_text())
    runs = {(r["method"], r["weights"], r["gradient_checkpointing"]): r for r in result["runs"]}
    assert len(runs) == 3 * 2 * 2
    for (method, weights, _), r in runs.items():
        if weights == "4bit":
            if not torch.cuda.is_available():
                assert "CUDA GPU" in r["error"]
        else:
            assert r["tokens_per_s"] > 0 and r["mfu"] > 0 and r["loss"] == r["loss"]  # finite, not NaN


def test_call_cost_benchmark_smoke(tiny_backbone):
    command = [sys.executable, str(REPO / "scripts" / "bench_call_cost.py"), f"--backbone={tiny_backbone('bert')}",
               "--repeats=2"]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout.splitlines()
    timed = [line for line in out if "positions:" in line]
    assert len(timed) == 12 and all(float(line.split(":")[1].split()[0]) > 0 for line in timed)
    assert out[-1].startswith("time = ") and "call cost" in out[-1] and "cpu, float32" in out[-1]


def load_benchmark(monkeypatch):
    """scripts/benchmark.py as a module (it imports its neighbours in scripts/)."""
    import importlib.util

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "benchmark", module)  # (its dataclass looks itself up there)
    spec.loader.exec_module(module)
    return module


def test_benchmark_jobs_run_an_lr_sweep_in_parallel_and_record_a_failed_run(tiny_backbone, tmp_path):
    """--jobs 2: both learning rates of the sweep run (and a third run that fails is recorded, not
    fatal to the others; the benchmark then exits with status 1), results in the planned order."""
    output = tmp_path / "bench"
    command = [sys.executable, str(REPO / "scripts" / "benchmark.py"), f"--backbone={tiny_backbone('bert')}",
               *sst2_like_files(tmp_path), "--methods", "PromptTuning", "PTuningV2", "--lr", "PromptTuning=0.03,0.1",
               "PTuningV2=-1", "--jobs=2", "--summary", "--steps=3", "--batch-size=8", "--virtual-tokens=2", "--seeds", "0",
               "--forward-batches=2", f"--output={output}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "1 of 3 runs failed: PTuningV2-seed0" in done.stderr, done.stderr[-2000:]
    assert "[PromptTuning-lr0.03-seed0] PROGRESS step 3/3" in done.stdout  # progress lines carry the run's name
    result = json.loads((output / "results.json").read_text())
    runs = result["runs"]
    assert [r["name"] for r in runs] == ["PromptTuning-lr0.03-seed0", "PromptTuning-lr0.1-seed0", "PTuningV2-seed0"]
    assert [r["lr"] for r in runs] == [0.03, 0.1, -1.0]
    for run in runs[:2]:
        assert 0 <= run["metric"] <= 1 and isinstance(run["trivial"], bool) and "predicted classes" in run["trivial_detail"]
        assert "--model.optimizer.lr=" + str(run["lr"]) in run["command"]
    assert "Invalid learning rate" in runs[2]["error"]
    rows = {(r["method"], r["lr"]): r for r in result["summary"]}
    assert rows["PromptTuning", 0.03]["seeds"] == [0] == rows["PromptTuning", 0.1]["seeds"]
    assert rows["PTuningV2", -1.0]["failed"] == 1
    assert result["config"]["jobs"] == 2 and "shared device" in result["shared_device"]
    report = (output / "results.md").read_text()
    assert "| PromptTuning | lit_prompts | 0.03 |" in report and "| PromptTuning | lit_prompts | 0.1 |" in report
    sweep = report.split("## Learning-rate sweep")[1].split("## Summary")[0]
    assert sweep.count("| PromptTuning | lit_prompts |") == 2
    summary = report.split("## Summary")[1]
    assert summary.count("| PromptTuning | lit_prompts |") == 2 and "/1 trivial" in summary and "failed (1/1)" in summary


def test_benchmark_sparse_conll_builder_reaches_the_documented_share(monkeypatch, tmp_path):
    """The conll2003_sparse preset's data, from the real CoNLL-2003 files: PER and LOC only, one
    entity token in fifteen, the counts the benchmark's docstring gives, files lit_prompts reads."""
    from pathlib import Path

    from conftest import SHARED_DATA

    from lit_prompts.data.conll import read_conll

    if not (SHARED_DATA / "conll2003").is_dir():
        pytest.skip("../shared/data/conll2003 is not here")
    benchmark = load_benchmark(monkeypatch)
    built = benchmark.build_sparse_conll(SHARED_DATA / "conll2003", tmp_path / "sparse")
    documented = {"train": (11548, 168206), "valid": (2471, 39593)}
    for split, stats in built["splits"].items():
        assert (stats["sentences"], stats["tokens"]) == documented[split]
        assert 1 / 15 - 0.002 < stats["entity_share"] <= 1 / 15 < stats["source_entity_share"] / 2  # CoNLL's own: ~1 in 6
        rows = read_conll([built["files"][split]], [split])
        tags = [t for sentence in rows["ner_tags"] for t in sentence]
        assert len(rows) == stats["sentences"] and len(tags) == stats["tokens"]
        assert {t[2:] for t in tags if t != "O"} == {"PER", "LOC"} and sum(t != "O" for t in tags) == stats["entity_tokens"]
    again = benchmark.build_sparse_conll(SHARED_DATA / "conll2003", tmp_path / "again")
    assert all(Path(built["files"][s]).read_bytes() == Path(again["files"][s]).read_bytes() for s in ("train", "valid"))


def test_benchmark_prediction_counter_flags_trivial_solutions(monkeypatch):
    """The trivial flag reads the predictions the metrics receive: one class or at chance, no entity, empty answers."""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy

    benchmark = load_benchmark(monkeypatch)
    counter = benchmark.PredictionCounter("classification", ["negative", "positive"])
    metrics = MetricCollection({"accuracy": MulticlassAccuracy(2, average="micro")})
    counter.wrap(metrics)
    metrics.update(torch.tensor([[2.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 1]))
    assert counter.result()["trivial"] is True and counter.result()["predicted_classes"] == {"negative": 2}
    assert float(metrics.compute()["accuracy"]) == 0.5  # the metrics still got the update
    metrics.update(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))  # two classes, but 2 right of 3: at chance
    assert counter.result()["trivial"] is True and counter.result()["predicted_classes"] == {"negative": 2, "positive": 1}
    metrics.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))  # 3 right of 4: above the majority class's 2
    assert counter.result()["trivial"] is False
    ner = benchmark.PredictionCounter("ner")
    ner.see([["O", "O"], ["O"]], [["B-PER", "O"], ["B-LOC"]])
    assert ner.result()["trivial"] is True and ner.result()["gold_entities"] == 2
    ner.see([["I-PER"]], [["O"]])  # an entity starts at an I- tag too, as the entity F1 reads it
    assert ner.result()["trivial"] is False and ner.result()["predicted_entities"] == 1
    qa = benchmark.PredictionCounter("qa")
    qa.see([{"prediction_text": "", "id": "a"}, {"prediction_text": " ", "id": "b"}])
    assert qa.result()["trivial"] is True
    qa.see([{"prediction_text": "paris", "id": "c"}])
    assert qa.result() == {**qa.result(), "trivial": False, "empty_answers": 2}
    assert benchmark.PredictionCounter("ner").result()["trivial"] is None  # nothing seen: not known


def test_step_sizes_show_the_encoder_imbalance_and_its_scale(tiny_backbone):
    command = [sys.executable, str(REPO / "scripts" / "step_sizes.py"), f"--backbone={tiny_backbone('bert')}",
               "--scales", "1", "0.001", "--steps=3", "--encoders", "lstm", "mlp"]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout.splitlines()
    moves = {line[:38].strip(): [float(v) for v in line[38:].split()] for line in out[1:]}
    plain = moves["PromptTuning"]
    for encoder in ("lstm", "mlp"):
        full, scaled = moves[f"PTuning {encoder} encoder_lr_scale=1"], moves[f"PTuning {encoder} encoder_lr_scale=0.001"]
        assert len(plain) == len(full) == len(scaled) == 3
        assert sum(full) > 1.5 * sum(plain)  # through the encoder at the prompt's rate, the vectors move further (hidden 32)
        assert scaled == pytest.approx(plain, rel=0.2)  # at a small scale, about as far as plain vectors
