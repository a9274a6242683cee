"""What identifies an input's content: storage metadata and sampled pixel digests, so a resume
refuses an input that changed in place (:func:`content_identity`)."""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.io.locations import read_extent, resolve

if TYPE_CHECKING:
    from pipeline.io.sources import Source

__all__ = ["ZARR_METADATA", "content_identity"]

ZARR_METADATA = ("zarr.json", ".zarray", ".zgroup")
"""The metadata file names of a Zarr v3 / v2 node."""
_STAT_KEYS = ("size", "ETag", "etag", "VersionId", "version_id", "LastModified", "mtime",
              "generation", "md5Hash", "crc32c")


def _stat(fs: Any | None, path: str) -> dict[str, Any] | None:
    try:
        if fs is None:
            st = os.stat(path)
            return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        info = fs.info(path)
    except (OSError, ValueError):
        return None
    return {k: str(info[k]) if not isinstance(info[k], int | float) else info[k]
            for k in _STAT_KEYS if info.get(k) is not None}


def _tree_stat(path: str) -> dict[str, int]:
    """Files, total bytes and latest modification time under a local folder (a Zarr store):
    rewriting any chunk in place changes at least the time."""
    files = size = latest = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue
            files, size, latest = files + 1, size + st.st_size, max(latest, st.st_mtime_ns)
    return {"files": files, "size": size, "mtime_ns": latest}


def content_identity(source: Source, *, windows: int = 3, side: int = 32) -> dict[str, Any]:
    """What identifies an open input's content, to refuse resuming after it changed in place.

    ``storage``: size and modification time of the file (local), or its size, ETag, version
    and modification time (object stores); for a local Zarr folder, the file count, total size
    and latest modification time of everything in it; for a remote Zarr prefix, those of its
    metadata files only (listing millions of chunks would cost more than the job's reads).
    For a file, also the size and time of each GDAL sidecar beside it that exists (``sidecars``).
    ``samples``: blake2b digest of ``windows x windows`` windows of ``side`` pixels spread over
    the image (a rewrite of the pixels there is caught even when the metadata is untouched).
    ``reading``: how the input reads (dtype, nodata, CRS, transform, band interpretation).
    """
    spec = source.spec
    storage: dict[str, Any] = {}
    if not spec.uri.startswith("/vsi"):
        loc = resolve(spec.uri, spec.storage_options)
        fs, path = (None, loc.path) if loc.is_local else loc.fs()
        isdir = os.path.isdir(path) if fs is None else fs.isdir(path)
        if isdir and fs is None:
            storage["tree"] = _tree_stat(path)
        elif isdir:
            roots = [path] + ([f"{path}/{spec.array_path.strip('/')}"] if spec.array_path else [])
            for root in roots:
                for meta in ZARR_METADATA + (".zattrs",):
                    st = _stat(fs, f"{root}/{meta}")
                    if st is not None:
                        storage[f"{root[len(path):] or '.'}/{meta}"] = st
        else:
            storage["file"] = _stat(fs, path)
            sidecars = {part.name: st for part, _ in read_extent(loc)[1:]
                        if (st := _stat(fs, part.path)) is not None}
            if sidecars:  # e.g. an .aux.xml that sets nodata: editing it changes the input
                storage["sidecars"] = sidecars
    _, h, w = source.shape
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{source.shape}|{source.dtype}".encode())
    for i in range(windows):
        for j in range(windows):
            r0 = (h - min(side, h)) * i // max(1, windows - 1)
            c0 = (w - min(side, w)) * j // max(1, windows - 1)
            block = source.read((r0, r0 + min(side, h)), (c0, c0 + min(side, w)))
            digest.update(np.ascontiguousarray(block).tobytes())
    reading = {"dtype": str(source.dtype), "nodata": repr(source.nodata), "crs": source.crs,
               "transform": None if source.transform is None else list(source.transform),
               "bands": [dict(b) for b in source.band_info]}
    return {"storage": storage, "samples": digest.hexdigest(), "reading": reading}
