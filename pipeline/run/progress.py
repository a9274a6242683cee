"""The driver's progress display (tiles, Mpx/s, ETA) and the job's summary numbers.

On a terminal it is a tqdm bar updated in place; in a log file (stderr not a TTY: ``ray job
submit`` logs, CI, ``2> job.log``) one newline-terminated line every ``log_interval`` seconds and
at the end, so lines never run together.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress"]


class Progress:
    """Counts finished tiles and output pixels; shows them on ``stream`` (None: silent)."""

    def __init__(self, total_tiles: int, total_pixels: int, *, stream: TextIO | None = sys.stderr,
                 interval: float = 1.0, log_interval: float = 10.0, already_tiles: int = 0,
                 already_pixels: int = 0) -> None:
        self.total_tiles, self.total_pixels = total_tiles, total_pixels
        self.tiles, self.pixels = already_tiles, already_pixels
        self.new_pixels = 0
        self.verified_pixels = 0
        self.stream = stream
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else log_interval
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._bar: Any = None
        if self.tty:
            try:
                from tqdm import tqdm
            except ImportError:  # a plain line in place of the bar
                self._bar = None
            else:
                self._bar = tqdm(total=total_tiles, initial=already_tiles, unit="tile",
                                 file=stream, dynamic_ncols=True, mininterval=interval)

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
        if self.stream is None:
            return
        done = self.tiles == self.total_tiles
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.pixels / 1e6:.1f}/{self.total_pixels / 1e6:.1f} Mpx"
                                      f", {self.mpx_per_s:.3g} Mpx/s", refresh=False)
            self._bar.update(1)
            if done:
                self._bar.close()
            return
        now = time.perf_counter()
        if now - self._last >= self.interval or done:
            self._last = now
            end = "\n" if done or not self.tty else "\r"
            self.stream.write(self.line() + end)
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

    def close(self) -> None:
        """End the display (the bar, when a job stops early)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
