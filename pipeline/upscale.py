"""The upscale job's driver: validate, plan output tiles, create the store, run an executor.

Everything is checked before anything is written: a bad input, scale, size limit, band choice or
existing output fails with a specific error and leaves the filesystem untouched.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.errors import ConfigError, InputReadError, PipelineError
from pipeline.geometry.tiling import (
    check_output_size,
    default_tile_for,
    out_size_for_scale,
    plan_tiles,
    scale_of,
)
from pipeline.io.atomic import check_target, write_bytes
from pipeline.io.exports import export_geotiff, write_preview_png
from pipeline.io.lease import OutputLease
from pipeline.io.locations import Location, check_disjoint, resolve
from pipeline.io.sources import SourceSpec, content_identity, open_source
from pipeline.io.values import default_value_range
from pipeline.io.zarr_output import (
    OutputSpec,
    ZarrOutput,
    check_output_target,
    create_zarr_output,
)
from pipeline.run.progress import Progress
from pipeline.run.worker import TileJob

DEFAULT_MAX_OUTPUT_PIXELS = 100_000_000_000  # 100 Gpx; raise with --max-output-pixels
#: output attribute set when a run stopped on an unreadable input (cleared when a run completes)
UNREADABLE_MARK = "stopped_on_unreadable_input"


@dataclass(frozen=True)
class UpscaleConfig:
    """One upscale job. Exactly one of ``scale`` / ``size`` (``(H, W)``)."""

    source: SourceSpec
    output: OutputSpec
    scale: float | tuple[float, float] | None = None
    size: tuple[int, int] | None = None
    model: str = "edsr-baseline-liif"
    tile: int | None = None  # output tile side; a multiple of `chunk` (or of `shard`)
    chunk: int = 256
    shard: int | None = None
    value_range: tuple[float, float] | None = None
    precision: str = "fp32"
    executor: str = "ray"  # "ray" | "in-process"
    workers: int = 1
    gpus_per_worker: float = 0.0
    threads_per_worker: int | None = None
    ray_address: str | None = None
    overwrite: bool = False
    resume: bool = False
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    cog: str | None = None  # also export a Cloud-Optimised GeoTIFF here
    preview: str | None = None  # also write a downsampled PNG preview here
    summary: str | None = None  # also write the JSON summary here
    progress: bool = True
    test_hooks: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.scale is None) == (self.size is None):
            raise ConfigError(f"give exactly one of scale or size (got scale={self.scale!r}, "
                              f"size={self.size!r})")
        if self.executor not in ("ray", "in-process"):
            raise ConfigError(f"executor {self.executor!r} is not one of 'ray', 'in-process'")
        if self.workers < 1:
            raise ConfigError(f"workers {self.workers!r} must be >= 1")
        if self.chunk < 16:
            raise ConfigError(f"chunk {self.chunk!r} must be >= 16 pixels")
        if self.overwrite and self.resume:
            raise ConfigError("--overwrite and --resume exclude each other")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise ConfigError(f"threads per worker {self.threads_per_worker!r} must be >= 1")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"precision {self.precision!r} is not one of fp32, bf16, fp16")


def _model_info(model_ref: str) -> tuple[dict, int, str]:
    from liif.checkpoint import file_sha256, load_checkpoint, resolve

    path = resolve(model_ref)
    model = load_checkpoint(path)
    if not hasattr(model, "halo"):
        raise ConfigError(f"model {model_ref!r} ({model.spec['name']}) is not a LIIF model; "
                          "reference-based models need --reference")
    return model.spec, int(model.halo), file_sha256(path)


def model_location(model_ref: str) -> Location | None:
    """Where a ``--model`` file lives (``~`` expanded), or None for a bundled name."""
    path = os.path.expanduser(model_ref)
    return resolve(path) if os.path.exists(path) else None


def check_grid(cfg: Any) -> int:
    """The write grid (shard or chunk side); checks ``shard`` and an explicit ``tile``."""
    grid = cfg.shard or cfg.chunk
    if cfg.shard is not None and cfg.shard % cfg.chunk:
        raise ConfigError(f"shard {cfg.shard} must be a multiple of chunk {cfg.chunk}")
    if cfg.tile is not None and (cfg.tile <= 0 or cfg.tile % grid):
        raise ConfigError(f"tile {cfg.tile} must be a positive multiple of "
                          f"{'shard' if cfg.shard else 'chunk'} {grid}")
    return grid


def prepare(cfg: UpscaleConfig) -> dict[str, Any]:
    """Validate the job and compute its plan; writes nothing. The model loads last."""
    src = open_source(cfg.source)
    try:
        C, h, w = src.shape
        dtype, nodata, crs, transform = src.dtype, src.nodata, src.crs, src.transform
        identity = content_identity(src)
    finally:
        src.close()
    try:
        out_shape = (out_size_for_scale((h, w), cfg.scale) if cfg.size is None
                     else tuple(int(v) for v in cfg.size))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if min(out_shape) < 1:
        raise ConfigError(f"output size {out_shape} must be positive")
    try:
        check_output_size(out_shape, cfg.max_output_pixels)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    vr = tuple(cfg.value_range) if cfg.value_range is not None else default_value_range(dtype)
    if not (math.isfinite(vr[0]) and math.isfinite(vr[1]) and vr[0] < vr[1]):
        raise ConfigError(f"value range {vr!r} must be two finite numbers lo < hi")
    grid = check_grid(cfg)
    spec, halo, sha = _model_info(cfg.model)
    sy, sx = scale_of((h, w), out_shape)
    if cfg.tile is None:
        tile = default_tile_for(halo, (sy, sx), chunk=grid)
        # keep at least two tiles per worker where the output allows it (parallelism)
        while tile > grid and math.ceil(out_shape[0] / tile) * math.ceil(out_shape[1] / tile) \
                < 2 * cfg.workers:
            tile -= grid
    else:
        tile = cfg.tile
    plan = plan_tiles((h, w), out_shape, tile=tile, halo=halo, chunk=grid)
    from pipeline.geometry.affine import scaled_transform

    fingerprint = {"source": cfg.source.uri, "bands": list(cfg.source.bands or []),
                   "in_shape": [h, w], "out_shape": list(out_shape), "weights_sha256": sha,
                   "value_range": list(vr), "tile": tile, "precision": cfg.precision}
    attrs = {
        "scale": [sy, sx], "in_shape": [h, w], "out_shape": list(out_shape),
        "model": {**spec, "weights_sha256": sha, "ref": cfg.model},
        "source_uri": cfg.source.uri, "crs": crs,
        "transform": list(scaled_transform(transform, (h, w), out_shape)) if transform else None,
        "value_range": list(vr), "nodata": nodata, "job": fingerprint,
        "input_identity": {"input": identity},
    }
    return {"C": C, "in_shape": (h, w), "out_shape": out_shape, "dtype": dtype, "nodata": nodata,
            "value_range": vr, "plan": plan, "attrs": attrs, "halo": halo, "tile": tile}


def run_upscale(cfg: UpscaleConfig) -> dict[str, Any]:
    """Run the job; returns the JSON-ready summary."""
    def make_job(out: ZarrOutput, p: dict[str, Any]) -> TileJob:
        return TileJob(source=cfg.source, output_uri=out.uri,
                       output_storage_options=cfg.output.storage_options, model=cfg.model,
                       in_shape=p["in_shape"], out_shape=p["out_shape"],
                       value_range=p["value_range"], out_dtype=str(p["dtype"]), nodata=p["nodata"],
                       precision=cfg.precision, threads=cfg.threads_per_worker, **cfg.test_hooks)

    cfg = canonical(cfg)
    reads = [("--input", cfg.source.location), ("--model", model_location(cfg.model))]
    return run_job(cfg, reads, lambda: prepare(cfg), make_job,
                   describe=lambda p: {"scale": p["attrs"]["scale"]})


def canonical(cfg: Any, **more: Any) -> Any:
    """``cfg`` with its input (and other ``more`` SourceSpec fields) and model as canonical
    absolute locations, so Ray workers in another directory open the same files."""
    def spec(s: SourceSpec) -> SourceSpec:
        return replace(s, uri=s.location.url)

    changes: dict[str, Any] = {"source": spec(cfg.source)}
    changes.update({k: spec(getattr(cfg, k)) for k in more})
    loc = model_location(cfg.model)
    if loc is not None:
        changes["model"] = loc.path
    return replace(cfg, **changes)


def _export_roles(cfg: Any) -> list[tuple[str, Location | None, bool]]:
    """``(flag, location, may replace)`` of the single-file outputs of a job."""
    def loc(path: str | None) -> Location | None:
        return None if path is None else resolve(path, cfg.output.storage_options)
    return [("--cog", loc(cfg.cog), cfg.overwrite),
            ("--preview", loc(cfg.preview), cfg.overwrite or cfg.resume),
            ("--summary", loc(cfg.summary), cfg.overwrite or cfg.resume)]


def run_job(cfg: Any, reads: list[tuple[str, Location | None]],
            prepare_fn: Callable[[], dict[str, Any]],
            make_job: Callable[[ZarrOutput, dict[str, Any]], Any], *,
            worker_cls: type | None = None,
            describe: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Check every location, take the output's lease, prepare (the model loads here), run.

    Every output-like path (output, --cog, --preview, --summary) is compared with every
    input-like one (``reads``) and with each other, and every target is checked, before the
    model loads or anything is written. The lease is held until the summary is written.
    ``describe(p)`` adds family-specific summary fields.
    """
    exports = _export_roles(cfg)
    check_disjoint([("--output", cfg.output.location)] + [(r, loc) for r, loc, _ in exports],
                   reads)
    for role, loc, may_replace in exports:
        if loc is not None:
            check_target(loc, overwrite=may_replace, role=role)
    check_output_target(cfg.output, overwrite=cfg.overwrite, resume=cfg.resume)
    with OutputLease(cfg.output.location) as lease:
        p = prepare_fn()
        summary = run_plan(cfg, p, make_job, worker_cls=worker_cls, lease=lease)
        if describe is not None:
            summary.update(describe(p))
        if lease.taken_over:
            summary["lease_taken_over_from"] = lease.describe(lease.taken_over)
        summary_loc = exports[2][1]
        if summary_loc is not None:
            write_bytes(summary_loc, (json.dumps(summary) + "\n").encode())
    return summary


def _identity_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    if not isinstance(old, dict):
        return ["the output does not record its input's identity (an older version made it)"]
    out = []
    for role, ident in new.items():
        was = old.get(role) or {}
        if was.get("storage") != ident.get("storage"):
            out.append(f"the {role}'s size or modification time changed "
                       f"({was.get('storage')} -> {ident.get('storage')})")
        if was.get("samples") != ident.get("samples"):
            out.append(f"sampled pixels of the {role} differ")
    return out


def run_plan(cfg: Any, p: dict[str, Any], make_job: Callable[[ZarrOutput, dict[str, Any]], Any],
             *, worker_cls: type | None = None, lease: OutputLease | None = None
             ) -> dict[str, Any]:
    """Create (or resume) the output, run the pending tiles, export; the common summary.

    ``cfg`` carries the output/executor options shared by the LIIF and TTSR jobs; ``p`` is what
    their ``prepare`` computed (plan, shapes, dtype, nodata, attrs); ``make_job(output, p)``
    builds the picklable job for ``worker_cls`` (default :class:`TileWorker`). On resume, the
    input's identity must be unchanged, and every finished tile is verified against its chunk
    digests by the workers (and redone when it fails).
    """
    plan, (H, W) = p["plan"], p["out_shape"]
    out = create_zarr_output(
        cfg.output, shape=(p["C"], H, W), dtype=p["dtype"], chunks=(cfg.chunk, cfg.chunk),
        shards=(cfg.shard, cfg.shard) if cfg.shard else None,
        fill_value=p["nodata"] if p["nodata"] is not None and math.isfinite(p["nodata"]) else 0,
        attrs=p["attrs"], overwrite=cfg.overwrite, resume=cfg.resume)
    records: dict[str, dict[str, Any]] = {}
    verify_inputs = False
    if cfg.resume:
        identity = p["attrs"]["input_identity"]
        changed = _identity_changes(out.attrs.get("input_identity"), identity)
        stopped = out.attrs.get(UNREADABLE_MARK)
        if changed and not stopped:
            raise ConfigError(
                f"cannot resume {cfg.output.uri!r}: {'; '.join(changed)}; resuming would mix "
                "pixels of the old and the new input (pass --overwrite to start over)")
        if changed:
            # the last run stopped on an unreadable input, which has since been repaired: keep
            # only the finished tiles whose input windows read the same as when they were made
            warnings.warn(f"the input changed since the run that stopped on it ({stopped}); "
                          "every finished tile is checked against the input it was computed "
                          "from", UserWarning, stacklevel=2)
            verify_inputs = True
            out.update_attrs({"input_identity": identity})
        for key in out.manifest.done_keys():
            rec = out.manifest.record(key)
            if rec is not None:
                records[key] = rec
    tiles = plan.tiles()
    work = [(t, records.get(t.key)) for t in tiles]
    job = make_job(out, p)
    if verify_inputs:
        job = replace(job, verify_inputs=True)
    executor = make_executor(cfg, job, worker_cls)
    progress = Progress(len(tiles), H * W, stream=sys.stderr if cfg.progress else None)
    try:
        done = executor.run(work, progress, lease=lease)
    except PipelineError as e:
        executor.close()
        if isinstance(e, InputReadError):
            out.update_attrs({UNREADABLE_MARK: str(e)[:300]})
        finished = len(out.manifest.done_keys())
        e.add_note(f"{finished} of {len(tiles)} tiles are finished and kept; fix the cause and "
                   "rerun with --resume to continue")
        raise
    except BaseException:
        executor.close()
        raise
    executor.close()
    if out.attrs.get(UNREADABLE_MARK):
        out.update_attrs({UNREADABLE_MARK: None})
    verified = sum(1 for r in done if r.get("verified"))
    redone = sum(1 for r in done if r.get("redone"))
    extras = {}
    if cfg.cog:
        extras["cog"] = export_geotiff(out, cfg.cog, cog=True, overwrite=cfg.overwrite,
                                       storage_options=cfg.output.storage_options)
    if cfg.preview:
        write_preview_png(out, cfg.preview, overwrite=cfg.overwrite or cfg.resume,
                          storage_options=cfg.output.storage_options)
        extras["preview"] = cfg.preview
    return {
        "output": out.uri, "in_shape": list(p["in_shape"]), "out_shape": [H, W],
        "bands": p["C"], "dtype": str(p["dtype"]),
        "tiles": len(tiles), "tiles_run": len(tiles) - verified,
        "tiles_skipped": verified, "tiles_verified": verified, "tiles_redone": redone,
        "nodata_pixels": sum(int(r.get("nodata_pixels", 0)) for r in done if not r.get("verified")),
        "nudged_values": sum(int(r.get("nudged", 0)) for r in done if not r.get("verified")),
        "tile": p["tile"], "halo": p["halo"], "useful_fraction": plan.stats()["useful_fraction"],
        "output_mpx": round(H * W / 1e6, 3), "seconds": round(progress.seconds, 3),
        "mpx_per_s": round(progress.mpx_per_s, 4), "executor": executor.name,
        "workers": cfg.workers if cfg.executor == "ray" else 1, **extras,
    }


def make_executor(cfg: Any, job: Any, worker_cls: type | None = None) -> Any:
    """The in-process executor or a Ray actor pool hosting ``worker_cls``, per ``cfg.executor``."""
    if cfg.executor == "in-process":
        from pipeline.run.executors import InProcessExecutor

        return InProcessExecutor(job, worker_cls=worker_cls)
    from pipeline.run.ray_executor import RayExecutor, ensure_ray

    ensure_ray(cfg.ray_address)
    return RayExecutor(job, workers=cfg.workers, gpus_per_worker=cfg.gpus_per_worker,
                       worker_cls=worker_cls)
