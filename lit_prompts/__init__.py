"""lit_prompts: soft-prompt training over frozen Hugging Face transformers, with PyTorch Lightning."""

from .data import PromptDataModule
from .loading import load
from .methods import (
    DeepPromptMethod,
    FullFineTuning,
    PrefixTuning,
    PromptMethod,
    PromptPool,
    PromptTuning,
    PTuning,
    PTuningV2,
)

__all__ = [
    "DeepPromptMethod",
    "FullFineTuning",
    "PTuning",
    "PTuningV2",
    "PrefixTuning",
    "PromptDataModule",
    "PromptMethod",
    "PromptPool",
    "PromptTuning",
    "load",
]
__version__ = "0.1.0"
