"""Online resharding: move slots between shards while writers keep writing.

Aggregates are additive (and min/max commutative), so a slot can change owner
first and bring its history along afterwards. For a plan from map M1 (epoch
e) to M2 (epoch e + 1), the :class:`Resharder` runs, for every moving slot
``s`` from source S to target T:

1. **Accept** on T: ownership row ``(s, incoming, peer=S)``. Nobody routes to
   T yet, so this changes nothing by itself.
2. **Fence** on S: ``UPDATE ... SET state = 'gone', peer = T``. The update
   takes an exclusive lock on the ownership row, so it waits for every write
   transaction holding the row's shared lock (they commit first) and every
   later one is refused with a :class:`~shardbill.errors.FencedError` that
   names T: writers follow it at once, and reload the map when they can.
3. **Publish** M2 to the map store (compare-and-set on the epoch).
4. **Copy the ledger** of ``s`` to T (insert-if-absent: ledger rows are
   immutable facts, so copying twice is harmless), deleting each copied chunk
   on S afterwards. Until ``s`` is finished, T's writers check S's ledger
   before their own, so a replay of an event applied on S before the fence is
   still recognised.
5. **Merge the aggregates** of ``s``, table by table, in primary-key order:
   first a *manifest* of S's rows (count, per-measure totals, an
   order-independent checksum) is recorded in T's move ledger; then each
   chunk is UPSERTed into T *in the same transaction* as the move ledger's
   progress (the last key merged), and only then deleted on S. A re-run
   never merges a chunk twice: it deletes on S what the move ledger says is
   merged, and continues after it.
6. **Verify and finish**: what was merged equals the manifest and S holds
   nothing of ``s``; then T marks ``s`` as ``owned``.

Every step is idempotent and recorded in the shards' own tables, so killing
the resharding process at any point and running it again completes the job
exactly (:meth:`Resharder.run`). :meth:`Resharder.abort` before the fence
leaves every slot with its source; after it, a reshard can only be completed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
import xxhash

from shardbill.aggregates import SLOT_COLUMN, AggregateTable, Date
from shardbill.dialects.base import Dialect, UpsertSpec
from shardbill.dialects.detect import dialect_for
from shardbill.errors import ReshardError, ShardbillError
from shardbill.providers.base import ConnectionProvider, DBAPICursor
from shardbill.rendering import RowStatements
from shardbill.resharding.mapstore import MapStore
from shardbill.retry import RetryPolicy, describe, is_retryable
from shardbill.schema import apply_schema
from shardbill.shardmap import ReshardPlan, ShardMap, SlotMove
from shardbill.tables import Column, ColumnKind, SlotState, SystemTables, aggregate_table_def

__all__ = ["ReshardProgress", "ReshardSettings", "Resharder", "SlotStatus"]

log = logging.getLogger("shardbill.resharding")

_CHECKSUM_SEED = 0xC0FFEE


@attrs.frozen(kw_only=True)
class ReshardSettings:
    """How a reshard runs.

    Args:
        chunk_rows: rows copied or merged per transaction.
        parallel_slots: slots moved at the same time.
        rows_per_second: a ceiling on rows moved per second, all slots
            together (None: as fast as the servers allow).
        pause: called between chunks; while it returns True, moving waits
            (e.g. when replica lag or lock waits rise).
        retry: how :meth:`Resharder.run` rides through transient failures
            (a lost connection, a server restarting or failing over, a
            deadlock): it runs again from the top, which every step is
            built to survive, after a jittered wait; other errors, and the
            last transient one, are raised. The default waits up to about a
            minute in all; ``RetryPolicy(max_attempts=1)`` never retries.
    """

    chunk_rows: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    parallel_slots: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    rows_per_second: float | None = None
    pause: Callable[[], bool] | None = None
    retry: RetryPolicy = attrs.field(
        factory=lambda: RetryPolicy(max_attempts=10, base_delay=0.5, max_delay=10.0)
    )


@attrs.frozen(kw_only=True)
class SlotStatus:
    """Where one moving slot stands: ``pending``, ``fenced``, ``finished``."""

    slot: int
    source: str
    target: str
    state: str


@attrs.frozen(kw_only=True)
class ReshardProgress:
    """What a run did."""

    plan: ReshardPlan
    slots_finished: int
    rows_moved: int
    ledger_rows_moved: int
    seconds: float
    slots_empty: int = 0
    """Of the slots finished, those that held no rows: handed over in batches."""
    attempts: int = 1
    """Runs it took: more than one when a transient failure was ridden through."""


def _checksum(key: Sequence[object], values: Sequence[int]) -> int:
    text = repr(([v.isoformat() if hasattr(v, "isoformat") else v for v in key], list(values)))
    return xxhash.xxh3_64_intdigest(text.encode(), seed=_CHECKSUM_SEED)


@attrs.define
class _Tally:
    """Rows, per-measure totals (sum, or min/max) and a checksum, order-independent."""

    rows: int = 0
    totals: list[int | None] = attrs.field(factory=list)
    checksum: int = 0

    def add(self, table: AggregateTable, key: Sequence[object], values: Sequence[int]) -> None:
        if not self.totals:
            self.totals = [None] * len(values)
        self.rows += 1
        for i, (measure, value) in enumerate(zip(table.measures, values, strict=True)):
            current = self.totals[i]
            if current is None:
                self.totals[i] = value
            elif measure.merge == "sum":
                self.totals[i] = current + value
            elif measure.merge == "min":
                self.totals[i] = min(current, value)
            else:
                self.totals[i] = max(current, value)
        self.checksum = (self.checksum + _checksum(key, values)) % (1 << 64)

    def to_json(self) -> str:
        return json.dumps({"rows": self.rows, "totals": self.totals, "checksum": self.checksum})

    @classmethod
    def from_json(cls, text: str) -> _Tally:
        data = json.loads(text)
        return cls(rows=data["rows"], totals=data["totals"], checksum=data["checksum"])


class _Throttle:
    def __init__(self, settings: ReshardSettings) -> None:
        self._rate = settings.rows_per_second
        self._pause = settings.pause
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._rows = 0

    def after(self, rows: int) -> None:
        if self._pause is not None:
            while self._pause():
                time.sleep(0.05)
        if not self._rate:
            return
        with self._lock:
            self._rows += rows
            due = self._start + self._rows / self._rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class Resharder:
    """Executes a :class:`~shardbill.shardmap.ReshardPlan` online, resumably.

    Args:
        store: where the live shard map is published.
        provider: lends connections to every shard of both maps.
        tables: the aggregate tables (the same specs the writers use).
        system_tables: the ledger, ownership and move-ledger table names.
        settings: chunking, parallelism and throttling.
        before_step: called with a step name before each step (for tests that
            kill the process at chosen points, and for progress displays).
    """

    def __init__(
        self,
        *,
        store: MapStore,
        provider: ConnectionProvider,
        tables: Sequence[AggregateTable],
        system_tables: SystemTables | None = None,
        settings: ReshardSettings | None = None,
        before_step: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._provider = provider
        self._tables = tuple(tables)
        self._system = system_tables or SystemTables()
        self._settings = settings or ReshardSettings()
        self._before_step = before_step
        self._dialects: dict[str, Dialect] = {}
        self._lock = threading.Lock()
        self._rows_moved = 0
        self._ledger_moved = 0

    # ------------------------------------------------------------------ public

    def plan(self, target: ShardMap) -> ReshardPlan:
        """The plan from the map that precedes ``target`` in the store to ``target``."""
        current = self._store.load()
        if current.epoch == target.epoch:
            if current != target:
                raise ReshardError(
                    f"the store already holds a different map at epoch {target.epoch}; "
                    "plan from the current map (shardbill map show) and publish epoch "
                    f"{target.epoch + 1}"
                )
            load_epoch = getattr(self._store, "load_epoch", None)
            if load_epoch is None:
                raise ReshardError(
                    f"{self._store!r} keeps no history, so the map before epoch "
                    f"{target.epoch} is unknown; use a store with history (JSON or SQL)"
                )
            source: ShardMap = load_epoch(target.epoch - 1)
        elif current.epoch == target.epoch - 1:
            source = current
        else:
            raise ReshardError(
                f"the target map has epoch {target.epoch} but the store holds epoch "
                f"{current.epoch}; a plan goes from epoch N to N + 1: re-plan from the "
                "current map"
            )
        return source.plan_to(target)

    def run(self, target: ShardMap | None = None) -> ReshardProgress:
        """Run (or resume) the reshard to ``target`` until every slot is finished.

        Without ``target``, resume the reshard to the map the store holds now.
        A transient database failure makes it run again from the top after a
        wait (``ReshardSettings.retry``): a re-run resumes exactly where the
        shards say the move stands.

        Raises:
            ReshardError: the plan does not fit the store, or verification found
                a difference (nothing is finished for that slot).
            DatabaseError: a non-transient database error, or a transient one
                that outlasted the retries; running again resumes safely.
        """
        started = time.monotonic()
        delays = self._settings.retry.delays()
        attempt = 0
        while True:
            attempt += 1
            try:
                progress = self._run_once(target)
            except ShardbillError as exc:
                delay = next(delays, None) if is_retryable(exc) else None
                if delay is None:
                    raise
                log.warning(
                    "reshard attempt %d failed (%s); running again in %.2f s",
                    attempt,
                    describe(exc),
                    delay,
                )
                time.sleep(delay)
                continue
            return attrs.evolve(progress, attempts=attempt, seconds=time.monotonic() - started)

    def _run_once(self, target: ShardMap | None) -> ReshardProgress:
        started = time.monotonic()
        target = target if target is not None else self._store.load()
        plan = self.plan(target)
        apply_schema(  # new shards get their tables; their slots arrive by moving
            self._provider,
            target,
            self._tables,
            system_tables=self._system,
            shards=sorted(s for s in target.shards if not plan.before.get(s)),
            record_ownership=False,
        )
        self._step("switch")
        self._switch(plan, target)
        self._step("publish")
        self._publish(target)
        throttle = _Throttle(self._settings)
        states = self._slot_states(plan.moves)
        pending = [m for m in plan.moves if states[m] != "finished"]
        empty = self._empty(pending)
        self._finish_empty([m for m in pending if m in empty])
        with ThreadPoolExecutor(
            max_workers=self._settings.parallel_slots, thread_name_prefix="shardbill-reshard"
        ) as pool:
            moving = [m for m in pending if m not in empty]
            for future in [pool.submit(self._move_slot, m, throttle) for m in moving]:
                future.result()
        return ReshardProgress(
            plan=plan,
            slots_finished=len(pending),
            rows_moved=self._rows_moved,
            ledger_rows_moved=self._ledger_moved,
            seconds=time.monotonic() - started,
            slots_empty=len(empty),
        )

    def status(self, target: ShardMap | None = None) -> list[SlotStatus]:
        """Each moving slot's state, read from the shards."""
        plan = self.plan(target if target is not None else self._store.load())
        states = self._slot_states(plan.moves)
        return [
            SlotStatus(slot=m.slot, source=m.source, target=m.target, state=states[m])
            for m in plan.moves
        ]

    def abort(self, target: ShardMap) -> bool:
        """Undo a reshard that has fenced nothing yet; returns True when it was undone.

        Once any source shard fenced a slot (writers may already be writing to
        the target), the reshard can only be completed: run it again.
        """
        plan = self.plan(target)
        if any(state != "pending" for state in self._slot_states(plan.moves).values()):
            return False
        current = self._store.load()
        if current.epoch == target.epoch:
            raise ReshardError("the target map is published already; complete the reshard")
        by_target: dict[str, list[int]] = defaultdict(list)
        for move in plan.moves:
            by_target[move.target].append(move.slot)
        for shard, slots in by_target.items():
            with self._cursor(shard) as (cursor, dialect):
                cursor.execute(
                    f"DELETE FROM {dialect.quote(self._system.slots)} WHERE state = "
                    f"{dialect.placeholder} AND {SLOT_COLUMN} IN ({_ints(slots)})",
                    (SlotState.INCOMING.value,),
                )
        return True

    def verify(self, shard_map: ShardMap | None = None) -> list[str]:
        """Every difference found between the shards and ``shard_map`` (empty: exact).

        Checks that every aggregate and ledger row sits on the shard that owns
        its slot (rows of a slot still being merged may sit on its source,
        but not once its owner has finished the merge), and that every
        finished move merged exactly its manifest. Reads the shards of
        ``shard_map`` and, when the store keeps history, those of the map
        before it (a removed shard must be left empty).
        """
        current = shard_map if shard_map is not None else self._store.load()
        shards = sorted(set(current.shards) | self._previous_shards(current))
        problems: list[str] = []
        states: dict[str, dict[int, tuple[str, object]]] = {}  # shard -> slot -> (state, peer)
        for shard in shards:
            with self._cursor(shard) as (cursor, dialect):
                cursor.execute(
                    f"SELECT {SLOT_COLUMN}, state, peer FROM {dialect.quote(self._system.slots)}",
                    (),
                )
                states[shard] = {int(r[0]): (str(r[1]), r[2]) for r in cursor.fetchall()}
                cursor.execute(
                    f"SELECT {SLOT_COLUMN}, table_name, manifest, moved, done "
                    f"FROM {dialect.quote(self._system.moves)}",
                    (),
                )
                for slot, table, manifest, moved, done in cursor.fetchall():
                    if int(done) and manifest != moved:
                        problems.append(
                            f"shard {shard!r}, slot {slot}, table {table!r}: merged {moved} "
                            f"but the source held {manifest}"
                        )
        for shard in shards:
            with self._cursor(shard) as (cursor, dialect):
                for name in (self._system.ledger, *(t.name for t in self._tables)):
                    cursor.execute(f"SELECT DISTINCT {SLOT_COLUMN} FROM {dialect.quote(name)}", ())
                    for (raw_slot,) in cursor.fetchall():
                        slot = int(raw_slot)
                        owner = current.owner(slot)
                        if owner == shard:
                            continue
                        state, peer = states[shard].get(slot, ("", None))
                        moving_to_owner = state == SlotState.GONE and peer == owner
                        # The owner marks the slot owned only once the merge finished.
                        arrived = states[owner].get(slot, ("", None))[0] == SlotState.OWNED
                        if moving_to_owner and not arrived:
                            continue  # still being merged into its owner
                        where = (
                            f"its move to {owner!r} has finished, so they were left behind"
                            if moving_to_owner
                            else f"the map (epoch {current.epoch}) gives the slot to {owner!r}"
                        )
                        problems.append(
                            f"table {name!r}: rows of slot {slot} are on shard {shard!r}, but "
                            + where
                        )
        return problems

    def _previous_shards(self, current: ShardMap) -> set[str]:
        load_epoch = getattr(self._store, "load_epoch", None)
        if load_epoch is None or current.epoch <= 1:
            return set()
        try:
            previous: ShardMap = load_epoch(current.epoch - 1)
        except ShardbillError:  # not kept (a store that prunes its history)
            return set()
        return set(previous.shards)

    # ------------------------------------------------------------------ steps

    def _step(self, name: str) -> None:
        if self._before_step is not None:
            self._before_step(name)

    @contextlib.contextmanager
    def _cursor(self, shard: str) -> Iterator[tuple[DBAPICursor, Dialect]]:
        with self._provider.connection(shard) as conn:
            dialect = self._dialects.get(shard)
            if dialect is None:
                dialect = self._dialects[shard] = dialect_for(conn)
            cursor = conn.cursor()
            try:
                yield cursor, dialect
            finally:
                cursor.close()

    def _switch(self, plan: ReshardPlan, target: ShardMap) -> None:
        by_target: dict[str, list[SlotMove]] = defaultdict(list)
        by_pair: dict[tuple[str, str], list[int]] = defaultdict(list)
        for move in plan.moves:
            by_target[move.target].append(move)
            by_pair[(move.source, move.target)].append(move.slot)
        # 1. Accept on every target (nobody routes there yet).
        for shard, moves in sorted(by_target.items()):
            with self._cursor(shard) as (cursor, dialect):
                table = dialect.quote(self._system.slots)
                slots = [m.slot for m in moves]
                cursor.execute(
                    f"SELECT {SLOT_COLUMN}, state FROM {table} WHERE {SLOT_COLUMN} IN "
                    f"({_ints(slots)})",
                    (),
                )
                known = {int(r[0]): str(r[1]) for r in cursor.fetchall()}
                p = dialect.placeholder
                moves_table = dialect.quote(self._system.moves)
                for move in moves:
                    state = known.get(move.slot)
                    if state is None or state == SlotState.GONE:
                        # A new move of this slot into this shard: progress records of an
                        # earlier move of the same slot here are history, not progress.
                        cursor.execute(
                            f"DELETE FROM {moves_table} WHERE {SLOT_COLUMN} = {move.slot}", ()
                        )
                    if state is None:
                        cursor.execute(
                            f"INSERT INTO {table} ({SLOT_COLUMN}, state, epoch, peer) "
                            f"VALUES ({move.slot}, {p}, {target.epoch}, {p})",
                            (SlotState.INCOMING.value, move.source),
                        )
                    elif state == SlotState.GONE:  # the slot comes back to a former owner
                        cursor.execute(
                            f"UPDATE {table} SET state = {p}, peer = {p}, epoch = {target.epoch}"
                            f" WHERE {SLOT_COLUMN} = {move.slot}",
                            (SlotState.INCOMING.value, move.source),
                        )
        # 2. Fence on every source (waits for in-flight writers, refuses later ones).
        for (source, dest), slots in sorted(by_pair.items()):
            with self._cursor(source) as (cursor, dialect):
                p = dialect.placeholder
                cursor.execute(
                    f"UPDATE {dialect.quote(self._system.slots)} SET state = {p}, peer = {p}, "
                    f"epoch = {target.epoch} WHERE state = {p} AND {SLOT_COLUMN} IN "
                    f"({_ints(slots)})",
                    (SlotState.GONE.value, dest, SlotState.OWNED.value),
                )
            log.info("fenced %d slot(s) on %s for %s", len(slots), source, dest)

    def _publish(self, target: ShardMap) -> None:
        current = self._store.load()
        if current.epoch < target.epoch:
            self._store.publish(target, expected_epoch=target.epoch - 1)
            log.info("published shard map epoch %d", target.epoch)

    def _slot_states(self, moves: Sequence[SlotMove]) -> dict[SlotMove, str]:
        """Each move's state: ``finished`` (the target owns it), ``fenced`` or ``pending``."""
        owned = self._slots_in_state(moves, "target", SlotState.OWNED)
        gone = self._slots_in_state(moves, "source", SlotState.GONE)
        return {
            m: "finished" if m in owned else "fenced" if m in gone else "pending" for m in moves
        }

    def _slots_in_state(
        self, moves: Sequence[SlotMove], side: str, state: SlotState
    ) -> set[SlotMove]:
        """The moves whose slot is in ``state`` on their ``side`` shard (one query per chunk)."""
        found: set[SlotMove] = set()
        for shard, chunk in _by_shard(moves, side):
            with self._cursor(shard) as (cursor, dialect):
                cursor.execute(
                    f"SELECT {SLOT_COLUMN} FROM {dialect.quote(self._system.slots)} "
                    f"WHERE state = {dialect.placeholder} AND {SLOT_COLUMN} IN "
                    f"({_ints([m.slot for m in chunk])})",
                    (state.value,),
                )
                hits = {int(row[0]) for row in cursor.fetchall()}
            found.update(m for m in chunk if m.slot in hits)
        return found

    def _empty(self, moves: Sequence[SlotMove]) -> set[SlotMove]:
        """The fenced moves with nothing to move: no row of the slot on the source, in any
        table or the ledger, and no merge progress on the target.

        The source has fenced these slots, so no write can add rows there any more:
        what is empty now stays empty.
        """
        fenced = self._slots_in_state(moves, "source", SlotState.GONE)
        busy: set[SlotMove] = set()
        names = (self._system.ledger, *(t.name for t in self._tables))
        for shard, chunk in _by_shard([m for m in moves if m in fenced], "source"):
            with self._cursor(shard) as (cursor, dialect):
                for name in names:
                    cursor.execute(
                        f"SELECT DISTINCT {SLOT_COLUMN} FROM {dialect.quote(name)} "
                        f"WHERE {SLOT_COLUMN} IN ({_ints([m.slot for m in chunk])})",
                        (),
                    )
                    hits = {int(row[0]) for row in cursor.fetchall()}
                    busy.update(m for m in chunk if m.slot in hits)
        for shard, chunk in _by_shard([m for m in moves if m in fenced], "target"):
            with self._cursor(shard) as (cursor, dialect):
                cursor.execute(
                    f"SELECT DISTINCT {SLOT_COLUMN} FROM {dialect.quote(self._system.moves)} "
                    f"WHERE {SLOT_COLUMN} IN ({_ints([m.slot for m in chunk])})",
                    (),
                )
                hits = {int(row[0]) for row in cursor.fetchall()}
            busy.update(m for m in chunk if m.slot in hits)
        return {m for m in moves if m in fenced and m not in busy}

    def _finish_empty(self, moves: Sequence[SlotMove]) -> None:
        """Hand empty slots to their targets, a chunk per transaction (see :meth:`_empty`)."""
        for shard, chunk in _by_shard(moves, "target"):
            self._step(f"finish-empty:{shard}:{chunk[0].slot}")
            with self._cursor(shard) as (cursor, dialect):
                p = dialect.placeholder
                cursor.execute(
                    f"UPDATE {dialect.quote(self._system.slots)} SET state = {p}, peer = NULL "
                    f"WHERE state = {p} AND {SLOT_COLUMN} IN ({_ints([m.slot for m in chunk])})",
                    (SlotState.OWNED.value, SlotState.INCOMING.value),
                )
        if moves:
            log.info("%d empty slot(s) handed to their new owners", len(moves))

    def _move_slot(self, move: SlotMove, throttle: _Throttle) -> None:
        self._step(f"ledger:{move.slot}")
        self._copy_ledger(move, throttle)
        for table in self._tables:
            self._step(f"merge:{move.slot}:{table.name}")
            self._merge_table(move, table, throttle)
        self._step(f"finish:{move.slot}")
        self._finish(move)

    def _copy_ledger(self, move: SlotMove, throttle: _Throttle) -> None:
        ledger = self._system.ledger
        names = self._system.ledger_columns()
        spec = UpsertSpec(table=ledger, columns=names, key_columns=(SLOT_COLUMN, "event_id"))
        columns = [self._system.ledger_def().column(c) for c in spec.columns]
        n = self._settings.chunk_rows
        while True:
            with self._cursor(move.source) as (cursor, dialect):
                cursor.execute(
                    f"SELECT {', '.join(dialect.quote(c) for c in names)} "
                    f"FROM {dialect.quote(ledger)} WHERE {SLOT_COLUMN} = {move.slot} "
                    f"ORDER BY event_id LIMIT {n}",
                    (),
                )
                rows = [_ledger_row(columns, r) for r in cursor.fetchall()]
            if not rows:
                return
            with self._cursor(move.target) as (cursor, dialect):
                # Insert-if-absent: a chunk copied before a crash is copied again harmlessly.
                renderer = RowStatements(dialect, spec, columns, max_rows=n)
                for sql, params in renderer.statements(rows):
                    cursor.execute(sql, params)
            self._step(f"ledger-delete:{move.slot}")
            with self._cursor(move.source) as (cursor, dialect):
                cursor.execute(
                    f"DELETE FROM {dialect.quote(ledger)} WHERE {SLOT_COLUMN} = {move.slot} "
                    f"AND event_id <= {dialect.placeholder}",
                    (rows[-1][0],),
                )
            with self._lock:
                self._ledger_moved += len(rows)
            throttle.after(len(rows))
            if len(rows) < n:  # the last chunk (the fenced slot gets no new rows)
                return

    def _merge_table(self, move: SlotMove, table: AggregateTable, throttle: _Throttle) -> None:
        moves_table = self._system.moves
        with self._cursor(move.target) as (cursor, dialect):
            p = dialect.placeholder
            cursor.execute(
                f"SELECT manifest, moved, last_key, done FROM {dialect.quote(moves_table)} "
                f"WHERE {SLOT_COLUMN} = {move.slot} AND table_name = {p}",
                (table.name,),
            )
            record = cursor.fetchone()
        if record is None:
            manifest = self._manifest(move, table)
            moved = _Tally()
            last_key: list[Any] | None = None
            with self._cursor(move.target) as (cursor, dialect):
                p = dialect.placeholder
                cursor.execute(
                    f"INSERT INTO {dialect.quote(moves_table)} ({SLOT_COLUMN}, table_name, "
                    f"source, manifest, moved, last_key, done) VALUES ({move.slot}, {p}, {p}, "
                    f"{p}, {p}, NULL, 0)",
                    (table.name, move.source, manifest.to_json(), moved.to_json()),
                )
        else:
            if int(record[3]):
                return
            moved = _Tally.from_json(str(record[1]))
            last_key = json.loads(record[2]) if record[2] is not None else None
        if last_key is not None:  # a crash after a merge, before its delete on the source
            self._delete_merged(move, table, last_key)
        spec = UpsertSpec(
            table=table.name,
            columns=table.columns,
            key_columns=table.key_names,
            merges=tuple((m.name, m.merge) for m in table.measures),
        )
        columns = list(aggregate_table_def(table).columns)
        n = self._settings.chunk_rows
        while True:
            rows = self._read_chunk(move, table, last_key, n)
            if not rows:
                break
            for key, values in rows:
                moved.add(table, key, values)
            last_key = _jsonable(rows[-1][0])
            with self._cursor(move.target) as (cursor, dialect):
                renderer = RowStatements(dialect, spec, columns, max_rows=n)
                values_rows = [(*map(_sql, key), move.slot, *values) for key, values in rows]
                for sql, params in renderer.statements(values_rows):
                    cursor.execute(sql, params)
                p = dialect.placeholder
                cursor.execute(
                    f"UPDATE {dialect.quote(moves_table)} SET moved = {p}, last_key = {p} "
                    f"WHERE {SLOT_COLUMN} = {move.slot} AND table_name = {p}",
                    (moved.to_json(), json.dumps(last_key), table.name),
                )
            self._step(f"merge-delete:{move.slot}:{table.name}")
            self._delete_merged(move, table, last_key)
            with self._lock:
                self._rows_moved += len(rows)
            throttle.after(len(rows))
            if len(rows) < n:  # the last chunk
                break

    def _manifest(self, move: SlotMove, table: AggregateTable) -> _Tally:
        tally = _Tally()
        last: list[Any] | None = None
        limit = self._settings.chunk_rows * 10
        while True:
            rows = self._read_chunk(move, table, last, limit)
            for key, values in rows:
                tally.add(table, key, values)
            if len(rows) < limit:
                return tally
            last = _jsonable(rows[-1][0])

    def _read_chunk(
        self, move: SlotMove, table: AggregateTable, after: list[Any] | None, limit: int
    ) -> list[tuple[tuple[Any, ...], tuple[int, ...]]]:
        with self._cursor(move.source) as (cursor, dialect):
            q = dialect.quote
            keys = ", ".join(q(k) for k in table.key_names)
            measures = ", ".join(q(m) for m in table.measure_names)
            where = f"{SLOT_COLUMN} = {move.slot}"
            params: list[Any] = []
            if after is not None:
                marks = ", ".join([dialect.placeholder] * len(after))
                where += f" AND ({keys}) > ({marks})"
                params = list(after)
            cursor.execute(
                f"SELECT {keys}, {measures} FROM {q(table.name)} WHERE {where} "
                f"ORDER BY {keys} LIMIT {limit}",
                params,
            )
            fetched = cursor.fetchall()
        width = len(table.keys)
        return [
            (
                tuple(_key_value(table, i, v) for i, v in enumerate(row[:width])),
                tuple(int(v) for v in row[width:]),
            )
            for row in fetched
        ]

    def _delete_merged(self, move: SlotMove, table: AggregateTable, last_key: list[Any]) -> None:
        with self._cursor(move.source) as (cursor, dialect):
            q = dialect.quote
            keys = ", ".join(q(k) for k in table.key_names)
            marks = ", ".join([dialect.placeholder] * len(last_key))
            cursor.execute(
                f"DELETE FROM {q(table.name)} WHERE {SLOT_COLUMN} = {move.slot} "
                f"AND ({keys}) <= ({marks})",
                list(last_key),
            )

    def _finish(self, move: SlotMove) -> None:
        problems: list[str] = []
        names = (self._system.ledger, *(t.name for t in self._tables))
        with self._cursor(move.source) as (cursor, dialect):
            counts = ", ".join(
                f"(SELECT COUNT(*) FROM {dialect.quote(name)} WHERE {SLOT_COLUMN} = {move.slot})"
                for name in names
            )
            cursor.execute(f"SELECT {counts}", ())  # one round trip for every table
            row = cursor.fetchone()
        left = [int(v) for v in row] if row is not None else [1] * len(names)
        problems.extend(
            f"{name}: {count} row(s) left on {move.source}"
            for name, count in zip(names, left, strict=True)
            if count
        )
        with self._cursor(move.target) as (cursor, dialect):
            p = dialect.placeholder
            moves_table = dialect.quote(self._system.moves)
            cursor.execute(
                f"SELECT table_name, manifest, moved FROM {moves_table} "
                f"WHERE {SLOT_COLUMN} = {move.slot}",
                (),
            )
            for table, manifest, moved in cursor.fetchall():
                if _Tally.from_json(str(manifest)) != _Tally.from_json(str(moved)):
                    problems.append(f"{table}: merged {moved}, the source held {manifest}")
            if problems:
                raise ReshardError(
                    f"slot {move.slot} ({move.source} -> {move.target}) does not verify: "
                    + "; ".join(problems)
                    + "; it stays in motion (reads and writes stay exact); investigate, "
                    "then run again"
                )
            cursor.execute(
                f"UPDATE {moves_table} SET done = 1 WHERE {SLOT_COLUMN} = {move.slot}", ()
            )
            cursor.execute(
                f"UPDATE {dialect.quote(self._system.slots)} SET state = {p}, peer = NULL "
                f"WHERE {SLOT_COLUMN} = {move.slot} AND state = {p}",
                (SlotState.OWNED.value, SlotState.INCOMING.value),
            )
        log.info("slot %d moved from %s to %s", move.slot, move.source, move.target)


_CHUNK = 1000  # slots per IN list


def _by_shard(moves: Sequence[SlotMove], side: str) -> Iterator[tuple[str, list[SlotMove]]]:
    """``moves`` grouped by their ``side`` shard ("source" or "target"), in chunks."""
    groups: dict[str, list[SlotMove]] = defaultdict(list)
    for move in moves:
        groups[move.source if side == "source" else move.target].append(move)
    for shard, group in sorted(groups.items()):
        for start in range(0, len(group), _CHUNK):
            yield shard, group[start : start + _CHUNK]


def _ints(values: Sequence[int]) -> str:
    return ", ".join(str(int(v)) for v in values)


def _sql(value: object) -> object:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _jsonable(key: Sequence[object]) -> list[Any]:
    return [v.isoformat() if hasattr(v, "isoformat") else v for v in key]


def _key_value(table: AggregateTable, index: int, raw: object) -> object:
    column = table.keys[index]
    if isinstance(column.type, Date):
        return raw.isoformat() if hasattr(raw, "isoformat") else str(raw)
    if isinstance(raw, bytes):
        return raw.decode("utf-8")
    return raw


def _ledger_row(columns: Sequence[Column], row: Sequence[object]) -> tuple[object, ...]:
    """A ledger row as read from a source, typed for the target (ints as int, text as str)."""
    return tuple(
        None
        if value is None
        else int(str(value))
        if column.kind in (ColumnKind.BIGINT, ColumnKind.INT)
        else str(value)
        for column, value in zip(columns, row, strict=True)
    )
