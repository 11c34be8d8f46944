"""Bad input stops with an error that names the file, field, row or value."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from conftest import data_files_arg, review_rows, run_cli, write_jsonl

import lit_prompts
from lit_prompts import PromptDataModule, PromptTuning


def fit_args(backbone: str, files: dict, *extra: str) -> list[str]:
    return ["fit", "--model=PromptTuning", f"--model.backbone={backbone}", "--model.num_virtual_tokens=2",
            data_files_arg(files, splits=tuple(files)), "--trainer.max_epochs=1", *extra]


def cli_error(capsys, *args, root) -> str:
    with pytest.raises(SystemExit):
        run_cli(*args, root=root)
    return capsys.readouterr().err


def test_unknown_method_is_named(tiny_backbone, reviews, tmp_path, capsys):
    args = fit_args(tiny_backbone("bert"), {"train": reviews["train"]})
    args[1] = "--model=NoSuchMethod"
    assert "NoSuchMethod" in cli_error(capsys, *args, root=tmp_path)


def test_unknown_config_key_is_named(tiny_backbone, reviews, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  init_args:\n    num_virtual_tokenz: 4\n")
    args = fit_args(tiny_backbone("bert"), {"train": reviews["train"]}, f"--config={config}")
    assert "num_virtual_tokenz" in cli_error(capsys, *args, root=tmp_path)


def datamodule(backbone: str, path, **kwargs) -> PromptDataModule:
    return PromptDataModule(backbone=backbone, data_files={"train": str(path)}, **kwargs)


def test_missing_column_names_file_and_column(tiny_backbone, tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"sentence": "good", "label": "positive"}])
    with pytest.raises(KeyError, match=r"train\.jsonl: missing column 'text'.*'sentence'"):
        datamodule(tiny_backbone("bert"), path).setup("fit")


def test_label_outside_label_set_names_row_and_value(tiny_backbone, tmp_path):
    rows = review_rows(4, seed=0)
    rows[2]["label"] = "neutral"
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = datamodule(tiny_backbone("bert"), path, label_names=["negative", "positive"])
    with pytest.raises(ValueError, match=r"train\.jsonl: row 2, column 'label': label 'neutral' is not in the label set"):
        dm.setup("fit")


def test_integer_label_out_of_range(tiny_backbone, tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\ngood film\t1\nbad film\t2\n")
    dm = datamodule(tiny_backbone("bert"), path, text_column="sentence", label_names=["negative", "positive"])
    with pytest.raises(ValueError, match=r"train\.tsv: row 1, column 'label': label 2"):
        dm.setup("fit")


def test_empty_text_names_row(tiny_backbone, tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('text,label\n"fine",positive\n"  ",negative\n')
    with pytest.raises(ValueError, match=r"train\.csv: row 1, column 'text' is empty"):
        datamodule(tiny_backbone("bert"), path).setup("fit")


def test_overlong_texts_are_truncated_with_one_warning(tiny_backbone, tmp_path, caplog):
    rows = review_rows(6, seed=0)
    for row in rows[:4]:
        row["text"] = " ".join([row["text"]] * 20)
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = datamodule(tiny_backbone("gpt2"), path, max_length=16)
    with pytest.warns(UserWarning, match=r"train\.jsonl: 4 of 6 examples were longer than max_length=16") as record:
        dm.setup("fit")
    assert sum("were truncated" in str(w.message) for w in record) == 1
    assert max(len(f["input_ids"]) for f in dm.datasets["train"].features) == 16


def test_overlong_text_to_text_keeps_template_and_target(tiny_backbone, tmp_path):
    rows = [{"text": "good " * 100, "label": "positive"}, {"text": "bad", "label": "negative"}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = datamodule(tiny_backbone("gpt2"), path, task_format="text_to_text", template="{text} sentiment :", max_length=24)
    with pytest.warns(UserWarning, match="1 of 2 examples"):
        dm.setup("fit")
    source = dm.datasets["train"].features[0]["input_ids"]
    target_length = max(len(t) for t in dm.encoder.class_target_ids())
    assert len(source) + target_length <= 24
    assert dm.tokenizer.decode(source).endswith("sentiment :")


def test_multi_token_verbalizer_word_is_named(tiny_backbone, tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", review_rows(4, seed=0))
    dm = datamodule(tiny_backbone("bert"), path, task_format="cloze", verbalizer={"positive": "zzqx"})
    with pytest.raises(ValueError, match="verbalizer word 'zzqx' is"):
        dm.verbalizer_token_ids


def test_missing_data_file_is_named(tiny_backbone, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        datamodule(tiny_backbone("bert"), tmp_path / "nowhere.jsonl").setup("fit")


def test_checkpoint_from_another_backbone_is_refused(tiny_backbone, reviews, tmp_path):
    cli = run_cli(*fit_args(tiny_backbone("bert"), {"train": reviews["train"], "validation": reviews["validation"]}), root=tmp_path)
    best = cli.trainer.checkpoint_callback.best_model_path
    with pytest.raises(ValueError, match=r"trained on backbone .*bert.* differs from .*roberta.*model_type: saved bert vs loaded roberta"):
        lit_prompts.load(best, backbone=tiny_backbone("roberta"))
    exported = tmp_path / "lightning_logs" / "version_0" / "prompt"
    with pytest.raises(ValueError, match="prompt folder"):
        lit_prompts.load(exported, backbone=tiny_backbone("roberta"))


def test_checkpoint_missing_a_trainable_tensor_is_refused(tiny_backbone, reviews, tmp_path):
    cli = run_cli(*fit_args(tiny_backbone("bert"), {"train": reviews["train"], "validation": reviews["validation"]}), root=tmp_path)
    best = cli.trainer.checkpoint_callback.best_model_path
    checkpoint = torch.load(best, weights_only=True)
    del checkpoint["state_dict"]["formats.classification.head.1.bias"]
    torch.save(checkpoint, tmp_path / "broken.ckpt")
    with pytest.raises(KeyError, match=r"broken.ckpt lacks tensors.*formats\.classification\.head\.1\.bias"):
        lit_prompts.load(tmp_path / "broken.ckpt")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"init": "text"}, "init='text' needs init_text"),
        ({"task_format": "text_to_text"}, "needs a decoder or encoder-decoder backbone"),
        # Built in Python (no parser in between), typed choices and counts are still refused by name.
        ({"num_virtual_tokens": 0}, "num_virtual_tokens=0 must be a positive integer"),
        ({"init": "zeros"}, "init='zeros' is not one of 'random', 'vocab', 'text', 'labels'"),
        ({"pooling": "max"}, "pooling='max' is not one of 'backbone', 'auto', 'first', 'last', 'mean'"),
    ],
)
def test_bad_method_settings(tiny_backbone, kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromptTuning(backbone=tiny_backbone("bert"), label_names=["a", "b"], **kwargs)


@pytest.mark.parametrize(
    "setting,message",
    [
        ("--model.num_virtual_tokens=0", r'Parser key "num_virtual_tokens": Not of type PositiveInt: (0 )?does not conform'),
        ("--model.init=zeros", r'Parser key "init": Expected a typing\.Literal\[.*\]\. Got value: zeros'),
        ("--model.pooling=max", r'Parser key "pooling": Expected a typing\.Literal\[.*\]\. Got value: max'),
    ],
)
def test_bad_method_choices_are_refused_while_parsing(tiny_backbone, reviews, tmp_path, capsys, setting, message):
    """Typed choices and counts (Literal / PositiveInt): the CLI refuses them before building anything."""
    with pytest.raises(SystemExit) as stopped:
        run_cli(*fit_args(tiny_backbone("bert"), {"train": reviews["train"]}, setting), root=tmp_path)
    assert stopped.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_predict_log_names_output(tiny_backbone, reviews, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    files = {"train": reviews["train"], "validation": reviews["validation"]}
    cli = run_cli(*fit_args(tiny_backbone("bert"), files), root=tmp_path)
    assert "prompt saved to" in caplog.text and "best val/accuracy" in caplog.text
    assert json.loads((tmp_path / "lightning_logs" / "version_0" / "prompt" / "prompt.json").read_text())["class_path"].endswith(
        "PromptTuning"
    )
    assert cli.trainer.checkpoint_callback.best_model_score is not None


def test_max_length_plus_prompt_beyond_positions_is_refused(tiny_backbone, reviews, tmp_path):
    args = fit_args(tiny_backbone("bert"), {"train": reviews["train"]}, "--data.max_length=510")
    args[3] = "--model.num_virtual_tokens=4"
    with pytest.raises(ValueError, match=r"max_length=510 plus 4 virtual tokens exceeds the 512 positions"):
        run_cli(*args, "--debug", root=tmp_path)  # --debug: the exception itself, not the one-line report
