"""What every reader hands on (a ``RawSplit``: rows and where they came from) and what the readers
of local files share: the error for a file that cannot be used as it is, and text encodings."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

import datasets

ENCODING_OPTION = "data.init_args.encoding"
INTEGER_TEXT = re.compile(r"-?(0|[1-9][0-9]*)")


class DataFileError(ValueError):
    """A local data file that cannot be used as it is; the message names the file and the place."""


@dataclass
class RawSplit:
    """One split's rows, and a human name for where they came from (used in every error)."""

    rows: datasets.Dataset
    source: str

    def column(self, name: str, role: str) -> list:
        if name not in self.rows.column_names:
            raise KeyError(
                f"{self.source}: missing column {name!r} (the {role}); "
                f"columns are {self.rows.column_names}. Set data.init_args.{role} to one of them."
            )
        return self.rows[name][:]  # a list in one read (iterating the column formats row by row)


def check_encoding(encoding: str) -> str:
    """The codec's own name ('UTF8' -> 'utf-8'); a name Python does not know is refused."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise ValueError(
            f"{ENCODING_OPTION}={encoding!r} is not an encoding Python knows; e.g. utf-8, latin-1, cp1252, utf-16"
        ) from None


def text_encoding(encoding: str) -> str:
    """How lit_prompts' own readers open a file: a UTF-8 file may start with a byte-order mark."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
