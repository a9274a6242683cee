"""Decode throughput of the bundled LIIF model, and of the in-process engine, on this machine's
accelerator (a GPU) or its CPU. Prints figures (never pass/fail).

Needs only torch (Python 3.11+): no Ray, no rasterio, and Zarr only for section 2, which is
skipped with a message where ``zarr`` does not import. Without ``safetensors`` the bundled
weights are read by a small built-in reader.

1. **Model**: the bundled ``edsr-baseline-liif`` on a synthetic ``--size`` x ``--size`` scene.
   Encoder time (``model.encode``) and decode throughput (:func:`liif.infer.decode`: first-layer
   map + query chunks, output Mpx/s) at each ``--scales`` in each ``--precisions``:

   * ``fp32``: strict fp32 (TF32 off for matmuls and cuDNN convolutions);
   * ``tf32``: TF32 on for both (accelerator only; ``n/a`` on CPU);
   * ``bf16``: bf16 decode MLP (``decode(precision="bf16")``); the encoder stays fp32 and runs
     with torch's default TF32 settings, as the pipeline does.

   Best and median of ``--repeats`` after ``--warmup`` runs, synchronised with
   ``torch.accelerator.synchronize()``. On CPU only a central region of at most ``--decode-px``
   output pixels is decoded (from the latent window it needs, so the numbers are those of a full
   decode); on an accelerator the whole output. ``model Mpx/s`` = whole output / (encoder +
   whole output at the decode rate), i.e. model-only throughput without I/O.
2. **Engine** (needs zarr): the real in-process engine (:func:`pipeline.upscale.run_upscale`,
   :class:`pipeline.run.executors.InProcessExecutor`, ``--engine-depth`` tiles in flight) on a
   synthetic Zarr scene in a temp dir: output Mpx/s, ``stage_seconds`` (read/compute/write/wait,
   summed over tiles) and the precision the worker ran. Then the engine's I/O ceiling with the
   null model (:mod:`pipeline.run.doubles`, no model) at depth 1 and at ``--engine-depth``, and
   what a decoder of the measured (or the issue's 100-500 Mpx/s) rate would need from I/O.
3. **Utilisation**: on a GPU, ``nvidia-smi`` (else ``torch.cuda.utilization()``) sampled every
   0.2 s while each configuration runs; ``n/a`` on CPU.

    python bench/gpu_throughput.py --quick
    OMP_NUM_THREADS=1 python bench/gpu_throughput.py --size 192 --repeats 3 --json /tmp/t1.json
    python bench/gpu_throughput.py --size 256 --chunk-pixels 4096 65536    # on a GPU
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_MODEL = "edsr-baseline-liif"
CPU_DECODE_PX = 65536  # output pixels decoded per timed run on CPU (a full x12 decode takes minutes)


# ----------------------------------------------------------------------------- device helpers


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    if hasattr(torch, "accelerator"):  # torch >= 2.6
        acc = torch.accelerator.current_accelerator()
        return acc if acc is not None and torch.accelerator.is_available() else torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cpu":
        return
    if hasattr(torch, "accelerator"):
        torch.accelerator.synchronize()
    else:
        torch.cuda.synchronize(device)


def tf32_state() -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
                "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                "float32_matmul_precision": torch.get_float32_matmul_precision()}


def set_tf32(matmul: bool, cudnn: bool) -> None:
    """TF32 for cuBLAS matmuls and cuDNN convolutions (legacy flags; the new ``fp32_precision``
    API where the legacy one is refused)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.backends.cuda.matmul.allow_tf32 = matmul
            torch.backends.cudnn.allow_tf32 = cudnn
        except RuntimeError:
            torch.backends.cuda.matmul.fp32_precision = "tf32" if matmul else "ieee"
            torch.backends.cudnn.conv.fp32_precision = "tf32" if cudnn else "ieee"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "n/a"


def environment(device: torch.device) -> dict[str, Any]:
    from liif.precision import cpu_flags, native_bf16

    env: dict[str, Any] = {
        "device": str(device), "device_name": "cpu", "torch": torch.__version__,
        "python": platform.python_version(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu_bf16_flags": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"}),
        "native_bf16": native_bf16(device)[1],
    }
    try:
        from liif.fast import FUSED_LINEAR_RELU

        env["onednn_fused_linear"] = FUSED_LINEAR_RELU
    except ImportError:
        pass
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["tf32_defaults"] = tf32_state()
    elif device.type != "cpu":
        env["device_name"] = device.type
    try:
        import zarr

        env["zarr"] = zarr.__version__
    except ImportError:
        env["zarr"] = None
    return env


# ----------------------------------------------------------------------------- utilisation


class UtilSampler:
    """GPU utilisation (%) and memory used (MiB) every ``period`` s in a background thread:
    ``nvidia-smi`` if on PATH, else ``torch.cuda.utilization()``; nothing on other devices."""

    def __init__(self, device: torch.device, period: float = 0.2) -> None:
        self.device, self.period = device, period
        self.samples: list[tuple[float, float | None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.source = None
        if device.type == "cuda":
            if shutil.which("nvidia-smi"):
                self.source = "nvidia-smi"
            else:
                try:
                    torch.cuda.utilization(device)
                    self.source = "torch.cuda.utilization"
                except Exception:  # pynvml missing or no NVML
                    self.source = None

    def _sample(self) -> tuple[float, float | None] | None:
        if self.source == "nvidia-smi":
            idx = self.device.index if self.device.index is not None else torch.cuda.current_device()
            r = subprocess.run(["nvidia-smi", "-i", str(idx), "--query-gpu=utilization.gpu,memory.used",
                                "--format=csv,noheader,nounits"], capture_output=True, text=True,
                               timeout=5)
            util, mem = (float(v) for v in r.stdout.strip().splitlines()[0].split(","))
            return util, mem
        if self.source == "torch.cuda.utilization":
            return float(torch.cuda.utilization(self.device)), None
        return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                s = self._sample()
            except Exception:  # a failed sample is skipped, never fatal
                s = None
            if s is not None:
                self.samples.append(s)
            self._stop.wait(self.period)

    def __enter__(self) -> UtilSampler:
        if self.source:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        util = [u for u, _ in self.samples]
        mem = [m for _, m in self.samples if m is not None]
        return {"source": self.source, "samples": len(util), "util_mean": round(statistics.mean(util), 1),
                "util_max": max(util), "mem_used_max_mib": max(mem) if mem else None}


def util_text(u: dict[str, Any] | None) -> str:
    if not u:
        return "n/a"
    return f"{u['util_mean']:.0f}/{u['util_max']:.0f}%"


# ----------------------------------------------------------------------------- model and input


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file without the safetensors package: 8-byte header length, JSON header,
    raw little-endian tensors."""
    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    data = bytearray(blob[8 + n:])
    tensors = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        dt = dtypes[info["dtype"]]
        t = torch.frombuffer(data, dtype=dt, count=(b - a) // dt.itemsize, offset=a) if b > a else \
            torch.empty(0, dtype=dt)
        tensors[name] = t.reshape(info["shape"]).clone()
    return tensors, meta


def load_default(name: str, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The bundled model through ``liif.load_model``, or (no safetensors) the built-in reader."""
    try:
        from liif.checkpoint import load_model

        return load_model(name, device=device), "liif.load_model"
    except ImportError as e:
        from liif.liif import LIIF

        path = Path(name)
        if not path.is_file():
            path = ROOT / "liif" / "weights" / f"{name}.safetensors"
        sd, meta = _read_safetensors(path)
        spec = json.loads(meta["spec"])
        if spec.get("name") != "liif":
            raise SystemExit(f"{path}: not a LIIF checkpoint ({spec.get('name')}) and {e}") from e
        model = LIIF(**spec["args"])
        own = model.state_dict()
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
        return model.eval().to(device), f"built-in safetensors reader ({e})"


def synthetic_scene(size: int, seed: int = 0) -> torch.Tensor:
    """A (3, size, size) float32 scene in [0, 1]: smooth gradients, oriented stripes of several
    frequencies, a few hard-edged blocks and mild noise (torch only, deterministic)."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    chans = []
    for c in range(3):
        f = torch.rand(4, generator=g) * 40 + 3
        th = torch.rand(4, generator=g) * math.pi
        v = 0.35 + 0.25 * (x * (c + 1) / 3 + y * (3 - c) / 3) / 2
        for k in range(4):
            v = v + 0.08 * torch.sin(2 * math.pi * f[k] * (x * torch.cos(th[k]) + y * torch.sin(th[k])))
        chans.append(v)
    img = torch.stack(chans)
    for _ in range(12):  # hard edges
        r0, c0 = (torch.randint(0, max(1, size - 8), (2,), generator=g)).tolist()
        s = int(torch.randint(4, max(5, size // 4), (1,), generator=g))
        img[:, r0:r0 + s, c0:c0 + s] = torch.rand(3, 1, 1, generator=g)
    img = img + 0.02 * torch.randn(img.shape, generator=g)
    return img.clamp_(0, 1)


# ----------------------------------------------------------------------------- section 1


def timed(fn: Any, device: torch.device, warmup: int, repeats: int) -> tuple[list[float], Any]:
    out = None
    for _ in range(warmup):
        out = fn()
        sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times, out


def decode_region(in_shape: tuple[int, int], out_shape: tuple[int, int], cap: int | None
                  ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Output rows/cols to decode (central, at most ``cap`` pixels; ``None``: all) and the latent
    rows/cols they need, with a 3-latent margin (beyond the ensemble's neighbours and the 3x3
    first layer, so the window decodes exactly what the whole latent grid would)."""
    (h, w), (H, W) = in_shape, out_shape
    if cap is None or H * W <= cap:
        rows, cols = (0, H), (0, W)
    else:
        nc = min(W, max(64, math.isqrt(cap)))
        nr = min(H, max(1, cap // nc))
        r0, c0 = (H - nr) // 2, (W - nc) // 2
        rows, cols = (r0, r0 + nr), (c0, c0 + nc)

    def need(a: int, b: int, n: int, N: int) -> tuple[int, int]:
        lo = math.floor((a + 0.5) * n / N - 1.0) - 3
        hi = math.ceil((b - 0.5) * n / N) + 3
        return max(0, lo), min(n, hi + 1)

    return rows, cols, need(*rows, h, H), need(*cols, w, W)


def bench_model(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    from liif.coords import output_size
    from liif.infer import decode, normalize

    model, how = load_default(args.model, device)
    img = synthetic_scene(args.size).to(device)
    h = w = args.size
    n_params = sum(p.numel() for p in model.parameters())
    print(f"# model {args.model} via {how}: {n_params / 1e6:.2f} M parameters, halo {model.halo}; "
          f"input {h}x{w} synthetic scene; warm-up {args.warmup}, best/median of {args.repeats}")
    defaults = tf32_state() if device.type == "cuda" else None
    x = normalize(img).unsqueeze(0)
    results: list[dict[str, Any]] = []
    reference: dict[tuple[float, int], torch.Tensor] = {}
    enc_by_mode: dict[str, dict[str, Any]] = {}
    for prec in args.precisions:
        if prec == "tf32" and device.type != "cuda":
            results.append({"precision": "tf32", "status": f"n/a ({device.type}: TF32 is a GPU mode)"})
            print(f"# tf32: n/a on {device.type}")
            continue
        decode_prec = "bf16" if prec == "bf16" else "fp32"
        if device.type == "cuda":
            if prec == "fp32":
                set_tf32(False, False)
            elif prec == "tf32":
                set_tf32(True, True)
            elif defaults is not None:  # bf16: the encoder as the pipeline runs it
                set_tf32(defaults["matmul_allow_tf32"], defaults["cudnn_allow_tf32"])
        with torch.inference_mode():
            with UtilSampler(device) as su:
                t_enc, feat = timed(functools.partial(model.encode, x), device, args.warmup,
                                    args.repeats)
            enc = {"best_s": min(t_enc), "median_s": statistics.median(t_enc), "util": su.summary()}
            enc_by_mode[prec] = enc
            print(f"# {prec}: encoder {h}x{w} best {enc['best_s'] * 1e3:.1f} ms, median "
                  f"{enc['median_s'] * 1e3:.1f} ms ({h * w / enc['best_s'] / 1e6:.2f} input Mpx/s), "
                  f"util {util_text(enc['util'])}", flush=True)
            for s in args.scales:
                H, W = output_size((h, w), scale=s)
                rows, cols, (fr0, fr1), (fc0, fc1) = decode_region((h, w), (H, W), args.decode_cap)
                fw = feat[:, :, fr0:fr1, fc0:fc1].contiguous()
                px = (rows[1] - rows[0]) * (cols[1] - cols[0])
                for chunk in args.chunk_pixels:
                    run = functools.partial(decode, model, fw, in_shape=(h, w), out_shape=(H, W),
                                            rows=rows, cols=cols, offset=(fr0, fc0),
                                            chunk_pixels=chunk, precision=decode_prec)
                    with UtilSampler(device) as su:
                        t_dec, out = timed(run, device, args.warmup, args.repeats)
                    best, med = min(t_dec), statistics.median(t_dec)
                    rate = px / best / 1e6
                    diff = None
                    key = (s, chunk)
                    if prec == "fp32":
                        reference[key] = out.float().cpu()
                    elif key in reference:
                        diff = float((out.float().cpu() - reference[key]).abs().max()) * 0.5  # [0,1]
                    full = H * W
                    model_s = enc["best_s"] + full / (rate * 1e6)
                    r = {"precision": prec, "decode_precision": decode_prec, "scale": s,
                         "out_shape": [H, W], "decoded_px": px, "decoded_region": [list(rows), list(cols)],
                         "chunk_pixels": chunk, "decode_best_s": best, "decode_median_s": med,
                         "decode_mpx_s_best": rate, "decode_mpx_s_median": px / med / 1e6,
                         "encoder_best_s": enc["best_s"], "encoder_median_s": enc["median_s"],
                         "model_mpx_s": full / model_s / 1e6,
                         "encoder_share": enc["best_s"] / model_s,
                         "max_abs_diff_vs_fp32": diff, "util": su.summary()}
                    results.append(r)
                    print(f"  x{s:g} {H}x{W} (decoded {px / 1e6:.3f} Mpx, chunk {chunk}): decode best "
                          f"{rate:.3f} / median {r['decode_mpx_s_median']:.3f} Mpx/s; model (enc + full "
                          f"decode) {r['model_mpx_s']:.3f} Mpx/s, encoder {r['encoder_share']:.0%} of it"
                          + (f"; max|diff| vs fp32 {diff:.1e}" if diff is not None else "")
                          + f"; util {util_text(r['util'])}", flush=True)
    if device.type == "cuda" and defaults is not None:
        set_tf32(defaults["matmul_allow_tf32"], defaults["cudnn_allow_tf32"])
    return results


# ----------------------------------------------------------------------------- section 2


def _write_scene_zarr(path: Path, side: int, seed: int) -> str:
    import numpy as np
    import zarr

    arr = (synthetic_scene(side, seed).numpy() * 255 + 0.5).astype(np.uint8)
    z = zarr.create_array(str(path), shape=arr.shape, dtype="uint8", chunks=(3, 512, 512),
                          overwrite=True)
    z[:] = arr
    return str(path)


def _rates(summary: dict[str, Any]) -> dict[str, float | None]:
    """Output Mpx per second of each stage, summed over tiles: the rate of one thread doing it."""
    mpx = float(summary["output_mpx"])
    st = summary["stage_seconds"]
    return {k: (mpx / st[k] if st.get(k) else None) for k in ("read", "compute", "write")}


def bench_engine(args: argparse.Namespace, device: torch.device) -> dict[str, Any] | None:
    try:
        import zarr  # noqa: F401
    except ImportError:
        print("# section 2 skipped: zarr is not importable here (pip install zarr numpy to run the "
              "engine end to end)")
        return None
    from pipeline.io.sources import SourceSpec
    from pipeline.io.zarr_output import OutputSpec
    from pipeline.run.doubles import NULL_FAMILY, NullConfig
    from pipeline.run.engine import run_job
    from pipeline.run.executors import InProcessExecutor
    from pipeline.upscale import UpscaleConfig, run_upscale

    def in_process(cfg: Any, job: Any, worker_cls: Any) -> InProcessExecutor:
        return InProcessExecutor(job, worker_cls)

    res: dict[str, Any] = {}
    d = Path(tempfile.mkdtemp(prefix="liif-gpu-throughput-"))
    threads = torch.get_num_threads()
    try:
        src = _write_scene_zarr(d / "in.zarr", args.engine_size, seed=1)
        cfg = UpscaleConfig(source=SourceSpec(src), output=OutputSpec(str(d / "out.zarr")),
                            scale=args.engine_scale, model=args.model, precision=args.engine_precision,
                            executor="in-process", depth=args.engine_depth, tile=args.engine_tile,
                            overwrite=True, progress=False,
                            threads_per_worker=threads if device.type == "cpu" else None)
        with UtilSampler(device) as su:
            t0 = time.perf_counter()
            s = run_upscale(cfg, executor_factory=in_process)
            wall = time.perf_counter() - t0
        torch.set_num_threads(threads)
        e = {"in_shape": s["in_shape"], "out_shape": s["out_shape"], "tiles": s["tiles"],
             "tile": s["tile"], "halo": s["halo"], "useful_fraction": s["useful_fraction"],
             "output_mpx": s["output_mpx"], "seconds": s["seconds"], "wall_s_incl_setup": round(wall, 3),
             "mpx_per_s": s["mpx_per_s"], "stage_seconds": s["stage_seconds"],
             "precision": s.get("precision"), "precision_why": s.get("precision_why"),
             "depth": args.engine_depth, "per_thread_mpx_s": _rates(s), "util": su.summary()}
        res["liif"] = e
        st = e["stage_seconds"]
        print(f"# engine, LIIF x{args.engine_scale:g}, {e['in_shape'][0]}x{e['in_shape'][1]} -> "
              f"{e['out_shape'][0]}x{e['out_shape'][1]} ({e['output_mpx']} Mpx), {e['tiles']} tile(s) of "
              f"{e['tile']}, halo {e['halo']}, useful fraction {e['useful_fraction']:.3f}, depth "
              f"{e['depth']}, precision {e['precision']} ({e['precision_why']})")
        print(f"  {e['mpx_per_s']:.3f} output Mpx/s ({e['seconds']:.2f} s; {wall:.2f} s with model load "
              f"and plan); stage_seconds read {st['read']} compute {st['compute']} write {st['write']} "
              f"wait {st['wait']}; util {util_text(e['util'])}", flush=True)

        # the engine's own I/O path, no model: what it can feed
        io_src = _write_scene_zarr(d / "io_in.zarr", args.io_side, seed=2)
        io: dict[str, Any] = {}
        for depth in sorted({1, args.engine_depth}):
            ncfg = NullConfig(source=SourceSpec(io_src), output=OutputSpec(str(d / f"null{depth}.zarr")),
                              scale=args.io_scale, executor="in-process", depth=depth, tile=args.io_tile,
                              overwrite=True, progress=False)
            best = None
            for _ in range(args.io_repeats):
                t0 = time.perf_counter()
                ns = run_job(ncfg, NULL_FAMILY, executor_factory=in_process)
                ns["wall"] = time.perf_counter() - t0
                if best is None or ns["seconds"] < best["seconds"]:
                    best = ns
            assert best is not None
            io[str(depth)] = {"output_mpx": best["output_mpx"], "tiles": best["tiles"],
                              "tile": best["tile"], "seconds": best["seconds"],
                              "mpx_per_s": best["mpx_per_s"], "stage_seconds": best["stage_seconds"],
                              "per_thread_mpx_s": _rates(best)}
            r = io[str(depth)]["per_thread_mpx_s"]
            print(f"# engine I/O ceiling (null model), x{args.io_scale} {args.io_side}^2 -> "
                  f"{best['output_mpx']} Mpx, {best['tiles']} tiles of {best['tile']}, depth {depth}: "
                  f"{best['mpx_per_s']:.1f} output Mpx/s; per-thread read {_f(r['read'])}, write "
                  f"{_f(r['write'])} output Mpx/s; stage_seconds {best['stage_seconds']}", flush=True)
        res["null_io"] = io
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return res


def _f(v: float | None, nd: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


def io_budget(model_rows: list[dict[str, Any]], engine: dict[str, Any] | None
              ) -> list[dict[str, Any]]:
    """I/O threads (engine's read + write path, per-thread rates of the null-model run) needed to
    keep a decoder of rate R busy: R / per-thread rate."""
    if not engine or "null_io" not in engine:
        return []
    r = engine["null_io"]["1"]["per_thread_mpx_s"]
    if not r["read"] or not r["write"]:
        return []
    io_rate = 1 / (1 / r["read"] + 1 / r["write"])  # one thread doing both, per output Mpx
    targets = [("issue estimate, low", 100.0), ("issue estimate, high", 500.0)]
    x4 = [m for m in model_rows if m.get("scale") == 4 and "model_mpx_s" in m]
    if x4:
        best = max(x4, key=lambda m: m["model_mpx_s"])
        targets.insert(0, (f"measured here, x4 {best['precision']} chunk {best['chunk_pixels']}",
                           best["model_mpx_s"]))
    out = []
    for name, rate in targets:
        out.append({"decoder": name, "mpx_s": rate, "read_threads": rate / r["read"],
                    "write_threads": rate / r["write"], "io_threads": rate / io_rate})
    return out


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default=DEFAULT_MODEL, help="bundled name or checkpoint path")
    p.add_argument("--device", help="default: the accelerator if any, else cpu")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's, which "
                   "follows OMP_NUM_THREADS)")
    p.add_argument("--size", type=int, help="synthetic input side (default 256, quick 64)")
    p.add_argument("--scales", type=float, nargs="+", help="default 2 4 12 (quick 2 4)")
    p.add_argument("--precisions", nargs="+", choices=["fp32", "tf32", "bf16"],
                   default=["fp32", "tf32", "bf16"])
    p.add_argument("--repeats", type=int, help="timed runs (default 5, quick 1)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--chunk-pixels", type=int, nargs="+", dest="chunk_pixels",
                   help="decode chunk(s) (default 4096, the pipeline's; accelerator: 4096 65536)")
    p.add_argument("--decode-px", type=int, dest="decode_px",
                   help=f"max output px decoded per run (default: all on an accelerator, "
                   f"{CPU_DECODE_PX} on CPU; 0: all)")
    p.add_argument("--no-engine", action="store_true", help="skip section 2")
    p.add_argument("--engine-size", type=int, help="engine input side (default 128 CPU, 2048 GPU)")
    p.add_argument("--engine-scale", type=float, default=4.0)
    p.add_argument("--engine-tile", type=int, help="output tile (default: the engine's plan)")
    p.add_argument("--engine-depth", type=int, default=3, help="tiles in flight (default 3)")
    p.add_argument("--engine-precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--io-side", type=int, help="null-model input side (default 1024 CPU, 2048 GPU)")
    p.add_argument("--io-scale", type=int, default=2)
    p.add_argument("--io-tile", type=int, default=1024)
    p.add_argument("--io-repeats", type=int, default=2)
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke test)")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    accel = device.type != "cpu"
    args.size = args.size or (64 if args.quick else 256)
    args.scales = args.scales or ([2.0, 4.0] if args.quick else [2.0, 4.0, 12.0])
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.chunk_pixels = args.chunk_pixels or ([4096, 65536] if accel else [4096])
    cap = args.decode_px if args.decode_px is not None else (0 if accel else
                                                           (16384 if args.quick else CPU_DECODE_PX))
    args.decode_cap = cap or None
    args.engine_size = args.engine_size or (48 if args.quick else (2048 if accel else 128))
    args.io_side = args.io_side or (256 if args.quick else (2048 if accel else 1024))
    if args.quick:
        args.io_tile, args.io_repeats = min(args.io_tile, 256), 1
    order = {"fp32": 0, "tf32": 1, "bf16": 2}  # fp32 first: the others are compared with it
    args.precisions = sorted(dict.fromkeys(args.precisions), key=order.__getitem__)

    torch.manual_seed(0)
    env = environment(device)
    print(f"# device {env['device']} ({env['device_name']}); torch {env['torch']}, python "
          f"{env['python']}; cpu capability {env['cpu_capability']}; CPU {env['cpu_model']} "
          f"({env['cpu_count']} logical CPUs, load average {env['load_average']}); torch threads "
          f"{env['torch_threads']} (OMP_NUM_THREADS={env['OMP_NUM_THREADS']}); bf16: {env['native_bf16']}; "
          f"oneDNN fused linear {env.get('onednn_fused_linear')}; zarr {env['zarr'] or 'not importable'}"
          + (f"; TF32 defaults {env['tf32_defaults']}" if "tf32_defaults" in env else ""))
    if not accel:
        print("# GPU utilisation: n/a (CPU run)")
    print("## 1. model: encoder and decode")
    rows = bench_model(args, device)
    engine = None
    if not args.no_engine:
        print("## 2. in-process engine end to end")
        engine = bench_engine(args, device)
    budget = io_budget(rows, engine)

    print("## summary")
    print("| device | threads | precision | scale | chunk | encoder ms | decode Mpx/s best | median | "
          "model Mpx/s | max abs diff vs fp32 | GPU util mean/max |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    dev = env["device_name"] if accel else f"cpu {env['cpu_capability']}"
    for r in rows:
        if "status" in r:
            print(f"| {dev} | {env['torch_threads']} | {r['precision']} | all | - | n/a | n/a | n/a | "
                  "n/a | - | n/a |")
            continue
        diff = "-" if r["max_abs_diff_vs_fp32"] is None else f"{r['max_abs_diff_vs_fp32']:.1e}"
        print(f"| {dev} | {env['torch_threads']} | {r['precision']} | x{r['scale']:g} | "
              f"{r['chunk_pixels']} | {r['encoder_best_s'] * 1e3:.0f} | {r['decode_mpx_s_best']:.3f} | "
              f"{r['decode_mpx_s_median']:.3f} | {r['model_mpx_s']:.3f} | {diff} | "
              f"{util_text(r['util'])} |")
    if engine:
        e = engine["liif"]
        rt = e["per_thread_mpx_s"]
        print(f"| engine {dev} | {env['torch_threads']} | {e['precision']} | x{args.engine_scale:g} | "
              f"tile {e['tile']} | - | - | - | {e['mpx_per_s']:.3f} end to end | per-thread read "
              f"{_f(rt['read'])} / compute {_f(rt['compute'], 3)} / write {_f(rt['write'])} Mpx/s | "
              f"{util_text(e['util'])} |")
        for depth, n in engine["null_io"].items():
            rn = n["per_thread_mpx_s"]
            print(f"| engine I/O, null model | depth {depth} | - | x{args.io_scale} | tile {n['tile']} | - "
                  f"| - | - | {n['mpx_per_s']:.1f} end to end | per-thread read {_f(rn['read'])} / "
                  f"write {_f(rn['write'])} Mpx/s | n/a |")
    elif not args.no_engine:
        print("| engine | - | - | - | - | - | - | - | skipped (no zarr) | - | - |")
    for b in budget:
        print(f"# to feed a decoder at {b['mpx_s']:.3g} Mpx/s ({b['decoder']}): "
              f"{b['read_threads']:.2f} read + {b['write_threads']:.2f} write threads at the measured "
              f"per-thread I/O rates ({b['io_threads']:.2f} threads each doing both)")
    if args.json:
        out = {"env": env, "args": {k: v for k, v in vars(args).items() if k != "json"},
               "model": rows, "engine": engine, "io_budget": budget}
        Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
