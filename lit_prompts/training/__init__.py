"""Lightning training of prompt modules: the thin ``PromptMethod`` and the methods built on it."""

from .methods import FullFineTuning, MultiTaskPromptTuning, PrefixTuning, PromptPool, PromptTuning, PTuning, PTuningV2
from .module import PromptMethod

METHODS = (PromptTuning, PTuning, PrefixTuning, PTuningV2, PromptPool, MultiTaskPromptTuning, FullFineTuning)

__all__ = ["METHODS", "FullFineTuning", "MultiTaskPromptTuning", "PTuning", "PTuningV2", "PrefixTuning", "PromptMethod",
           "PromptPool", "PromptTuning"]
