"""Georeferencing attributes of the Zarr output, from the output grid's CRS, affine transform and
shape: the GeoZarr conventions for Zarr v3, and what GDAL's Zarr driver reads from Zarr v2.

**Zarr v3** (:func:`geo_attrs` on the array, :func:`geo_group_attrs` on the group). GeoZarr is,
since its December 2025 reset, a suite of Zarr conventions (https://github.com/zarr-developers/
geozarr-spec, README at commit 5cb8c0d, 2026-03-12). We follow, each declared by its UUID in the
node's ``zarr_conventions`` list as the Zarr Conventions Specification v1 requires
(https://github.com/zarr-conventions/zarr-conventions-spec, tag v1):

- ``proj`` v0.1 (https://github.com/zarr-conventions/proj/blob/v0.1/README.md, UUID
  ``f17cb550-5864-4468-aeb7-f3180cfb622f``): ``proj:wkt2`` (WKT2:2019, which writers SHOULD always
  include) and ``proj:code`` (``"EPSG:32618"``) only when the CRS is identified by an authority
  code exactly; both then describe the same CRS. On the group as well as on the array: the
  convention recommends the group (its direct child arrays inherit it), and readers of a single
  array (rioxarray, on a ``DataArray``) see only the array's attributes.
- ``spatial`` v0.1 (https://github.com/zarr-conventions/spatial/blob/v0.1/README.md, UUID
  ``689b58e2-cf7b-45e0-9fff-9cfc0883d6b4``): ``spatial:dimensions`` ``["y", "x"]`` (names from the
  array's ``dimension_names`` ``("band", "y", "x")``), ``spatial:transform`` (rasterio/affine
  order ``[a, b, c, d, e, f]``, origin at the top-left *corner* of the top-left pixel),
  ``spatial:shape`` ``[H, W]``, ``spatial:bbox`` ``[xmin, ymin, xmax, ymax]`` (the four corners, so
  a rotated grid gives its enclosing box) and ``spatial:registration`` ``"pixel"`` (GDAL/rasterio
  transforms are corner-based, GeoTIFF's PixelIsArea).

The draft needs no coordinate arrays for an affine grid (``spatial:transform`` gives implicit
coordinates). Outputs with overview levels declare them on the group with the ``multiscales``
convention v0.1 (https://github.com/zarr-conventions/multiscales, UUID
``d35379db-88df-4056-af3a-620245f8e347``; :func:`multiscales_attrs`): a layout entry per level
(``image``, ``overviews/1``, ...), each derived from the full level by ``average`` resampling
with scale ``2^l`` and translation ``(2^l - 1) / 2`` on the y/x axes, plus the level's absolute
``spatial:transform`` and ``spatial:shape``.

**Zarr v2 for GDAL 3.10** (:func:`gdal_v2_attrs`, :func:`write_coordinates`). GDAL 3.10's Zarr
driver (rasterio 1.4.4's) reads no v3 codec zarr-python 3 writes, and reads neither ``proj:`` nor
``spatial:``. It opens a v2 array with its CRS from the ``_CRS`` attribute (``wkt``, ``projjson``
or ``url``), its dimensions from ``_ARRAY_DIMENSIONS``, its nodata from the array's
``fill_value``, and its geotransform from 1-D *indexing* coordinate arrays (``x``, ``y``, holding
pixel-centre coordinates) beside it in the group: without them it reports no geotransform, and it
does not read a CF ``GeoTransform``. A rotated transform therefore cannot reach GDAL through v2.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.errors import ConfigError
from pipeline.geometry.affine import Transform, as_transform, bounds

__all__ = [
    "MULTISCALES_CONVENTION",
    "PROJ_CONVENTION",
    "SPATIAL_CONVENTION",
    "SPATIAL_DIMENSIONS",
    "V2_DIMENSIONS",
    "crs_encodings",
    "gdal_v2_attrs",
    "geo_attrs",
    "geo_group_attrs",
    "level_transform",
    "multiscales_attrs",
    "pixel_centres",
    "write_coordinates",
]

#: Convention metadata object of the ``proj`` convention v0.1 (the constants of its schema).
PROJ_CONVENTION: dict[str, str] = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/proj/refs/tags/v0.1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/proj/blob/v0.1/README.md",
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "name": "proj",
    "description": "Coordinate reference system information for geospatial data",
}

#: Convention metadata object of the ``spatial`` convention v0.1 (the constants of its schema).
SPATIAL_CONVENTION: dict[str, str] = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v0.1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v0.1/README.md",
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "name": "spatial",
    "description": "Spatial coordinate information",
}

#: The (Y, X) dimension names of the output array ``image`` (band, y, x).
SPATIAL_DIMENSIONS: tuple[str, str] = ("y", "x")
#: ``_ARRAY_DIMENSIONS`` of a (C, H, W) Zarr v2 output array.
V2_DIMENSIONS: tuple[str, str, str] = ("band", "y", "x")

#: Convention metadata object of the ``multiscales`` convention v0.1.
MULTISCALES_CONVENTION: dict[str, str] = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v0.1/"
                  "schema.json",
    "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v0.1/README.md",
    "uuid": "d35379db-88df-4056-af3a-620245f8e347",
    "name": "multiscales",
    "description": "Multiscale layout of zarr datasets",
}

_EPSG_URL = "http://www.opengis.net/def/crs/EPSG/0/"


def crs_encodings(crs: str) -> tuple[str | None, str]:
    """``(code, wkt2)`` of a CRS given as WKT (1 or 2), ``"EPSG:n"``, PROJ string or PROJJSON.

    ``wkt2`` is WKT2:2019 (ISO 19162:2019). ``code`` is ``"AUTHORITY:CODE"`` when PROJ identifies
    the CRS with an authority entry at 100 % confidence (e.g. WKT carrying its EPSG identifier),
    else ``None``: a code is never written for a CRS that only resembles one.

    Raises:
        ConfigError: ``crs`` is not a non-empty string or does not parse as a CRS.
    """
    from rasterio.crs import CRS
    from rasterio.enums import WktVersion
    from rasterio.errors import CRSError

    if not isinstance(crs, str) or not crs.strip():
        raise ConfigError(f"crs must be a non-empty string (WKT or 'EPSG:n'), got {crs!r}")
    try:
        parsed = CRS.from_user_input(crs)
        wkt2 = parsed.to_wkt(version=WktVersion.WKT2_2019)
        found = parsed.to_authority(confidence_threshold=100)
    except CRSError as exc:
        shown = crs if len(crs) <= 80 else crs[:77] + "..."
        raise ConfigError(f"crs {shown!r} is not a CRS PROJ can read: {exc}") from exc
    code = f"{found[0]}:{found[1]}" if found else None
    return code, wkt2


def _checked_shape(shape: Any) -> tuple[int, int]:
    try:
        items = tuple(shape)
    except TypeError:
        items = ()
    ok = len(items) == 2 and all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0 for v in items)
    if not ok:
        raise ConfigError(f"shape must be two positive integers (H, W), got {shape!r}")
    return int(items[0]), int(items[1])


def _checked_transform(transform: Any) -> Transform:
    try:
        return as_transform(transform)
    except ValueError as exc:
        raise ConfigError(f"transform: {exc}") from exc


def _proj_attrs(crs: str) -> dict[str, Any]:
    code, wkt2 = crs_encodings(crs)
    out: dict[str, Any] = {"proj:wkt2": wkt2}
    if code is not None:
        out["proj:code"] = code
    return out


def geo_attrs(crs: str | None, transform: list[float] | None,
              shape: tuple[int, int] | None = None, *,
              dimensions: tuple[str, str] = SPATIAL_DIMENSIONS) -> dict[str, Any]:
    """GeoZarr attributes of a Zarr v3 array whose spatial dimensions are ``dimensions`` (Y, X).

    ``crs``: WKT or ``"EPSG:n"`` (or None); ``transform``: 6 affine coefficients (rasterio order)
    of the ``shape`` ``(H, W)`` grid (or None). Gives the ``zarr_conventions`` declaration of the
    conventions used, the ``proj:`` keys when there is a CRS, and the ``spatial:`` keys when there
    is a transform (``spatial:shape``, ``spatial:bbox`` need ``shape``). Empty without a CRS and a
    transform. The module docstring names the conventions and their versions.

    Raises:
        ConfigError: an unreadable CRS, a malformed transform or shape.
    """
    out: dict[str, Any] = {}
    conventions: list[dict[str, str]] = []
    if crs is not None:
        out.update(_proj_attrs(crs))
        conventions.append(dict(PROJ_CONVENTION))
    if transform is not None:
        t = _checked_transform(transform)
        out["spatial:dimensions"] = list(dimensions)
        out["spatial:transform"] = list(t)
        if shape is not None:
            h, w = _checked_shape(shape)
            out["spatial:shape"] = [h, w]
            out["spatial:bbox"] = list(bounds(t, (h, w)))
        out["spatial:registration"] = "pixel"
        conventions.append(dict(SPATIAL_CONVENTION))
    if conventions:
        out["zarr_conventions"] = conventions
    return out


def geo_group_attrs(crs: str | None) -> dict[str, Any]:
    """Attributes for the output *group*: the ``proj`` convention (its recommended place; the
    group's direct child arrays inherit it). Empty without a CRS.

    Raises:
        ConfigError: an unreadable CRS.
    """
    if crs is None:
        return {}
    return {"zarr_conventions": [dict(PROJ_CONVENTION)], **_proj_attrs(crs)}


def level_transform(transform: list[float], level: int) -> list[float]:
    """The affine transform of overview ``level`` (pixels ``2^level`` times larger, same
    top-left corner)."""
    a, b, c, d, e, f = _checked_transform(transform)
    k = float(1 << level)
    return [a * k, b * k, c, d * k, e * k, f]


def multiscales_attrs(paths: list[str], shapes: list[tuple[int, int]],
                      transform: list[float] | None) -> dict[str, Any]:
    """The ``multiscales`` group attributes for levels ``paths[l]`` (level 0 first) of shapes
    ``shapes[l]`` ``(H_l, W_l)``, block means of the full level (scale ``2^l`` per y/x axis)."""
    layout: list[dict[str, Any]] = []
    for lv, (path, shape) in enumerate(zip(paths, shapes, strict=True)):
        k = float(1 << lv)
        entry: dict[str, Any] = {"asset": path, "transform": {"scale": [1.0, k, k]}}
        if lv:
            entry.update(derived_from=paths[0], resampling_method="average")
            entry["transform"]["translation"] = [0.0, (k - 1) / 2, (k - 1) / 2]
        if transform is not None:
            entry["spatial:transform"] = level_transform(transform, lv)
            entry["spatial:shape"] = [int(shape[0]), int(shape[1])]
        layout.append(entry)
    return {"zarr_conventions": [dict(MULTISCALES_CONVENTION)],
            "multiscales": {"layout": layout, "resampling_method": "average"}}


def _check_rectilinear(t: Transform) -> None:
    if t[1] != 0.0 or t[3] != 0.0:
        raise ConfigError(
            f"transform {list(t)} is rotated or sheared: 1-D x/y coordinate arrays (the only "
            "geotransform GDAL 3.10's Zarr driver reads) cannot describe it; write Zarr v3 "
            "(spatial:transform) or a COG instead")
    if t[0] == 0.0 or t[4] == 0.0:
        raise ConfigError(f"transform {list(t)} has a zero pixel size")


def gdal_v2_attrs(crs_wkt: str | None, transform: list[float] | None,
                  shape: tuple[int, int] | None, nodata: float | None) -> dict[str, Any]:
    """Attributes of a (C, H, W) Zarr v2 output array that GDAL 3.10 opens georeferenced.

    Gives ``_ARRAY_DIMENSIONS`` (``band, y, x``), ``_CRS`` (``wkt``: WKT2:2019, plus ``url`` for
    an EPSG CRS, as GDAL itself writes it), the ``proj`` convention keys and their
    ``zarr_conventions`` declaration (``spatial`` is left out: it requires Zarr v3
    ``dimension_names``), and ``nodata``. Use it in place of :func:`geo_attrs` for v2. GDAL takes
    the rest from elsewhere, so the caller must also:

    - create the array with ``fill_value=nodata`` (``None`` when there is no nodata: GDAL reports
      the fill value as the nodata value, so a fill of 0 would turn valid zeros into nodata);
    - call :func:`write_coordinates` on the group (the geotransform).

    ``transform`` and ``shape`` are checked here (a rotated transform is refused) so that a v2
    output is refused before any work rather than written without its geotransform.

    Raises:
        ConfigError: an unreadable CRS, a malformed, rotated or degenerate transform, a malformed
            shape, or a nodata value that is not a number.
    """
    if transform is not None:
        _check_rectilinear(_checked_transform(transform))
    if shape is not None:
        _checked_shape(shape)
    if nodata is not None and (isinstance(nodata, bool) or not isinstance(
            nodata, int | float | np.integer | np.floating) or math.isinf(nodata)):
        raise ConfigError(f"nodata must be a finite number, NaN or None, got {nodata!r}")
    out: dict[str, Any] = {"_ARRAY_DIMENSIONS": list(V2_DIMENSIONS)}
    if crs_wkt is not None:
        proj = _proj_attrs(crs_wkt)
        gdal_crs: dict[str, str] = {"wkt": proj["proj:wkt2"]}
        code = proj.get("proj:code")
        if code is not None and code.startswith("EPSG:"):
            gdal_crs["url"] = _EPSG_URL + code.split(":", 1)[1]
        out["_CRS"] = gdal_crs
        out.update(proj)
        out["zarr_conventions"] = [dict(PROJ_CONVENTION)]
    out["nodata"] = None if nodata is None else (
        float(nodata) if isinstance(nodata, float | np.floating) else int(nodata))
    return out


def pixel_centres(transform: list[float], shape: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(y, x)`` float64 coordinates of the pixel centres of a north-up (rectilinear) grid:
    ``x[j] = c + a * (j + 0.5)``, ``y[i] = f + e * (i + 0.5)``.

    Raises:
        ConfigError: a malformed, rotated or degenerate transform, or a malformed shape.
    """
    t = _checked_transform(transform)
    _check_rectilinear(t)
    h, w = _checked_shape(shape)
    x = t[2] + t[0] * (np.arange(w, dtype=np.float64) + 0.5)
    y = t[5] + t[4] * (np.arange(h, dtype=np.float64) + 0.5)
    return y, x


def write_coordinates(group: Any, transform: list[float], shape: tuple[int, int]) -> None:
    """Write the 1-D pixel-centre coordinate arrays ``y`` (H,) and ``x`` (W,) into ``group``
    (a writable ``zarr.Group``, v2 or v3), as xarray and GDAL expect indexing coordinates:
    v2 with ``_ARRAY_DIMENSIONS``, v3 with ``dimension_names``; float64, zstd with a checksum
    (v2: zstd's own frame checksum, which GDAL 3.10 verifies; v3: zstd + crc32c, as the image).

    Zarr v2 needs them for GDAL's geotransform; the GeoZarr draft does not need them in v3.

    Raises:
        ConfigError: a malformed, rotated or degenerate transform, or a malformed shape.
        zarr.errors.ContainsArrayError: ``x`` or ``y`` already exists in the group.
    """
    y, x = pixel_centres(transform, shape)
    v2 = group.metadata.zarr_format == 2
    for name, axis, values in (("y", "Y", y), ("x", "X", x)):
        chunk = (min(values.size, 1 << 20),)
        if v2:
            import numcodecs

            arr = group.create_array(
                name, shape=values.shape, dtype="float64", chunks=chunk, fill_value=float("nan"),
                compressors=numcodecs.Zstd(level=0, checksum=True),
                attributes={"_ARRAY_DIMENSIONS": [name], "axis": axis})
        else:
            from zarr.codecs import Crc32cCodec, ZstdCodec

            arr = group.create_array(
                name, shape=values.shape, dtype="float64", chunks=chunk, fill_value=float("nan"),
                compressors=(ZstdCodec(level=0), Crc32cCodec()), dimension_names=(name,),
                attributes={"axis": axis})
        arr[:] = values
