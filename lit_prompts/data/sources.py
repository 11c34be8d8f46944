"""Reading raw splits from a hub dataset or local files, with errors that name the source."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..backbone import resolve_path

# Extension -> (datasets builder, builder kwargs). TSV is read without quote handling because
# corpora such as SST-2 contain unbalanced quote characters inside sentences.
_BUILDERS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
}


@dataclass
class RawSplit:
    """One split's rows, and a human name for where they came from (used in every error)."""

    rows: datasets.Dataset
    source: str

    def column(self, name: str, role: str) -> list:
        if name not in self.rows.column_names:
            raise KeyError(
                f"{self.source}: missing column {name!r} (the {role}); "
                f"columns are {self.rows.column_names}. Set data.init_args.{role} to one of them."
            )
        return self.rows[name]


CONLL_SUFFIXES = (".conll", ".txt")


def read_conll(paths: list[str], names: list[str]) -> datasets.Dataset:
    """CoNLL column files: one ``TOKEN ... TAG`` line per word, blank lines between sentences,
    ``-DOCSTART-`` lines between documents. Every line of a file must have the same number of
    columns. Columns: tokens, ner_tags (the last column), and line (where each sentence starts)."""
    tokens, tags, lines = [], [], []
    for path, name in zip(paths, names):
        width, words, word_tags, start = None, [], [], 0
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate([*f, ""], start=1):
                fields = line.split()
                if not fields or fields[0] == "-DOCSTART-":
                    if words:
                        tokens.append(words), tags.append(word_tags), lines.append(f"{name}, sentence at line {start}")
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
    return datasets.Dataset.from_dict({"tokens": tokens, "ner_tags": tags, "line": lines})


def _read_files(split: str, paths: str | list[str]) -> RawSplit:
    paths = [paths] if isinstance(paths, str) else list(paths)
    resolved = [resolve_path(p) for p in paths]
    for original, path in zip(paths, resolved):
        if not Path(path).is_file():
            raise FileNotFoundError(f"data file for split {split!r} not found: {original}")
    suffixes = {Path(p).suffix.lower() for p in resolved}
    known = sorted([*_BUILDERS, *CONLL_SUFFIXES])
    if len(suffixes) != 1 or next(iter(suffixes)) not in known:
        raise ValueError(f"split {split!r}: files {paths} must share one of the extensions {known}")
    if next(iter(suffixes)) in CONLL_SUFFIXES:
        return RawSplit(read_conll(resolved, paths), ", ".join(paths))
    if next(iter(suffixes)) == ".json":
        from .qa import read_squad_json  # SQuAD's nested layout; other json goes to `datasets`

        squad = read_squad_json(resolved)
        if squad is not None:
            return RawSplit(squad, ", ".join(paths))
    builder, kwargs = _BUILDERS[suffixes.pop()]
    rows = datasets.load_dataset(builder, data_files={split: resolved}, split=split, **kwargs)
    return RawSplit(rows, ", ".join(paths))


class SplitReader:
    """Reads one split at a time, on first use: local ``data_files`` win over the hub ``dataset``
    for the splits they name, so a hub config can be pointed at local copies from the command line."""

    def __init__(self, dataset: str | None, dataset_config: str | None, data_files: dict[str, str | list[str]] | None):
        if dataset is None and not data_files:
            raise ValueError("no data: set data.init_args.dataset (a hub id) or data.init_args.data_files")
        self.dataset, self.dataset_config, self.data_files = dataset, dataset_config, data_files or {}
        self._hub: datasets.DatasetDict | None = None
        self._splits: dict[str, RawSplit | None] = {}

    def get(self, split: str) -> RawSplit | None:
        """The split's rows, or None where neither the files nor the hub dataset have it."""
        if split not in self._splits:
            self._splits[split] = self._read(split)
        return self._splits[split]

    def _read(self, split: str) -> RawSplit | None:
        if split in self.data_files:
            return _read_files(split, self.data_files[split])
        if self.dataset is None:
            return None
        if self._hub is None:
            self._hub = datasets.load_dataset(self.dataset, self.dataset_config)
        return RawSplit(self._hub[split], f"{self.dataset}[{split}]") if split in self._hub else None
