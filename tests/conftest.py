"""Shared fixtures: tiny offline backbones, small data files, and the real CLI run in-process."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402

from lit_prompts.cli import main  # noqa: E402
from tiny_backbones import build_tiny_backbone  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Which task formats each architecture supports (what the end-to-end matrix runs).
FORMATS = {
    "bert": ("head", "cloze"),
    "roberta": ("head", "cloze"),
    "distilbert": ("head", "cloze"),
    "mpnet": ("head", "cloze"),
    "gpt2": ("head", "text_to_text"),
    "llama": ("head", "text_to_text"),
    "t5": ("head", "text_to_text"),
}
FAST_TRAINER = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1",
]


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """``tiny_backbone(arch)`` -> folder of a tiny random model, built once per session."""
    built: dict[str, Path] = {}

    def get(arch: str) -> str:
        if arch not in built:
            built[arch] = build_tiny_backbone(arch, tmp_path_factory.mktemp(arch))
        return str(built[arch])

    return get


def review_rows(n: int, seed: int, labelled: bool = True) -> list[dict]:
    rng = random.Random(seed)
    good = ["great", "good", "excellent", "wonderful", "amazing", "brilliant", "fun", "perfect"]
    bad = ["bad", "terrible", "awful", "boring", "horrible", "dull", "stupid", "poor"]
    things = ["movie", "film", "story", "plot", "acting", "music", "book", "product", "service"]
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = good if label == "positive" else bad
        filler = " really" * rng.randrange(4)  # lengths vary, so batches contain padding
        text = f"the {rng.choice(things)} was{filler} {rng.choice(words)} and the {rng.choice(things)} {rng.choice(words)} ."
        row = {"id": f"r{seed}-{i}", "text": text}
        if labelled:
            row["label"] = label
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def reviews(tmp_path_factory) -> dict[str, str]:
    """Small labelled train / validation / test files and an unlabelled predict file."""
    folder = tmp_path_factory.mktemp("reviews")
    return {
        "train": str(write_jsonl(folder / "train.jsonl", review_rows(32, seed=1))),
        "validation": str(write_jsonl(folder / "dev.jsonl", review_rows(16, seed=2))),
        "test": str(write_jsonl(folder / "test.jsonl", review_rows(16, seed=3))),
        "unlabelled": str(write_jsonl(folder / "unlabelled.jsonl", review_rows(8, seed=4, labelled=False))),
    }


def data_files_arg(files: dict[str, str], splits=("train", "validation", "test")) -> str:
    return "--data.data_files=" + json.dumps({s: files[s] for s in splits})


def run_cli(subcommand: str, *args: str, root: Path):
    """Run ``python -m lit_prompts SUBCOMMAND ...`` in this process (like torchtune's recipe tests).
    The fast CPU settings come first, so a test's own arguments (and configs) override them."""
    return main([subcommand, *FAST_TRAINER, f"--trainer.default_root_dir={root}", *args])
