"""Tile workers: one model, many tiles. The in-process and Ray executors host these classes.

:class:`BaseTileWorker` does everything that does not depend on the model family: for each tile
it reads its own input window (with halo), fills invalid pixels, lets the family decode the
window (:meth:`BaseTileWorker.infer`, the one method a family implements), converts to the
output dtype, masks nodata, writes whole output chunks itself and records the tile with a digest
per chunk; only a small record travels back to the driver. A tile finished by an earlier run is
verified against its digests instead, and redone if its chunks changed.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pipeline.geometry.tiling import Tile, Window, output_positions, product_window, window_input
from pipeline.io.sources import Source, SourceSpec, open_source
from pipeline.io.values import (
    FILL_PASSES,
    band_groups,
    fill_invalid,
    from_unit,
    invalid_mask,
    mask_output,
    nudge_off_nodata,
    to_unit,
    upsample_mask,
)
from pipeline.io.zarr_output import ZarrOutput


@dataclass(frozen=True, kw_only=True)
class TileJob:
    """What every worker needs, small and picklable (no arrays, no open handles); a family's
    job subclasses it with its own fields."""

    source: SourceSpec
    output_uri: str
    output_storage_options: dict | None
    model: str
    in_shape: tuple[int, int]
    out_shape: tuple[int, int]
    value_range: tuple[float, float]
    out_dtype: str
    nodata: float | None = None  # the output's nodata value
    masked_only: bool = False  # nodata marks only transparent input pixels (the input has none)
    device: str | None = None
    threads: int | None = None
    verify_inputs: bool = False  # on resume: also check each finished tile's input windows
    depth: int = 3  # tiles a worker holds at once: one computing, the others reading/writing
    zarr_concurrency: int | None = 8  # zarr async operations per worker process
    halo: int = 0  # the model's receptive-field halo (input pixels), for product windows
    #: further products: (array path in the output group, (H, W)), rendered by the same tiles
    products: tuple[tuple[str, tuple[int, int]], ...] = ()
    product_grid: int = 256  # the write grid (chunk or shard) the product windows snap to
    fail_after: int | None = field(default=None, compare=False)  # test hook: crash after N tiles
    tile_delay: float = field(default=0.0, compare=False)  # test hook: seconds of sleep per tile


class Worker(Protocol):
    """What executors call: ``Worker(job)`` loads the model once; ``process`` runs one tile."""

    def __init__(self, job: Any) -> None: ...

    def process(self, tile: Tile, trusted: dict[str, Any] | None = None) -> dict[str, Any]:
        """The tile's record (at least ``out_pixels``; ``verified`` when only checked)."""

    def pid(self) -> int:
        """The hosting process (tests kill it)."""

    def close(self) -> None:
        """Release the inputs."""


def default_device() -> Any:
    """The accelerator torch finds (CUDA, ROCm, XPU, MPS), else the CPU."""
    import torch

    acc = torch.accelerator.current_accelerator(check_available=True)
    return acc if acc is not None else torch.device("cpu")


def raw_digest(raw: np.ndarray) -> str:
    """blake2b-128 of an input window's native values (shape and dtype included)."""
    h = hashlib.blake2b(f"{raw.shape}|{raw.dtype}".encode(), digest_size=16)
    h.update(np.ascontiguousarray(raw).tobytes())
    return h.hexdigest()


def _invalid(source: Source, raw: np.ndarray, nodata: float | None, rows: tuple[int, int],
             cols: tuple[int, int]) -> np.ndarray:
    """Invalid pixels of a window: nodata / NaN / inf, and transparent ones (alpha 0)."""
    invalid = invalid_mask(raw, nodata)
    valid = source.read_valid(rows, cols)
    return invalid if valid is None else invalid | ~valid


def read_unit(source: Source, window: Window, value_range: tuple[float, float],
              nodata: float | None, raw: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """``(unit (C, h, w) float32, invalid (h, w) bool)`` for ``window`` of ``source`` (``raw``:
    the window's native values when already read).

    Invalid pixels (nodata, NaN, inf; transparent ones where the source has an alpha mask) are
    filled by :func:`pipeline.io.values.fill_invalid` from a
    window read ``FILL_PASSES`` pixels wider (clamped to the image), so the filled values equal
    a whole-image fill and tiles stay exact.
    """
    w = window
    if raw is None:
        raw = source.read((w.row0, w.row1), (w.col0, w.col1))
    invalid = _invalid(source, raw, nodata, (w.row0, w.row1), (w.col0, w.col1))
    if not invalid.any():
        return to_unit(raw, value_range), invalid
    _, h, wd = source.shape
    p = FILL_PASSES
    r0, r1 = max(0, w.row0 - p), min(h, w.row1 + p)
    c0, c1 = max(0, w.col0 - p), min(wd, w.col1 + p)
    wide = source.read((r0, r1), (c0, c1))
    filled = fill_invalid(to_unit(wide, value_range),
                          _invalid(source, wide, nodata, (r0, r1), (c0, c1)))
    return filled[:, w.row0 - r0:w.row1 - r0, w.col0 - c0:w.col1 - c0], invalid


class BaseTileWorker:
    """Hosts one model; ``process(tile)`` computes one tile and returns a small record.

    Subclasses load their model in :meth:`load_model`, may read more inputs for a tile in
    :meth:`read_more` (TTSR: its reference window), and decode a window in :meth:`infer`.

    ``process`` is thread-safe and the executors call it from ``job.depth`` threads at once:
    reading the next tiles' input windows and writing finished tiles' chunks happen while
    the model computes, and only the model step is serialised (one model, one device). A
    worker then holds at most ``depth`` tiles: ``depth x (input window + output tile)`` bytes
    plus the model's activations for one tile.
    """

    def __init__(self, job: TileJob) -> None:
        import torch

        if job.threads:
            torch.set_num_threads(job.threads)
        self.job = job
        self.device = torch.device(job.device) if job.device else default_device()
        self.model = self.load_model()
        self.source = open_source(job.source)
        self.output = ZarrOutput(job.output_uri, job.output_storage_options)
        self.products = [(self.output.product(path), (int(shape[0]), int(shape[1])))
                         for path, shape in job.products]
        self.groups = band_groups(self.source.shape[0])
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.done = 0
        self._compute_lock = threading.Lock()
        self._count_lock = threading.Lock()
        _configure_zarr(job.zarr_concurrency)

    def load_model(self) -> Any:
        from liif import load_model

        return load_model(self.job.model, device=self.device)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.source.close()

    def read_more(self, tile: Tile) -> Any:
        """Family-specific inputs of ``tile`` read before the model step (default none); the
        result is passed to :meth:`infer`."""
        return None

    def infer(self, tile: Tile, unit: np.ndarray, more: Any = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """The tile's output in [0, 1] ``(C, th, tw)`` float from its filled input window
        ``unit (C, ih, iw)`` (and :meth:`read_more`'s ``more``), plus extra record fields."""
        raise NotImplementedError

    def infer_targets(self, window: Window, unit: np.ndarray,
                      targets: list[tuple[Window, tuple[int, int]]]
                      ) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Several outputs from one pass over ``unit`` (input ``window``): for each target
        ``(out window, out shape)`` its ``(C, th, tw)`` in [0, 1]. Families that render several
        sizes from one encoding (LIIF) implement it; the others refuse products."""
        raise NotImplementedError(f"{type(self).__name__} renders one output size per job")

    def upscale_window(self, tile: Tile) -> np.ndarray:
        """The output of ``tile`` ``(C, th, tw)`` in the output dtype, nodata applied."""
        read = self._read(tile)
        outs, _ = self._infer(tile, read)
        return self._finish(read, tile.out_window, self.job.out_shape, outs[0])[0]

    def _targets(self, tile: Tile) -> list[tuple[ZarrOutput, Window, tuple[int, int]]]:
        """Every output this tile writes: the primary's window, then each product's (if not
        empty)."""
        job = self.job
        out = [(self.output, tile.out_window, job.out_shape)]
        for output, shape in self.products:
            w = product_window(tile.out_window, job.out_shape, shape, job.product_grid)
            if w.size:
                out.append((output, w, shape))
        return out

    def read_window(self, tile: Tile) -> Window:
        """The input window the tile reads: its own, widened to what its products need."""
        iw = tile.in_window
        for _, w, shape in self._targets(tile)[1:]:
            pw = window_input(self.job.in_shape, shape, w, self.job.halo)
            iw = Window(min(iw.row0, pw.row0), max(iw.row1, pw.row1),
                        min(iw.col0, pw.col0), max(iw.col1, pw.col1))
        return iw

    def input_digests(self, tile: Tile) -> dict[str, str]:
        """Digests of the input windows ``tile`` reads now (compared with its record's)."""
        iw = self.read_window(tile)
        return {"input": raw_digest(self.source.read((iw.row0, iw.row1), (iw.col0, iw.col1)))}

    def _read(self, tile: Tile) -> tuple[np.ndarray, np.ndarray, str, Any, Window]:
        """Stage 1 (I/O): ``(unit, invalid, input digest, more, window read)``."""
        job = self.job
        iw = self.read_window(tile) if self.products else tile.in_window
        raw = self.source.read((iw.row0, iw.row1), (iw.col0, iw.col1))
        unit, invalid = read_unit(self.source, iw, job.value_range,
                                  None if job.masked_only else job.nodata, raw)
        return unit, invalid, raw_digest(raw), self.read_more(tile), iw

    def _infer(self, tile: Tile, read: tuple[np.ndarray, np.ndarray, str, Any, Window]
               ) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Stage 2 (the model, one tile at a time): the output of every target, in [0, 1]."""
        unit, _, digest, more, window = read
        t0 = time.perf_counter()
        with self._compute_lock:
            t1 = time.perf_counter()
            if self.products:
                targets = [(w, shape) for _, w, shape in self._targets(tile)]
                outs, extra = self.infer_targets(window, unit, targets)
            else:
                merged, extra = self.infer(tile, unit, more)
                outs = [merged]
        extra["wait_s"] = round(t1 - t0, 4)  # waiting for the model (busy with another tile)
        extra["inputs"] = {"input": digest, **extra.pop("inputs", {})}
        return outs, extra

    def _finish(self, read: tuple[np.ndarray, np.ndarray, str, Any, Window], ow: Window,
                out_shape: tuple[int, int], merged: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Stage 2b: output dtype, nodata mask, nudge off nodata; ``(data, nudged values,
        nodata pixels)`` of output window ``ow`` of an ``out_shape`` output."""
        job, invalid, iw = self.job, read[1], read[4]
        data = from_unit(merged, np.dtype(job.out_dtype), job.value_range)
        bad = np.zeros(ow.shape, dtype=bool)
        if invalid.any():
            (h, w), (H, W) = job.in_shape, out_shape
            uy = output_positions(h, H, ow.row0, ow.row1) - iw.row0
            ux = output_positions(w, W, ow.col0, ow.col1) - iw.col0
            bad = upsample_mask(invalid, uy, ux)
            mask_output(data, bad, job.nodata)
        nudged = nudge_off_nodata(data, ~bad, job.nodata, job.value_range)
        return data, nudged, int(bad.sum())

    def _write(self, tile: Tile, output: ZarrOutput, ow: Window, data: np.ndarray
               ) -> dict[str, str]:
        """Stage 3 (I/O): whole chunks (shards) of ``tile``'s window ``ow`` of ``output``;
        their digests."""
        rows, cols = (ow.row0, ow.row1), (ow.col0, ow.col1)
        try:
            return output.write(rows, cols, data)
        except (ValueError, RuntimeError, OSError):
            # a shard torn by an interrupted write cannot be read back for the rewrite
            if not output.clear(rows, cols):
                raise
            return output.write(rows, cols, data)

    def _verified(self, tile: Tile, trusted: dict[str, Any]) -> str | None:
        """None when the finished tile's chunks (and, with ``verify_inputs``, the input windows
        it read) still match its record; else why not (``chunks`` or ``input``), after
        forgetting the record and clearing its chunks."""
        targets = self._targets(tile)
        recorded = [trusted.get("digests")] + [
            ((trusted.get("products") or {}).get(out.array) or {}).get("digests")
            for out, _, _ in targets[1:]]
        bad: list[str] = []
        for (out, w, _), digests in zip(targets, recorded, strict=True):
            bad += (out.verify((w.row0, w.row1), (w.col0, w.col1), digests)
                    if isinstance(digests, dict) and digests else ["<no digests recorded>"])
            if bad:
                break
        why = "chunks" if bad else None
        if not bad and self.job.verify_inputs:
            # keep the tile only if what it read (its window with the halo) still reads the same
            why = None if self.input_digests(tile) == trusted.get("inputs") else "input"
        if why:
            self.output.manifest.forget(tile.key)
            for out, w, _ in targets:
                out.clear((w.row0, w.row1), (w.col0, w.col1))
        return why

    def process(self, tile: Tile, trusted: dict[str, Any] | None = None) -> dict[str, Any]:
        """Compute, write and record ``tile``; with ``trusted`` (its record from an earlier
        run), first verify its stored chunks and return that record when they match. The
        record holds the stage times ``read_s``, ``compute_s``, ``write_s`` and ``wait_s`` (time
        spent waiting for the model while it computed another tile); with products, each
        product's window and digests under ``products``."""
        t0 = time.perf_counter()
        ow = tile.out_window
        why = None if trusted is None else self._verified(tile, trusted)
        if trusted is not None and why is None:
            return {**trusted, "out_pixels": ow.size, "verified": True}
        read = self._read(tile)
        t1 = time.perf_counter()
        outs, extra = self._infer(tile, read)
        targets = self._targets(tile)
        finished = [self._finish(read, w, shape, merged)
                    for (_, w, shape), merged in zip(targets, outs, strict=True)]
        extra["nudged"], extra["nodata_pixels"] = finished[0][1], finished[0][2]
        t2 = time.perf_counter()
        digests = [self._write(tile, out, w, data)
                   for (out, w, _), (data, _, _) in zip(targets, finished, strict=True)]
        if self.job.tile_delay:
            time.sleep(self.job.tile_delay)
        t3 = time.perf_counter()
        compute = t2 - t1 - float(extra.get("wait_s", 0.0))
        record = {"key": tile.key, "out_window": ow.to_dict(), "seconds": round(t3 - t0, 4),
                  "read_s": round(t1 - t0, 4), "compute_s": round(compute, 4),
                  "write_s": round(t3 - t2, 4), "worker": self.name, "out_pixels": ow.size,
                  "in_pixels": read[4].size, **extra, "digest": "blake2b-128",
                  "digests": digests[0]}
        if self.products:
            record["products"] = {
                out.array: {"out_window": w.to_dict(), "digests": d, "nudged": f[1],
                            "nodata_pixels": f[2], "out_pixels": w.size}
                for (out, w, _), d, f in zip(targets[1:], digests[1:], finished[1:],
                                             strict=True)}
        self.output.manifest.mark_done(tile.key, record)
        with self._count_lock:
            self.done += 1
            crash = self.job.fail_after is not None and self.done >= self.job.fail_after
        if crash:
            os._exit(17)  # simulate a crash after the tile is written (tests only)
        return {**record, "redone": trusted is not None, **({"redone_why": why} if why else {})}


def _configure_zarr(concurrency: int | None) -> None:
    """Bound zarr's async operations in this process (zarr 3.1.4 raised its default to 64,
    which N workers per node multiply)."""
    if concurrency:
        import zarr

        zarr.config.set({"async.concurrency": int(concurrency)})
