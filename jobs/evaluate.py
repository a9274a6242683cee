"""``liif eval``: Y-PSNR tables (official LIIF benchmark protocol) for models against bicubic, on
benchmark image sets and on held-out windows of rasters (GeoTIFF/COG, Zarr, PNG; local or fsspec).

    python -m jobs.evaluate --model edsr-baseline-liif --data ../shared/data/benchmark \\
        [--sets Set5 Set14 B100] [--scales 2 3 4 6 8 12] [--precision fp32] [--limit N] [--out table.md]
    python -m jobs.evaluate --model official=edsr-baseline-liif mine=runs/ray/mine/final.safetensors \\
        --raster 'naip-2017-2019=../shared/data/geo_series/naip/*_201[789]*.tif' \\
        --raster s2=../shared/data/geo/sentinel2_TCI_100m.tif --bands 0 1 2 --window 192 \\
        [--stride 192] [--region R0 C0 R1 C1] [--value-range 0 10000] [--sets B100] --scales 2 3 4

``--model`` takes one or more checkpoints or bundled names, each optionally ``LABEL=MODEL`` (one
unlabelled model is called ``liif``). Each ``--raster NAME=PATTERN[,PATTERN...]`` is one table row
per method: the windows of all its files, pooled. A raster is cut into ``--window``-sized squares
on a grid (inside ``--region``, pixel bounds ``r0 c0 r1 c1``, the same for every file); windows
that touch nodata (every selected band equal to the nodata value) and near-flat ones (std below
``--flat-threshold`` in 0..1 units: open water, saturated sand) are left out. 8-bit rasters go
through exactly the benchmark protocol; other dtypes are mapped to [0, 1] by ``--value-range``
(default: the dtype's range) and degraded in float (:func:`liif.evaluation.unit_pair`). With
``--raster`` and no ``--sets`` only rasters are evaluated.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobs.labels import parse_labelled
from liif.errors import LiifError

DEFAULT_SETS = ["Set5", "Set14", "B100"]


def _parse_models(items: list[str]) -> dict[str, str]:
    """``["a=path", "name"]`` -> ``{label: model}``; a lone unlabelled model is ``liif``."""
    out: dict[str, str] = {}
    for label, model in parse_labelled(items, flag="--model", lone="liif"):
        if label in out or label == "bicubic":
            raise ValueError(f"--model label {label!r} is used twice (or is 'bicubic')")
        out[label] = model
    return out


def _parse_rasters(items: list[str]) -> dict[str, list[str]]:
    """``NAME=PATTERN[,PATTERN...]`` -> ``{name: [files]}`` (globs expanded, sorted)."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, patterns = item.partition("=")
        if not sep or not name or not patterns:
            raise ValueError(f"--raster {item!r} must be NAME=PATTERN[,PATTERN...]")
        if name in out:
            raise ValueError(f"--raster name {name!r} is used twice")
        files: list[str] = []
        for pat in patterns.split(","):
            found = (sorted(glob.glob(pat, recursive=True)) if any(c in pat for c in "*?[")
                     else [pat])
            if not found:
                raise FileNotFoundError(f"--raster {name}: pattern {pat!r} matches no file")
            files += found
        out[name] = files
    return out


def _raster_patterns(items: list[str]) -> list[str]:
    """The patterns of ``NAME=PATTERN[,PATTERN...]`` items as given (globs unexpanded), for the
    path check: a glob counts as the folder it searches (:func:`pipeline.io.locations.check_paths`)."""
    return [pat for item in items for pat in item.partition("=")[2].split(",") if pat]


def raster_windows(uri: str, *, bands: list[int] | None, window: int, stride: int | None,
                   region: tuple[int, int, int, int] | None,
                   value_range: tuple[float, float] | None,
                   flat_threshold: float = 0.0) -> Iterator[Any]:
    """The valid evaluation windows of one raster as ``(3, window, window)`` tensors.

    Windows touching nodata, and windows whose standard deviation (in 0..1 units, all bands) is
    below ``flat_threshold`` (open water, saturated sand: they only inflate a mean PSNR), are left
    out. uint8 (with no ``value_range``) stays uint8; anything else becomes float32 in [0, 1].
    """
    import numpy as np
    import torch

    from liif.evaluation import grid_windows
    from pipeline.io.sources import SourceSpec, open_source

    with open_source(SourceSpec(uri, bands=tuple(bands) if bands else None)) as src:
        c, H, W = src.shape
        if bands is None and c >= 3:
            keep = [0, 1, 2]
        elif c in (1, 3):
            keep = list(range(c))
        else:
            raise ValueError(f"{uri!r} has {c} selected band(s); give --bands with 1 or 3 bands")
        for r0, r1, c0, c1 in grid_windows((H, W), window, stride=stride, region=region):
            arr = src.read((r0, r1), (c0, c1))[keep]
            if src.nodata is not None:
                nd = np.isnan(arr) if np.isnan(src.nodata) else arr == src.nodata
                if nd.all(axis=0).any():
                    continue
            if arr.shape[0] == 1:
                arr = np.repeat(arr, 3, axis=0)
            if value_range is None:
                info = np.iinfo(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else None
                lo, hi = (float(info.min), float(info.max)) if info else (0.0, 1.0)
            else:
                lo, hi = value_range
            unit = np.clip((arr.astype(np.float64) - lo) / (hi - lo), 0, 1)
            if float(unit.std()) < flat_threshold:
                continue
            if arr.dtype == np.uint8 and value_range is None:
                yield torch.from_numpy(np.ascontiguousarray(arr))
            else:
                yield torch.from_numpy(unit.astype(np.float32))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liif eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["edsr-baseline-liif"],
                   help="checkpoint paths or bundled names, each optionally LABEL=MODEL")
    p.add_argument("--data", default="../shared/data/benchmark",
                   help="folder holding <set>/HR/*.png (default ../shared/data/benchmark)")
    p.add_argument("--sets", nargs="+", default=None, help=f"benchmark sets (default {DEFAULT_SETS})")
    p.add_argument("--raster", action="append", default=[], metavar="NAME=PATTERN[,PATTERN]",
                   help="a raster row: files (globs) whose windows are pooled; repeatable")
    p.add_argument("--bands", nargs="+", type=int, default=None,
                   help="0-based raster bands, 3 (or 1, replicated); default the first three")
    p.add_argument("--window", type=int, default=192, help="raster window side (default 192)")
    p.add_argument("--stride", type=int, default=None, help="window stride (default --window)")
    p.add_argument("--region", nargs=4, type=int, default=None, metavar=("R0", "C0", "R1", "C1"),
                   help="only windows inside these pixel bounds (held-out area)")
    p.add_argument("--value-range", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="raster values mapped to 0..1 (default: the dtype's range)")
    p.add_argument("--flat-threshold", type=float, default=0.01,
                   help="skip raster windows whose std (0..1 units) is below this (default 0.01)")
    p.add_argument("--scales", nargs="+", type=int, default=[2, 3, 4, 6, 8, 12])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--limit", type=int, default=None, help="at most N images (windows) per set")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-bicubic", action="store_true")
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument("--json", help="also write the raw numbers as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    import torch

    from liif import load_model
    from liif.evaluation import (
        bicubic_upscale,
        evaluate_folder,
        evaluate_images,
        format_table,
        model_method,
    )

    if a.threads:
        torch.set_num_threads(a.threads)
    bad = [s for s in a.scales if s < 1]
    if bad:
        p.error(f"scales {bad} must be >= 1")
    if a.window < max(a.scales):
        p.error(f"--window {a.window} is smaller than the largest scale {max(a.scales)}")
    if a.value_range is not None and not a.value_range[0] < a.value_range[1]:
        p.error(f"--value-range {a.value_range} needs LO < HI")
    try:
        models = _parse_models(a.model)
        rasters = _parse_rasters(a.raster)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    sets = a.sets if a.sets is not None else ([] if rasters else DEFAULT_SETS)
    data = Path(a.data)
    from liif.loop import FolderPathError, check_folder_path
    from pipeline.errors import PipelineError
    from pipeline.io.atomic import check_target, write_bytes
    from pipeline.io.locations import check_paths, model_files, resolve

    try:  # the reports are checked now, not after hours of evaluation
        # a --raster glob counts as the folder it searches (check_paths cuts each pattern back
        # to it), as in make_gt and train; the files it matched count too (symlinks elsewhere)
        check_paths({"--out": a.out, "--json": a.json},
                    {"--data": [str(data / s) for s in sets],
                     "--raster": _raster_patterns(a.raster)
                     + [f for fs in rasters.values() for f in fs],
                     "--model": model_files(*models.values())})
        for flag, target in (("--out", a.out), ("--json", a.json)):
            if target:
                if resolve(target).is_local:  # a file or a dangling link where a folder is
                    check_folder_path(target, role=flag, file=True)
                check_target(resolve(target), overwrite=True, role=flag)
    except (PipelineError, FolderPathError) as e:
        p.error(str(e))
    missing = [s for s in sets if not (data / s / "HR").is_dir()]
    if missing:
        sys.stderr.write(f"error: no HR folder for {missing} under {str(data)!r}\n")
        return 2
    try:
        loaded = {label: load_model(m) for label, m in models.items()}
    except LiifError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    methods = {label: model_method(m, precision=a.precision) for label, m in loaded.items()}
    if not a.no_bicubic:
        methods = {"bicubic": bicubic_upscale, **methods}

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    results: dict[str, Any] = {}
    counts: dict[str, int] = {}
    t0 = time.time()
    for s in sets:
        results[s] = evaluate_folder(data / s / "HR", a.scales, methods, limit=a.limit, progress=log)

    for name, files in rasters.items():
        def windows(files: list[str] = files) -> Iterator[Any]:
            n = 0
            for f in files:
                for img in raster_windows(f, bands=a.bands, window=a.window, stride=a.stride,
                                          region=tuple(a.region) if a.region else None,
                                          value_range=tuple(a.value_range) if a.value_range else None,
                                          flat_threshold=a.flat_threshold):
                    if a.limit is not None and n >= a.limit:
                        return
                    n += 1
                    yield img
        seen = [0]

        def progress(i: int, name: str = name, seen: list[int] = seen) -> None:
            seen[0] = i
            log(f"{name}: {i} windows")
        try:
            results[name] = evaluate_images(windows(), a.scales, methods, progress=progress)
        except LiifError as e:
            sys.stderr.write(f"error: raster set {name!r}: {e}\n")
            return 2
        if seen[0] == 0:
            sys.stderr.write(f"error: raster set {name!r} has no window of {a.window} px without "
                             f"nodata (files {files})\n")
            return 2
        counts[name] = seen[0]
    table = format_table(results, a.scales)
    print(table)
    print(f"({time.time() - t0:.0f} s, models {models}, precision {a.precision}"
          + (f", raster windows {counts}" if counts else "") + ")", file=sys.stderr)
    from pipeline.io.zarr_output import CREATED_BY

    if a.out:  # the first line marks the report as ours (only our own files are replaced)
        write_bytes(resolve(a.out), (f"<!-- created_by: {CREATED_BY} (jobs.evaluate) -->\n"
                                     + table + "\n").encode())
    if a.json:
        write_bytes(resolve(a.json), json.dumps(
            {"created_by": CREATED_BY, "model": a.model[0] if len(a.model) == 1 else models,
             "models": models, "precision": a.precision, "windows": counts,
             "results": results}, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
