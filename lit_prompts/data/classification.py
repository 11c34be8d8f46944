"""Classification examples: label sets, validation, and encoding into the three task formats.

head          text (and text pair) -> token ids; the label id feeds a trainable classifier head
cloze         template with a mask token -> the masked LM scores one verbalizer word per label
text_to_text  template -> source ids; target = verbalizer words; evaluated by rank classification
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .collate import Collator, ListDataset
from .encoding import Columns, EncoderSettings, Rows, example_ids, warn_truncated
from .labels import LabelSet, is_integer_text, name_order
from .raw import RawSplit
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


def is_missing(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _value_kind(value) -> str:
    return "text" if isinstance(value, str) else "number" if isinstance(value, (int, float)) else type(value).__name__


def resolve_labels(configured: list[str] | None, train: RawSplit | None, label_column: str) -> LabelSet:
    """Label names from the config, else from the data's ClassLabel feature, else the training
    split's values (sorted, as numbers where all are integers)."""
    if configured:
        if len(set(configured)) != len(configured) or len(configured) < 2:
            raise ValueError(f"data.init_args.label_names needs two or more distinct names, got {configured}")
        names = [str(n) for n in configured]
        return LabelSet(names, not any(is_integer_text(n) for n in names), "data.init_args.label_names")
    if train is None:
        raise ValueError("label names unknown: give data.init_args.label_names or a train split")
    feature = train.rows.features.get(label_column)
    if feature is not None and hasattr(feature, "names"):
        return LabelSet(list(feature.names), True, f"the ClassLabel feature of {train.source}")
    first: dict[str, tuple[int, object]] = {}  # kind of value -> its first row and value
    values = set()
    for row, value in enumerate(train.column(label_column, "label_column")):
        if is_missing(value):
            continue
        if isinstance(value, (list, dict)):
            raise ValueError(f"{train.source}: row {row}, column {label_column!r} holds {value!r:.60}; a label is "
                             "one name or number (set data.init_args.label_column to the label's column)")
        first.setdefault(_value_kind(value), (row, value))
        values.add(str(value))
    if len(first) > 1:
        (kind_a, (row_a, a)), (kind_b, (row_b, b)) = list(first.items())[:2]
        raise ValueError(
            f"{train.source}: column {label_column!r} mixes {kind_a} and {kind_b} labels (row {row_a}: {a!r}, row {row_b}: "
            f"{b!r}); write every label the same way, or give data.init_args.label_names"
        )
    names = name_order(values)
    if len(names) < 2:
        raise ValueError(f"{train.source}: column {label_column!r} holds {len(names)} distinct label(s) {names}; "
                         "classification needs at least two (or give data.init_args.label_names)")
    return LabelSet(names, False, f"the values of column {label_column!r} in {train.source}", inferred=True)


def label_ids(split: RawSplit, column: str, labels: LabelSet, required: bool) -> list[int]:
    """Map each row's label to its index; -1 where a label is absent and not required."""
    if not required and column not in split.rows.column_names:
        return [-1] * len(split.rows)
    index = {name: i for i, name in enumerate(labels.names)}
    # A ClassLabel column's ids stand for its own names: a label set with the same names (from a
    # checkpoint, say) in another order or numbering still finds each row's class.
    class_names = getattr(split.rows.features.get(column), "names", None)
    ids = []
    for row, value in enumerate(split.column(column, "label_column")):
        integer = isinstance(value, int) and not isinstance(value, bool)
        # -1: the hub's "no label" where ids index names (and in a file to predict, whose labels go unused)
        if is_missing(value) or (integer and value == -1 and (labels.by_index or class_names or not required)):
            if required:
                raise ValueError(f"{split.source}: row {row} has no label in column {column!r}; give every row a label")
            ids.append(-1)
        elif integer and class_names and 0 <= value < len(class_names) and class_names[value] in index:
            ids.append(index[class_names[value]])
        elif integer and labels.by_index:
            if not 0 <= value < len(labels.names):
                raise labels.unknown(value, f"{split.source}: row {row}, column {column!r}")
            ids.append(value)
        elif not isinstance(value, (list, dict)) and str(value) in index:
            ids.append(index[str(value)])
        else:
            raise labels.unknown(value, f"{split.source}: row {row}, column {column!r}")
    return ids


def texts(split: RawSplit, column: str, role: str) -> list[str]:
    values = split.column(column, role)
    for row, value in enumerate(values):
        if is_missing(value):
            raise ValueError(f"{split.source}: row {row}, column {column!r} is empty")
        if isinstance(value, (list, dict)):
            raise ValueError(f"{split.source}: row {row}, column {column!r} holds {value!r:.60}, not a text; "
                             f"set data.init_args.{role} to the column with the text")
    return [str(v) for v in values]


@dataclass
class ClassificationEncoder:
    """Turns texts into the features of one task format; counts what it had to truncate.

    The ``TaskData`` of classification (``build`` makes it from the data module's settings);
    ``encode_texts`` encodes texts alone, without a split's labels and ids."""

    tokenizer: PreTrainedTokenizerBase
    task_format: str
    is_encoder_decoder: bool
    label_words: list[str]
    template: str | None
    target_template: str
    max_length: int

    virtual_tokens = 0  # [P:n] virtual tokens of the template, counted in __post_init__

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

    # --- TaskData ------------------------------------------------------------------------------
    @classmethod
    def tokenizer_options(cls, task_format: str) -> dict:
        return {}

    @classmethod
    def read_labels(cls, configured: list[str] | None, train: Callable[[], RawSplit | None], columns: Columns) -> LabelSet:
        return resolve_labels(configured, None if configured else train(), columns.label)

    @classmethod
    def build(cls, settings: EncoderSettings) -> ClassificationEncoder:
        names = settings.labels.names
        verbalizer = settings.verbalizer or {}
        missing = [n for n in verbalizer if n not in names]
        if missing:
            raise ValueError(f"verbalizer names labels {missing} that are not in {names}")
        template = settings.template
        if template is None and settings.columns.text_pair and settings.task_format != "head":
            template = PAIR_TEMPLATES[settings.task_format]
        return cls(settings.tokenizer, settings.task_format, settings.is_encoder_decoder,
                   label_words=[verbalizer.get(n, n) for n in names], template=template,
                   target_template=settings.target_template, max_length=settings.max_length)

    @classmethod
    def read(cls, split: RawSplit, stage: str, columns: Columns, labels: Callable[[], LabelSet]) -> Rows:
        text = texts(split, columns.text, "text_column")
        pair = texts(split, columns.text_pair, "text_pair_column") if columns.text_pair else None
        targets = label_ids(split, columns.label, labels(), required=stage != "predict")
        return Rows(split.source, stage, example_ids(split, columns.id, len(text)), text, pair, targets)

    def encode(self, rows: Rows) -> ListDataset:
        features, truncated = self.encode_texts(rows.inputs, rows.pairs)
        warn_truncated(rows.source, truncated, len(rows.inputs), self.max_length)
        for feature, example_id, label in zip(features, rows.ids, rows.targets):
            feature["id"], feature["label"] = example_id, label
        return ListDataset(features)

    def collator(self, train: bool) -> Callable[[list[dict]], dict]:
        # Text-to-text: each label's target, appended to the source (training) or ranked (evaluation).
        targets = self.class_target_ids() if self.task_format == "text_to_text" else None
        return Collator.for_tokenizer(self.tokenizer, self.task_format, self.is_encoder_decoder, train, targets)

    # --- targets -----------------------------------------------------------------------------
    def class_target_ids(self) -> list[list[int]]:
        """Token ids of each label's target sequence (text-to-text), ending with EOS."""
        texts = [self.target_template.format(label=word) for word in self.label_words]
        return target_ids(self.tokenizer, self.is_encoder_decoder, texts)

    def verbalizer_token_ids(self) -> list[int] | None:
        """One vocabulary id per label word (cloze; None in other formats); multi-piece words are
        rejected by name."""
        if self.task_format != "cloze":
            return None
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
    def encode_texts(self, text: list[str], pair: list[str] | None) -> tuple[list[dict], int]:
        """Features of texts (and text pairs), and how many were truncated."""
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

