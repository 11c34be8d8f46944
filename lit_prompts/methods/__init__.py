"""Prompt modules: one file per method, each only its maths (``forward(context) -> PromptOutput``).

The LightningModules that train them (``PromptTuning``, ``PTuningV2``, ...) are in ``lit_prompts.training``.
"""

from .base import MeanQuery, NoPrompt, Prompt, PromptContext, PromptOutput, ReparameterizedPrompt, expand_rows
from .multitask import MultiTaskPrompt
from .p_tuning import EncodedPrompt, PromptEncoder
from .p_tuning_v2 import DeepPrompt
from .prefix_tuning import Prefix
from .prompt_pool import PoolPrompt
from .prompt_tuning import SoftPrompt

# The prompt modules a shared prompt file may name (see ``lit_prompts.load_prompt``).
PROMPT_CLASSES = {cls.__name__: cls for cls in (SoftPrompt, EncodedPrompt, Prefix, DeepPrompt, PoolPrompt, MultiTaskPrompt, NoPrompt)}

__all__ = ["PROMPT_CLASSES", "DeepPrompt", "EncodedPrompt", "MeanQuery", "MultiTaskPrompt", "NoPrompt", "PoolPrompt",
           "Prefix", "Prompt", "PromptContext", "PromptEncoder", "PromptOutput", "ReparameterizedPrompt", "SoftPrompt",
           "expand_rows"]
