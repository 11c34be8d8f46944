from .datamodule import PromptDataModule
from .multitask import MultiTaskDataModule

__all__ = ["MultiTaskDataModule", "PromptDataModule"]
