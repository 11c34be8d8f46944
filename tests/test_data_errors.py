"""Data read as written: labels match by value unless configured or ClassLabel names make integer
ids indices, CSV cells keep their text, the ``encoding`` option reaches every reader."""

from __future__ import annotations

import json

import pytest
from conftest import write_jsonl

from lit_prompts import PromptDataModule


def module(backbone: str, files: dict, **kwargs) -> PromptDataModule:
    return PromptDataModule(backbone=backbone, data_files={k: str(v) for k, v in files.items()}, **kwargs)


def labels_of(dm: PromptDataModule, stage: str) -> list[int]:
    return [f["label"] for f in dm.datasets[stage].features]


def test_integer_labels_read_from_the_data_match_by_value(tiny_backbone, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,1\nbad,2\nfine,1\n")
    dev = tmp_path / "dev.csv"
    dev.write_text("text,label\nawful,2\ngreat,1\n")
    dm = module(tiny_backbone("bert"), {"train": train, "validation": dev})
    assert dm.label_names == ["1", "2"]
    dm.setup("fit")
    assert labels_of(dm, "train") == [0, 1, 0] and labels_of(dm, "validation") == [1, 0]

    # A 0 is the value 0, absent from the training labels: refused, never read as the index of '1'.
    dev.write_text("text,label\nawful,0\ngreat,1\n")
    dm = module(tiny_backbone("bert"), {"train": train, "validation": dev})
    with pytest.raises(ValueError, match=r"dev\.csv: row 0, column 'label': label 0 is not in the label set \['1', '2'\].*"
                                         r"label_names with every label, e\.g\. \['0', '1', '2'\]"):
        dm.setup("fit")


def test_configured_numeric_names_match_by_value_and_word_names_are_indexed(tiny_backbone, tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": "good", "label": 1}, {"text": "bad", "label": 2}])
    dm = module(tiny_backbone("bert"), {"train": path}, label_names=["1", "2"])
    dm.setup("fit")
    assert labels_of(dm, "train") == [0, 1]
    path = write_jsonl(tmp_path / "zero.jsonl", [{"text": "good", "label": 0}, {"text": "bad", "label": 1}])
    with pytest.raises(ValueError, match=r"zero\.jsonl: row 0, column 'label': label 0 is not in the label set \['1', '2'\]"):
        module(tiny_backbone("bert"), {"train": path}, label_names=["1", "2"]).setup("fit")
    dm = module(tiny_backbone("bert"), {"train": path}, label_names=["negative", "positive"])  # SST-2 style ids
    dm.setup("fit")
    assert dm.labels.by_index and labels_of(dm, "train") == [0, 1]


def test_integer_names_sort_as_numbers_and_minus_one_is_a_label(tiny_backbone, tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\na\t10\nb\t2\nc\t-1\nd\t1\n")
    dm = module(tiny_backbone("bert"), {"train": path})
    assert dm.label_names == ["-1", "1", "2", "10"]
    dm.setup("fit")
    assert labels_of(dm, "train") == [3, 2, 0, 1]


def test_csv_cells_are_kept_as_written_and_blanks_are_missing(tiny_backbone, tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("id,text,label\n007,NA,positive\n8,null,negative\n9,None,\n")
    dm = module(tiny_backbone("bert"), {"train": path}, id_column="id")
    with pytest.raises(ValueError, match=r"train\.csv: row 2 has no label in column 'label'"):
        dm.setup("fit")
    path.write_text("id,text,label\n007,NA,positive\n8,null,negative\n")
    dm = module(tiny_backbone("bert"), {"train": path}, id_column="id")
    dm.setup("fit")
    assert [f["id"] for f in dm.datasets["train"].features] == ["007", "8"]  # ids keep their zeros
    decoded = [dm.tokenizer.decode(f["input_ids"], skip_special_tokens=True) for f in dm.datasets["train"].features]
    assert decoded == ["na", "null"]  # texts, not missing values


def test_encoding_option_reaches_every_reader(tiny_backbone, tmp_path):
    def latin(name: str, text: str):
        (tmp_path / name).write_bytes(text.encode("latin-1"))
        return tmp_path / name

    bert = tiny_backbone("bert")
    csv_file = latin("train.csv", "text,label\ncafé,positive\nthé,negative\n")
    with pytest.raises(ValueError, match=r"train\.csv: byte 0xe9 at offset 14 \(line 2\) is not utf-8 text"):
        module(bert, {"train": csv_file}).setup("fit")
    for name, text in [("train.csv", "text,label\ncafé,positive\nthé,negative\n"),
                       ("train.tsv", "text\tlabel\ncafé\tpositive\nthé\tnegative\n"),
                       ("train.jsonl", '{"text": "café", "label": "positive"}\n{"text": "thé", "label": "negative"}\n')]:
        dm = module(bert, {"train": latin(name, text)}, encoding="latin-1")
        assert dm.reader.get("train").rows["text"] == ["café", "thé"], name
    conll = latin("train.conll", "café B-MISC\nbu O\n\nthé B-MISC\n")
    dm = module(bert, {"train": conll}, task="ner", task_format="token", encoding="latin-1")
    assert dm.reader.get("train").rows["tokens"] == [["café", "bu"], ["thé"]]
    squad = {"data": [{"title": "t", "paragraphs": [{"context": "café john", "qas": [
        {"id": "q", "question": "who?", "answers": [{"text": "john", "answer_start": 5}]}]}]}]}
    path = latin("train.json", json.dumps(squad, ensure_ascii=False))
    dm = module(bert, {"train": path}, task="qa", task_format="span", encoding="latin-1", max_length=32, stride=8)
    dm.setup("fit")
    assert dm.reader.get("train").rows["context"] == ["café john"]


def test_utf8_byte_order_mark_is_not_part_of_the_data(tiny_backbone, tmp_path):
    bom = "\ufeff"
    (tmp_path / "train.csv").write_text(bom + "text,label\ngood,positive\nbad,negative\n", encoding="utf-8")
    (tmp_path / "train.conll").write_text(bom + "-DOCSTART- O\n\njohn B-PER\n", encoding="utf-8")
    bert = tiny_backbone("bert")
    assert module(bert, {"train": tmp_path / "train.csv"}).reader.get("train").rows.column_names == ["text", "label"]
    ner = module(bert, {"train": tmp_path / "train.conll"}, task="ner", task_format="token")
    assert ner.reader.get("train").rows["tokens"] == [["john"]]


def test_data_files_keys_are_the_splits_the_stages_read(tiny_backbone, reviews):
    files = {"train": reviews["train"], "dev": reviews["validation"]}
    dm = module(tiny_backbone("bert"), files, splits={"validation": "dev"})
    dm.setup("fit")
    assert len(dm.datasets["validation"]) == 16
    with pytest.raises(ValueError, match=r"data_files names the split 'dev', which no stage reads.*splits=\{validation: dev\}"):
        module(tiny_backbone("bert"), files)


def test_one_answer_may_be_given_without_lists(tiny_backbone, tmp_path):
    rows = [{"id": "q", "question": "who?", "context": "john went home", "answers": {"text": "john", "answer_start": 0}}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = module(tiny_backbone("bert"), {"train": path}, task="qa", task_format="span", max_length=32, stride=8)
    dm.setup("fit")
    window = dm.datasets["train"].features[0]
    assert dm.tokenizer.decode(window["input_ids"][window["start"] : window["end"] + 1]) == "john"


def test_classlabel_ids_find_their_names_in_a_configured_label_set(tiny_backbone, tmp_path):
    """As validate / predict with a checkpoint: the label names come configured, the hub data holds ids."""
    import datasets

    folder = tmp_path / "stars"
    folder.mkdir()
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["1", "2", "3"])})
    datasets.Dataset.from_dict({"text": ["bad", "ok", "good"], "label": [0, 1, 2]}, features=features).to_parquet(
        str(folder / "train.parquet"))
    for configured, expected in [(None, [0, 1, 2]), (["1", "2", "3"], [0, 1, 2]), (["3", "2", "1"], [2, 1, 0])]:
        dm = PromptDataModule(backbone=tiny_backbone("bert"), dataset=str(folder), label_names=configured)
        dm.setup("fit")
        assert labels_of(dm, "train") == expected, configured
