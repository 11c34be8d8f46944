"""Task formats: one ``nn.Module`` per (task, format), holding its head, loss, metrics, decoding and
decoding settings. They read the backbone only through ``protocol.PromptedModel``."""

from __future__ import annotations

import inspect

from torch import nn

from ..formats import check_task_format
from .classification import ClozeClassification, HeadClassification, TextClassification
from .ner import TextNer, TokenNer
from .protocol import PromptedModel
from .qa import SpanQa, TextQa

FORMATS: dict[tuple[str, str], type[nn.Module]] = {
    (cls.task, cls.format): cls
    for cls in (HeadClassification, ClozeClassification, TextClassification, TokenNer, TextNer, SpanQa, TextQa)
}


def build_format(task: str, task_format: str, label_names: list[str] | None, hidden_size: int, where: str = "",
                 **settings) -> nn.Module:
    """The format module for (task, task_format), given the settings it takes among ``settings``
    (``verbalizer_token_ids``, ``pooling``, ``head_dropout``, ``predict_with``, ``n_best``...)."""
    check_task_format(task, task_format, where)
    if not label_names:
        raise ValueError(f"{where + ': ' if where else ''}label_names is empty (the CLI links it from the data module)")
    if settings.get("predict_with", "labels") == "generate" and task_format != "text_to_text":
        raise ValueError(f"predict_with='generate' needs task_format text_to_text, not {task_format!r}")
    cls = FORMATS[(task, task_format)]
    accepted = inspect.signature(cls).parameters
    given = {"label_names": label_names, "hidden_size": hidden_size, **settings}
    return cls(**{k: v for k, v in given.items() if k in accepted})


__all__ = ["FORMATS", "ClozeClassification", "HeadClassification", "PromptedModel", "SpanQa", "TextClassification",
           "TextNer", "TextQa", "TokenNer", "build_format"]
