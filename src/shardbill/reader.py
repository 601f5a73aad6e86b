"""Reading aggregates back: routed point reads and parallel fan-out totals, exact Decimals.

* :meth:`Reader.rows` reads one account's rows (any table whose key holds
  the shard key) from the one shard that owns it, optionally from a replica.
* :meth:`Reader.totals` asks every shard in parallel for ``GROUP BY`` totals
  and merges them (sum, min, max as each measure declares).

Reads stay exact while a reshard moves slots (:mod:`shardbill.resharding`):
a slot in motion has rows on its target and, until they are merged, on its
source. A read takes the source's rows first, then, in one consistent
snapshot on the target, the target's rows and the move ledger's progress; a
source row the progress covers was merged into the target already and is
dropped, every other one is added. A shard that handed a slot over names
where it went, so a reader holding an older map follows it.

With ``replica=True`` each shard is read from one server for the whole call
(a healthy replica, chosen in turn by the provider's
:meth:`~shardbill.providers.PooledProvider.route`, or the primary); a
replica that fails during the call is marked down and the call runs again
elsewhere. ``Reader(max_lag=...)`` skips replicas further behind (or whose
lag is unknown), ``after=write_result`` reads only replicas that applied that
write, and a replica behind a reshard step makes the call read the
primaries, so replica reads are exact during moves too (docs: "Read from
replicas").

Measures come back as :class:`~decimal.Decimal` at their declared scale
(``Amount(scale=6)`` units 7500 -> ``Decimal("0.007500")``); counts as
``int``. Key values come back as declared: ``int``, ``str`` or
``datetime.date``. Filters are bound values; column names are checked against
the table spec before any SQL is built.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol, TypeVar

import attrs

from shardbill import money
from shardbill.dialects.base import Dialect
from shardbill.dialects.detect import dialect_for
from shardbill.errors import (
    CannotConnectError,
    ConfigurationError,
    ConnectionLostError,
    InvalidInputError,
    NoReplicaAvailableError,
    ShardbillError,
    SlotsMovedDuringReadError,
)
from shardbill.protocols import MapSource
from shardbill.providers.base import ConnectionProvider, DBAPIConnection, DBAPICursor
from shardbill.retry import RetryPolicy, describe, is_retryable
from shardbill.shardmap import ShardMap
from shardbill.tables import SlotState, SystemTables
from shardbill.tables.aggregates import (
    SLOT_COLUMN,
    Account,
    AggregateTable,
    Date,
    KeyValue,
    MergeKind,
    Projection,
)
from shardbill.writer.results import WriteResult

if TYPE_CHECKING:
    from shardbill.providers.pooled import ReadRoute

__all__ = ["DEFAULT_READ_ATTEMPTS", "AggregateRow", "MapSource", "Reader"]

Measure = Decimal | int
_T = TypeVar("_T")
log = logging.getLogger("shardbill.reader")
_FAILED = (CannotConnectError, ConnectionLostError)
_FAILOVERS = 4  # calls restarted on other servers after a replica failed, at most
#: Tries of one read in all when it fails transiently (the default retry policy's).
DEFAULT_READ_ATTEMPTS = 4


class _Router(Protocol):
    """What a provider offers to pin reads to one server (``PooledProvider`` does)."""

    def route(
        self, shard: str, *, max_lag: float | None, position: str | None, wait: float
    ) -> ReadRoute: ...

    def primary_route(self, shard: str, *, reason: str | None = None) -> ReadRoute: ...


class _BehindAMove(Exception):  # noqa: N818 - internal signal, never escapes the Reader
    """A replica read saw a move state its primary has left: read the call from primaries."""

    def __init__(self, shard: str) -> None:
        super().__init__(shard)
        self.shard = shard


class _Routes:
    """The server each shard is read from during one call, chosen once on first use.

    Without replicas (``replica=False``) every loan goes to the primary. With a
    provider that cannot pin a server (a user's own), ``readonly=True`` loans
    go wherever the provider sends them.
    """

    def __init__(
        self,
        provider: ConnectionProvider,
        *,
        replica: bool,
        max_lag: float | None = None,
        positions: Mapping[str, str | None] | None = None,
        wait: float = 0.0,
        force_primary: bool = False,
        reason: str | None = None,
    ) -> None:
        self._provider = provider
        router = provider if callable(getattr(provider, "route", None)) else None
        self._router: _Router | None = router  # type: ignore[assignment]
        self.replica = replica
        self._max_lag = max_lag
        self._positions = dict(positions or {})
        self._wait = wait
        self._force_primary = force_primary
        self._reason = reason
        self._lock = threading.Lock()
        self._chosen: dict[str, ReadRoute] = {}
        self._choosing: dict[str, threading.Lock] = {}
        self.failed = False

    def primaries(self, reason: str | None = None) -> _Routes:
        """Routes of the same call that read every shard from its primary (``reason``: why,
        reported to the provider's observer; ``None`` for a check that reports nothing)."""
        return _Routes(self._provider, replica=self.replica, force_primary=True, reason=reason)

    def _unpinned(self) -> bool:
        # A provider that cannot pin: its readonly loans may have gone to any replica.
        return self._router is None and self.replica and not self._force_primary

    def on_replicas(self) -> bool:
        """True when some shard of this call may have been read from a replica."""
        with self._lock:
            return self._unpinned() or any(r.replica for r in self._chosen.values())

    def replica_shards(self, shards: Sequence[str]) -> list[str]:
        """Those of ``shards`` this call (may have) read from replicas."""
        with self._lock:
            if self._unpinned():
                return list(shards)
            return [s for s in shards if s in self._chosen and self._chosen[s].replica]

    def _route(self, shard: str) -> ReadRoute | None:
        router = self._router
        if not self.replica or router is None:
            return None
        with self._lock:
            route = self._chosen.get(shard)
            if route is not None:
                return route
            choosing = self._choosing.setdefault(shard, threading.Lock())
        with choosing:  # one choice per shard (a turn taken once); shards choose in parallel
            with self._lock:
                route = self._chosen.get(shard)
            if route is not None:
                return route
            if self._force_primary:
                route = router.primary_route(shard, reason=self._reason)
            elif shard in self._positions and not self._positions[shard]:
                route = router.primary_route(shard, reason="position")  # no GTID to wait for
            else:
                route = router.route(
                    shard,
                    max_lag=self._max_lag,
                    position=self._positions.get(shard),
                    wait=self._wait,
                )
            with self._lock:
                self._chosen[shard] = route
            return route

    @contextlib.contextmanager
    def connection(self, shard: str) -> Iterator[DBAPIConnection]:
        """Lend a connection to the server this call reads ``shard`` from."""
        route = self._route(shard)
        if route is None:
            readonly = self.replica and not self._force_primary
            with self._provider.connection(shard, readonly=readonly) as conn:
                yield conn
            return
        try:
            with route.connection() as conn:
                yield conn
        except _FAILED:
            if route.replica:
                self.failed = True  # the route marked it down; the call restarts elsewhere
            raise


def _positions(
    after: WriteResult | Mapping[str, str | None] | None,
) -> Mapping[str, str | None] | None:
    if after is None:
        return None
    if isinstance(after, Mapping):
        found: object = after
    elif hasattr(after, "positions"):
        found = after.positions
        if found is None:
            raise InvalidInputError(
                "'after' is a WriteResult without positions: its writer did not track them; "
                "build the writer with WriterSettings(track_positions=True)"
            )
    else:
        found = None
    if not isinstance(found, Mapping) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in found.items()
    ):
        raise InvalidInputError(
            f"'after' must be a WriteResult or its positions (shard -> GTID or None): got "
            f"{type(after).__name__}; e.g. reader.totals(..., replica=True, after=result)"
        )
    return found


@attrs.frozen(kw_only=True)
class AggregateRow:
    """One aggregate row: its key columns and its measures, exact."""

    key: Mapping[str, KeyValue]
    measures: Mapping[str, Measure]


@attrs.frozen
class _View:
    """What one shard says about moves, read in one snapshot: its slots that are not
    plainly owned (slot -> state, peer, epoch) and a table's merge progress
    (slot -> done, last key merged). A read is exact when no view changed during it."""

    states: Mapping[int, tuple[str, str | None, int]]
    progress: Mapping[int, tuple[int, str | None]]

    def slots_in(self, state: SlotState) -> dict[int, str]:
        return {slot: peer for slot, (s, peer, _) in self.states.items() if s == state and peer}


class _MapHolder:
    def __init__(self, shard_map: ShardMap, source: MapSource | None) -> None:
        self.map = shard_map
        self.source = source
        self.lock = threading.Lock()

    def refresh(self, seen: int) -> None:
        """Load the source's map if it is newer than epoch ``seen`` (one load per change)."""
        if self.source is None:
            return
        with self.lock:
            if self.map.epoch > seen:
                return  # another thread reloaded meanwhile
            fresh = self.source.load()
            if fresh.epoch > self.map.epoch:
                self.map = fresh


class Reader:
    """Reads aggregate tables across the shards of a shard map.

    Reads are exact at every moment of a reshard, with any map published
    since it began: each read follows the forwarding addresses and incoming
    slots the shards record, then checks that none of the slots it read
    changed state or merge progress meanwhile, and reads again if one did
    (at most ``max_attempts`` times, then
    :class:`~shardbill.errors.SlotsMovedDuringReadError`, never a wrong number).

    Args:
        shard_map: the map that routes point reads, or a map store (anything
            with ``load()``, like the writer takes): then the reader loads the
            map itself, and again when a read finds it outdated.
        provider: lends connections (``readonly=True`` loans may go to replicas).
        tables: the aggregate tables that can be read.
        shard_key: the projections that make the shard key (default: account).
        max_workers: shards read in parallel by :meth:`totals`.
        system_tables: the ownership and move-ledger table names.
        max_attempts: reads of one call before it gives up while slots keep moving.
        max_lag: with ``replica=True``, skip a replica more than this many
            seconds behind its primary, or whose lag is unknown (a replication
            thread stopped); ``None`` (default): any healthy replica serves.
        wait_for_position: with ``after=``, seconds a read waits in all for a
            replica to apply the write before it reads the primary instead.
        at_gap: called with a name at each gap between a read's steps
            (``rows:located``, ``rows:source``, ``rows:target``,
            ``totals:views``, ``totals:sources``, ``totals:part:SHARD``), for
            tests that force a reshard step into it.
        retry: the backoff for a transient failure of a read (a connection
            lost, e.g. on a pooled connection a server restart killed, a
            lock wait, a deadlock): the whole read runs again; default
            :data:`DEFAULT_READ_ATTEMPTS` tries, then the error is raised.
    """

    def __init__(
        self,
        *,
        shard_map: ShardMap | MapSource,
        provider: ConnectionProvider,
        tables: Sequence[AggregateTable],
        shard_key: Sequence[Projection] = (Account(),),
        max_workers: int = 8,
        system_tables: SystemTables | None = None,
        max_attempts: int = 5,
        max_lag: float | None = None,
        wait_for_position: float = 1.0,
        at_gap: Callable[[str], None] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if isinstance(shard_map, ShardMap):
            self._holder = _MapHolder(shard_map, None)
        elif callable(getattr(shard_map, "load", None)):
            self._holder = _MapHolder(shard_map.load(), shard_map)
        else:
            raise ConfigurationError(
                f"'shard_map' must be a ShardMap or a map store (with load()): got "
                f"{type(shard_map).__name__}; e.g. Reader(shard_map=JsonFileMapStore(path), ...)"
            )
        if max_attempts < 1:
            raise ConfigurationError(f"'max_attempts' must be >= 1: {max_attempts!r}")
        for name, value in (("max_lag", max_lag), ("wait_for_position", wait_for_position)):
            if value is None and name == "max_lag":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigurationError(
                    f"'{name}' must be a number of seconds >= 0: {value!r}; e.g. {name}=5"
                )
        self._max_lag = max_lag
        self._wait = float(wait_for_position)
        self._provider = provider
        self._tables = {t.name: t for t in tables}
        self._shard_key = tuple(shard_key)
        self._max_workers = max_workers
        self._system = system_tables or SystemTables()
        self._attempts = max_attempts
        self._retry = retry or RetryPolicy(max_attempts=DEFAULT_READ_ATTEMPTS)
        self._at_gap = at_gap

    @property
    def shard_map(self) -> ShardMap:
        """The map routing point reads (the newest loaded, with a map store)."""
        return self._holder.map

    def use_map(self, shard_map: ShardMap) -> None:
        """Route with ``shard_map`` from now on (e.g. after a reshard finished)."""
        self._holder.map = shard_map

    def _failover(
        self,
        call: Callable[[_Routes], _T],
        replica: bool,
        positions: Mapping[str, str | None] | None,
    ) -> _T:
        """Run ``call`` with one server per shard; on a replica's failure, again elsewhere."""
        if not replica:
            return call(_Routes(self._provider, replica=False))
        error: Exception | None = None
        for _ in range(_FAILOVERS):
            routes = _Routes(
                self._provider,
                replica=True,
                max_lag=self._max_lag,
                positions=positions,
                wait=self._wait,
            )
            try:
                return call(routes)
            except _FAILED as exc:
                if not routes.failed:
                    raise  # the primary failed: nothing to fail over to
                error = exc
            except _BehindAMove as behind:
                if not getattr(self._provider, "fallback_to_primary", True):
                    raise NoReplicaAvailableError(
                        f"shard {behind.shard!r}: its replica has not applied a reshard step "
                        "its primary made, and fallback_to_primary is off; read again later",
                        shard=behind.shard,
                    ) from None
                log.info("replica of %r is behind a reshard step: reading primaries", behind.shard)
                return call(routes.primaries(reason="moving"))
        assert error is not None  # noqa: S101 - the loop ran at least once
        if not getattr(self._provider, "fallback_to_primary", True):
            raise error
        # Replicas kept failing under this call (more of them than attempts): the primaries.
        return call(_Routes(self._provider, replica=True, force_primary=True, reason="down"))

    def _behind(
        self, pool: ThreadPoolExecutor, views: Mapping[str, _View], table: str, routes: _Routes
    ) -> list[str]:
        """The shards read from a replica whose move state differs from their primary's now."""
        shards = routes.replica_shards(sorted(views))
        if not shards:
            return []
        primary = routes.primaries()
        futures = {s: pool.submit(self._view, s, table, primary) for s in shards}
        return [s for s, f in futures.items() if f.result() != views[s]]

    def _retrying(self, read: Callable[[], _T]) -> _T:
        """Run ``read`` again after a transient failure, within the retry policy."""
        delays = self._retry.delays()
        while True:
            try:
                return read()
            except SlotsMovedDuringReadError:
                raise  # the read's own attempts (max_attempts) were spent on moving slots
            except ShardbillError as error:
                delay = next(delays, None) if is_retryable(error) else None
                if delay is None:
                    raise
                log.info("a read failed (%s); reading again", describe(error))
                time.sleep(delay)

    def _gap(self, name: str) -> None:
        if self._at_gap is not None:
            self._at_gap(name)

    def _interrupted(self, what: str) -> SlotsMovedDuringReadError:
        return SlotsMovedDuringReadError(
            f"{what}: slots moved during each of {self._attempts} attempts (a reshard is "
            "running); read again"
        )

    def _table(self, name: str) -> AggregateTable:
        try:
            return self._tables[name]
        except KeyError:
            raise ConfigurationError(
                f"unknown aggregate table {name!r}; known: {sorted(self._tables)}"
            ) from None

    def _shard_key_column(self, table: AggregateTable) -> str:
        if len(self._shard_key) != 1:
            raise ConfigurationError("point reads by account need a one-part shard key")
        for column in table.keys:
            if column.projection == self._shard_key[0]:
                return column.name
        raise ConfigurationError(f"table {table.name!r} has no shard key column")

    def rows(
        self,
        table: str,
        account: KeyValue,
        *,
        where: Mapping[str, KeyValue] | None = None,
        replica: bool = False,
        after: WriteResult | Mapping[str, str | None] | None = None,
    ) -> list[AggregateRow]:
        """An account's rows of ``table`` (optionally filtered), from the shard that owns it.

        Args:
            table: the table name.
            account: the shard key value (the account id).
            where: more key columns to filter on, ``column -> value``.
            replica: read from a replica if the provider has one (see the class
                docstring: one server per shard per call, ``max_lag``, failover).
            after: read your writes: a :class:`~shardbill.writer.WriteResult`
                (of a writer with ``track_positions=True``) or its
                ``positions``; each shard it wrote is read from a replica that
                has applied the write (waiting up to ``wait_for_position``
                seconds), else from the primary.

        Raises:
            SlotsMovedDuringReadError: the account's slot kept moving during every attempt.
            NoReplicaAvailableError: ``replica=True``, no replica could serve and
                the provider may not fall back to the primary.

        Example:
            >>> reader.rows("usage_monthly", 42, where={"month": nov})  # doctest: +SKIP
        """
        spec = self._table(table)
        filters = {self._shard_key_column(spec): account, **(where or {})}
        self._check_filters(spec, filters)
        positions = _positions(after)
        return self._retrying(
            lambda: self._failover(
                lambda routes: self._rows_once(spec, account, filters, routes), replica, positions
            )
        )

    def _rows_once(
        self,
        spec: AggregateTable,
        account: KeyValue,
        filters: Mapping[str, KeyValue],
        routes: _Routes,
    ) -> list[AggregateRow]:
        table = spec.name
        for _ in range(self._attempts):
            shard_map = self.shard_map
            slot = shard_map.slot_for(account)  # type: ignore[arg-type]
            shard, state, peer, seen = self._locate(shard_map.owner(slot), slot, spec, routes)
            self._gap("rows:located")
            source_rows: dict[tuple[KeyValue, ...], list[int]] = {}
            if state == SlotState.INCOMING and peer:
                source_rows = self._raw_rows(peer, spec, filters, slots=(slot,), routes=routes)[
                    slot
                ]
            self._gap("rows:source")
            with self._snapshot(shard, routes) as (cursor, dialect):
                progress = self._progress(cursor, dialect, spec.name, (slot,))
                own = self._raw_rows_in(cursor, dialect, spec, filters, slots=None)
            self._gap("rows:target")
            if len(seen) > 1:  # the map sent the read to a shard that handed the slot over
                self._holder.refresh(shard_map.epoch)
            if self._locate(shard_map.owner(slot), slot, spec, routes)[3] != seen:
                continue  # the slot moved on during the read
            if routes.on_replicas() and (
                self._locate(shard_map.owner(slot), slot, spec, routes.primaries())[3] != seen
            ):
                raise _BehindAMove(shard)  # a replica has not applied a move step yet
            merged: dict[tuple[KeyValue, ...], list[int]] = {}
            for rows in own.values():
                _merge_into(merged, rows, spec)
            _merge_into(merged, _unmerged(source_rows, progress.get(slot), spec), spec)
            return [
                AggregateRow(
                    key=dict(zip(spec.key_names, key, strict=True)),
                    measures=self._measures(spec, values),
                )
                for key, values in sorted(merged.items())
            ]
        raise self._interrupted(f"rows of {table!r} for account {account!r}")

    def _locate(
        self, shard: str, slot: int, spec: AggregateTable, routes: _Routes
    ) -> tuple[str, str, str | None, tuple[object, ...]]:
        """Follow ``slot``'s forwarding addresses from ``shard`` to where it lives now.

        Returns the shard, its state and peer for the slot, and everything seen on
        the way (each shard's row, and the final shard's merge progress): the same
        walk after the read must see the same, or the read is not exact.
        """
        seen: list[object] = []
        for _ in range(8):
            with self._snapshot(shard, routes) as (cursor, dialect):
                cursor.execute(
                    f"SELECT state, peer, epoch FROM {dialect.quote(self._system.slots)} "
                    f"WHERE {SLOT_COLUMN} = {int(slot)}",
                    (),
                )
                row = cursor.fetchone()
                state, peer = ("", None) if row is None else (str(row[0]), row[1])
                peer = None if peer is None else str(peer)
                progress = (
                    self._progress(cursor, dialect, spec.name, (slot,)).get(slot)
                    if state == SlotState.INCOMING
                    else None
                )
            seen.append((shard, state, peer, None if row is None else int(row[2]), progress))
            if state == SlotState.GONE and peer:
                shard = peer
                continue
            return shard, state, peer, tuple(seen)
        raise InvalidInputError(  # pragma: no cover - needs a forwarding loop on the shards
            f"slot {slot}: more than 8 forwarding addresses from {seen[0]}; run "
            "`shardbill reshard verify`"
        )

    def totals(
        self,
        table: str,
        *,
        group_by: Sequence[str],
        where: Mapping[str, KeyValue] | None = None,
        replica: bool = False,
        after: WriteResult | Mapping[str, str | None] | None = None,
    ) -> dict[tuple[KeyValue, ...], dict[str, Measure]]:
        """Totals over every shard, grouped by key columns, merged per measure kind.

        Every shard a move names (as a forwarding address or as the source of an
        incoming slot) joins the read, so a removed shard's rows are counted
        until they are merged, whichever map the reader holds.

        Args:
            table: the table name.
            group_by: key columns to group by (empty: one grand total).
            where: key columns to filter on, ``column -> value``.
            replica: read each shard from one of its replicas (see :meth:`rows`).
            after: read your writes (see :meth:`rows`).

        Raises:
            SlotsMovedDuringReadError: slots kept moving during every attempt.
            NoReplicaAvailableError: see :meth:`rows`.

        Example:
            >>> reader.totals("usage_monthly", group_by=["product"],
            ...               where={"month": date(2026, 11, 1)})  # doctest: +SKIP
            {('sms',): {'quantity': Decimal('1200.000000'), 'amount': ..., 'charges': 900}}
        """
        spec = self._table(table)
        keys = {c.name for c in spec.keys}
        for column in group_by:
            if column not in keys:
                raise InvalidInputError(
                    f"group_by column {column!r} is not a key column of {table!r}; "
                    f"choose from {sorted(keys)}"
                )
        filters = dict(where or {})
        self._check_filters(spec, filters)
        written = _positions(after)
        return self._retrying(
            lambda: self._failover(
                lambda routes: self._totals_once(spec, list(group_by), filters, routes),
                replica,
                written,
            )
        )

    def _totals_once(
        self,
        spec: AggregateTable,
        group_by: list[str],
        filters: Mapping[str, KeyValue],
        routes: _Routes,
    ) -> dict[tuple[KeyValue, ...], dict[str, Measure]]:
        table = spec.name
        positions = [spec.key_names.index(c) for c in group_by]
        workers = max(1, min(self._max_workers, len(self.shard_map.shards)))
        with ThreadPoolExecutor(max_workers=workers) as pool:

            def submit_part(shard: str) -> Future[dict[tuple[KeyValue, ...], list[int]]]:
                return pool.submit(
                    self._grouped,
                    shard,
                    spec,
                    filters,
                    group_by=list(group_by),
                    gone=set(views[shard].slots_in(SlotState.GONE)),
                    routes=routes,
                )

            for _ in range(self._attempts):
                epoch = self.shard_map.epoch
                views = self._views(pool, sorted(self.shard_map.shards), spec.name, routes)
                shards = sorted(views)
                self._gap("totals:views")
                # The rows of slots handed over, still on their sources.
                moving_futures = [
                    (
                        s,
                        pool.submit(
                            self._raw_rows, s, spec, filters, slots=tuple(gone), routes=routes
                        ),
                    )
                    for s in shards
                    if (gone := views[s].slots_in(SlotState.GONE))
                ]
                moving = [(s, f.result()) for s, f in moving_futures]
                self._gap("totals:sources")
                # Per shard, one snapshot of its own rows (those it did not hand over).
                # With a gap hook, one shard after the other, so a test can step in between.
                parts = []
                futures = {} if self._at_gap else {s: submit_part(s) for s in shards}
                for shard in shards:
                    future = futures.get(shard) or submit_part(shard)
                    parts.append(future.result())
                    self._gap(f"totals:part:{shard}")
                held = self.shard_map
                if any(
                    held.owner(slot) == s
                    for s in held.shards
                    if s in views  # (another thread may have loaded a newer map meanwhile)
                    for slot in views[s].slots_in(SlotState.GONE)
                ):  # the map gives a shard a slot it handed over: a newer map exists
                    self._holder.refresh(epoch)
                if self._views(pool, shards, spec.name, routes) != views:
                    continue  # a slot was fenced, merged or finished during the read
                behind = self._behind(pool, views, spec.name, routes)
                if behind:
                    raise _BehindAMove(behind[0])  # a replica has not applied a move step yet
                break
            else:
                raise self._interrupted(f"totals of {table!r}")
        merged: dict[tuple[KeyValue, ...], list[int]] = {}
        for grouped in parts:
            _merge_into(merged, grouped, spec)
        for source, shard_rows in moving:
            for slot, rows in shard_rows.items():
                target = views[source].slots_in(SlotState.GONE)[slot]
                # Progress counts only on the slot's current target (the source's peer): a
                # finished record elsewhere belongs to an earlier move of the same slot.
                slot_progress = views[target].progress.get(slot) if target in views else None
                for key, values in _unmerged(rows, slot_progress, spec).items():
                    _merge_into(merged, {tuple(key[i] for i in positions): values}, spec)
        return {key: self._measures(spec, values) for key, values in sorted(merged.items())}

    def _views(
        self, pool: ThreadPoolExecutor, shards: Sequence[str], table: str, routes: _Routes
    ) -> dict[str, _View]:
        """Each shard's :class:`_View`, with every shard a view names as a peer joining."""
        views: dict[str, _View] = {}
        pending = list(shards)
        while pending:
            futures = {s: pool.submit(self._view, s, table, routes) for s in pending}
            views.update({s: f.result() for s, f in futures.items()})
            peers = {peer for v in views.values() for _, peer, _ in v.states.values() if peer}
            pending = sorted(peers - set(views))
        return views

    def _view(self, shard: str, table: str, routes: _Routes) -> _View:
        with self._snapshot(shard, routes) as (cursor, dialect):
            cursor.execute(
                f"SELECT {SLOT_COLUMN}, state, peer, epoch FROM "
                f"{dialect.quote(self._system.slots)} WHERE state <> {dialect.placeholder}",
                (SlotState.OWNED.value,),
            )
            states = {
                int(slot): (str(state), None if peer is None else str(peer), int(epoch))
                for slot, state, peer, epoch in cursor.fetchall()
            }
            progress = self._progress(cursor, dialect, table, None)
        return _View(states=states, progress=progress)

    # ------------------------------------------------------------------ internals

    def _check_filters(self, spec: AggregateTable, filters: Mapping[str, KeyValue]) -> None:
        columns = {c.name: c for c in spec.keys}
        for name, value in filters.items():
            column = columns.get(name)
            if column is None:
                raise InvalidInputError(
                    f"filter column {name!r} is not a key column of {spec.name!r}; "
                    f"choose from {sorted(columns)}"
                )
            column.type.check(value, column=name)

    def _measures(self, spec: AggregateTable, values: Sequence[int]) -> dict[str, Measure]:
        out: dict[str, Measure] = {}
        for measure, units in zip(spec.measures, values, strict=True):
            scale = measure.value.scale
            out[measure.name] = money.from_minor_units(int(units), scale) if scale else int(units)
        return out

    def _key_value(self, spec: AggregateTable, name: str, raw: object) -> KeyValue:
        column = next(c for c in spec.keys if c.name == name)
        if isinstance(column.type, Date):
            if isinstance(raw, dt.date):
                return raw
            return dt.date.fromisoformat(str(raw))
        if isinstance(raw, bytes):
            return raw.decode("utf-8")
        return raw  # type: ignore[return-value]

    def _where(
        self, filters: Mapping[str, KeyValue], placeholder: str, quote: Callable[[str], str]
    ) -> list[str]:
        return [f"{quote(c)} = {placeholder}" for c in filters]

    @contextlib.contextmanager
    def _snapshot(self, shard: str, routes: _Routes) -> Iterator[tuple[DBAPICursor, Dialect]]:
        """One transaction whose reads all see the same committed state (on the call's server)."""
        with routes.connection(shard) as conn:
            dialect = dialect_for(conn)
            cursor = conn.cursor()
            try:
                if not dialect.embedded:
                    # Pooled connections may carry the writer's READ COMMITTED.
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", ())
                yield cursor, dialect
            finally:
                cursor.close()

    def _progress(
        self, cursor: DBAPICursor, dialect: Dialect, table: str, slots: Sequence[int] | None
    ) -> dict[int, tuple[int, str | None]]:
        """Merge progress per incoming slot: (done, last merged key as JSON)."""
        sql = (
            f"SELECT {SLOT_COLUMN}, done, last_key FROM {dialect.quote(self._system.moves)} "
            f"WHERE table_name = {dialect.placeholder}"
        )
        if slots is not None:
            sql += f" AND {SLOT_COLUMN} IN ({', '.join(str(int(s)) for s in slots)})"
        cursor.execute(sql, (table,))
        return {
            int(slot): (int(done), str(last) if last is not None else None)
            for slot, done, last in cursor.fetchall()
        }

    def _raw_rows(
        self,
        shard: str,
        spec: AggregateTable,
        filters: Mapping[str, KeyValue],
        *,
        slots: tuple[int, ...],
        routes: _Routes,
    ) -> dict[int, dict[tuple[KeyValue, ...], list[int]]]:
        with self._snapshot(shard, routes) as (cursor, dialect):
            found = self._raw_rows_in(cursor, dialect, spec, filters, slots=slots)
        return {slot: found.get(slot, {}) for slot in slots}

    def _raw_rows_in(
        self,
        cursor: DBAPICursor,
        dialect: Dialect,
        spec: AggregateTable,
        filters: Mapping[str, KeyValue],
        *,
        slots: Sequence[int] | None,
    ) -> dict[int, dict[tuple[KeyValue, ...], list[int]]]:
        q = dialect.quote
        columns = ", ".join(q(c) for c in (*spec.key_names, SLOT_COLUMN, *spec.measure_names))
        conditions = self._where(filters, dialect.placeholder, q)
        if slots is not None:
            conditions.append(f"{SLOT_COLUMN} IN ({', '.join(str(int(s)) for s in slots)})")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        cursor.execute(
            f"SELECT {columns} FROM {q(spec.name)}{where}", [_bind(v) for v in filters.values()]
        )
        out: dict[int, dict[tuple[KeyValue, ...], list[int]]] = {}
        n = len(spec.keys)
        for row in cursor.fetchall():
            key = tuple(self._key_value(spec, c, row[i]) for i, c in enumerate(spec.key_names))
            out.setdefault(int(row[n]), {})[key] = [int(v) for v in row[n + 1 :]]
        return out

    def _grouped(
        self,
        shard: str,
        spec: AggregateTable,
        filters: Mapping[str, KeyValue],
        *,
        group_by: list[str],
        gone: set[int],
        routes: _Routes,
    ) -> dict[tuple[KeyValue, ...], list[int]]:
        with self._snapshot(shard, routes) as (cursor, dialect):
            q = dialect.quote
            aggregates = ", ".join(f"{m.merge.value.upper()}({q(m.name)})" for m in spec.measures)
            head = ", ".join(q(c) for c in group_by)
            select = f"{head}, {aggregates}" if group_by else aggregates
            conditions = self._where(filters, dialect.placeholder, q)
            if gone:
                conditions.append(
                    f"{SLOT_COLUMN} NOT IN ({', '.join(str(int(s)) for s in sorted(gone))})"
                )
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            sql = f"SELECT {select} FROM {q(spec.name)}{where}"
            if group_by:
                sql += f" GROUP BY {head}"
            cursor.execute(sql, [_bind(v) for v in filters.values()])
            fetched = cursor.fetchall()
        out: dict[tuple[KeyValue, ...], list[int]] = {}
        n = len(group_by)
        for row in fetched:
            if row[n] is None:  # an aggregate over no rows
                continue
            key = tuple(self._key_value(spec, c, row[i]) for i, c in enumerate(group_by))
            out[key] = [int(v) for v in row[n:]]
        return out


def _merge_into(
    merged: dict[tuple[KeyValue, ...], list[int]],
    rows: Mapping[tuple[KeyValue, ...], Sequence[int]],
    spec: AggregateTable,
) -> None:
    kinds = [m.merge for m in spec.measures]
    for key, values in rows.items():
        current = merged.get(key)
        if current is None:
            merged[key] = list(values)
            continue
        for i, kind in enumerate(kinds):
            if kind is MergeKind.SUM:
                current[i] += values[i]
            elif kind is MergeKind.MIN:
                current[i] = min(current[i], values[i])
            else:
                current[i] = max(current[i], values[i])


def _unmerged(
    rows: Mapping[tuple[KeyValue, ...], list[int]],
    progress: tuple[int, str | None] | None,
    spec: AggregateTable,
) -> dict[tuple[KeyValue, ...], list[int]]:
    """The source rows the target has not merged yet (by the target's progress)."""
    if progress is None:
        return dict(rows)
    done, last = progress
    if done:
        return {}
    if last is None:
        return dict(rows)
    bound = tuple(_comparable(v) for v in json.loads(last))
    return {
        key: values for key, values in rows.items() if tuple(_comparable(v) for v in key) > bound
    }


def _comparable(value: object) -> object:
    return value.isoformat() if isinstance(value, dt.date) else value


def _bind(value: KeyValue) -> object:
    return value.isoformat() if isinstance(value, dt.date) else value
