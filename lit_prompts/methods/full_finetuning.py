"""Full fine-tuning: the reference every prompt method is measured against.

The same task heads, formats, data and training loop as the prompt methods, with every backbone
weight trained and no prompt. Its checkpoints and exported "prompt" therefore hold the whole
backbone: the cost that prompt methods avoid.
"""

from __future__ import annotations

from .base import PromptMethod


class FullFineTuning(PromptMethod):
    """Train the backbone itself (and the head); backbone dropout on by default, as fine-tuning does.

    Args:
        **kwargs: see ``PromptMethod``.
    """

    default_lr = 2e-5

    def __init__(self, backbone_dropout: bool = True, **kwargs):
        super().__init__(backbone_dropout=backbone_dropout, **kwargs)
        self.backbone.requires_grad_(True)
