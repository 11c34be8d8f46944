"""Batching: dynamic padding per batch, candidate expansion for rank classification, and a
shuffle order that depends only on (seed, epoch) so a resumed run sees the same batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, Sampler

IGNORE_INDEX = -100
PASSED_THROUGH = ("tokens", "tags", "context", "answers", "starts")


class ListDataset(Dataset):
    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from ``seed + epoch`` alone. Lightning calls ``set_epoch`` each epoch,
    so resuming at epoch k replays exactly the order an uninterrupted run used."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())


def _pad(rows: list[list[int]], value: int, side: str) -> torch.Tensor:
    return pad_sequence([torch.tensor(r) for r in rows], batch_first=True, padding_value=value, padding_side=side)


@dataclass
class Collator:
    """Pads a list of features to the longest in the batch.

    For text-to-text it appends each example's gold target (training) and, with
    ``with_candidates``, builds one sequence per label for rank classification.
    Decoder-only backbones pad on the left so targets end every row (their logits can then be
    computed for the last positions only).
    """

    pad_id: int
    padding_side: str
    task_format: str
    is_encoder_decoder: bool = False
    class_targets: list[list[int]] | None = None
    with_candidates: bool = False

    def __call__(self, features: list[dict]) -> dict:
        batch = {"ids": [f["id"] for f in features]}
        if "label" in features[0]:
            batch["label"] = torch.tensor([f["label"] for f in features])
        for key in PASSED_THROUGH:  # NER words and gold tags, QA contexts and answers: as lists
            if key in features[0]:
                batch[key] = [f[key] for f in features]
        sources = [f["input_ids"] for f in features]
        # P-tuning templates: which positions hold which prompt vector (-1: a real token).
        virtual = [f["virtual_index"] for f in features] if "virtual_index" in features[0] else None
        if self.task_format == "text_to_text":
            if self.class_targets is not None:
                gold = [self.class_targets[max(f["label"], 0)] for f in features]
            else:
                gold = [f.get("target_ids") for f in features]
            if all(g is not None for g in gold):
                batch.update(self._sequences(sources, gold, virtual))
            if self.with_candidates:
                batch["source"] = self._inputs(sources, virtual)  # the templated input alone, for generation
            if self.with_candidates and self.class_targets is not None:
                n = len(self.class_targets)
                repeat = lambda rows: [r for r in rows for _ in range(n)] if rows else None  # noqa: E731
                batch["candidates"] = self._sequences(
                    repeat(sources), [t for _ in sources for t in self.class_targets], repeat(virtual)
                )
            return batch
        batch.update(self._inputs(sources, virtual))
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = _pad([f["token_type_ids"] for f in features], 0, self.padding_side)
        if "mask_index" in features[0]:
            batch["mask_index"] = torch.tensor([f["mask_index"] for f in features])
        if "word_index" in features[0]:
            # Each word's gold tag on its first sub-token; -100 on the others and on padding.
            batch["word_index"] = _pad([f["word_index"] for f in features], -1, self.padding_side)
            batch["labels"] = _pad(
                [[f["tags"][w] if w >= 0 and f["tags"] is not None else IGNORE_INDEX for w in f["word_index"]]
                 for f in features], IGNORE_INDEX, self.padding_side)
        return batch

    def _inputs(self, rows: list[list[int]], virtual: list[list[int]] | None = None) -> dict:
        out = {
            "input_ids": _pad(rows, self.pad_id, self.padding_side),
            "attention_mask": _pad([[1] * len(r) for r in rows], 0, self.padding_side),
        }
        if virtual is not None:
            out["virtual_index"] = _pad(virtual, -1, self.padding_side)
        return out

    def _sequences(self, sources: list[list[int]], targets: list[list[int]], virtual=None) -> dict:
        if self.is_encoder_decoder:  # targets feed the decoder
            out = self._inputs(sources, virtual)
            out["target_ids"] = _pad(targets, IGNORE_INDEX, "right")
            return out
        rows = [s + t for s, t in zip(sources, targets)]
        if virtual is not None:
            virtual = [v + [-1] * len(t) for v, t in zip(virtual, targets)]
        out = self._inputs(rows, virtual)
        out["target_ids"] = _pad([[IGNORE_INDEX] * len(s) + t for s, t in zip(sources, targets)], IGNORE_INDEX, self.padding_side)
        return out
