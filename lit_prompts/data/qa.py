"""Extractive question answering: SQuAD-style data, windows over long contexts, and two formats.

span          question + context -> token windows (``max_length``, overlapping by ``stride``); a head
              scores each token as answer start and end; answers are decoded over all windows of an
              example and mapped back to the context's characters
text_to_text  template with question and context -> the answer text, generated at evaluation
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from .collate import Collator, ListDataset, pad_rows
from .encoding import Columns, EncoderSettings, Rows, warn_truncated
from .labels import LabelSet
from .raw import RawSplit
from .templates import fit_to_length, target_ids

DEFAULT_QA_TEMPLATE = "Question: {question}\nContext: {context}\nAnswer:"
SPAN_LABELS = ["start", "end"]  # the span head scores each token as these two


@dataclass
class QaExample:
    id: str
    question: str
    context: str
    answers: list[str]
    starts: list[int]


def read_questions(split: RawSplit, columns: Columns, labelled: bool) -> list[QaExample]:
    """Rows as examples; every answer must be found at its ``answer_start`` (errors name the record).
    Ids: the id column, else the "id" column where there is one, else the row number."""
    question, context = split.column(columns.question, "question_column"), split.column(columns.context, "context_column")
    id_column = columns.id or "id"
    ids = split.column(id_column, "id_column") if id_column in split.rows.column_names else range(len(question))
    has_answers = columns.answers in split.rows.column_names
    if labelled and not has_answers:
        split.column(columns.answers, "answers_column")  # raises, naming the column
    answers = split.rows[columns.answers][:] if has_answers else [None] * len(question)
    examples = []
    for row, (qid, q, c, a) in enumerate(zip(ids, question, context, answers)):
        where = f"{split.source}: record {row} (id {qid!r})"
        for value, name, column in ((q, "question", columns.question), (c, "context", columns.context)):
            if not isinstance(value, str) or not value.strip():
                found = "empty" if value is None or not str(value).strip() else f"a {type(value).__name__}, not text"
                raise ValueError(f"{where}: the {name} (column {column!r}) is {found}")
        texts, starts = _answers(a, where, columns.answers)
        if labelled and not texts:
            raise ValueError(f"{where}: no answer (its {columns.answers!r} are missing or empty); "
                             "questions to train or evaluate on need one")
        for text, start in zip(texts, starts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{where}: an answer text is empty ({text!r})")
            if isinstance(start, bool) or not isinstance(start, int):
                raise ValueError(f"{where}: answer_start {start!r} of answer {text!r} is not a character offset (an integer)")
            if not 0 <= start <= len(c) - len(text) or c[start : start + len(text)] != text:
                raise ValueError(
                    f"{where}: answer {text!r} is not at answer_start {start} of the context "
                    f"(found {c[max(start, 0) : max(start, 0) + len(text)]!r})"
                )
        examples.append(QaExample(str(qid), str(q), str(c), texts, starts))
    return examples


def _answers(value, where: str, column: str) -> tuple[list, list]:
    """The answer texts and starts of one record: SQuAD's ``{text: [...], answer_start: [...]}``
    (one answer may be given as ``{text: "...", answer_start: 3}``); None: no answers."""
    if value is None:
        return [], []
    if not isinstance(value, dict) or not {"text", "answer_start"} <= set(value):
        cell = " (a csv / tsv cell cannot hold that: use a json or jsonl file)" if isinstance(value, str) else ""
        raise ValueError(f"{where}: column {column!r} holds {value!r:.80}; it must hold "
                         "{text: [answer, ...], answer_start: [character offset, ...]} as in SQuAD" + cell)
    texts, starts = value["text"], value["answer_start"]
    texts = [texts] if isinstance(texts, str) else list(texts or [])
    starts = [starts] if isinstance(starts, int) else list(starts or [])
    if len(texts) != len(starts):
        raise ValueError(f"{where}: {len(texts)} answer texts but {len(starts)} answer_start values")
    return texts, starts


@dataclass
class QaEncoder:
    """Questions with their contexts into features of the ``span`` or ``text_to_text`` format: the
    ``TaskData`` of extractive QA."""

    tokenizer: PreTrainedTokenizerBase
    task_format: str
    is_encoder_decoder: bool
    template: str | None
    max_length: int
    stride: int

    virtual_tokens = 0  # QA templates hold no [P:n] markers

    @classmethod
    def tokenizer_options(cls, task_format: str) -> dict:
        return {}

    @classmethod
    def read_labels(cls, configured: list[str] | None, train: Callable[[], RawSplit | None], columns: Columns) -> LabelSet:
        return LabelSet(list(SPAN_LABELS), True, "the span head")

    @classmethod
    def build(cls, settings: EncoderSettings) -> QaEncoder:
        if settings.task_format == "span" and settings.stride >= settings.max_length // 2:  # windows overlap by stride
            raise ValueError(f"stride={settings.stride} must be below half of max_length={settings.max_length}")
        return cls(settings.tokenizer, settings.task_format, settings.is_encoder_decoder, settings.template,
                   settings.max_length, settings.stride)

    @classmethod
    def read(cls, split: RawSplit, stage: str, columns: Columns, labels: Callable[[], LabelSet]) -> Rows:
        examples = read_questions(split, columns, labelled=stage != "predict")
        return Rows(split.source, stage, [e.id for e in examples], examples)

    def encode(self, rows: Rows) -> ListDataset:
        examples, stage = rows.inputs, rows.stage
        if self.task_format == "text_to_text":
            features, truncated = self.text_features(examples, around_answer=stage == "train")
            warn_truncated(rows.source, truncated, len(examples), self.max_length)
            for feature, e in zip(features, examples):
                feature.update(id=e.id, answers=e.answers, starts=e.starts, context=e.context)
            return ListDataset(features)
        windows = self.windows(examples)
        if stage == "train":  # training steps over windows
            return ListDataset([{**w, "id": e.id} for e, ws in zip(examples, windows) for w in ws])
        return ListDataset([
            {"id": e.id, "context": e.context, "answers": e.answers, "starts": e.starts, "windows": ws}
            for e, ws in zip(examples, windows)
        ])

    def collator(self, train: bool) -> Callable[[list[dict]], dict]:
        if self.task_format == "span":
            return QaCollator(self.tokenizer.pad_token_id, self.tokenizer.padding_side, train=train)
        return Collator.for_tokenizer(self.tokenizer, self.task_format, self.is_encoder_decoder, train)

    def verbalizer_token_ids(self) -> None:
        return None

    def windows(self, examples: list[QaExample]) -> list[list[dict]]:
        """Per example: its windows, each with input ids, the context offsets of its tokens (None
        outside the context) and, where the first answer lies inside, its first and last token."""
        enc = self.tokenizer(
            [e.question for e in examples], [e.context for e in examples], truncation="only_second",
            max_length=self.max_length, stride=self.stride, return_overflowing_tokens=True, return_offsets_mapping=True,
        )
        out: list[list[dict]] = [[] for _ in examples]
        for w, example_index in enumerate(enc["overflow_to_sample_mapping"]):
            example = examples[example_index]
            sequence = enc.sequence_ids(w)
            offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][w], sequence)]
            window = {"input_ids": enc["input_ids"][w], "offsets": offsets}
            if "token_type_ids" in enc:
                window["token_type_ids"] = enc["token_type_ids"][w]
            if example.answers:
                window["start"], window["end"] = _answer_tokens(offsets, example.starts[0], len(example.answers[0]))
            out[example_index].append(window)
        return out

    def text_features(self, examples: list[QaExample], around_answer: bool = False) -> tuple[list[dict], int]:
        """Template ids (only the context shortened when over-long) and the first answer as target.
        ``around_answer`` (training): a context whose cut would lose the answer is cut to a window
        with the answer in its middle instead, so that no target asks for text the input lacks."""
        template = self.template or DEFAULT_QA_TEMPLATE
        render = lambda i, context: template.format(question=examples[i].question, context=context)  # noqa: E731
        fitted = fit_to_length(self.tokenizer, render, [e.context for e in examples], self.max_length)
        truncated = sum(kept_chars < len(e.context) for e, (_, kept_chars) in zip(examples, fitted))
        if around_answer:
            moved = [i for i, (e, (_, kept_chars)) in enumerate(zip(examples, fitted))
                     if e.answers and e.starts[0] + len(e.answers[0]) > kept_chars]
            windows = [examples[i].context[window_start(examples[i], fitted[i][1]):] for i in moved]
            for i, refitted in zip(moved, fit_to_length(self.tokenizer, lambda j, c: render(moved[j], c), windows, self.max_length)):
                fitted[i] = refitted
        answered = [e for e in examples if e.answers]
        targets = iter(target_ids(self.tokenizer, self.is_encoder_decoder, [" " + e.answers[0] for e in answered]))
        features = [{"input_ids": ids, **({"target_ids": next(targets)} if e.answers else {})}
                    for e, (ids, _) in zip(examples, fitted)]
        return features, truncated


def window_start(example: QaExample, kept_chars: int) -> int:
    """Where a context of about ``kept_chars`` characters starts so that the first answer sits in
    its middle, at a word's beginning."""
    start = max(0, example.starts[0] + len(example.answers[0]) // 2 - kept_chars // 2)
    if start and not example.context[start - 1].isspace():
        start = min(example.context.find(" ", start) + 1 or start, example.starts[0])
    return start


def _answer_tokens(offsets: list, start_char: int, length: int) -> tuple[int, int]:
    """First and last token of the answer when the window holds all of it, else (0, 0): the
    window's first token stands for "not in this window" (SQuAD v1 convention)."""
    end_char = start_char + length
    inside = [i for i, o in enumerate(offsets) if o is not None]
    if not inside or offsets[inside[0]][0] > start_char or offsets[inside[-1]][1] < end_char:
        return 0, 0
    first = next(i for i in inside if offsets[i][1] > start_char)
    last = next(i for i in reversed(inside) if offsets[i][0] < end_char)
    return first, last


@dataclass
class QaCollator:
    """Span format. Training batches hold windows; evaluation batches hold whole examples (all their
    windows), so every example is decoded over all its windows inside one batch."""

    pad_id: int
    padding_side: str
    train: bool

    def __call__(self, features: list[dict]) -> dict:
        if self.train:
            windows, batch = features, {"ids": [f["id"] for f in features]}
        else:
            windows = [w for f in features for w in f["windows"]]
            batch = {
                "ids": [f["id"] for f in features], "context": [f["context"] for f in features],
                "answers": [f["answers"] for f in features], "starts": [f["starts"] for f in features],
                "window_example": [i for i, f in enumerate(features) for _ in f["windows"]],
                "offsets": [w["offsets"] for w in windows],
            }
        rows = [w["input_ids"] for w in windows]
        batch["input_ids"] = pad_rows(rows, self.pad_id, self.padding_side)
        batch["attention_mask"] = pad_rows([[1] * len(r) for r in rows], 0, self.padding_side)
        if "token_type_ids" in windows[0]:
            batch["token_type_ids"] = pad_rows([w["token_type_ids"] for w in windows], 0, self.padding_side)
        # Left padding moves every token right by the padding in front of it.
        shift = [batch["input_ids"].shape[1] - len(r) if self.padding_side == "left" else 0 for r in rows]
        batch["pad_shift"] = torch.tensor(shift)
        if "start" in windows[0]:
            batch["start_positions"] = torch.tensor([w["start"] + s for w, s in zip(windows, shift)])
            batch["end_positions"] = torch.tensor([w["end"] + s for w, s in zip(windows, shift)])
        return batch

