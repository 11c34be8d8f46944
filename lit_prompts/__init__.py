"""lit_prompts: soft-prompt training over frozen Hugging Face transformers, with PyTorch Lightning."""

from .data import MultiTaskDataModule, PromptDataModule
from .library import PromptLibrary
from .loading import load
from .methods import (
    DeepPromptMethod,
    FullFineTuning,
    MultiTaskPromptTuning,
    PrefixTuning,
    PromptMethod,
    PromptPool,
    PromptTuning,
    PTuning,
    PTuningV2,
)
from .process_group import destroy_process_group_at_exit

destroy_process_group_at_exit()

__all__ = [
    "DeepPromptMethod",
    "FullFineTuning",
    "MultiTaskDataModule",
    "MultiTaskPromptTuning",
    "PTuning",
    "PTuningV2",
    "PrefixTuning",
    "PromptDataModule",
    "PromptLibrary",
    "PromptMethod",
    "PromptPool",
    "PromptTuning",
    "load",
]
__version__ = "0.1.0"
