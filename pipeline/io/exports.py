"""Exports of a finished Zarr output: a (Cloud-Optimised) GeoTIFF; PNG files, the preview and
the side-by-side comparison are in :mod:`pipeline.io.previews`.

Each export streams the Zarr window by window (never the whole array), is checked before any work
(:func:`check_export_target`) and is written atomically (temporary file + rename, or one upload).
"""

from __future__ import annotations

import math
import os
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline.errors import ConfigError
from pipeline.geometry.affine import as_transform
from pipeline.io.atomic import check_target, deliver, local_tmp
from pipeline.io.locations import resolve
from pipeline.io.zarr_output import CREATED_BY, ZarrOutput

__all__ = [
    "COMPRESSIONS",
    "MAX_PNG_PIXELS",
    "check_export_target",
    "codec_options",
    "export_geotiff",
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


# ------------------------------------------------------------------------------ GeoTIFF / COG

#: ``compress`` values of :func:`export_geotiff` (GDAL's GTiff codecs without lossy JPEG/WEBP)
COMPRESSIONS = ("deflate", "zstd", "lzw", "lerc", "lerc_deflate", "lerc_zstd", "none")
#: accepted ``level`` range per codec (DEFLATE is libdeflate's 1..12 in rasterio's GDAL)
_LEVELS = {"deflate": (1, 12), "zstd": (1, 22), "lerc_deflate": (1, 12), "lerc_zstd": (1, 22)}
_LEVEL_OPTION = {"deflate": "ZLEVEL", "zstd": "ZSTD_LEVEL", "lerc_deflate": "ZLEVEL",
                 "lerc_zstd": "ZSTD_LEVEL"}
_PREDICTED = ("deflate", "zstd", "lzw")
#: the intermediate tiled GeoTIFF of a COG export is rewritten once more, so it takes the
#: cheapest lossless codec to write and read back (fast, and far smaller than uncompressed)
_INTERMEDIATE = {"COMPRESS": "ZSTD", "ZSTD_LEVEL": 1}
#: windows read from the Zarr are this many columns wide (rounded to whole blocks and chunks)
_WINDOW_COLS = 2048
#: threads reading Zarr windows ahead of GDAL (each read already decodes its chunks on zarr's
#: own thread pool; decoding is far faster than compressing, so two keep GDAL fed)
_READ_THREADS = 2


def codec_options(compress: str, dtype: np.dtype, *, level: int | None = None,
                  max_z_error: float = 0.0, predictor: bool = True) -> dict[str, Any]:
    """GDAL GTiff creation options for one codec choice, checked.

    ``compress`` is one of :data:`COMPRESSIONS`. ``level``: DEFLATE 1..12 (default 6), ZSTD
    1..22 (default 9); refused for codecs without levels. ``predictor`` adds horizontal
    differencing (2) for integer and floating-point prediction (3) for float data to DEFLATE,
    ZSTD and LZW (lossless; usually smaller for smooth imagery). ``max_z_error`` (LERC only) is
    the largest absolute error LERC may introduce per value: 0 (the default) is lossless; more
    is lossy (for integers, 0.5 or less stays lossless). Raises ConfigError naming the flag.
    """
    name = str(compress).lower() if isinstance(compress, str) else compress
    if name not in COMPRESSIONS:
        raise ConfigError(f"--cog-compress {compress!r} is not one of {', '.join(COMPRESSIONS)}")
    opts: dict[str, Any] = {"COMPRESS": name.upper()}
    if level is not None:
        if name not in _LEVELS:
            raise ConfigError(f"--cog-level {level!r} does not apply to --cog-compress {name}; "
                              f"levels exist for {', '.join(_LEVELS)}")
        lo, hi = _LEVELS[name]
        if isinstance(level, bool) or not isinstance(level, int | np.integer) or not lo <= level <= hi:
            raise ConfigError(f"--cog-level {level!r} is out of range for --cog-compress {name}: "
                              f"use an integer in {lo}..{hi}")
        opts[_LEVEL_OPTION[name]] = int(level)
    if isinstance(max_z_error, bool) or not isinstance(max_z_error, int | float | np.floating) \
            or not math.isfinite(max_z_error) or max_z_error < 0:
        raise ConfigError(f"--cog-max-z-error {max_z_error!r} must be a finite number >= 0")
    if name.startswith("lerc"):
        opts["MAX_Z_ERROR"] = float(max_z_error)
    elif max_z_error:
        raise ConfigError(f"--cog-max-z-error {max_z_error!r} only applies to LERC codecs "
                          f"(--cog-compress lerc, lerc_deflate, lerc_zstd), not {name}")
    if not isinstance(predictor, bool):
        raise ConfigError(f"predictor must be True or False, got {predictor!r}")
    if predictor and name in _PREDICTED:
        opts["PREDICTOR"] = 3 if np.dtype(dtype).kind == "f" else 2
    return opts


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _band_layout(attrs: dict[str, Any], count: int) -> tuple[str, list[Any], list[str | None]]:
    """PHOTOMETRIC, colour interpretations and descriptions of the ``count`` output bands.

    From ``attrs["bands"]`` (one ``{"colorinterp", "description"}`` dict per band, as the jobs
    store it); an unknown interpretation is ``undefined`` (``gray`` for a single band). RGB
    photometric only for exactly three bands red, green, blue; every other layout is
    MINISBLACK with the interpretations in GDAL's metadata, so GDAL never invents an alpha band
    (a 4-band byte GeoTIFF defaults to RGB + alpha)."""
    from rasterio.enums import ColorInterp

    from pipeline.io.readers import colorinterp_name

    info = attrs.get("bands")
    if not (isinstance(info, list) and len(info) == count
            and all(isinstance(b, dict) for b in info)):
        info = [{} for _ in range(count)]
    names = [colorinterp_name(b.get("colorinterp")) or "undefined" for b in info]
    if count == 1 and names[0] == "undefined":
        names = ["gray"]
    descriptions = [d if isinstance(d := b.get("description"), str) and d else None
                    for b in info]
    photometric = "RGB" if names == ["red", "green", "blue"] else "MINISBLACK"
    return photometric, [ColorInterp[n] for n in names], descriptions


def _windows(h: int, w: int, step_r: int, step_c: int
             ) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    return [((r0, min(r0 + step_r, h)), (c0, min(c0 + step_c, w)))
            for r0 in range(0, h, step_r) for c0 in range(0, w, step_c)]


def _read_ahead(output: ZarrOutput, windows: list[tuple[tuple[int, int], tuple[int, int]]],
                threads: int, dtype: np.dtype) -> Iterator[tuple[Any, np.ndarray]]:
    """Yield ``(window, block)`` in order, ``block`` (C, h, w) of ``dtype``, read by ``threads``
    threads that keep at most ``2 * threads`` windows decoded ahead of the consumer."""
    def load(win: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
        return output.read(*win).astype(dtype, copy=False)

    if threads <= 1:
        for win in windows:
            yield win, load(win)
        return
    ahead = 2 * threads
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cog-read") as pool:
        pending: deque[tuple[Any, Future[np.ndarray]]] = deque()
        todo = iter(windows)
        try:
            for win in todo:
                pending.append((win, pool.submit(load, win)))
                if len(pending) >= ahead:
                    break
            while pending:
                win, fut = pending.popleft()
                block = fut.result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(load, nxt)))
                yield win, block
        finally:
            for _, fut in pending:
                fut.cancel()


def export_geotiff(
    output: ZarrOutput,
    path: str,
    *,
    cog: bool = True,
    compress: str = "deflate",
    level: int | None = None,
    max_z_error: float = 0.0,
    predictor: bool = True,
    threads: int | None = None,
    blocksize: int = 512,
    overviews: bool = True,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Stream ``output`` (C, H, W) into a tiled, compressed GeoTIFF (a COG when ``cog``) at
    ``path``; returns ``path``.

    Codec: ``compress`` in :data:`COMPRESSIONS` with ``level``, ``max_z_error`` and
    ``predictor`` as in :func:`codec_options` (all lossless by default). ``threads`` (default:
    every CPU this process may use) compress blocks in GDAL (``NUM_THREADS``) and build and
    copy overviews (``GDAL_NUM_THREADS``). Meanwhile ``min(threads, 2)`` threads read the next
    windows of the Zarr, each ``C x step_r x step_c`` (``step_r``, ``step_c``: whole blocks and
    chunks; ``step_c`` about ``_WINDOW_COLS``). Memory: at most ``2 * min(threads, 2) + 1``
    windows of ``C * step_r * step_c * itemsize`` bytes (5 x 16.8 MB for 4 float32 bands,
    512-px blocks, 256-px chunks), plus GDAL's block cache (``GDAL_CACHEMAX``, default 5 % of
    RAM) and one compression buffer per GDAL thread; never the whole array.

    Georeference: CRS, transform and nodata from the array attributes (the nodata mask stays
    the nodata mask). Bands: colour interpretation and description from ``attrs["bands"]``
    (unknown: ``undefined``, ``gray`` for one band); PHOTOMETRIC=RGB only for exactly red,
    green, blue, else MINISBLACK, so no band ever becomes alpha unless the input said so.

    Overviews (average, factors 2, 4, ... until the smallest fits one block) are built inside
    an intermediate tiled GeoTIFF (ZSTD level 1); for a COG it is then copied once with
    ``COPY_SRC_OVERVIEWS`` into the final codec, which gives GDAL's COG layout (``LAYOUT=COG``:
    IFDs first, overviews smallest first, then full resolution). ``blocksize`` (tile size)
    must be a multiple of 16, and at least 128 for a COG. ``path`` is local or an fsspec URL
    (written locally, then uploaded), written atomically.
    """
    import rasterio
    import rasterio.shutil
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.transform import Affine
    from rasterio.windows import Window

    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 16 \
            or blocksize % 16:
        raise ConfigError(f"blocksize must be a positive multiple of 16, got {blocksize!r}")
    if cog and blocksize < 128:
        raise ConfigError(f"a COG needs blocksize >= 128 (GDAL COG layout), got {blocksize}")
    if threads is None:
        threads = _cpu_count()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"--cog-threads {threads!r} must be a positive integer")
    c, h, w = output.shape
    dtype = output.dtype
    if dtype == np.float16:
        dtype = np.dtype(np.float32)  # GDAL has no float16
    codec = codec_options(compress, dtype, level=level, max_z_error=max_z_error,
                          predictor=predictor)
    target = resolve(path, storage_options)
    check_target(target, overwrite=overwrite, role="export")

    attrs = output.attrs
    photometric, interps, descriptions = _band_layout(attrs, c)
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": w, "height": h, "count": c, "dtype": dtype.name,
        "tiled": True, "blockxsize": blocksize, "blockysize": blocksize,
        "interleave": "pixel", "photometric": photometric, "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": threads,
    }
    profile.update({k.lower(): v for k, v in (_INTERMEDIATE if cog else codec).items()})
    if attrs.get("crs"):
        profile["crs"] = CRS.from_user_input(attrs["crs"])
    if attrs.get("transform") is not None:
        profile["transform"] = Affine(*as_transform(attrs["transform"]))
    if attrs.get("nodata") is not None:
        profile["nodata"] = attrs["nodata"]
    elif np.dtype(dtype).kind == "f":
        # a float output without a nodata value marks invalid pixels NaN: say so, or GIS readers
        # take every pixel as valid
        profile["nodata"] = float("nan")

    # Windows span whole GeoTIFF blocks and whole Zarr chunks in each direction.
    ch, cw = output.chunks
    step_r = blocksize * math.ceil(ch / blocksize)
    step_c = blocksize * math.ceil(cw / blocksize)
    step_c *= max(1, _WINDOW_COLS // step_c)
    factors = _overview_factors(h, w, blocksize) if overviews else []

    tiled = local_tmp(target, ".tif")
    final = local_tmp(target, ".cog.tif") if cog else tiled
    try:
        with warnings.catch_warnings(), rasterio.Env(GDAL_NUM_THREADS=str(threads)):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tiled, "w", **profile) as dst:
                dst.colorinterp = interps
                for i, desc in enumerate(descriptions, start=1):
                    if desc:
                        dst.set_band_description(i, desc)
                dst.update_tags(created_by=attrs.get("created_by", CREATED_BY))
                for ((r0, r1), (c0, c1)), block in _read_ahead(
                        output, _windows(h, w, step_r, step_c), min(threads, _READ_THREADS),
                        dtype):
                    dst.write(block, window=Window(c0, r0, c1 - c0, r1 - r0))
                if factors:
                    dst.build_overviews(factors, Resampling.average)
                    dst.update_tags(ns="rio_overview", resampling="average")
            if cog:
                rasterio.shutil.copy(
                    tiled, final, driver="GTiff", COPY_SRC_OVERVIEWS="YES", TILED="YES",
                    BLOCKXSIZE=blocksize, BLOCKYSIZE=blocksize, INTERLEAVE="PIXEL",
                    PHOTOMETRIC=photometric, BIGTIFF="IF_SAFER", NUM_THREADS=threads, **codec)
        deliver(final, target)
    finally:
        for tmp in {tiled, final}:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path
