"""Virtual tokens inside templates: ``[P:3] {text} [P:2] It was {mask} .``

``[P:n]`` stands for n trainable prompt vectors at that place (P-tuning); the words around them are
real tokens (anchors). Rendering replaces each marker with n copies of a placeholder special token,
so the tokenizer keeps one position per virtual token; ``virtual_index`` then numbers those
positions 0..P-1 in order (-1 for real tokens), and the method puts prompt vector k at position k.
"""

from __future__ import annotations

import re
from collections.abc import Callable

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


def fit_to_length(tokenizer: PreTrainedTokenizerBase, render: Callable[[str], str], text: str, budget: int) -> tuple[list[int], int]:
    """Token ids of ``render(text)`` within ``budget`` tokens, and how many characters of ``text`` they
    hold. An over-long input loses the end of ``text``, never the template around it: a template's
    closing cue (``Answer:``, ``Entities:``) is what a text-to-text model answers after."""
    ids = tokenizer(render(text)).input_ids
    if len(ids) <= budget:
        return ids, len(text)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    keep, kept_chars = len(offsets), len(text)
    # Tokens do not add up exactly across the cut (merges at its edges): cut again until it fits.
    while len(ids) > budget and keep > 1:
        keep = max(keep - (len(ids) - budget), 1)
        kept_chars = offsets[keep - 1][1]
        ids = tokenizer(render(text[:kept_chars])).input_ids
    return ids[:budget], kept_chars  # the template alone longer than budget: cut it too
