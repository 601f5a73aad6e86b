"""What the writer reports while it works: one observer callable, a few event types.

An observer is any callable taking one :data:`WriteEvent`; the writer calls
it synchronously from its worker threads (so it must be thread-safe and
quick: count, do not block). ``None`` means nobody listens. Events carry no
event payloads and no secrets, only shard names, counts and timings.

====================  ==========================================================
event                 when
====================  ==========================================================
:class:`Committed`    a shard transaction committed (latency, units, rows)
:class:`Retried`      a shard transaction failed transiently and will run again
:class:`Failed`       a shard transaction gave up (retries exhausted or fatal)
:class:`Rejected`     events were refused before any SQL (bad input)
:class:`MapReloaded`  a shard fenced a slot; the writer reloaded the shard map
====================  ==========================================================

:class:`Stats` is a ready observer that keeps totals and latencies in memory;
:mod:`shardbill.metrics` adapts the same events to Prometheus.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Callable

import attrs

__all__ = [
    "Committed",
    "Failed",
    "MapReloaded",
    "Observer",
    "Rejected",
    "Retried",
    "Stats",
    "WriteEvent",
]


@attrs.frozen(kw_only=True)
class Committed:
    """A shard transaction committed."""

    shard: str
    seconds: float
    applied: int
    duplicates: int
    conflicts: int
    rows: int
    statements: int
    attempt: int


@attrs.frozen(kw_only=True)
class Retried:
    """A shard transaction failed transiently (``error`` is the error class name)."""

    shard: str
    error: str
    attempt: int
    delay: float


@attrs.frozen(kw_only=True)
class Failed:
    """A shard transaction gave up; its units were not applied (or their outcome is known)."""

    shard: str
    error: str
    attempts: int


@attrs.frozen(kw_only=True)
class Rejected:
    """``count`` events were refused before any SQL."""

    count: int


@attrs.frozen(kw_only=True)
class MapReloaded:
    """A shard fenced slots; the writer reloaded the map (``epoch`` is the new one)."""

    shard: str
    epoch: int


WriteEvent = Committed | Retried | Failed | Rejected | MapReloaded
Observer = Callable[[WriteEvent], None]


class Stats:
    """An observer that keeps totals and commit latencies in memory (thread-safe).

    Example:
        >>> stats = Stats()
        >>> stats(Committed(shard="a", seconds=0.004, applied=10, duplicates=1,
        ...                 conflicts=0, rows=12, statements=5, attempt=1))
        >>> stats.applied, stats.commits["a"]
        (10, 1)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.commits: Counter[str] = Counter()
        self.latencies: defaultdict[str, list[float]] = defaultdict(list)
        self.retries: Counter[tuple[str, str]] = Counter()
        self.failures: Counter[tuple[str, str]] = Counter()
        self.applied = 0
        self.duplicates = 0
        self.conflicts = 0
        self.rows = 0
        self.statements = 0
        self.rejected = 0
        self.map_reloads = 0

    def __call__(self, event: WriteEvent) -> None:
        """Record one event."""
        with self._lock:
            if isinstance(event, Committed):
                self.commits[event.shard] += 1
                self.latencies[event.shard].append(event.seconds)
                self.applied += event.applied
                self.duplicates += event.duplicates
                self.conflicts += event.conflicts
                self.rows += event.rows
                self.statements += event.statements
            elif isinstance(event, Retried):
                self.retries[(event.shard, event.error)] += 1
            elif isinstance(event, Failed):
                self.failures[(event.shard, event.error)] += 1
            elif isinstance(event, Rejected):
                self.rejected += event.count
            else:
                self.map_reloads += 1

    def all_latencies(self) -> list[float]:
        """Every recorded commit latency (seconds), all shards, sorted."""
        with self._lock:
            return sorted(s for values in self.latencies.values() for s in values)

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of commit latency in seconds, nearest rank; None if empty."""
        values = self.all_latencies()
        if not values:
            return None
        rank = max(0, min(len(values) - 1, round(q * len(values) + 0.5) - 1))
        return values[rank]
