"""Listing and deleting an output folder without ever following a symbolic link: the I/O half
of :mod:`pipeline.io.ownership` (which decides what in the listing is ours).

Entries are ``(relative posix path, kind)`` with kind ``"file"``, ``"dir"``, ``"link"`` (a
symbolic link) or ``"other"`` (a device, pipe or socket). :func:`remove_listed` deletes exactly
the entries it is given: locally it walks the folder with directory file descriptors opened with
``O_NOFOLLOW``, so a link that appears between the check and the delete is not followed; anything
not listed (a file added meanwhile) is kept and reported.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterable, Sequence
from typing import Any

from pipeline.errors import OutputExistsError
from pipeline.io.locations import Location

__all__ = ["Entry", "Tree", "list_tree", "read_bytes", "read_json", "remove_listed"]

Entry = tuple[str, str]

# ------------------------------------------------------------------------------------ listing


class Tree(list[Entry]):
    """The entries :func:`list_tree` found, and the folder they were found in (``loc``), so
    that :func:`zarr_foreign` can read the metadata of the very output they were listed from."""

    def __init__(self, entries: Iterable[Entry], loc: Location) -> None:
        super().__init__(entries)
        self.loc = loc


def list_tree(loc: Location) -> Tree:
    """Every entry under the folder ``loc`` (not ``loc`` itself), parents before children.

    Local folders (also behind a chained ``file`` URL) are listed with the OS, without
    following symbolic links; other stores with fsspec's ``find``. The contents of a directory
    that is a link are not listed (the link is one ``"link"`` entry)."""
    if loc.protocol == "file":
        return Tree(_list_local(loc.path), loc)
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
    return Tree(out, loc)


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


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def read_bytes(loc: Location, rel: str) -> bytes:
    """The bytes of the regular file ``rel`` under ``loc`` (locally never through a link at
    ``rel``, nor blocking on a pipe put there meanwhile)."""
    if loc.protocol == "file":
        fd = os.open(os.path.join(loc.path, *rel.split("/")), _READ_FLAGS)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            with os.fdopen(os.dup(fd), "rb") as f:
                return f.read()
        finally:
            os.close(fd)
    fs, path = loc.child(rel).fs()
    return bytes(fs.cat_file(path))


def read_json(loc: Location, rel: str) -> Any:
    """``rel`` parsed as JSON; ValueError (naming the reason) when it cannot be read or parsed."""
    try:
        return json.loads(read_bytes(loc, rel))
    except OSError as exc:
        raise ValueError(f"{rel} cannot be read: {exc}") from exc
    except ValueError as exc:  # UnicodeDecodeError and json's errors included
        raise ValueError(f"{rel} is not valid JSON: {exc}") from exc


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
