"""Locations: one canonical identity for every path or URL the project reads or writes.

Every job resolves each location it touches once, with :func:`resolve`, and then both the
overlap guard (:func:`check_disjoint`) and the readers/writers use the resolved value, so the
guard can never disagree with what the I/O code understands (the way an input was once deleted:
the guard did not expand ``~`` but the writer did).

What counts as the same place
    * Local paths, in every spelling fsspec accepts: ``~`` and ``~user`` (also after ``=`` on a
      command line, where the shell does not expand them), relative paths and ``..``, symlinks
      (resolved with :func:`os.path.realpath`), ``file://``, ``file:``, ``local://``, and chained
      URLs ending in the local filesystem (``simplecache::file:///...``, ``filecache::/...``,
      ``zip://member::/archive.zip`` is the archive). Hard links and bind mounts are caught by
      comparing ``(st_dev, st_ino)`` of the path and its existing ancestors.
    * Remote URLs by protocol family (``s3``/``s3a``, ``gs``/``gcs``, ``az``/``abfs``,
      ``http``/``https``, ``memory``) and normalised path; two S3 URLs with explicit, different
      ``endpoint_url`` storage options are different stores, otherwise they are assumed equal.
    * GDAL ``/vsi`` paths: ``/vsis3/b/k`` is ``s3://b/k``, ``/vsigs/`` is ``gcs``, ``/vsiaz/``
      is ``az``, ``/vsicurl/URL`` is the URL, ``/vsizip/``, ``/vsitar/`` and ``/vsigzip/`` are
      the archive they open.

Two locations *overlap* when they are the same place or one lies inside the other (a file in a
Zarr folder, an output folder holding the input). Writing an output that overlaps an input
would destroy it, so :func:`check_disjoint` refuses it, before any work, naming both flags.

What a read covers (:func:`read_extent`) is more than the text given: a Zarr metadata file
(``x.zarr/zarr.json``, ``.zarray``, ``.zgroup``, ``.zattrs``, ``.zmetadata``) stands for its
whole folder (the reader opens the folder and its chunks), and a file stands with the sidecars
GDAL reads beside it, existing or not, in any letter case (``a.tif.aux.xml``, ``a.tif.ovr``,
``a.tif.msk``, ``a.aux``, world files ``a.tfw``/``a.tifw``/``a.wld``, ``a.prj``, RPC/IMD
metadata; ``scene.aux.xml`` for a name without extension): writing one would change how the
input reads.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigError, PathConflictError

__all__ = [
    "Location",
    "check_disjoint",
    "check_paths",
    "model_files",
    "read_extent",
    "resolve",
]

ZARR_METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})
_SIDECAR_SUFFIXES = (".aux.xml", ".ovr", ".msk")  # appended to the whole file name
_SIDECAR_STEM_EXTS = (".aux", ".wld", ".prj", ".rpb", ".imd", "_rpc.txt", ".rpc")

_FAMILIES = {
    "file": "file", "local": "file",
    "s3": "s3", "s3a": "s3",
    "gs": "gcs", "gcs": "gcs",
    "az": "az", "abfs": "az", "abfss": "az", "adl": "az",
    "http": "http", "https": "http",
}
_VSI_REMOTE = {"vsis3": "s3", "vsigs": "gcs", "vsiaz": "az", "vsiadls": "az", "vsioss": "oss",
               "vsiswift": "swift", "vsimem": "vsimem"}


@dataclass(frozen=True)
class Location:
    """A resolved location.

    Attributes:
        uri: the text the user gave (for messages).
        url: what the I/O code opens: the canonical absolute path for local locations, else the
            URL as given (chained URLs keep their caches).
        protocol: the physical storage family: ``file``, ``s3``, ``gcs``, ``az``, ``http``,
            ``memory``, ``vsimem``, ...
        path: the canonical physical path (no trailing ``/``): absolute and symlink-free for
            ``file``, ``bucket/key`` for object stores.
        storage_options: fsspec options for ``url``.
        endpoint: the explicit object-store endpoint, or ``None``.
    """

    uri: str
    url: str
    protocol: str
    path: str
    storage_options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    endpoint: str | None = None

    @property
    def is_local(self) -> bool:
        """A plain local path (not a chained URL): open it with the OS, not fsspec."""
        return self.protocol == "file" and self.url == self.path

    @property
    def display(self) -> str:
        """``protocol://path`` (local: the absolute path)."""
        return self.path if self.protocol == "file" else f"{self.protocol}://{self.path}"

    def fs(self) -> tuple[Any, str]:
        """``(fsspec filesystem, path)`` for I/O on ``url``."""
        import fsspec

        if self.is_local:
            from fsspec.implementations.local import LocalFileSystem

            return LocalFileSystem(), self.path
        return fsspec.core.url_to_fs(self.url, **self.storage_options)

    def child(self, name: str) -> Location:
        """The location ``name`` inside this one (``name`` may hold ``/``)."""
        name = name.strip("/")
        return Location(self.uri.rstrip("/") + "/" + name, self.url.rstrip("/") + "/" + name,
                        self.protocol, self.path.rstrip("/") + "/" + name,
                        dict(self.storage_options), self.endpoint)

    def sibling(self, name: str) -> Location:
        """The location ``name`` in this one's parent folder."""
        def swap(text: str) -> str:
            head = text.rstrip("/").rsplit("/", 1)
            return name if len(head) == 1 else head[0] + "/" + name
        return Location(swap(self.uri), swap(self.url), self.protocol, swap(self.path),
                        dict(self.storage_options), self.endpoint)

    def parent(self) -> Location:
        """The folder holding this location."""
        def up(text: str) -> str:
            head = text.rstrip("/").rsplit("/", 1)
            return "." if len(head) == 1 else (head[0] or "/")
        return Location(up(self.uri), up(self.url), self.protocol, up(self.path),
                        dict(self.storage_options), self.endpoint)

    @property
    def name(self) -> str:
        """The last path component."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def overlaps(self, other: Location) -> bool:
        """Same place, or one inside the other."""
        if self.protocol != other.protocol:
            return False
        if self.endpoint and other.endpoint and self.endpoint != other.endpoint:
            return False
        if _path_nested(self.path, other.path) or _path_nested(other.path, self.path):
            return True
        if self.protocol == "file":
            # hard links, bind mounts: the same inode as the other path or one of its ancestors
            mine, theirs = _inode_chain(self.path), _inode_chain(other.path)
            return bool((mine and mine[0] in theirs) or (theirs and theirs[0] in mine))
        return False


def _path_nested(inner: str, outer: str) -> bool:
    if inner == outer:
        return True
    if outer in ("", "/"):
        return True
    return inner.startswith(outer.rstrip("/") + "/")


def _inode_chain(path: str) -> list[tuple[int, int]]:
    """``(st_dev, st_ino)`` of ``path`` and of each of its ancestors; empty when ``path`` does
    not exist (a path that does not exist yet can only be nested by name)."""
    if not os.path.exists(path):
        return []
    chain, p = [], path
    while True:
        try:
            st = os.stat(p)
            chain.append((st.st_dev, st.st_ino))
        except OSError:
            pass
        parent = os.path.dirname(p)
        if parent == p:
            return chain
        p = parent


def _local_path(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def _remote_path(path: str) -> str:
    path = path.strip()
    norm = posixpath.normpath("/" + path.lstrip("/")).lstrip("/") if path else ""
    return norm.rstrip("/")


def _endpoint(options: dict[str, Any]) -> str | None:
    ep = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
    return str(ep).rstrip("/") if ep else None


def _resolve_vsi(uri: str, options: dict[str, Any]) -> tuple[str, str]:
    """``(protocol, path)`` of a GDAL ``/vsi...`` path."""
    head, _, rest = uri[1:].partition("/")
    head = head.rstrip(":").split("_streaming")[0]
    if head in _VSI_REMOTE:
        proto = _VSI_REMOTE[head]
        return proto, (_remote_path(rest) if proto != "vsimem" else "/" + _remote_path(rest))
    if head == "vsicurl":
        inner = rest
        if inner.startswith("http:/") and not inner.startswith("http://"):
            inner = inner.replace("http:/", "http://", 1)
        return _physical(inner, options)
    if head.startswith("vsi"):  # archives and wrappers: the file they read
        target = "/" + rest.replace("{", "").replace("}", "").lstrip("/")
        if not target.startswith("/vsi"):  # an archive member: the archive is the longest
            probe = target                  # existing prefix
            while not os.path.exists(probe) and os.path.dirname(probe) != probe:
                probe = os.path.dirname(probe)
            if probe != "/" and os.path.exists(probe):
                target = probe
        return _physical(target, options)
    return "file", _local_path(uri)


def _physical(uri: str, options: dict[str, Any]) -> tuple[str, str]:
    """``(protocol family, canonical path)`` of the storage that ``uri`` finally reads."""
    if uri.startswith("/vsi"):
        return _resolve_vsi(uri, options)
    import fsspec.core

    try:
        chain = fsspec.core._un_chain(uri, {})
        last_path, last_proto = chain[-1][0], chain[-1][1]
    except (ImportError, ValueError, KeyError):
        # a protocol whose implementation is not installed: parse it by hand
        last = uri.split("::")[-1]
        if "://" in last:
            last_proto, last_path = last.split("://", 1)
        else:
            last_proto, last_path = "file", last
    if isinstance(last_proto, tuple | list):
        last_proto = last_proto[0]
    family = _FAMILIES.get(str(last_proto).lower(), str(last_proto).lower())
    if family == "file":
        return "file", _local_path(last_path)
    if family == "http":
        text = last_path.split("://", 1)[-1]
        return "http", _remote_path(text)
    if family == "memory":
        return "memory", "/" + _remote_path(last_path)
    return family, _remote_path(last_path)


def resolve(uri: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> Location:
    """Resolve ``uri`` (local path or fsspec URL) to its :class:`Location`.

    Raises:
        ConfigError: ``uri`` is empty or not a string.
    """
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(f"a location must be a non-empty path or URL, got {uri!r}")
    options = dict(storage_options or {})
    protocol, path = _physical(uri, options)
    chained = "::" in uri
    if protocol == "file" and not chained and not uri.startswith("/vsi"):
        url = path  # I/O uses the canonical path: Ray workers may run in another directory
    else:
        url = uri
    return Location(uri=uri, url=url, protocol=protocol, path=path, storage_options=options,
                    endpoint=_endpoint(options) if protocol != "file" else None)


Role = tuple[str, Location | None]


def read_extent(loc: Location) -> list[tuple[Location, str]]:
    """Every location a read of ``loc`` depends on, each with a note for messages: the folder
    for a Zarr metadata file, else ``loc`` itself plus, for a file name with an extension, the
    sidecars GDAL reads beside it (existing or not)."""
    name = loc.name
    if name in ZARR_METADATA_NAMES and "/" in loc.path.strip("/"):
        return [(loc.parent(), f"the Zarr store that {name} describes")]
    stem, ext = posixpath.splitext(name)
    out = [(loc, "")]
    names = [name + suffix for suffix in _SIDECAR_SUFFIXES]  # also for names without extension
    if ext and stem:
        names += [stem + e for e in _SIDECAR_STEM_EXTS]
        # world files: .tfw / .tifw for .tif, .jgw / .jpgw for .jpg, ... (first + last letter + w)
        names += [stem + ext[:2] + ext[-1] + "w", stem + ext + "w"]
    out += [(loc.sibling(n), f"a sidecar GDAL reads with {name}") for n in dict.fromkeys(names)]
    return out


def _hits(out: Location, part: Location, sidecar: bool) -> bool:
    """``out`` overlaps ``part``; for a sidecar also when only the case differs (GDAL looks for
    ``a.TFW``, ``a.tif.OVR`` as well as the lower-case names)."""
    if out.overlaps(part):
        return True
    return (sidecar and out.protocol == part.protocol and out.name.lower() == part.name.lower()
            and out.parent().path == part.parent().path)


def check_disjoint(writes: Sequence[Role], reads: Iterable[Role]) -> None:
    """Refuse any written location that overlaps a read one, or another written one.

    ``writes`` and ``reads`` are ``(role, location)`` pairs, e.g. ``("--output", loc)``;
    ``None`` locations are skipped.

    Raises:
        PathConflictError: naming both roles, the values given and where they resolve to.
    """
    outs = [(r, loc) for r, loc in writes if loc is not None]
    ins = [(r, loc) for r, loc in reads if loc is not None]
    for role, out in outs:
        for in_role, src in ins:
            for part, note in read_extent(src):
                if _hits(out, part, sidecar=note.startswith("a sidecar")):
                    raise PathConflictError(_conflict(role, out, in_role, part, "read", note))
    for i, (role, out) in enumerate(outs):
        for other_role, other in outs[i + 1:]:
            if out.overlaps(other):
                raise PathConflictError(_conflict(other_role, other, role, out, "written"))


def _conflict(role: str, out: Location, other_role: str, other: Location, verb: str,
              note: str = "") -> str:
    how = "is the same location as" if out.path == other.path else (
        "lies inside" if _path_nested(out.path, other.path) else
        "contains" if _path_nested(other.path, out.path) else "is the same file as")
    where = f" (both resolve to {out.display!r})" if out.path == other.path else (
        f" ({out.display!r} and {other.display!r})")
    harm = ("writing it could destroy or change what the job reads" if verb == "read"
            else "two outputs of the job would overwrite each other")
    what = f"{other_role} {other.uri!r}" + (f" ({note})" if note else "")
    return (f"{role} {out.uri!r} {how} {what}{where}: {harm}; "
            f"choose another {role}")


def _static_part(uri: str) -> str:
    """The part of a glob pattern before its first wildcard, cut back to a whole component."""
    cut = min((i for i, ch in enumerate(uri) if ch in "*?["), default=None)
    if cut is None:
        return uri
    head = uri[:cut]
    return head.rsplit("/", 1)[0] if "/" in head else "."


def check_paths(writes: dict[str, str | None], reads: dict[str, str | Iterable[str] | None],
                storage_options: dict[str, Any] | None = None) -> None:
    """:func:`check_disjoint` on raw texts: ``{"--out": path}`` against ``{"--data": [paths]}``.

    Read patterns with wildcards count as the folder they search (everything under it is read);
    ``None`` values are skipped.

    Raises:
        PathConflictError: an output overlaps an input or another output.
    """
    outs = [(role, resolve(text, storage_options)) for role, text in writes.items() if text]
    ins: list[Role] = []
    for role, value in reads.items():
        if value is None:
            continue
        for text in [value] if isinstance(value, str | os.PathLike) else value:
            if text:
                ins.append((role, resolve(_static_part(os.fspath(text)), storage_options)))
    check_disjoint(outs, ins)


def model_files(*refs: str | None) -> list[str]:
    """Those of ``refs`` that name an existing file (a bundled model name is not a path)."""
    return [os.path.expanduser(r) for r in refs if r and os.path.isfile(os.path.expanduser(r))]
