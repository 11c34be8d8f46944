"""One interface for every task's data: ``TaskData``, what ``PromptDataModule`` asks of a task's
encoder (read the label set, read and check a split's rows, encode them, collate a batch), and what
the encoders share.

An encoder class is found by task in ``datamodule.DATA_ENCODERS``. Its ``read`` checks a split's
rows without a tokenizer, so that mistakes in the data are reported before any model file is
loaded; ``build(EncoderSettings)`` then makes the encoder that tokenizes them. The data module only
calls these: it has no branch per task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lightning.pytorch.utilities import rank_zero_warn
from transformers import PreTrainedTokenizerBase

from .collate import ListDataset
from .labels import LabelSet
from .raw import RawSplit


@dataclass(frozen=True)
class Columns:
    """Which column of the data holds what (the ``*_column`` options); each task reads its own."""

    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    id: str | None = None  # None: the row number (QA: the "id" column where there is one)
    tokens: str = "tokens"
    tags: str = "ner_tags"
    question: str = "question"
    context: str = "context"
    answers: str = "answers"


@dataclass(frozen=True)
class EncoderSettings:
    """Everything a task's encoder is built from."""

    tokenizer: PreTrainedTokenizerBase
    task_format: str
    is_encoder_decoder: bool
    labels: LabelSet
    columns: Columns = Columns()
    template: str | None = None
    target_template: str = " {label}"
    verbalizer: dict[str, str] | None = None
    max_length: int = 256
    stride: int = 128


@dataclass
class Rows:
    """A split's rows, read and checked, nothing tokenized yet: each row's id, what the task reads of
    it (``inputs``: texts, word lists or ``QaExample``s; ``pairs``: second texts) and its targets
    (label ids, or per sentence tag ids / None); ``source`` names the split in warnings."""

    source: str
    stage: str
    ids: list
    inputs: list
    pairs: list[str] | None = None
    targets: list | None = None


@runtime_checkable
class TaskData(Protocol):
    """A task's data: how its label set is read, how a split's rows are read and checked, how they
    become features and features become batches. Implemented by ``ClassificationEncoder``,
    ``NerEncoder`` and ``QaEncoder``."""

    @classmethod
    def tokenizer_options(cls, task_format: str) -> dict:
        """Keyword arguments the format needs when its tokenizer is loaded."""
        ...

    @classmethod
    def read_labels(cls, configured: list[str] | None, train: Callable[[], RawSplit | None],
                    columns: Columns) -> LabelSet:
        """The label set: the configured names, else read from the data (``train()`` reads the
        training split; it is called only where the names come from the data)."""
        ...

    @classmethod
    def read(cls, split: RawSplit, stage: str, columns: Columns, labels: Callable[[], LabelSet]) -> Rows:
        """A split's rows, checked (``stage``: train / validation / test / predict; predict rows need
        no labels; ``labels()`` gives the label set where the task maps values to it)."""
        ...

    @classmethod
    def build(cls, settings: EncoderSettings) -> TaskData:
        """The encoder; settings the task cannot use together are refused here."""
        ...

    @property
    def virtual_tokens(self) -> int:
        """How many ``[P:n]`` virtual tokens the template holds (P-tuning); 0 where none."""
        ...

    def encode(self, rows: Rows) -> ListDataset:
        """Read rows as features."""
        ...

    def collator(self, train: bool) -> Callable[[list[dict]], dict]:
        """Batches of features: training batches, or (not ``train``) evaluation and predict batches."""
        ...

    def verbalizer_token_ids(self) -> list[int] | None:
        """One vocabulary id per label for the formats that score label words (cloze), else None."""
        ...


def example_ids(split: RawSplit, id_column: str | None, count: int) -> list:
    """Each row's id: the id column's value, else the row number."""
    return split.column(id_column, "id_column") if id_column else list(range(count))


def warn_truncated(source: str, truncated: int, total: int, max_length: int) -> None:
    if truncated:
        rank_zero_warn(
            f"{source}: {truncated} of {total} examples were longer than max_length={max_length} tokens "
            "and were truncated"
        )


def check_counts(minimum: int, **counts: int | None) -> None:
    """Refuse a count below ``minimum`` (None: not set). The command line's types check the same;
    this covers modules built in Python and each task of a multi-task module."""
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ValueError(f"{name}={value!r} must be {kind}")
