"""``liif make-gt``: cut resolution-varied (LR, HR) training pairs from rasters into Parquet shards.

Every input is opened (probed) before the output is created; a run that fails before its first
shard is finished removes the output folder it created (never one that existed before).

Examples::

    python -m jobs.make_gt --input ../shared/data/train --output out/gt --patch 192 --stride 192 \\
        --scale-range 1 4 --lr-size 48 --seed 0 --workers 2
    python -m jobs.make_gt --input 's3://bucket/scenes/*.tif' --output out/gt --random 500 \\
        --scales 2 3 4 --patch 192 --bands 2 1 0 --value-range 0 10000 --noise 0 0.02 --resume
    python -m jobs.make_gt --input ../shared/data/train --output out/gt_ref --patch 160 \\
        --scales 4 --lr-size 40 --reference view --ref-size 160 --random 8
    python -m jobs.make_gt --smoke-test
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError
from pipeline.gt import GTConfig, check_gt_paths, make_gt, shard_paths
from pipeline.io.jsontext import json_line
from pipeline.io.locations import resolve


def _storage_options(items: list[str], parser: argparse.ArgumentParser) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for kv in items:
        if "=" not in kv:
            parser.error(f"--storage-option expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out or None


def _smoke_inputs(root: Path) -> list[str]:
    """A tiny PNG folder and a GeoTIFF with a nodata corner (seeded, ~100 kB)."""
    import numpy as np
    import rasterio
    from PIL import Image
    from rasterio.transform import Affine

    rng = np.random.default_rng(0)
    folder = root / "png"
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:75, 0:101]
    for i in range(2):
        base = 127 + 100 * np.sin(xx / (5 + i)) * np.cos(yy / 7)
        img = np.stack([base, base[::-1], base[:, ::-1]], -1) + rng.normal(0, 5, (75, 101, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img{i}.png")
    data = (20000 + 15000 * np.sin(np.mgrid[0:3, 0:90, 0:110][2] / 6.0)
            + rng.normal(0, 500, (3, 90, 110))).astype(np.uint16)
    data[:, :30, :30] = 0
    tif = root / "scene.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=110, height=90, count=3, dtype="uint16",
                       crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 4000000),
                       nodata=0) as ds:
        ds.write(data)
    return [str(folder), str(tif)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liif make-gt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", metavar="URI",
                   help="image folders, GeoTIFF/COG, zarr arrays, globs; local or fsspec URLs")
    p.add_argument("--output", help="output directory or fsspec URL: shards/*.parquet + "
                   "_manifest.json, a Parquet dataset as it is (pyarrow, pandas, Ray Data)")
    p.add_argument("--patch", type=int, default=192, help="HR patch side in source pixels")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--stride", type=int, default=None, help="grid stride (default: --patch)")
    where.add_argument("--random", type=int, default=None, metavar="N",
                       help="N seeded random patch positions per source instead of the grid")
    p.add_argument("--scale-range", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="continuous scales s ~ U(LO, HI) (default 1 4 unless --scales is given)")
    p.add_argument("--range-samples", type=int, default=1,
                   help="samples per patch drawn from --scale-range")
    p.add_argument("--scales", nargs="+", type=float, default=[],
                   help="fixed scales, one sample each per patch")
    p.add_argument("--lr-size", type=int, default=48, help="LR side; HR side = round(lr_size*s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flat-threshold", type=float, default=0.01,
                   help="skip patches whose std (in 0..1 units) is below this")
    p.add_argument("--value-range", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="values mapped to 0..1 (default: dtype range; floats 0 1)")
    p.add_argument("--bands", nargs="+", type=int, default=None, help="0-based bands to keep")
    p.add_argument("--blur", nargs="+", type=float, default=None, metavar="SIGMA",
                   help="Gaussian blur sigma in HR pixels before downscaling (a value, or MIN MAX)")
    p.add_argument("--noise", nargs="+", type=float, default=None, metavar="STD",
                   help="Gaussian noise std on the LR, in 0..1 units (one value, or MIN MAX)")
    p.add_argument("--jpeg", nargs="+", type=int, default=None, metavar="QUALITY",
                   help="JPEG quality of the LR (one value, or MIN MAX)")
    p.add_argument("--lr-dtype", choices=("float32", "native"), default="float32",
                   help="store the LR unquantised (float32) or in the source dtype")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--reference", choices=("view",), default=None,
                     help="add a TTSR reference per sample: 'view' = another view of the same "
                          "source (shifted, rotated, rescaled, re-lit; the GT window excluded). "
                          "Needs --scales 4")
    ref.add_argument("--reference-input", default=None, metavar="URI",
                     help="instead, a co-registered raster (same CRS/dtype) whose window around "
                          "each GT crop is its reference. Needs --scales 4")
    p.add_argument("--reference-bands", nargs="+", type=int, default=None,
                   help="0-based bands of --reference-input")
    p.add_argument("--ref-size", type=int, default=160, help="reference side (multiple of 4)")
    p.add_argument("--ref-shift", type=int, default=0,
                   help="--reference-input: shift its window by up to this many pixels")
    p.add_argument("--patches-per-shard", type=int, default=128)
    p.add_argument("--workers", type=int, default=2,
                   help="Ray tasks at once (0: in-process, no Ray)")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec option for remote inputs/output, e.g. endpoint_url=http://...")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true",
                      help="replace a previous GT output (never a folder of other files)")
    mode.add_argument("--resume", action="store_true", help="finish an interrupted output")
    p.add_argument("--smoke-test", action="store_true",
                   help="generate tiny inputs and run end to end in seconds")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    tmp = None
    if a.smoke_test:
        tmp = tempfile.TemporaryDirectory(prefix="liif-make-gt-smoke-")
        a.input = a.input or _smoke_inputs(Path(tmp.name))
        a.output = a.output or str(Path(tmp.name) / "gt")
        a.patch, a.lr_size, a.stride = 32, 12, 24
        a.scales = a.scales or [2.5]
        a.patches_per_shard = 8
        a.noise = a.noise or [0.0, 0.02]
    if not a.input or not a.output:
        p.error("--input and --output are required (or use --smoke-test)")
    scale_range = tuple(a.scale_range) if a.scale_range else (None if a.scales else (1.0, 4.0))
    try:
        cfg = GTConfig(
            inputs=tuple(a.input), output=a.output, patch=a.patch, stride=a.stride, random=a.random,
            scale_range=scale_range, range_samples=a.range_samples, scales=tuple(a.scales),
            lr_size=a.lr_size, seed=a.seed, flat_threshold=a.flat_threshold,
            value_range=tuple(a.value_range) if a.value_range else None,
            bands=tuple(a.bands) if a.bands else None, blur=a.blur, noise=a.noise, jpeg=a.jpeg,
            lr_dtype=a.lr_dtype, patches_per_shard=a.patches_per_shard,
            reference=a.reference, reference_input=a.reference_input,
            reference_bands=tuple(a.reference_bands) if a.reference_bands else None,
            ref_size=a.ref_size, ref_shift=a.ref_shift,
            storage_options=_storage_options(a.storage_option, p))
        check_gt_paths(cfg)  # before Ray starts
    except PipelineError as e:
        p.error(str(e))
    out = resolve(cfg.output, cfg.storage_options)
    if out.is_local:
        # the output folder is created later: refuse now a file or a dangling link in its way
        # (the link would be followed, making the folder wherever it points)
        from liif.loop import FolderPathError, check_folder_path

        try:
            check_folder_path(cfg.output, role="--output")
        except FolderPathError as e:
            p.error(str(e))
    if not (a.overwrite or a.resume):
        # refused later anyway (after every input is probed): say it now, before Ray starts
        from pipeline.io.atomic import exists

        try:
            taken = exists(out)
        except OSError:
            taken = False  # an unreachable store: make_gt reports it
        if taken:  # reported as make_gt reports it (exit 2), only sooner
            print(f"error: output {cfg.output!r} exists and is not empty; pass --overwrite (only "
                  "a previous ground-truth output is replaced) or --resume", file=sys.stderr)
            return 2
    if a.workers > 0:
        import ray

        if not ray.is_initialized():
            ray.init(log_to_driver=False)
    try:
        summary = make_gt(cfg, workers=a.workers, overwrite=a.overwrite, resume=a.resume,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
        if a.smoke_test:
            import pyarrow.parquet as pq

            rows = sum(pq.read_metadata(f).num_rows for f in shard_paths(cfg.output))
            if rows != summary["samples"] or rows == 0:
                raise RuntimeError(f"smoke test: shards hold {rows} rows, summary says "
                                   f"{summary['samples']}")
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if tmp is not None:  # the generated inputs (and the output, unless --output was given)
            tmp.cleanup()
    print(json_line(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
