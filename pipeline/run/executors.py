"""The in-process executor: one tile worker in this process (notebooks, GPU benchmarks, tests)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.geometry.tiling import Tile
from pipeline.run.progress import Progress
from pipeline.run.worker import TileJob, TileWorker

WorkItem = tuple[Tile, dict[str, Any] | None]


class InProcessExecutor:
    """Runs tiles one after another with a single model on one device."""

    name = "in-process"

    def __init__(self, job: TileJob, worker_cls: type | None = None) -> None:
        # worker_cls: a BaseTileWorker subclass (``__init__(job)``, ``process(tile, trusted)``
        # returning a record with "out_pixels", ``close()``); default TileWorker.
        self.worker = (worker_cls or TileWorker)(job)

    def run(self, work: Iterable[WorkItem], progress: Progress, *, lease: Any = None
            ) -> list[dict[str, Any]]:
        """Process ``(tile, trusted record or None)`` items in order; checks ``lease`` between
        tiles."""
        records = []
        for tile, trusted in work:
            if lease is not None:
                lease.check()
            rec = self.worker.process(tile, trusted)
            progress.update(rec["out_pixels"], verified=bool(rec.get("verified")))
            records.append(rec)
        return records

    def close(self) -> None:
        self.worker.close()
