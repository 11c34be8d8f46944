"""How the command line reports a mistake: one or two lines that name the file, row, field or
option and what to do, without a traceback (``--debug`` or ``LIT_PROMPTS_DEBUG=1`` shows it)."""

from __future__ import annotations

import difflib
import os
import re
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser

from .loading import known_method_names

DEBUG_FLAG = "--debug"
DEBUG_ENV = "LIT_PROMPTS_DEBUG"
PROG = "python -m lit_prompts"
# Errors about the user's input (files, settings, data, checkpoints). Anything else is a bug in
# lit_prompts or a library, and keeps its traceback.
INPUT_ERRORS = (ValueError, KeyError, OSError, FloatingPointError, MisconfigurationException)
# Lines of jsonargparse's union-type reports that say nothing about the mistake itself.
_NOISE = ("Subtypes:", "Given value type:", "Errors:", "Does not validate against any of the Union subtypes",
          "- Expected a <class 'NoneType'>", "Given value:")


def check_config_files(args: list[str]) -> None:
    """Each ``--config`` file exists and is a YAML mapping; a syntax error is reported with the file,
    line and column (the parser's own report names neither the file nor, often, the right line)."""
    values = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    values += [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")]
    for value in values:
        path = Path(value)
        if not path.is_file():
            if any(c in value for c in ":{\n"):  # an inline YAML string, which the parser takes too
                continue
            raise FileNotFoundError(f"config file {value} does not exist")
        try:
            content = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(f"config file {value} is not UTF-8 text ({error.reason} at byte {error.start})") from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ValueError(f"config file {value}{where}: {getattr(error, 'problem', None) or error}") from None
        if content is not None and not isinstance(content, dict):
            raise ValueError(f"config file {value} must hold a mapping of sections (model:, data:, trainer:)")


_debug_flag = ContextVar("lit_prompts_debug_flag", default=False)


@contextmanager
def debug_flag(args: list[str]):
    """Inside the block, ``--debug`` in args (taken out of the list handed on) shows tracebacks."""
    token = _debug_flag.set(DEBUG_FLAG in args)
    try:
        yield [a for a in args if a != DEBUG_FLAG]
    finally:
        _debug_flag.reset(token)


def debug_active() -> bool:
    return _debug_flag.get() or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def describe(error: BaseException) -> str:
    """The message of an exception, as a person reads it (a KeyError's message is not a key). An
    error that jsonargparse wrapped while building a class is reported as the class raised it."""
    while isinstance(error.__cause__, INPUT_ERRORS) and "Union subtypes" in str(error):
        error = error.__cause__
    if "Union subtypes" in str(error):
        return condense(str(error), known_method_names())
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        return error.args[0]
    return str(error).strip() or type(error).__name__


def report(error: BaseException) -> None:
    sys.stderr.write(f"{PROG}: error: {describe(error)}\n(add {DEBUG_FLAG}, or set {DEBUG_ENV}=1, for the traceback)\n")


def _unknown_class(message: str, known: list[str]) -> str | None:
    """jsonargparse's report of a class name it cannot import, as one line with the choices."""
    key = re.search(r'Parser key "(model|data)"', message)
    given = re.search(r"Given value: (\S+)", message)
    unknown = ("Expected a dot import path string", "not accessible or invalid", "does not correspond to a subclass")
    if not (key and given and any(u in message for u in unknown)):
        return None
    name = given.group(1)
    if key.group(1) == "data":
        return f"--data: unknown data module {name!r}; use PromptDataModule or MultiTaskDataModule (or an import path)"
    close = difflib.get_close_matches(name.rpartition(".")[2], known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"--model: unknown method {name!r}; known: {', '.join(known)}.{hint} A method of your own: give its "
            "import path, e.g. --model=my_package.MyMethod")


def condense(message: str, known_methods: list[str]) -> str:
    """jsonargparse's multi-line report of a bad option, in one line."""
    special = _unknown_class(message, known_methods)
    if special:
        return special
    lines = [line.strip() for line in message.splitlines()]
    kept = [line.removeprefix("- ") for line in lines if line and not line.startswith(_NOISE)]
    return " ".join(kept)


class ShortErrorParser(LightningArgumentParser):
    """LightningArgumentParser that reports a bad option in one line plus where to look, instead of
    the ~80-line usage of every option followed by a nested report."""

    def error(self, message: str, ex: Exception | None = None):
        if debug_active() or not self.exit_on_error:
            return super().error(message, ex)
        prog = self.prog.replace(" [options]", "").replace("__main__.py", PROG).replace("lit-prompts", PROG)
        command = prog if prog.startswith(PROG) else PROG
        sys.stderr.write(f"{command}: error: {condense(message, known_method_names())}\n"
                         f"(every option: {command} --help)\n")
        self.exit(2)
