"""The composed parts on their own: a prompt module and a task format trained by a plain PyTorch loop
over ``PromptedBackbone``; a mixed-task batch in one backbone call; a method written out of tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import data_files_arg, run_cli
from release_cases import MIXED_TASKS, mixed_rows, write_files
from tiny_backbones import ARCHITECTURES

import lit_prompts
from lit_prompts import Prompted, PromptedBackbone, build_format
from lit_prompts.data import MultiTaskDataModule
from lit_prompts.methods import DeepPrompt, Prefix, SoftPrompt
from lit_prompts.methods.base import NoPrompt, Prompt, PromptContext, PromptOutput
from lit_prompts.prompted import share_hidden_states

FIXTURES = Path(__file__).parent / "fixtures" / "release_0_1"


@pytest.mark.parametrize("kind", ["PromptTuning", "PTuningV2"])
def test_plain_pytorch_loop_trains_a_prompt(kind, tiny_backbone, reviews):
    torch.manual_seed(0)
    backbone = PromptedBackbone.load(tiny_backbone("bert"), "head")
    hidden, layers = backbone.facts.hidden_size, backbone.num_layers
    prompt = (SoftPrompt(4, hidden, init=backbone.vocab_embeddings((4,))) if kind == "PromptTuning"
              else DeepPrompt(layers, 4, hidden, init=backbone.vocab_embeddings((layers, 4))))
    task = build_format("classification", "head", ["positive", "negative"], hidden, pooling="mean", head_dropout=0.0)
    rows = [json.loads(line) for line in open(reviews["train"])]
    batch = dict(backbone.tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt"))
    batch["label"] = torch.tensor([r["label"] == "negative" for r in rows]).long()
    frozen, start = {k: v.clone() for k, v in backbone.state_dict().items()}, [p.clone() for p in prompt.parameters()]
    optimizer = torch.optim.AdamW([*prompt.parameters(), *task.parameters()], lr=0.01)
    losses = []
    for _ in range(40):
        loss = task.loss(Prompted(backbone, prompt), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # (A tiny random backbone separates little: the loss falls, it cannot fall to zero.)
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(not torch.equal(a, b) for a, b in zip(start, prompt.parameters()))  # the prompt trained
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in frozen.items())  # the backbone never moved


def predict_alone_and_mixed(model, data) -> tuple[list[dict], list[dict], int]:
    """Rows of one mixed batch predicted together (counting backbone calls), and each task's rows alone."""
    data.setup("predict")
    batch = next(iter(data.predict_dataloader()))
    calls = []
    hook = model.backbone.model.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        mixed = model.predict_step(batch, 0)
        hook.remove()
        alone = {}
        for task, sub_batch in batch["task_batches"].items():
            for position, row in zip(batch["positions"][task], model.predict_step({**sub_batch, "task": task}, 0)):
                alone[position] = row
    return mixed, [alone[i] for i in sorted(alone)], len(calls)


@pytest.mark.parametrize("source", ["trained mpt, layer prompts", "selector, per-row input prompts"])
def test_mixed_batch_runs_one_backbone_call_and_equals_each_task_alone(source, tiny_backbone, tmp_path):
    backbone = tiny_backbone("bert")
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mixed_rows()))
    files = write_files(tmp_path)
    tasks = {name: {**spec, "data_files": {"train": str(files[f]), "validation": str(files[f])}}
             for (name, spec), f in zip(MIXED_TASKS.items(), ("reviews_train", "ner_train", "squad"))}
    data = MultiTaskDataModule(backbone=backbone, tasks=tasks, predict_files=str(tmp_path / "mixed.jsonl"), eval_batch_size=64)
    if source.startswith("trained"):
        model = lit_prompts.load(FIXTURES / "multitask_bert_mpt.ckpt", backbone=backbone)
    else:
        torch.manual_seed(0)
        model = lit_prompts.MultiTaskPromptTuning(backbone=backbone, task_specs=data.task_specs, variant="selector",
                                                  num_virtual_tokens=3, pool_size=4, selector_hidden_size=8).eval()
    mixed, alone, calls = predict_alone_and_mixed(model, data)
    assert calls == 1
    assert {r["task"] for r in mixed} == set(MIXED_TASKS) and len(mixed) == len(mixed_rows())
    assert [{k: v for k, v in r.items() if k != "score"} for r in mixed] == [{k: v for k, v in r.items() if k != "score"} for r in alone]
    for a, b in zip(mixed, alone):
        if a.get("score") is not None:
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


@pytest.mark.integration
def test_out_of_tree_instance_dependent_method_runs_through_the_cli(tiny_backbone, reviews, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "out_of_tree"))
    args = ["--model=instance_prompts.InstancePromptTuning", f"--model.backbone={tiny_backbone('gpt2')}",
            "--model.num_virtual_tokens=3", "--model.bottleneck=4", "--data.id_column=id", "--data.batch_size=8"]
    cli = run_cli("fit", *args, data_files_arg(reviews), "--trainer.max_epochs=1", root=tmp_path)
    model, layers = cli.model, cli.model.backbone.num_layers
    hidden = model.facts.hidden_size
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    per_layer = {"0.weight": hidden * 4, "0.bias": 4, "2.weight": 4 * 3 * hidden, "2.bias": 3 * hidden}
    expected = {f"prompt.generators.{layer}.{k}": v for layer in range(layers) for k, v in per_layer.items()}
    assert trainable == {**expected, "formats.classification.head.1.weight": hidden * 2, "formats.classification.head.1.bias": 2}
    output = tmp_path / "predictions.jsonl"
    best = cli.trainer.checkpoint_callback.best_model_path
    run_cli("predict", *args, data_files_arg({**reviews, "test": reviews["unlabelled"]}), f"--ckpt_path={best}",
            f"--predictions.output={output}", root=tmp_path)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 8 and {r["label"] for r in rows} <= {"positive", "negative"}
    # The exported prompt names its own (out-of-tree) prompt class: loading it runs that code only when trusted.
    folder = tmp_path / "lightning_logs" / "version_0" / "prompt"
    with pytest.raises(ValueError, match="trust_code"):
        lit_prompts.load(folder)
    loaded = lit_prompts.load(folder, trust_code=True)
    assert all(torch.equal(loaded.export_tensors()[k], v) for k, v in model.export_tensors().items())


class PerRowDeepPrompt(Prompt):
    """A deep prompt of its own for every row (as an input-dependent method makes)."""

    def __init__(self, layers: int, length: int, hidden: int):
        super().__init__()
        self.layers, self.length, self.hidden = layers, length, hidden

    def forward(self, context: PromptContext) -> PromptOutput:
        generator = torch.Generator().manual_seed(context.batch_size)
        return PromptOutput(layer_hidden=torch.randn(context.batch_size, self.layers, self.length, self.hidden,
                                                     generator=generator))


LAYOUTS = {"one call": dict(call_cost=None), "a call per width": dict(call_cost=0.0), "packed": dict(packed=True)}


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_joined_hidden_states_equal_each_prompt_alone(arch, layout, tiny_backbone):
    """Input-level, deep, per-row deep and prefix prompts of different lengths over texts of different
    lengths, joined into one backbone call (padded, split by width, or packed end to end): every real
    token's hidden state as its own call gives it."""
    torch.manual_seed(0)
    backbone = PromptedBackbone.load(tiny_backbone(arch), "head")
    if backbone.facts.is_decoder_only:  # as the data module pads decoders
        backbone.tokenizer.padding_side = "left"
        backbone.tokenizer.pad_token = backbone.tokenizer.pad_token or backbone.tokenizer.eos_token
    f, layers = backbone.facts, backbone.num_layers
    prompts = {
        "input": SoftPrompt(3, f.hidden_size, init=torch.randn(3, f.hidden_size)),
        "deep": DeepPrompt(layers, 2, f.hidden_size, init=torch.randn(layers, 2, f.hidden_size)),
        "per_row": PerRowDeepPrompt(layers, 3, f.hidden_size),
        "prefix": Prefix(layers, f.num_key_value_heads, 4, f.head_dim, f.hidden_size,
                         init=torch.randn(layers, 2, f.num_key_value_heads, 4, f.head_dim)),
        "none": NoPrompt(),
    }
    texts = {"input": ["a good film", "bad"], "deep": ["the plot was long and dull and slow"],
             "per_row": ["so very dull", "fun"], "prefix": ["fun", "great fun indeed", "so so"],
             "none": ["plain text here"]}
    batches = {k: dict(backbone.tokenizer(t, padding=True, return_tensors="pt")) for k, t in texts.items()}
    runs = {k: Prompted(backbone, p) for k, p in prompts.items()}
    with torch.no_grad():
        alone = {k: runs[k].hidden_states(batches[k]) for k in runs}
        calls = share_hidden_states(runs, batches, list(runs), **LAYOUTS[layout])
        joined = {k: runs[k].hidden_states(batches[k]) for k in runs}
    assert calls > 1 if layout == "a call per width" else calls == 1
    for k in runs:
        real = batches[k]["attention_mask"].bool()
        assert joined[k].shape == alone[k].shape, k
        assert torch.allclose(joined[k][real], alone[k][real], atol=1e-5), (k, (joined[k][real] - alone[k][real]).abs().max())
