"""Deep prompts (PrefixTuning, PTuningV2): injection equals a hand-built cache, reaches every layer,
survives gradient checkpointing and padding, generates like the backbone with the prefix by hand."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import data_files_arg, run_cli
from tiny_backbones import build_tiny_backbone
from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel, DynamicCache

import lit_prompts
from lit_prompts import PrefixTuning, PromptDataModule, PTuningV2
from lit_prompts.backbone import load_backbone
from lit_prompts.data.collate import pad_rows

P = 3
METHODS = {"PrefixTuning": PrefixTuning, "PTuningV2": PTuningV2}
# The richest format of each architecture: encoders through a head, decoders and T5 as text-to-text.
ARCH_FORMAT = {
    "bert": "head", "roberta": "head", "distilbert": "head", "mpnet": "head",
    "gpt2": "text_to_text", "llama": "text_to_text", "t5": "text_to_text",
}
CASES = [(m, a) for m in METHODS for a in ARCH_FORMAT]
IDS = [f"{m}-{a}" for m, a in CASES]


def build(tiny_backbone, reviews, method: str, arch: str, fmt: str | None = None, **kwargs):
    fmt = fmt or ARCH_FORMAT[arch]
    backbone = tiny_backbone(arch)
    template = {"template": "review : {text} sentiment :"} if fmt == "text_to_text" else {}
    dm = PromptDataModule(
        backbone=backbone, task_format=fmt, data_files={"train": reviews["train"], "validation": reviews["validation"]},
        batch_size=6, **template,
    )
    dm.setup("fit")
    torch.manual_seed(0)
    model = METHODS[method](
        backbone=backbone, task_format=fmt, label_names=dm.label_names, num_virtual_tokens=P, reparameterize=False, **kwargs
    )
    # Random scales, so that no layer's prompt could be ignored by accident.
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.normal_(0, 1)
    return dm, model


def layer_prompt(model) -> torch.Tensor:
    """The plain per-layer prompt tensor, layer first."""
    return model.prompt.prefix if isinstance(model, PrefixTuning) else model.prompt.deep_prompts


def layer_prefixes(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per self-attention layer: the prefix keys and values [H_kv, P, d] the method's prompt puts in place."""
    if isinstance(model, PrefixTuning):
        return [(layer[0], layer[1]) for layer in model.prompt.full_prefix()]
    return model.backbone.layer_kv(model.prompt.hidden_prompts())


def prompted_kwargs(model, ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """Keyword arguments for the frozen HF model with the method's prompt in place (deep prompts prepend nothing)."""
    inputs = {"input_ids": ids, "attention_mask": mask}
    kwargs, shift = model.backbone.prompted_inputs(inputs, *model.prompted(model.default_task).prompt_for(inputs))
    assert shift == 0
    return kwargs


def generate_ids(model, ids: torch.Tensor, mask: torch.Tensor, **settings) -> torch.Tensor:
    """Token ids generated with the method's prompt in place."""
    inputs = {"input_ids": ids, "attention_mask": mask}
    return model.backbone.generate(inputs, *model.prompted(model.default_task).prompt_for(inputs), **settings)


def scores(model, batch) -> torch.Tensor:
    """[B, num_labels] scores of the method's (single) task format."""
    task = model.default_task
    return model.formats[task].scores(model.prompted(task), batch)


def loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    torch.manual_seed(0)  # the same head-dropout mask for every call
    loss = model.training_loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method,arch", CASES, ids=IDS)
def test_prefix_reaches_every_layer(method, arch, tiny_backbone, reviews):
    dm, model = build(tiny_backbone, reviews, method, arch)
    batch = next(iter(dm.train_dataloader()))
    model.train()
    loss, grads = loss_and_grads(model, batch)

    # Every layer's prompt (keys and values, for prefixes) gets a gradient.
    per_layer = grads["prompt.prefix" if method == "PrefixTuning" else "prompt.deep_prompts"]
    assert per_layer.shape[0] == model.backbone.num_layers == len(model.backbone.injector)
    for layer, grad in enumerate(per_layer):
        parts = grad.unbind(0) if method == "PrefixTuning" else [grad]  # key, value
        assert all(part.abs().sum() > 0 for part in parts), f"layer {layer} got no gradient"

    # Without the prefix, the same batch gives another loss.
    model.backbone.install_layers = lambda prompt: model.backbone.injector.set(None)
    assert not torch.allclose(model.training_loss(batch), loss)


@pytest.mark.parametrize("method,arch", [c for c in CASES if c[1] != "mpnet"], ids=[i for i in IDS if "mpnet" not in i])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(method, arch, tiny_backbone, reviews):
    dm, plain = build(tiny_backbone, reviews, method, arch)
    _, checkpointed = build(tiny_backbone, reviews, method, arch, gradient_checkpointing=True)
    calls = []
    for module in checkpointed.backbone.modules():
        if getattr(module, "gradient_checkpointing", False):
            inner = module._gradient_checkpointing_func
            module._gradient_checkpointing_func = lambda *a, _f=inner, **k: calls.append(1) or _f(*a, **k)
    batch = next(iter(dm.train_dataloader()))
    loss, grads = loss_and_grads(plain.train(), batch)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed.train(), batch)
    assert len(calls) >= checkpointed.facts.num_layers, "the layers really ran under checkpointing"
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=1e-6)
    assert grads_ckpt.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-6)


def test_mpnet_gradient_checkpointing_is_refused_clearly(tiny_backbone):
    with pytest.raises(ValueError, match="gradient_checkpointing: MPNet"):
        PTuningV2(backbone=tiny_backbone("mpnet"), label_names=["a", "b"], gradient_checkpointing=True)


def real_token_outputs(model, rows: list[list[int]], pad_id: int, side: str) -> list[torch.Tensor]:
    """Per row: the backbone's outputs at that row's real tokens (T5: the decoder's logits)."""
    ids = pad_rows(rows, pad_id, side)
    mask = pad_rows([[1] * len(r) for r in rows], 0, side)
    inputs = prompted_kwargs(model, ids, mask)
    if model.facts.is_encoder_decoder:
        decoder_ids = torch.tensor([[0, 5, 9, 7]] * len(rows))
        return list(model.backbone.model(**inputs, decoder_input_ids=decoder_ids).logits)
    out = model.backbone.model(**inputs)
    states = out.logits if model.facts.is_decoder_only else out.last_hidden_state
    return [row[m.bool()] for row, m in zip(states, mask)]


@pytest.mark.parametrize("method,arch", CASES, ids=IDS)
@torch.no_grad()
def test_padding_left_or_right_leaves_real_tokens_unchanged(method, arch, tiny_backbone, reviews):
    dm, model = build(tiny_backbone, reviews, method, arch)
    model.eval()
    rows = [f["input_ids"] for f in dm.datasets["validation"].features[:4]]
    assert len({len(r) for r in rows}) > 1, "rows of different lengths, so the batch is padded"
    pad_id = dm.tokenizer.pad_token_id or 0
    alone = [real_token_outputs(model, [r], pad_id, "right")[0] for r in rows]
    # Encoders are only ever right-padded; decoders and T5 are checked on both sides.
    sides = ("left", "right") if model.facts.is_decoder_only or model.facts.is_encoder_decoder else ("right",)
    for side in sides:
        for got, expected in zip(real_token_outputs(model, rows, pad_id, side), alone):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def hand_cache(model, batch_size: int) -> DynamicCache:
    """The method's prefix as a DynamicCache, [B, H_kv, P, d] per layer."""
    cache = DynamicCache()
    for layer, (key, value) in enumerate(layer_prefixes(model)):
        expand = lambda t: t.detach().unsqueeze(0).expand(batch_size, -1, -1, -1).contiguous()  # noqa: E731
        cache.update(expand(key), expand(value), layer)
    return cache


def decoder_batch(dm, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [f["input_ids"] for f in dm.datasets["validation"].features[:n]]
    return pad_rows(rows, dm.tokenizer.pad_token_id or 0, "left"), pad_rows([[1] * len(r) for r in rows], 0, "left")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@torch.no_grad()
def test_injection_equals_a_hand_built_dynamic_cache(method, arch, tiny_backbone, reviews):
    dm, model = build(tiny_backbone, reviews, method, arch)
    model.eval()
    ids, mask = decoder_batch(dm)
    ours = model.backbone.model(**prompted_kwargs(model, ids, mask)).logits

    reference = load_backbone(tiny_backbone(arch), "text_to_text").eval()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens keep the positions they have without a prefix
    theirs = reference(
        input_ids=ids, attention_mask=torch.cat([torch.ones(len(ids), P, dtype=mask.dtype), mask], 1),
        position_ids=positions, past_key_values=hand_cache(model, len(ids)),
    ).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)


def generate_by_hand(model, reference, ids, mask, num_beams: int, max_new_tokens: int) -> torch.Tensor:
    """``generate`` on the untouched backbone with the prefix supplied as a cache by hand.

    The cache holds P positions, so ``generate`` is given P placeholder tokens in front (it skips
    the cached ones) and numbers every position P too high: the forward takes P back off, so real
    tokens keep their own positions, as under the injection."""
    forward = reference.forward

    @functools.wraps(forward)
    def forward_with_real_positions(*args, position_ids=None, **kwargs):
        return forward(*args, position_ids=(position_ids - P).clamp(min=0), **kwargs)

    reference.forward = forward_with_real_positions
    batch = len(ids) * num_beams  # beam search runs B·beams rows, each example's beams in a row
    cache = DynamicCache()
    for layer, (key, value) in enumerate(layer_prefixes(model)):
        cache.update(*(t.detach().unsqueeze(0).expand(batch, -1, -1, -1).contiguous() for t in (key, value)), layer)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else model.tokenizer.eos_token_id
    out = reference.generate(
        input_ids=torch.cat([torch.full((len(ids), P), pad), ids], 1),
        attention_mask=torch.cat([torch.ones(len(ids), P, dtype=mask.dtype), mask], 1),
        past_key_values=cache, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False, pad_token_id=pad,
    )
    return out[:, P + ids.shape[1] :]


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_generation_equals_the_backbone_with_the_prefix_by_hand(arch, method, num_beams, tiny_backbone, reviews):
    dm, model = build(tiny_backbone, reviews, method, arch)
    model.eval()
    ids, mask = decoder_batch(dm)
    ours = generate_ids(model, ids, mask, num_beams=num_beams, max_new_tokens=6)
    reference = load_backbone(tiny_backbone(arch), "text_to_text").eval()
    theirs = generate_by_hand(model, reference, ids, mask, num_beams=num_beams, max_new_tokens=6)
    assert ours.shape[1] > 0
    assert torch.equal(ours, theirs)  # with inputs_embeds, generate returns the new tokens only
    # And the prefix matters: the backbone alone generates something else.
    bare = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, num_beams=num_beams,
                              do_sample=False, pad_token_id=model.tokenizer.eos_token_id)
    assert not torch.equal(bare[:, ids.shape[1] :], theirs)


@pytest.mark.parametrize("method", METHODS)
@torch.no_grad()
def test_t5_generation_with_cache_equals_without(method, tiny_backbone, reviews):
    dm, model = build(tiny_backbone, reviews, method, "t5")
    model.eval()
    rows = [f["input_ids"] for f in dm.datasets["validation"].features[:4]]
    ids, mask = pad_rows(rows, 0, "right"), pad_rows([[1] * len(r) for r in rows], 0, "right")
    for beams in (1, 3):
        cached = generate_ids(model, ids, mask, num_beams=beams, max_new_tokens=6)
        uncached = generate_ids(model, ids, mask, num_beams=beams, max_new_tokens=6, use_cache=False)
        assert torch.equal(cached, uncached)
    # Greedy's first token is the argmax of one teacher-forced forward with the prefix in both stacks.
    start = torch.full((len(rows), 1), model.backbone.model.config.decoder_start_token_id)
    first = model.backbone.model(**prompted_kwargs(model, ids, mask), decoder_input_ids=start).logits[:, -1].argmax(-1)
    assert torch.equal(generate_ids(model, ids, mask, max_new_tokens=1)[:, 1], first)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ["bert", "gpt2", "t5"])
@torch.no_grad()
def test_reparameterised_prompt_folds_into_an_export_with_the_same_outputs(method, arch, tiny_backbone, reviews, tmp_path):
    dm, _ = build(tiny_backbone, reviews, method, arch)
    torch.manual_seed(1)
    model = METHODS[method](
        backbone=tiny_backbone(arch), task_format=ARCH_FORMAT[arch], label_names=dm.label_names,
        num_virtual_tokens=P, reparameterize=True, reparam_hidden_size=16,
    ).eval()
    model.export_prompt(tmp_path / "prompt")
    exported = lit_prompts.load(tmp_path / "prompt").eval()
    # The export holds the folded prompt: the plain tensor, no MLP.
    assert model.prompt.settings["reparam_hidden_size"] == 16 and hasattr(model.prompt, "reparam")
    assert exported.prompt.settings["reparam_hidden_size"] is None and not hasattr(exported.prompt, "reparam")
    batch = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(scores(exported, batch), scores(model, batch), rtol=1e-5, atol=1e-5)


def test_reparameterised_prefix_tuning_under_ddp_and_resume(tiny_backbone, reviews, tmp_path):
    args = [
        "--model=PrefixTuning", f"--model.backbone={tiny_backbone('gpt2')}", "--model.num_virtual_tokens=3",
        "--model.reparameterize=true", "--model.reparam_hidden_size=16", "--data.batch_size=8", data_files_arg(reviews), "--seed_everything=3",
    ]
    cli = run_cli("fit", *args, "--trainer.max_epochs=1", "--trainer.strategy=ddp_spawn", "--trainer.devices=2",
                  root=tmp_path / "ddp")
    assert cli.trainer.world_size == 2
    exported = lit_prompts.load(tmp_path / "ddp" / "lightning_logs" / "version_0" / "prompt")
    assert exported.prompt.prefix.shape == (2, 2, 4, 3, 8)  # layers, key/value, heads, P, head_dim

    # The MLP is training state: a run resumed from epoch 0 ends where an uninterrupted one does.
    keep_all = ["--checkpoint.save_top_k=-1", "--checkpoint.monitor=null", "--checkpoint.filename=epoch{epoch}"]
    run_cli("fit", *args, "--trainer.max_epochs=2", *keep_all, root=tmp_path / "whole")
    checkpoints = tmp_path / "whole" / "lightning_logs" / "version_0" / "checkpoints"
    run_cli("fit", *args, "--trainer.max_epochs=2", f"--ckpt_path={checkpoints / 'epoch0.ckpt'}", root=tmp_path / "resumed")
    whole = torch.load(checkpoints / "last.ckpt", weights_only=True)["state_dict"]
    resumed_path = tmp_path / "resumed" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    resumed = torch.load(resumed_path, weights_only=True)["state_dict"]
    assert any(k.startswith("prompt.reparam.mlp") for k in whole)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_parameter_counts_of_a_distilbert_base_sized_backbone(tmp_path):
    """DistilBERT-base shapes (6 layers, hidden 768, 12 heads) with a small vocabulary and FFN."""
    folder = build_tiny_backbone("distilbert", tmp_path / "tok")
    config = DistilBertConfig(vocab_size=len(AutoTokenizer.from_pretrained(folder)), dim=768, n_layers=6, n_heads=12,
                              hidden_dim=32, max_position_embeddings=64)
    DistilBertModel(config).save_pretrained(folder)
    deep = PTuningV2(backbone=str(folder), label_names=["negative", "positive"], num_virtual_tokens=10)
    counts = {n: p.numel() for n, p in deep.named_parameters() if p.requires_grad}
    assert counts == {"prompt.deep_prompts": 6 * 10 * 768, "formats.classification.head.1.weight": 768 * 2,
                      "formats.classification.head.1.bias": 2}
    assert counts["prompt.deep_prompts"] == 46_080
    prefix = PrefixTuning(backbone=str(folder), label_names=["negative", "positive"], num_virtual_tokens=10,
                          reparameterize=False)
    assert prefix.prompt.prefix.numel() == 6 * 2 * 10 * 768 == 92_160
