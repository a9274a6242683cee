"""Record of finished output tiles, for resuming an interrupted job.

Zarr does not write chunks equal to the fill value, so "chunk exists" does not mean "tile done".
Each worker instead records a tile *after* all of its chunks are written, as one small JSON object
``<uri>/_manifest/<tile_key>.json``::

    {"key": "r0003_c0012", "out_window": [[r0, r1], [c0, c1]], "seconds": 1.84,
     "worker": "host:pid", "finished_at": "2025-01-31T12:00:00.123456+00:00"}

One object per tile means no two workers ever write the same object, on any filesystem. On local
disks a record is written to a hidden temporary name and renamed into place, so a reader never
sees a half-written record; object stores (S3, GCS, ...) make a single PUT visible atomically.

``_manifest`` sits inside the output's Zarr group; :mod:`pipeline.io.zarr_output` makes it an empty Zarr
subgroup (``_manifest/zarr.json``) so that listing the output group stays warning-free. Records
are not Zarr nodes; ``zarr.json`` there is never treated as a record, nor is a file whose name is
not a valid tile key.

A record that exists but cannot be read back (empty after a full disk, truncated by a copy, not
a JSON object, or lacking ``key``/``finished_at``; or not a regular file at all: a folder, a FIFO,
a device, a link to one; or a read that the OS refuses) proves nothing: :meth:`TileManifest.record`
raises :class:`~pipeline.errors.OutputCorruptError` naming the file, and a resume treats the
tile as not finished. Redoing it replaces such a record: a link, FIFO or device node is
unlinked (never what it points to), an empty folder removed; a folder that holds anything is
never deleted (it may be the user's): :meth:`~TileManifest.forget` and
:meth:`~TileManifest.mark_done` refuse it, naming it.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import re
import stat
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import OutputCorruptError
from pipeline.io.atomic import write_bytes
from pipeline.io.locations import resolve

__all__ = ["MANIFEST_DIR", "TileManifest"]

MANIFEST_DIR = "_manifest"
_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")
_RESERVED = frozenset({"zarr"})  # would collide with the subgroup's zarr.json
_REQUIRED = ("key", "finished_at")  # what mark_done writes into every record


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key) or key in _RESERVED:
        raise ValueError(
            f"invalid tile key {key!r}: use 1-200 characters from A-Z a-z 0-9 _ . -, not starting "
            f"with '.' or '-', and not {sorted(_RESERVED)}"
        )
    return key


def _record_problem(key: str, rec: Any) -> str:
    """Why ``rec`` (parsed JSON) is not a record of tile ``key``; empty when it is one."""
    if not isinstance(rec, dict):
        return f"is not a JSON object but {type(rec).__name__} {str(rec)[:40]!r}"
    missing = [k for k in _REQUIRED if k not in rec]
    if missing:
        return f"lacks {' and '.join(repr(k) for k in missing)}"
    if rec["key"] != key:
        return f"names tile {rec['key']!r}, not {key!r}"
    return ""


def _kind(mode: int) -> str:
    """What a non-regular file of mode ``mode`` is, for messages."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _read_local(path: str) -> bytes | None:
    """The bytes of the local record ``path``; None when there is none (also a symbolic link
    to nothing). The file type is checked before opening (opening a device can act on it) and
    again on the open file (non-blocking: a FIFO swapped in meanwhile must not hang the job).

    Raises:
        OutputCorruptError: it is not a regular file (also through a link), or cannot be read.
    """
    def unreadable(exc: OSError) -> OutputCorruptError:
        return OutputCorruptError(
            f"manifest record {path!r} cannot be read ({exc.strerror or exc})")

    def not_a_file(mode: int) -> OutputCorruptError:
        via = " (through a symbolic link)" if os.path.islink(path) else ""
        return OutputCorruptError(
            f"manifest record {path!r} is {_kind(mode)}{via}, not a record file")

    try:
        st = os.stat(path)  # follows a link: what a read would open
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise unreadable(exc) from exc
    if not stat.S_ISREG(st.st_mode):
        raise not_a_file(st.st_mode)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:  # removed meanwhile
        return None
    except OSError as exc:
        raise unreadable(exc) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise not_a_file(mode)
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            return fh.read()
    except OSError as exc:
        raise unreadable(exc) from exc
    finally:
        if fd >= 0:
            os.close(fd)


def _folder_in_the_way(where: str, key: str) -> OutputCorruptError:
    return OutputCorruptError(
        f"manifest record {where!r} of tile {key} is a folder that is not empty, not a record; "
        "it is not deleted (it may hold your files): move it out of the output, then rerun with "
        "--resume")


class TileManifest:
    """Done-tile records stored under ``<uri>/_manifest/`` (uri: local path or fsspec URL).

    Picklable: only ``uri`` and ``storage_options`` travel; the filesystem is made on first use.
    """

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = uri
        self.storage_options = dict(storage_options or {})
        self._fs: fsspec.AbstractFileSystem | None = None
        self._dir: str | None = None

    def __repr__(self) -> str:
        return f"TileManifest({self.uri!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"], state["storage_options"])  # type: ignore[misc]

    @property
    def _fs_dir(self) -> tuple[fsspec.AbstractFileSystem, str]:
        if self._fs is None or self._dir is None:
            fs, root = resolve(self.uri, self.storage_options).fs()
            self._fs, self._dir = fs, root.rstrip("/") + "/" + MANIFEST_DIR
        return self._fs, self._dir

    def _path(self, key: str) -> str:
        return f"{self._fs_dir[1]}/{_check_key(key)}.json"

    def mark_done(self, key: str, record: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record tile ``key`` as finished; call only after all its chunks are written.

        ``record`` supplies ``out_window``, ``seconds``, ``worker`` (and any extra JSON keys);
        ``key`` is set and ``finished_at`` (UTC, ISO 8601) added when absent. Returns the stored
        record. Marking a key again replaces its record.
        """
        rec: dict[str, Any] = dict(record or {})
        if "key" in rec and rec["key"] != key:
            raise ValueError(f"record['key'] is {rec['key']!r} but the tile key is {key!r}")
        rec["key"] = key
        rec.setdefault("finished_at", _dt.datetime.now(_dt.UTC).isoformat())
        try:
            payload = json.dumps(rec, sort_keys=True, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"manifest record for {key!r} is not plain JSON: {exc}") from exc
        fs, directory = self._fs_dir
        loc = resolve(self.uri, self.storage_options).child(f"{MANIFEST_DIR}/{_check_key(key)}.json")
        if isinstance(fs, LocalFileSystem):
            os.makedirs(directory, exist_ok=True)
            path = self._path(key)
            if os.path.isdir(path) and not os.path.islink(path):
                self._remove_local(path, key)  # a rename cannot replace a folder
        write_bytes(loc, payload)
        return rec

    def forget(self, key: str) -> None:
        """Delete tile ``key``'s record (the tile is no longer trusted as done).

        Whatever is at the record's name goes: a file, a link (never its target), a FIFO or
        device node, an empty folder.

        Raises:
            OutputCorruptError: a folder that holds anything is there (it is never deleted).
        """
        fs, _ = self._fs_dir
        path = self._path(key)
        if isinstance(fs, LocalFileSystem):
            self._remove_local(path, key)
            return
        where = fs.unstrip_protocol(path)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            if self._is_prefix(fs, path):
                try:  # an empty folder goes; a prefix holding objects stays (not ours), and
                    fs.rmdir(path)  # the next record is written beside it, as an object
                except OSError:
                    pass
        except OSError as exc:
            if not self._is_prefix(fs, path):
                raise OutputCorruptError(
                    f"manifest record {where!r} of tile {key} cannot be removed ({exc}); "
                    "remove it, then rerun with --resume") from exc
            try:
                fs.rmdir(path)
            except OSError as exc2:
                raise _folder_in_the_way(where, key) from exc2
        fs.invalidate_cache(self._fs_dir[1])

    @staticmethod
    def _remove_local(path: str, key: str) -> None:
        try:
            os.unlink(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if not (os.path.isdir(path) and not os.path.islink(path)):
                raise OutputCorruptError(
                    f"manifest record {path!r} of tile {key} cannot be removed "
                    f"({exc.strerror or exc}); remove it, then rerun with --resume") from exc
        try:
            os.rmdir(path)  # only an empty folder
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise _folder_in_the_way(path, key) from exc
            raise OutputCorruptError(
                f"manifest record {path!r} of tile {key} is a folder that cannot be removed "
                f"({exc.strerror or exc}); remove it, then rerun with --resume") from exc

    def is_done(self, key: str) -> bool:
        """Whether tile ``key`` has a record."""
        fs, directory = self._fs_dir
        path = self._path(key)
        fs.invalidate_cache(directory)
        return bool(fs.exists(path))

    def record(self, key: str) -> dict[str, Any] | None:
        """The stored record of tile ``key``, or None when it has none.

        Raises:
            OutputCorruptError: the record exists but is not one :meth:`mark_done` wrote (empty,
                not UTF-8 JSON, not an object, without ``key``/``finished_at`` or naming another
                tile; not a regular file, e.g. a folder; or the read failed): it proves nothing
                about the tile. The message names the file.
        """
        fs, _ = self._fs_dir
        path = self._path(key)
        where = path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)
        if isinstance(fs, LocalFileSystem):
            raw = _read_local(path)
            if raw is None:
                return None
        else:
            try:
                raw = fs.cat_file(path)
            except FileNotFoundError:
                if self._is_prefix(fs, path):
                    raise OutputCorruptError(
                        f"manifest record {where!r} is a folder (prefix), not a record file"
                    ) from None
                return None
            except OSError as exc:  # IsADirectoryError, permission, transport
                raise OutputCorruptError(
                    f"manifest record {where!r} cannot be read ({exc})") from exc
        try:
            rec = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            why = "is empty" if not raw.strip() else f"is not valid JSON ({exc})"
        else:
            why = _record_problem(key, rec)
        if why:
            raise OutputCorruptError(f"manifest record {where!r} {why}")
        return rec

    @staticmethod
    def _is_prefix(fs: fsspec.AbstractFileSystem, path: str) -> bool:
        """Whether a folder (an object-store prefix) is at ``path``, where no file is."""
        try:
            return bool(fs.isdir(path))
        except OSError:
            return False

    def done_keys(self) -> set[str]:
        """Keys of all finished tiles, from one directory listing (empty if none yet)."""
        fs, directory = self._fs_dir
        fs.invalidate_cache(directory)
        try:
            names = fs.ls(directory, detail=False)
        except FileNotFoundError:
            return set()
        keys = set()
        for name in names:
            base = name.rstrip("/").rsplit("/", 1)[-1]
            if base.endswith(".json") and not base.startswith("."):
                key = base[: -len(".json")]
                if _KEY_RE.fullmatch(key) and key not in _RESERVED:  # else not a record
                    keys.add(key)
        return keys

    def clear(self) -> None:
        """Delete every record and stale temporary file (keeps the subgroup's metadata:
        ``zarr.json``, or ``.zgroup``/``.zattrs`` in Zarr v2)."""
        fs, directory = self._fs_dir
        fs.invalidate_cache(directory)
        try:
            names = fs.ls(directory, detail=False)
        except FileNotFoundError:
            return
        doomed = [n for n in names
                  if n.rstrip("/").rsplit("/", 1)[-1] not in ("zarr.json", ".zgroup", ".zattrs")]
        if doomed:
            fs.rm(doomed, recursive=True)
        fs.invalidate_cache(directory)
