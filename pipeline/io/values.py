"""Pixel values and bands: dtype rules, scaling to the model's 0..1 range, band groups, nodata.

numpy only. Arrays are band-first: ``(C, h, w)``.

Value ranges
    The model sees values in 0..1. :func:`to_unit` maps ``lo..hi`` linearly to ``0..1`` and
    :func:`from_unit` maps back. The default range depends on the dtype
    (:func:`default_value_range`): the full integer range for uint8, uint16, int16 and int32,
    and 0..1 for float32/float64. Imagery that uses part of its dtype (e.g. reflectance stored as
    uint16 in 0..10000) should pass ``--value-range 0 10000`` so the model sees a useful contrast.
    :func:`to_unit` does not clip: values outside ``lo..hi`` map outside ``0..1``.
    :func:`from_unit` rounds integer outputs half to even (``np.rint``) and clips them to the
    dtype's limits (not to the value range); float outputs are rescaled only. The model works
    in float32 (24 significant bits), so a round trip is exact for 8- and 16-bit data but not
    for int32 value ranges wider than about 2**23 steps, nor bit-exact for float64.

Band groups
    The model takes 3 channels. :func:`band_groups` splits the bands to process (all of them, or an
    explicit selection) into consecutive triplets; the last incomplete triplet is padded by
    repeating its last band. A single band therefore runs as ``(b, b, b)``. :func:`merge_groups`
    maps the 3-channel outputs back to bands, averaging every copy of the same band (so a
    replicated grey band comes back as the mean of the three output channels).

Nodata and invalid pixels
    A pixel is nodata when every band equals the nodata value (NaN nodata matches NaN). A pixel
    is *invalid* when it is nodata or, for float inputs, any band is NaN or infinite
    (:func:`invalid_mask`). Invalid pixels never reach the network: :func:`fill_invalid` replaces
    them ring by ring with the mean of their valid 8-neighbours, for :data:`FILL_PASSES` rings,
    and what is still unfilled with 0.5 (the value the encoder's zero padding stands for at the
    image border). The fill is local (a value depends only on pixels within ``FILL_PASSES``),
    so tiles that read ``FILL_PASSES`` extra pixels give the same result as the whole image.
    :func:`upsample_mask` carries the invalid mask to output resolution by nearest neighbour:
    exactly the output pixels whose nearest input pixel was invalid become nodata (NaN for a
    float input without a nodata value). :func:`nudge_off_nodata` moves every band value of a
    *valid* output pixel that happens to equal the nodata value one unit toward the value range
    (GDAL's warper does the same), so readers never show a valid pixel as a hole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from pipeline.errors import BandSelectionError, ConfigError, UnsupportedDtypeError

__all__ = [
    "FILL_PASSES",
    "SUPPORTED_DTYPES",
    "band_groups",
    "default_value_range",
    "fill_invalid",
    "from_unit",
    "invalid_mask",
    "mask_output",
    "merge_groups",
    "nearest_index",
    "nodata_mask",
    "nudge_off_nodata",
    "parse_value_range",
    "to_unit",
    "upsample_mask",
    "validate_dtype",
]

#: dtypes the pipeline reads and writes; uint8, uint16, int16 and float32 are the common ones,
#: int32 and float64 are accepted too (float64 is processed in float32 by the model).
SUPPORTED_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(name) for name in ("uint8", "uint16", "int16", "int32", "float32", "float64")
)
_ALLOWED_TEXT = ", ".join(str(dt) for dt in SUPPORTED_DTYPES)


def validate_dtype(dtype: DTypeLike, what: str = "input") -> np.dtype:
    """Return ``dtype`` in native byte order if the pipeline supports it.

    Raises:
        UnsupportedDtypeError: naming the dtype and the allowed list.
    """
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise UnsupportedDtypeError(
            f"unsupported dtype {dtype!r} for {what}; allowed: {_ALLOWED_TEXT}"
        ) from exc
    native = dt.newbyteorder("=") if dt.byteorder not in ("=", "|") else dt
    if native not in SUPPORTED_DTYPES:
        raise UnsupportedDtypeError(
            f"unsupported dtype {str(dt)!r} for {what}; allowed: {_ALLOWED_TEXT}"
        )
    return native


def default_value_range(dtype: DTypeLike) -> tuple[float, float]:
    """Value range that maps to 0..1: integer dtypes their full range, floats (0, 1)."""
    dt = validate_dtype(dtype)
    if dt.kind == "f":
        return (0.0, 1.0)
    info = np.iinfo(dt)
    return (float(info.min), float(info.max))


def parse_value_range(value: Sequence[float | str] | str) -> tuple[float, float]:
    """Parse ``--value-range LO HI`` (two numbers, or a string ``"LO HI"`` / ``"LO,HI"``).

    Raises:
        ConfigError: unless there are exactly two finite numbers with ``lo < hi``.
    """
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    if len(items) != 2:
        raise ConfigError(f"value range {value!r} must be two numbers LO HI, e.g. 0 10000")
    try:
        lo, hi = (float(v) for v in items)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"value range {value!r} must be two numbers LO HI, e.g. 0 10000") from exc
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"value range {value!r} must be finite numbers")
    if not lo < hi:
        raise ConfigError(f"value range {value!r} needs LO < HI, got LO={lo:g}, HI={hi:g}")
    return (lo, hi)


def _check_range(value_range: tuple[float, float]) -> tuple[float, float]:
    return parse_value_range(tuple(value_range))


def to_unit(arr: ArrayLike, value_range: tuple[float, float]) -> np.ndarray:
    """Map ``lo..hi`` linearly to ``0..1`` as float32, without clipping. Any shape."""
    lo, hi = _check_range(value_range)
    x = np.asarray(arr, dtype=np.float64)
    return ((x - lo) * (1.0 / (hi - lo))).astype(np.float32)


def from_unit(x: ArrayLike, dtype: DTypeLike, value_range: tuple[float, float]) -> np.ndarray:
    """Map ``0..1`` back to ``lo..hi`` in ``dtype``. Any shape.

    Integer dtypes: rounded half to even, then clipped to the dtype's limits.
    Float dtypes: rescaled only.

    Raises:
        ValueError: if an integer output would receive NaN or infinity.
    """
    dt = validate_dtype(dtype, what="output")
    lo, hi = _check_range(value_range)
    y = np.asarray(x, dtype=np.float64) * (hi - lo) + lo
    if dt.kind == "f":
        return y.astype(dt)
    if not np.isfinite(y).all():
        raise ValueError(f"cannot convert non-finite values (NaN or inf) to integer dtype {dt}")
    info = np.iinfo(dt)
    return np.clip(np.rint(y), info.min, info.max).astype(dt)


def _check_band_index(band: object, n_bands: int) -> int:
    if isinstance(band, bool) or not isinstance(band, int | np.integer):
        raise BandSelectionError(f"band index {band!r} is not an integer")
    if not 0 <= int(band) < n_bands:
        raise BandSelectionError(
            f"band index {int(band)} is out of range for {n_bands} band(s): "
            f"allowed 0..{n_bands - 1} (0-based)"
        )
    return int(band)


def band_groups(n_bands: int, bands: Sequence[int] | None = None) -> list[tuple[int, int, int]]:
    """Split the bands to process into the model's 3-channel groups.

    ``bands`` (0-based, into the ``n_bands`` channels) defaults to all bands. They are taken in
    consecutive triplets; the last incomplete triplet repeats its last band:
    1 -> [(0,0,0)], 3 -> [(0,1,2)], 4 -> [(0,1,2),(3,3,3)], 5 -> [(0,1,2),(3,4,4)].

    Raises:
        BandSelectionError: for ``n_bands < 1``, an empty selection or an index out of range.
    """
    if isinstance(n_bands, bool) or not isinstance(n_bands, int | np.integer) or n_bands < 1:
        raise BandSelectionError(f"band count {n_bands!r} must be a positive integer")
    if bands is None:
        selected = list(range(int(n_bands)))
    else:
        selected = [_check_band_index(b, int(n_bands)) for b in bands]
        if not selected:
            raise BandSelectionError("band selection () is empty: give at least one band index")
    groups = []
    for start in range(0, len(selected), 3):
        chunk = selected[start : start + 3]
        chunk += [chunk[-1]] * (3 - len(chunk))
        groups.append((chunk[0], chunk[1], chunk[2]))
    return groups


def merge_groups(
    outputs: Sequence[np.ndarray],
    groups: Sequence[tuple[int, int, int]],
    out_bands: Sequence[int],
) -> np.ndarray:
    """Map per-group outputs ``(3, h, w)`` back to ``(len(out_bands), h, w)``.

    Output band ``i`` is the mean of every output channel whose group entry equals
    ``out_bands[i]``. The result is floating point (float32 for float32 outputs).

    Raises:
        BandSelectionError: if counts or shapes disagree, or an output band is in no group.
    """
    if len(outputs) != len(groups):
        raise BandSelectionError(
            f"got {len(outputs)} group output(s) for {len(groups)} band group(s); "
            "they must match one to one"
        )
    if not outputs:
        raise BandSelectionError("no band groups to merge: give at least one group")
    if not out_bands:
        raise BandSelectionError("out_bands () is empty: give at least one band index")
    spatial = np.shape(outputs[0])[1:]
    copies: dict[int, list[tuple[int, int]]] = {}
    for g, (out, group) in enumerate(zip(outputs, groups, strict=True)):
        if np.ndim(out) != 3 or np.shape(out)[0] != 3 or np.shape(out)[1:] != spatial:
            raise BandSelectionError(
                f"group output {g} has shape {np.shape(out)}; expected (3, *{spatial})"
            )
        if len(group) != 3:
            raise BandSelectionError(f"band group {group!r} must have exactly 3 band indices")
        for k, band in enumerate(group):
            copies.setdefault(int(band), []).append((g, k))
    dtype = np.result_type(*[np.asarray(o).dtype for o in outputs], np.float32)
    merged = np.empty((len(out_bands), *spatial), dtype=dtype)
    for i, band in enumerate(out_bands):
        where = copies.get(int(band))
        if not where:
            raise BandSelectionError(
                f"output band {band!r} is in no band group; groups cover {sorted(copies)}"
            )
        acc = np.zeros(spatial, dtype=dtype)
        for g, k in where:
            acc += outputs[g][k]
        merged[i] = acc / len(where)
    return merged


def nodata_mask(arr: np.ndarray, nodata: float | None) -> np.ndarray:
    """Boolean ``(h, w)`` mask of pixels where ALL bands of ``arr (C, h, w)`` equal ``nodata``.

    NaN nodata matches NaN values; ``None`` gives an all-False mask.
    """
    a = np.asarray(arr)
    if a.ndim != 3:
        raise ValueError(f"nodata_mask expects a (C, h, w) array, got shape {a.shape}")
    if nodata is None:
        return np.zeros(a.shape[1:], dtype=bool)
    if math.isnan(nodata):
        if a.dtype.kind != "f":
            return np.zeros(a.shape[1:], dtype=bool)
        return np.isnan(a).all(axis=0)
    return (a == nodata).all(axis=0)


def nearest_index(u: ArrayLike, n: int) -> np.ndarray:
    """Index of the input pixel nearest to each coordinate: ``clip(floor(u + 0.5), 0, n - 1)``.

    ``u`` is in input-pixel index units (pixel ``i`` is centred at ``i``); a tie (``i + 0.5``)
    goes to ``i + 1``. Returns int64 with the shape of ``u``.
    """
    if n < 1:
        raise ValueError(f"pixel count n={n!r} must be at least 1")
    idx = np.floor(np.asarray(u, dtype=np.float64) + 0.5)
    return np.clip(idx, 0, n - 1).astype(np.int64)


def upsample_mask(mask: np.ndarray, rows_u: ArrayLike, cols_u: ArrayLike) -> np.ndarray:
    """Nearest-neighbour resample of a ``(h, w)`` mask at the given row/column coordinates.

    ``rows_u`` and ``cols_u`` are 1-D output pixel centres in input-pixel index units (see
    :func:`nearest_index`); the result has shape ``(len(rows_u), len(cols_u))``.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"upsample_mask expects a (h, w) mask, got shape {m.shape}")
    r = nearest_index(np.ravel(rows_u), m.shape[0])
    c = nearest_index(np.ravel(cols_u), m.shape[1])
    return m[np.ix_(r, c)]


#: rings of neighbours that :func:`fill_invalid` propagates valid values into invalid pixels
FILL_PASSES = 8
FILL_CONSTANT = 0.5


def invalid_mask(arr: np.ndarray, nodata: float | None) -> np.ndarray:
    """Boolean ``(h, w)``: nodata pixels (all bands equal ``nodata``) or, for float data, pixels
    with a NaN or infinite value in any band."""
    mask = nodata_mask(arr, nodata)
    a = np.asarray(arr)
    if a.dtype.kind == "f":
        mask |= ~np.isfinite(a).all(axis=0)
    return mask


def _box3(a: np.ndarray) -> np.ndarray:
    """Sum over each 3x3 neighbourhood of the last two axes (zero outside)."""
    h, w = a.shape[-2:]
    p = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(1, 1), (1, 1)])
    out = np.zeros_like(a)
    for dy in range(3):
        for dx in range(3):
            out += p[..., dy:dy + h, dx:dx + w]
    return out


def fill_invalid(unit: np.ndarray, invalid: np.ndarray, passes: int = FILL_PASSES,
                 constant: float = FILL_CONSTANT) -> np.ndarray:
    """``unit (C, h, w)`` with its ``invalid (h, w)`` pixels filled (a new float32 array).

    Ring by ring (``passes`` rings), each invalid pixel with valid 8-neighbours takes their mean
    and becomes valid; pixels still invalid after that take ``constant``. A filled value depends
    only on the input within ``passes`` pixels, so a window read with ``passes`` extra pixels on
    each side (clamped to the image) and cropped back equals the whole-image fill.
    """
    x = np.array(unit, dtype=np.float32, copy=True)
    valid = ~np.asarray(invalid, dtype=bool)
    x[:, ~valid] = 0.0
    for _ in range(passes):
        v = valid.astype(np.float32)
        n = _box3(v)
        grow = ~valid & (n > 0)
        if not grow.any():
            break
        s = _box3(x * v)
        x[:, grow] = s[:, grow] / n[grow]
        valid = valid | grow
    x[:, ~valid] = constant
    return x


def mask_output(data: np.ndarray, invalid: np.ndarray, nodata: float | None) -> np.ndarray:
    """Write nodata (NaN for float data without a nodata value) into the ``invalid (h, w)``
    pixels of ``data (C, h, w)``, in place; returns ``data``."""
    if invalid.any():
        if nodata is not None:
            data[:, invalid] = nodata
        elif data.dtype.kind == "f":
            data[:, invalid] = np.nan
        else:
            raise ValueError(f"{int(invalid.sum())} invalid pixels but no nodata value for the "
                             f"integer dtype {data.dtype}")
    return data


def nudge_off_nodata(data: np.ndarray, valid: np.ndarray, nodata: float | None,
                     value_range: tuple[float, float]) -> int:
    """Move every band value of a ``valid (h, w)`` pixel of ``data (C, h, w)`` that equals
    ``nodata`` one unit toward the value range (1 for integers, one ulp for floats), in place:
    up, unless ``nodata`` is at or above the range's top or the dtype's maximum. Returns how
    many values moved."""
    if nodata is None or (isinstance(nodata, float) and math.isnan(nodata)):
        return 0
    hit = (data == nodata) & np.asarray(valid, dtype=bool)[None]
    count = int(hit.sum())
    if not count:
        return 0
    up = nodata < value_range[1]
    if data.dtype.kind in "iu":
        info = np.iinfo(data.dtype)
        if nodata >= info.max:
            up = False
        elif nodata <= info.min:
            up = True
        data[hit] = int(nodata) + (1 if up else -1)
    else:
        target = np.array(np.inf if up else -np.inf, dtype=data.dtype)
        data[hit] = np.nextafter(np.array(nodata, dtype=data.dtype), target)
    return count
