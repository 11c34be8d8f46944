"""P-tuning v2 (Liu et al., 2022): deep prompts, as hidden states, at every layer.

Shapes: deep prompts [L, P, H] (L self-attention layers, both stacks for T5): L·P·H values. Layer
l's prompt [P, H] enters as a key/value prefix through that layer's own frozen key and value
projections (without position), so the input sequence keeps its length and token- and span-level
heads see exactly the input's tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Prompt, PromptContext, PromptOutput, ReparameterizedPrompt


class DeepPrompt(Prompt):
    """Per-layer hidden-state prompts; ``reparam_hidden_size`` trains them through the MLP
    (embedding [P, H] → MLP → [P, L·H]), folded at export."""

    def __init__(self, num_layers: int, length: int, hidden_size: int, reparam_hidden_size: int | None = None,
                 dropout: float = 0.0, init: Tensor | None = None):
        super().__init__(num_layers=num_layers, length=length, hidden_size=hidden_size,
                         reparam_hidden_size=reparam_hidden_size, dropout=dropout)
        if reparam_hidden_size:
            self.reparam = ReparameterizedPrompt(length, hidden_size, reparam_hidden_size, num_layers * hidden_size)
        else:
            self.deep_prompts = nn.Parameter(init.clone() if init is not None else torch.zeros(num_layers, length, hidden_size))
        self.dropout = nn.Dropout(dropout)

    def hidden_prompts(self) -> Tensor:
        """[L, P, H]."""
        if not self.settings["reparam_hidden_size"]:
            return self.deep_prompts
        layers, length = self.settings["num_layers"], self.settings["length"]
        return self.reparam().view(length, layers, -1).transpose(0, 1)

    def forward(self, context: PromptContext) -> PromptOutput:
        return PromptOutput(layer_hidden=self.dropout(self.hidden_prompts()))

    def folded(self) -> DeepPrompt:
        if not self.settings["reparam_hidden_size"]:
            return self
        return DeepPrompt(**{**self.settings, "reparam_hidden_size": None}, init=self.hidden_prompts().detach().contiguous())
