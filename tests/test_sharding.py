"""FSDP of the frozen backbone (``trainer.strategy: prompt_fsdp``) with 2 gloo processes on CPU: the
sharded fit equals one process on the same batches, and a sharded run resumed from its checkpoint
equals the uninterrupted one. Lightning launches the processes by re-running the command, so the
CLI runs in a subprocess here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import data_files_arg
from torch import nn
from transformers import AutoModelForCausalLM

from lit_prompts.backbone import backbone_fingerprint, load_backbone
from lit_prompts.cli import is_sharding
from lit_prompts.sharding import ShardedPromptStrategy, builds_on_meta, load_on_rank_zero, untie_frozen_weights

# 32 training rows: 4 steps of 8 rows in one process, or of 2 x 4 rows in two. A constant schedule
# (the default linear decay spans max_steps) lets a run stopped early train as the whole run does.
COMMON = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
          "--trainer.max_epochs=1", "--seed_everything=3", "--model.head_dropout=0",
          "--model.lr_schedule=constant_with_warmup", "--model.warmup_steps=1"]
SHARDED = ["--trainer.devices=2", "--trainer.strategy=prompt_fsdp", "--data.batch_size=4"]
ONE_PROCESS = ["--trainer.devices=1", "--data.batch_size=8"]


def fit(root: Path, method: str, backbone: str, reviews: dict, *args: str) -> dict:
    sizes = ["--model.pool_size=4", "--model.prompt_length=2"] if method == "PromptPool" else ["--model.num_virtual_tokens=4"]
    command = [sys.executable, "-m", "lit_prompts", "fit", f"--model={method}", f"--model.backbone={backbone}", *sizes,
               data_files_arg(reviews), f"--trainer.default_root_dir={root}", *COMMON, *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LIT_PROMPTS_DEBUG": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same_tensors(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=0), (name, (a[name] - b[name]).abs().max())


@pytest.mark.integration  # subprocesses
@pytest.mark.parametrize("method", ["PromptTuning", "PTuningV2", "PrefixTuning"])
def test_sharded_fit_equals_one_process(method, tiny_backbone, reviews, tmp_path):
    llama = tiny_backbone("llama")
    one = fit(tmp_path / "one", method, llama, reviews, *ONE_PROCESS)
    sharded = fit(tmp_path / "sharded", method, llama, reviews, *SHARDED)
    assert one["global_step"] == sharded["global_step"] == 4
    # Prompt-only: the trainable tensors, whole, and nothing of the frozen backbone.
    assert_same_tensors(one["state_dict"], sharded["state_dict"], atol=1e-5)
    assert sharded["lit_prompts"]["class_path"] == f"lit_prompts.training.methods.{method}"
    assert sharded["lit_prompts"]["backbone"] == one["lit_prompts"]["backbone"]  # rank 0's digest
    exported = tmp_path / "sharded" / "lightning_logs" / "version_0" / "prompt" / "prompt.safetensors"
    assert exported.is_file()

    if method == "PTuningV2":  # stopped after 2 of the 4 steps, resumed from last.ckpt: the same end
        first = fit(tmp_path / "resumed", method, llama, reviews, *SHARDED, "--trainer.max_steps=2")
        assert first["global_step"] == 2
        last = tmp_path / "resumed" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
        resumed = fit(tmp_path / "resumed", method, llama, reviews, *SHARDED, f"--ckpt_path={last}")
        assert resumed["global_step"] == 4
        assert_same_tensors(resumed["state_dict"], sharded["state_dict"], atol=0)
        for i, state in sharded["optimizer_states"][0]["state"].items():
            assert_same_tensors(resumed["optimizer_states"][0]["state"][i], state, atol=0)


def test_only_rank_zero_reads_weights_when_asked(tiny_backbone, monkeypatch):
    llama = tiny_backbone("llama")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not builds_on_meta()  # not asked
    with load_on_rank_zero():
        assert builds_on_meta()
        monkeypatch.setenv("RANK", "0")  # torchrun's global rank wins over the local one
        assert not builds_on_meta()
    model = load_backbone(llama, "text_to_text", on_meta=True)
    assert all(p.is_meta for p in model.parameters()) and not any(p.requires_grad for p in model.parameters())
    whole = load_backbone(llama, "text_to_text")
    meta_print, whole_print = backbone_fingerprint(llama, model), backbone_fingerprint(llama, whole)
    assert meta_print["weights_digest"] is None and whole_print["weights_digest"]
    unknown = {"weights_digest": None, "weights_sample": None}
    assert {**meta_print, **unknown} == {**whole_print, **unknown}


def test_untying_frozen_weights_keeps_the_outputs(tiny_backbone):
    model = AutoModelForCausalLM.from_pretrained(tiny_backbone("gpt2")).eval().requires_grad_(False)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = model(ids).logits
    assert model.lm_head.weight is model.get_input_embeddings().weight  # GPT-2 ties them
    untie_frozen_weights(model)
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    assert torch.equal(model(ids).logits, before)
    trained = nn.Linear(2, 2)  # a trainable tensor shared on purpose stays shared
    pair = nn.ModuleDict({"a": trained, "b": nn.Linear(2, 2)})
    pair["b"].weight = trained.weight
    untie_frozen_weights(pair)
    assert pair["b"].weight is trained.weight


@pytest.mark.parametrize("setting, sharding", [
    ("prompt_fsdp", True), ("lit_prompts.sharding.ShardedPromptStrategy", True), ("ddp", False), ("auto", False),
    (ShardedPromptStrategy(), True), ("no.such.Strategy", False),
])
def test_the_cli_knows_the_sharding_strategy(setting, sharding):
    assert is_sharding(setting) is sharding


@pytest.mark.integration  # subprocesses
def test_a_pool_reading_frozen_hidden_states_trains_sharded(tiny_backbone, reviews, tmp_path):
    """Its query runs the frozen backbone (``frozen_hidden``): before sharding, in processes that do not
    hold the weights yet, only shapes are asked for; after it, the sharded backbone answers."""
    checkpoint = fit(tmp_path, "PromptPool", tiny_backbone("llama"), reviews, *SHARDED)
    assert checkpoint["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert (tmp_path / "lightning_logs" / "version_0" / "prompt" / "prompt.safetensors").is_file()
