"""Pure tiling geometry: output tiles aligned to the store's chunk grid, and the input windows
(with halo) that make tiled LIIF inference exactly equal to whole-image inference.

Coordinate convention (fixed by the model), per axis: input pixel ``i`` has its centre at ``i``;
output pixel ``j`` of ``n_out`` has its centre at ``u_j = (j + 0.5) * n_in / n_out - 0.5``.
The model decodes output pixel ``j`` from latent codes ``floor(u_j) - 1 .. floor(u_j) + 1``
(clamped to the image), and each latent code depends on input pixels within ``halo`` of it.

Imports numpy and the standard library only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from pipeline.errors import PipelineError

__all__ = [
    "InvalidParameterError",
    "InvalidScaleError",
    "InvalidShapeError",
    "InvalidWindowError",
    "OutputTooLargeError",
    "Tile",
    "TileIndexError",
    "TilePlan",
    "TileSizeError",
    "TilingError",
    "Window",
    "check_output_size",
    "balanced_plan",
    "balanced_starts",
    "default_tile_for",
    "input_range",
    "out_size_for_scale",
    "output_positions",
    "plan_tiles",
    "product_window",
    "scale_of",
    "window_input",
]

# Extra input pixels on each side of the latent halo, absorbing float rounding in u_j.
SAFETY_MARGIN = 1


class TilingError(PipelineError, ValueError):
    """Base class of the tiling module's errors."""


class InvalidScaleError(TilingError):
    """A scale factor is not a finite number > 0."""


class InvalidShapeError(TilingError):
    """An image shape, pixel count or pixel range is invalid."""


class InvalidWindowError(TilingError):
    """A window has negative or reversed bounds, or malformed serialised form."""


class TileSizeError(TilingError):
    """A tile or chunk size is invalid (non-positive, or tile not a multiple of chunk)."""


class InvalidParameterError(TilingError):
    """Another numeric parameter (halo, target fraction, limit) is out of range."""


class TileIndexError(TilingError, IndexError):
    """A tile index lies outside the plan's grid."""


class OutputTooLargeError(TilingError):
    """The requested output has more pixels than the configured limit."""


def _as_int(name: str, value: Any, minimum: int, error: type[TilingError]) -> int:
    """``value`` as a Python int >= minimum (bools and non-integers rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be an integer >= {minimum}, got {value!r}")
    v = int(value)
    if v < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {v}")
    return v


def _as_pair(
    name: str, value: Any, minimum: int, error: type[TilingError], *, scalar_ok: bool
) -> tuple[int, int]:
    """``value`` as an (int, int) pair; a scalar is broadcast when ``scalar_ok``."""
    if scalar_ok and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        v = _as_int(name, value, minimum, error)
        return (v, v)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        what = "an integer or " if scalar_ok else ""
        raise error(f"{name} must be {what}a (height, width) pair of integers, got {value!r}")
    return (
        _as_int(f"{name}[0]", value[0], minimum, error),
        _as_int(f"{name}[1]", value[1], minimum, error),
    )


def _as_shape(name: str, value: Any) -> tuple[int, int]:
    """A (height, width) image shape with both sides >= 1."""
    return _as_pair(name, value, 1, InvalidShapeError, scalar_ok=False)


def _scale_value(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidScaleError(f"{name} must be a finite number > 0, got {value!r}")
    f = float(value)
    if not math.isfinite(f) or f <= 0.0:
        raise InvalidScaleError(f"{name} must be a finite number > 0, got {value!r}")
    return f


def _as_scale(scale: Any) -> tuple[float, float]:
    """A scale factor (number, or (sy, sx) pair) as two positive finite floats."""
    if isinstance(scale, Sequence) and not isinstance(scale, (str, bytes)):
        if len(scale) != 2:
            raise InvalidScaleError(
                f"scale must be a number or an (sy, sx) pair, got {len(scale)} values: {scale!r}"
            )
        return (_scale_value("scale[0]", scale[0]), _scale_value("scale[1]", scale[1]))
    s = _scale_value("scale", scale)
    return (s, s)


@dataclass(frozen=True)
class Window:
    """Half-open pixel rectangle ``[row0, row1) x [col0, col1)``; may be empty."""

    row0: int
    row1: int
    col0: int
    col1: int

    def __post_init__(self) -> None:
        for name in ("row0", "row1", "col0", "col1"):
            object.__setattr__(
                self, name, _as_int(name, getattr(self, name), 0, InvalidWindowError)
            )
        if self.row1 < self.row0 or self.col1 < self.col0:
            raise InvalidWindowError(
                f"window bounds must satisfy row0 <= row1 and col0 <= col1, got "
                f"rows [{self.row0}, {self.row1}) cols [{self.col0}, {self.col1})"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width)."""
        return (self.row1 - self.row0, self.col1 - self.col0)

    @property
    def size(self) -> int:
        """Number of pixels."""
        h, w = self.shape
        return h * w

    def slices(self) -> tuple[slice, slice]:
        """(row slice, col slice) for indexing a 2-D (or leading-2-D) array."""
        return (slice(self.row0, self.row1), slice(self.col0, self.col1))

    def contains(self, other: Window) -> bool:
        """True when ``other`` lies entirely inside this window."""
        return (
            self.row0 <= other.row0
            and other.row1 <= self.row1
            and self.col0 <= other.col0
            and other.col1 <= self.col1
        )

    def intersect(self, other: Window) -> Window | None:
        """The overlap of two windows, or None when they share no pixel."""
        r0, r1 = max(self.row0, other.row0), min(self.row1, other.row1)
        c0, c1 = max(self.col0, other.col0), min(self.col1, other.col1)
        if r0 >= r1 or c0 >= c1:
            return None
        return Window(r0, r1, c0, c1)

    def relative_to(self, outer: Window) -> Window:
        """This window in the frame of ``outer`` (which must contain it), e.g. to crop a read."""
        if not outer.contains(self):
            raise InvalidWindowError(f"{self} is not inside {outer}")
        return Window(
            self.row0 - outer.row0,
            self.row1 - outer.row0,
            self.col0 - outer.col0,
            self.col1 - outer.col0,
        )

    def to_dict(self) -> dict[str, int]:
        """JSON-ready form."""
        return {"row0": self.row0, "row1": self.row1, "col0": self.col0, "col1": self.col1}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Window:
        """Inverse of :meth:`to_dict`; keys must be exactly row0, row1, col0, col1."""
        expected = {"row0", "row1", "col0", "col1"}
        if not isinstance(data, Mapping) or set(data) != expected:
            got = sorted(data) if isinstance(data, Mapping) else data
            raise InvalidWindowError(f"window dict needs keys {sorted(expected)}, got {got!r}")
        return cls(data["row0"], data["row1"], data["col0"], data["col1"])


def out_size_for_scale(
    in_shape: tuple[int, int], scale: float | tuple[float, float]
) -> tuple[int, int]:
    """Output (H, W) for a scale factor: ``floor(h * sy + 0.5)``, likewise W, each at least 1."""
    h, w = _as_shape("in_shape", in_shape)
    sy, sx = _as_scale(scale)
    out = []
    for n, s in ((h, sy), (w, sx)):
        v = n * s + 0.5
        if not math.isfinite(v):
            raise InvalidScaleError(f"scale {s!r} times size {n} overflows")
        out.append(max(1, math.floor(v)))
    return (out[0], out[1])


def scale_of(in_shape: tuple[int, int], out_shape: tuple[int, int]) -> tuple[float, float]:
    """Effective per-axis scale ``(H / h, W / w)``."""
    h, w = _as_shape("in_shape", in_shape)
    oh, ow = _as_shape("out_shape", out_shape)
    return (oh / h, ow / w)


def _check_span(n_in: Any, n_out: Any, start: Any, stop: Any) -> tuple[int, int, int, int]:
    n_in = _as_int("n_in", n_in, 1, InvalidShapeError)
    n_out = _as_int("n_out", n_out, 1, InvalidShapeError)
    start = _as_int("start", start, 0, InvalidShapeError)
    stop = _as_int("stop", stop, 0, InvalidShapeError)
    if not start <= stop <= n_out:
        raise InvalidShapeError(
            f"output range [{start}, {stop}) must satisfy 0 <= start <= stop <= n_out={n_out}"
        )
    return n_in, n_out, start, stop


def _positions(n_in: int, n_out: int, j: np.ndarray) -> np.ndarray:
    # The one place u_j is computed; the model uses the same float64 expression.
    return (j.astype(np.float64) + 0.5) * (n_in / n_out) - 0.5


def output_positions(n_in: int, n_out: int, start: int, stop: int) -> np.ndarray:
    """Float64 centres ``u_j`` (input-pixel units) of output pixels ``j`` in ``[start, stop)``."""
    n_in, n_out, start, stop = _check_span(n_in, n_out, start, stop)
    return _positions(n_in, n_out, np.arange(start, stop, dtype=np.int64))


def _axis_ranges(
    n_in: int, n_out: int, starts: np.ndarray, stops: np.ndarray, halo: int
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`input_range` over spans ``[starts[k], stops[k])``."""
    first = np.floor(_positions(n_in, n_out, starts)).astype(np.int64)
    last = np.floor(_positions(n_in, n_out, stops - 1)).astype(np.int64)
    reach = 1 + halo + SAFETY_MARGIN  # unfold/ensemble neighbour + encoder halo + margin
    a0 = np.clip(first - reach, 0, n_in - 1)
    a1 = np.clip(last + reach, 0, n_in - 1) + 1
    return a0, a1


def _axis_useful(n_in: int, n_out: int, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Input pixels under each span's footprint: ``floor(u + 0.5)`` of first..last, inclusive."""
    lo = np.floor(_positions(n_in, n_out, starts) + 0.5).astype(np.int64)
    hi = np.floor(_positions(n_in, n_out, stops - 1) + 0.5).astype(np.int64)
    lo = np.clip(lo, 0, n_in - 1)
    hi = np.clip(hi, 0, n_in - 1)
    return hi - lo + 1


def input_range(n_in: int, n_out: int, start: int, stop: int, halo: int) -> tuple[int, int]:
    """Half-open input range ``[a0, a1)`` needed to decode output pixels ``[start, stop)``.

    ``a0 = floor(u_start) - 1 - halo - 1`` and ``a1 - 1 = floor(u_{stop-1}) + 1 + halo + 1``,
    clamped to ``[0, n_in - 1]`` (the outer +-1 is a safety margin for float rounding).
    """
    n_in, n_out, start, stop = _check_span(n_in, n_out, start, stop)
    if start == stop:
        raise InvalidShapeError(f"output range [{start}, {stop}) is empty")
    halo = _as_int("halo", halo, 0, InvalidParameterError)
    a0, a1 = _axis_ranges(n_in, n_out, np.array([start]), np.array([stop]), halo)
    return int(a0[0]), int(a1[0])


@dataclass(frozen=True)
class Tile:
    """One unit of work: its grid ``index`` (ty, tx), the output window it owns and writes,
    and the input window it reads (output footprint + halo, clamped to the image)."""

    index: tuple[int, int]
    out_window: Window
    in_window: Window

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "index", _as_pair("index", self.index, 0, TileIndexError, scalar_ok=False)
        )
        for name in ("out_window", "in_window"):
            if not isinstance(getattr(self, name), Window):
                raise InvalidWindowError(
                    f"{name} must be a Window, got {type(getattr(self, name)).__name__}"
                )

    @property
    def key(self) -> str:
        """Stable manifest key ``"<ty>_<tx>"``."""
        return f"{self.index[0]}_{self.index[1]}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "index": list(self.index),
            "out_window": self.out_window.to_dict(),
            "in_window": self.in_window.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tile:
        """Inverse of :meth:`to_dict`."""
        expected = {"index", "out_window", "in_window"}
        if not isinstance(data, Mapping) or set(data) != expected:
            got = sorted(data) if isinstance(data, Mapping) else data
            raise InvalidWindowError(f"tile dict needs keys {sorted(expected)}, got {got!r}")
        return cls(
            tuple(data["index"]),
            Window.from_dict(data["out_window"]),
            Window.from_dict(data["in_window"]),
        )


@dataclass(frozen=True)
class TilePlan:
    """Output tiles on a chunk-aligned grid plus the input window each one needs.

    Tile ``(ty, tx)`` owns output rows ``[ty*th, min((ty+1)*th, H))`` (likewise columns); the
    last tile of an axis may be partial. ``tile_shape`` is a multiple of ``chunk_shape`` so each
    tile writes whole chunks (or shards) and no two tiles touch the same one.
    """

    in_shape: tuple[int, int]
    out_shape: tuple[int, int]
    tile_shape: tuple[int, int]
    halo: int
    chunk_shape: tuple[int, int]
    #: explicit tile starts per axis (multiples of the chunk, from 0); None: every tile_shape
    starts: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    _axes: tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "in_shape", _as_shape("in_shape", self.in_shape))
        set_(self, "out_shape", _as_shape("out_shape", self.out_shape))
        tile = _as_pair("tile", self.tile_shape, 1, TileSizeError, scalar_ok=True)
        chunk = _as_pair("chunk", self.chunk_shape, 1, TileSizeError, scalar_ok=True)
        set_(self, "tile_shape", tile)
        set_(self, "chunk_shape", chunk)
        set_(self, "halo", _as_int("halo", self.halo, 0, InvalidParameterError))
        for axis, (t, c) in enumerate(zip(self.tile_shape, self.chunk_shape, strict=True)):
            if t % c:
                raise TileSizeError(
                    f"tile size must be a positive multiple of the chunk size; axis {axis}: "
                    f"tile {t} is not a multiple of chunk {c} "
                    f"(tile={self.tile_shape}, chunk={self.chunk_shape})"
                )
        if self.starts is not None:
            set_(self, "starts", tuple(tuple(int(v) for v in s) for s in self.starts))
            self._check_starts()
        axes = []
        for axis, (n_in, n_out, t) in enumerate(
                zip(self.in_shape, self.out_shape, self.tile_shape, strict=True)):
            if self.starts is None:
                starts = np.arange(0, n_out, t, dtype=np.int64)
                stops = np.minimum(starts + t, n_out)
            else:
                starts = np.asarray(self.starts[axis], dtype=np.int64)
                stops = np.append(starts[1:], n_out)
            a0, a1 = _axis_ranges(n_in, n_out, starts, stops, self.halo)
            useful = _axis_useful(n_in, n_out, starts, stops)
            axes.append((starts, stops, a0, a1, useful))
        set_(self, "_axes", (tuple(axes[0]), tuple(axes[1])))

    def _check_starts(self) -> None:
        assert self.starts is not None
        if len(self.starts) != 2:
            raise InvalidParameterError(f"starts must give two axes, got {self.starts!r}")
        for axis, (s, n_out, t, c) in enumerate(zip(self.starts, self.out_shape, self.tile_shape,
                                                    self.chunk_shape, strict=True)):
            sizes = np.diff(np.append(np.asarray(s, dtype=np.int64), n_out))
            if not s or s[0] != 0 or any(v % c for v in s) or (sizes <= 0).any() \
                    or sizes.max() > t:
                raise TileSizeError(
                    f"tile starts {s} of axis {axis} must begin at 0, increase, be multiples "
                    f"of the chunk {c} and give tiles of at most {t} of the {n_out} pixels")

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(tile rows, tile cols) = ``ceil(H / th), ceil(W / tw)``."""
        return (len(self._axes[0][0]), len(self._axes[1][0]))

    def __len__(self) -> int:
        gy, gx = self.grid_shape
        return gy * gx

    def tile(self, ty: int, tx: int) -> Tile:
        """Tile at grid position (ty, tx); negative indices are rejected."""
        gy, gx = self.grid_shape
        ty = _as_int("ty", ty, 0, TileIndexError)
        tx = _as_int("tx", tx, 0, TileIndexError)
        if ty >= gy or tx >= gx:
            raise TileIndexError(f"tile index ({ty}, {tx}) outside grid of shape ({gy}, {gx})")
        ys, ye, ya0, ya1, _ = self._axes[0]
        xs, xe, xa0, xa1, _ = self._axes[1]
        return Tile(
            (ty, tx),
            Window(int(ys[ty]), int(ye[ty]), int(xs[tx]), int(xe[tx])),
            Window(int(ya0[ty]), int(ya1[ty]), int(xa0[tx]), int(xa1[tx])),
        )

    def tiles(self) -> list[Tile]:
        """All tiles, row-major."""
        gy, gx = self.grid_shape
        return [self.tile(ty, tx) for ty in range(gy) for tx in range(gx)]

    def local_positions(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """Float64 centres of ``tile``'s output rows and cols in its input window's pixel frame
        (global ``u`` minus the window origin), ready to be normalised for the crop."""
        (oh, ow), (ih, iw) = self.out_shape, self.in_shape
        out, inp = tile.out_window, tile.in_window
        uy = output_positions(ih, oh, out.row0, out.row1) - inp.row0
        ux = output_positions(iw, ow, out.col0, out.col1) - inp.col0
        return uy, ux

    def stats(self) -> dict[str, Any]:
        """Work accounting: computed input pixels (sum of in_window sizes) versus useful ones
        (sum of each tile's output footprint in input pixels, no halo, no margin)."""
        _, _, ya0, ya1, yu = self._axes[0]
        _, _, xa0, xa1, xu = self._axes[1]
        # Sums over the tile grid factor into products of per-axis sums.
        computed = int((ya1 - ya0).sum()) * int((xa1 - xa0).sum())
        useful = int(yu.sum()) * int(xu.sum())
        return {
            "tiles": len(self),
            "grid_shape": list(self.grid_shape),
            "input_pixels": self.in_shape[0] * self.in_shape[1],
            "output_pixels": self.out_shape[0] * self.out_shape[1],
            "computed_input_pixels": computed,
            "useful_input_pixels": useful,
            "useful_fraction": useful / computed,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the parameters; tiles are recomputed on load)."""
        out: dict[str, Any] = {
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
            "tile_shape": list(self.tile_shape),
            "halo": self.halo,
            "chunk_shape": list(self.chunk_shape),
        }
        if self.starts is not None:
            out["starts"] = [list(s) for s in self.starts]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TilePlan:
        """Inverse of :meth:`to_dict`."""
        expected = {"in_shape", "out_shape", "tile_shape", "halo", "chunk_shape"}
        if not isinstance(data, Mapping) or not expected <= set(data) <= expected | {"starts"}:
            got = sorted(data) if isinstance(data, Mapping) else data
            raise InvalidParameterError(
                f"tile plan dict needs keys {sorted(expected)}, got {got!r}"
            )
        return cls(
            tuple(data["in_shape"]),
            tuple(data["out_shape"]),
            tuple(data["tile_shape"]),
            data["halo"],
            tuple(data["chunk_shape"]),
            (tuple(data["starts"][0]), tuple(data["starts"][1])) if data.get("starts") else None,
        )


def plan_tiles(
    in_shape: tuple[int, int],
    out_shape: tuple[int, int],
    *,
    tile: int | tuple[int, int],
    halo: int,
    chunk: int | tuple[int, int] | None = None,
) -> TilePlan:
    """Plan chunk-aligned output tiles and their input windows; ``chunk`` defaults to ``tile``."""
    # TilePlan.__post_init__ validates the sizes and broadcasts a scalar to a pair
    return TilePlan(in_shape, out_shape, cast("tuple[int, int]", tile), halo,
                    cast("tuple[int, int]", tile if chunk is None else chunk))


def default_tile_for(
    halo: int,
    scale: float | tuple[float, float],
    *,
    target_useful: float = 0.85,
    chunk: int = 256,
    max_tile: int = 4096,
) -> int:
    """Smallest multiple of ``chunk`` (output pixels) whose interior tile wastes little on halo.

    An interior tile of ``t`` output pixels spans ``t_in = t / s`` input pixels per axis and
    computes ``t_in + 2 * (halo + 2)`` of them, so its useful fraction is approximately
    ``prod over axes of t_in / (t_in + 2 * (halo + 2))`` (the square for isotropic scale).
    Returns the first multiple meeting ``target_useful``, else ``max_tile`` rounded down to a
    multiple of ``chunk``.
    """
    halo = _as_int("halo", halo, 0, InvalidParameterError)
    sy, sx = _as_scale(scale)
    chunk = _as_int("chunk", chunk, 1, TileSizeError)
    max_tile = _as_int("max_tile", max_tile, 1, TileSizeError)
    if max_tile < chunk:
        raise TileSizeError(f"max_tile {max_tile} is smaller than chunk {chunk}")
    if isinstance(target_useful, bool) or not isinstance(target_useful, numbers.Real):
        raise InvalidParameterError(
            f"target_useful must be a number in (0, 1), got {target_useful!r}"
        )
    if not 0.0 < float(target_useful) < 1.0:
        raise InvalidParameterError(
            f"target_useful must be a number in (0, 1), got {target_useful!r}"
        )
    pad = 2 * (halo + 2)
    limit = (max_tile // chunk) * chunk
    for t in range(chunk, limit + 1, chunk):
        fy = (t / sy) / (t / sy + pad)
        fx = (t / sx) / (t / sx + pad)
        if fy * fx >= target_useful:
            return t
    return limit


def balanced_starts(n_out: int, n_tiles: int, grid: int) -> tuple[int, ...]:
    """Starts of ``n_tiles`` tiles over ``n_out`` pixels on a ``grid``: whole grid cells, the
    tile sides differing by at most one grid (the larger tiles go last, so the image's partial
    last cell shortens a large one)."""
    cells = -(-n_out // grid)
    n = max(1, min(n_tiles, cells))
    base, extra = divmod(cells, n)
    starts, at = [], 0
    for i in range(n):
        starts.append(at * grid)
        at += base + (1 if i >= n - extra else 0)
    return tuple(starts)


def balanced_plan(
    in_shape: tuple[int, int],
    out_shape: tuple[int, int],
    *,
    max_tile: int,
    halo: int,
    grid: int,
    workers: int = 1,
    tiles_per_worker: int = 2,
) -> TilePlan:
    """A plan of near-equal tiles: per axis the fewest tiles of at most ``max_tile`` (a
    multiple of ``grid``), each a whole number of grid cells differing by at most one cell (no
    slivers); then axes are split further, the one with the larger tiles first, until there are
    ``tiles_per_worker * workers`` tiles or every tile is one grid cell."""
    H, W = _as_shape("out_shape", out_shape)
    grid = _as_int("grid", grid, 1, TileSizeError)
    max_cells = max(1, _as_int("max_tile", max_tile, 1, TileSizeError) // grid)
    cells = [-(-H // grid), -(-W // grid)]
    n = [-(-c // max_cells) for c in cells]
    want = max(1, tiles_per_worker * max(1, workers))
    while n[0] * n[1] < want and (n[0] < cells[0] or n[1] < cells[1]):
        sides = [cells[a] / n[a] if n[a] < cells[a] else 0 for a in (0, 1)]
        n[0 if sides[0] >= sides[1] else 1] += 1
    starts = (balanced_starts(H, n[0], grid), balanced_starts(W, n[1], grid))
    tile = tuple(max(int(np.diff(np.append(s, N)).max()), grid) if len(s) else grid
                 for s, N in zip(starts, (H, W), strict=True))
    tile = tuple(-(-t // grid) * grid for t in tile)
    return TilePlan(in_shape, out_shape, cast("tuple[int, int]", tile), halo, (grid, grid),
                    starts)


def _map_boundary(b: int, n_from: int, n_to: int, grid: int) -> int:
    # the same proportional position, snapped to the nearest multiple of grid; edges stay edges
    if b >= n_from:
        return n_to
    return min(n_to, grid * round(b * n_to / (n_from * grid)))


def product_window(window: Window, primary_shape: tuple[int, int],
                   product_shape: tuple[int, int], grid: int) -> Window:
    """The window of another output size ("product") that a tile owning ``window`` of the
    primary output also renders: each boundary maps to the same proportional position, snapped
    to the product's write ``grid`` (image edges map to edges).

    Boundaries map one by one and monotonically, so the product windows of a plan's tiles
    partition the product exactly as the tiles partition the primary, each on the product's
    grid (no two tiles share a chunk). A window may be empty when the product is much smaller.
    """
    (H, W), (h, w) = _as_shape("primary_shape", primary_shape), _as_shape(
        "product_shape", product_shape)
    grid = _as_int("grid", grid, 1, InvalidParameterError)
    return Window(_map_boundary(window.row0, H, h, grid), _map_boundary(window.row1, H, h, grid),
                  _map_boundary(window.col0, W, w, grid), _map_boundary(window.col1, W, w, grid))


def window_input(in_shape: tuple[int, int], out_shape: tuple[int, int], window: Window,
                 halo: int) -> Window:
    """The input window (with ``halo``, clamped) that decoding output ``window`` of an
    ``out_shape`` output needs: :func:`input_range` on both axes. ``window`` must not be empty."""
    (h, w), (H, W) = in_shape, out_shape
    r0, r1 = input_range(h, H, window.row0, window.row1, halo)
    c0, c1 = input_range(w, W, window.col0, window.col1, halo)
    return Window(r0, r1, c0, c1)


def check_output_size(out_shape: tuple[int, int], limit: int) -> None:
    """Raise :class:`OutputTooLargeError` when ``H * W`` exceeds ``limit`` pixels."""
    h, w = _as_shape("out_shape", out_shape)
    limit = _as_int("limit", limit, 1, InvalidParameterError)
    if h * w > limit:
        raise OutputTooLargeError(
            f"output of {h} x {w} = {h * w:,} pixels exceeds the limit of {limit:,} pixels"
        )
