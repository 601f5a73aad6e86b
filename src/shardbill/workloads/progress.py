"""A one-line progress bar for the command line, silent unless a person is watching.

The bar is drawn on standard error, and only when both standard output and
standard error are terminals: piped or redirected output (``--json``,
``> report.txt``, CI logs) never holds progress noise. It redraws at most ten
times a second and erases itself when done. It is thread-safe: a background
writer may advance it.

Example::

    with Progress("writing", total=100_000, unit="events") as bar:
        for batch in batches:
            write(batch)
            bar.advance(len(batch))
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "interactive"]

_WIDTH = 28
_INTERVAL = 0.1


def interactive(stream: TextIO | None = None) -> bool:
    """True when progress should be drawn: stdout and ``stream`` (stderr) are terminals.

    Args:
        stream: where the bar would go (default ``sys.stderr``).

    Returns:
        Whether a person is watching.
    """
    target = sys.stderr if stream is None else stream
    return _isatty(sys.stdout) and _isatty(target)


def _isatty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole}s"


def _human(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1_000:.0f}k"
    return f"{value:,.0f}"


class Progress:
    """A progress bar (see the module docstring).

    Args:
        label: what is progressing, e.g. ``"writing"``.
        total: the amount at 100 % (0 or None: unknown, a counter is shown).
        unit: the unit of ``total``, e.g. ``"events"`` or ``"bytes"``.
        rate_unit: show the rate of what :meth:`count` counts in this unit
            (e.g. ``"events"`` while ``total`` is in bytes); default: ``unit``.
        enabled: draw it (default: :func:`interactive`).
        stream: where to draw (default ``sys.stderr``).
        clock: seconds, for the rate and the time left (default ``time.monotonic``).

    With a total, the bar also shows the time left at the pace so far
    (``ETA 1m05s``).
    """

    def __init__(
        self,
        label: str,
        *,
        total: int | None,
        unit: str = "",
        rate_unit: str | None = None,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._enabled = interactive(self._stream) if enabled is None else enabled
        self._label = label
        self._total = total or 0
        self._unit = unit
        self._rate_unit = rate_unit
        self._done = 0
        self._counted = 0
        self._clock = clock
        self._started = clock()
        self._drawn = 0.0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether the bar is drawn."""
        return self._enabled

    def advance(self, amount: int) -> None:
        """Add ``amount`` to the progress.

        Args:
            amount: how much more is done.
        """
        with self._lock:
            self._done += amount
            self._maybe_draw()

    def update(self, done: int) -> None:
        """Set the progress.

        Args:
            done: how much is done in all.
        """
        with self._lock:
            self._done = done
            self._maybe_draw()

    def count(self, counted: int) -> None:
        """Set how many of ``rate_unit`` are done in all (drawn with the next update).

        Args:
            counted: e.g. the events written so far.
        """
        with self._lock:
            self._counted = counted

    def close(self) -> None:
        """Erase the bar. Idempotent."""
        with self._lock:
            if self._enabled and self._drawn:
                self._stream.write("\r\x1b[2K")
                self._stream.flush()
            self._enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _maybe_draw(self) -> None:
        if not self._enabled:
            return
        now = self._clock()
        if now - self._drawn < _INTERVAL and self._done < self._total:
            return
        self._drawn = now
        elapsed = max(now - self._started, 1e-9)
        if self._rate_unit is None:
            rate = f"{_human(self._done / elapsed)} {self._unit}/s".strip()
        else:
            rate = f"{_human(self._counted / elapsed)} {self._rate_unit}/s"
        if self._total:
            share = min(1.0, self._done / self._total)
            filled = int(share * _WIDTH)
            bar = "#" * filled + "-" * (_WIDTH - filled)
            text = (
                f"{self._label} [{bar}] {share:4.0%} {_human(self._done)}/"
                f"{_human(self._total)} {self._unit}, {rate}"
            )
            if 0 < self._done < self._total:
                text += f", ETA {_duration(elapsed * (self._total - self._done) / self._done)}"
        else:
            text = f"{self._label} {_human(self._done)} {self._unit}, {rate}"
        self._stream.write("\r\x1b[2K" + text)
        self._stream.flush()
