"""``ar2 train --set KEY=VALUE``: settings over a config's TOML, checked as the TOML is.

Example:
    >>> apply_overrides({"rounds": 2}, ["rounds=3", "g0.steps=80"])
    {'rounds': 3, 'g0': {'steps': 80}}
"""

from __future__ import annotations

import tomllib
import typing
from collections.abc import Sequence
from typing import Any

from ar2._typed import check_type, unknown_keys
from ar2.config import AR2Config, config_tables
from ar2.errors import Ar2Error


def apply_overrides(
    data: dict[str, Any], sets: Sequence[str], root: type = AR2Config
) -> dict[str, Any]:
    """``data`` (a config's TOML) with the ``KEY=VALUE`` settings of ``ar2 train --set``
    applied in order (the last of a key wins). ``KEY`` is a field (``rounds``) or
    ``table.field`` (``g0.steps``); ``VALUE`` is a TOML value, or plain text where it is not
    one (``eval_measure=nDCG@10``, a path); ``none`` (or nothing) unsets a field that may be
    unset (``g0.epochs=none``: the stage runs ``steps``). Keys and types are checked as a TOML
    file's are,
    the error naming the ``--set``; ranges are checked when the config is built. ``root`` is
    the config class the keys belong to (:class:`~ar2.config.PretrainConfig` for
    ``ar2 pretrain``).

    Example:
        >>> apply_overrides({"g0": {"lr": 1e-5}}, ["rounds=3", "g0.steps=80"])
        {'g0': {'lr': 1e-05, 'steps': 80}, 'rounds': 3}
        >>> apply_overrides({}, ["g0.stpes=80"])
        Traceback (most recent call last):
        ar2.errors.Ar2Error: --set g0.stpes=80: unknown key 'stpes' in [g0]. Fix: did you mean ...
    """
    out = dict(data)
    for item in sets:
        table, key, value = parse_override(item, root)
        if table is None:
            out[key] = value
        elif isinstance(out.get(table, {}), dict):  # else load_ar2_config names the file's error
            out[table] = {**out.get(table, {}), key: value}
    return out


def parse_override(item: str, root: type = AR2Config) -> tuple[str | None, str, Any]:
    """One ``--set KEY=VALUE``: its table (``None`` for a top-level field), key and value,
    checked against the field's type.

    Example:
        >>> parse_override("g0.lr=1e-5")
        ('g0', 'lr', 1e-05)
        >>> parse_override("eval_measure=R@100"), parse_override("g0.epochs=none")
        ((None, 'eval_measure', 'R@100'), ('g0', 'epochs', None))
        >>> parse_override("rounds=two")
        Traceback (most recent call last):
        ar2.errors.Ar2Error: --set rounds=two: rounds = 'two' is a string, not an integer. Fix: ...
    """
    source = f"--set {item}"
    name, equals, text = item.partition("=")
    name = name.strip()
    if not equals or not name:
        raise Ar2Error(
            f"{source}: not KEY=VALUE. Fix: write it like --set rounds=3 or --set g0.steps=80"
        )
    table, _, key = name.rpartition(".")
    hint = _override_type(source, table, key, root)
    value = _toml_value(text.strip())
    if value in ("none", "") and type(None) in typing.get_args(hint):
        value = None  # what leaving the key out of a TOML file gives (``g0.epochs=none``)
    check_type(source, key, value, hint)
    return table or None, key, value


def _override_type(source: str, table: str, key: str, root: type = AR2Config) -> Any:
    """The type of the field ``--set`` names (``table`` empty at the top level), or an
    :class:`Ar2Error` naming the closest valid key.

    Example:
        >>> _override_type("--set g0.steps=8", "g0", "steps")
        <class 'int'>
    """
    tables, fields = config_tables(root), typing.get_type_hints(root)
    if not table and key in tables:
        raise Ar2Error(
            f"{source}: {key} is a table of settings, not one value. Fix: set its keys one "
            f"by one, like --set {key}.{next(iter(typing.get_type_hints(tables[key])))}=..."
        )
    if not table:
        if key not in fields:
            every = [k for k in fields if k not in tables]
            every += [f"{t}.{k}" for t, kind in tables.items() for k in typing.get_type_hints(kind)]
            raise unknown_keys(source, [key], every)
        return fields[key]
    if table not in tables:
        if table in fields:
            fix = f"set it as one value, like --set {table}=..."
            raise Ar2Error(f"{source}: {table} is not a table. Fix: {fix}")
        raise unknown_keys(source, [table], tables, what="table")
    hints = typing.get_type_hints(tables[table])
    if key not in hints:
        raise unknown_keys(source, [key], hints, where=f" in [{table}]")
    return hints[key]


def _toml_value(text: str) -> Any:
    """``text`` read as a TOML value; the text itself where it is not one.

    Example:
        >>> _toml_value("1e-5"), _toml_value('"a b"'), _toml_value("nDCG@10")
        (1e-05, 'a b', 'nDCG@10')
    """
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return parsed["v"] if list(parsed) == ["v"] else text
