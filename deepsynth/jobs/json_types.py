"""Strict checks of JSON values from the job API against a config dataclass's field types.

The CLI and the YAML presets hand `config_from_dict` strings that YAML parsed (`lr=1e-3` arrives
as a string, `lora_targets=q_proj,v_proj` as a comma list), so it converts them. A JSON client
sends typed values, and a value of another type is a mistake or a probe: here nothing is
converted. A list is not a string, a string is not a number, a bool is not an int, and every
float is finite (Python's JSON parser reads `NaN` and `Infinity`). An int is accepted where a
float goes, since JSON has one number type.

    check_types(TrainConfig, {"lr": float("nan")}, where="overrides")   # ValueError: overrides.lr expects a finite number ...
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable
from typing import Any


def check_types(cls: type, values: dict[str, Any], where: str) -> None:
    """Raise ValueError naming `where.key` for a value that is not exactly of its field's type.

    Keys that are not fields are left to the caller, which names the known ones.
    """
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key in hints and not matches(value, hints[key]):
            raise ValueError(f"{where}.{key} expects {_describe(hints[key])}, got {_kind(value)}.")


def matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value is of type `hint` (unions, list[...], dict[..., ...], Any and the scalars)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arm) for arm in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(matches(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(matches(k, key) and matches(v, item) for k, v in value.items())
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    raise TypeError(f"check_types does not know the field type {hint!r}.")


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """A JSON value with `fn` applied to every string in it, object keys included."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {fn(str(k)): map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [map_strings(v, fn) for v in value]
    return value


def _describe(hint: Any) -> str:
    text = str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.replace("float", "finite float")


def _kind(value: Any) -> str:
    text = repr(value)
    return f"{text if len(text) <= 80 else text[:77] + '...'} ({type(value).__name__})"
