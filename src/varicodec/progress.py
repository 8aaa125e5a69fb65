"""Progress for long commands: a bar on a terminal, a line every few seconds elsewhere.

On a terminal :func:`progress_bar` gives a ``tqdm`` bar. When stderr is a pipe
or a file (a log, CI) a bar would print nothing useful (or one line per
refresh), so a :class:`LineProgress` prints one line every
:data:`INTERVAL_S` seconds and one at the end::

    eval hyperprior-ecgbm: 12/48 img (25 %), 0.41 img/s, ETA 1m28s  bpp=0.512 psnr=27.31

``enabled=False`` (``--quiet``) prints nothing. Both kinds take ``update``,
``set_postfix``, ``write`` and ``close``.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["INTERVAL_S", "LineProgress", "progress_bar"]

#: seconds between progress lines when stderr is not a terminal
INTERVAL_S = 5.0


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LineProgress:
    """Plain progress lines on ``file``: done/total, rate, ETA, at most every ``interval`` s."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", *,
                 file: IO[str] | None = None, interval: float | None = None,
                 enabled: bool = True, initial: int = 0) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.file = file if file is not None else sys.stderr
        self.interval = INTERVAL_S if interval is None else interval
        self.enabled = enabled
        self.n = self._initial = initial
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def line(self, now: float | None = None) -> str:
        """The current progress line."""
        elapsed = (time.monotonic() if now is None else now) - self._start
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        if self.total is None:   # open-ended (e.g. a time budget): count and rate only
            text = f"{head}{self.n} {self.unit}, {rate:.2f} {self.unit}/s"
            return text + (f"  {self.postfix}" if self.postfix else "")
        text = f"{head}{self.n}/{self.total} {self.unit}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f} %)"
        text += f", {rate:.2f} {self.unit}/s"
        if self.n < self.total and rate > 0:
            text += f", ETA {_duration((self.total - self.n) / rate)}"
        elif self.n >= self.total:
            text += f", done in {_duration(elapsed)}"
        return text + (f"  {self.postfix}" if self.postfix else "")

    def _emit(self, now: float | None = None) -> None:
        if self.enabled:
            print(self.line(now), file=self.file, flush=True)

    def write(self, message: str, file: IO[str] | None = None) -> None:
        print(message, file=file if file is not None else sys.stdout, flush=True)

    def close(self) -> None:
        if not self._closed and self.n > self._initial:
            self._emit()
        self._closed = True


def progress_bar(total: int, desc: str = "", unit: str = "it", *, enabled: bool = True,
                 file: IO[str] | None = None):
    """A tqdm bar on a terminal, :class:`LineProgress` otherwise, silent if not ``enabled``."""
    stream = file if file is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if enabled and isatty is not None and isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc or None, unit=unit, file=stream, leave=False,
                    dynamic_ncols=True)
    return LineProgress(total, desc, unit, file=stream, enabled=enabled)
