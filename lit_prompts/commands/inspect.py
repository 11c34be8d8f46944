"""``python -m lit_prompts inspect PROMPT [PROMPT ...]``: what trained prompts learned.

Per prompt: the nearest vocabulary tokens of each virtual token (cosine), its norm against the input
embeddings' median norm, per-layer norms of deep prompts and prefixes, and the drift from the
initialisation (checkpoints of lit_prompts fits record it); for several prompts, their cosine
similarity. ``--json`` prints the whole summary (``lit_prompts.inspection.inspect_methods``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..hub import is_repo_id
from ..inspection import inspect_methods, render_report
from ..loading import load


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lit_prompts inspect", description=(
        "What trained prompts learned: each virtual token's nearest vocabulary tokens and norm, per-layer norms of "
        "deep prompts and prefixes, drift from the initialisation, and the cosine similarity of several prompts."))
    p.add_argument("prompts", nargs="+", metavar="PROMPT",
                   help="exported prompt folder, .ckpt checkpoint or Hub repo id (org/name[@revision])")
    p.add_argument("--top-k", type=int, default=5, help="nearest vocabulary tokens per virtual token (default 5)")
    p.add_argument("--json", action="store_true", help="print the whole summary as JSON")
    p.add_argument("--backbone", help="load the backbone from here instead of the name stored with the prompt")
    p.add_argument("--trust-code", action="store_true", help="allow a method class that lit_prompts does not know")
    p.add_argument("--allow-other-weights", action="store_true",
                   help="use a backbone whose weights differ from those the prompt was trained on")
    return p


def check_exists(name: str) -> str:
    if Path(name).exists() or is_repo_id(name):
        return name
    raise FileNotFoundError(f"inspect: {name} does not exist (give an exported prompt folder, a .ckpt checkpoint "
                            "or a Hub repo id)")


def main(args: list[str]) -> None:
    options = parser().parse_args(args)
    if options.top_k < 1:
        raise ValueError(f"inspect: --top-k {options.top_k} must be at least 1")
    overrides = {"backbone": options.backbone} if options.backbone else {}
    methods = [load(check_exists(name), trust_code=options.trust_code, allow_other_weights=options.allow_other_weights,
                    **overrides) for name in options.prompts]
    report = inspect_methods(methods, list(options.prompts), options.top_k)
    print(json.dumps(report, indent=2) if options.json else render_report(report))
