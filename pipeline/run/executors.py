"""Executors run work items on tile workers: in this process, or on a Ray actor pool
(:mod:`pipeline.run.ray_executor`). Both take ``(tile, trusted record or None)`` items and a
:class:`pipeline.run.progress.Progress`, and return the tiles' records."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from pipeline.geometry.tiling import Tile
from pipeline.run.progress import Progress
from pipeline.run.worker import TileJob, Worker

__all__ = ["Executor", "InProcessExecutor", "WorkItem", "make_executor"]

WorkItem = tuple[Tile, dict[str, Any] | None]


class Executor(Protocol):
    """Runs work items on workers hosting one model each."""

    name: str

    def run(self, work: Iterable[WorkItem], progress: Progress, *, lease: Any = None
            ) -> list[dict[str, Any]]:
        """Process every item; ``lease.check()`` between items stops a job that lost its lease."""

    def close(self) -> None:
        """Release the workers."""


class InProcessExecutor:
    """Runs tiles one after another with a single worker in this process (notebooks, GPU
    benchmarks without Ray, tests)."""

    name = "in-process"

    def __init__(self, job: TileJob, worker_cls: type[Worker]) -> None:
        self.worker = worker_cls(job)

    def run(self, work: Iterable[WorkItem], progress: Progress, *, lease: Any = None
            ) -> list[dict[str, Any]]:
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


def make_executor(cfg: Any, job: TileJob, worker_cls: type[Worker]) -> Executor:
    """The in-process executor or a Ray actor pool hosting ``worker_cls``, per ``cfg.executor``
    (a :class:`pipeline.run.options.ExecutionOptions`)."""
    if cfg.executor == "in-process":
        return InProcessExecutor(job, worker_cls)
    from pipeline.run.ray_executor import RayExecutor, ensure_ray

    ensure_ray(cfg.ray_address)
    return RayExecutor(job, workers=cfg.workers, gpus_per_worker=cfg.gpus_per_worker,
                       worker_cls=worker_cls)
