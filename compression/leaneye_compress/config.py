"""Stage configs: frozen dataclasses read from YAML by one loader that checks every value up front.

A stage declares its config as a (possibly nested) frozen dataclass whose fields carry their
bounds in `field(metadata=...)` (see `bounded`); `load_config(cls, path)` then turns any mistake
into one line naming the file and the dotted key: an unknown key (with the closest valid one),
a value of the wrong type, or one out of range. Imports no torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path
from typing import Any

import yaml

from leaneye.errors import LeanEyeError, first_line


def bounded(
    default,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    multiple_of: int | None = None,
    choices: tuple | None = None,
):
    """A dataclass field whose value (each element, for a tuple) must lie in [low, high] (low excluded
    with `low_open`), be a multiple of `multiple_of`, or be one of `choices`."""
    limits = {"low": low, "high": high, "low_open": low_open, "multiple_of": multiple_of, "choices": choices}
    return dataclasses.field(default=default, metadata={"limits": limits})


def positive(default, high: float | None = None):
    return bounded(default, low=0, low_open=True, high=high)


def _describe_limits(limits: dict) -> str:
    if limits["choices"]:
        return "one of " + ", ".join(map(str, limits["choices"]))
    parts = []
    if limits["low"] is not None:
        parts.append(f"{'>' if limits['low_open'] else '>='} {limits['low']:g}")
    if limits["high"] is not None:
        parts.append(f"<= {limits['high']:g}")
    if limits["multiple_of"]:
        parts.append(f"a multiple of {limits['multiple_of']}")
    return " and ".join(parts)


def _check_limits(value, limits: dict | None, where: str) -> None:
    if not limits:
        return
    if limits["choices"]:
        ok = value in limits["choices"]
    else:
        low, high = limits["low"], limits["high"]
        ok = (
            (low is None or (value > low if limits["low_open"] else value >= low))
            and (high is None or value <= high)
            and (not limits["multiple_of"] or value % limits["multiple_of"] == 0)
        )
    if not ok:
        raise LeanEyeError(f"{where} {value!r}: expected {_describe_limits(limits)}")


def _scalar(kind: type, value, where: str):
    if kind is bool:
        if not isinstance(value, bool):
            raise LeanEyeError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LeanEyeError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise LeanEyeError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise LeanEyeError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: config fields of type {kind!r} are not supported")


def _value(kind, value, source: str, key: str, limits: dict | None):
    where = f"{source}: {key}"
    if dataclasses.is_dataclass(kind):
        return from_mapping(kind, value, source, f"{key}.")
    if typing.get_origin(kind) is tuple:
        element_types = typing.get_args(kind)
        if len(element_types) == 2 and element_types[1] is Ellipsis:  # tuple[str, ...]: any length
            if not isinstance(value, (list, tuple)):
                raise LeanEyeError(f"{where}: expected a list, got {value!r}")
            element_types = (element_types[0],) * len(value)
        if not isinstance(value, (list, tuple)) or len(value) != len(element_types):
            raise LeanEyeError(f"{where}: expected a list of {len(element_types)} values, got {value!r}")
        return tuple(
            _value(element_type, element, source, f"{key}[{k}]", limits)
            for k, (element_type, element) in enumerate(zip(element_types, value))
        )
    if typing.get_origin(kind) is dict:  # dict[str, float]: e.g. per-layer values keyed by name
        key_type, value_type = typing.get_args(kind)
        if not isinstance(value, dict):
            raise LeanEyeError(f"{where}: expected a mapping, got {value!r}")
        return {
            _scalar(key_type, k, f"{where} key"): _value(value_type, v, source, f"{key}[{k}]", limits)
            for k, v in value.items()
        }
    checked = _scalar(kind, value, where)
    _check_limits(checked, limits, where)
    return checked


def from_mapping(cls: type, data: Any, source: str, prefix: str = ""):
    """An instance of the dataclass `cls` from a mapping (missing keys take their defaults); errors
    name `source` (the file) and the dotted key below `prefix`."""
    where = f"{source}: {prefix}" if prefix else source
    known = {f.name: f for f in dataclasses.fields(cls)}
    if not isinstance(data, dict):
        raise LeanEyeError(
            f"{where.rstrip('.')}: expected a mapping with keys {', '.join(known)}, got {type(data).__name__}"
        )
    types = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        if key not in known:
            closest = difflib.get_close_matches(str(key), known, n=1, cutoff=0.0)
            raise LeanEyeError(f"{source}: unknown key {prefix}{key}; the closest valid key is {prefix}{closest[0]}")
        values[key] = _value(types[key], value, source, f"{prefix}{key}", known[key].metadata.get("limits"))
    try:
        return cls(**values)
    except ValueError as exc:  # a __post_init__ check across fields
        raise LeanEyeError(f"{where.rstrip('.')}: {first_line(exc)}") from None


def load_config(cls: type, path: Path):
    """Read the YAML file `path` into the dataclass `cls`; every mistake is one LeanEyeError line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LeanEyeError(f"--config {path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise LeanEyeError(f"--config {path}: not UTF-8 text (byte {exc.start}); expected a YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LeanEyeError(f"--config {path}: not valid YAML ({first_line(exc)})") from None
    return from_mapping(cls, {} if data is None else data, str(path))


def to_mapping(config) -> dict:
    """The plain (YAML- and JSON-ready) form of a config dataclass: tuples become lists."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))
