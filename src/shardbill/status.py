"""The fleet in one view: what ``shardbill status`` shows (reads the shards and the map store).

:func:`fleet_status` reads, from the primaries, for every shard of the live
map (and every other shard the configuration names):

* whether it answers (else the error, and the others are still read),
* its slots by state in the slot-ownership table (``owned``, ``incoming``
  during a reshard, ``gone`` once handed over),
* its rows per aggregate table and its ledger rows,

and, from the map store: the map's epoch and shards, and a reshard in
progress (its moving slots by state and its claim).

Write rates come from two readings: :meth:`FleetStatus.rates_since` gives
ledger rows (applied ``(slot, event)`` units) per second per shard between
an earlier reading and this one, which is what ``status --watch`` shows.
Writer failures and commit latencies are seen only by the writers
themselves: :func:`parse_metrics` reads the counters of a writer's
Prometheus endpoint (:mod:`shardbill.metrics`, the worker's
``--metrics-port``) into a :class:`WriterMetrics` (units applied, commits,
failures and retries by shard and error, rejected events, dead letters),
what ``status --metrics URL`` shows; two readings give units applied per
second.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import attrs

from shardbill.dialects.detect import dialect_for
from shardbill.errors import ShardbillError
from shardbill.mapstore import MapStore
from shardbill.providers.base import ConnectionProvider
from shardbill.resharding.resharder import Resharder
from shardbill.retry import describe
from shardbill.shardmap import ShardMap
from shardbill.tables import SystemTables
from shardbill.tables.aggregates import AggregateTable

__all__ = ["FleetStatus", "ShardStatus", "WriterMetrics", "fleet_status", "parse_metrics"]


@attrs.frozen(kw_only=True)
class ShardStatus:
    """One shard as read now.

    Attributes:
        name: the shard.
        in_map: whether the live map gives it slots.
        error: why it could not be read (None: it was).
        slots: its slots by state (``owned``, ``incoming``, ``gone``).
        rows: rows per aggregate table.
        ledger_rows: rows of its ledger.
    """

    name: str
    in_map: bool
    error: str | None = None
    slots: Mapping[str, int] = attrs.field(factory=dict)
    rows: Mapping[str, int] = attrs.field(factory=dict)
    ledger_rows: int = 0

    @property
    def reachable(self) -> bool:
        """True when the shard was read."""
        return self.error is None


@attrs.frozen(kw_only=True)
class FleetStatus:
    """Every shard, the map and a reshard in progress, read at :attr:`at`.

    Attributes:
        shard_map: the live map.
        store: where the map lives (for people).
        shards: every shard read, map shards first.
        moving: the slots of the last reshard, by state (``pending``,
            ``fenced``, ``finished``; empty: no reshard recorded).
        claim: the reshard claim's description (None: no claim).
        at: when it was read (the clock's seconds).
    """

    shard_map: ShardMap
    store: str
    shards: tuple[ShardStatus, ...]
    moving: Mapping[str, int]
    claim: str | None
    at: float

    @property
    def in_progress(self) -> int:
        """Slots of the last reshard not finished yet (0: none in progress)."""
        return sum(n for state, n in self.moving.items() if state != "finished")

    @property
    def ok(self) -> bool:
        """True when every shard answered."""
        return all(s.reachable for s in self.shards)

    def rates_since(self, earlier: FleetStatus) -> dict[str, float]:
        """Ledger rows per second per shard between ``earlier`` and this reading.

        A shard unreachable in either reading is left out; a pruned ledger can
        make a rate negative.

        Args:
            earlier: a reading taken before this one.

        Returns:
            Shard -> ledger rows per second.
        """
        seconds = self.at - earlier.at
        if seconds <= 0:
            return {}
        before = {s.name: s for s in earlier.shards if s.reachable}
        return {
            s.name: (s.ledger_rows - before[s.name].ledger_rows) / seconds
            for s in self.shards
            if s.reachable and s.name in before
        }

    def to_dict(self, rates: Mapping[str, float] | None = None) -> dict[str, object]:
        """A JSON-ready dict.

        Args:
            rates: from :meth:`rates_since`, shown per shard as ``ledger_rows_per_s``.

        Returns:
            ``ok``, ``map`` (``epoch``, ``slots``, ``store``, ``shards``:
            name -> weight), ``shards`` (name -> ``in_map``, ``reachable``,
            ``error``, ``slots``, ``rows``, ``ledger_rows``) and ``reshard``
            (``in_progress``, ``moving_slots``: those not finished, the
            last reshard's slots by state, and ``claim``).
        """
        shards: dict[str, object] = {}
        for s in self.shards:
            entry: dict[str, object] = {
                "in_map": s.in_map,
                "reachable": s.reachable,
                "error": s.error,
                "slots": dict(s.slots),
                "rows": dict(s.rows),
                "ledger_rows": s.ledger_rows,
            }
            if rates is not None and s.name in rates:
                entry["ledger_rows_per_s"] = round(rates[s.name], 3)
            shards[s.name] = entry
        return {
            "ok": self.ok,
            "map": {
                "epoch": self.shard_map.epoch,
                "slots": self.shard_map.slots,
                "store": self.store,
                "shards": dict(self.shard_map.shards),
            },
            "shards": shards,
            "reshard": {
                "in_progress": self.in_progress > 0,
                "moving_slots": self.in_progress,
                **self.moving,
                "claim": self.claim,
            },
        }


def fleet_status(
    *,
    provider: ConnectionProvider,
    store: MapStore,
    store_description: str,
    tables: Sequence[AggregateTable],
    shards: Sequence[str] = (),
    system_tables: SystemTables | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FleetStatus:
    """Read the fleet (see the module docstring).

    Args:
        provider: lends connections to every shard.
        store: the map store (the live map, a reshard's claim).
        store_description: where the store is, for people.
        tables: the aggregate tables.
        shards: more shards to read than the map's (e.g. every configured one).
        system_tables: the names of the ledger and slot tables.
        clock: the time of the reading, for rates.

    Returns:
        The reading.

    Raises:
        MapNotPublishedError: the store holds no map yet.
    """
    system = system_tables or SystemTables()
    current = store.load()
    names = [*current.shards, *(s for s in shards if s not in current.shards)]
    read = tuple(_shard(provider, name, name in current.shards, tables, system) for name in names)
    moving: dict[str, int] = {}
    claim: str | None = None
    if all(s.reachable for s in read if s.in_map):
        resharder = Resharder(store=store, provider=provider, tables=tables)
        moving = dict(sorted(Counter(s.state.value for s in resharder.status()).items()))
        held = resharder.claim()
        claim = held.describe() if held is not None else None
    return FleetStatus(
        shard_map=current,
        store=store_description,
        shards=read,
        moving=moving,
        claim=claim,
        at=clock(),
    )


def _shard(
    provider: ConnectionProvider,
    name: str,
    in_map: bool,
    tables: Sequence[AggregateTable],
    system: SystemTables,
) -> ShardStatus:
    try:
        with provider.connection(name) as conn:  # the primary: counts must not lag
            q = dialect_for(conn).quote
            cursor = conn.cursor()
            try:

                def count(table: str) -> int:
                    cursor.execute(f"SELECT COUNT(*) FROM {q(table)}", ())
                    return int(cursor.fetchone()[0])  # type: ignore[index]

                rows = {t.name: count(t.name) for t in tables}
                ledger = count(system.ledger)
                cursor.execute(
                    f"SELECT {q('state')}, COUNT(*) FROM {q(system.slots)} GROUP BY {q('state')}",
                    (),
                )
                slots = {str(state): int(n) for state, n in sorted(cursor.fetchall())}
            finally:
                cursor.close()
    except ShardbillError as exc:
        return ShardStatus(name=name, in_map=in_map, error=describe(exc))
    return ShardStatus(name=name, in_map=in_map, slots=slots, rows=rows, ledger_rows=ledger)


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@attrs.frozen(kw_only=True)
class WriterMetrics:
    """What one writer's (or worker's) Prometheus endpoint says, read at :attr:`at`.

    The counters are totals since that process started
    (:class:`shardbill.metrics.PrometheusObserver`,
    :mod:`shardbill.worker.prometheus`); two readings give rates
    (:meth:`applied_per_second`).

    Attributes:
        source: where it was read (for people; no credentials).
        at: when it was read (the clock's seconds).
        error: why it could not be read (None: it was).
        applied: units applied per shard (``shardbill_units_applied_total``).
        commits: shard transactions committed per shard.
        failures: transactions given up, per ``(shard, error)``.
        retries: transient failures retried, per ``(shard, error)``.
        rejected: events refused before any SQL.
        dead_letters: a worker's dead letters, per stage.
    """

    source: str
    at: float
    error: str | None = None
    applied: Mapping[str, int] = attrs.field(factory=dict)
    commits: Mapping[str, int] = attrs.field(factory=dict)
    failures: Mapping[tuple[str, str], int] = attrs.field(factory=dict)
    retries: Mapping[tuple[str, str], int] = attrs.field(factory=dict)
    rejected: int = 0
    dead_letters: Mapping[str, int] = attrs.field(factory=dict)

    def applied_per_second(self, earlier: WriterMetrics) -> float | None:
        """Units applied per second (all shards) since ``earlier`` (None: not comparable).

        A restarted process (its counters went down) or an unread endpoint
        gives None rather than a wrong rate.
        """
        seconds = self.at - earlier.at
        if self.error is not None or earlier.error is not None or seconds <= 0:
            return None
        now, before = sum(self.applied.values()), sum(earlier.applied.values())
        return None if now < before else (now - before) / seconds

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (``(shard, error)`` keys become ``"shard/error"``)."""
        return {
            "source": self.source,
            "error": self.error,
            "applied": dict(self.applied),
            "commits": dict(self.commits),
            "failures": {f"{s}/{e}": n for (s, e), n in self.failures.items()},
            "retries": {f"{s}/{e}": n for (s, e), n in self.retries.items()},
            "rejected": self.rejected,
            "dead_letters": dict(self.dead_letters),
        }


def parse_metrics(
    text: str, *, source: str, at: float, namespace: str = "shardbill"
) -> WriterMetrics:
    """Read shardbill's counters from a Prometheus text exposition (pure).

    Args:
        text: the endpoint's body (``text/plain; version=0.0.4``).
        source: where it came from, for people.
        at: when it was read.
        namespace: the observer's metric prefix.

    Returns:
        The totals; metrics the text lacks count 0.
    """
    applied: Counter[str] = Counter()
    commits: Counter[str] = Counter()
    failures: Counter[tuple[str, str]] = Counter()
    retries: Counter[tuple[str, str]] = Counter()
    dead: Counter[str] = Counter()
    rejected = 0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        name, raw_labels, raw_value = match.groups()
        try:
            value = int(float(raw_value))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(raw_labels or ""))
        shard, error = labels.get("shard", ""), labels.get("error", "")
        if name == f"{namespace}_units_applied_total":
            applied[shard] += value
        elif name == f"{namespace}_commits_total":
            commits[shard] += value
        elif name == f"{namespace}_failures_total":
            failures[shard, error] += value
        elif name == f"{namespace}_retries_total":
            retries[shard, error] += value
        elif name == f"{namespace}_events_rejected_total":
            rejected += value
        elif name == f"{namespace}_worker_dead_letters_total":
            dead[labels.get("stage", "")] += value
    return WriterMetrics(
        source=source,
        at=at,
        applied=dict(applied),
        commits=dict(commits),
        failures=dict(failures),
        retries=dict(retries),
        rejected=rejected,
        dead_letters=dict(dead),
    )
