"""Storage: location identity and safety (:mod:`~pipeline.io.locations`), atomic writes, the
output lease, input sources and readers, the Zarr output and its manifest, exports, pixel values.

The names below load on first use (:mod:`pipeline._lazy`): ``pipeline.io.locations`` does not
import Zarr or rasterio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

_EXPORTS = {
    "Location": "pipeline.io.locations", "check_disjoint": "pipeline.io.locations",
    "check_paths": "pipeline.io.locations", "resolve": "pipeline.io.locations",
    "write_bytes": "pipeline.io.atomic",
    "OutputLease": "pipeline.io.lease",
    "TileManifest": "pipeline.io.manifest",
    "Source": "pipeline.io.sources", "SourceInfo": "pipeline.io.sources",
    "SourceSpec": "pipeline.io.sources", "open_source": "pipeline.io.sources",
    "probe_source": "pipeline.io.sources",
    "OutputSpec": "pipeline.io.zarr_output", "ZarrOutput": "pipeline.io.zarr_output",
    "create_zarr_output": "pipeline.io.zarr_create",
    "export_geotiff": "pipeline.io.exports", "write_png": "pipeline.io.previews",
    "write_preview_png": "pipeline.io.previews", "write_comparison_png": "pipeline.io.previews",
    "codec_options": "pipeline.io.exports", "COMPRESSIONS": "pipeline.io.exports",
    "CODECS": "pipeline.io.codecs", "compressors": "pipeline.io.codecs",
    "geo_group_attrs": "pipeline.io.geozarr",
    "json_line": "pipeline.io.jsontext", "json_safe": "pipeline.io.jsontext",
}

__all__ = ["CODECS", "COMPRESSIONS", "Location", "OutputLease", "OutputSpec", "Source",
           "SourceInfo", "SourceSpec",
           "TileManifest", "ZarrOutput", "check_disjoint", "check_paths", "codec_options",
           "compressors", "create_zarr_output", "export_geotiff", "geo_group_attrs",
           "json_line", "json_safe", "open_source", "probe_source", "resolve", "write_bytes",
           "write_comparison_png", "write_png", "write_preview_png"]

if TYPE_CHECKING:
    from pipeline.io.atomic import write_bytes
    from pipeline.io.codecs import CODECS, compressors
    from pipeline.io.exports import COMPRESSIONS, codec_options, export_geotiff
    from pipeline.io.geozarr import geo_group_attrs
    from pipeline.io.jsontext import json_line, json_safe
    from pipeline.io.lease import OutputLease
    from pipeline.io.locations import Location, check_disjoint, check_paths, resolve
    from pipeline.io.manifest import TileManifest
    from pipeline.io.previews import write_comparison_png, write_png, write_preview_png
    from pipeline.io.sources import Source, SourceInfo, SourceSpec, open_source, probe_source
    from pipeline.io.zarr_create import create_zarr_output
    from pipeline.io.zarr_output import OutputSpec, ZarrOutput

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
