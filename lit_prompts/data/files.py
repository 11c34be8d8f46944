"""Reading a split's local files (csv, tsv, json, jsonl, CoNLL, SQuAD json), with errors that name the file.

A local file that cannot be used as it is stops with a ``DataFileError`` (a ValueError) naming the
file and, where it can, the line: an empty file, a header without rows, bytes that are not text in
the configured encoding, a JSON line that does not parse or is not an object, a CSV row that does
not fit the header. CSV / TSV cells are read as written ("NA", "null" and "1.50" stay text); an
empty cell is a missing value.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
from pathlib import Path

import datasets
import pandas as pd

from ..backbone import resolve_path
from .conll import CONLL_SUFFIXES, read_conll
from .raw import ENCODING_OPTION, INTEGER_TEXT, DataFileError, RawSplit, text_encoding
from .squad import read_squad_json

# Extension -> (datasets builder, keyword arguments shared by the builder and pandas.read_csv). TSV
# is read without quote handling because corpora such as SST-2 contain unbalanced quote characters
# inside sentences.
BUILDERS = {
    ".csv": ("csv", {"sep": ","}),
    ".tsv": ("csv", {"sep": "\t", "quoting": csv.QUOTE_NONE}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
}


def first_undecodable(path: str, encoding: str) -> tuple[int, int, bytes] | None:
    """(byte offset, line, bytes) of the first bytes of the file that are not ``encoding`` text."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    fed, newlines = 0, 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            pending = decoder.getstate()[0]  # bytes of an unfinished character, kept from the last chunk
            try:
                newlines += decoder.decode(chunk, final=not chunk).count("\n")
            except UnicodeDecodeError as error:  # error.object is pending + chunk
                line = newlines + error.object[: error.start].decode(encoding, errors="replace").count("\n") + 1
                return fed - len(pending) + error.start, line, error.object[error.start : error.end]
            if not chunk:
                return None
            fed += len(chunk)


def _is_blank(path: str) -> bool:
    """Whether the file holds nothing but white space (and perhaps a UTF-8 byte-order mark)."""
    with open(path, "rb") as f:
        first = True
        while chunk := f.read(1 << 16):
            if first and chunk.startswith(codecs.BOM_UTF8):
                chunk = chunk[len(codecs.BOM_UTF8) :]
            if chunk.strip():
                return False
            first = False
    return True


def csv_columns(path: str, original: str, option: str, kwargs: dict, encoding: str) -> list[str]:
    """The header of a CSV / TSV file; a file without a header line or without rows is refused."""
    try:
        head = pd.read_csv(path, nrows=1, dtype=object, keep_default_na=False, encoding=encoding, **kwargs)
    except pd.errors.EmptyDataError:
        raise DataFileError(f"{original} ({option}) is empty: it has no rows") from None
    if len(head) == 0:
        raise DataFileError(
            f"{original} ({option}) has a header line ({', '.join(map(str, head.columns))}) but no rows"
        )
    return [str(c) for c in head.columns]


def integer_columns(rows: datasets.Dataset) -> datasets.Dataset:
    """CSV cells are text. A column whose filled cells are all integers as written ("7", not "07",
    "+7" or "7.0") holds integers, as pandas would read it, with None for its empty cells; every
    other column keeps its cells as written."""
    columns = {}
    for name in rows.column_names:
        values = list(rows[name])
        filled = [v.strip() for v in values if v is not None and v.strip()]
        if filled and all(INTEGER_TEXT.fullmatch(v) and abs(int(v)) < 2**63 for v in filled):
            columns[name] = [int(v) if v is not None and v.strip() else None for v in values]
    if not columns:
        return rows
    return datasets.Dataset.from_dict({n: columns[n] if n in columns else list(rows[n]) for n in rows.column_names})


def _load_quietly(builder: str, paths: list[str], split: str, **kwargs) -> datasets.Dataset:
    """``datasets.load_dataset`` of local files; its own log lines about a file it cannot read are
    silenced, because the error raised in their place names the file and the place."""
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        return datasets.load_dataset(builder, data_files={split: paths}, split=split, **kwargs)
    finally:
        datasets.logging.set_verbosity(verbosity)


def _describe_json(value) -> str:
    kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
    return f"{kind} ({json.dumps(value)[:40]})"


_OBJECT_EXAMPLE = '{"text": "...", "label": "..."}'


def json_problem(path: str, original: str, encoding: str) -> str | None:
    """What makes a json / jsonl file unreadable as rows, with its line; None when nothing is found."""
    text = Path(path).read_text(encoding=text_encoding(encoding))
    if not text.strip():
        return f"{original} is empty: it has no rows"
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as error:
        whole_error = error
    else:
        if isinstance(whole, dict):
            return None
        if not isinstance(whole, list):
            return f"{original} holds {_describe_json(whole)}; give one object per line, or an array of objects"
        if not whole:
            return f"{original} holds an empty JSON array: it has no rows"
        for i, item in enumerate(whole):
            if not isinstance(item, dict):
                return f"{original}: item {i} of the JSON array is {_describe_json(item)}, not an object like {_OBJECT_EXAMPLE}"
        return None
    lines = text.split("\n")  # not splitlines(): JSON strings may hold U+2028 and the like
    first = next((line for line in lines if line.strip()), "")
    try:
        json.loads(first)
        json_lines = True
    except json.JSONDecodeError:
        json_lines = whole_error.msg == "Extra data"
    if not json_lines:  # one (pretty-printed) JSON document
        return f"{original}, line {whole_error.lineno}, column {whole_error.colno}: not valid JSON ({whole_error.msg})"
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            return (f"{original}, line {number}: not valid JSON ({error.msg}, column {error.colno}); each line of a "
                    f"JSON lines file must be one object like {_OBJECT_EXAMPLE}")
        if not isinstance(item, dict):
            return f"{original}, line {number}: {_describe_json(item)} where each line must be one object like {_OBJECT_EXAMPLE}"
    return None


def _innermost(error: BaseException) -> BaseException:
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    return error


def _explain(error: Exception, suffix: str, resolved: list[str], originals: list[str], encoding: str) -> DataFileError:
    """Why the files of a split could not be read, naming the file and the line where possible."""
    kind = suffix.lstrip(".").upper()
    if suffix in (".json", ".jsonl"):
        for path, original in zip(resolved, originals):
            problem = json_problem(path, original, encoding)
            if problem:
                return DataFileError(problem)
    if suffix in (".csv", ".tsv"):
        kwargs = BUILDERS[suffix][1]
        for path, original in zip(resolved, originals):
            try:
                pd.read_csv(path, dtype=object, keep_default_na=False, encoding=encoding, **kwargs)
            except Exception as problem:  # noqa: BLE001 - pandas' message names the line
                message = " ".join(str(problem).split())
                hint = ("; a text holding commas, quotes or line breaks must be in double quotes" if suffix == ".csv"
                        else "; a text must not hold a tab")
                return DataFileError(f"{original}: cannot be read as {kind}: {message}{hint if 'fields' in message else ''}")
    cause = _innermost(error)
    message = " ".join(str(cause).split()) or type(cause).__name__
    return DataFileError(f"{', '.join(originals)}: cannot be read as {kind}: {message}")


def split_files(split: str, paths: str | list[str]) -> tuple[list[str], list[str], str]:
    """A split's files as given, as found on disk, and the extension they share; a missing file or
    an extension no reader knows is refused by name."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    resolved = [resolve_path(p) for p in paths]
    for original, path in zip(paths, resolved):
        if not Path(path).is_file():
            raise FileNotFoundError(f"data file for split {split!r} not found: {original}")
    suffixes = {Path(p).suffix.lower() for p in resolved}
    known = sorted([*BUILDERS, *CONLL_SUFFIXES])
    if len(suffixes) != 1 or next(iter(suffixes)) not in known:
        raise ValueError(f"split {split!r}: files {paths} must share one of the extensions {known}")
    return paths, resolved, suffixes.pop()


def read_files(split: str, paths: str | list[str], encoding: str = "utf-8", option: str | None = None) -> RawSplit:
    """The rows of a split's local files; ``option`` names where the files were given, for errors
    (default: ``data_files 'SPLIT'``)."""
    option = option or f"data_files {split!r}"
    paths, resolved, suffix = split_files(split, paths)
    source = ", ".join(paths)
    try:
        rows = _read_rows(split, option, suffix, resolved, paths, encoding)
    except DataFileError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the readers raise, the file is at fault
        raise _explain(error, suffix, resolved, paths, encoding) from error
    if len(rows) == 0:
        what = "sentences (lines with a token and a tag)" if suffix in CONLL_SUFFIXES else "rows"
        raise DataFileError(f"{source} ({option}) has no {what}")
    return RawSplit(rows, source)


def _read_rows(split: str, option: str, suffix: str, resolved: list[str], originals: list[str],
               encoding: str) -> datasets.Dataset:
    for path, original in zip(resolved, originals):
        if _is_blank(path):
            raise DataFileError(f"{original} ({option}) is empty: it has no rows")
        # Checked before reading: pyarrow's json reader keeps bytes that are not UTF-8 in its strings.
        found = first_undecodable(path, encoding)
        if found:
            offset, line, data = found
            shown = " ".join(f"0x{b:02x}" for b in data)
            raise DataFileError(
                f"{original}: byte {shown} at offset {offset} (line {line}) is not {encoding} text; set "
                f"{ENCODING_OPTION} to the file's encoding (e.g. latin-1 or cp1252), or save the file as UTF-8"
            )
    if suffix in CONLL_SUFFIXES:
        return read_conll(resolved, originals, encoding)
    if suffix == ".json":
        squad = read_squad_json(resolved, originals, encoding)  # None: not SQuAD's layout; `datasets` reads it
        if squad is not None:
            return squad
    builder, kwargs = BUILDERS[suffix]
    if builder == "json":
        return _load_quietly("json", resolved, split, encoding=encoding)
    columns, first = None, None
    for path, original in zip(resolved, originals):
        found = csv_columns(path, original, option, kwargs, encoding)
        if columns is None:
            columns, first = found, original
        elif found != columns:
            raise DataFileError(f"{original} has the columns {found} but {first} has {columns}: "
                                "the files of one split need the same header")
    # Every column is read as text (the cells as written, "" where empty), then integer columns
    # are recognised over the whole split (pandas would guess per chunk of 10,000 rows).
    features = datasets.Features({c: datasets.Value("string") for c in columns})
    rows = _load_quietly("csv", resolved, split, features=features, keep_default_na=False, encoding=encoding, **kwargs)
    return integer_columns(rows)
