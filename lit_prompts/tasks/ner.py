"""Named-entity recognition: a tagging head over every token (``token``), or entities generated as
text and parsed back (``text_to_text``); entity-level F1 with seqeval's semantics."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection

from ..formats import IGNORE_INDEX
from ..ner_spans import entity_spans, parse_linearized
from .classification import TextToText, classifier
from .metrics import EntityF1, synced_states
from .protocol import PromptedModel


class NerFormat(nn.Module):
    """Predicted tags per word in any format; metrics and predicted entities follow from them."""

    task, reads = "ner", ""
    monitor, monitor_scale = "val/f1", 1.0

    def __init__(self, label_names: list[str]):
        super().__init__()
        self.label_names = list(label_names)

    def metrics(self) -> MetricCollection:
        return MetricCollection({"entity": EntityF1()})

    def trivial_predictions(self, metrics: MetricCollection) -> str | None:
        """What was trivial about the predictions ``metrics`` counted in every process (no entity at all,
        where there are some), or None. Every process must call it."""
        predicted, gold, sentences = synced_states(metrics["entity"], "predicted", "gold", "sentences")
        if int(predicted) > 0 or int(gold) == 0:
            return None
        return (f"predicted no entity (every tag 'O') in all {int(sentences)} validation sentences, "
                f"which hold {int(gold)} entities")

    def predicted_tags(self, model: PromptedModel, batch: dict) -> list[list[str]]:
        """Per sentence: one predicted tag per word (words cut off by max_length get ``O``)."""
        raise NotImplementedError

    def update(self, model: PromptedModel, batch: dict, metrics: MetricCollection) -> None:
        gold = [[self.label_names[t] for t in tags] for tags in batch["tags"]]
        metrics.update(self.predicted_tags(model, batch), gold)

    def predict(self, model: PromptedModel, batch: dict) -> list[dict]:
        rows = []
        for example_id, words, tags in zip(batch["ids"], batch["tokens"], self.predicted_tags(model, batch)):
            # Character offsets into the sentence as its words joined by single spaces.
            starts = [sum(len(w) + 1 for w in words[:i]) for i in range(len(words))]
            entities = [
                {"text": " ".join(words[s: e + 1]), "type": kind, "start": starts[s], "end": starts[e] + len(words[e]),
                 "first_token": s, "last_token": e}
                for kind, s, e in entity_spans(tags)
            ]
            rows.append({"id": example_id, "text": " ".join(words), "entities": entities})
        return rows


class TokenNer(NerFormat):
    """A tag per token from a linear head; a word takes its first token's tag."""

    format, reads = "token", "hidden"

    def __init__(self, label_names: list[str], hidden_size: int, head_dropout: float = 0.1):
        super().__init__(label_names)
        self.head = classifier(hidden_size, len(label_names), head_dropout)

    def token_logits(self, model: PromptedModel, batch: dict) -> Tensor:
        return self.head(model.hidden_states(batch)).float()

    def loss(self, model: PromptedModel, batch: dict) -> Tensor:
        logits = self.token_logits(model, batch)
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)

    def predicted_tags(self, model: PromptedModel, batch: dict) -> list[list[str]]:
        best = self.token_logits(model, batch).argmax(-1).tolist()
        out = []
        for row, words in enumerate(batch["tokens"]):
            tags = ["O"] * len(words)
            for position, word in enumerate(batch["word_index"][row].tolist()):
                if word >= 0:
                    tags[word] = self.label_names[best[row][position]]
            out.append(tags)
        return out


class TextNer(TextToText, NerFormat):
    """Entities written out as text (``type: words; ...``), generated and parsed back into tags."""

    format = "text_to_text"

    def predicted_tags(self, model: PromptedModel, batch: dict) -> list[list[str]]:
        types = {n[2:] for n in self.label_names if n != "O"}
        texts = self.generate(model, batch["source"])
        return [parse_linearized(t, words, types) for t, words in zip(texts, batch["tokens"])]
