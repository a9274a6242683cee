"""The upscale job's driver: validate, plan output tiles, create the store, run an executor.

Everything is checked before anything is written: a bad input, scale, size limit, band choice or
existing output fails with a specific error and leaves the filesystem untouched.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.progress import Progress
from pipeline.sinks import (
    OutputSpec,
    ZarrOutput,
    check_export_target,
    create_zarr_output,
    export_geotiff,
    write_preview_png,
)
from pipeline.sources import SourceSpec, open_source
from pipeline.tiling import (
    check_output_size,
    default_tile_for,
    out_size_for_scale,
    plan_tiles,
    scale_of,
)
from pipeline.values import default_value_range
from pipeline.worker import TileJob

DEFAULT_MAX_OUTPUT_PIXELS = 100_000_000_000  # 100 Gpx; raise with --max-output-pixels


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


def _norm_uri(uri: str) -> str:
    if "://" not in uri or uri.startswith("file://"):
        return str(Path(uri.removeprefix("file://")).resolve())
    return uri.rstrip("/")


def _check_not_overlapping(src: str, out: str) -> None:
    """Refuse an output that is, contains or lies inside the input (it would be destroyed)."""
    a, b = _norm_uri(src), _norm_uri(out)
    if a == b or a.startswith(b + "/") or b.startswith(a + "/"):
        raise ConfigError(f"output {out!r} overlaps the input {src!r}: choose another output")


def prepare(cfg: UpscaleConfig) -> dict[str, Any]:
    """Validate the job and compute its plan; writes nothing."""
    src = open_source(cfg.source)
    try:
        C, h, w = src.shape
        dtype, nodata, crs, transform = src.dtype, src.nodata, src.crs, src.transform
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
    _check_not_overlapping(cfg.source.uri, cfg.output.uri)
    for target, ow in ((cfg.cog, cfg.overwrite), (cfg.preview, cfg.overwrite or cfg.resume)):
        if target:
            check_export_target(target, overwrite=ow)
    spec, halo, sha = _model_info(cfg.model)
    vr = tuple(cfg.value_range) if cfg.value_range is not None else default_value_range(dtype)
    if not (math.isfinite(vr[0]) and math.isfinite(vr[1]) and vr[0] < vr[1]):
        raise ConfigError(f"value range {vr!r} must be two finite numbers lo < hi")
    grid = cfg.shard or cfg.chunk
    if cfg.shard is not None and cfg.shard % cfg.chunk:
        raise ConfigError(f"shard {cfg.shard} must be a multiple of chunk {cfg.chunk}")
    sy, sx = scale_of((h, w), out_shape)
    if cfg.tile is None:
        tile = default_tile_for(halo, (sy, sx), chunk=grid)
        # keep at least two tiles per worker where the output allows it (parallelism)
        while tile > grid and math.ceil(out_shape[0] / tile) * math.ceil(out_shape[1] / tile) \
                < 2 * cfg.workers:
            tile -= grid
    else:
        tile = cfg.tile
        if tile <= 0 or tile % grid:
            raise ConfigError(f"tile {tile} must be a positive multiple of "
                              f"{'shard' if cfg.shard else 'chunk'} {grid}")
    plan = plan_tiles((h, w), out_shape, tile=tile, halo=halo, chunk=grid)
    from pipeline.georef import scaled_transform

    fingerprint = {"source": cfg.source.uri, "bands": list(cfg.source.bands or []),
                   "in_shape": [h, w], "out_shape": list(out_shape), "weights_sha256": sha,
                   "value_range": list(vr), "tile": tile, "precision": cfg.precision}
    attrs = {
        "scale": [sy, sx], "in_shape": [h, w], "out_shape": list(out_shape),
        "model": {**spec, "weights_sha256": sha, "ref": cfg.model},
        "source_uri": cfg.source.uri, "crs": crs,
        "transform": list(scaled_transform(transform, (h, w), out_shape)) if transform else None,
        "value_range": list(vr), "nodata": nodata, "job": fingerprint,
    }
    return {"C": C, "in_shape": (h, w), "out_shape": out_shape, "dtype": dtype, "nodata": nodata,
            "value_range": vr, "plan": plan, "attrs": attrs, "halo": halo, "tile": tile}


def run_upscale(cfg: UpscaleConfig) -> dict[str, Any]:
    """Run the job; returns the JSON-ready summary."""
    p = prepare(cfg)

    def make_job(out: ZarrOutput) -> TileJob:
        return TileJob(source=cfg.source, output_uri=out.uri,
                       output_storage_options=cfg.output.storage_options, model=cfg.model,
                       in_shape=p["in_shape"], out_shape=p["out_shape"],
                       value_range=p["value_range"], out_dtype=str(p["dtype"]), nodata=p["nodata"],
                       precision=cfg.precision, threads=cfg.threads_per_worker, **cfg.test_hooks)

    return {**run_plan(cfg, p, make_job), "scale": p["attrs"]["scale"]}


def run_plan(cfg: Any, p: dict[str, Any], make_job: Callable[[ZarrOutput], Any], *,
             worker_cls: type | None = None) -> dict[str, Any]:
    """Create (or resume) the output, run the pending tiles, export; the common summary.

    ``cfg`` carries the output/executor options shared by the LIIF and TTSR jobs; ``p`` is what
    their ``prepare`` computed (plan, shapes, dtype, nodata, attrs); ``make_job(output)`` builds the
    picklable job for ``worker_cls`` (default :class:`TileWorker`).
    """
    plan, (H, W) = p["plan"], p["out_shape"]
    out = create_zarr_output(
        cfg.output, shape=(p["C"], H, W), dtype=p["dtype"], chunks=(cfg.chunk, cfg.chunk),
        shards=(cfg.shard, cfg.shard) if cfg.shard else None,
        fill_value=p["nodata"] if p["nodata"] is not None else 0, attrs=p["attrs"],
        overwrite=cfg.overwrite, resume=cfg.resume)
    done = out.manifest.done_keys() if cfg.resume else set()
    tiles = plan.tiles()
    todo = [t for t in tiles if t.key not in done]
    already = sum(t.out_window.size for t in tiles if t.key in done)
    executor = make_executor(cfg, make_job(out), worker_cls)
    progress = Progress(len(tiles), H * W, already_tiles=len(tiles) - len(todo),
                        already_pixels=already, stream=sys.stderr if cfg.progress else None)
    try:
        executor.run(todo, progress)
    finally:
        executor.close()
    extras = {}
    if cfg.cog:
        extras["cog"] = export_geotiff(out, cfg.cog, cog=True, overwrite=cfg.overwrite)
    if cfg.preview:
        write_preview_png(out, cfg.preview, overwrite=cfg.overwrite or cfg.resume)
        extras["preview"] = cfg.preview
    return {
        "output": out.uri, "in_shape": list(p["in_shape"]), "out_shape": [H, W],
        "bands": p["C"], "dtype": str(p["dtype"]),
        "tiles": len(tiles), "tiles_run": len(todo), "tiles_skipped": len(tiles) - len(todo),
        "tile": p["tile"], "halo": p["halo"], "useful_fraction": plan.stats()["useful_fraction"],
        "output_mpx": round(H * W / 1e6, 3), "seconds": round(progress.seconds, 3),
        "mpx_per_s": round(progress.mpx_per_s, 4), "executor": executor.name,
        "workers": cfg.workers if cfg.executor == "ray" else 1, **extras,
    }


def make_executor(cfg: Any, job: Any, worker_cls: type | None = None) -> Any:
    """The in-process executor or a Ray actor pool hosting ``worker_cls``, per ``cfg.executor``."""
    if cfg.executor == "in-process":
        from pipeline.executor import InProcessExecutor

        return InProcessExecutor(job, worker_cls=worker_cls)
    from pipeline.ray_executor import RayExecutor, ensure_ray

    ensure_ray(cfg.ray_address)
    return RayExecutor(job, workers=cfg.workers, gpus_per_worker=cfg.gpus_per_worker,
                       worker_cls=worker_cls)
