"""The reader backends behind :func:`pipeline.io.sources.open_source`: Zarr, rasterio, and PIL
(:mod:`pipeline.io.pil_reader`).

Each gives the :class:`pipeline.io.sources.Source` interface; the rules (layouts, attributes,
modes, alpha) are documented in :mod:`pipeline.io.sources`.

Band information (``Source.band_info``, one ``{"colorinterp", "description"}`` per logical
band, after band selection): rasterio takes the dataset's colour interpretation (GDAL's name:
``gray``, ``undefined``, ``red``, ``nir``, ...) and description of each selected band (a dropped
alpha band is not among them); PIL gives ``gray`` for one band and ``red, green, blue`` for
colour images; Zarr takes the array attribute ``bands`` when it is one such dict per native band
(what our outputs store, so an output read back as input keeps it), else nothing is known
(``None``). An unknown interpretation name is ``None``, an empty description ``None``.
"""

from __future__ import annotations

import contextvars
import io
import math
import os
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.errors import (
    InputNotFoundError,
    UnsupportedDtypeError,
    UnsupportedInputError,
)
from pipeline.io.pil_reader import NotPilImage, open_pil, png_is_16bit_colour
from pipeline.io.sources import MAX_AUTO_BANDS, Source, SourceSpec

__all__ = ["colorinterp_name", "open_with", "open_zarr", "png_is_16bit_colour"]

# --------------------------------------------------------------------------------------- zarr


class _ZarrSource(Source):
    backend = "zarr"

    def __init__(self, spec: SourceSpec, array: Any, layout: str) -> None:
        self._array = array
        self._layout = layout
        shape = array.shape
        if layout == "2D":
            native = (1, shape[0], shape[1])
        elif layout == "CHW":
            native = (shape[0], shape[1], shape[2])
        else:
            native = (shape[2], shape[0], shape[1])
        attrs = dict(array.attrs)
        super().__init__(
            spec,
            native,
            np.dtype(array.dtype),
            nodata=_attr_nodata(attrs, spec.uri),
            crs=_attr_crs(attrs, spec.uri),
            transform=_attr_transform(attrs, spec.uri),
        )
        native_info = _attr_band_info(attrs, native[0])
        if native_info is not None:
            self.band_info = [dict(native_info[b]) for b in self.bands]

    def _read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        arr = self._array
        if self._layout == "2D":
            block = np.asarray(arr[r0:r1, c0:c1])[None]
            return block if self.all_bands else block[list(self.bands)]
        if self._layout == "CHW":
            if self.all_bands:
                return np.asarray(arr[:, r0:r1, c0:c1])
            return np.asarray(arr.oindex[list(self.bands), r0:r1, c0:c1])
        bsel = slice(None) if self.all_bands else list(self.bands)
        block = np.asarray(arr.oindex[r0:r1, c0:c1, bsel])
        return np.ascontiguousarray(block.transpose(2, 0, 1))

    def _close(self) -> None:
        self._array = None


def _zarr_layout(shape: tuple[int, ...], layout: str, uri: str) -> str:
    if len(shape) == 2:
        return "2D"
    if len(shape) != 3:
        raise UnsupportedInputError(
            f"zarr array {uri!r} has shape {tuple(shape)}; only 2-D (H, W) and 3-D "
            "(C, H, W) or (H, W, C) arrays are supported"
        )
    if layout != "auto":
        return layout
    first, last = shape[0], shape[2]
    if last <= MAX_AUTO_BANDS < first:
        return "HWC"
    return "CHW"


def _attr_nodata(attrs: dict[str, Any], uri: str) -> float | None:
    for key in ("nodata", "_FillValue"):
        if attrs.get(key) is not None:
            value = attrs[key]
            try:
                return float(value)
            except (TypeError, ValueError):
                raise UnsupportedInputError(
                    f"zarr attribute {key}={value!r} of {uri!r} is not a number"
                ) from None
    return None


def _attr_crs(attrs: dict[str, Any], uri: str) -> str | None:
    value = attrs.get("crs")
    if value is None or value == "":
        return None
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        return CRS.from_user_input(value).to_wkt()
    except (CRSError, TypeError, ValueError) as exc:
        raise UnsupportedInputError(
            f"zarr attribute crs={str(value)[:80]!r} of {uri!r} is not a CRS: {exc}"
        ) from None


def colorinterp_name(value: Any) -> str | None:
    """The GDAL colour interpretation name of ``value`` (a rasterio ``ColorInterp``, or a name
    in any case: ``"RED"``, ``"nir"``), or None when it is not one."""
    from rasterio.enums import ColorInterp

    if isinstance(value, ColorInterp):
        return value.name
    if isinstance(value, str):
        for ci in ColorInterp:
            if ci.name.lower() == value.strip().lower():
                return ci.name
    return None


def _attr_band_info(attrs: dict[str, Any], count: int) -> list[dict[str, Any]] | None:
    """Per native band ``{"colorinterp", "description"}`` from the array attribute ``bands``
    (what our outputs store: one dict per band); None when absent or not that shape (a
    ``bands`` attribute of another meaning is ignored, not an error)."""
    value = attrs.get("bands")
    if not isinstance(value, list) or len(value) != count:
        return None
    out = []
    for item in value:
        if not isinstance(item, dict):
            return None
        desc = item.get("description")
        out.append({"colorinterp": colorinterp_name(item.get("colorinterp")),
                    "description": desc if isinstance(desc, str) and desc else None})
    return out


def _attr_transform(attrs: dict[str, Any], uri: str) -> tuple[float, ...] | None:
    value = attrs.get("transform")
    if value is None:
        return None
    try:
        coeffs = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        coeffs = ()
    if len(coeffs) == 9 and coeffs[6:] == (0.0, 0.0, 1.0):
        coeffs = coeffs[:6]
    if len(coeffs) != 6 or not all(math.isfinite(v) for v in coeffs):
        raise UnsupportedInputError(
            f"zarr attribute transform={value!r} of {uri!r} must be 6 finite numbers "
            "(a, b, c, d, e, f in rasterio.Affine order)"
        )
    return coeffs


def open_zarr(spec: SourceSpec, store: str, remote: bool) -> Source:
    import zarr
    from zarr.errors import NodeNotFoundError

    kwargs: dict[str, Any] = {"mode": "r"}
    if spec.array_path:
        kwargs["path"] = spec.array_path
    if remote and spec.storage_options:
        kwargs["storage_options"] = spec.storage_options
    try:
        node = zarr.open(store=store, **kwargs)
    except (NodeNotFoundError, FileNotFoundError) as exc:
        if spec.array_path:
            raise InputNotFoundError(
                f"no zarr array at array_path={spec.array_path!r} in {spec.uri!r}"
            ) from exc
        raise UnsupportedInputError(
            f"{spec.uri!r} is not a zarr array or group (no zarr.json, .zarray or .zgroup)"
        ) from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise UnsupportedInputError(f"corrupt zarr metadata in {spec.uri!r}: {exc}") from exc
    if isinstance(node, zarr.Group) and _is_our_output(node):
        node = node["image"]  # our output: its full level, not the overviews or coordinates
    if isinstance(node, zarr.Group):
        try:
            members = list(node.members(max_depth=None))
        except (ValueError, TypeError, KeyError) as exc:
            raise UnsupportedInputError(
                f"corrupt zarr metadata inside the group {spec.uri!r}: {type(exc).__name__}: {exc}"
            ) from exc
        arrays = sorted(p for p, m in members if isinstance(m, zarr.Array))
        where = f"group {spec.array_path!r} in " if spec.array_path else ""
        if len(arrays) != 1:
            found = ", ".join(repr(a) for a in arrays) if arrays else "none"
            raise UnsupportedInputError(
                f"zarr {where}group {spec.uri!r} holds {len(arrays)} arrays ({found}); "
                "choose one with array_path"
            )
        node = node[arrays[0]]
    if not isinstance(node, zarr.Array):
        raise UnsupportedInputError(f"{spec.uri!r}: {node.path!r} is a zarr group, not an array")
    if str(node.attrs.get("created_by", "")).startswith("liif-pipeline") and (
            node.attrs.get("complete") is False):
        raise UnsupportedInputError(
            f"{spec.uri!r} is an unfinished output of liif-pipeline (a job is writing it, or "
            "stopped before its last tile): its missing tiles would read as the fill value; "
            "finish it first (rerun its job with --resume)")
    layout = _zarr_layout(node.shape, spec.layout, spec.uri)
    return _ZarrSource(spec, node, layout)


def _is_our_output(group: Any) -> bool:
    """Whether ``group`` is an output of this project (``created_by`` marker, ``image`` array):
    read as an input it means its full level, beside overviews and coordinate arrays."""
    if not str(group.attrs.get("created_by", "")).startswith("liif-pipeline"):
        return False
    import zarr

    try:
        return isinstance(group["image"], zarr.Array)
    except KeyError:
        return False


# ----------------------------------------------------------------------------------- rasterio


class _RasterioSource(Source):
    backend = "rasterio"

    def __init__(
        self, spec: SourceSpec, dataset: Any, context: contextvars.Context, drop_alpha: bool
    ) -> None:
        from rasterio.enums import ColorInterp

        self._ds = dataset
        # rasterio's Python-opener bookkeeping lives in context variables: every call on a
        # dataset opened through fsspec must run in the context it was opened in, whatever
        # thread makes it. The lock serialises reads, as GDAL datasets are not thread-safe.
        self._context = context
        self._lock = threading.Lock()
        indexes = list(dataset.indexes)
        alpha_index = None
        if drop_alpha and len(indexes) > 1:
            alphas = [i for i, ci in zip(dataset.indexes, dataset.colorinterp, strict=True)
                      if ci == ColorInterp.alpha]
            indexes = [i for i in indexes if i not in alphas]
            alpha_index = alphas[0] if alphas else None
        dtypes = {dataset.dtypes[i - 1] for i in indexes}
        if len(dtypes) != 1:
            raise UnsupportedDtypeError(
                f"{spec.uri!r} mixes band dtypes {sorted(dtypes)}; all bands must share one dtype"
            )
        crs = dataset.crs.to_wkt() if dataset.crs else None
        transform: tuple[float, ...] | None = tuple(dataset.transform)[:6]
        if crs is None and dataset.transform.is_identity:
            transform = None
        super().__init__(
            spec,
            (len(indexes), dataset.height, dataset.width),
            np.dtype(dtypes.pop()),
            nodata=None if dataset.nodata is None else float(dataset.nodata),
            crs=crs,
            transform=transform,
        )
        self._indexes = [indexes[b] for b in self.bands]
        interps, descriptions = dataset.colorinterp, dataset.descriptions
        self.band_info = [{"colorinterp": colorinterp_name(interps[i - 1]),
                           "description": descriptions[i - 1] or None} for i in self._indexes]
        self._valid = None
        if alpha_index is not None:  # a PNG (small, read whole): its alpha as transparency mask
            alpha = context.run(dataset.read, alpha_index)
            if not alpha.all():
                self._valid = alpha != 0
                self.mask_nodata = 0.0 if self.dtype.kind != "f" else float("nan")

    def _read_valid(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        assert self._valid is not None
        return self._valid[r0:r1, c0:c1].copy()

    def _read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        from rasterio.windows import Window

        window = Window(c0, r0, c1 - c0, r1 - r0)
        with self._lock:
            return self._context.run(self._ds.read, self._indexes, window=window)

    def _close(self) -> None:
        with self._lock:
            self._context.run(self._ds.close)


def _rasterio_dataset(path: str, fs: Any | None) -> Any:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        if fs is None:
            return rasterio.open(path)
        protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
        opener: Any = fs  # rasterio reads byte ranges through fs.open/size/ls: no download
        if "memory" in protocols:
            # fsspec's memory filesystem hands every caller the same file object, which
            # breaks a second dataset on the same file; give each open its own copy.
            def opener(p: str, mode: str = "rb", **_: Any) -> io.BytesIO:
                return io.BytesIO(fs.cat_file(p))

        # skip GDAL's directory listing for sidecar files (.aux.xml, .msk): a remote request
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            return rasterio.open(path, opener=opener)


def _open_rasterio(spec: SourceSpec, path: str, fs: Any | None, drop_alpha: bool) -> Source:
    context = contextvars.copy_context()
    dataset = context.run(_rasterio_dataset, path, fs)
    try:
        return _RasterioSource(spec, dataset, context, drop_alpha)
    except BaseException:
        context.run(dataset.close)
        raise


def open_with(spec: SourceSpec, backends: Sequence[str], path: str, fs: Any | None) -> Source:
    """Try each backend in turn; format errors fall through to the next one."""
    failures = []
    for backend in backends:
        if backend == "pil":
            try:
                return open_pil(spec, path, fs)
            except NotPilImage as exc:
                failures.append(f"PIL: {exc}")
                continue
        from rasterio.errors import RasterioIOError

        try:
            return _open_rasterio(spec, path, fs, drop_alpha=backend == "rasterio_drop_alpha")
        except RasterioIOError as exc:
            if fs is None and not path.startswith("/vsi") and not os.path.exists(path):
                raise InputNotFoundError(f"input not found: {spec.uri!r}") from exc
            missing = ("No such file", "does not exist in the file system")
            if path.startswith("/vsi") and any(text in str(exc) for text in missing):
                raise InputNotFoundError(f"input not found: {spec.uri!r}") from exc
            failures.append(f"rasterio: {exc}")
    raise UnsupportedInputError(
        f"{spec.uri!r} is not a supported image ({'; '.join(failures)}); supported inputs: "
        "zarr arrays/groups, GeoTIFF/COG and other GDAL rasters, PNG, JPEG, BMP, WebP, TIFF"
    )
