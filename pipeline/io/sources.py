"""Raster inputs read window by window: Zarr (v2/v3), GeoTIFF/COG (rasterio) and PNG/JPEG/... (PIL).

A :class:`SourceSpec` is a small picklable description; each worker calls :func:`open_source` on
it and reads only its windows. Every backend gives the same :class:`Source` interface: a logical
shape ``(C, H, W)`` after band selection, the native dtype, ``nodata``, ``crs`` (WKT) and
``transform`` (6 affine coefficients ``a, b, c, d, e, f`` in ``rasterio.Affine`` order), and
``read(rows, cols) -> (C, h, w)`` in the native dtype.

Dispatch (first match wins)
    * ``/vsi...`` GDAL paths go straight to rasterio.
    * A directory (or object-store prefix), a name ending in ``.zarr``, or a path to zarr metadata
      (``zarr.json``, ``.zarray``, ``.zgroup``) is a Zarr array or group.
    * ``.tif``/``.tiff``: rasterio, then PIL if rasterio cannot read it.
    * ``.png``, ``.jpg``/``.jpeg``, ``.bmp``, ``.webp``: PIL. Exception: 16-bit colour PNGs
      (RGB, RGBA, grey+alpha) go to rasterio, because PIL truncates them to 8 bits.
    * anything else: rasterio, then PIL, else :class:`UnsupportedInputError`.

    URIs may be local paths, ``file://``, or any fsspec URL (``memory://``, ``s3://``, ``gs://``,
    ...; ``storage_options`` are passed to fsspec). Remote GeoTIFFs are read lazily through
    rasterio's Python opener (range requests via fsspec), never downloaded whole.

Zarr layout
    2-D arrays are one band ``(H, W)``. For 3-D arrays ``layout="auto"`` decides by size: first
    dimension <= 16 and last > 16 -> ``CHW``; last <= 16 and first > 16 -> ``HWC``; otherwise
    ``CHW``. ``layout="CHW"`` or ``"HWC"`` overrides the rule. Other ranks are refused. A group is
    accepted when ``array_path`` names an array in it, or when it holds exactly one array (at any
    depth). ``nodata`` comes from the array attribute ``nodata`` (or ``_FillValue``), ``crs`` from
    ``crs`` (WKT, or anything ``rasterio.crs.CRS.from_user_input`` accepts, normalised to WKT)
    and ``transform`` from ``transform`` (6 numbers, or 9 ending in ``0, 0, 1``). The zarr
    ``fill_value`` is not treated as nodata. ``layout`` only applies to Zarr.

PIL images
    Loaded whole when opened (they are small); images above ``max_pixels_in_memory`` pixels are
    refused. Modes: ``L``, ``I;16``, ``I`` and ``F`` are one band (uint8, uint16, int32,
    float32); ``RGB`` is 3 bands; the alpha channel of ``RGBA``/``LA``/``PA`` is not a band but
    a transparency mask when it holds a 0 (:meth:`Source.read_valid`: alpha 0 = not valid; the
    output's nodata is then 0, the input having no nodata value; opaque pixels stay valid
    whatever their value); a fully opaque alpha is simply dropped;
    ``P`` (palette) becomes RGB, ``1`` becomes ``L`` (0/255), ``CMYK``/``YCbCr`` become RGB.
    Multi-frame files give their first frame; EXIF orientation is not applied.

Dtypes: uint8, uint16, int16, float32, and also int32 and float64. Band indices are 0-based.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import (
    BandSelectionError,
    ConfigError,
    EmptyInputError,
    InputNotFoundError,
    InputReadError,
    PipelineError,
    UnsupportedInputError,
    WindowError,
)
from pipeline.io.identity import ZARR_METADATA as _ZARR_METADATA
from pipeline.io.identity import content_identity
from pipeline.io.locations import resolve
from pipeline.io.values import validate_dtype

__all__ = ["LAYOUTS", "Source", "SourceInfo", "SourceSpec", "content_identity", "open_source",
           "probe_source"]

LAYOUTS = ("auto", "CHW", "HWC")
#: the auto layout rule treats a dimension of at most this size as the band axis
MAX_AUTO_BANDS = 16

_PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_TIFF_EXTENSIONS = (".tif", ".tiff")


@dataclass(frozen=True)
class SourceSpec:
    """Picklable description of an input raster; open it with :func:`open_source`.

    Attributes:
        uri: local path, ``file://``/fsspec URL (``s3://``, ``gs://``, ``memory://``) or a GDAL
            ``/vsi...`` path.
        array_path: array inside a zarr group (zarr inputs only).
        layout: ``"auto"``, ``"CHW"`` or ``"HWC"`` for 3-D zarr arrays.
        storage_options: fsspec options for remote URLs (endpoint, credentials).
        bands: 0-based native band indices to read, in order; ``None`` reads all.
        max_pixels_in_memory: largest ``W * H`` that a PIL-read image may have.
    """

    uri: str
    array_path: str | None = None
    layout: str = "auto"
    storage_options: dict[str, Any] | None = None
    bands: tuple[int, ...] | None = None
    max_pixels_in_memory: int = 20_000 * 20_000

    def __post_init__(self) -> None:
        uri = os.fspath(self.uri) if isinstance(self.uri, os.PathLike) else self.uri
        if not isinstance(uri, str) or not uri:
            raise ConfigError(f"uri {self.uri!r} must be a non-empty string or path")
        object.__setattr__(self, "uri", uri)
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.array_path is not None and not isinstance(self.array_path, str):
            raise ConfigError(f"array_path {self.array_path!r} must be a string or None")
        if self.storage_options is not None:
            if not isinstance(self.storage_options, dict):
                raise ConfigError(
                    f"storage_options {self.storage_options!r} must be a dict or None"
                )
            object.__setattr__(self, "storage_options", dict(self.storage_options))
        if self.bands is not None:
            object.__setattr__(self, "bands", _normalise_bands(self.bands))
        m = self.max_pixels_in_memory
        if isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1:
            raise ConfigError(f"max_pixels_in_memory {m!r} must be a positive integer")

    @property
    def location(self) -> Any:
        """The resolved :class:`pipeline.io.locations.Location` of ``uri``."""
        return resolve(self.uri, self.storage_options)


def _normalise_bands(bands: Sequence[int]) -> tuple[int, ...]:
    if isinstance(bands, str | bytes) or not isinstance(bands, Sequence | np.ndarray):
        raise BandSelectionError(f"bands {bands!r} must be a sequence of 0-based band indices")
    out = []
    for b in bands:
        if isinstance(b, bool) or not isinstance(b, int | np.integer):
            raise BandSelectionError(f"band index {b!r} is not an integer")
        if b < 0:
            raise BandSelectionError(f"band index {int(b)} is negative; band indices are 0-based")
        out.append(int(b))
    if not out:
        raise BandSelectionError("bands () is empty: give at least one band index or None")
    return tuple(out)


class Source(abc.ABC):
    """An open raster. Read windows with :meth:`read`; close with :meth:`close` or ``with``.

    Attributes:
        spec: the :class:`SourceSpec` it was opened from.
        uri: ``spec.uri``.
        backend: ``"zarr"``, ``"rasterio"`` or ``"pil"``.
        shape: logical ``(C, H, W)`` after band selection.
        dtype: native numpy dtype of the pixels.
        nodata: nodata value, or ``None``.
        crs: coordinate reference system as WKT, or ``None``.
        transform: affine ``(a, b, c, d, e, f)``, or ``None``.
        native_band_count: number of bands in the input before selection.
        bands: the native band indices that make up the ``C`` logical bands.
    """

    backend: str = ""

    def __init__(
        self,
        spec: SourceSpec,
        native_shape: tuple[int, int, int],
        dtype: np.dtype,
        nodata: float | None = None,
        crs: str | None = None,
        transform: tuple[float, ...] | None = None,
    ) -> None:
        self.spec = spec
        self.uri = spec.uri
        n, h, w = (int(v) for v in native_shape)
        if n == 0 or h == 0 or w == 0:
            raise EmptyInputError(
                f"{spec.uri!r} is empty: {n} band(s), {h} row(s), {w} column(s); "
                "every dimension must be at least 1"
            )
        self.native_band_count = n
        self.dtype = validate_dtype(dtype, what=repr(spec.uri))
        if spec.bands is None:
            self.bands: tuple[int, ...] = tuple(range(n))
        else:
            for b in spec.bands:
                if b >= n:
                    raise BandSelectionError(
                        f"band index {b} is out of range for {spec.uri!r} with {n} band(s): "
                        f"allowed 0..{n - 1} (0-based)"
                    )
            self.bands = spec.bands
        self.shape: tuple[int, int, int] = (len(self.bands), h, w)
        self.nodata = nodata
        self.crs = crs
        self.transform = transform
        #: per logical band: {"colorinterp": GDAL colour interpretation name or None,
        #: "description": band description or None}; backends fill what they know
        self.band_info: list[dict[str, Any]] = [
            {"colorinterp": None, "description": None} for _ in self.bands]
        #: the output value of transparent pixels when the source has a transparency mask
        #: (an alpha channel with 0s) and no nodata value; None: no mask
        self.mask_nodata: float | None = None
        self._closed = False

    @property
    def has_mask(self) -> bool:
        """Whether :meth:`read_valid` gives a transparency mask (alpha 0 = not valid)."""
        return self.mask_nodata is not None

    def read_valid(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray | None:
        """``(h, w)`` bool: False where the window is transparent (alpha 0); None without a
        mask. The window rules are those of :meth:`read`."""
        if not self.has_mask:
            return None
        (r0, r1), (c0, c1) = _check_window(rows, cols, self.shape[1], self.shape[2])
        return self._read_valid(r0, r1, c0, c1)

    def _read_valid(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Backend hook of :meth:`read_valid` for sources with a mask."""
        raise NotImplementedError

    @property
    def all_bands(self) -> bool:
        """True when the bands are read in native order without selection."""
        return self.bands == tuple(range(self.native_band_count))

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Read the window ``rows = (r0, r1)``, ``cols = (c0, c1)`` (half-open) as ``(C, h, w)``.

        Raises:
            WindowError: unless ``0 <= r0 < r1 <= H`` and ``0 <= c0 < c1 <= W``.
            ValueError: if the source is closed.
        """
        if self._closed:
            raise ValueError(f"source {self.uri!r} is closed")
        (r0, r1), (c0, c1) = _check_window(rows, cols, self.shape[1], self.shape[2])
        try:
            out = self._read(r0, r1, c0, c1)
        except PipelineError:
            raise
        except (OSError, RuntimeError, ValueError, EOFError, KeyError) as exc:
            # GDAL (RasterioIOError is an OSError), codecs (RuntimeError, checksum ValueError),
            # truncated files (EOFError) and missing chunks of a broken store (KeyError)
            raise InputReadError(
                f"cannot read {self.uri!r} at rows {r0}..{r1}, cols {c0}..{c1} (the file may be "
                f"truncated or corrupt): {type(exc).__name__}: {exc}"
            ) from exc
        if out.dtype != self.dtype:
            out = out.astype(self.dtype)
        return out

    @abc.abstractmethod
    def _read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Backend read of the validated window: ``(C, r1 - r0, c1 - c0)``."""

    def close(self) -> None:
        """Release the backend's handles; further reads raise ``ValueError``."""
        if not self._closed:
            self._closed = True
            self._close()

    def _close(self) -> None:  # noqa: B027 - backends with nothing to release keep this
        """Backend hook for :meth:`close`."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(uri={self.uri!r}, shape={self.shape}, dtype={self.dtype}, "
            f"bands={self.bands})"
        )


def _check_window(
    rows: tuple[int, int], cols: tuple[int, int], height: int, width: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    out = []
    for name, window, size in (("rows", rows, height), ("cols", cols, width)):
        try:
            lo, hi = window
        except (TypeError, ValueError):
            raise WindowError(f"{name}={window!r} must be a pair (start, stop)") from None
        if any(isinstance(v, bool) or not isinstance(v, int | np.integer) for v in (lo, hi)):
            raise WindowError(f"{name}={window!r} must hold integers")
        if not 0 <= lo < hi <= size:
            raise WindowError(
                f"window {name}={(int(lo), int(hi))} is not inside the image "
                f"({name} 0..{size}): need 0 <= start < stop <= {size}"
            )
        out.append((int(lo), int(hi)))
    return out[0], out[1]


# ---------------------------------------------------------------------------------- dispatch


def open_source(spec: SourceSpec | str | os.PathLike[str]) -> Source:
    """Open the raster described by ``spec`` (a :class:`SourceSpec` or a bare URI).

    Raises:
        InputNotFoundError: the path or URL does not exist.
        UnsupportedInputError: not an image, unknown format, or corrupt metadata.
        UnsupportedDtypeError: a dtype outside uint8, uint16, int16, int32, float32, float64.
        EmptyInputError: zero bands, rows or columns.
        BandSelectionError: a band index beyond the band count.
        ConfigError: ``array_path`` given for an input that is not zarr.
    """
    if not isinstance(spec, SourceSpec):
        spec = SourceSpec(uri=spec)  # type: ignore[arg-type]  # __post_init__ takes paths
    uri = spec.uri
    from pipeline.io import readers

    if uri.startswith("/vsi"):
        _refuse_array_path(spec, "rasterio")
        return readers.open_with(spec, ("rasterio",), uri, None)

    loc = resolve(uri, spec.storage_options)
    fs: Any | None = None
    if loc.is_local:
        path = loc.path
        exists, isdir = os.path.exists(path), os.path.isdir(path)
    else:
        try:
            fs, path = loc.fs()
        except (ValueError, ImportError) as exc:
            raise UnsupportedInputError(f"cannot open {uri!r} through fsspec: {exc}") from exc
        exists = fs.exists(path)
        isdir = exists and fs.isdir(path)
    if not exists:
        raise InputNotFoundError(f"input not found: {uri!r}")

    name = path.rstrip("/")
    base = name.rsplit("/", 1)[-1]
    if base in _ZARR_METADATA or isdir or base.lower().endswith(".zarr"):
        store = loc.url.rstrip("/")
        if base in _ZARR_METADATA:
            store = store.rsplit("/", 1)[0]
        return readers.open_zarr(spec, store, remote=fs is not None)

    _refuse_array_path(spec, "image file")
    ext = os.path.splitext(base)[1].lower()
    if ext in _TIFF_EXTENSIONS:
        backends: tuple[str, ...] = ("rasterio", "pil")
    elif ext == ".png" and readers.png_is_16bit_colour(path, fs):
        backends = ("rasterio_drop_alpha",)
    elif ext in _PIL_EXTENSIONS:
        backends = ("pil",)
    else:
        backends = ("rasterio", "pil")
    return readers.open_with(spec, backends, path, fs)


def _refuse_array_path(spec: SourceSpec, kind: str) -> None:
    if spec.array_path is not None:
        raise ConfigError(
            f"array_path={spec.array_path!r} only applies to zarr inputs; {spec.uri!r} is "
            f"read as a {kind}"
        )


@dataclass(frozen=True)
class SourceInfo:
    """What a job needs to know of an input before it plans: ``shape`` ``(C, H, W)``, ``dtype``,
    ``nodata``, ``crs`` (WKT), ``transform`` (6 numbers) and its :func:`content_identity`."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    nodata: float | None
    crs: str | None
    transform: tuple[float, ...] | None
    identity: dict[str, Any]
    band_info: list[dict[str, Any]]
    mask_nodata: float | None = None  # see Source.mask_nodata

    @property
    def out_nodata(self) -> float | None:
        """The output's nodata value: the input's, else the one for its transparent pixels."""
        return self.nodata if self.nodata is not None else self.mask_nodata

    @property
    def masked_only(self) -> bool:
        """True when ``out_nodata`` only marks transparent pixels (no input value means
        nodata, so opaque pixels equal to it stay valid)."""
        return self.nodata is None and self.mask_nodata is not None


def probe_source(spec: SourceSpec) -> SourceInfo:
    """Open ``spec``, read its metadata and identity, close it."""
    with open_source(spec) as src:
        return SourceInfo(src.shape, src.dtype, src.nodata, src.crs, src.transform,
                          content_identity(src), list(src.band_info), src.mask_nodata)
