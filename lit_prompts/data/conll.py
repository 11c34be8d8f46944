"""CoNLL column files: one ``TOKEN ... TAG`` line per word, blank lines between sentences,
``-DOCSTART-`` lines between documents; read whole (``read_conll``) or sentence by sentence
(``conll_sentences``, which streaming reads lazily)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain

import datasets

from .raw import text_encoding

CONLL_SUFFIXES = (".conll", ".txt")


def conll_sentences(paths: list[str], names: list[str], encoding: str = "utf-8") -> Iterator[dict]:
    """One row per sentence: tokens, ner_tags (the last column) and line (where the sentence starts,
    named for errors). Every line of a file must have the same number of columns."""
    for path, name in zip(paths, names):
        width, words, word_tags, start = None, [], [], 0
        with open(path, encoding=text_encoding(encoding)) as f:
            for number, line in enumerate(chain(f, [""]), start=1):  # the "" ends the last sentence
                fields = line.split()
                if not fields or fields[0] == "-DOCSTART-":
                    if words:
                        yield {"tokens": words, "ner_tags": word_tags, "line": f"{name}, sentence at line {start}"}
                    words, word_tags = [], []
                    continue
                if width is None:
                    width = len(fields)
                    if width < 2:
                        raise ValueError(f"{name}, line {number}: one column; CoNLL needs a token and a tag per line")
                if len(fields) != width:
                    raise ValueError(f"{name}, line {number}: {len(fields)} columns, the file's other lines have {width}")
                if not words:
                    start = number
                words.append(fields[0])
                word_tags.append(fields[-1])


def read_conll(paths: list[str], names: list[str], encoding: str = "utf-8") -> datasets.Dataset:
    """All sentences of CoNLL files, with the columns tokens, ner_tags and line."""
    rows = list(conll_sentences(paths, names, encoding))
    return datasets.Dataset.from_dict({key: [row[key] for row in rows] for key in ("tokens", "ner_tags", "line")})
