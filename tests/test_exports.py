"""Per-band colour interpretation and description of the sources (``Source.band_info``), which the
jobs store in the output's ``bands`` attribute for the exports."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import zarr
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import ColorInterp

from pipeline.io.sources import SourceSpec, open_source
from pipeline.io.zarr_output import OutputSpec, ZarrOutput, create_zarr_output

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

WKT = CRS.from_epsg(32633).to_wkt()
TRANSFORM = (2.5, 0.0, 500_000.0, 0.0, -2.5, 4_000_000.0)


def _attrs(**extra) -> dict:
    attrs = {
        "scale": [2.0, 2.0], "out_shape": [37, 53], "in_shape": [19, 27],
        "model": {"name": "liif", "args": {}, "weights_sha256": "ab" * 32},
        "source_uri": "in.tif", "crs": WKT, "transform": TRANSFORM, "value_range": [0, 65535],
        "nodata": 0, "job": {"model": "edsr-baseline-liif", "scale": 2.0},
    }
    attrs.update(extra)
    return attrs


def _create(uri: str, shape=(3, 37, 53), dtype="uint16", chunks=(8, 16), **kw) -> ZarrOutput:
    kw.setdefault("attrs", _attrs())
    kw.setdefault("fill_value", 0)
    return create_zarr_output(OutputSpec(uri), shape=shape, dtype=dtype, chunks=chunks, **kw)


def _tiles(h: int, w: int, th: int, tw: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    return [((r, min(r + th, h)), (c, min(c + tw, w)))
            for r in range(0, h, th) for c in range(0, w, tw)]


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
