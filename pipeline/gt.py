"""Resolution-varied ground truth: (LR, HR) training pairs cut from rasters, as Parquet shards.

Plan (driver)
    Inputs (image folders, GeoTIFF/COG, Zarr arrays; local paths or fsspec URLs; lists and
    globs) expand to a sorted list of sources. Each source is probed for its shape, then gives
    candidate HR patch windows: a grid (``patch`` x ``patch`` with ``stride``, the last row and
    column shifted inside the image) or ``random`` seeded positions. The candidates of all sources,
    in order, are cut into groups of ``patches_per_shard``; one group is one task and one shard
    (a big raster gives several window groups, small images share one).

Shard task (a Ray task, or in-process with ``workers=0``)
    Reads each candidate window in the native dtype and band order, skips patches holding nodata
    or non-finite values and near-flat patches (std of the unit-scaled patch below
    ``flat_threshold``), then makes one sample per scale: ``range_samples`` scales drawn from
    ``U(scale_range)`` and each of ``scales``. A sample's HR is a random ``round(lr_size * s)``
    square crop of the patch, kept in the native dtype (no resizing to a common size: the
    paper's size-varied ground truth); its LR is ``lr_size`` square, made by antialiased bicubic
    on floats (:func:`liif.resize.resize_bicubic`) after an optional Gaussian blur, followed by
    optional Gaussian noise and JPEG compression. Degradation parameters may be ranges, drawn
    per sample and recorded per sample.

Determinism
    Every random draw comes from ``numpy.random.default_rng([seed, stream, source, patch])``, so
    the shard bytes depend on the configuration and seed only, not on scheduling or worker count.

Output (local directory or fsspec URL)::

    <output>/manifest.json           config, sources, finished shards, counts
    <output>/shards/part-00000.parquet

A shard is written under a temporary name and renamed (one PUT on object stores), then the
driver, the only writer of ``manifest.json``, marks it done; a rerun with ``resume=True`` skips
marked shards (and refuses a changed config or input list). A non-empty output is refused unless
``resume`` or ``overwrite``; ``overwrite`` only replaces a previous GT output (``manifest.json`` and
``shards/``), never a folder holding other files.

Columns: see :data:`SCHEMA`; arrays are raw C-order bytes plus shape and dtype
(:func:`decode_array`). ``ray.data.read_parquet(shard_paths(output))`` reads them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob as _glob
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConfigError, InputNotFoundError, OutputExistsError
from pipeline.geometry.affine import window_transform
from pipeline.io.atomic import write_bytes
from pipeline.io.lease import OutputLease
from pipeline.io.locations import check_paths, resolve
from pipeline.io.sources import SourceSpec, open_source
from pipeline.io.values import default_value_range, from_unit, nodata_mask, to_unit
from pipeline.refpairs import ViewParams, raster_window, synth_view

__all__ = [
    "FORMAT",
    "SCHEMA",
    "GTConfig",
    "decode_array",
    "expand_inputs",
    "grid_windows",
    "make_gt",
    "pairs_from_batch",
    "read_manifest",
    "shard_paths",
]

FORMAT = "liif-gt/1"
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
_LOCAL_SCHEMES = ("", "file", "local")
# independent random streams of one seed
_STREAM_PLACEMENT, _STREAM_PATCH = 0, 1

SCHEMA = pa.schema([
    ("sample_id", pa.string()),          # "s{source}-p{patch}-k{sample}"
    ("source_index", pa.int32()),
    ("source_uri", pa.string()),
    ("patch_index", pa.int64()),         # candidate index within its source
    ("sample_index", pa.int32()),        # index within the patch
    ("window", pa.list_(pa.int64())),    # HR crop in source pixels: row0, row1, col0, col1
    ("scale", pa.float64()),             # drawn s; HR side = round(lr_size * s)
    ("hr", pa.binary()),                 # (C, H, W) native dtype, C-order bytes
    ("hr_shape", pa.list_(pa.int32())),
    ("hr_dtype", pa.string()),
    ("lr", pa.binary()),                 # (C, lr_size, lr_size), same value units as hr
    ("lr_shape", pa.list_(pa.int32())),
    ("lr_dtype", pa.string()),
    ("value_lo", pa.float64()),          # value range mapped to 0..1
    ("value_hi", pa.float64()),
    ("crs", pa.string()),                # WKT, null when unknown
    ("transform", pa.list_(pa.float64())),  # of the HR crop (a, b, c, d, e, f), null when unknown
    ("seed", pa.int64()),
    ("blur_sigma", pa.float64()),        # null: not applied
    ("noise_std", pa.float64()),         # in unit (0..1) space; null: not applied
    ("jpeg_quality", pa.int32()),        # null: not applied
    # reference-based SR pairs (null unless the config asks for references):
    ("ref", pa.binary()),                # (C, R, R), same dtype and value units as hr
    ("ref_shape", pa.list_(pa.int32())),
    ("ref_dtype", pa.string()),
    ("ref_kind", pa.string()),           # "view" (same source, GT excluded) or "raster"
    ("ref_uri", pa.string()),            # the raster the reference was cut from
    ("ref_window", pa.list_(pa.int64())),  # "raster": window in the reference raster
    ("ref_params", pa.string()),         # JSON: view geometry and light, or the shift
])


# ----------------------------------------------------------------------------------- config


def _pair(name: str, value: Any, *, integer: bool = False) -> tuple[float, float] | None:
    """``None``, one number (fixed) or two numbers (a range drawn per sample) -> ``(lo, hi)``."""
    if value is None:
        return None
    items = [value] if isinstance(value, int | float) else list(value)
    if len(items) not in (1, 2):
        raise ConfigError(f"{name} {value!r} must be one number or two (LO HI)")
    try:
        nums = [float(v) for v in items]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} {value!r} must be numbers") from None
    if integer and any(v != int(v) for v in nums):
        raise ConfigError(f"{name} {value!r} must be integers")
    lo, hi = nums[0], nums[-1]
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ConfigError(f"{name} {value!r} needs finite LO <= HI")
    return (int(lo), int(hi)) if integer else (lo, hi)  # type: ignore[return-value]


@dataclass(frozen=True)
class GTConfig:
    """What to cut and how; validated on construction (errors are :class:`ConfigError`).

    Attributes:
        inputs: URIs, directories or globs (expanded by :func:`expand_inputs`).
        output: output directory (local path or fsspec URL).
        patch: HR patch side in source pixels.
        stride: grid stride (default ``patch``); ignored with ``random``.
        random: number of seeded random patch positions per source instead of the grid.
        scale_range: ``(lo, hi)`` of the continuous scales, or ``None``.
        range_samples: samples per patch drawn from ``scale_range``.
        scales: fixed scales, one sample each per patch.
        lr_size: LR side; the HR side of a sample is ``round(lr_size * s)``.
        seed: the seed every random draw derives from.
        flat_threshold: skip patches whose unit-scaled std is below this.
        value_range: ``(lo, hi)`` mapped to 0..1 (default: from the dtype).
        bands: 0-based bands to keep, in order (default: all).
        blur, noise, jpeg: ``(lo, hi)`` ranges (equal ends: fixed) or ``None``; blur sigma in
            HR pixels before downscaling, noise std in unit space, JPEG quality 1..100.
        lr_dtype: ``"float32"`` (unquantised, the paper's setting) or ``"native"`` (rounded
            and clipped to the source dtype, as a sensor would store it).
        patches_per_shard: candidate patches per task and shard.
        reference: ``"view"``: add a reference per sample, another view of the same source
            with the GT window excluded (:func:`pipeline.refpairs.synth_view`); needs scale 4.
        reference_input: instead, a co-registered raster (same CRS and dtype) whose window
            of ``ref_size`` px centred on each GT crop is the reference.
        reference_bands: 0-based bands of ``reference_input`` (default: all).
        ref_size: reference side in pixels (a multiple of 4).
        ref_shift: ``reference_input`` only: the window is shifted by up to this many pixels.
        storage_options: fsspec options for remote inputs and output (never written out).
    """

    inputs: tuple[str, ...]
    output: str
    patch: int = 192
    stride: int | None = None
    random: int | None = None
    scale_range: tuple[float, float] | None = (1.0, 4.0)
    range_samples: int = 1
    scales: tuple[float, ...] = ()
    lr_size: int = 48
    seed: int = 0
    flat_threshold: float = 0.01
    value_range: tuple[float, float] | None = None
    bands: tuple[int, ...] | None = None
    blur: tuple[float, float] | None = None
    noise: tuple[float, float] | None = None
    jpeg: tuple[int, int] | None = None
    lr_dtype: str = "float32"
    patches_per_shard: int = 128
    reference: str | None = None
    reference_input: str | None = None
    reference_bands: tuple[int, ...] | None = None
    ref_size: int = 160
    ref_shift: int = 0
    storage_options: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        inputs = (self.inputs,) if isinstance(self.inputs, str | os.PathLike) else self.inputs
        inputs = tuple(os.fspath(u) for u in inputs)
        if not inputs or not all(isinstance(u, str) and u for u in inputs):
            raise ConfigError(f"inputs {self.inputs!r} must be one or more non-empty URIs")
        set_("inputs", inputs)
        if not isinstance(self.output, str | os.PathLike) or not os.fspath(self.output):
            raise ConfigError(f"output {self.output!r} must be a non-empty path or URL")
        set_("output", os.fspath(self.output))
        for k in ("patch", "lr_size", "range_samples", "patches_per_shard"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise ConfigError(f"{k} must be a positive integer, got {v!r}")
        for k in ("stride", "random"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | np.integer)
                                  or v < 1):
                raise ConfigError(f"{k} must be a positive integer or None, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) \
                or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.scale_range is not None:
            sr = _pair("scale_range", self.scale_range)
            assert sr is not None
            set_("scale_range", sr)
        scales = tuple(float(s) for s in (self.scales or ()))
        set_("scales", scales)
        if self.scale_range is None and not scales:
            raise ConfigError("give a scale range (--scale-range LO HI) and/or scales (--scales)")
        all_scales = list(scales) + (list(self.scale_range) if self.scale_range else [])
        for s in all_scales:
            if not math.isfinite(s) or s < 1:
                raise ConfigError(f"scale {s!r} must be a finite number >= 1 (HR at least as "
                                  "large as the LR)")
        biggest = max(_hr_side(self.lr_size, s) for s in all_scales)
        if biggest > self.patch:
            raise ConfigError(
                f"patch {self.patch} is smaller than the largest HR crop round({self.lr_size} * "
                f"{max(all_scales):g}) = {biggest}; raise --patch or lower --lr-size/--scales")
        if not (math.isfinite(self.flat_threshold) and self.flat_threshold >= 0):
            raise ConfigError(f"flat_threshold must be >= 0, got {self.flat_threshold!r}")
        if self.value_range is not None:
            vr = _pair("value_range", self.value_range)
            if vr is None or not vr[0] < vr[1]:
                raise ConfigError(f"value_range {self.value_range!r} needs LO < HI")
            set_("value_range", vr)
        if self.bands is not None:
            set_("bands", tuple(int(b) for b in self.bands))
        limits = (("blur", False, 0, math.inf), ("noise", False, 0, math.inf),
                  ("jpeg", True, 1, 100))
        for k, integer, lo_ok, hi_ok in limits:
            v = _pair(k, getattr(self, k), integer=integer)
            if v is not None and not (lo_ok <= v[0] <= v[1] <= hi_ok):
                raise ConfigError(f"{k} {getattr(self, k)!r} must lie in [{lo_ok}, {hi_ok}]")
            set_(k, v)
        if self.lr_dtype not in ("float32", "native"):
            raise ConfigError(f"lr_dtype {self.lr_dtype!r} is not 'float32' or 'native'")
        self._check_reference()

    def _check_reference(self) -> None:
        if self.reference not in (None, "view"):
            raise ConfigError(f"reference {self.reference!r} is not 'view' (or None)")
        if self.reference_input is not None:
            if self.reference is not None:
                raise ConfigError("give reference='view' or reference_input, not both")
            if not isinstance(self.reference_input, str | os.PathLike) \
                    or not os.fspath(self.reference_input):
                raise ConfigError(f"reference_input {self.reference_input!r} must be a URI")
            object.__setattr__(self, "reference_input", os.fspath(self.reference_input))
        if self.reference_bands is not None:
            object.__setattr__(self, "reference_bands", tuple(int(b) for b in self.reference_bands))
        if isinstance(self.ref_shift, bool) or not isinstance(self.ref_shift, int) \
                or self.ref_shift < 0:
            raise ConfigError(f"ref_shift must be an integer >= 0, got {self.ref_shift!r}")
        if not self.with_reference:
            return
        if self.scale_range is not None or self.scales != (4.0,):
            raise ConfigError(
                f"reference pairs are x4 (TTSR): use --scales 4 without --scale-range (got scales "
                f"{list(self.scales)}, scale_range {self.scale_range})")
        if isinstance(self.ref_size, bool) or not isinstance(self.ref_size, int) \
                or self.ref_size < 16 or self.ref_size % 4:
            raise ConfigError(f"ref_size must be a multiple of 4 and >= 16, got {self.ref_size!r}")

    @property
    def with_reference(self) -> bool:
        return self.reference is not None or self.reference_input is not None

    @property
    def grid_stride(self) -> int:
        return self.stride or self.patch

    def content_dict(self) -> dict[str, Any]:
        """The JSON-ready settings that decide the shard contents (no output, no credentials)."""
        d = dataclasses.asdict(self)
        for k in ("output", "storage_options"):
            d.pop(k)
        return json.loads(json.dumps(d))


def _hr_side(lr_size: int, scale: float) -> int:
    return max(1, int(round(lr_size * scale)))


# ----------------------------------------------------------------------------------- inputs


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def _is_zarr_dir(names: Iterable[str], path: str) -> bool:
    return path.rstrip("/").lower().endswith(".zarr") or any(
        n.rstrip("/").rsplit("/", 1)[-1] in _ZARR_MARKERS for n in names)


def expand_inputs(uris: Sequence[str], storage_options: dict[str, Any] | None = None) -> list[str]:
    """Expand URIs into raster URIs: globs (fsspec/glob), folders of images (recursive; a Zarr
    directory stays one input), single files or arrays. Sorted per entry, duplicates dropped.

    Raises:
        InputNotFoundError: a path, folder or glob that matches nothing readable.
    """
    out: list[str] = []
    for uri in uris:
        local = _scheme(uri) in _LOCAL_SCHEMES
        if local:
            path = os.path.expanduser(uri.split("://", 1)[1] if _scheme(uri) else uri)
            fs = None
        else:
            import fsspec

            fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        if any(c in path for c in "*?["):
            matches = sorted(_glob.glob(path, recursive=True) if local else fs.glob(path))
            if not matches:
                raise InputNotFoundError(f"input glob {uri!r} matches nothing")
            found = []
            for m in matches:
                found += _expand_path(m, fs, uri)
        else:
            exists = os.path.exists(path) if local else fs.exists(path)
            if not exists:
                raise InputNotFoundError(f"input not found: {uri!r}")
            found = _expand_path(path, fs, uri) if local or fs.isdir(path) else [uri]
        out += found
    seen: set[str] = set()
    return [u for u in out if not (u in seen or seen.add(u))]


def _expand_path(path: str, fs: Any, uri: str) -> list[str]:
    """One matched path -> raster URIs (a non-zarr directory lists its images)."""
    isdir = os.path.isdir(path) if fs is None else fs.isdir(path)
    if not isdir:
        return [path if fs is None else fs.unstrip_protocol(path)]
    names = os.listdir(path) if fs is None else fs.ls(path, detail=False)
    if _is_zarr_dir(names, path):
        return [path if fs is None else fs.unstrip_protocol(path)]
    if fs is None:
        files = sorted(os.path.join(d, f) for d, _, fs_ in os.walk(path) for f in fs_
                       if f.lower().endswith(IMAGE_EXTENSIONS))
    else:
        files = sorted(fs.unstrip_protocol(p) for p in fs.find(path)
                       if p.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise InputNotFoundError(f"folder {uri!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


# -------------------------------------------------------------------------------- planning


def grid_windows(shape: tuple[int, int], patch: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners ``(row0, col0)`` of ``patch``-square grid windows covering ``shape``.

    Per axis ``ceil((n - patch) / stride) + 1`` starts; the last is shifted to ``n - patch`` so
    that every window lies inside. Empty when the image is smaller than ``patch``.
    """
    axes = []
    for n in shape:
        if n < patch:
            return []
        starts = list(range(0, n - patch + 1, stride))
        if starts[-1] != n - patch:
            starts.append(n - patch)
        axes.append(starts)
    return [(r, c) for r in axes[0] for c in axes[1]]


def _random_windows(shape: tuple[int, int], patch: int, n: int, seed: int, src: int
                    ) -> list[tuple[int, int]]:
    h, w = shape
    if h < patch or w < patch:
        return []
    rng = np.random.default_rng([seed, _STREAM_PLACEMENT, src])
    rows = rng.integers(0, h - patch + 1, size=n)
    cols = rng.integers(0, w - patch + 1, size=n)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


@dataclass(frozen=True)
class _Candidate:
    source: int
    patch_index: int
    row0: int
    col0: int


@dataclass(frozen=True)
class _ShardTask:
    index: int
    name: str
    candidates: tuple[_Candidate, ...]
    specs: dict[int, SourceSpec]
    config: GTConfig
    output: str


def _probe(spec: SourceSpec) -> dict[str, Any]:
    with open_source(spec) as src:
        nodata = src.nodata
        if nodata is not None and not math.isfinite(nodata):
            nodata = str(nodata)  # plain JSON: "nan", "inf"
        return {"uri": spec.uri, "shape": list(src.shape), "dtype": str(src.dtype),
                "nodata": nodata, "crs": src.crs is not None}


def _plan(cfg: GTConfig, probes: list[dict[str, Any]], specs: list[SourceSpec]
          ) -> list[_ShardTask]:
    cands: list[_Candidate] = []
    for i, p in enumerate(probes):
        hw = (p["shape"][1], p["shape"][2])
        if cfg.random is not None:
            corners = _random_windows(hw, cfg.patch, cfg.random, cfg.seed, i)
        else:
            corners = grid_windows(hw, cfg.patch, cfg.grid_stride)
        cands += [_Candidate(i, k, r, c) for k, (r, c) in enumerate(corners)]
    tasks = []
    for t, start in enumerate(range(0, len(cands), cfg.patches_per_shard)):
        group = tuple(cands[start:start + cfg.patches_per_shard])
        used = {c.source: specs[c.source] for c in group}
        out = resolve(cfg.output, cfg.storage_options).url  # the same place from any cwd
        tasks.append(_ShardTask(t, f"part-{t:05d}.parquet", group, used, cfg, out))
    return tasks


# ------------------------------------------------------------------------------ degradation


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``(C, H, W)`` float64 (reflect borders; numpy: deterministic)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        xp = np.pad(x, pad, mode="reflect" if x.shape[axis] > radius else "edge")
        n = x.shape[axis]
        acc = np.zeros_like(x)
        for j, wgt in enumerate(k):
            acc += wgt * np.take(xp, np.arange(j, j + n), axis=axis)
        x = acc
    return x


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of a ``(C, h, w)`` unit-range image (RGB if C = 3, else band by band)."""
    from PIL import Image

    q = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)

    def roundtrip(arr: np.ndarray, mode: str) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(arr, mode=mode).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as im:
            return np.asarray(im.convert(mode))

    if q.shape[0] == 3:
        out = roundtrip(np.ascontiguousarray(q.transpose(1, 2, 0)), "RGB").transpose(2, 0, 1)
    else:
        out = np.stack([roundtrip(np.ascontiguousarray(b), "L") for b in q])
    return out.astype(np.float64) / 255.0


def _draw(rng: np.random.Generator, rng_pair: tuple[float, float] | None, *, integer: bool = False
          ) -> float | int | None:
    if rng_pair is None:
        return None
    lo, hi = rng_pair
    if integer:
        return int(rng.integers(lo, hi + 1))
    return float(lo) if lo == hi else float(rng.uniform(lo, hi))


def _make_lr(hr_unit: np.ndarray, cfg: GTConfig, rng: np.random.Generator
             ) -> tuple[np.ndarray, dict[str, Any]]:
    """``(C, H, W)`` unit-scaled HR -> ``(C, lr, lr)`` float64 LR (unit space) + degradations."""
    import torch

    from liif.resize import resize_bicubic

    sigma = _draw(rng, cfg.blur)
    std = _draw(rng, cfg.noise)
    quality = _draw(rng, cfg.jpeg, integer=True)
    x = hr_unit.astype(np.float64)
    if sigma:
        x = _gaussian_blur(x, float(sigma))
    lr = resize_bicubic(torch.from_numpy(x), (cfg.lr_size, cfg.lr_size)).numpy()
    if std:
        lr = lr + rng.normal(0.0, float(std), size=lr.shape)
    if quality is not None:
        lr = _jpeg(lr, int(quality))
    return lr, {"blur_sigma": sigma, "noise_std": std, "jpeg_quality": quality}


# ---------------------------------------------------------------------------------- shards


def _scales_for(cfg: GTConfig, rng: np.random.Generator) -> list[float]:
    drawn = []
    if cfg.scale_range is not None:
        lo, hi = cfg.scale_range
        drawn = [float(rng.uniform(lo, hi)) if lo != hi else float(lo)
                 for _ in range(cfg.range_samples)]
    return drawn + list(cfg.scales)


Reference = Callable[[np.random.Generator, tuple[int, int, int, int]], dict[str, Any] | None]


def _samples_of_patch(cand: _Candidate, block: np.ndarray, meta: dict[str, Any], cfg: GTConfig,
                      rows: dict[str, list], stats: dict[str, int],
                      reference: Reference | None = None) -> None:
    """Append the samples of one HR patch ``block (C, P, P)`` (native dtype) to ``rows``.

    ``reference(rng, window)`` gives the reference columns for the GT crop ``window`` (source
    pixels) or ``None`` (the sample is skipped and counted as ``skipped_no_reference``)."""
    vr = meta["value_range"]
    if nodata_mask(block, meta["nodata"]).any() or (
            block.dtype.kind == "f" and not np.isfinite(block).all()):
        stats["skipped_nodata"] += 1
        return
    unit = to_unit(block, vr)
    if float(unit.std(dtype=np.float64)) < cfg.flat_threshold:
        stats["skipped_flat"] += 1
        return
    stats["patches"] += 1
    rng = np.random.default_rng([cfg.seed, _STREAM_PATCH, cand.source, cand.patch_index])
    for k, s in enumerate(_scales_for(cfg, rng)):
        side = _hr_side(cfg.lr_size, s)
        oy = int(rng.integers(0, cfg.patch - side + 1))
        ox = int(rng.integers(0, cfg.patch - side + 1))
        hr = np.ascontiguousarray(block[:, oy:oy + side, ox:ox + side])
        lr_unit, deg = _make_lr(unit[:, oy:oy + side, ox:ox + side], cfg, rng)
        if cfg.lr_dtype == "native":
            lr = np.ascontiguousarray(from_unit(lr_unit, block.dtype, vr))
        else:
            lr = (lr_unit * (vr[1] - vr[0]) + vr[0]).astype(np.float32)
        r0, c0 = cand.row0 + oy, cand.col0 + ox
        ref = None
        if reference is not None:
            ref = reference(rng, (r0, r0 + side, c0, c0 + side))
            if ref is None:
                stats["skipped_no_reference"] += 1
                continue
        for key in _REF_COLUMNS:
            rows[key].append(None if ref is None else ref.get(key))
        rows["sample_id"].append(f"s{cand.source}-p{cand.patch_index}-k{k}")
        rows["source_index"].append(cand.source)
        rows["source_uri"].append(meta["uri"])
        rows["patch_index"].append(cand.patch_index)
        rows["sample_index"].append(k)
        rows["window"].append([r0, r0 + side, c0, c0 + side])
        rows["scale"].append(s)
        rows["hr"].append(hr.tobytes())
        rows["hr_shape"].append(list(hr.shape))
        rows["hr_dtype"].append(str(hr.dtype))
        rows["lr"].append(lr.tobytes())
        rows["lr_shape"].append(list(lr.shape))
        rows["lr_dtype"].append(str(lr.dtype))
        rows["value_lo"].append(vr[0])
        rows["value_hi"].append(vr[1])
        rows["crs"].append(meta["crs"])
        rows["transform"].append(None if meta["transform"] is None
                                 else list(window_transform(meta["transform"], r0, c0)))
        rows["seed"].append(cfg.seed)
        for key, value in deg.items():
            rows[key].append(value)
        stats["samples"] += 1


def _fs_and_path(uri: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(uri, **(storage_options or {}))


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


_REF_COLUMNS = ("ref", "ref_shape", "ref_dtype", "ref_kind", "ref_uri", "ref_window", "ref_params")
_VIEW = ViewParams()


def _patch_and_reference(src: Any, ref_src: Any, c: _Candidate, meta: dict[str, Any],
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


def _check_reference_input(cfg: GTConfig, specs: list[SourceSpec]) -> None:
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
    except Exception:  # noqa: BLE001 - fall back to the text itself
        return wkt


def _run_shard(task: _ShardTask) -> dict[str, Any]:
    """Cut, degrade and write one shard; returns its manifest record (small)."""
    t0 = time.perf_counter()
    cfg = task.config
    rows: dict[str, list] = {f.name: [] for f in SCHEMA}
    stats = {"candidates": len(task.candidates), "patches": 0, "samples": 0,
             "skipped_nodata": 0, "skipped_flat": 0, "skipped_no_reference": 0}
    by_source: dict[int, list[_Candidate]] = {}
    for c in task.candidates:
        by_source.setdefault(c.source, []).append(c)
    with contextlib.ExitStack() as stack:
        ref_src = (stack.enter_context(open_source(SourceSpec(
            cfg.reference_input, storage_options=cfg.storage_options,
            bands=cfg.reference_bands))) if cfg.reference_input else None)
        for src_index, cands in by_source.items():
            with open_source(task.specs[src_index]) as src:
                vr = cfg.value_range or default_value_range(src.dtype)
                meta = {"uri": src.uri, "nodata": src.nodata, "crs": src.crs,
                        "transform": src.transform,
                        "value_range": (float(vr[0]), float(vr[1]))}
                for c in cands:
                    block, reference = _patch_and_reference(src, ref_src, c, meta, cfg)
                    _samples_of_patch(c, block, meta, cfg, rows, stats, reference)
    record: dict[str, Any] = {**stats, "file": None, "bytes": 0,
                              "sources": sorted(by_source)}
    if stats["samples"]:
        table = pa.table(rows, schema=SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        write_bytes(resolve(task.output, cfg.storage_options).child(f"{SHARD_DIR}/{task.name}"),
                    buf.getvalue(), make_parents=True)
        record.update(file=f"{SHARD_DIR}/{task.name}", bytes=buf.tell())
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return record


# -------------------------------------------------------------------------------- manifest


def read_manifest(output: str, storage_options: dict[str, Any] | None = None
                  ) -> dict[str, Any] | None:
    """The ``manifest.json`` of a GT output, or ``None`` when there is none."""
    fs, root = _fs_and_path(output, storage_options)
    try:
        return json.loads(fs.cat_file(f"{root.rstrip('/')}/{MANIFEST}"))
    except FileNotFoundError:
        return None


def shard_paths(output: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """URIs of the finished, non-empty shards of a GT output (in shard order).

    Raises:
        InputNotFoundError: ``output`` has no ``manifest.json``.
    """
    man = read_manifest(output, storage_options)
    if man is None:
        raise InputNotFoundError(f"{output!r} is not a ground-truth output (no {MANIFEST})")
    base = output.rstrip("/")
    return [f"{base}/{rec['file']}" for _, rec in sorted(man["shards"].items()) if rec["file"]]


def _totals(shards: dict[str, dict[str, Any]]) -> dict[str, int]:
    keys = ("candidates", "patches", "samples", "skipped_nodata", "skipped_flat",
            "skipped_no_reference")
    tot = {k: sum(int(r[k]) for r in shards.values()) for k in keys}
    tot["shards"] = sum(1 for r in shards.values() if r["file"])
    return tot


def check_gt_paths(cfg: GTConfig) -> None:
    """Refuse an output that is, contains or lies inside an input (or the reference input)."""
    check_paths({"--output": cfg.output},
                {"--input": list(cfg.inputs), "--reference-input": cfg.reference_input},
                cfg.storage_options)


def _prepare_output(cfg: GTConfig, overwrite: bool, resume: bool
                    ) -> tuple[Any, str, dict[str, Any] | None]:
    if overwrite and resume:
        raise ConfigError("give at most one of overwrite and resume")
    fs, root = _fs_and_path(cfg.output, cfg.storage_options)
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    existing = fs.exists(root)
    if existing and not fs.isdir(root):
        raise OutputExistsError(f"output {cfg.output!r} exists and is a file, not a directory")
    entries = [n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(root, detail=False)] \
        if existing else []
    previous = None
    if entries:
        if overwrite:
            # only ever delete what this module writes: never a folder of someone else's files
            foreign = sorted(n for n in entries if n not in (MANIFEST, SHARD_DIR)
                             and not n.startswith("."))
            marked = read_manifest(cfg.output, cfg.storage_options)
            if not foreign and (marked is None or marked.get("format") != FORMAT):
                raise OutputExistsError(
                    f"refusing to overwrite {cfg.output!r}: it holds no {FORMAT} {MANIFEST} "
                    "(the marker of a ground-truth output of this project); remove it yourself "
                    "or choose another output")
            if foreign:
                raise OutputExistsError(
                    f"output {cfg.output!r} holds files that are not ground truth "
                    f"({', '.join(foreign[:3])}); overwrite only replaces a previous GT output, "
                    "remove them yourself or choose another output")
            fs.rm(root, recursive=True)
            if _is_local(fs):
                os.makedirs(root, exist_ok=True)
        elif resume:
            previous = read_manifest(cfg.output, cfg.storage_options)
            if previous is None or previous.get("format") != FORMAT:
                raise OutputExistsError(
                    f"output {cfg.output!r} is not empty and holds no {FORMAT} {MANIFEST}; "
                    "it is not a ground-truth output to resume")
        else:
            raise OutputExistsError(
                f"output {cfg.output!r} exists and is not empty; pass overwrite (--overwrite) "
                "or resume (--resume)")
    if _is_local(fs):
        os.makedirs(root, exist_ok=True)
    return fs, root, previous


def _check_resumable(previous: dict[str, Any], cfg: GTConfig, sources: list[str]) -> None:
    old, new = previous.get("config", {}), cfg.content_dict()
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:4])
        raise ConfigError(f"cannot resume {cfg.output!r} with a different config ({detail}); "
                          "use overwrite instead")
    old_sources = [s["uri"] for s in previous.get("sources", [])]
    if old_sources != sources:
        raise ConfigError(f"cannot resume {cfg.output!r}: the inputs now expand to "
                          f"{len(sources)} sources, the manifest lists {len(old_sources)} "
                          "different ones; use overwrite instead")


# ---------------------------------------------------------------------------------- driver


def _executor(workers: int, cpus_per_task: float) -> Callable[[Callable, list], Iterable]:
    """``run(fn, items)`` yielding ``(item_index, result)`` as they finish (at most ``workers``
    Ray tasks in flight; in-process and in order when ``workers == 0``)."""
    from pipeline.run.ray_executor import ray_map

    return lambda fn, items: ray_map(fn, items, max_in_flight=workers,
                                     cpus_per_task=cpus_per_task)


def make_gt(cfg: GTConfig, *, workers: int = 2, overwrite: bool = False, resume: bool = False,
            cpus_per_task: float = 1.0, log: Callable[[str], None] | None = None
            ) -> dict[str, Any]:
    """Generate (or resume) the ground truth described by ``cfg``; returns a JSON-ready summary.

    ``workers`` Ray tasks run at once (``0``: in-process, no Ray). The summary holds the dataset
    totals (``patches``, ``samples``, ``shards``, skip counts) and this run's ``seconds``,
    ``patches_this_run`` and ``patches_per_s``.

    Raises:
        OutputExistsError: a non-empty output without ``overwrite``/``resume``.
        ConfigError: an invalid option, or resuming with a different config or inputs.
        InputNotFoundError: an input that does not exist or matches nothing.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be an integer >= 0, got {workers!r}")
    t0 = time.perf_counter()
    say = log or (lambda _m: None)
    check_gt_paths(cfg)
    sources = expand_inputs(cfg.inputs, cfg.storage_options)
    check_paths({"--output": cfg.output}, {"--input": sources}, cfg.storage_options)
    with OutputLease(resolve(cfg.output, cfg.storage_options)):
        return _make_gt(cfg, sources, workers, overwrite, resume, cpus_per_task, say, t0)


def _make_gt(cfg: GTConfig, sources: list[str], workers: int, overwrite: bool, resume: bool,
             cpus_per_task: float, say: Callable[[str], None], t0: float) -> dict[str, Any]:
    fs, root, previous = _prepare_output(cfg, overwrite, resume)
    if previous is not None:
        _check_resumable(previous, cfg, sources)
    specs = [SourceSpec(u, storage_options=cfg.storage_options, bands=cfg.bands) for u in sources]
    run = _executor(workers, cpus_per_task)
    probes: list[dict[str, Any]] = [{}] * len(specs)
    for i, p in run(_probe, specs):
        probes[i] = p
    if cfg.reference_input:
        _check_reference_input(cfg, specs)
    tasks = _plan(cfg, probes, specs)
    too_small = [p["uri"] for p in probes if min(p["shape"][1:]) < cfg.patch]
    if too_small:
        say(f"{len(too_small)} source(s) smaller than the {cfg.patch} px patch give no patches, "
            f"e.g. {too_small[0]!r}")
    done: dict[str, dict[str, Any]] = dict(previous["shards"]) if previous else {}
    done = {k: v for k, v in done.items()
            if v["file"] is None or fs.exists(f"{root}/{v['file']}")}
    todo = [t for t in tasks if t.name not in done]
    say(f"{len(sources)} sources, {len(tasks)} shards planned, {len(tasks) - len(todo)} done")

    manifest: dict[str, Any] = {
        "format": FORMAT, "config": cfg.content_dict(), "seed": cfg.seed,
        "sources": [{"index": i, **p} for i, p in enumerate(probes)],
        "planned_shards": len(tasks), "shards": done, "complete": False,
    }

    def save_manifest() -> None:
        manifest["shards"] = dict(sorted(done.items()))
        manifest["counts"] = _totals(done)
        manifest["complete"] = len(done) == len(tasks)
        payload = json.dumps(manifest, indent=1, sort_keys=True).encode()
        write_bytes(resolve(cfg.output, cfg.storage_options).child(MANIFEST), payload,
                    make_parents=True)

    save_manifest()
    this_run = 0
    for i, rec in run(_run_shard, todo):
        done[todo[i].name] = rec
        this_run += rec["patches"]
        save_manifest()
        say(f"shard {todo[i].name}: {rec['patches']} patches, {rec['samples']} samples")
    seconds = time.perf_counter() - t0
    return {"output": cfg.output, **_totals(done), "sources": len(sources),
            "sources_too_small": len(too_small),
            "planned_shards": len(tasks), "shards_resumed": len(tasks) - len(todo),
            "patches_this_run": this_run, "seconds": round(seconds, 3),
            "patches_per_s": round(this_run / seconds, 2) if seconds > 0 else None}


# --------------------------------------------------------------------------------- reading


def decode_array(buf: bytes, shape: Sequence[int], dtype: str) -> np.ndarray:
    """Inverse of the shard encoding: raw C-order bytes + shape + dtype -> a numpy array."""
    shape = tuple(int(s) for s in shape)
    arr = np.frombuffer(buf, dtype=np.dtype(dtype))
    if arr.size != math.prod(shape):
        raise ValueError(f"{len(buf)} bytes of {dtype} do not hold shape {shape}")
    return arr.reshape(shape)


def pairs_from_batch(batch: dict[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray],
                                                     list[tuple[float, float]]]:
    """A batch of shard rows (column -> sequence, e.g. a Ray Data numpy batch or
    ``table.to_pydict()``) -> ``(lr_list, hr_list, value_ranges)`` for
    :func:`liif.pairs.batch_from_pairs`."""
    n = len(batch["hr"])
    lr = [decode_array(batch["lr"][i], batch["lr_shape"][i], str(batch["lr_dtype"][i]))
          for i in range(n)]
    hr = [decode_array(batch["hr"][i], batch["hr_shape"][i], str(batch["hr_dtype"][i]))
          for i in range(n)]
    vr = [(float(batch["value_lo"][i]), float(batch["value_hi"][i])) for i in range(n)]
    return lr, hr, vr
