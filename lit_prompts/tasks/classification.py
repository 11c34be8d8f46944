"""Classification: a head over pooled hidden states, cloze scoring, or text-to-text with rank
classification over the label words."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score


class ClassificationTask:
    formats = ("head", "cloze", "text_to_text")
    monitor = "val/accuracy"
    monitor_scale = 1.0  # to 0-1, for averages over tasks

    def metrics(self, label_names: list[str]) -> MetricCollection:
        return MetricCollection({
            "accuracy": MulticlassAccuracy(len(label_names), average="micro"),
            "macro_f1": MulticlassF1Score(len(label_names), average="macro"),
        })

    def loss(self, method, batch: dict) -> Tensor:
        """Head and cloze formats (text-to-text is the method's language-modelling loss)."""
        return F.cross_entropy(method.class_logits(batch), batch["label"])

    def update(self, method, batch: dict, metrics: MetricCollection) -> None:
        metrics.update(method.scores(batch), batch["label"])

    def predict(self, method, batch: dict) -> list[dict]:
        if method.hparams.predict_with == "generate":
            texts = method.generate(batch["source"])
            return [{"id": i, "text": t} for i, t in zip(batch["ids"], texts)]
        score, index = method.scores(batch).softmax(-1).max(-1)
        names = method.label_names
        return [
            {"id": i, "label": names[k], "score": round(s, 6)}
            for i, k, s in zip(batch["ids"], index.tolist(), score.tolist())
        ]
