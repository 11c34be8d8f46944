"""Multi-task prompts: one set of shared prompts read by several tasks, each in its own way.

  mpt       (Wang et al. 2023, "Multitask Prompt Tuning") prompt_t = P ⊙ (u_t v_tᵀ): a shared prompt
            P [P, H] times a task's rank-r matrix, u_t [P, r], v_t [H, r].
  selector  a shared pool p_1..p_K [K, P, H] read per example through the task's selector:
            S_t(x) = softmax(W_t E(x) + b_t), prompt_t(x) = Σ_i S_t,i(x) p_i, with a shared query
            encoder E(x) = tanh(W_e x̄ + b_e) [d] over the mean input embedding x̄.

With ``num_layers`` every prompt has a [P, H] slice per self-attention layer (shared prompt [L, P, H],
pool [K, L, P, H]), entering each layer as its key/value prefix like P-tuning v2's deep prompts;
the task matrix u_t v_tᵀ scales every layer's slice. The task comes with the context.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from .base import MeanQuery, Prompt, PromptContext, PromptOutput, expand_rows

Variant = Literal["mpt", "selector"]


class MultiTaskPrompt(Prompt):
    """Shared prompts for ``tasks`` (``variant``: ``mpt`` or ``selector``, see the module docstring)."""

    def __init__(self, tasks: list[str], length: int, hidden_size: int, variant: Variant = "mpt",
                 num_layers: int | None = None, rank: int = 1, pool_size: int = 8, selector_hidden_size: int = 128,
                 init: Tensor | None = None):
        super().__init__(tasks=list(tasks), length=length, hidden_size=hidden_size, variant=variant, num_layers=num_layers,
                         rank=rank, pool_size=pool_size, selector_hidden_size=selector_hidden_size)
        layers = (num_layers,) if num_layers else ()
        if variant == "mpt":
            shape = (*layers, length, hidden_size)
            self.shared_prompt = nn.Parameter(init.clone() if init is not None else torch.zeros(shape))
            # u_t v_tᵀ starts near all-ones (the shared prompt unchanged); the noise lets the r
            # components of a task differ.
            scale = 1 / math.sqrt(rank)
            self.task_u = nn.ParameterDict({t: nn.Parameter(scale * (1 + 0.02 * torch.randn(length, rank))) for t in tasks})
            self.task_v = nn.ParameterDict({t: nn.Parameter(scale * (1 + 0.02 * torch.randn(hidden_size, rank))) for t in tasks})
        else:
            shape = (pool_size, *layers, length, hidden_size)
            self.pool = nn.Parameter(init.clone() if init is not None else torch.zeros(shape))
            self.query_encoder = MeanQuery(hidden_size, selector_hidden_size)
            self.selectors = nn.ModuleDict({t: nn.Linear(selector_hidden_size, pool_size) for t in tasks})

    def selection(self, context: PromptContext) -> Tensor:
        """Selector variant: S_t(x) [B, K], each row summing to one."""
        return self.selectors[context.task](self.query_encoder(context)).softmax(-1)

    def forward(self, context: PromptContext) -> PromptOutput:
        task = context.task
        if task not in self.settings["tasks"]:
            raise KeyError(f"task {task!r} is not one of the prompt's tasks {self.settings['tasks']}")
        if self.settings["variant"] == "mpt":
            prompt = self.shared_prompt * (self.task_u[task] @ self.task_v[task].T)  # [(L,) P, H]
            if self.settings["num_layers"]:
                return PromptOutput(layer_hidden=prompt)
            return PromptOutput(prepend=expand_rows(prompt, context.batch_size))
        prompt = torch.einsum("bk,k...->b...", self.selection(context), self.pool)  # [B, (L,) P, H]
        if self.settings["num_layers"]:
            return PromptOutput(layer_hidden=prompt)
        return PromptOutput(prepend=prompt)
