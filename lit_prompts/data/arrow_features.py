"""Encoded features as Arrow columns, and back to the very dicts the encoders made.

A feature is a dict of ids, lists of token ids, texts and, for QA, lists of windows (dicts). Arrow
keeps all of that except two things a column cannot say:

* a key some rows lack: a column holds None there (``target_ids`` of unlabelled rows, ``start`` and
  ``end`` of windows without an answer). Collators test ``"start" in window``, so the key must be
  absent again, not None;
* a tuple: Arrow has lists only (QA ``offsets`` are ``(start, end)`` pairs).

``FeatureShape`` records, while the features are written, the places (paths such as ``target_ids``
or ``windows[].offsets[]``) where either happens; ``restore`` undoes both when a row is read. A key
that is absent in some rows and None in others cannot be told apart in Arrow: ``FeatureShape.of``
refuses it (``UnsupportedFeatures``), and the caller keeps such a split in memory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import datasets
import pyarrow as pa
import pyarrow.compute as pc
from torch.utils.data import Dataset


class UnsupportedFeatures(ValueError):
    """Features that Arrow columns cannot give back exactly as they were."""


@dataclass
class FeatureShape:
    optional: set[str] = field(default_factory=set)  # paths where None means "key absent"
    tuples: set[str] = field(default_factory=set)  # paths of lists that were tuples

    @classmethod
    def of(cls, features: list[dict]) -> FeatureShape:
        scan = _Scan()
        # Every row's keys; then each key's values walked in depth: all of them where they hold dicts
        # (QA windows, whose keys vary), else the first, since an encoder fills a key with one kind of value.
        scan.dicts[""] = len(features)
        scan.keys.update(("", key) for feature in features for key in feature)
        scan.nones.update(key for feature in features for key, value in feature.items() if value is None)
        for _, key in list(scan.keys):
            values = [f[key] for f in features if f.get(key) is not None]
            for value in values if values and _holds_dicts(values[0]) else values[:1]:
                scan.walk(value, key)
        optional = {f"{path}.{key}".lstrip(".") for (path, key), n in scan.keys.items() if n < scan.dicts[path]}
        ambiguous = optional & scan.nones
        if ambiguous:
            raise UnsupportedFeatures(f"features {sorted(ambiguous)} are None in some rows and missing in others")
        return cls(optional, scan.tuples)

    def to_json(self) -> dict:
        return {"optional": sorted(self.optional), "tuples": sorted(self.tuples)}

    @classmethod
    def from_json(cls, data: dict) -> FeatureShape:
        return cls(set(data["optional"]), set(data["tuples"]))

    def restore(self, row: dict) -> dict:
        """A row as Arrow gives it -> the feature as it was written."""
        if not (self.optional or self.tuples):
            return row
        return self._fix(row, "", self._touched())

    def _touched(self) -> set[str]:
        # Every path on the way to a place to fix: only those are walked into.
        paths = set()
        for path in self.optional | self.tuples:
            while path:
                paths.add(path)
                path = path[: max(path.rfind("."), path.rfind("[]"), 0)]
        return paths

    def _fix(self, value, path: str, touched: set[str]):
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                place = f"{path}.{key}" if path else key
                if item is None and place in self.optional:
                    continue
                out[key] = self._fix(item, place, touched) if place in touched else item
            return out
        if isinstance(value, list):
            inner = path + "[]"
            items = [self._fix(item, inner, touched) for item in value] if inner in touched else value
            return tuple(items) if path in self.tuples else items
        return value


def _holds_dicts(value) -> bool:
    return isinstance(value, dict) or (isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], dict))


class _Scan:
    """Counts, per path, the dicts seen and how many held each key; notes Nones and tuples. Lists of
    dicts (QA windows) are walked whole; other lists by their first item that is not None, because
    the encoders fill a list with one kind of value."""

    def __init__(self):
        self.dicts: Counter = Counter()
        self.keys: Counter = Counter()
        self.nones: set[str] = set()
        self.tuples: set[str] = set()

    def walk(self, value, path: str) -> None:
        if isinstance(value, dict):
            self.dicts[path] += 1
            for key, item in value.items():
                place = f"{path}.{key}" if path else key
                self.keys[(path, key)] += 1
                if item is None:
                    self.nones.add(place)
                else:
                    self.walk(item, place)
        elif isinstance(value, (list, tuple)):
            if isinstance(value, tuple):
                self.tuples.add(path)
            if value and isinstance(value[0], dict):
                items = value
            else:
                items = [next((item for item in value if item is not None), None)]
            for item in items:
                if item is not None:
                    self.walk(item, path + "[]")


def features_to_arrow(features: list[dict]) -> tuple[datasets.Dataset, FeatureShape]:
    """The features as an in-memory ``datasets.Dataset`` (one column per key any row has) and the
    shape that gives them back. Raises ``UnsupportedFeatures`` where Arrow cannot hold them."""
    shape = FeatureShape.of(features)
    keys = dict.fromkeys(key for feature in features for key in feature)
    try:
        rows = datasets.Dataset.from_dict({key: [f.get(key) for f in features] for key in keys})
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        raise UnsupportedFeatures(str(error)) from error
    return rows, shape


class ArrowSplit(Dataset):
    """An encoded split kept in Arrow files (memory-mapped: its rows are not copied into each process)
    that reads as the features the encoder made: indexable, with a length, picklable for DataLoader
    workers (only the files' paths travel)."""

    def __init__(self, rows: datasets.Dataset, shape: FeatureShape):
        self.rows, self.shape = rows, shape

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.shape.restore(self.rows[int(i)])

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A batch's features in one read (``DataLoader`` uses it where a dataset has it)."""
        columns = self.rows[[int(i) for i in indices]]
        return [self.shape.restore({key: values[n] for key, values in columns.items()}) for n in range(len(indices))]

    @property
    def features(self) -> list[dict]:
        """Every feature, read into memory: to inspect a split, not to train on it."""
        return [self.shape.restore(row) for row in self.rows.to_list()]

    def lengths(self) -> list[int]:
        """Each feature's number of input tokens, read from the column's list offsets alone."""
        return pc.list_value_length(self.rows.data.column("input_ids")).to_pylist()
