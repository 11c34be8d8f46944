"""BIO tags as entity spans, and entities as text (``EU [ORG]; German [MISC]``) and back.

A ground-floor module (it imports nothing of lit_prompts): the data side linearizes targets with
it, the NER task parses generated text and counts entities with it.
"""

from __future__ import annotations

import re

NO_ENTITIES = "none"
_ENTITY = re.compile(r"^(?P<text>.+?)\s*\[(?P<type>[^\[\]]+)\]$")


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity, with seqeval's default (conlleval) reading of
    BIO: an entity starts at B-, or at an I- that does not continue an entity of its type."""
    spans, kind, start = [], None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, tag_type = (tag[0], tag[2:]) if tag != "O" else ("O", None)
        if kind is not None and (prefix != "I" or tag_type != kind):
            spans.append((kind, start, i - 1))
            kind = None
        if prefix == "B" or (prefix == "I" and kind is None):
            kind, start = tag_type, i
    return spans


def linearize(tokens: list[str], tags: list[str]) -> str:
    """``EU [ORG]; German [MISC]`` (``none`` for a sentence without entities)."""
    parts = [f"{' '.join(tokens[s : e + 1])} [{kind}]" for kind, s, e in entity_spans(tags)]
    return "; ".join(parts) or NO_ENTITIES


def parse_linearized(text: str, tokens: list[str], types: set[str]) -> list[str]:
    """Generated text back to BIO tags over ``tokens``: each ``words [TYPE]`` part takes the first
    untagged run of exactly those words, searching left to right; parts that name an unknown type or
    words not in the sentence are dropped (they cannot be placed)."""
    tags = ["O"] * len(tokens)
    cursor = 0
    for part in text.split(";"):
        match = _ENTITY.match(part.strip())
        if not match or match["type"].strip() not in types:
            continue
        words = match["text"].split()
        kind = match["type"].strip()
        for begin in [*range(cursor, len(tokens)), *range(0, cursor)]:
            end = begin + len(words)
            if tokens[begin:end] == words and all(t == "O" for t in tags[begin:end]):
                tags[begin:end] = [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
                cursor = end
                break
    return tags
