"""The in-process executor: one TileWorker in this process (notebooks, GPU benchmarks, tests)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.progress import Progress
from pipeline.tiling import Tile
from pipeline.worker import TileJob, TileWorker


class InProcessExecutor:
    """Runs tiles one after another with a single model on one device."""

    name = "in-process"

    def __init__(self, job: TileJob) -> None:
        self.worker = TileWorker(job)

    def run(self, tiles: Iterable[Tile], progress: Progress) -> list[dict[str, Any]]:
        records = []
        for tile in tiles:
            rec = self.worker.process(tile)
            progress.update(rec["out_pixels"])
            records.append(rec)
        return records

    def close(self) -> None:
        self.worker.source.close()
