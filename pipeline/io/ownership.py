"""What ``--overwrite`` may delete: only the files a job of this project wrote into its output.

``--overwrite`` replaces an output of this project (a Zarr output group with the
``created_by`` marker, a ground-truth folder with its ``_manifest.json``) by deleting it first.
Users put their own files inside such folders (notes, plots, a symlink to other data, a Zarr
array of their own); deleting the folder wholesale would destroy them without a word. So before
anything is deleted, the output is listed in full and every entry is checked against what the
output itself says it holds (:func:`zarr_foreign`, :func:`gt_foreign`), not against the shape
of its names:

- Zarr: the arrays of ours are ``image``, the overview levels ``overviews/1`` ... ``overviews/L``
  that ``image``'s ``overviews`` attribute counts, the products its ``products`` attribute lists
  (``scales/<label>/image``, with their own counted levels), any other array under
  ``overviews/`` or ``scales/<label>/image`` only if its own attributes carry our ``created_by``
  marker, and in a v2 output the ``x``/``y`` coordinate arrays of the image and of each product.
  Inside each array only its metadata and the chunk (or shard) keys of its own chunk grid are
  ours: shape, chunk (shard) shape and chunk key encoding are read from its ``zarr.json`` (v3)
  or ``.zarray`` (v2). An array of ours whose metadata cannot be read makes
  :func:`zarr_foreign` refuse (:class:`~pipeline.errors.OutputCorruptError`): what it holds
  cannot be told apart from the user's files, and nothing is guessed.
- Ground truth: the manifests and the shards they list (or plan; :func:`gt_manifests`); a
  manifest that cannot be parsed makes it refuse.

If anything else is there, :func:`refuse_foreign` raises
:class:`~pipeline.errors.OutputExistsError` naming the first few entries; nothing is deleted.

Symbolic links, devices, pipes and sockets are never ours: they are always foreign (a link's
target is never looked at, let alone deleted). :func:`remove_listed` deletes exactly the entries
that were listed and found ours: locally it walks the folder with directory file descriptors
opened with ``O_NOFOLLOW``, so a link that appears between the check and the delete is not
followed; anything it did not list (a file added meanwhile) is kept and reported. The temporary
files of our atomic writer (:mod:`pipeline.io.atomic`) and zarr's ``.partial`` files of our
metadata and chunks are ours.

Entries are ``(relative posix path, kind)`` with kind ``"file"``, ``"dir"``, ``"link"`` (a
symbolic link) or ``"other"`` (a device, pipe or socket).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from pipeline.errors import OutputCorruptError, OutputExistsError
from pipeline.io.locations import Location
from pipeline.io.tree import Entry, Tree, list_tree, read_json, remove_listed

__all__ = ["Tree", "gt_foreign", "gt_manifests", "list_tree", "refuse_foreign", "remove_listed",
           "zarr_foreign"]

_HEX32 = r"[0-9a-f]{32}"
# pipeline.io.atomic.local_tmp(loc, ".tmp"): ".<name>.<uuid4 hex>.tmp" beside the target
_ATOMIC_TMP = re.compile(rf"\.(?P<name>.+)\.{_HEX32}\.tmp")
# zarr's LocalStore (_atomic_write): path.with_suffix(".<uuid4 hex>.partial") beside the target
_ZARR_PARTIAL = re.compile(rf"(?P<stem>.+)\.{_HEX32}\.partial")

# ------------------------------------------------------------------------- the Zarr output

_N = re.compile(r"[1-9][0-9]*")  # overview levels
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")  # product labels: x4, x2.5, x2_3, 4000x3000
_INDEX = re.compile(r"0|[1-9][0-9]*")  # a chunk index as zarr writes it (str(int))
_V3_META = frozenset({"zarr.json"})
_V2_GROUP_META = frozenset({".zgroup", ".zattrs"})
_V2_ARRAY_META = frozenset({".zarray", ".zattrs"})
_COORDS = ("x", "y")  # the v2 layout's coordinate arrays
_OVERVIEWS, _PRODUCTS, _IMAGE, _MANIFEST = "overviews", "scales", "image", "_manifest"


def _meta_or_partial(name: str, meta: frozenset[str]) -> bool:
    if name in meta:
        return True
    m = _ZARR_PARTIAL.fullmatch(name)
    return m is not None and m["stem"] in {PurePosixPath(n).stem for n in meta}


@dataclass
class _Array:
    """One Zarr array of ours: its metadata file names and its chunk keys, read from its
    metadata: ``prefix`` ``("c",)`` for v3's default key encoding, the key ``sep``arator and
    ``grid``, the number of chunks (shards: one stored key each) along each dimension; ``None``
    when its metadata is not a regular file (a link put there): then no chunk is ours."""

    meta: frozenset[str]
    prefix: tuple[str, ...] = ()
    sep: str = "/"
    grid: tuple[int, ...] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def _key_len(self) -> int:
        return max(1, len(self.prefix) + len(self.grid or ()))

    def _tokens_ok(self, tokens: Sequence[str]) -> bool:
        """``tokens`` (a key, or its start, split at the separator) lie inside the grid."""
        if self.grid is None or not tokens or len(tokens) > self._key_len:
            return False
        if not self.prefix and not self.grid:  # a 0-d array, v2 key encoding: key "0"
            return list(tokens) == ["0"]
        for i, t in enumerate(tokens):
            if i < len(self.prefix):
                if t != self.prefix[i]:
                    return False
            elif not (_INDEX.fullmatch(t) and int(t) < self.grid[i - len(self.prefix)]):
                return False
        return True

    def holds(self, inner: Sequence[str], kind: str) -> bool:
        """``inner`` (parts below the array's folder) is its metadata, one of its chunks (or
        zarr's temporary file of either), or a folder on the way to a chunk."""
        n, name = self._key_len, inner[-1]
        if kind == "dir":
            return self.sep == "/" and len(inner) < n and self._tokens_ok(inner)
        if kind != "file":
            return False
        if len(inner) == 1 and _meta_or_partial(name, self.meta):
            return True
        m = _ZARR_PARTIAL.fullmatch(name)
        if self.sep == "/":
            tokens = [*inner[:-1], m["stem"] if m else name]
            return len(tokens) == n and self._tokens_ok(tokens)
        if len(inner) != 1:
            return False
        if m is None:
            tokens = name.split(".")
            return len(tokens) == n and self._tokens_ok(tokens)
        # with_suffix() drops the key's last ".<index>": "0.1.2" -> "0.1.<hex>.partial"
        tokens = m["stem"].split(".")
        return len(tokens) == max(1, n - 1) and self._tokens_ok(tokens)


def _ints(value: Any, what: str, positive: bool = False) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= (1 if positive else 0)
            for v in value):
        raise ValueError(f"its {what} {value!r} is not a list of "
                         f"{'positive' if positive else 'non-negative'} integers")
    return tuple(value)


def _grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) != len(chunks):
        raise ValueError(f"its chunk shape {list(chunks)} does not match its shape {list(shape)}")
    return tuple(-(-s // c) for s, c in zip(shape, chunks, strict=True))


def _attrs(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"its attributes {value!r} are not a JSON object")
    return value


def _v3_array(doc: Any) -> _Array:
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "array":
        raise ValueError("it is not the metadata of a Zarr v3 array")
    shape = _ints(doc.get("shape"), "shape")
    grid = doc.get("chunk_grid")
    conf = grid.get("configuration") if isinstance(grid, dict) else None
    if not isinstance(grid, dict) or grid.get("name") != "regular" or not isinstance(conf, dict):
        raise ValueError(f"its chunk grid {grid!r} is not a regular one")
    # with the sharding codec, the grid's chunk_shape is the shard shape: one key per shard
    chunks = _ints(conf.get("chunk_shape"), "chunk_shape", positive=True)
    enc = doc.get("chunk_key_encoding", {"name": "default"})
    name = enc.get("name") if isinstance(enc, dict) else None
    econf = enc.get("configuration", {}) if isinstance(enc, dict) else None
    sep = (econf.get("separator", "/" if name == "default" else ".")
           if isinstance(econf, dict) else None)
    if name not in ("default", "v2") or sep not in ("/", "."):
        raise ValueError(f"its chunk key encoding {enc!r} is not one zarr writes")
    return _Array(_V3_META, ("c",) if name == "default" else (), str(sep), _grid(shape, chunks),
                  _attrs(doc.get("attributes", {})))


def _v2_array(doc: Any, attrs: Any) -> _Array:
    if not isinstance(doc, dict) or doc.get("zarr_format") != 2:
        raise ValueError("it is not the metadata of a Zarr v2 array")
    shape = _ints(doc.get("shape"), "shape")
    chunks = _ints(doc.get("chunks"), "chunks", positive=True)
    sep = doc.get("dimension_separator") or "."
    if sep not in ("/", "."):
        raise ValueError(f"its dimension_separator {sep!r} is not one zarr writes")
    return _Array(_V2_ARRAY_META, (), sep, _grid(shape, chunks), _attrs(attrs))


def _ours_marker(attrs: dict[str, Any]) -> bool:
    from pipeline.io.zarr_output import CREATED_BY

    return str(attrs.get("created_by", "")).startswith(CREATED_BY.split(" ")[0])


class _Layout:
    """What one Zarr output of ours holds, read from its own metadata (see the module doc)."""

    def __init__(self, loc: Location, entries: Sequence[Entry]) -> None:
        self.loc = loc
        self.kinds = dict(entries)
        self.children: dict[tuple[str, ...], list[str]] = {}
        for rel, _kind in entries:
            p = tuple(rel.split("/"))
            self.children.setdefault(p[:-1], []).append(p[-1])
        self.arrays: dict[tuple[str, ...], _Array] = {}
        self.groups: set[tuple[str, ...]] = set()  # folders and group metadata ours
        self.folders: set[tuple[str, ...]] = set()  # folders ours, their group metadata not
        self.problems: list[str] = []  # arrays of ours whose metadata cannot be read
        self.fmt = self._root()
        if self.fmt is not None:
            self._build()

    def _root(self) -> int | None:
        """The output's Zarr format, None when the group is not ours (then nothing is)."""
        try:
            if self.kinds.get("zarr.json") == "file":
                doc = read_json(self.loc, "zarr.json")
                attrs = doc.get("attributes", {}) if isinstance(doc, dict) else None
                fmt = 3
            elif self.kinds.get(".zgroup") == "file":
                attrs = (read_json(self.loc, ".zattrs") if self.kinds.get(".zattrs") == "file"
                         else {})
                fmt = 2
            else:
                return None
        except ValueError as exc:
            raise OutputCorruptError(
                f"refusing to overwrite {self.loc.uri!r}: its group metadata {exc}; it may be an "
                "output of this project, but it cannot be checked: delete it yourself if you are "
                "sure nothing in it is yours to keep, or choose another output") from exc
        return fmt if isinstance(attrs, dict) and _ours_marker(attrs) else None

    def _build(self) -> None:
        self.gmeta = _V3_META if self.fmt == 3 else _V2_GROUP_META
        self.groups |= {(), (_MANIFEST,)}
        self.folders.add((_PRODUCTS,))
        image = self._listed((_IMAGE,))
        attrs = image.attrs if image is not None else {}
        self._levels((), self._count(attrs, _IMAGE))
        listed = attrs.get("products", [])
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            self.problems.append(f"'{_IMAGE}' (its attribute products={listed!r} is not a list "
                                 "of array paths)")
            listed = []
        products = set()
        for path in listed:
            p = tuple(path.split("/"))
            if len(p) == 3 and p[0] == _PRODUCTS and _LABEL.fullmatch(p[1]) and p[2] == _IMAGE:
                products.add(p[:2])
        for label in self.children.get((_PRODUCTS,), []):  # not listed: ours if marked
            g = (_PRODUCTS, label)
            if g not in products and _LABEL.fullmatch(label) and self._marked(g + (_IMAGE,)):
                products.add(g)
        for g in sorted(products):
            self.groups.add(g)
            a = self.arrays.get(g + (_IMAGE,)) or self._listed(g + (_IMAGE,))
            self._levels(g, self._count(a.attrs if a is not None else {}, "/".join(g + (_IMAGE,))))
        if products:
            self.groups.add((_PRODUCTS,))
        if self.fmt == 2:  # the coordinates of the image and of each product
            for g in [(), *sorted(products)]:
                for c in _COORDS:
                    self._listed(g + (c,))

    def _levels(self, g: tuple[str, ...], count: int) -> None:
        """The overview levels of the image of group ``g``: 1..count, and any other marked."""
        ov = g + (_OVERVIEWS,)
        self.folders.add(ov)
        for k in range(1, count + 1):
            self._listed(ov + (str(k),))
        for name in self.children.get(ov, []):
            if _N.fullmatch(name) and int(name) > count:
                self._marked(ov + (name,))
        if count or any(p[:len(ov)] == ov for p in self.arrays):
            self.groups.add(ov)

    def _count(self, attrs: dict[str, Any], where: str) -> int:
        n = attrs.get("overviews", 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            self.problems.append(f"'{where}' (its attribute overviews={n!r} is not a count)")
            return 0
        return n

    def _read_array(self, p: tuple[str, ...]) -> _Array | None:
        """The array at ``p`` from its metadata; None when it has none; ValueError (saying why)
        when it cannot be read or is not an array's."""
        rel = "/".join(p)
        main = f"{rel}/zarr.json" if self.fmt == 3 else f"{rel}/.zarray"
        kind = self.kinds.get(main)
        if kind is None:
            return None
        if kind != "file":  # a link or a pipe put there: never read; it is foreign
            return _Array(_V3_META if self.fmt == 3 else _V2_ARRAY_META)
        doc = read_json(self.loc, main)
        try:
            if self.fmt == 3:
                return _v3_array(doc)
            za = f"{rel}/.zattrs"
            attrs = read_json(self.loc, za) if self.kinds.get(za) == "file" else {}
            return _v2_array(doc, attrs)
        except ValueError as exc:
            raise ValueError(f"{main}: {exc}") from exc

    def _listed(self, p: tuple[str, ...]) -> _Array | None:
        """The array at ``p``, ours by what the output lists: its metadata must be readable."""
        if self.kinds.get("/".join(p)) != "dir":
            return None
        try:
            a = self._read_array(p)
        except ValueError as exc:
            self.problems.append(f"'{'/'.join(p)}' ({exc})")
            return None
        if a is None:
            meta = _V3_META if self.fmt == 3 else _V2_ARRAY_META
            if not all(_meta_or_partial(n, meta) for n in self.children.get(p, [])):
                self.problems.append(f"'{'/'.join(p)}' (it has no {' or '.join(sorted(meta))})")
                return None
            a = _Array(meta)  # a job killed while writing its metadata: nothing else in it
        self.arrays[p] = a
        return a

    def _marked(self, p: tuple[str, ...]) -> bool:
        """The array at ``p`` is ours if its own attributes carry our ``created_by``."""
        if self.kinds.get("/".join(p)) != "dir":
            return False
        try:
            a = self._read_array(p)
        except ValueError:
            return False  # not readable: not shown to be ours, so it is foreign
        if a is None or a.grid is None or not _ours_marker(a.attrs):
            return False
        self.arrays[p] = a
        return True

    def ours(self, rel: str, kind: str) -> bool:
        p = tuple(rel.split("/"))
        for k in range(1, len(p) + 1):
            a = self.arrays.get(p[:k])
            if a is not None:
                return (kind == "dir") if k == len(p) else a.holds(p[k:], kind)
        if kind == "dir":
            return p in self.groups or p in self.folders
        if kind != "file":
            return False
        g, name = p[:-1], p[-1]
        if g in self.groups and _meta_or_partial(name, self.gmeta):
            return True
        if g == (_MANIFEST,):
            m = _ATOMIC_TMP.fullmatch(name)
            return _manifest_record(m["name"] if m else name)
        return False


def _manifest_record(name: str) -> bool:
    from pipeline.io.manifest import _check_key

    if not name.endswith(".json"):
        return False
    try:
        _check_key(name[:-len(".json")])
    except ValueError:
        return False
    return True


def zarr_foreign(entries: Iterable[Entry], loc: Location | None = None) -> list[str]:
    """The entries of a Zarr output folder that this project did not write there (a foreign
    folder is named once, not with everything inside it); each as its relative path, ``/``
    after a folder, `` (symlink)`` after a link.

    What is ours is read from the output's metadata (the module doc), in the folder ``loc``
    (by default the one :func:`list_tree` listed ``entries`` from).

    Raises:
        OutputCorruptError: the metadata of an array of ours (or of the group) cannot be read,
            so what is ours cannot be told; it names the arrays.
    """
    where = loc if loc is not None else getattr(entries, "loc", None)
    if where is None:
        raise TypeError("zarr_foreign needs the output's location: pass loc, or the entries "
                        "list_tree returned")
    listed = list(entries)
    layout = _Layout(where, listed)
    if layout.problems:
        shown = "; ".join(layout.problems[:3])
        more = f" and {len(layout.problems) - 3} more" if len(layout.problems) > 3 else ""
        raise OutputCorruptError(
            f"refusing to overwrite {where.uri!r}: the Zarr metadata of {shown}{more} cannot be "
            "read, so which files in it this project wrote cannot be told, and nothing was "
            "deleted: if you are sure nothing in it is yours to keep, delete the output "
            "yourself, or choose another output")
    return _foreign(listed, layout.ours)


# --------------------------------------------------------------------- the ground-truth output

_SHARD = re.compile(r"part-(?P<n>[0-9]+)\.parquet")


class _GTShards:
    """The shard files of a ground-truth output, as its manifests say: the ``file`` of each
    shard record, and the ``planned_shards`` names ``part-00000.parquet`` ... that
    :func:`pipeline.gt.sampling.plan_shards` gives (a run killed after writing a shard and
    before recording it leaves that shard unlisted)."""

    def __init__(self, listed: Iterable[str], planned: int, shard_dir: str) -> None:
        self.listed = frozenset(listed)
        self.planned = planned
        self.shard_dir = shard_dir

    def __contains__(self, rel: object) -> bool:
        if not isinstance(rel, str):
            return False
        if rel in self.listed:
            return True
        head, _, name = rel.rpartition("/")
        m = _SHARD.fullmatch(name)
        return (head == self.shard_dir and m is not None and int(m["n"]) < self.planned
                and name == f"part-{int(m['n']):05d}.parquet")


def gt_manifests(loc: Location, entries: Iterable[Entry], manifests: Sequence[str],
                 shard_dir: str) -> tuple[dict[str, Any] | None, Container[str] | None]:
    """Read the manifests of the ground-truth folder ``loc`` (``manifests``: their names, the
    preferred first) that ``entries`` shows as regular files: ``(the first one, the shards
    they list)``. The shards are relative paths (``shards/part-00000.parquet``); ``None`` when
    no manifest has a shard list (then :func:`gt_foreign` goes by the names).

    Raises:
        OutputCorruptError: a manifest cannot be read or parsed; it names it.
    """
    kinds = dict(entries)
    first: dict[str, Any] | None = None
    listed: list[str] = []
    planned, any_list = 0, False
    for name in manifests:
        if kinds.get(name) != "file":  # absent, or a link or a folder: foreign, never read
            continue
        try:
            doc = read_json(loc, name)
            if not isinstance(doc, dict):
                raise ValueError(f"{name} is not a JSON object")
            shards = doc.get("shards")
            n = doc.get("planned_shards", 0)
            if shards is not None:
                if not isinstance(shards, dict) or not all(
                        isinstance(r, dict) and (r.get("file") is None
                                                 or isinstance(r.get("file"), str))
                        for r in shards.values()):
                    raise ValueError(f"{name}: its shards are not a list of shard records")
                any_list = True
                for r in shards.values():
                    f = r.get("file")
                    head, _, base = (f or "").rpartition("/")
                    if head == shard_dir and _SHARD.fullmatch(base):
                        listed.append(f"{shard_dir}/{base}")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"{name}: its planned_shards {n!r} is not a count")
            planned = max(planned, n)
        except ValueError as exc:
            raise OutputCorruptError(
                f"refusing to overwrite {loc.uri!r}: its manifest cannot be parsed ({exc}), so "
                "which shards in it this project wrote cannot be told, and nothing was deleted: "
                "if you are sure nothing in it is yours to keep, delete the output yourself, or "
                "choose another output") from exc
        if first is None:
            first = doc
    return first, (_GTShards(listed, planned, shard_dir) if any_list else None)


def _gt_ours(rel: str, kind: str, manifests: frozenset[str], shard_dir: str,
             shards: Container[str] | None) -> bool:
    p = rel.split("/")
    if len(p) == 1:
        name = p[0]
        if kind == "dir":
            return name == shard_dir
        m = _ATOMIC_TMP.fullmatch(name)
        return kind == "file" and (m["name"] if m else name) in manifests
    if len(p) == 2 and p[0] == shard_dir and kind == "file":
        m = _ATOMIC_TMP.fullmatch(p[1])
        name = m["name"] if m else p[1]
        if shards is None:
            # a manifest without a shard list (or none at all): the shard's name decides, as
            # nothing says which shards the output has
            return bool(_SHARD.fullmatch(name))
        return f"{shard_dir}/{name}" in shards
    return False


def gt_foreign(entries: Iterable[Entry], manifests: Iterable[str], shard_dir: str,
               shards: Container[str] | None = None) -> list[str]:
    """The entries of a ground-truth folder that this project did not write: anything but
    the ``manifests`` (``_manifest.json``, ``manifest.json``), the ``shards`` they list
    (:func:`gt_manifests`; ``None``: any ``<shard_dir>/part-<n>.parquet``) and the atomic
    writer's temporary files of those (dot files are not exempt)."""
    names = frozenset(manifests)
    return _foreign(entries, lambda rel, kind: _gt_ours(rel, kind, names, shard_dir, shards))


def _foreign(entries: Iterable[Entry], ours: Callable[[str, str], bool]) -> list[str]:
    out: list[str] = []
    cut: list[str] = []  # foreign folders: their contents are not named again
    for rel, kind in entries:
        if any(rel.startswith(c) for c in cut):
            continue
        if ours(rel, kind):
            continue
        if kind == "dir":
            cut.append(rel + "/")
            out.append(rel + "/")
        elif kind == "link":
            out.append(rel + " (symlink)")
        elif kind == "other":
            out.append(rel + " (not a regular file)")
        else:
            out.append(rel)
    return out


def refuse_foreign(uri: str, foreign: Sequence[str], what: str) -> None:
    """Raise OutputExistsError naming the first few ``foreign`` entries of the output ``uri``
    (``what``: e.g. ``"an output of this project"``), if there are any."""
    if not foreign:
        return
    shown = ", ".join(foreign[:5])
    more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
    raise OutputExistsError(
        f"refusing to overwrite {uri!r}: it is {what} but also holds files this project did not "
        f"write ({shown}{more}); --overwrite would delete them: move them out of it, or delete "
        "the output yourself, or choose another output")


