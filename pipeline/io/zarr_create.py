"""Create, reopen (resume) or replace the Zarr output (:func:`create_zarr_output`), after the
checks that make each refuse (:func:`check_output_target`); the handle is
:class:`pipeline.io.zarr_output.ZarrOutput`, the layout is described there."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from pipeline.errors import (
    ConfigError,
    InputNotFoundError,
    OutputCorruptError,
    OutputExistsError,
    OutputNotWritableError,
)
from pipeline.io.atomic import exists
from pipeline.io.codecs import compressors
from pipeline.io.geozarr import (
    gdal_v2_attrs,
    geo_attrs,
    geo_group_attrs,
    level_transform,
    multiscales_attrs,
    write_coordinates,
)
from pipeline.io.locations import Location
from pipeline.io.manifest import MANIFEST_DIR
from pipeline.io.pyramid import level_chunk, level_shape
from pipeline.io.zarr_output import (
    _DTYPE_KINDS,
    ARRAY_NAME,
    COMPLETE,
    CREATED_BY,
    PRODUCTS_GROUP,
    OutputSpec,
    ZarrOutput,
    _jsonable,
    _prepare_attrs,
    _store,
    level_path,
)

__all__ = ["check_output_target", "create_zarr_output", "open_zarr_output", "output_exists"]


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
    marker), never another Zarr group or folder, and refuses one that also holds files this
    project does not write there (:mod:`pipeline.io.ownership`).

    Raises:
        OutputExistsError: it exists without ``overwrite``/``resume``, or is not ours, or
            (``overwrite``) holds files that are not ours.
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
    if overwrite:  # deleting it must not delete what the user put inside
        from pipeline.io.ownership import list_tree, refuse_foreign, zarr_foreign

        refuse_foreign(spec.uri, zarr_foreign(list_tree(loc)), "an output of this project")
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
        ph, pw = _positive_ints("product shape (H, W)", pshape, 2)
        pshape2 = (ph, pw)
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
        # only what this project writes, listed afresh; never through a symlink
        from pipeline.io.ownership import list_tree, refuse_foreign, remove_listed, zarr_foreign

        fs, path = loc.fs()
        tree = list_tree(loc)
        refuse_foreign(spec.uri, zarr_foreign(tree), "an output of this project")
        remove_listed(loc, tree)
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
            level_meta = {"created_by": CREATED_BY, COMPLETE: False,
                          "overview_level": lv, "overview_of": ARRAY_NAME,
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
