"""Reading raw splits, one at a time, from local files (``files``) or a hub dataset."""

from __future__ import annotations

import datasets

from .files import read_files
from .raw import RawSplit, check_encoding


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

    def _read(self, split: str) -> RawSplit | None:
        if split in self.data_files:
            return read_files(split, self.data_files[split], self.encoding)
        if self.dataset is None:
            return None
        if self._hub is None:
            self._hub = datasets.load_dataset(self.dataset, self.dataset_config)
        return RawSplit(self._hub[split], f"{self.dataset}[{split}]") if split in self._hub else None
