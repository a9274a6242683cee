"""A small driver-side progress line (tiles, Mpx/s, ETA) and the job's summary numbers."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts finished tiles and output pixels; prints at most every ``interval`` seconds."""

    def __init__(self, total_tiles: int, total_pixels: int, *, stream: TextIO | None = sys.stderr,
                 interval: float = 1.0, already_tiles: int = 0, already_pixels: int = 0) -> None:
        self.total_tiles, self.total_pixels = total_tiles, total_pixels
        self.tiles, self.pixels = already_tiles, already_pixels
        self.new_pixels = 0
        self.verified_pixels = 0
        self.stream, self.interval = stream, interval
        self.t0 = time.perf_counter()
        self._last = 0.0

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def mpx_per_s(self) -> float:
        return self.new_pixels / 1e6 / max(self.seconds, 1e-9)

    def update(self, pixels: int, *, verified: bool = False) -> None:
        """One more tile of ``pixels`` output pixels; ``verified``: finished by an earlier run
        and only checked (it does not count towards the rate)."""
        self.tiles += 1
        self.pixels += pixels
        if verified:
            self.verified_pixels += pixels
        else:
            self.new_pixels += pixels
        now = time.perf_counter()
        if self.stream is not None and (now - self._last >= self.interval
                                        or self.tiles == self.total_tiles):
            self._last = now
            self.stream.write(self.line() + ("\n" if self.tiles == self.total_tiles else "\r"))
            self.stream.flush()

    def line(self) -> str:
        rate = self.mpx_per_s
        left = (self.total_pixels - self.pixels) / 1e6
        eta = left / rate if rate > 0 else float("inf")
        pct = 100 * self.tiles / max(1, self.total_tiles)
        eta_s = f"{eta:.0f} s" if eta != float("inf") else "?"
        return (f"tiles {self.tiles}/{self.total_tiles} ({pct:5.1f}%)  "
                f"{self.pixels / 1e6:.1f}/{self.total_pixels / 1e6:.1f} Mpx  {rate:.3g} Mpx/s  "
                f"ETA {eta_s}")
