"""A ``PromptDataModule``'s encoded splits through the on-disk cache (``cache``): what each split's
key holds, the label sets read from training data, and the order of checks on a cache miss."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from .cache import SplitCache, load_or_build, tokenizer_fingerprint
from .labels import LabelSet

if TYPE_CHECKING:
    from .datamodule import PromptDataModule


class CachedSplits:
    """Reads a data module's splits from ``cache``, encoding and storing the ones not there yet."""

    def __init__(self, module: PromptDataModule, cache: SplitCache):
        self.module, self.cache = module, cache

    def key(self, stage: str, source: dict) -> dict:
        """Everything a stage's encoded split depends on (``source``: the raw data's identity)."""
        m, h = self.module, self.module.hparams
        return {
            "stage": stage, "split": m.splits[stage], "source": source, "task": h.task, "task_format": h.task_format,
            "columns": asdict(m.columns), "labels": asdict(m.labels), "template": h.template,
            "target_template": h.target_template, "verbalizer": h.verbalizer, "max_length": h.max_length,
            "stride": h.stride, "tokenizer": tokenizer_fingerprint(m.tokenizer),
            "is_encoder_decoder": m.facts.is_encoder_decoder,
        }

    def get(self, stage: str) -> Dataset | None:
        """A stage's encoded split (None where the data has no such split)."""
        m = self.module
        split_name = m.splits[stage]
        source = m.reader.fingerprint(split_name)
        if source is None:
            return None
        try:
            key = self.key(stage, source)
        except Exception:
            # The key needs the label set and the tokenizer. A mistake in the data is reported before
            # theirs, as it is without the cache: the rows are checked first.
            m.task_data.read(m.reader.get(split_name), stage, m.columns, lambda: m.labels)
            raise
        dataset = load_or_build(self.cache, key, lambda: m.encode(m.reader.get(split_name), stage),
                                source=f"split {split_name!r}")
        if stage == "train" and m.labels_from_data:  # the training data passed every check
            self.cache.store_labels(self.labels_key(), asdict(m.labels))
        return dataset

    def labels_key(self) -> dict:
        m = self.module
        return {"labels_of": m.reader.fingerprint(m.splits["train"]), "task": m.hparams.task, "columns": asdict(m.columns)}

    def saved_labels(self) -> LabelSet | None:
        """The label set a run before read from this training data, if it is kept."""
        saved = self.cache.load_labels(self.labels_key())
        return None if saved is None else LabelSet(**saved)
