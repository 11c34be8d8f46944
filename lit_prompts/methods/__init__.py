"""Prompt methods: one module each, all subclasses of ``PromptMethod``."""

from .base import PromptMethod
from .deep import DeepPromptMethod
from .full_finetuning import FullFineTuning
from .multitask import MultiTaskPromptTuning
from .p_tuning import PTuning
from .p_tuning_v2 import PTuningV2
from .prefix_tuning import PrefixTuning
from .prompt_pool import PromptPool
from .prompt_tuning import PromptTuning

__all__ = ["DeepPromptMethod", "FullFineTuning", "MultiTaskPromptTuning", "PTuning", "PTuningV2", "PrefixTuning", "PromptMethod", "PromptPool", "PromptTuning"]
