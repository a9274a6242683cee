"""Training speed: samples/s and step time with 1 vs 2 Ray Train CPU workers (DDP, gloo);
with ``--gpu``, fp32 vs bf16 autocast on one GPU (in-process: the GPU machine has no Ray).

Per-worker batch is fixed, so N workers process N times the samples per step (weak scaling).
Prints one JSON line per setting; never passes or fails on time.

    python bench/train_speed.py --steps 20                  # CPU: 1 vs 2 Ray Train workers
    python bench/train_speed.py --gpu --steps 50            # GPU: fp32 vs bf16, paper recipe
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from liif.train import TrainConfig


def synthetic_images(folder: Path, n: int = 4, size: int = 256) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        base = 127 + 90 * np.sin(xx / (5 + i)) * np.cos(yy / (7 + i))
        img = np.stack([base, base.T, 255 - base], -1) + rng.normal(0, 8, (size, size, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"b{i}.png")
    return str(folder)


def bench_ray(a: argparse.Namespace, folder: str, tmp: str) -> None:
    import ray

    from pipeline.training.ray_train import RayTrainOptions, run_training

    for k, v in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                 "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}.items():
        os.environ.setdefault(k, v)
    if not ray.is_initialized():
        ray.init(num_cpus=max(a.workers), include_dashboard=False, log_to_driver=False)
    cfg = TrainConfig(data=(folder,), steps=a.steps, batch_size=a.batch_size,
                      inp_size=a.inp_size, sample_q=a.sample_q, save_every=a.steps,
                      log_every=a.steps, threads=a.threads)
    for w in a.workers:
        t0 = time.perf_counter()
        s = run_training(cfg, RayTrainOptions(workers=w, storage_path=f"{tmp}/runs",
                                              run_name=f"bench-w{w}"))
        print(json.dumps({
            "setting": f"ray-train cpu x{w}", "workers": w, "steps": s["step"],
            "batch_per_worker": a.batch_size, "samples_per_s": s["samples_per_s"],
            "step_time_s": s["step_time_s"], "fit_seconds": round(time.perf_counter() - t0, 1),
        }), flush=True)


def bench_gpu(a: argparse.Namespace, folder: str) -> None:
    from liif.data import ImageFolderSampler
    from liif.train import make_model, make_optimizer, train_step

    device = torch.device(a.device)
    cfg = TrainConfig(data=(folder,), steps=a.steps, batch_size=a.batch_size,
                      inp_size=a.inp_size, sample_q=a.sample_q)
    sampler = ImageFolderSampler(cfg.data, cfg.sampler_config())
    rng = np.random.default_rng(0)
    batches = [sampler.batch(cfg.batch_size, rng) for _ in range(4)]  # data off the clock
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    for amp in (None, torch.bfloat16):
        torch.manual_seed(0)
        model = make_model(cfg).to(device)
        opt, _ = make_optimizer(model, cfg)

        for i in range(a.warmup):
            train_step(model, batches[i % len(batches)], opt, amp_dtype=amp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for i in range(a.steps):  # train_step returns float(loss): synchronises every step
            loss = train_step(model, batches[i % len(batches)], opt, amp_dtype=amp)
        dt = time.perf_counter() - t0
        print(json.dumps({
            "setting": f"{name} {'bf16' if amp else 'fp32'}", "batch": a.batch_size,
            "inp_size": a.inp_size, "sample_q": a.sample_q, "steps": a.steps,
            "samples_per_s": round(a.steps * a.batch_size / dt, 2),
            "step_time_s": round(dt / a.steps, 5), "last_loss": round(loss, 4),
            "max_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if device.type == "cuda" else None,
        }), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batch-size", type=int, default=None,
                   help="per worker (default: 4 on CPU, 16 with --gpu)")
    p.add_argument("--inp-size", type=int, default=None, help="default: 24 on CPU, 48 with --gpu")
    p.add_argument("--sample-q", type=int, default=None, help="default: 576 CPU, 2304 --gpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads per CPU worker")
    p.add_argument("--gpu", action="store_true", help="fp32 vs bf16 on one GPU (in-process)")
    p.add_argument("--device", default="cuda", help="device for --gpu (cpu to dry-run it)")
    p.add_argument("--warmup", type=int, default=5)
    a = p.parse_args(argv)
    a.batch_size = a.batch_size or (16 if a.gpu else 4)
    a.inp_size = a.inp_size or (48 if a.gpu else 24)
    a.sample_q = a.sample_q or (2304 if a.gpu else 576)
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        folder = synthetic_images(Path(tmp) / "images", size=max(256, 4 * a.inp_size + 8))
        if a.gpu:
            bench_gpu(a, folder)
        else:
            bench_ray(a, folder, tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
