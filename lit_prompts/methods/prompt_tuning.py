"""Prompt tuning (Lester et al., 2021): P trainable vectors prepended to the input embeddings.

Shapes: prompt [P, H]; the input [B, T, H] becomes [B, P + T, H]. Trainable: P·H.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import Prompt, PromptContext, PromptOutput, expand_rows


class SoftPrompt(Prompt):
    """``vectors`` [P, H] in front of every input; with ``fills_template`` (what a P-tuning prompt
    folds into) the same vectors may instead fill a template's ``[P:n]`` positions."""

    def __init__(self, length: int, hidden_size: int, fills_template: bool = False, init: Tensor | None = None):
        super().__init__(length=length, hidden_size=hidden_size, fills_template=fills_template)
        self.prompt = nn.Parameter(init.clone() if init is not None else nn.init.normal_(Tensor(length, hidden_size)))
        self.template_length = length if fills_template else 0

    def forward(self, context: PromptContext) -> PromptOutput:
        slots = self.prompt if self.template_length else None
        return PromptOutput(prepend=expand_rows(self.prompt, context.batch_size), slots=slots)
