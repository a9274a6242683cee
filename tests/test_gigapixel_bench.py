"""bench/gigapixel.py works at a tiny size: the mosaic input is written block by block and equals
the mosaic computed whole, and one measured child job reports its figures. No timing is
asserted (the benchmark prints figures, never passes or fails)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import zarr

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gigapixel.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gigapixel", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_mosaic_input_and_one_measured_job(tmp_path: Path, shared_data: Path) -> None:
    g = _bench()
    variants = g.load_variants(shared_data / "geo")
    assert len(variants) == 16 and all(v.shape == (3, 704, 704) for v in variants)
    shape = (900, 1500)  # cells cut at block, chunk and cell edges
    src = tmp_path / "in.zarr"
    g.build_input(str(src), shape, chunk=128, wide=3, variants=variants)
    whole = g.mosaic_block(variants, 0, shape[0], 0, shape[1])
    assert np.array_equal(np.asarray(zarr.open_array(str(src), mode="r")[:]), whole)
    assert not np.array_equal(whole[:, :704, :704], whole[:, :704, 704:1408])

    assert g.sides(1.0, 2) == (500, 1000)
    small = tmp_path / "small.zarr"
    g.build_input(str(small), (64, 96), chunk=32, variants=variants)
    out = tmp_path / "out.zarr"
    rec = g.run_child({"src": str(small), "out": str(out), "scale": 2, "chunk": 32, "tile": 64,
                       "executor": "in-process", "progress": False})
    s = rec["summary"]
    assert s["out_shape"] == [128, 192] and s["tiles"] == 6 and s["tiles_run"] == 6
    assert set(s["stage_seconds"]) == {"read", "compute", "write", "wait"}
    assert rec["driver_hwm_kib"] >= rec["driver_hwm_before_job_kib"] > 0
    assert rec["records_held"]["records"] == 6 and rec["tree_peak_total_kib"] > 0
    stored = g.local_bytes(out)
    assert stored["manifest_files"] == 6 and 0 < stored["image_bytes"] <= stored["bytes"]
    out_arr = zarr.open_array(str(out / "image"), mode="r")
    assert out_arr.shape == (3, 128, 192)
