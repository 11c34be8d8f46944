"""Prompt tuning (Lester et al., 2021): P trainable vectors prepended to the input embeddings.

Shapes: prompt [P, H]; the input [B, T, H] becomes [B, P + T, H]. Trainable: P·H (+ head).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import PromptMethod

INIT_STRATEGIES = ("random", "vocab", "text", "labels")


class PromptTuning(PromptMethod):
    """Soft prompt of ``num_virtual_tokens`` vectors in front of every input.

    Args:
        num_virtual_tokens: prompt length P.
        init: ``random`` (normal, std of the embedding table), ``vocab`` (embeddings of random
            vocabulary tokens), ``text`` (embeddings of ``init_text``, repeated to length P) or
            ``labels`` (embeddings of the label names, repeated to length P), as in Lester et al.
        init_text: the text for ``init: text``.
        **kwargs: see ``PromptMethod``.
    """

    default_lr = 3e-2

    def __init__(self, num_virtual_tokens: int = 20, init: str = "vocab", init_text: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if num_virtual_tokens < 1:
            raise ValueError(f"model.init_args.num_virtual_tokens must be >= 1, got {num_virtual_tokens}")
        if init not in INIT_STRATEGIES:
            raise ValueError(f"model.init_args.init={init!r} is not one of {INIT_STRATEGIES}")
        if init == "text" and not init_text:
            raise ValueError("model.init_args.init='text' needs model.init_args.init_text")
        self.prompt = nn.Parameter(self._initial_prompt(num_virtual_tokens, init, init_text))
        self.input_prompt_length = num_virtual_tokens

    def _initial_prompt(self, length: int, init: str, init_text: str | None) -> Tensor:
        table = self.backbone.get_input_embeddings().weight.detach().float()
        if init == "random":
            return torch.randn(length, table.shape[1]) * table.std()
        if init == "vocab":
            return self.vocab_embeddings((length,))
        tokenizer = self.tokenizer
        text = init_text if init == "text" else " ".join(self.hparams.label_names)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"prompt initialisation text {text!r} has no tokens")
        ids = (ids * (length // len(ids) + 1))[:length]
        return table[torch.tensor(ids)].clone()

    def input_prompt(self, input_embeds: Tensor, attention_mask: Tensor) -> Tensor:
        return self.prompt.unsqueeze(0).expand(input_embeds.shape[0], -1, -1)
