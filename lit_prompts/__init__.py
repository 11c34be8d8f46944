"""lit_prompts: soft-prompt training over frozen Hugging Face transformers, with PyTorch Lightning.

The parts compose: a prompt module (``lit_prompts.methods``: ``forward(context) -> PromptOutput``), a
``PromptedBackbone`` that runs the frozen model with it, task formats (``lit_prompts.tasks``) that
read the backbone, and a thin LightningModule per method (``PromptTuning``, ...) that trains them.
"""

from .data import MultiTaskDataModule, PromptDataModule
from .library import PromptLibrary
from .loading import load, load_prompt
from .methods import Prompt, PromptContext, PromptOutput
from .process_group import destroy_process_group_at_exit
from .prompted import Prompted
from .prompted_backbone import PromptedBackbone
from .tasks import build_format
from .training import (
    FullFineTuning,
    MultiTaskPromptTuning,
    PrefixTuning,
    PromptMethod,
    PromptPool,
    PromptTuning,
    PTuning,
    PTuningV2,
)

destroy_process_group_at_exit()

__all__ = [
    "FullFineTuning",
    "MultiTaskDataModule",
    "MultiTaskPromptTuning",
    "PTuning",
    "PTuningV2",
    "PrefixTuning",
    "Prompt",
    "PromptContext",
    "PromptDataModule",
    "PromptLibrary",
    "PromptMethod",
    "PromptOutput",
    "PromptPool",
    "PromptTuning",
    "Prompted",
    "PromptedBackbone",
    "build_format",
    "load",
    "load_prompt",
]
__version__ = "0.2.0"
