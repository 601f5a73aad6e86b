"""The aggregation writer: charges in, aggregate rows updated exactly once on the right shard.

:meth:`AggregationWriter.write` plans a batch (:mod:`shardbill.batching`:
units, fingerprints, rejections), then runs one transaction per shard, in
parallel on a bounded thread pool:

1. fence: read the ownership rows of the batch's slots with a shared lock;
   a slot the shard does not own raises :class:`~shardbill.errors.FencedError`;
2. ledger check: which ``(event_id, slot)`` units are already applied (same
   fingerprint: duplicate; different: conflict); for a slot still arriving
   from another shard during a reshard, that shard's ledger is read first;
3. ledger insert for the new units (a plain INSERT: a concurrent writer that
   claimed the same unit makes it fail with a duplicate key, and the retry
   sees the unit as done);
4. one multi-row UPSERT per aggregate table with the coalesced deltas of the
   new units, rows sorted by primary key;
5. commit.

Transient failures (deadlock, lock-wait timeout, lost connection, read-only
server, refused connection, killed query, concurrent claim) are retried with
jittered, bounded backoff. A lost COMMIT is never guessed about: the retry
reads the ledger, and the units found there with their own fingerprint are
reported as applied. A fenced shard makes the writer reload the shard map
(when it has a map source) and send those units to their new owner.

The argument that this is exactly once is in ``docs/explanation/exactly-once.md``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import attrs

from shardbill.aggregates import (
    SLOT_COLUMN,
    Account,
    AggregateTable,
    BigInt,
    ChargeLike,
    Projection,
    VarChar,
)
from shardbill.batching import (
    CoalescedRow,
    Rejection,
    RowExtractor,
    ShardWork,
    Unit,
    coalesce,
    plan_batch,
)
from shardbill.dialects.base import Dialect, UpsertSpec
from shardbill.dialects.ddl import prune_statement, share_lock_clause
from shardbill.dialects.detect import dialect_for
from shardbill.dialects.errors import is_driver_error, translate
from shardbill.errors import (
    CommitOutcomeUnknownError,
    ConfigurationError,
    FencedError,
    SchemaError,
    ShardbillError,
)
from shardbill.observe import Committed, Failed, MapReloaded, Observer, Rejected, Retried
from shardbill.providers.base import ConnectionProvider, DBAPIConnection, DBAPICursor
from shardbill.rendering import RowStatements
from shardbill.results import Conflict, ShardResult, WriteResult
from shardbill.retry import RetryPolicy, describe, is_retryable
from shardbill.schema import apply_schema, check_schema
from shardbill.shardmap import ShardMap
from shardbill.tables import SlotState, SystemTables, aggregate_table_def

__all__ = [
    "AggregationWriter",
    "Conflict",
    "MapSource",
    "ShardResult",
    "WriteResult",
    "WriterSettings",
]

log = logging.getLogger("shardbill.writer")


class MapSource(Protocol):
    """Where the writer reloads the shard map from when a shard fences a slot.

    :class:`shardbill.resharding.MapStore` implementations satisfy it.
    """

    def load(self) -> ShardMap:
        """The current shard map."""
        ...


@attrs.frozen(kw_only=True)
class WriterSettings:
    """How the writer runs.

    Args:
        max_workers: shard transactions run in parallel (a bounded pool).
        retry: the backoff policy for transient failures.
        system_tables: the names of the ledger and slot-ownership tables.
        max_rows_per_statement: rows in one multi-row statement (also bounded
            by the server's ``max_allowed_packet``).
        read_committed: run write transactions at READ COMMITTED on MySQL
            (fewer gap locks, so fewer deadlocks; the ledger argument holds at
            any isolation level).
        max_map_reloads: how many times one ``write`` reloads the map after
            being fenced before it reports the units as failed.
        ledger_retention_days: how long ledger rows are kept by :meth:`prune`
            (a replay older than this would apply again: keep it longer than
            the stream's retention).
    """

    max_workers: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    system_tables: SystemTables = attrs.field(factory=SystemTables)
    max_rows_per_statement: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    read_committed: bool = True
    max_map_reloads: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    ledger_retention_days: int = attrs.field(default=35, validator=attrs.validators.ge(1))


@attrs.frozen
class _Outcome:
    applied: list[Unit]
    duplicates: list[Unit]
    conflicts: list[Conflict]
    rows: int
    statements: int
    tokens: dict[Unit, str | None]  # the writer token stored with each duplicate


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
            value = key[i]
            if hasattr(value, "isoformat") and not isinstance(value, str):
                key[i] = value.isoformat()
        return (*key, r.slot, *r.deltas)

    return make


class AggregationWriter:
    """Writes charges exactly once into aggregate tables on the shards of a shard map.

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
        clock: Unix time for the ledger's ``applied_at`` (retention).

    Example:
        >>> writer = AggregationWriter(shard_map=m, provider=p, tables=[daily])  # doctest: +SKIP
        >>> writer.ensure_schema()  # doctest: +SKIP
        >>> result = writer.write(charges)  # doctest: +SKIP
        >>> result.ok, len(result.applied_events)  # doctest: +SKIP
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
        clock: Callable[[], float] = time.time,
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
        self._extractor = RowExtractor(self._tables)
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
            columns=("event_id", SLOT_COLUMN, "fingerprint", "applied_at", "writer_token"),
            key_columns=(SLOT_COLUMN, "event_id"),
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
        self._clock = clock

    # ------------------------------------------------------------------ public

    @property
    def shard_map(self) -> ShardMap:
        """The shard map the writer routes with now."""
        return self._map

    @property
    def tables(self) -> tuple[AggregateTable, ...]:
        """The aggregate tables."""
        return self._tables

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
        )
        self.check_schema()

    def check_schema(self, shards: Sequence[str] | None = None) -> None:
        """Compare the live schema with the specs on ``shards`` (default: all).

        Raises:
            SchemaError: listing every difference (shard, table, column, fix).
        """
        names = sorted(self._map.shards) if shards is None else list(shards)
        check_schema(
            self._provider, names, self._tables, system_tables=self._settings.system_tables
        )
        with self._lock:
            self._checked.update(names)

    def prune(self, *, now: float | None = None, chunk_rows: int = 10_000) -> dict[str, int]:
        """Delete ledger rows older than the retention window, in bounded chunks.

        Each chunk is its own short transaction, so pruning never holds locks
        for long. Events replayed after their ledger rows are pruned would
        apply again: keep ``ledger_retention_days`` longer than any replay.

        Args:
            now: the current Unix time (default: the clock).
            chunk_rows: rows deleted per transaction.

        Returns:
            Rows deleted per shard.
        """
        cutoff = int(now if now is not None else time.time()) - (
            self._settings.ledger_retention_days * 86_400
        )
        deleted: dict[str, int] = {}
        for shard in sorted(self._map.shards):
            total = 0
            while True:
                with self._provider.connection(shard) as conn:
                    dialect = self.dialect(shard, conn)
                    with self._cursor(conn) as cursor:
                        cursor.execute(
                            prune_statement(dialect, self._settings.system_tables.ledger),
                            (cutoff, chunk_rows),
                        )
                        count = cursor.rowcount
                total += max(count, 0)
                if count < chunk_rows:
                    break
            deleted[shard] = total
            log.info("pruned %d ledger rows on shard %s", total, shard)
        return deleted

    def locate(self, key: object) -> tuple[int, str]:
        """The (slot, shard) of a shard key under the current map."""
        current = self._map
        slot = current.slot_for(key)  # type: ignore[arg-type]
        return slot, current.assignment[slot]

    def write(self, charges: Iterable[ChargeLike]) -> WriteResult:
        """Apply a batch of charges exactly once; see the module docstring.

        All charges of one event must be in the same call (the ledger marks
        an event's part on a slot as done at its first write).

        Returns:
            Per shard: applied, duplicates, conflicts, failed; plus the events
            rejected before any SQL.
        """
        work, rejected = self._plan(charges)
        return self._execute(work, rejected)

    def write_stream(
        self, batches: Iterable[Iterable[ChargeLike]], *, depth: int = 2
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
            ...     if result.ok:
            ...         consumer.commit_offsets()
        """
        if depth < 1:
            raise ConfigurationError(f"'depth' must be >= 1: {depth}")
        pending: deque[Future[WriteResult]] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shardbill-dispatch") as lane:
            try:
                for batch in batches:
                    work, rejected = self._plan(batch)
                    pending.append(lane.submit(self._execute, work, rejected))
                    while len(pending) >= depth:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for future in pending:  # the consumer stopped early: finish what was sent
                    future.result()

    def _plan(self, charges: Iterable[ChargeLike]) -> tuple[dict[str, ShardWork], list[Rejection]]:
        if self._closed:
            raise ShardbillError("this AggregationWriter is closed; create a new one")
        work, rejected = plan_batch(
            charges, tables=self._extractor, shard_key=self._shard_key, locate=self.locate
        )
        if rejected and self._observer is not None:
            self._observer(Rejected(count=len(rejected)))
        for rejection in rejected:
            log.warning("rejected event %s: %s", rejection.event_id, rejection.error)
        return work, rejected

    def _execute(self, work: dict[str, ShardWork], rejected: list[Rejection]) -> WriteResult:
        results = self._run(work)
        rounds = 0
        while True:
            fenced = {s: r.error for s, r in results.items() if isinstance(r.error, FencedError)}
            if not fenced or rounds > self._settings.max_map_reloads:
                break
            rounds += 1
            # A fencing shard names where each slot went (a reshard's forwarding
            # address): follow it. Units of slots the shard still owns go back to it;
            # only refused slots without an address need the reloaded map.
            route: dict[int, str] = {}
            unknown = False
            for shard, error in fenced.items():
                refused = set(error.slots)
                for unit in work[shard].units:
                    if unit.slot in error.moved:
                        route[unit.slot] = error.moved[unit.slot]
                    elif unit.slot not in refused:
                        route[unit.slot] = shard
                    else:
                        unknown = True
            if self._source is not None:
                # Reload too, so that later batches go to the new owners directly.
                self._reload(next(iter(fenced)))
                route = {slot: self._map.owner(slot) for slot in route} | {
                    slot: shard for slot, shard in route.items() if slot in _hinted(fenced)
                }
            elif unknown:
                break
            retry_units = [u for s in fenced for u in work[s].units]
            for shard in fenced:
                # A fenced transaction applied nothing; keep what earlier rounds did.
                results[shard] = attrs.evolve(results[shard], error=None, failed=())
            work = self._regroup(retry_units, route)
            for shard, result in self._run(work).items():
                results[shard] = _merge(results.get(shard), result)
        return WriteResult(shards=results, rejected=tuple(rejected))

    # ------------------------------------------------------------------ running

    def _reload(self, shard: str) -> None:
        assert self._source is not None  # noqa: S101 - checked by the caller
        fresh = self._source.load()
        with self._lock:
            if fresh.epoch > self._map.epoch:
                self._map = fresh
        log.info("shard %s fenced; reloaded the shard map at epoch %d", shard, self._map.epoch)
        if self._observer is not None:
            self._observer(MapReloaded(shard=shard, epoch=self._map.epoch))

    def _regroup(
        self, units: Iterable[Unit], hints: Mapping[int, str] | None = None
    ) -> dict[str, ShardWork]:
        by_shard: dict[str, list[Unit]] = defaultdict(list)
        current = self._map
        hints = hints or {}
        for unit in units:
            by_shard[hints.get(unit.slot) or current.owner(unit.slot)].append(unit)
        return {
            s: ShardWork(shard=s, units=tuple(sorted(u, key=lambda x: (x.event_id, x.slot))))
            for s, u in by_shard.items()
        }

    def _run(self, work: Mapping[str, ShardWork]) -> dict[str, ShardResult]:
        if len(work) == 1:
            ((shard, w),) = work.items()
            return {shard: self._run_shard(w)}
        futures = {shard: self._pool.submit(self._run_shard, w) for shard, w in work.items()}
        return {shard: f.result() for shard, f in futures.items()}

    def _run_shard(self, work: ShardWork) -> ShardResult:
        shard = work.shard
        delays = self._settings.retry.delays()
        lost_tokens: set[str] = set()  # tokens of attempts whose COMMIT was lost
        lost_error: CommitOutcomeUnknownError | None = None
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
                outcome = self._transaction(work, token)
            except SchemaError:
                raise
            except Exception as exc:
                error = _as_shardbill_error(exc, shard)
                if error is None:
                    raise
                if isinstance(error, CommitOutcomeUnknownError):
                    lost_tokens.add(token)
                    lost_error = error
                if isinstance(error, FencedError) or not is_retryable(error):
                    return self._failed(work, _unknown_if_lost(error, lost_error), attempt)
                delay = next(delays, None)
                if delay is None:
                    return self._failed(work, _unknown_if_lost(error, lost_error), attempt)
                log.info(
                    "shard %s attempt %d failed (%s); retrying", shard, attempt, describe(error)
                )
                if self._observer is not None:
                    self._observer(
                        Retried(
                            shard=shard, error=type(error).__name__, attempt=attempt, delay=delay
                        )
                    )
                time.sleep(delay)
                continue
            seconds = time.perf_counter() - started
            applied, duplicates = outcome.applied, outcome.duplicates
            if lost_tokens:
                # A lost COMMIT that did commit left its units in the ledger with its
                # attempt's token: this call applied them, exactly once. Units another
                # writer committed meanwhile carry that writer's token: duplicates.
                mine = [u for u in duplicates if outcome.tokens.get(u) in lost_tokens]
                applied = applied + mine
                duplicates = [u for u in duplicates if outcome.tokens.get(u) not in lost_tokens]
            if self._observer is not None:
                self._observer(
                    Committed(
                        shard=shard,
                        seconds=seconds,
                        applied=len(applied),
                        duplicates=len(duplicates),
                        conflicts=len(outcome.conflicts),
                        rows=outcome.rows,
                        statements=outcome.statements,
                        attempt=attempt,
                    )
                )
            return ShardResult(
                shard=shard,
                applied=_event_ids(applied),
                duplicates=_event_ids(duplicates),
                conflicts=tuple(outcome.conflicts),
                attempts=attempt,
            )

    def _failed(self, work: ShardWork, error: ShardbillError, attempts: int) -> ShardResult:
        if not isinstance(error, FencedError):
            log.error(
                "shard %s failed after %d attempts: %s", work.shard, attempts, describe(error)
            )
        if self._observer is not None:
            self._observer(Failed(shard=work.shard, error=type(error).__name__, attempts=attempts))
        return ShardResult(
            shard=work.shard,
            failed=_event_ids(work.units),
            error=error,
            attempts=attempts,
        )

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
        self._dialects[shard] = found
        return found

    @contextlib.contextmanager
    def _cursor(self, conn: DBAPIConnection) -> Iterator[DBAPICursor]:
        from shardbill.providers.pool import LentConnection

        # Values are validated by the batch planner already; skip the second check.
        cursor = (
            conn.cursor(check_params=False) if isinstance(conn, LentConnection) else conn.cursor()
        )
        try:
            yield cursor
        finally:
            cursor.close()

    def _prepare(self, conn: DBAPIConnection, dialect: Dialect, cursor: DBAPICursor) -> None:
        if not self._settings.read_committed or dialect.name == "sqlite":
            return
        raw = getattr(conn, "raw", conn)
        try:
            if raw in self._prepared:
                return
        except TypeError:  # not weak-referenceable: set it every time
            raw = None
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        if raw is not None:
            self._prepared.add(raw)

    def _transaction(self, work: ShardWork, token: str) -> _Outcome:
        shard = work.shard
        with self._provider.connection(shard) as conn:
            dialect = self.dialect(shard, conn)
            with self._cursor(conn) as cursor:
                self._prepare(conn, dialect, cursor)
                incoming = self._fence(cursor, dialect, shard, work.slots)
                known: dict[tuple[str, int], tuple[str, str | None]] = {}
                if incoming:
                    known.update(self._peer_ledger(work.units, incoming))
                known.update(self._ledger_lookup(cursor, dialect, work.units))
                new: list[Unit] = []
                duplicates: list[Unit] = []
                conflicts: list[Conflict] = []
                tokens: dict[Unit, str | None] = {}
                for unit in work.units:
                    found = known.get((unit.event_id, unit.slot))
                    stored = found[0] if found is not None else None
                    if found is None:
                        new.append(unit)
                    elif stored == unit.fingerprint:
                        duplicates.append(unit)
                        tokens[unit] = found[1]
                    else:
                        conflicts.append(
                            Conflict(
                                event_id=unit.event_id,
                                slot=unit.slot,
                                shard=shard,
                                stored_fingerprint=str(stored),
                                fingerprint=unit.fingerprint,
                            )
                        )
                rows = statements = 0
                if new:
                    statements += self._ledger_insert(cursor, dialect, new, token)
                    for spec, make_row, table_rows in zip(
                        self._specs, self._row_makers, coalesce(new, self._tables), strict=True
                    ):
                        if not table_rows:
                            continue
                        values = list(map(make_row, table_rows))
                        rows += len(values)
                        for sql, params in self._renderer(dialect, spec).statements(values):
                            cursor.execute(sql, params)
                            statements += 1
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
        return _Outcome(new, duplicates, conflicts, rows, statements, tokens)

    def _fence(
        self, cursor: DBAPICursor, dialect: Dialect, shard: str, slots: Sequence[int]
    ) -> dict[int, str]:
        """Check ownership of ``slots`` (shared-locked); return the incoming ones -> source."""
        table = dialect.quote(self._settings.system_tables.slots)
        literal = ", ".join(str(s) for s in slots)  # validated ints from the shard map
        lock = share_lock_clause(dialect)
        cursor.execute(
            f"SELECT {SLOT_COLUMN}, state, peer FROM {table} WHERE {SLOT_COLUMN} IN ({literal})"
            f"{lock}",
            (),
        )
        states = {int(slot): (state, peer) for slot, state, peer in cursor.fetchall()}
        refused = tuple(
            s for s in slots if states.get(s, (SlotState.GONE, None))[0] not in _WRITABLE
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
        return {s: peer for s, (state, peer) in states.items() if state == SlotState.INCOMING}

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
    ) -> dict[tuple[str, int], tuple[str, str | None]]:
        """Read the source shards' ledgers for slots still arriving (read before our own)."""
        by_peer: dict[str, list[Unit]] = defaultdict(list)
        for unit in units:
            peer = incoming.get(unit.slot)
            if peer is not None:
                by_peer[peer].append(unit)
        found: dict[tuple[str, int], tuple[str, str | None]] = {}
        for peer, peer_units in by_peer.items():
            with self._provider.connection(peer) as conn:
                dialect = self.dialect(peer, conn)
                with self._cursor(conn) as cursor:
                    self._prepare(conn, dialect, cursor)
                    hits = self._ledger_lookup(cursor, dialect, peer_units)
            slots = {u.slot for u in peer_units}
            found.update({k: v for k, v in hits.items() if k[1] in slots})
        return found

    def _ledger_insert(
        self, cursor: DBAPICursor, dialect: Dialect, units: Sequence[Unit], token: str
    ) -> int:
        now = int(self._clock())
        # Primary-key order (slot, event id): concurrent writers lock in one order.
        rows = [
            (u.event_id, u.slot, u.fingerprint, now, token) for u in sorted(units, key=_pk_order)
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
            else:
                table = aggregate_table_def(self._tables[self._specs.index(spec)])
            columns = [table.column(name) for name in spec.columns]
            found = RowStatements(
                dialect,
                spec,
                columns,
                max_rows=self._settings.max_rows_per_statement,
                plain_insert=spec is self._ledger_spec,
            )
            self._renderers[key] = found
        return found


_WRITABLE = frozenset({SlotState.OWNED, SlotState.INCOMING})


def _hinted(fenced: Mapping[str, FencedError]) -> set[int]:
    return {slot for error in fenced.values() for slot in error.moved}


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
        error=second.error or first.error,
        attempts=first.attempts + second.attempts,
    )


def _pk_order(unit: Unit) -> tuple[int, str]:
    return (unit.slot, unit.event_id)
