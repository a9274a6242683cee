"""Exports of a finished Zarr output: a (Cloud-Optimised) GeoTIFF, PNG files and a preview.

Each export streams the Zarr window by window (never the whole array), is checked before any work
(:func:`check_export_target`) and is written atomically (temporary file + rename, or one upload).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, UnsupportedDtypeError
from pipeline.geometry.affine import as_transform
from pipeline.io.atomic import check_target, deliver, local_tmp, write_bytes
from pipeline.io.locations import resolve
from pipeline.io.zarr_output import CREATED_BY, ZarrOutput

__all__ = [
    "MAX_PNG_PIXELS",
    "check_export_target",
    "export_geotiff",
    "write_png",
    "write_preview_png",
]

MAX_PNG_PIXELS = 100_000_000



def check_export_target(path: str, *, overwrite: bool = False,
                        storage_options: dict[str, Any] | None = None) -> None:
    """Fail now (before any work) if an export to ``path`` would be refused later.

    Raises OutputExistsError (exists, no ``overwrite``; or a folder) or OutputNotWritableError
    (local parent missing or not writable).
    """
    check_target(resolve(path, storage_options), overwrite=overwrite, role="export")


def _overview_factors(height: int, width: int, blocksize: int) -> list[int]:
    """2, 4, 8, ... until the smallest overview fits in one block."""
    factors, f = [], 2
    while max(height, width) / (f // 2) > blocksize:
        factors.append(f)
        f *= 2
    return factors


def _has_cog_driver() -> bool:
    import rasterio

    with rasterio.Env() as env:
        return "COG" in env.drivers()


def export_geotiff(
    output: ZarrOutput,
    path: str,
    *,
    cog: bool = True,
    compress: str = "deflate",
    blocksize: int = 512,
    overviews: bool = True,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Stream ``output`` into a tiled, compressed GeoTIFF (a COG when ``cog``) at ``path``.

    ``blocksize`` (tile size) must be a multiple of 16, and at least 128 for a COG. Reads and
    writes window by window (never the whole array). CRS, transform and nodata come
    from the array attributes. Overviews (average resampling, factors 2, 4, ... until the
    smallest fits one block) are built internally. For a COG the tiled GeoTIFF is converted with
    GDAL's COG driver (or, without it, copied with ``COPY_SRC_OVERVIEWS``). ``path`` is local or an
    fsspec URL (written locally, then uploaded). Returns ``path``.
    """
    import rasterio
    import rasterio.shutil
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.transform import Affine
    from rasterio.windows import Window

    if not isinstance(blocksize, int) or blocksize < 16 or blocksize % 16:
        raise ConfigError(f"blocksize must be a positive multiple of 16, got {blocksize!r}")
    if cog and blocksize < 128:
        raise ConfigError(f"a COG needs blocksize >= 128 (GDAL COG driver), got {blocksize}")
    target = resolve(path, storage_options)
    check_target(target, overwrite=overwrite, role="export")

    c, h, w = output.shape
    dtype = output.dtype
    if dtype == np.float16:
        dtype = np.dtype(np.float32)  # GDAL has no float16
    attrs = output.attrs
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": c,
        "dtype": dtype.name,
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "compress": compress,
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
    }
    if compress.lower() in ("deflate", "lzw", "zstd"):
        profile["predictor"] = 3 if dtype.kind == "f" else 2
    if attrs.get("crs"):
        profile["crs"] = CRS.from_user_input(attrs["crs"])
    if attrs.get("transform") is not None:
        profile["transform"] = Affine(*as_transform(attrs["transform"]))
    if attrs.get("nodata") is not None:
        profile["nodata"] = attrs["nodata"]

    # Windows span whole GeoTIFF blocks and at least one Zarr chunk in each direction.
    ch, cw = output.chunks
    step_r = blocksize * math.ceil(ch / blocksize)
    step_c = blocksize * math.ceil(cw / blocksize)
    factors = _overview_factors(h, w, blocksize) if overviews else []

    tiled = local_tmp(target, ".tif")
    final = local_tmp(target, ".cog.tif") if cog else tiled
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tiled, "w", **profile) as dst:
                dst.update_tags(created_by=attrs.get("created_by", CREATED_BY))
                for r0 in range(0, h, step_r):
                    r1 = min(r0 + step_r, h)
                    for c0 in range(0, w, step_c):
                        c1 = min(c0 + step_c, w)
                        block = output.read((r0, r1), (c0, c1)).astype(dtype, copy=False)
                        dst.write(block, window=Window(c0, r0, c1 - c0, r1 - r0))
                if factors:
                    dst.build_overviews(factors, Resampling.average)
                    dst.update_tags(ns="rio_overview", resampling="average")
            if cog:
                copy_opts: dict[str, Any] = {
                    "COMPRESS": compress.upper(),
                    "BIGTIFF": "IF_SAFER",
                }
                if "predictor" in profile:
                    copy_opts["PREDICTOR"] = "YES"
                if _has_cog_driver():
                    copy_opts.update(
                        BLOCKSIZE=blocksize,
                        OVERVIEWS="FORCE_USE_EXISTING" if factors else "NONE",
                    )
                    rasterio.shutil.copy(tiled, final, driver="COG", **copy_opts)
                else:
                    copy_opts.update(
                        TILED="YES",
                        BLOCKXSIZE=blocksize,
                        BLOCKYSIZE=blocksize,
                        COPY_SRC_OVERVIEWS="YES",
                    )
                    copy_opts["PREDICTOR"] = profile.get("predictor", 1)
                    rasterio.shutil.copy(tiled, final, driver="GTiff", **copy_opts)
        deliver(final, target)
    finally:
        for tmp in {tiled, final}:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


def write_png(
    array: np.ndarray,
    path: str,
    overwrite: bool = False,
    *,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write a small (C, H, W) uint8/uint16 array (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).

    Refuses images above ``MAX_PNG_PIXELS`` (export a GeoTIFF or a preview instead). Returns
    ``path``.
    """
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    array = np.asarray(array)
    if array.ndim != 3 or not 1 <= array.shape[0] <= 4:
        raise ValueError(f"PNG needs a (C, H, W) array with C in 1..4, got shape {array.shape}")
    if array.dtype not in (np.uint8, np.uint16):
        raise UnsupportedDtypeError(
            f"PNG supports uint8 and uint16, got {array.dtype}; convert or use export_geotiff"
        )
    c, h, w = array.shape
    if h * w > MAX_PNG_PIXELS:
        raise ConfigError(
            f"{h}x{w} = {h * w / 1e6:.1f} Mpx is too large for a PNG (limit "
            f"{MAX_PNG_PIXELS / 1e6:.0f} Mpx); use export_geotiff or write_preview_png"
        )
    target = resolve(path, storage_options)
    check_target(target, overwrite=overwrite, role="PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as mem:
            with mem.open(driver="PNG", width=w, height=h, count=c, dtype=array.dtype.name) as dst:
                dst.write(array)
            payload = mem.read()
    write_bytes(target, payload)
    return path


def _stretch_to_uint8(img: np.ndarray, nodata: Any) -> np.ndarray:
    """Map (C, h, w) to uint8 with a joint 2-98 percentile stretch over valid pixels."""
    data = img.astype(np.float64)
    valid = np.isfinite(data)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        valid &= data != nodata
    out = np.zeros(data.shape, dtype=np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(data[valid], [2, 98])
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    stretched = np.clip((data - lo) * scale, 0, 255)
    out[valid] = np.rint(stretched[valid]).astype(np.uint8)
    return out


def write_preview_png(
    output: ZarrOutput,
    path: str,
    *,
    max_side: int = 1024,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> tuple[int, int]:
    """Write a downsampled 8-bit preview of ``output``; returns its (height, width).

    Every s-th row and column (s = ceil(max(H, W) / max_side)) is read chunk-row by chunk-row, so
    memory holds the preview plus the chunks being decoded, never the whole array. 1 or 2 bands
    give grey (band 0), 3 bands RGB, 4+ the first three as RGB. uint8 data is kept as is; other
    dtypes get one 2-98 percentile stretch over all shown bands of the preview (colour balance
    kept), ignoring NaN and ``nodata``, which become 0.
    """
    if not isinstance(max_side, int) or max_side < 1:
        raise ConfigError(f"max_side must be a positive integer, got {max_side!r}")
    check_target(resolve(path, storage_options), overwrite=overwrite, role="preview")
    c, h, w = output.shape
    bands = 1 if c < 3 else 3
    step = max(1, math.ceil(max(h, w) / max_side))
    ph, pw = math.ceil(h / step), math.ceil(w / step)
    preview = np.empty((bands, ph, pw), dtype=output.dtype)
    arr = output._array()
    ch = output.chunks[0]
    for r0 in range(0, h, ch):
        r1 = min(r0 + ch, h)
        first = math.ceil(r0 / step) * step
        if first >= r1:
            continue
        rows = np.asarray(arr[:bands, first:r1:step, ::step])
        i0 = first // step
        preview[:, i0 : i0 + rows.shape[1]] = rows
    if preview.dtype != np.uint8:
        preview = _stretch_to_uint8(preview, output.attrs.get("nodata"))
    write_png(preview, path, overwrite=overwrite, storage_options=storage_options)
    return ph, pw
