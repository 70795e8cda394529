"""The one home of JSON conversion: exact round trips (checkpoints) and plain files (events).

Exact:
``dumps`` writes numpy arrays as ``{"__ndarray__": [...], "dtype": "float64", "shape": [...]}``
and numpy scalars as plain numbers; Python writes floats with ``repr``, which round-trips every
double (and every float32) exactly, NaN and infinities included. ``loads`` turns the array
objects back into arrays of the same dtype and shape.

Plain (``events.jsonl``, ``summary.json``, ``calibration.json``, files people read): :func:`plain`
makes arrays lists and numpy scalars numbers; :func:`plain_default` is the same as the
``default`` of ``json.dumps``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

_ARRAY_KEY = "__ndarray__"


def to_jsonable(value: Any) -> Any:
    """Return ``value`` with numpy arrays/scalars (nested in dicts, lists, tuples) made JSON-ready."""
    if isinstance(value, np.ndarray):
        return {_ARRAY_KEY: value.tolist(), "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def from_jsonable(value: Any) -> Any:
    """Invert :func:`to_jsonable` (array objects become numpy arrays again)."""
    if isinstance(value, dict):
        if _ARRAY_KEY in value:
            data = np.array(value[_ARRAY_KEY], dtype=np.dtype(value["dtype"]))
            return data.reshape(value["shape"])
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


def dumps(value: Any, indent: int | None = None) -> str:
    """Serialise ``value`` (arrays included) to JSON text."""
    return json.dumps(to_jsonable(value), indent=indent, allow_nan=True)


def loads(text: str) -> Any:
    """Parse JSON text written by :func:`dumps`."""
    return from_jsonable(json.loads(text))


def plain_default(value: Any) -> Any:
    """``json.dumps(default=...)``: numpy arrays as lists, numpy scalars as numbers, paths as str."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def plain(value: Any) -> Any:
    """Return ``value`` with numpy arrays/scalars and paths (nested) made plain JSON values."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic | np.ndarray | Path):
        return plain_default(value)
    return value
