"""Extractive QA: windows and offsets map answers back exactly, decoding picks the best span across
windows, SQuAD EM/F1 follow the official normalisation, every method runs through the CLI."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest
import torch
from conftest import run_cli, task_cases
from torchmetrics.text import SQuAD

import lit_prompts
from lit_prompts import PromptDataModule
from lit_prompts.tasks import SpanQa

ARCHS = ("bert", "roberta", "distilbert", "mpnet", "gpt2", "llama", "t5")


def qa_data(tiny_backbone, arch, squad_files, fmt="span", **kwargs) -> PromptDataModule:
    dm = PromptDataModule(backbone=tiny_backbone(arch), task="qa", task_format=fmt, data_files=squad_files,
                          max_length=48, stride=16, batch_size=4, **kwargs)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("arch", ARCHS)
def test_answer_tokens_map_back_to_the_answer_text_in_every_window(arch, tiny_backbone, squad_files):
    dm = qa_data(tiny_backbone, arch, squad_files)
    examples = dm.datasets["validation"].features
    assert max(len(e["windows"]) for e in examples) > 1, "long contexts are split into several windows"
    found = 0
    for example in examples:
        answer = example["answers"][0]
        for window in example["windows"]:
            if (window["start"], window["end"]) == (0, 0):
                continue  # the answer is not (entirely) in this window
            first, last = window["offsets"][window["start"]][0], window["offsets"][window["end"]][1]
            assert example["context"][first:last].strip().lower() == answer.lower()
            found += 1
    assert found >= len(examples)

    # Through the collator, with its padding side: the positions still point at the answer.
    batch = dm.collator(train=True)(dm.datasets["train"].features[:6])
    for row in range(6):
        window = dm.datasets["train"].features[row]
        shift = int(batch["pad_shift"][row])
        assert batch["start_positions"][row] == window["start"] + shift
        assert batch["input_ids"][row, window["start"] + shift] == window["input_ids"][window["start"]]


def fake_method(start_logits, end_logits):
    """A stand-in for a prompted backbone whose 'hidden states' are the start and end scores."""
    logits = torch.stack([torch.tensor(start_logits), torch.tensor(end_logits)], -1).float()
    return SimpleNamespace(hidden_states=lambda batch: logits)


def span_decoder() -> SpanQa:
    decoder = SpanQa(["start", "end"], hidden_size=2, n_best=20, max_answer_tokens=3)
    decoder.head = torch.nn.Identity()  # scores pass through: only the decoding is under test
    return decoder


def test_decoding_picks_the_best_span_across_windows():
    context = "aa bb cc dd ee"
    # Two windows of one example: tokens 1..3 hold the context pieces (0: question/special token).
    offsets = [[None, (0, 2), (3, 5), (6, 8)], [None, (6, 8), (9, 11), (12, 14)]]
    batch = {"ids": ["q"], "context": [context], "window_example": [0, 0], "offsets": offsets,
             "pad_shift": torch.tensor([0, 0]), "attention_mask": torch.ones(2, 4, dtype=torch.long)}
    start = [[9.0, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]]  # position 0 scores highest but is not context
    end = [[9.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 2.5]]
    (text, score, first), = span_decoder().answers(fake_method(start, end), batch)
    assert (text, score, first) == ("dd ee", 5.5, 9)  # window 2: start 3.0 + end 2.5 beats window 1's 1 + 1
    # An end before the start, or a span longer than max_answer_tokens, is never chosen.
    start = [[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    end = [[0.0, 0.0, 0.0, 0.0], [0.0, 9.0, 0.0, 0.0]]
    (text, _, _), = span_decoder().answers(fake_method(start, end), {**batch, "offsets": [offsets[0], offsets[0]]})
    assert text != "" and text in ("aa", "aa bb", "aa bb cc")


def test_decoding_equals_the_exhaustive_search_over_the_n_best_pairs(seed=0):
    """The pairs of the n_best starts and ends are scored at once; the answer is the one a plain loop over
    them (starts, then ends, in score order; the first of equal scores) picks, on windows with ties too."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(30):
        windows, width = 3, 12
        offsets = [[None] + [(3 * i, 3 * i + 2) for i in range(width - 1)] for _ in range(windows)]
        batch = {"ids": ["a", "b"], "context": ["xx " * width] * 2, "window_example": [0, 0, 1], "offsets": offsets,
                 "pad_shift": torch.zeros(windows, dtype=torch.long),
                 "attention_mask": torch.ones(windows, width, dtype=torch.long)}
        start, end = (torch.randint(0, 4, (windows, width), generator=generator).float() for _ in range(2))
        decoder = SpanQa(["start", "end"], hidden_size=2, n_best=5, max_answer_tokens=3)
        decoder.head = torch.nn.Identity()
        expected = [("", float("-inf"), -1)] * 2
        for w, example in enumerate(batch["window_example"]):
            positions = torch.arange(1, width)
            starts = positions[start[w, positions].topk(5).indices].tolist()
            ends = positions[end[w, positions].topk(5).indices].tolist()
            for s in starts:
                for e in ends:
                    if s <= e < s + 3 and float(start[w, s] + end[w, e]) > expected[example][1]:
                        first, last = offsets[w][s][0], offsets[w][e][1]
                        expected[example] = (batch["context"][example][first:last], float(start[w, s] + end[w, e]), first)
        assert decoder.answers(fake_method(start.tolist(), end.tolist()), batch) == expected


def test_squad_metric_uses_the_official_normalisation():
    metric = SQuAD()
    # Articles, punctuation, case and spacing are ignored; the best of the gold answers counts.
    preds = [{"prediction_text": "The  Eiffel tower!", "id": "1"}, {"prediction_text": "Paris France", "id": "2"}]
    target = [{"answers": {"text": ["Eiffel Tower"], "answer_start": [0]}, "id": "1"},
              {"answers": {"text": ["Lyon", "Paris"], "answer_start": [0, 0]}, "id": "2"}]
    result = metric(preds, target)
    assert result["exact_match"].item() == pytest.approx(50.0)
    assert result["f1"].item() == pytest.approx((100 + 2 * 0.5 * 1 / 1.5 * 100) / 2)


def test_answer_not_at_its_start_is_named(tiny_backbone, tmp_path):
    bad = {"data": [{"title": "t", "paragraphs": [{"context": "john went home", "qas": [
        {"id": "q7", "question": "who ?", "answers": [{"text": "john", "answer_start": 3}]}]}]}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad.json: record 0 \(id 'q7'\): answer 'john' is not at answer_start 3"):
        qa_data(tiny_backbone, "bert", {"train": str(path)})


CASES, CASE_IDS = task_cases("span")


@pytest.mark.parametrize("method,arch,fmt", CASES, ids=CASE_IDS)
def test_qa_fit_and_predict_answers(method, arch, fmt, tiny_backbone, squad_files, tmp_path):
    args = [
        f"--model={method}", f"--model.backbone={tiny_backbone(arch)}", "--model.num_virtual_tokens=2",
        "--data.task=qa", f"--data.task_format={fmt}", "--data.batch_size=8", "--data.max_length=48",
        "--data.stride=16", "--model.max_new_tokens=5",
    ]
    if method == "PrefixTuning":
        args.append("--model.reparam_hidden_size=16")
    cli = run_cli("fit", *args, f"--data.data_files={json.dumps(squad_files)}", "--trainer.max_epochs=1", root=tmp_path)
    assert cli.trainer.checkpoint_callback.monitor == "val/f1"
    assert {"val/exact_match", "val/f1"} <= set(cli.trainer.callback_metrics)

    best = cli.trainer.checkpoint_callback.best_model_path
    output = tmp_path / "answers.jsonl"
    files = json.dumps({"train": squad_files["train"], "test": squad_files["validation"]})
    run_cli("predict", *args, f"--data.data_files={files}", f"--ckpt_path={best}",
            f"--predictions.output={output}", root=tmp_path)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    questions = [q for a in json.loads(open(squad_files["validation"]).read())["data"]
                 for p in a["paragraphs"] for q in p["qas"]]
    assert [r["id"] for r in rows] == [q["id"] for q in questions]
    contexts = {q["id"]: p["context"] for a in json.loads(open(squad_files["validation"]).read())["data"]
                for p in a["paragraphs"] for q in p["qas"]}
    for row in rows:
        if fmt == "span" and row["answer"]:  # spans are cut out of the context at their offset
            assert contexts[row["id"]][row["start"] : row["start"] + len(row["answer"])] == row["answer"]
    assert lit_prompts.load(best).hparams.task == "qa"


def test_hub_layout_rows(tiny_backbone, squad_files, tmp_path):
    """As rajpurkar/squad on the hub: one row per question with an answers struct."""
    import datasets

    folder = tmp_path / "hub_squad"
    folder.mkdir()
    articles = json.loads(open(squad_files["validation"]).read())["data"]
    rows = [{"id": q["id"], "title": a["title"], "context": p["context"], "question": q["question"],
             "answers": {"text": [x["text"] for x in q["answers"]], "answer_start": [x["answer_start"] for x in q["answers"]]}}
            for a in articles for p in a["paragraphs"] for q in p["qas"]]
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "validation.parquet"))
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "train.parquet"))
    hub = PromptDataModule(backbone=tiny_backbone("bert"), task="qa", task_format="span", dataset=str(folder),
                           max_length=48, stride=16)
    hub.setup("fit")
    local = qa_data(tiny_backbone, "bert", {"train": squad_files["validation"], "validation": squad_files["validation"]})
    assert hub.datasets["validation"].features == local.datasets["validation"].features


@pytest.mark.parametrize("arch", ("gpt2", "t5"))
def test_overlong_text_to_text_contexts_lose_their_end_and_training_keeps_the_answer(arch, tiny_backbone, squad_files):
    # The same questions as training and as validation data: cut for training, and cut blind.
    files = {"train": squad_files["train"], "validation": squad_files["train"]}
    dm = PromptDataModule(backbone=tiny_backbone(arch), task="qa", task_format="text_to_text", data_files=files,
                          max_length=96, batch_size=4)
    with pytest.warns(UserWarning, match="were truncated"):
        dm.setup("fit")
    decode = lambda ids: dm.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    train, blind = dm.datasets["train"].features, dm.datasets["validation"].features
    for features in (train, blind):
        assert all(len(f["input_ids"]) <= 96 for f in features)
        # The question and the template's closing cue survive every cut; the context pays.
        sources = [decode(f["input_ids"]) for f in features]
        assert all(s.startswith("Question:") and s.endswith("Answer:") for s in sources), sources
    answers = [decode(f["target_ids"]).strip() for f in train]
    assert sum(a not in decode(f["input_ids"]) for a, f in zip(answers, blind)) > 0, "some answers lie past the cut"
    assert all(a in decode(f["input_ids"]) for a, f in zip(answers, train)), "training inputs hold their answer"


def test_text_to_text_inputs_that_fit_are_the_whole_template(tiny_backbone, squad_files):
    dm = PromptDataModule(backbone=tiny_backbone("gpt2"), task="qa", task_format="text_to_text", data_files=squad_files,
                          max_length=480, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is truncated, so nothing to warn about
        dm.setup("fit")
    examples = [e for a in json.loads(open(squad_files["train"]).read())["data"] for p in a["paragraphs"] for e in
                [(q["question"], p["context"]) for q in p["qas"]]]
    rendered = [f"Question: {q}\nContext: {c}\nAnswer:" for q, c in examples]
    assert [f["input_ids"] for f in dm.datasets["train"].features] == dm.tokenizer(rendered).input_ids
