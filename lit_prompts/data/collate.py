"""Batching: dynamic padding per batch, candidate expansion for rank classification, and a
shuffle order that depends only on (seed, epoch) so a resumed run sees the same batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, Sampler

IGNORE_INDEX = -100


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
        batch = {
            "ids": [f["id"] for f in features],
            "label": torch.tensor([f["label"] for f in features]),
        }
        sources = [f["input_ids"] for f in features]
        if self.task_format == "text_to_text":
            gold = [self.class_targets[max(f["label"], 0)] for f in features]
            batch.update(self._sequences(sources, gold))
            if self.with_candidates:
                batch["source"] = self._inputs(sources)  # the templated input alone, for generation
                n = len(self.class_targets)
                batch["candidates"] = self._sequences(
                    [s for s in sources for _ in range(n)], [t for _ in sources for t in self.class_targets]
                )
            return batch
        batch.update(self._inputs(sources))
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = _pad([f["token_type_ids"] for f in features], 0, self.padding_side)
        if "mask_index" in features[0]:
            batch["mask_index"] = torch.tensor([f["mask_index"] for f in features])
        return batch

    def _inputs(self, rows: list[list[int]]) -> dict:
        return {
            "input_ids": _pad(rows, self.pad_id, self.padding_side),
            "attention_mask": _pad([[1] * len(r) for r in rows], 0, self.padding_side),
        }

    def _sequences(self, sources: list[list[int]], targets: list[list[int]]) -> dict:
        if self.is_encoder_decoder:  # targets feed the decoder
            out = self._inputs(sources)
            out["target_ids"] = _pad(targets, IGNORE_INDEX, "right")
            return out
        rows = [s + t for s, t in zip(sources, targets)]
        out = self._inputs(rows)
        out["target_ids"] = _pad([[IGNORE_INDEX] * len(s) + t for s, t in zip(sources, targets)], IGNORE_INDEX, self.padding_side)
        return out
