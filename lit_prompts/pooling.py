"""Small tensor functions shared by prompts, the prompted backbone and the task formats."""

from __future__ import annotations

import torch
from torch import Tensor

from .formats import IGNORE_INDEX


def pool_hidden(hidden: Tensor, mask: Tensor, how: str) -> Tensor:
    """Pool [batch, seq, hidden] over the positions where ``mask`` is 1 (works for left or right padding)."""
    if how == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    if how == "first":
        index = torch.where(mask.bool(), positions, mask.shape[1]).min(-1).values
    else:  # last
        index = torch.where(mask.bool(), positions, -1).max(-1).values
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def sequence_logprobs(logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
    """Log-probability of ``targets`` under ``logits`` (aligned: logits[:, t] predicts targets[:, t]).

    reduction: ``sum`` per row (rank classification), or ``token_mean`` over all target tokens of
    the batch (a scalar: the usual language-modelling loss, negated).
    """
    valid = targets != IGNORE_INDEX
    picked = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    picked = picked * valid
    if reduction == "sum":
        return picked.sum(-1)
    return picked.sum() / valid.sum().clamp(min=1)
