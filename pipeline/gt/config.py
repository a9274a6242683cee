"""The ground-truth job's configuration and output format (columns, names)."""


from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.errors import ConfigError

FORMAT = "liif-gt/1"
# The manifest's name starts with "_" so that pyarrow.dataset and pandas skip it (they ignore
# names starting with "_" or ".", as Spark's _SUCCESS) and read the output folder as a dataset;
# Ray Data reads only *.parquet files (its default file_extensions) either way.
MANIFEST = "_manifest.json"
# Its name in outputs written before: still read (resume, overwrite marker), replaced on resume.
LEGACY_MANIFEST = "manifest.json"
SHARD_DIR = "shards"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
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


def pair_option(name: str, value: Any, *, integer: bool = False) -> tuple[float, float] | None:
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
            sr = pair_option("scale_range", self.scale_range)
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
        biggest = max(hr_side(self.lr_size, s) for s in all_scales)
        if biggest > self.patch:
            raise ConfigError(
                f"patch {self.patch} is smaller than the largest HR crop round({self.lr_size} * "
                f"{max(all_scales):g}) = {biggest}; raise --patch or lower --lr-size/--scales")
        if not (math.isfinite(self.flat_threshold) and self.flat_threshold >= 0):
            raise ConfigError(f"flat_threshold must be >= 0, got {self.flat_threshold!r}")
        if self.value_range is not None:
            vr = pair_option("value_range", self.value_range)
            if vr is None or not vr[0] < vr[1]:
                raise ConfigError(f"value_range {self.value_range!r} needs LO < HI")
            set_("value_range", vr)
        if self.bands is not None:
            set_("bands", tuple(int(b) for b in self.bands))
        limits = (("blur", False, 0, math.inf), ("noise", False, 0, math.inf),
                  ("jpeg", True, 1, 100))
        for k, integer, lo_ok, hi_ok in limits:
            v = pair_option(k, getattr(self, k), integer=integer)
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


def hr_side(lr_size: int, scale: float) -> int:
    return max(1, int(round(lr_size * scale)))


