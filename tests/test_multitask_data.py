"""The multi-task DataModule: one task per training batch, sampling strategies, per-task loaders."""

from __future__ import annotations

import collections

import pytest
import torch

from lit_prompts.data.multitask import MultiTaskDataModule, epoch_plan


def test_sampling_strategies():
    sizes = {"big": 80, "small": 8}  # 10 and 1 batches of 8
    proportional = epoch_plan(sizes, 8, "proportional", 1.0, seed=0)
    counts = collections.Counter(t for t, _ in proportional)
    assert counts == {"big": 10, "small": 1}
    assert sorted(i for t, b in proportional if t == "big" for i in b) == list(range(80))  # each example once

    robin = epoch_plan(sizes, 8, "round_robin", 1.0, seed=0)
    assert [t for t, _ in robin[:4]] == ["big", "small", "big", "small"]

    hot = collections.Counter(t for seed in range(50) for t, _ in epoch_plan(sizes, 8, "temperature", 1.0, seed=seed))
    flat = collections.Counter(t for seed in range(50) for t, _ in epoch_plan(sizes, 8, "temperature", 100.0, seed=seed))
    # T = 1 follows the sizes (10:1 examples), a large T evens the tasks out.
    assert hot["small"] / sum(hot.values()) == pytest.approx(1 / 11, abs=0.03)
    assert flat["small"] / sum(flat.values()) == pytest.approx(0.5, abs=0.05)

    # Two DDP ranks: disjoint batches, the same number of steps.
    first, second = (epoch_plan(sizes, 8, "proportional", 1.0, seed=0, rank=r, world_size=2) for r in (0, 1))
    assert len(first) == len(second) == 5
    assert not {(t, tuple(b)) for t, b in first} & {(t, tuple(b)) for t, b in second}


def test_batches_carry_their_task(tiny_backbone, reviews, ner_files):
    dm = MultiTaskDataModule(
        backbone=tiny_backbone("bert"), batch_size=8, sampling="round_robin",
        tasks={
            "sentiment": {"task": "classification", "task_format": "head",
                          "data_files": {"train": reviews["train"], "validation": reviews["validation"]}},
            "entities": {"task": "ner", "task_format": "token",
                         "data_files": {"train": ner_files["train"], "validation": ner_files["validation"]}},
        },
    )
    dm.setup("fit")
    specs = dm.task_specs
    assert specs["sentiment"]["label_names"] == ["negative", "positive"] and specs["entities"]["task"] == "ner"
    loader = dm.train_dataloader()
    batches = list(loader)
    assert [b["task"] for b in batches[:4]] == ["sentiment", "entities", "sentiment", "entities"]
    assert all(isinstance(b["input_ids"], torch.Tensor) for b in batches)
    assert "labels" in batches[1] and "label" in batches[0]  # each task's own collator
    loader.sampler.set_epoch(1)
    assert [b["ids"] for b in loader] != [b["ids"] for b in batches]  # a new order each epoch
    validation = dm.val_dataloader()
    assert [next(iter(v))["task"] for v in validation] == ["sentiment", "entities"]

    with pytest.raises(ValueError, match=r"tasks.sentiment: \['batch_size'\] are set once for all tasks"):
        MultiTaskDataModule(backbone=tiny_backbone("bert"), tasks={"sentiment": {"batch_size": 4}})
