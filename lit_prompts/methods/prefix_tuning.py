"""Prefix tuning (Li & Liang, 2021): trained keys and values in front of every self-attention layer.

Shapes: prefix [L, 2, H_kv, P, d] (L self-attention layers, both stacks for T5; H_kv key/value
heads of width d), so the exported prompt has L·2·P·H_kv·d values (+ head). While training, the
prefix comes from ``ReparameterizedPrompt``: embedding [P, H] → Linear(H, h) → Tanh →
Linear(h, L·2·H_kv·d); export folds it into the plain prefix.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .deep import DeepPromptMethod, ReparameterizedPrompt


class PrefixTuning(DeepPromptMethod):
    """Prefix tuning; ``reparameterize`` (default True) trains through the MLP.

    Args:
        num_virtual_tokens: prefix length P.
        reparameterize: train through the MLP reparameterisation, as in Li & Liang.
        reparam_hidden_size: the MLP's hidden width h.
        **kwargs: see ``PromptMethod``.
    """

    default_lr = 1e-3

    def __init__(self, num_virtual_tokens: int = 20, reparameterize: bool = True, reparam_hidden_size: int = 512, **kwargs):
        super().__init__(num_virtual_tokens, reparameterize, reparam_hidden_size, **kwargs)
        layers, _, kv_heads, length, head_dim = self.prefix_shape()
        if reparameterize:
            width = layers * 2 * kv_heads * head_dim
            self.reparam = ReparameterizedPrompt(length, self.facts.hidden_size, reparam_hidden_size, width)
        else:
            self.prefix = nn.Parameter(self._initial_prefix())

    def _initial_prefix(self) -> Tensor:
        # Keys and values of random vocabulary tokens under each layer's own projections: the scale
        # the layer's attention expects, rather than an arbitrary one.
        with torch.no_grad():
            layers = []
            for layer in range(self.num_layers):
                tokens = self.vocab_embeddings((self.hparams.num_virtual_tokens,))
                layers.append(torch.stack(self.injector.project(layer, tokens, self.facts.num_key_value_heads)))
        return torch.stack(layers).float()

    def full_prefix(self) -> Tensor:
        """[L, 2, H_kv, P, d]."""
        if not self.hparams.reparameterize:
            return self.prefix
        layers, _, kv_heads, length, head_dim = self.prefix_shape()
        return self.reparam().view(length, layers, 2, kv_heads, head_dim).permute(1, 2, 3, 0, 4)

    def layer_prefixes(self) -> list[tuple[Tensor, Tensor]]:
        return [(layer[0], layer[1]) for layer in self.full_prefix()]

    def folded_tensors(self) -> dict[str, Tensor]:
        return {"prefix": self.full_prefix().contiguous()}
