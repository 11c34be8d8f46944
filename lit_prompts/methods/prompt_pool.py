"""Prompt pools (Wang et al. 2022, "Learning to Prompt"): each example picks its own prompts from
a learned pool by matching a query of the input against learned keys.

Shapes: pool [K, P, H] (``placement: input``) or [K, L, P, H] (``placement: layers``, entering
every self-attention layer like P-tuning v2's deep prompts), keys [K, H]. Per example:

  query q(x)  ``backbone``: mean of the frozen backbone's last hidden states over the text, computed
              without gradient and without prompts (as in L2P); ``encoder``: E(x) = tanh(W x̄ + b)
              over the mean input embedding x̄, trained
  hard        the N keys most cosine-similar to q(x) select N prompts, concatenated (N·P tokens);
              the key-pull loss λ·mean(1 - cos(q, k_selected)) draws the chosen keys to their queries.
              Training ranks score_i = cos(q, k_i) - β·f_i instead (L2P's frequency-penalised selection):
              f_i = K·n_i / Σ_j n_j is entry i's share of the training picks so far over an even share, so
              over-used entries give way and the pool does not collapse onto a few. (L2P multiplies the
              distance by the frequency: an unpicked entry then wins for every query, and the penalty fades
              as the key-pull loss drives distances to 0.) Evaluation ranks by cos(q, k_i) alone.
  soft        α = softmax(cos(q, K) / τ); the prompt is Σ α_i p_i (P tokens), keys learn through α
  centred     with ``center_query``, q(x) - μ in place of q(x), μ the mean of every training query so far (a
              buffer, exported with the prompt): a decoder's mean hidden state is mostly a direction every input
              shares (SmolLM2's queries on CoNLL-2003 lie at cosine 0.89 to each other, at 0.01 once centred),
              which leaves the keys little of the input to tell apart. Evaluation centres by the μ training ended with.
  shared      with ``shared_length`` S > 0, S more tokens every example gets, in front of the selected ones
              (DualPrompt's general prompt, Wang et al. 2022): what all inputs need is learned from every
              example, while each pool entry learns only from the examples that pick it

Trainable: K·P·H (or K·L·P·H) + K·H (+ S·H or L·S·H shared, + H·H + H for the encoder query).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import MeanQuery, Prompt, PromptContext, PromptOutput

Selection = Literal["hard", "soft"]
Query = Literal["backbone", "encoder"]
Placement = Literal["input", "layers"]


class PoolPrompt(Prompt):
    """``pool_size`` prompts of ``length`` tokens (per layer when ``num_layers`` is given), chosen per example."""

    def __init__(self, pool_size: int, length: int, hidden_size: int, num_layers: int | None = None, top_k: int = 2,
                 selection: Selection = "hard", query: Query = "backbone", temperature: float = 0.1,
                 key_pull_weight: float = 0.1, frequency_penalty: float = 0.1, shared_length: int = 0,
                 center_query: bool = False, init: Tensor | None = None, shared_init: Tensor | None = None):
        super().__init__(pool_size=pool_size, length=length, hidden_size=hidden_size, num_layers=num_layers, top_k=top_k,
                         selection=selection, query=query, temperature=temperature, key_pull_weight=key_pull_weight,
                         frequency_penalty=frequency_penalty, shared_length=shared_length, center_query=center_query)
        layers = (num_layers,) if num_layers else ()
        self.pool = nn.Parameter(init.clone() if init is not None else torch.zeros(pool_size, *layers, length, hidden_size))
        self.shared = None  # [(L,) S, H]
        if shared_length:
            shape = (*layers, shared_length, hidden_size)
            self.shared = nn.Parameter(shared_init.clone() if shared_init is not None else torch.zeros(shape))
        self.keys = nn.Parameter(torch.empty(pool_size, hidden_size).uniform_(-1, 1))
        self.query_encoder = MeanQuery(hidden_size, hidden_size) if query == "encoder" else None
        # Training state, not prompt (left out of state_dict and exports; a trainer's checkpoints carry it):
        # hard selection: how often each entry has been picked in training, n_i of the frequency penalty;
        self.register_buffer("picks", torch.zeros(pool_size, dtype=torch.long), persistent=False)
        # the selection weight per entry since the last reset (hard: picks; soft: summed attention), a histogram.
        self.register_buffer("selection_weights", torch.zeros(pool_size), persistent=False)
        self.last_selection: Tensor | None = None  # [K] the last training forward's selection weights, summed
        # center_query: μ, part of the prompt (evaluation and serving centre by the mean training ended with), and
        # how many training queries it averages (training state, as the picks).
        self.register_buffer("query_mean", torch.zeros(hidden_size) if center_query else None)
        self.register_buffer("queries_seen", torch.zeros((), dtype=torch.long), persistent=False)
        self.last_queries: Tensor | None = None  # [H + 1] the last training forward's queries: their sum, and count

    def scores(self, similarity: Tensor) -> Tensor:
        """[B, K] what hard selection ranks: cos(q, k_i), less β·f_i in training (see the module doc)."""
        penalty = self.settings["frequency_penalty"]
        if not self.training or not penalty:
            return similarity
        frequency = self.picks.float() * (len(self.picks) / self.picks.sum().clamp(min=1))  # f_i: 1 = an even share
        return similarity - penalty * frequency

    def record(self, weights: Tensor) -> None:
        """Count [K] selection weights summed over examples into the histogram and (hard) the picks. The
        forward counts its own; a data-parallel trainer adds the other processes' after each step, so that
        every process holds the same picks and so selects by the same rule."""
        self.selection_weights += weights
        if self.settings["selection"] == "hard":
            self.picks += weights.round().long()

    @torch.no_grad()
    def record_queries(self, queries: Tensor) -> None:
        """Fold [H + 1] queries (their sum, then their count) into μ, the mean of every training query so far;
        a data-parallel trainer adds the other processes' after each step, as the picks."""
        total, count = queries[:-1].float(), queries[-1].float()
        self.queries_seen += count.round().long()
        mean, weight = total / count.clamp(min=1), count / self.queries_seen.clamp(min=1)
        self.query_mean.lerp_(mean.to(self.query_mean.dtype), weight.to(self.query_mean.dtype))  # (a cast prompt's too)

    def queries(self, context: PromptContext) -> Tensor:
        """[B, H] query per example (less μ with ``center_query``)."""
        query = context.frozen_mean_hidden() if self.query_encoder is None else self.query_encoder(context)
        if self.query_mean is None:
            return query
        if self.training:  # (this batch's queries count in μ before it centres them)
            detached = query.detach().float()
            self.last_queries = torch.cat([detached.sum(0), detached.new_tensor([len(detached)])])
            self.record_queries(self.last_queries)
        return query - self.query_mean.to(query.dtype)

    def forward(self, context: PromptContext) -> PromptOutput:
        s = self.settings
        # [B, K] in fp32 whatever the prompt's dtype (a prompt cast to bf16 has bf16 keys and encoder queries)
        similarity = F.normalize(self.queries(context).float(), dim=-1) @ F.normalize(self.keys.float(), dim=-1).T
        key_pull = None
        if s["selection"] == "soft":
            weights = (similarity / s["temperature"]).softmax(-1)
            prompt = torch.einsum("bk,k...->b...", weights.to(self.pool.dtype), self.pool)
        else:
            chosen = self.scores(similarity).topk(s["top_k"], dim=-1).indices  # [B, N]
            weights = torch.zeros_like(similarity).scatter(1, chosen, 1.0)
            prompt = self.pool[chosen].movedim(1, -3).flatten(-3, -2)  # N prompts one after another: [B, (L,) N·P, H]
            # L2P's surrogate loss: pull each selected key towards the query that selected it (the raw
            # similarity: an entry picked for its low frequency is drawn to the queries it now serves).
            key_pull = s["key_pull_weight"] * (1 - similarity.gather(1, chosen)).mean()
        if self.training:
            self.last_selection = weights.detach().float().sum(0)  # (fp32: counts stay exact)
            self.record(self.last_selection)
        if self.shared is not None:
            shared = self.shared.expand(prompt.shape[0], *self.shared.shape)
            prompt = torch.cat([shared, prompt.to(shared.dtype)], dim=-2)
        if s["num_layers"]:
            return PromptOutput(layer_hidden=prompt, aux_loss=key_pull)
        return PromptOutput(prepend=prompt, aux_loss=key_pull)
