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
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
import xxhash

from shardbill.declarations.store import copy_history
from shardbill.dialects.base import UpsertSpec
from shardbill.dialects.detect import dialect_for
from shardbill.errors import (
    ClaimConflictError,
    ConfigurationError,
    DuplicateKeyError,
    ReshardClaimedError,
    ReshardError,
    ReshardStoppedError,
    ShardbillError,
)
from shardbill.mapstore import MapStore
from shardbill.mapstore.base import ClaimStore, MapHistory
from shardbill.mapstore.claim import (
    ABORTED,
    FINISHED,
    MOVING,
    ClaimState,
    ReshardClaim,
    decide,
    new_owner_id,
)
from shardbill.periods.store import copy_closures
from shardbill.protocols import KnowsShards
from shardbill.providers.base import ConnectionProvider, DBAPICursor
from shardbill.resharding.move_state import MoveState
from shardbill.resharding.records import move_records
from shardbill.resharding.sql import ReshardStatements
from shardbill.retry import RetryPolicy, describe, is_retryable
from shardbill.shardmap import ReshardPlan, ShardMap, SlotMove
from shardbill.tables import Column, ColumnKind, SlotState, SystemTables, aggregate_table_def
from shardbill.tables.aggregates import AggregateTable, Date
from shardbill.writer.schema import apply_schema
from shardbill.writer.upserts import RowStatements

__all__ = ["ReshardProgress", "ReshardReport", "ReshardSettings", "Resharder", "SlotStatus"]

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
        lease_seconds: how long the reshard's claim in the map store stays
            this resharder's without renewal; it renews the lease every
            third of that while it works. Another resharder of the same
            plan may take over only an expired lease.
        lease_wait: how long :meth:`Resharder.run` waits for another
            resharder's live lease on the same plan to end (it finishes, or
            expires and is taken over) before refusing with
            :class:`~shardbill.errors.ReshardClaimedError`.
    """

    chunk_rows: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    parallel_slots: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    rows_per_second: float | None = None
    pause: Callable[[], bool] | None = None
    retry: RetryPolicy = attrs.field(
        factory=lambda: RetryPolicy(max_attempts=10, base_delay=0.5, max_delay=10.0)
    )
    lease_seconds: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    lease_wait: float = attrs.field(default=45.0, validator=attrs.validators.ge(0))


@attrs.frozen(kw_only=True)
class SlotStatus:
    """Where one moving slot stands (a :class:`MoveState`: pending, fenced, finished,
    or conflict; a string enum, so it compares and prints as its value)."""

    slot: int
    source: str
    target: str
    state: MoveState


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


@attrs.frozen(kw_only=True)
class ReshardReport:
    """Where a running reshard stands, for progress displays (``Resharder(on_progress=...)``).

    Attributes:
        slots_total: slots the plan moves.
        slots_done: of them, finished (by this run or an earlier one).
        rows_moved: aggregate rows merged by this run.
        ledger_rows_moved: ledger rows copied by this run.
        seconds: since this run started.
    """

    slots_total: int
    slots_done: int
    rows_moved: int
    ledger_rows_moved: int
    seconds: float
    slots_at_start: int = 0
    """Of ``slots_done``, those finished before this run's moving began."""

    @property
    def rows_per_second(self) -> float:
        """Rows (aggregate and ledger) moved per second by this run."""
        return (self.rows_moved + self.ledger_rows_moved) / self.seconds if self.seconds else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at this run's pace in slots (None until a slot was moved)."""
        moved = self.slots_done - self.slots_at_start
        if moved <= 0 or not self.seconds:
            return None
        return (self.slots_total - self.slots_done) * self.seconds / moved

    def to_dict(self) -> dict[str, object]:
        """The report as plain values (for ``--json`` events)."""
        return {
            "slots_total": self.slots_total,
            "slots_done": self.slots_done,
            "rows_moved": self.rows_moved,
            "ledger_rows_moved": self.ledger_rows_moved,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
        }


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


class _ProgressRacedError(Exception):
    """Another resharder advanced a move-ledger record first; this chunk rolled back."""


class _FinishedElsewhereError(ReshardError):
    """The slot's target owns it: another resharder of the plan finished the move."""


class _Throttle:
    def __init__(self, settings: ReshardSettings, stop: threading.Event) -> None:
        self._stop = stop
        self._rate = settings.rows_per_second
        self._pause = settings.pause
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._rows = 0

    def after(self, rows: int) -> None:
        if self._pause is not None:
            while self._pause() and not self._stop.is_set():
                time.sleep(0.05)
        if not self._rate:
            return
        with self._lock:
            self._rows += rows
            due = self._start + self._rows / self._rate
        delay = due - time.monotonic()
        if delay > 0:
            self._stop.wait(delay)  # a stop request cuts the wait short


class Resharder:
    """Executes a :class:`~shardbill.shardmap.ReshardPlan` online, resumably.

    Args:
        store: where the live shard map is published.
        provider: lends connections to every shard of both maps.
        tables: the aggregate tables (the same specs the writers use).
        system_tables: the ledger, ownership and move-ledger table names.
        settings: chunking, parallelism and throttling.
        before_step: called with a step name before each step (for tests that
            kill the process at chosen points): ``switch`` (accept the slots on
            their targets, then fence their sources), ``publish``, then per
            slot ``ledger:SLOT`` (copy a chunk of its ledger) and
            ``ledger-delete:SLOT``, ``merge:SLOT:TABLE`` (merge a chunk of a
            table's rows) and ``merge-delete:SLOT:TABLE``, ``finish:SLOT``;
            slots with no rows are handed over in batches at
            ``finish-empty:SHARD:FIRST_SLOT``.
        on_progress: called with a :class:`ReshardReport` after the empty slots
            were handed over and after each slot finishes (from the moving
            threads: keep it quick).
        owner: this resharder's owner id in the map store's claim (default:
            ``host:pid:random``, new per instance).
        clock: the wall clock leases are measured with (Unix seconds; for tests).
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
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        on_progress: Callable[[ReshardReport], None] | None = None,
    ) -> None:
        self._on_progress = on_progress
        self._stop = threading.Event()
        self._report = (0, 0, 0.0, 0)  # slots total, done, start, done at start
        self._store = store
        self._owner = owner if owner is not None else new_owner_id()
        self._clock = clock
        self._claim: ReshardClaim | None = None
        self._renewed = 0.0
        self._renewed_at = 0.0
        self._provider = provider
        self._tables = tuple(tables)
        self._system = system_tables or SystemTables()
        self._settings = settings or ReshardSettings()
        self._before_step = before_step
        self._statements: dict[str, ReshardStatements] = {}  # per shard, in its dialect
        self._lock = threading.Lock()
        self._rows_moved = 0
        self._ledger_moved = 0
        self._finished_before: int | None = None  # slots finished before this run() began
        self._resolved: ShardMap | None = None  # the target this run() resolved, for retries
        self._lost: ReshardClaimedError | None = None  # the claim went to another owner
        self._epoch = 0  # the running plan's target epoch (set when it is claimed)

    # ------------------------------------------------------------------ public

    @property
    def owner(self) -> str:
        """This resharder's owner id in the map store's claim."""
        return self._owner

    def plan(self, target: ShardMap) -> ReshardPlan:
        """The plan from the map that precedes ``target`` in the store to ``target``."""
        return self._source_for(target).plan_to(target)

    def _source_for(self, target: ShardMap) -> ShardMap:
        current = self._store.load()
        if current.epoch == target.epoch:
            if current != target:
                raise ReshardError(
                    f"the store already holds a different map at epoch {target.epoch}; "
                    "plan from the current map (shardbill map show) and publish epoch "
                    f"{target.epoch + 1}"
                )
            if not isinstance(self._store, MapHistory):
                raise ReshardError(
                    f"{self._store!r} keeps no history, so the map before epoch "
                    f"{target.epoch} is unknown; use a store with history (JSON or SQL)"
                )
            source: ShardMap = self._store.load_epoch(target.epoch - 1)
            return source
        if current.epoch == target.epoch - 1:
            return current
        raise ReshardError(
            f"the target map has epoch {target.epoch} but the store holds epoch "
            f"{current.epoch}; a plan goes from epoch N to N + 1: re-plan from the "
            "current map"
        )

    def claim(self) -> ReshardClaim | None:
        """The reshard claim the map store holds now (``None``: never claimed)."""
        return self._claims().load_claim()

    def _claims(self) -> ClaimStore:
        if not isinstance(self._store, ClaimStore):
            raise ConfigurationError(
                f"{self._store!r} keeps no reshard claim (load_claim, swap_claim): a "
                "reshard must be claimed in the map store before it touches a shard; use "
                "JsonFileMapStore, SqlMapStore or MemoryMapStore, or implement ClaimStore"
            )
        return self._store

    def _resolve(self, target: ShardMap | None) -> tuple[ShardMap, ShardMap]:
        """The (source, target) maps to run: ``target``'s plan, or the claimed one to resume."""
        claim = self._claims().load_claim()
        if target is None:
            if claim is not None and claim.state == MOVING:
                return claim.source, claim.target
            target = self._store.load()
        if claim is not None and claim.state != ABORTED and claim.target == target:
            return claim.source, target
        return self._source_for(target), target

    def _acquire(self, source: ShardMap, target: ShardMap) -> ReshardClaim:
        """Record this reshard's claim in the map store (compare-and-set), or refuse."""
        store = self._claims()
        deadline = time.monotonic() + self._settings.lease_wait
        for _ in range(100):  # each lost compare-and-set means another resharder moved
            stored = store.load_claim()
            try:
                claim = decide(
                    stored,
                    source=source,
                    target=target,
                    owner=self._owner,
                    lease_seconds=self._settings.lease_seconds,
                    now=self._clock(),
                )
            except ReshardClaimedError:
                assert stored is not None  # noqa: S101 - decide refuses only a stored claim
                if stored.same_plan(source, target) and time.monotonic() < deadline:
                    self._stop.wait(min(1.0, max(0.05, stored.expires_at - self._clock())))
                    if not self._stop.is_set():
                        continue
                raise
            try:
                store.swap_claim(claim, expected_version=None if stored is None else stored.version)
            except ClaimConflictError:
                continue
            with self._lock:
                self._claim = claim
                self._renewed = time.monotonic()
                self._renewed_at = self._clock()
            log.info("claimed %s", claim.describe())
            return claim
        raise ReshardError(  # pragma: no cover - a hundred racing resharders
            "the map store's reshard claim kept changing; run again"
        )

    def _renew(self, *, force: bool = False) -> None:
        """Renew the lease when a third of it has passed; stop if another owner took it."""
        with self._lock:
            claim = self._claim
            if claim is None:
                return
            # A third of the lease gone by either clock: the monotonic one (immune to
            # wall-clock steps) or the lease's own clock (what other resharders judge by).
            third = self._settings.lease_seconds / 3
            if (
                not force
                and time.monotonic() - self._renewed < third
                and self._clock() - self._renewed_at < third
            ):
                return
            self._swap_own(
                attrs.evolve(
                    claim,
                    expires_at=self._clock() + self._settings.lease_seconds,
                    version=claim.version + 1,
                )
            )

    def _swap_own(self, new: ReshardClaim) -> None:
        """Swap this resharder's claim for ``new`` (holding ``self._lock``)."""
        claim = self._claim
        assert claim is not None  # noqa: S101 - callers check
        try:
            self._claims().swap_claim(new, expected_version=claim.version)
        except ClaimConflictError as exc:
            self._claim = None
            stored = self._claims().load_claim()
            holder = stored.describe() if stored is not None else "no claim"
            lost = ReshardClaimedError(
                f"this resharder ({self._owner!r}) lost its claim on reshard epoch "
                f"{claim.source.epoch} -> {claim.target.epoch}: the store now holds {holder}; "
                "it stopped (every step so far is recorded on the shards: the holder goes on "
                "from there)",
                owner=stored.owner if stored is not None else "",
                source_epoch=claim.source.epoch,
                target_epoch=claim.target.epoch,
                expires_at=stored.expires_at if stored is not None else 0.0,
            )
            # Remembered for the whole run: a slot worker that learns it first must not
            # leave another worker's error (a data-level fence it met meanwhile, simulation
            # seed 5130) to be reported instead of the lost claim.
            self._lost = lost
            raise lost from exc
        self._claim = new
        self._renewed = time.monotonic()
        self._renewed_at = self._clock()

    def _release(self, state: ClaimState) -> None:
        """Mark this resharder's claim ``finished`` or ``aborted``; the lease ends."""
        with self._lock:
            claim = self._claim
            if claim is None:
                return
            now = self._clock()
            self._swap_own(
                attrs.evolve(claim, state=state, expires_at=now, version=claim.version + 1)
            )
            self._claim = None

    def run(self, target: ShardMap | None = None) -> ReshardProgress:
        """Run (or resume) the reshard to ``target`` until every slot is finished.

        The reshard is first claimed in the map store (:mod:`shardbill.mapstore.claim`):
        another unfinished reshard of a different plan makes it refuse before it
        changes anything, naming the holder. Without ``target``, resume the
        claimed reshard (or the one to the map the store holds now). A
        transient database failure makes it run again from the top after a
        wait (``ReshardSettings.retry``): a re-run resumes exactly where the
        shards say the move stands.

        Raises:
            ReshardClaimedError: another reshard holds the claim.
            ReshardError: the plan does not fit the store or the shards (the
                message says how to fix it), or verification found a
                difference (nothing is finished for that slot).
            DatabaseError: a non-transient database error, or a transient one
                that outlasted the retries; running again resumes safely.
        """
        started = time.monotonic()
        delays = self._settings.retry.delays()
        attempt = 0
        self._finished_before = None
        self._resolved = None
        self._lost = None
        while True:
            attempt += 1
            try:
                # A retry runs the plan the first attempt resolved, never whatever
                # reshard the store claims by then (simulation seed 7013).
                progress = self._run_once(self._resolved or target)
            except ShardbillError as exc:
                if self._lost is not None:  # another owner has the plan: stop, do not retry
                    raise self._lost from exc
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
        try:
            return self._run_claimed(target)
        except ReshardError as exc:
            if not isinstance(exc, ReshardClaimedError):
                self._lost_claim(exc)
            self._expire()
            raise
        except BaseException:
            self._expire()
            raise

    def _lost_claim(self, error: ReshardError) -> None:
        """Raise "lost its claim" instead of ``error`` if this resharder's claim is gone.

        A resharder paused anywhere (before its first step, between two checks)
        while its lease expired and another took the plan over sees shards that
        moved on: whatever it finds there is not a fault of the shards, and the
        operator must hear that it lost its claim, not be sent to repair
        healthy rows (simulation seeds 17 and 3039).
        """
        try:
            self._renew(force=True)
        except ReshardClaimedError as lost:
            raise lost from error
        except ShardbillError:  # the store cannot tell: the original error stands
            return

    def _expire(self) -> None:
        """After a failure: end this resharder's lease at once, so a re-run takes over."""
        with self._lock:
            claim = self._claim
            if claim is None:
                return
            try:
                self._swap_own(
                    attrs.evolve(claim, expires_at=self._clock(), version=claim.version + 1)
                )
            except ReshardClaimedError as lost:  # another owner took it over meanwhile
                self._lost = lost
            except ShardbillError:  # the store may be what failed
                pass

    def _run_claimed(self, target: ShardMap | None) -> ReshardProgress:
        started = time.monotonic()
        source, target = self._resolve(target)
        plan = source.plan_to(target)
        self._acquire(source, target)
        self._resolved = target
        self._epoch = target.epoch  # the epoch every ownership change of this run compares
        new = sorted(s for s in target.shards if not plan.before.get(s))
        # New shards get their tables (their slots arrive by moving); so do the shards the
        # plan removes, which lack them when this reverts a reshard that died before it
        # had made them (their slots then never left; CREATE IF NOT EXISTS elsewhere).
        removed = sorted(s for s in source.shards if s not in target.shards)
        apply_schema(
            self._provider,
            target,
            self._tables,
            system_tables=self._system,
            shards=[*new, *removed],
            record_ownership=False,
        )
        # After the claim, before any slot moves: a close lists the claimed targets, or
        # had reached every source before this read (shardbill.periods.close).
        copy_closures(self._provider, sorted(source.shards), new, system_tables=self._system)
        copy_history(self._provider, sorted(source.shards), new, system_tables=self._system)
        try:
            self._slot_states(plan.moves)  # refuses, before any change, rows that do not fit
        except ReshardError:
            states = self._slot_states(plan.moves, strict=False)
            if not any(s in (MoveState.FENCED, MoveState.FINISHED) for s in states.values()):
                self._release(ABORTED)  # nothing was fenced: another plan may start
            raise
        if self._reverting():
            self._settle_reverted(plan.moves)
        self._step("switch")
        self._switch(plan, target)
        self._step("records")
        self._move_records(plan.moves, target)
        self._step("publish")
        self._publish(target)
        throttle = _Throttle(self._settings, self._stop)
        states = self._slot_states(plan.moves)
        pending = [m for m in plan.moves if states[m] != MoveState.FINISHED]
        empty = self._empty(pending)
        self._finish_empty([m for m in pending if m in empty])
        if self._finished_before is None:  # the first attempt: the rest is this run's work
            self._finished_before = len(plan.moves) - len(pending)
        done = len(plan.moves) - len(pending) + len(empty)
        with self._lock:
            self._report = (len(plan.moves), done, started, done)
        self._progress_report(0)
        pool = ThreadPoolExecutor(
            max_workers=self._settings.parallel_slots, thread_name_prefix="shardbill-reshard"
        )
        try:
            moving = [m for m in pending if m not in empty]
            for future in [pool.submit(self._move_slot, m, throttle) for m in moving]:
                future.result()
        finally:
            # A failed slot is retried from the top at once, not after every queued slot.
            pool.shutdown(wait=True, cancel_futures=True)
        self._release(FINISHED)
        return ReshardProgress(
            plan=plan,
            slots_finished=len(plan.moves) - (self._finished_before or 0),
            rows_moved=self._rows_moved,
            ledger_rows_moved=self._ledger_moved,
            seconds=time.monotonic() - started,
            slots_empty=len(empty),
        )

    def revert(self) -> ReshardProgress:
        """Move the claimed reshard (fenced, published or finished) back to the map before it.

        Every slot the reshard moved goes back to its source with the same
        protocol as a forward move (fence, publish, copy, merge, verify),
        writes going on; the map before it is published again as a new epoch.
        A revert is itself claimed: it replaces the claim of the reshard it
        undoes (whose lease must have ended), and is resumed by :meth:`run`
        or :meth:`revert` after a crash or a stop.

        Raises:
            ReshardClaimedError: the reshard is still running (its lease is live).
            ReshardError: nothing to revert, or a newer reshard came after it.
        """
        store = self._claims()
        stored = store.load_claim()
        if stored is None or stored.state == ABORTED:
            raise ReshardError(
                "no reshard to revert: the map store holds no claimed reshard (an aborted "
                "one changed nothing); plan the change you want with `shardbill reshard plan`"
            )
        if stored.reverts and stored.state == MOVING:
            return self.run()  # resume the revert in progress
        current = self._store.load()
        if current.epoch > stored.target.epoch:
            raise ReshardError(
                f"the map store holds epoch {current.epoch}, newer than the claimed reshard's "
                f"target {stored.target.epoch}: only the last reshard can be reverted; plan "
                "the change back as a new reshard"
            )
        back = stored.source.with_epoch(stored.target.epoch + 1)
        now = self._clock()
        if stored.state == MOVING and stored.owner != self._owner and not stored.expired(now):
            raise ReshardClaimedError(
                f"the map store's reshard claim is held: {stored.describe()}; stop it first "
                "(Ctrl-C on `shardbill reshard run`, or Resharder.stop()), then revert",
                owner=stored.owner,
                source_epoch=stored.source.epoch,
                target_epoch=stored.target.epoch,
                expires_at=stored.expires_at,
            )
        claim = ReshardClaim(
            source=stored.target,
            target=back,
            owner=self._owner,
            expires_at=now + self._settings.lease_seconds,
            version=stored.version + 1,
            reverts=stored.target.epoch,
        )
        store.swap_claim(claim, expected_version=stored.version)
        log.info("claimed %s", claim.describe())
        return self.run()

    def prepare(self, target: ShardMap) -> list[str]:
        """Create the tables on the shards ``target`` adds, recording no slot as theirs.

        The one safe way to create a new shard's tables before :meth:`run`
        (which does it too): a writer's ``ensure_schema()`` pointed at the new
        shard with a map that gives it slots would mark them owned there, and
        the reshard would then refuse to move them. Changes no ownership row.

        Returns:
            The shards prepared (those of ``target`` that own no slot before it).
        """
        source, target = self._resolve(target)
        new = sorted(s for s in target.shards if not source.plan_to(target).before.get(s))
        apply_schema(
            self._provider,
            target,
            self._tables,
            system_tables=self._system,
            shards=new,
            record_ownership=False,
        )
        copy_closures(self._provider, sorted(source.shards), new, system_tables=self._system)
        copy_history(self._provider, sorted(source.shards), new, system_tables=self._system)
        return new

    def status(self, target: ShardMap | None = None) -> list[SlotStatus]:
        """Each moving slot's state, read from the shards.

        ``pending``, ``fenced`` or ``finished``; ``conflict`` for a slot whose
        ownership rows do not fit this move (:meth:`run` says how to fix them).
        """
        try:
            source, target = self._resolve(target)
        except ShardbillError:
            if target is None:  # nothing claimed, and no move to the map the store holds
                return []
            raise
        plan = source.plan_to(target)
        stored = self._claims().load_claim()
        reverting = stored is not None and stored.reverts > 0 and stored.same_plan(source, target)
        states = self._slot_states(plan.moves, strict=False, missing_ok=True, reverting=reverting)
        return [
            SlotStatus(slot=m.slot, source=m.source, target=m.target, state=states[m])
            for m in plan.moves
        ]

    def abort(self, target: ShardMap) -> bool:
        """Undo a reshard that has fenced nothing yet; returns True when it was undone.

        Once any source shard fenced a slot (writers may already be writing to
        the target), the reshard can only be completed (run it again) or
        reverted (:meth:`revert`).
        """
        source, target = self._resolve(target)
        plan = source.plan_to(target)
        if any(state != MoveState.PENDING for state in self._slot_states(plan.moves).values()):
            return False
        current = self._store.load()
        if current.epoch == target.epoch:
            raise ReshardError("the target map is published already; complete the reshard")
        stored = self._claims().load_claim()
        if stored is not None and stored.same_plan(source, target) and stored.state == MOVING:
            self._acquire(source, target)  # a live lease of another owner refuses here
        by_target: dict[str, list[int]] = defaultdict(list)
        for move in plan.moves:
            by_target[move.target].append(move.slot)
        for shard, slots in by_target.items():
            with self._cursor(shard) as (cursor, sql):
                cursor.execute(*sql.slots.drop_incoming(slots))
        self._release(ABORTED)
        return True

    def verify(self, shard_map: ShardMap | None = None) -> list[str]:
        """Every difference found between the shards and ``shard_map`` (empty: exact).

        Reads every shard the store has ever named (each kept map, the claimed
        reshard's maps, and every shard an ownership row names as a peer) and
        checks that:

        * every slot is owned by exactly one shard, the one ``shard_map``
          (default: the published map) names, except the slots of the claimed,
          unfinished reshard, whose rows must fit a step of their move;
        * no slot is left ``incoming`` outside that reshard, and every
          forwarding address (``gone``) leads to the slot's owner;
        * no aggregate or ledger row of a slot sits outside its owner (or, for a
          slot in motion, outside its source and target);
        * every finished move merged exactly the manifest its source recorded.
        """
        current = shard_map if shard_map is not None else self._store.load()
        claims = self._store if isinstance(self._store, ClaimStore) else None
        claim = claims.load_claim() if claims is not None else None
        moving: dict[int, SlotMove] = {}
        if claim is not None and claim.state == MOVING:
            moving = {m.slot: m for m in claim.source.plan_to(claim.target).moves}
        reverting = claim is not None and claim.state == MOVING and claim.reverts > 0
        shards = self._known_shards(current, claim)
        problems: list[str] = []
        states: dict[str, dict[int, tuple[str, str | None]]] = {}
        # Shards the provider knows but no map names are read too, where they have the
        # tables: a reshard run without a claim may have left owned slots there.
        known = self._provider.shards if isinstance(self._provider, KnowsShards) else ()
        extra = sorted(set(known) - shards)
        for shard in extra:
            with contextlib.suppress(ShardbillError):
                found = self._verify_shard_states(shard, problems, quiet=True)
                if found:
                    states[shard] = found
        pending = sorted(shards)
        while pending:  # shards named only as a peer join the read
            for shard in pending:
                states[shard] = self._verify_shard_states(shard, problems)
            named = {
                peer for rows in states.values() for _, peer in rows.values() if peer is not None
            }
            pending = sorted(named - set(states))
        problems.extend(_ownership_problems(current, states, moving, reverting=reverting))
        for shard in sorted(states):
            problems.extend(self._misplaced_rows(shard, current, states, moving))
        return problems

    def _known_shards(self, current: ShardMap, claim: ReshardClaim | None) -> set[str]:
        """Every shard of a kept map, of the claimed reshard, and of ``current``."""
        shards = set(current.shards)
        if claim is not None:
            shards |= set(claim.source.shards) | set(claim.target.shards)
        if not isinstance(self._store, MapHistory):
            return shards
        for epoch in self._store.history():
            with contextlib.suppress(ShardbillError):  # a store that prunes its history
                shards |= set(self._store.load_epoch(epoch).shards)
        return shards

    def _verify_shard_states(
        self, shard: str, problems: list[str], *, quiet: bool = False
    ) -> dict[int, tuple[str, str | None]]:
        """One shard's ownership rows; its finished moves' tallies are checked on the way.

        With ``quiet``, a shard that cannot be read (or has no tables) raises instead of
        being reported.
        """
        try:
            with self._cursor(shard) as (cursor, sql):
                cursor.execute(*sql.slots.all_rows())
                rows = {
                    int(r[0]): (str(r[1]), None if r[2] is None else str(r[2]))
                    for r in cursor.fetchall()
                }
                cursor.execute(*sql.moves.all_records())
                for slot, table, manifest, moved, done in cursor.fetchall():
                    if int(done) and _Tally.from_json(str(manifest)) != _Tally.from_json(
                        str(moved)
                    ):
                        problems.append(
                            f"shard {shard!r}, slot {slot}, table {table!r}: merged {moved} "
                            f"but the source held {manifest}"
                        )
        except ConfigurationError as exc:  # a peer the provider has no URL for
            if quiet:
                raise
            problems.append(
                f"shard {shard!r} is named by the store or a forwarding address but cannot be "
                f"read ({exc}); give the provider its URL and verify again"
            )
            return {}
        return rows

    def _misplaced_rows(
        self,
        shard: str,
        current: ShardMap,
        states: Mapping[str, Mapping[int, tuple[str, str | None]]],
        moving: Mapping[int, SlotMove],
    ) -> list[str]:
        """The rows on ``shard`` of slots it should not hold."""
        problems: list[str] = []
        if not states.get(shard) and shard not in current.shards:
            with contextlib.suppress(ShardbillError):  # no tables: nothing to misplace
                return self._rows_on_unknown(shard, current)
            return problems
        with self._cursor(shard) as (cursor, sql):
            for name in (self._system.ledger, *(t.name for t in self._tables)):
                cursor.execute(*sql.rows.distinct_slots(name))
                for (raw_slot,) in cursor.fetchall():
                    slot = int(raw_slot)
                    why = _misplaced(shard, slot, current, states, moving.get(slot))
                    if why is not None:
                        problems.append(
                            f"table {name!r}: rows of slot {slot} are on shard {shard!r}, but "
                            + why
                        )
        return problems

    def _rows_on_unknown(self, shard: str, current: ShardMap) -> list[str]:
        problems: list[str] = []
        with self._cursor(shard) as (cursor, sql):
            for name in (self._system.ledger, *(t.name for t in self._tables)):
                cursor.execute(*sql.rows.count(name))
                row = cursor.fetchone()
                if row is not None and int(row[0]):
                    problems.append(
                        f"table {name!r}: {int(row[0])} row(s) are on shard {shard!r}, which "
                        f"owns no slot in the map (epoch {current.epoch})"
                    )
        return problems

    # ------------------------------------------------------------------ steps

    def stop(self) -> None:
        """Ask a running :meth:`run` to stop at the next safe point (between two steps).

        Thread- and signal-safe. :meth:`run` then raises
        :class:`~shardbill.errors.ReshardStoppedError`; every step so far is
        recorded on the shards and the lease is ended, so running again resumes
        (with a new :class:`Resharder`: this one stays stopped).
        """
        self._stop.set()

    def _step(self, name: str) -> None:
        if self._stop.is_set():
            raise ReshardStoppedError(
                f"the reshard stopped before step {name!r} as asked; every step so far is "
                "recorded on the shards: run it again to resume"
            )
        if self._before_step is not None:
            self._before_step(name)
        self._renew()  # last before the step's work: a pause above cannot hide a lost lease

    @contextlib.contextmanager
    def _cursor(self, shard: str) -> Iterator[tuple[DBAPICursor, ReshardStatements]]:
        """A cursor on ``shard`` in one transaction, and the statements in its dialect."""
        with self._provider.connection(shard) as conn:
            statements = self._statements.get(shard)
            if statements is None:
                statements = self._statements[shard] = ReshardStatements.of(
                    dialect_for(conn), self._system
                )
            cursor = conn.cursor()
            try:
                yield cursor, statements
            finally:
                cursor.close()

    def _switch(self, plan: ReshardPlan, target: ShardMap) -> None:
        """Steps 1 and 2: accept every moving slot on its target, then fence it on its source."""
        self._accept(plan, target)
        self._fence(plan, target)

    def _accept(self, plan: ReshardPlan, target: ShardMap) -> None:
        """Step 1 on every target: an ``incoming`` row per slot (nobody routes there yet)."""
        by_target: dict[str, list[SlotMove]] = defaultdict(list)
        for move in plan.moves:
            by_target[move.target].append(move)
        for shard, moves in sorted(by_target.items()):
            with self._cursor(shard) as (cursor, sql):
                known = self._not_later(cursor, sql, shard, [m.slot for m in moves], target)
                for move in moves:
                    state = known.get(move.slot)
                    if state is None or state == SlotState.GONE:
                        # A new move of this slot into this shard: progress records of an
                        # earlier move of the same slot here are history, not progress.
                        cursor.execute(*sql.moves.forget(move.slot))
                    if state is None:
                        cursor.execute(*sql.slots.accept(move.slot, move.source, target.epoch))
                    elif state == SlotState.GONE:  # the slot comes back to a former owner
                        cursor.execute(*sql.slots.accept_back(move.slot, move.source, target.epoch))

    def _fence(self, plan: ReshardPlan, target: ShardMap) -> None:
        """Step 2 on every source: waits for in-flight writers, refuses later ones.

        A revert also fences the slots its source was still receiving from its target.
        """
        by_pair: dict[tuple[str, str], list[int]] = defaultdict(list)
        for move in plan.moves:
            by_pair[(move.source, move.target)].append(move.slot)
        reverting = self._reverting()
        for (source, dest), slots in sorted(by_pair.items()):
            with self._cursor(source) as (cursor, sql):
                self._not_later(cursor, sql, source, slots, target)
                cursor.execute(*sql.slots.fence(slots, dest, target.epoch, receiving=reverting))
            log.info("fenced %d slot(s) on %s for %s", len(slots), source, dest)

    def _not_later(
        self,
        cursor: DBAPICursor,
        sql: ReshardStatements,
        shard: str,
        slots: Sequence[int],
        target: ShardMap,
    ) -> dict[int, str]:
        """``slots``' states on ``shard`` (locked); stop if a later reshard changed one.

        Every ownership row holds the epoch of the reshard that changed it last. A
        resharder paused inside a step (between two shards' transactions) while its
        plan was taken over, finished and followed by later reshards must not change
        what they left: its switch would fence or take back slots they moved on, owned
        by no shard after it (simulation long run, seed 60241). The statements that
        change ownership compare the epoch too.
        """
        cursor.execute(*sql.slots.locked_epochs(slots))
        known: dict[int, str] = {}
        for slot, state, epoch in cursor.fetchall():
            if int(str(epoch)) > target.epoch:
                raise ReshardError(
                    f"slot {int(str(slot))} on {shard!r} was changed by a later reshard "
                    f"(epoch {int(str(epoch))}) than this one's (epoch {target.epoch}): "
                    "this resharder's plan is stale, so it stops without touching it; run "
                    "`shardbill reshard status` to see the reshard that holds the claim"
                )
            known[int(str(slot))] = str(state)
        return known

    def _publish(self, target: ShardMap) -> None:
        current = self._store.load()
        if current.epoch < target.epoch:
            expected = target.epoch - 1
            if (
                self._reverting()
                and current.epoch == target.epoch - 2
                and current.assignment == target.assignment
            ):
                expected = current.epoch  # the reverted reshard never published its map
            self._store.publish(target, expected_epoch=expected)
            log.info("published shard map epoch %d", target.epoch)

    def _settle_reverted(self, moves: Sequence[SlotMove]) -> None:
        """Before a revert moves a slot back: finish the reverted move's deletes, drop its
        progress.

        A chunk the reverted move merged into its target (this revert's source) may
        still be on its source too (a stop between the merge and the delete); the
        revert merges the target's rows back, so those copies are deleted first, by
        the reverted move's progress, and that progress is dropped. Only before the
        revert merged anything: the progress is gone once it ran.
        """
        tables = {t.name: t for t in self._tables}
        for shard, chunk in _by_shard(moves, "source"):
            back = {m.slot: m for m in chunk}
            with self._cursor(shard) as (cursor, sql):
                cursor.execute(*sql.moves.unfinished(sorted(back)))
                records = [(int(r[0]), str(r[1]), str(r[2]), r[3]) for r in cursor.fetchall()]
            for slot, name, source, last_key in records:
                move = back[slot]
                if source != move.target or name not in tables:
                    continue
                forward = SlotMove(slot=slot, source=move.target, target=shard)
                if last_key is not None:
                    self._delete_merged(forward, tables[name], json.loads(last_key))
                with self._cursor(shard) as (cursor, sql):
                    cursor.execute(*sql.moves.drop_unfinished(slot, name))

    def _move_records(self, moves: Sequence[SlotMove], target: ShardMap) -> None:
        """The fenced slots' correction records and adjustment bookings go to their
        targets before any slot is handed over (:mod:`shardbill.resharding.records`)."""
        states = self._slot_states(moves, strict=False)
        fenced = [m for m in moves if states[m] == MoveState.FENCED]
        copied = move_records(
            fenced,
            system=self._system,
            home_slot=target.slot_for,
            owner=target.owner,
            cursor_for=self._cursor,
            check_moving=self._check_moving,
            step=self._step,
        )
        if copied:
            log.info("moved %d correction record(s) and booking(s) with their slots", copied)

    def _reverting(self) -> bool:
        claim = self._claim
        return claim is not None and claim.reverts > 0

    def _slot_states(
        self,
        moves: Sequence[SlotMove],
        *,
        strict: bool = True,
        missing_ok: bool = False,
        reverting: bool | None = None,
    ) -> dict[SlotMove, MoveState]:
        """Each move's state from both sides' ownership rows, peers included.

        ``finished``: the target owns the slot and the source forwards to it;
        ``fenced``: the source forwards to the target, which receives from the
        source; ``pending``: the source owns it and the target has no row, a
        row from an earlier move away (``gone``), or this move's ``incoming``
        row. In a revert, a slot the reverted reshard never moved is ``finished``
        (its owner still owns it; the other side has no row or one from an earlier
        move away), and one still arriving on this revert's source is ``pending``.
        Anything else is a ``conflict``: with ``strict``, a
        :class:`~shardbill.errors.ReshardError` that lists them and says how to
        fix them, before anything changes.
        """
        reverting = self._reverting() if reverting is None else reverting
        sources = self._rows_of(moves, "source")
        targets = self._rows_of(moves, "target", missing_ok=missing_ok)
        states: dict[SlotMove, MoveState] = {}
        conflicts: dict[str, list[SlotMove]] = defaultdict(list)
        for move in moves:
            s_state, s_peer = sources.get(move, (None, None))
            t_state, t_peer = targets.get(move, (None, None))
            forwards = s_state == SlotState.GONE and s_peer == move.target
            if forwards and t_state == SlotState.OWNED:
                states[move] = MoveState.FINISHED
            elif forwards and t_state == SlotState.INCOMING and t_peer == move.source:
                states[move] = MoveState.FENCED
            elif s_state == SlotState.OWNED and (
                t_state in (None, SlotState.GONE)
                or (t_state == SlotState.INCOMING and t_peer == move.source)
            ):
                states[move] = MoveState.PENDING
            elif reverting and t_state == SlotState.OWNED and s_state in (None, SlotState.GONE):
                # The reverted reshard never moved it: the mirror of a pending move, whose
                # target may keep a row from an earlier move away, to any shard (seed 9225).
                states[move] = MoveState.FINISHED
            elif (
                reverting
                and (s_state, s_peer) == (SlotState.INCOMING, move.target)
                and (t_state == SlotState.OWNED or t_peer == move.source)
            ):
                # The source was still receiving it: fence it there.
                states[move] = MoveState.PENDING
            else:
                states[move] = MoveState.CONFLICT
                conflicts[
                    _conflict(move, (s_state, s_peer), (t_state, t_peer), self._system.slots)
                ].append(move)
        if strict and conflicts:
            raise ReshardError(
                f"{sum(len(v) for v in conflicts.values())} moving slot(s) have ownership rows "
                "that do not fit this reshard, so it stops before changing anything more: "
                + "; ".join(
                    f"{why} (slots {_sample(group)})" for why, group in sorted(conflicts.items())
                )
            )
        return states

    def _rows_of(
        self, moves: Sequence[SlotMove], side: str, *, missing_ok: bool = False
    ) -> dict[SlotMove, tuple[str, str | None]]:
        """Each move's ownership row ``(state, peer)`` on its ``side`` shard, where it has one.

        With ``missing_ok``, a shard without the ownership table (a new shard
        before :meth:`prepare` or :meth:`run`) has no rows.
        """
        found: dict[SlotMove, tuple[str, str | None]] = {}
        for shard, chunk in _by_shard(moves, side):
            with self._cursor(shard) as (cursor, sql):
                if missing_ok and sql.dialect.describe_table(cursor, self._system.slots) is None:
                    continue
                cursor.execute(*sql.slots.rows([m.slot for m in chunk]))
                rows = {
                    int(r[0]): (str(r[1]), None if r[2] is None else str(r[2]))
                    for r in cursor.fetchall()
                }
            found.update((m, rows[m.slot]) for m in chunk if m.slot in rows)
        return found

    def _slots_in_state(
        self, moves: Sequence[SlotMove], side: str, state: SlotState
    ) -> set[SlotMove]:
        """The moves whose slot is in ``state`` on their ``side`` shard (one query per chunk)."""
        return {m for m, (found, _) in self._rows_of(moves, side).items() if found == state}

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
            with self._cursor(shard) as (cursor, sql):
                for name in names:
                    cursor.execute(*sql.rows.slots_among(name, [m.slot for m in chunk]))
                    hits = {int(row[0]) for row in cursor.fetchall()}
                    busy.update(m for m in chunk if m.slot in hits)
        for shard, chunk in _by_shard([m for m in moves if m in fenced], "target"):
            with self._cursor(shard) as (cursor, sql):
                cursor.execute(
                    *sql.moves.slots_recorded(
                        [m.slot for m in chunk], other_than=self._system.corrections
                    )
                )
                hits = {int(row[0]) for row in cursor.fetchall()}
            busy.update(m for m in chunk if m.slot in hits)
        return {m for m in moves if m in fenced and m not in busy}

    def _finish_empty(self, moves: Sequence[SlotMove]) -> None:
        """Hand empty slots to their targets, a chunk per transaction (see :meth:`_empty`)."""
        for shard, chunk in _by_shard(moves, "target"):
            self._step(f"finish-empty:{shard}:{chunk[0].slot}")
            by_source: dict[str, list[int]] = defaultdict(list)
            for move in chunk:
                by_source[move.source].append(move.slot)
            marks = {source: self._watermarks(source, slots) for source, slots in by_source.items()}
            with self._cursor(shard) as (cursor, sql):
                for source, slots in sorted(by_source.items()):
                    cursor.execute(*sql.slots.mark_owned(slots, source, epoch=self._epoch))
                    self._raise_watermarks(cursor, sql, marks[source])
        if moves:
            log.info("%d empty slot(s) handed to their new owners", len(moves))

    def _move_slot(self, move: SlotMove, throttle: _Throttle) -> None:
        try:
            self._step(f"ledger:{move.slot}")
            self._copy_ledger(move, throttle)
            for table in self._tables:
                self._step(f"merge:{move.slot}:{table.name}")
                self._merge_table(move, table, throttle)
            self._step(f"finish:{move.slot}")
            self._finish(move)
        except _FinishedElsewhereError:
            # Finished under this one by the resharder it took the plan over from (which
            # had not yet noticed), or by the one that took it over from this one: the
            # claim says which (CI, 2026-12-04).
            self._renew(force=True)  # stops here if this resharder lost its claim
            log.info("slot %d: finished by another resharder of this plan", move.slot)
        self._progress_report(1)

    def _progress_report(self, finished: int) -> None:
        with self._lock:
            total, done, started, at_start = self._report
            done += finished
            self._report = (total, done, started, at_start)
            report = ReshardReport(
                slots_total=total,
                slots_done=done,
                rows_moved=self._rows_moved,
                ledger_rows_moved=self._ledger_moved,
                seconds=time.monotonic() - started,
                slots_at_start=at_start,
            )
        if self._on_progress is not None:
            self._on_progress(report)

    def _copy_ledger(self, move: SlotMove, throttle: _Throttle) -> None:
        # The ledger's columns come from its one definition (SystemTables.ledger_def), so
        # a column added there is copied too.
        definition = self._system.ledger_def()
        ledger = definition.name
        columns = list(definition.columns)
        names = tuple(c.name for c in columns)
        spec = UpsertSpec(table=ledger, columns=names, key_columns=definition.primary_key)
        event_at = names.index("event_id")
        n = self._settings.chunk_rows
        while True:
            with self._cursor(move.source) as (cursor, sql):
                cursor.execute(*sql.rows.ledger_chunk(move.slot, names, n))
                rows = [
                    tuple(_ledger_value(c, v) for c, v in zip(columns, r, strict=True))
                    for r in cursor.fetchall()
                ]
            if not rows:
                return
            with self._cursor(move.target) as (cursor, sql):
                self._check_moving(cursor, sql, move, move.target)
                # Insert-if-absent: a chunk copied before a crash is copied again harmlessly.
                renderer = RowStatements(sql.dialect, spec, columns, max_rows=n)
                for statement in renderer.statements(rows):
                    cursor.execute(*statement)
            self._step(f"ledger-delete:{move.slot}")
            with self._cursor(move.source) as (cursor, sql):
                self._check_moving(cursor, sql, move, move.source)
                cursor.execute(*sql.rows.delete_ledger_through(move.slot, rows[-1][event_at]))
            with self._lock:
                self._ledger_moved += len(rows)
            throttle.after(len(rows))
            if len(rows) < n:  # the last chunk (the fenced slot gets no new rows)
                return

    def _check_moving(
        self, cursor: DBAPICursor, sql: ReshardStatements, move: SlotMove, shard: str
    ) -> None:
        """Stop unless ``shard``'s ownership row still says ``move`` is under way (locked).

        The data-level fence of a resharder that missed the loss of its lease
        (paused right after a renewal, say): once another resharder finished
        the move, and perhaps moved the slot on, the rows of the current owner
        are not this resharder's to copy or delete.
        """
        want = (
            (SlotState.GONE.value, move.target)
            if shard == move.source
            else (SlotState.INCOMING.value, move.source)
        )
        cursor.execute(*sql.slots.locked_row(move.slot))
        row = cursor.fetchone()
        found = None if row is None else (str(row[0]), None if row[1] is None else str(row[1]))
        if found == want and row is not None and int(str(row[2])) > self._epoch:
            found = None  # the same state, set by a later reshard's move of the slot
        if found != want:
            finished = shard == move.target and found == (SlotState.OWNED.value, None)
            raise (_FinishedElsewhereError if finished else ReshardError)(
                f"slot {move.slot} is no longer moving from {move.source!r} to {move.target!r} "
                f"({shard!r} holds {found or 'no row'} where the move needs {want}): another "
                "resharder finished it, so this one stops without touching it; run `shardbill "
                "reshard status` to see the reshard that holds the claim"
            )

    def _merge_table(self, move: SlotMove, table: AggregateTable, throttle: _Throttle) -> None:
        # Another resharder of the same plan (one that took over an expired lease while
        # this one stalled) may advance the same record: a lost compare-and-set on the
        # progress rolls the chunk back, and the merge goes on from the record.
        while True:
            try:
                self._merge_table_once(move, table, throttle)
            except _ProgressRacedError:
                log.warning("slot %d, table %s: merged by another resharder", move.slot, table.name)
                self._renew(force=True)  # stops here if this resharder lost its claim
                continue
            return

    def _merge_table_once(self, move: SlotMove, table: AggregateTable, throttle: _Throttle) -> None:
        progress = self._merge_progress(move, table)
        if progress is None:
            return  # merged and verified already
        moved, last_key = progress
        if last_key is not None:  # a crash after a merge, before its delete on the source
            self._delete_merged(move, table, last_key)
        self._merge_chunks(move, table, moved, last_key, throttle)

    def _merge_progress(
        self, move: SlotMove, table: AggregateTable
    ) -> tuple[_Tally, list[Any] | None] | None:
        """What the move ledger says is merged of ``table`` (``None``: all of it, done).

        Without a record, the source's manifest is taken and the record started
        (nothing merged); another resharder that started it first makes this
        raise :class:`_ProgressRacedError`.
        """
        with self._cursor(move.target) as (cursor, sql):
            cursor.execute(*sql.moves.progress(move.slot, table.name))
            record = cursor.fetchone()
        if record is not None:
            if int(record[3]):
                return None
            moved = _Tally.from_json(str(record[1]))
            return moved, json.loads(record[2]) if record[2] is not None else None
        manifest = self._manifest(move, table)
        moved = _Tally()
        try:
            with self._cursor(move.target) as (cursor, sql):
                cursor.execute(
                    *sql.moves.start(
                        move.slot, table.name, move.source, manifest.to_json(), moved.to_json()
                    )
                )
        except DuplicateKeyError as exc:  # another resharder recorded it first
            raise _ProgressRacedError from exc
        return moved, None

    def _merge_chunks(
        self,
        move: SlotMove,
        table: AggregateTable,
        moved: _Tally,
        last_key: list[Any] | None,
        throttle: _Throttle,
    ) -> None:
        """UPSERT the source's rows after ``last_key`` into the target, chunk by chunk, each
        in one transaction with the move ledger's progress, then delete it on the source."""
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
            before = moved.to_json()
            for key, values in rows:
                moved.add(table, key, values)
            last_key = _jsonable(rows[-1][0])
            with self._cursor(move.target) as (cursor, sql):
                renderer = RowStatements(sql.dialect, spec, columns, max_rows=n)
                values_rows = [(*map(_sql, key), move.slot, *values) for key, values in rows]
                for statement in renderer.statements(values_rows):
                    cursor.execute(*statement)
                # Compare-and-set on the progress read: the chunk counts only if nobody
                # merged past `before` meanwhile (else it rolls back with the UPSERTs).
                cursor.execute(
                    *sql.moves.advance(
                        move.slot,
                        table.name,
                        moved=moved.to_json(),
                        last_key=json.dumps(last_key),
                        before=before,
                    )
                )
                if cursor.rowcount != 1:
                    raise _ProgressRacedError
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
        with self._cursor(move.source) as (cursor, sql):
            cursor.execute(*sql.rows.aggregate_chunk(table, move.slot, after, limit))
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
        with self._cursor(move.source) as (cursor, sql):
            cursor.execute(*sql.rows.delete_aggregates_through(table, move.slot, last_key))

    def _finish(self, move: SlotMove) -> None:
        """Step 6: what was merged equals the manifest and the source holds nothing of the
        slot; then the target owns it, with the source's dedup watermark."""
        problems = self._leftovers(move)
        marks = self._watermarks(move.source, [move.slot])
        with self._cursor(move.target) as (cursor, sql):
            problems.extend(self._manifest_mismatches(cursor, sql, move))
            if problems:
                raise ReshardError(
                    f"slot {move.slot} ({move.source} -> {move.target}) does not verify: "
                    + "; ".join(problems)
                    + "; it stays in motion (reads and writes stay exact); investigate, "
                    "then run again"
                )
            cursor.execute(*sql.moves.finish(move.slot))
            self._check_moving(cursor, sql, move, move.target)
            cursor.execute(*sql.slots.mark_owned([move.slot], move.source, epoch=self._epoch))
            self._raise_watermarks(cursor, sql, marks)
        log.info("slot %d moved from %s to %s", move.slot, move.source, move.target)

    def _leftovers(self, move: SlotMove) -> list[str]:
        """The tables (ledger first) that still hold rows of the slot on its source."""
        names = (self._system.ledger, *(t.name for t in self._tables))
        with self._cursor(move.source) as (cursor, sql):
            cursor.execute(*sql.rows.left(move.slot, names))  # one round trip for every table
            row = cursor.fetchone()
        left = [int(v) for v in row] if row is not None else [1] * len(names)
        return [
            f"{name}: {count} row(s) left on {move.source}"
            for name, count in zip(names, left, strict=True)
            if count
        ]

    def _manifest_mismatches(
        self, cursor: DBAPICursor, sql: ReshardStatements, move: SlotMove
    ) -> list[str]:
        """The tables whose merged tally differs from the manifest its source recorded."""
        cursor.execute(*sql.moves.tallies(move.slot))
        return [
            f"{table}: merged {moved}, the source held {manifest}"
            for table, manifest, moved in cursor.fetchall()
            if _Tally.from_json(str(manifest)) != _Tally.from_json(str(moved))
        ]

    def _watermarks(self, shard: str, slots: Sequence[int]) -> dict[int, int]:
        """The dedup watermarks (``pruned_below``) of ``slots`` on ``shard``."""
        with self._cursor(shard) as (cursor, sql):
            cursor.execute(*sql.slots.watermarks(slots))
            return {int(slot): int(mark) for slot, mark in cursor.fetchall()}

    def _raise_watermarks(
        self, cursor: DBAPICursor, sql: ReshardStatements, marks: Mapping[int, int]
    ) -> None:
        """A slot a shard now owns keeps its source's dedup watermark (never lower): the
        source may have pruned ledger rows below it, so older events stay refused here."""
        for slot, mark in sorted(marks.items()):
            if mark > 0:
                cursor.execute(*sql.slots.raise_watermark(slot, mark))


def _ownership_problems(
    current: ShardMap,
    states: Mapping[str, Mapping[int, tuple[str, str | None]]],
    moving: Mapping[int, SlotMove],
    *,
    reverting: bool = False,
) -> list[str]:
    """Slots not owned by exactly the shard the map names, left incoming, or forwarded astray."""
    problems: list[str] = []
    for slot in range(current.slots):
        move = moving.get(slot)
        owners = sorted(s for s, rows in states.items() if rows.get(slot, ("",))[0] == "owned")
        incoming = sorted(s for s, rows in states.items() if rows.get(slot, ("",))[0] == "incoming")
        if move is not None:
            s_row = states.get(move.source, {}).get(slot)
            t_row = states.get(move.target, {}).get(slot)
            fits = (
                (owners == [move.source] and incoming in ([], [move.target]))
                or (
                    owners == []
                    and incoming == [move.target]
                    and s_row == (SlotState.GONE.value, move.target)
                    and t_row == (SlotState.INCOMING.value, move.source)
                )
                or (owners == [move.target] and not incoming)
                # A revert starts from any step of the move it undoes.
                or (
                    reverting
                    and len(owners) <= 1
                    and set(owners) | set(incoming) <= {move.source, move.target}
                )
            )
            if not fits:
                problems.append(
                    f"slot {slot}: its ownership rows (owned on {owners or 'no shard'}, incoming "
                    f"on {incoming or 'no shard'}) fit no step of the claimed move "
                    f"{move.source!r} -> {move.target!r}"
                )
            continue
        expected = current.owner(slot)
        if owners != [expected]:
            problems.append(
                f"slot {slot}: owned by {owners or 'no shard'}, but the map (epoch "
                f"{current.epoch}) gives it to {expected!r} only"
            )
        problems.extend(
            f"slot {slot}: left incoming on {shard!r} (from {states[shard][slot][1]!r}) though "
            "no reshard of it is in progress"
            for shard in incoming
        )
        for shard, rows in sorted(states.items()):
            row = rows.get(slot)
            if row is None or row[0] != SlotState.GONE:
                continue
            end = _follow(states, slot, shard)
            if end != expected:
                problems.append(
                    f"slot {slot}: {shard!r} forwards writers to {row[1]!r}, which leads to "
                    f"{end or 'no owner'}, not to its owner {expected!r}"
                )
    return problems


def _follow(
    states: Mapping[str, Mapping[int, tuple[str, str | None]]], slot: int, start: str
) -> str | None:
    """Where following ``slot``'s forwarding addresses from ``start`` ends: an owner, or None."""
    shard: str | None = start
    for _ in range(len(states) + 1):
        row = states.get(shard or "", {}).get(slot)
        if row is None:
            return None
        if row[0] == SlotState.OWNED:
            return shard
        if row[0] != SlotState.GONE:
            return None
        shard = row[1]
    return None  # a cycle


def _misplaced(
    shard: str,
    slot: int,
    current: ShardMap,
    states: Mapping[str, Mapping[int, tuple[str, str | None]]],
    move: SlotMove | None,
) -> str | None:
    """Why rows of ``slot`` may not be on ``shard`` (None: they may)."""
    if move is not None:
        finished = states.get(move.target, {}).get(slot, ("",))[0] == SlotState.OWNED
        if shard == move.target or (shard == move.source and not finished):
            return None  # the source's rows are still being merged into the target
        if shard == move.source:
            return f"its move to {move.target!r} has finished, so they were left behind"
        return f"the claimed move gives the slot to {move.target!r}"
    owner = current.owner(slot)
    if owner == shard:
        return None
    state, peer = states.get(shard, {}).get(slot, ("", None))
    if state == SlotState.GONE and peer == owner:
        return f"its move to {owner!r} has finished, so they were left behind"
    return f"the map (epoch {current.epoch}) gives the slot to {owner!r}"


_CHUNK = 1000  # slots per IN list


def _by_shard(moves: Sequence[SlotMove], side: str) -> Iterator[tuple[str, list[SlotMove]]]:
    """``moves`` grouped by their ``side`` shard ("source" or "target"), in chunks."""
    groups: dict[str, list[SlotMove]] = defaultdict(list)
    for move in moves:
        groups[move.source if side == "source" else move.target].append(move)
    for shard, group in sorted(groups.items()):
        for start in range(0, len(group), _CHUNK):
            yield shard, group[start : start + _CHUNK]


def _ledger_value(column: Column, raw: object) -> object:
    """A ledger value as read, made plain for the copy (ints, text; NULL stays None)."""
    if raw is None:
        return None
    if column.kind in (ColumnKind.BIGINT, ColumnKind.INT):
        return int(raw)  # type: ignore[call-overload]
    if column.kind is ColumnKind.DATE:
        return raw.isoformat() if hasattr(raw, "isoformat") else str(raw)
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def _sample(moves: Sequence[SlotMove]) -> str:
    slots = sorted(m.slot for m in moves)
    more = f" and {len(slots) - 5} more" if len(slots) > 5 else ""
    return ", ".join(map(str, slots[:5])) + more


def _conflict(
    move: SlotMove,
    source: tuple[str | None, str | None],
    target: tuple[str | None, str | None],
    table: str,
) -> str:
    """Why a move's ownership rows do not fit it, and how to fix that."""
    s_state, s_peer = source
    t_state, t_peer = target
    if t_state == SlotState.OWNED and s_state == SlotState.OWNED:
        return (
            f"{move.target!r} already marks slots owned that the plan moves to it from "
            f"{move.source!r}, which owns them too (a schema step with a map that gave "
            f"{move.target!r} every slot, e.g. ensure_schema() of a writer pointed at it, "
            f"recorded them): create a new shard's tables only with `shardbill reshard "
            f"prepare` (Resharder.prepare()); if {move.target!r} holds no rows of those "
            f"slots, delete its rows of them from `{table}` and run again"
        )
    if s_state == SlotState.GONE and s_peer != move.target:
        return (
            f"{move.source!r} already forwards them to {s_peer!r}, not to this move's target "
            f"{move.target!r}: another reshard fenced them; finish or revert that one "
            "(`shardbill reshard status`, `run`, `revert`) and plan again from the map it "
            "leaves"
        )
    if t_state == SlotState.INCOMING and t_peer != move.source:
        return (
            f"{move.target!r} receives them from {t_peer!r}, not from this move's source "
            f"{move.source!r}: another reshard accepted them there; finish, revert or abort "
            "that one first"
        )
    return (
        f"{move.source!r} holds {s_state or 'no row'} (peer {s_peer}) and {move.target!r} "
        f"holds {t_state or 'no row'} (peer {t_peer}) in `{table}`, which fits no step of a "
        f"move from {move.source!r} to {move.target!r}; run `shardbill reshard verify` and "
        "repair the rows it names"
    )


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
