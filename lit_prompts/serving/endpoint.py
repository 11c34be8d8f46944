"""One served prompt: its trained method, and how a request's fields become its input and its
prediction becomes the answer. Requests are read the way ``PromptDataModule`` reads a predict file
(the same encoder and collator), so a served answer equals ``python -m lit_prompts predict``'s."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import datasets
from datasets.table import InMemoryTable
from torch import nn

from ..data import PromptDataModule
from ..data.raw import RawSplit
from ..methods import DeepPrompt, Prefix
from ..prompted import Prompted

# Request fields per task (classification may add ``text_pair``; ner takes ``text`` or ``tokens``).
TASK_FIELDS = {"classification": ("text",), "ner": ("text",), "qa": ("question", "context")}
# Data settings a prompt's serving entry may give (what its training data module was told).
DATA_SETTINGS = ("template", "target_template", "verbalizer", "max_length", "stride", "text_pair_column")


TOKENIZERS: dict[tuple, object] = {}  # (backbone, tokenizer options) -> the tokenizer this process loaded


class RequestError(ValueError):
    """A request this prompt cannot answer; ``field`` names the offending field (HTTP 422)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass
class Request:
    """A decoded request: the prompt it names and its own fields."""

    prompt: str
    fields: dict
    options: dict = field(default_factory=dict)  # all_scores, max_new_tokens, num_beams


class PromptEndpoint:
    """``method`` (a loaded ``PromptMethod``) served under ``name``; ``data`` holds the data settings it
    was trained with (``DATA_SETTINGS``: template, max_length, ...)."""

    def __init__(self, name: str, method, data: dict | None = None, source: str | None = None):
        unknown = set(data or {}) - set(DATA_SETTINGS)
        if unknown:
            raise ValueError(f"prompts.{name}: unknown data settings {sorted(unknown)}; known: {list(DATA_SETTINGS)}")
        self.name, self.method, self.source = name, method, source
        h = method.hparams
        self.task, self.task_format = h.task, h.task_format
        self.data = PromptDataModule(backbone=h.backbone, task=h.task, task_format=h.task_format,
                                     label_names=h.label_names, cache=False, **(data or {}))
        # Prompts of one backbone read text with one tokenizer (per tokenizer options): ~10 MB each otherwise.
        key = (h.backbone, tuple(sorted(self.data.task_data.tokenizer_options(h.task_format).items())))
        if key in TOKENIZERS:
            self.data.tokenizer = TOKENIZERS[key]
        else:
            TOKENIZERS[key] = self.data.tokenizer
        self.collate = self.data.collator(train=False)
        self.max_length = self.data.hparams.max_length
        self.prompt = served_prompt(method)

    def prompted(self) -> Prompted:
        """The prompt on the backbone as the task format reads it (made per batch: it collects the batch's
        auxiliary losses)."""
        h = self.method.hparams
        return Prompted(self.method.backbone, self.prompt, self.method.default_task, h.get("prefix_positions", "none"))

    def describe(self) -> dict:
        """What ``GET /prompts`` lists for this prompt."""
        h = self.method.hparams
        labels = h.label_names if self.task != "qa" else None
        return {"name": self.name, "method": type(self.method).__name__, "task": self.task,
                "task_format": self.task_format, "labels": labels, "source": self.source,
                "fields": [*TASK_FIELDS[self.task], *(["text_pair"] if self.data.hparams.text_pair_column else [])]}

    # --- requests -----------------------------------------------------------------------------------
    def read(self, fields: dict) -> tuple[dict, dict]:
        """(the row as a predict file would hold it, facts for the answer) from a request's fields."""
        row, facts = {}, {}
        for name in TASK_FIELDS[self.task]:
            value = fields.get(name)
            if self.task == "ner" and name == "text" and value is None and "tokens" in fields:
                continue
            if not isinstance(value, str) or not value.strip():
                raise RequestError(name, f"a non-empty string is required for a {self.task} prompt "
                                         f"(got {type(value).__name__ if value is not None else 'nothing'})")
            row[name] = value
        if self.task == "classification" and self.data.hparams.text_pair_column:
            pair = fields.get("text_pair")
            if not isinstance(pair, str):
                raise RequestError("text_pair", "this prompt reads sentence pairs: a string is required")
            row[self.data.hparams.text_pair_column] = pair
        if self.task == "ner":
            row["tokens"], facts["offsets"], facts["text"] = words_of(fields)
        return row, facts

    def encode(self, fields: dict) -> tuple[dict, dict]:
        """(feature, facts): the request as this prompt's input, and what the answer needs (word offsets,
        whether the text was truncated)."""
        row, facts = self.read(fields)
        # A fixed fingerprint: hashing the one-row table (what from_list does) took most of a request's encoding.
        table = datasets.Dataset(InMemoryTable.from_pylist([row]), fingerprint="lit-prompts-request")
        split = RawSplit(table, f"request to prompt {self.name!r}")
        try:
            feature = self.data.encode(split, "predict")[0]
        except (ValueError, KeyError) as error:
            raise RequestError("request", str(error)) from None
        facts["truncated"] = self.truncated(row)
        return {**feature, "id": 0}, facts

    def truncated(self, row: dict) -> bool:
        """Whether the text is longer than ``max_length`` tokens (QA contexts are read in windows instead)."""
        if self.task == "qa":
            return False
        text = row.get("text") if self.task == "classification" else " ".join(row["tokens"])
        return len(self.data.tokenizer(text, add_special_tokens=False).input_ids) > self.max_length

    def answer(self, row: dict, facts: dict) -> dict:
        """The API's answer from a predict row: NER offsets point into the request's own text."""
        answer = {k: v for k, v in row.items() if k not in ("id", "task")}
        if self.task == "ner":
            offsets = facts["offsets"]
            answer["text"] = facts["text"]
            answer["entities"] = [{**e, "start": offsets[e["first_token"]][0], "end": offsets[e["last_token"]][1],
                                   "text": facts["text"][offsets[e["first_token"]][0]: offsets[e["last_token"]][1]]}
                                  for e in row["entities"]]
        if facts.get("truncated"):
            answer["truncated"] = True
            answer["note"] = f"the text is longer than max_length={self.max_length} tokens; only its start was read"
        return answer


def served_prompt(method) -> nn.Module:
    """The prompt module that answers requests. P-tuning v2's deep prompts become the keys and values
    each layer computes from them, a prefix: the backbone is frozen, so they are the same in every call,
    and a mixed batch then projects none of its deep prompts again (answers equal; tested)."""
    prompt = method.prompt
    if not isinstance(prompt, DeepPrompt) or prompt.settings["reparam_hidden_size"]:
        return prompt
    f = method.facts
    prefix = method.backbone.prefix_of(prompt.hidden_prompts())
    layers, _, kv_heads, length, head_dim = prefix.shape
    return Prefix(layers, kv_heads, length, head_dim, f.hidden_size, init=prefix).to(prefix.device).eval()


WORD = re.compile(r"\S+")


def words_of(fields: dict) -> tuple[list[str], list[tuple[int, int]], str]:
    """NER input: the words of ``text`` (split on white space) with their character offsets, or the given
    ``tokens`` (offsets into the tokens joined by single spaces)."""
    if fields.get("text") is not None:
        matches = list(WORD.finditer(fields["text"]))
        return [m.group() for m in matches], [m.span() for m in matches], fields["text"]
    tokens = fields["tokens"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise RequestError("tokens", "a non-empty list of non-empty strings is required")
    offsets, start = [], 0
    for token in tokens:
        offsets.append((start, start + len(token)))
        start += len(token) + 1
    return tokens, offsets, " ".join(tokens)
