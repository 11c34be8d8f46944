"""The trained prompts frozen in tests/fixtures/release_0_1, how they were trained, and the rows they
predict (shared by the fixture writer and tests/test_compatibility.py)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import ner_sentences, review_rows, squad_articles, write_conll, write_jsonl
from lightning.pytorch import Trainer

from lit_prompts.data import MultiTaskDataModule, PromptDataModule

P = 4
MIXED_TASKS = {"sentiment": {"task": "classification", "task_format": "head"},
               "entities": {"task": "ner", "task_format": "token"},
               "questions": {"task": "qa", "task_format": "span", "max_length": 64, "stride": 16}}


def _reviews(files) -> str:
    return json.dumps({"train": str(files["reviews_train"]), "validation": str(files["reviews_dev"])})


CASES = {
    # An exported prompt: plain prompt tuning with a classification head.
    "prompt_tuning_bert_head": {
        "kind": "export", "arch": "bert",
        "fit_args": lambda backbone, files: [
            "--model=PromptTuning", f"--model.backbone={backbone}", f"--model.num_virtual_tokens={P}",
            f"--data.data_files={_reviews(files)}", "--data.id_column=id", "--data.batch_size=8"],
        "data": {"task": "classification", "task_format": "head", "label_names": ["positive", "negative"]},
    },
    # An exported prompt whose training-only MLP was folded away at export (reloads as reparameterize: false).
    "p_tuning_v2_gpt2_text_to_text": {
        "kind": "export", "arch": "gpt2",
        "fit_args": lambda backbone, files: [
            "--model=PTuningV2", f"--model.backbone={backbone}", f"--model.num_virtual_tokens={P}",
            "--model.reparameterize=true", "--model.reparam_hidden_size=16",
            f"--data.data_files={_reviews(files)}", "--data.id_column=id", "--data.batch_size=8",
            "--data.task_format=text_to_text", "--data.template=review : {text} sentiment :"],
        "data": {"task": "classification", "task_format": "text_to_text", "label_names": ["positive", "negative"],
                 "template": "review : {text} sentiment :"},
    },
    # A training checkpoint of a multi-task run over three tasks with per-task heads.
    "multitask_bert_mpt": {
        "kind": "checkpoint", "arch": "bert",
        "fit_args": lambda backbone, files: [
            "--model=MultiTaskPromptTuning", f"--model.backbone={backbone}", "--model.variant=mpt",
            "--model.placement=layers", f"--model.num_virtual_tokens={P}", "--data=MultiTaskDataModule",
            "--data.batch_size=8", "--data.sampling=round_robin", "--data.tasks=" + json.dumps(mixed_tasks(files))],
        "data": "mixed",
    },
}


def mixed_rows() -> list[dict]:
    sentiment = [{"task": "sentiment", **r} for r in review_rows(4, seed=31, labelled=False)]
    entities = [{"task": "entities", "id": f"n{i}", "tokens": t} for i, (t, _) in enumerate(ner_sentences(4, seed=32))]
    questions = [{"task": "questions", "id": q["id"], "question": q["question"], "context": p["context"]}
                 for p in squad_articles(1, seed=33)["data"][0]["paragraphs"] for q in p["qas"]]
    return [row for group in zip(sentiment, entities, questions) for row in group]


def write_files(folder: Path) -> dict[str, Path]:
    """The training files every case was fitted on (the same rows each time: fixed seeds)."""
    files = {
        "reviews_train": write_jsonl(folder / "reviews_train.jsonl", review_rows(16, seed=1)),
        "reviews_dev": write_jsonl(folder / "reviews_dev.jsonl", review_rows(8, seed=2)),
        "ner_train": write_conll(folder / "ner_train.conll", ner_sentences(16, seed=11)),
        "ner_dev": write_conll(folder / "ner_dev.conll", ner_sentences(8, seed=12)),
        "squad": folder / "squad.json",
    }
    files["squad"].write_text(json.dumps(squad_articles(2, seed=21)))
    return files


def mixed_tasks(files: dict) -> dict:
    return {"sentiment": {**MIXED_TASKS["sentiment"], "data_files": json.loads(_reviews(files))},
            "entities": {**MIXED_TASKS["entities"],
                         "data_files": {"train": str(files["ner_train"]), "validation": str(files["ner_dev"])}},
            "questions": {**MIXED_TASKS["questions"],
                          "data_files": {"train": str(files["squad"]), "validation": str(files["squad"])}}}


def case_data(case: dict, backbone: str, folder: Path):
    """The data module whose predict rows the case's predictions cover (files written into folder)."""
    if case["data"] == "mixed":
        path = folder / "mixed.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in mixed_rows()))
        return MultiTaskDataModule(backbone=backbone, tasks=mixed_tasks(write_files(folder)), predict_files=str(path),
                                   eval_batch_size=4)
    path = folder / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in review_rows(6, seed=4, labelled=False)))
    return PromptDataModule(backbone=backbone, **case["data"], id_column="id", eval_batch_size=4,
                            data_files={"test": str(path)})


def predict_rows(model, data) -> list[dict]:
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    return [row for batch in trainer.predict(model, datamodule=data) for row in batch]
