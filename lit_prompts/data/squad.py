"""SQuAD's own json layout (articles -> paragraphs -> questions), read as one row per question."""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from .raw import DataFileError, text_encoding

_SQUAD_LAYOUT = "data: [{paragraphs: [{context, qas: [{id, question, answers: [{text, answer_start}]}]}]}]"


def _fields(value, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(value, dict):
        raise DataFileError(f"{where} is a {type(value).__name__}, not an object; SQuAD's layout is {_SQUAD_LAYOUT}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise DataFileError(f"{where} has no {missing[0]!r} field (it has {sorted(value)}); SQuAD's layout is {_SQUAD_LAYOUT}")


def read_squad_json(paths: list[str], names: list[str] | None = None, encoding: str = "utf-8") -> datasets.Dataset | None:
    """The official SQuAD json (articles -> paragraphs -> questions) as one row per question, with
    the hub dataset's columns: id, title, context, question, answers {text, answer_start}. None when
    the files are not in that layout (plain json records are read by the ``datasets`` json builder).
    A question without ``answers`` (a file to predict) gets none; errors name the file and the place."""
    rows = []
    for path, name in zip(paths, names or paths):
        text = Path(path).read_text(encoding=text_encoding(encoding))
        if not text.lstrip().startswith("{"):
            return None
        try:
            document = json.loads(text)
        except json.JSONDecodeError:  # json lines, or not json: the json reader says which line
            return None
        articles = document.get("data")
        if not isinstance(articles, list) or not all(isinstance(a, dict) and "paragraphs" in a for a in articles):
            return None
        for a, article in enumerate(articles):
            paragraphs = article["paragraphs"]
            if not isinstance(paragraphs, list):
                raise DataFileError(f"{name}: data[{a}].paragraphs is not a list; SQuAD's layout is {_SQUAD_LAYOUT}")
            for p, paragraph in enumerate(paragraphs):
                where = f"{name}: data[{a}].paragraphs[{p}]"
                _fields(paragraph, ("context", "qas"), where)
                for q, qa in enumerate(paragraph["qas"]):
                    _fields(qa, ("id", "question"), f"{where}.qas[{q}]")
                    answers = qa.get("answers", [])
                    if not isinstance(answers, list):
                        raise DataFileError(f"{where}.qas[{q}] (id {qa['id']!r}): answers is not a list; "
                                            f"SQuAD's layout is {_SQUAD_LAYOUT}")
                    for k, answer in enumerate(answers):
                        _fields(answer, ("text", "answer_start"), f"{where}.qas[{q}].answers[{k}] (id {qa['id']!r})")
                    rows.append({
                        "id": qa["id"], "title": article.get("title", ""), "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": {"text": [x["text"] for x in answers], "answer_start": [x["answer_start"] for x in answers]},
                    })
    return datasets.Dataset.from_list(rows)
