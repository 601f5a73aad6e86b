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

The read path reports through the same kind of callable, given to
:class:`~shardbill.providers.PooledProvider` (``observer=``), with its own
events (:data:`ReadEvent`):

=======================  ========================================================
event                    when
=======================  ========================================================
:class:`ReplicaDown`     a replica failed (down, refused, dropped, timed out) and
                         is skipped for ``seconds``
:class:`ReplicaLag`      a replica's lag was measured (``None``: unknown)
:class:`ReadFellBack`    a read went to the primary: no replica could serve it
=======================  ========================================================
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
    "ReadEvent",
    "ReadFellBack",
    "ReadObserver",
    "Rejected",
    "ReplicaDown",
    "ReplicaLag",
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


@attrs.frozen(kw_only=True)
class ReplicaDown:
    """A replica of ``shard`` failed (``error`` is the error class name); skipped ``seconds``.

    ``server`` is ``host:port``: bounded, and never a user name or password.
    """

    shard: str
    server: str
    error: str
    seconds: float


@attrs.frozen(kw_only=True)
class ReplicaLag:
    """A replica's lag behind its primary, in seconds; ``None`` when unknown (not zero)."""

    shard: str
    server: str
    seconds: float | None


@attrs.frozen(kw_only=True)
class ReadFellBack:
    """A read of ``shard`` went to its primary because no replica could serve it.

    ``reason`` is one of ``down`` (every replica failed or is backing off),
    ``lag`` (every replica lags more than the reader's ``max_lag``, or its lag
    is unknown), ``position`` (no replica reached the write to read after in
    time) and ``moving`` (a reshard step the replicas had not applied yet).
    """

    shard: str
    reason: str


ReadEvent = ReplicaDown | ReplicaLag | ReadFellBack
ReadObserver = Callable[[ReadEvent], None]


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
