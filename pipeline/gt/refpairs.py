"""Reference images for reference-based SR (TTSR) training pairs, cut from the data we have.

CUFED5 is not available offline, so a reference is made in one of two ways:

``view``
    Another view of the same scene: a square crop of the same source, elsewhere in it, rotated,
    rescaled and re-lit, whose footprint never touches the ground-truth window (the LR region is
    excluded, so the network cannot copy the answer). :func:`synth_view`.
``raster``
    A co-registered second raster (another date, another sensor, other bands) covering the
    ground-truth footprint: the window of ``ref_size`` pixels of that raster centred on the GT
    window's georeferenced centre, optionally shifted. :func:`raster_window`.
    :func:`write_overlap_pair` cuts two overlapping, georeferenced GeoTIFFs from one raster with
    different bands (e.g. NAIP RGB and its NIR-R-G composite) to build such pairs from real data.

Geometry convention: pixel ``(r, c)`` covers ``[r, r + 1) x [c, c + 1)``; its centre is
``(r + 0.5, c + 0.5)``. Windows are ``(row0, row1, col0, col1)``, half-open.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import ConfigError
from pipeline.geometry.affine import apply, invert, window_transform
from pipeline.gt.config import GTConfig
from pipeline.gt.sampling import Candidate
from pipeline.io.sources import SourceSpec, open_source
from pipeline.io.values import from_unit, nodata_mask, to_unit

__all__ = ["ViewParams", "raster_window", "relight", "rotated_square", "sample_view",
           "squares_disjoint", "synth_view", "write_overlap_pair"]

Window = tuple[int, int, int, int]


def _range(name: str, value: Sequence[float], lo_ok: float, hi_ok: float) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} {value!r} must be two numbers (lo, hi)") from None
    if not (lo_ok <= lo <= hi <= hi_ok):
        raise ConfigError(f"{name} {value!r} must satisfy {lo_ok} <= lo <= hi <= {hi_ok}")
    return lo, hi


@dataclass(frozen=True)
class ViewParams:
    """Ranges the synthetic views are drawn from (uniformly).

    ``zoom``: source pixels per reference pixel (>1 sees a wider area, coarser); ``angle`` in
    degrees; ``gain`` and ``gamma``: ``ref = gain * x ** gamma`` per image, times a per-band
    ``tint``; ``tries``: placements tried before a patch is given up (no room outside the GT).
    """

    zoom: tuple[float, float] = (0.8, 1.25)
    angle: tuple[float, float] = (-30.0, 30.0)
    gain: tuple[float, float] = (0.75, 1.25)
    gamma: tuple[float, float] = (0.8, 1.25)
    tint: tuple[float, float] = (0.95, 1.05)
    tries: int = 64

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("zoom", _range("zoom", self.zoom, 0.25, 4.0))
        set_("angle", _range("angle", self.angle, -180.0, 180.0))
        set_("gain", _range("gain", self.gain, 0.05, 20.0))
        set_("gamma", _range("gamma", self.gamma, 0.05, 20.0))
        set_("tint", _range("tint", self.tint, 0.05, 20.0))
        if isinstance(self.tries, bool) or not isinstance(self.tries, int) or self.tries < 1:
            raise ConfigError(f"tries must be a positive integer, got {self.tries!r}")

    def footprint_radius(self, ref_size: int) -> float:
        """Largest distance from a view's centre to its footprint's corner, in source pixels."""
        return ref_size * self.zoom[1] * math.sqrt(0.5)


def rotated_square(center: tuple[float, float], side: float, angle_deg: float) -> np.ndarray:
    """``(4, 2)`` corners ``(y, x)`` of a square of ``side`` centred at ``center`` (y, x), rotated
    by ``angle_deg``; the same geometry as :func:`sample_view` (+x right, +y down)."""
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    h = side / 2.0
    corners = []
    for u, v in ((-h, -h), (h, -h), (h, h), (-h, h)):  # (x, y) offsets, in order
        corners.append((center[0] - s * u + c * v, center[1] + c * u + s * v))
    return np.asarray(corners, dtype=np.float64)


def _window_corners(w: Window) -> np.ndarray:
    r0, r1, c0, c1 = w
    return np.asarray([(r0, c0), (r0, c1), (r1, c1), (r1, c0)], dtype=np.float64)


def squares_disjoint(a: np.ndarray, b: np.ndarray, gap: float = 0.0) -> bool:
    """Whether convex polygons ``a`` and ``b`` (``(N, 2)`` corners in order) are at least
    ``gap`` apart along some edge normal (separating-axis test; touching is not disjoint)."""
    for poly in (a, b):
        for i in range(len(poly)):
            edge = poly[(i + 1) % len(poly)] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            norm = float(np.hypot(*axis))
            if norm == 0.0:
                continue
            axis /= norm
            pa_, pb_ = a @ axis, b @ axis
            if pa_.max() + gap < pb_.min() or pb_.max() + gap < pa_.min():
                return True
    return False


def sample_view(unit: np.ndarray, center: tuple[float, float], zoom: float, angle_deg: float,
                ref_size: int, clamp: bool = True) -> np.ndarray:
    """Resample ``unit`` ``(C, H, W)`` on a rotated, scaled grid: ``(C, R, R)`` float64.

    Reference pixel ``(i, j)`` centre maps to ``center + rot(angle) @ ((j + .5 - R/2) * zoom,
    (i + .5 - R/2) * zoom)`` in the source (bicubic, borders replicated, clamped to 0..1
    unless ``clamp=False``).
    """
    import torch
    import torch.nn.functional as F

    c, h, w = unit.shape
    t = math.radians(angle_deg)
    off = (np.arange(ref_size, dtype=np.float64) + 0.5 - ref_size / 2.0) * zoom
    vv, uu = np.meshgrid(off, off, indexing="ij")  # v down (rows), u right (cols)
    xs = center[1] + math.cos(t) * uu + math.sin(t) * vv
    ys = center[0] - math.sin(t) * uu + math.cos(t) * vv
    grid = np.stack([2.0 * xs / w - 1.0, 2.0 * ys / h - 1.0], axis=-1)[None]
    out = F.grid_sample(torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float64))[None],
                        torch.from_numpy(grid), mode="bicubic", padding_mode="border",
                        align_corners=False)
    return (out[0].clamp_(0.0, 1.0) if clamp else out[0]).numpy()


def relight(x: np.ndarray, gain: float, gamma: float, tint: Sequence[float]) -> np.ndarray:
    """``clip(gain * tint[c] * x ** gamma, 0, 1)`` for ``x`` ``(C, H, W)`` in 0..1."""
    t = np.asarray(tint, dtype=np.float64).reshape(-1, 1, 1)
    return np.clip(gain * t * np.power(np.clip(x, 0.0, 1.0), gamma), 0.0, 1.0)


def synth_view(unit: np.ndarray, exclude: Window, ref_size: int, params: ViewParams,
               rng: np.random.Generator, invalid: np.ndarray | None = None
               ) -> tuple[np.ndarray, dict[str, Any]] | None:
    """A re-lit, rotated, rescaled ``(C, ref_size, ref_size)`` view of ``unit`` ``(C, H, W)``
    (0..1) whose footprint lies inside the image and is disjoint from the ``exclude`` window
    (by more than the bicubic support, 2 px) and, if given, touches no ``invalid`` ``(H, W)``
    pixel (nodata). ``None`` when ``params.tries`` placements fail.
    Returns the view (float64, 0..1) and its parameters (centre, zoom, angle, light)."""
    _, h, w = unit.shape
    ex = _window_corners(exclude)
    for _ in range(params.tries):
        zoom = float(rng.uniform(*params.zoom))
        angle = float(rng.uniform(*params.angle))
        side = ref_size * zoom
        radius = side * math.sqrt(0.5) + 2.0
        if 2 * radius >= min(h, w):
            continue
        cy = float(rng.uniform(radius, h - radius))
        cx = float(rng.uniform(radius, w - radius))
        if not squares_disjoint(rotated_square((cy, cx), side, angle), ex, gap=2.0):
            continue
        if invalid is not None:
            # any weight (also a negative bicubic lobe) on a nodata pixel rejects the view
            hit = sample_view(invalid[None].astype(np.float64), (cy, cx), zoom, angle, ref_size,
                              clamp=False)
            if (np.abs(hit) > 1e-12).any():
                continue
        gain = float(rng.uniform(*params.gain))
        gamma = float(rng.uniform(*params.gamma))
        tint = [float(v) for v in rng.uniform(*params.tint, size=unit.shape[0])]
        view = relight(sample_view(unit, (cy, cx), zoom, angle, ref_size), gain, gamma, tint)
        info = {"center": [cy, cx], "zoom": zoom, "angle": angle, "gain": gain,
                "gamma": gamma, "tint": tint}
        return view, info
    return None


def raster_window(hr_transform: Sequence[float], hr_side: int, ref_transform: Sequence[float],
                  ref_shape: tuple[int, int], ref_size: int, shift: tuple[int, int] = (0, 0)
                  ) -> Window | None:
    """The ``ref_size`` window of the reference raster centred on the GT crop's centre.

    ``hr_transform``: affine ``(a, b, c, d, e, f)`` of the GT crop (x = a col + b row + c,
    y = d col + e row + f); ``ref_transform`` the reference raster's; ``shift`` ``(dy, dx)`` in
    reference pixels. ``None`` when the window leaves the raster ``ref_shape`` ``(H, W)``.
    """
    x, y = apply(hr_transform, hr_side / 2, hr_side / 2)
    try:
        col, row = apply(invert(ref_transform, "reference"), x, y)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    r0 = int(math.floor(row - ref_size / 2 + 0.5)) + int(shift[0])
    c0 = int(math.floor(col - ref_size / 2 + 0.5)) + int(shift[1])
    if r0 < 0 or c0 < 0 or r0 + ref_size > ref_shape[0] or c0 + ref_size > ref_shape[1]:
        return None
    return r0, r0 + ref_size, c0, c0 + ref_size


def write_overlap_pair(source: str, out_a: str, out_b: str, *, split: float = 0.75,
                       bands_a: Sequence[int] = (0, 1, 2), bands_b: Sequence[int] = (3, 0, 1)
                       ) -> tuple[str, str]:
    """Cut two overlapping, georeferenced GeoTIFFs from one raster: A = columns
    ``[0, split * W)`` with ``bands_a``, B = columns ``[(1 - split) * W, W)`` with ``bands_b``
    (0-based). Both keep the CRS, the nodata value and their own transforms, so a GT job can
    align them by georeference. Refuses to overwrite existing files."""
    import os

    import rasterio
    from rasterio.windows import Window as RWindow

    if not 0.5 < split < 1.0:
        raise ConfigError(f"split {split!r} must lie in (0.5, 1) so that the halves overlap")
    for out in (out_a, out_b):
        if os.path.exists(out):
            raise ConfigError(f"{out!r} exists; remove it first (nothing is overwritten)")
    with rasterio.open(source) as src:
        if src.crs is None:
            raise ConfigError(f"{source!r} has no CRS; an overlap pair needs georeferencing")
        for name, bands in (("bands_a", bands_a), ("bands_b", bands_b)):
            bad = [b for b in bands if not 0 <= int(b) < src.count]
            if bad or not bands:
                raise ConfigError(f"{name} {tuple(bands)!r}: {source!r} has bands 0..{src.count - 1}")
        w = src.width
        cut_a, cut_b = int(round(split * w)), int(round((1.0 - split) * w))
        for out, bands, col0, col1 in ((out_a, bands_a, 0, cut_a), (out_b, bands_b, cut_b, w)):
            win = RWindow(col0, 0, col1 - col0, src.height)
            data = src.read([int(b) + 1 for b in bands], window=win)
            profile = dict(driver="GTiff", width=col1 - col0, height=src.height,
                           count=len(bands), dtype=data.dtype, crs=src.crs,
                           transform=src.window_transform(win), nodata=src.nodata,
                           compress="deflate", tiled=True, blockxsize=256, blockysize=256)
            with rasterio.open(out, "w", **profile) as dst:
                dst.write(data)
    return out_a, out_b


#: makes the reference of one GT crop window ``(r0, r1, c0, c1)`` (None: no valid reference)
Reference = Callable[[np.random.Generator, tuple[int, int, int, int]], dict[str, Any] | None]
REF_COLUMNS = ("ref", "ref_shape", "ref_dtype", "ref_kind", "ref_uri", "ref_window", "ref_params")
_VIEW = ViewParams()


def patch_and_reference(src: Any, ref_src: Any, c: Candidate, meta: dict[str, Any],
                         cfg: GTConfig) -> tuple[np.ndarray, Reference | None]:
    """The ``(C, P, P)`` patch of candidate ``c`` and, when the config asks for references, the
    function that makes one for a GT crop of it."""
    p = cfg.patch
    if ref_src is not None:
        block = src.read((c.row0, c.row0 + p), (c.col0, c.col0 + p))
        return block, lambda rng, window: _raster_reference(ref_src, rng, window, meta, cfg)
    if cfg.reference != "view":
        return src.read((c.row0, c.row0 + p), (c.col0, c.col0 + p)), None
    # the view may lie anywhere within its footprint diameter (+ bicubic support) of the patch
    margin = int(math.ceil(2 * _VIEW.footprint_radius(cfg.ref_size))) + 4
    _, h, w = src.shape
    y0, x0 = max(0, c.row0 - margin), max(0, c.col0 - margin)
    y1, x1 = min(h, c.row0 + p + margin), min(w, c.col0 + p + margin)
    context = src.read((y0, y1), (x0, x1))
    block = np.ascontiguousarray(context[:, c.row0 - y0:c.row0 - y0 + p,
                                         c.col0 - x0:c.col0 - x0 + p])

    def view(rng: np.random.Generator, window: tuple[int, int, int, int]) -> dict[str, Any] | None:
        unit = to_unit(context, meta["value_range"])
        invalid = nodata_mask(context, meta["nodata"])
        if context.dtype.kind == "f":
            invalid = invalid | ~np.isfinite(context).all(axis=0)
            unit = np.nan_to_num(unit)
        local = (window[0] - y0, window[1] - y0, window[2] - x0, window[3] - x0)
        found = synth_view(unit, local, cfg.ref_size, _VIEW, rng,
                           invalid=invalid if invalid.any() else None)
        if found is None:
            return None
        ref_unit, info = found
        info["center"] = [info["center"][0] + y0, info["center"][1] + x0]  # source pixels
        ref = np.ascontiguousarray(from_unit(ref_unit, context.dtype, meta["value_range"]))
        return {"ref": ref.tobytes(), "ref_shape": list(ref.shape), "ref_dtype": str(ref.dtype),
                "ref_kind": "view", "ref_uri": meta["uri"], "ref_window": None,
                "ref_params": json.dumps(info, sort_keys=True)}

    return block, view


def _raster_reference(ref_src: Any, rng: np.random.Generator, window: tuple[int, int, int, int],
                      meta: dict[str, Any], cfg: GTConfig) -> dict[str, Any] | None:
    """The reference raster's window centred on the GT crop ``window`` (None: outside/nodata)."""
    if meta["transform"] is None:
        raise ConfigError(f"{meta['uri']!r} has no transform; reference_input needs "
                          "georeferenced inputs")
    shift = (0, 0)
    if cfg.ref_shift:
        shift = tuple(int(v) for v in rng.integers(-cfg.ref_shift, cfg.ref_shift + 1, size=2))
    crop_transform = window_transform(meta["transform"], window[0], window[2])
    rw = raster_window(crop_transform, window[1] - window[0], ref_src.transform,
                       ref_src.shape[1:], cfg.ref_size, shift)
    if rw is None:
        return None
    ref = np.ascontiguousarray(ref_src.read((rw[0], rw[1]), (rw[2], rw[3])))
    if nodata_mask(ref, ref_src.nodata).any() or (ref.dtype.kind == "f"
                                                   and not np.isfinite(ref).all()):
        return None
    return {"ref": ref.tobytes(), "ref_shape": list(ref.shape), "ref_dtype": str(ref.dtype),
            "ref_kind": "raster", "ref_uri": ref_src.uri, "ref_window": list(rw),
            "ref_params": json.dumps({"shift": list(shift)})}


def check_reference_input(cfg: GTConfig, specs: list[SourceSpec]) -> None:
    """The reference raster must share the inputs' CRS and dtype and be georeferenced."""
    assert cfg.reference_input is not None
    ref_spec = SourceSpec(cfg.reference_input, storage_options=cfg.storage_options,
                          bands=cfg.reference_bands)
    with open_source(ref_spec) as ref:
        if ref.crs is None or ref.transform is None:
            raise ConfigError(f"reference_input {ref.uri!r} has no CRS/transform; it is aligned "
                              "to the inputs by georeference")
        for spec in specs:
            with open_source(spec) as src:
                if src.crs is None or src.transform is None:
                    raise ConfigError(f"input {src.uri!r} has no CRS/transform; reference_input "
                                      "needs georeferenced inputs")
                if _crs_key(src.crs) != _crs_key(ref.crs):
                    raise ConfigError(f"input {src.uri!r} and reference {ref.uri!r} have "
                                      "different CRS; reproject one of them first")
                if src.dtype != ref.dtype or src.shape[0] != ref.shape[0]:
                    raise ConfigError(
                        f"reference {ref.uri!r} is {ref.shape[0]} x {ref.dtype}, input "
                        f"{src.uri!r} {src.shape[0]} x {src.dtype}: they must match (select bands "
                        "with --bands / --reference-bands)")


def _crs_key(wkt: str) -> str:
    try:
        from rasterio.crs import CRS

        return CRS.from_user_input(wkt).to_string()
    except Exception:
        return wkt


