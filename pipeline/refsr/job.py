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
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import BandSelectionError, ConfigError, InputNotFoundError
from pipeline.geometry.tiling import Tile, Window, balanced_plan, check_output_size, plan_tiles
from pipeline.io.sources import SourceSpec, open_source, probe_source
from pipeline.io.values import default_value_range, merge_groups, parse_value_range
from pipeline.io.zarr_output import ZarrOutput
from pipeline.refsr.alignment import ALIGNMENTS, SCALE, RefAlignment, align_reference
from pipeline.run.engine import ExecutorFactory, JobPlan, Role, model_location, run_job
from pipeline.run.options import JobOptions
from pipeline.run.worker import BaseTileWorker, TileJob, raw_digest, read_unit

DEFAULT_REF_MARGIN = 16


@dataclass(frozen=True, kw_only=True)
class RefTileJob(TileJob):
    """The TTSR worker's job: the shared fields (``out_shape`` is 4x ``in_shape``) plus the
    reference, its alignment, value range and search margin."""

    reference: SourceSpec
    alignment: RefAlignment
    ref_value_range: tuple[float, float]
    ref_margin: int | None = DEFAULT_REF_MARGIN
    search_bytes: int = 256 << 20  # cap on the float64 relevance block of the texture search


def tile_footprint(tile: Tile) -> tuple[tuple[int, int], tuple[int, int]]:
    """LR rows and cols ``((r0, r1), (c0, c1))`` under ``tile``'s output window (no halo)."""
    ow = tile.out_window
    return ((ow.row0 // SCALE, -(-ow.row1 // SCALE)), (ow.col0 // SCALE, -(-ow.col1 // SCALE)))


class RefTileWorker(BaseTileWorker):
    """Hosts one TTSR model; ``process(tile)`` super-resolves one tile, returns a small record.

    The model-independent steps (read, fill, nodata, write, record, verify) are
    :class:`pipeline.run.worker.BaseTileWorker`'s; this class adds the reference window and TTSR.
    """

    job: RefTileJob

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

    def read_more(self, tile: Tile) -> tuple[Window, np.ndarray, str]:
        """The reference window this tile searches: ``(window, filled unit values, digest)``."""
        rw = self.ref_window(tile)
        ref_raw = self.reference.read((rw.row0, rw.row1), (rw.col0, rw.col1))
        ref_unit, _ = read_unit(self.reference, rw, self.job.ref_value_range,
                                self.reference.nodata, ref_raw)
        return rw, ref_unit, raw_digest(ref_raw)

    def infer(self, tile: Tile, unit: np.ndarray, more: Any = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        import torch

        from liif.ttsr import reference_upscale

        iw, ow = tile.in_window, tile.out_window
        rw, ref_unit, ref_digest = more if more is not None else self.read_more(tile)
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
        return merged, {"ref_window": rw.to_dict(), "inputs": {"reference": ref_digest}}

    def input_digests(self, tile: Tile) -> dict[str, str]:
        rw = self.ref_window(tile)
        ref = self.reference.read((rw.row0, rw.row1), (rw.col0, rw.col1))
        return {**super().input_digests(tile), "reference": raw_digest(ref)}


def _unit_tensor(unit: np.ndarray, device: Any) -> Any:
    """``(C, h, w)`` filled values in [0, 1] units -> float32 tensor clipped to [0, 1]."""
    import torch

    return torch.from_numpy(np.clip(unit, 0.0, 1.0)).to(device)


@dataclass(frozen=True, kw_only=True)
class RefSRConfig(JobOptions):
    """One reference-based x4 job: the shared options plus the input, the reference and how it
    aligns, and the TTSR model. ``ref_margin``: LR pixels of reference searched around each
    tile's footprint (``None``: the whole reference, exact global search)."""

    source: SourceSpec
    reference: SourceSpec
    model: str
    ref_margin: int | None = DEFAULT_REF_MARGIN
    alignment: str = "auto"  # "auto" | "georef" | "pixel"
    ratio_tol: float = 1e-3
    align_tol: float = 0.05
    size: tuple[int, int] | None = None  # must be 4x the input when given
    value_range: tuple[float, float] | None = None
    ref_value_range: tuple[float, float] | None = None
    precision: str = "auto"  # TTSR tiles run in fp32 (auto = fp32)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.precision not in ("auto", "fp32"):
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


@dataclass(frozen=True)
class RefJobPlan(JobPlan):
    """The TTSR plan: the shared plan plus the reference's alignment and value range, and
    whether every tile searches the whole reference (then tiled == whole image)."""

    alignment: RefAlignment | None = None
    ref_value_range: tuple[float, float] = (0.0, 1.0)
    global_search: bool = False


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


def _model_info(model_ref: str) -> tuple[dict[str, Any], int, str]:
    from liif.checkpoint import file_sha256, load_checkpoint, resolve
    from liif.ttsr import TTSR

    path = resolve(model_ref)
    model = load_checkpoint(path)
    if not isinstance(model, TTSR):
        raise ConfigError(f"model {model_ref!r} ({model.spec['name']}) is not a reference-based "
                          "TTSR model; --reference needs a TTSR checkpoint")
    return model.spec, model.halo, file_sha256(path)


def prepare_refsr(cfg: RefSRConfig) -> RefJobPlan:
    """Validate the job (input, reference, alignment, model, output size) and plan it; writes
    nothing. The model loads last."""
    from pipeline.upscale import base_attrs, plan_summary

    info = probe_source(cfg.source)
    C, h, w = info.shape
    try:
        ref = probe_source(cfg.reference)
    except InputNotFoundError as e:
        raise InputNotFoundError(f"reference not found: {cfg.reference.uri!r}") from e
    Cr, hr, wr = ref.shape
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
    alignment = align_reference((h, w), info.crs, info.transform, (hr, wr), ref.crs,
                                ref.transform, mode=cfg.alignment, ratio_tol=cfg.ratio_tol,
                                align_tol=cfg.align_tol)
    vr = parse_value_range(cfg.value_range or default_value_range(info.dtype))
    rvr = parse_value_range(cfg.ref_value_range or default_value_range(ref.dtype))
    cfg.grid  # noqa: B018 - checks shard and tile before the model loads
    spec, halo, sha = _model_info(cfg.model)
    max_tile = default_ref_tile(halo, cfg.ref_margin, cfg.grid, in_shape=(h, w))
    levels, grid = cfg.levels_and_grid(out_shape, max_tile)
    if cfg.tile is None:  # near-equal tiles no larger than the cost-optimal side
        tiles = balanced_plan((h, w), out_shape, halo=halo, grid=grid, workers=cfg.workers,
                              max_tile=max(max_tile, grid))
    else:
        tiles = plan_tiles((h, w), out_shape, tile=cfg.tile, halo=halo, chunk=grid)
    tile = plan_summary(tiles)
    full = alignment.full_window()
    global_search = all(
        alignment.ref_window(*tile_footprint(t), cfg.ref_margin) == full for t in tiles.tiles())
    ref_info = {"uri": cfg.reference.uri, "bands": list(cfg.reference.bands or []),
                "shape": [Cr, hr, wr], "value_range": list(rvr), "margin": cfg.ref_margin,
                "alignment": alignment.to_dict(), "window": full.to_dict(),
                "global_search": global_search}
    attrs = base_attrs(cfg, info, out_shape, (float(SCALE), float(SCALE)), vr,
                       {**spec, "weights_sha256": sha, "ref": cfg.model, "receptive_radius": halo})
    attrs.update({
        "reference_uri": cfg.reference.uri, "reference": ref_info,
        "job": {"source": cfg.source.uri, "bands": list(cfg.source.bands or []),
                "reference": {k: ref_info[k] for k in
                              ("uri", "bands", "shape", "value_range", "margin", "alignment")},
                "in_shape": [h, w], "out_shape": list(out_shape), "weights_sha256": sha,
                "value_range": list(vr), "tile": tile, "precision": cfg.precision,
                "starts": [list(s) for s in tiles.starts] if tiles.starts else None},
        "input_identity": {"input": info.identity, "reference": ref.identity},
    })
    return RefJobPlan(bands=C, in_shape=(h, w), out_shape=out_shape, dtype=info.dtype,
                      nodata=info.out_nodata, masked_only=info.masked_only, value_range=vr,
                      tiles=tiles, tile=tile, halo=halo,
                      attrs=attrs, overviews=levels, alignment=alignment, ref_value_range=rvr,
                      global_search=global_search)


class TtsrFamily:
    """The TTSR (reference-based) model family for :func:`pipeline.run.engine.run_job`."""

    worker_cls = RefTileWorker

    def reads(self, cfg: RefSRConfig) -> list[Role]:
        return [("--input", cfg.source.location), ("--reference", cfg.reference.location),
                ("--model", model_location(cfg.model))]

    def prepare(self, cfg: RefSRConfig) -> RefJobPlan:
        return prepare_refsr(cfg)

    def make_job(self, cfg: RefSRConfig, plan: RefJobPlan, output: ZarrOutput) -> RefTileJob:
        assert plan.alignment is not None
        return RefTileJob(source=cfg.source, reference=cfg.reference, alignment=plan.alignment,
                          output_uri=output.uri, output_storage_options=cfg.output.storage_options,
                          model=cfg.model, in_shape=plan.in_shape, out_shape=plan.out_shape,
                          value_range=plan.value_range, ref_value_range=plan.ref_value_range,
                          out_dtype=str(plan.dtype), ref_margin=cfg.ref_margin,
                          nodata=plan.nodata, threads=cfg.threads_per_worker, **cfg.test_hooks)

    def describe(self, cfg: RefSRConfig, plan: RefJobPlan) -> dict[str, Any]:
        al = plan.alignment
        assert al is not None
        return {"scale": [float(SCALE), float(SCALE)], "reference": cfg.reference.uri,
                "alignment": al.method, "ref_offset": [al.row_off, al.col_off],
                "ref_margin": cfg.ref_margin, "global_search": plan.global_search}


TTSR_FAMILY = TtsrFamily()


def run_refsr(cfg: RefSRConfig, *,
              executor_factory: ExecutorFactory | None = None) -> dict[str, Any]:
    """Run the job; returns the JSON-ready summary (see :func:`pipeline.run.engine.run_job`)."""
    from pipeline.upscale import canonical

    return run_job(canonical(cfg, "reference"), TTSR_FAMILY, executor_factory=executor_factory)
