"""Reading raw splits, one at a time, from local files (``files``) or a hub dataset."""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path

import datasets
from datasets.fingerprint import generate_fingerprint

from .files import read_files, split_files
from .raw import RawSplit, check_encoding

STAGES = ("train", "validation", "test", "predict")
# Lightning's stage (what setup gets) -> the stages whose splits it reads.
STAGE_SPLITS = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",), "predict": ("predict",)}


def check_data_files(data_files: dict | None, splits: dict[str, str]) -> None:
    """Every ``data_files`` key must be a split some stage reads: a misspelled one would be ignored."""
    read = list(dict.fromkeys(splits.values()))
    for key in data_files or {}:
        if key in read:
            continue
        if key in STAGES:
            hint = f" To read it in stage {key!r}, set data.init_args.splits={{{key}: {key}}}."
        else:
            close = difflib.get_close_matches(key, read, n=1)
            hint = (f" Did you mean {close[0]!r}?" if close
                    else f" To read it, map a stage to it, e.g. data.init_args.splits={{validation: {key}}}.")
        raise ValueError(
            f"data.init_args.data_files names the split {key!r}, which no stage reads; the stages read {read} "
            f"(stage -> split: {splits}, see data.init_args.splits).{hint}"
        )


def file_digest(path: str) -> str:
    """The file's content hash: a touched but unchanged file keeps it, an edit of any size changes it
    (size and modification time miss an edit that keeps the size within the clock's resolution)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()[:32]


class SplitReader:
    """Reads one split at a time, on first use: local ``data_files`` win over the hub ``dataset``
    for the splits they name, so a hub config can be pointed at local copies from the command line."""

    def __init__(self, dataset: str | None, dataset_config: str | None, data_files: dict[str, str | list[str]] | None,
                 encoding: str = "utf-8"):
        if dataset is None and not data_files:
            raise ValueError("no data: set data.init_args.dataset (a hub id) or data.init_args.data_files")
        self.dataset, self.dataset_config, self.data_files = dataset, dataset_config, data_files or {}
        self.encoding = check_encoding(encoding)
        self._hub: datasets.DatasetDict | None = None
        self._splits: dict[str, RawSplit | None] = {}

    def get(self, split: str) -> RawSplit | None:
        """The split's rows, or None where neither the files nor the hub dataset have it."""
        if split not in self._splits:
            self._splits[split] = self._read(split)
        return self._splits[split]

    def fingerprint(self, split: str) -> dict | None:
        """What identifies the split's raw data, without reading its rows (None where there is no such
        split): local files by path and content hash; a hub split by id, config and the fingerprint
        ``datasets`` gives the Arrow files it keeps in its own cache."""
        if split in self.data_files:
            _, resolved, _ = split_files(split, self.data_files[split])
            return {"files": [[str(Path(p).resolve()), file_digest(p)] for p in resolved], "encoding": self.encoding}
        hub = self._hub_dataset()
        if hub is None or split not in hub:
            return None
        return {"dataset": self.dataset, "config": self.dataset_config, "split": split,
                "fingerprint": generate_fingerprint(hub[split])}

    def _hub_dataset(self) -> datasets.DatasetDict | None:
        if self.dataset is not None and self._hub is None:
            self._hub = datasets.load_dataset(self.dataset, self.dataset_config)
        return self._hub

    def _read(self, split: str) -> RawSplit | None:
        if split in self.data_files:
            return read_files(split, self.data_files[split], self.encoding)
        hub = self._hub_dataset()
        if hub is None:
            return None
        return RawSplit(hub[split], f"{self.dataset}[{split}]") if split in hub else None
