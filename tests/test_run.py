"""The engine's units on their own: the worker base (with a toy model family: a third family is
one small class), the in-process executor, progress, and the model registry."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from liif.registry import Registry, RegistryError
from pipeline.errors import OutputLockedError
from pipeline.geometry.tiling import Tile, plan_tiles
from pipeline.io.sources import SourceSpec, probe_source
from pipeline.io.values import default_value_range, merge_groups
from pipeline.io.zarr_create import create_zarr_output
from pipeline.io.zarr_output import OutputSpec, ZarrOutput
from pipeline.run.engine import JobPlan, Role, run_job
from pipeline.run.executors import InProcessExecutor
from pipeline.run.options import JobOptions
from pipeline.run.progress import Progress
from pipeline.run.worker import BaseTileWorker, TileJob

# ------------------------------------------------------------------ a toy family: x2 nearest


class NearestWorker(BaseTileWorker):
    """x2 nearest-neighbour 'model': the smallest family there is (no torch model)."""

    def load_model(self) -> None:
        return None

    def infer(self, tile: Tile, unit: np.ndarray, more: Any = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        iw, ow = tile.in_window, tile.out_window
        rows = np.arange(ow.row0, ow.row1) // 2 - iw.row0
        cols = np.arange(ow.col0, ow.col1) // 2 - iw.col0
        groups = [unit[list(g)][:, rows][:, :, cols] for g in self.groups]
        return merge_groups(groups, self.groups, tuple(range(unit.shape[0]))), {"toy": True}


@dataclass(frozen=True, kw_only=True)
class NearestConfig(JobOptions):
    source: SourceSpec


class NearestFamily:
    worker_cls = NearestWorker

    def reads(self, cfg: NearestConfig) -> list[Role]:
        return [("--input", cfg.source.location)]

    def prepare(self, cfg: NearestConfig) -> JobPlan:
        info = probe_source(cfg.source)
        c, h, w = info.shape
        tiles = plan_tiles((h, w), (2 * h, 2 * w), tile=cfg.tile or 32, halo=0, chunk=cfg.grid)
        return JobPlan(bands=c, in_shape=(h, w), out_shape=(2 * h, 2 * w), dtype=info.dtype,
                       nodata=info.nodata, value_range=default_value_range(info.dtype),
                       tiles=tiles, tile=cfg.tile or 32, halo=0,
                       attrs={"job": {"toy": 1}, "input_identity": {"input": info.identity}})

    def make_job(self, cfg: NearestConfig, plan: JobPlan, output: ZarrOutput) -> TileJob:
        return TileJob(source=cfg.source, output_uri=output.uri, output_storage_options=None,
                       model="none", in_shape=plan.in_shape, out_shape=plan.out_shape,
                       value_range=plan.value_range, out_dtype=str(plan.dtype),
                       nodata=plan.nodata)

    def describe(self, cfg: NearestConfig, plan: JobPlan) -> dict[str, Any]:
        return {"family": "nearest"}


@pytest.fixture()
def image(tmp_path: Path) -> tuple[str, np.ndarray]:
    data = np.random.default_rng(0).integers(1, 255, (3, 37, 29), dtype=np.uint8)
    data[:, 5:9, 3:6] = 0
    arr = zarr.create_array(str(tmp_path / "in.zarr"), shape=data.shape, dtype="uint8",
                            chunks=(3, 16, 16))
    arr[:] = data
    arr.attrs["nodata"] = 0
    return str(tmp_path / "in.zarr"), data


def test_a_third_family_is_one_small_module(tmp_path: Path, image: tuple[str, np.ndarray]) -> None:
    """The engine runs the toy family end to end: checks, lease, tiles, nodata, resume."""
    src, data = image
    cfg = NearestConfig(source=SourceSpec(src), output=OutputSpec(str(tmp_path / "o.zarr")),
                        tile=32, chunk=16, executor="in-process", progress=False)
    s = run_job(cfg, NearestFamily())
    assert s["family"] == "nearest" and s["tiles"] == 6 and s["out_shape"] == [74, 58]
    out = np.asarray(zarr.open_array(str(tmp_path / "o.zarr"), path="image")[...])
    expected = data.repeat(2, axis=1).repeat(2, axis=2)
    assert np.array_equal(out, expected)  # nearest x2, nodata kept (0 stays 0, valid never 0)
    again = run_job(NearestConfig(**{**cfg.__dict__, "resume": True}), NearestFamily())
    assert again["tiles_verified"] == 6 and again["tiles_run"] == 0


def test_worker_base_records_digests_verifies_and_redoes(tmp_path: Path,
                                                        image: tuple[str, np.ndarray]) -> None:
    src, _ = image
    out = create_zarr_output(OutputSpec(str(tmp_path / "o.zarr")), shape=(3, 74, 58),
                             dtype="uint8", chunks=(16, 16))
    job = TileJob(source=SourceSpec(src), output_uri=out.uri, output_storage_options=None,
                  model="none", in_shape=(37, 29), out_shape=(74, 58), value_range=(0.0, 255.0),
                  out_dtype="uint8", nodata=0)
    worker = NearestWorker(job)
    tile = plan_tiles((37, 29), (74, 58), tile=32, halo=0, chunk=16).tiles()[0]
    rec = worker.process(tile)
    assert rec["toy"] and set(rec["digests"]) == {"0.0", "0.1", "1.0", "1.1"}
    assert rec["inputs"]["input"] and rec["nodata_pixels"] == 48  # 4 x 3 nodata input px, x2
    assert worker.process(tile, rec)["verified"]
    arr = zarr.open_array(out.uri, path="image", mode="r+")
    arr[:, 0:16, 0:16] = 7  # someone changed a chunk of the finished tile
    redone = worker.process(tile, rec)
    assert redone.get("redone") and not redone.get("verified")
    assert redone["digests"] == rec["digests"]
    worker.close()


class _FakeWorker:
    def __init__(self, job: Any) -> None:
        self.seen: list[str] = []

    def process(self, tile: Tile, trusted: dict | None = None) -> dict:
        self.seen.append(tile.key)
        return {"out_pixels": tile.out_window.size, "verified": trusted is not None}

    def pid(self) -> int:
        return 0

    def close(self) -> None:
        self.seen.append("closed")


class _Lease:
    def __init__(self, lose_after: int) -> None:
        self.calls, self.lose_after = 0, lose_after

    def check(self) -> None:
        self.calls += 1
        if self.calls > self.lose_after:
            raise OutputLockedError("lost")


def test_in_process_executor_keeps_order_counts_verified_and_checks_the_lease() -> None:
    tiles = plan_tiles((20, 20), (40, 40), tile=16, halo=0, chunk=16).tiles()
    ex = InProcessExecutor(None, _FakeWorker)
    progress = Progress(len(tiles), 1600, stream=None)
    recs = ex.run([(t, {"k": 1} if i == 0 else None) for i, t in enumerate(tiles)], progress,
                  lease=_Lease(100))
    assert ex.worker.seen == [t.key for t in tiles] and len(recs) == 9
    assert progress.tiles == 9 and progress.verified_pixels == 256
    assert progress.new_pixels == 1600 - 256
    with pytest.raises(OutputLockedError):
        InProcessExecutor(None, _FakeWorker).run([(t, None) for t in tiles], progress,
                                                 lease=_Lease(3))
    ex.close()
    assert ex.worker.seen[-1] == "closed"


def test_progress_line_and_final_newline() -> None:
    stream = io.StringIO()
    p = Progress(2, 200, stream=stream, interval=0.0)
    p.update(100)
    p.update(100)
    text = stream.getvalue()
    assert "tiles 2/2 (100.0%)" in text and text.endswith("\n") and "Mpx/s" in text


def test_registry_refuses_duplicates_and_names_the_known() -> None:
    r = Registry("thing")
    r.register("a", dict)
    with pytest.raises(RegistryError, match="thing 'a' is already registered"):
        r.register("a", list)
    with pytest.raises(RegistryError, match="unknown thing 'b'; known: a"):
        r.build("b")
    assert r.names() == ["a"] and "a" in r and r.build("a", {"x": 1}) == {"x": 1}
