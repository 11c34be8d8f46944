"""Extractive QA: start/end scores per token decoded over all windows of an example (``span``), or
the answer generated (``text_to_text``); SQuAD exact match and F1 through torchmetrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.text import SQuAD


class QaTask:
    formats = ("span", "text_to_text")
    monitor = "val/f1"
    monitor_scale = 0.01  # SQuAD scores are percentages

    def metrics(self, label_names: list[str]) -> MetricCollection:
        return MetricCollection({"squad": SQuAD()})

    @staticmethod
    def span_logits(method, batch: dict) -> tuple[Tensor, Tensor]:
        """Start and end scores [windows, seq]; padding can never be chosen."""
        logits = method.token_logits(batch).masked_fill(~batch["attention_mask"].bool().unsqueeze(-1), -1e4)
        return logits[..., 0], logits[..., 1]

    def loss(self, method, batch: dict) -> Tensor:
        """Span format (text-to-text is the method's language-modelling loss)."""
        start, end = self.span_logits(method, batch)
        return (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2

    def answers(self, method, batch: dict) -> list[tuple[str, float, int]]:
        """Per example: (answer text, score, character start)."""
        if method.task_format == "text_to_text":
            texts = method.generate(batch["source"])
            return [(t.strip(), 0.0, c.find(t.strip())) for t, c in zip(texts, batch["context"])]
        start, end = (t.float().cpu() for t in self.span_logits(method, batch))
        best = [("", float("-inf"), -1) for _ in batch["ids"]]
        n_best, longest = method.hparams.n_best, method.hparams.max_answer_tokens
        for w, example in enumerate(batch["window_example"]):
            offsets, shift = batch["offsets"][w], int(batch["pad_shift"][w])
            context_positions = torch.tensor([i + shift for i, o in enumerate(offsets) if o is not None])
            if len(context_positions) == 0:
                continue
            k = min(n_best, len(context_positions))
            starts = context_positions[start[w, context_positions].topk(k).indices].tolist()
            ends = context_positions[end[w, context_positions].topk(k).indices].tolist()
            for s in starts:
                for e in ends:
                    if s <= e < s + longest:
                        score = float(start[w, s] + end[w, e])
                        if score > best[example][1]:
                            first, last = offsets[s - shift][0], offsets[e - shift][1]
                            best[example] = (batch["context"][example][first:last], score, first)
        return best

    def update(self, method, batch: dict, metrics: MetricCollection) -> None:
        found = self.answers(method, batch)
        preds = [{"prediction_text": text, "id": i} for (text, _, _), i in zip(found, batch["ids"])]
        target = [{"answers": {"text": a, "answer_start": s}, "id": i}
                  for a, s, i in zip(batch["answers"], batch["starts"], batch["ids"])]
        metrics.update(preds, target)

    def predict(self, method, batch: dict) -> list[dict]:
        return [
            {"id": i, "answer": text, "score": round(score, 4) if score != float("-inf") else None, "start": first}
            for i, (text, score, first) in zip(batch["ids"], self.answers(method, batch))
        ]
