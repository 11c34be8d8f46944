"""The contract every prompt module keeps, and the pieces several of them share.

A prompt module is a plain ``nn.Module``: ``forward(context) -> PromptOutput``. It owns only prompt
tensors; it loads no backbone, has no head and knows nothing of Lightning, so a trained prompt goes
into any training or inference loop (see ``PromptedBackbone``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..pooling import pool_hidden


@dataclass
class PromptContext:
    """What an input-dependent prompt may read about the batch in hand."""

    input_embeds: Tensor  # [B, T, H] token embeddings of the text, without any prompt
    attention_mask: Tensor  # [B, T]
    task: str | None = None  # the task of these rows (multi-task prompts read it)
    # [B, T, H] the frozen backbone's last hidden states of the text alone, without gradient (L2P's query).
    frozen_hidden: Callable[[], Tensor] | None = None
    # [B, T] the tokens a query of the input averages over, where fewer than ``attention_mask``'s: a decoder
    # trains on rows of source + target, but generates (and ranks candidates) from the source alone, so a
    # query that also read the target would select by the answer in training and by something else after.
    source_mask: Tensor | None = None

    @property
    def query_mask(self) -> Tensor:
        return self.attention_mask if self.source_mask is None else self.source_mask

    @property
    def batch_size(self) -> int:
        return self.input_embeds.shape[0]

    def mean_embedding(self) -> Tensor:
        """[B, H] fp32 mean of the input embeddings over the source's real tokens."""
        return pool_hidden(self.input_embeds.float(), self.query_mask, "mean")

    def frozen_mean_hidden(self) -> Tensor:
        """[B, H] fp32 mean of the frozen backbone's last hidden states over the source's real tokens (a
        decoder's are causal: the target after them does not change them)."""
        if self.frozen_hidden is None:
            raise ValueError("this context has no frozen backbone to query (build it with PromptedBackbone.context)")
        return pool_hidden(self.frozen_hidden().float(), self.query_mask, "mean")


@dataclass
class PromptOutput:
    """Where a prompt enters the model; any field may be None.

    prepend       [B, P, H] or [P, H]: virtual tokens in front of the input embeddings
    slots         [P, H]: vectors for a template's ``[P:n]`` positions (P-tuning); used instead of
                  ``prepend`` when the batch's template has such positions
    layer_hidden  [L, P, H] or [B, L, P, H]: hidden-state prompts, turned into every self-attention
                  layer's key/value prefix by that layer's own frozen projections
    layer_kv      per layer (key, value), each [H_kv, P, d] or [B, H_kv, P, d]
    aux_loss      a scalar the prompt adds to the training loss (e.g. a pool's key-pull loss)
    """

    prepend: Tensor | None = None
    slots: Tensor | None = None
    layer_hidden: Tensor | None = None
    layer_kv: list[tuple[Tensor, Tensor]] | None = None
    aux_loss: Tensor | None = None

    @property
    def prepended(self) -> int:
        """Positions a prepended prompt adds in front of the input."""
        return 0 if self.prepend is None else self.prepend.shape[-2]

    @property
    def layer_prefix_length(self) -> int:
        """Positions of the key/value prefix the prompt puts in every layer (0: none)."""
        if self.layer_hidden is not None:
            return self.layer_hidden.shape[-2]
        return 0 if not self.layer_kv else self.layer_kv[0][0].shape[-2]

    def prepend_rows(self, batch: int) -> Tensor:
        """``prepend`` as [B, P, H] (a prompt shared by every row is expanded, not copied)."""
        return self.prepend if self.prepend.dim() == 3 else expand_rows(self.prepend, batch)


class Prompt(nn.Module):
    """Base of the built-in prompt modules: records its constructor settings (plain values) and
    exports itself, folded into the plain form that inference needs."""

    # How many ``[P:n]`` template positions the prompt fills (0: it cannot be placed in a template).
    template_length: int = 0

    def __init__(self, **settings):
        super().__init__()
        self.settings = settings  # rebuilds an empty module of this class (see ``export``)

    def forward(self, context: PromptContext) -> PromptOutput:
        raise NotImplementedError

    def folded(self) -> Prompt:
        """The module inference needs: a training-only reparameterisation folded into plain tensors."""
        return self

    def load_folded(self, tensors: dict[str, Tensor], source: str = "the values given") -> None:
        """Take the values of a folded (exported) prompt of this kind and shape, e.g. to train on from
        them; a prompt trained through a reparameterisation has no such values to set."""
        if self.folded() is not self:
            raise ValueError(f"{type(self).__name__} trains through a reparameterisation, which folded values from "
                             f"{source} cannot set: train a plain prompt (reparameterize: false)")
        own = {k: list(v.shape) for k, v in self.state_dict().items()}
        given = {k: list(v.shape) for k, v in tensors.items()}
        if own != given:
            raise ValueError(f"{source} holds prompt tensors {given}; this {type(self).__name__} needs {own} (another "
                             "method, length or backbone)")
        self.load_state_dict(tensors)

    def export(self) -> tuple[str, dict, dict[str, Tensor]]:
        """(class path, settings, tensors) of the folded prompt: what ``load_prompt`` rebuilds."""
        with torch.no_grad():
            plain = self.folded()
            tensors = {k: v.detach() for k, v in plain.state_dict().items()}
        cls = type(plain)
        return f"{cls.__module__}.{cls.__qualname__}", dict(plain.settings), tensors


class NoPrompt(Prompt):
    """No prompt at all (full fine-tuning trains the backbone instead)."""

    def forward(self, context: PromptContext) -> PromptOutput:
        return PromptOutput()


class ReparameterizedPrompt(nn.Module):
    """Li & Liang's reparameterisation: a small embedding [P, E] mapped by Linear → Tanh → Linear
    to [P, out_features]. Trains more stably than the raw tensor; folded away at export.

    With ``start`` [P, out_features] the output is ``start + MLP(E)`` and the MLP's last layer starts at
    zero (as LoRA's B): step 0 gives exactly ``start``, e.g. a prefix from real words' activations, and the
    MLP learns a change to it. A freshly initialised MLP would put its own output in place of any
    initialisation, at a scale set by PyTorch's default init and unrelated to the keys and values the
    backbone's attention expects (at the defaults such a prefix stayed at entity F1 0 on a sparse NER set,
    where the plain tensor learned). The first layer and the embedding get gradient from the second step on.
    ``start`` is a buffer: frozen, not a parameter, but saved with the MLP, whose output means nothing
    without it."""

    def __init__(self, length: int, embedding_size: int, hidden_size: int, out_features: int,
                 start: Tensor | None = None):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(length, embedding_size))
        self.mlp = nn.Sequential(nn.Linear(embedding_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, out_features))
        self.register_buffer("start", None if start is None else start.reshape(length, out_features).float().clone())
        if start is not None:
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self) -> Tensor:
        change = self.mlp(self.embedding)
        return change if self.start is None else self.start + change


class MeanQuery(nn.Linear):
    """E(x) = tanh(W x̄ + b): a trained query of the mean input embedding x̄ (prompt pools, task
    selectors, instance-dependent prompts). ``MeanQuery(hidden_size, query_size)``."""

    def forward(self, context: PromptContext) -> Tensor:
        return torch.tanh(super().forward(context.mean_embedding().to(self.weight.dtype)))  # (a bf16 prompt's too)


def expand_rows(prompt: Tensor, batch: int) -> Tensor:
    """[P, H] -> [B, P, H] (a view)."""
    return prompt.unsqueeze(0).expand(batch, -1, -1)
