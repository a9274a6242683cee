"""Overview levels of the Zarr output, written by the tile workers in the same pass (numpy only).

Level ``l`` (1..L) has ``ceil(H / 2**l) x ceil(W / 2**l)`` pixels; pixel ``(i, j)`` is the mean of
the *valid* pixels of the full-resolution block ``[i 2^l, (i+1) 2^l) x [j 2^l, (j+1) 2^l)``
(a pixel is valid unless all its bands equal nodata, or any is NaN); a block without a valid
pixel is nodata. Integer levels are rounded half to even and, like the full level, never equal
nodata where valid.

Level ``l`` is chunked ``level_chunk(chunk, l)`` = ``max(chunk / 2^l, 64)`` (never above the full
level's chunk), so a tile whose sides are multiples of :func:`pyramid_grid` owns whole chunks at
every level: no second pass, no two writers on one chunk.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MIN_LEVEL_CHUNK", "block_means", "default_levels", "level_chunk", "level_shape",
           "pyramid_grid"]

MIN_LEVEL_CHUNK = 64
#: stop adding levels once the smallest one's longer side is at most this
SMALLEST_SIDE = 512


def level_chunk(chunk: int, level: int) -> int:
    """The chunk side of overview ``level`` for a full-resolution chunk side ``chunk``."""
    return max(min(chunk, MIN_LEVEL_CHUNK), chunk >> level)


def pyramid_grid(chunk: int, levels: int) -> int:
    """The side every tile must be a multiple of, so that it owns whole chunks at each level."""
    return max([chunk] + [level_chunk(chunk, lv) << lv for lv in range(1, levels + 1)])


def level_shape(shape: tuple[int, int], level: int) -> tuple[int, int]:
    """``(ceil(H / 2^level), ceil(W / 2^level))``."""
    f = 1 << level
    return (-(-shape[0] // f), -(-shape[1] // f))


def default_levels(shape: tuple[int, int], chunk: int, max_tile: int) -> int:
    """Halvings until the longer side is at most 512 px, as far as tiles of ``max_tile`` allow."""
    levels = 0
    while max(shape) / (1 << levels) > SMALLEST_SIDE and pyramid_grid(chunk, levels + 1) <= \
            max(max_tile, chunk):
        levels += 1
    return levels


def block_means(data: np.ndarray, levels: int, nodata: float | None,
                value_range: tuple[float, float] | None = None) -> list[np.ndarray]:
    """Levels ``1..levels`` of a tile ``data (C, h, w)`` whose origin lies on the level grid:
    ``[(C, ceil(h/2), ceil(w/2)), ...]`` in ``data``'s dtype (see the module docstring);
    ``value_range`` orients the nudge off nodata (default: the dtype's range)."""
    from pipeline.io.values import nudge_off_nodata

    c, h, w = data.shape
    x = data.astype(np.float64)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        valid = ~(x == nodata).all(axis=0)
    else:
        valid = np.ones((h, w), dtype=bool)
    if data.dtype.kind == "f":
        valid &= np.isfinite(x).all(axis=0)
    total = np.where(valid[None], x, 0.0)
    count = valid.astype(np.float64)
    out = []
    for level in range(1, levels + 1):
        f = 1 << level
        hh, ww = -(-h // f), -(-w // f)
        s = np.zeros((c, hh * f, ww * f))
        n = np.zeros((hh * f, ww * f))
        s[:, :h, :w] = total
        n[:h, :w] = count
        s = s.reshape(c, hh, f, ww, f).sum(axis=(2, 4))
        n = n.reshape(hh, f, ww, f).sum(axis=(1, 3))
        has = n > 0
        mean = s / np.where(has, n, 1.0)[None]
        if data.dtype.kind in "iu":
            info = np.iinfo(data.dtype)
            level_data = np.clip(np.rint(mean), info.min, info.max).astype(data.dtype)
        else:
            level_data = mean.astype(data.dtype)
        if not has.all():
            fill = nodata if nodata is not None else np.nan
            level_data[:, ~has] = fill
        if value_range is None:
            value_range = ((float(np.iinfo(data.dtype).min), float(np.iinfo(data.dtype).max))
                           if data.dtype.kind in "iu" else (0.0, 1.0))
        nudge_off_nodata(level_data, has, nodata, value_range)
        out.append(level_data)
    return out
