"""``python -m lit_prompts inspect`` and ``lit_prompts.inspection``: nearest tokens, norms, per-layer norms,
drift from the initialisation (recorded in checkpoints), cosine similarity, and the fit callback."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import data_files_arg, run_cli

import lit_prompts
from lit_prompts.cli import main
from lit_prompts.commands import inspect as inspect_command
from lit_prompts.inspection import PromptInspection, inspect_methods, scalars, summarize
from lit_prompts.safe_reading import read_checkpoint

LABELS = ["negative", "positive"]
INIT_TEXT = "great movie"


@pytest.fixture(scope="module")
def text_prompt(tiny_backbone, tmp_path_factory) -> tuple[lit_prompts.PromptTuning, Path]:
    """A prompt tuning method started from the embeddings of INIT_TEXT, and its exported folder."""
    method = lit_prompts.PromptTuning(backbone=tiny_backbone("bert"), label_names=LABELS, num_virtual_tokens=4,
                                      init="text", init_text=INIT_TEXT)
    folder = tmp_path_factory.mktemp("text_prompt") / "prompt"
    method.export_prompt(folder)
    return method, folder


def expected_tokens(method) -> list[str]:
    """INIT_TEXT's tokens, repeated to the prompt's length (as ``init: text`` fills it)."""
    tokens = method.tokenizer.tokenize(INIT_TEXT)
    return (tokens * 4)[:4]


def save_checkpoint(method, path: Path) -> Path:
    """What Lightning writes, through the method's own checkpoint hook."""
    checkpoint = {"state_dict": method.state_dict(), "hyper_parameters": dict(method.hparams)}
    method.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def test_a_text_initialised_prompt_decodes_to_its_text(text_prompt):
    method, folder = text_prompt
    summary = summarize(lit_prompts.load(folder), top_k=3, source=str(folder))
    (part,) = summary["parts"]
    assert part["name"] == "prompt.prompt" and part["kind"] == "input" and part["shape"] == [4, 32]
    assert [row["nearest"][0]["token"] for row in part["tokens"]] == expected_tokens(method)
    assert all(row["nearest"][0]["cosine"] == pytest.approx(1.0, abs=1e-5) for row in part["tokens"])
    assert all(len(row["nearest"]) == 3 for row in part["tokens"])
    # A vocabulary row's norm, against the table's median row norm.
    table = method.backbone.model.get_input_embeddings().weight.detach()
    ids = method.tokenizer.convert_tokens_to_ids(expected_tokens(method))
    median = float(table.norm(dim=-1).median())
    assert summary["embeddings"]["median_norm"] == pytest.approx(median, rel=1e-5)
    for row, token_id in zip(part["tokens"], ids):
        assert row["norm"] == pytest.approx(float(table[token_id].norm()), rel=1e-5)
        assert row["norm_ratio"] == pytest.approx(row["norm"] / median, rel=1e-5)
    assert summary["drift"] is None  # an exported folder keeps no initial values
    assert json.loads(json.dumps(summary)) == summary  # plain values


def test_inspect_json_prints_the_nearest_tokens(text_prompt, capsys):
    method, folder = text_prompt
    main(["inspect", str(folder), "--json", "--top-k", "2"])
    report = json.loads(capsys.readouterr().out)
    (summary,) = report["prompts"]
    assert summary["source"] == str(folder) and summary["method"] == "PromptTuning"
    tokens = summary["parts"][0]["tokens"]
    assert [row["nearest"][0]["token"] for row in tokens] == expected_tokens(method)
    assert all(len(row["nearest"]) == 2 for row in tokens)
    assert "similarity" not in report  # one prompt


def test_inspect_prints_a_table(text_prompt, capsys):
    method, folder = text_prompt
    main(["inspect", str(folder)])
    out = capsys.readouterr().out
    assert "prompt.prompt [4, 32]" in out and "nearest tokens" in out
    assert f"{expected_tokens(method)[0]} 1.000" in out
    assert "drift from initialisation: unknown" in out


@pytest.mark.parametrize("method", ["PTuningV2", "PrefixTuning"])
def test_deep_prompts_give_a_norm_per_layer(method, tiny_backbone, tmp_path, capsys):
    extra = {"reparameterize": False} if method == "PrefixTuning" else {}
    model = getattr(lit_prompts, method)(backbone=tiny_backbone("bert"), label_names=LABELS, num_virtual_tokens=4, **extra)
    model.export_prompt(tmp_path / "prompt")
    main(["inspect", str(tmp_path / "prompt"), "--json"])
    (summary,) = json.loads(capsys.readouterr().out)["prompts"]
    (part,) = summary["parts"]
    layers = model.backbone.num_layers
    assert [layer["layer"] for layer in part["layers"]] == list(range(layers))
    if method == "PTuningV2":  # [L, P, H]: the mean norm of each layer's P vectors
        assert part["kind"] == "layers"
        deep = model.prompt.deep_prompts.detach()
        for layer, row in enumerate(part["layers"]):
            assert row["norm"] == pytest.approx(float(deep[layer].norm(dim=-1).mean()), rel=1e-5)
        assert len(part["layer0_tokens"]) == 4
        assert "prompt/layer_norm" in scalars(summary)
    else:  # [L, 2, H_kv, P, d]: key and value norms per layer
        assert part["kind"] == "prefix"
        prefix = model.prompt.prefix.detach()
        keys = prefix[:, 0].permute(0, 2, 1, 3).flatten(-2)  # [L, P, H_kv·d]
        for layer, row in enumerate(part["layers"]):
            assert row["key_norm"] == pytest.approx(float(keys[layer].norm(dim=-1).mean()), rel=1e-5)
            assert row["value_norm"] > 0
        assert {"prompt/key_norm", "prompt/value_norm"} <= set(scalars(summary))


@pytest.mark.parametrize("method,settings", [
    ("PromptPool", {"pool_size": 3, "prompt_length": 2}),
    ("PromptPool", {"pool_size": 3, "prompt_length": 2, "placement": "layers"}),
    ("MultiTaskPromptTuning", {"num_virtual_tokens": 2, "task_specs": {
        "sentiment": {"task": "classification", "task_format": "head", "label_names": LABELS},
        "topic": {"task": "classification", "task_format": "head", "label_names": ["a", "b", "c"]}}}),
], ids=["pool-input", "pool-layers", "mpt"])
def test_pools_and_multitask_prompts_are_summarised_per_entry_and_task(method, settings, tiny_backbone):
    if method == "PromptPool":
        settings = {**settings, "label_names": LABELS}
    model = getattr(lit_prompts, method)(backbone=tiny_backbone("bert"), **settings)
    summary = summarize(model, top_k=2)
    names = [part["name"] for part in summary["parts"]]
    if method == "PromptPool":
        kind = "layers" if settings.get("placement") == "layers" else "input"
        assert [p["kind"] for p in summary["parts"] if p["name"].startswith("prompt.pool[")] == [kind] * 3
        assert "prompt.keys" in names
    else:  # the shared prompt, and each task's prompt P ⊙ u_t v_tᵀ
        assert {"prompt.shared_prompt", "task sentiment", "task topic"} <= set(names)
    assert json.loads(json.dumps(summary)) == summary


def test_two_prompts_give_a_cosine_matrix(text_prompt, tiny_backbone, tmp_path, capsys):
    _, folder = text_prompt
    other = lit_prompts.PromptTuning(backbone=tiny_backbone("bert"), label_names=LABELS, num_virtual_tokens=4)
    other.export_prompt(tmp_path / "other")
    main(["inspect", str(folder), str(tmp_path / "other"), "--json"])
    similarity = json.loads(capsys.readouterr().out)["similarity"]
    assert similarity["comparable"] and similarity["names"] == [str(folder), str(tmp_path / "other")]
    matrix = torch.tensor(similarity["matrix"])
    assert torch.allclose(matrix.diagonal(), torch.ones(2), atol=1e-5)
    assert torch.allclose(matrix, matrix.T) and matrix[0, 1] < 0.99
    # Prompts of other shapes are not compared, and the report says so.
    longer = lit_prompts.PromptTuning(backbone=tiny_backbone("bert"), label_names=LABELS, num_virtual_tokens=5)
    report = inspect_methods([lit_prompts.load(folder), longer], ["four", "five"])
    assert not report["similarity"]["comparable"] and "shapes" in report["similarity"]["reason"]
    main(["inspect", str(folder), str(tmp_path / "other")])
    assert "cosine similarity between prompts" in capsys.readouterr().out


def test_drift_is_zero_before_training_and_grows_after(tiny_backbone, tmp_path, capsys):
    method = lit_prompts.PromptTuning(backbone=tiny_backbone("bert"), label_names=LABELS, num_virtual_tokens=4)
    method.record_initial_prompt()  # what on_fit_start does in a run not resumed from a checkpoint
    start = method.prompt.prompt.detach().clone()
    before = save_checkpoint(method, tmp_path / "before.ckpt")
    with torch.no_grad():  # "training"
        method.prompt.prompt.add_(0.5 * torch.randn_like(method.prompt.prompt))
    after = save_checkpoint(method, tmp_path / "after.ckpt")

    # Readable weights-only, the initial values as plain CPU fp32 tensors; the state dict is unchanged.
    saved = read_checkpoint(after)
    assert set(saved["lit_prompts"]["initial_prompt"]) == {"prompt.prompt"}
    assert torch.equal(saved["lit_prompts"]["initial_prompt"]["prompt.prompt"], start)
    assert set(saved["state_dict"]) == method.trainable_names()

    assert summarize(lit_prompts.load(before))["drift"] == {"tensors": {"prompt.prompt": 0.0}, "total": 0.0}
    main(["inspect", str(after), "--json"])
    (summary,) = json.loads(capsys.readouterr().out)["prompts"]
    expected = float((method.prompt.prompt - start).norm() / start.norm())
    assert summary["drift"]["tensors"]["prompt.prompt"] == pytest.approx(expected, rel=1e-5)
    assert summary["drift"]["total"] > 0
    assert scalars(summary)["prompt/drift"] == pytest.approx(expected, rel=1e-5)

    # A run resumed from the checkpoint keeps the first initialisation, not the values it resumes from.
    resumed = lit_prompts.PromptTuning(backbone=tiny_backbone("bert"), label_names=LABELS, num_virtual_tokens=4)
    resumed.on_load_checkpoint(read_checkpoint(after))
    resumed.record_initial_prompt()
    assert torch.equal(resumed.initial_prompt["prompt.prompt"], start)


def test_a_missing_prompt_is_reported_by_name(tmp_path, capsys):
    missing = tmp_path / "no_such_prompt"
    with pytest.raises(FileNotFoundError, match="no_such_prompt does not exist"):
        inspect_command.main([str(missing)])
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(missing)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    with pytest.raises(ValueError, match="top-k"):
        inspect_command.main([str(missing), "--top-k", "0"])
    with pytest.raises(ValueError, match="top_k"):
        PromptInspection(top_k=0)


def test_fit_with_the_callback_logs_drift_and_inspect_reads_it_from_last_ckpt(tiny_backbone, reviews, tmp_path, capsys):
    cli = run_cli("fit", "--model=PromptTuning", f"--model.backbone={tiny_backbone('bert')}",
                  "--model.num_virtual_tokens=4", "--data.id_column=id", "--data.batch_size=8", data_files_arg(reviews),
                  "--trainer.max_epochs=2", "--trainer.callbacks+=lit_prompts.inspection.PromptInspection", root=tmp_path)
    assert any(isinstance(c, PromptInspection) for c in cli.trainer.callbacks)
    folder = Path(cli.trainer.log_dir)
    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    drifts = [float(r["prompt/drift"]) for r in rows if r.get("prompt/drift")]
    assert len(drifts) == 2 and all(d > 0 for d in drifts)  # one per validation, away from the start
    assert any(r.get("prompt/nearest_cosine") for r in rows) and any(r.get("prompt/norm_ratio") for r in rows)

    capsys.readouterr()
    main(["inspect", str(folder / "checkpoints" / "last.ckpt"), "--json"])
    (summary,) = json.loads(capsys.readouterr().out)["prompts"]
    assert summary["drift"]["total"] == pytest.approx(drifts[-1], rel=1e-4)
