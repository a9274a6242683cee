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

Concurrency rule (zarr-python #3682): writers never share a chunk, or a shard when sharded.
:meth:`ZarrOutput.write` enforces it: a write must start on the write grid (the shard grid when
sharded, else the chunk grid) and end on it or at the array edge. Chunks equal to the fill value
are not stored, so resume uses the tile manifest, never chunk existence.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.storage import FsspecStore, LocalStore

from pipeline.errors import (
    ConfigError,
    InputNotFoundError,
    OutputCorruptError,
    OutputExistsError,
    OutputNotWritableError,
)
from pipeline.geometry.affine import as_transform
from pipeline.io.atomic import exists
from pipeline.io.geozarr import (
    gdal_v2_attrs,
    geo_attrs,
    geo_group_attrs,
    level_transform,
    multiscales_attrs,
    write_coordinates,
)
from pipeline.io.locations import Location, resolve
from pipeline.io.manifest import MANIFEST_DIR, TileManifest
from pipeline.io.pyramid import block_means, level_chunk, level_shape

__all__ = [
    "ARRAY_NAME",
    "CREATED_BY",
    "PRODUCTS_GROUP",
    "OutputSpec",
    "CODECS",
    "ZARR_FORMATS",
    "ZarrOutput",
    "check_output_target",
    "compressors",
    "create_zarr_output",
    "open_zarr_output",
    "output_exists",
]

ARRAY_NAME = "image"
OVERVIEWS_GROUP = "overviews"
PRODUCTS_GROUP = "scales"  # further products of a job at other sizes: scales/<label>/image
CREATED_BY = "liif-pipeline 0.1.0"
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


#: Zarr formats an output can be written in (2: the layout GDAL 3.10 opens georeferenced)
ZARR_FORMATS = (2, 3)

#: output codec names (each followed by a CRC32C checksum): see :func:`compressors`
CODECS = ("auto", "zstd", "blosc-zstd", "blosc-lz4", "none")


def compressors(codec: str, dtype: np.dtype, zarr_format: int = 3) -> tuple[Any, ...]:
    """The compressor chain of an output array for ``codec`` (``name`` or ``name:level``),
    always ending with a CRC32C checksum, so corrupt chunks fail to decode.

    Zarr v2 (``zarr_format=2``, for GDAL) has no CRC32C codec GDAL reads: its chunks are zstd
    with zstd's own frame checksum (GDAL verifies it), so only ``auto`` and ``zstd[:level]``
    are accepted there.

    ``auto`` (chosen by measurement on real imagery, bench/codecs.py): zstd level 3 for 1-byte
    data (ratio 1.87, 134 MB/s per thread encode), blosc zstd clevel 2 with byte shuffle for
    wider dtypes (uint16 6 % and float32 22-25 % smaller than zstd at a similar speed).

    Raises:
        ConfigError: an unknown name or a level out of range.
    """
    from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec

    name, _, level_text = str(codec).partition(":")
    if name not in CODECS:
        raise ConfigError(f"codec {codec!r} is not one of {', '.join(CODECS)} (optionally "
                          "name:level, e.g. zstd:3)")
    if zarr_format not in (2, 3):
        raise ConfigError(f"zarr format {zarr_format!r} must be 2 or 3")
    if zarr_format == 2 and name not in ("auto", "zstd"):
        raise ConfigError(
            f"codec {codec!r} cannot be used with --zarr-format 2: v2 outputs are zstd with its "
            "frame checksum, the one checksummed codec GDAL reads (use auto or zstd[:level])")
    if name == "auto":
        name = "zstd" if zarr_format == 2 or np.dtype(dtype).itemsize == 1 else "blosc-zstd"
    try:
        level = int(level_text) if level_text else None
    except ValueError:
        raise ConfigError(f"codec level in {codec!r} must be an integer") from None
    limits = {"zstd": (-7, 22), "blosc-zstd": (0, 9), "blosc-lz4": (0, 9), "none": (0, 0)}
    lo, hi = limits[name]
    if level is not None and not lo <= level <= hi:
        raise ConfigError(f"codec level {level} for {name} must be in {lo}..{hi}")
    if zarr_format == 2:
        import numcodecs

        return (numcodecs.Zstd(level=3 if level is None else level, checksum=True),)
    if name == "zstd":
        main: list[Any] = [ZstdCodec(level=3 if level is None else level)]
    elif name == "blosc-zstd":
        main = [BloscCodec(cname="zstd", clevel=2 if level is None else level,
                           shuffle=BloscShuffle.shuffle)]
    elif name == "blosc-lz4":
        main = [BloscCodec(cname="lz4", clevel=5 if level is None else level,
                           shuffle=BloscShuffle.shuffle)]
    else:
        main = []
    return (*main, Crc32cCodec())


def _loc(uri: str, storage_options: dict[str, Any] | None = None) -> Location:
    return resolve(uri, storage_options)


def _store(loc: Location, read_only: bool) -> zarr.abc.store.Store:
    if loc.is_local:
        return LocalStore(loc.path, read_only=read_only)
    return FsspecStore.from_url(loc.url, storage_options=loc.storage_options, read_only=read_only)


def output_exists(spec: OutputSpec) -> bool:
    """Whether anything (a Zarr output or any other file or non-empty directory) is at the uri."""
    return exists(spec.location)


def _check_local_writable(path: str) -> None:
    """Raise OutputNotWritableError unless ``path`` could be created as a directory."""
    probe = path
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if probe != path and not os.path.isdir(probe):
        raise OutputNotWritableError(
            f"cannot create output {path!r}: {probe!r} exists and is not a directory"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputNotWritableError(
            f"cannot create output {path!r}: directory {probe!r} is not writable"
        )


# ---------------------------------------------------------------------------------------------
# validation


def _positive_ints(name: str, value: Any, n: int) -> tuple[int, ...]:
    try:
        items = tuple(value)
    except TypeError:
        items = ()
    ok = len(items) == n and all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0 for v in items
    )
    if not ok:
        raise ConfigError(f"{name} must be {n} positive integers, got {value!r}")
    return tuple(int(v) for v in items)


def _check_fill(value: Any, dtype: np.dtype) -> int | float | None:
    """``value`` as a Python number exactly representable in ``dtype`` (None stays None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"fill_value must be a number, got {value!r}")
    if dtype.kind == "f":
        return float(value)
    info = np.iinfo(dtype)
    if not (math.isfinite(value) and float(value).is_integer() and info.min <= value <= info.max):
        raise ConfigError(
            f"fill_value {value!r} does not fit dtype {dtype}: use an integer in "
            f"[{info.min}, {info.max}]"
        )
    return int(value)


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
        arr.attrs.clear()
        arr.attrs.update(keep)
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
        self._array(writable=True)[:, r0:r1, c0:c1] = data
        digests = self._digests(0, r0, c0, data)
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


def _job_diff(old: Any, new: Any) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return [] if old == new else ["<whole fingerprint>"]


def _group_marker(loc: Location) -> dict[str, Any] | None:
    """The attributes of the Zarr group at ``loc`` if it is an output of this project (its
    ``created_by`` marker), else None.

    Raises:
        OutputCorruptError: the group metadata exists but cannot be parsed (names the file).
    """
    def _doc(name: str) -> Any:
        meta = loc.child(name)
        fs, path = meta.fs()
        try:
            raw = fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise OutputCorruptError(
                f"the Zarr metadata {meta.uri!r} cannot be read ({exc}); it may be an output of "
                "this project, but it cannot be checked: remove it yourself or choose another "
                "output") from exc

    doc = _doc("zarr.json")  # v3: attributes inside; v2: .zgroup beside .zattrs
    if doc is not None:
        attrs = doc.get("attributes") if isinstance(doc, dict) else None
    else:
        attrs = _doc(".zattrs") if _doc(".zgroup") is not None else None
    if not isinstance(attrs, dict) or not str(attrs.get("created_by", "")).startswith(
            CREATED_BY.split(" ")[0]):
        return None
    return attrs


def check_output_target(spec: OutputSpec, *, overwrite: bool = False, resume: bool = False
                        ) -> str:
    """What creating the output will do: ``"new"``, ``"overwrite"`` or ``"resume"``; checks
    everything that would make :func:`create_zarr_output` refuse, writing nothing.

    ``overwrite`` deletes only an output this project created (the group's ``created_by``
    marker), never another Zarr group or folder.

    Raises:
        OutputExistsError: it exists without ``overwrite``/``resume``, or is not ours.
        OutputCorruptError: its metadata cannot be read.
        OutputNotWritableError: a local location that cannot be created.
    """
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume exclude each other: pass at most one")
    loc = spec.location
    if not exists(loc):
        if loc.is_local:
            _check_local_writable(loc.path)
        return "new"
    if not (overwrite or resume):
        raise OutputExistsError(
            f"output {spec.uri!r} already exists; pass --overwrite to replace it or --resume to "
            "continue an interrupted run"
        )
    if _group_marker(loc) is None:
        marker = f"no Zarr group with a created_by={CREATED_BY.split(' ')[0]!r} marker"
        if resume:
            raise ConfigError(
                f"cannot resume {spec.uri!r}: it exists but is not a liif-pipeline Zarr output "
                f"({marker}); choose another output")
        raise OutputExistsError(
            f"refusing to overwrite {spec.uri!r}: it is not an output of this project ({marker}); "
            "remove it yourself or choose another output"
        )
    return "overwrite" if overwrite else "resume"


def _open_for_resume(
    spec: OutputSpec,
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunks: tuple[int, ...],
    shards: tuple[int, ...] | None,
    job: Any,
    overviews: int = 0,
    zarr_format: int = 3,
) -> ZarrOutput:
    out = ZarrOutput(spec.uri, spec.storage_options)
    uri = spec.uri
    try:
        out.shape  # noqa: B018 - opens the array
    except (InputNotFoundError, zarr.errors.NodeTypeValidationError) as exc:
        raise ConfigError(
            f"cannot resume {uri!r}: it exists but is not a liif-pipeline Zarr output "
            f"(no '{ARRAY_NAME}' array); choose another output or pass --overwrite"
        ) from exc
    problems = []
    for name, have, want in (
        ("shape", out.shape, shape),
        ("dtype", out.dtype, dtype),
        ("chunks", out.chunks, chunks),
        ("shards", out.shards, shards),
        ("overview levels", out.levels, overviews),
        ("Zarr format", out.zarr_format, zarr_format),
    ):
        if have != want:
            problems.append(f"{name} is {have} but the job needs {want}")
    diff = _job_diff(out.attrs.get("job"), job)
    if diff:
        problems.append(f"job fingerprint differs in {diff}")
    if problems:
        raise ConfigError(
            f"cannot resume {uri!r}: "
            + "; ".join(problems)
            + " (rerun with the original settings, or pass --overwrite to start over)"
        )
    return out


def _image_meta(attrs: dict[str, Any] | None, shape2: tuple[int, int], zarr_format: int,
                fill_value: Any, dtype: np.dtype) -> tuple[dict[str, Any], int | float | None]:
    """Attributes and fill value of an image array: GeoZarr (v3) or GDAL's (v2) georeference."""
    meta = _prepare_attrs(attrs, shape2)
    if zarr_format == 2:
        meta = {k: v for k, v in meta.items()
                if not k.startswith(("proj:", "spatial:")) and k != "zarr_conventions"}
        nodata = meta.get("nodata")
        meta.update(gdal_v2_attrs(meta.get("crs"), meta.get("transform"), shape2, nodata))
        fill_value = nodata  # GDAL reports the fill value as nodata
    return meta, _check_fill(fill_value, dtype)


def create_zarr_output(
    spec: OutputSpec,
    *,
    shape: Sequence[int],
    dtype: Any,
    chunks: Sequence[int],
    shards: Sequence[int] | None = None,
    fill_value: int | float = 0,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    overviews: int = 0,
    codec: str = "auto",
    zarr_format: int = 3,
    products: Sequence[tuple[str, Sequence[int], dict[str, Any]]] = (),
) -> ZarrOutput:
    """Create (or, with ``resume``, reopen) the output group with array ``image`` (C, H, W).

    ``products``: further outputs of the same job at other sizes, ``(group path, (H, W),
    attrs)`` with the path under ``scales/`` (e.g. ``scales/x4``): each gets the array
    ``<path>/image`` with the same bands, dtype, chunks, shards and codec (no overviews) and
    its own attributes (georeference of its own grid); open one with
    ``ZarrOutput.product(path + "/image")``.

    ``chunks`` (ch, cw) and ``shards`` (sh, sw) are spatial; sh, sw must be multiples of ch, cw.
    Chunks are zstd-compressed and carry a CRC32C checksum, so a corrupt chunk fails to decode
    instead of reading as wrong values. An existing output raises OutputExistsError unless
    ``overwrite`` (delete and recreate; only an output of this project) or ``resume`` (reopen;
    shape, dtype, chunks, shards and ``attrs["job"]`` must match, else ConfigError). Nothing is
    written before these checks pass. ``overviews`` levels of block means are created beside
    ``image`` (``overviews/1`` ...; :mod:`pipeline.io.pyramid`), declared on the group with the
    multiscales convention; :meth:`ZarrOutput.write` fills them from each tile.

    ``zarr_format=2`` writes the layout GDAL 3.10 opens georeferenced (:func:`gdal_v2_attrs`):
    ``_ARRAY_DIMENSIONS`` and ``_CRS`` attributes, ``x``/``y`` pixel-centre coordinate arrays,
    the fill value equal to ``attrs["nodata"]`` (``fill_value`` is then ignored; no nodata: no
    fill value, as GDAL reports the fill value as nodata), zstd with its frame checksum, and no
    sharding (v2 has none).
    """
    shape3 = _positive_ints("shape (C, H, W)", shape, 3)
    if isinstance(overviews, bool) or not isinstance(overviews, int) or overviews < 0:
        raise ConfigError(f"overviews {overviews!r} must be an integer >= 0")
    try:
        np_dtype = np.dtype(dtype)
    except TypeError as exc:
        raise ConfigError(f"dtype {dtype!r} is not a NumPy dtype") from exc
    if np_dtype.kind not in _DTYPE_KINDS:
        raise ConfigError(f"dtype {np_dtype} is not allowed: use an integer or float dtype")
    chunks2 = _positive_ints("chunks (ch, cw)", chunks, 2)
    shards2 = None if shards is None else _positive_ints("shards (sh, sw)", shards, 2)
    if shards2 is not None and any(s % c for s, c in zip(shards2, chunks2, strict=True)):
        raise ConfigError(f"shards {shards2} must be multiples of chunks {chunks2}")
    if zarr_format == 2 and shards2 is not None:
        raise ConfigError(f"shards {shards2} cannot be used with Zarr v2 (it has no sharding): "
                          "drop --shard or write Zarr v3")
    chain = compressors(codec, np_dtype, zarr_format)  # a bad codec fails before any write
    meta, fill = _image_meta(attrs, (shape3[1], shape3[2]), zarr_format, fill_value, np_dtype)
    meta["overviews"] = overviews
    extra = []
    for name, pshape, pattrs in products:
        if not isinstance(name, str) or not name.startswith(PRODUCTS_GROUP + "/"):
            raise ConfigError(f"product array {name!r} must be under '{PRODUCTS_GROUP}/'")
        pshape2 = _positive_ints("product shape (H, W)", pshape, 2)
        pmeta, pfill = _image_meta(pattrs, pshape2, zarr_format, fill_value, np_dtype)
        pmeta["overviews"] = 0
        extra.append((f"{name}/{ARRAY_NAME}", pshape2, pmeta, pfill))

    mode = check_output_target(spec, overwrite=overwrite, resume=resume)
    if mode == "resume":
        out = _open_for_resume(spec, shape3, np_dtype, chunks2, shards2, meta.get("job"),
                               overviews, zarr_format)
        for path, pshape2, _, _ in extra:
            try:
                have = out.product(path).shape
            except (InputNotFoundError, OutputCorruptError) as exc:
                raise ConfigError(f"cannot resume {spec.uri!r}: product {path!r} is missing "
                                  f"({exc}); pass --overwrite to start over") from exc
            if have != (shape3[0], *pshape2):
                raise ConfigError(f"cannot resume {spec.uri!r}: product {path!r} is {have} but "
                                  f"the job needs {(shape3[0], *pshape2)}")
        return out
    loc = spec.location
    if mode == "overwrite":
        fs, path = loc.fs()
        fs.rm(path, recursive=True)
        fs.invalidate_cache(path)

    n_bands = shape3[0]
    paths = [level_path(lv) for lv in range(overviews + 1)]
    shapes = [level_shape((shape3[1], shape3[2]), lv) for lv in range(overviews + 1)]
    group_attrs: dict[str, Any] = {"created_by": CREATED_BY, **geo_group_attrs(meta.get("crs"))}
    if overviews:
        ms = multiscales_attrs(paths, shapes, meta.get("transform"))
        group_attrs["zarr_conventions"] = (group_attrs.get("zarr_conventions", [])
                                           + ms.pop("zarr_conventions"))
        group_attrs.update(ms)
    # v2 names dimensions in the _ARRAY_DIMENSIONS attribute, v3 in the metadata
    dims: dict[str, Any] = {} if zarr_format == 2 else {"dimension_names": ("band", "y", "x")}
    try:
        group = zarr.create_group(_store(loc, read_only=False), attributes=group_attrs,
                                  zarr_format=zarr_format)  # type: ignore[arg-type]
        group.create_array(
            ARRAY_NAME,
            shape=shape3,
            dtype=np_dtype,
            chunks=(n_bands, *chunks2),
            shards=None if shards2 is None else (n_bands, *shards2),
            fill_value=fill,
            compressors=chain,
            attributes=meta,
            **dims,
        )
        if zarr_format == 2 and meta.get("transform") is not None:
            write_coordinates(group, meta["transform"], (shape3[1], shape3[2]))
        for path, pshape2, pmeta, pfill in extra:  # a subgroup each: image (+ x, y in v2)
            sub = group.require_group(path.rsplit("/", 1)[0])
            sub.create_array(ARRAY_NAME, shape=(n_bands, *pshape2), dtype=np_dtype,
                             chunks=(n_bands, *chunks2),
                             shards=None if shards2 is None else (n_bands, *shards2),
                             fill_value=pfill, compressors=chain, attributes=pmeta, **dims)
            if zarr_format == 2 and pmeta.get("transform") is not None:
                write_coordinates(sub, pmeta["transform"], pshape2)
        for lv in range(1, overviews + 1):
            lc = level_chunk(min(chunks2), lv)
            lt = (level_transform(meta["transform"], lv) if meta.get("transform") is not None
                  else None)
            level_meta = {"overview_level": lv, "overview_of": ARRAY_NAME,
                          "resampling": "average", "crs": meta.get("crs"), "transform": lt,
                          "nodata": meta.get("nodata"), "value_range": meta.get("value_range")}
            if zarr_format == 2:  # GDAL 3.10 reads no overviews from v2: plain arrays
                level_meta["_ARRAY_DIMENSIONS"] = ["band", f"y_{lv}", f"x_{lv}"]
            else:
                level_meta.update(geo_attrs(meta.get("crs"), lt, shapes[lv]))
            group.create_array(
                paths[lv], shape=(n_bands, *shapes[lv]), dtype=np_dtype,
                chunks=(n_bands, lc, lc), fill_value=fill,
                compressors=chain,
                attributes=_jsonable(level_meta, "overview attrs"), **dims)
        group.create_group(
            MANIFEST_DIR, attributes={"description": "done-tile records (pipeline.io.manifest)"}
        )
    except (PermissionError, NotADirectoryError) as exc:
        raise OutputNotWritableError(f"cannot write output {spec.uri!r}: {exc}") from exc
    return ZarrOutput(spec.uri, spec.storage_options)


def open_zarr_output(spec: OutputSpec) -> ZarrOutput:
    """Open an existing output (read or write); InputNotFoundError when there is none."""
    out = ZarrOutput(spec.uri, spec.storage_options)
    out.shape  # noqa: B018 - fail now, not in a worker
    return out
