"""``NAME=VALUE`` command-line items, shared by the jobs that compare several models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["parse_labelled"]


def parse_labelled(items: Sequence[str], *, flag: str, lone: str) -> list[tuple[str, str]]:
    """``["VALUE", "NAME=VALUE", ...]`` -> ``[(name, value)]`` in order: a bare value is named
    ``lone`` when it is the only item, else after its file stem. Duplicates are left to the
    caller.

    Raises:
        ValueError: an item with an empty name or value (quoting ``flag`` and the item).
    """
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            name, value = (lone if len(items) == 1 else Path(item).stem), item
        if not name or not value:
            raise ValueError(f"{flag} {item!r} must be VALUE or NAME=VALUE")
        out.append((name, value))
    return out
