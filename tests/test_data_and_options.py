"""Data sources and formats, architecture facts, and optimizer settings from YAML."""

from __future__ import annotations

import json
import logging
import warnings

import datasets
import pytest
import torch
from conftest import data_files_arg, review_rows, run_cli, write_jsonl

from lit_prompts import PromptDataModule
from lit_prompts.backbone import ArchitectureFacts, load_backbone, load_config

EXPECTED_FACTS = {  # (hidden, layers, heads, kv heads, encoder-decoder, decoder-only)
    "bert": (32, 2, 4, 4, False, False),
    "roberta": (32, 2, 4, 4, False, False),
    "distilbert": (32, 2, 4, 4, False, False),
    "mpnet": (32, 2, 4, 4, False, False),
    "gpt2": (32, 2, 4, 4, False, True),
    "llama": (32, 2, 4, 2, False, True),
    "t5": (32, 2, 4, 4, True, False),
}


@pytest.mark.parametrize("arch", EXPECTED_FACTS)
def test_architecture_facts(arch, tiny_backbone):
    facts = ArchitectureFacts.from_config(load_config(tiny_backbone(arch)))
    got = (facts.hidden_size, facts.num_layers, facts.num_attention_heads, facts.num_key_value_heads,
           facts.is_encoder_decoder, facts.is_decoder_only)
    assert got == EXPECTED_FACTS[arch]
    assert facts.head_dim == 8


def test_backbone_weights_missing_from_the_checkpoint_are_named_and_unused_ones_are_quiet(tiny_backbone, tmp_path):
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    transformers_logger = logging.getLogger("transformers.modeling_utils")
    transformers_logger.addHandler(handler)
    try:
        # The tiny BERT is saved as a masked LM: its head goes unused under a bare encoder, quietly.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_backbone(tiny_backbone("bert"), "head")
        assert not [w for w in caught if "not in its checkpoint" in str(w.message)]
        # A bare encoder's checkpoint lacks the masked-LM head that cloze needs: named, in one warning.
        load_backbone(tiny_backbone("bert"), "head").save_pretrained(tmp_path / "bare")
        with pytest.warns(UserWarning, match=r"'cloze'\): 6 weights are not in its checkpoint .*cls\.predictions\.bias.*masked-LM"):
            load_backbone(str(tmp_path / "bare"), "cloze")
    finally:
        transformers_logger.removeHandler(handler)
    assert not [m for m in logged if "LOAD REPORT" in m], "transformers' table is replaced by the warning"


def test_optimizer_and_schedule_from_yaml_see_only_trainable_tensors(tiny_backbone, reviews, tmp_path):
    config = tmp_path / "opt.yaml"
    config.write_text(
        "model:\n  init_args:\n    optimizer:\n      class_path: torch.optim.SGD\n      init_args: {lr: 0.5, momentum: 0.9}\n"
        "    lr_schedule: cosine\n    warmup_steps: 2\n"
    )
    cli = run_cli(
        "fit", "--model=PromptTuning", f"--model.backbone={tiny_backbone('bert')}", "--model.num_virtual_tokens=2",
        f"--config={config}", data_files_arg(reviews, ("train", "validation")), "--data.batch_size=8",
        "--trainer.max_epochs=2", root=tmp_path,
    )
    optimizer = cli.trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in params} == {id(p) for p in cli.model.trainable_parameters()}
    assert len(params) == 3  # prompt, head weight, head bias
    # cosine to zero after warmup: the last step's learning rate is below the peak
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 8 and optimizer.param_groups[0]["lr"] < 0.5
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "val/accuracy" in logged and "val/macro_f1" in logged


def pair_rows() -> list[dict]:
    return [
        {"premise": f"the movie was {w}", "hypothesis": f"it was {v}", "label": "same" if s else "different"}
        for w, v, s in [("good", "good", 1), ("bad", "good", 0), ("great", "great", 1), ("dull", "fun", 0)] * 3
    ]


@pytest.mark.parametrize("arch,fmt", [("bert", "head"), ("gpt2", "text_to_text"), ("t5", "text_to_text"), ("roberta", "cloze")])
def test_sentence_pairs(arch, fmt, tiny_backbone, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    kwargs = {"verbalizer": {"same": "yes", "different": "no"}} if fmt != "head" else {}
    dm = PromptDataModule(backbone=tiny_backbone(arch), task_format=fmt, data_files={"train": str(path)},
                          text_column="premise", text_pair_column="hypothesis", **kwargs)
    dm.setup("fit")
    assert dm.label_names == ["different", "same"]
    feature = dm.datasets["train"].features[0]
    text = dm.tokenizer.decode(feature["input_ids"])
    assert "movie" in text and "it was" in text
    if arch == "bert":
        assert 1 in feature["token_type_ids"], "the second segment is marked"
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 12


def test_hub_code_path_reads_classlabel_names(tiny_backbone, tmp_path):
    # load_dataset on a folder follows the same code path as a hub id (a DatasetDict of splits).
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    for split, n in [("train", 12), ("validation", 6)]:
        rows = review_rows(n, seed=5)
        data = {"sentence": [r["text"] for r in rows], "label": [int(r["label"] == "positive") for r in rows]}
        datasets.Dataset.from_dict(data, features=features).to_parquet(str(folder / f"{split}.parquet"))
    dm = PromptDataModule(backbone=tiny_backbone("bert"), dataset=str(folder), text_column="sentence")
    assert dm.label_names == ["neg", "pos"]
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 12 and len(dm.datasets["validation"]) == 6
    assert dm.datasets["train"].features[0]["label"] == 1  # first row is positive


def test_json_array_and_tsv_with_quotes(tiny_backbone, tmp_path):
    rows = review_rows(6, seed=0)
    (tmp_path / "train.json").write_text(json.dumps(rows))
    with open(tmp_path / "dev.tsv", "w") as f:  # an unbalanced quote must not swallow lines
        f.write('text\tlabel\n"the movie was good\tpositive\nthe film was bad\tnegative\n')
    dm = PromptDataModule(backbone=tiny_backbone("bert"),
                          data_files={"train": str(tmp_path / "train.json"), "validation": str(tmp_path / "dev.tsv")})
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 6 and len(dm.datasets["validation"]) == 2
    assert [f["label"] for f in dm.datasets["validation"].features] == [1, 0]
