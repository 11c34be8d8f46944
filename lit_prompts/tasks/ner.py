"""Named-entity recognition: a tagging head over every token (``token``), or entities generated as
text and parsed back (``text_to_text``); entity-level F1 with seqeval's semantics."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection

from ..data.collate import IGNORE_INDEX
from ..data.ner import entity_spans, parse_linearized
from ..metrics import EntityF1


class NerTask:
    formats = ("token", "text_to_text")
    monitor = "val/f1"
    monitor_scale = 1.0  # to 0-1, for averages over tasks

    def metrics(self, label_names: list[str]) -> MetricCollection:
        return MetricCollection({"entity": EntityF1()})

    def loss(self, method, batch: dict) -> Tensor:
        """Token format (text-to-text is the method's language-modelling loss)."""
        logits = method.token_logits(batch)
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)

    def predicted_tags(self, method, batch: dict) -> list[list[str]]:
        """Per sentence: one predicted tag per word (words cut off by max_length get ``O``)."""
        names = method.label_names
        if method.task_format == "text_to_text":
            texts = method.generate(batch["source"])
            types = {n[2:] for n in names if n != "O"}
            return [parse_linearized(t, words, types) for t, words in zip(texts, batch["tokens"])]
        best = method.token_logits(batch).argmax(-1).tolist()
        out = []
        for row, words in enumerate(batch["tokens"]):
            tags = ["O"] * len(words)
            for position, word in enumerate(batch["word_index"][row].tolist()):
                if word >= 0:
                    tags[word] = names[best[row][position]]
            out.append(tags)
        return out

    def update(self, method, batch: dict, metrics: MetricCollection) -> None:
        names = method.label_names
        gold = [[names[t] for t in tags] for tags in batch["tags"]]
        metrics.update(self.predicted_tags(method, batch), gold)

    def predict(self, method, batch: dict) -> list[dict]:
        rows = []
        for example_id, words, tags in zip(batch["ids"], batch["tokens"], self.predicted_tags(method, batch)):
            # Character offsets into the sentence as its words joined by single spaces.
            starts = [sum(len(w) + 1 for w in words[:i]) for i in range(len(words))]
            entities = [
                {"text": " ".join(words[s : e + 1]), "type": kind, "start": starts[s], "end": starts[e] + len(words[e]),
                 "first_token": s, "last_token": e}
                for kind, s, e in entity_spans(tags)
            ]
            rows.append({"id": example_id, "text": " ".join(words), "entities": entities})
        return rows
