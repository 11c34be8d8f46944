"""Task metrics as torchmetrics ``Metric``s: their states are sums, so DDP reduces them exactly."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from ..ner_spans import entity_spans


class EntityF1(Metric):
    """Entity-level micro precision, recall and F1 over BIO tag sequences, as seqeval computes them
    by default: an entity counts when its type and its first and last word all match."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("correct", "predicted", "gold"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predicted: list[list[str]], gold: list[list[str]]) -> None:
        for pred_tags, gold_tags in zip(predicted, gold, strict=True):
            if len(pred_tags) != len(gold_tags):
                raise ValueError(f"predicted {len(pred_tags)} tags for a sentence of {len(gold_tags)} words")
            pred_spans, gold_spans = set(entity_spans(pred_tags)), set(entity_spans(gold_tags))
            self.correct += len(pred_spans & gold_spans)
            self.predicted += len(pred_spans)
            self.gold += len(gold_spans)

    def compute(self) -> dict[str, torch.Tensor]:
        precision = self.correct / self.predicted.clamp(min=1)
        recall = self.correct / self.gold.clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        return {"precision": precision.float(), "recall": recall.float(), "f1": f1.float()}
