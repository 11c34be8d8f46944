"""The head's pooling: ``backbone`` (the default) follows the pooling a sentence-transformers backbone
declares it was trained with, ``auto`` the architecture; saved settings hold the pooling chosen."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import data_files_arg, run_cli
from huggingface_hub import constants

import lit_prompts
from lit_prompts.backbone import declared_pooling

LABELS = ["negative", "positive"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def sentence_transformers_files(folder: Path, **flags) -> Path:
    """``modules.json`` and ``1_Pooling/config.json`` as sentence-transformers writes them, the Pooling
    module's flags set to ``flags`` (every other mode off)."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
    config = {"word_embedding_dimension": 32, **{f"pooling_mode_{m}": flags.get(m, False) for m in modes}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def sentence_bert(tiny_backbone, tmp_path) -> str:
    """The tiny BERT, as a sentence-transformers model trained with mean pooling."""
    folder = Path(shutil.copytree(tiny_backbone("bert"), tmp_path / "sentence-bert"))
    return str(sentence_transformers_files(folder, mean_tokens=True))


@pytest.mark.parametrize("flags,expected", [
    ({"mean_tokens": True}, "mean"),
    ({"cls_token": True}, "first"),
    ({"lasttoken": True}, "last"),
    ({"max_tokens": True}, None),  # a head cannot pool so
    ({"weightedmean_tokens": True}, None),
    ({"cls_token": True, "mean_tokens": True}, None),  # two vectors concatenated
    ({}, None),
])
def test_a_sentence_transformers_folder_declares_its_pooling(tmp_path, flags, expected):
    assert declared_pooling(str(sentence_transformers_files(tmp_path / "model", **flags))) == expected


def test_a_folder_without_a_pooling_module_declares_none(tiny_backbone, tmp_path):
    assert declared_pooling(tiny_backbone("bert")) is None
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "",
                                                      "type": "sentence_transformers.models.Transformer"}]))
    assert declared_pooling(str(folder)) is None


@pytest.mark.parametrize("text", ["{not json", '{"a": 1}', '[{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]'])
def test_an_unreadable_modules_file_is_named_and_pooling_falls_back(tmp_path, text):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "modules.json").write_text(text)
    with pytest.warns(UserWarning, match=r"modules\.json.*pooling by architecture instead"):
        assert declared_pooling(str(folder)) is None


def test_a_hub_repo_in_the_cache_declares_its_pooling(tmp_path, monkeypatch):
    """A repo id is read through huggingface_hub's cache (offline: the cache alone), subfolders included."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    storage = cache / "models--org--sentence-model"
    sentence_transformers_files(storage / "snapshots" / COMMIT, cls_token=True)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)
    assert declared_pooling("org/sentence-model") == "first"
    assert declared_pooling("org/not-cached") is None


# (T5: a head loads its encoder alone, an encoder like BERT's)
@pytest.mark.parametrize("arch,expected", [("bert", "first"), ("gpt2", "last"), ("t5", "first")])
def test_without_a_declared_pooling_the_architecture_chooses(tiny_backbone, arch, expected):
    method = lit_prompts.PromptTuning(backbone=tiny_backbone(arch), label_names=LABELS, num_virtual_tokens=2)
    assert method.hparams.pooling == expected
    assert method.formats["classification"].pooling == expected


def test_the_default_pools_as_the_backbone_was_trained_and_files_keep_the_choice(sentence_bert, tmp_path):
    torch.manual_seed(0)
    method = lit_prompts.PromptTuning(backbone=sentence_bert, label_names=LABELS, num_virtual_tokens=2)
    assert method.formats["classification"].pooling == "mean"
    assert method.hparams.pooling == "mean"  # what the checkpoint's hyper_parameters and an export record
    assert lit_prompts.PromptTuning(backbone=sentence_bert, label_names=LABELS, num_virtual_tokens=2,
                                    pooling="first").formats["classification"].pooling == "first"
    assert lit_prompts.PromptTuning(backbone=sentence_bert, label_names=LABELS, num_virtual_tokens=2,
                                    pooling="auto").formats["classification"].pooling == "first"
    method.export_prompt(tmp_path / "export")
    settings = json.loads((tmp_path / "export" / "prompt.json").read_text())
    assert settings["init_args"]["pooling"] == "mean"
    assert lit_prompts.load(tmp_path / "export").formats["classification"].pooling == "mean"
    # A file saved before ``backbone`` existed says ``auto``: it keeps the pooling it was trained with.
    settings["init_args"]["pooling"] = "auto"
    (tmp_path / "export" / "prompt.json").write_text(json.dumps(settings))
    assert lit_prompts.load(tmp_path / "export").formats["classification"].pooling == "first"


def test_only_a_head_reads_the_declared_pooling(sentence_bert):
    method = lit_prompts.PromptTuning(backbone=sentence_bert, task="ner", task_format="token",
                                      label_names=["O", "B-PER", "I-PER"], num_virtual_tokens=2)
    assert method.hparams.pooling == "first"  # the architecture's: no file was read for a format that pools nothing


def test_init_from_heads_trained_on_another_pooling_warns(sentence_bert, tmp_path):
    old = lit_prompts.PromptTuning(backbone=sentence_bert, label_names=LABELS, num_virtual_tokens=2, pooling="first")
    old.export_prompt(tmp_path / "first")
    method = lit_prompts.PromptTuning(backbone=sentence_bert, label_names=LABELS, num_virtual_tokens=2,
                                      init_from=str(tmp_path / "first"))
    with pytest.warns(UserWarning, match=r"pooled by 'first', this run pools by 'mean'.*--model.pooling=first"):
        method.apply_init_from()
    torch.testing.assert_close(method.formats["classification"].head.state_dict(),
                               old.formats["classification"].head.state_dict())


# ---- integration: a real fit -------------------------------------------------------------------


def test_fit_on_a_sentence_transformers_folder_records_the_choices_everywhere(sentence_bert, reviews, tmp_path):
    """Through the command line: the head pools by mean, and the checkpoint, the export and the logger's
    ``hparams.yaml`` all hold what the rules chose (``mean``; P-tuning's encoder ``mlp`` at 0.03x), not the rules."""
    cli = run_cli("fit", "--model=PTuning", f"--model.backbone={sentence_bert}", "--model.label_names=[negative,positive]",
                  "--model.num_virtual_tokens=2", "--data.batch_size=8", "--data.max_length=48",
                  data_files_arg(reviews, ("train", "validation")), "--trainer.max_epochs=1", root=tmp_path)
    assert cli.model.formats["classification"].pooling == "mean"
    run = tmp_path / "lightning_logs" / "version_0"
    checkpoint = torch.load(cli.trainer.checkpoint_callback.best_model_path, map_location="cpu", weights_only=True)
    export = json.loads((run / "prompt" / "prompt.json").read_text())["init_args"]
    logged = yaml.safe_load((run / "hparams.yaml").read_text())
    for saved in (checkpoint["hyper_parameters"], export, logged):
        assert (saved["pooling"], saved["encoder"], saved["encoder_lr_scale"]) == ("mean", "mlp", 0.03)
