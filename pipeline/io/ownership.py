"""What ``--overwrite`` may delete: only the files a job of this project writes into its output.

``--overwrite`` replaces an output of this project (a Zarr output group with the
``created_by`` marker, a ground-truth folder with its ``_manifest.json``) by deleting it first.
Users put their own files inside such folders (notes, plots, a symlink to other data); deleting
the folder wholesale would destroy them without a word. So before anything is deleted, the
output is listed in full and every entry is checked against the layout this project writes
(:func:`zarr_foreign`, :func:`gt_foreign`). If anything else is there, :func:`refuse_foreign`
raises :class:`~pipeline.errors.OutputExistsError` naming the first few entries; nothing is
deleted.

Symbolic links, devices, pipes and sockets are never ours: they are always foreign (a link's
target is never looked at, let alone deleted). :func:`remove_listed` deletes exactly the entries
that were listed and found ours: locally it walks the folder with directory file descriptors
opened with ``O_NOFOLLOW``, so a link that appears between the check and the delete is not
followed; anything it did not list (a file added meanwhile) is kept and reported.

Entries are ``(relative posix path, kind)`` with kind ``"file"``, ``"dir"``, ``"link"`` (a
symbolic link) or ``"other"`` (a device, pipe or socket).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import PurePosixPath

from pipeline.errors import OutputExistsError
from pipeline.io.locations import Location

__all__ = ["gt_foreign", "list_tree", "refuse_foreign", "remove_listed", "zarr_foreign"]

Entry = tuple[str, str]

_HEX32 = r"[0-9a-f]{32}"
# pipeline.io.atomic.local_tmp(loc, ".tmp"): ".<name>.<uuid4 hex>.tmp" beside the target
_ATOMIC_TMP = re.compile(rf"\.(?P<name>.+)\.{_HEX32}\.tmp")
# zarr's LocalStore (_atomic_write): path.with_suffix(".<uuid4 hex>.partial") beside the target
_ZARR_PARTIAL = re.compile(rf"(?P<stem>.+)\.{_HEX32}\.partial")

# ------------------------------------------------------------------------------------ listing


def list_tree(loc: Location) -> list[Entry]:
    """Every entry under the folder ``loc`` (not ``loc`` itself), parents before children.

    Local folders (also behind a chained ``file`` URL) are listed with the OS, without
    following symbolic links; other stores with fsspec's ``find``. The contents of a directory
    that is a link are not listed (the link is one ``"link"`` entry)."""
    if loc.protocol == "file":
        return _list_local(loc.path)
    fs, root = loc.fs()
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    found = fs.find(root, withdirs=True, detail=True)
    out = []
    for name, info in sorted(found.items()):
        name = name.rstrip("/")
        if name == root or not name.startswith(root + "/"):
            continue
        rel = name[len(root) + 1:]
        if info.get("islink"):
            kind = "link"
        elif info.get("type") == "directory":
            kind = "dir"
        elif info.get("type") == "file":
            kind = "file"
        else:
            kind = "other"
        out.append((rel, kind))
    return out


def _list_local(root: str) -> list[Entry]:
    out: list[Entry] = []

    def walk(path: str, rel: str) -> None:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            r = f"{rel}{e.name}"
            if e.is_symlink():
                out.append((r, "link"))
            elif e.is_dir(follow_symlinks=False):
                out.append((r, "dir"))
                walk(e.path, r + "/")
            elif e.is_file(follow_symlinks=False):
                out.append((r, "file"))
            else:
                out.append((r, "other"))

    walk(root, "")
    return out


# ------------------------------------------------------------------------- the Zarr output

_N = re.compile(r"[1-9][0-9]*")  # overview levels
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")  # product labels: x4, x2.5, x2_3, 4000x3000
_DIGITS = re.compile(r"[0-9]+")
_V2_CHUNK = re.compile(r"[0-9]+(\.[0-9]+)*")  # "0.1.2" (v2, '.' separator)
_V3_DOT_CHUNK = re.compile(r"c(\.[0-9]+)+")  # "c.0.1.2" (v3 default encoding, '.' separator)
_GROUP_META = frozenset({"zarr.json", ".zgroup", ".zattrs"})
_ARRAY_META = frozenset({"zarr.json", ".zarray", ".zattrs"})
_COORDS = ("x", "y")  # the v2 layout's coordinate arrays


def _is_group(p: Sequence[str]) -> bool:
    """``p`` (parts relative to the output) is a Zarr group this project creates."""
    n = len(p)
    if n == 0:
        return True
    if n == 1:
        return p[0] in ("overviews", "scales", "_manifest")
    if p[0] != "scales" or not _LABEL.fullmatch(p[1]):
        return False
    return n == 2 or (n == 3 and p[2] == "overviews")


def _is_array(p: Sequence[str]) -> bool:
    """``p`` is a Zarr array this project creates: ``image``, ``x``/``y`` (v2),
    ``overviews/<n>``, ``scales/<label>/image`` (+ its ``x``/``y`` and ``overviews/<n>``)."""
    n = len(p)
    if n == 1:
        return p[0] == "image" or p[0] in _COORDS
    if n == 2:
        return p[0] == "overviews" and bool(_N.fullmatch(p[1]))
    if n < 3 or p[0] != "scales" or not _LABEL.fullmatch(p[1]):
        return False
    if n == 3:
        return p[2] == "image" or p[2] in _COORDS
    return n == 4 and p[2] == "overviews" and bool(_N.fullmatch(p[3]))


def _meta_or_partial(name: str, meta: frozenset[str]) -> bool:
    if name in meta:
        return True
    m = _ZARR_PARTIAL.fullmatch(name)
    return m is not None and m["stem"] in {PurePosixPath(n).stem for n in meta}


def _chunk_name(name: str) -> bool:
    """A chunk (or shard) file name as zarr stores it, or zarr's temporary file of one."""
    m = _ZARR_PARTIAL.fullmatch(name)
    if m:
        return bool(_V2_CHUNK.fullmatch(m["stem"]))
    return bool(_V2_CHUNK.fullmatch(name) or _V3_DOT_CHUNK.fullmatch(name))


def _in_array(inner: Sequence[str], kind: str) -> bool:
    """``inner`` (parts below an array's folder) is the array's metadata or one of its chunks:
    ``c/<i>/<j>/...`` (v3), ``<i>.<j>...`` or ``<i>/<j>/...`` (v2); directories on the way."""
    if kind == "dir":
        head = inner[1:] if inner[0] == "c" else inner
        return all(_DIGITS.fullmatch(x) for x in head)
    if kind != "file":
        return False
    if len(inner) == 1:
        return _meta_or_partial(inner[0], _ARRAY_META) or _chunk_name(inner[0])
    head = inner[1:-1] if inner[0] == "c" else inner[:-1]
    return all(_DIGITS.fullmatch(x) for x in head) and _chunk_name(inner[-1])


def _manifest_record(name: str) -> bool:
    from pipeline.io.manifest import _check_key

    if not name.endswith(".json"):
        return False
    try:
        _check_key(name[:-len(".json")])
    except ValueError:
        return False
    return True


def _zarr_ours(rel: str, kind: str) -> bool:
    p = tuple(rel.split("/"))
    for k in range(1, len(p) + 1):
        if _is_array(p[:k]):
            return (kind == "dir") if k == len(p) else _in_array(p[k:], kind)
    if kind == "dir":
        return _is_group(p)
    if kind != "file" or not _is_group(p[:-1]):
        return False
    name = p[-1]
    if _meta_or_partial(name, _GROUP_META):
        return True
    if p[:-1] == ("_manifest",):
        m = _ATOMIC_TMP.fullmatch(name)
        return _manifest_record(m["name"] if m else name)
    return False


def zarr_foreign(entries: Iterable[Entry]) -> list[str]:
    """The entries of a Zarr output folder that this project does not write (a foreign folder
    is named once, not with everything inside it); each as its relative path, ``/`` after a
    folder, `` (symlink)`` after a link."""
    return _foreign(entries, _zarr_ours)


# --------------------------------------------------------------------- the ground-truth output

_SHARD = re.compile(r"part-[0-9]+\.parquet")


def _gt_ours(rel: str, kind: str, manifests: frozenset[str], shard_dir: str) -> bool:
    p = rel.split("/")
    if len(p) == 1:
        name = p[0]
        if kind == "dir":
            return name == shard_dir
        m = _ATOMIC_TMP.fullmatch(name)
        return kind == "file" and (m["name"] if m else name) in manifests
    if len(p) == 2 and p[0] == shard_dir and kind == "file":
        m = _ATOMIC_TMP.fullmatch(p[1])
        return bool(_SHARD.fullmatch(m["name"] if m else p[1]))
    return False


def gt_foreign(entries: Iterable[Entry], manifests: Iterable[str], shard_dir: str) -> list[str]:
    """The entries of a ground-truth folder that this project does not write: anything but
    the ``manifests`` (``_manifest.json``, ``manifest.json``), ``<shard_dir>/part-<n>.parquet``
    and the atomic writer's temporary files of those (dot files are not exempt)."""
    names = frozenset(manifests)
    return _foreign(entries, lambda rel, kind: _gt_ours(rel, kind, names, shard_dir))


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


# ------------------------------------------------------------------------------------ deleting


def remove_listed(loc: Location, entries: Sequence[Entry]) -> None:
    """Delete the folder ``loc``: exactly the ``"file"`` and ``"dir"`` entries of ``entries``
    (checked to be ours), then the folder itself. Never follows a symbolic link; an entry that
    is not listed (or whose kind changed) is kept, and then OutputExistsError names it.
    """
    files = {rel for rel, kind in entries if kind == "file"}
    dirs = {rel for rel, kind in entries if kind == "dir"}
    if loc.protocol == "file":
        kept = _remove_local(loc.path, files, dirs)
    else:
        kept = _remove_remote(loc, files, dirs)
    if kept:
        shown = ", ".join(kept[:5]) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
        raise OutputExistsError(
            f"while replacing {loc.uri!r}, files this project did not write appeared in it "
            f"({shown}); they were kept, the rest was deleted: move them out of it, or delete "
            "the output yourself, and run again")


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)


def _remove_local(root: str, files: set[str], dirs: set[str]) -> list[str]:
    kept: list[str] = []
    if os.unlink in os.supports_dir_fd and os.open in os.supports_dir_fd:
        try:
            fd = os.open(root, _DIR_FLAGS)
        except FileNotFoundError:
            return []
        try:
            _remove_fd(fd, "", files, dirs, kept)
        finally:
            os.close(fd)
    else:  # pragma: no cover - platforms without dir_fd (Windows)
        _remove_paths(root, files, dirs, kept)
    if not kept:
        try:
            os.rmdir(root)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            kept.append(os.path.basename(root) + "/ (not empty)")
    return kept


def _remove_fd(fd: int, rel: str, files: set[str], dirs: set[str], kept: list[str]) -> None:
    for name in sorted(os.listdir(fd)):
        r = rel + name
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:  # gone meanwhile
            continue
        if stat.S_ISDIR(st.st_mode) and r in dirs:
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:  # replaced by a link meanwhile (O_NOFOLLOW): keep it
                kept.append(r)
                continue
            try:
                before = len(kept)
                _remove_fd(sub, r + "/", files, dirs, kept)
            finally:
                os.close(sub)
            if len(kept) == before:
                os.rmdir(name, dir_fd=fd)
        elif stat.S_ISREG(st.st_mode) and r in files:
            os.unlink(name, dir_fd=fd)
        else:
            kept.append(r + ("/" if stat.S_ISDIR(st.st_mode) else ""))


def _remove_paths(root: str, files: set[str], dirs: set[str],
                  kept: list[str]) -> None:  # pragma: no cover - see _remove_local
    for rel in sorted(files):
        path = os.path.join(root, *rel.split("/"))
        if os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)
    for rel in sorted(dirs, key=lambda r: -r.count("/")):
        path = os.path.join(root, *rel.split("/"))
        try:
            os.rmdir(path)
        except OSError:
            kept.append(rel + "/")


def _remove_remote(loc: Location, files: set[str], dirs: set[str]) -> list[str]:
    fs, root = loc.fs()
    root = root.rstrip("/")
    if files:
        fs.rm(sorted(f"{root}/{rel}" for rel in files))
    fs.invalidate_cache(root)
    left = [rel + ("/" if kind == "dir" else "") for rel, kind in list_tree(loc)
            if kind != "dir" or rel not in dirs]
    if left:
        return left
    for rel in sorted(dirs, key=lambda r: -r.count("/")) + [""]:
        try:  # pseudo-directories (memory://); object stores have none left
            fs.rmdir(f"{root}/{rel}".rstrip("/"))
        except (OSError, ValueError, NotImplementedError):
            pass
    fs.invalidate_cache(root)
    return []
