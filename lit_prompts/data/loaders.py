"""The DataLoaders a ``PromptDataModule`` hands Lightning: evaluation batches in order; training
batches in an order drawn from (seed, epoch) alone (or grouped by length), resumable in mid-epoch;
or, streaming, batches of a training stream without end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from .collate import EpochShuffleSampler, LengthGroupedSampler, ResumableLoader, example_lengths, training_share
from .encoding import Columns, TaskData
from .labels import LabelSet
from .raw import RawSplit
from .streaming import RowStream, StreamingDataset, StreamingLoader


@dataclass
class LoaderSettings:
    batch_size: int
    collate_fn: Callable[[list[dict]], dict]
    num_workers: int
    seed: int

    def loader_arguments(self) -> dict:
        return dict(
            batch_size=self.batch_size, collate_fn=self.collate_fn, num_workers=self.num_workers,
            # Without its own generator every iter() draws from the global RNG, so a resumed run
            # (which adds a sanity-check pass) would see different dropout masks.
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=self.num_workers > 0,
        )


def evaluation_loader(dataset: Dataset, settings: LoaderSettings) -> DataLoader:
    return DataLoader(dataset, **settings.loader_arguments())


def training_loader(dataset: Dataset, settings: LoaderSettings, trainer, position_source: Callable,
                    group_by_length: bool = False) -> ResumableLoader:
    """The shuffle depends on (seed, epoch) alone and splits between DDP ranks itself; the loader's
    position goes into checkpoints, so that a run resumed in mid-epoch goes on where it was."""
    share = training_share(trainer)
    if group_by_length:
        sampler = LengthGroupedSampler(example_lengths(dataset), settings.batch_size, seed=settings.seed, **share)
    else:
        sampler = EpochShuffleSampler(len(dataset), seed=settings.seed, **share)
    return ResumableLoader(dataset, sampler=sampler, position_source=position_source, **settings.loader_arguments())


@dataclass
class RowEncoder:
    """A chunk of training rows -> their features, checked as a whole split's are (picklable: it is
    sent to the DataLoader workers, which encode the stream)."""

    task_data: type[TaskData]
    encoder: TaskData
    columns: Columns
    labels: LabelSet

    def __call__(self, split: RawSplit) -> list[dict]:
        rows = self.task_data.read(split, "train", self.columns, lambda: self.labels)
        return self.encoder.encode(rows).features


def streaming_loader(stream: RowStream, encode: RowEncoder, settings: LoaderSettings, shuffle_buffer: int, trainer,
                     taken_source: Callable, validates: bool) -> StreamingLoader:
    """Batches of the training stream; the trainer must say when training and validation happen,
    because the stream has no length (see ``streaming``)."""
    if trainer is not None and trainer.max_steps < 0:
        raise ValueError("data.init_args.streaming=true reads a training stream of unknown length, which never "
                         "ends an epoch: set trainer.max_steps to the number of training steps")
    if trainer is not None and validates and isinstance(trainer.val_check_interval, float):
        raise ValueError("data.init_args.streaming=true: the training epoch never ends, so validation runs every "
                         "trainer.val_check_interval training steps: set it to an integer (e.g. 500)")
    share = training_share(trainer)
    dataset = StreamingDataset(stream, encode, seed=settings.seed, buffer_size=shuffle_buffer,
                               rank=share.get("rank", 0), world_size=share.get("num_replicas", 1))
    return StreamingLoader(dataset, taken_source=taken_source, **settings.loader_arguments())
