"""What a task format reads from a prompted backbone: the one protocol between the two sides.

``lit_prompts.prompted.Prompted`` implements it over ``PromptedBackbone`` and a prompt module; any
other object with these methods (e.g. a PEFT model wrapped for a benchmark) serves the formats too.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class PromptedModel(Protocol):
    def hidden_states(self, batch: dict) -> Tensor:
        """[B, T, H] last hidden states at the batch's own token positions (head, token, span)."""

    def masked_lm_logits(self, batch: dict) -> Tensor:
        """[B, T, V] masked-LM logits at the batch's own token positions (cloze)."""

    def sequence_logprobs(self, seqs: dict, reduction: str) -> Tensor:
        """Text-to-text: log-probability of ``seqs["target_ids"]`` given ``seqs``' inputs; ``sum``
        per row, or ``token_mean`` (a scalar over the batch's target tokens)."""

    def generate_text(self, source: dict, max_new_tokens: int, num_beams: int) -> list[str]:
        """Text generated from ``source``'s inputs, one string per row."""
