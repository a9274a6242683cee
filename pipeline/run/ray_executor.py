"""The Ray executor: a pool of model-hosting actors fed tiles with backpressure.

Each actor (``TileWorker``, the same class as in-process) loads the model once, reads its own input
windows and writes its own output chunks; tasks return small records. Actors restart after a
crash and their tasks are retried, so a killed worker does not fail the job; tile writes are
idempotent (whole chunks, same values), so a retried tile gives the same output.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable
from typing import Any

from pipeline.errors import PipelineError
from pipeline.geometry.tiling import Tile
from pipeline.run.progress import Progress
from pipeline.run.worker import TileJob, TileWorker

RAY_ENV_DEFAULTS = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # single-node clusters stay on 127.0.0.1
    "RAY_USAGE_STATS_ENABLED": "0",
}


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or RAY_ADDRESS / the job's cluster), else start a local Ray."""
    for k, v in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    import ray

    if ray.is_initialized():
        return
    addr = address or os.environ.get("RAY_ADDRESS")
    if addr:
        ray.init(address=addr, log_to_driver=True)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)


class RayExecutor:
    """``workers`` actors; ``gpus_per_worker`` > 0 puts each on a GPU share, else CPU threads."""

    name = "ray"

    def __init__(self, job: TileJob, *, workers: int, gpus_per_worker: float = 0.0,
                 cpus_per_worker: float | None = None, in_flight_per_worker: int = 2,
                 max_restarts: int = 3, max_task_retries: int = 3,
                 worker_cls: type | None = None) -> None:
        import ray

        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        threads = job.threads
        if cpus_per_worker is None:
            cpus_per_worker = 1.0 if gpus_per_worker else float(threads or 1)
        # worker_cls: any class with the TileWorker interface (default TileWorker)
        remote_cls = ray.remote(worker_cls or TileWorker).options(
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=max_restarts,
            max_task_retries=max_task_retries)
        self.actors = [remote_cls.remote(job) for _ in range(workers)]
        self.in_flight = in_flight_per_worker * workers
        self._ray = ray

    def pids(self) -> list[int]:
        return self._ray.get([a.pid.remote() for a in self.actors])

    def run(self, work: Iterable[tuple[Tile, dict[str, Any] | None]], progress: Progress, *,
            lease: Any = None) -> list[dict[str, Any]]:
        """Feed ``(tile, trusted record or None)`` items to the actors, at most ``in_flight`` at
        a time; a worker's PipelineError (a corrupt input, say) is raised here as itself."""
        ray = self._ray
        from ray.exceptions import RayTaskError

        queue, pending, records = deque(work), {}, []
        turn = 0
        while queue or pending:
            if lease is not None:
                lease.check()
            while queue and len(pending) < self.in_flight:
                tile, trusted = queue.popleft()
                actor = self.actors[turn % len(self.actors)]
                turn += 1
                pending[actor.process.remote(tile, trusted)] = tile
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.pop(ref)
                try:
                    rec = ray.get(ref)
                except RayTaskError as exc:
                    if isinstance(exc.cause, PipelineError):
                        raise exc.cause from None
                    raise
                progress.update(rec["out_pixels"], verified=bool(rec.get("verified")))
                records.append(rec)
        return records

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
