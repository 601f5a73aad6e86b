"""The aggregation writer: deliveries in, aggregate rows updated exactly once on the right shard.

:meth:`AggregationWriter.write` plans a call (:mod:`shardbill.writer.planning`:
events, units, identity claims, rejections), then runs it in at most two
rounds of shard transactions, each round in parallel on a bounded pool:

* **Round 1** runs, on each event's *home shard* (where its id hashes to),
  its identity claim together with its units on that shard. An event whose
  units all sit there (every event, with one shard) is done in round 1.
* **Round 2** runs the remaining units of the events whose claim is in
  (applied by round 1, or found from an earlier delivery with the same
  content). An event whose claim conflicts is not touched again.

Each transaction, on one shard:

1. fence: read the ownership rows of its slots with a shared lock; a slot
   the shard does not own raises :class:`~shardbill.errors.FencedError`;
   the rows also carry each slot's dedup watermark;
2. ledger check: which ``(slot, event_id)`` rows exist already (same
   fingerprint: duplicate; other: conflict, and nothing of that event is
   applied here); for a slot still arriving from another shard during a
   reshard, that shard's ledger (and watermark) is read first;
3. period gate: the billing periods' states on the shard (the gate row of
   ``shardbill_periods`` read with a shared lock, so a close waits for this
   transaction or this transaction sees the close); the new units of an
   event of a closing or closed period are withheld as
   :mod:`shardbill.periods.gate` says;
4. ledger insert for the new units (a plain INSERT: a concurrent writer that
   claimed the same unit makes it fail with a duplicate key, and the retry
   sees the unit as done);
5. one multi-row UPSERT per aggregate table with the coalesced deltas of the
   new units, rows sorted by primary key (a sum that would leave its column's
   range, BIGINT or a wide measure's DECIMAL(65,0), makes
   the transaction run again, carefully: the rows' stored values are read
   under lock and only the events that would overflow are refused);
6. commit.

Transient failures (deadlock, lock-wait timeout, lost connection, read-only
server, refused connection, killed query, concurrent claim) are retried with
jittered backoff within a time budget. A lost COMMIT is never guessed about:
the retry reads the ledger, and units found there with this call's tokens
are reported as applied; if the retries run out, the ledger is read once more
before anything is reported. A fenced shard makes the writer follow the
slot's forwarding address, or reload the shard map.

The argument that this is exactly once is in ``docs/explanation/exactly-once.md``.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import secrets
import threading
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeGuard, cast

import attrs

from shardbill.declarations import Declaration, ReplayJudge
from shardbill.declarations.store import read_history, record_on
from shardbill.dialects.base import Dialect, UpsertSpec
from shardbill.dialects.detect import dialect_for
from shardbill.dialects.replication import write_position
from shardbill.dialects.translate import is_driver_error, translate
from shardbill.errors import (
    CommitOutcomeUnknownError,
    ConfigurationError,
    FencedError,
    RowOverflowError,
    SchemaError,
    ShardbillError,
)
from shardbill.mapstore.base import MapHistory, MapStore
from shardbill.observe import Committed, Failed, MapReloaded, Observer, Rejected, Retried
from shardbill.periods.close import fleet_shards
from shardbill.periods.gate import REFUSE, Rebooker, check_policy, judge_late
from shardbill.periods.months import Period, period_of
from shardbill.periods.store import read_states, split_states
from shardbill.protocols import ChecksParameters, MapSource, WrapsConnection
from shardbill.providers.base import ConnectionProvider, DBAPIConnection, DBAPICursor
from shardbill.retry import RetryPolicy, describe, is_retryable
from shardbill.rules.events import PricedEvent
from shardbill.shardmap import ShardMap
from shardbill.tables import SlotState, SystemTables, aggregate_table_def
from shardbill.tables.aggregates import (
    SLOT_COLUMN,
    Account,
    AggregateTable,
    BigInt,
    ChargeLike,
    Projection,
    VarChar,
)
from shardbill.writer.extraction import RowDelta
from shardbill.writer.motion import combine, merge_marks, read_rows, sql_value, unmerged_scope
from shardbill.writer.planning import (
    CoalescedRow,
    IdScope,
    Plan,
    Rejection,
    RowExtractor,
    ShardWork,
    Unit,
    by_event,
    classify,
    coalesce,
    deltas_fit,
    find_overflows,
    plan_batch,
    plan_rows,
    refusals_ahead,
    split_by_claim,
    spread_events,
)
from shardbill.writer.results import Conflict, EventState, EventTally, ShardResult, WriteResult
from shardbill.writer.schema import apply_schema, check_schema
from shardbill.writer.upserts import RowStatements

__all__ = [
    "AggregationWriter",
    "Conflict",
    "EventState",
    "IdScope",
    "MapSource",
    "PricedEvent",
    "ShardResult",
    "WriteResult",
    "WriterSettings",
]

log = logging.getLogger("shardbill.writer")

DAY = 86_400

#: After a reload that found no newer map, fenced writes follow forwarding
#: addresses without reloading for this long, doubling each time the map is
#: still the same (up to RELOAD_QUIET_MAX_SECONDS): a reshard stuck between
#: fence and publish costs each writer a few reloads, not one per write.
RELOAD_QUIET_SECONDS = 5.0
RELOAD_QUIET_MAX_SECONDS = 300.0


def wall_clock() -> float:
    """This host's Unix time: the writer's clock unless it is given one."""
    return time.time()


@attrs.frozen(kw_only=True)
class WriterSettings:
    """How the writer runs.

    Args:
        max_workers: shard transactions run in parallel (a bounded pool).
        retry: the backoff policy for transient failures (bounded by time:
            the default rides through a 30-second failover).
        system_tables: the names of the ledger and slot-ownership tables.
        max_rows_per_statement: rows in one multi-row statement (also bounded
            by the server's ``max_allowed_packet``).
        read_committed: run write transactions at READ COMMITTED on MySQL
            (fewer gap locks, so fewer deadlocks; the ledger argument holds at
            any isolation level).
        max_map_reloads: how many times one ``write`` follows fences (and
            reloads the map) before it reports the units as failed.
        ledger_retention_days: the dedup horizon, in days: an event older
            than this (by its own time) is refused as too late, and
            :meth:`AggregationWriter.prune` deletes ledger rows of events
            older than this. Keep it longer than any replay of the stream.
        id_scope: where an event id must be unique (see
            :class:`~shardbill.writer.planning.IdScope`); the default
            :attr:`~shardbill.writer.planning.IdScope.GLOBAL` makes the same id with
            other content a conflict on any account.
        track_positions: after each shard transaction, ask the primary for its
            replication position (MariaDB ``@@last_gtid``; one more round trip
            per shard transaction) and return it in
            :attr:`WriteResult.positions`, so a reader can read its writes on a
            replica (``Reader.totals(..., replica=True, after=result)``).
        late_events: the late-event policy for an event of a closing or
            closed period: ``"refuse"`` (the default: rejected with its
            reason) or ``"adjust"`` (booked into the first open period, the
            period it belongs to recorded in ``shardbill_adjustments``; see
            :mod:`shardbill.periods.gate`).
    """

    max_workers: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    system_tables: SystemTables = attrs.field(factory=SystemTables)
    max_rows_per_statement: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    read_committed: bool = True
    max_map_reloads: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    ledger_retention_days: int = attrs.field(default=35, validator=attrs.validators.ge(1))
    id_scope: IdScope = attrs.field(default=IdScope.GLOBAL, converter=IdScope)
    track_positions: bool = False
    late_events: str = attrs.field(default=REFUSE, converter=check_policy)


@attrs.frozen
class _Outcome:
    """What one committed transaction did."""

    applied: tuple[Unit, ...]
    duplicates: tuple[Unit, ...]
    conflicts: tuple[Conflict, ...]
    withheld: dict[str, Rejection]
    deferred: tuple[Unit, ...]
    rows: int
    statements: int
    tokens: dict[Unit, str | None]  # the writer token stored with each duplicate
    position: str | None = None  # the primary's GTID after the commit (when tracked)


@attrs.frozen
class _ShardRun:
    """One shard's transaction for one round, after its retries: success or failure."""

    work: ShardWork
    outcome: _Outcome | None = None
    error: ShardbillError | None = None
    attempts: int = 0
    lost_applied: tuple[Unit, ...] = ()  # resolved through the ledger after a lost COMMIT
    lost_duplicates: tuple[Unit, ...] = ()


class _NeedsCareError(Exception):
    """Internal: a merged delta leaves its column's range; run the transaction carefully."""


def _row_maker(table: AggregateTable) -> Callable[[CoalescedRow], tuple[object, ...]]:
    """Coalesced row -> values in ``table.columns`` order, dates as ISO text.

    Dates travel as ISO text: MySQL DATE columns accept it, SQLite stores it
    as TEXT. The key's validated types are known per column, so only the date
    positions are converted.
    """
    # Dates, and whatever a column type of the user's own may hold.
    dates = [i for i, c in enumerate(table.keys) if not isinstance(c.type, BigInt | VarChar)]
    if not dates:
        return lambda r: (*r.key, r.slot, *r.deltas)

    def make(r: CoalescedRow) -> tuple[object, ...]:
        key: list[object] = list(r.key)
        for i in dates:
            key[i] = sql_value(key[i])
        return (*key, r.slot, *r.deltas)

    return make


class AggregationWriter:
    """Writes usage charges exactly once into aggregate tables on the shards of a shard map.

    Args:
        shard_map: the map to route with, or a :class:`MapSource` to load it
            from (and to reload from when a shard fences a slot).
        provider: lends connections per shard.
        tables: the aggregate tables every charge updates.
        shard_key: the projections whose values make the shard key (default:
            the paying account). Every table must have a key column for each.
        settings: see :class:`WriterSettings`.
        observer: called with a :data:`~shardbill.observe.WriteEvent` for
            every commit, retry, failure, rejection and map reload.
        clock: Unix time, the writer's one clock: the dedup horizon is
            measured from it and :meth:`prune` uses it (default: this host's
            wall clock; the shards' watermarks keep pruning safe even when
            hosts' clocks disagree).

    Example:
        >>> writer = AggregationWriter(shard_map=m, provider=p, tables=[daily])  # doctest: +SKIP
        >>> writer.ensure_schema()  # doctest: +SKIP
        >>> result = writer.write(priced_events)  # doctest: +SKIP
        >>> result.ok, len(result.done)  # doctest: +SKIP
        (True, 2000)
    """

    def __init__(
        self,
        *,
        shard_map: ShardMap | MapSource,
        provider: ConnectionProvider,
        tables: Sequence[AggregateTable],
        shard_key: Sequence[Projection] = (Account(),),
        settings: WriterSettings | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not tables:
            raise ConfigurationError("AggregationWriter needs at least one aggregate table")
        if not shard_key:
            raise ConfigurationError("shard_key needs at least one projection")
        names = [t.name for t in tables]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"aggregate table names must be unique: {names}")
        for table in tables:
            for projection in shard_key:
                if not table.has_projection(projection):
                    raise ConfigurationError(
                        f"table {table.name!r} has no key column for shard key part "
                        f"{projection.name!r}; add one (every row's slot must follow from its key)"
                    )
        self._settings = settings or WriterSettings()
        if isinstance(shard_map, ShardMap):
            self._map = shard_map
            self._source: MapSource | None = None
        else:
            self._source = shard_map
            self._map = shard_map.load()
        self._provider = provider
        self._tables = tuple(tables)
        # Only a table set with a wide measure checks merged deltas per column range.
        self._ranges = self._tables if any(t.has_wide for t in self._tables) else None
        self._extractor = RowExtractor(self._tables)
        self._rebooker = Rebooker(self._tables) if self._settings.late_events != REFUSE else None
        self._shard_key = tuple(shard_key)
        self._observer = observer
        self._specs = tuple(
            UpsertSpec(
                table=t.name,
                columns=t.columns,
                key_columns=t.key_names,
                merges=tuple((m.name, m.merge) for m in t.measures),
            )
            for t in self._tables
        )
        self._row_makers = tuple(_row_maker(t) for t in self._tables)
        sys_tables = self._settings.system_tables
        self._ledger_spec = UpsertSpec(
            table=sys_tables.ledger,
            columns=sys_tables.ledger_columns(),
            key_columns=(SLOT_COLUMN, "event_id"),
        )
        self._adjust_spec = UpsertSpec(
            table=sys_tables.adjustments,
            columns=(
                "event_id",
                SLOT_COLUMN,
                "event_time",
                "belongs_to",
                "booked_in",
                "adjusted_at",
            ),
            key_columns=("event_id", SLOT_COLUMN),
        )
        self._dialects: dict[str, Dialect] = {}
        self._renderers: dict[tuple[Dialect, UpsertSpec], RowStatements] = {}
        self._prepared: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=self._settings.max_workers, thread_name_prefix="shardbill-writer"
        )
        self._closed = False
        self._checked: set[str] = set()
        self._judges: dict[frozenset[str], ReplayJudge] = {}  # by the history's versions
        self._clock = clock if clock is not None else wall_clock
        # Forwarding addresses learned from fences (slot -> shard), until a newer map.
        self._forward: dict[int, str] = {}
        # Slots last seen in motion with rows written to them: the fence locks these
        # exclusively at once rather than upgrading (see _motion_headroom).
        self._moving_hint: set[int] = set()
        self._quiet_until = 0.0  # no reload before this (monotonic), unless a fence has no address
        self._quiet = RELOAD_QUIET_SECONDS

    # ------------------------------------------------------------------ public

    @property
    def shard_map(self) -> ShardMap:
        """The shard map the writer routes with now."""
        return self._map

    @property
    def tables(self) -> tuple[AggregateTable, ...]:
        """The aggregate tables."""
        return self._tables

    @property
    def settings(self) -> WriterSettings:
        """The writer's settings."""
        return self._settings

    def close(self) -> None:
        """Stop the worker threads (the provider is the caller's to close). Idempotent."""
        self._closed = True
        self._pool.shutdown(wait=True)

    def __enter__(self) -> AggregationWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure_schema(self) -> None:
        """Create missing tables on every shard and record first ownership; then check.

        Applying twice is a no-op.

        Raises:
            SchemaError: a table exists with a different shape than its spec.
        """
        apply_schema(
            self._provider,
            self._map,
            self._tables,
            system_tables=self._settings.system_tables,
            retry=self._settings.retry,
        )
        self.check_schema()

    def check_schema(self, shards: Sequence[str] | None = None) -> None:
        """Compare the live schema with the specs on ``shards`` (default: all).

        Once they match, the writer's declaration is recorded in each shard's
        declaration history (if it is not there yet), so that its ledger rows
        can be recognised after a later schema change
        (:mod:`shardbill.declarations`).

        Raises:
            SchemaError: listing every difference (shard, table, column, fix).
        """
        names = sorted(self._map.shards) if shards is None else list(shards)
        check_schema(
            self._provider, names, self._tables, system_tables=self._settings.system_tables
        )
        # The declaration this writer's fingerprints are made under, kept in each shard's
        # history so a later declaration can recognise their replays (idempotent).
        record_on(
            self._provider,
            names,
            Declaration.of(self._tables),
            system_tables=self._settings.system_tables,
        )
        with self._lock:
            self._checked.update(names)

    def horizon(self, now: float | None = None) -> int:
        """The dedup horizon at ``now`` (default: the writer's clock), in Unix seconds.

        Events before it are refused as too late; :meth:`prune` deletes ledger
        rows of events before it.
        """
        moment = self._clock() if now is None else now
        return int(moment) - self._settings.ledger_retention_days * DAY

    def known_shards(self) -> tuple[str, ...]:
        """Every shard the map source has named: the current map's, and every kept epoch's."""
        names = set(self._map.shards)
        source: object = self._source
        if isinstance(source, MapHistory):
            for epoch in source.history():
                with contextlib.suppress(ShardbillError):
                    names.update(source.load_epoch(epoch).shards)
        return tuple(sorted(names))

    def prune(
        self,
        *,
        now: float | None = None,
        chunk_rows: int = 10_000,
        shards: Sequence[str] | None = None,
        dry_run: bool = False,
        progress: Callable[[str, int], None] | None = None,
    ) -> dict[str, int]:
        """Delete the ledger rows of events older than the dedup horizon, in bounded chunks.

        On each shard, first the watermark of every owned slot is raised to
        the horizon (from then on, events before it are refused there, even
        by a writer whose clock is behind), then the rows below it are
        deleted, each chunk its own short transaction. Slots in motion
        (incoming or gone) are pruned by neither side until their move
        finishes. Failures are retried like writes.

        Args:
            now: the current Unix time (default: the writer's clock).
            chunk_rows: rows deleted per transaction.
            shards: the shards to prune (default: :meth:`known_shards`).
            dry_run: count the rows that would be deleted; change nothing.
            progress: called with (shard, rows so far) after each chunk.

        Returns:
            Rows deleted (or, with ``dry_run``, deletable) per shard.

        Raises:
            ShardbillError: a shard failed past the retry budget (after every
                other shard was pruned).
        """
        if chunk_rows < 1:
            raise ConfigurationError(f"'chunk_rows' must be >= 1: {chunk_rows}")
        cutoff = self.horizon(now)
        done: dict[str, int] = {}
        errors: list[ShardbillError] = []
        for shard in shards if shards is not None else self.known_shards():
            try:
                done[shard] = self._prune_shard(shard, cutoff, chunk_rows, dry_run, progress)
            except ShardbillError as error:
                log.error("prune of shard %s failed: %s", shard, describe(error))
                errors.append(error)
                continue
            log.info(
                "%s %d ledger rows on shard %s (events before %d)",
                "could prune" if dry_run else "pruned",
                done[shard],
                shard,
                cutoff,
            )
        if errors:
            raise errors[0]
        return done

    def _prune_shard(
        self,
        shard: str,
        cutoff: int,
        chunk_rows: int,
        dry_run: bool,
        progress: Callable[[str, int], None] | None,
    ) -> int:
        system = self._settings.system_tables
        if dry_run:

            def count(cursor: DBAPICursor, dialect: Dialect) -> int:
                q = dialect.quote
                p = dialect.placeholder
                cursor.execute(
                    f"SELECT COUNT(*) FROM {q(system.ledger)} WHERE {q('event_time')} < {p} AND "
                    f"{q(SLOT_COLUMN)} IN (SELECT {q(SLOT_COLUMN)} FROM {q(system.slots)} "
                    f"WHERE {q('state')} = 'owned')",
                    (cutoff,),
                )
                row = cursor.fetchone()
                return int(row[0]) if row else 0

            return self._retrying(shard, count)

        def raise_watermark(cursor: DBAPICursor, dialect: Dialect) -> int:
            cursor.execute(dialect.raise_watermark_statement(system.slots), (cutoff, cutoff))
            return 0

        self._retrying(shard, raise_watermark)
        total = 0
        while True:

            def delete(cursor: DBAPICursor, dialect: Dialect) -> int:
                cursor.execute(
                    dialect.prune_statement(system.ledger, system.slots),
                    (cutoff, cutoff, chunk_rows),
                )
                return max(cursor.rowcount, 0)

            deleted = self._retrying(shard, delete)
            total += deleted
            if progress is not None:
                progress(shard, total)
            if deleted < chunk_rows:
                return total

    def _retrying(self, shard: str, step: Callable[[DBAPICursor, Dialect], int]) -> int:
        """Run ``step`` in one transaction on ``shard``, retried like a write."""
        delays = self._settings.retry.delays()
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._provider.connection(shard) as conn:
                    dialect = self.dialect(shard, conn)
                    with self._cursor(conn) as cursor:
                        return step(cursor, dialect)
            except Exception as exc:
                error = _as_shardbill_error(exc, shard)
                if error is None:
                    raise
                delay = next(delays, None) if is_retryable(error) else None
                if delay is None:
                    raise error from exc
                time.sleep(delay)

    def locate(self, key: object) -> tuple[int, str]:
        """The (slot, shard) of a shard key under the current map."""
        current = self._map
        slot = current.slot_for(key)  # type: ignore[arg-type]  # checked by the map
        return slot, current.assignment[slot]

    def write(self, items: Iterable[ChargeLike | PricedEvent]) -> WriteResult:
        """Apply a call's events exactly once; see the module docstring.

        Args:
            items: :class:`~shardbill.rules.PricedEvent`\\ s (an event with all
                its charges), or charges each carrying its ``part`` of
                ``parts`` (default 0 of 1), or a mix. All parts of an event
                must be in the same call; exact repeats fold to one.

        Returns:
            Every event's state (applied, duplicate, conflict, rejected with
            the reason, failed: retry), and what each shard did.
        """
        return self._execute(self._plan(items))

    def plan_of(self, items: Iterable[ChargeLike | PricedEvent]) -> Plan:
        """The plan a :meth:`write` of ``items`` would run: units, fingerprints, rejections.

        Pure (no I/O, nothing logged): :mod:`shardbill.corrections` compares
        an event's units with the ledger's fingerprints through it.
        """
        scope = self._settings.id_scope
        return plan_batch(
            items,
            tables=self._extractor,
            shard_key=self._shard_key,
            locate=self.locate,
            home_slot=self._home_slot if scope is IdScope.GLOBAL else None,
            not_before=self.horizon(),
        )

    def write_rows(
        self, events: Iterable[tuple[str, int, Mapping[int, Sequence[RowDelta]]]]
    ) -> WriteResult:
        """Apply events given as row deltas per slot exactly once (as :meth:`write` does).

        Each event is ``(event id, time in Unix seconds, slot -> row deltas)``
        with deltas from :meth:`plan_of`'s units (a correction's negated or
        differing deltas, which no charge can express: a count only grows).
        """
        if self._closed:
            raise ShardbillError("this AggregationWriter is closed; create a new one")
        scope = self._settings.id_scope
        plan = plan_rows(
            events,
            tables=self._tables,
            home_slot=self._home_slot if scope is IdScope.GLOBAL else None,
            not_before=self.horizon(),
        )
        for rejection in plan.rejected:
            log.warning("rejected event %s: %s", rejection.event_id, rejection.reason)
        return self._execute(plan)

    def write_stream(
        self, batches: Iterable[Iterable[ChargeLike | PricedEvent]], *, depth: int = 2
    ) -> Iterator[WriteResult]:
        """Write a stream of batches, planning the next while the previous commits.

        Results come back in batch order, one per batch. Up to ``depth``
        batches are in flight at once (``depth=1`` is the same as calling
        :meth:`write` in a loop): planning a batch is Python work that can run
        while the shards commit the one before, so a stream consumer gets
        more events through per second. Batches in flight may touch the same
        rows; the ledger keeps that exact, as it does for separate writers.

        Example:
            >>> for result in writer.write_stream(consumer.batches()):  # doctest: +SKIP
            ...     consumer.acknowledge(result.done)
        """
        if depth < 1:
            raise ConfigurationError(f"'depth' must be >= 1: {depth}")
        pending: deque[Future[WriteResult]] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shardbill-dispatch") as lane:
            try:
                for batch in batches:
                    plan = self._plan(batch)
                    pending.append(lane.submit(self._execute, plan))
                    while len(pending) >= depth:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for future in pending:  # the consumer stopped early: finish what was sent
                    future.result()

    # ------------------------------------------------------------------ planning

    def _home_slot(self, event_id: str) -> int:
        return self._map.slot_for(event_id)

    def _plan(self, items: Iterable[ChargeLike | PricedEvent]) -> Plan:
        if self._closed:
            raise ShardbillError("this AggregationWriter is closed; create a new one")
        scope = self._settings.id_scope
        plan = plan_batch(
            items,
            tables=self._extractor,
            shard_key=self._shard_key,
            locate=self.locate,
            home_slot=self._home_slot if scope is IdScope.GLOBAL else None,
            not_before=self.horizon(),
        )
        if plan.rejected:
            self._emit(Rejected(count=len(plan.rejected)))
            for rejection in plan.rejected:
                log.warning("rejected event %s: %s", rejection.event_id, rejection.reason)
        return plan

    # ------------------------------------------------------------------ running

    def _execute(self, plan: Plan) -> WriteResult:
        plan = self._look_ahead(plan)
        tally = EventTally(plan)
        runs: list[_ShardRun] = []
        if self._settings.id_scope is IdScope.PER_ACCOUNT:
            runs += self._write_round(plan.units, None, tally)
        else:
            first, later = split_by_claim(plan.units, self._route)
            first_runs = self._write_round(first, frozenset(), tally)
            runs += first_runs
            confirmed = tally.confirmed()
            deferred = [u for r in first_runs if r.outcome for u in r.outcome.deferred]
            second = sorted(
                (u for u in (*later, *deferred) if u.event_id in confirmed), key=_event_order
            )
            if second and self._rebooker is not None:
                second = self._follow_bookings(first_runs, second, tally)
            if second:
                runs += self._write_round(second, confirmed, tally)
            unsure = tally.unsure()
            if unsure:  # refused in its claim's round: a part elsewhere may be in already
                blocked, _ = self._verdicts(
                    [u for u in plan.units if u.event_id in unsure and u.rows],
                    unsure,
                    respread=False,
                )
                tally.maybe_applied(blocked)
            released = tally.released()
            if released:
                self._release_claims([u for u in plan.units if u.home and u.event_id in released])
        result = tally.result(_shard_results(runs), plan.folded)
        if self._settings.track_positions:
            positions = {s: r.position for s, r in result.shards.items() if r.commits}
            result = attrs.evolve(result, positions=positions)
        return result

    def _follow_bookings(
        self, first_runs: Sequence[_ShardRun], second: list[Unit], tally: EventTally
    ) -> list[Unit]:
        """Round two's units, each booked in the period its event's claim was booked in.

        An event whose claim round one applied says so itself (its home unit
        carries the booking period, or none). One whose claim was in before
        (a redelivery completing it, or a lost COMMIT credited) is looked up
        in ``shardbill_adjustments`` on every shard of the fleet (the record
        stays where it was written; a reshard may have moved the slot). If
        that read fails, the event's remaining units fail (deliver it again).
        """
        assert self._rebooker is not None  # noqa: S101 - called under the adjust policy only
        booked: dict[str, str | None] = {}
        unknown: set[str] = set()
        for run in first_runs:
            if run.outcome is not None:
                for unit in run.outcome.applied:
                    if unit.home and unit not in run.outcome.tokens:
                        booked[unit.event_id] = unit.booked
                    elif unit.home:
                        unknown.add(unit.event_id)
                unknown.update(u.event_id for u in run.outcome.duplicates if u.home)
            unknown.update(u.event_id for u in (*run.lost_applied, *run.lost_duplicates) if u.home)
        wanted = sorted({u.event_id for u in second if u.event_id not in booked} & unknown)
        if wanted:
            try:
                booked.update(self._recorded_bookings(wanted))
            except ShardbillError as error:
                stuck = [u for u in second if u.event_id in set(wanted)]
                tally.failed(stuck, error)
                second = [u for u in second if u.event_id not in set(wanted)]
        rebook = self._rebooker.rebook
        return [
            u if booked.get(u.event_id) is None else rebook(u, Period.parse(booked[u.event_id]))
            for u in second
        ]

    def _recorded_bookings(self, events: Sequence[str]) -> dict[str, str]:
        """Event id -> the period ``shardbill_adjustments`` says it was booked in, any shard."""
        table = self._settings.system_tables.adjustments
        found: dict[str, str] = {}
        # fleet_shards reads load() and an unfinished reshard's claim (a ClaimStore's).
        source = self._map if self._source is None else cast("MapStore", self._source)
        for shard in fleet_shards(source):
            try:
                with self._read_cursor(shard) as (cursor, dialect):
                    p = dialect.placeholder
                    for start in range(0, len(events), 500):
                        chunk = events[start : start + 500]
                        cursor.execute(
                            f"SELECT event_id, booked_in FROM {dialect.quote(table)} "
                            f"WHERE event_id IN ({', '.join([p] * len(chunk))})",
                            tuple(chunk),
                        )
                        for event_id, period in cursor.fetchall():
                            found[str(event_id)] = str(period)
            except Exception as exc:
                if is_driver_error(exc):
                    raise translate(exc, shard=shard) from exc
                raise
        return found

    def _release_claims(self, claims: Sequence[Unit]) -> None:
        """Delete the identity claims of events rejected with none of their money in.

        A claim without money can always go (it has no measures to undo); the
        event is reported rejected either way. If the delete fails, the claim
        stays and a changed redelivery of the id is a conflict, as it would be
        for the rejected content itself.
        """
        by_shard: dict[str, list[Unit]] = defaultdict(list)
        for unit in claims:  # under adjust, with the claim's shardbill_adjustments row
            by_shard[self._route(unit.slot)].append(unit)
        for shard, units in sorted(by_shard.items()):
            try:
                with self._provider.connection(shard) as conn:
                    dialect = self.dialect(shard, conn)
                    table = dialect.quote(self._settings.system_tables.ledger)
                    p = dialect.placeholder
                    moved = dialect.quote(self._settings.system_tables.adjustments)
                    with self._cursor(conn) as cursor:
                        for unit in sorted(units, key=_pk_order):
                            cursor.execute(
                                f"DELETE FROM {table} WHERE {SLOT_COLUMN} = {p} "
                                f"AND event_id = {p} AND fingerprint = {p}",
                                (unit.slot, unit.event_id, unit.fingerprint),
                            )
                            if self._rebooker is not None and cursor.rowcount:
                                # The claim's booking goes with it (same transaction).
                                cursor.execute(
                                    f"DELETE FROM {moved} WHERE event_id = {p} "
                                    f"AND {SLOT_COLUMN} = {p}",
                                    (unit.event_id, unit.slot),
                                )
            except Exception as exc:  # the claim stays: a conflict later, never money
                log.warning(
                    "could not release the identity claims of %d rejected event(s) on shard %s: %s",
                    len(units),
                    shard,
                    describe(exc),
                )

    def _look_ahead(self, plan: Plan) -> Plan:
        """Reject whole, before anything is written, the spread events a shard would refuse.

        An event whose money lands on several shards commits there in
        separate transactions. If one shard then refused its part (a row
        without headroom, a slot's dedup watermark) after another shard had
        committed its own, the event would be half applied, and could only
        be completed, never undone (a MAX or REPLACE measure has no inverse).
        So when a call holds such events, every shard they touch is read
        first (ledger, slot states, the rows they add to; no locks) and an
        event some shard would refuse is rejected alone, with the reason.
        A slot the shard no longer writes (handed over, or not fenced on its
        old owner yet) is judged where its forwarding address points, as the
        transaction would write it (seed 5066); and a fence met while writing
        that turns an event into a spread one has it judged again then
        (:meth:`_judge_rerouted`). The transactions still check everything: a
        concurrent writer that takes the headroom between this read and the
        commit leaves the event failed, to be completed (see the exactly-once
        explanation). A read that fails judges nothing; the write goes on as
        without it.
        """
        spread = spread_events(plan.units, self._route)
        if not spread:
            return plan
        _, refused = self._verdicts(plan.units, spread)
        if not refused:
            return plan
        self._rejected_ahead(refused)
        return attrs.evolve(
            plan,
            units=tuple(u for u in plan.units if u.event_id not in refused),
            rejected=(*plan.rejected, *refused.values()),
        )

    def _rejected_ahead(self, refused: Mapping[str, Rejection]) -> None:
        for rejection in refused.values():
            log.warning("rejected event %s: %s", rejection.event_id, rejection.reason)
        self._emit(Rejected(count=len(refused)))

    def _verdicts(
        self, units: Sequence[Unit], spread: frozenset[str], *, respread: bool = True
    ) -> tuple[frozenset[str], dict[str, Rejection]]:
        """Every shard's verdict on the ``spread`` events of ``units``, following forwards.

        Returns the events no shard could judge (a unit in a ledger already,
        or on a slot whose owner could not be found) and the refusals of the
        others. A slot a shard says it does not write is routed on, as a
        fence would route it, and the events judged again (at most
        ``max_map_reloads`` times); an event no longer spread after that is
        left to its one shard's transaction, which judges it whole (unless
        ``respread`` is false: then ``spread`` is judged wherever it lands).
        """
        blocked: set[str] = set()
        refused: dict[str, Rejection] = {}
        for attempt in range(self._settings.max_map_reloads + 1):
            work = self._group(u for u in units if u.rows or u.event_id in spread)
            work = {s: w for s, w in work.items() if any(u.event_id in spread for u in w.units)}
            if len(work) == 1:
                verdicts = [self._judge(next(iter(work.values())), spread)]
            else:
                verdicts = [
                    f.result()
                    for f in [self._pool.submit(self._judge, w, spread) for w in work.values()]
                ]
            blocked, refused, moves = set(), {}, {}
            for shard_blocked, shard_refused, shard_moves in verdicts:
                blocked |= shard_blocked
                moves.update(shard_moves)
                for event_id, rejection in shard_refused.items():
                    refused.setdefault(event_id, rejection)
            for event_id in blocked:
                refused.pop(event_id, None)
            if not moves or attempt == self._settings.max_map_reloads:
                break
            if not self._redirect(moves, next(iter(work))):
                break
            if respread:
                spread = spread_events(units, self._route)
                if not spread:
                    return frozenset(), {}
        return frozenset(blocked), refused

    def _redirect(self, moves: Mapping[int, str | None], shard: str) -> bool:
        """Learn where the slots of ``moves`` are now (a forwarding address, or else a
        fresher map); True when any of them routes elsewhere than before."""
        before = {slot: self._route(slot) for slot in moves}
        with self._lock:
            self._forward.update({s: t for s, t in moves.items() if t is not None})
        if self._source is not None and any(t is None for t in moves.values()):
            self._reload(shard)
        return any(self._route(slot) != was for slot, was in before.items())

    def _judge_rerouted(
        self, work: dict[str, ShardWork], tally: EventTally
    ) -> dict[str, ShardWork]:
        """After a fence rerouted ``work``: judge the events it made spread, and take the
        ones a shard would refuse out of the retry (rejected whole; see :meth:`_look_ahead`).

        Nothing of a rerouted unit is written yet (its shard's transaction was
        fenced as a whole); a part of its event committed elsewhere is in that
        shard's ledger now, so such an event is left to the transactions.
        """
        events = {u.event_id for w in work.values() for u in w.units if u.rows}
        if not events:
            return work
        units = [u for u in tally.units if u.event_id in events]
        spread = spread_events(units, self._route)
        if not spread:
            return work
        _, refused = self._verdicts(units, spread)
        if not refused:
            return work
        self._rejected_ahead(refused)
        tally.withheld(refused)
        kept = {
            s: attrs.evolve(w, units=tuple(u for u in w.units if u.event_id not in refused))
            for s, w in work.items()
        }
        return {s: w for s, w in kept.items() if w.units}

    def _judge(
        self, work: ShardWork, spread: frozenset[str]
    ) -> tuple[frozenset[str], dict[str, Rejection], dict[int, str | None]]:
        """One shard's verdict on the spread events, from one read (see :meth:`_look_ahead`).

        Returns the blocked events, the refusals, and the slots of ``work``
        this shard does not write now -> where they are (their forwarding
        address, or None when it does not say).
        """
        mine = frozenset(u.event_id for u in work.units if u.event_id in spread)
        try:
            with self._read_cursor(work.shard) as (cursor, dialect):
                table = dialect.quote(self._settings.system_tables.slots)
                literal = ", ".join(str(s) for s in work.slots)  # validated ints
                cursor.execute(
                    f"SELECT {SLOT_COLUMN}, state, pruned_below, peer FROM {table} "
                    f"WHERE {SLOT_COLUMN} IN ({literal})",
                    (),
                )
                found = cursor.fetchall()
                states = {int(s): (str(st), int(m)) for s, st, m, _ in found}
                moves: dict[int, str | None] = {
                    int(s): None if peer is None else str(peer)
                    for s, st, _, peer in found
                    if st == SlotState.GONE
                }
                moves.update({s: None for s in work.slots if s not in states})
                incoming = {
                    int(s): str(peer)
                    for s, st, _, peer in found
                    if st == SlotState.INCOMING and peer is not None
                }
                known: dict[tuple[str, int], tuple[str, str | None]] = {}
                if incoming:  # as the transaction does: the old owner's ledger first
                    peer_known, peer_marks, peer_states = self._peer_ledger(work.units, incoming)
                    for s, source in self._unfenced(work.shard, incoming, peer_states).items():
                        del incoming[s]  # not this shard's yet: the source still owns it
                        moves[s] = source
                    known.update(peer_known)
                    for s, mark in peer_marks.items():
                        if s in states:
                            states[s] = (states[s][0], max(states[s][1], mark))
                known.update(self._ledger_lookup(cursor, dialect, work.units))
                touched = [u for u in work.units if u.event_id in spread]
                moving = sorted({u.slot for u in touched if u.slot in incoming})
                progress = (
                    merge_marks(cursor, dialect, self._settings.system_tables.moves, moving)
                    if moving
                    else {}
                )
                stored = self._stored_rows(cursor, dialect, touched, lock=False)
                if moving:  # rows in motion: their old owners' parts count too
                    stored = combine(
                        self._tables, stored, self._old_parts(touched, incoming, progress)
                    )
        except Exception as exc:  # a look-ahead that cannot read judges nothing
            log.info("look-ahead on shard %s skipped: %s", work.shard, describe(exc))
            return mine, {}, {}
        # Incoming slots are judged too: their old owners' ledgers, watermarks and
        # unmerged rows were read with this shard's.
        owned = frozenset(s for s, (st, _) in states.items() if st == SlotState.OWNED) | set(
            incoming
        )
        marks = {s: m for s, (_, m) in states.items()}
        judged = {u.slot for u in work.units if u.event_id in spread}
        moves = {s: t for s, t in moves.items() if s in judged}
        blocked, refused = refusals_ahead(
            work.units,
            mine,
            known=known,
            owned=owned,
            watermarks=marks,
            stored=stored,
            tables=self._tables,
        )
        return blocked, refused, moves

    def _route(self, slot: int) -> str:
        return self._forward.get(slot) or self._map.owner(slot)

    def _group(
        self, units: Iterable[Unit], hints: Mapping[int, str] | None = None
    ) -> dict[str, ShardWork]:
        by_shard: dict[str, list[Unit]] = defaultdict(list)
        hints = hints or {}
        for unit in units:
            by_shard[hints.get(unit.slot) or self._route(unit.slot)].append(unit)
        return {
            s: ShardWork(shard=s, units=tuple(sorted(u, key=_event_order)))
            for s, u in by_shard.items()
        }

    def _write_round(
        self, units: Sequence[Unit], claimed: frozenset[str] | None, tally: EventTally
    ) -> list[_ShardRun]:
        """One round: every unit's transaction, following fences; results into ``tally``."""
        finished: list[_ShardRun] = []
        work = self._group(units)
        rounds = 0
        while work:
            results = self._run(work, claimed)
            fenced: dict[str, FencedError] = {}
            for shard, run in results.items():
                if isinstance(run.error, FencedError) and rounds < self._settings.max_map_reloads:
                    fenced[shard] = run.error
                else:
                    finished.append(run)
            if not fenced:
                break
            rounds += 1
            rerouted = self._follow(fenced, work)
            if rerouted is None:  # nowhere to send them: they stay fenced
                finished.extend(results[shard] for shard in fenced)
                break
            work = self._judge_rerouted(rerouted, tally)
        for run in finished:
            _record(run, tally)
        return finished

    def _follow(
        self, fenced: Mapping[str, FencedError], work: Mapping[str, ShardWork]
    ) -> dict[str, ShardWork] | None:
        """Route the fenced units again: to the forwarding address, or by a fresher map."""
        route: dict[int, str] = {}
        unknown = False
        for shard, error in fenced.items():
            refused = set(error.slots)
            for unit in work[shard].units:
                if unit.slot in error.moved:
                    route[unit.slot] = error.moved[unit.slot]
                elif unit.slot not in refused:
                    route[unit.slot] = shard  # still owned there: the fence was for other slots
                else:
                    unknown = True
        forwarded = {s: t for e in fenced.values() for s, t in e.moved.items()}
        with self._lock:
            self._forward.update(forwarded)
        if self._source is not None and (unknown or time.monotonic() >= self._quiet_until):
            self._reload(next(iter(fenced)))
            route = {slot: self._route(slot) for slot in route} | {
                slot: shard for slot, shard in route.items() if slot in forwarded
            }
        elif unknown and self._source is None:
            return None
        retry_units = [u for s in fenced for u in work[s].units]
        return self._group(retry_units, route)

    def reload_map(self) -> ShardMap:
        """Load the shard map from the map source now (e.g. after a reshard finished).

        A writer reloads by itself when a shard fences it; calling this only
        makes it route with the newest map sooner.

        Raises:
            ConfigurationError: the writer was given a map, not a map source.
        """
        if self._source is None:
            raise ConfigurationError(
                "this writer was given a ShardMap, not a map source: there is nothing to reload "
                "from; build it with shard_map=<a MapStore> to follow reshards"
            )
        self._reload(None)
        return self._map

    def _reload(self, shard: str | None) -> None:
        assert self._source is not None  # noqa: S101 - checked by the callers
        fresh = self._source.load()
        with self._lock:
            if fresh.epoch > self._map.epoch:
                self._map = fresh
                self._forward.clear()
                self._quiet_until = 0.0
                self._quiet = RELOAD_QUIET_SECONDS
            else:
                self._quiet_until = time.monotonic() + self._quiet
                self._quiet = min(self._quiet * 2, RELOAD_QUIET_MAX_SECONDS)
        if shard is not None:
            log.info("shard %s fenced; reloaded the shard map at epoch %d", shard, self._map.epoch)
            self._emit(MapReloaded(shard=shard, epoch=self._map.epoch))

    def _run(
        self, work: Mapping[str, ShardWork], claimed: frozenset[str] | None
    ) -> dict[str, _ShardRun]:
        if len(work) == 1:
            ((shard, w),) = work.items()
            return {shard: self._run_shard(w, claimed)}
        futures = {
            shard: self._pool.submit(self._run_shard, w, claimed) for shard, w in work.items()
        }
        return {shard: f.result() for shard, f in futures.items()}

    def _run_shard(self, work: ShardWork, claimed: frozenset[str] | None) -> _ShardRun:
        shard = work.shard
        delays = self._settings.retry.delays()
        lost_tokens: set[str] = set()  # tokens of attempts whose COMMIT was lost
        lost_error: CommitOutcomeUnknownError | None = None
        careful = False
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            token = secrets.token_hex(8)
            try:
                if shard not in self._checked:
                    # The writer refuses to run on a schema that differs (SchemaError
                    # propagates); a server that cannot be reached is retried below.
                    self.check_schema([shard])
                outcome = self._transaction(work, token, claimed, careful=careful)
            except SchemaError:
                raise
            except _NeedsCareError:
                careful = True  # nothing was written: run it again, reading the rows first
                continue
            except Exception as exc:
                error = _as_shardbill_error(exc, shard)
                if error is None:
                    raise
                if isinstance(error, RowOverflowError) and not careful:
                    careful = True
                    continue
                if isinstance(error, CommitOutcomeUnknownError):
                    lost_tokens.add(token)
                    lost_error = error
                delay = None
                if not isinstance(error, FencedError) and is_retryable(error):
                    delay = next(delays, None)
                if delay is None:
                    return self._give_up(
                        work, _unknown_if_lost(error, lost_error), attempt, lost_tokens
                    )
                log.info(
                    "shard %s attempt %d failed (%s); retrying", shard, attempt, describe(error)
                )
                self._emit(
                    Retried(shard=shard, error=type(error).__name__, attempt=attempt, delay=delay)
                )
                time.sleep(delay)
                continue
            if lost_tokens:
                outcome = _credit_lost_commits(outcome, lost_tokens)
            if outcome.withheld:
                self._emit(Rejected(count=len(outcome.withheld)))
            self._emit(
                Committed(
                    shard=shard,
                    seconds=time.perf_counter() - started,
                    applied=len(outcome.applied),
                    duplicates=len(outcome.duplicates),
                    conflicts=len(outcome.conflicts),
                    rows=outcome.rows,
                    statements=outcome.statements,
                    attempt=attempt,
                )
            )
            return _ShardRun(work=work, outcome=outcome, attempts=attempt)

    def _give_up(
        self, work: ShardWork, error: ShardbillError, attempts: int, lost_tokens: set[str]
    ) -> _ShardRun:
        applied: tuple[Unit, ...] = ()
        duplicates: tuple[Unit, ...] = ()
        if lost_tokens:
            # Never report a lost COMMIT as failed before the ledger is asked once more.
            with contextlib.suppress(Exception):
                applied, duplicates = self._resolve_lost(work, lost_tokens)
        if not isinstance(error, FencedError):
            log.error(
                "shard %s failed after %d attempts: %s", work.shard, attempts, describe(error)
            )
        self._emit(Failed(shard=work.shard, error=type(error).__name__, attempts=attempts))
        return _ShardRun(
            work=work,
            error=error,
            attempts=attempts,
            lost_applied=applied,
            lost_duplicates=duplicates,
        )

    def _resolve_lost(
        self, work: ShardWork, lost_tokens: set[str]
    ) -> tuple[tuple[Unit, ...], tuple[Unit, ...]]:
        """The units a lost COMMIT of this call applied, and those another writer did.

        Another writer's entry is this unit's also when its fingerprint is the
        unit's under an older declaration (an event applied before a migration).
        """
        applied: list[Unit] = []
        duplicates: list[Unit] = []
        with self._provider.connection(work.shard) as conn:
            dialect = self.dialect(work.shard, conn)
            with self._cursor(conn) as cursor:
                known = self._ledger_lookup(cursor, dialect, work.units)
                replayed = self._replays(cursor, dialect)
                for unit in work.units:
                    found = known.get((unit.event_id, unit.slot))
                    if found is None:
                        continue
                    if found[1] in lost_tokens:  # this call's own entry
                        if found[0] == unit.fingerprint:
                            applied.append(unit)
                    elif found[0] == unit.fingerprint or replayed(unit, found[0]):
                        duplicates.append(unit)
        return tuple(applied), tuple(duplicates)

    def _emit(self, event: Committed | Retried | Failed | Rejected | MapReloaded) -> None:
        if self._observer is not None:
            self._observer(event)

    # ------------------------------------------------------------------ one transaction

    def dialect(self, shard: str, conn: DBAPIConnection | None = None) -> Dialect:
        """The dialect of ``shard`` (asked of the server once, then cached)."""
        found = self._dialects.get(shard)
        if found is not None:
            return found
        if conn is None:
            with self._provider.connection(shard, readonly=True) as lent:
                return self.dialect(shard, lent)
        found = dialect_for(conn)
        with self._lock:
            self._dialects[shard] = found
        return found

    @contextlib.contextmanager
    def _cursor(self, conn: DBAPIConnection) -> Iterator[DBAPICursor]:
        # Values are validated by the batch planner already; skip a second check.
        cursor = conn.unchecked_cursor() if _checks_parameters(conn) else conn.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    @contextlib.contextmanager
    def _read_cursor(self, shard: str) -> Iterator[tuple[DBAPICursor, Dialect]]:
        """A cursor for reads on ``shard``'s primary (a replica may lag, so never one for
        MySQL) outside this writer's transactions: a read transaction on SQLite, which
        takes no write lock (another writer may hold this shard's while it reads here)."""
        readonly = self.dialect(shard).embedded
        with self._provider.connection(shard, readonly=readonly) as conn:
            dialect = self.dialect(shard, conn)
            with self._cursor(conn) as cursor:
                if not readonly:
                    self._prepare(conn, dialect, cursor)
                yield cursor, dialect

    def _prepare(self, conn: DBAPIConnection, dialect: Dialect, cursor: DBAPICursor) -> None:
        if not self._settings.read_committed or dialect.embedded:
            return
        raw = conn.raw if _wraps(conn) else conn
        try:
            if raw in self._prepared:
                return
        except TypeError:  # not weak-referenceable: set it every time
            raw = None
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        if raw is not None:
            self._prepared.add(raw)

    def _transaction(
        self, work: ShardWork, token: str, claimed: frozenset[str] | None, *, careful: bool
    ) -> _Outcome:
        shard = work.shard
        with self._provider.connection(shard) as conn:
            dialect = self.dialect(shard, conn)
            with self._cursor(conn) as cursor:
                self._prepare(conn, dialect, cursor)
                incoming, watermarks, exclusive = self._fence(cursor, dialect, shard, work.slots)
                known: dict[tuple[str, int], tuple[str, str | None]] = {}
                if incoming:
                    peer_known, peer_marks = self._from_sources(shard, work.units, incoming)
                    known.update(peer_known)
                    for slot, mark in peer_marks.items():
                        watermarks[slot] = max(watermarks.get(slot, 0), mark)
                known.update(self._ledger_lookup(cursor, dialect, work.units))
                sorted_units = classify(
                    work.units, known, watermarks, claimed, self._replays(cursor, dialect)
                )
                new = list(sorted_units.new)
                withheld = dict(sorted_units.withheld)
                new, closed = self._period_gate(cursor, dialect, shard, new)
                withheld.update(closed)
                new, overflowing = self._motion_headroom(cursor, dialect, new, incoming, exclusive)
                withheld.update(overflowing)
                rows = statements = 0
                if new and careful:
                    new, overflowing = find_overflows(
                        new, self._stored_rows(cursor, dialect, new), self._tables
                    )
                    withheld.update(overflowing)
                if new:
                    merged = coalesce(new, self._tables)
                    groups = [merged]
                    if not deltas_fit(merged, self._ranges):
                        if not careful:
                            raise _NeedsCareError
                        # Each event fits on its own (find_overflows checked): apply one by one.
                        groups = [coalesce(g, self._tables) for _, g in by_event(new)]
                    statements += self._ledger_insert(cursor, dialect, new, token)
                    statements += self._record_adjustments(cursor, dialect, new)
                    for group in groups:
                        for spec, make_row, table_rows in zip(
                            self._specs, self._row_makers, group, strict=True
                        ):
                            if not table_rows:
                                continue
                            values = list(map(make_row, table_rows))
                            rows += len(values)
                            for sql, params in self._renderer(dialect, spec).statements(values):
                                cursor.execute(sql, params)
                                statements += 1
                position = self._position(conn, cursor, dialect, wrote=bool(new))
        conflicts = tuple(
            Conflict(
                event_id=unit.event_id,
                slot=unit.slot,
                shard=shard,
                stored_fingerprint=stored,
                fingerprint=unit.fingerprint,
            )
            for unit, stored in sorted_units.conflicts
        )
        for conflict in conflicts:
            log.warning(
                "event %s on slot %d of shard %s conflicts with what was applied before "
                "(fingerprint %s, stored %s); not applied",
                conflict.event_id,
                conflict.slot,
                shard,
                conflict.fingerprint,
                conflict.stored_fingerprint,
            )
        for rejection in withheld.values():
            log.warning("rejected event %s: %s", rejection.event_id, rejection.reason)
        return _Outcome(
            applied=tuple(new),
            duplicates=sorted_units.duplicates,
            conflicts=conflicts,
            withheld=withheld,
            deferred=sorted_units.deferred,
            rows=rows,
            statements=statements,
            tokens=sorted_units.tokens,
            position=position,
        )

    def _replays(self, cursor: DBAPICursor, dialect: Dialect) -> Callable[[Unit, str], bool]:
        """For :func:`classify`: whether a stored fingerprint is a unit's under an older
        declaration (:mod:`shardbill.declarations`).

        Called on a fingerprint mismatch only; the shard's declaration
        history is read then, in this transaction, once.
        """
        judge: list[ReplayJudge] = []

        def replayed(unit: Unit, stored: str) -> bool:
            if not judge:
                table = self._settings.system_tables.declarations
                history = [r.declaration for r in read_history(cursor, dialect, table)]
                versions = frozenset(d.version for d in history)
                with self._lock:
                    found = self._judges.get(versions)
                if found is None:
                    found = ReplayJudge(self._tables, history)
                    with self._lock:
                        self._judges[versions] = found
                judge.append(found)
            return judge[0].recognises(stored, unit.signed)

        return replayed

    def _period_gate(
        self, cursor: DBAPICursor, dialect: Dialect, shard: str, new: list[Unit]
    ) -> tuple[list[Unit], dict[str, Rejection]]:
        """Withhold the new units of periods this shard holds closing or closed.

        Read under the gate row's shared lock (see :mod:`shardbill.periods`);
        nothing is read when nothing is new.
        """
        if not new:
            return new, {}
        table = self._settings.system_tables.periods
        closed, closing = split_states(read_states(cursor, dialect, table, shard=shard)[1])
        return judge_late(
            new,
            closed,
            closing,
            shard=shard,
            rebooker=self._rebooker,
            claims=self._settings.id_scope is IdScope.GLOBAL,
        )

    def _record_adjustments(self, cursor: DBAPICursor, dialect: Dialect, new: list[Unit]) -> int:
        """Insert the ``shardbill_adjustments`` rows of the units the adjust policy booked."""
        now = int(self._clock())
        rows = [
            (u.event_id, u.slot, u.time, str(period_of(u.time)), u.booked, now)
            for u in sorted((u for u in new if u.booked is not None), key=_pk_order)
        ]
        if not rows:
            return 0
        statements = 0
        for sql, params in self._renderer(dialect, self._adjust_spec).statements(rows):
            cursor.execute(sql, params)
            statements += 1
        return statements

    def _position(
        self, conn: DBAPIConnection, cursor: DBAPICursor, dialect: Dialect, *, wrote: bool
    ) -> str | None:
        """With ``track_positions``: commit now, then the position a replica must reach."""
        if not self._settings.track_positions or dialect.embedded:
            return None
        conn.commit()  # a lost COMMIT raises here exactly as at the block's end
        return write_position(cursor, dialect, wrote=wrote)

    def _fence(
        self, cursor: DBAPICursor, dialect: Dialect, shard: str, slots: Sequence[int]
    ) -> tuple[dict[int, str], dict[int, int], frozenset[int]]:
        """Check ownership of ``slots`` (shared-locked; exclusively the ones seen in motion).

        Returns:
            The incoming slots -> their source shard, every slot's watermark, and
            the slots locked exclusively (see :meth:`_motion_headroom`).
        """
        table = dialect.quote(self._settings.system_tables.slots)
        literal = ", ".join(str(s) for s in slots)  # validated ints from the shard map
        exclusive = frozenset(s for s in slots if s in self._moving_hint)
        if exclusive and dialect.exclusive_lock_suffix:
            cursor.execute(
                f"SELECT {SLOT_COLUMN} FROM {table} WHERE {SLOT_COLUMN} IN "
                f"({', '.join(str(s) for s in sorted(exclusive))}){dialect.exclusive_lock_suffix}",
                (),
            )
        lock = dialect.share_lock_suffix
        cursor.execute(
            f"SELECT {SLOT_COLUMN}, state, peer, pruned_below FROM {table} "
            f"WHERE {SLOT_COLUMN} IN ({literal}){lock}",
            (),
        )
        states = {
            int(slot): (state, peer, int(mark)) for slot, state, peer, mark in cursor.fetchall()
        }
        refused = tuple(
            s for s in slots if states.get(s, (SlotState.GONE, None, 0))[0] not in _WRITABLE
        )
        if refused:
            moved = {
                s: str(states[s][1])
                for s in refused
                if s in states and states[s][0] == SlotState.GONE and states[s][1]
            }
            raise FencedError(
                f"shard {shard!r} does not own slot(s) {list(refused[:8])}"
                f"{' ...' if len(refused) > 8 else ''} (map epoch {self._map.epoch}); "
                "reload the shard map and route again",
                shard=shard,
                slots=refused,
                moved=moved,
            )
        incoming = {
            s: str(peer) for s, (state, peer, _) in states.items() if state == SlotState.INCOMING
        }
        self._moving_hint.difference_update(s for s in exclusive if s not in incoming)
        return incoming, {s: mark for s, (_, _, mark) in states.items()}, exclusive

    def _ledger_lookup(
        self, cursor: DBAPICursor, dialect: Dialect, units: Sequence[Unit]
    ) -> dict[tuple[str, int], tuple[str, str | None]]:
        """(fingerprint, writer token) of the ledger rows of ``units``, by (event id, slot)."""
        table = dialect.quote(self._settings.system_tables.ledger)
        wanted = {(u.event_id, u.slot) for u in units}
        found: dict[tuple[str, int], tuple[str, str | None]] = {}
        # Primary-key order; exact pairs, so the cost does not grow with the ledger.
        pairs = sorted({(u.slot, u.event_id) for u in units})
        select = f"SELECT event_id, {SLOT_COLUMN}, fingerprint, writer_token FROM {table} WHERE "
        for condition, params in dialect.pairs_statements((SLOT_COLUMN, "event_id"), pairs):
            cursor.execute(select + condition, params)
            for event_id, slot, fingerprint, writer_token in cursor.fetchall():
                key = (str(event_id), int(slot))
                if key in wanted:
                    found[key] = (
                        str(fingerprint),
                        str(writer_token) if writer_token is not None else None,
                    )
        return found

    def _peer_ledger(
        self, units: Sequence[Unit], incoming: Mapping[int, str]
    ) -> tuple[
        dict[tuple[str, int], tuple[str, str | None]], dict[int, int], dict[int, tuple[str, str]]
    ]:
        """Read the source shards' ledgers, watermarks and slot states for slots arriving.

        The states say whether each source is fenced yet (see :meth:`_unfenced`).

        Read before our own ledger. On SQLite the peer is read in a deferred
        (read) transaction: this writer holds its own shard's write lock, and
        a writer of a move the other way holds the peer's, so taking the
        peer's write lock too would make the two wait on each other.
        """
        by_peer: dict[str, list[Unit]] = defaultdict(list)
        for unit in units:
            peer = incoming.get(unit.slot)
            if peer is not None:
                by_peer[peer].append(unit)
        found: dict[tuple[str, int], tuple[str, str | None]] = {}
        marks: dict[int, int] = {}
        states: dict[int, tuple[str, str]] = {}
        for peer, peer_units in by_peer.items():
            slots = sorted({u.slot for u in peer_units})
            with self._read_cursor(peer) as (cursor, dialect):
                hits = self._ledger_lookup(cursor, dialect, peer_units)
                table = dialect.quote(self._settings.system_tables.slots)
                literal = ", ".join(str(s) for s in slots)  # validated ints
                cursor.execute(
                    f"SELECT {SLOT_COLUMN}, pruned_below, state, peer FROM {table} "
                    f"WHERE {SLOT_COLUMN} IN ({literal})",
                    (),
                )
                for s, m, state, its_peer in cursor.fetchall():
                    marks[int(s)] = int(m)
                    states[int(s)] = (str(state), "" if its_peer is None else str(its_peer))
            wanted = set(slots)
            found.update({k: v for k, v in hits.items() if k[1] in wanted})
        return found, marks, states

    def _from_sources(
        self, shard: str, units: Sequence[Unit], incoming: Mapping[int, str]
    ) -> tuple[dict[tuple[str, int], tuple[str, str | None]], dict[int, int]]:
        """The sources' ledgers and watermarks of the incoming slots, or a fence to follow
        to a source that is not fenced yet (see :meth:`_unfenced`)."""
        known, marks, states = self._peer_ledger(units, incoming)
        early = self._unfenced(shard, incoming, states)
        if early:
            raise FencedError(
                f"shard {shard!r} accepts slot(s) {sorted(early)[:8]} but their source is "
                "not fenced yet; the source still owns them",
                shard=shard,
                slots=tuple(sorted(early)),
                moved=early,
            )
        return known, marks

    @staticmethod
    def _unfenced(
        shard: str, incoming: Mapping[int, str], states: Mapping[int, tuple[str, str]]
    ) -> dict[int, str]:
        """The incoming slots whose source is not fenced for ``shard`` yet -> that source.

        A reshard accepts a slot on its target before it fences the source. A
        target that owned the slot before (a revert, a move back) is still where
        old maps route it, so in between, or for as long as a crash leaves it
        there, it would take writes the source takes too (seed 3074): until the
        source says ``gone`` to this shard, the source is where the slot is.
        """
        return {
            slot: source
            for slot, source in incoming.items()
            if states.get(slot) != (SlotState.GONE, shard)
        }

    def _stored_rows(
        self, cursor: DBAPICursor, dialect: Dialect, units: Sequence[Unit], *, lock: bool = True
    ) -> list[dict[tuple[Any, ...], tuple[int, ...]]]:
        """The stored measures of every row ``units`` touch, locked for update (careful mode)."""
        lock_clause = dialect.exclusive_lock_suffix if lock else ""
        return [
            read_rows(
                cursor,
                dialect,
                table,
                sorted({key for u in units for (ti, key, _) in u.rows if ti == t}),
                lock_clause=lock_clause,
            )
            for t, table in enumerate(self._tables)
        ]

    def _old_parts(
        self,
        units: Sequence[Unit],
        incoming: Mapping[int, str],
        marks: Mapping[tuple[int, str], str | list[Any]],
    ) -> list[dict[tuple[Any, ...], tuple[int, ...]]]:
        """The old owners' unmerged rows of ``units`` on incoming slots (see :mod:`motion`).

        Read without a lock: a slot that is gone on its old owner is written by
        nobody there; only the merge deletes from it, and merged keys are left
        out by their progress mark (read before, on the new owner).
        """
        out: list[dict[tuple[Any, ...], tuple[int, ...]]] = [{} for _ in self._tables]
        by_peer: dict[str, list[Unit]] = defaultdict(list)
        for unit in units:
            peer = incoming.get(unit.slot)
            if peer is not None and unit.rows:
                by_peer[peer].append(unit)
        for peer, peer_units in sorted(by_peer.items()):
            with self._read_cursor(peer) as (cursor, dialect):
                for t, table in enumerate(self._tables):
                    by_slot: dict[int, set[tuple[Any, ...]]] = defaultdict(set)
                    for unit in peer_units:
                        by_slot[unit.slot].update(k for ti, k, _ in unit.rows if ti == t)
                    for slot, keys in sorted(by_slot.items()):
                        unmerged, after = unmerged_scope(marks, slot, table.name)
                        if keys and unmerged:
                            out[t].update(
                                read_rows(
                                    cursor, dialect, table, sorted(keys), slot=slot, after=after
                                )
                            )
        return out

    def _motion_headroom(
        self,
        cursor: DBAPICursor,
        dialect: Dialect,
        units: Sequence[Unit],
        incoming: Mapping[int, str],
        exclusive: frozenset[int],
    ) -> tuple[list[Unit], dict[str, Rejection]]:
        """Refuse the events that would overflow a row in motion once it is merged.

        A row of an incoming slot has a second part on the old owner until the
        merge (see :mod:`shardbill.writer.motion`): the check counts both, in an order
        that can over-count in a race but never under-count.
        """
        moving = [u for u in units if u.rows and u.slot in incoming]
        if not moving:
            return list(units), {}
        slots = sorted({u.slot for u in moving})
        lock = dialect.exclusive_lock_suffix
        upgrade = [s for s in slots if s not in exclusive]
        if lock and upgrade:
            # Writers of a slot in motion take turns (each sees the others' deltas).
            # The fence took a shared lock: upgrade (a deadlock with another upgrader
            # is retried; the hint makes the next fence take it exclusively at once).
            self._moving_hint.update(upgrade)
            cursor.execute(
                f"SELECT {SLOT_COLUMN} FROM {dialect.quote(self._settings.system_tables.slots)} "
                f"WHERE {SLOT_COLUMN} IN ({', '.join(str(s) for s in upgrade)}){lock}",
                (),
            )
        marks = merge_marks(cursor, dialect, self._settings.system_tables.moves, slots)
        current = combine(
            self._tables,
            self._stored_rows(cursor, dialect, moving),
            self._old_parts(moving, incoming, marks),
        )
        _, refused = find_overflows(moving, current, self._tables)
        return [u for u in units if u.event_id not in refused], refused

    def _ledger_insert(
        self, cursor: DBAPICursor, dialect: Dialect, units: Sequence[Unit], token: str
    ) -> int:
        # Primary-key order (slot, event id): concurrent writers lock in one order.
        rows = [
            (u.event_id, u.slot, u.fingerprint, u.time, token) for u in sorted(units, key=_pk_order)
        ]
        statements = 0
        for sql, params in self._renderer(dialect, self._ledger_spec).statements(rows):
            cursor.execute(sql, params)
            statements += 1
        return statements

    def _renderer(self, dialect: Dialect, spec: UpsertSpec) -> RowStatements:
        key = (dialect, spec)
        found = self._renderers.get(key)
        if found is None:
            if spec is self._ledger_spec:
                table = self._settings.system_tables.ledger_def()
            elif spec is self._adjust_spec:
                table = self._settings.system_tables.adjustments_def()
            else:
                table = aggregate_table_def(self._tables[self._specs.index(spec)])
            columns = [table.column(name) for name in spec.columns]
            found = RowStatements(
                dialect,
                spec,
                columns,
                max_rows=self._settings.max_rows_per_statement,
                plain_insert=spec is self._ledger_spec or spec is self._adjust_spec,
            )
            with self._lock:
                self._renderers[key] = found
        return found


_WRITABLE = frozenset({SlotState.OWNED, SlotState.INCOMING})
#: Per (connection class, protocol): does the class satisfy it (asked once each).
_OFFERS: dict[tuple[type, object], bool] = {}


def _offers(conn: object, protocol: object) -> bool:
    """``isinstance(conn, protocol)`` for a runtime-checkable protocol, cached per class
    (a protocol's ``isinstance`` inspects attributes: slow on a per-transaction path).

    A class with ``__getattr__`` (a proxy forwarding to the connection it wraps) may
    answer differently per instance: it is asked every time.
    """
    key = (type(conn), protocol)
    found = _OFFERS.get(key)
    if found is None:
        found = isinstance(conn, protocol)  # type: ignore[arg-type]
        if not hasattr(type(conn), "__getattr__"):
            _OFFERS[key] = found
    return found


def _checks_parameters(conn: object) -> TypeGuard[ChecksParameters]:
    return _offers(conn, ChecksParameters)


def _wraps(conn: object) -> TypeGuard[WrapsConnection]:
    return _offers(conn, WrapsConnection)


def _credit_lost_commits(outcome: _Outcome, lost_tokens: set[str]) -> _Outcome:
    """A lost COMMIT that did commit left its units with its attempt's token: this call
    applied them, exactly once. Units another writer committed meanwhile carry that
    writer's token: duplicates."""
    mine = tuple(u for u in outcome.duplicates if outcome.tokens.get(u) in lost_tokens)
    if not mine:
        return outcome
    return attrs.evolve(
        outcome,
        applied=outcome.applied + mine,
        duplicates=tuple(u for u in outcome.duplicates if outcome.tokens.get(u) not in lost_tokens),
    )


def _record(run: _ShardRun, tally: EventTally) -> None:
    """Tell the tally what one shard run did with its units."""
    if run.outcome is not None:
        tally.applied(run.outcome.applied)
        tally.duplicates(run.outcome.duplicates)
        for conflict in run.outcome.conflicts:
            tally.conflict(conflict)
        tally.withheld(run.outcome.withheld)
        return
    assert run.error is not None  # noqa: S101 - a run has an outcome or an error
    tally.applied(run.lost_applied)
    tally.duplicates(run.lost_duplicates)
    resolved = {*run.lost_applied, *run.lost_duplicates}
    tally.failed((u for u in run.work.units if u not in resolved), run.error)


def _shard_results(runs: Iterable[_ShardRun]) -> dict[str, ShardResult]:
    """Per shard, what its runs did (rounds and fence-following merged)."""
    merged: dict[str, ShardResult] = {}
    for run in runs:
        shard = run.work.shard
        if run.outcome is not None:
            out = run.outcome
            result = ShardResult(
                shard=shard,
                applied=_event_ids(out.applied),
                duplicates=_event_ids(out.duplicates),
                conflicts=out.conflicts,
                rejected=tuple(out.withheld[e] for e in sorted(out.withheld)),
                attempts=run.attempts,
                commits=1,
                position=out.position,
            )
        else:
            resolved = {*run.lost_applied, *run.lost_duplicates}
            result = ShardResult(
                shard=shard,
                applied=_event_ids(run.lost_applied),
                duplicates=_event_ids(run.lost_duplicates),
                failed=_event_ids(u for u in run.work.units if u not in resolved),
                error=run.error,
                attempts=run.attempts,
            )
        merged[shard] = _merge(merged.get(shard), result)
    return merged


def _unknown_if_lost(
    error: ShardbillError, lost: CommitOutcomeUnknownError | None
) -> ShardbillError:
    """The error to report when giving up: outcome unknown if any COMMIT was lost."""
    if lost is None or isinstance(error, CommitOutcomeUnknownError):
        return error
    unknown = CommitOutcomeUnknownError(
        f"{lost} Then the retries failed too ({type(error).__name__}: {error}); the units may "
        "or may not be applied: write the same events again, the ledger applies what is missing",
        errno=lost.errno,
        shard=lost.shard,
    )
    unknown.__cause__ = error
    return unknown


def _as_shardbill_error(exc: BaseException, shard: str) -> ShardbillError | None:
    if isinstance(exc, ShardbillError):
        return exc
    if is_driver_error(exc):
        return translate(exc, shard=shard)
    return None


def _event_ids(units: Iterable[Unit]) -> tuple[str, ...]:
    return tuple(sorted({u.event_id for u in units}))


def _merge(first: ShardResult | None, second: ShardResult) -> ShardResult:
    if first is None:
        return second
    return ShardResult(
        shard=second.shard,
        applied=tuple(sorted({*first.applied, *second.applied})),
        duplicates=tuple(sorted({*first.duplicates, *second.duplicates})),
        conflicts=first.conflicts + second.conflicts,
        failed=tuple(sorted({*first.failed, *second.failed})),
        rejected=first.rejected + second.rejected,
        error=_worse(first.error, second.error),
        attempts=max(first.attempts, second.attempts),
        commits=first.commits + second.commits,
        position=second.position or first.position,  # the later commit's
    )


def _worse(first: ShardbillError | None, second: ShardbillError | None) -> ShardbillError | None:
    """The error a merged shard result reports: an unknown COMMIT outcome wins (never
    let a later, plainer failure claim that nothing was applied)."""
    if isinstance(first, CommitOutcomeUnknownError):
        return first
    return second or first


# Sort keys of units (named tuples: event_id, slot, ...), as C-level item getters:
# they run once per unit per sort on the hot path.
_event_order: Callable[[Unit], tuple[str, int]] = operator.itemgetter(0, 1)
_pk_order: Callable[[Unit], tuple[int, str]] = operator.itemgetter(1, 0)
