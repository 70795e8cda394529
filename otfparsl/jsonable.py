"""JSON that round-trips numpy arrays and floats exactly (checkpoints, calibration state).

``dumps`` writes numpy arrays as ``{"__ndarray__": [...], "dtype": "float64", "shape": [...]}``
and numpy scalars as plain numbers; Python writes floats with ``repr``, which round-trips every
double (and every float32) exactly, NaN and infinities included. ``loads`` turns the array
objects back into arrays of the same dtype and shape.
"""

from __future__ import annotations

import json
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
