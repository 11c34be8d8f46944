"""The on-disk cache of encoded splits: reused without reading or tokenizing, keyed by what the
features depend on, rebuilt (never read) when damaged, never written from bad data, and giving back
batches identical to the in-memory encoding for every task and format."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from conftest import ner_sentences, review_rows, write_jsonl
from transformers import PreTrainedTokenizerBase

import lit_prompts.data.sources as sources
from lit_prompts import PromptDataModule
from lit_prompts.data.arrow_features import ArrowSplit, features_to_arrow
from lit_prompts.data.cache import MANIFEST, SplitCache
from lit_prompts.data.multitask import MultiTaskDataModule


class Calls:
    """Counts calls of a function it wraps (tokenizer calls, encodes, file reads, Arrow loads)."""

    def __init__(self, monkeypatch, owner, name: str):
        self.count, original = 0, getattr(owner, name)

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def reviews_module(backbone: str, files: dict, cache_dir: Path | None, **options) -> PromptDataModule:
    return PromptDataModule(backbone=backbone, data_files=files, batch_size=4, cache=cache_dir is not None,
                            cache_dir=str(cache_dir) if cache_dir else None, **options)


def entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in (cache_dir / "splits").glob("*") if not p.name.startswith(".tmp-"))


def test_a_second_setup_reads_nothing_and_tokenizes_nothing(tiny_backbone, reviews, tmp_path, monkeypatch):
    files = {"train": reviews["train"], "validation": reviews["validation"]}
    first = reviews_module(tiny_backbone("bert"), files, tmp_path)  # label names come from the data
    first.setup("fit")
    assert len(entries(tmp_path)) == 2 and len(list((tmp_path / "labels").glob("*.json"))) == 1

    tokenizer_calls = Calls(monkeypatch, PreTrainedTokenizerBase, "__call__")
    reads = Calls(monkeypatch, sources, "read_files")
    encodes = Calls(monkeypatch, PromptDataModule, "encode")
    second = reviews_module(tiny_backbone("bert"), files, tmp_path)
    second.setup("fit")
    assert (tokenizer_calls.count, reads.count, encodes.count) == (0, 0, 0)
    assert second.label_names == first.label_names == ["negative", "positive"]
    for stage in ("train", "validation"):
        assert second.datasets[stage].features == first.datasets[stage].features


@pytest.mark.parametrize("change", [{"max_length": 12}, {"template": "Review: {text} It was {mask} ."}])
def test_a_changed_setting_encodes_again(change, tiny_backbone, reviews, tmp_path, monkeypatch):
    files = {"train": reviews["train"]}
    settings = dict(task_format="cloze", label_names=["negative", "positive"])
    reviews_module(tiny_backbone("bert"), files, tmp_path, **settings).setup("fit")
    encodes = Calls(monkeypatch, PromptDataModule, "encode")
    changed = reviews_module(tiny_backbone("bert"), files, tmp_path, **{**settings, **change})
    changed.setup("fit")
    assert encodes.count == 1 and len(entries(tmp_path)) == 2
    reviews_module(tiny_backbone("bert"), files, tmp_path, **{**settings, **change}).setup("fit")
    assert encodes.count == 1, "the changed setting's entry is reused in turn"


def damage(entry: Path, how: str) -> None:
    arrow = next(entry.glob("*.arrow"))
    if how == "truncated arrow file":
        arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    elif how == "bytes changed in place":
        data = bytearray(arrow.read_bytes())
        data[len(data) // 2] ^= 0xFF
        arrow.write_bytes(bytes(data))
    elif how == "missing state file":
        (entry / "state.json").unlink()
    elif how == "missing manifest":  # what a write interrupted before its last file would leave
        (entry / MANIFEST).unlink()
    elif how == "garbled manifest":
        (entry / MANIFEST).write_text("{not json")
    elif how == "manifest without its file list":
        manifest = json.loads((entry / MANIFEST).read_text())
        del manifest["files"]
        (entry / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["truncated arrow file", "bytes changed in place", "missing state file",
                                 "missing manifest", "garbled manifest", "manifest without its file list"])
def test_a_damaged_entry_is_rebuilt_with_a_warning_and_never_read(how, tiny_backbone, reviews, tmp_path, monkeypatch):
    files = {"train": reviews["train"]}
    first = reviews_module(tiny_backbone("bert"), files, tmp_path)
    first.setup("fit")
    expected = first.datasets["train"].features
    damage(entries(tmp_path)[0], how)

    loads = Calls(monkeypatch, datasets, "load_from_disk")
    encodes = Calls(monkeypatch, PromptDataModule, "encode")
    again = reviews_module(tiny_backbone("bert"), files, tmp_path)
    with pytest.warns(UserWarning, match=r"data cache entry .* is damaged .*: it is removed and built again"):
        again.setup("fit")
    assert encodes.count == 1
    assert loads.count == 1, "only the rebuilt entry is loaded"
    assert again.datasets["train"].features == expected


def test_an_interrupted_write_leaves_no_entry(tiny_backbone, reviews, tmp_path, monkeypatch):
    files = {"train": reviews["train"]}

    def killed(self, path, **kwargs):
        Path(path, "data-00000-of-00001.arrow").write_bytes(b"half")
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(datasets.Dataset, "save_to_disk", killed)
        with pytest.raises(KeyboardInterrupt):
            reviews_module(tiny_backbone("bert"), files, tmp_path).setup("fit")
    assert entries(tmp_path) == [] and list((tmp_path / "splits").iterdir()) == []
    fresh = reviews_module(tiny_backbone("bert"), files, tmp_path)
    fresh.setup("fit")
    assert len(fresh.datasets["train"]) == 32


def test_bad_data_is_reported_by_file_row_and_column_and_leaves_no_entry(tiny_backbone, tmp_path):
    rows = review_rows(6, seed=0)
    rows[4]["text"] = " "
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    cache_dir = tmp_path / "cache"
    module = reviews_module(tiny_backbone("bert"), {"train": str(path)}, cache_dir)
    module.prepare_data()  # rank 0 alone: it must not stop while the other ranks wait at the barrier
    with pytest.raises(ValueError, match=r"train\.jsonl: row 4, column 'text' is empty"):
        module.setup("fit")  # every rank
    assert not (cache_dir / "splits").exists() or entries(cache_dir) == []
    assert not (cache_dir / "labels").exists()


# --- the cache gives back exactly what the encoders made --------------------------------------

def test_keys_missing_from_some_rows_and_tuples_come_back_as_they_were():
    features = [{"id": "a", "tags": None, "windows": [{"offsets": [None, (0, 3)], "start": 1, "end": 1}]},
                {"id": "b", "tags": [1, 0], "target_ids": [5], "windows": [{"offsets": [(1, 2)]}, {"offsets": []}]}]
    rows, shape = features_to_arrow(features)
    assert shape.to_json() == {"optional": ["target_ids", "windows[].end", "windows[].start"],
                               "tuples": ["windows[].offsets[]"]}
    split = ArrowSplit(rows, shape)
    assert_same(split.features, features)
    assert_same(split.__getitems__([1, 0]), [features[1], features[0]])


def test_features_arrow_cannot_tell_apart_stay_in_memory(tmp_path):
    features = [{"id": 0, "tags": None}, {"id": 1}]  # None in one row, missing in the other
    with pytest.warns(UserWarning, match=r"split 'train': the encoded split is kept in memory, not cached: .*'tags'"):
        assert SplitCache(tmp_path).store({"stage": "train"}, features, [], "split 'train'") is None
    assert not (tmp_path / "splits").exists()


def assert_same(a, b, where: str = "batch") -> None:
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def loaders(module) -> dict:
    found = {"train": module.train_dataloader(), "validation": module.val_dataloader()}
    if hasattr(module, "test_dataloader") and "test" in getattr(module, "datasets", {}):
        found["test"] = module.test_dataloader()
    if "predict" in getattr(module, "datasets", {}):
        found["predict"] = module.predict_dataloader()
    return found


def assert_same_batches(memory, cached) -> None:
    expected, got = loaders(memory), loaders(cached)
    assert expected.keys() == got.keys()
    for stage in expected:
        for n, (a, b) in enumerate(zip(_as_list(expected[stage]), _as_list(got[stage]), strict=True)):
            assert_same(list(a), list(b), f"{stage} loader {n}")


def _as_list(loader_or_loaders):
    return loader_or_loaders if isinstance(loader_or_loaders, list) else [loader_or_loaders]


@pytest.fixture(scope="module")
def partly_labelled(tmp_path_factory, squad_files) -> dict:
    """Predict files where some rows have targets and some none: keys missing from some rows."""
    folder = tmp_path_factory.mktemp("partly_labelled")
    sentences = [{"id": f"s{i}", "tokens": t, **({"ner_tags": g} if i % 2 else {})}
                 for i, (t, g) in enumerate(ner_sentences(6, seed=31))]
    squad = json.loads(Path(squad_files["validation"]).read_text())
    questions = [{"id": q["id"], "question": q["question"], "context": p["context"],
                  "answers": {"text": [a["text"] for a in q["answers"]], "answer_start": [a["answer_start"] for a in q["answers"]]}
                  if i % 2 else None}
                 for a in squad["data"] for p in a["paragraphs"] for i, q in enumerate(p["qas"])]
    return {"ner": str(write_jsonl(folder / "ner.jsonl", sentences)), "qa": str(write_jsonl(folder / "qa.jsonl", questions))}


CASES = {  # (task, format): backbone, options
    ("classification", "head"): ("bert", {}),
    ("classification", "cloze"): ("bert", {"template": "[P:2] {text} [P:1] It was {mask} ."}),
    ("classification", "text_to_text"): ("gpt2", {}),
    ("ner", "token"): ("roberta", {}),
    ("ner", "text_to_text"): ("t5", {}),
    ("qa", "span"): ("bert", {"max_length": 48, "stride": 16}),
    ("qa", "text_to_text"): ("gpt2", {"max_length": 64}),
}


@pytest.mark.parametrize("task,task_format", list(CASES), ids=[f"{t}-{f}" for t, f in CASES])
@pytest.mark.parametrize("group_by_length", [False, True], ids=["shuffled", "grouped"])
def test_cached_batches_equal_in_memory_batches(task, task_format, group_by_length, tiny_backbone, reviews, ner_files,
                                                squad_files, partly_labelled, tmp_path):
    arch, options = CASES[(task, task_format)]
    files = {"classification": {**reviews, "predict": reviews["unlabelled"]},
             "ner": {**ner_files, "predict": partly_labelled["ner"]},
             "qa": {**squad_files, "predict": partly_labelled["qa"]}}[task]
    data_files = {s: files[s] for s in ("train", "validation", "test", "predict") if s in files}
    modules = [PromptDataModule(backbone=tiny_backbone(arch), task=task, task_format=task_format, data_files=data_files,
                                splits={"predict": "predict"}, batch_size=4, group_by_length=group_by_length,
                                cache=cached, cache_dir=str(tmp_path), **options) for cached in (False, True)]
    for module in modules:
        module.setup(None)
    memory, cached = modules
    assert set(memory.datasets) == set(cached.datasets) >= {"train", "validation", "predict"}
    for stage in memory.datasets:
        assert type(cached.datasets[stage]).__name__ == "ArrowSplit"
        assert_same(memory.datasets[stage].features, cached.datasets[stage].features, f"{stage} features")
    assert_same_batches(memory, cached)


def test_multitask_batches_from_the_cache_equal_in_memory_batches(tiny_backbone, reviews, ner_files, tmp_path):
    def multitask(cache: bool) -> MultiTaskDataModule:
        shared = {"cache": cache, "cache_dir": str(tmp_path)}
        return MultiTaskDataModule(backbone=tiny_backbone("bert"), batch_size=4, tasks={
            "sentiment": {"task": "classification", "data_files": {s: reviews[s] for s in ("train", "validation")}, **shared},
            "entities": {"task": "ner", "task_format": "token", "data_files": {s: ner_files[s] for s in ("train", "validation")},
                         **shared},
        })

    memory, cached = multitask(False), multitask(True)
    for module in (memory, cached):
        module.prepare_data()
        module.setup("fit")
    assert type(cached.modules["entities"].datasets["train"]).__name__ == "ArrowSplit"
    assert_same_batches(memory, cached)
