"""One table of bad inputs run through the real command line: each stops with a non-zero exit and a
one- or two-line error (no traceback) that names the file, row, field or option; no input file and
no earlier output changes.

A case writes what it needs under its own folder (copies of shared files included, so that the
check that nothing changed covers them) and returns the command's arguments.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import FAST_TRAINER, data_files_arg
from transformers import AutoModelForMaskedLM, AutoTokenizer

from lit_prompts.cli import main


@dataclass
class Inputs:
    """What cases build on: tiny backbones, the review files, and one trained run to copy from."""

    backbone: Callable[[str], str]
    reviews: dict[str, str]
    ner_files: dict[str, str]
    trained: Path  # a finished fit's version folder: checkpoints/ and prompt/


@dataclass
class Case:
    id: str
    make: Callable[[Path, Inputs], list[str]]  # (case folder, inputs) -> CLI arguments, subcommand first
    expect: str  # regular expression the error line must match


@pytest.fixture(scope="module")
def inputs(tiny_backbone, reviews, ner_files, tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("trained")
    main(["fit", *FAST_TRAINER, f"--trainer.default_root_dir={root}", *model_args(tiny_backbone("bert")),
          data_files_arg(reviews), "--trainer.max_epochs=1"])
    return Inputs(tiny_backbone, reviews, ner_files, root / "lightning_logs" / "version_0")


def model_args(backbone: str, method: str = "PromptTuning") -> list[str]:
    return [f"--model={method}", f"--model.backbone={backbone}", "--model.num_virtual_tokens=2", "--data.batch_size=8"]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def fit(folder: Path, inputs: Inputs, *extra: str, files: dict | None = None) -> list[str]:
    """A one-epoch fit on copies of the review files (or on ``files``) in the case's folder."""
    if files is None:
        files = {split: str(shutil.copy(inputs.reviews[split], folder)) for split in ("train", "validation")}
    return ["fit", *model_args(inputs.backbone("bert")), f"--data.data_files={json.dumps(files)}",
            "--trainer.max_epochs=1", *extra]


def copied_checkpoint(folder: Path, inputs: Inputs) -> Path:
    return Path(shutil.copy(next((inputs.trained / "checkpoints").glob("best-*.ckpt")), folder / "trained.ckpt"))


def damaged_checkpoint(folder: Path, inputs: Inputs, keep: float) -> Path:
    path = copied_checkpoint(folder, inputs)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def validate(folder: Path, inputs: Inputs, ckpt: Path, *extra: str, method: str = "PromptTuning") -> list[str]:
    files = {"validation": str(shutil.copy(inputs.reviews["validation"], folder))}
    return ["validate", *model_args(inputs.backbone("bert"), method), f"--data.data_files={json.dumps(files)}",
            f"--ckpt_path={ckpt}", *extra]


def other_weights(folder: Path, inputs: Inputs) -> str:
    """A copy of the tiny BERT with other weights of the same shape (a fine-tuned sibling)."""
    model = AutoModelForMaskedLM.from_pretrained(inputs.backbone("bert"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(folder / "other-bert")
    AutoTokenizer.from_pretrained(inputs.backbone("bert")).save_pretrained(folder / "other-bert")
    return str(folder / "other-bert")


def predict_in_place(folder: Path, inputs: Inputs) -> list[str]:
    unlabelled = str(shutil.copy(inputs.reviews["unlabelled"], folder))
    files = {"train": str(shutil.copy(inputs.reviews["train"], folder)), "test": unlabelled}
    return ["predict", *model_args(inputs.backbone("bert")), f"--data.data_files={json.dumps(files)}",
            f"--ckpt_path={copied_checkpoint(folder, inputs)}", f"--predictions.output={unlabelled}"]


# --- options, methods, checkpoints, outputs ----------------------------------------------------------
CLI_CASES = [
    Case("unknown-method", lambda d, i: [a.replace("=PromptTuning", "=PromtTuning") for a in fit(d, i)],
         r"unknown method 'PromtTuning'; known: .*PromptTuning.*Did you mean 'PromptTuning'"),
    Case("misspelled-option", lambda d, i: fit(d, i, "--model.num_virtual_tokenz=3"), r"'num_virtual_tokenz' is not accepted"),
    Case("option-of-wrong-type", lambda d, i: fit(d, i, "--model.num_virtual_tokens=many"), r"num_virtual_tokens.*many"),
    Case("config-yaml-syntax", lambda d, i: fit(d, i, "--config=" + str(write(d / "run.yaml", "model:\n  init_args: {lr: 1\n"))),
         r"config file .*run.yaml, line 3, column 1: expected ',' or '}'"),
    Case("config-file-missing", lambda d, i: fit(d, i, f"--config={d / 'nowhere.yaml'}"), r"config file .*nowhere.yaml does not exist"),
    Case("missing-backbone-folder", lambda d, i: [a.replace(i.backbone("bert"), str(d / "no-model")) for a in fit(d, i)],
         r"backbone folder '.*no-model' does not exist"),
    Case("learning-rate-not-positive", lambda d, i: fit(d, i, "--model.optimizer=AdamW", "--model.optimizer.lr=0"),
         r"model.init_args.optimizer.*lr"),
    Case("warmup-ratio-above-one", lambda d, i: fit(d, i, "--model.warmup_ratio=1.5"), r"warmup_ratio=1.5"),
    Case("empty-checkpoint", lambda d, i: validate(d, i, damaged_checkpoint(d, i, 0.0)),
         r"checkpoint .*trained.ckpt cannot be read \(empty, truncated"),
    Case("truncated-checkpoint", lambda d, i: validate(d, i, damaged_checkpoint(d, i, 0.5)),
         r"checkpoint .*trained.ckpt cannot be read \(empty, truncated"),
    Case("checkpoint-of-another-method", lambda d, i: validate(d, i, copied_checkpoint(d, i), method="PTuningV2"),
         r"trained.ckpt holds a PromptTuning .* but this command asks for .*PTuningV2"),
    Case("checkpoint-with-other-settings", lambda d, i: validate(d, i, copied_checkpoint(d, i), "--model.init=random"),
         r"trained.ckpt was trained with other model settings .*init: checkpoint 'vocab', command 'random'"),
    Case("checkpoint-on-another-architecture",
         lambda d, i: validate(d, i, copied_checkpoint(d, i), f"--model.backbone={i.backbone('roberta')}"),
         r"trained on backbone .*bert0', which differs from .*roberta0' \(model_type: saved bert vs loaded roberta"),
    Case("checkpoint-on-other-weights",
         lambda d, i: validate(d, i, copied_checkpoint(d, i), f"--model.backbone={other_weights(d, i)}"),
         r"trained on backbone .*bert0' \(weights digest \w+\), but .*other-bert' \(weights digest \w+\) has other "
         r"weights .*"
         r"LIT_PROMPTS_ALLOW_OTHER_BACKBONE=1"),
    Case("predictions-over-their-input", predict_in_place, r"predictions.output .*unlabelled.jsonl is the file predict reads"),
]

# --- data files (classification, NER, QA) ------------------------------------------------------------
def put(folder: Path, name: str, content: str | bytes) -> str:
    """Write a data file (text as UTF-8, bytes as they are) into the case's folder."""
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def fit_on(folder: Path, inputs: Inputs, files: dict[str, tuple[str, str | bytes]], *extra: str) -> list[str]:
    """``fit`` on files written for the case: split -> (file name, content); a list of them for several files."""
    written = {split: [put(folder, *f) for f in spec] if isinstance(spec, list) else put(folder, *spec)
               for split, spec in files.items()}
    return fit(folder, inputs, *extra, files=written)


def reviews_and(folder: Path, inputs: Inputs, split: str, name: str, content: str | bytes, *extra: str) -> list[str]:
    """``fit`` on a copy of the review train file, with one written file for ``split``."""
    files = {"train": str(shutil.copy(inputs.reviews["train"], folder)), split: put(folder, name, content)}
    return fit(folder, inputs, *extra, files=files)


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


NER_ARGS = ("--data.task=ner", "--data.task_format=token")
QA_ARGS = ("--data.task=qa", "--data.task_format=span", "--data.max_length=48", "--data.stride=16")
CONLL_TRAIN = "-DOCSTART- O\n\njohn B-PER\nvisited O\nparis B-LOC\n\nmary B-PER\nran O\n"
CONLL_DEV = "john B-PER\nsaid O\n\nthe O\nEU B-ORG\nagreed O\n"


def squad(*qas: dict) -> str:
    return json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "john went home", "qas": list(qas)}]}]})


def predict_empty(folder: Path, inputs: Inputs) -> list[str]:
    files = {"train": str(shutil.copy(inputs.reviews["train"], folder)), "test": put(folder, "unlabelled.jsonl", "")}
    return ["predict", *model_args(inputs.backbone("bert")), f"--data.data_files={json.dumps(files)}",
            f"--predictions.output={folder / 'predictions.jsonl'}"]


def multitask_with(folder: Path, inputs: Inputs, data_files: dict) -> list[str]:
    tasks = {"sentiment": {"data_files": {k: str(shutil.copy(inputs.reviews[v], folder)) for k, v in data_files.items()}}}
    return ["fit", "--model=MultiTaskPromptTuning", f"--model.backbone={inputs.backbone('bert')}",
            "--model.num_virtual_tokens=2", "--data=MultiTaskDataModule", f"--data.tasks={json.dumps(tasks)}",
            "--data.batch_size=8", "--trainer.max_epochs=1"]


DATA_CASES: list[Case] = [
    Case("empty-data-file", lambda d, i: fit_on(d, i, {"train": ("train.csv", "")}),
         r"train\.csv \(data_files 'train'\) is empty: it has no rows"),
    Case("header-without-rows", lambda d, i: reviews_and(d, i, "validation", "dev.tsv", "text\tlabel\n"),
         r"dev\.tsv \(data_files 'validation'\) has a header line \(text, label\) but no rows"),
    Case("file-not-utf-8",
         lambda d, i: fit_on(d, i, {"train": ("train.csv", "text,label\ncafé was good,positive\n".encode("latin-1"))}),
         r"train\.csv: byte 0xe9 at offset 14 \(line 2\) is not utf-8 text; set data\.init_args\.encoding to the file's"),
    Case("unknown-encoding", lambda d, i: fit(d, i, "--data.encoding=utf-9"),
         r"data\.init_args\.encoding='utf-9' is not an encoding Python knows"),
    Case("malformed-jsonl-line",
         lambda d, i: fit_on(d, i, {"train": ("train.jsonl", jsonl({"text": "good", "label": "positive"},
                                                                   {"text": "bad", "label": "negative"},
                                                                   '{"text": "fine", label: "positive"}'))}),
         r"train\.jsonl, line 3: not valid JSON \(Expecting property name enclosed in double quotes, column 18\)"),
    Case("jsonl-line-not-an-object",
         lambda d, i: fit_on(d, i, {"train": ("train.jsonl", jsonl({"text": "good", "label": "positive"}, ["bad", "negative"]))}),
         r"train\.jsonl, line 2: an array \(\[\"bad\", \"negative\"\]\) where each line must be one object"),
    Case("json-syntax-error",
         lambda d, i: fit_on(d, i, {"train": ("train.json", '[\n  {"text": "good", "label": "positive"},\n  {"text": "bad" "label": "negative"}\n]\n')}),
         r"train\.json, line 3, column 18: not valid JSON \(Expecting ',' delimiter\)"),
    Case("csv-row-with-extra-field",
         lambda d, i: fit_on(d, i, {"train": ("train.csv", "text,label\ngood,positive\nthe film, sadly, was bad,negative\n")}),
         r"train\.csv: cannot be read as CSV: .*Expected 2 fields in line 3, saw 4; a text holding commas"),
    Case("split-files-with-other-headers",
         lambda d, i: fit_on(d, i, {"train": [("a.csv", "text,label\ngood,positive\nbad,negative\n"),
                                              ("b.csv", "sentence,label\nfine,positive\n")]}),
         r"b\.csv has the columns \['sentence', 'label'\] but .*a\.csv has \['text', 'label'\]"),
    Case("empty-label-cell",
         lambda d, i: fit_on(d, i, {"train": ("train.csv", "text,label\ngood film,1\nbad film,0\nodd film,\nfine film,1\n")},
                             "--data.label_names=[negative, positive]"),
         r"train\.csv: row 2 has no label in column 'label'"),
    Case("dev-label-outside-inferred-labels",
         lambda d, i: fit_on(d, i, {"train": ("train.csv", "text,label\ngood,1\nbad,2\nfine,1\n"),
                                    "validation": ("dev.csv", "text,label\nawful,0\ngood,1\n")}),
         r"dev\.csv: row 0, column 'label': label 0 is not in the label set \['1', '2'\], which was read from "
         r".*train\.csv and is matched by value: give data\.init_args\.label_names with every label, e\.g\. \['0', '1', '2'\]"),
    Case("labels-mix-text-and-numbers",
         lambda d, i: fit_on(d, i, {"train": ("train.jsonl", jsonl({"text": "good", "label": "positive"}, {"text": "bad", "label": 0}))}),
         r"train\.jsonl: column 'label' mixes text and number labels \(row 0: 'positive', row 1: 0\)"),
    Case("text-column-holds-lists",
         lambda d, i: fit_on(d, i, {"train": ("train.jsonl", jsonl({"text": ["good"], "label": "positive"}, {"text": ["bad"], "label": "negative"}))}),
         r"train\.jsonl: row 0, column 'text' holds \['good'\], not a text; set data\.init_args\.text_column"),
    Case("misspelled-split-key",
         lambda d, i: fit(d, i, files={"train": str(shutil.copy(i.reviews["train"], d)), "valdation": str(shutil.copy(i.reviews["validation"], d))}),
         r"data\.init_args\.data_files names the split 'valdation', which no stage reads; the stages read "
         r"\['train', 'validation', 'test'\].*Did you mean 'validation'\?"),
    Case("split-key-named-after-a-stage",
         lambda d, i: fit(d, i, files={"train": str(shutil.copy(i.reviews["train"], d)), "predict": str(shutil.copy(i.reviews["unlabelled"], d))}),
         r"names the split 'predict', which no stage reads.*set data\.init_args\.splits=\{predict: predict\}"),
    Case("multitask-misspelled-split-key", lambda d, i: multitask_with(d, i, {"train": "train", "valdation": "validation"}),
         r"data\.init_args\.tasks\.sentiment\.data_files names the split 'valdation'.*Did you mean 'validation'\?"),
    Case("empty-predict-file", predict_empty, r"unlabelled\.jsonl \(data_files 'test'\) is empty: it has no rows"),
    Case("ner-dev-tag-missing-from-train",
         lambda d, i: fit_on(d, i, {"train": ("train.conll", CONLL_TRAIN), "validation": ("dev.conll", CONLL_DEV)}, *NER_ARGS),
         r"dev\.conll, sentence at line 4: tag 'B-ORG' is not in the tag set \['O', 'B-LOC', 'B-PER'\], which was read "
         r"from the tags of .*train\.conll .*data\.init_args\.label_names with every tag, "
         r"e\.g\. \['O', 'B-LOC', 'I-LOC', 'B-ORG', 'I-ORG', 'B-PER', 'I-PER'\]"),
    Case("ner-integer-tags-without-names",
         lambda d, i: fit_on(d, i, {"train": ("train.conll", CONLL_TRAIN),
                                    "validation": ("dev.jsonl", jsonl({"tokens": ["john", "ran"], "ner_tags": [2, 0]}))}, *NER_ARGS),
         r"dev\.jsonl: row 0: tag 2 is an integer id, but the tag set .* is matched by name: give data\.init_args\.label_names"),
    Case("ner-tokens-not-a-list",
         lambda d, i: fit_on(d, i, {"train": ("train.jsonl", jsonl({"tokens": "EU rejects it", "ner_tags": ["B-ORG", "O", "O"]}))}, *NER_ARGS),
         r"train\.jsonl: row 0: column 'tokens' holds 'EU rejects it', not a list"),
    Case("squad-question-without-question",
         lambda d, i: fit_on(d, i, {"train": ("train.json", squad({"id": "q1", "question": "who?", "answers": [{"text": "john", "answer_start": 0}]},
                                                                  {"id": "q2", "answers": [{"text": "home", "answer_start": 10}]}))}, *QA_ARGS),
         r"train\.json: data\[0\]\.paragraphs\[0\]\.qas\[1\] has no 'question' field \(it has \['answers', 'id'\]\)"),
    Case("squad-answer-start-as-text",
         lambda d, i: fit_on(d, i, {"train": ("train.json", squad({"id": "q1", "question": "who?", "answers": [{"text": "john", "answer_start": "0"}]}))}, *QA_ARGS),
         r"train\.json: record 0 \(id 'q1'\): answer_start '0' of answer 'john' is not a character offset"),
    Case("qa-answers-in-a-csv-cell",
         lambda d, i: fit_on(d, i, {"train": ("train.csv", "question,context,answers\nwho?,john went home,john\n")}, *QA_ARGS),
         r"train\.csv: record 0 \(id 0\): column 'answers' holds 'john'; it must hold \{text: .*use a json or jsonl file"),
]

CASES = CLI_CASES + DATA_CASES


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_error(case: Case, inputs: Inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LIT_PROMPTS_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "case"
    folder.mkdir()
    args = case.make(folder, inputs)
    before = snapshot(folder)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main([args[0], *FAST_TRAINER, f"--trainer.default_root_dir={tmp_path / 'run'}", *args[1:]])
    err = capsys.readouterr().err
    assert stopped.value.code not in (0, None)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("python -m lit_prompts")]
    assert len(errors) == 1, err[-3000:]
    assert re.search(case.expect, errors[0]), errors[0]
    after = snapshot(folder)
    assert {k: after.get(k) for k in before} == before, "an input or earlier output changed"


def test_debug_flag_shows_the_traceback(inputs, tmp_path, monkeypatch):
    monkeypatch.delenv("LIT_PROMPTS_DEBUG", raising=False)
    args = fit(tmp_path, inputs, "--model.warmup_ratio=1.5", "--debug")
    assert "--debug" in args
    with pytest.raises(ValueError, match="warmup_ratio=1.5"):
        main([args[0], *FAST_TRAINER, f"--trainer.default_root_dir={tmp_path / 'run'}", *args[1:]])

