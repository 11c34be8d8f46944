"""P-tuning v2's initialisation from real words: each layer's deep prompt is the hidden states that layer's
attention receives for the words, checked against the backbone's own hidden states (``output_hidden_states``
and the norm in front of its attention), and, on models without rotary positions, projected by the layer
into exactly the words' keys and values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_prefix_init import TEXT, P, reference_prefix, word_ids

from lit_prompts import PTuningV2
from lit_prompts.backbone import load_backbone

LABELS = ["negative", "positive"]


def p_tuning_v2(path: str, fmt: str, **kwargs) -> PTuningV2:
    return PTuningV2(backbone=path, task_format=fmt, label_names=LABELS, num_virtual_tokens=P, init="words",
                     init_text=TEXT, **kwargs)


@torch.no_grad()
def reference_attention_inputs(path: str, fmt: str) -> torch.Tensor:
    """[L, P, H]: the words' hidden states entering each layer (``output_hidden_states``), through the norm
    that pre-norm layers apply before their attention; the words where word_prefix puts them."""
    model = load_backbone(path, fmt).eval()
    ids = word_ids(path)
    arch = model.config.model_type
    where = {"position_ids": torch.arange(-P, 0)[None]} if arch == "llama" else {}
    states = model(input_ids=ids, output_hidden_states=True, **where).hidden_states
    if arch == "gpt2":
        norms = [block.ln_1 for block in model.transformer.h]
    elif arch == "llama":
        norms = [layer.input_layernorm for layer in model.model.layers]
    else:  # post-norm encoders: the attention reads the previous layer's output as it is
        norms = [torch.nn.Identity()] * (len(states) - 1)
    return torch.stack([norm(hidden)[0] for norm, hidden in zip(norms, states[:-1])])


@pytest.mark.parametrize("arch,fmt", [("bert", "head"), ("gpt2", "text_to_text"), ("llama", "text_to_text")])
def test_words_are_the_hidden_states_each_layers_attention_receives(arch, fmt, tiny_backbone):
    path = tiny_backbone(arch)
    model = p_tuning_v2(path, fmt)
    expected = reference_attention_inputs(path, fmt)
    assert model.prompt.deep_prompts.shape == expected.shape == (model.backbone.num_layers, P, model.facts.hidden_size)
    torch.testing.assert_close(model.prompt.deep_prompts.detach(), expected, rtol=1e-5, atol=1e-6)
    if arch != "llama":  # no rotary: each layer's projections turn them into exactly the words' keys and values
        keys_values = torch.stack([torch.stack(kv) for kv in model.backbone.layer_kv(model.prompt.deep_prompts.detach())])
        torch.testing.assert_close(keys_values, reference_prefix(path, fmt), rtol=1e-5, atol=1e-6)


def test_vocab_start_and_words_start_differ_and_the_mlp_ignores_init(tiny_backbone):
    path = tiny_backbone("bert")
    torch.manual_seed(0)
    vocab = PTuningV2(backbone=path, label_names=LABELS, num_virtual_tokens=P, init="vocab").prompt.deep_prompts
    table = PTuningV2(backbone=path, label_names=LABELS).backbone.model.get_input_embeddings().weight
    assert all((table == row).all(-1).any() for row in vocab.detach().flatten(0, 1))  # vocabulary embeddings
    assert not torch.allclose(vocab, p_tuning_v2(path, "head").prompt.deep_prompts)
    assert p_tuning_v2(path, "head", reparameterize=True, reparam_hidden_size=8).prompt.reparam is not None


@pytest.mark.parametrize("kind", ["PTuningV2", "PrefixTuning"])
def test_loading_a_prompt_does_not_run_the_backbone_on_its_start_words(kind, tiny_backbone, tmp_path, monkeypatch):
    """The words' start is training's; a loaded prompt's saved tensors replace it, so ``load`` (serving
    loads one per prompt) neither runs the backbone nor loads the tokenizer for it, in either form."""
    import lit_prompts

    cls = getattr(lit_prompts, kind)
    method = cls(backbone=tiny_backbone("bert"), task_format="head", label_names=LABELS, num_virtual_tokens=P)
    with torch.no_grad():
        for p in method.prompt.parameters():
            p.add_(torch.randn_like(p))  # as if trained: no longer the start
    method.export_prompt(tmp_path / "prompt")
    saved = {"state_dict": method.state_dict(), "hyper_parameters": dict(method.hparams)}
    method.on_save_checkpoint(saved)
    checkpoint = tmp_path / "method.ckpt"
    torch.save(saved, checkpoint)

    def refuse(*args, **kwargs):
        raise AssertionError("the backbone ran on the start words while loading")

    for name in ("word_hidden_prompts", "word_prefix"):
        monkeypatch.setattr(lit_prompts.training.methods, name, refuse)
    for source in (tmp_path / "prompt", checkpoint):
        loaded = lit_prompts.load(source)
        assert all(torch.equal(loaded.export_tensors()[k], v) for k, v in method.export_tensors().items()), source
    with pytest.raises(AssertionError, match="start words"):  # building one to train still starts from the words
        cls(backbone=tiny_backbone("bert"), task_format="head", label_names=LABELS, num_virtual_tokens=P)


def test_p_tuning_v2_default_rate_falls_with_depth(tiny_backbone):
    import lit_prompts

    def depth(layers):
        return SimpleNamespace(num_layers=layers)

    assert PTuningV2.default_lr_on(depth(2)) == PTuningV2.default_lr_on(depth(6)) == 3e-2
    assert PTuningV2.default_lr_on(depth(30)) == pytest.approx(2.683e-3, rel=1e-3)  # SmolLM2: 3e-3 learned, 3e-2 did not
    assert PTuningV2.default_lr_on(depth(12)) == pytest.approx(3e-2 / 8 ** 0.5)
    assert lit_prompts.PromptTuning.default_lr_on(depth(30)) == lit_prompts.PromptTuning.default_lr  # one rate
    method = p_tuning_v2(tiny_backbone("llama"), "head")  # 2 layers: the rate of shallow backbones
    assert method.default_lr == 3e-2
