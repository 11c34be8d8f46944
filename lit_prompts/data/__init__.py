from .datamodule import PromptDataModule

__all__ = ["PromptDataModule"]
