"""Georeferencing attributes of the Zarr output (GeoZarr-style), from the output grid's CRS,
affine transform and shape. One function, used for the output array (and its group)."""

from __future__ import annotations

from typing import Any

__all__ = ["geo_attrs"]


def geo_attrs(crs: str | None, transform: list[float] | None,
              shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """Attributes describing the georeference of an ``(H, W)`` grid: ``proj:wkt2`` (the CRS)
    and ``spatial:transform`` (6 affine coefficients, rasterio order). Empty without either."""
    out: dict[str, Any] = {}
    if transform is not None:
        out["spatial:transform"] = list(transform)
    if crs is not None:
        out["proj:wkt2"] = crs
    return out
