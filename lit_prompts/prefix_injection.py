"""Key/value prefixes in every self-attention layer of a frozen backbone: the deep-prompt mechanism.

Each self-attention module keeps its own computation; only its call to the attention kernel is
wrapped. Right before the kernel, the layer's prefix keys and values ``[H_kv, P, d]`` (or
``[B, H_kv, P, d]`` for per-example prefixes) go in front of the real keys and values, the attention
mask gains P always-visible columns, and a relative-position bias (T5, MPNet) gains P zero columns.

Why at the kernel and not through ``past_key_values``: DistilBERT, MPNet and the T5 encoder have no
cache argument; the input sequence stays exactly as long as the text, so position ids, padding side,
``cache_position``, the generation cache and token-level heads are untouched; and gradient
checkpointing recomputes a layer with the same prefix because the prefix stays installed until the
next forward (a cache is consumed by the first pass).

Semantics, shared by every architecture: prefix keys carry no position (they are learned after any
rotary embedding, and get zero relative bias), and real tokens keep the positions they would have
without a prefix. A prefix given by hand as a ``DynamicCache`` with explicit ``position_ids`` for the
real tokens is therefore the same computation, which the tests check.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.mpnet.modeling_mpnet import MPNetSelfAttention
from transformers.models.t5.modeling_t5 import (
    eager_attention_forward as eager_with_position_bias,
)

KERNEL_NAME = "lit_prompts_prefix"
SUPPORTED_KERNELS = ("eager", "sdpa")
# Child names of the key projection (or GPT-2's fused qkv) that mark a self-attention module.
_KEY_PROJECTIONS = {"key": "value", "k_lin": "v_lin", "k": "v", "k_proj": "v_proj"}
_CROSS_ATTENTION_NAMES = ("EncDecAttention", "crossattention")


def _prefixed_kernel(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, **kwargs):
    """Registered as an attention implementation; used only by modules ``install`` rewired."""
    prefix = module.lit_prompts_prefix
    if isinstance(prefix, Tensor):
        # Hidden-state prompts are projected here, inside the layer's own forward: a sharded (FSDP)
        # layer has gathered its weights only for that long.
        prefix = project_hidden(module, prefix, num_kv_heads=key.shape[1], dtype=key.dtype)
    if prefix is not None:
        key, value, attention_mask, kwargs = _with_prefix(module, query, key, value, attention_mask, prefix, kwargs)
    return module.lit_prompts_kernel(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(KERNEL_NAME, _prefixed_kernel)


def _with_prefix(module, query, key, value, mask, prefix, kwargs):
    # (key, value), or (key, value, visible [B, P] or [B, Q, P]) for rows (or queries) that see only some
    # of the P columns: shorter prefixes, none, or a packed row's other segments' prefixes.
    prefix_key, prefix_value = (_batched(t, query.shape[0]).to(key.dtype) for t in prefix[:2])
    visible = prefix[2] if len(prefix) == 3 else None
    p, q_len, k_len = prefix_key.shape[2], query.shape[2], key.shape[2]
    sdpa = module.lit_prompts_kernel_name == "sdpa"
    if mask is None and ((getattr(module, "is_causal", False) and q_len > 1) or visible is not None):
        # The kernel would otherwise infer causality from equal lengths, which the prefix breaks.
        seen = torch.ones(q_len, k_len, dtype=torch.bool, device=key.device)
        if getattr(module, "is_causal", False) and q_len > 1:
            seen = seen.tril(k_len - q_len)
        mask = seen[None, None] if sdpa else _additive(seen, query.dtype)
    if mask is not None:
        if visible is None:
            extra = mask.new_ones(*mask.shape[:-1], p) if mask.dtype == torch.bool else mask.new_zeros(*mask.shape[:-1], p)
        else:
            mask = mask.expand(query.shape[0], *mask.shape[1:])
            # visible: [B, P] per row, or [B, Q, P] per query (packed rows: each segment its own prefix)
            shown = (visible[:, None] if visible.dim() == 3 else visible[:, None, None]).to(torch.bool)
            shown = shown.expand(*mask.shape[:-1], p)
            extra = shown if mask.dtype == torch.bool else torch.zeros(shown.shape, dtype=mask.dtype, device=mask.device
                                                                       ).masked_fill(~shown, torch.finfo(mask.dtype).min)
        mask = torch.cat([extra, mask], dim=-1)
    bias = kwargs.get("position_bias")
    if bias is not None:  # prefix keys have no position: zero relative bias
        kwargs = {**kwargs, "position_bias": torch.cat([bias.new_zeros(*bias.shape[:-1], p), bias], dim=-1)}
    return torch.cat([prefix_key, key], dim=2), torch.cat([prefix_value, value], dim=2), mask, kwargs


def _batched(t: Tensor, batch: int) -> Tensor:
    if t.dim() == 3:
        return t.unsqueeze(0).expand(batch, -1, -1, -1)
    if t.shape[0] != batch:  # beam search: each example's rows are repeated consecutively
        return t.repeat_interleave(batch // t.shape[0], dim=0)
    return t


def _additive(visible: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(~visible, torch.finfo(dtype).min)[None, None]


class PrefixedMPNetSelfAttention(MPNetSelfAttention):
    """MPNet computes attention inline; this is its forward routed through the prefixed kernel."""

    def forward(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False, **kwargs):
        shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
        q, k, v = (proj(hidden_states).view(shape).transpose(1, 2) for proj in (self.q, self.k, self.v))
        context, probs = _prefixed_kernel(
            self, q, k, v, attention_mask, scaling=self.attention_head_size**-0.5,
            dropout=self.dropout.p if self.training else 0.0, position_bias=position_bias,
        )
        out = self.o(context.reshape(*hidden_states.shape[:-1], self.all_head_size))
        return (out, probs) if output_attentions else (out,)


def find_self_attention(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The self-attention modules of a backbone in forward order (T5: encoder, then decoder)."""
    found = []
    for name, module in backbone.named_modules():
        children = dict(module.named_children())
        projects = "c_attn" in children or any(k in children for k in _KEY_PROJECTIONS)
        cross = name.rsplit(".", 1)[-1] in _CROSS_ATTENTION_NAMES or getattr(module, "is_cross_attention", False)
        if type(module).__name__.endswith("Attention") and projects and not cross and "Cross" not in type(module).__name__:
            found.append((name, module))
    return found


class PrefixInjector:
    """Rewires every self-attention module of ``backbone`` and feeds them prefixes.

    ``set(prefixes)`` installs one prefix per layer, in ``find_self_attention`` order: a (key, value)
    pair, or hidden-state prompts ``[P, H]`` / ``[B, P, H]`` that the layer projects itself when it
    runs; ``set(None)`` removes them. Prefixes stay installed until replaced, so a recomputation under
    gradient checkpointing sees the same ones.
    """

    def __init__(self, backbone: nn.Module):
        kernel = kernel_name(backbone)
        if kernel not in SUPPORTED_KERNELS:
            # flash_attention_2 / flex_attention and the hub's kernels take keys and values only as long
            # as the text (or a mask object built for that length): a prefix cannot be put in front.
            raise ValueError(
                f"deep prompts (a prefix in every attention layer) need attn_implementation 'eager' or 'sdpa'; "
                f"the backbone runs {kernel!r}, which cannot take a prefix here. Set model.init_args."
                "attn_implementation: sdpa (or use a method that prompts the input only, e.g. PromptTuning)"
            )
        self.layers = find_self_attention(backbone)
        if not self.layers:
            raise ValueError(f"found no self-attention modules in {type(backbone).__name__}")
        for _, module in self.layers:
            _install(module, kernel)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def stacks(self) -> list[str]:
        """Per layer: ``decoder`` for the decoder stack of an encoder-decoder, else ``encoder`` or ``layers``."""
        names = [name for name, _ in self.layers]
        if not any(".decoder." in f".{n}" for n in names):
            return ["layers"] * len(names)
        return ["decoder" if ".decoder." in f".{n}" else "encoder" for n in names]

    @contextmanager
    def recording(self) -> Iterator[dict[int, tuple[Tensor, Tensor]]]:
        """Inside the block, layer i's (key, value) as its attention kernel reads them (after rotary
        embeddings and key norms, before grouped-query heads are repeated) land in ``recorded[i]``."""
        recorded: dict[int, tuple[Tensor, Tensor]] = {}
        kernels = [module.lit_prompts_kernel for _, module in self.layers]

        def reading(i: int, kernel):
            def read(module, query, key, value, *args, **kwargs):
                recorded[i] = (key, value)
                return kernel(module, query, key, value, *args, **kwargs)
            return read

        try:
            for i, ((_, module), kernel) in enumerate(zip(self.layers, kernels)):
                module.lit_prompts_kernel = reading(i, kernel)
            yield recorded
        finally:
            for (_, module), kernel in zip(self.layers, kernels):
                module.lit_prompts_kernel = kernel

    @contextmanager
    def receiving(self) -> Iterator[dict[int, Tensor]]:
        """Inside the block, the hidden states layer i's attention module receives (after the norm pre-norm
        models put in front of it) land in ``received[i]``."""
        received: dict[int, Tensor] = {}

        def receive(i: int):
            def read(module, args, kwargs):
                received[i] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            return read

        handles = [module.register_forward_pre_hook(receive(i), with_kwargs=True) for i, (_, module) in enumerate(self.layers)]
        try:
            yield received
        finally:
            for handle in handles:
                handle.remove()

    def set(self, prefixes: list[tuple[Tensor, Tensor] | Tensor] | None) -> None:
        if prefixes is not None and len(prefixes) != len(self.layers):
            raise ValueError(f"got prefixes for {len(prefixes)} layers; the backbone has {len(self.layers)}")
        for i, (_, module) in enumerate(self.layers):
            module.lit_prompts_prefix = None if prefixes is None else prefixes[i]

    def project(self, layer: int, hidden: Tensor, num_kv_heads: int) -> tuple[Tensor, Tensor]:
        """``project_hidden`` through the ``layer``-th self-attention module."""
        return project_hidden(self.layers[layer][1], hidden, num_kv_heads)


def project_hidden(module: nn.Module, hidden: Tensor, num_kv_heads: int, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Keys and values ``[H_kv, P, d]`` of hidden-state prompts ``[P, H]`` (``[B, H_kv, P, d]`` of
    per-example prompts ``[B, P, H]``) under a self-attention module's own frozen projections (no
    position: rotary is not applied), computed in ``dtype`` (default: the module's floating-point
    weights'; quantized weights are integers and compute in float32 or their compute dtype)."""
    children = dict(module.named_children())
    if dtype is None:
        dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    hidden = hidden.to(dtype).contiguous()  # fp32 prompts into a bf16 backbone
    if "c_attn" in children:  # GPT-2: one fused projection to query, key and value
        _, key, value = children["c_attn"](hidden).split(module.split_size, dim=-1)
    else:
        k_name = next(k for k in _KEY_PROJECTIONS if k in children)
        key, value = children[k_name](hidden), children[_KEY_PROJECTIONS[k_name]](hidden)
    key, value = (t.unflatten(-1, (num_kv_heads, -1)) for t in (key, value))
    if "k_norm" in children:  # per-head query/key norms (Qwen3, OLMo2)
        key = children["k_norm"](key)
    return key.transpose(-3, -2), value.transpose(-3, -2)


def kernel_name(backbone: nn.Module) -> str:
    """The attention implementation a (transformers) backbone runs."""
    return backbone.config._attn_implementation or "eager"


def clear_prefixes(backbone: nn.Module) -> None:
    """Remove every installed prefix (before a method without deep prompts runs on a backbone that
    another method, sharing it, left prefixes in)."""
    for module in backbone.modules():
        if hasattr(module, "lit_prompts_prefix"):
            module.lit_prompts_prefix = None


def _install(module: nn.Module, kernel: str) -> None:
    module.lit_prompts_prefix = None
    module.lit_prompts_kernel_name = kernel
    if isinstance(module, MPNetSelfAttention):
        module.__class__ = PrefixedMPNetSelfAttention
        module.lit_prompts_kernel = eager_with_position_bias
        return
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ValueError(f"{type(module).__name__} does not use transformers' attention interface")
    module.lit_prompts_kernel = ALL_ATTENTION_FUNCTIONS.get_interface(kernel, eager)
    # The module looks its kernel up by config name at every call: give it a private view of the
    # config naming ours. The model's own config keeps the real name, so masks are still built
    # in the format of the real kernel.
    view = copy.copy(module.config)
    view._attn_implementation_internal = KERNEL_NAME
    module.config = view
