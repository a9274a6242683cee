"""--zarr-format 2: the job writes the Zarr v2 layout GDAL 3.10 opens georeferenced (CRS,
geotransform, bands, dtype, nodata), and everything else of an output (digests, resume,
exports, reading it back as an input) works on it as on v3."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from conftest import last_json, upscale_cli
from rasterio.crs import CRS
from rasterio.transform import from_origin

COMMON = ["--executor", "in-process", "--workers", "1", "--threads-per-worker", "1",
          "--precision", "fp32", "--no-progress"]


def _geotiff(path: Path, dtype: str, bands: int, nodata: float | None) -> Path:
    rng = np.random.default_rng(5)
    data = (rng.random((bands, 40, 36)) * 200 + 1).astype(dtype)
    if nodata is not None:
        data[:, :6, :6] = nodata
    with rasterio.open(path, "w", driver="GTiff", width=36, height=40, count=bands, dtype=dtype,
                       crs="EPSG:32633", transform=from_origin(500000.0, 4100000.0, 30.0, 30.0),
                       nodata=nodata) as ds:
        ds.write(data)
    return path


@pytest.mark.parametrize(("dtype", "bands", "nodata"), [("uint8", 3, 0), ("uint16", 1, None),
                                                        ("float32", 2, float("nan"))])
def test_gdal_opens_the_job_output_georeferenced(tmp_path: Path, tiny_liif: Path, dtype: str,
                                                 bands: int, nodata: float | None,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    src = _geotiff(tmp_path / "in.tif", dtype, bands, nodata)
    out = tmp_path / "out.zarr"
    assert upscale_cli(["--input", str(src), "--output", str(out), "--scale", "2", "--zarr-format",
                 "2", "--chunk", "32", "--model", str(tiny_liif), *COMMON]) == 0, \
        capsys.readouterr().err
    assert (out / ".zgroup").is_file() and not (out / "zarr.json").exists()
    ours = zarr.open_group(str(out), mode="r")["image"]
    assert ours.metadata.zarr_format == 2
    with rasterio.open(f'ZARR:"{out}":/image') as ds:
        assert ds.count == bands and ds.shape == (80, 72) and set(ds.dtypes) == {dtype}
        assert ds.crs == CRS.from_epsg(32633)
        assert np.allclose(tuple(ds.transform)[:6], (15.0, 0, 500000.0, 0, -15.0, 4100000.0),
                           atol=1e-6)
        if nodata is None:
            assert ds.nodata is None
        elif math.isnan(nodata):
            assert math.isnan(ds.nodata)
        else:
            assert ds.nodata == nodata
        np.testing.assert_array_equal(ds.read(), ours[:])  # GDAL decodes what we wrote


def test_v2_resume_verifies_and_refuses_another_format(tmp_path: Path, tiny_liif: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    src = _geotiff(tmp_path / "in.tif", "uint8", 3, 0)
    out = tmp_path / "out.zarr"
    args = ["--input", str(src), "--output", str(out), "--scale", "2", "--chunk", "32",
            "--tile", "32", "--model", str(tiny_liif), *COMMON]
    assert upscale_cli([*args, "--zarr-format", "2"]) == 0
    first = last_json(capsys)
    before = zarr.open_group(str(out), mode="r")["image"][:]
    # a chunk damaged on disk (zstd frame checksum) is found and redone on resume
    chunk = next(p for p in (out / "image").iterdir() if not p.name.startswith("."))
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    assert upscale_cli([*args, "--zarr-format", "2", "--resume"]) == 0
    again = last_json(capsys)
    assert again["tiles_verified"] + again["tiles_redone"] == first["tiles"]
    assert again["tiles_redone"] >= 1
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["image"][:], before)
    # resuming it as v3 is refused, with nothing changed
    assert upscale_cli([*args, "--resume"]) == 2
    assert "Zarr format" in capsys.readouterr().err
    # --overwrite recognises the v2 group as ours
    assert upscale_cli([*args, "--overwrite"]) == 0
    assert (out / "zarr.json").is_file() and not (out / ".zgroup").exists()


@pytest.mark.parametrize("fmt", ["2", "3"])
def test_output_with_overviews_previews_and_reads_back_as_input(
        tmp_path: Path, tiny_liif: Path, fmt: str) -> None:
    from PIL import Image
    src = _geotiff(tmp_path / "in.tif", "uint8", 3, None)
    out = tmp_path / "out.zarr"
    assert upscale_cli(["--input", str(src), "--output", str(out), "--scale", "2", "--zarr-format", fmt,
                 "--chunk", "16", "--tile", "32", "--overviews", "1", "--preview",
                 str(tmp_path / "p.png"), "--model", str(tiny_liif), *COMMON]) == 0
    g = zarr.open_group(str(out), mode="r")
    assert g["overviews/1"].shape == (3, 40, 36)
    assert Image.open(tmp_path / "p.png").size == (72, 80)
    again = tmp_path / "again.zarr"  # our output (image + overviews + x/y) as an input
    assert upscale_cli(["--input", str(out), "--output", str(again), "--scale", "1", "--model",
                 str(tiny_liif), *COMMON]) == 0
    assert zarr.open_group(str(again), mode="r")["image"].shape == (3, 80, 72)


@pytest.mark.parametrize(("flags", "needle"), [(["--shard", "64"], "--shard"),
                                               (["--codec", "blosc-zstd"], "blosc-zstd")])
def test_what_v2_cannot_hold_is_refused_before_any_write(
        tmp_path: Path, tiny_liif: Path, flags: list[str], needle: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    src = _geotiff(tmp_path / "in.tif", "uint8", 3, 0)
    assert upscale_cli(["--input", str(src), "--output", str(tmp_path / "o.zarr"), "--scale", "2",
                 "--zarr-format", "2", *flags, "--model", str(tiny_liif), *COMMON]) == 2
    assert needle in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
