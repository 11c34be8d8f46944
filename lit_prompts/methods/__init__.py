"""Prompt methods: one module each, all subclasses of ``PromptMethod``."""

from .base import PromptMethod
from .prompt_tuning import PromptTuning

__all__ = ["PromptMethod", "PromptTuning"]
