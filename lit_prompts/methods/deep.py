"""``DeepPromptMethod``: the base of methods that act in every self-attention layer.

Subclasses say what each layer's prefix keys and values are (``layer_prefixes``); this class puts
them in place before every backbone call through ``PrefixInjector`` (see ``prefix_injection``), and
folds a training-only reparameterisation away at export.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..prefix_injection import PrefixInjector
from .base import PromptMethod


class ReparameterizedPrompt(nn.Module):
    """Li & Liang's reparameterisation: a small embedding [P, E] mapped by Linear → Tanh → Linear
    to [P, out_features]. Trains more stably than the raw tensor; folded away at export."""

    def __init__(self, length: int, embedding_size: int, hidden_size: int, out_features: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(length, embedding_size))
        self.mlp = nn.Sequential(nn.Linear(embedding_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, out_features))

    def forward(self) -> Tensor:
        return self.mlp(self.embedding)


class DeepPromptMethod(PromptMethod):
    """Per-layer prompts as key/value prefixes of ``num_virtual_tokens`` positions.

    Args:
        num_virtual_tokens: prefix length P in every layer.
        reparameterize: train through ``ReparameterizedPrompt`` (folded into plain tensors at export).
        reparam_hidden_size: hidden width of that MLP.
        **kwargs: see ``PromptMethod``.
    """

    def __init__(self, num_virtual_tokens: int = 20, reparameterize: bool = False, reparam_hidden_size: int = 512, **kwargs):
        super().__init__(**kwargs)
        if num_virtual_tokens < 1:
            raise ValueError(f"model.init_args.num_virtual_tokens must be >= 1, got {num_virtual_tokens}")
        self.injector = PrefixInjector(self.backbone)
        self.num_layers = len(self.injector)  # T5 text-to-text: encoder and decoder layers

    # --- what subclasses provide ----------------------------------------------------------------
    def layer_prefixes(self) -> list[tuple[Tensor, Tensor]]:
        """Per self-attention layer: prefix keys and values, each [H_kv, P, head_dim]."""
        raise NotImplementedError

    def folded_tensors(self) -> dict[str, Tensor]:
        """The plain (non-reparameterised) prompt tensors, named as with ``reparameterize=False``."""
        raise NotImplementedError

    # --- plumbing -------------------------------------------------------------------------------
    def install_layer_prompts(self) -> None:
        self.injector.set(self.layer_prefixes())

    def export_tensors(self) -> dict[str, Tensor]:
        if not self.hparams.reparameterize:
            return super().export_tensors()
        kept = {k: v for k, v in super().export_tensors().items() if not k.startswith("reparam.")}
        with torch.no_grad():
            return {**kept, **self.folded_tensors()}

    def export_init_args(self) -> dict:
        # An exported prompt holds the folded tensors: it loads as the plain parameterisation.
        return {**super().export_init_args(), "reparameterize": False}

    def prefix_shape(self) -> tuple[int, int, int, int, int]:
        """[layers, 2 (key, value), H_kv, P, head_dim]."""
        f = self.facts
        return (self.num_layers, 2, f.num_key_value_heads, self.hparams.num_virtual_tokens, f.head_dim)
