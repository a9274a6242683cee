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

    def __init__(self, job: TileJob, worker_cls: type | None = None) -> None:
        # worker_cls: any class with the TileWorker interface (``__init__(job)``, ``process(tile)``
        # returning a record with "out_pixels", a ``source`` to close); default TileWorker.
        self.worker = (worker_cls or TileWorker)(job)

    def run(self, tiles: Iterable[Tile], progress: Progress) -> list[dict[str, Any]]:
        records = []
        for tile in tiles:
            rec = self.worker.process(tile)
            progress.update(rec["out_pixels"])
            records.append(rec)
        return records

    def close(self) -> None:
        self.worker.close()
