"""Packing: the rows of several batches, each with its own prompt, laid end to end in a few full rows
for one backbone call, instead of each padded to the widest.

A row (its prompt's prepended vectors, then its real tokens) becomes a *segment*; segments are placed
first-fit, longest first, into rows of one width (``place`` picks the cheapest). Attention is block-diagonal: a
segment's tokens see only their own segment (and, in a decoder, only its earlier tokens), and only
the layer-prefix columns of their own prompt. Each segment is numbered as it would be alone, so every
real token's hidden state is the one its own call gives (up to floating-point summation order).
Relative-position models (T5, MPNet) need nothing more: distances inside a segment are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Segment:
    """Row ``row`` of part ``part``, ``length`` positions, placed at ``start`` of packed row ``bin``;
    ``source`` names the layer prefix it reads (None: no layer prompt)."""

    part: int
    row: int
    length: int
    source: tuple | None
    bin: int = 0
    start: int = 0


def place(segments: list[Segment], attention: float = 0.0) -> tuple[int, int]:
    """First-fit decreasing into rows of one width; returns (rows, width). The width is the cheapest of
    the longest segment and the longest plus each shorter one, under ``cost``."""
    longest = max(s.length for s in segments)
    widths = sorted({longest} | {longest + s.length for s in segments if longest + s.length <= 4 * longest})
    width = min(widths, key=lambda w: cost(first_fit(segments, w), w, attention))
    return first_fit(segments, width), width


def cost(rows: int, width: int, attention: float) -> float:
    """A packed call's cost in positions: each position's own work (projections, MLP), plus attention over
    the row's ``width`` keys, which a dense mask pays for whether they are seen or not. ``attention``:
    its cost per key relative to a position's own work."""
    return rows * width * (1 + attention * width)


def first_fit(segments: list[Segment], width: int) -> int:
    """Place the segments (longest first, each in the first row with room) into rows of ``width``;
    returns the number of rows."""
    free: list[int] = []  # positions left in each packed row
    for s in sorted(segments, key=lambda s: s.length, reverse=True):
        s.bin = next((b for b, left in enumerate(free) if left >= s.length), len(free))
        if s.bin == len(free):
            free.append(width)
        s.start = width - free[s.bin]
        free[s.bin] -= s.length
    return len(free)


def block_mask(segments: list[Segment], rows: int, width: int, causal: bool, dtype: torch.dtype,
               device: torch.device) -> Tensor:
    """Additive mask [rows, 1, width, width]: 0 where a query may see a key, the dtype's minimum elsewhere.
    Padding positions see nothing (their outputs are never read)."""
    owner = torch.full((rows, width), -1, dtype=torch.long)
    for i, s in enumerate(segments):
        owner[s.bin, s.start: s.start + s.length] = i
    seen = (owner[:, :, None] == owner[:, None, :]) & (owner[:, :, None] >= 0)
    if causal:
        seen &= torch.ones(width, width, dtype=torch.bool).tril()
    mask = torch.zeros(seen.shape, dtype=dtype).masked_fill(~seen, torch.finfo(dtype).min)
    return mask[:, None].to(device)


def packed_prefixes(segments: list[Segment], rows: int, width: int,
                    sources: dict[tuple, list[tuple[Tensor, Tensor]]]) -> list[tuple[Tensor, Tensor, Tensor]] | None:
    """Per layer (keys, values, visible): each packed row holds the prefixes of the sources its segments
    read, side by side (a prompt shared by several segments once); ``visible`` [rows, width, P] lets a
    query see only its own segment's columns. ``sources``: source -> per layer (key, value) [H_kv, P, d]."""
    if not sources:
        return None
    columns: list[dict[tuple, int]] = [{} for _ in range(rows)]  # per packed row: source -> first column
    used = [0] * rows
    for s in segments:
        if s.source is not None and s.source not in columns[s.bin]:
            columns[s.bin][s.source] = used[s.bin]
            used[s.bin] += sources[s.source][0][0].shape[-2]
    total = max(used)
    some = next(iter(sources.values()))
    visible = torch.zeros(rows, width, total, dtype=torch.bool)
    for s in segments:
        if s.source is not None:
            first = columns[s.bin][s.source]
            visible[s.bin, s.start: s.start + s.length, first: first + sources[s.source][0][0].shape[-2]] = True
    visible = visible.to(some[0][0].device)
    layers = []
    for layer in range(len(some)):
        key, value = (some[layer][j].new_zeros(rows, some[layer][j].shape[-3], total, some[layer][j].shape[-1])
                      for j in (0, 1))
        for b, placed in enumerate(columns):
            for source, first in placed.items():
                k, v = sources[source][layer]
                key[b, :, first: first + k.shape[-2]] = k
                value[b, :, first: first + v.shape[-2]] = v
        layers.append((key, value, visible))
    return layers
