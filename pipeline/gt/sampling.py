"""Which windows become patches: inputs expanded to sources, grid or seeded random windows,
candidates cut into shard tasks."""


from __future__ import annotations

import glob as _glob
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import InputNotFoundError
from pipeline.gt.config import _STREAM_PLACEMENT, _ZARR_MARKERS, IMAGE_EXTENSIONS, GTConfig
from pipeline.io.locations import resolve
from pipeline.io.sources import SourceSpec, open_source


def _is_zarr_dir(names: Iterable[str], path: str) -> bool:
    return path.rstrip("/").lower().endswith(".zarr") or any(
        n.rstrip("/").rsplit("/", 1)[-1] in _ZARR_MARKERS for n in names)


def expand_inputs(uris: Sequence[str], storage_options: dict[str, Any] | None = None) -> list[str]:
    """Expand URIs into raster URIs: globs (fsspec/glob), folders of images (recursive; a Zarr
    directory stays one input), single files or arrays. Sorted per entry, duplicates dropped.

    Raises:
        InputNotFoundError: a path, folder or glob that matches nothing readable.
    """
    out: list[str] = []
    for uri in uris:
        loc = resolve(uri, storage_options)
        local = loc.is_local
        fs, path = (None, loc.path) if local else loc.fs()
        if any(c in path for c in "*?["):
            matches = sorted(_glob.glob(path, recursive=True) if local else fs.glob(path))
            if not matches:
                raise InputNotFoundError(f"input glob {uri!r} matches nothing")
            found = []
            for m in matches:
                found += _expand_path(m, fs, uri)
        else:
            exists = os.path.exists(path) if local else fs.exists(path)
            if not exists:
                raise InputNotFoundError(f"input not found: {uri!r}")
            found = _expand_path(path, fs, uri) if local or fs.isdir(path) else [uri]
        out += found
    seen: set[str] = set()
    return [u for u in out if not (u in seen or seen.add(u))]


def _expand_path(path: str, fs: Any, uri: str) -> list[str]:
    """One matched path -> raster URIs (a non-zarr directory lists its images)."""
    isdir = os.path.isdir(path) if fs is None else fs.isdir(path)
    if not isdir:
        return [path if fs is None else fs.unstrip_protocol(path)]
    names = os.listdir(path) if fs is None else fs.ls(path, detail=False)
    if _is_zarr_dir(names, path):
        return [path if fs is None else fs.unstrip_protocol(path)]
    if fs is None:
        files = sorted(os.path.join(d, f) for d, _, fs_ in os.walk(path) for f in fs_
                       if f.lower().endswith(IMAGE_EXTENSIONS))
    else:
        files = sorted(fs.unstrip_protocol(p) for p in fs.find(path)
                       if p.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise InputNotFoundError(f"folder {uri!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def grid_windows(shape: tuple[int, int], patch: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners ``(row0, col0)`` of ``patch``-square grid windows covering ``shape``.

    Per axis ``ceil((n - patch) / stride) + 1`` starts; the last is shifted to ``n - patch`` so
    that every window lies inside. Empty when the image is smaller than ``patch``.
    """
    axes = []
    for n in shape:
        if n < patch:
            return []
        starts = list(range(0, n - patch + 1, stride))
        if starts[-1] != n - patch:
            starts.append(n - patch)
        axes.append(starts)
    return [(r, c) for r in axes[0] for c in axes[1]]


def _random_windows(shape: tuple[int, int], patch: int, n: int, seed: int, src: int
                    ) -> list[tuple[int, int]]:
    h, w = shape
    if h < patch or w < patch:
        return []
    rng = np.random.default_rng([seed, _STREAM_PLACEMENT, src])
    rows = rng.integers(0, h - patch + 1, size=n)
    cols = rng.integers(0, w - patch + 1, size=n)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


@dataclass(frozen=True)
class Candidate:
    source: int
    patch_index: int
    row0: int
    col0: int


@dataclass(frozen=True)
class ShardTask:
    index: int
    name: str
    candidates: tuple[Candidate, ...]
    specs: dict[int, SourceSpec]
    config: GTConfig
    output: str


def probe(spec: SourceSpec) -> dict[str, Any]:
    with open_source(spec) as src:
        nodata = src.nodata
        if nodata is not None and not math.isfinite(nodata):
            nodata = str(nodata)  # plain JSON: "nan", "inf"
        return {"uri": spec.uri, "shape": list(src.shape), "dtype": str(src.dtype),
                "nodata": nodata, "crs": src.crs is not None}


def plan_shards(cfg: GTConfig, probes: list[dict[str, Any]], specs: list[SourceSpec]
          ) -> list[ShardTask]:
    cands: list[Candidate] = []
    for i, p in enumerate(probes):
        hw = (p["shape"][1], p["shape"][2])
        if cfg.random is not None:
            corners = _random_windows(hw, cfg.patch, cfg.random, cfg.seed, i)
        else:
            corners = grid_windows(hw, cfg.patch, cfg.grid_stride)
        cands += [Candidate(i, k, r, c) for k, (r, c) in enumerate(corners)]
    tasks = []
    for t, start in enumerate(range(0, len(cands), cfg.patches_per_shard)):
        group = tuple(cands[start:start + cfg.patches_per_shard])
        used = {c.source: specs[c.source] for c in group}
        out = resolve(cfg.output, cfg.storage_options).url  # the same place from any cwd
        tasks.append(ShardTask(t, f"part-{t:05d}.parquet", group, used, cfg, out))
    return tasks


