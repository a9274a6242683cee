"""PNG exports of a finished Zarr output: :func:`write_png`, a downsampled preview
(:func:`write_preview_png`, read from the pyramid) and a 1:1 crop beside its bicubic upscale
(:func:`write_comparison_png`). Each is checked before any work and written atomically."""

from __future__ import annotations

import math
import struct
import warnings
import zlib
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, UnsupportedDtypeError
from pipeline.io.atomic import check_target, write_bytes
from pipeline.io.exports import MAX_PNG_PIXELS
from pipeline.io.locations import resolve
from pipeline.io.zarr_output import CREATED_BY, ZarrOutput

__all__ = ["png_with_text", "write_comparison_png", "write_png", "write_preview_png"]


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
    write_bytes(target, png_with_text(payload, "created_by", CREATED_BY))
    return path


def png_with_text(png: bytes, key: str, value: str) -> bytes:
    """``png`` with a ``tEXt`` chunk ``key=value`` right after its IHDR chunk (Latin-1 text)."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG stream (no IHDR after the signature)")
    data = key.encode("latin-1") + b"\x00" + value.encode("latin-1")
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + data) & 0xFFFFFFFF)
    end_ihdr = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:end_ihdr] + chunk + png[end_ihdr:]


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
