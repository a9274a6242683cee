"""Data safety: one job per output (lease), resume verifies what it trusts, invalid pixels never
spread and valid pixels never become nodata, corrupt input is a clear error. Arrays are compared,
not exit codes; tiny seeded models keep it fast."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from conftest import tree_digest, upscale_cli

from pipeline.errors import InputReadError, OutputLockedError
from pipeline.geometry.tiling import output_positions
from pipeline.io.lease import OutputLease, lease_location
from pipeline.io.locations import resolve
from pipeline.io.sources import SourceSpec
from pipeline.io.values import nearest_index
from pipeline.io.zarr_output import OutputSpec
from pipeline.upscale import UpscaleConfig, run_upscale

COMMON = ["--executor", "in-process", "--no-progress", "--workers", "1", "--threads-per-worker",
          "1"]
REPO = Path(__file__).resolve().parents[1]


def zarr_input(path: Path, data: np.ndarray, **attrs: object) -> str:
    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=(data.shape[0], 16, 16))
    arr[:] = data
    arr.attrs.update(attrs)
    return str(path)


def read(out: Path | str) -> np.ndarray:
    return np.asarray(zarr.open_array(str(out), path="image", mode="r")[...])


def cfg(model: Path, src: str, out: Path | str, **kw: object) -> UpscaleConfig:
    base = dict(scale=2.0, tile=32, chunk=16, executor="in-process", workers=1,
                threads_per_worker=1, progress=False)
    base.update(kw)
    return UpscaleConfig(source=SourceSpec(src), output=OutputSpec(str(out)), model=str(model),
                         **base)


def predicted_invalid(invalid: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Output pixels whose nearest input pixel is invalid, computed independently."""
    (h, w), (H, W) = invalid.shape, out_shape
    ri = nearest_index((np.arange(H) + 0.5) * h / H - 0.5, h)
    ci = nearest_index((np.arange(W) + 0.5) * w / W - 0.5, w)
    return invalid[np.ix_(ri, ci)]


# ------------------------------------------------------------------------------------- lease


def _slow_job_script(model: Path, src: str, out: Path, mode: str) -> str:
    return (
        "from pipeline.upscale import UpscaleConfig, run_upscale\n"
        "from pipeline.io.zarr_output import OutputSpec\nfrom pipeline.io.sources import SourceSpec\n"
        f"run_upscale(UpscaleConfig(source=SourceSpec({src!r}), output=OutputSpec({str(out)!r}),"
        f" model={str(model)!r}, scale=2.0, tile=16, chunk=16, executor='in-process',"
        f" threads_per_worker=1, progress=False, {mode}=True, test_hooks={{'tile_delay': 0.4}}))\n")


def _start_slow_job(model: Path, src: str, out: Path, mode: str = "overwrite") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _slow_job_script(model, src, out, mode)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lease = Path(lease_location(resolve(str(out))).path)
    deadline = time.time() + 60
    while not (out / "_manifest").is_dir() or not lease.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the first job never took its lease"
        time.sleep(0.1)
    return proc


def test_a_second_job_on_a_leased_output_is_refused(tmp_path: Path, tiny_liif: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Two real processes: the second (--overwrite, then --resume) refuses, naming the holder;
    the first finishes with exactly its own tiles."""
    data = np.random.default_rng(1).random((3, 24, 24), dtype=np.float32)
    src = zarr_input(tmp_path / "in.zarr", data)
    clean = tmp_path / "clean.zarr"
    assert run_upscale(cfg(tiny_liif, src, clean, tile=16))["tiles"] == 9
    out = tmp_path / "out.zarr"
    first = _start_slow_job(tiny_liif, src, out)
    try:
        for flag in ("--overwrite", "--resume"):
            rc = upscale_cli(["--input", src, "--output", str(out), "--scale", "2", "--model",
                          str(tiny_liif), "--tile", "16", "--chunk", "16", flag, *COMMON])
            err = capsys.readouterr().err
            assert rc == 2, err
            assert "being written by another job" in err and f"pid {first.pid}" in err
            assert socket.gethostname() in err
    finally:
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert np.array_equal(read(out), read(clean))
    assert not Path(lease_location(resolve(str(out))).path).exists()  # released


def test_the_lease_of_a_killed_job_is_taken_over(tmp_path: Path, tiny_liif: Path) -> None:
    data = np.random.default_rng(2).random((3, 24, 24), dtype=np.float32)
    src = zarr_input(tmp_path / "in.zarr", data)
    clean = tmp_path / "clean.zarr"
    run_upscale(cfg(tiny_liif, src, clean, tile=16))
    out = tmp_path / "out.zarr"
    first = _start_slow_job(tiny_liif, src, out)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert Path(lease_location(resolve(str(out))).path).exists()  # left behind by the kill
    with pytest.warns(UserWarning, match="no longer running"):
        s = run_upscale(cfg(tiny_liif, src, out, tile=16, resume=True))
    assert "lease_taken_over_from" in s
    assert np.array_equal(read(out), read(clean))


def _fake_lease(out: Path, *, host: str, age: float) -> None:
    now = time.time()
    rec = {"format": "liif-pipeline-lease/1", "token": "x" * 32, "host": host, "pid": 1,
           "started_at": now - age - 5, "heartbeat_at": now - age}
    Path(lease_location(resolve(str(out))).path).write_text(json.dumps(rec))


def test_a_stale_lease_from_another_host_is_taken_over_a_fresh_one_is_not(
        tmp_path: Path, tiny_liif: Path) -> None:
    src = zarr_input(tmp_path / "in.zarr", np.ones((3, 16, 16), np.float32) * 0.5)
    out = tmp_path / "out.zarr"
    _fake_lease(out, host="node-elsewhere", age=5.0)
    with pytest.raises(OutputLockedError, match="node-elsewhere"):
        run_upscale(cfg(tiny_liif, src, out))
    assert not out.exists()
    _fake_lease(out, host="node-elsewhere", age=3600.0)
    with pytest.warns(UserWarning, match="heartbeat is 3600 s old"):
        run_upscale(cfg(tiny_liif, src, out))
    assert read(out).shape == (3, 32, 32)


def test_a_lease_lost_to_another_job_stops_the_job(tmp_path: Path) -> None:
    lease = OutputLease(resolve(str(tmp_path / "o.zarr")), heartbeat_s=0.05, stale_s=1.0).acquire()
    try:
        lease.check()
        where = Path(lease.where.path)
        rec = json.loads(where.read_text())
        where.write_text(json.dumps({**rec, "token": "someone-else"}))
        deadline = time.time() + 5
        while lease.lost is None and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(OutputLockedError, match="taken by another job"):
            lease.check()
    finally:
        lease.release()
    assert where.exists()  # not ours any more: left to its holder


# ------------------------------------------------------------------------------------ resume


def _chunk_file(out: Path, i: int, j: int) -> Path:
    return out / "image" / "c" / "0" / str(i) / str(j)


@pytest.mark.parametrize("shard", [None, 32])
def test_resume_verifies_finished_tiles_and_redoes_corrupt_ones(tmp_path: Path, tiny_liif: Path,
                                                                shard: int | None) -> None:
    """A truncated, a deleted and a bit-flipped chunk (or shard) of finished tiles: --resume
    redoes exactly those tiles and the output equals the clean run again."""
    data = np.random.default_rng(3).random((3, 40, 40), dtype=np.float32)
    src = zarr_input(tmp_path / "in.zarr", data)
    out = tmp_path / "out.zarr"
    s = run_upscale(cfg(tiny_liif, src, out, tile=32, shard=shard))
    assert s["tiles"] == 9
    clean = read(out)
    k = 1 if shard else 2  # keys per tile and axis: one shard (32 px) or two chunks (16 px)
    victims = [_chunk_file(out, 0, 0), _chunk_file(out, k, 0), _chunk_file(out, 2 * k, 2 * k)]
    victims[0].write_bytes(victims[0].read_bytes()[:-7])  # truncated
    victims[1].unlink()  # deleted
    buf = bytearray(victims[2].read_bytes())
    buf[len(buf) // 2] ^= 0x10  # one bit flipped
    victims[2].write_bytes(bytes(buf))
    s = run_upscale(cfg(tiny_liif, src, out, tile=32, shard=shard, resume=True))
    assert s["tiles_redone"] == 3 and s["tiles_verified"] == 6 and s["tiles_run"] == 3
    assert np.array_equal(read(out), clean)
    s = run_upscale(cfg(tiny_liif, src, out, tile=32, shard=shard, resume=True))
    assert s["tiles_redone"] == 0 and s["tiles_verified"] == 9


def test_resume_redoes_tiles_recorded_without_digests(tmp_path: Path, tiny_liif: Path) -> None:
    data = np.random.default_rng(4).random((3, 20, 20), dtype=np.float32)
    src = zarr_input(tmp_path / "in.zarr", data)
    out = tmp_path / "out.zarr"
    run_upscale(cfg(tiny_liif, src, out))
    rec_path = next((out / "_manifest").glob("*_*.json"))
    rec = json.loads(rec_path.read_text())
    del rec["digests"]
    rec_path.write_text(json.dumps(rec))
    s = run_upscale(cfg(tiny_liif, src, out, resume=True))
    assert s["tiles_redone"] == 1


def test_resume_refuses_an_input_rewritten_in_place(tmp_path: Path, tiny_liif: Path) -> None:
    """A GeoTIFF rewritten with the same size and a Zarr with one chunk rewritten (outside the
    sampled windows): --resume refuses instead of mixing old and new pixels."""
    rng = np.random.default_rng(5)
    tif = tmp_path / "in.tif"
    img = rng.integers(1, 255, (3, 40, 40), dtype=np.uint8)

    def write_tif(pixels: np.ndarray) -> None:
        with rasterio.open(tif, "w", driver="GTiff", width=40, height=40, count=3,
                           dtype="uint8") as ds:
            ds.write(pixels)

    write_tif(img)
    run_upscale(cfg(tiny_liif, str(tif), tmp_path / "a.zarr"))
    stamp = os.stat(tif).st_mtime_ns
    write_tif(img[:, ::-1].copy())
    os.utime(tif, ns=(stamp, stamp))  # same size, same time: only the pixels tell
    before = tree_digest(tmp_path / "a.zarr")
    with pytest.raises(Exception, match="cannot resume .*sampled pixels of the input differ"):
        run_upscale(cfg(tiny_liif, str(tif), tmp_path / "a.zarr", resume=True))
    assert tree_digest(tmp_path / "a.zarr") == before

    data = rng.random((3, 96, 96), dtype=np.float32)
    src = zarr_input(tmp_path / "in.zarr", data)
    run_upscale(cfg(tiny_liif, src, tmp_path / "b.zarr", tile=64))
    arr = zarr.open_array(src, mode="r+")
    time.sleep(0.01)
    arr[:, 16:32, 16:32] = 0.25  # not in any sampled window (corners, edges' middles, centre)
    with pytest.raises(Exception, match="size or modification time changed"):
        run_upscale(cfg(tiny_liif, src, tmp_path / "b.zarr", tile=64, resume=True))


# ----------------------------------------------------------------------------------- nodata


def test_nan_and_inf_without_nodata_stay_where_they_are(tmp_path: Path, tiny_liif: Path) -> None:
    """3 NaN and 2 Inf pixels: exactly the output pixels whose nearest input pixel is one of
    them are NaN; everything else is finite (before: 52 % of the output was NaN)."""
    data = np.random.default_rng(6).random((3, 37, 29), dtype=np.float32)
    bad = [(0, 0), (10, 7), (36, 28), (20, 14), (5, 27)]
    for k, (r, c) in enumerate(bad):
        data[k % 3, r, c] = np.nan if k < 3 else np.inf
    invalid = ~np.isfinite(data).all(axis=0)
    src = zarr_input(tmp_path / "in.zarr", data)
    s = run_upscale(cfg(tiny_liif, src, tmp_path / "out.zarr", scale=2.5, tile=32))
    out = read(tmp_path / "out.zarr")
    expect = predicted_invalid(invalid, out.shape[1:])
    assert np.array_equal(np.isnan(out).any(axis=0), expect)
    assert np.isnan(out[:, expect]).all() and np.isfinite(out[:, ~expect]).all()
    assert s["nodata_pixels"] == int(expect.sum())


def test_one_nan_pixel_declared_nodata_masks_only_its_nearest_output(
        tmp_path: Path, tiny_liif: Path) -> None:
    data = np.random.default_rng(7).random((3, 30, 30), dtype=np.float32)
    data[:, 15, 15] = np.nan
    src = zarr_input(tmp_path / "in.zarr", data, nodata=float("nan"))
    run_upscale(cfg(tiny_liif, src, tmp_path / "out.zarr", tile=32))
    out = read(tmp_path / "out.zarr")
    assert int(np.isnan(out).any(axis=0).sum()) == 4  # x2: the 2x2 block of pixel (15, 15)
    assert np.isnan(out[:, 30:32, 30:32]).all()


def test_nodata_regions_across_tiles_equal_the_whole_image(tmp_path: Path, tiny_liif: Path) -> None:
    """Invalid pixels are filled from a window FILL_PASSES wider, so tiles (16 px) equal one tile
    covering everything, with a NaN region crossing tile borders."""
    data = np.random.default_rng(8).random((3, 31, 29), dtype=np.float32)
    data[:, 5:20, 6:9] = np.nan
    data[:, 0:3, :] = -5.0
    src = zarr_input(tmp_path / "in.zarr", data, nodata=-5.0)
    run_upscale(cfg(tiny_liif, src, tmp_path / "tiled.zarr", tile=16))
    run_upscale(cfg(tiny_liif, src, tmp_path / "whole.zarr", tile=64))
    a, b = read(tmp_path / "tiled.zarr"), read(tmp_path / "whole.zarr")
    assert np.array_equal(a == -5.0, b == -5.0)
    valid = (a != -5.0).all(axis=0)
    assert valid.any() and np.abs(a[:, valid] - b[:, valid]).max() <= 1e-5
    invalid = (data == -5.0).all(axis=0) | np.isnan(data).any(axis=0)
    assert np.array_equal(~valid, predicted_invalid(invalid, a.shape[1:]))


def test_valid_pixels_never_equal_nodata(tmp_path: Path, tiny_liif: Path) -> None:
    """uint8, nodata 255, every pixel valid (values 1 and 254, sharp edges): where the model
    overshoots and is clipped to 255 the value is nudged to 254, so no output band value equals
    nodata; the nudged count is reported."""
    data = np.where(np.random.default_rng(9).random((3, 30, 30)) < 0.5, 1, 254).astype(np.uint8)
    src = zarr_input(tmp_path / "in.zarr", data, nodata=255)
    s = run_upscale(cfg(tiny_liif, src, tmp_path / "out.zarr", scale=3.0, tile=48))
    out = read(tmp_path / "out.zarr")
    assert s["nodata_pixels"] == 0 and s["nudged_values"] > 0
    assert (out != 255).all() and (out == 254).sum() >= s["nudged_values"]


def test_nudge_moves_toward_the_value_range() -> None:
    from pipeline.io.values import nudge_off_nodata

    a = np.array([[[255, 3]], [[255, 255]]], dtype=np.uint8)
    assert nudge_off_nodata(a, np.ones((1, 2), bool), 255, (0, 255)) == 3
    assert a.tolist() == [[[254, 3]], [[254, 254]]]
    f = np.zeros((1, 1, 2), np.float32)
    nudge_off_nodata(f, np.array([[True, False]]), 0.0, (0.0, 1.0))
    assert f[0, 0, 0] > 0 and f[0, 0, 1] == 0


def test_landsat_x3_has_no_valid_pixel_at_nodata(tmp_path: Path, shared_data: Path) -> None:
    """The real Landsat raster (nodata 0, bright clouds), x3 with the bundled model: the output
    nodata pixels are exactly the nearest-rule prediction, and no valid pixel is 0 in any band
    (before: 0.96 % of valid pixels came out (0, 0, 0))."""
    path = shared_data / "geo" / "landsat7_RGB.byte.tif"
    with rasterio.open(path) as ds:
        crop = ds.read(window=rasterio.windows.Window(120, 160, 96, 80))
        profile = {**ds.profile, "width": 96, "height": 80,
                   "transform": ds.window_transform(rasterio.windows.Window(120, 160, 96, 80))}
        assert ds.nodata == 0
    invalid = (crop == 0).all(axis=0)
    tif = tmp_path / "crop.tif"
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(crop)
    s = run_upscale(UpscaleConfig(source=SourceSpec(str(tif)), output=OutputSpec(str(tmp_path / "o.zarr")),
                                  scale=3.0, executor="in-process", threads_per_worker=2,
                                  progress=False))
    out = read(tmp_path / "o.zarr")
    expect = predicted_invalid(invalid, out.shape[1:])
    assert np.array_equal((out == 0).all(axis=0), expect)
    assert (out[:, ~expect] != 0).all()
    assert s["nodata_pixels"] == int(expect.sum())


# ------------------------------------------------------------------------------ corrupt input


def _tiled_tif(path: Path, data: np.ndarray) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=str(data.dtype), tiled=True, blockxsize=16,
                       blockysize=16, compress="deflate") as ds:
        ds.write(data)


def _corrupt(kind: str, tmp: Path) -> tuple[Path, Path]:
    """(damaged input, a clean copy). The damaged tile or chunk (rows 96..112, cols 32..48) lies
    outside the windows the job samples for the input's identity, so the job fails mid-way; a
    truncated file loses its last rows, which the identity's samples read, so it fails at once."""
    data = np.random.default_rng(10).integers(0, 255, (3, 160, 160), dtype=np.uint8)
    if kind == "zarr_chunk":
        good = Path(zarr_input(tmp / "good.zarr", data))
        bad = tmp / "bad.zarr"
        shutil.copytree(good, bad, copy_function=shutil.copy2)
        (bad / "c" / "0" / "6" / "2").write_bytes(b"\x28\xb5\x2f\xfd garbage" * 3)
        return bad, good
    good = tmp / "good.tif"
    _tiled_tif(good, data)
    bad = tmp / "bad.tif"
    raw = good.read_bytes()
    if kind == "truncated_tif":
        bad.write_bytes(raw[: int(len(raw) * 0.8)])
    else:  # tile (6, 2) of 10 x 10 overwritten (TIFF tag 324: TileOffsets)
        from PIL import Image

        with Image.open(good) as im:
            start = int(im.tag_v2[324][6 * 10 + 2])
        buf = bytearray(raw)
        buf[start:start + 40] = b"\xff" * 40
        bad.write_bytes(bytes(buf))
    shutil.copystat(good, bad)
    return bad, good


@pytest.mark.parametrize("kind", ["truncated_tif", "corrupt_tif_tile", "zarr_chunk"])
@pytest.mark.parametrize("executor", ["in-process", "ray"])
def test_corrupt_input_is_a_clear_error_and_the_output_stays_resumable(
        kind: str, executor: str, tmp_path: Path, tiny_liif: Path,
        capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest) -> None:
    if executor == "ray":
        request.getfixturevalue("ray_local")
    bad, good = _corrupt(kind, tmp_path)
    out = tmp_path / "out.zarr"
    argv = ["--input", str(bad), "--output", str(out), "--scale", "2", "--model", str(tiny_liif),
            "--tile", "64", "--chunk", "32", "--no-progress", "--executor", executor,
            "--workers", "1", "--threads-per-worker", "1"]
    rc = upscale_cli(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and str(bad) in err and "rows" in err and "cols" in err
    if kind == "truncated_tif":  # the identity's samples read the lost rows: nothing written
        assert not out.exists()
    else:  # failed mid-job: the finished tiles are kept, and the message says how to go on
        assert "tiles are finished and kept" in err and "--resume" in err
        assert 0 < len(list((out / "_manifest").glob("*_*.json"))) < 25
    # the input repaired (same bytes as the original, its time kept): --resume completes
    if bad.is_dir():
        shutil.rmtree(bad)
        shutil.copytree(good, bad, copy_function=shutil.copy2)
    else:
        shutil.copy2(good, bad)
    rc = upscale_cli([*argv, "--resume"])
    assert rc == 0, capsys.readouterr().err
    clean = tmp_path / "clean.zarr"
    assert upscale_cli(["--input", str(good), "--output", str(clean), *argv[4:]]) == 0
    assert np.array_equal(read(out), read(clean))


def test_read_errors_name_the_file_and_window(tmp_path: Path) -> None:
    from pipeline.io.sources import open_source

    bad, _ = _corrupt("zarr_chunk", tmp_path)
    src = open_source(str(bad))
    assert src.read((0, 16), (0, 16)).shape == (3, 16, 16)
    with pytest.raises(InputReadError, match=r"bad\.zarr.*rows 100\.\.110, cols 33\.\.40"):
        src.read((100, 110), (33, 40))


def test_truncated_output_metadata_names_the_file(tmp_path: Path, tiny_liif: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = zarr_input(tmp_path / "in.zarr", np.ones((3, 16, 16), np.float32) * 0.3)
    out = tmp_path / "out.zarr"
    run_upscale(cfg(tiny_liif, src, out))
    meta = out / "image" / "zarr.json"
    meta.write_text(meta.read_text()[:50])
    rc = upscale_cli(["--input", src, "--output", str(out), "--scale", "2", "--model",
                  str(tiny_liif), "--tile", "32", "--chunk", "16", "--resume", *COMMON])
    err = capsys.readouterr().err
    assert rc == 2 and "image" in err and str(out) in err and "Traceback" not in err


def test_truncated_input_group_metadata_names_the_file(tmp_path: Path, tiny_liif: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    g = zarr.create_group(str(tmp_path / "g.zarr"))
    g.create_array("image", shape=(3, 16, 16), dtype="float32")[:] = 0.5
    meta = tmp_path / "g.zarr" / "image" / "zarr.json"
    meta.write_text(meta.read_text()[:60])
    rc = upscale_cli(["--input", str(tmp_path / "g.zarr"), "--output", str(tmp_path / "o.zarr"),
                  "--scale", "2", "--model", str(tiny_liif), *COMMON])
    err = capsys.readouterr().err
    assert rc == 2 and "g.zarr" in err and "corrupt zarr metadata" in err


def test_grid_positions_helper_agrees_with_tiling() -> None:
    """The test's own nearest rule is the tiling module's (guards the predictions above)."""
    u = output_positions(37, 93, 0, 93)
    assert np.array_equal(nearest_index(u, 37),
                          nearest_index((np.arange(93) + 0.5) * 37 / 93 - 0.5, 37))


def test_after_an_unreadable_input_is_repaired_resume_redoes_tiles_whose_input_changed(
        tmp_path: Path, tiny_liif: Path) -> None:
    """The repair also changed pixels that a finished tile had read: that tile is redone (its
    input digest no longer matches), so the result equals a clean run on the repaired input."""
    bad, good = _corrupt("zarr_chunk", tmp_path)
    out = tmp_path / "out.zarr"
    kw = dict(tile=64, chunk=32)
    with pytest.raises(InputReadError):
        run_upscale(cfg(tiny_liif, str(bad), out, **kw))
    shutil.rmtree(bad)
    shutil.copytree(good, bad)
    zarr.open_array(str(bad), mode="r+")[:, 0:16, 0:16] = 7  # a finished tile's input
    with pytest.warns(UserWarning, match="checked against the input"):
        s = run_upscale(cfg(tiny_liif, str(bad), out, resume=True, **kw))
    assert s["tiles_redone"] >= 1
    run_upscale(cfg(tiny_liif, str(bad), tmp_path / "clean.zarr", **kw))
    assert np.array_equal(read(out), read(tmp_path / "clean.zarr"))
    assert "stopped_on_unreadable_input" not in zarr.open_array(str(out), path="image").attrs


# --------------------------------------------------------------------------- fsspec stores


@pytest.mark.parametrize("store", ["memory", "s3"])
def test_lease_on_fsspec_stores(store: str, request: pytest.FixtureRequest) -> None:
    """Exclusive create on a memory filesystem and on S3 (conditional PUT, moto)."""
    if store == "s3":
        s3 = request.getfixturevalue("s3_server")
        loc = resolve(f"s3://liif-test/lease-{time.time_ns()}/out.zarr", s3["options"])
    else:
        loc = resolve(f"memory://lease-{time.time_ns()}/out.zarr")
    first = OutputLease(loc).acquire()
    try:
        with pytest.raises(OutputLockedError, match="being written by another job"):
            OutputLease(loc).acquire()
    finally:
        first.release()
    OutputLease(loc).acquire().release()  # free again


def test_resume_verification_on_s3(tmp_path: Path, tiny_liif: Path, s3_server: dict) -> None:
    """An output on S3: a deleted chunk object is found and its tile redone on resume."""
    data = np.random.default_rng(11).random((3, 24, 24), dtype=np.float32)
    src = zarr_input(tmp_path / "in.zarr", data)
    url = f"s3://liif-test/verify-{time.time_ns()}.zarr"
    opts = s3_server["options"]

    def job(**kw: object) -> dict:
        c = cfg(tiny_liif, src, url, tile=16, **kw)
        from dataclasses import replace

        return run_upscale(replace(c, output=OutputSpec(url, opts)))

    assert job()["tiles"] == 9
    store = zarr.storage.FsspecStore.from_url(url, storage_options=opts, read_only=True)
    clean = np.asarray(zarr.open_array(store, path="image", mode="r")[...])
    fs = s3_server["fs"]
    fs.rm(url[len("s3://"):] + "/image/c/0/1/1")
    s = job(resume=True)
    assert s["tiles_redone"] == 1 and s["tiles_verified"] == 8
    store = zarr.storage.FsspecStore.from_url(url, storage_options=opts, read_only=True)
    assert np.array_equal(np.asarray(zarr.open_array(store, path="image", mode="r")[...]), clean)
