"""The tile engine: :func:`~pipeline.run.engine.run_job` drives a model family's plan through an
executor (in-process or Ray) onto workers, with options, progress and the worker base.

The names below load on first use (:mod:`pipeline._lazy`): nothing here imports Ray or torch
until it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

_EXPORTS = {
    "ExecutorFactory": "pipeline.run.engine", "JobPlan": "pipeline.run.engine",
    "ModelFamily": "pipeline.run.engine", "Role": "pipeline.run.engine",
    "run_job": "pipeline.run.engine",
    "Executor": "pipeline.run.executors", "InProcessExecutor": "pipeline.run.executors",
    "make_executor": "pipeline.run.executors",
    "ExecutionOptions": "pipeline.run.options", "JobOptions": "pipeline.run.options",
    "OutputOptions": "pipeline.run.options",
    "Progress": "pipeline.run.progress",
    "RayExecutor": "pipeline.run.ray_executor", "ensure_ray": "pipeline.run.ray_executor",
    "ray_map": "pipeline.run.ray_executor",
    "BaseTileWorker": "pipeline.run.worker", "TileJob": "pipeline.run.worker",
    "Worker": "pipeline.run.worker",
}

__all__ = ["BaseTileWorker", "ExecutionOptions", "Executor", "ExecutorFactory", "InProcessExecutor",
           "JobOptions", "JobPlan", "ModelFamily", "OutputOptions", "Progress", "RayExecutor",
           "Role", "TileJob", "Worker", "ensure_ray", "make_executor", "ray_map", "run_job"]

if TYPE_CHECKING:
    from pipeline.run.engine import ExecutorFactory, JobPlan, ModelFamily, Role, run_job
    from pipeline.run.executors import Executor, InProcessExecutor, make_executor
    from pipeline.run.options import ExecutionOptions, JobOptions, OutputOptions
    from pipeline.run.progress import Progress
    from pipeline.run.ray_executor import RayExecutor, ensure_ray, ray_map
    from pipeline.run.worker import BaseTileWorker, TileJob, Worker

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
