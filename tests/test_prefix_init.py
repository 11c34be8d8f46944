"""Prefix tuning's initialisation from real words (Li & Liang): each layer's keys and values of the words
exactly as the frozen backbone computes them (checked against the backbone run on its own: its cache, or
hooks on its key/value projections), the reparameterised prefix starting there, and checkpoints keeping it."""

from __future__ import annotations

import pytest
import torch
from conftest import data_files_arg, run_cli

import lit_prompts
from lit_prompts import PrefixTuning
from lit_prompts.backbone import load_backbone
from lit_prompts.prompted_backbone import PromptedBackbone
from lit_prompts.training.initial_prompts import default_init_text, initial_prefix, word_prefix

P = 7
TEXT = "great movie"  # fewer tokens than P: repeated, then cut
LABELS = ["negative", "positive"]
# (architecture, format): every supported architecture; T5 in both forms (encoder alone, and with its decoder).
CASES = [("bert", "head"), ("roberta", "head"), ("distilbert", "head"), ("mpnet", "head"), ("gpt2", "text_to_text"),
         ("llama", "text_to_text"), ("t5", "text_to_text"), ("t5", "head"), ("bert", "cloze")]
_KV_NAMES = (("key", "value"), ("k_lin", "v_lin"), ("k", "v"))  # BERT/RoBERTa, DistilBERT, MPNet/T5


def word_ids(path: str, length: int = P) -> torch.Tensor:
    ids = load_backbone_tokenizer(path)(TEXT, add_special_tokens=False).input_ids
    return torch.tensor([(ids * length)[:length]])


def load_backbone_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def projected_kv(model, ids: torch.Tensor, stack: str = "", **kwargs) -> list[torch.Tensor]:
    """[2, H_kv, P, d] per self-attention layer (of ``stack``, T5): the outputs of its key and value
    projections, read by forward hooks while the untouched model runs on ``ids``."""
    pairs = []
    for name, module in model.named_modules():
        children = dict(module.named_children())
        cross = "EncDecAttention" in name or "crossattention" in name
        if type(module).__name__.endswith("Attention") and not cross and f"{stack}" in name:
            pairs += [(children[k], children[v], module) for k, v in _KV_NAMES if k in children]
    outputs: dict[int, torch.Tensor] = {}
    handles = [linear.register_forward_hook(lambda m, args, out: outputs.__setitem__(id(m), out[0]))
               for k, v, _ in pairs for linear in (k, v)]
    model(input_ids=ids, **kwargs)
    for handle in handles:
        handle.remove()
    heads = model.config.num_attention_heads if hasattr(model.config, "num_attention_heads") else model.config.num_heads
    return [torch.stack([outputs[id(t)].unflatten(-1, (heads, -1)).transpose(0, 1) for t in (k, v)]) for k, v, _ in pairs]


def cached_kv(cache) -> list[torch.Tensor]:
    return [torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers]


@torch.no_grad()
def reference_prefix(path: str, fmt: str, positions: str = "none") -> torch.Tensor:
    """The backbone's own keys and values of the words, [L, 2, H_kv, P, d], without lit_prompts' machinery."""
    model = load_backbone(path, fmt).eval()
    ids = word_ids(path)
    arch = model.config.model_type
    if arch in ("gpt2", "llama"):  # decoders: the key/value cache they build themselves (rotary keys rotated)
        # Rotary under prefix_positions none: the words sit at -P..-1, right before the text at 0.. .
        where = {"position_ids": torch.arange(-P, 0)[None]} if arch == "llama" and positions == "none" else {}
        return torch.stack(cached_kv(model(input_ids=ids, use_cache=True, **where).past_key_values))
    if arch == "t5" and fmt == "text_to_text":  # encoder by hooks, decoder by its self-attention cache
        encoder = projected_kv(model, ids, "encoder.", decoder_input_ids=ids, use_cache=False)
        decoder = cached_kv(model(input_ids=ids, decoder_input_ids=ids, use_cache=True).past_key_values.self_attention_cache)
        return torch.stack(encoder + decoder)
    return torch.stack(projected_kv(model, ids))  # encoders: no rotary, the projections' outputs are the keys


def prefix_tuning(path: str, fmt: str, **kwargs) -> PrefixTuning:
    verbalizer = {"verbalizer_token_ids": [5, 6]} if fmt == "cloze" else {}
    return PrefixTuning(backbone=path, task_format=fmt, label_names=LABELS, num_virtual_tokens=P, init_text=TEXT,
                        reparam_hidden_size=16, **verbalizer, **kwargs)


@pytest.mark.parametrize("arch,fmt", CASES, ids=[f"{a}-{f}" for a, f in CASES])
def test_word_prefix_is_exactly_the_backbones_own_keys_and_values(arch, fmt, tiny_backbone):
    path = tiny_backbone(arch)
    plain = prefix_tuning(path, fmt, reparameterize=False)
    expected = reference_prefix(path, fmt)
    assert plain.prompt.prefix.shape == expected.shape == (plain.backbone.num_layers, 2, plain.facts.num_key_value_heads,
                                                           P, plain.facts.head_dim)
    assert torch.equal(plain.prompt.prefix.detach(), expected)
    # The reparameterised prefix starts there exactly: start + MLP(E) with the MLP's last layer at zero.
    torch.manual_seed(0)
    reparameterised = prefix_tuning(path, fmt, reparameterize=True)  # init words: the default
    assert reparameterised.hparams.init == "words" and not prefix_tuning(path, fmt).hparams.reparameterize
    assert torch.equal(reparameterised.prompt.full_prefix().detach(), expected)
    assert torch.equal(reparameterised.prompt.folded().prefix, expected)


def test_rotary_prefix_positions_first_takes_the_cache_at_positions_from_zero(tiny_backbone):
    llama = tiny_backbone("llama")
    first = prefix_tuning(llama, "text_to_text", reparameterize=False, prefix_positions="first")
    expected = reference_prefix(llama, "text_to_text", positions="first")
    assert torch.equal(first.prompt.prefix.detach(), expected)
    assert not torch.equal(expected, reference_prefix(llama, "text_to_text", positions="none"))


@pytest.mark.parametrize("arch,positions", [("llama", "none"), ("llama", "first"), ("gpt2", "first")])
@torch.no_grad()
def test_at_step_zero_a_decoder_reads_the_text_as_if_the_words_came_before_it(arch, positions, tiny_backbone):
    """Why the words sit where they do: the default (reparameterised) prefix at step 0 makes the decoder's
    outputs on a text those of the backbone on words + text. Rotary attention depends on relative positions
    only, so under ``none`` (text at 0..) the words at -P..-1 give it too; absolute positions (GPT-2) need
    ``first``. Not bitwise: the concatenated run computes attention over other shapes (and rotary angles)."""
    path = tiny_backbone(arch)
    method = prefix_tuning(path, "text_to_text", prefix_positions=positions).eval()
    text = load_backbone_tokenizer(path)("a great movie , i loved it", return_tensors="pt")
    inputs = {"input_ids": text.input_ids, "attention_mask": text.attention_mask}
    kwargs, _ = method.prompted(method.default_task).prompted_inputs(inputs)
    ours = method.backbone.model(**kwargs).logits
    reference = load_backbone(path, "text_to_text").eval()
    theirs = reference(input_ids=torch.cat([word_ids(path), text.input_ids], 1)).logits[:, P:]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_reparameterised_prefix_trains_from_its_start_and_folds_exactly(tiny_backbone):
    torch.manual_seed(0)
    method = prefix_tuning(tiny_backbone("bert"), "head", reparameterize=True)
    reparam = method.prompt.reparam
    start = method.prompt.full_prefix().detach().clone()
    assert not reparam.start.requires_grad and "prompt.reparam.start" not in dict(method.named_parameters())
    assert torch.count_nonzero(reparam.mlp[2].weight) == torch.count_nonzero(reparam.mlp[2].bias) == 0
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-3)
    for _ in range(2):  # the last layer moves first; then the MLP's first layer and embedding get gradient too
        optimizer.zero_grad()
        method.prompt.full_prefix().square().sum().backward()
        optimizer.step()
    assert reparam.embedding.grad.abs().sum() > 0 and reparam.mlp[0].weight.grad.abs().sum() > 0
    trained = method.prompt.full_prefix().detach()
    assert not torch.equal(trained, start)
    assert torch.equal(reparam.start, start.permute(3, 0, 1, 2, 4).reshape(P, -1))  # the start stays frozen
    folded = method.prompt.folded()
    assert not hasattr(folded, "reparam") and torch.equal(folded.prefix, trained)


def test_vocab_init_is_the_previous_initialisation(tiny_backbone):
    path = tiny_backbone("gpt2")
    torch.manual_seed(3)
    method = prefix_tuning(path, "text_to_text", reparameterize=False, init="vocab")
    torch.manual_seed(3)
    assert torch.equal(method.prompt.prefix.detach(), initial_prefix(PromptedBackbone.load(path, "text_to_text"), P))


def test_default_init_text_describes_the_task():
    assert default_init_text("classification", LABELS) == "classify the text as negative or positive"
    assert default_init_text("ner", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]) == "find the named entities in the text: PER, LOC"
    assert default_init_text("qa", None) == "answer the question from the context"
    assert default_init_text("classification", None) == "classify the text"


def test_a_process_without_the_weights_gets_zeros(tiny_backbone):
    backbone = PromptedBackbone.load(tiny_backbone("llama"), "text_to_text", on_meta=True)
    assert not backbone.holds_weights
    assert torch.equal(word_prefix(backbone, P, TEXT), torch.zeros(2, 2, 2, P, 8))


def test_checkpoints_keep_the_start_and_older_ones_load_as_trained(tiny_backbone, tmp_path):
    torch.manual_seed(0)
    method = prefix_tuning(tiny_backbone("gpt2"), "text_to_text", reparameterize=True)
    with torch.no_grad():
        for p in method.trainable_parameters():
            p.normal_()
    saved = method.trainable_state_dict()
    assert "prompt.reparam.start" in saved and method.trainable_names() == set(saved)
    meta = {"class_path": method.class_path(), "format_version": 2, "backbone": method.fingerprint}
    hyper = {k: v for k, v in method.hparams.items()}
    torch.save({"state_dict": saved, "hyper_parameters": hyper, "lit_prompts": meta}, tmp_path / "new.ckpt")
    loaded = lit_prompts.load(tmp_path / "new.ckpt")
    assert torch.equal(loaded.prompt.full_prefix(), method.prompt.full_prefix())

    # Saved before the start existed: the prefix was the MLP's output alone, and still is.
    old = {k: v for k, v in saved.items() if k != "prompt.reparam.start"}
    torch.save({"state_dict": old, "hyper_parameters": hyper, "lit_prompts": meta}, tmp_path / "old.ckpt")
    loaded = lit_prompts.load(tmp_path / "old.ckpt")
    mlp_alone = method.prompt.reparam.mlp(method.prompt.reparam.embedding)
    assert torch.equal(loaded.prompt.reparam(), mlp_alone)
    checkpoint = {"state_dict": dict(old), "lit_prompts": meta}
    method.check_tensors(checkpoint)  # Lightning's path (fit --ckpt_path, load_from_checkpoint)
    assert torch.equal(checkpoint["state_dict"]["prompt.reparam.start"], torch.zeros_like(method.prompt.reparam.start))


def test_fit_from_words_saves_the_start_and_exports_the_plain_prefix(tiny_backbone, reviews, tmp_path):
    gpt2 = tiny_backbone("gpt2")
    cli = run_cli("fit", "--model=PrefixTuning", f"--model.backbone={gpt2}", f"--model.num_virtual_tokens={P}",
                  f"--model.init_text={TEXT}", "--model.reparameterize=true", "--model.reparam_hidden_size=16", "--data.batch_size=8",
                  data_files_arg(reviews), "--trainer.max_epochs=1", root=tmp_path)
    checkpoint = torch.load(cli.trainer.checkpoint_callback.best_model_path, weights_only=True)
    start = checkpoint["state_dict"]["prompt.reparam.start"]
    assert torch.equal(start, reference_prefix(gpt2, "text_to_text").permute(3, 0, 1, 2, 4).reshape(P, -1))
    exported = lit_prompts.load(tmp_path / "lightning_logs" / "version_0" / "prompt")
    assert not hasattr(exported.prompt, "reparam")
    assert torch.equal(exported.prompt.prefix, lit_prompts.load(cli.trainer.checkpoint_callback.best_model_path)
                       .prompt.full_prefix().detach())
