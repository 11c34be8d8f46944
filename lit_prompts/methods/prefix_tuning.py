"""Prefix tuning (Li & Liang, 2021): trained keys and values in front of every self-attention layer.

Shapes: prefix [L, 2, H_kv, P, d] (L self-attention layers, both stacks for T5; H_kv key/value
heads of width d): L·2·P·H_kv·d values. While training, the prefix may come from
``ReparameterizedPrompt``: start + MLP(E), embedding E [P, H] → Linear(H, h) → Tanh → Linear(h,
L·2·H_kv·d) whose last layer starts at zero, so that training starts from the initial prefix itself
(``start``, a frozen buffer); export folds it into the plain prefix.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Prompt, PromptContext, PromptOutput, ReparameterizedPrompt


class Prefix(Prompt):
    """Key/value prefixes of ``length`` positions per layer, starting at ``init`` [L, 2, H_kv, P, d]
    (default zeros); ``reparam_hidden_size`` trains them through the MLP, from ``init`` too."""

    def __init__(self, num_layers: int, num_kv_heads: int, length: int, head_dim: int, hidden_size: int,
                 reparam_hidden_size: int | None = None, init: Tensor | None = None):
        super().__init__(num_layers=num_layers, num_kv_heads=num_kv_heads, length=length, head_dim=head_dim,
                         hidden_size=hidden_size, reparam_hidden_size=reparam_hidden_size)
        self.shape = (num_layers, 2, num_kv_heads, length, head_dim)
        if reparam_hidden_size:
            width = num_layers * 2 * num_kv_heads * head_dim
            start = torch.zeros(self.shape) if init is None else init
            # [L, 2, H_kv, P, d] -> [P, L·2·H_kv·d]: the MLP's rows (``full_prefix`` turns them back).
            self.reparam = ReparameterizedPrompt(length, hidden_size, reparam_hidden_size, width,
                                                 start=start.permute(3, 0, 1, 2, 4).reshape(length, width))
        else:
            self.prefix = nn.Parameter(init.clone() if init is not None else torch.zeros(self.shape))

    def full_prefix(self) -> Tensor:
        """[L, 2, H_kv, P, d]."""
        if not self.settings["reparam_hidden_size"]:
            return self.prefix
        layers, _, kv_heads, length, head_dim = self.shape
        return self.reparam().view(length, layers, 2, kv_heads, head_dim).permute(1, 2, 3, 0, 4)

    def forward(self, context: PromptContext) -> PromptOutput:
        return PromptOutput(layer_kv=[(layer[0], layer[1]) for layer in self.full_prefix()])

    def folded(self) -> Prefix:
        if not self.settings["reparam_hidden_size"]:
            return self
        return Prefix(**{**self.settings, "reparam_hidden_size": None}, init=self.full_prefix().detach().contiguous())
