"""Speed, accuracy and peak memory of the LIIF query paths (prints figures; never pass/fail).

For the same weights (the bundled official EDSR-baseline-LIIF by default, ``--model PATH``, or
``--model random``) and the same input (an LR crop of scikit-image's astronaut), times
``upscale(impl="reference")`` (paper-literal) against ``upscale(impl="fast")`` in fp32 and bf16 at
x2, x4, x12; with ``--official DIR`` (an unpacked checkout of yinboc/liif, kept outside this
repository) also the official code's own query on the same weights, side by side. Each
configuration runs in a fresh subprocess so that the peak memory figures (RSS high-water mark on
CPU, ``max_memory_allocated`` on CUDA) do not mix.

    python3 bench/query_speed.py --quick
    python3 bench/query_speed.py --official /tmp/liif_official      # + the official code
    python3 bench/query_speed.py --device cuda --tf32 on
    python3 bench/query_speed.py --psnr --model runs/liif/last.safetensors   # Set5/Set14, x4

``--psnr`` compares fp32 with bf16 decoding by Y-PSNR on Set5 and Set14 (x4 unless ``--scales``;
the official benchmark protocol of :mod:`liif.evaluation`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIGS = (("reference", "fp32"), ("fast", "fp32"), ("fast", "bf16"))
OFFICIAL = ("official", "fp32")


# ----------------------------------------------------------------------------- worker side


def _model(path: str | None, device: str):
    import torch

    from liif.checkpoint import load_model
    from liif.liif import LIIF

    if path and path != "random":
        return load_model(path, device=device)
    torch.manual_seed(0)
    return LIIF({"name": "edsr-baseline", "args": {"no_upsampling": True}}).eval().to(device)


def _official_upscale(job: dict[str, Any]):
    """The official code's model and its test-time query (``batched_predict``) on our weights.

    The checkout's ``models`` and ``utils`` are imported from ``job["official"]``; ``.cuda()`` is
    made a no-op for a CPU run. The weights are ours exported to the official layout
    (``liif.checkpoint.official_liif_checkpoint``): the same tensors.
    """
    import torch

    from liif.checkpoint import official_liif_checkpoint

    if job["device"] == "cpu":
        torch.Tensor.cuda = lambda self, *a, **k: self  # the official query calls .cuda()
        torch.nn.Module.cuda = lambda self, *a, **k: self
    sys.path.insert(0, job["official"])
    import models  # type: ignore[import-not-found]  # the official checkout
    import utils  # type: ignore[import-not-found]

    ckpt = official_liif_checkpoint(_model(job["model"], "cpu"))
    model = models.make(ckpt["model"], load_sd=True).eval().to(job["device"])

    def run(img: torch.Tensor, *, scale: float, chunk_pixels: int, **_: Any) -> torch.Tensor:
        from liif.coords import output_size

        H, W = output_size(tuple(img.shape[-2:]), scale=scale)
        coord = utils.make_coord((H, W)).to(img.device)
        cell = torch.ones_like(coord)
        cell[:, 0] *= 2 / H
        cell[:, 1] *= 2 / W
        with torch.no_grad():  # official test.py: batched_predict
            model.gen_feat(((img - 0.5) / 0.5).unsqueeze(0))
            preds = [model.query_rgb(coord[None, a:a + chunk_pixels], cell[None, a:a + chunk_pixels])
                     for a in range(0, H * W, chunk_pixels)]
        pred = torch.cat(preds, dim=1)[0]
        return (pred * 0.5 + 0.5).clamp(0, 1).view(H, W, 3).permute(2, 0, 1)

    return run


def _image(crop: int, device: str):
    import numpy as np
    import torch
    from skimage.data import astronaut

    arr = astronaut()[60:60 + crop, 180:180 + crop]  # face and helmet: texture and edges
    img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 255
    return img.to(device)


def _max_rss_mb() -> float:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / 1024 / (1024 if platform.system() == "Darwin" else 1)


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One configuration in this (fresh) process: time it, record peak memory, save the output."""
    import numpy as np
    import torch

    from liif.infer import upscale

    torch.set_num_threads(job["threads"])
    device = job["device"]
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = job["tf32"]
        torch.backends.cudnn.allow_tf32 = job["tf32"]
    img = _image(job["crop"], device)
    kw = {"scale": job["scale"], "impl": job["impl"], "precision": job["precision"],
          "chunk_pixels": job["chunk_pixels"]}
    if job["impl"] == "official":
        official = _official_upscale(job)

        def upscale(_model: Any, image: Any, **kw: Any) -> Any:
            return official(image, **kw)
        model = None
    else:
        model = _model(job["model"], device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    upscale(model, img[:, :8, :8], **kw)  # warm-up: lazy init, kernels, allocator
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_mb = torch.cuda.memory_allocated() / 2**20
    else:
        base_mb = _max_rss_mb()
    times = []
    for _ in range(job["repeats"]):
        t0 = time.perf_counter()
        out = upscale(model, img, **kw)
        sync()
        times.append(time.perf_counter() - t0)
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _max_rss_mb())
    np.save(job["out"], out.float().cpu().numpy())
    return {"seconds": min(times), "out_px": int(out.shape[1] * out.shape[2]),
            "out_shape": list(out.shape), "base_mb": base_mb, "peak_mb": peak_mb}


# ----------------------------------------------------------------------------- parent side


def _spawn(job: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]), MKL_NUM_THREADS=str(job["threads"]))
    res = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], env=env,
                         capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"worker {job['impl']}/{job['precision']} x{job['scale']} failed:\n"
                           f"{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def cpu_description() -> str:
    """CPU model, torch's CPU capability and the bf16/AMX flags (what decides bf16 speed)."""
    import torch

    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("?", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    native = sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f",
                                              "avx2", "avx512_fp16"))
    return (f"{model}; torch {torch.__version__} cpu capability "
            f"{torch.backends.cpu.get_cpu_capability()}; flags {' '.join(native) or 'none'}; "
            f"oneDNN fused linear {'yes' if _fused() else 'no'}")


def _fused() -> bool:
    from liif.fast import FUSED_LINEAR_RELU

    return FUSED_LINEAR_RELU


def speed(args: argparse.Namespace) -> None:
    import numpy as np

    crop = args.crop or (24 if args.quick else 64)
    scales = args.scales or [2.0, 4.0, 12.0]
    repeats = args.repeats or (1 if args.quick else 3)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    configs = CONFIGS + ((OFFICIAL,) if args.official else ())
    print(f"# LIIF query speed: model {args.model}, astronaut {crop}x{crop} LR crop, device {args.device}"
          + (f" (TF32 {'on' if args.tf32 == 'on' else 'off'})" if args.device == "cuda" else "")
          + f", {args.threads} thread(s), best of {repeats}, chunk_pixels {args.chunk_pixels}"
          + (f", official code from {args.official}" if args.official else ""))
    print(f"# host: {platform.node()} {os.cpu_count()} CPUs, load average {load:.1f} at start; "
          "each configuration in a fresh subprocess")
    print(f"# cpu: {cpu_description()}")
    mem = "peak GPU alloc MiB" if args.device == "cuda" else "peak RSS MiB (+run)"
    print(f"| scale | out px | impl | precision | seconds | out Mpx/s | speed-up vs reference | "
          f"max abs diff vs ref | {mem} |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for s in scales:
            ref_out, ref_t = None, None
            for impl, prec in configs:
                job = {"model": args.model, "device": args.device, "tf32": args.tf32 == "on",
                       "official": args.official,
                       "threads": args.threads, "crop": crop, "scale": s, "impl": impl,
                       "precision": prec, "repeats": repeats, "chunk_pixels": args.chunk_pixels,
                       "out": str(Path(tmp) / f"{impl}-{prec}-{s}.npy")}
                r = _spawn(job)
                out = np.load(job["out"])
                if impl == "reference":
                    ref_out, ref_t = out, r["seconds"]
                    ratio, diff = "1.00x", "-"
                else:
                    ratio = f"{ref_t / r['seconds']:.2f}x"
                    diff = f"{float(np.abs(out - ref_out).max()):.2e}"
                mpx = r["out_px"] / r["seconds"] / 1e6
                print(f"| x{s:g} | {r['out_shape'][1]}x{r['out_shape'][2]} | {impl} | {prec} | "
                      f"{r['seconds']:.3f} | {mpx:.3f} | {ratio} | {diff} | "
                      f"{r['peak_mb']:.0f} (+{r['peak_mb'] - r['base_mb']:.0f}) |", flush=True)
    print("# 'vs reference' = reference (paper-literal, ours) time / this time; diffs are on the "
          "[0, 1] output against the reference")


def psnr(args: argparse.Namespace) -> None:
    import torch

    from liif.evaluation import evaluate_folder, model_method

    torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else ROOT.parent / "shared" / "data"
    if not (data / "benchmark").is_dir():
        print(f"# --psnr: no benchmark data under {data} (give --data); skipped")
        return
    model = _model(args.model, args.device)
    if args.model == "random":
        print("# random weights: absolute PSNR is meaningless, the fp32-bf16 difference is not")
    limit = 2 if args.quick else None
    scales = [int(s) for s in (args.scales or [4])]
    methods = {"fp32": model_method(model), "bf16": model_method(model, precision="bf16")}
    print(f"# cpu: {cpu_description()}")
    print("| set | images | scale | fp32 Y-PSNR | bf16 Y-PSNR | bf16 - fp32 (dB) |")
    print("|---|---|---|---|---|---|")
    for name in ("Set5", "Set14"):
        folder = data / "benchmark" / name / "HR"
        if not folder.is_dir():
            print(f"| {name} | missing | | | | |")
            continue
        res = evaluate_folder(folder, scales, methods, limit=limit)
        n = len(list(folder.iterdir())) if limit is None else min(limit, len(list(folder.iterdir())))
        for sc in scales:
            a, b = res["fp32"][sc], res["bf16"][sc]
            print(f"| {name} | {n} | x{sc} | {a:.3f} | {b:.3f} | {b - a:+.4f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="edsr-baseline-liif",
                   help="checkpoint path, bundled name, or 'random' (default: the bundled model)")
    p.add_argument("--official", default=None, metavar="DIR",
                   help="also time the official code (an unpacked yinboc/liif checkout)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--tf32", default="off", choices=["on", "off"], help="CUDA matmul/cuDNN TF32")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run")
    p.add_argument("--quick", action="store_true", help="24 px crop, one repeat (psnr: 2 images)")
    p.add_argument("--crop", type=int, help="LR crop side (default 64, quick 24)")
    p.add_argument("--scales", type=float, nargs="+", help="default: 2 4 12")
    p.add_argument("--repeats", type=int, help="timed runs per configuration (best is kept)")
    p.add_argument("--chunk-pixels", type=int, default=4096, dest="chunk_pixels",
                   help="query chunk (default 4096, liif.upscale's default)")
    p.add_argument("--psnr", action="store_true", help="Y-PSNR fp32 vs bf16 on Set5/Set14 x4")
    p.add_argument("--data", help="folder holding benchmark/Set5/HR (default ../shared/data)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device available")
    if args.psnr:
        psnr(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
