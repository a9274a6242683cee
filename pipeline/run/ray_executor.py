"""The Ray executor: a pool of model-hosting actors fed tiles with backpressure.

Each actor (a family's worker class, the same as in-process) loads the model once, reads its own
input windows and writes its own output chunks; tasks return small records. Actors restart after a
crash and their tasks are retried, so a killed worker does not fail the job; tile writes are
idempotent (whole chunks, same values), so a retried tile gives the same output.
:func:`ray_map` is the plain task fan-out other jobs use (ground truth).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pipeline.errors import PipelineError
from pipeline.geometry.tiling import Tile
from pipeline.run.progress import Progress
from pipeline.run.worker import TileJob, Worker

RAY_ENV_DEFAULTS = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # single-node clusters stay on 127.0.0.1
    "RAY_USAGE_STATS_ENABLED": "0",
}


def ensure_ray(address: str | None = None, num_cpus: int | None = None, *,
               connect_timeout: float = 10.0) -> None:
    """Connect to ``address`` (or RAY_ADDRESS, as ``ray job submit`` sets it), else start a
    fresh local Ray.

    Without an address this never joins a cluster left over from ``ray start`` (whose stale
    ``/tmp/ray/ray_current_cluster`` once made a plain run hang for minutes): it starts a new
    local instance (``address="local"``). With one, an address that does not answer within
    ``connect_timeout`` seconds is an error naming it.

    Raises:
        pipeline.errors.ConfigError: the address does not answer.
    """
    for k, v in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    import ray

    if address:
        _probe(address, connect_timeout)  # an explicit address must answer, connected or not
    if ray.is_initialized():
        return
    addr = address or os.environ.get("RAY_ADDRESS")
    if addr:
        _probe(addr, connect_timeout)
        ray.init(address=addr, log_to_driver=True)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 log_to_driver=True)


def _probe(address: str, timeout: float) -> None:
    """Fail fast, naming the address, when nothing listens at ``host:port`` of ``address``."""
    import socket
    from urllib.parse import urlparse

    from pipeline.errors import ConfigError

    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    if parsed.scheme in ("http", "https"):
        raise ConfigError(
            f"Ray address {address!r} is a dashboard URL: give the GCS address (host:6379, as "
            "`ray start --head` prints) or ray://host:10001, or submit with `ray job submit "
            f"--address {address}`")
    if parsed.hostname is None or parsed.port is None:
        return
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(
            f"no Ray cluster answers at {address!r} ({exc}); start it (ray start --head) or "
            "drop --address / RAY_ADDRESS to run on a fresh local Ray") from exc


class RayExecutor:
    """``workers`` actors; ``gpus_per_worker`` > 0 puts each on a GPU share, else CPU threads.

    Each actor is a threaded actor running up to ``job.depth`` tiles at once (its reads and
    writes overlap its model step, see :class:`pipeline.run.worker.BaseTileWorker`). Tiles go
    to the actor with the most free capacity (``ray.wait`` on any finished tile), never more
    than ``depth`` per actor, so a slow or restarting actor does not hold a queue while others
    idle, and a restarted actor gets work as soon as it finishes its retried tiles.
    """

    name = "ray"

    def __init__(self, job: TileJob, *, workers: int, gpus_per_worker: float = 0.0,
                 cpus_per_worker: float | None = None, max_restarts: int = 3,
                 max_task_retries: int = 3, worker_cls: type[Worker]) -> None:
        import ray

        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        threads = job.threads
        if cpus_per_worker is None:
            cpus_per_worker = 1.0 if gpus_per_worker else float(threads or 1)
        self.depth = max(1, int(getattr(job, "depth", 1) or 1))
        remote_cls = ray.remote(worker_cls).options(
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=max_restarts,
            max_task_retries=max_task_retries, max_concurrency=self.depth)
        self.actors: list[Any] = [remote_cls.remote(job) for _ in range(workers)]
        self._ray = ray

    def pids(self) -> list[int]:
        return self._ray.get([a.pid.remote() for a in self.actors])

    def run(self, work: Iterable[tuple[Tile, dict[str, Any] | None]], progress: Progress, *,
            lease: Any = None) -> list[dict[str, Any]]:
        """Feed ``(tile, trusted record or None)`` items to the actors with free capacity; a
        worker's PipelineError (a corrupt input, say) is raised here as itself."""
        ray = self._ray
        from ray.exceptions import RayTaskError

        # largest tiles first, each to the actor with the least work in flight (in pixels, a
        # tile to verify counting a tenth): with few tiles per actor the totals stay even
        items = sorted(work, key=lambda it: -_weight(*it))
        queue: deque[tuple[Tile, dict[str, Any] | None]] = deque(items)
        count = [0] * len(self.actors)
        work_px = [0.0] * len(self.actors)
        pending: dict[Any, tuple[int, float]] = {}
        records = []
        while queue or pending:
            if lease is not None:
                lease.check()
            while queue:
                open_ = [i for i in range(len(count)) if count[i] < self.depth]
                if not open_:
                    break
                free = min(open_, key=lambda i: (work_px[i], count[i]))
                tile, trusted = queue.popleft()
                weight = _weight(tile, trusted)
                pending[self.actors[free].process.remote(tile, trusted)] = (free, weight)
                count[free] += 1
                work_px[free] += weight
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                who, weight = pending.pop(ref)
                count[who] -= 1
                work_px[who] -= weight
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


def _weight(tile: Tile, trusted: dict[str, Any] | None) -> float:
    """The expected cost of a work item, in output pixels (verifying is about a tenth)."""
    return tile.out_window.size * (0.1 if trusted is not None else 1.0)


def ray_map(fn: Callable[[Any], Any], items: list[Any], *, max_in_flight: int,
            cpus_per_task: float = 1.0, max_retries: int = 2) -> Iterator[tuple[int, Any]]:
    """``fn`` over ``items`` as Ray tasks, at most ``max_in_flight`` at once; yields
    ``(item index, result)`` as they finish. ``max_in_flight == 0`` runs in this process, in
    order (no Ray)."""
    if max_in_flight == 0:
        for i, item in enumerate(items):
            yield i, fn(item)
        return
    import ray

    remote = ray.remote(num_cpus=cpus_per_task, max_retries=max_retries)(fn)
    pending: dict[Any, int] = {}
    nxt = 0
    while nxt < len(items) or pending:
        while nxt < len(items) and len(pending) < max_in_flight:
            pending[remote.remote(items[nxt])] = nxt
            nxt += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            yield pending.pop(ref), ray.get(ref)
