"""Upscale-pipeline figures: throughput with 1 vs 2 Ray CPU workers, halo overhead, peak memory.

Prints figures (never passes or fails on time). Sections:

1. halo overhead: ``plan.stats()['useful_fraction']`` at the default tile (chunk 256) for
   EDSR-baseline-LIIF (halo 36) at x2 and x4, and for the model being run;
2. throughput: output Mpx/s on a real raster (``../shared/data/geo``) with 1 and 2 Ray CPU actors
   (1 thread each) in one Ray session, and the ratio; end to end (as the job's summary reports it,
   actor start included) and steady state (from the tiles' finish times in the manifest);
3. peak memory: peak RSS (``VmHWM``) of the driver and of each actor for 4, 16 and 64 Mpx OUTPUTS
   at x2 from a mosaic of the real rasters (tiled and flipped into a bigger Zarr); each size runs
   in a fresh driver process (its own Ray) so the driver figure is that size's peak;
4. ``--gpu``: the in-process executor's Mpx/s at x4 in fp32 and bf16 (for a GPU machine; no Ray).

Models: ``--quick`` uses a tiny random EDSR-baseline-style LIIF (2 resblocks, 8 features, MLP
16-16; halo 8), the only size CPU inference finishes in minutes on a small machine. Otherwise
the bundled ``liif/weights/edsr-baseline-liif.safetensors`` if present, else a random
EDSR-baseline-LIIF with the same architecture (speed and memory do not depend on the weights).
The script says which one ran.

    python bench/pipeline.py --quick                 # CPU, a few minutes
    python bench/pipeline.py --sizes 4 16 64         # full model: hours on a laptop CPU
    python bench/pipeline.py --gpu                   # GPU machine: section 4 only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "geo"
BUNDLED = REPO / "liif" / "weights" / "edsr-baseline-liif.safetensors"
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
EDSR_BASELINE = {"name": "edsr-baseline", "args": {"no_upsampling": True}}
TINY_ENCODER = {"name": "edsr-baseline", "args": {"no_upsampling": True, "n_resblocks": 2,
                                                  "n_feats": 8}}
TINY_IMNET = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16, 16]}}


# --------------------------------------------------------------------------------- helpers


def peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak resident set size (MiB) of ``pid`` (default: this process) from /proc VmHWM; where
    /proc is missing, psutil's *current* RSS if psutil is installed, else None."""
    pid = os.getpid() if pid is None else pid
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except Exception:  # psutil absent or the process is gone
        return None


def make_model(path: Path, quick: bool, seed: int = 0) -> tuple[Path, str]:
    """The checkpoint to benchmark and a sentence saying which one it is."""
    import torch

    import liif

    if quick:
        torch.manual_seed(seed)
        model = liif.LIIF(TINY_ENCODER, imnet_spec=TINY_IMNET)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0.0, 0.15)
        return liif.save_checkpoint(model, path), (
            f"tiny random EDSR-baseline-style LIIF (2 resblocks, 8 feats, MLP 16-16, halo "
            f"{model.halo}) -- --quick; NOT the production model")
    if BUNDLED.is_file():
        return BUNDLED, f"bundled {BUNDLED.relative_to(REPO)}"
    torch.manual_seed(seed)
    model = liif.LIIF(EDSR_BASELINE)
    return liif.save_checkpoint(model, path), (
        "random-weight EDSR-baseline-LIIF (bundled weights absent; same architecture and cost)")


def model_halo(ckpt: Path) -> int:
    import liif

    return int(liif.load_model(ckpt).halo)


def read_rgb(path: Path) -> np.ndarray:
    """First three bands of a raster as (3, h, w) uint8."""
    import rasterio

    with rasterio.open(path) as ds:
        data = ds.read(indexes=[1, 2, 3][: ds.count])
    if data.shape[0] < 3:
        data = np.concatenate([data] + [data[-1:]] * (3 - data.shape[0]))
    return data.astype(np.uint8)


def write_zarr(path: Path, data: np.ndarray) -> str:
    import zarr

    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype,
                            chunks=(data.shape[0], 512, 512), overwrite=True)
    arr[...] = data
    return str(path)


def build_mosaic(path: Path, rasters: list[np.ndarray], shape: tuple[int, int]) -> str:
    """A (3, H, W) uint8 Zarr tiled from ``rasters``, each placement flipped differently so the
    mosaic has no exact repeats; written block row by block row."""
    import zarr

    H, W = shape
    arr = zarr.create_array(str(path), shape=(3, H, W), dtype="uint8", chunks=(3, 512, 512),
                            overwrite=True)
    th = min(r.shape[1] for r in rasters)
    tw = min(r.shape[2] for r in rasters)
    k = 0
    for r0 in range(0, H, th):
        row = np.empty((3, min(th, H - r0), W), dtype=np.uint8)
        for c0 in range(0, W, tw):
            src = rasters[k % len(rasters)][:, :th, :tw]
            if (k // len(rasters)) % 2:
                src = src[:, ::-1]
            if (k // (2 * len(rasters))) % 2:
                src = src[:, :, ::-1]
            k += 1
            cw = min(tw, W - c0)
            row[:, :, c0:c0 + cw] = src[:, : row.shape[1], :cw]
        arr[:, r0:r0 + row.shape[1], :] = row
    return str(path)


def steady_mpx_per_s(out: Path) -> float | None:
    """Output Mpx/s between the first and the last finished tile, leaving out each actor's first
    tile (it includes the actor's model load and warm-up)."""
    import datetime as dt

    recs = []
    for p in (out / "_manifest").glob("*.json"):
        if p.name == "zarr.json":
            continue
        r = json.loads(p.read_text())
        recs.append((dt.datetime.fromisoformat(r["finished_at"]).timestamp(), r["worker"],
                     r["out_pixels"]))
    recs.sort()
    first: dict[str, float] = {}
    pixels = 0
    for t, worker, px in recs:
        if worker not in first:
            first[worker] = t
        else:
            pixels += px
    if len(recs) <= len(first) or not first:
        return None
    span = recs[-1][0] - min(first.values())
    return pixels / 1e6 / span if span > 0 else None


def run_job(src: str, out: Path, ckpt: Path, *, scale: float, executor: str, workers: int = 1,
            precision: str = "fp32", tile: int | None = None,
            executor_factory: Any = None) -> dict[str, Any]:
    from pipeline.io.sources import SourceSpec
    from pipeline.io.zarr_output import OutputSpec
    from pipeline.upscale import UpscaleConfig, run_upscale

    cfg = UpscaleConfig(source=SourceSpec(src), output=OutputSpec(str(out)), scale=scale,
                        model=str(ckpt), executor=executor, workers=workers,
                        threads_per_worker=1 if executor == "ray" else None, precision=precision,
                        tile=tile, overwrite=True, progress=False)
    return run_upscale(cfg, executor_factory=executor_factory)


def fmt(v: float | None, nd: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


# -------------------------------------------------------------------------------- sections


def section_halo(ckpt: Path) -> None:
    from pipeline.geometry.tiling import default_tile_for, plan_tiles

    print("\n== 1. halo overhead (default tile, chunk 256; output 20000 x 20000) ==")
    import liif

    full_halo = liif.LIIF(EDSR_BASELINE).halo
    rows = [("EDSR-baseline-LIIF", full_halo)]
    run_halo = model_halo(ckpt)
    if run_halo != full_halo:
        rows.append(("model of this run", run_halo))
    for name, halo in rows:
        for s in (2.0, 4.0):
            tile = default_tile_for(halo, s, chunk=256)
            out = (20000, 20000)
            inp = (round(out[0] / s), round(out[1] / s))
            st = plan_tiles(inp, out, tile=tile, halo=halo, chunk=256).stats()
            print(f"{name:20s} halo {halo:3d}  x{s:g}: tile {tile:5d}  useful_fraction "
                  f"{st['useful_fraction']:.3f}  ({st['tiles']} tiles)")


def section_throughput(data_dir: Path, ckpt: Path, work: Path, scale: float) -> None:
    from pipeline.run.ray_executor import ensure_ray

    print(f"\n== 2. throughput: 1 vs 2 Ray CPU workers (1 thread each), x{scale:g} ==")
    raster = data_dir / "sentinel2_TCI_100m.tif"
    src = write_zarr(work / "sentinel.zarr", read_rgb(raster))
    ensure_ray(num_cpus=2)
    results = {}
    for workers in (1, 2):
        out = work / f"tp_{workers}.zarr"
        s = run_job(src, out, ckpt, scale=scale, executor="ray", workers=workers)
        steady = steady_mpx_per_s(out)
        results[workers] = (s["mpx_per_s"], steady)
        print(f"{raster.name}: {s['in_shape']} -> {s['out_shape']} ({s['output_mpx']} Mpx), "
              f"{s['tiles']} tiles of {s['tile']}, workers {workers}: end-to-end "
              f"{s['mpx_per_s']:.3f} Mpx/s in {s['seconds']:.1f} s; steady {fmt(steady)} Mpx/s")
        shutil.rmtree(out, ignore_errors=True)
    e2e = results[2][0] / results[1][0] if results[1][0] else None
    st = (results[2][1] / results[1][1]) if results[1][1] and results[2][1] else None
    print(f"ratio 2 / 1 workers: end-to-end {fmt(e2e, 2)}, steady {fmt(st, 2)} "
          f"(ideal 2.00 on 2 free cores)")
    import ray

    ray.shutdown()


def section_memory(data_dir: Path, ckpt: Path, work: Path, sizes: list[float],
                   scale: float) -> None:
    print(f"\n== 3. peak RSS (VmHWM) for output sizes {sizes} Mpx at x{scale:g}, 2 Ray workers, "
          "fresh driver per size ==")
    rasters = [read_rgb(p) for p in sorted(data_dir.glob("*.tif"))]
    for mpx in sizes:
        side_out = math.sqrt(mpx * 1e6)
        side_in = max(1, round(side_out / scale))
        src = build_mosaic(work / f"mosaic_{mpx:g}.zarr", rasters, (side_in, side_in))
        out = work / f"mem_{mpx:g}.zarr"
        child = subprocess.run(
            [sys.executable, __file__, "--_child", json.dumps(
                {"src": src, "out": str(out), "ckpt": str(ckpt), "scale": scale})],
            capture_output=True, text=True, env={**os.environ, **RAY_ENV})
        lines = [ln for ln in child.stdout.splitlines() if ln.startswith("{")]
        if child.returncode or not lines:
            print(f"{mpx:g} Mpx: child failed ({child.returncode}): {child.stderr[-1500:]}")
            continue
        r = json.loads(lines[-1])
        s = r["summary"]
        actors = ", ".join(fmt(v, 0) for v in r["actor_peak_mb"])
        print(f"output {s['out_shape'][0]} x {s['out_shape'][1]} = {s['output_mpx']:.1f} Mpx "
              f"(input {side_in} x {side_in}, {s['tiles']} tiles of {s['tile']}): driver peak "
              f"{fmt(r['driver_peak_mb'], 0)} MiB, actors peak [{actors}] MiB; "
              f"{s['mpx_per_s']:.3f} Mpx/s end-to-end in {s['seconds']:.0f} s")
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)


def child_memory(spec: dict[str, Any]) -> None:
    """One memory run in this (fresh) process: wraps the pipeline's executor so the actors' peak
    RSS is read just before they are killed; prints one JSON line."""
    from pipeline.run.executors import make_executor
    from pipeline.run.ray_executor import ensure_ray

    ensure_ray(num_cpus=2)
    actor_peaks: list[float | None] = []

    def make_measured(cfg: Any, job: Any, worker_cls: Any) -> Any:
        ex = make_executor(cfg, job, worker_cls)
        close = ex.close

        def close_measured() -> None:
            actor_peaks.extend(peak_rss_mb(pid) for pid in ex.pids())
            close()

        ex.close = close_measured
        return ex

    summary = run_job(spec["src"], Path(spec["out"]), Path(spec["ckpt"]), scale=spec["scale"],
                      executor="ray", workers=2, executor_factory=make_measured)
    print(json.dumps({"summary": summary, "actor_peak_mb": actor_peaks,
                      "driver_peak_mb": peak_rss_mb()}))


def section_gpu(ckpt: Path, work: Path, data_dir: Path, side: int) -> None:
    import torch

    print("\n== 4. GPU: in-process executor at x4 ==")
    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    raster = data_dir / "sentinel2_TCI_100m.tif"
    if raster.is_file():
        img = read_rgb(raster)
        reps = math.ceil(side / img.shape[1]), math.ceil(side / img.shape[2])
        img = np.tile(img, (1, *reps))[:, :side, :side]
        what = f"{raster.name} tiled to {side} x {side}"
    else:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
        base = 127 + 80 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
        img = np.clip(np.stack([base, base.T, 255 - base]) + rng.normal(0, 12, (3, side, side)),
                      0, 255).astype(np.uint8)
        what = f"synthetic {side} x {side} (real rasters absent)"
    src = write_zarr(work / "gpu_in.zarr", img)
    for precision in ("fp32", "bf16", "fp32", "bf16"):  # second pass: warm cuDNN / allocator
        out = work / f"gpu_{precision}.zarr"
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        s = run_job(src, out, ckpt, scale=4.0, executor="in-process", precision=precision)
        print(f"{what} x4 -> {s['output_mpx']:.1f} Mpx, {s['tiles']} tiles of {s['tile']}, "
              f"{precision}: {s['mpx_per_s']:.2f} Mpx/s ({s['seconds']:.1f} s), peak GPU memory "
              f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        shutil.rmtree(out, ignore_errors=True)


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random model (CPU, minutes)")
    p.add_argument("--gpu", action="store_true", help="only section 4 (in-process, CUDA)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the real rasters")
    p.add_argument("--sizes", type=float, nargs="+", default=[4, 16, 64],
                   help="output sizes (Mpx) for the memory section")
    p.add_argument("--scale", type=float, default=2.0, help="scale of sections 2 and 3")
    p.add_argument("--gpu-side", type=int, default=2048, help="input side for --gpu (x4)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: temp)")
    p.add_argument("--sections", nargs="+", choices=["halo", "throughput", "memory"],
                   default=["halo", "throughput", "memory"], help="which sections to run")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    if a._child:
        child_memory(json.loads(a._child))
        return 0

    work = Path(tempfile.mkdtemp(prefix="liif-bench-", dir=a.workdir))
    t0 = time.perf_counter()
    try:
        ckpt, which = make_model(work / "model.safetensors", a.quick)
        print(f"model: {which}")
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()} at start")
        if a.gpu:
            section_gpu(ckpt, work, a.data, a.gpu_side)
            return 0
        if "halo" in a.sections:
            section_halo(ckpt)
        if not all((a.data / n).is_file() for n in ("sentinel2_TCI_100m.tif",)):
            print(f"\nreal rasters not found in {a.data}: sections 2 and 3 skipped "
                  "(pass --data DIR)")
            return 0
        if "throughput" in a.sections:
            section_throughput(a.data, ckpt, work, a.scale)
        if "memory" in a.sections:
            section_memory(a.data, ckpt, work, a.sizes, a.scale)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        print(f"\nload average {os.getloadavg()} at end; total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
