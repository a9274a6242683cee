"""``liif train``: LIIF training on the one training loop (:mod:`liif.loop`), resumable by run
name, with Ray Train (DDP, ``--backend ray``, the default) or in this process (``--backend local``).

Examples::

    python -m jobs.train --config jobs/configs/edsr-baseline-liif.yaml --gt out/gt --workers 2 \\
        --storage-path runs --run-name edsr-liif --steps 20000
    python -m jobs.train --backend local --config jobs/configs/edsr-baseline-liif.yaml \\
        --data ../shared/data/train --run-name laptop --steps 2000
    python -m jobs.train --config jobs/configs/edsr-baseline-liif.yaml \\
        --data ../shared/data/train --workers 4 --gpu --set amp=bf16 \\
        --storage-path s3://bucket/runs --run-name big
    python -m jobs.train --smoke-test

Both backends use the folder <storage>/<run>/ (``--storage-path``, ``--run-name``) and the same
checkpoint files (model.safetensors, trainer.pt, metrics.csv; with Ray inside checkpoint_N/
folders). A rerun with the same --storage-path and --run-name resumes from the latest checkpoint;
the final weights land in <storage>/<run>/final.safetensors (usable by liif.load_model and
upscale --model). Every log interval prints step, loss, learning rate, samples/s and ETA.

Every input (--config, --data, --gt, --val-data, --init) is checked before anything is created
or Ray starts: a missing path, a link to nothing, a folder without images, a --gt that is not a
finished make-gt output (its _manifest.json says complete: false: finish it with make-gt
--resume), a --val-data without benchmark/<set>/HR images, are errors (exit 2) naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from liif.checkpoint import bundled_models
from liif.errors import LiifError
from liif.loop import FolderPathError, check_folder_path, make_run_folder
from liif.train import TrainConfig, check_init
from pipeline.errors import ConfigError, PipelineError
from pipeline.io.locations import check_paths, model_files
from pipeline.training.config import load_train_config
from pipeline.training.data import (
    check_image_folders,
    check_input_file,
    check_validation_data,
    gt_shards,
)
from pipeline.training.ray_train import RayTrainOptions, run_training, summary_json

SMOKE_CONFIG = Path(__file__).resolve().parent / "configs" / "smoke.yaml"
RUN_DIR_ROLE = "--storage-path/--run-name"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liif train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("ray", "local"), default="ray",
                   help="ray: Ray Train workers (DDP); local: this process (default ray)")
    p.add_argument("--config", help="YAML file with TrainConfig keys")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--gt", help="ground-truth output of make-gt (Parquet shards + manifest); "
                     "a finished one: an interrupted make-gt is refused until it is finished "
                     "(make-gt --resume)")
    src.add_argument("--data", nargs="+", help="image folders for the on-the-fly sampler")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP ranks; ray)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--storage-path", default="runs",
                   help="folder holding <run-name>/ (ray: also s3://bucket/prefix); default runs")
    p.add_argument("--run-name", default=None, help="run name (default: the config's file name)")
    p.add_argument("--steps", type=int, default=None, help="total steps (overrides the config)")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="fine-tune: start from these weights, a bundled name (edsr-baseline-liif) "
                        "or a checkpoint path (overrides the config's init)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config keys (YAML values), e.g. amp=bf16 batch_size=8")
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint, http://host:port")
    p.add_argument("--max-failures", type=int, default=0, help="worker-group restarts allowed")
    p.add_argument("--keep", type=int, default=2, help="checkpoints kept")
    p.add_argument("--val-data", default=None,
                   help="data root with benchmark/<set>/HR for validation PSNR at checkpoints")
    p.add_argument("--val-set", default="Set5", help="Set5, Set14 or B100")
    p.add_argument("--val-images", type=int, default=3)
    p.add_argument("--smoke-test", action="store_true",
                   help="tiny synthetic data, smoke config, 2 workers: runs in seconds")
    return p


def _config_role(a: argparse.Namespace, key: str) -> str:
    return f"{key} (in --config {a.config!r})"


def _check_inputs(a: argparse.Namespace, cfg: TrainConfig) -> None:
    """Refuse now every training input that the run would fail on, or silently skip, later:
    before the run folder is created and before Ray starts (both backends)."""
    if cfg.init is not None:
        role = "--init" if a.init is not None else _config_role(a, "init")
        init = os.path.expanduser(cfg.init)
        if os.path.lexists(init) or cfg.init not in bundled_models():
            check_input_file(role, init, what="weights file",
                             hint=f"(nor is it a bundled model name: {bundled_models()})")
        try:
            check_init(cfg)
        except (FileNotFoundError, ValueError) as e:  # CheckpointError: unreadable, other model
            raise ConfigError(f"{role} {cfg.init!r}: {e}") from e
    if a.gt:
        gt_shards(a.gt, role="--gt")
    if a.data:
        check_image_folders(a.data, role="--data")
    elif not a.gt and cfg.data and not a.smoke_test:
        check_image_folders(cfg.data, role=_config_role(a, "data"))
    if a.val_data:
        check_validation_data(a.val_data, a.val_set, role="--val-data")


def _train_local(cfg: TrainConfig, a: argparse.Namespace, run_dir: str,
                 gt: str | None) -> dict[str, Any]:
    """The local backend: :func:`liif.train.train` in ``run_dir`` on GT shards or folders.
    The data and the validation images are read before the run folder is created."""
    from liif.data import ImageFolderSampler
    from liif.train import train
    from pipeline.training.data import GTShardSampler, benchmark_validation

    role = "--data" if a.data else _config_role(a, "data")
    if a.data:
        cfg = dataclasses.replace(cfg, data=tuple(a.data))
    cfg = dataclasses.replace(cfg, out_dir=run_dir)
    sampler: Any = GTShardSampler(gt, sample_q=cfg.sample_q, role="--gt") if gt else None
    if sampler is None and not cfg.data:
        raise ConfigError("no training data: give --gt, --data or data in the config")
    if sampler is None:
        try:
            sampler = ImageFolderSampler(cfg.data, cfg.sampler_config())
        except (ValueError, OSError) as e:  # no image large enough; an unreadable image
            raise ConfigError(f"{role} {list(cfg.data)}: {e}") from e
    validate = benchmark_validation(a.val_data, a.val_set, a.val_images)
    make_run_folder(run_dir, role=RUN_DIR_ROLE)
    return {"run": a.run_name, "backend": "local",
            **train(cfg, sampler=sampler, validate=validate,
                    log=lambda m: print(m, file=sys.stderr, flush=True))}


def _smoke_gt(root: Path, workers: int = 2) -> str:
    """Synthetic images -> GT shards (via pipeline.gt, as Ray tasks)."""
    import numpy as np
    from PIL import Image

    from pipeline.gt import GTConfig, make_gt

    rng = np.random.default_rng(0)
    folder = root / "images"
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(4):
        base = 127 + 90 * np.sin(xx / (4 + i)) * np.cos(yy / (5 + i))
        img = np.stack([base, base.T, 255 - base], -1) + rng.normal(0, 3, (64, 64, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"s{i}.png")
    out = str(root / "gt")
    make_gt(GTConfig(inputs=(str(folder),), output=out, patch=32, stride=32,
                     scale_range=(1.0, 2.0), lr_size=16, patches_per_shard=8), workers=workers,
            cpus_per_task=0.5)
    return out


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    tmp = None
    if a.smoke_test:
        a.config = a.config or str(SMOKE_CONFIG)
        a.workers = a.workers if a.workers > 1 else 2
        a.cpus_per_worker = min(a.cpus_per_worker, 0.5)  # leave CPUs to Ray Data's readers
        tmp = tempfile.TemporaryDirectory(prefix="liif-train-smoke-")
        if a.storage_path == p.get_default("storage_path"):
            a.storage_path = str(Path(tmp.name) / "runs")
    if not a.config:
        p.error("--config is required (or use --smoke-test)")
    cfg_path = Path(a.config)
    try:
        check_input_file("--config", a.config, what="YAML config file")
    except PipelineError as e:
        p.error(str(e))
    overrides = list(a.set) + ([f"steps={a.steps}"] if a.steps is not None else [])
    try:
        cfg = load_train_config(cfg_path, overrides)
        if a.init is not None:
            cfg = dataclasses.replace(cfg, init=a.init)
        _check_inputs(a, cfg)
        a.run_name = a.run_name or cfg_path.stem
        options = RayTrainOptions(
            workers=a.workers, use_gpu=a.gpu, cpus_per_worker=a.cpus_per_worker,
            storage_path=a.storage_path, run_name=a.run_name,
            s3_endpoint=a.s3_endpoint, max_failures=a.max_failures, num_to_keep=a.keep,
            val_root=a.val_data, val_set=a.val_set, val_images=a.val_images)
        run_dir = options.storage_path.rstrip("/") + "/" + options.run_name
        check_paths({RUN_DIR_ROLE: run_dir},
                    {"--config": a.config, "--gt": a.gt, "--data": a.data,
                     "--val-data": a.val_data, "--init": model_files(cfg.init)})
    except (TypeError, ValueError, FileNotFoundError) as e:
        p.error(str(e))
    if a.backend == "local" and "://" in a.storage_path:
        p.error(f"--backend local writes a local folder; --storage-path {a.storage_path!r} is a URL")
    if "://" not in a.storage_path:  # before Ray starts: a file or a dangling link in the way
        try:
            check_folder_path(run_dir, role=RUN_DIR_ROLE)
        except FolderPathError as e:
            p.error(str(e))
    if a.backend == "ray":
        from pipeline.run.ray_executor import ensure_ray

        ensure_ray()
    try:
        gt = a.gt
        if a.smoke_test and not (gt or a.data):
            gt = _smoke_gt(Path(tmp.name), workers=2 if a.backend == "ray" else 0)
        if a.backend == "local":
            summary = _train_local(cfg, a, run_dir, gt)
        else:
            summary = run_training(cfg, options, gt=gt, data=a.data,
                                   log=lambda m: print(m, file=sys.stderr, flush=True))
        if a.smoke_test:
            import liif

            model = liif.load_model(summary["final"]) if "://" not in summary["final"] else None
            summary["final_loadable"] = model is not None
    except LiifError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(summary_json(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
