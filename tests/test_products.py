"""Several products from one pass (--scale 2 4, --size A B): one encoding per tile renders every
size, and each product equals a separate run at that size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from conftest import last_json, upscale_cli
from rasterio.transform import from_origin

COMMON = ["--executor", "in-process", "--workers", "1", "--threads-per-worker", "1",
          "--precision", "fp32", "--no-progress"]


def _float_input(tmp_path: Path) -> str:
    arr = zarr.create_array(str(tmp_path / "in.zarr"), shape=(3, 37, 45), dtype="float32")
    arr[:] = np.random.default_rng(4).random((3, 37, 45), dtype=np.float32)
    return str(tmp_path / "in.zarr")


def _image(path: Path, array: str = "image") -> np.ndarray:
    return zarr.open_group(str(path), mode="r")[array][:]


@pytest.mark.parametrize("scales", [["2", "4"], ["3.7", "1.5", "2,3"]])
def test_each_product_equals_a_separaterun_upscale(tmp_path: Path, tiny_liif: Path,
                                            scales: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = _float_input(tmp_path)
    vr = ["--value-range", "0", "1", "--chunk", "16", "--model", str(tiny_liif), *COMMON]
    both = tmp_path / "both.zarr"
    assert upscale_cli(["--input", src, "--output", str(both), "--scale", *scales, "--tile", "32",
                 *vr]) == 0, capsys.readouterr().err
    summary = last_json(capsys)
    assert summary["tiles"] > 1  # the products really are tiled
    shapes = {}
    for s in scales:
        one = tmp_path / f"one_{s}.zarr"
        assert upscale_cli(["--input", src, "--output", str(one), "--scale", s, *vr]) == 0
        shapes[s] = last_json(capsys)["out_shape"]
        shapes[s + "_data"] = _image(one)
    largest = max(scales, key=lambda s: shapes[s][0] * shapes[s][1])
    assert summary["out_shape"] == shapes[largest]
    np.testing.assert_allclose(_image(both), shapes[largest + "_data"], atol=1e-5, rtol=0)
    arrays = {p["array"]: p for p in summary["products"]}
    assert len(arrays) == len(scales) - 1
    for s in scales:
        if s == largest:
            continue
        sy, _, sx = s.partition(",")
        label = f"x{float(sy):g}" if not sx else f"x{float(sy):g}_{float(sx):g}"
        array = f"scales/{label}/image"
        assert arrays[array]["out_shape"] == shapes[s]
        np.testing.assert_allclose(_image(both, array), shapes[s + "_data"], atol=1e-5, rtol=0)
        attrs = zarr.open_group(str(both), mode="r")[array].attrs
        assert attrs["out_shape"] == shapes[s] and attrs["product_of"] == "image"


def _geotiff(path: Path) -> Path:
    rng = np.random.default_rng(6)
    data = rng.integers(1, 255, (3, 30, 34), dtype=np.uint8)
    data[:, 10:14, 5:9] = 0  # nodata
    with rasterio.open(path, "w", driver="GTiff", width=34, height=30, count=3, dtype="uint8",
                       crs="EPSG:32618", transform=from_origin(600000.0, 4500000.0, 10.0, 10.0),
                       nodata=0) as ds:
        ds.write(data)
    return path


def test_products_keep_nodata_georeference_and_resume(tmp_path: Path, tiny_liif: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = str(_geotiff(tmp_path / "in.tif"))
    out = tmp_path / "out.zarr"
    args = ["--input", src, "--output", str(out), "--scale", "2", "4", "--chunk", "16",
            "--tile", "32", "--zarr-format", "2", "--model", str(tiny_liif), *COMMON]
    assert upscale_cli(args) == 0, capsys.readouterr().err
    first = last_json(capsys)
    one = tmp_path / "x2.zarr"
    assert upscale_cli(["--input", src, "--output", str(one), "--scale", "2", "--chunk", "16",
                 "--model", str(tiny_liif), *COMMON]) == 0
    capsys.readouterr()
    sep, prod = _image(one), _image(out, "scales/x2/image")
    assert np.array_equal(sep == 0, prod == 0)  # the same nodata pixels
    assert np.abs(sep.astype(int) - prod).max() <= 1 and (sep == prod).mean() > 0.999
    assert first["products"][0]["nodata_pixels"] == int((sep == 0).all(axis=0).sum())
    # GDAL opens the product with its own grid: pixel size 10 / 2
    with rasterio.open(f'ZARR:"{out}":/scales/x2/image') as ds:
        assert ds.shape == (60, 68) and ds.crs.to_epsg() == 32618 and ds.nodata == 0
        assert np.allclose(tuple(ds.transform)[:6], (5.0, 0, 600000.0, 0, -5.0, 4500000.0))
    # a damaged product chunk is found on resume, and its tile is redone
    before = prod.copy()
    chunk = next(p for p in (out / "scales" / "x2" / "image").iterdir()
                 if not p.name.startswith("."))
    chunk.write_bytes(b"garbage")
    assert upscale_cli([*args, "--resume"]) == 0
    again = last_json(capsys)
    assert again["tiles_redone"] >= 1 and again["tiles_verified"] + again["tiles_redone"] == \
        first["tiles"]
    np.testing.assert_array_equal(_image(out, "scales/x2/image"), before)
    # resuming with another set of sizes is refused
    assert upscale_cli([*args[:5], "2", "8", *args[7:], "--resume"]) == 2
    assert "products" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "needle"), [
    (["--scale", "2", "2"], "repeat"),
    (["--scale", "2", "4", "--output-is-tif"], "Zarr --output"),
    (["--scale", "4", "2", "--reference-too"], "one output size")])
def test_product_misuse_is_refused(tmp_path: Path, tiny_liif: Path, flags: list[str],
                                   needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    src = _float_input(tmp_path)
    out = str(tmp_path / ("o.tif" if "--output-is-tif" in flags else "o.zarr"))
    flags = [f for f in flags if f not in ("--output-is-tif", "--reference-too")] + (
        ["--reference", src] if "--reference-too" in flags else [])
    assert upscale_cli(["--input", src, "--output", out, *flags, "--model", str(tiny_liif),
                 *COMMON]) == 2
    assert needle in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]


@pytest.mark.parametrize("seed", range(20))
def test_product_windows_partition_each_product_on_its_grid(seed: int) -> None:
    from pipeline.geometry.tiling import balanced_plan, product_window

    rng = np.random.default_rng(seed)
    grid = int(rng.choice([16, 32, 64]))
    in_shape = (int(rng.integers(20, 300)), int(rng.integers(20, 300)))
    big = (in_shape[0] * 4, in_shape[1] * 4)
    plan = balanced_plan(in_shape, big, max_tile=4 * grid, halo=2, grid=grid, workers=2)
    for small in [(int(rng.integers(1, big[0])), int(rng.integers(1, big[1]))), big]:
        cover = np.zeros(small, dtype=int)
        for t in plan.tiles():
            w = product_window(t.out_window, big, small, grid)
            if not w.size:
                continue  # nothing of this product in the tile (the workers skip it)
            cover[w.row0:w.row1, w.col0:w.col1] += 1
            for lo, hi, n in ((w.row0, w.row1, small[0]), (w.col0, w.col1, small[1])):
                assert lo % grid == 0 and (hi % grid == 0 or hi == n)
        assert (cover == 1).all()  # every pixel owned by exactly one tile
