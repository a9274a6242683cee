"""The engine's own test double: a worker with no model (benchmarks and tests of the engine).

:class:`NullTileWorker` returns a precomputed output tile (the first input window upsampled by
nearest neighbour, in the output dtype: realistic content for the codecs) for every tile.
Everything else (reads, fill checks, writes, digests, records) is the real engine, so a run
measures the engine's own I/O path. Its job's ``model`` is ``"null"`` or
``"null:key=value,..."`` with, all optional:

* ``compute=S``: seconds of sleep in the model step (under the model lock; a step that
  releases the GIL, as torch does);
* ``read=S`` / ``write=S``: extra seconds of sleep in the read / write stage (slow storage);
* ``slow=S,marker=DIR``: the first worker to start (it creates ``DIR/slow``) sleeps ``S`` more
  seconds per tile: one slow actor among fast ones;
* ``trace=DIR``: each worker appends ``{"tile", "stage", "t0", "t1", "pid"}`` JSON lines to
  ``DIR/<pid>.jsonl`` (which stages overlapped in time).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.geometry.tiling import Tile, Window, balanced_plan, plan_tiles
from pipeline.io.sources import SourceSpec, probe_source
from pipeline.io.values import default_value_range
from pipeline.io.zarr_output import ZarrOutput
from pipeline.run.engine import JobPlan, Role
from pipeline.run.options import JobOptions
from pipeline.run.worker import BaseTileWorker, TileJob

__all__ = ["NULL_FAMILY", "NullConfig", "NullFamily", "NullTileWorker", "null_model"]


def null_model(**options: float | str) -> str:
    """The ``model`` string for a :class:`NullTileWorker` job, e.g. ``null_model(compute=0.1)``."""
    return "null:" + ",".join(f"{k}={v}" for k, v in options.items()) if options else "null"


class NullTileWorker(BaseTileWorker):
    """See the module docstring."""

    def load_model(self) -> None:
        name = str(self.job.model)
        if not name.startswith("null"):
            raise ValueError(f"NullTileWorker needs model 'null' or 'null:k=v,...', got {name!r}")
        opts: dict[str, str] = {}
        for part in (name.split(":", 1)[1].split(",") if ":" in name else []):
            key, _, value = part.partition("=")
            opts[key.strip()] = value.strip()
        self.compute_s = float(opts.get("compute", 0.0))
        self.read_s, self.write_s = float(opts.get("read", 0.0)), float(opts.get("write", 0.0))
        self.extra_s = 0.0
        if opts.get("marker"):
            try:
                os.close(os.open(os.path.join(opts["marker"], "slow"), os.O_CREAT | os.O_EXCL))
                self.extra_s = float(opts.get("slow", 0.0))
            except FileExistsError:
                pass
        self.trace = opts.get("trace")
        self._trace_lock = threading.Lock()
        self._tiles: dict[tuple[int, int], np.ndarray] = {}
        return None

    def _log(self, tile: Tile, stage: str, t0: float, t1: float) -> None:
        if self.trace:
            line = json.dumps({"tile": tile.key, "stage": stage, "t0": t0, "t1": t1,
                               "pid": os.getpid()})
            with self._trace_lock, open(os.path.join(self.trace, f"{os.getpid()}.jsonl"),
                                        "a") as fh:
                fh.write(line + "\n")

    def _tile_data(self, shape: tuple[int, int]) -> np.ndarray:
        data = self._tiles.get(shape)
        if data is None:
            h, w = shape
            (H, W), (ih, iw) = self.job.out_shape, self.job.in_shape
            fy, fx = max(1, H // ih), max(1, W // iw)
            rows, cols = min(ih, -(-h // fy)), min(iw, -(-w // fx))
            raw = self.source.read((0, rows), (0, cols)).astype(self.job.out_dtype)
            up = raw.repeat(fy, axis=1).repeat(fx, axis=2)
            reps = (1, -(-h // up.shape[1]), -(-w // up.shape[2]))
            data = np.ascontiguousarray(np.tile(up, reps)[:, :h, :w])
            self._tiles[shape] = data
        return data

    def _read(self, tile: Tile) -> tuple[np.ndarray, np.ndarray, str, Any, Window]:
        t0 = time.perf_counter()
        out = super()._read(tile)
        if self.read_s:
            time.sleep(self.read_s)
        self._log(tile, "read", t0, time.perf_counter())
        return out

    def _infer(self, tile: Tile, read: Any) -> tuple[list[np.ndarray], dict[str, Any]]:
        digest = read[2]
        t0 = time.perf_counter()
        with self._compute_lock:
            t1 = time.perf_counter()
            if self.compute_s or self.extra_s:
                time.sleep(self.compute_s + self.extra_s)
            data = [self._tile_data(w.shape) for _, w, _ in self._targets(tile)]
            self._log(tile, "compute", t1, time.perf_counter())
        return data, {"wait_s": round(t1 - t0, 4), "inputs": {"input": digest}}

    def _finish(self, read: Any, ow: Window, out_shape: tuple[int, int], merged: np.ndarray
                ) -> tuple[np.ndarray, int, int]:
        return merged, 0, 0  # already in the output dtype; the null model knows no nodata

    def _write(self, tile: Tile, output: ZarrOutput, ow: Window, data: np.ndarray
               ) -> dict[str, str]:
        t0 = time.perf_counter()
        out = super()._write(tile, output, ow, data)
        if self.write_s:
            time.sleep(self.write_s)
        self._log(tile, "write", t0, time.perf_counter())
        return out


@dataclass(frozen=True, kw_only=True)
class NullConfig(JobOptions):
    """A job of the null family: x``scale`` (integer) of ``source`` with a ``model`` string of
    :func:`null_model`."""

    source: SourceSpec
    model: str = "null"
    scale: int = 2


class NullFamily:
    """The model family of :class:`NullTileWorker` for :func:`pipeline.run.engine.run_job`
    (halo 0; the default plan is the balanced one)."""

    worker_cls = NullTileWorker

    def reads(self, cfg: NullConfig) -> list[Role]:
        return [("--input", cfg.source.location)]

    def prepare(self, cfg: NullConfig) -> JobPlan:
        info = probe_source(cfg.source)
        c, h, w = info.shape
        out = (cfg.scale * h, cfg.scale * w)
        tiles = (plan_tiles((h, w), out, tile=cfg.tile, halo=0, chunk=cfg.grid) if cfg.tile
                 else balanced_plan((h, w), out, max_tile=4 * cfg.grid, halo=0, grid=cfg.grid,
                                    workers=cfg.workers))
        return JobPlan(bands=c, in_shape=(h, w), out_shape=out, dtype=info.dtype,
                       nodata=info.nodata, value_range=default_value_range(info.dtype),
                       tiles=tiles, tile=tiles.tile_shape[0], halo=0,
                       attrs={"job": {"null": cfg.model}, "input_identity": {"input": info.identity}})

    def make_job(self, cfg: NullConfig, plan: JobPlan, output: ZarrOutput) -> TileJob:
        return TileJob(source=cfg.source, output_uri=output.uri,
                       output_storage_options=cfg.output.storage_options, model=cfg.model,
                       in_shape=plan.in_shape, out_shape=plan.out_shape,
                       value_range=plan.value_range, out_dtype=str(plan.dtype),
                       nodata=plan.nodata)

    def describe(self, cfg: NullConfig, plan: JobPlan) -> dict[str, Any]:
        return {"family": "null"}


NULL_FAMILY = NullFamily()
