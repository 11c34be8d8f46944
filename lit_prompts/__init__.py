"""lit_prompts: soft-prompt training over frozen Hugging Face transformers, with PyTorch Lightning."""

from .data import PromptDataModule
from .loading import load
from .methods import PromptMethod, PromptTuning

__all__ = ["PromptDataModule", "PromptMethod", "PromptTuning", "load"]
__version__ = "0.1.0"
