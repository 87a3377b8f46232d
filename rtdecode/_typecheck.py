"""Dataclasses from parsed YAML, every value checked against its annotation.

A mistake raises :class:`~rtdecode.errors.ConfigError` in one line: the file, the key (dotted, with
list indices), the rule and the value as it was read.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any

from rtdecode.errors import ConfigError


def from_mapping(cls: type, data: Any, file: str, key: str = "") -> Any:
    """An instance of dataclass ``cls`` from a parsed mapping, every value checked.

    Parameters
    ----------
    cls : type
        A dataclass whose annotations say what each key holds (nested dataclasses, lists of them,
        ``float``, ``int``, ``str``, ``bool``, ``dict``, ``list[...]``).
    data : object
        What YAML gave for it.
    file, key : str
        Where it came from, for the error (the key dotted, e.g. ``run.motion``).

    Raises
    ------
    ConfigError
        ``<file>: <key>: <rule>, got <value>``, one line.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: {key or 'the file'}: must be a mapping, got {short(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"{file}: {key or 'top level'}: unknown key(s) {short(unknown)}; allowed: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _check_value(hints[name], value, file, f"{key}.{name}" if key else name)
    return cls(**kwargs)


def short(value: Any) -> str:
    """A value as an error reports it: its repr, cut to 80 characters so one line stays one line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_value(tp: Any, value: Any, file: str, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, file, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            hint = ""
            if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
                hint = " (YAML reads this as text: write it with a dot and a sign, e.g. 1.0e+3)"
            raise ConfigError(f"{file}: {key}: must be a finite number, got {short(value)}{hint}")
        return float(value)
    base = typing.get_origin(tp) or tp
    args = typing.get_args(tp)
    if base is list:
        if not isinstance(value, list):
            raise ConfigError(f"{file}: {key}: must be a list, got {short(value)}")
        if args and dataclasses.is_dataclass(args[0]):
            return [from_mapping(args[0], v, file, f"{key}[{i}]") for i, v in enumerate(value)]
        if args:
            return [_check_value(args[0], v, file, f"{key}[{i}]") for i, v in enumerate(value)]
        return value
    if base is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{file}: {key}: must be an integer, got {short(value)}")
    if base is int and not -(2**31) < value < 2**31:
        raise ConfigError(f"{file}: {key}: must be an integer of at most 31 bits, got {short(value)}")
    if base is str and not isinstance(value, str):
        raise ConfigError(f"{file}: {key}: must be a string, got {short(value)}")
    if base in (bool, dict) and not isinstance(value, base):
        raise ConfigError(
            f"{file}: {key}: must be a {'boolean' if base is bool else 'mapping'}, got {short(value)}"
        )
    return value
