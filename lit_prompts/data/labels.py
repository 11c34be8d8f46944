"""Label (NER: tag) sets: the names in order, and how the values in the data find them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .raw import INTEGER_TEXT


def is_integer_text(value) -> bool:
    """Whether a value is an integer written as one ("7"; not "07", "7.0" or True)."""
    return isinstance(value, str) and INTEGER_TEXT.fullmatch(value.strip()) is not None


def name_order(names) -> list[str]:
    """Label names sorted as numbers when every one is an integer ("2" before "10"), else as text."""
    names = sorted(set(names))
    return sorted(names, key=int) if all(is_integer_text(n) for n in names) else names


@dataclass(frozen=True)
class LabelSet:
    """The label (or tag) names in order, and how the data's values find them.

    ``by_index``: an integer value is the index of its name (names from the data's ``ClassLabel``
    feature, or configured names none of which is an integer); -1 then marks an unlabelled row,
    as on the hub. Otherwise a value matches the name written the same way (1 matches "1") and
    nothing else: names inferred from the values are never indexed.
    """

    names: list[str]
    by_index: bool
    origin: str  # where the names come from, for errors
    inferred: bool = False  # read from the training data's values: a later split may hold others

    def unknown(self, value, where: str, what: str = "label", suggestion: list[str] | None = None) -> ValueError:
        """The error for a value that has no name; says how to give the full set where inferred."""
        message = f"{where}: {what} {value!r} is not in the {what} set {self.names}"
        if isinstance(value, int) and self.by_index:
            return ValueError(f"{message} (integer {what}s are indices into it, from {self.origin})")
        if not self.inferred:
            return ValueError(f"{message} (from {self.origin})")
        return ValueError(
            f"{message}, which was read from {self.origin} and is matched by value: give "
            f"data.init_args.label_names with every {what}, e.g. {suggestion or self.with_value(value)}"
        )

    def with_value(self, value) -> list[str]:
        return name_order([*self.names, str(value)])


class _ReadsTrainingData(Exception):
    """Raised where a task's ``read_labels`` asks for the training split."""


def labels_without_data(read_labels: Callable, configured: list[str] | None, columns) -> LabelSet | None:
    """The label set where it needs no data (configured names; QA's span labels), from a task's
    ``read_labels``; None where it would read the names from the training split."""

    def training_split():
        raise _ReadsTrainingData

    try:
        return read_labels(configured, training_split, columns)
    except _ReadsTrainingData:
        return None
