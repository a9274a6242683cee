"""pipeline.io.exports: GeoTIFF/COG (codecs, threads, colour interpretation), PNG, preview and the
side-by-side comparison PNG; and the per-band colour interpretation the readers hand them."""

from __future__ import annotations

import os
import threading
import time
import uuid

import fsspec
import numpy as np
import pytest
import rasterio
import torch
import zarr
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.io import MemoryFile
from rasterio.transform import Affine
from test_zarr_output import TRANSFORM, WKT, _attrs, _create, _tiles

from jobs.upscale import main
from liif.resize import resize_bicubic
from pipeline.errors import ConfigError, OutputExistsError, UnsupportedDtypeError
from pipeline.io import exports
from pipeline.io.exports import COMPRESSIONS, codec_options, export_geotiff
from pipeline.io.previews import write_comparison_png, write_png, write_preview_png
from pipeline.io.sources import SourceSpec, open_source
from pipeline.io.zarr_output import CREATED_BY, ZarrOutput

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

CLI = ["--executor", "in-process", "--no-progress", "--threads-per-worker", "1"]
NAIP = "geo/naip_m_4709963_se_14_1_20100629_5m.tif"


def _filled(uri: str, ref: np.ndarray, chunks=(64, 96), **kw) -> ZarrOutput:
    out = _create(uri, shape=ref.shape, dtype=ref.dtype, chunks=chunks, **kw)
    for rows, cols in _tiles(ref.shape[1], ref.shape[2], *chunks):
        out.write(rows, cols, ref[:, slice(*rows), slice(*cols)])
    return out


def _write_tif(path, data: np.ndarray, *, interps=None, descriptions=None, **profile) -> str:
    c, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c,
                       dtype=data.dtype.name, **profile) as dst:
        dst.write(data)
        if interps is not None:
            dst.colorinterp = [ColorInterp[n] for n in interps]
        for i, d in enumerate(descriptions or [], start=1):
            if d:
                dst.set_band_description(i, d)
    return str(path)


def _tiff_pages(path) -> list:
    """(photometric, extrasamples, shape, compression) of every IFD, read by tifffile (libtiff's
    view, what non-GDAL readers see), or skip without tifffile."""
    tifffile = pytest.importorskip("tifffile")
    out = []
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            es = page.tags.get("ExtraSamples")
            extras = tuple(int(v) for v in np.atleast_1d(es.value)) if es else ()
            out.append((page.photometric.name, extras, page.shape, page.compression.name))
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---------------------------------------------------------------------------------------------
# band information of the sources (what the jobs store in the output's "bands" attribute)


def test_rasterio_band_info_follows_the_band_selection(tmp_path, rng):
    data = rng.integers(1, 255, size=(4, 20, 30), dtype=np.uint8)
    path = _write_tif(tmp_path / "in.tif", data, photometric="MINISBLACK",
                      interps=["gray", "undefined", "undefined", "undefined"],
                      descriptions=["red edge", None, "green", "near infrared"])
    with open_source(path) as src:
        assert src.band_info == [
            {"colorinterp": "gray", "description": "red edge"},
            {"colorinterp": "undefined", "description": None},
            {"colorinterp": "undefined", "description": "green"},
            {"colorinterp": "undefined", "description": "near infrared"}]
    with open_source(SourceSpec(path, bands=(3, 1))) as src:
        assert src.band_info == [{"colorinterp": "undefined", "description": "near infrared"},
                                 {"colorinterp": "undefined", "description": None}]


def test_rasterio_band_info_of_a_16_bit_rgba_png_drops_the_alpha(tmp_path, rng):
    data = rng.integers(0, 65535, size=(4, 9, 11), dtype=np.uint16)
    path = str(tmp_path / "rgba16.png")
    with rasterio.open(path, "w", driver="PNG", width=11, height=9, count=4, dtype="uint16") as d:
        d.write(data)
    with open_source(path) as src:
        assert src.backend == "rasterio" and src.shape == (3, 9, 11)
        assert [b["colorinterp"] for b in src.band_info] == ["red", "green", "blue"]


@pytest.mark.parametrize("mode,expected", [("RGB", ["red", "green", "blue"]),
                                           ("RGBA", ["red", "green", "blue"]),
                                           ("L", ["gray"]), ("LA", ["gray"])])
def test_pil_band_info_from_the_image_mode(tmp_path, mode, expected):
    path = str(tmp_path / "in.png")
    Image.new(mode, (7, 5)).save(path)
    with open_source(path) as src:
        assert src.backend == "pil"
        assert src.band_info == [{"colorinterp": n, "description": None} for n in expected]
    with open_source(SourceSpec(path, bands=(0,))) as src:
        assert src.band_info == [{"colorinterp": expected[0], "description": None}]


def test_zarr_band_info_from_the_bands_attribute(tmp_path):
    bands = [{"colorinterp": "Red", "description": "B04"}, {"colorinterp": "nir"},
             {"colorinterp": "not-a-colour", "description": ""}]
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(3, 8, 9), dtype="uint8",
                            chunks=(3, 8, 9), attributes={"bands": bands})
    arr[...] = 1
    with open_source(SourceSpec(str(tmp_path / "a.zarr"), bands=(1, 0, 2))) as src:
        assert src.band_info == [{"colorinterp": "nir", "description": None},
                                 {"colorinterp": "red", "description": "B04"},
                                 {"colorinterp": None, "description": None}]
    # a "bands" attribute of another meaning (or length) is not band information
    for other in (["B02", "B03", "B04"], [{"colorinterp": "red"}]):
        arr.attrs["bands"] = other
        with open_source(str(tmp_path / "a.zarr")) as src:
            assert src.band_info == [{"colorinterp": None, "description": None}] * 3


def test_an_output_read_back_as_input_keeps_its_band_info(tmp_path):
    bands = [{"colorinterp": "red", "description": "R"}, {"colorinterp": "green",
             "description": None}, {"colorinterp": "blue", "description": None},
             {"colorinterp": "undefined", "description": "NIR"}]
    _create(str(tmp_path / "o.zarr"), shape=(4, 10, 12), attrs=_attrs(bands=bands))
    with open_source(str(tmp_path / "o.zarr")) as src:
        assert src.backend == "zarr" and src.band_info == bands


# ---------------------------------------------------------------------------------------------
# GeoTIFF / COG


@pytest.fixture
def geo_output(tmp_path, rng):
    """(3, 300, 257) uint16 output with CRS/transform/nodata, chunks (64, 96), fully written."""
    ref = rng.integers(1, 60000, size=(3, 300, 257), dtype=np.uint16)
    return _filled(str(tmp_path / "geo.zarr"), ref, attrs=_attrs(out_shape=[300, 257])), ref


def _spy_reads(out: ZarrOutput) -> list[tuple[int, int]]:
    sizes: list[tuple[int, int]] = []
    real = out.read

    def read(rows, cols):
        sizes.append((rows[1] - rows[0], cols[1] - cols[0]))
        return real(rows, cols)

    out.read = read  # type: ignore[method-assign]
    return sizes


def _assert_cog_layout(path: str, levels: int) -> None:
    """GDAL's COG layout, checked on the file itself: every IFD before any pixel data, the
    overviews' data smallest first, the full resolution last (what a range reader relies on)."""
    tifffile = pytest.importorskip("tifffile")
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages)
        assert len(pages) == levels + 1
        data_start = min(min(o for o in p.dataoffsets if o) for p in pages)
        assert max(p.offset for p in pages) < data_start
        spans = [(min(o for o in p.dataoffsets if o), max(p.dataoffsets)) for p in pages]
        for finer, coarser in zip(spans, spans[1:], strict=False):
            assert coarser[1] < finer[0]  # a coarser level's data lies before the finer one's
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


@pytest.mark.parametrize("cog", [True, False])
def test_geotiff_round_trip(tmp_path, geo_output, cog):
    out, ref = geo_output
    reads = _spy_reads(out)
    path = str(tmp_path / "out.tif")
    assert export_geotiff(out, path, cog=cog, blocksize=128) == path
    assert len(reads) > 1 and max(h for h, _ in reads) <= 128  # streamed in bands of rows
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # temporaries removed
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(src.read(), ref)
        assert src.crs == CRS.from_wkt(WKT)
        assert tuple(src.transform)[:6] == pytest.approx(TRANSFORM)
        assert src.nodata == 0
        assert src.profile["tiled"] and src.block_shapes == [(128, 128)] * 3
        assert src.compression.name == "deflate"
        assert src.overviews(1) == [2, 4]
        assert src.tags()["created_by"] == CREATED_BY
        layout = src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
        assert (layout == "COG") if cog else (layout is None)
    if cog:
        _assert_cog_layout(path, levels=2)


def test_geotiff_existing_file_needs_overwrite(tmp_path, geo_output):
    out, ref = geo_output
    path = tmp_path / "out.tif"
    path.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="out.tif' already exists"):
        export_geotiff(out, str(path), blocksize=128)
    assert path.read_bytes() == b"old"
    with pytest.raises(OutputExistsError, match="not written by liif-pipeline"):
        export_geotiff(out, str(path), blocksize=128, overwrite=True)  # not ours: never replaced
    assert path.read_bytes() == b"old"
    path.unlink()
    export_geotiff(out, str(path), blocksize=128)
    export_geotiff(out, str(path), blocksize=128, overwrite=True, overviews=False)  # ours
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(src.read(), ref)
        assert src.overviews(1) == []
        assert src.tags()["created_by"].startswith("liif-pipeline")


def test_geotiff_float_without_georeferencing_to_fsspec_url(tmp_path, rng):
    out = _create(str(tmp_path / "f.zarr"), shape=(1, 41, 67), dtype="float32", chunks=(16, 32),
                  fill_value=float("nan"), attrs=_attrs(crs=None, transform=None, nodata=None))
    ref = rng.standard_normal((1, 41, 67)).astype(np.float32)
    ref[0, 3:5, 7:9] = np.nan  # invalid pixels of a float output without a nodata value
    out.write((0, 41), (0, 67), ref)
    url = f"memory://tif-{uuid.uuid4().hex}/x.tif"
    export_geotiff(out, url, cog=False, blocksize=16)
    payload = fsspec.filesystem("memory").cat_file(url)
    with MemoryFile(payload) as mem, mem.open() as src:
        np.testing.assert_array_equal(src.read(), ref)
        assert src.crs is None and src.block_shapes == [(16, 16)]
        assert np.isnan(src.nodata)  # NaN is declared, so GIS readers mask those pixels
        mask = src.read_masks(1)
        assert (mask == 0).sum() == 4 and mask[3:5, 7:9].max() == 0
        assert len(src.overviews(1)) == 3  # 67 -> 34, 17, 9 columns (GDAL reports 2, 4, 7)


def test_geotiff_rejects_bad_blocksize(tmp_path, geo_output):
    with pytest.raises(ConfigError, match="multiple of 16, got 100"):
        export_geotiff(geo_output[0], str(tmp_path / "x.tif"), blocksize=100)
    with pytest.raises(ConfigError, match="COG needs blocksize >= 128.*got 64"):
        export_geotiff(geo_output[0], str(tmp_path / "x.tif"), blocksize=64)
    assert os.listdir(tmp_path) == ["geo.zarr"]


def _reference(dtype: str, rng) -> np.ndarray:
    """(2, 200, 300) smooth-plus-noise data of ``dtype``; floats carry NaN and +-inf."""
    yy, xx = np.mgrid[0:200, 0:300]
    smooth = np.sin(yy / 17.0) * np.cos(xx / 23.0)
    base = np.stack([smooth, smooth[::-1]]) + 0.05 * rng.standard_normal((2, 200, 300))
    if dtype.startswith("float"):
        ref = base.astype(dtype) * 1000
        ref[0, :3, :7] = np.nan
        ref[1, 50, 60:62] = (np.inf, -np.inf)
        return ref
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -30000), min(info.max, 60000)
    ref = np.rint(lo + (base - base.min()) / np.ptp(base) * (hi - lo)).astype(dtype)
    ref[ref == 0] = 1  # 0 is nodata
    ref[:, 100:110, :20] = 0  # a nodata block
    return ref


@pytest.mark.parametrize("compress", COMPRESSIONS)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_every_codec_round_trips_exactly_into_a_valid_cog(tmp_path, rng, compress, dtype):
    ref = _reference(dtype, rng)
    nodata = None if dtype == "float32" else 0
    fill = float("nan") if dtype == "float32" else 0
    out = _filled(str(tmp_path / "o.zarr"), ref, fill_value=fill,
                  attrs=_attrs(out_shape=[200, 300], nodata=nodata))
    path = str(tmp_path / "o.tif")
    export_geotiff(out, path, compress=compress, blocksize=128, threads=2)
    with rasterio.open(path) as src:
        got = src.read()
        assert got.dtype == ref.dtype
        np.testing.assert_array_equal(got, ref)  # NaN == NaN here
        assert src.compression is None if compress == "none" else \
            src.compression.name == compress
        assert src.crs == CRS.from_wkt(WKT)
        # float without a nodata value: NaN marks the invalid pixels, and the COG says so
        assert np.isnan(src.nodata) if nodata is None else src.nodata == nodata
        assert tuple(src.transform)[:6] == pytest.approx(TRANSFORM)
        assert src.overviews(1) == [2, 4]  # 300 -> 150 -> 75 columns (one block: 128)
        if compress in ("deflate", "zstd", "lzw"):
            assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == ("3" if dtype == "float32"
                                                                    else "2")
    _assert_cog_layout(path, levels=2)


def test_codec_levels_and_lossy_lerc(tmp_path, rng):
    ref = _reference("float32", rng)
    out = _filled(str(tmp_path / "o.zarr"), ref, fill_value=float("nan"),
                  attrs=_attrs(nodata=None))
    sizes = {}
    for compress, level in (("zstd", 1), ("zstd", 19), ("deflate", 1), ("deflate", 12)):
        path = tmp_path / f"{compress}{level}.tif"
        export_geotiff(out, str(path), compress=compress, level=level, blocksize=128)
        with rasterio.open(path) as src:
            np.testing.assert_array_equal(src.read(), ref)
        sizes[compress, level] = path.stat().st_size
    assert sizes["zstd", 19] < sizes["zstd", 1] and sizes["deflate", 12] < sizes["deflate", 1]
    path = tmp_path / "lossy.tif"
    export_geotiff(out, str(path), compress="lerc_zstd", max_z_error=0.5, blocksize=128)
    with rasterio.open(path) as src:
        got = src.read()
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    err = np.abs(got[finite].astype(np.float64) - ref[finite])
    assert 0 < err.max() <= 0.5
    assert path.stat().st_size < sizes["zstd", 19]


@pytest.mark.parametrize("kwargs,match", [
    ({"compress": "jpeg"}, "--cog-compress 'jpeg' is not one of deflate, zstd"),
    ({"compress": "zstd", "level": 23}, r"--cog-level 23 is out of range .* zstd: .* 1..22"),
    ({"compress": "deflate", "level": 0}, r"--cog-level 0 .* deflate: .* 1..12"),
    ({"compress": "deflate", "level": 2.5}, r"--cog-level 2.5 is out of range"),
    ({"compress": "lzw", "level": 5}, "--cog-level 5 does not apply to --cog-compress lzw"),
    ({"compress": "lerc", "level": 5}, "--cog-level 5 does not apply to --cog-compress lerc"),
    ({"compress": "deflate", "max_z_error": 0.1}, "--cog-max-z-error 0.1 only applies to LERC"),
    ({"compress": "lerc", "max_z_error": -1.0}, "--cog-max-z-error -1.0 must be a finite number"),
    ({"compress": "lerc", "max_z_error": float("nan")}, "--cog-max-z-error nan must be"),
    ({"threads": 0}, "--cog-threads 0 must be a positive integer"),
])
def test_bad_codec_settings_are_refused_before_anything_is_written(tmp_path, geo_output, kwargs,
                                                                   match):
    with pytest.raises(ConfigError, match=match):
        export_geotiff(geo_output[0], str(tmp_path / "x.tif"), **kwargs)
    assert os.listdir(tmp_path) == ["geo.zarr"]


def test_codec_options_are_what_gdal_gets():
    assert codec_options("DEFLATE", np.dtype("uint16")) == {"COMPRESS": "DEFLATE", "PREDICTOR": 2}
    assert codec_options("zstd", np.dtype("float32"), level=3) == {
        "COMPRESS": "ZSTD", "ZSTD_LEVEL": 3, "PREDICTOR": 3}
    assert codec_options("zstd", np.dtype("uint8"), predictor=False) == {"COMPRESS": "ZSTD"}
    assert codec_options("lerc_deflate", np.dtype("float32"), level=9, max_z_error=0.01) == {
        "COMPRESS": "LERC_DEFLATE", "ZLEVEL": 9, "MAX_Z_ERROR": 0.01}
    assert codec_options("none", np.dtype("int16")) == {"COMPRESS": "NONE"}


def test_thread_counts_give_the_same_pixels(tmp_path, geo_output):
    out, ref = geo_output
    for threads in (1, 3):
        path = tmp_path / f"t{threads}.tif"
        export_geotiff(out, str(path), compress="zstd", threads=threads, blocksize=128)
        with rasterio.open(path) as src:
            np.testing.assert_array_equal(src.read(), ref)
            np.testing.assert_array_equal(src.read(1, out_shape=(75, 65)),
                                          rasterio.open(tmp_path / "t1.tif").read(
                                              1, out_shape=(75, 65)))


def test_read_ahead_keeps_at_most_two_windows_per_thread_in_memory(tmp_path, geo_output):
    out, ref = geo_output
    windows = exports._windows(300, 257, 16, 64)
    lock, state = threading.Lock(), {"read": 0, "max_ahead": 0}
    real = out.read

    def read(rows, cols):
        with lock:
            state["read"] += 1
        return real(rows, cols)

    out.read = read  # type: ignore[method-assign]
    consumed = 0
    for win, block in exports._read_ahead(out, windows, 3, np.dtype("float32")):
        assert win == windows[consumed] and block.dtype == np.float32
        np.testing.assert_array_equal(block, ref[:, slice(*win[0]), slice(*win[1])])
        consumed += 1
        time.sleep(0.002)  # a slow writer: the readers run ahead as far as they may
        with lock:
            state["max_ahead"] = max(state["max_ahead"], state["read"] - consumed)
    assert consumed == len(windows) == state["read"]
    assert 1 <= state["max_ahead"] <= 2 * 3


# ------------------------------------------------------------------ colour interpretation


def _cog_from_source(tmp_path, src_path: str, **kw) -> str:
    """An output holding the source's pixels with the attributes the jobs write (crs,
    transform, nodata, bands = the source's band_info), exported as a COG."""
    with open_source(src_path) as src:
        data = src.read((0, src.shape[1]), (0, src.shape[2]))
        attrs = _attrs(bands=src.band_info, nodata=src.nodata, crs=src.crs,
                       transform=list(src.transform) if src.transform else None)
    out = _filled(str(tmp_path / "o.zarr"), data, chunks=(32, 32), attrs=attrs)
    path = str(tmp_path / "o.tif")
    export_geotiff(out, path, blocksize=128, **kw)
    return path


def test_four_band_input_keeps_gray_undefined_and_descriptions(tmp_path, rng):
    data = rng.integers(1, 255, size=(4, 150, 170), dtype=np.uint8)
    data[:, :10, :10] = 0
    interps = ["gray", "undefined", "undefined", "undefined"]
    src = _write_tif(tmp_path / "rgbn.tif", data, photometric="MINISBLACK", interps=interps,
                     descriptions=["red", "green", "blue", "nir"], nodata=0, crs="EPSG:26914",
                     transform=Affine(5, 0, 600_000, 0, -5, 5_200_000))
    with rasterio.open(src) as ds:
        assert [c.name for c in ds.colorinterp] == interps
    for compress in ("deflate", "zstd"):
        (tmp_path / compress).mkdir()
        path = _cog_from_source(tmp_path / compress, src, compress=compress)
        with rasterio.open(path) as cog:
            assert [c.name for c in cog.colorinterp] == interps  # no alpha band
            assert cog.descriptions == ("red", "green", "blue", "nir")
            assert cog.nodata == 0 and cog.mask_flag_enums == ([rasterio.enums.MaskFlags.nodata],) * 4
            np.testing.assert_array_equal(cog.read(), data)
            assert cog.crs == CRS.from_epsg(26914)
        # libtiff's view (non-GDAL readers): grey with 3 unspecified extra samples, no alpha
        for photometric, extras, _, _ in _tiff_pages(path):
            assert photometric == "MINISBLACK" and extras == (0, 0, 0)


def test_rgb_input_is_written_as_rgb(tmp_path, rng):
    data = rng.integers(1, 255, size=(3, 140, 150), dtype=np.uint8)
    src = _write_tif(tmp_path / "rgb.tif", data, photometric="RGB", nodata=0)
    path = _cog_from_source(tmp_path, src)
    with rasterio.open(path) as cog:
        assert [c.name for c in cog.colorinterp] == ["red", "green", "blue"]
        np.testing.assert_array_equal(cog.read(), data)
    assert {(p, e) for p, e, _, _ in _tiff_pages(path)} == {("RGB", ())}


@pytest.mark.parametrize("bands,expected", [
    (None, ["gray", "undefined", "undefined", "undefined"]),  # an older output: nothing known
    ([{"colorinterp": "red"}, {"colorinterp": "green"}, {"colorinterp": "blue"},
      {"colorinterp": "nir"}], ["red", "green", "blue", "nir"]),
    ([{"colorinterp": "red"}, {"colorinterp": "green"}, {"colorinterp": "blue"},
      {"colorinterp": "alpha"}], ["red", "green", "blue", "alpha"]),  # the input said alpha
])
def test_colour_interpretation_from_the_bands_attribute(tmp_path, rng, bands, expected):
    ref = rng.integers(1, 255, size=(4, 130, 140), dtype=np.uint8)
    out = _filled(str(tmp_path / "o.zarr"), ref, attrs=_attrs(bands=bands))
    path = str(tmp_path / "o.tif")
    export_geotiff(out, path, blocksize=128)
    with rasterio.open(path) as cog:
        assert [c.name for c in cog.colorinterp] == expected
    assert {p for p, _, _, _ in _tiff_pages(path)} == {"MINISBLACK"}


def test_single_band_is_gray(tmp_path, rng):
    ref = rng.standard_normal((1, 130, 140)).astype(np.float32)
    out = _filled(str(tmp_path / "o.zarr"), ref, fill_value=float("nan"),
                  attrs=_attrs(nodata=None, bands=[{"colorinterp": None, "description": "DSM"}]))
    path = str(tmp_path / "o.tif")
    export_geotiff(out, path, blocksize=128)
    with rasterio.open(path) as cog:
        assert [c.name for c in cog.colorinterp] == ["gray"] and cog.descriptions == ("DSM",)


def test_cli_cog_of_a_four_band_input_keeps_its_bands(tmp_path, rng, tiny_liif):
    data = rng.integers(1, 255, size=(4, 40, 52), dtype=np.uint8)
    interps = ["gray", "undefined", "undefined", "undefined"]
    src = _write_tif(tmp_path / "in.tif", data, photometric="MINISBLACK", interps=interps,
                     descriptions=["R", "G", "B", "NIR"], nodata=0, crs="EPSG:26914",
                     transform=Affine(5, 0, 600_000, 0, -5, 5_200_000))
    out, cog = tmp_path / "o.zarr", tmp_path / "o.tif"
    assert main(["--input", src, "--output", str(out), "--scale", "4", "--model", str(tiny_liif),
                 "--cog", str(cog), *CLI]) == 0
    assert zarr.open_array(str(out), path="image").attrs["bands"] == [
        {"colorinterp": i, "description": d} for i, d in zip(interps, ["R", "G", "B", "NIR"],
                                                            strict=True)]
    with rasterio.open(cog) as ds:
        assert [c.name for c in ds.colorinterp] == interps
        assert ds.descriptions == ("R", "G", "B", "NIR") and ds.nodata == 0
        assert ds.shape == (160, 208)


@pytest.mark.slow
def test_cli_cog_of_real_naip_keeps_its_colour_interpretation(tmp_path, shared_data, tiny_liif):
    naip = shared_data / NAIP
    if not naip.exists():
        pytest.skip(f"{naip} is absent")
    out, cog = tmp_path / "o.zarr", tmp_path / "o.tif"
    assert main(["--input", str(naip), "--output", str(out), "--scale", "2", "--model",
                 str(tiny_liif), "--cog", str(cog), *CLI]) == 0
    with rasterio.open(naip) as src, rasterio.open(cog) as ds:
        assert [c.name for c in ds.colorinterp] == [c.name for c in src.colorinterp]
        assert ds.descriptions == src.descriptions and ds.nodata == src.nodata
        assert ds.crs == src.crs and ds.shape == (2 * src.height, 2 * src.width)
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    for photometric, extras, _, _ in _tiff_pages(str(cog)):
        assert photometric == "MINISBLACK" and 2 not in extras  # no (unassociated) alpha


# ---------------------------------------------------------------------------------------------
# PNG and preview


def test_write_png_uint8_rgb(tmp_path, rng):
    img = rng.integers(0, 256, size=(3, 37, 53), dtype=np.uint8)
    path = str(tmp_path / "a.png")
    write_png(img, path)
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size == (53, 37)
        np.testing.assert_array_equal(np.asarray(im).transpose(2, 0, 1), img)


def test_write_png_uint16_grey_and_rgb(tmp_path, rng):
    for bands in (1, 3):
        img = rng.integers(0, 65536, size=(bands, 19, 23), dtype=np.uint16)
        path = str(tmp_path / f"b{bands}.png")
        write_png(img, path)
        with rasterio.open(path) as src:
            assert src.count == bands and src.dtypes[0] == "uint16"
            np.testing.assert_array_equal(src.read(), img)


def test_write_png_refusals(tmp_path):
    path = tmp_path / "x.png"
    huge = np.broadcast_to(np.uint8(0), (1, 10_001, 10_001))  # 100.02 Mpx, no memory
    with pytest.raises(ConfigError, match=r"10001x10001 = 100.0 Mpx is too large .* 100 Mpx"):
        write_png(huge, str(path))
    with pytest.raises(UnsupportedDtypeError, match="got float32"):
        write_png(np.zeros((3, 4, 4), np.float32), str(path))
    with pytest.raises(ValueError, match=r"C in 1..4, got shape \(5, 4, 4\)"):
        write_png(np.zeros((5, 4, 4), np.uint8), str(path))
    assert not path.exists()
    path.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="already exists"):
        write_png(np.zeros((1, 4, 4), np.uint8), str(path))
    assert path.read_bytes() == b"old"
    with pytest.raises(OutputExistsError, match="not written by liif-pipeline"):
        write_png(np.zeros((1, 4, 4), np.uint8), str(path), overwrite=True)
    assert path.read_bytes() == b"old"
    path.unlink()
    write_png(np.zeros((1, 4, 4), np.uint8), str(path))
    write_png(np.full((1, 4, 4), 7, np.uint8), str(path), overwrite=True)  # ours: replaced
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (4, 4)
        assert im.info["created_by"].startswith("liif-pipeline")
        assert np.asarray(im).max() == 7


def test_preview_of_uint8_is_the_strided_array(tmp_path, rng):
    ref = rng.integers(0, 256, size=(1, 61, 47), dtype=np.uint8)
    out = _filled(str(tmp_path / "p.zarr"), ref, chunks=(7, 16))
    path = str(tmp_path / "p.png")
    assert write_preview_png(out, path, max_side=20) == (16, 12)  # stride ceil(61 / 20) = 4
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (12, 16)
        np.testing.assert_array_equal(np.asarray(im), ref[0, ::4, ::4])


def test_preview_of_uint16_rgb_is_stretched(tmp_path, geo_output):
    out, ref = geo_output
    path = str(tmp_path / "p.png")
    assert write_preview_png(out, path, max_side=64) == (60, 52)  # stride 5
    sub = ref[:, ::5, ::5].astype(np.float64)
    lo, hi = np.percentile(sub[sub != 0], [2, 98])
    expected = np.rint(np.clip((sub - lo) * 255 / (hi - lo), 0, 255)).astype(np.uint8)
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size == (52, 60)
        got = np.asarray(im).transpose(2, 0, 1)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    assert got.min() == 0 and got.max() == 255


def test_preview_of_four_float_bands_uses_the_first_three(tmp_path, rng):
    out = _create(str(tmp_path / "f.zarr"), shape=(4, 33, 29), dtype="float32", chunks=(8, 8),
                  fill_value=float("nan"), attrs=_attrs(nodata=None))
    ref = rng.random((4, 33, 29)).astype(np.float32)
    ref[3] = 1e6  # a band that would dominate the stretch if it were used
    out.write((0, 16), (0, 29), ref[:, :16])  # rows 16.. stay NaN (unwritten)
    path = str(tmp_path / "f.png")
    assert write_preview_png(out, path) == (33, 29)  # smaller than max_side: stride 1
    with Image.open(path) as im:
        got = np.asarray(im).transpose(2, 0, 1)
    assert im.mode == "RGB" and got.shape == (3, 33, 29)
    assert np.all(got[:, 16:] == 0)  # NaN -> 0
    assert got[:, :16].max() == 255 and np.percentile(got[:, :16], 50) > 50


def test_preview_shows_red_green_blue_by_colour_interpretation(tmp_path, rng):
    ref = rng.integers(0, 256, size=(4, 20, 24), dtype=np.uint8)
    bands = [{"colorinterp": n} for n in ("nir", "blue", "green", "red")]
    out = _filled(str(tmp_path / "p.zarr"), ref, chunks=(8, 8), attrs=_attrs(bands=bands))
    path = str(tmp_path / "p.png")
    write_preview_png(out, path)
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im).transpose(2, 0, 1), ref[[3, 2, 1]])


def test_preview_existing_file_and_bad_max_side(tmp_path, geo_output):
    path = tmp_path / "p.png"
    path.write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        write_preview_png(geo_output[0], str(path))
    with pytest.raises(ConfigError, match="max_side must be a positive integer, got 0"):
        write_preview_png(geo_output[0], str(path), max_side=0, overwrite=True)
    assert path.read_bytes() == b"old"


# ---------------------------------------------------------------------------------------------
# side-by-side comparison


def _bicubic_output(tmp_path, img: np.ndarray, scale: int, **attrs) -> ZarrOutput:
    """The whole-image bicubic upscale of ``img`` (uint8 (C, h, w)) stored as an output: its
    comparison's two halves must agree."""
    c, h, w = img.shape
    up = resize_bicubic(torch.from_numpy(img.astype(np.float32) / 255), (h * scale, w * scale))
    data = np.clip(np.rint(up.numpy() * 255), 0, 255).astype(np.uint8)
    return _filled(str(tmp_path / "c.zarr"), data, chunks=(64, 64), attrs=_attrs(
        scale=[float(scale)] * 2, in_shape=[h, w], value_range=[0, 255], **attrs))


def _textured(h: int, w: int, box: tuple[slice, slice], rng, bands: int = 3) -> np.ndarray:
    img = np.full((bands, h, w), 100, np.uint8)
    img[(slice(None), *box)] = rng.integers(0, 256, (bands, box[0].stop - box[0].start,
                                                     box[1].stop - box[1].start))
    return img


def test_comparison_crop_lands_on_the_detail_and_halves_align(tmp_path, rng):
    img = _textured(120, 160, (slice(70, 100), slice(20, 60)), rng)
    src = _write_tif(tmp_path / "in.tif", img)
    out = _bicubic_output(tmp_path, img, 3, nodata=None)
    path = str(tmp_path / "c.png")
    info = write_comparison_png(out, src, path, crop=60)
    (ir0, ir1), (ic0, ic1) = info["input_window"]
    assert (ir1 - ir0, ic1 - ic0) == (20, 20)
    assert 70 <= ir0 and ir1 <= 100 and 20 <= ic0 and ic1 <= 60  # inside the textured box
    (r0, r1), (c0, c1) = info["output_window"]
    assert (r0, r1, c0, c1) == (3 * ir0, 3 * ir1, 3 * ic0, 3 * ic1)
    with Image.open(path) as im:
        got = np.asarray(im).transpose(2, 0, 1)
    assert got.shape == (3, 60, 60 + 8 + 60) and info["shape"] == [60, 128]
    np.testing.assert_array_equal(got[:, :, :60], out.read((r0, r1), (c0, c1)))  # left = output
    assert np.all(got[:, :, 60:68] == 255)
    # the right half is the bicubic upscale of the same input window (here: the output itself)
    assert np.abs(got[:, :, 68:].astype(int) - got[:, :, :60]).max() <= 1


@pytest.mark.parametrize("shape,out_shape", [((60, 80), (150, 200)), ((60, 80), (90, 280)),
                                             ((30, 40), (75, 100))])
def test_comparison_at_non_integer_and_anisotropic_scales(tmp_path, shape, out_shape):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.clip(128 + 100 * np.sin(yy / 5.0)[None] * np.cos(xx / 7.0 + np.arange(3)[:, None,
                  None]), 1, 255).astype(np.uint8)
    src = _write_tif(tmp_path / "in.tif", img)
    up = resize_bicubic(torch.from_numpy(img.astype(np.float32) / 255), out_shape)
    data = np.clip(np.rint(up.numpy() * 255), 0, 255).astype(np.uint8)
    sy, sx = out_shape[0] / h, out_shape[1] / w
    out = _filled(str(tmp_path / "c.zarr"), data, chunks=(64, 64), attrs=_attrs(
        scale=[sy, sx], in_shape=[h, w], value_range=[0, 255], nodata=None))
    info = write_comparison_png(out, src, str(tmp_path / "c.png"), crop=100)
    (r0, r1), (c0, c1) = info["output_window"]
    n_r, n_c = r1 - r0, c1 - c0
    assert abs(n_r - min(100, out_shape[0])) <= 2 and abs(n_c - min(100, out_shape[1])) <= 2
    with Image.open(tmp_path / "c.png") as im:
        got = np.asarray(im).transpose(2, 0, 1).astype(int)
    assert got.shape == (3, n_r, 2 * n_c + 8)
    np.testing.assert_array_equal(got[:, :, :n_c], out.read((r0, r1), (c0, c1)))
    # the same smooth image on (nearly) the same grid: within a pixel's shift of each other
    assert np.abs(got[:, :, n_c + 8:] - got[:, :, :n_c]).mean() < 5


def test_comparison_crop_ignores_the_jump_to_nodata(tmp_path, rng):
    img = np.full((1, 90, 90), 200, np.uint8)
    img[:, 60:80, 5:25] += rng.integers(0, 6, (1, 20, 20), dtype=np.uint8)  # faint detail
    img[:, :, 45:] = 0  # nodata: 200 -> 0 would be the strongest edge if nodata counted
    src = _write_tif(tmp_path / "in.tif", img, nodata=0)
    out = _bicubic_output(tmp_path, img, 2, nodata=0)
    info = write_comparison_png(out, src, str(tmp_path / "c.png"), crop=40, candidates=6)
    (ir0, ir1), (ic0, ic1) = info["input_window"]
    assert ir0 >= 50 and ic1 <= 45 and info["score"] > 0


def test_comparison_bicubic_half_is_nodata_where_the_input_is(tmp_path, rng):
    img = np.full((1, 90, 90), 120, np.uint8)
    img[:, :, 30:45] = rng.integers(50, 200, (1, 90, 15), dtype=np.uint8)  # detail at the edge
    img[:, :, 45:] = 0  # nodata
    src = _write_tif(tmp_path / "in.tif", img, nodata=0)
    out = _bicubic_output(tmp_path, img, 2, nodata=0)
    info = write_comparison_png(out, src, str(tmp_path / "c.png"), crop=40, candidates=6)
    (c0, c1) = info["output_window"][1]
    assert info["input_window"][1] == [28, 48]  # the detailed window, 3 columns of nodata
    with Image.open(tmp_path / "c.png") as im:
        right = np.asarray(im)[:, c1 - c0 + 8:]
    invalid = np.arange(c0, c1) // 2 >= 45  # nearest input column of each output column
    assert invalid.sum() == 6
    assert np.all(right[:, invalid] == 0) and np.all(right[:, ~invalid] > 0)


def test_comparison_of_float_output_uses_one_stretch_and_checks_the_input(tmp_path, rng):
    img = rng.random((1, 50, 60)).astype(np.float32)
    src = _write_tif(tmp_path / "in.tif", img)
    data = resize_bicubic(torch.from_numpy(img), (100, 120)).numpy()
    out = _filled(str(tmp_path / "f.zarr"), data, chunks=(32, 32), fill_value=float("nan"),
                  attrs=_attrs(scale=[2.0, 2.0], in_shape=[50, 60], value_range=[0, 1],
                               nodata=None))
    info = write_comparison_png(out, SourceSpec(src), str(tmp_path / "c.png"), crop=32)
    with Image.open(tmp_path / "c.png") as im:
        got = np.asarray(im)
    assert im.mode == "L" and got.shape == (32, 72) and info["shape"] == [32, 72]
    assert np.abs(got[:, :32].astype(int) - got[:, 40:]).max() <= 1
    other = _write_tif(tmp_path / "other.tif", img[:, :, :40])
    with pytest.raises(ConfigError, match=r"1x50x40 .* made from 1 band\(s\) of \[50, 60\].*--input"):
        write_comparison_png(out, other, str(tmp_path / "x.png"))
    with pytest.raises(ConfigError, match="crop must be an integer >= 1, got 0"):
        write_comparison_png(out, src, str(tmp_path / "x.png"), crop=0)
    with pytest.raises(OutputExistsError):
        write_comparison_png(out, src, str(tmp_path / "c.png"))
    assert not (tmp_path / "x.png").exists()
