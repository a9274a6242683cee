"""The tile worker: one model, many tiles. The in-process and Ray executors both host this class.

For each tile it reads its own input window (with halo), decodes its output window in the global
frame, and writes whole output chunks itself; only a small record travels back to the driver.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.sinks import ZarrOutput
from pipeline.sources import SourceSpec, open_source
from pipeline.tiling import Tile, output_positions
from pipeline.values import (
    band_groups,
    from_unit,
    merge_groups,
    nodata_mask,
    to_unit,
    upsample_mask,
)


@dataclass(frozen=True)
class TileJob:
    """Everything a worker needs, small and picklable (no arrays, no open handles)."""

    source: SourceSpec
    output_uri: str
    output_storage_options: dict | None
    model: str
    in_shape: tuple[int, int]
    out_shape: tuple[int, int]
    value_range: tuple[float, float]
    out_dtype: str
    nodata: float | None = None
    precision: str = "fp32"
    chunk_pixels: int = 4096
    device: str | None = None
    threads: int | None = None
    fail_after: int | None = field(default=None, compare=False)  # test hook: crash after N tiles


class TileWorker:
    """Hosts one model; ``process(tile)`` upscales one tile and returns a small record."""

    def __init__(self, job: TileJob) -> None:
        import torch

        from liif import load_model

        if job.threads:
            torch.set_num_threads(job.threads)
        self.job = job
        device = job.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        self.model = load_model(job.model, device=self.device)
        self.source = open_source(job.source)
        self.output = ZarrOutput(job.output_uri, job.output_storage_options)
        self.groups = band_groups(self.source.shape[0])
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.done = 0

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.source.close()

    def upscale_window(self, tile: Tile) -> np.ndarray:
        """The decoded output of ``tile`` ``(C, th, tw)`` in the output dtype (nodata applied)."""
        import torch

        from liif.infer import decode, normalize

        job, iw, ow = self.job, tile.in_window, tile.out_window
        raw = self.source.read((iw.row0, iw.row1), (iw.col0, iw.col1))
        unit = torch.from_numpy(to_unit(raw, job.value_range)).to(self.device)
        outs = []
        with torch.inference_mode():
            for g in self.groups:
                img = normalize(unit[list(g)]).unsqueeze(0)
                feat = self.model.encode(img)
                pred = decode(self.model, feat, in_shape=job.in_shape, out_shape=job.out_shape,
                              rows=(ow.row0, ow.row1), cols=(ow.col0, ow.col1),
                              offset=(iw.row0, iw.col0), chunk_pixels=job.chunk_pixels,
                              precision=job.precision)[0]
                outs.append((pred * 0.5 + 0.5).clamp_(0, 1).cpu().numpy())
        merged = merge_groups(outs, self.groups, tuple(range(self.source.shape[0])))
        data = from_unit(merged, np.dtype(job.out_dtype), job.value_range)
        if job.nodata is not None:
            mask = nodata_mask(raw, job.nodata)
            if mask.any():
                (h, w), (H, W) = job.in_shape, job.out_shape
                uy = output_positions(h, H, ow.row0, ow.row1) - iw.row0
                ux = output_positions(w, W, ow.col0, ow.col1) - iw.col0
                data[:, upsample_mask(mask, uy, ux)] = job.nodata
        return data

    def process(self, tile: Tile) -> dict[str, Any]:
        t0 = time.perf_counter()
        ow = tile.out_window
        self.output.write((ow.row0, ow.row1), (ow.col0, ow.col1), self.upscale_window(tile))
        seconds = time.perf_counter() - t0
        record = {"key": tile.key, "out_window": ow.to_dict(), "seconds": round(seconds, 4),
                  "worker": self.name, "out_pixels": ow.size, "in_pixels": tile.in_window.size}
        self.output.manifest.mark_done(tile.key, record)
        self.done += 1
        if self.job.fail_after is not None and self.done >= self.job.fail_after:
            os._exit(17)  # simulate a crash after the tile is written (tests only)
        return record
