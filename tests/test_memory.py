"""Memory of a prompted training step, measured exactly on tiny backbones (no timing, no RSS): what
stays alive through the backbone's forward pass, and what is saved for the backward pass."""

from __future__ import annotations

import weakref

import pytest
import torch

from lit_prompts import Prompted, PromptedBackbone, build_format
from lit_prompts.methods import SoftPrompt

TEXTS = ["a good movie", "the worst film i have ever seen , really", "fine"]


def prompted_on(arch: str, task_format: str, tiny_backbone) -> tuple[PromptedBackbone, SoftPrompt, dict]:
    torch.manual_seed(0)
    backbone = PromptedBackbone.load(tiny_backbone(arch), task_format)
    prompt = SoftPrompt(4, backbone.facts.hidden_size, init=backbone.vocab_embeddings((4,)))
    tokenizer = backbone.tokenizer
    if tokenizer.pad_token is None:  # GPT-2's (lit_prompts' data module pads with eos too)
        tokenizer.pad_token = tokenizer.eos_token
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    return backbone, prompt, batch


def read(run: Prompted, task_format: str, batch: dict) -> torch.Tensor:
    if task_format == "head":
        return run.hidden_states(batch)
    if task_format == "cloze":
        return run.masked_lm_logits(batch)
    targets = torch.where(batch["attention_mask"].bool(), batch["input_ids"], -100)  # any real ids will do
    return run.sequence_logprobs({**batch, "target_ids": targets}, "sum")


@pytest.mark.parametrize("arch,task_format", [("bert", "head"), ("bert", "cloze"), ("gpt2", "text_to_text"),
                                              ("t5", "text_to_text")])
def test_text_embeddings_are_freed_before_the_forward_pass(arch, task_format, tiny_backbone):
    """The prompted embeddings replace the text's own [B, T, H]: nothing may hold those through the
    whole forward pass (PEFT does not; at 8B that is one more activation-sized tensor per step)."""
    backbone, prompt, batch = prompted_on(arch, task_format, tiny_backbone)
    text_embeds, alive_in_forward = [], []
    prompt.register_forward_hook(lambda module, args, out: text_embeds.append(weakref.ref(args[0].input_embeds)))
    backbone.model.register_forward_pre_hook(lambda module, args: alive_in_forward.append(text_embeds[-1]() is not None))
    read(Prompted(backbone, prompt), task_format, batch).sum().backward()
    assert alive_in_forward == [False]
    assert prompt.prompt.grad is not None


def saved_bytes(fn, exclude: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages ``fn``'s autograd graph saves for backward, less those of
    ``exclude`` (weights: saved by reference, they cost nothing)."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    storages = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in excluded:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("pooling", ["first", "last", "mean"])
def test_head_step_saves_little_beyond_the_backbone_forward(pooling, tiny_backbone):
    """A head-format loss saves for backward what the frozen backbone saves running on the prompted
    embeddings (built by hand, as PEFT builds them), plus pooling and head tensors of [B, T] and
    [B, H] size: less than one more [B, T, H] hidden-state tensor."""
    backbone, prompt, batch = prompted_on("bert", "head", tiny_backbone)
    head = build_format("classification", "head", ["positive", "negative"], backbone.facts.hidden_size,
                        pooling=pooling, head_dropout=0.1).train()
    batch["label"] = torch.tensor([1, 0, 1])
    weights = [*backbone.parameters(), *prompt.parameters(), *head.parameters()]

    def reference():
        mask = batch["attention_mask"]
        embeds = backbone.model.get_input_embeddings()(batch["input_ids"])
        embeds = torch.cat([prompt.prompt.expand(len(mask), -1, -1), embeds], dim=1)
        mask = torch.cat([mask.new_ones(len(mask), prompt.prompt.shape[0]), mask], dim=1)
        backbone.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state.sum()

    ours = saved_bytes(lambda: head.loss(Prompted(backbone, prompt), batch), weights)
    theirs = saved_bytes(reference, weights)
    b, t = batch["input_ids"].shape
    assert theirs > 0 and ours < theirs + b * t * backbone.facts.hidden_size * 4, (ours, theirs)
