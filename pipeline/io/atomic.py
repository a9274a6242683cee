"""Atomic writes of single files (summaries, exports, records) and checks of their targets.

A file a job writes appears whole or not at all: locally it is written to a hidden temporary
name in the same folder and renamed into place (``os.replace``); on object stores one PUT is
atomic. :func:`check_target` runs before any work, so a refused target costs nothing.

Only our own files are ever replaced: every single file the project writes carries a
``created_by: liif-pipeline`` mark at a place fixed by its format (:mod:`pipeline.io.marks`), and
an existing target without it is refused even with ``--overwrite`` (:func:`written_by_us`).
"""

from __future__ import annotations

import os
import tempfile
import uuid

from pipeline.errors import OutputExistsError, OutputNotWritableError
from pipeline.io.locations import Location
from pipeline.io.marks import has_our_mark

__all__ = ["check_target", "deliver", "exists", "local_tmp", "write_bytes", "written_by_us"]

def written_by_us(loc: Location) -> bool:
    """Whether the existing file ``loc`` carries our ``created_by`` mark where its format puts
    it (:func:`pipeline.io.marks.has_our_mark`)."""
    try:
        if loc.is_local:
            if not os.path.isfile(loc.path):
                return False
            with open(loc.path, "rb") as fh:
                return has_our_mark(fh)
        fs, path = loc.fs()
        with fs.open(path, "rb") as fh:
            return has_our_mark(fh)
    except OSError:
        return False


def exists(loc: Location) -> bool:
    """Something is at ``loc``: a file, or a directory (prefix) that is not empty."""
    if loc.is_local:
        if os.path.isdir(loc.path):
            return bool(os.listdir(loc.path))
        return os.path.lexists(loc.path)
    fs, path = loc.fs()
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return False
    if fs.isfile(path):
        return True
    return bool(fs.ls(path, detail=False))


def _local_parent_ok(loc: Location, role: str) -> None:
    parent = os.path.dirname(loc.path)
    if not os.path.isdir(parent):
        raise OutputNotWritableError(
            f"cannot write {role} {loc.uri!r}: the folder {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputNotWritableError(
            f"cannot write {role} {loc.uri!r}: the folder {parent!r} is not writable")


def check_target(loc: Location, *, overwrite: bool, role: str = "output") -> None:
    """Fail now if writing the single file ``loc`` would be refused later.

    Raises:
        OutputExistsError: something is there and ``overwrite`` is False, or it is a folder.
        OutputNotWritableError: a local parent folder that is missing or not writable.
    """
    if loc.is_local:
        if os.path.isdir(loc.path):
            raise OutputExistsError(
                f"{role} {loc.uri!r} is a folder; give a file name")
        if os.path.exists(loc.path) and not os.path.isfile(loc.path):
            # a rename onto a device or pipe would replace the device node itself
            raise OutputExistsError(
                f"{role} {loc.uri!r} is not a regular file (a device, socket or pipe); give a "
                "file name")
        if os.path.lexists(loc.path) and not overwrite:
            raise OutputExistsError(
                f"{role} {loc.uri!r} already exists; pass --overwrite to replace it")
        if os.path.lexists(loc.path):
            _refuse_foreign(loc, role)
        _local_parent_ok(loc, role)
        return
    fs, path = loc.fs()
    fs.invalidate_cache(path)
    if fs.exists(path):
        if fs.isdir(path):
            raise OutputExistsError(f"{role} {loc.uri!r} is a folder; give a file name")
        if not overwrite:
            raise OutputExistsError(
                f"{role} {loc.uri!r} already exists; pass --overwrite to replace it")
        _refuse_foreign(loc, role)


def _refuse_foreign(loc: Location, role: str) -> None:
    if not written_by_us(loc):
        raise OutputExistsError(
            f"{role} {loc.uri!r} already exists and was not written by liif-pipeline (no "
            "created_by mark), so it is never replaced, with or without --overwrite; move it "
            "away or choose another path")


def local_tmp(loc: Location, suffix: str) -> str:
    """A hidden temporary file name next to a local ``loc`` (same filesystem, so the final
    rename is atomic), else in ``$TMPDIR`` (uploaded by :func:`deliver`)."""
    if loc.is_local:
        _local_parent_ok(loc, "file")
        parent = os.path.dirname(loc.path)
        return os.path.join(parent, f".{os.path.basename(loc.path)}.{uuid.uuid4().hex}{suffix}")
    return os.path.join(tempfile.gettempdir(), f"liif-{uuid.uuid4().hex}{suffix}")


def deliver(tmp: str, loc: Location) -> None:
    """Move the finished local file ``tmp`` to ``loc`` (a rename, or one upload)."""
    if loc.is_local:
        os.replace(tmp, loc.path)
        return
    fs, path = loc.fs()
    fs.put_file(tmp, path)
    os.remove(tmp)


def write_bytes(loc: Location, payload: bytes, *, make_parents: bool = False) -> None:
    """Write ``payload`` to ``loc`` atomically (whole or not at all); ``make_parents`` creates
    missing local folders first."""
    if loc.is_local:
        if make_parents:
            os.makedirs(os.path.dirname(loc.path), exist_ok=True)
        tmp = local_tmp(loc, ".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(payload)
            os.replace(tmp, loc.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    fs, path = loc.fs()
    fs.pipe_file(path, payload)
    fs.invalidate_cache(path.rsplit("/", 1)[0])
