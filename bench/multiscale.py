"""Several products from one pass vs separate runs. Prints figures (never pass/fail).

The bundled default model (edsr-baseline-liif) upscales a crop of a real image (the Sentinel-2
TCI raster of ../shared/data/geo when present, else scikit-image's astronaut) to each scale of
``--scales`` twice: in one job (``--scale 2 3 4``: one encoder pass per tile, every size
decoded from the same latents) and in one job per scale. In-process executor, one worker,
``--precision`` (fp32 by default); best of ``--repeat``. Also checks that each product equals
its separate run.

    python bench/multiscale.py [--side 256] [--scales 2 3 4] [--threads 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("LIIF_SHARED_DATA", ROOT.parent / "shared" / "data"))


def make_input(path: Path, side: int) -> tuple[str, str]:
    """A ``(3, side, side)`` uint8 Zarr crop of a real image; returns (uri, its name)."""
    import zarr

    tif = SHARED / "geo" / "sentinel2_TCI_100m.tif"
    if tif.exists():
        import rasterio

        with rasterio.open(tif) as ds:
            img, name = ds.read(window=((0, side), (0, side))), tif.name
    else:
        from skimage import data

        img, name = data.astronaut().transpose(2, 0, 1)[:, :side, :side], "skimage astronaut"
    arr = zarr.create_array(str(path), shape=img.shape, dtype="uint8", overwrite=True)
    arr[:] = np.ascontiguousarray(img)
    return str(path), name


def run(src: str, out: Path, scales: list[float], threads: int, precision: str = "fp32"
        ) -> tuple[float, dict]:
    from pipeline.io.sources import SourceSpec
    from pipeline.io.zarr_output import OutputSpec
    from pipeline.upscale import UpscaleConfig, run_upscale

    if out.exists():
        shutil.rmtree(out)
    cfg = UpscaleConfig(source=SourceSpec(src), output=OutputSpec(str(out)), scale=scales[0],
                        products=tuple(scales[1:]), executor="in-process", workers=1,
                        threads_per_worker=threads, precision=precision, progress=False)
    t0 = time.perf_counter()
    summary = run_upscale(cfg)
    return time.perf_counter() - t0, summary


def main() -> None:
    import torch
    import zarr

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=256)
    p.add_argument("--scales", type=float, nargs="+", default=[2.0, 3.0, 4.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_multiscale_"))
    try:
        src, name = make_input(tmp / "in.zarr", a.side)
        print(f"cpu: {platform.processor() or platform.machine()}, torch "
              f"{torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
              f"threads {a.threads}, precision {a.precision}")
        print(f"input: {a.side} x {a.side} x 3 uint8 crop of {name}; scales {a.scales}")
        best_one = min(run(src, tmp / "all.zarr", a.scales, a.threads, a.precision)[0]
                       for _ in range(a.repeat))
        separate = {}
        for s in a.scales:
            separate[s] = min(run(src, tmp / f"x{s:g}.zarr", [s], a.threads, a.precision)[0]
                              for _ in range(a.repeat))
            print(f"  separate x{s:g}: {separate[s]:.2f} s")
        total = sum(separate.values())
        print(f"  one job, {len(a.scales)} products: {best_one:.2f} s; separate runs: "
              f"{total:.2f} s -> {total / best_one:.2f}x faster, {100 * (1 - best_one / total):.0f} "
              "% of the time saved")
        group = zarr.open_group(str(tmp / "all.zarr"), mode="r")
        main_scale = max(a.scales)
        for s in a.scales:
            arr = group["image" if s == main_scale else f"scales/x{s:g}/image"][:]
            ref = zarr.open_group(str(tmp / f"x{s:g}.zarr"), mode="r")["image"][:]
            diff = np.abs(arr.astype(int) - ref)
            print(f"  x{s:g}: max |product - separate| = {diff.max()} (uint8), "
                  f"{100 * (diff == 0).mean():.3f} % identical")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
