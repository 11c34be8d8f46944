"""An instance-dependent prompt method written outside lit_prompts, against its public API only:
each layer's prompt is generated from the input's mean hidden state by a small bottleneck MLP
(in the spirit of instance-dependent prompt generation, Wu et al. 2022)."""

from __future__ import annotations

import torch
from torch import nn

from lit_prompts import Prompt, PromptContext, PromptMethod, PromptOutput


class InstancePrompt(Prompt):
    """Per example and layer: prompt [P, H] = MLP_l(mean frozen hidden state), MLP: H -> r -> P·H."""

    def __init__(self, num_layers: int, length: int, hidden_size: int, bottleneck: int = 8):
        super().__init__(num_layers=num_layers, length=length, hidden_size=hidden_size, bottleneck=bottleneck)
        self.generators = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_size, bottleneck), nn.Tanh(), nn.Linear(bottleneck, length * hidden_size))
            for _ in range(num_layers)
        )

    def forward(self, context: PromptContext) -> PromptOutput:
        query = context.frozen_mean_hidden()  # [B, H], no gradient into the backbone
        length, hidden = self.settings["length"], self.settings["hidden_size"]
        layers = [g(query).view(-1, length, hidden) for g in self.generators]
        return PromptOutput(layer_hidden=torch.stack(layers, dim=1))  # [B, L, P, H]


class InstancePromptTuning(PromptMethod):
    """Instance-dependent deep prompts.

    Args:
        num_virtual_tokens: prompt length P per layer.
        bottleneck: width r of each layer's generator MLP.
        **kwargs: see ``PromptMethod``.
    """

    default_lr = 1e-2

    def __init__(self, num_virtual_tokens: int = 4, bottleneck: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.prompt = InstancePrompt(self.backbone.num_layers, num_virtual_tokens, self.facts.hidden_size, bottleneck)
