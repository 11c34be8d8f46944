"""Classification examples: label sets, validation, and encoding into the three task formats.

head          text (and text pair) -> token ids; the label id feeds a trainable classifier head
cloze         template with a mask token -> the masked LM scores one verbalizer word per label
text_to_text  template -> source ids; target = verbalizer words; evaluated by rank classification
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from lightning.pytorch.utilities import rank_zero_warn
from transformers import PreTrainedTokenizerBase

from .sources import RawSplit
from .templates import count_virtual_tokens, expand_markers, fit_to_length, placeholder, target_ids, virtual_index

DEFAULT_TEMPLATES = {
    "cloze": "{text} Label: {mask}.",
    "text_to_text": "Input: {text}\nLabel:",
}
PAIR_TEMPLATES = {
    "cloze": "{text} ? {mask} , {text_pair}",
    "text_to_text": "Input: {text}\nSecond input: {text_pair}\nLabel:",
}


def template_fields(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def resolve_label_names(configured: list[str] | None, train: RawSplit | None, label_column: str) -> list[str]:
    """Label names from the config, else from the data's ClassLabel feature, else sorted values."""
    if configured:
        if len(set(configured)) != len(configured) or len(configured) < 2:
            raise ValueError(f"data.init_args.label_names needs two or more distinct names, got {configured}")
        return [str(n) for n in configured]
    if train is None:
        raise ValueError("label names unknown: give data.init_args.label_names or a train split")
    feature = train.rows.features.get(label_column)
    if feature is not None and hasattr(feature, "names"):
        return list(feature.names)
    values = sorted({v for v in train.column(label_column, "label_column") if v is not None and v != -1})
    if len(values) < 2:
        raise ValueError(f"{train.source}: column {label_column!r} holds {len(values)} distinct label(s) {values}; "
                         "classification needs at least two (or give data.init_args.label_names)")
    return [str(v) for v in values]


def label_ids(split: RawSplit, column: str, names: list[str], required: bool) -> list[int]:
    """Map each row's label to its index; -1 where a label is absent and not required."""
    if not required and column not in split.rows.column_names:
        return [-1] * len(split.rows)
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for row, value in enumerate(split.column(column, "label_column")):
        if value is None or value == -1:  # hub test splits mark unlabelled rows with -1
            if required:
                raise ValueError(f"{split.source}: row {row} has no label in column {column!r}")
            ids.append(-1)
        elif str(value) in index:
            ids.append(index[str(value)])
        elif isinstance(value, int) and 0 <= value < len(names):
            ids.append(value)  # integer labels index the configured names
        else:
            raise ValueError(
                f"{split.source}: row {row}, column {column!r}: label {value!r} is not in the label set {names}"
            )
    return ids


def texts(split: RawSplit, column: str, role: str) -> list[str]:
    values = split.column(column, role)
    for row, value in enumerate(values):
        if value is None or not str(value).strip():
            raise ValueError(f"{split.source}: row {row}, column {column!r} is empty")
    return [str(v) for v in values]


@dataclass
class ClassificationEncoder:
    """Turns texts into the features of one task format; counts what it had to truncate."""

    tokenizer: PreTrainedTokenizerBase
    task_format: str
    is_encoder_decoder: bool
    label_words: list[str]
    template: str | None
    target_template: str
    max_length: int

    def __post_init__(self):
        self.virtual_tokens = 0
        if self.task_format == "head":
            return
        if self.template is None:
            self.template = DEFAULT_TEMPLATES[self.task_format]
        fields = template_fields(self.template)
        if "text" not in fields:
            raise ValueError(f"data.init_args.template {self.template!r} has no {{text}} field")
        if self.task_format == "cloze" and "mask" not in fields:
            raise ValueError(f"cloze template {self.template!r} needs a {{mask}} field")
        self.virtual_tokens = count_virtual_tokens(self.template)
        if self.virtual_tokens:  # P-tuning: prompt vectors at the [P:n] markers
            token, self.placeholder_id = placeholder(self.tokenizer)
            self.template = expand_markers(self.template, token)

    # --- targets -----------------------------------------------------------------------------
    def class_target_ids(self) -> list[list[int]]:
        """Token ids of each label's target sequence (text-to-text), ending with EOS."""
        texts = [self.target_template.format(label=word) for word in self.label_words]
        return target_ids(self.tokenizer, self.is_encoder_decoder, texts)

    def verbalizer_token_ids(self) -> list[int]:
        """One vocabulary id per label word (cloze); multi-piece words are rejected by name."""
        ids = []
        for word in self.label_words:
            # A leading space gives the word-initial piece for BPE/SentencePiece; WordPiece ignores it.
            pieces = self.tokenizer(" " + word, add_special_tokens=False).input_ids
            if len(pieces) != 1:
                tokens = self.tokenizer.convert_ids_to_tokens(pieces)
                raise ValueError(
                    f"verbalizer word {word!r} is {len(pieces)} tokens {tokens} for this tokenizer; "
                    "cloze format needs one token per label: choose another word in data.init_args.verbalizer"
                )
            ids.append(pieces[0])
        return ids

    # --- sources -----------------------------------------------------------------------------
    def encode(self, text: list[str], pair: list[str] | None) -> tuple[list[dict], int]:
        if self.task_format == "head":
            return self._encode_plain(text, pair)
        budget = self.max_length
        if self.task_format == "text_to_text" and not self.is_encoder_decoder:
            budget -= max(len(t) for t in self.class_target_ids())  # source and target share the window
        mask = {"mask": self.tokenizer.mask_token} if self.task_format == "cloze" else {}
        render = lambda i, t: self.template.format(text=t, text_pair=pair[i] if pair else None, **mask)  # noqa: E731
        features, truncated = [], 0
        for i, (ids, kept_chars) in enumerate(fit_to_length(self.tokenizer, render, text, budget)):
            truncated += kept_chars < len(text[i])
            feature = {"input_ids": ids}
            if self.virtual_tokens:
                feature["virtual_index"] = virtual_index(ids, self.placeholder_id, self.virtual_tokens, f"example {i}")
            if self.task_format == "cloze":
                if self.tokenizer.mask_token_id not in ids:
                    raise ValueError(f"example {i}: the mask token was truncated away (max_length={self.max_length})")
                feature["mask_index"] = ids.index(self.tokenizer.mask_token_id)
            features.append(feature)
        return features, truncated

    def _encode_plain(self, text: list[str], pair: list[str] | None) -> tuple[list[dict], int]:
        # Tokenize to max_length + 1: a result that long was over-long, so counting needs no second pass.
        enc = self.tokenizer(text, pair, truncation=True, max_length=self.max_length + 1)
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        features, truncated = [], 0
        for i in range(len(text)):
            if len(enc["input_ids"][i]) > self.max_length:
                truncated += 1
                one = self.tokenizer(text[i], pair[i] if pair else None, truncation=True, max_length=self.max_length)
                features.append({k: one[k] for k in keys})
            else:
                features.append({k: enc[k][i] for k in keys})
        return features, truncated


def warn_truncated(source: str, truncated: int, total: int, max_length: int) -> None:
    if truncated:
        rank_zero_warn(
            f"{source}: {truncated} of {total} examples were longer than max_length={max_length} tokens "
            "and were truncated"
        )
