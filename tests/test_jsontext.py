"""pipeline.io.jsontext: summaries and reports are strict JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.io import json_line, json_safe


def test_json_safe_plain_values() -> None:
    obj = {"a": float("nan"), "b": [np.float32(1.5), (np.int64(2), float("-inf"))],
           "c": np.arange(3, dtype=np.uint8), "d": {"e": float("inf"), "f": "x"}, "g": None,
           "h": np.float64("nan"), "i": True}
    assert json_safe(obj) == {"a": None, "b": [1.5, [2, None]], "c": [0, 1, 2],
                              "d": {"e": None, "f": "x"}, "g": None, "h": None, "i": True}


def test_json_line_is_one_strict_line() -> None:
    line = json_line({"x": float("nan"), "p": Path("/x"), "s": "a\nb"})
    assert "\n" not in line and "NaN" not in line
    assert json.loads(line) == {"x": None, "p": "/x", "s": "a\nb"}
