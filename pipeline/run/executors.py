"""Executors run work items on tile workers: in this process, or on a Ray actor pool
(:mod:`pipeline.run.ray_executor`). Both take ``(tile, trusted record or None)`` items and a
:class:`pipeline.run.progress.Progress`, and return the tiles' records."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterable, Iterator
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
    """One worker in this process (notebooks, GPU benchmarks without Ray, tests), fed from
    ``job.depth`` threads so that reads and writes overlap the model step; at most ``depth``
    tiles are in flight. ``depth == 1`` is the plain sequential loop."""

    name = "in-process"

    def __init__(self, job: TileJob, worker_cls: type[Worker]) -> None:
        self.worker = worker_cls(job)
        self.depth = max(1, int(getattr(job, "depth", 1) or 1))

    def run(self, work: Iterable[WorkItem], progress: Progress, *, lease: Any = None
            ) -> list[dict[str, Any]]:
        items = iter(work)
        if self.depth == 1:
            records = []
            for tile, trusted in items:
                if lease is not None:
                    lease.check()
                rec = self.worker.process(tile, trusted)
                progress.update(rec["out_pixels"], verified=bool(rec.get("verified")))
                records.append(rec)
            return records
        return _run_threaded(self.worker, items, self.depth, progress, lease)

    def close(self) -> None:
        self.worker.close()


def _run_threaded(worker: Worker, items: Iterator[WorkItem], depth: int, progress: Progress,
                  lease: Any) -> list[dict[str, Any]]:
    """``worker.process`` on at most ``depth`` items at once; records in completion order. The
    first error stops new submissions and is raised after the running ones finish."""
    records: list[dict[str, Any]] = []
    with cf.ThreadPoolExecutor(max_workers=depth, thread_name_prefix="tile") as pool:
        pending: set[cf.Future[dict[str, Any]]] = set()
        failure: BaseException | None = None
        exhausted = False
        while pending or not exhausted:
            while not exhausted and failure is None and len(pending) < depth:
                item = next(items, None)
                if item is None:
                    exhausted = True
                    break
                if lease is not None:
                    lease.check()
                pending.add(pool.submit(worker.process, *item))
            if not pending:
                break
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                try:
                    rec = fut.result()
                except BaseException as exc:  # re-raised below, the first one wins
                    failure = failure or exc
                    exhausted = True
                    continue
                progress.update(rec["out_pixels"], verified=bool(rec.get("verified")))
                records.append(rec)
        if failure is not None:
            raise failure
    return records


def make_executor(cfg: Any, job: TileJob, worker_cls: type[Worker]) -> Executor:
    """The in-process executor or a Ray actor pool hosting ``worker_cls``, per ``cfg.executor``
    (a :class:`pipeline.run.options.ExecutionOptions`)."""
    if cfg.executor == "in-process":
        return InProcessExecutor(job, worker_cls)
    from pipeline.run.ray_executor import RayExecutor, ensure_ray

    ensure_ray(cfg.ray_address)
    return RayExecutor(job, workers=cfg.workers, gpus_per_worker=cfg.gpus_per_worker,
                       worker_cls=worker_cls)
