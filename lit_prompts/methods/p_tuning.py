"""P-tuning (Liu et al., 2021, "GPT Understands, Too"): virtual tokens produced by a prompt encoder,
placed anywhere in a template between real anchor words.

Shapes: prompt embedding [P, H] -> encoder -> prompt vectors [P, H]. A template such as
``[P:3] {text} [P:2] It was {mask} .`` puts vectors 0-2 before the text and 3-4 before the anchor
words; without ``[P:n]`` markers (head, token and span formats) all P vectors go in front. The
encoder (bidirectional LSTM + MLP, or MLP) trains and resumes with the rest; export folds it into
the plain [P, H] vectors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import PromptMethod

ENCODERS = ("lstm", "mlp", "none")


class PromptEncoder(nn.Module):
    """``lstm``: 2-layer bidirectional LSTM then Linear → ReLU → Linear, as in the paper (the LSTM
    makes the virtual tokens depend on one another); ``mlp``: the MLP alone."""

    def __init__(self, kind: str, hidden_size: int, encoder_hidden_size: int):
        super().__init__()
        self.lstm = (
            nn.LSTM(hidden_size, hidden_size // 2, num_layers=2, bidirectional=True, batch_first=True)
            if kind == "lstm" else None
        )
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, encoder_hidden_size), nn.ReLU(), nn.Linear(encoder_hidden_size, hidden_size)
        )

    def forward(self, embedding: Tensor) -> Tensor:
        hidden = embedding if self.lstm is None else self.lstm(embedding.unsqueeze(0))[0].squeeze(0)
        return self.mlp(hidden)


class PTuning(PromptMethod):
    """P-tuning with a prompt encoder; put ``[P:n]`` markers in ``data.init_args.template``.

    Args:
        num_virtual_tokens: P; must equal the sum of the template's ``[P:n]`` markers.
        encoder: ``lstm`` (default), ``mlp``, or ``none`` (plain vectors; what an export loads as).
        encoder_hidden_size: the MLP's hidden width (default: the backbone's hidden size).
        **kwargs: see ``PromptMethod``.
    """

    default_lr = 3e-3

    def __init__(self, num_virtual_tokens: int = 20, encoder: str = "lstm", encoder_hidden_size: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        if num_virtual_tokens < 1:
            raise ValueError(f"model.init_args.num_virtual_tokens must be >= 1, got {num_virtual_tokens}")
        if encoder not in ENCODERS:
            raise ValueError(f"model.init_args.encoder={encoder!r} is not one of {ENCODERS}")
        self.input_prompt_length = num_virtual_tokens
        self.template_prompt_length = num_virtual_tokens
        self.prompt_embedding = nn.Parameter(self.vocab_embeddings((num_virtual_tokens,)))
        hidden = self.facts.hidden_size
        self.encoder = None if encoder == "none" else PromptEncoder(encoder, hidden, encoder_hidden_size or hidden)

    def prompt_vectors(self) -> Tensor:
        """[P, H]."""
        return self.prompt_embedding if self.encoder is None else self.encoder(self.prompt_embedding)

    def template_prompt(self) -> Tensor:
        return self.prompt_vectors()

    def input_prompt(self, input_embeds: Tensor, attention_mask: Tensor) -> Tensor:
        return self.prompt_vectors().unsqueeze(0).expand(input_embeds.shape[0], -1, -1)

    def export_tensors(self) -> dict[str, Tensor]:
        kept = {k: v for k, v in super().export_tensors().items() if not k.startswith(("encoder.", "prompt_embedding"))}
        with torch.no_grad():
            return {**kept, "prompt_embedding": self.prompt_vectors().contiguous()}

    def export_init_args(self) -> dict:
        # The export holds the encoder's output: it loads as plain vectors.
        return {**super().export_init_args(), "encoder": "none"}
