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
from tiny_backbones import build_tiny_backbone  # noqa: E402

from lit_prompts.cli import main  # noqa: E402

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
INPUT_AND_DEEP_METHODS = ("PromptTuning", "PTuning", "PrefixTuning", "PTuningV2")


def task_cases(own_format: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(method, arch, format) for every method and architecture: the task's own format everywhere,
    plus text_to_text where the architecture generates; and their test ids."""
    cases = [(m, arch, fmt) for m in INPUT_AND_DEEP_METHODS for arch, formats in FORMATS.items()
             for fmt in (own_format, "text_to_text") if fmt == own_format or fmt in formats]
    return cases, [f"{m}-{a}-{f}" for m, a, f in cases]


FAST_TRAINER = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1",
]


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory) -> Path:
    """The encoded-data cache of this test session (read by lit_prompts.data.cache), never the user's
    own; tests that must start from an empty cache pass their own ``cache_dir``."""
    folder = tmp_path_factory.mktemp("data_cache")
    os.environ["LIT_PROMPTS_DATA_CACHE"] = str(folder)
    return folder


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


NER_POOLS = {
    "PER": [["john", "smith"], ["mary"], ["peter", "brown"], ["anna"]],
    "LOC": [["paris"], ["new", "york"], ["london"], ["berlin"]],
    "ORG": [["acme", "corp"], ["the", "bank"], ["reuters"]],
    "MISC": [["german"], ["english"], ["olympic"]],
}


def ner_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Short sentences with one to three entities of the four CoNLL types, in BIO tags."""
    rng = random.Random(seed)
    fillers = ["said", "the", "visited", "and", "met", "in", "with", "today", "news", "after"]
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(1, 3)):
            for _ in range(rng.randint(0, 2)):
                tokens.append(rng.choice(fillers)), tags.append("O")
            kind = rng.choice(sorted(NER_POOLS))
            words = rng.choice(NER_POOLS[kind])
            tokens += words
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        tokens.append("."), tags.append("O")
        out.append((tokens, tags))
    return out


def write_conll(path: Path, sentences) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""]
    for tokens, tags in sentences:
        lines += [f"{t} NN O {g}" for t, g in zip(tokens, tags)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def ner_files(tmp_path_factory) -> dict[str, str]:
    """CoNLL train / validation / test files and an unlabelled jsonl (tokens only) to predict."""
    folder = tmp_path_factory.mktemp("ner")
    unlabelled = [{"id": f"s{i}", "tokens": t} for i, (t, _) in enumerate(ner_sentences(6, seed=14))]
    return {
        "train": str(write_conll(folder / "train.conll", ner_sentences(32, seed=11))),
        "validation": str(write_conll(folder / "dev.conll", ner_sentences(16, seed=12))),
        "test": str(write_conll(folder / "test.conll", ner_sentences(16, seed=13))),
        "unlabelled": str(write_jsonl(folder / "unlabelled.jsonl", unlabelled)),
    }


def squad_articles(n: int, seed: int) -> dict:
    """SQuAD-layout json: each paragraph tells who went where; questions ask for the person or the
    place. Filler sentences make contexts long enough to need several windows."""
    rng = random.Random(seed)
    people = [" ".join(p) for p in NER_POOLS["PER"]]
    places = [" ".join(p) for p in NER_POOLS["LOC"]]
    filler = "the news said that the market was quiet today and the team won the game ."
    articles = []
    for a in range(n):
        paragraphs = []
        for p in range(2):
            person, place = rng.choice(people), rng.choice(places)
            fact = f"{person} visited {place} after the election ."
            context = " ".join([filler] * rng.randint(0, 3) + [fact] + [filler] * rng.randint(0, 3))
            at = context.index(fact)
            qas = [
                {"id": f"a{a}p{p}who", "question": f"who visited {place} ?", "answers": [{"text": person, "answer_start": at}]},
                {"id": f"a{a}p{p}where", "question": f"where did {person} go ?",
                 "answers": [{"text": place, "answer_start": at + len(person) + len(" visited ")},
                             {"text": f"{place} after", "answer_start": at + len(person) + len(" visited ")}]},
            ]
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": f"article {a}", "paragraphs": paragraphs})
    return {"version": "1.1", "data": articles}


@pytest.fixture(scope="session")
def squad_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("squad")
    out = {}
    for split, (n, seed) in {"train": (4, 21), "validation": (2, 22)}.items():
        (folder / f"{split}.json").write_text(json.dumps(squad_articles(n, seed)))
        out[split] = str(folder / f"{split}.json")
    return out


def data_files_arg(files: dict[str, str], splits=("train", "validation", "test")) -> str:
    return "--data.data_files=" + json.dumps({s: files[s] for s in splits})


def run_cli(subcommand: str, *args: str, root: Path):
    """Run ``python -m lit_prompts SUBCOMMAND ...`` in this process (like torchtune's recipe tests).
    The fast CPU settings come first, so a test's own arguments (and configs) override them."""
    return main([subcommand, *FAST_TRAINER, f"--trainer.default_root_dir={root}", *args])


def _runs_the_cli(code, module_globals: dict, seen: set) -> bool:
    """Whether a test's code calls ``run_cli``, directly or through helpers of its own module."""
    if "run_cli" in code.co_names:
        return True
    for const in code.co_consts:
        if hasattr(const, "co_names") and _runs_the_cli(const, module_globals, seen):
            return True
    for name in code.co_names:
        helper = module_globals.get(name)
        inner = getattr(helper, "__code__", None)
        if inner is not None and name not in seen and getattr(helper, "__module__", None) == module_globals.get("__name__"):
            seen.add(name)
            if _runs_the_cli(inner, module_globals, seen):
                return True
    return False


def pytest_collection_modifyitems(config, items):
    """Tests that run the CLI (a real fit, validate or predict) form the integration tier; the rest,
    ``pytest -m "not integration"``, is the fast unit tier."""
    for item in items:
        function = getattr(item, "function", None)
        if function is not None and _runs_the_cli(function.__code__, function.__globals__, set()):
            item.add_marker(pytest.mark.integration)
