"""Prompt pools (Wang et al. 2022, "Learning to Prompt"): each example picks its own prompts from
a learned pool by matching a query of the input against learned keys.

Shapes: pool [K, P, H] (``placement: input``) or [K, L, P, H] (``placement: layers``, entering
every self-attention layer like P-tuning v2's deep prompts), keys [K, H]. Per example:

  query q(x)  ``backbone``: mean of the frozen backbone's last hidden states over the text, computed
              without gradient and without prompts (as in L2P); ``encoder``: E(x) = tanh(W x̄ + b)
              over the mean input embedding x̄, trained
  hard        the N keys most cosine-similar to q(x) select N prompts, concatenated (N·P tokens);
              the key-pull loss λ·mean(1 - cos(q, k_selected)) draws the chosen keys to their queries
  soft        α = softmax(cos(q, K) / τ); the prompt is Σ α_i p_i (P tokens), keys learn through α

Trainable: K·P·H (or K·L·P·H) + K·H (+ H·H + H for the encoder query) (+ head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..prefix_injection import PrefixInjector
from .base import PromptMethod
from .scoring import pool_hidden

SELECTIONS = ("hard", "soft")
QUERIES = ("backbone", "encoder")
PLACEMENTS = ("input", "layers")


class PromptPool(PromptMethod):
    """Per-example prompt selection from a pool of ``pool_size`` prompts of ``prompt_length`` tokens.

    Args:
        pool_size: K prompts in the pool.
        prompt_length: P tokens per prompt.
        top_k: hard selection: N prompts per example.
        selection: ``hard`` (top-N with the key-pull loss) or ``soft`` (attention over the pool).
        query: ``backbone`` (frozen, no-grad forward) or ``encoder`` (trained E(x)).
        placement: ``input`` (prepended to the embeddings) or ``layers`` (every self-attention layer).
        temperature: soft selection: τ.
        key_pull_weight: hard selection: λ of the key-pull loss.
        **kwargs: see ``PromptMethod``.
    """

    default_lr = 1e-2

    def __init__(self, pool_size: int = 10, prompt_length: int = 5, top_k: int = 2, selection: str = "hard",
                 query: str = "backbone", placement: str = "input", temperature: float = 0.1,
                 key_pull_weight: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        for name, value, allowed in (("selection", selection, SELECTIONS), ("query", query, QUERIES),
                                     ("placement", placement, PLACEMENTS)):
            if value not in allowed:
                raise ValueError(f"model.init_args.{name}={value!r} is not one of {allowed}")
        if selection == "hard" and not 1 <= top_k <= pool_size:
            raise ValueError(f"model.init_args.top_k={top_k} must be between 1 and pool_size={pool_size}")
        hidden = self.facts.hidden_size
        self.selected_length = prompt_length * (top_k if selection == "hard" else 1)
        self.injector = PrefixInjector(self.backbone) if placement == "layers" else None
        layers = () if self.injector is None else (len(self.injector),)
        self.pool = nn.Parameter(self.vocab_embeddings((pool_size, *layers, prompt_length)))
        self.keys = nn.Parameter(torch.empty(pool_size, hidden).uniform_(-1, 1))
        self.query_encoder = nn.Linear(hidden, hidden) if query == "encoder" else None
        if placement == "input":
            self.input_prompt_length = self.selected_length
        # Selection weight per pool entry since the last epoch end (hard: how often chosen; soft: the
        # summed attention), logged as a histogram and reset.
        self.register_buffer("selection_weights", torch.zeros(pool_size), persistent=False)
        self.pending_key_pull: Tensor | None = None

    # --- selection ------------------------------------------------------------------------------
    def queries(self, input_embeds: Tensor, attention_mask: Tensor) -> Tensor:
        """[B, H] query per example."""
        if self.query_encoder is not None:
            return torch.tanh(self.query_encoder(pool_hidden(input_embeds.float(), attention_mask, "mean")))
        encoder = self.backbone.get_encoder() if self.facts.is_encoder_decoder else self.backbone.base_model
        kwargs = {"position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0)} if self.facts.is_decoder_only else {}
        if self.injector is not None:
            self.injector.set(None)  # the query sees the text alone
        with torch.no_grad():
            hidden = encoder(inputs_embeds=input_embeds, attention_mask=attention_mask, **kwargs).last_hidden_state
        return pool_hidden(hidden.float(), attention_mask, "mean")

    def select(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """Per example, the prompt ([B, N·P, H] or [B, L, N·P, H]) and the pool weights [B, K]
        (hard: 1 for each selected entry)."""
        similarity = F.normalize(query, dim=-1) @ F.normalize(self.keys, dim=-1).T  # [B, K]
        if self.hparams.selection == "soft":
            weights = (similarity / self.hparams.temperature).softmax(-1)
            prompt = torch.einsum("bk,k...->b...", weights, self.pool)
            self.pending_key_pull = None
        else:
            chosen = similarity.topk(self.hparams.top_k, dim=-1).indices  # [B, N]
            weights = torch.zeros_like(similarity).scatter(1, chosen, 1.0)
            prompt = self.pool[chosen]  # [B, N, (L,) P, H]
            prompt = prompt.movedim(1, -3).flatten(-3, -2)  # N prompts one after another: [B, (L,) N·P, H]
            # L2P's surrogate loss: pull each selected key towards the query that selected it.
            self.pending_key_pull = (1 - similarity.gather(1, chosen)).mean()
        if self.training:
            self.selection_weights += weights.detach().sum(0)
        return prompt, weights

    # --- where the selected prompts go ------------------------------------------------------------
    def input_prompt(self, input_embeds: Tensor, attention_mask: Tensor) -> Tensor | None:
        prompt, _ = self.select(self.queries(input_embeds, attention_mask))
        if self.injector is None:
            return prompt
        kv_heads = self.facts.num_key_value_heads
        self.injector.set([self.injector.project(layer, prompt[:, layer], kv_heads) for layer in range(len(self.injector))])
        return None

    def auxiliary_loss(self) -> Tensor | None:
        if self.pending_key_pull is None:
            return None
        return self.hparams.key_pull_weight * self.pending_key_pull

    # --- logging ----------------------------------------------------------------------------------
    def on_train_epoch_end(self) -> None:
        weights = self.selection_weights.clone()
        if self.trainer is not None and self.trainer.world_size > 1:
            weights = self.all_gather(weights).sum(0)
        share = weights / weights.sum().clamp(min=1e-12)
        # One value per pool entry (a histogram over the epoch) and how many entries took at least 1%,
        # so a collapse onto few prompts shows in any logger.
        self.log_dict({f"pool/selected_{k}": s for k, s in enumerate(share)}, rank_zero_only=True)
        self.log("pool/entries_used", (share >= 0.01).sum().float(), rank_zero_only=True)
        self.selection_weights.zero_()
