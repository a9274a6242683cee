"""Coordinate conventions shared by every query path.

Two frames describe the same points:

* the paper's frame: ``[-1, 1]`` over the image, ordered ``(y, x)``; pixel ``i`` of a side of
  ``n`` pixels has its centre at ``-1 + (2 i + 1) / n``, computed with the official code's
  float32 arithmetic (:func:`paper_coord`) so that relative coordinates round as the paper's do;
* the latent-index frame (``u``) used by the fast path and the tiler: latent code ``i`` sits at
  ``u = i``, so output pixel ``j`` of ``n_out`` over ``n_in`` latents is at
  ``u_j = (j + 0.5) * (n_in / n_out) - 0.5`` (computed in float64, identically everywhere).
"""

from __future__ import annotations

import math
from numbers import Real

import torch


def paper_coord(idx: torch.Tensor, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Centres of pixels ``idx`` (any shape, integer values) of a side of ``n``, in ``[-1, 1]``.

    The official ``make_coord`` expression, operation for operation: ``r = 2 / (2 n)`` in double,
    then ``(-1 + r) + (2 r) * idx`` in ``dtype``. It depends only on ``(idx, n)``, so a tile that
    computes it from global indices gets the very numbers the whole image gets.
    """
    if n <= 0:
        raise ValueError(f"axis length n={n!r} must be positive")
    r = (1 - -1) / (2 * n)
    return -1 + r + (2 * r) * idx.to(dtype)


def make_coord(
    shape: tuple[int, ...], *, flatten: bool = True, dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Pixel-centre coordinates in ``[-1, 1]``: ``(prod(shape), ndim)`` or ``(*shape, ndim)``.

    Bit-identical to the official LIIF ``make_coord`` in float32 (see :func:`paper_coord`).
    """
    axes = [paper_coord(torch.arange(n, device=device), n, dtype) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return grid.reshape(-1, len(shape)) if flatten else grid


def axis_positions(n_in: int, n_out: int, start: int, stop: int,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """``u_j`` (float64) for output pixels ``j`` in ``[start, stop)``."""
    j = torch.arange(start, stop, dtype=torch.float64, device=device)
    return (j + 0.5) * (n_in / n_out) - 0.5


def _check_scale_value(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, Real):
        raise ValueError(f"scale {v!r} is not a number; give a positive finite number")
    f = float(v)
    if not math.isfinite(f) or f <= 0:
        raise ValueError(f"scale {v!r} must be a positive finite number")
    return f


def output_size(in_shape: tuple[int, int], *, scale: object = None,
                size: tuple[int, int] | None = None) -> tuple[int, int]:
    """Output ``(H, W)`` from a scale (number or ``(sy, sx)``) or an exact size.

    ``H = floor(h * sy + 0.5)`` (at least 1); the same rule as ``pipeline.geometry.tiling``.
    """
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale= or size=")
    h, w = in_shape
    if size is not None:
        if (len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0
                                   for s in size)):
            raise ValueError(f"size {size!r} must be two positive integers (H, W)")
        return int(size[0]), int(size[1])
    if isinstance(scale, tuple | list):
        if len(scale) != 2:
            raise ValueError(f"scale {scale!r} must be a number or a (sy, sx) pair")
        sy, sx = scale
    else:
        sy = sx = scale
    sy, sx = _check_scale_value(sy), _check_scale_value(sx)
    return max(1, math.floor(h * sy + 0.5)), max(1, math.floor(w * sx + 0.5))
