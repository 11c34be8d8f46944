"""Packing rows end to end (``lit_prompts.packing``): placement, the block-diagonal mask, and which
layer-prefix columns each query sees. That packed hidden states equal each prompt's own call is
tested on every architecture in test_composition.py."""

from __future__ import annotations

import torch

from lit_prompts.packing import Segment, block_mask, first_fit, packed_prefixes, place


def segments(lengths, sources=None):
    sources = sources or [None] * len(lengths)
    return [Segment(part=0, row=i, length=n, source=s) for i, (n, s) in enumerate(zip(lengths, sources))]


def test_first_fit_decreasing():
    placed = segments([5, 3, 2, 4, 1])
    assert first_fit(placed, 5) == 3
    assert [(s.bin, s.start) for s in placed] == [(0, 0), (2, 0), (2, 3), (1, 0), (1, 4)]


def test_place_picks_the_width_of_the_fewest_positions_unless_attention_makes_it_dear():
    placed = segments([4, 2, 1, 3])
    assert place(placed) == (2, 5)  # 4 + 1 | 3 + 2: 10 positions, against 3 rows of 4 (4 | 3 + 1 | 2)
    assert [(s.bin, s.start) for s in placed] == [(0, 0), (1, 3), (0, 4), (1, 0)]
    assert place(placed, attention=2.0) == (3, 4)  # 12 x (1 + 2 x 4) < 10 x (1 + 2 x 5)
    assert place(segments([5, 3, 2, 4, 1])) == (3, 5)


def test_place_never_overlaps_nor_overflows(seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(50):
        placed = segments(torch.randint(1, 40, (int(torch.randint(1, 20, (1,), generator=generator)),),
                                        generator=generator).tolist())
        rows, width = place(placed)
        used = torch.zeros(rows, width, dtype=torch.long)
        for s in placed:
            used[s.bin, s.start: s.start + s.length] += 1
            assert s.start + s.length <= width
        assert used.max() == 1 and used.sum() == sum(s.length for s in placed)
        assert rows <= len(placed)


def test_block_mask_keeps_attention_inside_each_segment():
    placed = segments([2, 3, 1])
    rows, width = first_fit(placed, 3), 3  # rows: the 3-long; the 2-long, then the 1-long
    mask = block_mask(placed, rows, width, causal=False, dtype=torch.float32, device=torch.device("cpu"))
    seen = mask[:, 0] == 0
    assert mask.shape == (rows, 1, width, width)
    expected = torch.zeros(rows, width, width, dtype=torch.bool)
    for s in placed:
        expected[s.bin, s.start: s.start + s.length, s.start: s.start + s.length] = True
    assert torch.equal(seen, expected)
    assert torch.all(mask[:, 0][~seen] == torch.finfo(torch.float32).min)
    causal = block_mask(placed, rows, width, causal=True, dtype=torch.float32, device=torch.device("cpu"))[:, 0] == 0
    assert torch.equal(causal, expected & torch.ones(width, width, dtype=torch.bool).tril())


def test_packed_prefixes_show_each_query_only_its_own_prompts_columns():
    key = {src: [(torch.full((1, n, 2), float(v)), torch.full((1, n, 2), -float(v)))] for src, n, v in
           [(("a",), 2, 1), (("b",), 3, 2)]}
    placed = segments([4, 2, 1, 3], [("a",), ("b",), None, ("a",)])
    rows, width = first_fit(placed, 4), 4  # rows: a's 4 | a's 3, the unprompted 1 | b's 2
    (keys, values, visible), = packed_prefixes(placed, rows, width, key)
    assert keys.shape == (3, 1, 3, 2) and visible.shape == (3, 4, 3)  # as many columns as b's, the most a row holds
    for s in placed:
        sees = visible[s.bin, s.start: s.start + s.length]
        if s.source is None:
            assert not sees.any()
        else:
            n = key[s.source][0][0].shape[-2]
            assert sees[:, :n].all() and not sees[:, n:].any()
            assert torch.equal(keys[s.bin, :, :n], key[s.source][0][0])
            assert torch.equal(values[s.bin, :, :n], key[s.source][0][1])
    assert packed_prefixes(placed, rows, width, {}) is None


def test_a_prompt_shared_by_segments_of_one_row_takes_its_columns_once():
    key = {("a",): [(torch.ones(1, 2, 2), torch.ones(1, 2, 2))], ("b",): [(torch.ones(1, 3, 2), torch.ones(1, 3, 2))]}
    placed = segments([4, 2, 2], [("b",), ("a",), ("a",)])
    rows, width = first_fit(placed, 4), 4  # 4 | 2 + 2
    (keys, _, visible), = packed_prefixes(placed, rows, width, key)
    assert (rows, width) == (2, 4)
    assert keys.shape[2] == 3  # row 0: b's 3 columns; row 1: a's 2 columns once, for both of its segments
    assert visible[1, :, :2].all() and not visible[1, :, 2:].any()
