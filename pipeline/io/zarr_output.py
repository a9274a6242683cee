"""The Zarr output: a Zarr v3 group written concurrently by tiles (exports: :mod:`pipeline.io.exports`).

Output layout (``uri``: a local path or an fsspec URL such as ``file://``, ``memory://``,
``s3://``)::

    <uri>/                    Zarr v3 group (attributes: {"created_by": "liif-pipeline 0.1.0"})
      zarr.json
      image/                  Zarr v3 array, shape (C, H, W), dimension names (band, y, x)
        zarr.json             attributes: see below
        c/<b>/<i>/<j>         chunks (C, ch, cw): every band of a pixel lives in the same chunk;
                              with sharding, shards (C, sh, sw) hold (sh/ch) x (sw/cw) chunks
      _manifest/              empty Zarr subgroup holding one JSON record per finished tile
        zarr.json
        <tile_key>.json       see pipeline.io.manifest

Attributes of ``image`` (given by the caller, JSON): ``scale`` [sy, sx], ``out_shape``,
``in_shape``, ``model`` (spec dict + ``weights_sha256``), ``source_uri``, ``crs`` (WKT or None),
``transform`` (6 numbers of the *output* raster, or None), ``value_range``, ``nodata``, ``job``
(fingerprint of the job settings, compared on resume). The sink adds ``created_by`` and, when
present, GeoZarr-style copies ``proj:wkt2`` (= crs) and ``spatial:transform`` (= transform).

Creating, reopening (resume) and replacing an output: :mod:`pipeline.io.zarr_create`; codecs:
:mod:`pipeline.io.codecs`.

Concurrency rule (zarr-python #3682): writers never share a chunk, or a shard when sharded.
:meth:`ZarrOutput.write` enforces it: a write must start on the write grid (the shard grid when
sharded, else the chunk grid) and end on it or at the array edge. Chunks equal to the fill value
are not stored, so resume uses the tile manifest, never chunk existence.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from pipeline.errors import (
    ConfigError,
    InputNotFoundError,
    OutputCorruptError,
)
from pipeline.geometry.affine import as_transform
from pipeline.io.geozarr import (
    geo_attrs,
)
from pipeline.io.locations import Location, resolve
from pipeline.io.manifest import TileManifest
from pipeline.io.pyramid import block_means

__all__ = [
    "ARRAY_NAME",
    "COMPLETE",
    "CREATED_BY",
    "OVERVIEWS_GROUP",
    "PRODUCTS_GROUP",
    "OutputSpec",
    "ZarrOutput",
    "level_path",
]

ARRAY_NAME = "image"
OVERVIEWS_GROUP = "overviews"
PRODUCTS_GROUP = "scales"  # further products of a job at other sizes: scales/<label>/image
CREATED_BY = "liif-pipeline 0.1.0"
#: attribute of each written array: False while a job writes it, True once every tile is done
COMPLETE = "complete"
_DTYPE_KINDS = "uif"


@dataclass(frozen=True)
class OutputSpec:
    """Where an output lives: a local path or an fsspec URL, plus fsspec storage options."""

    uri: str
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.uri, str) or not self.uri.strip():
            raise ConfigError(f"output uri must be a non-empty string, got {self.uri!r}")
        if self.storage_options is not None and not isinstance(self.storage_options, dict):
            raise ConfigError(
                f"storage_options must be a dict or None, got {type(self.storage_options).__name__}"
            )

    @property
    def location(self) -> Location:
        """The resolved location (see :mod:`pipeline.io.locations`)."""
        return resolve(self.uri, self.storage_options)


# ---------------------------------------------------------------------------------------------
# locations


def level_path(level: int) -> str:
    """The array path of a level inside the output group: ``image``, ``overviews/<level>``."""
    return ARRAY_NAME if level == 0 else f"{OVERVIEWS_GROUP}/{level}"


def _loc(uri: str, storage_options: dict[str, Any] | None = None) -> Location:
    return resolve(uri, storage_options)


def _store(loc: Location, read_only: bool) -> Store:
    if loc.is_local:
        return LocalStore(loc.path, read_only=read_only)
    return FsspecStore.from_url(loc.url, storage_options=loc.storage_options, read_only=read_only)


# ---------------------------------------------------------------------------------------------
# validation


def _jsonable(value: Any, where: str) -> Any:
    """Plain JSON types from numpy scalars/arrays, tuples and nested dicts."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise ConfigError(
        f"attribute {where} = {value!r} ({type(value).__name__}) is not JSON; use numbers, "
        "strings, booleans, None, lists or dicts"
    )


def _prepare_attrs(attrs: dict[str, Any] | None, shape: tuple[int, int] | None = None
                   ) -> dict[str, Any]:
    out = _jsonable(dict(attrs or {}), "attrs")
    out["created_by"] = CREATED_BY
    if out.get("transform") is not None:
        try:
            out["transform"] = list(as_transform(out["transform"]))
        except ValueError as exc:
            raise ConfigError(f"attrs['transform']: {exc}") from exc
    if out.get("crs") is not None and not isinstance(out["crs"], str):
        raise ConfigError(f"attrs['crs'] must be a WKT string or None, got {out['crs']!r}")
    out.update(geo_attrs(out.get("crs"), out.get("transform"), shape))
    return out


# ---------------------------------------------------------------------------------------------
# the Zarr output


class ZarrOutput:
    """Picklable handle on ``<uri>/image``; each process reopens the array on first use.

    ``chunks`` and ``shards`` are the spatial sizes (ch, cw) and (sh, sw) | None; every chunk and
    shard holds all C bands.
    """

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None,
                 array: str = ARRAY_NAME) -> None:
        self.location = _loc(uri, storage_options)
        self.uri = self.location.url
        self.storage_options = dict(storage_options or {})
        self.array = array  # "image", or a further product's "scales/<label>/image"
        self._arrays: dict[tuple[bool, int], zarr.Array] = {}

    def __repr__(self) -> str:
        return f"ZarrOutput({self.uri!r}{'' if self.array == ARRAY_NAME else ', ' + repr(self.array)})"

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "storage_options": self.storage_options, "array": self.array}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"], state["storage_options"],  # type: ignore[misc]
                      state.get("array", ARRAY_NAME))

    def product(self, array: str) -> ZarrOutput:
        """The handle on another array of the same output group (a further product)."""
        return ZarrOutput(self.uri, self.storage_options, array)

    def _path(self, level: int) -> str:
        return self.array if level == 0 else level_path(level)

    def _array(self, writable: bool = False, level: int = 0) -> zarr.Array:
        arr = self._arrays.get((writable, level))
        if arr is None:
            store = _store(self.location, read_only=not writable)
            try:
                arr = zarr.open_array(store, path=self._path(level),
                                      mode="r+" if writable else "r")
            except FileNotFoundError as exc:
                raise InputNotFoundError(
                    f"no Zarr output at {self.uri!r} (expected an array '{self.array}')"
                ) from exc
            except (ValueError, TypeError, KeyError) as exc:
                raise OutputCorruptError(
                    f"the Zarr metadata of {self.uri}/{self.array} cannot be read "
                    f"({type(exc).__name__}: {exc}); pass --overwrite to start over"
                ) from exc
            self._arrays[(writable, level)] = arr
        return arr

    @property
    def levels(self) -> int:
        """Overview levels stored beside the full level (``overviews/1`` ... ``overviews/L``)."""
        return int(self.attrs.get("overviews", 0) or 0)

    def level(self, level: int) -> zarr.Array:
        """The (read-only) array of overview ``level`` (0: the full level, ``image``)."""
        return self._array(level=level)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self._array().shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._array().dtype)

    @property
    def zarr_format(self) -> int:
        """2 or 3."""
        return int(self._array().metadata.zarr_format)

    @property
    def chunks(self) -> tuple[int, int]:
        """Spatial chunk size (ch, cw)."""
        return tuple(self._array().chunks[1:])  # type: ignore[return-value]

    @property
    def shards(self) -> tuple[int, int] | None:
        """Spatial shard size (sh, sw), or None when not sharded."""
        shards = self._array().shards
        return None if shards is None else tuple(shards[1:])  # type: ignore[return-value]

    @property
    def write_grid(self) -> tuple[int, int]:
        """The grid every write must align to: shards when sharded, else chunks."""
        return self.shards or self.chunks

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._array().attrs)

    def update_attrs(self, changes: dict[str, Any]) -> None:
        """Set (or, for None values, remove) attributes of ``image``: the driver only, never
        while workers write (it rewrites the array's metadata)."""
        arr = self._array(writable=True)
        keep = {k: v for k, v in dict(arr.attrs).items() if k not in changes}
        keep.update({k: _jsonable(v, f"attrs.{k}") for k, v in changes.items() if v is not None})
        arr.attrs.put(keep)  # one metadata write: a kill never leaves the attributes half-done
        self._arrays.clear()

    def set_complete(self, complete: bool) -> None:
        """Mark this array and each of its overview levels (attribute ``complete``) as being
        written (False: readers refuse it as an input) or finished (True); the driver only."""
        for level in range(self.levels + 1):
            arr = self._array(writable=True, level=level)
            arr.attrs.put({**dict(arr.attrs), COMPLETE: complete})
        self._arrays.clear()

    @property
    def manifest(self) -> TileManifest:
        """The done-tile record stored in this output's group."""
        return TileManifest(self.uri, self.storage_options)

    def _window(self, rows: Sequence[int], cols: Sequence[int]) -> tuple[int, int, int, int]:
        _, h, w = self.shape
        (r0, r1), (c0, c1) = rows, cols
        for name, lo, hi, size in (("rows", r0, r1, h), ("cols", c0, c1, w)):
            if not (0 <= lo < hi <= size):
                raise ValueError(
                    f"{name} ({lo}, {hi}) out of range: need 0 <= start < end <= {size}"
                )
        return int(r0), int(r1), int(c0), int(c1)

    def write(self, rows: Sequence[int], cols: Sequence[int], data: np.ndarray) -> dict[str, str]:
        """Write ``data`` (C, r1 - r0, c1 - c0) at rows [r0, r1), cols [c0, c1), and its block
        means into every overview level; returns the content digest (blake2b-128 of the stored
        values) of each chunk written, keyed ``"i.j"`` (full level) and ``"l/i.j"`` (level l).

        The window must cover whole chunks (whole shards when sharded), at every level: start
        on the grid and end on it or at the array edge. Float data may be narrowed to a float
        array dtype; any other dtype must cast safely (quantise before writing).
        """
        r0, r1, c0, c1 = self._window(rows, cols)
        c, h, w = self.shape
        gh, gw = self.write_grid
        grid = "shard" if self.shards else "chunk"
        for name, lo, hi, step, size in (("rows", r0, r1, gh, h), ("cols", c0, c1, gw, w)):
            if lo % step or (hi % step and hi != size):
                raise ValueError(
                    f"{name} ({lo}, {hi}) are not aligned to the {grid} grid of {step}: start "
                    f"must be a multiple of {step} and end a multiple of {step} or {size} (the "
                    "array edge), so that no two writers share a " + grid
                )
        data = np.asarray(data)
        if data.shape != (c, r1 - r0, c1 - c0):
            expected = (c, r1 - r0, c1 - c0)
            raise ValueError(f"data shape {data.shape} does not match the window: need {expected}")
        target = self.dtype
        narrowing_float = data.dtype.kind == "f" and target.kind == "f"
        if not (narrowing_float or np.can_cast(data.dtype, target, casting="safe")):
            raise ValueError(
                f"data dtype {data.dtype} cannot be stored safely as {target}; quantise first"
            )
        data = np.ascontiguousarray(data, dtype=target)
        # hashing releases the GIL: digest the chunks while zarr encodes and stores them
        pending = _digest_pool().submit(self._digests, 0, r0, c0, data)
        self._array(writable=True)[:, r0:r1, c0:c1] = data
        digests = pending.result()
        levels = self.levels
        if levels:
            attrs = self.attrs
            vr = attrs.get("value_range")
            for lv, block in enumerate(block_means(data, levels, attrs.get("nodata"),
                                                   tuple(vr) if vr else None), start=1):
                a0, b0 = r0 >> lv, c0 >> lv
                arr = self._array(writable=True, level=lv)
                lh, lw = arr.shape[1:]
                ch = arr.chunks[1:]
                if a0 % ch[0] or b0 % ch[1] or (
                        (a0 + block.shape[1]) % ch[0] and a0 + block.shape[1] != lh) or (
                        (b0 + block.shape[2]) % ch[1] and b0 + block.shape[2] != lw):
                    raise ValueError(f"tile ({r0}, {c0}) is not aligned to overview level {lv}'s "
                                     f"chunks {ch}: tiles must be multiples of the pyramid grid")
                arr[:, a0:a0 + block.shape[1], b0:b0 + block.shape[2]] = block
                digests.update(self._digests(lv, a0, b0, block))
        return digests

    def _chunk_windows(self, level: int, r0: int, r1: int, c0: int, c1: int
                       ) -> list[tuple[str, int, int, int, int]]:
        """``(key, r0, r1, c0, c1)`` of every chunk of the window (chunk-aligned) at ``level``."""
        arr = self._array(level=level)
        ch, cw = arr.chunks[1:]
        h, w = arr.shape[1:]
        prefix = f"{level}/" if level else ""
        return [(f"{prefix}{i // ch}.{j // cw}", i, min(i + ch, h), j, min(j + cw, w))
                for i in range(r0, r1, ch) for j in range(c0, c1, cw)]

    def _digests(self, level: int, r0: int, c0: int, data: np.ndarray) -> dict[str, str]:
        out = {}
        for key, a0, a1, b0, b1 in self._chunk_windows(level, r0, r0 + data.shape[1], c0,
                                                       c0 + data.shape[2]):
            block = np.ascontiguousarray(data[:, a0 - r0:a1 - r0, b0 - c0:b1 - c0])
            out[key] = hashlib.blake2b(block.tobytes(), digest_size=16).hexdigest()
        return out

    def _level_windows(self, r0: int, r1: int, c0: int, c1: int
                       ) -> list[tuple[int, int, int, int, int]]:
        """``(level, r0, r1, c0, c1)`` of a full-level window at every level."""
        out = [(0, r0, r1, c0, c1)]
        for lv in range(1, self.levels + 1):
            f = 1 << lv
            out.append((lv, r0 >> lv, -(-r1 // f), c0 >> lv, -(-c1 // f)))
        return out

    def verify(self, rows: Sequence[int], cols: Sequence[int], digests: dict[str, str]) -> list[str]:
        """Keys of the chunks of the window (at every level) whose stored content does not
        match ``digests`` (from :meth:`write`): changed, truncated, deleted or unreadable."""
        have: dict[str, str] = {}
        for lv, a0, a1, b0, b1 in self._level_windows(*self._window(rows, cols)):
            try:
                data = np.ascontiguousarray(self._array(level=lv)[:, a0:a1, b0:b1])
            except (ValueError, RuntimeError, OSError, EOFError) as exc:  # checksum, codec
                return [f"<unreadable level {lv}: {type(exc).__name__}>"]
            have.update(self._digests(lv, a0, b0, data))
        return sorted(k for k in have.keys() | digests.keys() if have.get(k) != digests.get(k))

    def clear(self, rows: Sequence[int], cols: Sequence[int]) -> int:
        """Delete the stored chunks (shards when sharded) of a write-grid-aligned window at every
        level, so a redone tile rewrites them whole (a torn shard is never read back). Returns
        how many objects were deleted."""
        fs, root = self.location.fs()
        doomed = []
        for lv, a0, a1, b0, b1 in self._level_windows(*self._window(rows, cols)):
            arr = self._array(level=lv)
            gh, gw = (self.write_grid if lv == 0 else arr.chunks[1:])
            for i in range(a0 // gh, -(-a1 // gh)):
                for j in range(b0 // gw, -(-b1 // gw)):
                    key = arr.metadata.encode_chunk_key((0, i, j))
                    doomed.append(f"{root}/{self._path(lv)}/{key}")
        gone = 0
        for path in doomed:
            try:
                fs.rm_file(path)
                gone += 1
            except FileNotFoundError:
                pass
        self._arrays.clear()  # drop any cached reads
        return gone

    def read(self, rows: Sequence[int], cols: Sequence[int]) -> np.ndarray:
        """Read rows [r0, r1), cols [c0, c1) as (C, r1 - r0, c1 - c0); any window in range."""
        r0, r1, c0, c1 = self._window(rows, cols)
        return np.asarray(self._array()[:, r0:r1, c0:c1])


_POOL: Any = None
_POOL_LOCK = threading.Lock()


def _digest_pool() -> Any:
    """One small thread pool per process for chunk digests (created on first use)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            import concurrent.futures

            _POOL = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="digest")
        return _POOL


