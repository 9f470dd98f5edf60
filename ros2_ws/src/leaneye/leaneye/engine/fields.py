"""The reader of a manifest's JSON fields, shared by `manifest` and `target`."""

from __future__ import annotations

import json
import math

from ..errors import LeanEyeError


class Fields:
    """Typed reads from the manifest's JSON, each failure naming the field and what was expected."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, path: str, expected: str, value=None) -> LeanEyeError:
        got = "" if value is None else f" (got {json.dumps(value)[:80]})"
        return LeanEyeError(f"{self.where}: field '{path}': expected {expected}{got}")

    def get(self, data: dict, path: str, expected: str):
        key = path.rsplit(".", 1)[-1]
        if not isinstance(data, dict) or key not in data:
            raise LeanEyeError(f"{self.where}: field '{path}' is missing; expected {expected}")
        return data[key]

    def choice(self, data: dict, path: str, choices) -> str:
        value = self.get(data, path, f"one of {', '.join(map(str, choices))}")
        if value not in choices:
            raise self.fail(path, f"one of {', '.join(map(str, choices))}", value)
        return value

    def string(self, data: dict, path: str, expected: str = "a non-empty string") -> str:
        value = self.get(data, path, expected)
        if not isinstance(value, str) or not value:
            raise self.fail(path, expected, value)
        return value

    def obj(self, data: dict, path: str, expected: str) -> dict:
        value = self.get(data, path, expected)
        if not isinstance(value, dict):
            raise self.fail(path, expected, value)
        return value

    def number(self, value, path: str, expected: str, positive: bool = False) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (positive and value <= 0):
            raise self.fail(path, expected, value)
        return float(value)

    def triple(self, data: dict, path: str, positive: bool) -> tuple[float, float, float] | None:
        expected = "null or 3 " + ("positive " if positive else "") + "numbers, one per channel"
        value = data.get(path.rsplit(".", 1)[-1]) if isinstance(data, dict) else None
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != 3:
            raise self.fail(path, expected, value)
        return tuple(self.number(v, path, expected, positive) for v in value)

    def int_list(self, value, path: str, expected: str, length: int | None = None) -> tuple[int, ...]:
        if (
            not isinstance(value, list)
            or (length is not None and len(value) != length)
            or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        ):
            raise self.fail(path, expected, value)
        return tuple(value)
