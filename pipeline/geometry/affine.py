"""Affine georeferencing of upscaled outputs, as plain 6-tuples (no rasterio import).

A transform is ``(a, b, c, d, e, f)`` in ``rasterio.Affine`` order, mapping a pixel's
(column, row) to map coordinates::

    x = a * col + b * row + c
    y = d * col + e * row + f

``Affine(*t)`` turns one into a rasterio object and ``tuple(affine)[:6]`` turns it back.
"""

from __future__ import annotations

import math

__all__ = [
    "Transform",
    "apply",
    "as_transform",
    "bounds",
    "compose",
    "invert",
    "scaled_transform",
    "window_transform",
]

Transform = tuple[float, float, float, float, float, float]


def as_transform(values: object) -> Transform:
    """Validate a sequence of 6 (or 9, the last row ``0, 0, 1``) finite numbers as a transform.

    Raises:
        ValueError: wrong length, non-numbers, non-finite values or a 9-tuple whose last row
            is not ``(0, 0, 1)``.
    """
    try:
        items = [float(v) for v in values]  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"transform must be a sequence of 6 numbers (a, b, c, d, e, f), got {values!r}"
        ) from exc
    if len(items) == 9:
        if items[6:] != [0.0, 0.0, 1.0]:
            raise ValueError(
                f"a 9-element transform must end with 0, 0, 1 (an affine matrix), got {values!r}"
            )
        items = items[:6]
    if len(items) != 6:
        raise ValueError(
            f"transform must have 6 elements (a, b, c, d, e, f), got {len(items)}: {values!r}"
        )
    if not all(math.isfinite(v) for v in items):
        raise ValueError(f"transform elements must be finite, got {values!r}")
    return (items[0], items[1], items[2], items[3], items[4], items[5])


def _check_shape(name: str, shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(s) != s or s <= 0 for s in shape):
        raise ValueError(f"{name} must be two positive integers (height, width), got {shape!r}")
    return int(shape[0]), int(shape[1])


def scaled_transform(
    transform: object, in_shape: tuple[int, int], out_shape: tuple[int, int]
) -> Transform:
    """Transform of an output raster of ``out_shape`` (H, W) covering the same area as the input.

    Equals ``Affine(*transform) @ Affine.scale(w / W, h / H)`` with ``in_shape = (h, w)``: the
    top-left corner is unchanged and the output's bounds equal the input's bounds.
    """
    a, b, c, d, e, f = as_transform(transform)
    h, w = _check_shape("in_shape", in_shape)
    big_h, big_w = _check_shape("out_shape", out_shape)
    sx, sy = w / big_w, h / big_h
    return (a * sx, b * sy, c, d * sx, e * sy, f)


def window_transform(transform: object, row0: int, col0: int) -> Transform:
    """Transform of a window whose top-left pixel is (``row0``, ``col0``) of the raster.

    Equals ``Affine(*transform) @ Affine.translation(col0, row0)``.
    """
    a, b, c, d, e, f = as_transform(transform)
    return (a, b, a * col0 + b * row0 + c, d, e, d * col0 + e * row0 + f)


def bounds(transform: object, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """``(left, bottom, right, top)`` of a raster of ``shape`` (H, W), like ``rasterio`` bounds.

    Uses the four corners, so rotated transforms give the enclosing axis-aligned box.
    """
    a, b, c, d, e, f = as_transform(transform)
    h, w = _check_shape("shape", shape)
    xs = [a * col + b * row + c for col, row in ((0, 0), (w, 0), (0, h), (w, h))]
    ys = [d * col + e * row + f for col, row in ((0, 0), (w, 0), (0, h), (w, h))]
    return (min(xs), min(ys), max(xs), max(ys))


def apply(transform: object, col: float, row: float) -> tuple[float, float]:
    """Map coordinates ``(x, y)`` of the pixel position ``(col, row)``."""
    a, b, c, d, e, f = as_transform(transform)
    return a * col + b * row + c, d * col + e * row + f


def invert(transform: object, what: str = "the") -> Transform:
    """The inverse transform (map coordinates -> pixel position).

    Raises:
        ValueError: a singular (non-invertible) transform; ``what`` names it in the message.
    """
    a, b, c, d, e, f = as_transform(transform)
    det = a * e - b * d
    if det == 0 or not math.isfinite(det):
        raise ValueError(f"{what} transform {(a, b, c, d, e, f)!r} is not invertible")
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return (ia, ib, -(ia * c + ib * f), id_, ie, -(id_ * c + ie * f))


def compose(outer: object, inner: object) -> Transform:
    """``outer o inner`` (``inner`` applied first)."""
    a1, b1, c1, d1, e1, f1 = as_transform(outer)
    a2, b2, c2, d2, e2, f2 = as_transform(inner)
    return (a1 * a2 + b1 * d2, a1 * b2 + b1 * e2, a1 * c2 + b1 * f2 + c1,
            d1 * a2 + e1 * d2, d1 * b2 + e1 * e2, d1 * c2 + e1 * f2 + f1)
