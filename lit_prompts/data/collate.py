"""Batching: dynamic padding per batch, candidate expansion for rank classification, and a
shuffle order that depends only on (seed, epoch) so a resumed run sees the same batches."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from ..formats import IGNORE_INDEX

PASSED_THROUGH = ("tokens", "tags", "context", "answers", "starts")


class ListDataset(Dataset):
    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]


class EpochShuffleSampler(DistributedSampler):
    """A permutation drawn from ``seed + epoch`` alone, split between ``num_replicas`` DDP ranks as
    ``DistributedSampler(shuffle=True)`` splits it (the same order and shares, padded to equal
    shares). Being a ``DistributedSampler`` tells Lightning not to install its own under DDP.

    ``start`` skips that many of this rank's indices in the next pass only: ``ResumableLoader`` sets
    it to continue an epoch in mid-way without reading the batches already trained on.
    """

    def __init__(self, length: int, seed: int, num_replicas: int = 1, rank: int = 0):
        # DistributedSampler.__init__ (a dataset and a process group to ask) does not apply.
        self.length, self.seed, self.num_replicas, self.rank = length, seed, num_replicas, rank
        self.epoch, self.start, self.shuffle, self.drop_last = 0, 0, True, False
        self.num_samples = math.ceil(length / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def epoch_order(self) -> list[int]:
        """All indices in this epoch's order, before the split between ranks."""
        return torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()

    def __iter__(self):
        indices = self.epoch_order()
        padding = self.total_size - len(indices)
        if padding and indices:  # as DistributedSampler: repeat the first indices so every rank has as many
            indices += (indices * math.ceil(padding / len(indices)))[:padding]
        start, self.start = self.start, 0
        return iter(indices[self.rank : self.total_size : self.num_replicas][start:])


class LengthGroupedSampler(EpochShuffleSampler):
    """``EpochShuffleSampler`` whose order puts examples of similar length next to each other, so that
    a batch holds little padding: the seeded permutation is cut into megabatches, each sorted by length
    (``transformers``' ``get_length_grouped_indices``; the longest example comes first, so that running
    out of memory happens at once). Deterministic per (seed, epoch), split between ranks and resumed
    in mid-epoch as ``EpochShuffleSampler``. A megabatch spans ``num_replicas`` batches per rank, so
    each rank's consecutive batches come from the same stretch of similar lengths.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(len(lengths), seed=seed, num_replicas=num_replicas, rank=rank)
        self.lengths, self.batch_size = lengths, batch_size

    def epoch_order(self) -> list[int]:
        if not self.lengths:
            return []
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return get_length_grouped_indices(self.lengths, self.batch_size * self.num_replicas, generator=generator)


def example_lengths(dataset) -> list[int]:
    """Each feature's number of input tokens (an Arrow split reads them from its column offsets)."""
    if hasattr(dataset, "lengths"):
        return dataset.lengths()
    return [len(feature["input_ids"]) for feature in dataset.features]


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` whose position (the epoch, and how many of its batches were served)
    goes into Lightning's checkpoints: Lightning's fit loop saves ``state_dict()`` of a train loader
    that has one and, resuming in mid-epoch, hands it back to ``load_state_dict``. The next pass then
    goes on with the batch after the last one trained on, in that epoch's order.

    ``position_source`` (``trainer_position``) tells each pass the trainer's epoch and how many of its
    batches are done, which Lightning itself assumes the data resumes at. It fills two gaps of
    lightning 2.6: Lightning's ``set_epoch`` call is one too high in every epoch after a resume from a
    checkpoint saved at a training epoch's end (its ``processed`` count runs ahead of
    ``current_epoch``), and it never loads the saved state when the train loader was built before the
    checkpoint's loop state was restored (``configure_optimizers`` asking for
    ``estimated_stepping_batches`` builds it, in ``max_epochs`` runs).

    The sampler needs ``set_epoch`` and ``start`` (``EpochShuffleSampler``, the multi-task ``PlanSampler``).
    """

    def __init__(self, *args, position_source: Callable[[], tuple[int, int] | None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.position_source = position_source
        self._epoch, self._served = 0, 0  # this pass's epoch and the batches served in it
        self._resume: dict | None = None

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "batches": self._served}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)  # applied when the next pass starts

    def __iter__(self):
        # A generator: nothing runs until the first batch is asked for, after Lightning's set_epoch
        # (Lightning also builds iterators it never draws from).
        position = self.position_source() if self.position_source is not None else None
        epoch, done = position if position is not None else (getattr(self.sampler, "epoch", 0), 0)
        if self._resume is not None and self._resume["epoch"] == epoch:
            done = self._resume["batches"]
        self._resume = None
        skip = 0
        if hasattr(self.sampler, "start"):  # not when Lightning swapped the sampler (overfit_batches)
            skip = min(done, len(self))
            self.sampler.set_epoch(epoch)
            self.sampler.start = skip if self.batch_size is None else skip * self.batch_size
        self._epoch, self._served = epoch, skip
        for batch in super().__iter__():
            self._served += 1
            yield batch


def training_share(trainer) -> dict:
    """``num_replicas`` and ``rank`` of this process's share of the training data under DDP (Lightning's
    own split, ``trainer.distributed_sampler_kwargs``); empty on one process."""
    if trainer is None or trainer.world_size <= 1:
        return {}
    share = trainer.distributed_sampler_kwargs or {}
    return {"num_replicas": share.get("num_replicas", trainer.world_size),
            "rank": share.get("rank", trainer.global_rank)}


def trainer_stage(trainer) -> str | None:
    """The stage a trainer runs (fit / validate / test / predict), as ``setup`` gets it; None without one."""
    fn = getattr(getattr(trainer, "state", None), "fn", None)
    return None if fn is None else str(getattr(fn, "value", fn))


def batches_taken(module) -> Callable[[], int | None]:
    """How many training batches of the current epoch the fit loop of the trainer a data module is
    attached to has taken, also while it validates or saves a checkpoint in mid-fit (None outside a fit)."""

    def taken():
        trainer = module.trainer
        if trainer is None or trainer_stage(trainer) != "fit":
            return None
        return trainer.fit_loop.epoch_loop.batch_progress.current.ready

    return taken


def trainer_position(module) -> Callable[[], tuple[int, int] | None]:
    """``ResumableLoader``'s ``position_source``: the epoch of the trainer a data module is attached to,
    and how many training batches of it are done (None outside a fit)."""

    def position():
        trainer = module.trainer
        if trainer is None or not trainer.training:
            return None
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.ready

    return position


def pad_rows(rows: list[list[int]], value: int, side: str) -> torch.Tensor:
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

    @classmethod
    def for_tokenizer(cls, tokenizer, task_format: str, is_encoder_decoder: bool, train: bool,
                      class_targets: list[list[int]] | None = None) -> Collator:
        """Padding as the tokenizer pads; evaluation batches (not ``train``) also get the inputs
        generation and rank classification read."""
        return cls(pad_id=tokenizer.pad_token_id, padding_side=tokenizer.padding_side, task_format=task_format,
                   is_encoder_decoder=is_encoder_decoder, class_targets=class_targets, with_candidates=not train)

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
            batch["token_type_ids"] = pad_rows([f["token_type_ids"] for f in features], 0, self.padding_side)
        if "mask_index" in features[0]:
            batch["mask_index"] = torch.tensor([f["mask_index"] for f in features])
        if "word_index" in features[0]:
            # Each word's gold tag on its first sub-token; -100 on the others and on padding.
            batch["word_index"] = pad_rows([f["word_index"] for f in features], -1, self.padding_side)
            batch["labels"] = pad_rows(
                [[f["tags"][w] if w >= 0 and f["tags"] is not None else IGNORE_INDEX for w in f["word_index"]]
                 for f in features], IGNORE_INDEX, self.padding_side)
        return batch

    def _inputs(self, rows: list[list[int]], virtual: list[list[int]] | None = None) -> dict:
        out = {
            "input_ids": pad_rows(rows, self.pad_id, self.padding_side),
            "attention_mask": pad_rows([[1] * len(r) for r in rows], 0, self.padding_side),
        }
        if virtual is not None:
            out["virtual_index"] = pad_rows(virtual, -1, self.padding_side)
        return out

    def _sequences(self, sources: list[list[int]], targets: list[list[int]], virtual=None) -> dict:
        if self.is_encoder_decoder:  # targets feed the decoder
            out = self._inputs(sources, virtual)
            out["target_ids"] = pad_rows(targets, IGNORE_INDEX, "right")
            return out
        rows = [s + t for s, t in zip(sources, targets)]
        if virtual is not None:
            virtual = [v + [-1] * len(t) for v, t in zip(virtual, targets)]
        out = self._inputs(rows, virtual)
        out["target_ids"] = pad_rows([[IGNORE_INDEX] * len(s) + t for s, t in zip(sources, targets)], IGNORE_INDEX, self.padding_side)
        return out
