"""Classification: a head over pooled hidden states, cloze scoring, or text-to-text with rank
classification over the label words (or generated text)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from ..pooling import pool_hidden
from .metrics import synced_states
from .protocol import PromptedModel

Pooling = Literal["backbone", "auto", "first", "last", "mean"]


def classifier(hidden_size: int, outputs: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, outputs))


class ClassificationFormat(nn.Module):
    """Scores per label in any format; the loss, metrics and predictions follow from them."""

    task, reads = "classification", ""
    monitor, monitor_scale = "val/accuracy", 1.0  # monitor_scale: to 0-1, for averages over tasks

    def __init__(self, label_names: list[str]):
        super().__init__()
        self.label_names = list(label_names)

    def metrics(self) -> MetricCollection:
        n = len(self.label_names)
        return MetricCollection({"accuracy": MulticlassAccuracy(n, average="micro"),
                                 "macro_f1": MulticlassF1Score(n, average="macro")})

    def trivial_predictions(self, metrics: MetricCollection) -> str | None:
        """What was trivial about the predictions ``metrics`` counted in every process, where the examples
        are of several classes: one class for every example, or predictions right no more often than that
        would be (at chance, e.g. 0.50 on SST-2, whose majority class is 0.51 of it); else None. Every
        process must call it."""
        if "macro_f1" not in metrics:
            return None
        tp, fp, fn = synced_states(metrics["macro_f1"], "tp", "fp", "fn")  # per class
        predicted, gold = tp + fp, tp + fn
        if int((gold > 0).sum()) < 2:
            return None
        majority, total, right = int(gold.argmax()), int(gold.sum()), int(tp.sum())
        if int((predicted > 0).sum()) == 1:
            return f"predicted {self.label_names[int(predicted.argmax())]!r} for all {total} validation examples"
        if right <= int(gold[majority]):
            return (f"was right for {right} of {total} validation examples, no more than predicting "
                    f"{self.label_names[majority]!r} for every example would be ({int(gold[majority])})")
        return None

    def scores(self, model: PromptedModel, batch: dict) -> Tensor:
        """[B, num_labels]."""
        raise NotImplementedError

    def loss(self, model: PromptedModel, batch: dict) -> Tensor:
        return F.cross_entropy(self.scores(model, batch), batch["label"])

    def update(self, model: PromptedModel, batch: dict, metrics: MetricCollection) -> None:
        metrics.update(self.scores(model, batch), batch["label"])

    def predict(self, model: PromptedModel, batch: dict) -> list[dict]:
        score, index = self.scores(model, batch).softmax(-1).max(-1)
        return [{"id": i, "label": self.label_names[k], "score": round(s, 6)}
                for i, k, s in zip(batch["ids"], index.tolist(), score.tolist())]


class HeadClassification(ClassificationFormat):
    """A linear head over the hidden states pooled over the text's real tokens (``pooling``: first,
    last or mean; ``backbone`` and ``auto`` are resolved by the caller)."""

    format, reads = "head", "hidden"

    def __init__(self, label_names: list[str], hidden_size: int, pooling: Pooling = "first", head_dropout: float = 0.1):
        super().__init__(label_names)
        self.pooling = pooling
        self.head = classifier(hidden_size, len(label_names), head_dropout)

    def scores(self, model: PromptedModel, batch: dict) -> Tensor:
        hidden = model.hidden_states(batch)
        return self.head(pool_hidden(hidden, batch["attention_mask"], self.pooling).float())


class ClozeClassification(ClassificationFormat):
    """The masked-LM's scores of each label's verbalizer token at the template's mask."""

    format, reads = "cloze", "masked_lm"

    def __init__(self, label_names: list[str], verbalizer_token_ids: list[int]):
        super().__init__(label_names)
        if not verbalizer_token_ids or len(verbalizer_token_ids) != len(label_names):
            raise ValueError("cloze format needs one verbalizer token id per label (linked from the data module)")
        self.verbalizer_token_ids = list(verbalizer_token_ids)

    def scores(self, model: PromptedModel, batch: dict) -> Tensor:
        logits = model.masked_lm_logits(batch)
        at_mask = logits[torch.arange(logits.shape[0], device=logits.device), batch["mask_index"]]
        return at_mask[:, self.verbalizer_token_ids].float()


class TextToText:
    """Mixed into every text-to-text format: the target text's mean token loss, and generation settings."""

    reads = "sequence"

    def __init__(self, label_names: list[str], max_new_tokens: int = 20, num_beams: int = 1):
        super().__init__(label_names)
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams

    def loss(self, model: PromptedModel, batch: dict) -> Tensor:
        return -model.sequence_logprobs(batch, "token_mean")

    def generate(self, model: PromptedModel, source: dict) -> list[str]:
        return model.generate_text(source, self.max_new_tokens, self.num_beams)


class TextClassification(TextToText, ClassificationFormat):
    """Label words as target text: rank classification over them (``predict_with: labels``), or
    free text (``generate``)."""

    format = "text_to_text"

    def __init__(self, label_names: list[str], predict_with: Literal["labels", "generate"] = "labels",
                 max_new_tokens: int = 20, num_beams: int = 1):
        super().__init__(label_names, max_new_tokens, num_beams)
        self.predict_with = predict_with

    def scores(self, model: PromptedModel, batch: dict) -> Tensor:
        return model.sequence_logprobs(batch["candidates"], "sum").view(len(batch["ids"]), -1)

    def predict(self, model: PromptedModel, batch: dict) -> list[dict]:
        if self.predict_with == "generate":
            return [{"id": i, "text": t} for i, t in zip(batch["ids"], self.generate(model, batch["source"]))]
        return super().predict(model, batch)
