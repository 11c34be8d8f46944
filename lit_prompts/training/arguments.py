"""The typed choices of a method's ``__init__`` checked for Python callers too (the CLI's parser
checks them already): a wrong value is refused with its name, never quietly taken as another."""

from __future__ import annotations

import inspect
import types
import typing

COUNTS = {"PositiveInt": "a positive integer", "NonNegativeInt": "a non-negative integer",
          "PositiveFloat": "> 0", "NonNegativeFloat": ">= 0"}


def _allowed(hint, value) -> str | None:
    """Why ``value`` does not fit ``hint``, or None when it fits (or the hint is not a choice or count)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    reasons = []
    for option in options:
        if option is type(None):
            continue  # (a value that is None fits, above; any other is checked against the rest)
        if typing.get_origin(option) is typing.Literal:
            if value in typing.get_args(option):
                return None
            reasons.append(f"is not one of {', '.join(map(repr, typing.get_args(option)))}")
        elif isinstance(option, type) and issubclass(option, int | float) and option not in (int, float, bool):
            try:  # jsonargparse's PositiveInt, NonNegativeInt, PositiveFloat... validate on construction
                option(value)
                return None
            except (TypeError, ValueError):
                reasons.append(f"must be {COUNTS.get(option.__name__, 'a ' + option.__name__)}")
        else:
            return None  # some other type: not a choice we check
    return " and ".join(reasons) if reasons else None


def check_choices(cls: type, values: dict) -> None:
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None or klass is object:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # noqa: BLE001 - unresolvable annotations: leave them to the parser
            continue
        for name in inspect.signature(init).parameters:
            if name in hints and name in values:
                reason = _allowed(hints[name], values[name])
                if reason:
                    raise ValueError(f"{name}={values[name]!r} {reason}")
