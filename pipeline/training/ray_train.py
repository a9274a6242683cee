"""Distributed LIIF training with Ray Train (V2 API): DDP over ``TorchTrainer`` workers.

The loop is :func:`liif.loop.run_loop` and the step :func:`liif.train.liif_step`, the same as the
local backend's; this module only adds the distribution:

* data: GT Parquet shards (``pipeline.gt``) as a Ray Dataset, each worker reading its
  ``get_dataset_shard("train")`` and turning rows into batches with
  :func:`liif.pairs.batch_from_pairs`; or the on-the-fly :class:`liif.data.ImageFolderSampler`,
  seeded per rank;
* ``prepare_model`` (DDP; gloo on CPU, NCCL on GPU), optional AMP (bf16/fp16) and clipping;
* every rank calls ``ray.train.report`` at the same steps; rank 0 attaches a checkpoint
  directory in our format (``model.safetensors``), plus ``trainer.pt`` (optimizer, scheduler,
  scaler, step) and ``metrics.csv`` (the whole history), so a rerun with the same
  ``RunConfig(name, storage_path)`` resumes where it stopped;
* validation PSNR on a Set5/B100 subset on rank 0 at checkpoints (when the data exists);
* the final weights exported to ``<storage>/<run>/final.safetensors`` (+ ``metrics.csv``),
  loadable by ``liif.load_model``.

``batch_size`` is per worker: a step sees ``batch_size * workers`` samples.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from liif.loop import (
    FINAL_FILE,
    METRICS_FILE,
    MODEL_FILE,
    check_folder_path,
    load_run,
    read_metrics,
    run_loop,
    save_run,
)
from liif.train import TrainConfig, liif_step, make_training, progress_line
from pipeline.errors import ConfigError
from pipeline.io.jsontext import json_line
from pipeline.training.data import (
    GT_COLUMNS,
    benchmark_validation,
    check_image_folders,
    check_validation_data,
    gt_shards,
)

__all__ = ["GT_COLUMNS", "RayTrainOptions", "read_final_metrics", "run_training",
           "storage_filesystem", "summary_json", "train_loop_per_worker"]



@dataclass(frozen=True)
class RayTrainOptions:
    """How to distribute a run (the model/optimizer recipe is a :class:`TrainConfig`).

    Attributes:
        workers: Ray Train workers (DDP ranks).
        use_gpu: one GPU per worker (NCCL); else CPU workers (gloo).
        cpus_per_worker: CPUs reserved per worker.
        storage_path: local directory or ``s3://bucket/prefix`` holding ``<run_name>/``.
        run_name: the run; the same name and storage resume the run.
        s3_endpoint: ``http(s)://host:port`` of an S3-compatible store (MinIO, moto); its
            credentials come from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``.
        max_failures: worker-group restarts Ray Train may make (each resumes the checkpoint).
        num_to_keep: checkpoints kept (``None``: all).
        val_root: data root holding ``benchmark/<val_set>/HR`` (validation skipped if absent).
        val_set, val_images, val_scales: the validation subset.
        shuffle_buffer: rows in each worker's local shuffle buffer (GT data; 0: none).
        augment: random flips/transposes of GT pairs.
        materialize_gt_bytes: GT shards up to this size are read once into the object store
            (``Dataset.materialize``) instead of being re-read every epoch (0: never).
    """

    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = "runs/ray"
    run_name: str = "liif"
    s3_endpoint: str | None = None
    max_failures: int = 0
    num_to_keep: int | None = 2
    val_root: str | None = None
    val_set: str = "Set5"
    val_images: int = 3
    val_scales: tuple[int, ...] = (2, 4)
    shuffle_buffer: int = 64
    augment: bool = True
    materialize_gt_bytes: int = 512 * 2**20

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers must be a positive integer, got {self.workers!r}")
        if not self.cpus_per_worker > 0:
            raise ConfigError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        if not self.run_name or "/" in self.run_name or self.run_name.startswith("."):
            raise ConfigError(f"run_name {self.run_name!r} must be a plain name (no '/')")
        if not self.storage_path:
            raise ConfigError("storage_path must not be empty")
        if self.max_failures < -1:
            raise ConfigError(f"max_failures must be >= -1, got {self.max_failures!r}")
        if self.num_to_keep is not None and self.num_to_keep < 1:
            raise ConfigError(f"num_to_keep must be >= 1 or None, got {self.num_to_keep!r}")
        if self.s3_endpoint is not None:
            u = urlparse(self.s3_endpoint)
            if u.scheme not in ("http", "https") or not u.netloc:
                raise ConfigError(f"s3_endpoint {self.s3_endpoint!r} must look like "
                                  "http://host:port")
            if not self.storage_path.startswith("s3://"):
                raise ConfigError(f"s3_endpoint needs an s3:// storage_path, got "
                                  f"{self.storage_path!r}")


# ------------------------------------------------------------------------------- storage


def storage_filesystem(options: RayTrainOptions) -> tuple[Any, str]:
    """``(pyarrow filesystem or None, storage path)`` for ``RunConfig``.

    ``s3://`` with an endpoint gives an explicit filesystem and a ``bucket/prefix`` path; without
    one Ray resolves the URI itself (credentials from the usual AWS variables); local paths are
    made absolute. The endpoint filesystem is s3fs (the client the sources and sinks use) wrapped
    for pyarrow: it writes small objects with one PUT. ``pyarrow.fs.S3FileSystem`` always
    completes a multipart upload, which moto before the fix of getmoto/moto#10055 rejects.
    """
    sp = options.storage_path
    if sp.startswith("s3://") and options.s3_endpoint:
        import pyarrow.fs as pafs
        import s3fs

        s3 = s3fs.S3FileSystem(
            endpoint_url=options.s3_endpoint, key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            client_kwargs={"region_name": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")})
        return pafs.PyFileSystem(pafs.FSSpecHandler(s3)), sp[len("s3://"):].rstrip("/")
    if "://" in sp:
        return None, sp.rstrip("/")
    return None, os.path.abspath(os.path.expanduser(sp))


def _resolved_fs(options: RayTrainOptions) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    fs, path = storage_filesystem(options)
    if fs is None:
        fs, path = pafs.FileSystem.from_uri(path)
    return fs, path.rstrip("/")


def _upload(fs: Any, path: str, payload: bytes) -> None:
    """Write ``payload``: temporary name + rename locally, one PUT (atomic) on object stores."""
    import pyarrow.fs as pafs

    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as out:
            out.write(payload)
        return
    tmp = f"{parent}/.{path.rsplit('/', 1)[-1]}.tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(payload)
    fs.move(tmp, path)


# ------------------------------------------------------------------------------ metrics


# --------------------------------------------------------------------------- validation


def _validation(val: dict[str, Any] | None) -> Callable[[nn.Module], dict[str, float]] | None:
    """:func:`pipeline.training.data.benchmark_validation` from the worker config's ``val``."""
    if not val:
        return None
    return benchmark_validation(val.get("root"), val["set"], val["images"], tuple(val["scales"]))


# ---------------------------------------------------------------------------- the loop


def _gt_batches(cfg: TrainConfig, config: dict[str, Any], rank: int, rng: np.random.Generator
                ) -> Iterator[dict[str, torch.Tensor]]:
    import ray.train

    from liif.pairs import batch_from_pairs
    from pipeline.gt import pairs_from_batch

    shard = ray.train.get_dataset_shard("train")
    buffer = int(config.get("shuffle_buffer") or 0)
    epoch = 0
    while True:
        n = 0
        for rows in shard.iter_batches(
                batch_size=cfg.batch_size, batch_format="numpy", drop_last=True,
                local_shuffle_buffer_size=buffer or None,
                local_shuffle_seed=(cfg.seed * 1_000_003 + rank * 10_007 + epoch) if buffer
                else None):
            lr, hr, vr = pairs_from_batch(rows)
            n += 1
            yield batch_from_pairs(lr, hr, cfg.sample_q, rng, value_ranges=vr,
                                   augment=bool(config.get("augment", True)))
        if n == 0:
            raise RuntimeError(
                f"rank {rank}: its GT shard yields no full batch of {cfg.batch_size} rows; the GT "
                "needs at least batch_size * workers samples")
        epoch += 1


def _folder_batches(cfg: TrainConfig, rng: np.random.Generator
                    ) -> Iterator[dict[str, torch.Tensor]]:
    from liif.data import ImageFolderSampler

    if not cfg.data:
        raise ConfigError("no training data: give GT shards or image folders (TrainConfig.data)")
    sampler = ImageFolderSampler(cfg.data, cfg.sampler_config())
    while True:
        yield sampler.batch(cfg.batch_size, rng)


def _all_mean(value: float, world: int, device: torch.device) -> float:
    if world == 1 or not torch.distributed.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item()) / world


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train worker function: :func:`liif.loop.run_loop` with DDP, the rank's data shard,
    ``ray.train.report`` at log steps and a checkpoint (the run-folder layout) at save steps.

    ``config``: ``train`` (a :class:`TrainConfig` as a dict), ``use_gt`` (read the ``"train"``
    dataset shard; else ``train.data`` folders), ``shuffle_buffer``, ``augment``, ``val``
    (``{root, set, images, scales}`` or None), ``run_name``, ``tensorboard_dir`` (or None).
    Returns (rank 0) ``{start_step, step, losses, seconds, samples_per_s, step_time_s}``.
    """
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.from_dict(config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()
    scaler = (torch.amp.GradScaler(device.type) if cfg.amp == "fp16" and device.type != "cpu"
              else None)
    t = make_training(cfg, prepare=ray.train.torch.prepare_model, scaler=scaler)
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as d:
            load_run(Path(d), t)
    start_step = t.step
    rng = np.random.default_rng([cfg.seed, rank, start_step])
    batches = (_gt_batches(cfg, config, rank, rng) if config.get("use_gt")
               else _folder_batches(cfg, rng))
    validate = _validation(config.get("val")) if rank == 0 else None
    writer = _tensorboard(config.get("tensorboard_dir")) if rank == 0 else None
    def on_log(row: dict[str, Any]) -> None:
        if rank == 0:
            print(progress_line(config.get("run_name"), cfg.steps, row), flush=True)
            if writer is not None:
                for k, v in row.items():
                    if k != "step" and isinstance(v, int | float):
                        writer.add_scalar(k, v, row["step"])
        if row["step"] % cfg.save_every and row["step"] != cfg.steps:
            ray.train.report(row)  # every rank reports at the same steps

    def on_save(row: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                save_run(Path(d), t, training={"config": asdict(cfg),
                                               "run": config.get("run_name"), "metrics": row})
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(row, checkpoint=checkpoint,
                             checkpoint_dir_name=f"checkpoint_{row['step']:09d}")

    run = run_loop(t, liif_step(cfg, t), batches, steps=cfg.steps, log_every=cfg.log_every,
                   save_every=cfg.save_every, samples_per_step=cfg.batch_size * world,
                   on_log=on_log, on_save=on_save, validate=validate,
                   reduce=lambda v: _all_mean(v, world, device))
    if writer is not None:
        writer.close()
    return run if rank == 0 else None


def _tensorboard(folder: str | None) -> Any:
    """A TensorBoard writer for ``folder``, or None (no folder, or tensorboard not installed)."""
    if not folder:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(folder)


# ------------------------------------------------------------------------------ driver


def _gt_dataset(gt: str, materialize_bytes: int) -> Any:
    """The training columns of the finished shards of a GT output, as a Ray Dataset."""
    import ray.data

    from pipeline.gt import read_manifest

    gt = gt if "://" in gt else os.path.abspath(gt)
    paths = gt_shards(gt, role="gt")
    ds = ray.data.read_parquet(paths).select_columns(GT_COLUMNS)
    size = sum(int(r["bytes"]) for r in (read_manifest(gt) or {}).get("shards", {}).values())
    return ds.materialize() if 0 < size <= materialize_bytes else ds


def run_training(cfg: TrainConfig, options: RayTrainOptions, *, gt: str | None = None,
                 data: Sequence[str] | None = None, log: Callable[[str], None] | None = None
                 ) -> dict[str, Any]:
    """Train (or resume) ``options.run_name`` under ``options.storage_path`` with Ray Train.

    Data: GT shards (``gt``, a :func:`pipeline.gt.make_gt` output) or image folders (``data``,
    else ``cfg.data``). Returns a JSON-ready summary: ``final`` (the exported weights),
    ``checkpoint``, ``start_step``, ``step``, ``loss_first``/``loss_last``, ``samples_per_s``,
    ``step_time_s``, ``seconds``, ``metrics`` (the last reported).

    Every input is checked before Ray Train creates anything: the image folders
    (:func:`~pipeline.training.data.check_image_folders`), the GT output (finished, with
    shards: :func:`~pipeline.training.data.gt_shards`) and ``options.val_root``.

    Raises:
        ConfigError: both or neither of ``gt`` and folder data, an empty or unfinished GT, image
            folders without images, a validation root without ``benchmark/<set>/HR`` images.
        pipeline.errors.InputNotFoundError: an input that does not exist (or a link to nothing).
        liif.loop.FolderPathError: the local run folder cannot be one (a file or a dangling
            symbolic link in the way).
        ray.train.TrainingFailedError: the run failed more than ``max_failures`` times.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    say = log or (lambda _m: None)
    if gt is not None and data:
        raise ConfigError("give GT shards (gt) or image folders (data), not both")
    folders = tuple(data or (cfg.data if gt is None else ()))
    if folders:
        check_image_folders(folders, role="data")
    if gt is not None:
        gt_shards(gt, role="gt")
    if options.val_root:
        check_validation_data(options.val_root, options.val_set, role="val_root")
    if folders:  # workers may run elsewhere: absolute paths
        cfg = TrainConfig.from_dict({**asdict(cfg), "data": tuple(
            d if "://" in d else os.path.abspath(d) for d in folders)})
    if gt is None and not cfg.data:
        raise ConfigError("no training data: pass gt (GT shards) or data (image folders)")
    fs, storage = storage_filesystem(options)
    tensorboard_dir = None
    if "://" not in storage and fs is None:
        # Ray creates <storage>/<run>/; a file or a dangling link there fails deep inside it
        check_folder_path(os.path.join(storage, options.run_name), role="storage_path/run_name")
        try:
            import tensorboard  # noqa: F401

            tensorboard_dir = os.path.join(storage, options.run_name, "tensorboard")
        except ImportError:
            pass
    loop_config = {
        "train": asdict(cfg), "use_gt": gt is not None, "shuffle_buffer": options.shuffle_buffer,
        "augment": options.augment, "run_name": options.run_name,
        "tensorboard_dir": tensorboard_dir,
        "val": {"root": os.path.abspath(options.val_root), "set": options.val_set,
                "images": options.val_images, "scales": list(options.val_scales)}
        if options.val_root else None,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if options.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=options.workers, use_gpu=options.use_gpu,
            resources_per_worker={"CPU": options.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=options.run_name, storage_path=storage, storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=options.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=options.num_to_keep)),
        datasets={"train": _gt_dataset(gt, options.materialize_gt_bytes)}
        if gt is not None else None,
    )
    t0 = time.perf_counter()
    say(f"training {options.run_name!r}: {options.workers} worker(s), storage {storage}")
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    out = result.return_value or {}
    final = _export_final(result, options)
    losses = out.get("losses") or []
    return {
        "run": options.run_name, "final": final,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "start_step": out.get("start_step"), "step": out.get("step"),
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "samples_per_s": out.get("samples_per_s"), "step_time_s": out.get("step_time_s"),
        "seconds": round(time.perf_counter() - t0, 3), "metrics": result.metrics,
    }


def _export_final(result: Any, options: RayTrainOptions) -> str | None:
    """Copy the latest checkpoint's weights (and metrics) to ``<storage>/<run>/``."""
    if result.checkpoint is None:
        return None
    fs, base = _resolved_fs(options)
    run_dir = f"{base}/{options.run_name}"
    with tempfile.TemporaryDirectory() as d:
        local = Path(result.checkpoint.to_directory(d))
        for name, target in ((MODEL_FILE, FINAL_FILE), (METRICS_FILE, METRICS_FILE)):
            if (local / name).is_file():
                _upload(fs, f"{run_dir}/{target}", (local / name).read_bytes())
    sp = options.storage_path.rstrip("/")
    if "://" in sp:
        return f"{sp}/{options.run_name}/{FINAL_FILE}"
    return f"{run_dir}/{FINAL_FILE}"


def read_final_metrics(options: RayTrainOptions) -> list[dict[str, Any]]:
    """The exported ``metrics.csv`` of a finished run as a list of rows."""
    fs, base = _resolved_fs(options)
    with fs.open_input_stream(f"{base}/{options.run_name}/{METRICS_FILE}") as f:
        text = f.read().decode()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / METRICS_FILE
        path.write_text(text)
        return read_metrics(path)


def summary_json(summary: dict[str, Any]) -> str:
    """One-line JSON of a :func:`run_training` summary."""
    return json_line(summary)
