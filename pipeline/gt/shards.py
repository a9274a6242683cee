"""One shard: cut, degrade and write its samples as one Parquet file; the manifest and the
readers of a GT output."""


from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputNotFoundError
from pipeline.geometry.affine import window_transform
from pipeline.gt.config import (
    _STREAM_PATCH,
    LEGACY_MANIFEST,
    MANIFEST,
    SCHEMA,
    SHARD_DIR,
    GTConfig,
    hr_side,
)
from pipeline.gt.degrade import make_lr
from pipeline.gt.refpairs import REF_COLUMNS, Reference, patch_and_reference
from pipeline.gt.sampling import Candidate, ShardTask
from pipeline.io.atomic import write_bytes
from pipeline.io.locations import resolve
from pipeline.io.sources import SourceSpec, open_source
from pipeline.io.values import default_value_range, from_unit, nodata_mask, to_unit


def scales_for(cfg: GTConfig, rng: np.random.Generator) -> list[float]:
    drawn = []
    if cfg.scale_range is not None:
        lo, hi = cfg.scale_range
        drawn = [float(rng.uniform(lo, hi)) if lo != hi else float(lo)
                 for _ in range(cfg.range_samples)]
    return drawn + list(cfg.scales)




def samples_of_patch(cand: Candidate, block: np.ndarray, meta: dict[str, Any], cfg: GTConfig,
                      rows: dict[str, list], stats: dict[str, int],
                      reference: Reference | None = None) -> None:
    """Append the samples of one HR patch ``block (C, P, P)`` (native dtype) to ``rows``.

    ``reference(rng, window)`` gives the reference columns for the GT crop ``window`` (source
    pixels) or ``None`` (the sample is skipped and counted as ``skipped_no_reference``)."""
    vr = meta["value_range"]
    if nodata_mask(block, meta["nodata"]).any() or (
            block.dtype.kind == "f" and not np.isfinite(block).all()):
        stats["skipped_nodata"] += 1
        return
    unit = to_unit(block, vr)
    if float(unit.std(dtype=np.float64)) < cfg.flat_threshold:
        stats["skipped_flat"] += 1
        return
    stats["patches"] += 1
    rng = np.random.default_rng([cfg.seed, _STREAM_PATCH, cand.source, cand.patch_index])
    for k, s in enumerate(scales_for(cfg, rng)):
        side = hr_side(cfg.lr_size, s)
        oy = int(rng.integers(0, cfg.patch - side + 1))
        ox = int(rng.integers(0, cfg.patch - side + 1))
        hr = np.ascontiguousarray(block[:, oy:oy + side, ox:ox + side])
        lr_unit, deg = make_lr(unit[:, oy:oy + side, ox:ox + side], cfg, rng)
        if cfg.lr_dtype == "native":
            lr = np.ascontiguousarray(from_unit(lr_unit, block.dtype, vr))
        else:
            lr = (lr_unit * (vr[1] - vr[0]) + vr[0]).astype(np.float32)
        r0, c0 = cand.row0 + oy, cand.col0 + ox
        ref = None
        if reference is not None:
            ref = reference(rng, (r0, r0 + side, c0, c0 + side))
            if ref is None:
                stats["skipped_no_reference"] += 1
                continue
        for key in REF_COLUMNS:
            rows[key].append(None if ref is None else ref.get(key))
        rows["sample_id"].append(f"s{cand.source}-p{cand.patch_index}-k{k}")
        rows["source_index"].append(cand.source)
        rows["source_uri"].append(meta["uri"])
        rows["patch_index"].append(cand.patch_index)
        rows["sample_index"].append(k)
        rows["window"].append([r0, r0 + side, c0, c0 + side])
        rows["scale"].append(s)
        rows["hr"].append(hr.tobytes())
        rows["hr_shape"].append(list(hr.shape))
        rows["hr_dtype"].append(str(hr.dtype))
        rows["lr"].append(lr.tobytes())
        rows["lr_shape"].append(list(lr.shape))
        rows["lr_dtype"].append(str(lr.dtype))
        rows["value_lo"].append(vr[0])
        rows["value_hi"].append(vr[1])
        rows["crs"].append(meta["crs"])
        rows["transform"].append(None if meta["transform"] is None
                                 else list(window_transform(meta["transform"], r0, c0)))
        rows["seed"].append(cfg.seed)
        for key, value in deg.items():
            rows[key].append(value)
        stats["samples"] += 1


def run_shard(task: ShardTask) -> dict[str, Any]:
    """Cut, degrade and write one shard; returns its manifest record (small)."""
    t0 = time.perf_counter()
    cfg = task.config
    rows: dict[str, list] = {f.name: [] for f in SCHEMA}
    stats = {"candidates": len(task.candidates), "patches": 0, "samples": 0,
             "skipped_nodata": 0, "skipped_flat": 0, "skipped_no_reference": 0}
    by_source: dict[int, list[Candidate]] = {}
    for c in task.candidates:
        by_source.setdefault(c.source, []).append(c)
    with contextlib.ExitStack() as stack:
        ref_src = (stack.enter_context(open_source(SourceSpec(
            cfg.reference_input, storage_options=cfg.storage_options,
            bands=cfg.reference_bands))) if cfg.reference_input else None)
        for src_index, cands in by_source.items():
            with open_source(task.specs[src_index]) as src:
                vr = cfg.value_range or default_value_range(src.dtype)
                meta = {"uri": src.uri, "nodata": src.nodata, "crs": src.crs,
                        "transform": src.transform,
                        "value_range": (float(vr[0]), float(vr[1]))}
                for c in cands:
                    block, reference = patch_and_reference(src, ref_src, c, meta, cfg)
                    samples_of_patch(c, block, meta, cfg, rows, stats, reference)
    record: dict[str, Any] = {**stats, "file": None, "bytes": 0,
                              "sources": sorted(by_source)}
    if stats["samples"]:
        table = pa.table(rows, schema=SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        write_bytes(resolve(task.output, cfg.storage_options).child(f"{SHARD_DIR}/{task.name}"),
                    buf.getvalue(), make_parents=True)
        record.update(file=f"{SHARD_DIR}/{task.name}", bytes=buf.tell())
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return record


def read_manifest(output: str, storage_options: dict[str, Any] | None = None
                  ) -> dict[str, Any] | None:
    """The manifest of a GT output: its ``_manifest.json``, else the ``manifest.json`` of an
    output written before the rename; ``None`` when it has neither."""
    loc = resolve(output, storage_options)
    for name in (MANIFEST, LEGACY_MANIFEST):
        fs, path = loc.child(name).fs()
        try:
            return json.loads(fs.cat_file(path))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return None


def shard_paths(output: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """URIs of the finished, non-empty shards of a GT output (in shard order).

    Raises:
        InputNotFoundError: ``output`` has no manifest (``_manifest.json`` or, written before,
            ``manifest.json``).
    """
    man = read_manifest(output, storage_options)
    if man is None:
        raise InputNotFoundError(f"{output!r} is not a ground-truth output (no {MANIFEST})")
    base = output.rstrip("/")
    return [f"{base}/{rec['file']}" for _, rec in sorted(man["shards"].items()) if rec["file"]]


def totals(shards: dict[str, dict[str, Any]]) -> dict[str, int]:
    keys = ("candidates", "patches", "samples", "skipped_nodata", "skipped_flat",
            "skipped_no_reference")
    tot = {k: sum(int(r[k]) for r in shards.values()) for k in keys}
    tot["shards"] = sum(1 for r in shards.values() if r["file"])
    return tot


def decode_array(buf: bytes, shape: Sequence[int], dtype: str) -> np.ndarray:
    """Inverse of the shard encoding: raw C-order bytes + shape + dtype -> a numpy array."""
    shape = tuple(int(s) for s in shape)
    arr = np.frombuffer(buf, dtype=np.dtype(dtype))
    if arr.size != math.prod(shape):
        raise ValueError(f"{len(buf)} bytes of {dtype} do not hold shape {shape}")
    return arr.reshape(shape)


def pairs_from_batch(batch: dict[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray],
                                                     list[tuple[float, float]]]:
    """A batch of shard rows (column -> sequence, e.g. a Ray Data numpy batch or
    ``table.to_pydict()``) -> ``(lr_list, hr_list, value_ranges)`` for
    :func:`liif.pairs.batch_from_pairs`."""
    n = len(batch["hr"])
    lr = [decode_array(batch["lr"][i], batch["lr_shape"][i], str(batch["lr_dtype"][i]))
          for i in range(n)]
    hr = [decode_array(batch["hr"][i], batch["hr_shape"][i], str(batch["hr_dtype"][i]))
          for i in range(n)]
    vr = [(float(batch["value_lo"][i]), float(batch["value_hi"][i])) for i in range(n)]
    return lr, hr, vr
