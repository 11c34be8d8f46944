"""Task metrics as torchmetrics ``Metric``s: their states are sums (or minima and maxima), so DDP
reduces them exactly."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.text import SQuAD

from ..ner_spans import entity_spans

_INT64 = torch.iinfo(torch.int64)


def synced_states(metric: Metric, *names: str) -> list[Tensor]:
    """Copies of ``metric``'s states reduced over every process, as its ``compute`` sees them; its own
    states stay local. A collective under DDP: every process must call it."""
    with metric.sync_context(should_sync=True, should_unsync=True):
        return [getattr(metric, name).clone() for name in names]


def text_digest(text: str) -> int:
    """A 63-bit digest of a text, the same in every process (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


class EntityF1(Metric):
    """Entity-level micro precision, recall and F1 over BIO tag sequences, as seqeval computes them
    by default: an entity counts when its type and its first and last word all match."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("correct", "predicted", "gold", "sentences"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predicted: list[list[str]], gold: list[list[str]]) -> None:
        for pred_tags, gold_tags in zip(predicted, gold, strict=True):
            if len(pred_tags) != len(gold_tags):
                raise ValueError(f"predicted {len(pred_tags)} tags for a sentence of {len(gold_tags)} words")
            pred_spans, gold_spans = set(entity_spans(pred_tags)), set(entity_spans(gold_tags))
            self.correct += len(pred_spans & gold_spans)
            self.predicted += len(pred_spans)
            self.gold += len(gold_spans)
            self.sentences += 1

    def compute(self) -> dict[str, torch.Tensor]:
        precision = self.correct / self.predicted.clamp(min=1)
        recall = self.correct / self.gold.clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        return {"precision": precision.float(), "recall": recall.float(), "f1": f1.float()}


class SQuADAnswers(SQuAD):
    """SQuAD exact match and F1, which also keeps the least and greatest digest of the predicted answers
    (stripped) and of the gold ones (each question's first): equal least and greatest, every answer the same."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for side in ("answer", "gold"):
            self.add_state(f"{side}_min", torch.tensor(_INT64.max), dist_reduce_fx="min")
            self.add_state(f"{side}_max", torch.tensor(_INT64.min), dist_reduce_fx="max")

    def update(self, preds, target) -> None:
        super().update(preds, target)
        preds, target = (x if isinstance(x, list) else [x] for x in (preds, target))
        answers = [text_digest(p["prediction_text"].strip()) for p in preds]
        gold = [text_digest((t["answers"]["text"] or [""])[0].strip()) for t in target]
        for side, digests in (("answer", answers), ("gold", gold)):
            if digests:
                low, high = getattr(self, f"{side}_min"), getattr(self, f"{side}_max")
                setattr(self, f"{side}_min", low.clamp(max=min(digests)))
                setattr(self, f"{side}_max", high.clamp(min=max(digests)))
