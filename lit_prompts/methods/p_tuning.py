"""P-tuning (Liu et al., 2021, "GPT Understands, Too"): virtual tokens produced by a prompt encoder,
placed anywhere in a template between real anchor words.

Shapes: prompt embedding [P, H] -> encoder -> prompt vectors [P, H]; with ``residual`` the vectors are
embedding + encoder(embedding) and the encoder's last layer starts at zero (Razdaibiedina et al., 2023,
"Residual Prompt Tuning"), so training starts from the embedding itself. A template such as
``[P:3] {text} [P:2] It was {mask} .`` puts vectors 0-2 before the text and 3-4 before the anchor
words; without ``[P:n]`` markers (head, token and span formats) all P vectors go in front. Export
folds the encoder into the plain vectors (a ``SoftPrompt`` that fills templates).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from .base import Prompt, PromptContext, PromptOutput, expand_rows
from .prompt_tuning import SoftPrompt

Encoder = Literal["lstm", "mlp", "none"]


class PromptEncoder(nn.Module):
    """``lstm``: 2-layer bidirectional LSTM then Linear → ReLU → Linear, as in the paper (the LSTM
    makes the virtual tokens depend on one another); ``mlp``: the MLP alone."""

    def __init__(self, kind: Encoder, hidden_size: int, encoder_hidden_size: int, zero_start: bool = False):
        super().__init__()
        self.lstm = (
            nn.LSTM(hidden_size, hidden_size // 2, num_layers=2, bidirectional=True, batch_first=True)
            if kind == "lstm" else None
        )
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, encoder_hidden_size), nn.ReLU(), nn.Linear(encoder_hidden_size, hidden_size)
        )
        if zero_start:  # the output starts at 0 and the first layers get gradient from the second step on
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self, embedding: Tensor) -> Tensor:
        hidden = embedding if self.lstm is None else self.lstm(embedding.unsqueeze(0))[0].squeeze(0)
        return self.mlp(hidden)


class EncodedPrompt(Prompt):
    """P vectors = encoder(prompt_embedding), or with ``residual`` prompt_embedding + encoder(prompt_embedding)
    (``encoder: none``: the embedding itself).

    Without the residual the encoder's output replaces the initial embedding at step 0, at a scale PyTorch's
    default initialisation sets, unrelated to the word embeddings the backbone expects. With it, step 0 gives
    the initial embedding exactly (as prompt tuning starts) and the encoder learns a change to it. The two
    keep their tensors under different names (``encoder`` / ``residual_encoder``), so that the values of one
    are never read as the other."""

    def __init__(self, length: int, hidden_size: int, encoder: Encoder = "lstm", encoder_hidden_size: int | None = None,
                 residual: bool = False, init: Tensor | None = None):
        super().__init__(length=length, hidden_size=hidden_size, encoder=encoder, encoder_hidden_size=encoder_hidden_size,
                         residual=residual)
        self.prompt_embedding = nn.Parameter(init.clone() if init is not None else nn.init.normal_(Tensor(length, hidden_size)))
        self.encoder = self.residual_encoder = None
        if encoder != "none":
            built = PromptEncoder(encoder, hidden_size, encoder_hidden_size or hidden_size, zero_start=residual)
            if residual:
                self.residual_encoder = built
            else:
                self.encoder = built
        self.template_length = length

    def vectors(self) -> Tensor:
        """[P, H]."""
        if self.residual_encoder is not None:
            return self.prompt_embedding + self.residual_encoder(self.prompt_embedding)
        return self.prompt_embedding if self.encoder is None else self.encoder(self.prompt_embedding)

    def forward(self, context: PromptContext) -> PromptOutput:
        vectors = self.vectors()
        return PromptOutput(prepend=expand_rows(vectors, context.batch_size), slots=vectors)

    def load_folded(self, tensors: dict[str, Tensor], source: str = "the values given") -> None:
        if self.encoder is not None or self.residual_encoder is not None:
            raise ValueError(f"a P-tuning prompt encoder cannot be set from the folded vectors of {source}: use "
                             "encoder: none to train on from them")
        self.folded().load_folded(tensors, source)  # checks names and shapes
        self.prompt_embedding.data.copy_(tensors["prompt"])

    def folded(self) -> SoftPrompt:
        length, hidden = self.prompt_embedding.shape
        return SoftPrompt(length, hidden, fills_template=True, init=self.vectors().detach())
