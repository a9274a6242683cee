"""Training jobs on the one loop of :mod:`liif.loop`: the Ray Train backend for LIIF
(:mod:`pipeline.training.ray_train`), TTSR-rec training (:mod:`pipeline.training.ttsr`), the
local backend's data (:mod:`pipeline.training.data`) and YAML configs
(:mod:`pipeline.training.config`).

The names below load on first use (:mod:`pipeline._lazy`): reading a config imports no Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

_EXPORTS = {
    "load_train_config": "pipeline.training.config",
    "GTShardSampler": "pipeline.training.data", "benchmark_validation": "pipeline.training.data",
    "RayTrainOptions": "pipeline.training.ray_train", "run_training": "pipeline.training.ray_train",
    "TTSRTrainConfig": "pipeline.training.ttsr", "train_ttsr": "pipeline.training.ttsr",
}

__all__ = ["GTShardSampler", "RayTrainOptions", "TTSRTrainConfig", "benchmark_validation",
           "load_train_config", "run_training", "train_ttsr"]

if TYPE_CHECKING:
    from pipeline.training.config import load_train_config
    from pipeline.training.data import GTShardSampler, benchmark_validation
    from pipeline.training.ray_train import RayTrainOptions, run_training
    from pipeline.training.ttsr import TTSRTrainConfig, train_ttsr

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
