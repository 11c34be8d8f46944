"""Virtual tokens inside templates: ``[P:3] {text} [P:2] It was {mask} .``

``[P:n]`` stands for n trainable prompt vectors at that place (P-tuning); the words around them are
real tokens (anchors). Rendering replaces each marker with n copies of a placeholder special token,
so the tokenizer keeps one position per virtual token; ``virtual_index`` then numbers those
positions 0..P-1 in order (-1 for real tokens), and the method puts prompt vector k at position k.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

from transformers import PreTrainedTokenizerBase

MARKER = re.compile(r"\[P:(\d+)\]")


def count_virtual_tokens(template: str | None) -> int:
    return sum(int(n) for n in MARKER.findall(template or ""))


def placeholder(tokenizer: PreTrainedTokenizerBase) -> tuple[str, int]:
    """A special token that the tokenizer keeps whole wherever it appears in a text."""
    for token in (tokenizer.pad_token, tokenizer.unk_token, tokenizer.eos_token):
        if token is not None:
            return token, tokenizer.convert_tokens_to_ids(token)
    raise ValueError(f"{type(tokenizer).__name__} has no pad, unk or eos token to stand for virtual tokens")


def expand_markers(template: str, token: str) -> str:
    """``[P:2]`` -> two placeholder tokens. They are written without spaces before or between them
    (a BPE tokenizer would make a lone space token there); the space after a marker stays, so the
    next word is tokenized as it is inside a sentence."""
    return re.sub(r"\s*" + MARKER.pattern, lambda m: token * int(m[1]), template)


def virtual_index(ids: list[int], placeholder_id: int, expected: int, where: str) -> list[int]:
    """Number the placeholder positions 0..P-1; the count must be the template's."""
    positions = [i for i, t in enumerate(ids) if t == placeholder_id]
    if len(positions) != expected:
        raise ValueError(
            f"{where}: found {len(positions)} virtual-token positions, the template has {expected} "
            "(the text contains the placeholder token, or max_length cut the template)"
        )
    index = [-1] * len(ids)
    for k, position in enumerate(positions):
        index[position] = k
    return index


def fit_to_length(
    tokenizer: PreTrainedTokenizerBase, render: Callable[[int, str], str], texts: list[str], budget: int
) -> list[tuple[list[int], int]]:
    """Per text i: the token ids of ``render(i, text)`` within ``budget`` tokens, and how many characters
    of the text they hold. An over-long input loses the end of its text, never the template around
    it: a template's closing cue (``Label:``, ``Entities:``, ``Answer:``) is what a text-to-text model
    answers after."""
    if not texts:
        return []  # (a tokenizer refuses an empty batch)
    # One batched call for all rows; only the over-long ones are shortened and tokenized again.
    whole = tokenizer([render(i, text) for i, text in enumerate(texts)]).input_ids
    return [
        (ids, len(text)) if len(ids) <= budget else _shorten(tokenizer, partial(render, i), text, ids, budget)
        for i, (text, ids) in enumerate(zip(texts, whole))
    ]


def _shorten(tokenizer, render: Callable[[str], str], text: str, ids: list[int], budget: int) -> tuple[list[int], int]:
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    keep, kept_chars = len(offsets), len(text)
    # Tokens do not add up exactly across the cut (merges at its edges): cut again until it fits.
    while len(ids) > budget and keep > 1:
        keep = max(keep - (len(ids) - budget), 1)
        kept_chars = offsets[keep - 1][1]
        ids = tokenizer(render(text[:kept_chars])).input_ids
    if len(ids) > budget:  # the template alone is longer than budget: it is cut too, and no text is whole
        return ids[:budget], 0
    return ids, kept_chars


def target_ids(tokenizer: PreTrainedTokenizerBase, is_encoder_decoder: bool, texts: list[str]) -> list[list[int]]:
    """Token ids of text-to-text targets, each ending with EOS (the model learns where to stop)."""
    if not texts:
        return []
    if is_encoder_decoder:
        return tokenizer(texts).input_ids  # T5 appends </s> itself
    return [ids + [tokenizer.eos_token_id] for ids in tokenizer(texts, add_special_tokens=False).input_ids]
