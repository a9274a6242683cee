"""Does the engine overlap its stages? Prints figures (never pass/fail).

Input: a 2048x2048 3-band uint8 Zarr assembled from the Sentinel-2 TCI raster of
../shared/data/geo (mirrored tiles), x2 to 4096x4096, 16 tiles of 1024 px, chunks of 256.

1. Raw I/O, no engine: read each tile's input window and write a precomputed output tile with
   plain zarr (the job's default codecs: codecs.compressors('auto')), in 1 thread and in N threads.
2. The engine with a *null* model (:class:`pipeline.run.doubles.NullTileWorker`): everything
   but the model (reads, fill checks, writes, digests, manifest records), in-process, with
   ``depth`` 1 (sequential) and N (overlapped). Target: >= 0.85x the raw rate of the same threads.
3. A model step as long as one tile's I/O (the null model sleeping, GIL released like torch):
   sequential vs overlapped wall time. Target: overlapped <= 0.6x sequential (ideal 0.5).

    python bench/engine_overlap.py [--threads 3] [--side 2048] [--repeat 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
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

from pipeline.run.engine import run_job  # noqa: E402

SHARED = Path(os.environ.get("LIIF_SHARED_DATA", ROOT.parent / "shared" / "data"))


def make_input(path: Path, side: int) -> str:
    import rasterio
    import zarr

    with rasterio.open(SHARED / "geo" / "sentinel2_TCI_100m.tif") as ds:
        img = ds.read()
    reps = (1, -(-side // img.shape[1]) + 1, -(-side // img.shape[2]) + 1)
    tiled = np.tile(np.concatenate([img, img[:, ::-1]], axis=1), reps)[:, :side, :side]
    arr = zarr.create_array(str(path), shape=(3, side, side), dtype="uint8",
                            chunks=(3, 512, 512), overwrite=True)
    arr[:] = np.ascontiguousarray(tiled)
    return str(path)


def plan(side: int, tile: int):
    from pipeline.geometry.tiling import plan_tiles

    return plan_tiles((side, side), (2 * side, 2 * side), tile=tile, halo=36, chunk=256)


def raw_io(src: str, out_dir: Path, tiles: list, threads: int) -> float:
    """Seconds to read every input window and write every output tile with plain zarr."""
    import zarr

    from pipeline.io.codecs import compressors

    inp = zarr.open_array(src, mode="r")
    side = inp.shape[1]
    out = zarr.create_array(str(out_dir / f"raw{threads}.zarr"), shape=(3, 2 * side, 2 * side),
                            dtype="uint8", chunks=(3, 256, 256), overwrite=True,
                            compressors=compressors("auto", np.dtype("uint8")))  # the job's
    first = np.asarray(inp[:, :512, :512]).repeat(2, 1).repeat(2, 2)

    def one(t) -> None:
        iw, ow = t.in_window, t.out_window
        np.asarray(inp[:, iw.row0:iw.row1, iw.col0:iw.col1])
        h, w = ow.shape
        data = np.tile(first, (1, -(-h // 1024), -(-w // 1024)))[:, :h, :w]
        out[:, ow.row0:ow.row1, ow.col0:ow.col1] = data

    t0 = time.perf_counter()
    if threads == 1:
        for t in tiles:
            one(t)
    else:
        with cf.ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, tiles))
    return time.perf_counter() - t0


def engine(src: str, out: Path, depth: int, compute_s: float, tile: int) -> dict:
    """The engine (in-process) with the null model sleeping ``compute_s`` per tile."""
    from pipeline.io.sources import SourceSpec
    from pipeline.io.zarr_output import OutputSpec
    from pipeline.run.doubles import NULL_FAMILY, NullConfig, null_model

    cfg = NullConfig(source=SourceSpec(src), output=OutputSpec(str(out)), tile=tile, chunk=256,
                     model=null_model(compute=compute_s), executor="in-process", depth=depth,
                     overwrite=True, progress=False)
    t0 = time.perf_counter()
    s = run_job(cfg, NULL_FAMILY)
    s["wall"] = time.perf_counter() - t0
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=3, help="I/O threads = tiles in flight")
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=2, help="best of N")
    a = ap.parse_args()
    import torch

    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"capability {torch.backends.cpu.get_cpu_capability()}")
    d = Path(tempfile.mkdtemp(prefix="liif-overlap-"))
    try:
        src = make_input(d / "in.zarr", a.side)
        tiles = plan(a.side, a.tile).tiles()
        mpx = 4 * a.side * a.side / 1e6
        best = lambda f: min(f() for _ in range(a.repeat))  # noqa: E731
        raw1 = best(lambda: raw_io(src, d, tiles, 1))
        rawn = best(lambda: raw_io(src, d, tiles, a.threads))
        print(f"{len(tiles)} tiles, {mpx:.1f} Mpx out")
        print(f"raw read+write, 1 thread : {raw1:6.2f} s  {mpx / raw1:6.1f} Mpx/s")
        print(f"raw read+write, {a.threads} threads: {rawn:6.2f} s  {mpx / rawn:6.1f} Mpx/s")
        e1 = min((engine(src, d / "e1.zarr", 1, 0.0, a.tile) for _ in range(a.repeat)),
                 key=lambda s: s["wall"])
        en = min((engine(src, d / "en.zarr", a.threads, 0.0, a.tile) for _ in range(a.repeat)),
                 key=lambda s: s["wall"])
        print(f"engine, null model, depth 1 : {e1['wall']:6.2f} s  {mpx / e1['wall']:6.1f} "
              f"Mpx/s  = {raw1 / e1['wall']:.2f}x raw 1 thread; stages {e1['stage_seconds']}")
        print(f"engine, null model, depth {a.threads} : {en['wall']:6.2f} s  "
              f"{mpx / en['wall']:6.1f} Mpx/s  = {rawn / en['wall']:.2f}x raw {a.threads} threads "
              f"(target >= 0.85); stages {en['stage_seconds']}")
        io_per_tile = e1["wall"] / len(tiles)
        s1 = engine(src, d / "s1.zarr", 1, io_per_tile, a.tile)
        sn = engine(src, d / "sn.zarr", a.threads, io_per_tile, a.tile)
        print(f"model step {io_per_tile:.3f} s/tile (= I/O per tile): sequential "
              f"{s1['wall']:.2f} s, overlapped {sn['wall']:.2f} s, ratio "
              f"{sn['wall'] / s1['wall']:.2f} (target <= 0.6, ideal 0.5); overlapped stages "
              f"{sn['stage_seconds']}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
