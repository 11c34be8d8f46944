"""Building objects outside LightningCLI's context (a ground-floor module: it imports nothing of
lit_prompts, so the data side and the model side can both use it)."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

_RESTORING = contextvars.ContextVar("lit_prompts_restoring", default=False)


def build_outside_cli(build, *args, **kwargs):
    """``build(*args, **kwargs)`` in a fresh context. While LightningCLI instantiates a class it hands
    the hyperparameters it parsed to every ``save_hyperparameters()`` call through a context
    variable, so objects built inside another one's ``__init__`` (a multi-task module's task modules,
    a prompt library's loaded methods) would record the outer object's arguments as their own."""
    return contextvars.Context().run(build, *args, **kwargs)


@contextmanager
def holding(variable: contextvars.ContextVar, value) -> Iterator[None]:
    """``variable`` holds ``value`` inside the block, and what it held before after it."""
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


def restoring():
    """Methods built inside the block are about to receive saved tensors (``lit_prompts.load``): a start
    that would run the backbone (prefixes and deep prompts from real words) is skipped, since the saved
    values replace it."""
    return holding(_RESTORING, True)


def is_restoring() -> bool:
    return _RESTORING.get()
