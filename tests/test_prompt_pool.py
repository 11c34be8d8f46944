"""Prompt pools: selection per example, the key-pull loss, soft attention, the selection histogram,
parameter counts, and the CLI end to end."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import data_files_arg, run_cli

import lit_prompts
from lit_prompts import PromptPool

K, P = 4, 2


def make_pool(tiny_backbone, arch="bert", **kwargs):
    torch.manual_seed(0)
    kwargs = {"pool_size": K, "prompt_length": P, "label_names": ["negative", "positive"], **kwargs}
    return PromptPool(backbone=tiny_backbone(arch), **kwargs).eval()


def two_texts(model):
    """The pool's view of two texts (a ``PromptContext`` from the prompted backbone)."""
    ids = torch.tensor([[2, 400, 401, 402, 3], [2, 300, 301, 302, 3]])
    return model.backbone.context({"input_ids": ids, "attention_mask": torch.ones_like(ids)})


@torch.no_grad()
def test_each_example_gets_its_own_prompts(tiny_backbone):
    model = make_pool(tiny_backbone, top_k=1)
    context = two_texts(model)
    query = model.prompt.queries(context)
    model.prompt.keys[:2] = query  # entry 0 matches example 0, entry 1 example 1
    model.prompt.keys[2:] = -query
    prompt = model.prompt(context).prepend
    assert prompt.shape == (2, P, model.facts.hidden_size)
    assert torch.equal(prompt[0], model.prompt.pool[0]) and torch.equal(prompt[1], model.prompt.pool[1])

    # Deep placement: per-example key/value prefixes in every layer, N·P positions long.
    deep = make_pool(tiny_backbone, placement="layers", top_k=2)
    output = deep.prompt(two_texts(deep))
    assert output.prepend is None
    _, shift = deep.backbone.prompted_inputs({"input_ids": torch.ones(2, 5, dtype=torch.long),
                                              "attention_mask": torch.ones(2, 5, dtype=torch.long)}, output)
    assert shift == 0  # nothing in front of the input: the prompts are in the layers
    # Per-example hidden-state prompts, projected by each layer when it runs.
    installed = deep.backbone.injector.layers[0][1].lit_prompts_prefix
    assert installed.shape == (2, 2 * P, deep.facts.hidden_size)
    key, value = deep.backbone.layer_kv(output.layer_hidden)[0]
    assert key.shape == value.shape == (2, deep.facts.num_key_value_heads, 2 * P, deep.facts.head_dim)


def test_key_pull_loss_draws_selected_keys_to_their_queries(tiny_backbone):
    model = make_pool(tiny_backbone, top_k=2, key_pull_weight=1.0)
    context = two_texts(model)
    query = model.prompt.queries(context)

    def chosen_similarity():
        sim = torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(model.prompt.keys, dim=-1).T
        return sim.topk(2, dim=-1).values.mean()

    before = chosen_similarity().item()
    optimizer = torch.optim.SGD([model.prompt.keys], lr=1.0)
    for _ in range(5):
        output = model.prompt(context)
        optimizer.zero_grad()
        output.aux_loss.backward()
        optimizer.step()
    assert chosen_similarity().item() > before + 0.05


@torch.no_grad()
def test_soft_selection_weights_sum_to_one(tiny_backbone):
    model = make_pool(tiny_backbone, selection="soft", temperature=0.5)
    context = two_texts(model)
    model.prompt.train()  # in training the pool adds each forward's selection weights to its histogram
    output = model.prompt(context)
    # α = softmax(cos(q, K) / τ): recomputed here, and checked against the weights the pool recorded.
    similarity = (torch.nn.functional.normalize(model.prompt.queries(context), dim=-1)
                  @ torch.nn.functional.normalize(model.prompt.keys, dim=-1).T)
    weights = (similarity / 0.5).softmax(-1)
    torch.testing.assert_close(model.prompt.selection_weights, weights.sum(0))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    torch.testing.assert_close(output.prepend, torch.einsum("bk,kph->bph", weights, model.prompt.pool))
    assert output.aux_loss is None  # keys learn through the weights


@pytest.mark.parametrize("placement,query", [("input", "backbone"), ("input", "encoder"), ("layers", "backbone")])
def test_parameter_counts(placement, query, tiny_backbone):
    model = make_pool(tiny_backbone, placement=placement, query=query)
    H, L = model.facts.hidden_size, model.facts.num_layers
    expected = {"prompt.pool": K * (L if placement == "layers" else 1) * P * H, "prompt.keys": K * H,
                "formats.classification.head.1.weight": 2 * H, "formats.classification.head.1.bias": 2}
    if query == "encoder":
        expected |= {"prompt.query_encoder.weight": H * H, "prompt.query_encoder.bias": H}
    assert {n: p.numel() for n, p in model.named_parameters() if p.requires_grad} == expected


@pytest.mark.parametrize("arch,fmt,extra", [
    ("bert", "head", ["--model.placement=input"]),
    ("gpt2", "text_to_text", ["--model.placement=layers", "--model.query=encoder"]),
    ("t5", "text_to_text", ["--model.placement=layers", "--model.selection=soft"]),
    ("llama", "head", ["--model.selection=soft"]),
])
def test_pool_through_the_cli_logs_its_selection_histogram(arch, fmt, extra, tiny_backbone, reviews, tmp_path):
    args = ["--model=PromptPool", f"--model.backbone={tiny_backbone(arch)}", f"--model.pool_size={K}",
            f"--model.prompt_length={P}", f"--data.task_format={fmt}", "--data.batch_size=8", "--data.id_column=id", *extra]
    if fmt == "text_to_text":
        args.append("--data.template=review : {text} sentiment :")
    cli = run_cli("fit", *args, data_files_arg(reviews), "--trainer.max_epochs=2", root=tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    epochs = [r for r in rows if r.get("pool/entries_used")]
    assert len(epochs) == 2  # one histogram per epoch
    for row in epochs:
        shares = [float(row[f"pool/selected_{k}"]) for k in range(K)]
        assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    output = tmp_path / "predictions.jsonl"
    files = {**reviews, "test": reviews["unlabelled"]}
    run_cli("predict", *args, data_files_arg(files), f"--ckpt_path={cli.trainer.checkpoint_callback.best_model_path}",
            f"--predictions.output={output}", root=tmp_path)
    assert len(output.read_text().splitlines()) == 8
    exported = lit_prompts.load(tmp_path / "lightning_logs" / "version_0" / "prompt")
    assert torch.equal(exported.prompt.keys, lit_prompts.load(cli.trainer.checkpoint_callback.best_model_path).prompt.keys)


def test_pool_under_ddp_two_processes(tiny_backbone, reviews, tmp_path):
    """Unselected entries still get (zero) gradients and keys always take part, so DDP's default
    strategy never meets an unused parameter; the histogram sums both processes' selections."""
    args = ["--model=PromptPool", f"--model.backbone={tiny_backbone('gpt2')}", f"--model.pool_size={K}",
            f"--model.prompt_length={P}", "--model.placement=layers", "--data.batch_size=8",
            data_files_arg(reviews, ("train", "validation")), "--trainer.max_epochs=1",
            "--trainer.strategy=ddp_spawn", "--trainer.devices=2"]
    cli = run_cli("fit", *args, root=tmp_path)
    assert cli.trainer.world_size == 2
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    shares = [float(r[f"pool/selected_{k}"]) for r in rows if r.get("pool/entries_used") for k in range(K)]
    assert sum(shares) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("task,fmt,arch,placement", [("ner", "token", "bert", "input"), ("qa", "span", "gpt2", "layers")])
def test_pool_on_token_and_span_tasks(task, fmt, arch, placement, tiny_backbone, ner_files, squad_files, tmp_path):
    files = {"train": ner_files["train"], "validation": ner_files["validation"]} if task == "ner" else squad_files
    args = ["--model=PromptPool", f"--model.backbone={tiny_backbone(arch)}", f"--model.pool_size={K}",
            f"--model.prompt_length={P}", f"--model.placement={placement}", f"--data.task={task}",
            f"--data.task_format={fmt}", "--data.batch_size=8", "--data.max_length=48", "--data.stride=16",
            f"--data.data_files={json.dumps(files)}", "--trainer.max_epochs=1"]
    cli = run_cli("fit", *args, root=tmp_path)
    assert {"val/f1"} <= set(cli.trainer.callback_metrics)
