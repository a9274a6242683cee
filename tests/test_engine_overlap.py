"""The engine overlaps its stages, keeps in-flight work bounded, feeds free actors first and plans
balanced tiles; exactness is unchanged. Behaviour only (stage intervals from a traced test
double with sleeps standing in for slow storage and compute); no timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.geometry.tiling import balanced_plan
from pipeline.io.sources import SourceSpec
from pipeline.io.zarr_output import OutputSpec
from pipeline.run.doubles import NULL_FAMILY, NullConfig, null_model
from pipeline.run.engine import run_job


def _input(path: Path, shape: tuple[int, int, int] = (3, 64, 64)) -> str:
    data = np.random.default_rng(0).integers(1, 255, shape, dtype=np.uint8)
    arr = zarr.create_array(str(path), shape=shape, dtype="uint8", chunks=(shape[0], 32, 32))
    arr[:] = data
    return str(path)


def _trace(folder: Path) -> list[dict]:
    rows = []
    for f in folder.glob("*.jsonl"):
        rows += [json.loads(line) for line in f.read_text().splitlines()]
    return rows


def _max_concurrent(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(t0, 1) for t0, _ in intervals] + [(t1, -1) for _, t1 in intervals])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def _cfg(tmp: Path, src: str, **kw: object) -> NullConfig:
    base = dict(source=SourceSpec(src), output=OutputSpec(str(tmp / "out.zarr")), tile=32,
                chunk=16, executor="in-process", progress=False)
    base.update(kw)
    return NullConfig(**base)


def test_reads_and_writes_overlap_the_model_and_the_model_runs_one_tile_at_a_time(
        tmp_path: Path) -> None:
    src = _input(tmp_path / "in.zarr")
    (tmp_path / "trace").mkdir()
    model = null_model(compute=0.05, read=0.05, write=0.05, trace=tmp_path / "trace")
    s = run_job(_cfg(tmp_path, src, model=model, depth=3), NULL_FAMILY)
    assert s["tiles"] == 16 and s["tiles_in_flight_per_worker"] == 3
    rows = _trace(tmp_path / "trace")
    compute = [(r["t0"], r["t1"]) for r in rows if r["stage"] == "compute"]
    io = [(r["t0"], r["t1"]) for r in rows if r["stage"] != "compute"]
    assert len(compute) == 16 and _max_concurrent(compute) == 1  # one model, one tile at a time
    overlapped = sum(any(a < d and c < b for c, d in compute) for a, b in io)
    assert overlapped >= 16, f"only {overlapped} of 32 read/write stages overlapped the model"
    per_tile: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        per_tile.setdefault(r["tile"], []).append((r["t0"], r["t1"]))
    spans = [(min(t0 for t0, _ in v), max(t1 for _, t1 in v)) for v in per_tile.values()]
    assert _max_concurrent(spans) <= 3  # bounded: never more than depth tiles in flight
    assert set(s["stage_seconds"]) == {"read", "compute", "write", "wait"}
    assert s["stage_seconds"]["read"] > 0 and s["stage_seconds"]["write"] > 0


def test_depth_one_is_sequential(tmp_path: Path) -> None:
    src = _input(tmp_path / "in.zarr")
    (tmp_path / "trace").mkdir()
    run_job(_cfg(tmp_path, src, model=null_model(trace=tmp_path / "trace"), depth=1),
            NULL_FAMILY)
    rows = _trace(tmp_path / "trace")
    assert _max_concurrent([(r["t0"], r["t1"]) for r in rows]) == 1


@pytest.mark.parametrize("depth", [1, 3])
def test_overlap_keeps_the_output_exact(tmp_path: Path, tiny_liif: Path, depth: int) -> None:
    """The LIIF job with overlap on equals the whole-image upscale (<= 1e-5)."""
    import liif
    from pipeline.upscale import UpscaleConfig, run_upscale

    img = np.random.default_rng(2).random((3, 37, 53), dtype=np.float32)
    arr = zarr.create_array(str(tmp_path / "in.zarr"), shape=img.shape, dtype="float32")
    arr[:] = img
    run_upscale(UpscaleConfig(source=SourceSpec(str(tmp_path / "in.zarr")),
                              output=OutputSpec(str(tmp_path / "o.zarr")), scale=2.5,
                              model=str(tiny_liif), tile=32, chunk=16, executor="in-process",
                              depth=depth, threads_per_worker=1, progress=False,
                              precision="fp32"))
    out = np.asarray(zarr.open_array(str(tmp_path / "o.zarr"), path="image")[...])
    import torch

    with torch.no_grad():
        ref = liif.upscale(liif.load_model(tiny_liif), torch.from_numpy(img), scale=2.5)
    assert np.abs(out - ref.clamp(0, 1).numpy()).max() <= 1e-5


@pytest.mark.ray
def test_free_actors_get_more_tiles_than_a_slow_one(ray_local, tmp_path: Path) -> None:
    """Two actors, one of them ~100x slower per tile: tiles go to free capacity, so the fast
    actor does most of them (round-robin would split them evenly)."""
    src = _input(tmp_path / "in.zarr", (3, 96, 96))  # x2: 36 tiles of 32 px
    (tmp_path / "trace").mkdir()
    (tmp_path / "marker").mkdir()
    model = null_model(compute=0.01, slow=1.0, marker=tmp_path / "marker",
                       trace=tmp_path / "trace")
    s = run_job(_cfg(tmp_path, src, model=model, executor="ray", workers=2, depth=1,
                     tile=32, chunk=32), NULL_FAMILY)
    assert s["tiles"] == 36
    counts = sorted(sum(1 for line in f.read_text().splitlines()
                        if json.loads(line)["stage"] == "compute")
                    for f in (tmp_path / "trace").glob("*.jsonl"))
    assert sum(counts) == 36 and counts[-1] >= 24, counts


@pytest.mark.ray
def test_actors_get_even_work_when_tiles_are_few_and_unequal(ray_local, tmp_path: Path) -> None:
    """4 tiles of 4096, 2048, 2048 and 1024 px, 2 actors taking 3 at once: the largest goes
    first, each to the actor with the least pixels in flight (5120 / 4096); by count it was
    6144 / 3072."""
    src = _input(tmp_path / "in.zarr", (3, 48, 48))  # x2: 96 px, tiles of 64 -> 64, 32
    (tmp_path / "trace").mkdir()
    model = null_model(compute=0.01, trace=tmp_path / "trace")
    s = run_job(_cfg(tmp_path, src, model=model, executor="ray", workers=2, depth=3,
                     tile=64, chunk=32), NULL_FAMILY)
    assert s["tiles"] == 4
    size = {"0_0": 4096, "0_1": 2048, "1_0": 2048, "1_1": 1024}
    per_actor = sorted(sum(size[json.loads(line)["tile"]] for line in f.read_text().splitlines()
                           if json.loads(line)["stage"] == "compute")
                       for f in (tmp_path / "trace").glob("*.jsonl"))
    assert per_actor == [4096, 5120], per_actor


@pytest.mark.parametrize(("out", "workers"), [((1894, 1894), 2), ((2373, 2154), 1),
                                              ((8193, 8193), 4), ((300, 7000), 2),
                                              ((100, 100), 8), ((4096, 256), 3)])
def test_balanced_plans_have_no_slivers(out: tuple[int, int], workers: int) -> None:
    grid = 256
    plan = balanced_plan((out[0] // 3 or 1, out[1] // 3 or 1), out, max_tile=2048, halo=36,
                         grid=grid, workers=workers)
    tiles = plan.tiles()
    for axis, n_out in enumerate(out):
        sides = {t.out_window.shape[axis] for t in tiles}
        cells = -(-n_out // grid)
        # near-equal within one grid per axis (when there are cells to share), none above max
        assert max(sides) - min(sides) <= grid and max(sides) <= 2048, (axis, sides)
        assert all(s0 % grid == 0 for s0 in plan.starts[axis])
        assert len(plan.starts[axis]) <= cells
    n = len(tiles)
    most = (-(-out[0] // grid)) * (-(-out[1] // grid))
    assert n >= min(2 * workers, most)  # at least two per worker where the image allows


def test_the_demo_plan_is_balanced() -> None:
    """The 2-worker demo (512x512 -> 1894x1894): 4 tiles of near-equal area (was 2 of 3.2 Mpx
    and 2 slivers of 0.2 Mpx)."""
    tiles = balanced_plan((512, 512), (1894, 1894), max_tile=1792, halo=36, grid=256,
                          workers=2).tiles()
    areas = [t.out_window.size for t in tiles]
    assert len(areas) == 4 and min(areas) / max(areas) > 0.7
