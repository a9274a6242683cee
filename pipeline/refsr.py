"""Reference-based x4 super-resolution (TTSR) of huge images, tile by tile.

The job pairs a huge low-resolution (LR) input with a co-registered high-resolution reference
and writes the x4 output into the same Zarr layout as the LIIF upscale job
(:mod:`pipeline.upscale`): same sources, sinks, executors, manifest-based resume and errors.

Alignment (:func:`align_reference`)
    LR pixel ``(r, c)`` corresponds to the 4x4 reference block whose top-left pixel is
    ``(row_off + 4 r, col_off + 4 c)``.

    * georeferenced (both rasters have a transform): the mapping LR pixel -> reference pixel is
      ``inverse(T_ref) o T_lr``. It must be a scale of 4 on both axes (relative tolerance
      ``ratio_tol``, else :class:`ResolutionRatioError`) plus an integer offset: every LR corner
      must land within ``align_tol`` reference pixels of a 4x-aligned reference pixel corner,
      else :class:`ReferenceAlignmentError`. The CRSs must be equal (:class:`CrsMismatchError`).
    * pixel grid (either raster has no transform, or ``alignment="pixel"``): offset ``(0, 0)``;
      reference pixel ``(4r, 4c)`` is the top-left of LR pixel ``(r, c)``.

    The reference must cover the whole LR footprint (:class:`ReferenceCoverageError`).

Halo (:func:`ttsr_receptive_radius`)
    With the reference held fixed, an output pixel of LR block ``r`` depends only on LR pixels
    within ``radius`` of ``r``; the radius is derived from the architecture (bicubic x4,
    LTE convs and pools, 3x3 patch unfolding, texture transfer, main-net convs, pixel shuffles,
    bicubic resamplings and strided convs at the x1/x2/x4 scales). Each tile reads its LR
    window with that halo and crops it off, so the halo costs compute but never blends.

Reference window
    Each tile searches only the reference blocks under its LR footprint plus ``margin`` LR pixels
    on every side (clamped to the reference). When every tile's window is the whole aligned
    reference (``margin`` at least the LR image side), the tiled output equals the whole-image
    ``reference_upscale(model, lr, ref_aligned)`` up to float reassociation
    (``summary["global_search"]`` is then True). With a smaller margin the texture search is
    local: an approximation of TTSR's global search, which is what makes huge references
    tractable (the search costs ``LR positions x reference positions`` per tile).

Values: the LR and the reference are mapped to [0, 1] with their own value ranges
(:func:`pipeline.io.values.to_unit`), clipped to [0, 1] (TTSR's input domain) and non-finite
values replaced by 0; LR nodata pixels are written as nodata. Bands run in RGB triplets
(:func:`pipeline.io.values.band_groups`); the reference needs the same band count as the input.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from pipeline.errors import BandSelectionError, ConfigError, InputNotFoundError
from pipeline.geometry.affine import compose, invert
from pipeline.geometry.tiling import Tile, Window, check_output_size, plan_tiles
from pipeline.io.sources import SourceSpec, content_identity, open_source
from pipeline.io.values import default_value_range, merge_groups
from pipeline.io.zarr_output import (
    OutputSpec,
)
from pipeline.run.worker import BaseTileWorker, raw_digest, read_unit

__all__ = [
    "SCALE",
    "CrsMismatchError",
    "RefAlignment",
    "RefSRConfig",
    "RefTileJob",
    "RefTileWorker",
    "ReferenceAlignmentError",
    "ReferenceCoverageError",
    "ResolutionRatioError",
    "align_reference",
    "default_ref_tile",
    "prepare_refsr",
    "run_refsr",
    "ttsr_output_reach",
    "ttsr_receptive_radius",
]

SCALE = 4  # TTSR is a fixed x4 model
DEFAULT_REF_MARGIN = 16
DEFAULT_MAX_OUTPUT_PIXELS = 100_000_000_000
ALIGNMENTS = ("auto", "georef", "pixel")


class ReferenceAlignmentError(ConfigError):
    """The reference grid is not a 4x finer grid aligned with the input grid."""


class CrsMismatchError(ReferenceAlignmentError):
    """The input and the reference are in different coordinate reference systems."""


class ResolutionRatioError(ReferenceAlignmentError):
    """The reference pixel size is not a quarter of the input pixel size."""


class ReferenceCoverageError(ConfigError):
    """The reference does not cover the input's footprint."""


# ------------------------------------------------------------------------ receptive radius


def _bicubic_reach(pixel: Fraction, factor: int) -> Fraction:
    """Extra reach (output-pixel units) of a bicubic upsampling by ``factor`` from a grid of
    ``pixel``-sized pixels (``align_corners=False``, 4 taps ``floor(u)-1 .. floor(u)+2``): the
    largest distance, over output phases, from an output pixel's extent to its taps' extent."""
    best = Fraction(0)
    for j in range(factor):
        u = Fraction(2 * j + 1, 2 * factor) - Fraction(1, 2)
        first = math.floor(u) - 1
        left = j * pixel / factor - first * pixel
        right = (first + 4) * pixel - (j + 1) * pixel / factor
        best = max(best, left, right)
    return best


def ttsr_output_reach(num_res_blocks: tuple[int, int, int, int]) -> Fraction:
    """Reach ``A`` of a TTSR output pixel, in output pixels (a quarter of an LR pixel).

    Every feature pixel covers an interval of the output grid (``P`` output pixels wide: 4 at
    x1, 2 at x2, 1 at x4); a feature "has reach A" when it depends only on LR pixels whose
    output-grid extent meets its own extent widened by ``A`` on both sides. Rules: 3x3 conv
    ``+P``; 1x1 conv, ReLU, 2x2 max-pool ``+0``; stride-2 3x3 conv ``+P_in``; pixel shuffle x2
    ``+P_in/2``; bicubic x``f`` upsampling :func:`_bicubic_reach`; 3x3 patch unfold/fold at x1
    ``+4``; a sum, product or concatenation takes the max of its inputs. The reference is
    held fixed (it enters only through K and V). Follows ``TTSR.forward`` and ``MainNet``.
    """
    n0, n1, n2, n3 = (int(n) for n in num_res_blocks)
    p1, p2, p4 = Fraction(4), Fraction(2), Fraction(1)  # pixel sizes of the x1, x2, x4 branches

    def conv(a: Fraction, p: Fraction) -> Fraction:
        return a + p

    def blocks(a: Fraction, n: int, p: Fraction) -> Fraction:
        return a + 2 * n * p  # ResBlock: two 3x3 convs

    # Q: LTE level 3 of bicubic-x4 LR: conv0, conv2 at x4; pool; conv5, conv7 at x2; pool; conv10
    q = _bicubic_reach(p1, 4) + 2 * p4 + 2 * p2 + p1
    s = q + p1  # soft/hard attention: 3x3 patches of Q
    t3 = s + p1  # transfer: overlap-add of the 3x3 patches at the neighbouring indices
    t2 = t3 + (p1 - p2)  # the same block pattern at finer pixels (pixel-unshuffled transfer)
    t1 = t3 + (p1 - p4)
    s2, s4 = s + _bicubic_reach(p1, 2), s + _bicubic_reach(p1, 4)

    x11 = conv(blocks(conv(Fraction(0), p1), n0, p1), p1)  # SFE
    x11 = max(x11, conv(max(x11, t3), p1), s)  # x + conv11_head(cat(x, T3)) * S
    x11 = max(x11, conv(blocks(x11, n1, p1), p1))
    x21 = x11
    x22 = conv(x11, p1) + p1 / 2  # conv12, pixel shuffle
    x22 = max(x22, conv(max(x22, t2), p2), s2)
    # CSFI2
    r21 = conv(max(x21, x22 + p2), p1)  # conv21 (stride 2) then conv_merge1
    r22 = conv(max(x22, x21 + _bicubic_reach(p1, 2)), p2)
    x21 = max(x21, conv(blocks(r21, n2, p1), p1))
    x22 = max(x22, conv(blocks(r22, n2, p2), p2))
    x31, x32 = x21, x22
    x33 = conv(x22, p2) + p2 / 2  # conv23, pixel shuffle
    x33 = max(x33, conv(max(x33, t1), p4), s4)
    # CSFI3
    r31 = conv(max(x31, x32 + p2, x33 + p4 + p2), p1)
    r32 = conv(max(x32, x31 + _bicubic_reach(p1, 2), x33 + p4), p2)
    r33 = conv(max(x33, x31 + _bicubic_reach(p1, 4), x32 + _bicubic_reach(p2, 2)), p4)
    x31 = max(x31, conv(blocks(r31, n3, p1), p1))
    x32 = max(x32, conv(blocks(r32, n3, p2), p2))
    x33 = max(x33, conv(blocks(r33, n3, p4), p4))
    # merge tail: conv_merge, conv_tail1 (3x3), conv_tail2 (1x1)
    merged = max(x33, x31 + _bicubic_reach(p1, 4), x32 + _bicubic_reach(p2, 2))
    return conv(conv(merged, p4), p4)


def ttsr_receptive_radius(num_res_blocks: tuple[int, int, int, int]) -> int:
    """Receptive radius of TTSR in LR pixels (reference fixed): an output pixel of LR block
    ``r`` depends only on LR pixels ``r - radius .. r + radius``. ``ceil(A / 4)`` with ``A``
    from :func:`ttsr_output_reach`. ``(1, 1, 1, 1)`` -> 24, the paper's ``(16, 16, 8, 4)`` -> 102.
    """
    if len(num_res_blocks) != 4 or any(int(n) < 0 for n in num_res_blocks):
        raise ValueError(f"num_res_blocks must be 4 non-negative ints, got {num_res_blocks!r}")
    return math.ceil(ttsr_output_reach(num_res_blocks) / SCALE)


# --------------------------------------------------------------------------------- alignment


def _same_crs(a: str, b: str) -> bool:
    if a == b:
        return True
    from rasterio.crs import CRS

    return CRS.from_user_input(a) == CRS.from_user_input(b)


def _crs_name(wkt: str) -> str:
    from rasterio.crs import CRS

    try:
        return CRS.from_user_input(wkt).to_string()
    except Exception:  # noqa: BLE001 - only for the message
        return wkt[:60]


@dataclass(frozen=True)
class RefAlignment:
    """How the reference pixel grid sits on the LR grid (picklable, pure).

    LR pixel ``(r, c)`` <-> reference pixels ``[row_off + 4r, row_off + 4r + 4) x
    [col_off + 4c, col_off + 4c + 4)``. ``lr_shape`` ``(h, w)``, ``ref_shape`` ``(Hr, Wr)``.
    """

    method: str  # "georef" | "pixel"
    row_off: int
    col_off: int
    lr_shape: tuple[int, int]
    ref_shape: tuple[int, int]

    def blocks(self) -> tuple[int, int, int, int]:
        """LR-grid range ``(k_row0, k_row1, k_col0, k_col1)`` (half-open, may extend past the
        LR image) of the 4x4 reference blocks that lie wholly inside the reference."""
        hr, wr = self.ref_shape
        return (-(self.row_off // SCALE), (hr - self.row_off) // SCALE,
                -(self.col_off // SCALE), (wr - self.col_off) // SCALE)

    def covers_input(self) -> bool:
        """Whether every LR pixel has its whole 4x4 block inside the reference."""
        k0, k1, j0, j1 = self.blocks()
        h, w = self.lr_shape
        return k0 <= 0 and j0 <= 0 and k1 >= h and j1 >= w

    def ref_window(self, lr_rows: tuple[int, int], lr_cols: tuple[int, int],
                   margin: int | None) -> Window:
        """Reference pixels under LR rows/cols ``[r0, r1) x [c0, c1)`` widened by ``margin`` LR
        pixels on every side (``None``: unlimited), clamped to whole blocks of the reference.
        Its sides are multiples of 4, so TTSR's crop to multiples of 4 keeps all of it."""
        k0, k1, j0, j1 = self.blocks()
        m = 1 << 62 if margin is None else int(margin)
        r0, r1 = max(k0, lr_rows[0] - m), min(k1, lr_rows[1] + m)
        c0, c1 = max(j0, lr_cols[0] - m), min(j1, lr_cols[1] + m)
        if r0 >= r1 or c0 >= c1:
            raise ReferenceCoverageError(
                f"no reference block under LR rows {lr_rows} cols {lr_cols} with margin {margin} "
                f"(reference blocks cover LR rows [{k0}, {k1}) cols [{j0}, {j1}))")
        return Window(self.row_off + SCALE * r0, self.row_off + SCALE * r1,
                      self.col_off + SCALE * c0, self.col_off + SCALE * c1)

    def full_window(self) -> Window:
        """The whole aligned reference: what every tile searches with an unlimited margin."""
        h, w = self.lr_shape
        return self.ref_window((0, h), (0, w), None)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "row_off": self.row_off, "col_off": self.col_off,
                "lr_shape": list(self.lr_shape), "ref_shape": list(self.ref_shape)}


def align_reference(
    lr_shape: tuple[int, int],
    lr_crs: str | None,
    lr_transform: tuple[float, ...] | None,
    ref_shape: tuple[int, int],
    ref_crs: str | None,
    ref_transform: tuple[float, ...] | None,
    *,
    mode: str = "auto",
    ratio_tol: float = 1e-3,
    align_tol: float = 0.05,
) -> RefAlignment:
    """Map the reference grid onto the LR grid and check it is 4x finer, aligned, covering.

    ``lr_shape`` ``(h, w)`` and ``ref_shape`` ``(Hr, Wr)``; CRSs as WKT (or None), transforms as
    6 affine coefficients ``(a, b, c, d, e, f)`` (or None). ``mode``: ``"auto"`` (georeferenced
    when both transforms exist, else pixel grid with a warning if only one has one),
    ``"georef"`` (both required) or ``"pixel"``. ``ratio_tol``: relative tolerance on the
    resolution ratio 4; ``align_tol``: largest distance, in reference pixels, of any LR corner
    from its 4x-aligned reference position.

    Raises:
        CrsMismatchError, ResolutionRatioError, ReferenceAlignmentError, ReferenceCoverageError
        (all ``ConfigError``), ConfigError for a bad ``mode``.
    """
    if mode not in ALIGNMENTS:
        raise ConfigError(f"reference alignment {mode!r} is not one of {', '.join(ALIGNMENTS)}")
    h, w = (int(v) for v in lr_shape)
    hr, wr = (int(v) for v in ref_shape)
    georef = lr_transform is not None and ref_transform is not None
    if mode == "georef" and not georef:
        missing = "input" if lr_transform is None else "reference"
        raise ReferenceAlignmentError(
            f"alignment 'georef' needs both rasters georeferenced, but the {missing} has no "
            "transform; use alignment 'pixel' for a pixel-grid reference")
    if mode == "auto" and not georef and (lr_transform is not None or ref_transform is not None):
        which = "input" if lr_transform is not None else "reference"
        warnings.warn(f"only the {which} is georeferenced: aligning the reference by pixel grid "
                      "(reference pixel (4r, 4c) = input pixel (r, c))", UserWarning, stacklevel=2)
    if mode == "pixel" or not georef:
        al = RefAlignment("pixel", 0, 0, (h, w), (hr, wr))
    else:
        if (lr_crs is None) != (ref_crs is None):
            have = "input" if lr_crs is not None else "reference"
            raise CrsMismatchError(
                f"the {have} has a CRS ({_crs_name(lr_crs or ref_crs or '')}) but the other "
                "raster has none: cannot check that they are co-registered")
        if lr_crs is not None and ref_crs is not None and not _same_crs(lr_crs, ref_crs):
            raise CrsMismatchError(
                f"input CRS {_crs_name(lr_crs)} differs from reference CRS {_crs_name(ref_crs)}; "
                "reproject the reference onto a 4x finer grid of the input first")
        t_lr = tuple(float(v) for v in lr_transform)  # type: ignore[union-attr]
        t_ref = tuple(float(v) for v in ref_transform)  # type: ignore[union-attr]
        try:
            m = compose(invert(t_ref, "the reference"), t_lr)
        except ValueError as exc:
            raise ReferenceAlignmentError(str(exc)) from exc
        sx, sy = m[0], m[4]
        if abs(sx / SCALE - 1) > ratio_tol or abs(sy / SCALE - 1) > ratio_tol:
            lr_px = (math.hypot(t_lr[0], t_lr[3]), math.hypot(t_lr[1], t_lr[4]))
            ref_px = (math.hypot(t_ref[0], t_ref[3]), math.hypot(t_ref[1], t_ref[4]))
            raise ResolutionRatioError(
                f"resolution ratio input/reference is {sx:.6g} (x) by {sy:.6g} (y), not 4 within "
                f"a relative tolerance of {ratio_tol:g}: input pixels {lr_px[0]:g} x {lr_px[1]:g},"
                f" reference pixels {ref_px[0]:g} x {ref_px[1]:g} map units")
        col_off, row_off = round(m[2]), round(m[5])
        for row, col in ((0, 0), (0, w), (h, 0), (h, w)):
            x = m[0] * col + m[1] * row + m[2]
            y = m[3] * col + m[4] * row + m[5]
            err = max(abs(x - (SCALE * col + col_off)), abs(y - (SCALE * row + row_off)))
            if not err <= align_tol:
                raise ReferenceAlignmentError(
                    f"the reference grid is not aligned with the input grid: input pixel corner "
                    f"(row {row}, col {col}) falls on reference pixel corner (row {y:.4f}, col "
                    f"{x:.4f}), {err:.4g} px from the 4x-aligned position (row "
                    f"{SCALE * row + row_off}, col {SCALE * col + col_off}); tolerance "
                    f"{align_tol:g} px")
        al = RefAlignment("georef", int(row_off), int(col_off), (h, w), (hr, wr))
    if not al.covers_input():
        r0, c0 = al.row_off, al.col_off
        raise ReferenceCoverageError(
            f"the reference ({hr} x {wr} px) does not cover the input footprint: the {h} x {w} "
            f"input needs reference rows [{r0}, {r0 + SCALE * h}) and cols [{c0}, "
            f"{c0 + SCALE * w}) ({al.method} alignment); the reference is too small or offset")
    return al


# ------------------------------------------------------------------------------- the worker


@dataclass(frozen=True)
class RefTileJob:
    """Everything a reference-SR worker needs, small and picklable (no arrays, no handles)."""

    source: SourceSpec
    reference: SourceSpec
    alignment: RefAlignment
    output_uri: str
    output_storage_options: dict | None
    model: str
    in_shape: tuple[int, int]
    value_range: tuple[float, float]
    ref_value_range: tuple[float, float]
    out_dtype: str
    ref_margin: int | None = DEFAULT_REF_MARGIN
    nodata: float | None = None
    device: str | None = None
    threads: int | None = None
    search_bytes: int = 256 << 20  # cap on the float64 relevance block of the texture search
    fail_after: int | None = field(default=None, compare=False)  # test hook: crash after N tiles
    tile_delay: float = field(default=0.0, compare=False)  # test hook: seconds of sleep per tile
    verify_inputs: bool = False  # on resume: also check each finished tile's input windows

    @property
    def out_shape(self) -> tuple[int, int]:
        return (SCALE * self.in_shape[0], SCALE * self.in_shape[1])


def tile_footprint(tile: Tile) -> tuple[tuple[int, int], tuple[int, int]]:
    """LR rows and cols ``((r0, r1), (c0, c1))`` under ``tile``'s output window (no halo)."""
    ow = tile.out_window
    return ((ow.row0 // SCALE, -(-ow.row1 // SCALE)), (ow.col0 // SCALE, -(-ow.col1 // SCALE)))


class RefTileWorker(BaseTileWorker):
    """Hosts one TTSR model; ``process(tile)`` super-resolves one tile, returns a small record.

    The model-independent steps (read, fill, nodata, write, record, verify) are
    :class:`pipeline.run.worker.BaseTileWorker`'s; this class adds the reference window and TTSR.
    """

    def __init__(self, job: RefTileJob) -> None:
        super().__init__(job)
        self.max_search_chunk = self.model.search_chunk
        self.reference = open_source(job.reference)

    def load_model(self) -> Any:
        from liif import load_model
        from liif.ttsr import TTSR

        model = load_model(self.job.model, device=self.device)
        if not isinstance(model, TTSR):
            raise ConfigError(f"model {self.job.model!r} is a {type(model).__name__}, not TTSR")
        return model

    def close(self) -> None:
        super().close()
        self.reference.close()

    def ref_window(self, tile: Tile) -> Window:
        """Reference pixels this tile searches: its LR footprint plus ``ref_margin``."""
        rows, cols = tile_footprint(tile)
        return self.job.alignment.ref_window(rows, cols, self.job.ref_margin)

    def _set_search_chunk(self, n_query: int) -> None:
        # With exact search the result does not depend on the chunk (liif.ttsr.search), so the
        # chunk is shrunk to bound the (chunk x n_query) float64 relevance block.
        if self.model.exact_search and self.max_search_chunk is not None:
            fit = max(1, self.job.search_bytes // (8 * max(1, n_query)))
            self.model.search_chunk = min(self.max_search_chunk, fit)

    def infer(self, tile: Tile, unit: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        import torch

        from liif.ttsr import reference_upscale

        job, iw, ow = self.job, tile.in_window, tile.out_window
        rw = self.ref_window(tile)
        ref_raw = self.reference.read((rw.row0, rw.row1), (rw.col0, rw.col1))
        ref_unit, _ = read_unit(self.reference, rw, job.ref_value_range, self.reference.nodata,
                                ref_raw)
        lr = _unit_tensor(unit, self.device)
        ref = _unit_tensor(ref_unit, self.device)
        self._set_search_chunk(iw.size)
        r0, c0 = ow.row0 - SCALE * iw.row0, ow.col0 - SCALE * iw.col0
        (th, tw) = ow.shape
        outs = []
        for g in self.groups:
            sr = reference_upscale(self.model, lr[list(g)], ref[list(g)])  # (3, 4h, 4w)
            outs.append(sr[:, r0:r0 + th, c0:c0 + tw].to(torch.float32).cpu().numpy())
        merged = merge_groups(outs, self.groups, tuple(range(self.source.shape[0])))
        return merged, {"ref_window": rw.to_dict(), "inputs": {"reference": raw_digest(ref_raw)}}

    def input_digests(self, tile: Tile) -> dict[str, str]:
        rw = self.ref_window(tile)
        ref = self.reference.read((rw.row0, rw.row1), (rw.col0, rw.col1))
        return {**super().input_digests(tile), "reference": raw_digest(ref)}


def _unit_tensor(unit: np.ndarray, device: Any) -> Any:
    """``(C, h, w)`` filled values in [0, 1] units -> float32 tensor clipped to [0, 1]."""
    import torch

    return torch.from_numpy(np.clip(unit, 0.0, 1.0)).to(device)


# ------------------------------------------------------------------------------- the driver


@dataclass(frozen=True)
class RefSRConfig:
    """One reference-based x4 job. ``ref_margin``: LR pixels of reference searched around each
    tile's footprint (``None``: the whole reference, exact global search)."""

    source: SourceSpec
    reference: SourceSpec
    output: OutputSpec
    model: str
    ref_margin: int | None = DEFAULT_REF_MARGIN
    alignment: str = "auto"  # "auto" | "georef" | "pixel"
    ratio_tol: float = 1e-3
    align_tol: float = 0.05
    size: tuple[int, int] | None = None  # must be 4x the input when given
    tile: int | None = None  # output tile side; a multiple of `chunk` (or of `shard`)
    chunk: int = 256
    shard: int | None = None
    value_range: tuple[float, float] | None = None
    ref_value_range: tuple[float, float] | None = None
    precision: str = "fp32"
    executor: str = "ray"  # "ray" | "in-process"
    workers: int = 1
    gpus_per_worker: float = 0.0
    threads_per_worker: int | None = None
    ray_address: str | None = None
    overwrite: bool = False
    resume: bool = False
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    cog: str | None = None
    preview: str | None = None
    summary: str | None = None
    progress: bool = True
    test_hooks: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.executor not in ("ray", "in-process"):
            raise ConfigError(f"executor {self.executor!r} is not one of 'ray', 'in-process'")
        if self.workers < 1:
            raise ConfigError(f"workers {self.workers!r} must be >= 1")
        if self.chunk < 16:
            raise ConfigError(f"chunk {self.chunk!r} must be >= 16 pixels")
        if self.overwrite and self.resume:
            raise ConfigError("--overwrite and --resume exclude each other")
        if self.precision != "fp32":
            raise ConfigError(f"precision {self.precision!r}: reference-based (TTSR) tiles run "
                              "in fp32 only")
        m = self.ref_margin
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 0):
            raise ConfigError(f"ref_margin {m!r} must be an integer >= 0 (LR pixels) or None")
        if self.alignment not in ALIGNMENTS:
            raise ConfigError(f"alignment {self.alignment!r} is not one of {', '.join(ALIGNMENTS)}")
        for name in ("ratio_tol", "align_tol"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} {v!r} must be a finite number >= 0")


#: conv work per LR position of the default TTSR, in units of one texture-search pair
#: (~30 MFLOP / ~4.6 kFLOP): weighs the halo's conv cost against the search's quadratic cost.
CONV_COST_IN_SEARCH_PAIRS = 6500


def default_ref_tile(halo: int, margin: int | None, grid: int, *, max_tile: int = 4096,
                     in_shape: tuple[int, int] | None = None) -> int:
    """Output tile side (a multiple of ``grid``) minimising the estimated cost per useful pixel.

    For an LR tile side ``t`` the convs run on ``(t + 2 (halo + 3))^2`` positions and each of
    them also scores ``(t + 2 margin)^2`` reference positions, so the cost per useful pixel is
    ``(t + 2 halo')^2 (C + (t + 2 margin)^2) / t^2`` (``C``: :data:`CONV_COST_IN_SEARCH_PAIRS`).
    A ``None`` margin (whole reference) makes the search cost fixed per position: the largest
    tile wins, bounded by ``max_tile`` and the output size.
    """
    limit = max(grid, (max_tile // grid) * grid)
    if in_shape is not None:
        side = SCALE * max(in_shape)
        limit = min(limit, max(grid, -(-side // grid) * grid))
    pad = 2 * (halo + 3)
    best, best_cost = grid, math.inf
    for t_out in range(grid, limit + 1, grid):
        t = t_out / SCALE
        search = 0.0 if margin is None else (t + 2 * margin) ** 2
        cost = (t + pad) ** 2 * (CONV_COST_IN_SEARCH_PAIRS + search) / t ** 2
        if cost < best_cost:
            best, best_cost = t_out, cost
    return best


def _model_info(model_ref: str) -> tuple[dict, tuple[int, int, int, int], str]:
    from liif.checkpoint import file_sha256, load_checkpoint, resolve
    from liif.ttsr import TTSR

    path = resolve(model_ref)
    model = load_checkpoint(path)
    if not isinstance(model, TTSR):
        raise ConfigError(f"model {model_ref!r} ({model.spec['name']}) is not a reference-based "
                          "TTSR model; --reference needs a TTSR checkpoint")
    return model.spec, model.num_res_blocks, file_sha256(path)


def _check_range(vr: tuple[float, float], what: str) -> tuple[float, float]:
    vr = (float(vr[0]), float(vr[1]))
    if not (math.isfinite(vr[0]) and math.isfinite(vr[1]) and vr[0] < vr[1]):
        raise ConfigError(f"{what} {vr!r} must be two finite numbers lo < hi")
    return vr


def prepare_refsr(cfg: RefSRConfig) -> dict[str, Any]:
    """Validate the job (input, reference, alignment, model, output size) and plan it; writes
    nothing. Returns the plan and the output attributes."""
    src = open_source(cfg.source)
    try:
        C, h, w = src.shape
        dtype, nodata, crs, transform = src.dtype, src.nodata, src.crs, src.transform
        identity = content_identity(src)
    finally:
        src.close()
    try:
        ref = open_source(cfg.reference)
    except InputNotFoundError as e:
        raise InputNotFoundError(f"reference not found: {cfg.reference.uri!r}") from e
    try:
        Cr, hr, wr = ref.shape
        ref_dtype, ref_crs, ref_transform = ref.dtype, ref.crs, ref.transform
        ref_identity = content_identity(ref)
    finally:
        ref.close()
    if Cr != C:
        raise BandSelectionError(
            f"the reference {cfg.reference.uri!r} has {Cr} band(s) but the input has {C}; "
            "select matching bands (--bands / --ref-bands)")
    out_shape = (SCALE * h, SCALE * w)
    if cfg.size is not None and tuple(int(v) for v in cfg.size) != out_shape:
        raise ConfigError(f"output size {tuple(cfg.size)} is not 4x the {h} x {w} input "
                          f"({out_shape}); reference-based SR is fixed at x4")
    try:
        check_output_size(out_shape, cfg.max_output_pixels)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    alignment = align_reference((h, w), crs, transform, (hr, wr), ref_crs, ref_transform,
                                mode=cfg.alignment, ratio_tol=cfg.ratio_tol,
                                align_tol=cfg.align_tol)
    vr = _check_range(cfg.value_range or default_value_range(dtype), "value range")
    rvr = _check_range(cfg.ref_value_range or default_value_range(ref_dtype), "reference value range")
    from pipeline.upscale import check_grid

    grid = check_grid(cfg)
    spec, nrb, sha = _model_info(cfg.model)
    halo = ttsr_receptive_radius(nrb)
    if cfg.tile is None:
        tile = default_ref_tile(halo, cfg.ref_margin, grid, in_shape=(h, w))
    else:
        tile = cfg.tile
    plan = plan_tiles((h, w), out_shape, tile=tile, halo=halo, chunk=grid)
    full = alignment.full_window()
    global_search = all(
        alignment.ref_window(*tile_footprint(t), cfg.ref_margin) == full for t in plan.tiles())
    from pipeline.geometry.affine import scaled_transform

    ref_info = {"uri": cfg.reference.uri, "bands": list(cfg.reference.bands or []),
                "shape": [Cr, hr, wr], "value_range": list(rvr), "margin": cfg.ref_margin,
                "alignment": alignment.to_dict(), "window": full.to_dict(),
                "global_search": global_search}
    fingerprint = {"source": cfg.source.uri, "bands": list(cfg.source.bands or []),
                   "reference": {k: ref_info[k] for k in
                                 ("uri", "bands", "shape", "value_range", "margin", "alignment")},
                   "in_shape": [h, w], "out_shape": list(out_shape), "weights_sha256": sha,
                   "value_range": list(vr), "tile": tile, "precision": cfg.precision}
    attrs = {
        "scale": [float(SCALE), float(SCALE)], "in_shape": [h, w], "out_shape": list(out_shape),
        "model": {**spec, "weights_sha256": sha, "ref": cfg.model, "receptive_radius": halo},
        "source_uri": cfg.source.uri, "reference_uri": cfg.reference.uri, "reference": ref_info,
        "crs": crs,
        "transform": list(scaled_transform(transform, (h, w), out_shape)) if transform else None,
        "value_range": list(vr), "nodata": nodata, "job": fingerprint,
        "input_identity": {"input": identity, "reference": ref_identity},
    }
    return {"C": C, "in_shape": (h, w), "out_shape": out_shape, "dtype": dtype, "nodata": nodata,
            "value_range": vr, "ref_value_range": rvr, "plan": plan, "attrs": attrs,
            "halo": halo, "tile": tile, "alignment": alignment, "global_search": global_search}


def run_refsr(cfg: RefSRConfig) -> dict[str, Any]:
    """Run the job; returns the JSON-ready summary."""
    from pipeline.upscale import canonical, model_location, run_job

    cfg = canonical(cfg, reference=True)

    def make_job(out: Any, p: dict[str, Any]) -> RefTileJob:
        return RefTileJob(source=cfg.source, reference=cfg.reference, alignment=p["alignment"],
                          output_uri=out.uri, output_storage_options=cfg.output.storage_options,
                          model=cfg.model, in_shape=p["in_shape"], value_range=p["value_range"],
                          ref_value_range=p["ref_value_range"], out_dtype=str(p["dtype"]),
                          ref_margin=cfg.ref_margin, nodata=p["nodata"],
                          threads=cfg.threads_per_worker, **cfg.test_hooks)

    def describe(p: dict[str, Any]) -> dict[str, Any]:
        al = p["alignment"]
        return {"scale": [float(SCALE), float(SCALE)], "reference": cfg.reference.uri,
                "alignment": al.method, "ref_offset": [al.row_off, al.col_off],
                "ref_margin": cfg.ref_margin, "global_search": p["global_search"]}

    reads = [("--input", cfg.source.location), ("--reference", cfg.reference.location),
             ("--model", model_location(cfg.model))]
    return run_job(cfg, reads, lambda: prepare_refsr(cfg), make_job, worker_cls=RefTileWorker,
                   describe=describe)
