"""The tile engine: one driver for every model family.

    check every location -> take the output's lease -> family.prepare (the model loads here)
    -> create or resume the output -> executor runs the tiles -> exports -> summary

A model family (:class:`ModelFamily`) supplies only what differs: the paths it reads, its
``prepare`` (a typed :class:`JobPlan`: shapes, halo, tiles, attributes), the picklable job for
its worker class (a :class:`pipeline.run.worker.BaseTileWorker` that implements ``infer``), and a
few summary fields. LIIF is :mod:`pipeline.upscale`, TTSR :mod:`pipeline.refsr`.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from pipeline.errors import ConfigError, InputReadError, PipelineError
from pipeline.geometry.tiling import TilePlan
from pipeline.io.atomic import check_target, write_bytes
from pipeline.io.exports import export_geotiff
from pipeline.io.jsontext import json_line
from pipeline.io.lease import OutputLease
from pipeline.io.locations import Location, check_disjoint, resolve
from pipeline.io.previews import write_comparison_png, write_preview_png
from pipeline.io.zarr_create import check_output_target, create_zarr_output
from pipeline.io.zarr_output import COMPLETE, CREATED_BY, ZarrOutput
from pipeline.run.executors import Executor, make_executor
from pipeline.run.options import JobOptions
from pipeline.run.progress import Progress
from pipeline.run.worker import TileJob

__all__ = ["UNREADABLE_MARK", "ExecutorFactory", "JobPlan", "ModelFamily", "Product", "Role",
           "model_location", "run_job"]

#: output attribute set when a run stopped on an unreadable input (cleared when a run completes)
UNREADABLE_MARK = "stopped_on_unreadable_input"

Role = tuple[str, Location | None]
ExecutorFactory = Callable[[JobOptions, TileJob, type], Executor]


@dataclass(frozen=True)
class JobPlan:
    """What a family's ``prepare`` computed; nothing is written yet.

    ``bands`` output bands; ``in_shape`` ``(h, w)``; ``out_shape`` ``(H, W)``; ``dtype`` and
    ``nodata`` of the output; ``value_range`` mapped to [0, 1]; ``tiles`` the tile plan with
    ``tile`` side and ``halo``; ``attrs`` the output's attributes (JSON), including the job
    fingerprint ``job`` and the inputs' ``input_identity``.
    """

    bands: int
    in_shape: tuple[int, int]
    out_shape: tuple[int, int]
    dtype: np.dtype
    nodata: float | None
    value_range: tuple[float, float]
    tiles: TilePlan
    tile: int
    halo: int
    attrs: dict[str, Any] = field(default_factory=dict)
    overviews: int = 0
    masked_only: bool = False  # nodata marks only transparent input pixels (alpha mask)
    #: further products rendered by the same tiles (LIIF: other sizes from one encoding)
    products: tuple[Product, ...] = ()


@dataclass(frozen=True)
class Product:
    """A further output of the job at another size: the group ``path`` (``scales/<label>``)
    holding its array ``image``, its ``out_shape`` ``(H, W)`` and attributes."""

    path: str
    out_shape: tuple[int, int]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def array(self) -> str:
        return f"{self.path}/image"


class ModelFamily(Protocol):
    """What a model family supplies to :func:`run_job`."""

    worker_cls: type

    def reads(self, cfg: Any) -> list[Role]:
        """Every input-like location of the job: ``("--input", loc)``, ``("--model", loc)``..."""

    def prepare(self, cfg: Any) -> JobPlan:
        """Validate and plan (the model loads here, after every path check); writes nothing."""

    def make_job(self, cfg: Any, plan: Any, output: ZarrOutput) -> TileJob:
        """The picklable job for ``worker_cls``."""

    def describe(self, cfg: Any, plan: Any) -> dict[str, Any]:
        """Family-specific summary fields."""


def model_location(model_ref: str) -> Location | None:
    """Where a ``--model`` file lives (``~`` expanded), or None for a bundled name."""
    path = os.path.expanduser(model_ref)
    return resolve(path) if os.path.exists(path) else None


def _export_roles(cfg: JobOptions) -> list[tuple[str, Location | None, bool]]:
    """``(flag, location, may replace)`` of the single-file outputs of a job."""
    def loc(path: str | None) -> Location | None:
        return None if path is None else resolve(path, cfg.output.storage_options)
    # --output x.tif is a COG written through a working Zarr: its flag is --output
    return [("--output" if cfg.working_output else "--cog", loc(cfg.cog), cfg.overwrite),
            ("--preview", loc(cfg.preview), cfg.overwrite or cfg.resume),
            ("--compare", loc(cfg.compare), cfg.overwrite or cfg.resume),
            ("--summary", loc(cfg.summary), cfg.overwrite or cfg.resume)]


def run_job(cfg: JobOptions, family: ModelFamily, *,
            executor_factory: ExecutorFactory | None = None) -> dict[str, Any]:
    """Run one tile job of ``family``; returns the JSON-ready summary.

    Every output-like path (output, --cog, --preview, --summary) is compared with every
    input-like one (``family.reads``) and with each other, and every target is checked, before
    the model loads or anything is written. The lease is held until the summary is written.
    ``executor_factory(cfg, job, worker_cls)`` replaces :func:`make_executor` (tests, benchmarks).
    """
    exports = _export_roles(cfg)
    check_disjoint([("--output", cfg.output.location)] + [(r, loc) for r, loc, _ in exports],
                   family.reads(cfg))
    for role, loc, may_replace in exports:
        if loc is not None:
            check_target(loc, overwrite=may_replace, role=role)
    check_output_target(cfg.output, overwrite=cfg.overwrite, resume=cfg.resume)
    if cfg.executor == "ray":  # connect (or fail on a dead address) before anything is written
        from pipeline.run.ray_executor import ensure_ray

        ensure_ray(cfg.ray_address)
    with OutputLease(cfg.output.location) as lease:
        plan = family.prepare(cfg)
        summary = {"created_by": CREATED_BY,
                   **_run_plan(cfg, family, plan, lease, executor_factory or make_executor)}
        summary.update(family.describe(cfg, plan))
        if lease.taken_over:
            summary["lease_taken_over_from"] = lease.describe(lease.taken_over)
        summary_loc = exports[-1][1]
        if summary_loc is not None:
            write_bytes(summary_loc, (json_line(summary) + "\n").encode())
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
        if "reading" in was and was["reading"] != ident.get("reading"):  # older outputs lack it
            changed = sorted(k for k in {**was["reading"], **(ident.get("reading") or {})}
                             if was["reading"].get(k) != (ident.get("reading") or {}).get(k))
            out.append(f"how the {role} reads changed ({', '.join(changed)})")
    return out


def _trusted_records(cfg: JobOptions, out: ZarrOutput, plan: JobPlan
                     ) -> dict[str, dict[str, Any]]:
    """The finished tiles' records of a resumed output (the workers verify each one's chunks and
    input windows, and redo a tile whose input window no longer reads the same). Refuses an input
    whose identity changed since the output was started, unless the last run stopped on an
    unreadable input (repaired since)."""
    identity = plan.attrs["input_identity"]
    changed = _identity_changes(out.attrs.get("input_identity"), identity)
    stopped = out.attrs.get(UNREADABLE_MARK)
    if changed and not stopped:
        raise ConfigError(
            f"cannot resume {cfg.output.uri!r}: {'; '.join(changed)}; resuming would mix "
            "pixels of the old and the new input (pass --overwrite to start over)")
    if changed:
        warnings.warn(f"the input changed since the run that stopped on it ({stopped}); every "
                      "finished tile is checked against the input it was computed from",
                      UserWarning, stacklevel=3)
        out.update_attrs({"input_identity": identity})
    records = {}
    for key in out.manifest.done_keys():
        try:
            rec = out.manifest.record(key)
        except PipelineError as e:  # an unreadable record (OutputCorruptError): not finished
            warnings.warn(f"{e}; tile {key} is redone", UserWarning, stacklevel=3)
            rec = {"key": key}  # no digests: the worker's check fails, clears and redoes it
        if rec is not None:
            records[key] = rec
    return records


def plan_line(cfg: JobOptions, plan: JobPlan, *, verified: int = 0) -> str:
    """What the job is about to do, printed before any work (sizes, bytes, tiles, workers)."""
    H, W = plan.out_shape
    raw = H * W * plan.bands * np.dtype(plan.dtype).itemsize
    th, tw = plan.tiles.tile_shape
    workers = cfg.workers if cfg.executor == "ray" else 1
    redo = f", {verified} finished earlier (verified first)" if verified else ""
    also = "".join(f" + {p.path} {p.out_shape[1]} x {p.out_shape[0]}" for p in plan.products)
    raw += sum(p.out_shape[0] * p.out_shape[1] for p in plan.products) * plan.bands * np.dtype(
        plan.dtype).itemsize
    return (f"plan: {plan.in_shape[1]} x {plan.in_shape[0]} -> {W} x {H}{also} x {plan.bands} "
            f"{np.dtype(plan.dtype).name} ({H * W / 1e6:,.1f} Mpx, {raw / 1e9:,.2f} GB "
            f"uncompressed), {len(plan.tiles)} tiles of up to {tw} x {th}{redo}, {workers} "
            f"worker(s) x {cfg.depth} tiles in flight ({cfg.executor}); the ETA follows the "
            "first tiles")


def _precision_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Which decode precision(s) the workers ran and why (families that report one)."""
    ran = sorted({(str(r["precision"]), str(r.get("precision_why", ""))) for r in records
                  if r.get("precision")})
    if not ran:
        return {}
    return {"precision": ran[0][0] if len({p for p, _ in ran}) == 1 else [p for p, _ in ran],
            "precision_why": "; ".join(sorted({w for _, w in ran}))}


def _run_plan(cfg: JobOptions, family: ModelFamily, plan: JobPlan, lease: OutputLease,
              executor_factory: ExecutorFactory) -> dict[str, Any]:
    """Create (or resume) the output, run the pending tiles, export; the common summary."""
    H, W = plan.out_shape
    fill = plan.nodata if plan.nodata is not None and math.isfinite(plan.nodata) else 0
    out = create_zarr_output(
        cfg.output, shape=(plan.bands, H, W), dtype=plan.dtype, chunks=(cfg.chunk, cfg.chunk),
        shards=(cfg.shard, cfg.shard) if cfg.shard else None,
        fill_value=fill, attrs={**plan.attrs, COMPLETE: False},
        overwrite=cfg.overwrite, resume=cfg.resume, overviews=plan.overviews, codec=cfg.codec,
        zarr_format=cfg.zarr_format,
        products=[(p.path, p.out_shape, {**p.attrs, COMPLETE: False}) for p in plan.products])
    records = _trusted_records(cfg, out, plan) if cfg.resume else {}
    arrays = [out] + [out.product(p.array) for p in plan.products]
    if cfg.resume:  # created complete=false; a resumed output is unfinished again until its end
        for arr in arrays:  # (readers refuse it, and its overviews, as an input)
            arr.set_complete(False)
    tiles = plan.tiles.tiles()
    work = [(t, records.get(t.key)) for t in tiles]
    job = replace(family.make_job(cfg, plan, out), depth=cfg.depth,
                  # every kept tile's input windows are checked against their digests: an
                  # in-place edit can keep the size, the time and the sampled windows
                  verify_inputs=cfg.resume, halo=plan.halo, masked_only=plan.masked_only,
                  products=tuple((p.array, p.out_shape) for p in plan.products),
                  product_grid=cfg.grid)
    executor = executor_factory(cfg, job, family.worker_cls)
    if cfg.progress:
        sys.stderr.write(plan_line(cfg, plan, verified=len(records)) + "\n")
        sys.stderr.flush()
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
    except KeyboardInterrupt as e:
        progress.close()
        executor.close()
        finished = len(out.manifest.done_keys())
        e.add_note(f"{finished} of {len(tiles)} tiles are finished and kept; rerun the same "
                   "command with --resume to continue.")
        raise
    except BaseException:
        executor.close()
        raise
    executor.close()
    if out.attrs.get(UNREADABLE_MARK):
        out.update_attrs({UNREADABLE_MARK: None})
    for arr in arrays:
        arr.set_complete(True)
    extras: dict[str, Any] = {}
    if cfg.cog:
        extras["cog"] = export_geotiff(
            out, cfg.cog, cog=True, overwrite=cfg.overwrite, compress=cfg.cog_compress,
            level=cfg.cog_level, max_z_error=cfg.cog_max_z_error, threads=cfg.cog_threads,
            storage_options=cfg.output.storage_options)
    if cfg.preview:
        write_preview_png(out, cfg.preview, max_side=cfg.preview_size,
                          overwrite=cfg.overwrite or cfg.resume,
                          storage_options=cfg.output.storage_options)
        extras["preview"] = cfg.preview
    if cfg.compare:
        extras["compare"] = {"path": cfg.compare, **write_comparison_png(
            out, cfg.source,  # type: ignore[attr-defined]  # every family's options have it
            cfg.compare, crop=cfg.compare_crop,
            overwrite=cfg.overwrite or cfg.resume, storage_options=cfg.output.storage_options)}
    if cfg.working_output:  # the Zarr only fed the COG
        fs, path = out.location.fs()
        fs.rm(path, recursive=True)
        extras["working_output_removed"] = out.uri
    fresh = [r for r in done if not r.get("verified")]
    verified = len(done) - len(fresh)
    changed_inputs = sum(1 for r in fresh if r.get("redone_why") == "input")
    if changed_inputs:
        warnings.warn(f"{changed_inputs} finished tile(s) were redone: the input pixels they read "
                      "changed since they were written", UserWarning, stacklevel=3)
    if plan.products:
        extras["products"] = [
            {"array": p.array, "out_shape": list(p.out_shape), "scale": p.attrs.get("scale"),
             "nodata_pixels": sum(int(((r.get("products") or {}).get(p.array) or {}).get(
                 "nodata_pixels", 0)) for r in fresh)}
            for p in plan.products]
    return {
        "output": cfg.cog if cfg.working_output else out.uri,
        "in_shape": list(plan.in_shape), "out_shape": [H, W],
        "bands": plan.bands, "dtype": str(plan.dtype),
        "tiles": len(tiles), "tiles_run": len(fresh), "tiles_skipped": verified,
        "tiles_verified": verified, "tiles_redone": sum(1 for r in fresh if r.get("redone")),
        "tiles_redone_input_changed": changed_inputs,
        "nodata_pixels": sum(int(r.get("nodata_pixels", 0)) for r in fresh),
        "nudged_values": sum(int(r.get("nudged", 0)) for r in fresh),
        # seconds summed over the tiles of this run (stages overlap, so they exceed the wall time)
        "stage_seconds": {k: round(sum(float(r.get(f"{k}_s", 0.0)) for r in fresh), 3)
                          for k in ("read", "compute", "write", "wait")},
        "tiles_in_flight_per_worker": cfg.depth,
        **_precision_summary(fresh),
        "tile": plan.tile, "halo": plan.halo, "overviews": plan.overviews,
        "useful_fraction": plan.tiles.stats()["useful_fraction"],
        "output_mpx": round(H * W / 1e6, 3), "seconds": round(progress.seconds, 3),
        "mpx_per_s": round(progress.mpx_per_s, 4), "executor": executor.name,
        "workers": cfg.workers if cfg.executor == "ray" else 1, **extras,
    }
