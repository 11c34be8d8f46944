"""The ground floor every other module may import: which formats each task has, and the few
constants that data and models must agree on."""

from __future__ import annotations

from typing import Literal

Task = Literal["classification", "ner", "qa"]
TaskFormat = Literal["head", "cloze", "text_to_text", "token", "span"]

# task -> its formats; the first is the default.
TASK_FORMATS: dict[str, tuple[str, ...]] = {
    "classification": ("head", "cloze", "text_to_text"),
    "ner": ("token", "text_to_text"),
    "qa": ("span", "text_to_text"),
}
ALL_FORMATS: tuple[str, ...] = ("head", "text_to_text", "cloze", "token", "span")

# The form of the backbone each format reads: formats of one form can share one backbone object
# (and, in a mixed batch, one forward pass).
BACKBONE_FORMS: dict[str, str] = {
    "head": "encoder", "token": "encoder", "span": "encoder", "text_to_text": "lm", "cloze": "masked_lm",
}

# Target positions that no loss or metric reads (PyTorch's cross_entropy default).
IGNORE_INDEX = -100


def check_task_format(task: str, task_format: str, where: str = "") -> None:
    """Refuse an unknown task, or a format the task does not have, naming the choices."""
    prefix = f"{where}: " if where else ""
    if task not in TASK_FORMATS:
        raise ValueError(f"{prefix}task={task!r} is not one of {tuple(TASK_FORMATS)}")
    if task_format not in TASK_FORMATS[task]:
        raise ValueError(f"{prefix}task {task!r} has no format {task_format!r}; use one of {TASK_FORMATS[task]}")
