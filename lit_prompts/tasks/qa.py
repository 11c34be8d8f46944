"""Extractive QA: start/end scores per token decoded over all windows of an example (``span``), or
the answer generated (``text_to_text``); SQuAD exact match and F1 through torchmetrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection

from .classification import TextToText, classifier
from .metrics import SQuADAnswers, synced_states, text_digest
from .protocol import PromptedModel


class QaFormat(nn.Module):
    """Answers per example in any format; metrics and predictions follow from them."""

    task, reads = "qa", ""
    monitor, monitor_scale = "val/f1", 0.01  # SQuAD scores are percentages

    def __init__(self, label_names: list[str]):
        super().__init__()
        self.label_names = list(label_names)

    def metrics(self) -> MetricCollection:
        return MetricCollection({"squad": SQuADAnswers()})

    def trivial_predictions(self, metrics: MetricCollection) -> str | None:
        """What was trivial about the answers ``metrics`` counted in every process (all empty; or all the
        same, where the questions' answers differ), or None. Every process must call it."""
        total, low, high, gold_low, gold_high = synced_states(
            metrics["squad"], "total", "answer_min", "answer_max", "gold_min", "gold_max")
        if int(total) == 0 or int(low) != int(high):
            return None
        if int(low) == text_digest(""):
            return f"answered nothing (an empty answer) to all {int(total)} validation questions"
        if int(gold_low) != int(gold_high):
            return f"gave the same answer to all {int(total)} validation questions"
        return None

    def answers(self, model: PromptedModel, batch: dict) -> list[tuple[str, float, int]]:
        """Per example: (answer text, score, character start)."""
        raise NotImplementedError

    def update(self, model: PromptedModel, batch: dict, metrics: MetricCollection) -> None:
        found = self.answers(model, batch)
        preds = [{"prediction_text": text, "id": i} for (text, _, _), i in zip(found, batch["ids"])]
        target = [{"answers": {"text": a, "answer_start": s}, "id": i}
                  for a, s, i in zip(batch["answers"], batch["starts"], batch["ids"])]
        metrics.update(preds, target)

    def predict(self, model: PromptedModel, batch: dict) -> list[dict]:
        return [
            {"id": i, "answer": text, "score": round(score, 4) if score != float("-inf") else None, "start": first}
            for i, (text, score, first) in zip(batch["ids"], self.answers(model, batch))
        ]


class SpanQa(QaFormat):
    """Start and end scores per token from a linear head; the best span of at most
    ``max_answer_tokens`` among the ``n_best`` starts and ends of every window."""

    format, reads = "span", "hidden"

    def __init__(self, label_names: list[str], hidden_size: int, head_dropout: float = 0.1, n_best: int = 20,
                 max_answer_tokens: int = 30):
        super().__init__(label_names)
        self.head = classifier(hidden_size, len(label_names), head_dropout)
        self.n_best, self.max_answer_tokens = n_best, max_answer_tokens

    def span_logits(self, model: PromptedModel, batch: dict) -> tuple[Tensor, Tensor]:
        """Start and end scores [windows, seq]; padding can never be chosen."""
        logits = self.head(model.hidden_states(batch)).float()
        logits = logits.masked_fill(~batch["attention_mask"].bool().unsqueeze(-1), -1e4)
        return logits[..., 0], logits[..., 1]

    def loss(self, model: PromptedModel, batch: dict) -> Tensor:
        start, end = self.span_logits(model, batch)
        return (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2

    def answers(self, model: PromptedModel, batch: dict) -> list[tuple[str, float, int]]:
        start, end = (t.float().cpu() for t in self.span_logits(model, batch))
        best = [("", float("-inf"), -1) for _ in batch["ids"]]
        for w, example in enumerate(batch["window_example"]):
            offsets, shift = batch["offsets"][w], int(batch["pad_shift"][w])
            context_positions = torch.tensor([i + shift for i, o in enumerate(offsets) if o is not None])
            if len(context_positions) == 0:
                continue
            k = min(self.n_best, len(context_positions))
            starts = context_positions[start[w, context_positions].topk(k).indices]
            ends = context_positions[end[w, context_positions].topk(k).indices]
            # Every (start, end) pair of the n_best at once; argmax takes the first best in starts-then-ends order.
            scores = start[w, starts][:, None] + end[w, ends][None, :]
            valid = (starts[:, None] <= ends[None, :]) & (ends[None, :] < starts[:, None] + self.max_answer_tokens)
            if not valid.any():
                continue
            pick = int(scores.masked_fill(~valid, float("-inf")).argmax())
            s, e = int(starts[pick // k]), int(ends[pick % k])
            score = float(scores[pick // k, pick % k])
            if score > best[example][1]:
                first, last = offsets[s - shift][0], offsets[e - shift][1]
                best[example] = (batch["context"][example][first:last], score, first)
        return best


class TextQa(TextToText, QaFormat):
    """The answer generated as text, located in the context by its first occurrence."""

    format = "text_to_text"

    def answers(self, model: PromptedModel, batch: dict) -> list[tuple[str, float, int]]:
        texts = self.generate(model, batch["source"])
        return [(t.strip(), 0.0, c.find(t.strip())) for t, c in zip(texts, batch["context"])]
