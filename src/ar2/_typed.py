"""Dataclasses built from TOML data, checked where the data is read: unknown keys, values of
the wrong type (``rounds = "two"``) and values out of range are errors that name the key,
raised before any work starts.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Stage:
    ...     steps: int = 1
    >>> from_dict(Stage, {"steps": "ten"}, "my.toml")
    Traceback (most recent call last):
    ar2.errors.Ar2Error: my.toml: steps = 'ten' is a string, not an integer. Fix: write it ...
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar, Union

from ar2.errors import Ar2Error

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys (the closest valid one
    named) and values of the wrong type (``rounds = "two"``), before any work starts.

    Example:
        >>> from ar2.config import EncoderConfig
        >>> from_dict(EncoderConfig, {"pooling": "cls"}).pooling
        'cls'
        >>> from_dict(EncoderConfig, {"batch_size": "16"}, "my.toml")
        Traceback (most recent call last):
        ar2.errors.Ar2Error: my.toml: batch_size = '16' is a string, not an integer. Fix: ...
        >>> from_dict(EncoderConfig, {"poling": "cls"}, "my.toml")
        Traceback (most recent call last):
        ar2.errors.Ar2Error: my.toml: unknown key 'poling'. Fix: did you mean 'pooling'? ...
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise unknown_keys(source, unknown, names)
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        check_type(source, key, value, hints[key])
    try:
        return cls(**data)
    except (TypeError, ValueError) as err:
        fix = "" if "Fix:" in str(err) else ". Fix: change that value"
        raise Ar2Error(f"{source}: {err}{fix}") from err


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def unknown_keys(
    source: str, keys: Sequence[str], valid: Iterable[str], where: str = "", what: str = "key"
) -> Ar2Error:
    """The one-line error for unknown ``keys``: each with the closest of ``valid`` (difflib),
    then the valid ones (``table.key`` names listed as ``table.*``).

    Example:
        >>> print(unknown_keys("my.toml [g0]", ["stpes"], ["steps", "lr"]))
        my.toml [g0]: unknown key 'stpes'. Fix: did you mean 'steps'? (valid keys: lr, steps)
        >>> print(unknown_keys("--set x=1", ["x"], ["rounds", "g0.lr"]))
        --set x=1: unknown key 'x'. Fix: correct or remove it (valid keys: g0.*, rounds)
    """
    names = sorted(valid)
    several = len(keys) > 1
    fixes = []
    for key in keys:
        close = difflib.get_close_matches(key, names, n=1)
        of, it = (f" for {key!r}", repr(key)) if several else ("", "it")
        fixes.append(f"did you mean {close[0]!r}{of}?" if close else f"correct or remove {it}")
    listing = ", ".join(sorted({n.split(".")[0] + ".*" if "." in n else n for n in names}))
    told = ", ".join(repr(k) for k in keys)
    return Ar2Error(
        f"{source}: unknown {what}{'s' if several else ''} {told}{where}. "
        f"Fix: {'; '.join(fixes)} (valid {what}s: {listing})"
    )


def check_type(source: str, key: str, value: Any, hint: Any) -> None:
    """Raise an :class:`Ar2Error` naming the key unless ``value`` is of type ``hint``.

    Example:
        >>> check_type("my.toml", "lr", 1, float)  # an integer is a number
        >>> check_type("my.toml", "lr", True, float)
        Traceback (most recent call last):
        ar2.errors.Ar2Error: my.toml: lr = True is true or false, not a number. Fix: ...
    """
    allowed = (
        typing.get_args(hint) if typing.get_origin(hint) in (types.UnionType, Union) else (hint,)
    )
    if any(_is_a(value, t) for t in allowed):
        return
    names = [_TYPE_NAMES.get(t, f"a [{key}] table") for t in allowed if t is not type(None)]
    wanted = " or ".join(names)
    example = {"a string": '"text"', "an integer": "2", "a number": "0.5", "true or false": "true"}
    fix = f"write it as {wanted}, like {key} = {example.get(names[0], '...')}"
    if type(None) in allowed:
        fix += ", or leave it out"
    raise Ar2Error(f"{source}: {key} = {value!r} is {kind_of(value)}, not {wanted}. Fix: {fix}")


def _is_a(value: Any, t: Any) -> bool:
    if t is type(None):
        return value is None
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, t)


def kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def check_ranges(
    obj: Any,
    at_least: dict[str, float],
    above: dict[str, float] | None = None,
    at_most: dict[str, float] | None = None,
) -> None:
    """Raise ``ValueError`` naming the first field outside its range (``None`` is let pass)."""
    rules = [(at_least, ">=", lambda v, b: v >= b), (above, ">", lambda v, b: v > b),
             (at_most, "<=", lambda v, b: v <= b)]  # fmt: skip
    for bounds, sign, ok in rules:
        for name, bound in (bounds or {}).items():
            value = getattr(obj, name)
            if not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                raise ValueError(f"{name} = {value} must be a finite number")
            if not ok(value, bound):
                raise ValueError(f"{name} = {value} must be {sign} {bound}")


def check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(valid)}")


def positive_int(text: str) -> int:
    """An argparse type: see the error."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def unit_fraction(text: str) -> float:
    """An argparse type: see the error."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def port_number(text: str) -> int:
    """An argparse type: see the error."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535 (0: any free port), got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: see the error."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value
