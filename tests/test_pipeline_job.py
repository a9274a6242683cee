"""Job behaviour of the upscale pipeline: executors agree, resume, crashes, georeferencing, bands,
value ranges and the JSON summary. Tiny random models and images keep it fast on CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import zarr
from conftest import make_tiny_liif as tiny_checkpoint
from rasterio.crs import CRS
from rasterio.transform import Affine

import liif
from jobs.upscale import main
from pipeline.geometry.affine import scaled_transform
from pipeline.io.sources import SourceSpec
from pipeline.io.values import fill_invalid, to_unit
from pipeline.io.zarr_output import OutputSpec
from pipeline.run.executors import make_executor
from pipeline.run.progress import Progress
from pipeline.upscale import UpscaleConfig, run_upscale

REPO = Path(__file__).resolve().parents[1]
CLI = ["--executor", "in-process", "--no-progress", "--threads-per-worker", "1", "--precision",
       "fp32"]
TOL = 1e-5



def write_zarr(path: Path, data: np.ndarray, attrs: dict | None = None) -> str:
    """``data`` as a Zarr v3 array (16-px spatial chunks)."""
    chunks = tuple(min(s, 16) if i >= data.ndim - 2 else s for i, s in enumerate(data.shape))
    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=chunks,
                            attributes=attrs or {})
    arr[...] = data
    return str(path)


def read_output(uri: str | Path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(uri), path="image", mode="r")[...])


def whole(ckpt: Path, image: np.ndarray, **kw: object) -> np.ndarray:
    """Whole-image ``liif.upscale`` of a (3, h, w) float image in [0, 1]."""
    model = liif.load_model(ckpt)
    return liif.upscale(model, torch.from_numpy(np.ascontiguousarray(image, np.float32)),
                        **kw).numpy()


def config(ckpt: Path, src: str, out: Path, **kw: object) -> UpscaleConfig:
    base = dict(scale=2.7, tile=32, chunk=16, executor="in-process", threads_per_worker=1,
                progress=False, precision="fp32")
    base.update(kw)
    return UpscaleConfig(source=SourceSpec(src), output=OutputSpec(str(out)), model=str(ckpt),
                         **base)


def manifest_dir(out: Path) -> Path:
    return out / "_manifest"


def records(out: Path) -> dict[str, dict]:
    """Tile key -> manifest record."""
    d = manifest_dir(out)
    return {p.stem: json.loads(p.read_text()) for p in d.glob("*.json") if p.name != "zarr.json"}


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """Jobs here set torch's thread count in this process (--threads-per-worker); undo it."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def job16(tmp_path_factory: pytest.TempPathFactory, ckpt: Path) -> dict:
    """A 37x41 float32 input (x2.7 -> 100x111, 16 tiles of 32 px) and its in-process output."""
    d = tmp_path_factory.mktemp("job16")
    img = np.random.default_rng(1).random((3, 37, 41), dtype=np.float32)
    src = write_zarr(d / "in.zarr", img)
    summary = run_upscale(config(ckpt, src, d / "ref.zarr"))
    assert summary["tiles"] == 16 and summary["tiles_run"] == 16
    return {"src": src, "img": img, "ref": read_output(d / "ref.zarr"), "summary": summary}


# ------------------------------------------------------------------------------- executors


@pytest.mark.ray
@pytest.mark.slow
def test_ray_executor_equals_in_process(ray_local, tmp_path: Path, ckpt: Path, job16: dict) -> None:
    """Two Ray actors write the same output as the in-process executor; both actors worked."""
    summary = run_upscale(config(ckpt, job16["src"], tmp_path / "ray.zarr", executor="ray",
                                 workers=2))
    assert summary["executor"] == "ray" and summary["tiles_run"] == 16
    out = read_output(tmp_path / "ray.zarr")
    assert np.abs(out - job16["ref"]).max() <= TOL
    assert len({r["worker"] for r in records(tmp_path / "ray.zarr").values()}) == 2


@pytest.mark.ray
@pytest.mark.slow
def test_killed_actor_is_restarted_and_job_completes(ray_local, tmp_path: Path, ckpt: Path,
                                                     job16: dict,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL one of two actors after the first finished tile: Ray restarts it, its tasks are
    retried, the job completes and the output equals the uninterrupted run."""
    state: dict = {}

    class KillingProgress:
        """Passes updates on; kills the second actor after the first finished tile."""

        def __init__(self, inner: Progress) -> None:
            self.inner = inner

        def update(self, pixels: int, **kw: bool) -> None:
            self.inner.update(pixels, **kw)
            if "killed" not in state:
                state["killed"] = state["pids"][1]
                os.kill(state["killed"], signal.SIGKILL)

    def capturing(cfg: UpscaleConfig, job: object, worker_cls: type) -> object:
        ex = make_executor(cfg, job, worker_cls)
        state["pids"] = ex.pids()
        run = ex.run
        ex.run = lambda work, progress, **kw: run(work, KillingProgress(progress), **kw)
        return ex

    summary = run_upscale(config(ckpt, job16["src"], tmp_path / "ray.zarr", executor="ray",
                                 workers=2), executor_factory=capturing)
    assert "killed" in state
    assert summary["tiles_run"] == 16
    recs = records(tmp_path / "ray.zarr")
    assert len(recs) == 16
    pids = {int(r["worker"].rsplit(":", 1)[1]) for r in recs.values()}
    assert pids - set(state["pids"]), "no tile was processed by a restarted actor"
    assert np.abs(read_output(tmp_path / "ray.zarr") - job16["ref"]).max() <= TOL


# ---------------------------------------------------------------------------------- resume


def chunk_files(out: Path) -> dict[str, tuple[int, bytes]]:
    """Chunk key -> (mtime_ns, bytes) for every stored chunk of the output array."""
    root = out / "image" / "c"
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in root.rglob("*") if p.is_file()}


def test_resume_recomputes_only_missing_tiles(tmp_path: Path, ckpt: Path, job16: dict) -> None:
    """Delete two tiles' manifest records and fill their chunks with garbage: ``resume`` reruns
    exactly those tiles, leaves every other chunk untouched and restores the exact output."""
    out = tmp_path / "out.zarr"
    shutil.copytree(Path(job16["summary"]["output"]), out)
    assert records(out).keys() == {f"{y}_{x}" for y in range(4) for x in range(4)}
    damaged = {"1_2": (32, 64, 64, 96), "3_3": (96, 100, 96, 111)}
    arr = zarr.open_array(str(out), path="image", mode="r+")
    rng = np.random.default_rng(9)
    for key, (r0, r1, c0, c1) in damaged.items():
        (manifest_dir(out) / f"{key}.json").unlink()
        arr[:, r0:r1, c0:c1] = rng.random((3, r1 - r0, c1 - c0), dtype=np.float32) + 5
    assert np.abs(read_output(out) - job16["ref"]).max() > 1
    before = chunk_files(out)
    summary = run_upscale(config(ckpt, job16["src"], out, resume=True))
    assert (summary["tiles_run"], summary["tiles_skipped"]) == (2, 14)
    assert np.array_equal(read_output(out), job16["ref"])
    after = chunk_files(out)
    rewritten = {k for k in before if before[k] != after[k]}
    # chunk keys are c/<band-chunk>/<row-chunk>/<col-chunk>, 16-px chunks
    expected = {f"0/{r}/{c}" for (r0, r1, c0, c1) in damaged.values()
                for r in range(r0 // 16, (r1 + 15) // 16) for c in range(c0 // 16, (c1 + 15) // 16)}
    assert rewritten == expected
    again = run_upscale(config(ckpt, job16["src"], out, resume=True))
    assert (again["tiles_run"], again["tiles_skipped"]) == (0, 16)


@pytest.mark.slow
def test_driver_killed_then_resumed(tmp_path: Path, ckpt: Path) -> None:
    """SIGKILL the CLI driver (in-process executor) once some tiles are recorded; ``--resume``
    skips exactly the recorded tiles and the output equals an uninterrupted run."""
    img = np.random.default_rng(2).random((3, 60, 60), dtype=np.float32)
    src = write_zarr(tmp_path / "in.zarr", img)
    out = tmp_path / "out.zarr"
    args = ["--input", src, "--scale", "4", "--model", str(ckpt), "--tile", "16", "--chunk", "16",
            *CLI]
    log = tmp_path / "driver.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "jobs.upscale", *args, "--output", str(out)],
                                cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if manifest_dir(out).is_dir() and len(records(out)) >= 1:
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"driver ended before it was killed: {log.read_text()!r}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = set(records(out))
    assert 1 <= len(done) < 225, f"{len(done)} tiles recorded when the driver was killed"
    summary_path = tmp_path / "summary.json"
    assert main([*args, "--output", str(out), "--resume", "--summary", str(summary_path)]) == 0
    summary = json.loads(summary_path.read_text())
    assert summary["tiles"] == 225
    assert (summary["tiles_skipped"], summary["tiles_run"]) == (len(done), 225 - len(done))
    assert main([*args, "--output", str(tmp_path / "ref.zarr")]) == 0
    assert np.abs(read_output(out) - read_output(tmp_path / "ref.zarr")).max() <= 1e-6


# ------------------------------------------------------------------- georeferencing, bands


def test_geotiff_georeferencing_nodata_and_cog(tmp_path: Path, ckpt: Path) -> None:
    """GeoTIFF with CRS/transform/nodata: the Zarr attrs and the COG carry the CRS and the scaled
    transform, nodata areas stay nodata, and valid pixels equal the whole-image output."""
    h, w, scale = 37, 45, 2.5
    rng = np.random.default_rng(4)
    raw = rng.integers(1, 256, (3, h, w), dtype=np.uint8)
    raw[:, :10, :12] = 0  # nodata block in the corner
    raw[:, 30:, 40:] = 0  # and another one
    transform = Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 4_000_000.0)
    tif = tmp_path / "in.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=transform, nodata=0) as dst:
        dst.write(raw)
    out, cog = tmp_path / "out.zarr", tmp_path / "out.tif"
    rc = main(["--input", str(tif), "--output", str(out), "--scale", str(scale), "--model",
               str(ckpt), "--tile", "32", "--chunk", "16", "--cog", str(cog), *CLI])
    assert rc == 0
    H, W = 93, 113  # floor(37 * 2.5 + 0.5), floor(45 * 2.5 + 0.5)
    arr = zarr.open_array(str(out), path="image", mode="r")
    data = np.asarray(arr[...])
    assert data.shape == (3, H, W) and data.dtype == np.uint8
    expected_t = scaled_transform(tuple(transform)[:6], (h, w), (H, W))
    assert np.allclose(expected_t, (30.0 * w / W, 0, 500_000, 0, -30.0 * h / H, 4_000_000))
    assert CRS.from_user_input(arr.attrs["crs"]) == CRS.from_epsg(32633)
    assert np.allclose(arr.attrs["transform"], expected_t, rtol=0, atol=1e-9)
    assert arr.attrs["nodata"] == 0
    with rasterio.open(cog) as ds:
        assert ds.crs == CRS.from_epsg(32633)
        assert np.allclose(tuple(ds.transform)[:6], expected_t, rtol=0, atol=1e-9)
        assert ds.nodata == 0 and ds.dtypes == ("uint8",) * 3
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert np.array_equal(ds.read(), data)
    # nodata mask carried to the output by nearest neighbour, computed independently here
    ri = np.clip(np.floor((np.arange(H) + 0.5) * h / H - 0.5 + 0.5), 0, h - 1).astype(int)
    ci = np.clip(np.floor((np.arange(W) + 0.5) * w / W - 0.5 + 0.5), 0, w - 1).astype(int)
    mask = (raw == 0).all(axis=0)[np.ix_(ri, ci)]
    assert mask.any() and (~mask).any()
    assert (data[:, mask] == 0).all()
    # the model saw the nodata pixels filled (pipeline.io.values.fill_invalid), and valid pixels
    # that came out equal to nodata were nudged to 1
    filled = fill_invalid(to_unit(raw, (0.0, 255.0)), (raw == 0).all(axis=0))
    ref = whole(ckpt, filled, scale=scale).astype(np.float64) * 255
    expected = np.clip(np.rint(ref), 0, 255)
    expected[expected == 0] = 1
    diff = np.abs(data.astype(np.float64) - expected)[:, ~mask]
    near_tie = (np.abs(ref - np.floor(ref) - 0.5) < 1e-3)[:, ~mask]
    assert diff.max() <= 1 and not (diff > 0)[~near_tie].any()
    assert (data[:, ~mask] != 0).all()


def test_one_band_input_is_replicated_and_averaged(tmp_path: Path, ckpt: Path) -> None:
    """A 2-D (grey) input runs as (b, b, b) and comes back as ONE band: the channel mean."""
    img = np.random.default_rng(5).random((29, 23), dtype=np.float32)
    src = write_zarr(tmp_path / "grey.zarr", img)
    assert main(["--input", src, "--output", str(tmp_path / "o.zarr"), "--scale", "2", "--model",
                 str(ckpt), "--tile", "32", "--chunk", "16", *CLI]) == 0
    out = read_output(tmp_path / "o.zarr")
    ref = whole(ckpt, np.stack([img] * 3), scale=2.0)
    assert out.shape == (1, 58, 46)
    assert np.abs(out[0] - ref.mean(axis=0)).max() <= TOL
    assert np.abs(ref[0] - ref[1]).max() > 1e-3  # the channels differ, so averaging matters


def test_four_band_input_is_grouped_012_333(tmp_path: Path, ckpt: Path) -> None:
    """Four bands run as groups (0, 1, 2) and (3, 3, 3); band 3 is the mean of its group."""
    img = np.random.default_rng(6).random((4, 21, 26), dtype=np.float32)
    src = write_zarr(tmp_path / "four.zarr", img)
    assert main(["--input", src, "--output", str(tmp_path / "o.zarr"), "--scale", "1.7",
                 "--model", str(ckpt), "--tile", "16", "--chunk", "16", *CLI]) == 0
    out = read_output(tmp_path / "o.zarr")
    assert out.shape == (4, 36, 44)
    assert np.abs(out[:3] - whole(ckpt, img[:3], scale=1.7)).max() <= TOL
    assert np.abs(out[3] - whole(ckpt, img[[3, 3, 3]], scale=1.7).mean(axis=0)).max() <= TOL


def test_uint16_value_range_keeps_dtype_and_json_summary(tmp_path: Path, ckpt: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """uint16 reflectance with ``--value-range 0 10000`` stays uint16 in 0..10000 and equals the
    rounded whole-image output; the JSON summary (stdout and --summary) has the promised keys."""
    raw = np.random.default_rng(7).integers(0, 10001, (3, 25, 19), dtype=np.uint16)
    src = write_zarr(tmp_path / "refl.zarr", raw)
    out, summary_path = tmp_path / "o.zarr", tmp_path / "summary.json"
    capsys.readouterr()
    assert main(["--input", src, "--output", str(out), "--scale", "2.2", "--model", str(ckpt),
                 "--tile", "16", "--chunk", "16", "--value-range", "0", "10000", "--summary",
                 str(summary_path), *CLI]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    data = read_output(out)
    assert data.dtype == np.uint16 and data.shape == (3, 55, 42)
    assert data.max() <= 10000 and (data > 255).mean() > 0.9
    ref = whole(ckpt, to_unit(raw, (0.0, 10000.0)), scale=2.2).astype(np.float64) * 10000
    diff = np.abs(data.astype(np.float64) - np.clip(np.rint(ref), 0, 65535))
    near_tie = np.abs(ref - np.floor(ref) - 0.5) < 1e-2
    assert diff.max() <= 1 and not (diff > 0)[~near_tie].any()
    summary = json.loads(summary_path.read_text())
    assert summary == printed
    for key, typ in (("tiles", int), ("output_mpx", float), ("seconds", float),
                     ("mpx_per_s", float), ("output", str)):
        assert isinstance(summary[key], typ), key
    assert summary["tiles"] == 4 * 3 and summary["tiles_run"] == 12
    assert summary["output"] == str(out.resolve())
    assert summary["output_mpx"] == round(55 * 42 / 1e6, 3)
    assert summary["dtype"] == "uint16" and summary["out_shape"] == [55, 42]
    assert summary["seconds"] > 0 and summary["mpx_per_s"] > 0
