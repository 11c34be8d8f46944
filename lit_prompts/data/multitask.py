"""Several tasks in one run: a DataModule composed of one ``PromptDataModule`` per named task.

Training batches hold one task each (its own format and collator) and carry ``batch["task"]``;
which task comes next follows the sampling strategy:

  proportional  every batch of every task once per epoch, in a random order: tasks appear in
                proportion to their size
  temperature   each step draws a task with probability ∝ n_t^(1/T) (T = 1: proportional; large T:
                uniform), so small tasks are seen more often than their size says
  round_robin   tasks in turn, one batch each

Validation and test give one loader per task (Lightning's ``dataloader_idx`` is the task's index).
Predict reads one file whose rows name their task (``task_column``) and batches them in file order,
tasks mixed: a batch holds one sub-batch per task (``task_batches``) and where its rows go (``positions``).
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from typing import Literal, get_args

import torch
from jsonargparse.typing import PositiveFloat, PositiveInt
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..contexts import build_outside_cli
from .collate import ListDataset, ResumableLoader, trainer_position, trainer_stage
from .datamodule import PromptDataModule
from .encoding import check_counts
from .files import read_files
from .raw import RawSplit, check_encoding

Sampling = Literal["proportional", "temperature", "round_robin"]
SAMPLING: tuple[str, ...] = get_args(Sampling)


@contextmanager
def options_of(task: str):
    """A task module's errors name its options as ``data.init_args.tasks.TASK.*`` (where they are set)."""
    try:
        yield
    except (ValueError, KeyError) as error:
        message = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
        if "data.init_args." in message:
            message = message.replace("data.init_args.", f"data.init_args.tasks.{task}.")
        else:
            message = f"data.init_args.tasks.{task}: {message}"
        raise (KeyError if isinstance(error, KeyError) else ValueError)(message) from error


class TaskBatches(Dataset):
    """Item (task, example indices) is one whole batch of that task, collated by its own collator."""

    def __init__(self, modules: dict[str, PromptDataModule]):
        self.modules = modules
        self.collators = {name: m.collator(train=True) for name, m in modules.items()}

    def __getitem__(self, item: tuple[str, list[int]]) -> dict:
        task, indices = item
        batch = self.collators[task](take(self.modules[task].datasets["train"], indices))
        batch["task"] = task
        return batch


def take(dataset: Dataset, indices: list[int]) -> list[dict]:
    """The features at ``indices``, in one read where the dataset can (an Arrow split)."""
    if hasattr(dataset, "__getitems__"):
        return dataset.__getitems__(indices)
    return [dataset[i] for i in indices]


class PlanSampler(DistributedSampler):
    """Yields an epoch's (task, indices) batches; Lightning calls ``set_epoch`` before each epoch,
    so every epoch has its own order, drawn from (seed, epoch) alone (a resumed run replays it).

    It splits the plan between DDP ranks itself. Being a ``DistributedSampler`` tells Lightning so,
    which otherwise would wrap it in one more distributed sampler (and split each rank's share again).
    """

    def __init__(self, sizes: dict[str, int], batch_size: int, sampling: str, temperature: float, seed: int,
                 rank: int = 0, world_size: int = 1):
        # DistributedSampler.__init__ (a dataset to split by index) does not apply: set our own state.
        self.args = (sizes, batch_size, sampling, temperature)
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.start = 0  # batches of the plan to skip in the next pass (ResumableLoader: mid-epoch resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self) -> list[tuple[str, list[int]]]:
        return epoch_plan(*self.args, seed=self.seed + self.epoch, rank=self.rank, world_size=self.world_size)

    def __iter__(self):
        start, self.start = self.start, 0
        return iter(self.plan()[start:])

    def __len__(self) -> int:
        return len(self.plan())


def epoch_plan(sizes: dict[str, int], batch_size: int, sampling: str, temperature: float, seed: int,
               rank: int = 0, world_size: int = 1) -> list[tuple[str, list[int]]]:
    """The epoch's batches in order, (task, indices); a rank takes every world_size-th batch, so the
    processes of a DDP run see disjoint batches and the same number of steps."""
    rng = random.Random(seed)
    batches = {}
    for task, n in sizes.items():
        order = list(range(n))
        rng.shuffle(order)
        batches[task] = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    total = sum(len(b) for b in batches.values())
    tasks = list(batches)
    if sampling == "proportional":
        plan = [(t, b) for t in tasks for b in batches[t]]
        rng.shuffle(plan)
    else:
        cursor = {t: 0 for t in tasks}
        weights = [sizes[t] ** (1 / temperature) for t in tasks]
        plan = []
        for step in range(total):
            task = tasks[step % len(tasks)] if sampling == "round_robin" else rng.choices(tasks, weights)[0]
            plan.append((task, batches[task][cursor[task] % len(batches[task])]))  # small tasks cycle
            cursor[task] += 1
    usable = len(plan) - len(plan) % world_size
    return plan[rank:usable:world_size]


class MultiTaskDataModule(LightningDataModule):
    """One data module per named task, each configured like ``PromptDataModule``.

    Args:
        tasks: task name -> ``PromptDataModule`` arguments (task, task_format, data_files, columns...).
        backbone: shared by every task (linked from the model).
        sampling: ``proportional``, ``temperature`` or ``round_robin`` (see the module docstring).
        temperature: T of temperature sampling.
        batch_size: training batch size (per device), the same for every task.
        eval_batch_size: validation / test / predict batch size (default: batch_size).
        predict_files: predict: json / jsonl / csv file(s) whose rows mix tasks, each with its task's
            columns (as that task's config names them) and its task's name in ``task_column``.
        task_column: the column naming each predict row's task.
        encoding: text encoding of ``predict_files`` (each task's files: its own ``encoding``).
    """

    def __init__(self, tasks: dict[str, dict], backbone: str = "", sampling: Sampling = "proportional",
                 temperature: PositiveFloat = 2.0, batch_size: PositiveInt = 32, eval_batch_size: PositiveInt | None = None,
                 predict_files: str | list[str] | None = None, task_column: str = "task", encoding: str = "utf-8"):
        super().__init__()
        if not tasks:
            raise ValueError("tasks is empty: name at least one task")
        if sampling not in SAMPLING:
            raise ValueError(f"sampling={sampling!r} is not one of {SAMPLING}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        check_counts(1, batch_size=batch_size, eval_batch_size=eval_batch_size)
        self.save_hyperparameters(logger=False)
        self.modules = {}
        for name, spec in tasks.items():
            clashes = {"backbone", "batch_size", "eval_batch_size"} & set(spec)
            if clashes:
                raise ValueError(f"tasks.{name}: {sorted(clashes)} are set once for all tasks")
            single_task = sorted(k for k in ("streaming", "group_by_length") if spec.get(k))
            if single_task:
                raise ValueError(f"tasks.{name}: {single_task} apply to a single-task data module; the multi-task "
                                 "plan draws its own batches from every task")
            with options_of(name):
                self.modules[name] = build_outside_cli(  # plain ints: the command line hands int subclasses
                    PromptDataModule, backbone=backbone, batch_size=int(batch_size),
                    eval_batch_size=None if eval_batch_size is None else int(eval_batch_size), **spec
                )
        check_encoding(encoding)
        self.task_names = list(self.modules)
        self.datasets: dict[str, ListDataset] = {}  # predict's mixed rows (training data stays per task)

    @property
    def task_specs(self) -> dict[str, dict]:
        """What the model needs per task: its kind, format, labels and verbalizer ids."""
        specs = {}
        for name, m in self.modules.items():
            with options_of(name):
                specs[name] = {"task": m.hparams.task, "task_format": m.hparams.task_format,
                               "label_names": m.label_names, "verbalizer_token_ids": m.verbalizer_token_ids}
        return specs

    def prepare_data(self) -> None:
        """Each task's splits of the coming stage into the cache, on one process per node (see
        ``PromptDataModule.prepare_data``: mistakes are raised by ``setup``, on every rank); predict's
        mixed file is read in ``setup``."""
        stage = trainer_stage(self.trainer)
        for module in self.modules.values() if stage != "predict" else []:
            try:
                module.prepare_stage(stage)
            except Exception:  # noqa: BLE001 - setup meets it again, on every rank
                pass

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            self._setup_mixed_predict()
            return
        for name, module in self.modules.items():
            with options_of(name):
                module.setup(stage)

    def _setup_mixed_predict(self) -> None:
        if not self.hparams.predict_files:
            raise ValueError("predict with a MultiTaskDataModule reads data.init_args.predict_files: set it")
        split = read_files("predict", self.hparams.predict_files, self.hparams.get("encoding", "utf-8"),
                            option="data.init_args.predict_files")
        tasks = split.column(self.hparams.task_column, "task_column")
        unknown = sorted({str(t) for t in tasks} - set(self.modules))
        if unknown:
            rows = [i for i, t in enumerate(tasks) if str(t) in unknown][:5]
            raise ValueError(f"{split.source}: rows {rows} name tasks {unknown}; the tasks are {self.task_names}")
        # Ids: the task's id_column, else the file's "id" column, else the row number in the file.
        file_ids = split.rows["id"][:] if "id" in split.rows.column_names else [None] * len(tasks)
        features = [None] * len(tasks)
        for name, module in self.modules.items():
            rows = [i for i, t in enumerate(tasks) if t == name]
            if not rows:
                continue
            part = RawSplit(split.rows.select(rows), f"{split.source} (rows of task {name!r})")
            with options_of(name):
                encoded = module.encode(part, "predict")
            for row, feature in zip(rows, encoded):
                if module.hparams.id_column is None:
                    feature["id"] = row if file_ids[row] is None else file_ids[row]
                features[row] = {**feature, "task": name}
        self.datasets = {"predict": ListDataset(features)}

    def predict_dataloader(self) -> DataLoader:
        collate = MixedCollator({name: m.collator(train=False) for name, m in self.modules.items()})
        return DataLoader(self.datasets["predict"], batch_size=self.hparams.eval_batch_size or self.hparams.batch_size,
                          collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sizes = {name: len(m.datasets["train"]) for name, m in self.modules.items()}
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        sampler = PlanSampler(sizes, self.hparams.batch_size, self.hparams.sampling, self.hparams.temperature,
                              seed=seed, rank=rank, world_size=world)
        # Its own generator: without one each iter() draws from the global RNG (the dropout masks of a
        # resumed run would differ from the uninterrupted run's).
        return ResumableLoader(TaskBatches(self.modules), sampler=sampler, batch_size=None,
                               generator=torch.Generator().manual_seed(seed), position_source=trainer_position(self))

    def _per_task(self, stage: str, method: str) -> list[DataLoader]:
        loaders = []
        for name, module in self.modules.items():
            if stage not in module.datasets:
                continue
            loader = getattr(module, method)()
            loader.collate_fn = _tagging(loader.collate_fn, name)
            loaders.append(loader)
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        return self._per_task("validation", "val_dataloader")

    def test_dataloader(self) -> list[DataLoader]:
        return self._per_task("test", "test_dataloader")


class _tagging:
    """A collate function that also names the batch's task (picklable, for worker processes)."""

    def __init__(self, collate, task: str):
        self.collate, self.task = collate, task

    def __call__(self, features):
        batch = self.collate(features)
        batch["task"] = self.task
        return batch


class MixedCollator:
    """Collates rows of several tasks: one sub-batch per task, by that task's own collator, and the
    positions its rows had in the input."""

    def __init__(self, collators: dict):
        self.collators = collators

    def __call__(self, features: list[dict]) -> dict:
        positions: dict[str, list[int]] = {}
        for i, feature in enumerate(features):
            positions.setdefault(feature["task"], []).append(i)
        task_batches = {}
        for task, where in positions.items():
            task_batches[task] = self.collators[task]([features[i] for i in where])
            task_batches[task]["task"] = task
        return {"task_batches": task_batches, "positions": positions, "ids": [f["id"] for f in features]}
