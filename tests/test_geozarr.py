"""pipeline.io.geozarr: GeoZarr (proj v0.1, spatial v0.1) attributes of the Zarr v3 output, and a
Zarr v2 layout that GDAL 3.10 (rasterio's) opens with its CRS, transform, bands, dtype and nodata."""

from __future__ import annotations

import math

import numcodecs
import numpy as np
import pytest
import rasterio
import zarr
from rasterio.crs import CRS
from rasterio.transform import Affine, array_bounds

from pipeline.errors import ConfigError
from pipeline.io.geozarr import (
    PROJ_CONVENTION,
    SPATIAL_CONVENTION,
    crs_encodings,
    gdal_v2_attrs,
    geo_attrs,
    geo_group_attrs,
    pixel_centres,
    write_coordinates,
)
from pipeline.io.zarr_create import create_zarr_output
from pipeline.io.zarr_output import OutputSpec

WKT1 = CRS.from_epsg(32633).to_wkt()           # what rasterio's CRS.to_wkt() gives: WKT1
TRANSFORM = [2.5, 0.0, 500_000.0, 0.0, -2.5, 4_000_000.0]
# a transverse Mercator no authority defines
CUSTOM = "+proj=tmerc +lat_0=0 +lon_0=-75.1 +k=0.9996 +x_0=500000 +y_0=0 +datum=WGS84 +units=m"


def _uuids(attrs: dict) -> list[str]:
    return [c["uuid"] for c in attrs["zarr_conventions"]]


# ---------------------------------------------------------------------------------------------
# Zarr v3: GeoZarr conventions


def test_convention_objects_are_the_v0_1_registrations():
    assert PROJ_CONVENTION["uuid"] == "f17cb550-5864-4468-aeb7-f3180cfb622f"
    assert SPATIAL_CONVENTION["uuid"] == "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4"
    for cmo, name in ((PROJ_CONVENTION, "proj"), (SPATIAL_CONVENTION, "spatial")):
        assert cmo["name"] == name
        assert cmo["schema_url"].endswith(f"/zarr-conventions/{name}/refs/tags/v0.1/schema.json")
        assert cmo["spec_url"] == f"https://github.com/zarr-conventions/{name}/blob/v0.1/README.md"
        # the conventions spec allows exactly these fields in a convention metadata object
        assert set(cmo) <= {"uuid", "schema_url", "spec_url", "name", "description"}


def test_geo_attrs_of_a_utm_grid():
    attrs = geo_attrs(WKT1, TRANSFORM, (37, 53))
    assert _uuids(attrs) == [PROJ_CONVENTION["uuid"], SPATIAL_CONVENTION["uuid"]]
    assert attrs["proj:code"] == "EPSG:32633"
    wkt2 = attrs["proj:wkt2"]
    assert wkt2.startswith("PROJCRS[") and 'ID["EPSG",32633]' in wkt2  # WKT2, not PROJCS[ (WKT1)
    assert CRS.from_wkt(wkt2) == CRS.from_wkt(WKT1)
    assert attrs["spatial:dimensions"] == ["y", "x"]
    assert attrs["spatial:transform"] == TRANSFORM
    assert attrs["spatial:shape"] == [37, 53]
    assert attrs["spatial:bbox"] == list(array_bounds(37, 53, Affine(*TRANSFORM)))
    assert attrs["spatial:bbox"] == [500_000.0, 4_000_000.0 - 37 * 2.5, 500_000.0 + 53 * 2.5,
                                     4_000_000.0]
    assert attrs["spatial:registration"] == "pixel"
    # the declarations are copies: changing them leaves the module's constants alone
    attrs["zarr_conventions"][0]["name"] = "changed"
    assert PROJ_CONVENTION["name"] == "proj"


def test_geo_attrs_declare_only_the_conventions_present():
    assert geo_attrs(None, None) == {}
    crs_only = geo_attrs("EPSG:4326", None)
    assert _uuids(crs_only) == [PROJ_CONVENTION["uuid"]]
    assert not any(k.startswith("spatial:") for k in crs_only)
    assert crs_only["proj:code"] == "EPSG:4326" and crs_only["proj:wkt2"].startswith("GEOGCRS[")
    grid_only = geo_attrs(None, TRANSFORM)  # no shape: no spatial:shape / spatial:bbox
    assert _uuids(grid_only) == [SPATIAL_CONVENTION["uuid"]]
    assert set(grid_only) == {"zarr_conventions", "spatial:dimensions", "spatial:transform",
                              "spatial:registration"}


def test_no_proj_code_without_an_exact_authority_match():
    code, wkt2 = crs_encodings(CUSTOM)
    assert code is None and wkt2.startswith("PROJCRS[")
    assert "proj:code" not in geo_attrs(CUSTOM, None)
    # a PROJ string that only resembles EPSG:32618 (no identifier) gets no code either
    assert crs_encodings("+proj=utm +zone=18 +datum=WGS84 +units=m +no_defs")[0] is None
    assert crs_encodings("EPSG:32618")[0] == "EPSG:32618"


def test_bbox_of_a_rotated_grid_encloses_its_four_corners():
    t = Affine.translation(1000.0, 2000.0) @ Affine.rotation(30.0) @ Affine.scale(2.0, -2.0)
    attrs = geo_attrs(None, list(t)[:6], (10, 20))
    corners = [t @ (c, r) for c, r in ((0, 0), (20, 0), (0, 10), (20, 10))]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    assert attrs["spatial:bbox"] == pytest.approx([min(xs), min(ys), max(xs), max(ys)], abs=1e-9)


def test_geo_group_attrs_carry_the_crs_only():
    group = geo_group_attrs(WKT1)
    assert _uuids(group) == [PROJ_CONVENTION["uuid"]]
    assert group["proj:code"] == "EPSG:32633"
    assert group["proj:wkt2"] == geo_attrs(WKT1, None)["proj:wkt2"]
    assert geo_group_attrs(None) == {}


@pytest.mark.parametrize("bad", ["nonsense", "", 32633])
def test_unreadable_crs_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="crs"):
        geo_attrs(bad, None)


def test_malformed_transform_and_shape_are_config_errors():
    with pytest.raises(ConfigError, match="transform"):
        geo_attrs(None, [1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match="shape"):
        geo_attrs(None, TRANSFORM, (0, 5))


def test_rioxarray_reads_the_zarr_v3_output(tmp_path):
    """The output as the job writes it (create_zarr_output -> _prepare_attrs -> geo_attrs)."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    uri = str(tmp_path / "out.zarr")
    attrs = {"crs": WKT1, "transform": TRANSFORM, "nodata": 0, "job": {"k": 1}}
    out = create_zarr_output(OutputSpec(uri), shape=(3, 37, 53), dtype="uint16", chunks=(16, 16),
                             fill_value=0, attrs=attrs)
    out.write((0, 37), (0, 53), np.full((3, 37, 53), 7, np.uint16))
    stored = zarr.open_array(uri, path="image", mode="r").attrs
    assert stored["proj:code"] == "EPSG:32633" and stored["spatial:shape"] == [37, 53]
    da = xr.open_zarr(uri, consolidated=False)["image"]
    assert da.rio.crs == CRS.from_epsg(32633)
    assert tuple(da.rio.transform())[:6] == tuple(TRANSFORM)
    assert da.rio.bounds() == pytest.approx(stored["spatial:bbox"], rel=1e-15)
    assert da.rio.nodata == 0
    assert (da.rio.y_dim, da.rio.x_dim) == ("y", "x")


# ---------------------------------------------------------------------------------------------
# Zarr v2 for GDAL


def _v2_output(path, data: np.ndarray, crs: str | None, transform, nodata):
    """A Zarr v2 group like the job's: array 'image' (C, H, W) + x/y coordinates."""
    c, h, w = data.shape
    group = zarr.create_group(str(path), zarr_format=2, attributes={"created_by": "test"})
    arr = group.create_array(
        "image", shape=data.shape, dtype=data.dtype, chunks=(c, 16, 16), fill_value=nodata,
        compressors=numcodecs.Zstd(level=0, checksum=True),
        attributes=gdal_v2_attrs(crs, transform, (h, w), nodata))
    arr[:] = data
    write_coordinates(group, transform, (h, w))
    return group


CASES = [  # dtype, bands, nodata, crs
    ("uint8", 3, 0, WKT1),
    ("uint16", 1, None, "EPSG:26914"),
    ("int16", 4, -9999, CUSTOM),
    ("float32", 2, float("nan"), "EPSG:4326"),
]


@pytest.mark.parametrize(("dtype", "bands", "nodata", "crs"), CASES)
def test_gdal_opens_the_v2_layout(tmp_path, dtype, bands, nodata, crs):
    h, w = 37, 53
    transform = [0.01, 0.0, -75.3, 0.0, -0.01, 10.2] if crs == "EPSG:4326" else [
        150.0189633375474, 0.0, 101985.0, 0.0, -150.0208913649025, 2736902.4651810583]
    rng = np.random.default_rng(3)
    data = (rng.random((bands, h, w)) * 200 + 1).astype(dtype)
    data[:, :3, :3] = 0 if nodata is None else nodata
    path = tmp_path / "out.zarr"
    _v2_output(path, data, crs, transform, nodata)
    for spec in (f'ZARR:"{path}":/image', str(path)):  # the array, or the group itself
        with rasterio.open(spec) as src:
            assert src.driver == "Zarr"
            assert src.count == bands and src.shape == (h, w)
            assert set(src.dtypes) == {dtype}
            assert src.crs == CRS.from_user_input(crs)
            # GDAL rebuilds the geotransform from the pixel-centre coordinates: float rounding
            assert np.allclose(tuple(src.transform)[:6], transform, rtol=1e-12, atol=1e-9)
            if nodata is None:
                assert src.nodata is None
            elif math.isnan(nodata):
                assert math.isnan(src.nodata)
            else:
                assert src.nodata == nodata
            np.testing.assert_array_equal(src.read(), data)


def test_v2_attrs_and_coordinates(tmp_path):
    attrs = gdal_v2_attrs(WKT1, TRANSFORM, (37, 53), 0)
    assert attrs["_ARRAY_DIMENSIONS"] == ["band", "y", "x"]
    assert attrs["_CRS"] == {"wkt": attrs["proj:wkt2"],
                             "url": "http://www.opengis.net/def/crs/EPSG/0/32633"}
    assert _uuids(attrs) == [PROJ_CONVENTION["uuid"]]  # spatial needs v3 dimension_names
    assert not any(k.startswith("spatial:") for k in attrs)
    assert attrs["nodata"] == 0
    assert "url" not in gdal_v2_attrs(CUSTOM, None, None, None)["_CRS"]
    assert gdal_v2_attrs(None, None, None, None) == {"_ARRAY_DIMENSIONS": ["band", "y", "x"],
                                                     "nodata": None}
    y, x = pixel_centres(TRANSFORM, (37, 53))
    assert x[0] == 500_001.25 and x[-1] == 500_000.0 + 52.5 * 2.5
    assert y[0] == 3_999_998.75 and y.shape == (37,) and x.shape == (53,)
    group = zarr.create_group(str(tmp_path / "v3.zarr"))  # v3 works too (dimension_names)
    write_coordinates(group, TRANSFORM, (37, 53))
    assert group["x"].metadata.dimension_names == ("x",)
    np.testing.assert_array_equal(group["y"][:], y)


def test_v2_refuses_what_gdal_cannot_be_told(tmp_path):
    rotated = list(Affine.rotation(10.0) @ Affine.scale(2.0, -2.0))[:6]
    with pytest.raises(ConfigError, match="rotated"):
        gdal_v2_attrs(None, rotated, (4, 4), 0)
    with pytest.raises(ConfigError, match="rotated"):
        write_coordinates(zarr.create_group(str(tmp_path / "g.zarr"), zarr_format=2),
                          rotated, (4, 4))
    with pytest.raises(ConfigError, match="nodata"):
        gdal_v2_attrs(None, None, None, "0")
    with pytest.raises(ConfigError, match="nodata"):
        gdal_v2_attrs(None, None, None, float("inf"))


def test_gdal_detects_a_corrupt_v2_chunk(tmp_path):
    """zstd's frame checksum: GDAL 3.10 and zarr-python both refuse a flipped bit."""
    path = tmp_path / "out.zarr"
    rng = np.random.default_rng(5)
    data = rng.integers(1, 60000, (2, 16, 16), dtype=np.uint16)
    _v2_output(path, data, "EPSG:32633", TRANSFORM, 0)
    chunk = path / "image" / "0.0.0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    chunk.write_bytes(bytes(raw))
    with rasterio.open(str(path)) as src, pytest.raises(rasterio.errors.RasterioIOError):
        src.read()
    with pytest.raises(RuntimeError, match="Zstd decompression error"):
        zarr.open_array(str(path), path="image", mode="r")[:]


def test_rioxarray_reads_the_v2_layout(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    path = tmp_path / "out.zarr"
    data = np.ones((3, 37, 53), np.uint8)
    group = _v2_output(path, data, WKT1, TRANSFORM, 0)
    group["image"].attrs.update({"crs": WKT1})  # the job's own attribute, which rioxarray reads
    da = xr.open_zarr(str(path), consolidated=False, mask_and_scale=False)["image"]
    assert da.rio.crs == CRS.from_epsg(32633)
    assert np.allclose(tuple(da.rio.transform())[:6], TRANSFORM, rtol=1e-12)
    assert da.rio.nodata == 0
