"""The mark that makes a single file ours: what :func:`pipeline.io.atomic.check_target` looks for
before it lets a file be replaced.

Every single file the project writes carries ``created_by: liif-pipeline ...`` at a place fixed
by its format, and only there counts: the *first* key of a JSON document (summaries, reports),
the first line of a Markdown report (``<!-- created_by: liif-pipeline ... -->``), a ``tEXt``
chunk right after a PNG's IHDR, and the ``created_by`` item of the GDAL metadata tag (42112) of a
TIFF's first image. A file that merely contains the words (notes quoting them, a Zarr
``zarr.json`` whose attributes hold them, a JSON document with them in a nested key) is not ours.
"""

from __future__ import annotations

import re
import struct
from typing import BinaryIO

__all__ = ["has_our_mark"]

_JSON = re.compile(rb'\{\s*"created_by"\s*:\s*"liif-pipeline')
_MARKDOWN = b"<!-- created_by: liif-pipeline"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT = b"tEXtcreated_by\x00liif-pipeline"
_GDAL_ITEM = re.compile(rb'<Item name="created_by"[^>]*>liif-pipeline')
_GDAL_METADATA = 42112
_HEAD = 1 << 16
_MAX_TAG = 1 << 20


def has_our_mark(fh: BinaryIO) -> bool:
    """Whether the open binary file ``fh`` (seekable) carries our mark where its format puts it."""
    head = fh.read(_HEAD)
    if _JSON.match(head) or head.startswith(_MARKDOWN):
        return True
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        end_ihdr = 8 + 12 + struct.unpack(">I", head[8:12])[0]
        return head[end_ihdr + 4:end_ihdr + 4 + len(_PNG_TEXT)] == _PNG_TEXT
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        text = _tiff_gdal_metadata(fh, head)
        return text is not None and _GDAL_ITEM.search(text) is not None
    return False


def _tiff_gdal_metadata(fh: BinaryIO, head: bytes) -> bytes | None:
    """The GDAL_METADATA text of a (Big)TIFF's first image, or None."""
    end = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\x00", b"\x00+")
    try:
        if big:
            ifd = struct.unpack(end + "Q", head[8:16])[0]
            fh.seek(ifd)
            (count,) = struct.unpack(end + "Q", fh.read(8))
            size, fmt = 20, end + "HHQQ"
        else:
            ifd = struct.unpack(end + "I", head[4:8])[0]
            fh.seek(ifd)
            (count,) = struct.unpack(end + "H", fh.read(2))
            size, fmt = 12, end + "HHII"
        entries = fh.read(min(count, 4096) * size)
        for i in range(len(entries) // size):
            tag, kind, n, value = struct.unpack(fmt, entries[i * size:(i + 1) * size])
            if tag != _GDAL_METADATA or kind != 2 or n > _MAX_TAG:  # ASCII
                continue
            inline = 8 if big else 4
            if n <= inline:
                raw = entries[i * size + size - inline:i * size + size - inline + n]
            else:
                fh.seek(value)
                raw = fh.read(n)
            return raw
    except (struct.error, OSError, ValueError):
        return None
    return None
