"""Exports of a finished Zarr output: a (Cloud-Optimised) GeoTIFF, PNG files, a preview and a
side-by-side comparison of a crop with its bicubic upscale.

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

from pipeline.errors import ConfigError, UnsupportedDtypeError
from pipeline.geometry.affine import as_transform
from pipeline.io.atomic import check_target, deliver, local_tmp, write_bytes
from pipeline.io.locations import resolve
from pipeline.io.zarr_output import CREATED_BY, ZarrOutput

__all__ = [
    "COMPRESSIONS",
    "MAX_PNG_PIXELS",
    "check_export_target",
    "codec_options",
    "export_geotiff",
    "write_comparison_png",
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

    It reads the smallest overview level (block means, :mod:`pipeline.io.pyramid`) that is at
    least ``max_side`` on its longer side, when the output has levels, else the full level; of
    that level every s-th row and column (s = ceil(max(H, W) / max_side)) is read chunk-row by
    chunk-row, so memory holds the preview plus the chunks being decoded. Bands: red,
    green, blue when the ``bands`` attribute names them; else 1 or 2 bands give grey (band 0),
    3 bands RGB, 4+ the first three as RGB. uint8 data is kept as is; other
    dtypes get one 2-98 percentile stretch over all shown bands of the preview (colour balance
    kept), ignoring NaN and ``nodata``, which become 0.
    """
    if not isinstance(max_side, int) or max_side < 1:
        raise ConfigError(f"max_side must be a positive integer, got {max_side!r}")
    check_target(resolve(path, storage_options), overwrite=overwrite, role="preview")
    c, full_h, full_w = output.shape
    shown = _display_bands(c, output.attrs)
    level = 0
    while level < output.levels and max(full_h, full_w) >> (level + 1) >= max_side:
        level += 1
    arr = output.level(level)
    h, w = arr.shape[1:]
    step = max(1, math.ceil(max(h, w) / max_side))
    ph, pw = math.ceil(h / step), math.ceil(w / step)
    preview = np.empty((len(shown), ph, pw), dtype=output.dtype)
    ch = arr.chunks[1]
    for r0 in range(0, h, ch):
        r1 = min(r0 + ch, h)
        first = math.ceil(r0 / step) * step
        if first >= r1:
            continue
        rows = np.asarray(arr[:max(shown) + 1, first:r1:step, ::step])[shown]
        i0 = first // step
        preview[:, i0 : i0 + rows.shape[1]] = rows
    if preview.dtype != np.uint8:
        preview = _stretch_to_uint8(preview, output.attrs.get("nodata"))
    write_png(preview, path, overwrite=overwrite, storage_options=storage_options)
    return ph, pw


# ----------------------------------------------------------------------- side-by-side crop


def _display_bands(count: int, attrs: dict[str, Any]) -> list[int]:
    """The bands a PNG shows: red, green, blue by colour interpretation when the output's
    ``bands`` attribute names all three; else band 0 (grey) for 1-2 bands, the first three
    (as RGB) for 3 or more."""
    info = attrs.get("bands")
    if isinstance(info, list) and len(info) == count:
        names = [b.get("colorinterp") if isinstance(b, dict) else None for b in info]
        if all(n in names for n in ("red", "green", "blue")):
            return [names.index(n) for n in ("red", "green", "blue")]
    return [0] if count < 3 else [0, 1, 2]


def _grid_starts(size: int, side: int, n: int) -> list[int]:
    """Up to ``n`` evenly spread starts of a ``side``-long window in ``0..size``."""
    if size <= side or n <= 1:
        return [max(0, (size - side) // 2)]
    return sorted({round(i * (size - side) / (n - 1)) for i in range(n)})


def _detail_score(block: np.ndarray, invalid: np.ndarray, vr: tuple[float, float]) -> float:
    """Mean gradient magnitude of the band mean of ``block (C, h, w)`` (in value-range units)
    over pixels that are valid with their right and lower neighbours; -1 when under half of
    the window is valid (windows on nodata are not chosen)."""
    from pipeline.io.values import to_unit

    if block.shape[1] < 2 or block.shape[2] < 2 or invalid.mean() > 0.5:
        return -1.0
    lum = to_unit(np.where(invalid[None], 0, block), vr).astype(np.float64).mean(axis=0)
    dy = lum[1:, :-1] - lum[:-1, :-1]
    dx = lum[:-1, 1:] - lum[:-1, :-1]
    ok = ~(invalid[:-1, :-1] | invalid[1:, :-1] | invalid[:-1, 1:])
    if not ok.any():
        return -1.0
    return float(np.hypot(dx, dy)[ok].mean())


def write_comparison_png(
    output: ZarrOutput,
    source: Any,
    path: str,
    *,
    crop: int = 512,
    value_range: tuple[float, float] | None = None,
    candidates: int = 8,
    gap: int = 8,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a PNG of a 1:1 crop of ``output`` beside the bicubic upscale of the same part of
    its input ``source`` (a :class:`~pipeline.io.sources.Source`, a ``SourceSpec`` or a URI).

    The crop is chosen on the input: of a ``candidates x candidates`` grid of windows (each
    about ``crop / scale`` input pixels, so about ``crop`` output pixels), the one with the
    highest mean gradient magnitude (:func:`_detail_score`; windows more than half nodata or
    invalid are skipped). The output window is that window times ``attrs["scale"]``; the
    bicubic half is :func:`liif.resize.resize_bicubic` (antialiased a = -0.5 cubic, on floats in
    ``value_range``, default ``attrs["value_range"]``) of the window plus a few pixels of context,
    invalid input pixels filled as the pipeline fills them and masked back to nodata by the
    nearest-pixel rule. The two halves are aligned exactly for integer scales; for others
    resize_bicubic's whole-pixel sizes put the bicubic grid within one output pixel of the
    output's. Image: ``(rows, 2 * cols + gap)``, output crop left (columns ``0..cols``), a white
    ``gap``, bicubic right; the bands of :func:`_display_bands`; uint8 kept as is, other dtypes
    one 2-98 % stretch over both halves together (nodata and NaN black). Returns
    ``{"output_window", "input_window", "shape", "score"}`` (windows as ``[[r0, r1], [c0, c1]]``).
    """
    import torch

    from liif.resize import resize_bicubic
    from pipeline.io.sources import Source, open_source
    from pipeline.io.values import (
        fill_invalid,
        from_unit,
        invalid_mask,
        mask_output,
        parse_value_range,
        to_unit,
        upsample_mask,
    )

    for name, value, least in (("crop", crop, 1), ("candidates", candidates, 1), ("gap", gap, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
    check_target(resolve(path, storage_options), overwrite=overwrite, role="comparison PNG")
    attrs = output.attrs
    c, H, W = output.shape
    src = source if isinstance(source, Source) else open_source(source)
    try:
        _, h, w = src.shape
        want = attrs.get("in_shape")
        if src.shape[0] != c or (want is not None and list(want) != [h, w]):
            raise ConfigError(
                f"input {src.uri!r} is {src.shape[0]}x{h}x{w} (bands x rows x cols) but the "
                f"output {output.uri!r} was made from {c} band(s) of {want}: pass the --input "
                "(and --bands) the output was made from")
        sy, sx = (float(v) for v in attrs.get("scale") or (H / h, W / w))
        vr = parse_value_range(tuple(value_range if value_range is not None
                                     else attrs.get("value_range") or (0.0, 1.0)))
        shown = _display_bands(c, attrs)
        nodata = src.nodata

        # 1. the most detailed input window of about crop / scale pixels
        kr = min(h, max(1, round(crop / sy)))
        kc = min(w, max(1, round(crop / sx)))
        best = (-2.0, 0, 0)
        for r0 in _grid_starts(h, kr, candidates):
            for c0 in _grid_starts(w, kc, candidates):
                block = src.read((r0, r0 + kr), (c0, c0 + kc))
                score = _detail_score(block[shown], invalid_mask(block, nodata), vr)
                best = max(best, (score, r0, c0))
        score, ir0, ic0 = best

        # 2. the output crop over that window
        o_r0, o_c0 = min(H - 1, round(ir0 * sy)), min(W - 1, round(ic0 * sx))
        o_r1, o_c1 = min(H, o_r0 + max(1, round(kr * sy))), min(W, o_c0 + max(1, round(kc * sx)))
        sr = output.read((o_r0, o_r1), (o_c0, o_c1))[shown]

        # 3. bicubic of the same window, with context so its edges are not the crop's edges
        mr, mc = max(2, math.ceil(2 / sy)) + 1, max(2, math.ceil(2 / sx)) + 1
        pr0, pr1 = max(0, ir0 - mr), min(h, ir0 + kr + mr)
        pc0, pc1 = max(0, ic0 - mc), min(w, ic0 + kc + mc)
        padded = src.read((pr0, pr1), (pc0, pc1))
        invalid = invalid_mask(padded, nodata)
        unit = fill_invalid(to_unit(padded[shown], vr), invalid)
        off_r, off_c = round((ir0 - pr0) * sy), round((ic0 - pc0) * sx)
        n_r, n_c = o_r1 - o_r0, o_c1 - o_c0
        size = (max(round((pr1 - pr0) * sy), off_r + n_r), max(round((pc1 - pc0) * sx), off_c + n_c))
        up = resize_bicubic(torch.from_numpy(unit), size).numpy()[:, off_r:off_r + n_r,
                                                                   off_c:off_c + n_c]
        bicubic = from_unit(up, output.dtype, vr)
        rows_u = (np.arange(o_r0, o_r1) + 0.5) / sy - 0.5 - pr0
        cols_u = (np.arange(o_c0, o_c1) + 0.5) / sx - 0.5 - pc0
        out_nodata = attrs.get("nodata")
        if out_nodata is not None or output.dtype.kind == "f":
            mask_output(bicubic, upsample_mask(invalid, rows_u, cols_u), out_nodata)
    finally:
        if src is not source:
            src.close()

    # 4. side by side, one display mapping for both halves
    both = np.concatenate([sr, bicubic], axis=2)
    if both.dtype != np.uint8:
        both = _stretch_to_uint8(both, attrs.get("nodata"))
    image = np.full((len(shown), n_r, 2 * n_c + gap), 255, dtype=np.uint8)
    image[:, :, :n_c] = both[:, :, :n_c]
    image[:, :, n_c + gap:] = both[:, :, n_c:]
    write_png(image, path, overwrite=overwrite, storage_options=storage_options)
    return {"output_window": [[o_r0, o_r1], [o_c0, o_c1]],
            "input_window": [[ir0, ir0 + kr], [ic0, ic0 + kc]],
            "shape": [n_r, 2 * n_c + gap], "score": score}
