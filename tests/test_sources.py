"""pipeline.io.sources: every backend reads windows equal to slices of the full array; every error."""

from __future__ import annotations

import pickle
import re
import threading
import uuid
import warnings
from pathlib import Path

import fsspec
import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning

from pipeline.errors import (
    BandSelectionError,
    ConfigError,
    EmptyInputError,
    InputNotFoundError,
    PipelineError,
    UnsupportedDtypeError,
    UnsupportedInputError,
    WindowError,
)
from pipeline.io.sources import Source, SourceSpec, open_source

H, W = 37, 53
UTM18 = CRS.from_epsg(32618)
TRANSFORM = Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 4_000_000.0)

# windows (rows, cols) touching every edge, single pixels and interiors with odd sizes
WINDOWS = [
    ((0, H), (0, W)),
    ((0, 1), (0, 1)),
    ((H - 1, H), (W - 1, W)),
    ((3, 20), (5, 44)),
    ((16, 37), (0, 17)),
    ((0, 13), (31, 53)),
]


def _data(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.random(shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, int(info.max) + 1, size=shape).astype(dt)


def _assert_windows(src: Source, expected: np.ndarray) -> None:
    """``expected`` is the full logical (C, H, W) array."""
    assert src.shape == expected.shape
    assert src.dtype == expected.dtype
    for rows, cols in WINDOWS:
        if rows[1] > expected.shape[1] or cols[1] > expected.shape[2]:
            continue
        got = src.read(rows, cols)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected[:, rows[0] : rows[1], cols[0] : cols[1]])


def _write_tif(path: Path, data: np.ndarray, **profile: object) -> None:
    opts: dict[str, object] = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "tiled": True,
        "blockxsize": 16,
        "blockysize": 16,
    }
    opts.update(profile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **opts) as dst:
            dst.write(data)


# ----------------------------------------------------------------------------------- spec


def test_spec_is_picklable_and_normalised(tmp_path: Path) -> None:
    spec = SourceSpec(tmp_path / "a.zarr", bands=[2, 0], storage_options={"anon": True})
    assert spec.uri == str(tmp_path / "a.zarr")
    assert spec.bands == (2, 0)
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec


@pytest.mark.parametrize("layout", ["WHC", "chw", ""])
def test_spec_rejects_unknown_layout(layout: str) -> None:
    with pytest.raises(ConfigError, match=f"layout '{layout}' is not one of auto, CHW, HWC"):
        SourceSpec("x.zarr", layout=layout)


@pytest.mark.parametrize(
    ("bands", "match"),
    [((-1,), r"band index -1 is negative"), ((), r"bands \(\) is empty"), ((0, 1.5), "1.5")],
)
def test_spec_rejects_bad_bands(bands: tuple, match: str) -> None:
    with pytest.raises(BandSelectionError, match=match):
        SourceSpec("x.zarr", bands=bands)


def test_spec_rejects_bad_max_pixels() -> None:
    with pytest.raises(ConfigError, match="max_pixels_in_memory 0"):
        SourceSpec("x.png", max_pixels_in_memory=0)


# ----------------------------------------------------------------------------------- zarr


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize(
    ("stored_shape", "to_chw"),
    [
        ((3, H, W), lambda a: a),
        ((H, W, 3), lambda a: a.transpose(2, 0, 1)),
        ((H, W), lambda a: a[None]),
    ],
    ids=["CHW", "HWC", "2D"],
)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_zarr_layouts_and_windows(
    tmp_path: Path, zarr_format: int, stored_shape: tuple, to_chw, dtype: str
) -> None:
    data = _data(stored_shape, dtype)
    chunks = tuple(min(s, 16) for s in stored_shape)
    arr = zarr.create_array(
        store=str(tmp_path / "a.zarr"),
        shape=stored_shape,
        chunks=chunks,
        dtype=dtype,
        zarr_format=zarr_format,
    )
    arr[...] = data
    with open_source(str(tmp_path / "a.zarr")) as src:
        assert src.backend == "zarr"
        assert src.nodata is None and src.crs is None and src.transform is None
        _assert_windows(src, to_chw(data))


def test_zarr_big_endian_v2_reads_native(tmp_path: Path) -> None:
    data = _data((2, H, W), "uint16")
    arr = zarr.create_array(
        store=str(tmp_path / "be.zarr"), shape=data.shape, dtype=">u2", zarr_format=2
    )
    arr[...] = data
    with open_source(str(tmp_path / "be.zarr")) as src:
        assert src.dtype == np.dtype("uint16") and src.dtype.isnative
        _assert_windows(src, data)


@pytest.mark.parametrize(
    ("shape", "layout", "logical"),
    [
        ((8, H, 5), "auto", (8, H, 5)),  # both ends <= 16: CHW by default
        ((8, H, 5), "HWC", (5, 8, H)),
        ((20, H, 40), "auto", (20, H, 40)),  # both ends > 16: CHW
        ((H, W, 4), "auto", (4, H, W)),
        ((4, H, 3), "CHW", (4, H, 3)),
    ],
)
def test_zarr_layout_rule(tmp_path: Path, shape: tuple, layout: str, logical: tuple) -> None:
    data = _data(shape, "uint8")
    zarr.create_array(store=str(tmp_path / "a.zarr"), data=data)
    with open_source(SourceSpec(str(tmp_path / "a.zarr"), layout=layout)) as src:
        assert src.shape == logical
        full = src.read((0, logical[1]), (0, logical[2]))
        expected = data if logical == shape else data.transpose(2, 0, 1)
        np.testing.assert_array_equal(full, expected)


@pytest.mark.parametrize("layout", ["CHW", "HWC"])
def test_zarr_band_selection(tmp_path: Path, layout: str) -> None:
    chw = _data((5, H, W), "int16")
    stored = chw if layout == "CHW" else chw.transpose(1, 2, 0)
    zarr.create_array(store=str(tmp_path / "a.zarr"), data=stored)
    with open_source(SourceSpec(str(tmp_path / "a.zarr"), bands=(4, 0, 2))) as src:
        assert src.native_band_count == 5
        assert src.bands == (4, 0, 2)
        _assert_windows(src, chw[[4, 0, 2]])


def test_zarr_2d_band_replication(tmp_path: Path) -> None:
    data = _data((H, W), "float32")
    zarr.create_array(store=str(tmp_path / "a.zarr"), data=data)
    with open_source(SourceSpec(str(tmp_path / "a.zarr"), bands=(0, 0))) as src:
        _assert_windows(src, np.stack([data, data]))


def test_zarr_georeferencing_attributes(tmp_path: Path) -> None:
    data = _data((3, H, W), "uint16")
    arr = zarr.create_array(store=str(tmp_path / "geo.zarr"), data=data)
    arr.attrs.update({"crs": UTM18.to_wkt(), "transform": list(TRANSFORM)[:6], "nodata": 0})
    with open_source(str(tmp_path / "geo.zarr")) as src:
        assert src.nodata == 0.0
        assert CRS.from_wkt(src.crs) == UTM18
        assert src.transform == tuple(TRANSFORM)[:6]


def test_zarr_fill_value_attr_epsg_crs_and_9_coefficients(tmp_path: Path) -> None:
    arr = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(H, W), dtype="float32")
    arr.attrs.update({"_FillValue": "NaN", "crs": "EPSG:32618", "transform": list(TRANSFORM)})
    with open_source(str(tmp_path / "a.zarr")) as src:
        assert np.isnan(src.nodata)
        assert src.crs == UTM18.to_wkt()
        assert src.transform == tuple(TRANSFORM)[:6]


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({"transform": [1, 2, 3]}, r"transform=\[1, 2, 3\].*must be 6 finite numbers"),
        ({"nodata": "none-ish"}, "nodata='none-ish'.*not a number"),
        ({"crs": "not a crs"}, "crs='not a crs'.*not a CRS"),
    ],
)
def test_zarr_bad_attributes(tmp_path: Path, attrs: dict, match: str) -> None:
    arr = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(H, W), dtype="uint8")
    arr.attrs.update(attrs)
    with pytest.raises(UnsupportedInputError, match=match):
        open_source(str(tmp_path / "a.zarr"))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_group_with_array_path(tmp_path: Path, zarr_format: int) -> None:
    data = _data((3, H, W), "uint8")
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=zarr_format)
    group.create_array("a", shape=(4, 4), dtype="uint8")
    sub = group.create_group("scale0")
    sub.create_array("image", shape=data.shape, dtype="uint8", chunks=(3, 16, 16))[...] = data
    spec = SourceSpec(str(tmp_path / "g.zarr"), array_path="scale0/image")
    with open_source(spec) as src:
        _assert_windows(src, data)


def test_zarr_group_with_one_nested_array_is_used(tmp_path: Path) -> None:
    data = _data((H, W), "uint16")
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_group("level").create_array("only", data=data)
    with open_source(str(tmp_path / "g.zarr")) as src:
        _assert_windows(src, data[None])


def test_zarr_group_with_two_arrays_needs_array_path(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("red", shape=(H, W), dtype="uint8")
    group.create_array("nir", shape=(H, W), dtype="uint8")
    with pytest.raises(UnsupportedInputError, match=r"holds 2 arrays \('nir', 'red'\).*array_path"):
        open_source(str(tmp_path / "g.zarr"))


def test_zarr_empty_group(tmp_path: Path) -> None:
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(UnsupportedInputError, match=r"holds 0 arrays \(none\)"):
        open_source(str(tmp_path / "g.zarr"))


def test_zarr_missing_array_path(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("red", shape=(H, W), dtype="uint8")
    spec = SourceSpec(str(tmp_path / "g.zarr"), array_path="blue")
    with pytest.raises(InputNotFoundError, match="array_path='blue'"):
        open_source(spec)


def test_zarr_metadata_file_and_file_url(tmp_path: Path) -> None:
    data = _data((2, H, W), "uint8")
    zarr.create_array(store=str(tmp_path / "a.zarr"), data=data)
    for uri in (f"file://{tmp_path}/a.zarr", str(tmp_path / "a.zarr" / "zarr.json")):
        with open_source(uri) as src:
            _assert_windows(src, data)


def test_zarr_memory_url() -> None:
    url = f"memory://{uuid.uuid4().hex}/m.zarr"
    data = _data((3, H, W), "float32")
    zarr.create_array(store=url, data=data, chunks=(3, 16, 16))
    try:
        with open_source(url) as src:
            assert src.backend == "zarr"
            _assert_windows(src, data)
    finally:
        fs, path = fsspec.core.url_to_fs(url)
        fs.rm(path, recursive=True)


@pytest.mark.parametrize(
    "content",
    ["garbage{", '{"zarr_format": 3, "node_type": "array"}'],
    ids=["not-json", "invalid-metadata"],
)
def test_zarr_corrupt_metadata(tmp_path: Path, content: str) -> None:
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "zarr.json").write_text(content)
    with pytest.raises(UnsupportedInputError, match=r"corrupt zarr metadata in '.*bad\.zarr'"):
        open_source(str(tmp_path / "bad.zarr"))


def test_directory_without_zarr_metadata(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    with pytest.raises(UnsupportedInputError, match=r"'.*photos' is not a zarr array or group"):
        open_source(str(tmp_path / "photos"))


@pytest.mark.parametrize("dtype", ["int8", "uint32", "bool", "complex64"])
def test_zarr_unsupported_dtype(tmp_path: Path, dtype: str) -> None:
    zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(H, W), dtype=dtype)
    with pytest.raises(
        UnsupportedDtypeError, match=f"dtype '{dtype}'.*allowed: uint8, uint16, int16, int32"
    ):
        open_source(str(tmp_path / "a.zarr"))


@pytest.mark.parametrize("shape", [(3, 0, W), (0, H, W), (H, 0)])
def test_zarr_empty_array(tmp_path: Path, shape: tuple) -> None:
    zarr.create_array(store=str(tmp_path / "a.zarr"), shape=shape, dtype="uint8")
    with pytest.raises(EmptyInputError, match="is empty"):
        open_source(str(tmp_path / "a.zarr"))


def test_zarr_4d_refused(tmp_path: Path) -> None:
    zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(2, 3, H, W), dtype="uint8")
    with pytest.raises(UnsupportedInputError, match=r"shape \(2, 3, 37, 53\)"):
        open_source(str(tmp_path / "a.zarr"))


def test_band_index_out_of_range(tmp_path: Path) -> None:
    zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(3, H, W), dtype="uint8")
    with pytest.raises(BandSelectionError, match=r"band index 5 is out of range .* 3 band"):
        open_source(SourceSpec(str(tmp_path / "a.zarr"), bands=(0, 5)))


# ------------------------------------------------------------------------------- rasterio


def test_geotiff_windows_and_georeferencing(tmp_path: Path) -> None:
    data = _data((3, H, W), "uint16")
    data[:, :4, :6] = 0
    path = tmp_path / "scene.tif"
    _write_tif(path, data, crs=UTM18, transform=TRANSFORM, nodata=0)
    with open_source(str(path)) as src:
        assert src.backend == "rasterio"
        assert src.nodata == 0.0
        assert CRS.from_wkt(src.crs) == UTM18
        assert src.transform == tuple(TRANSFORM)[:6]
        assert src.native_band_count == 3
        _assert_windows(src, data)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "float32", "float64"])
def test_geotiff_dtypes(tmp_path: Path, dtype: str) -> None:
    data = _data((1, H, W), dtype)
    _write_tif(tmp_path / "a.tif", data, crs=UTM18, transform=TRANSFORM)
    with open_source(str(tmp_path / "a.tif")) as src:
        assert src.nodata is None
        _assert_windows(src, data)


def test_geotiff_band_selection(tmp_path: Path) -> None:
    data = _data((4, H, W), "uint8")
    _write_tif(tmp_path / "four.tif", data, crs=UTM18, transform=TRANSFORM)
    with open_source(SourceSpec(str(tmp_path / "four.tif"), bands=(3, 1))) as src:
        assert src.native_band_count == 4
        assert src.shape == (2, H, W)
        _assert_windows(src, data[[3, 1]])
    with pytest.raises(BandSelectionError, match=r"band index 4 is out of range .* 4 band"):
        open_source(SourceSpec(str(tmp_path / "four.tif"), bands=(4,)))


def test_tiff_without_georeferencing_and_file_url(tmp_path: Path) -> None:
    data = _data((2, H, W), "uint8")
    _write_tif(tmp_path / "plain.tif", data)
    with open_source(f"file://{tmp_path}/plain.tif") as src:
        assert src.crs is None and src.transform is None
        _assert_windows(src, data)


def test_unknown_extension_read_by_content(tmp_path: Path) -> None:
    data = _data((2, H, W), "int16")
    _write_tif(tmp_path / "scene.raw", data)
    with open_source(str(tmp_path / "scene.raw")) as src:
        assert src.backend == "rasterio"
        _assert_windows(src, data)


def test_geotiff_unsupported_dtype(tmp_path: Path) -> None:
    _write_tif(tmp_path / "u32.tif", _data((1, H, W), "uint32"))
    with pytest.raises(UnsupportedDtypeError, match="dtype 'uint32'.*allowed: uint8"):
        open_source(str(tmp_path / "u32.tif"))


def test_array_path_refused_for_image_files(tmp_path: Path) -> None:
    _write_tif(tmp_path / "a.tif", _data((1, H, W), "uint8"))
    with pytest.raises(ConfigError, match="array_path='x' only applies to zarr"):
        open_source(SourceSpec(str(tmp_path / "a.tif"), array_path="x"))


def test_geotiff_memory_url_is_read_lazily_through_opener() -> None:
    data = _data((3, H, W), "uint8")
    mem = rasterio.MemoryFile()
    with mem.open(
        driver="GTiff", width=W, height=H, count=3, dtype="uint8", crs=UTM18, transform=TRANSFORM
    ) as dst:
        dst.write(data)
    url = f"memory://{uuid.uuid4().hex}/scene.tif"
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe(path, mem.read())
    try:
        with open_source(url) as src, open_source(url) as twin:
            assert src.backend == "rasterio"
            assert CRS.from_wkt(src.crs) == UTM18
            _assert_windows(src, data)
            _assert_windows(twin, data)
    finally:
        fs.rm(path)


def test_fsspec_geotiff_opened_in_one_thread_read_in_another(tmp_path: Path) -> None:
    """rasterio's Python opener keeps per-context state; a Ray actor may switch threads."""
    data = _data((2, H, W), "int16")
    _write_tif(tmp_path / "a.tif", data, crs=UTM18, transform=TRANSFORM)
    url = f"memory://{uuid.uuid4().hex}/a.tif"
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe(path, (tmp_path / "a.tif").read_bytes())
    opened: dict[str, Source] = {}
    worker = threading.Thread(target=lambda: opened.update(src=open_source(url)))
    worker.start()
    worker.join()
    try:
        with opened["src"] as src:
            _assert_windows(src, data)
    finally:
        fs.rm(path)


def test_gdal_vsi_path_passes_through() -> None:
    data = _data((1, H, W), "float32")
    with rasterio.MemoryFile() as mem:
        with mem.open(
            driver="GTiff",
            width=W,
            height=H,
            count=1,
            dtype="float32",
            crs=UTM18,
            transform=TRANSFORM,
            nodata=-1.0,
        ) as dst:
            dst.write(data)
        with open_source(mem.name) as src:
            assert mem.name.startswith("/vsimem/") and src.nodata == -1.0
            _assert_windows(src, data)
    with pytest.raises(InputNotFoundError, match="'/vsimem/absent/x.tif'"):
        open_source("/vsimem/absent/x.tif")


# ------------------------------------------------------------------------------------ PIL


@pytest.mark.parametrize(
    ("ext", "save_kwargs"),
    [(".png", {}), (".bmp", {}), (".webp", {"lossless": True}), (".tif", {})],
)
def test_pil_rgb_formats_are_exact(tmp_path: Path, ext: str, save_kwargs: dict) -> None:
    hwc = _data((H, W, 3), "uint8")
    path = tmp_path / f"rgb{ext}"
    Image.fromarray(hwc, "RGB").save(path, **save_kwargs)
    with open_source(str(path)) as src:
        assert src.backend == ("rasterio" if ext == ".tif" else "pil")
        _assert_windows(src, hwc.transpose(2, 0, 1))


def test_jpeg_matches_pil_decode(tmp_path: Path) -> None:
    Image.fromarray(_data((H, W, 3), "uint8"), "RGB").save(tmp_path / "a.jpg", quality=90)
    decoded = np.asarray(Image.open(tmp_path / "a.jpg")).transpose(2, 0, 1)
    with open_source(str(tmp_path / "a.jpg")) as src:
        assert src.backend == "pil"
        _assert_windows(src, decoded)


def test_png_grey_8_and_16_bit(tmp_path: Path) -> None:
    grey = _data((H, W), "uint8")
    grey16 = _data((H, W), "uint16", seed=1)
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    Image.fromarray(grey16).save(tmp_path / "i16.png")
    with open_source(str(tmp_path / "l.png")) as src:
        _assert_windows(src, grey[None])
    with open_source(str(tmp_path / "i16.png")) as src:
        assert src.dtype == np.dtype("uint16")
        assert src.read((0, H), (0, W)).max() > 255
        _assert_windows(src, grey16[None])


def test_png_rgba_alpha_dropped(tmp_path: Path) -> None:
    rgba = _data((H, W, 4), "uint8")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    with open_source(str(tmp_path / "rgba.png")) as src:
        assert src.native_band_count == 3
        _assert_windows(src, rgba[:, :, :3].transpose(2, 0, 1))


def test_png_palette_and_grey_alpha_converted(tmp_path: Path) -> None:
    rgb = Image.fromarray(_data((H, W, 3), "uint8"), "RGB")
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    with open_source(str(tmp_path / "p.png")) as src:
        _assert_windows(src, np.asarray(pal.convert("RGB")).transpose(2, 0, 1))
    la = _data((H, W, 2), "uint8")
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    with open_source(str(tmp_path / "la.png")) as src:
        _assert_windows(src, la[None, :, :, 0])


@pytest.mark.parametrize("count", [3, 4], ids=["RGB", "RGBA"])
def test_png_16_bit_colour_keeps_full_precision(tmp_path: Path, count: int) -> None:
    data = _data((count, H, W), "uint16")
    _write_tif(tmp_path / "c16.png", data, driver="PNG", tiled=False)
    with open_source(str(tmp_path / "c16.png")) as src:
        assert src.backend == "rasterio"  # PIL would truncate to 8 bits
        assert src.dtype == np.dtype("uint16")
        _assert_windows(src, data[:3])  # alpha dropped, as for 8-bit RGBA


def test_pil_band_selection(tmp_path: Path) -> None:
    hwc = _data((H, W, 3), "uint8")
    Image.fromarray(hwc, "RGB").save(tmp_path / "rgb.png")
    with open_source(SourceSpec(str(tmp_path / "rgb.png"), bands=(2,))) as src:
        _assert_windows(src, hwc[None, :, :, 2])


def test_pil_max_pixels_in_memory(tmp_path: Path) -> None:
    Image.fromarray(_data((H, W), "uint8"), "L").save(tmp_path / "l.png")
    spec = SourceSpec(str(tmp_path / "l.png"), max_pixels_in_memory=1000)
    with pytest.raises(UnsupportedInputError, match=r"53x37 = 1961 pixels.*=1000"):
        open_source(spec)


def test_pil_decompression_bomb_does_not_leak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data((H, W), "uint8")
    Image.fromarray(data, "L").save(tmp_path / "l.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # PIL alone would raise a bomb error
    with open_source(str(tmp_path / "l.png")) as src:
        _assert_windows(src, data[None])
    assert Image.MAX_IMAGE_PIXELS == 10
    with pytest.raises(UnsupportedInputError, match="max_pixels_in_memory=100;"):
        open_source(SourceSpec(str(tmp_path / "l.png"), max_pixels_in_memory=100))


# ------------------------------------------------------------------------- errors (generic)


@pytest.mark.parametrize("name", ["missing.tif", "missing.png", "missing.zarr", "missing"])
def test_missing_input(tmp_path: Path, name: str) -> None:
    uri = str(tmp_path / name)
    with pytest.raises(InputNotFoundError, match=f"input not found: '{uri}'") as info:
        open_source(uri)
    assert isinstance(info.value, FileNotFoundError)
    assert str(info.value) == f"input not found: '{uri}'"


def test_missing_remote_input() -> None:
    url = f"memory://{uuid.uuid4().hex}/nothing.tif"
    with pytest.raises(InputNotFoundError, match=f"'{url}'"):
        open_source(url)


@pytest.mark.parametrize("name", ["x.png", "x.tif", "x.jpg", "x.dat"])
def test_text_file_is_not_an_image(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("this is not an image\n")
    with pytest.raises(UnsupportedInputError, match=f"'.*{re.escape(name)}'") as info:
        open_source(str(tmp_path / name))
    assert isinstance(info.value, PipelineError) and isinstance(info.value, ValueError)


def test_unknown_protocol() -> None:
    with pytest.raises(UnsupportedInputError, match="cannot open 'nosuchproto://b/x.tif'"):
        open_source("nosuchproto://b/x.tif")


@pytest.mark.parametrize(
    ("rows", "cols", "match"),
    [
        ((-1, 5), (0, 5), r"rows=\(-1, 5\)"),
        ((0, H + 1), (0, 5), r"rows=\(0, 38\).*<= 37"),
        ((0, 5), (50, 54), r"cols=\(50, 54\).*<= 53"),
        ((5, 5), (0, 5), r"rows=\(5, 5\)"),
        ((6, 5), (0, 5), r"rows=\(6, 5\)"),
        ((0.0, 5), (0, 5), r"rows=\(0.0, 5\) must hold integers"),
        ((0, 5, 7), (0, 5), r"rows=\(0, 5, 7\) must be a pair"),
    ],
)
def test_read_window_validation(tmp_path: Path, rows: tuple, cols: tuple, match: str) -> None:
    zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(H, W), dtype="uint8")
    with open_source(str(tmp_path / "a.zarr")) as src:
        with pytest.raises(WindowError, match=match):
            src.read(rows, cols)


def test_numpy_integer_window_and_read_after_close(tmp_path: Path) -> None:
    data = _data((H, W), "uint8")
    zarr.create_array(store=str(tmp_path / "a.zarr"), data=data)
    src = open_source(str(tmp_path / "a.zarr"))
    got = src.read((np.int64(2), np.int64(4)), (np.int32(0), np.int32(3)))
    np.testing.assert_array_equal(got, data[None, 2:4, 0:3])
    src.close()
    with pytest.raises(ValueError, match="is closed"):
        src.read((0, 1), (0, 1))


# ---------------------------------------------------------------------------- S3 via moto


@pytest.fixture(scope="module")
def s3_options(s3_server: dict) -> dict:
    """storage_options for the session's moto S3 server, with bucket ``liif-inputs``."""
    if not s3_server["fs"].exists("liif-inputs"):
        s3_server["fs"].mkdir("liif-inputs")
    return s3_server["options"]


def test_s3_zarr(s3_options: dict) -> None:
    data = _data((H, W, 3), "uint16")
    url = "s3://liif-inputs/hwc.zarr"
    zarr.create_array(store=url, data=data, chunks=(16, 16, 3), storage_options=s3_options)
    arr = zarr.open_array(store=url, mode="r+", storage_options=s3_options)
    arr.attrs["nodata"] = 7
    with open_source(SourceSpec(url, storage_options=s3_options)) as src:
        assert src.nodata == 7.0
        _assert_windows(src, data.transpose(2, 0, 1))


def test_s3_geotiff_and_png(s3_options: dict, tmp_path: Path) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    data = _data((4, H, W), "uint8")
    _write_tif(tmp_path / "four.tif", data, crs=UTM18, transform=TRANSFORM, nodata=0)
    fs.put(str(tmp_path / "four.tif"), "liif-inputs/four.tif")
    hwc = _data((H, W, 3), "uint8", seed=3)
    Image.fromarray(hwc, "RGB").save(tmp_path / "rgb.png")
    fs.put(str(tmp_path / "rgb.png"), "liif-inputs/rgb.png")

    spec = SourceSpec("s3://liif-inputs/four.tif", storage_options=s3_options, bands=(0, 3))
    with open_source(spec) as src:
        assert CRS.from_wkt(src.crs) == UTM18 and src.nodata == 0.0
        _assert_windows(src, data[[0, 3]])
    with open_source(SourceSpec("s3://liif-inputs/rgb.png", storage_options=s3_options)) as src:
        _assert_windows(src, hwc.transpose(2, 0, 1))
    with pytest.raises(InputNotFoundError, match="'s3://liif-inputs/absent.tif'"):
        open_source(SourceSpec("s3://liif-inputs/absent.tif", storage_options=s3_options))


# ------------------------------------------------------------------------------ real data


def test_real_landsat(shared_data: Path) -> None:
    path = shared_data / "geo" / "landsat7_RGB.byte.tif"
    with rasterio.open(path) as ds:
        full = ds.read()
    with open_source(str(path)) as src:
        assert src.shape == (3, 718, 791)
        assert src.dtype == np.dtype("uint8")
        assert src.nodata == 0.0
        assert src.crs is not None and CRS.from_wkt(src.crs) == CRS.from_epsg(32618)
        assert src.transform is not None and len(src.transform) == 6
        for rows, cols in [((0, 718), (0, 791)), ((300, 437), (401, 659)), ((717, 718), (0, 5))]:
            got = src.read(rows, cols)
            np.testing.assert_array_equal(got, full[:, rows[0] : rows[1], cols[0] : cols[1]])


def test_real_naip_four_bands(shared_data: Path) -> None:
    path = shared_data / "geo" / "naip_m_4709963_se_14_1_20100629_5m.tif"
    with rasterio.open(path) as ds:
        full = ds.read()
    with open_source(SourceSpec(str(path), bands=(3, 0, 1))) as src:
        assert src.native_band_count == 4
        assert src.shape == (3, 723, 934)
        assert CRS.from_wkt(src.crs) == CRS.from_epsg(26914)
        got = src.read((500, 723), (511, 700))  # crosses the 512-px tile boundary
        np.testing.assert_array_equal(got, full[[3, 0, 1], 500:723, 511:700])
