"""NER: entity F1 equals seqeval, exact tag alignment per tokenizer family, prompt shifts, the
CLI end to end for every method and architecture, and bad input named by file and line."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import ner_sentences, run_cli, task_cases, write_conll, write_jsonl
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities

import lit_prompts
from lit_prompts import PromptDataModule, PromptTuning
from lit_prompts.ner_spans import entity_spans, linearize, parse_linearized
from lit_prompts.tasks.metrics import EntityF1
from lit_prompts.training import methods

TYPES = ["PER", "LOC", "ORG"]


def random_tags(rng: random.Random, length: int) -> list[str]:
    """Any tag sequence over the set, including I- after O and type switches inside a run."""
    return [rng.choice(["O", "O", *(f"{p}-{t}" for p in "BI" for t in TYPES)]) for _ in range(length)]


def test_entity_spans_and_f1_equal_seqeval_on_random_sequences():
    rng = random.Random(0)
    for _ in range(300):
        gold = [random_tags(rng, rng.randint(1, 12)) for _ in range(rng.randint(1, 6))]
        # Predictions: the gold tags with some positions replaced, so there is partial overlap.
        pred = [[t if rng.random() < 0.7 else rng.choice(random_tags(rng, 1)) for t in seq] for seq in gold]
        for seq in gold:
            assert [(t, s, e) for t, s, e in entity_spans(seq)] == get_entities(seq)
        metric = EntityF1()
        half = len(gold) // 2  # two updates, as over two batches
        metric.update(pred[:half], gold[:half])
        metric.update(pred[half:], gold[half:])
        result = metric.compute()
        expected = {"precision": precision_score(gold, pred), "recall": recall_score(gold, pred), "f1": f1_score(gold, pred)}
        for name, value in expected.items():
            assert result[name].item() == pytest.approx(value, abs=1e-6), name


def test_linearized_entities_parse_back_to_the_same_spans():
    for tokens, tags in ner_sentences(100, seed=5):
        text = linearize(tokens, tags)
        assert parse_linearized(text, tokens, {"PER", "LOC", "ORG", "MISC"}) == tags
    tokens = "EU rejects German call to boycott British lamb .".split()
    tags = ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]
    assert linearize(tokens, tags) == "EU [ORG]; German [MISC]; British [MISC]"
    assert linearize(tokens, ["O"] * 9) == "none"
    # Unknown types and words not in the sentence are dropped; repeated words take the next free run.
    assert parse_linearized("EU [ORG]; Mars [LOC]; lamb [FOOD]", tokens, {"ORG", "LOC"}) == ["B-ORG"] + ["O"] * 8
    assert parse_linearized("a [X]; a [X]", ["a", "b", "a"], {"X"}) == ["B-X", "O", "B-X"]


# Sub-token layout of "EU rejects German call" per tokenizer family, read by hand off each tiny
# tokenizer: the word each position belongs to (None: special token).
ALIGNMENT = {
    "bert": [None, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, None],  # WordPiece, lower-cased
    "roberta": [None, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, None],  # byte-level BPE, prefix space
    "gpt2": [0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3],  # byte-level BPE, prefix space, no BOS
    "llama": [None, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3],  # SentencePiece BPE with <s>
    "t5": [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, None],  # SentencePiece unigram
}


@pytest.mark.parametrize("arch", ALIGNMENT)
def test_tags_sit_on_the_first_sub_token_of_each_word(arch, tiny_backbone, tmp_path):
    words, tags = ["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]
    path = write_jsonl(tmp_path / "one.jsonl", [{"tokens": words, "ner_tags": tags}] * 2)
    dm = PromptDataModule(backbone=tiny_backbone(arch), task="ner", task_format="token",
                          data_files={"train": str(path)}, label_names=["O", "B-ORG", "B-MISC"])
    dm.setup("fit")
    batch = dm.collator(train=True)([dm.datasets["train"].features[0]])
    tag_ids = [dm.label_names.index(t) for t in tags]
    expected, previous = [], None
    for word in ALIGNMENT[arch]:
        expected.append(tag_ids[word] if word is not None and word != previous else -100)
        previous = word
    assert batch["labels"][0].tolist() == expected
    assert batch["input_ids"].shape[1] == len(ALIGNMENT[arch])


def test_input_prompt_positions_are_removed_and_labels_stay_aligned(tiny_backbone, ner_files):
    dm = PromptDataModule(backbone=tiny_backbone("bert"), task="ner", task_format="token",
                          data_files={"train": ner_files["train"]}, batch_size=4)
    dm.setup("fit")
    torch.manual_seed(0)
    model = PromptTuning(backbone=tiny_backbone("bert"), task="ner", task_format="token",
                         label_names=dm.label_names, num_virtual_tokens=3, init="random").eval()
    batch = next(iter(dm.train_dataloader()))
    logits = model.formats["ner"].token_logits(model.prompted("ner"), batch)
    assert logits.shape[:2] == batch["input_ids"].shape  # no scores for the 3 virtual positions
    # By hand: prompt in front of the embeddings, mask and token types extended, first 3 outputs dropped.
    embeds = model.backbone.model.get_input_embeddings()(batch["input_ids"])
    b = len(embeds)
    hidden = model.backbone.model(
        inputs_embeds=torch.cat([model.prompt.prompt.expand(b, -1, -1), embeds], 1),
        attention_mask=torch.cat([torch.ones(b, 3, dtype=torch.long), batch["attention_mask"]], 1),
        token_type_ids=torch.cat([torch.zeros(b, 3, dtype=torch.long), batch["token_type_ids"]], 1),
    ).last_hidden_state[:, 3:]
    torch.testing.assert_close(logits, model.formats["ner"].head(hidden))
    # Every word's tag is on exactly one position; specials and padding are ignored.
    assert [(row != -100).sum().item() for row in batch["labels"]] == [len(t) for t in batch["tokens"]]


def test_input_level_prompts_default_to_100_vectors_on_token_ner_and_20_elsewhere(tiny_backbone, tmp_path, monkeypatch):
    bert, tags = tiny_backbone("bert"), ["O", "B-PER", "I-PER"]
    for method in (PromptTuning, lit_prompts.PTuning):
        chosen = method(backbone=bert, task="ner", task_format="token", label_names=tags)
        assert chosen.prompt_length() == 100 == chosen.hparams.num_virtual_tokens
        assert method(backbone=bert, label_names=["negative", "positive"]).prompt_length() == 20
        given = method(backbone=bert, task="ner", task_format="token", label_names=tags, num_virtual_tokens=7)
        assert given.prompt_length() == 7
    # Saved settings hold the length the rule chose, so a checkpoint (whose method is rebuilt from its
    # settings) loads even after the rule changes; one whose settings held None would not.
    model = PromptTuning(backbone=bert, task="ner", task_format="token", label_names=tags)
    assert model.hparams.num_virtual_tokens == 100
    meta = {"class_path": model.class_path(), "format_version": 2, "backbone": model.fingerprint}
    checkpoint = {"state_dict": model.trainable_state_dict(), "hyper_parameters": dict(model.hparams), "lit_prompts": meta}
    torch.save(checkpoint, tmp_path / "chosen.ckpt")
    torch.save({**checkpoint, "hyper_parameters": {**model.hparams, "num_virtual_tokens": None}}, tmp_path / "rule.ckpt")
    monkeypatch.setitem(methods.INPUT_PROMPT_LENGTH_BY_FORMAT, ("ner", "token"), 30)  # a later rule
    torch.testing.assert_close(lit_prompts.load(tmp_path / "chosen.ckpt").prompt.prompt, model.prompt.prompt)
    with pytest.raises(ValueError, match=r"'prompt.prompt' has shape \(100, 32\), the method built from its settings needs \(30, 32\)"):
        lit_prompts.load(tmp_path / "rule.ckpt")


CASES, CASE_IDS = task_cases("token")


@pytest.mark.parametrize("method,arch,fmt", CASES, ids=CASE_IDS)
def test_ner_fit_and_predict_entities(method, arch, fmt, tiny_backbone, ner_files, tmp_path):
    args = [
        f"--model={method}", f"--model.backbone={tiny_backbone(arch)}", "--model.num_virtual_tokens=2",
        "--data.task=ner", f"--data.task_format={fmt}", "--data.batch_size=8", "--model.max_new_tokens=16",
    ]
    if method == "PrefixTuning":
        args.append("--model.reparam_hidden_size=16")
    files = json.dumps({"train": ner_files["train"], "validation": ner_files["validation"]})
    cli = run_cli("fit", *args, f"--data.data_files={files}", "--trainer.max_epochs=1", root=tmp_path)
    assert cli.trainer.checkpoint_callback.monitor == "val/f1"
    metrics = cli.trainer.callback_metrics
    assert {"val/precision", "val/recall", "val/f1"} <= set(metrics)
    # Tag set from the training data: O first, then by type, B before I (MISC is single words only).
    assert cli.model.hparams.label_names == ["O", "B-LOC", "I-LOC", "B-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]

    best = cli.trainer.checkpoint_callback.best_model_path
    output = tmp_path / "entities.jsonl"
    files = json.dumps({"train": ner_files["train"], "test": ner_files["unlabelled"]})
    run_cli("predict", *args, f"--data.data_files={files}", "--data.id_column=id", f"--ckpt_path={best}",
            f"--predictions.output={output}", root=tmp_path)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"s{i}" for i in range(6)]
    for row in rows:
        for entity in row["entities"]:  # character offsets point at the entity's text
            assert row["text"][entity["start"] : entity["end"]] == entity["text"]
            assert entity["type"] in {"PER", "LOC", "ORG", "MISC"}
    loaded = lit_prompts.load(best)
    assert loaded.hparams.task == "ner" and loaded.monitor == "val/f1"


def test_trained_tagger_predicts_the_gold_entities(tiny_backbone, ner_files, tmp_path):
    """A learnable task: PTuningV2 on the tiny BERT reaches a high F1 on held-out sentences."""
    files = json.dumps({"train": ner_files["train"], "validation": ner_files["validation"]})
    cli = run_cli("fit", "--model=PTuningV2", f"--model.backbone={tiny_backbone('bert')}", "--data.task=ner",
                  "--data.task_format=token", "--data.batch_size=4", "--model.num_virtual_tokens=4",
                  "--model.optimizer=AdamW", "--model.optimizer.lr=0.05", f"--data.data_files={files}",
                  "--trainer.max_epochs=12", root=tmp_path)
    # An untrained tagger scores about 0.1; the tiny WordPiece vocabulary spells most names letter by
    # letter, so only their first letter and context tell the type (0.74 here).
    assert cli.trainer.checkpoint_callback.best_model_score > 0.6


def bad_ner(tmp_path, tiny_backbone, path, **kwargs):
    dm = PromptDataModule(backbone=tiny_backbone("bert"), task="ner", task_format="token",
                          data_files={"train": str(path)}, **kwargs)
    dm.setup("fit")


def test_bad_ner_input_is_named(tiny_backbone, tmp_path):
    ragged = tmp_path / "ragged.conll"
    ragged.write_text("EU NNP B-ORG\nrejects VBZ\n")
    with pytest.raises(ValueError, match=r"ragged.conll, line 2: 2 columns, the file's other lines have 3"):
        bad_ner(tmp_path, tiny_backbone, ragged)

    uneven = write_jsonl(tmp_path / "uneven.jsonl", [{"tokens": ["a", "b"], "ner_tags": ["O", "O"]},
                                                      {"tokens": ["a", "b", "c"], "ner_tags": ["O", "B-PER"]}])
    with pytest.raises(ValueError, match=r"uneven.jsonl: row 1: 3 tokens but 2 tags"):
        bad_ner(tmp_path, tiny_backbone, uneven)

    not_bio = write_conll(tmp_path / "scheme.conll", [(["john", "ran"], ["B-PER", "O"]), (["x"], ["PER"])])
    with pytest.raises(ValueError, match=r"scheme.conll, sentence at line 6: tag 'PER' is not in the BIO scheme"):
        bad_ner(tmp_path, tiny_backbone, not_bio)

    outside = write_conll(tmp_path / "outside.conll", [(["john", "paris"], ["B-PER", "B-LOC"])])
    with pytest.raises(ValueError, match=r"outside.conll, sentence at line 3: tag 'B-LOC' is not in the tag set"):
        bad_ner(tmp_path, tiny_backbone, outside, label_names=["O", "B-PER", "I-PER"])

    with pytest.raises(ValueError, match=r"task 'ner' has no format 'head'"):
        PromptDataModule(backbone=tiny_backbone("bert"), task="ner", task_format="head", data_files={"train": str(outside)})


def test_hub_layout_with_classlabel_tags(tiny_backbone, ner_files, tmp_path):
    """As eriktks/conll2003 on the hub: tokens plus a Sequence(ClassLabel) of tag ids."""
    import datasets

    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    folder = tmp_path / "hub_ner"
    folder.mkdir()
    sentences = ner_sentences(10, seed=3)
    data = {"tokens": [t for t, _ in sentences], "ner_tags": [[names.index(g) for g in tags] for _, tags in sentences]}
    datasets.Dataset.from_dict(data, features=features).to_parquet(str(folder / "train.parquet"))
    dm = PromptDataModule(backbone=tiny_backbone("bert"), task="ner", task_format="token", dataset=str(folder))
    assert dm.label_names == names  # the hub's own order, ids kept
    dm.setup("fit")
    assert dm.datasets["train"].features[0]["tags"] == data["ner_tags"][0]


@pytest.mark.parametrize("arch", ("gpt2", "t5"))
def test_overlong_text_to_text_sentences_keep_the_template_and_targets_name_only_visible_words(arch, tiny_backbone, tmp_path):
    words = ["Mary", "Smith", "visited", "Berlin"] + ["and", "then", "the", "market"] * 10 + ["in", "Paris"]
    tags = ["B-PER", "I-PER", "O", "B-LOC"] + ["O"] * 40 + ["O", "B-LOC"]
    path = write_conll(tmp_path / "train.conll", [(words, tags), (words[:4], tags[:4])])
    dm = PromptDataModule(backbone=tiny_backbone(arch), task="ner", task_format="text_to_text",
                          data_files={"train": str(path)}, max_length=48)
    with pytest.warns(UserWarning, match="1 of 2 examples were longer than max_length=48"):
        dm.setup("fit")
    decode = lambda ids: dm.tokenizer.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
    long, short = dm.datasets["train"].features
    assert len(long["input_ids"]) <= 48 and decode(long["input_ids"]).endswith("Entities:")
    # Paris fell past the cut: the target names the entities the input still shows; the gold tags
    # that evaluation scores against stay whole.
    assert "paris" not in decode(long["input_ids"]).lower()
    assert decode(long["target_ids"]) == decode(short["target_ids"]) == decode(dm.tokenizer(" Mary Smith [PER]; Berlin [LOC]").input_ids)
    assert long["tags"] == [dm.label_names.index(t) for t in tags]
