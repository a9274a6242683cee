"""COG export speed: a real raster upscaled into Zarr once, then ``export_geotiff`` timed per codec
and thread count (prints figures; never passes or fails on time).

The Zarr is made once with the upscale job (``--model``, default the bundled EDSR-baseline-LIIF,
bf16, in-process) and kept in ``--work`` (reused while it exists; delete it to redo). Each export
is run ``--repeat`` times and the best run is reported:

* ``wall s`` and ``MB/s`` = raw output bytes (C x H x W x itemsize) / wall seconds (what a job
  waits for); ``cpu s`` and ``MB/s/core`` = raw bytes / CPU seconds of this process (user + sys,
  every thread), which hides most of the noise of a shared machine; ``cores`` = cpu s / wall s;
* ``file MB`` and ``ratio`` (raw / file) of the COG.

``--baseline REV`` also times ``export_geotiff`` of ``pipeline/io/exports.py`` as it was at git
revision REV (loaded from ``git show``, called with its defaults), for a before/after in one run.

    nice -n 10 python bench/cog_export.py --baseline 94fd644   # exports.py before the faster export
    python bench/cog_export.py --input ../shared/data/geo/sentinel2_TCI_100m.tif --scale 2 \\
        --configs deflate:6:1 deflate:6:0 zstd:3:0 lerc::0      # compress:level:threads (0 = all)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = REPO.parent / "shared" / "data" / "geo" / "naip_m_4709963_se_14_1_20100629_5m.tif"
DEFAULT_CONFIGS = ["deflate::1", "deflate::0", "deflate:1:0", "zstd::0", "zstd:3:0", "zstd:1:0",
                   "lzw::0", "lerc::0", "lerc_zstd::0", "none::0"]


def cpu_header() -> str:
    model = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import rasterio

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"CPU: {model}, {cores} usable cores; load average {load[0]:.1f}; GDAL "
            f"{rasterio.__gdal_version__}, rasterio {rasterio.__version__}")


def make_zarr(args: argparse.Namespace) -> Path:
    """The upscaled Zarr in ``--work`` (made by the upscale job unless it exists)."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{Path(args.input).stem}_x{args.scale:g}.zarr"
    if (out / "image" / "zarr.json").exists():
        print(f"reusing {out}")
        return out
    cmd = [sys.executable, "-m", "jobs.upscale", "--input", str(args.input), "--output", str(out),
           "--scale", f"{args.scale:g}", "--model", args.model, "--executor", "in-process",
           "--precision", args.precision, "--no-progress"]
    print("making the Zarr once:", " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    print(f"  {time.perf_counter() - t:.0f} s")
    return out


def load_baseline(rev: str) -> Any:
    """``pipeline/io/exports.py`` at git revision ``rev`` as a module."""
    src = subprocess.run(["git", "show", f"{rev}:pipeline/io/exports.py"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    spec = importlib.util.spec_from_loader(f"exports_at_{rev}", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(src, f"exports.py@{rev}", "exec"), module.__dict__)
    return module


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_export(fn: Any, out: Any, tmp: Path, repeat: int, **kwargs: Any) -> dict[str, float]:
    """Best of ``repeat`` runs of ``fn(out, path, **kwargs)``: wall s, cpu s, file bytes."""
    best: dict[str, float] | None = None
    for i in range(repeat):
        path = tmp / f"run{i}.tif"
        c0, t0 = cpu_seconds(), time.perf_counter()
        fn(out, str(path), **kwargs)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        run = {"wall": wall, "cpu": cpu, "bytes": path.stat().st_size}
        path.unlink()
        if best is None or run["wall"] < best["wall"]:
            best = run
    assert best is not None
    return best


def parse_config(text: str) -> tuple[str, int | None, int | None]:
    compress, level, threads = (text.split(":") + ["", ""])[:3]
    return compress, int(level) if level else None, int(threads) if threads and threads != "0" \
        else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", default=str(DEFAULT_INPUT))
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--model", default="edsr-baseline-liif")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--work", default=str(REPO / "out" / "bench"))
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                   help="compress:level:threads, empty level = GDAL's default, threads 0 = all")
    p.add_argument("--baseline", metavar="REV", help="also time exports.py at this git revision")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args()
    if not Path(args.input).exists():
        sys.exit(f"input {args.input} not found (see ../shared/data/MANIFEST.md)")

    from pipeline.io.exports import _cpu_count, export_geotiff
    from pipeline.io.zarr_output import ZarrOutput

    out = ZarrOutput(str(make_zarr(args)))
    c, h, w = out.shape
    raw = c * h * w * out.dtype.itemsize
    print(cpu_header())
    print(f"output {out.uri}: {c} x {h} x {w} {out.dtype}, {raw / 1e6:.1f} MB raw, "
          f"chunks {out.chunks}; best of {args.repeat}; COG blocksize 512 with overviews\n")
    runs: list[tuple[str, Any, dict[str, Any]]] = []
    if args.baseline:
        runs.append((f"before ({args.baseline}): deflate, defaults",
                     load_baseline(args.baseline).export_geotiff, {}))
    for text in args.configs:
        compress, level, threads = parse_config(text)
        label = (f"{compress}" + (f" level {level}" if level else " (default level)")
                 + f", {threads or _cpu_count()} thread(s)")
        runs.append((label, export_geotiff,
                     {"compress": compress, "level": level, "threads": threads}))
    header = (f"{'export':44s} {'wall s':>7s} {'cpu s':>7s} {'cores':>5s} {'MB/s':>7s} "
              f"{'MB/s/core':>9s} {'file MB':>8s} {'ratio':>6s}")
    print(header)
    print("-" * len(header))
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for label, fn, kwargs in runs:
            r = time_export(fn, out, Path(tmp), args.repeat, **kwargs)
            row = {"export": label, **r, "mb_s": raw / 1e6 / r["wall"],
                   "mb_s_core": raw / 1e6 / r["cpu"], "ratio": raw / r["bytes"]}
            rows.append(row)
            print(f"{label:44s} {r['wall']:7.2f} {r['cpu']:7.2f} {r['cpu'] / r['wall']:5.2f} "
                  f"{row['mb_s']:7.1f} {row['mb_s_core']:9.1f} {r['bytes'] / 1e6:8.2f} "
                  f"{row['ratio']:6.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_header(), "raw_bytes": raw,
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
