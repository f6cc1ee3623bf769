"""Progress of long work: a tqdm bar on a terminal, plain lines in logs; totals and an ETA when known.

On a terminal (stderr is a TTY) tqdm draws a bar with the count, the total, the percentage, the rate and
the time left. Anywhere else (a log file, CI, a pipe) a bar would be a stream of carriage returns, so one
plain line is written every ``every`` seconds and one at the end instead::

    embedding images: 1200/5000 (24%), 6.1 images/s, about 10 min left
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Counts finished items of one job. ``total`` may be None (unknown), ``enabled=False`` shows nothing."""

    def __init__(self, what: str, unit: str, total: int | None = None, *, enabled: bool = True,
                 every: float = 30.0, stream: IO[str] | None = None) -> None:
        self.what = what
        self.unit = unit
        self.total = total
        self.done = 0
        self.every = every
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._last_line = self.started
        self._bar: Any = None
        self.enabled = enabled
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=unit, file=self.stream, dynamic_ncols=True,
                             smoothing=0.1)

    def update(self, count: int = 1) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self.enabled and time.monotonic() - self._last_line >= self.every:
            self._line()

    def set_total(self, total: int | None) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.done and time.monotonic() - self.started >= self.every:
            self._line()  # a last line for jobs long enough to have shown any

    def line(self) -> str:
        """The plain progress line: count, total and percentage, rate, and time left when they are known."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        count = f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)" if self.total else str(self.done)
        left = ""
        if self.total and rate > 0 and self.done < self.total:
            left = f", about {_duration((self.total - self.done) / rate)} left"
        return f"{self.what}: {count}, {rate:.1f} {self.unit}/s{left}"

    def _line(self) -> None:
        self._last_line = time.monotonic()
        self.stream.write(self.line() + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
