"""JSON for summaries and reports: what ``json.dumps`` cannot write strictly becomes plain JSON."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

__all__ = ["json_line", "json_safe"]


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf floats as ``None``, numpy scalars/arrays as Python values and tuples
    as lists (nested dicts and lists too), so ``json.dumps(..., allow_nan=False)`` accepts it."""
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def json_line(obj: Any) -> str:
    """One line of strict JSON (anything else that is not JSON is written as its ``str``)."""
    return json.dumps(json_safe(obj), allow_nan=False, default=str)
