"""A lease on an output: one job writes an output at a time.

The lease is a small JSON record beside the output, ``.<name>.lease.json`` in the output's
parent folder (so deleting and recreating the output under ``--overwrite`` keeps it)::

    {"format": "liif-pipeline-lease/1", "output": "/data/out.zarr", "token": "9f...",
     "host": "node-3", "pid": 4711, "pid_start": "88123", "started_at": 1764590000.0,
     "heartbeat_at": 1764590042.5, "command": "python -m jobs.upscale ..."}

It is created exclusively (a hard link of a finished temporary file locally, ``open(mode="xb")``
on fsspec stores that support it: memory, S3 with conditional writes), refreshed by a heartbeat
thread every ``heartbeat_s`` seconds and deleted when the job ends. A second job finds it and
refuses, naming the holder. A lease is taken over, with a warning, when its holder is dead (same
host, the pid is gone or now belongs to another process) or its heartbeat is older than
``stale_s`` seconds (any host). The heartbeat checks that the record still carries its token; if
another job took the lease over, :meth:`OutputLease.check` raises and the job stops.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from typing import Any

from pipeline.errors import OutputLockedError
from pipeline.io.locations import Location

__all__ = ["LEASE_FORMAT", "OutputLease", "lease_location"]

LEASE_FORMAT = "liif-pipeline-lease/1"
HEARTBEAT_S = 10.0
STALE_S = 120.0


def lease_location(output: Location) -> Location:
    """Where the lease of ``output`` lives: ``.<name>.lease.json`` beside it."""
    return output.sibling(f".{output.name}.lease.json")


def _pid_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _pid_start(pid)
    return start is None or now is None or now == start


class OutputLease:
    """Hold the lease on ``output`` for the life of a job (a context manager).

    ``heartbeat_s``: refresh interval; ``stale_s``: a heartbeat older than this lets another job
    take the lease over.
    """

    def __init__(self, output: Location, *, heartbeat_s: float = HEARTBEAT_S,
                 stale_s: float = STALE_S) -> None:
        if not 0 < heartbeat_s < stale_s:
            raise ValueError(f"need 0 < heartbeat_s < stale_s, got {heartbeat_s}, {stale_s}")
        self.output = output
        self.where = lease_location(output)
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.token = uuid.uuid4().hex
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started_at = time.time()
        self.lost: str | None = None
        self.taken_over: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created: list[str] = []

    # -------------------------------------------------------------------------- records

    def _record(self) -> dict[str, Any]:
        return {"format": LEASE_FORMAT, "output": self.output.display, "token": self.token,
                "host": self.host, "pid": self.pid, "pid_start": _pid_start(self.pid),
                "started_at": self.started_at, "heartbeat_at": time.time(),
                "command": " ".join(sys.argv)[:500]}

    def _read(self) -> dict[str, Any] | None:
        loc = self.where
        try:
            if loc.is_local:
                with open(loc.path, "rb") as fh:
                    raw = fh.read()
            else:
                fs, path = loc.fs()
                fs.invalidate_cache(path)
                raw = fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            rec = json.loads(raw)
        except ValueError:
            return {"format": "?", "heartbeat_at": 0.0, "host": "?", "pid": -1}  # torn: stale
        return rec if isinstance(rec, dict) else None

    def _create(self) -> bool:
        """Create the record exclusively; False when one is already there."""
        payload = json.dumps(self._record()).encode()
        loc = self.where
        if loc.is_local:
            self._make_parents(os.path.dirname(loc.path))
            tmp = f"{loc.path}.{self.token}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(payload)
            try:
                os.link(tmp, loc.path)  # atomic and exclusive, with the whole content
                return True
            except FileExistsError:
                return False
            finally:
                os.remove(tmp)
        fs, path = loc.fs()
        try:
            with fs.open(path, "xb") as fh:
                fh.write(payload)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):
            # no exclusive create on this store: write, then confirm that our token stuck
            if fs.exists(path):
                return False
            fs.pipe_file(path, payload)
            time.sleep(0.2)
            rec = self._read()
            return bool(rec and rec.get("token") == self.token)

    def _make_parents(self, folder: str) -> None:
        """Create missing parent folders (an output may go to a new folder); remembered, so
        that :meth:`release` removes them again if the job left them empty."""
        missing = []
        while folder and not os.path.isdir(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        for d in reversed(missing):
            os.mkdir(d)
            self._created.append(d)

    def _write(self) -> None:
        payload = json.dumps(self._record()).encode()
        loc = self.where
        if loc.is_local:
            tmp = f"{loc.path}.{self.token}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(payload)
            os.replace(tmp, loc.path)
        else:
            fs, path = loc.fs()
            fs.pipe_file(path, payload)

    def _delete(self) -> None:
        loc = self.where
        try:
            if loc.is_local:
                os.remove(loc.path)
            else:
                fs, path = loc.fs()
                fs.rm(path)
                fs.invalidate_cache(path)
        except FileNotFoundError:
            pass

    # ----------------------------------------------------------------------------- life

    def describe(self, rec: dict[str, Any]) -> str:
        """One line naming the holder of ``rec``."""
        age = time.time() - float(rec.get("heartbeat_at") or 0.0)
        started = rec.get("started_at")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
        return (f"host {rec.get('host')!r}, pid {rec.get('pid')}, started {when}, last heartbeat "
                f"{age:.0f} s ago")

    def _dead_reason(self, rec: dict[str, Any]) -> str | None:
        age = time.time() - float(rec.get("heartbeat_at") or 0.0)
        if age > self.stale_s:
            return f"its heartbeat is {age:.0f} s old (stale after {self.stale_s:.0f} s)"
        if rec.get("host") == self.host and isinstance(rec.get("pid"), int):
            if not _pid_alive(rec["pid"], rec.get("pid_start")):
                return f"process {rec['pid']} on this host is no longer running"
        return None

    def acquire(self) -> OutputLease:
        """Take the lease, or raise :class:`OutputLockedError` naming the live holder."""
        for _ in range(5):
            if self._create():
                if not self.where.is_local:  # a hard link is exclusive; stores may settle
                    time.sleep(0.05)
                rec = self._read()
                if rec and rec.get("token") == self.token:
                    break
                continue
            rec = self._read()
            if rec is None:
                continue  # released meanwhile: try again
            why = self._dead_reason(rec)
            if why is None:
                raise OutputLockedError(
                    f"output {self.output.uri!r} is being written by another job ({self.describe(rec)}); "
                    f"wait for it to finish or stop it (its lease {self.where.display!r} is taken over "
                    f"once its heartbeat is {self.stale_s:.0f} s old)")
            warnings.warn(f"taking over the lease on {self.output.uri!r} from a dead job "
                          f"({self.describe(rec)}): {why}", UserWarning, stacklevel=2)
            self.taken_over = rec
            self._delete()
        else:
            raise OutputLockedError(f"could not take the lease {self.where.display!r} on "
                                    f"{self.output.uri!r}: other jobs keep taking it")
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                rec = self._read()
                if rec is None or rec.get("token") != self.token:
                    holder = self.describe(rec) if rec else "nobody"
                    self.lost = f"the lease on {self.output.uri!r} was taken by another job ({holder})"
                    return
                self._write()
            except OSError as exc:  # a transient store error: try again at the next beat
                warnings.warn(f"lease heartbeat failed: {exc}", UserWarning, stacklevel=1)

    def check(self) -> None:
        """Raise :class:`OutputLockedError` if the lease was lost to another job."""
        if self.lost:
            raise OutputLockedError(self.lost + "; this job stops so the two do not mix tiles")

    def release(self) -> None:
        """Stop the heartbeat and delete the record if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
            rec = self._read()
            if rec is not None and rec.get("token") == self.token:
                self._delete()
        for d in reversed(self._created):
            try:
                os.rmdir(d)  # only if the job left it empty
            except OSError:
                break
        self._created = []

    def __enter__(self) -> OutputLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
