"""Ground-truth generation speed: patches/s with 1 vs 2 (or more) Ray workers on the same input.

Prints one JSON line per worker count and the speed-up ratios; never passes or fails on time.

    python bench/gt_speed.py                       # 1024 px synthetic GeoTIFF, workers 1 and 2
    python bench/gt_speed.py --input ../shared/data/train/T91 --workers 1 2 --patch 96
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

from pipeline.gt import GTConfig, make_gt


def synthetic_geotiff(path: Path, size: int, seed: int = 0) -> str:
    """A textured ``size x size`` uint8 RGB GeoTIFF (tiled 256), so no patch is flat."""
    import numpy as np
    import rasterio
    from rasterio.transform import Affine

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = 127 + 80 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    data = np.stack([base, base.T, 255 - base]) + rng.normal(0, 12, (3, size, size))
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3,
                       dtype="uint8", tiled=True, blockxsize=256, blockysize=256,
                       crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 4000000)) as ds:
        ds.write(np.clip(data, 0, 255).astype("uint8"))
    return str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", default=None, help="inputs (default: synthetic GeoTIFF)")
    p.add_argument("--size", type=int, default=1024, help="side of the synthetic GeoTIFF")
    p.add_argument("--patch", type=int, default=96)
    p.add_argument("--lr-size", type=int, default=24)
    p.add_argument("--scale-range", nargs=2, type=float, default=[1.0, 4.0])
    p.add_argument("--patches-per-shard", type=int, default=16)
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--noise", type=float, default=None)
    a = p.parse_args(argv)

    import ray

    for k, v in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                 "RAY_USAGE_STATS_ENABLED": "0"}.items():
        os.environ.setdefault(k, v)
    with tempfile.TemporaryDirectory(prefix="gt-bench-") as tmp:
        inputs = a.input or [synthetic_geotiff(Path(tmp) / "scene.tif", a.size)]
        if not ray.is_initialized():
            ray.init(num_cpus=max(a.workers), include_dashboard=False, log_to_driver=False)

        def cfg(out: str) -> GTConfig:
            return GTConfig(inputs=tuple(inputs), output=out, patch=a.patch,
                            scale_range=tuple(a.scale_range), lr_size=a.lr_size,
                            patches_per_shard=a.patches_per_shard, noise=a.noise)

        # warm-up: start worker processes and import torch in them, off the clock
        make_gt(GTConfig(inputs=tuple(inputs), output=f"{tmp}/warm", patch=a.patch,
                         random=max(a.workers), scale_range=tuple(a.scale_range),
                         lr_size=a.lr_size, patches_per_shard=1), workers=max(a.workers))
        rows = []
        for w in a.workers:
            t0 = time.perf_counter()
            s = make_gt(cfg(f"{tmp}/out-w{w}"), workers=w)
            wall = time.perf_counter() - t0
            row = {"workers": w, "patches": s["patches"], "samples": s["samples"],
                   "shards": s["shards"], "seconds": round(wall, 2),
                   "patches_per_s": round(s["patches"] / wall, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        base = rows[0]["patches_per_s"]
        print(json.dumps({"speedup_vs_workers_" + str(rows[0]["workers"]):
                          {str(r["workers"]): round(r["patches_per_s"] / base, 2) for r in rows},
                          "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
