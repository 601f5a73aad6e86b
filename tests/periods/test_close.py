"""Period close on SQLite and MariaDB: refusal, races with writers, idempotence, crashes, reshards.

Races are made deterministic with events and barriers through a provider
that pauses a chosen transaction before its COMMIT (holding its locks) or
when it asks for a connection; nothing here measures time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import types
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from shardbill import ShardMap
from shardbill.observe import Committed, WriteEvent
from shardbill.periods import Period, PeriodCloser, PeriodState
from shardbill.periods.close import CLOSE_RETRY_BUDGET_SECONDS
from shardbill.providers import ConnectionProvider
from shardbill.providers.base import DBAPIConnection
from shardbill.resharding import MemoryMapStore, Resharder
from shardbill.rules import Charge
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter
from tests.support.backends import KINDS, Backend, make_backend
from tests.support.mysql import ServerAddress
from tests.support.oracle import actual_rows, expected_rows
from tests.support.outage import DiedError, DiesOn

NOV = Period.parse("2026-11")
IN_NOV = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
IN_DEC = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
SLOTS = 64
WAIT = 60  # seconds a barrier waits before the test fails (a hang, never a measurement)


@pytest.fixture(params=KINDS[:2])
def two_kinds(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Four shards on SQLite or on MariaDB (PyMySQL)."""
    yield from make_backend(request.param, 4, tmp_path, request)


def _writes_closing(period: Period) -> Callable[[DBAPIConnection], bool]:
    """True inside the transaction that has marked ``period`` closing (not committed yet)."""
    from shardbill.dialects.detect import dialect_for

    def check(conn: DBAPIConnection) -> bool:
        mark = dialect_for(conn).placeholder
        cursor = conn.cursor()
        try:
            cursor.execute(
                f"SELECT state FROM shardbill_periods WHERE period = {mark}", (str(period),)
            )
            row = cursor.fetchone()
        finally:
            cursor.close()
        return row is not None and str(row[0]) == PeriodState.CLOSING.value

    return check


class Pausing:
    """A provider that can stop one chosen transaction before its COMMIT, or at its start.

    ``hold(shard, nth)`` pauses the ``nth`` (from 1) next read-write
    transaction on ``shard`` after its statements ran and before it commits
    (its locks held): ``reached`` is set, and it waits for ``release``.
    ``hold(shard, when=check)`` pauses instead the first one for which
    ``check(conn)``, asked inside it before its COMMIT, is true: chosen by what
    it wrote, not by its number (a retried transaction does not shift it).
    ``on_request`` is called with the shard whenever a read-write connection
    is asked for.
    """

    def __init__(self, inner: ConnectionProvider) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._target: tuple[str, int] | None = None
        self._when: Callable[[DBAPIConnection], bool] | None = None
        self.reached = threading.Event()
        self.release = threading.Event()
        self.on_request: Callable[[str], None] | None = None

    def hold(
        self,
        shard: str,
        nth: int = 1,
        *,
        when: Callable[[DBAPIConnection], bool] | None = None,
    ) -> None:
        with self._lock:
            self._target = (shard, nth)
            self._when = when
        self.reached.clear()
        self.release.clear()

    def _should_hold(self, shard: str, conn: DBAPIConnection) -> bool:
        with self._lock:
            if self._target is None or self._target[0] != shard:
                return False
            if self._when is not None:
                if not self._when(conn):
                    return False
                self._target = None
                return True
            left = self._target[1] - 1
            self._target = None if left == 0 else (shard, left)
            return left == 0

    @contextlib.contextmanager
    def connection(self, shard: str, *, readonly: bool = False) -> Iterator[DBAPIConnection]:
        if not readonly and self.on_request is not None:
            self.on_request(shard)
        with self._inner.connection(shard, readonly=readonly) as conn:
            yield conn
            if not readonly and self._should_hold(shard, conn):
                self.reached.set()
                assert self.release.wait(WAIT), "the test never released the transaction"

    def close(self) -> None:
        """Nothing: the inner provider belongs to the backend."""


def _charge(event_id: str, account: int, when: dt.datetime, **kw: object) -> Charge:
    return Charge(
        event_id=event_id,
        account=account,
        product="sms",
        quantity=1,
        amount=Decimal("0.010000"),
        currency="USD",
        time=when,
        rule="test",
        rule_version="1",
        **kw,  # type: ignore[arg-type]
    )


def _setup(backend: Backend, shards: int = 3) -> tuple[MemoryMapStore, AggregationWriter]:
    store = MemoryMapStore(ShardMap.create(list(backend.shards[:shards]), slots=SLOTS))
    writer = AggregationWriter(shard_map=store, provider=backend.provider, tables=billing_tables())
    writer.ensure_schema()
    return store, writer


def _home_and_account(writer: AggregationWriter, *, spread: bool, prefix: str) -> tuple[str, int]:
    """An event id and an account whose shards are the same (or, ``spread``, differ)."""
    shard_map = writer.shard_map
    for i in range(10_000):
        event_id = f"{prefix}{i}"
        home = shard_map.owner(shard_map.slot_for(event_id))
        account = 1 + i % 50
        if (writer.locate(account)[1] != home) == spread:
            return event_id, account
    raise AssertionError("no such event id")


def _all_rows(backend: Backend, shards: tuple[str, ...]) -> object:
    """Every standard table's rows on ``shards``, read directly."""
    return actual_rows(types.SimpleNamespace(shards=shards, rows=backend.rows))


def _ledger_ids(backend: Backend, shards: tuple[str, ...]) -> set[str]:
    return {
        str(row[0])
        for shard in shards
        for row in backend.rows(shard, "SELECT event_id FROM shardbill_ledger")
    }


def _until_blocked_or_done(backend: Backend, shard: str, thread: threading.Thread) -> None:
    """On MariaDB: return once a transaction on ``shard`` waits for a row lock, or ``thread``
    ended (a close that did not wait). SQLite serialises write transactions at BEGIN."""
    if backend.kind == "sqlite":
        return
    deadline = time.monotonic() + WAIT
    while thread.is_alive():
        waiting = backend.rows(
            shard,
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX t "
            "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
            "WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()",
        )
        # MariaDB does not always list a transaction waiting in a locking read in
        # INNODB_TRX (seen under CI: the close then timed out after 50 s, failing the
        # test); its statement in the process list is the other sign that it waits.
        locking = backend.rows(
            shard,
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() "
            "AND COMMAND = 'Query' AND INFO LIKE '%shardbill_periods%FOR UPDATE%'",
        )
        if waiting[0][0] or locking[0][0]:
            return
        assert time.monotonic() < deadline, "the close neither waited nor finished"
        time.sleep(0.01)


def test_a_write_of_a_closed_period_is_refused_with_its_reason_and_changes_nothing(
    backend: Backend,
) -> None:
    """After close, a new November event is rejected naming the period and the policy; the
    shards' rows and ledgers are as before; a December event and a redelivery still work."""
    store, writer = _setup(backend)
    before = [_charge(f"b{i}", 1 + i, IN_NOV) for i in range(20)]
    with writer:
        assert writer.write(before).ok
        status = PeriodCloser(provider=backend.provider, shard_map=store).close(
            "2026-11", drain_seconds=0
        )
        assert status.state == "closed"
        assert set(status.shards.values()) == {"closed"}
        shards = writer.shard_map.shards
        rows_before = _all_rows(backend, tuple(shards))
        ledger_before = _ledger_ids(backend, tuple(shards))

        late = writer.write([_charge("late-1", 3, IN_NOV), _charge("late-2", 4, IN_NOV)])

        assert late.rejected_events == {"late-1", "late-2"}
        for rejection in late.rejected:
            assert "2026-11" in rejection.reason
            assert "'refuse'" in rejection.reason
            assert rejection.error == "PeriodClosedError"
        assert _all_rows(backend, tuple(shards)) == rows_before
        assert _ledger_ids(backend, tuple(shards)) == ledger_before

        again = writer.write(before[:5])  # applied before the close: duplicates, not refused
        assert again.duplicate_events == {c.event_id for c in before[:5]}
        december = writer.write([_charge("dec-1", 3, IN_DEC)])
        assert december.applied_events == {"dec-1"}
    assert expected_rows([*before, _charge("dec-1", 3, IN_DEC)]) == _all_rows(
        backend, tuple(shards)
    )


def test_close_is_idempotent_and_a_crash_half_way_is_finished_by_running_again(
    backend: Backend,
) -> None:
    """A close stopped after its first shard leaves the period 'closing'; run again, it is
    'closed' everywhere; a third run changes nothing."""
    store, writer = _setup(backend)
    writer.close()
    closer = PeriodCloser(provider=backend.provider, shard_map=store)

    class CrashError(Exception):
        pass

    steps: list[tuple[str, PeriodState, bool]] = []

    def crash_after_first(shard: str, state: PeriodState, changed: bool) -> None:
        steps.append((shard, state, changed))
        raise CrashError

    with pytest.raises(CrashError):
        closer.close(NOV, drain_seconds=0, on_shard=crash_after_first)
    (status,) = closer.status("2026-11")
    assert status.state == "closing"
    assert sorted(status.shards.values()) == ["closing", "open", "open"]

    done: list[tuple[str, PeriodState, bool]] = []
    closer.close(NOV, drain_seconds=0, on_shard=lambda *a: done.append(a))
    assert closer.status("2026-11")[0].state == "closed"
    first = steps[0][0]
    assert (first, PeriodState.CLOSING, False) in done  # the crashed run's shard: a no-op
    assert sum(changed for _, _, changed in done) == 2 + 3  # the rest of phase 1, all of 2

    third: list[tuple[str, PeriodState, bool]] = []
    final = closer.close(NOV, drain_seconds=0, on_shard=lambda *a: third.append(a))
    assert final.state == "closed"
    assert len(third) == 6
    assert not any(changed for _, _, changed in third)
    assert [s.period for s in closer.status()] == ["2026-11"]
    assert closer.status("2026-10")[0].state == "open"


def test_closing_a_closed_period_again_waits_no_drain_but_a_resumed_close_does(
    backend: Backend,
) -> None:
    """Closed everywhere already: a second close is a no-op at once (it waited the whole
    drain, 90 s by default). A close resumed after a crash in its first phase still waits
    it: the crashed run never drained the writers that began before it."""
    store, writer = _setup(backend)
    writer.close()
    waits: list[float] = []
    closer = PeriodCloser(provider=backend.provider, shard_map=store, sleep=waits.append)

    class CrashError(Exception):
        pass

    def crash(shard: str, state: PeriodState, changed: bool) -> None:
        raise CrashError

    with pytest.raises(CrashError):
        closer.close(NOV, drain_seconds=5, on_shard=crash)
    closer.close(NOV, drain_seconds=5)
    assert waits == [5]
    assert closer.close(NOV, drain_seconds=5).state == "closed"
    assert waits == [5]


def test_a_write_holding_the_gate_commits_before_the_close_and_is_counted(
    two_kinds: Backend,
) -> None:
    """A writer's transaction that read the gate is paused before COMMIT; a close starts and
    must wait for it: the event is applied, then the period is closed (its redelivery after
    the close is a duplicate)."""
    backend = two_kinds
    pausing = Pausing(backend.provider)
    store, setup = _setup(backend)
    setup.close()
    writer = AggregationWriter(shard_map=store, provider=pausing, tables=billing_tables())
    event_id, account = _home_and_account(writer, spread=False, prefix="race-a")
    shard = writer.locate(account)[1]
    with writer:
        assert writer.write([_charge("warm", account, IN_DEC)]).ok  # schema checked, dialect known
        pausing.hold(shard)
        results = []
        write = threading.Thread(
            target=lambda: results.append(writer.write([_charge(event_id, account, IN_NOV)]))
        )
        write.start()
        assert pausing.reached.wait(WAIT)

        asked = threading.Event()
        closer_provider = Pausing(backend.provider)
        closer_provider.on_request = lambda s: asked.set() if s == shard else None
        statuses = []
        seen_at_close: list[bool] = []

        def look(at: str, state: PeriodState, _changed: bool) -> None:
            if at == shard and state is PeriodState.CLOSING:  # the closing step has committed
                seen_at_close.append(event_id in _ledger_ids(backend, (shard,)))

        closer = PeriodCloser(provider=closer_provider, shard_map=store)
        close = threading.Thread(
            target=lambda: statuses.append(closer.close(NOV, drain_seconds=0, on_shard=look))
        )
        close.start()
        assert asked.wait(WAIT)  # the close is at the writer's shard: it must wait there
        _until_blocked_or_done(backend, shard, close)
        pausing.release.set()
        write.join(WAIT)
        close.join(WAIT)
        assert results[0].applied_events == {event_id}
        assert statuses[0].state == "closed"
        assert seen_at_close == [True]  # the write committed before the close step did
        again = writer.write([_charge(event_id, account, IN_NOV)])
        assert again.duplicate_events == {event_id}
    shards = tuple(store.load().shards)
    assert _all_rows(backend, shards) == expected_rows(
        [_charge("warm", account, IN_DEC), _charge(event_id, account, IN_NOV)]
    )


def test_a_write_racing_a_close_that_holds_the_gate_is_refused_whole(two_kinds: Backend) -> None:
    """A close paused before COMMIT on the writer's shard (gate locked exclusively); a write
    then starts there and must wait: it sees the closing period and is refused; nothing of it
    is on any shard."""
    backend = two_kinds
    store, setup = _setup(backend)
    setup.close()
    asked = threading.Event()
    writer_side = Pausing(backend.provider)
    writer = AggregationWriter(shard_map=store, provider=writer_side, tables=billing_tables())
    event_id, account = _home_and_account(writer, spread=False, prefix="race-b")
    shard = writer.locate(account)[1]
    with writer:
        assert writer.write([_charge("warm", account, IN_DEC)]).ok  # schema checked
        closer_provider = Pausing(backend.provider)
        closer_provider.hold(shard, when=_writes_closing(NOV))
        statuses = []
        closer = PeriodCloser(provider=closer_provider, shard_map=store)
        close = threading.Thread(target=lambda: statuses.append(closer.close(NOV, drain_seconds=0)))
        close.start()
        assert closer_provider.reached.wait(WAIT)

        writer_side.on_request = lambda s: asked.set() if s == shard else None
        results = []
        write = threading.Thread(
            target=lambda: results.append(writer.write([_charge(event_id, account, IN_NOV)]))
        )
        write.start()
        assert asked.wait(WAIT)  # the write is at the closer's shard: it must wait there
        closer_provider.release.set()
        close.join(WAIT)
        write.join(WAIT)
        assert statuses[0].state == "closed"
        assert results[0].rejected_events == {event_id}, results[0]
        assert "2026-11" in results[0].rejected[0].reason
    shards = tuple(store.load().shards)
    assert event_id not in _ledger_ids(backend, shards)
    assert _all_rows(backend, shards) == expected_rows([_charge("warm", account, IN_DEC)])


def test_a_spread_event_begun_before_the_close_is_completed_during_the_drain(
    two_kinds: Backend,
) -> None:
    """An event with charges on two shards: its first round commits, then the close's first
    phase reaches every shard, then (in the drain) its second round lands: it is whole in the
    closed period, never half."""
    backend = two_kinds
    store, writer = _setup(backend)
    event_id, account = _home_and_account(writer, spread=True, prefix="spread-a")
    home = writer.shard_map.owner(writer.shard_map.slot_for(event_id))
    other = next(a for a in range(2000, 3000) if writer.locate(a)[1] == home)
    writer.close()
    first_round = threading.Event()
    go_on = threading.Event()

    def between_rounds(event: WriteEvent) -> None:
        if isinstance(event, Committed) and event.shard == home and not first_round.is_set():
            first_round.set()
            assert go_on.wait(WAIT)

    charges = [
        _charge(event_id, account, IN_NOV, part=0, parts=2),
        _charge(event_id, other, IN_NOV, part=1, parts=2),
    ]
    writer = AggregationWriter(
        shard_map=store,
        provider=backend.provider,
        tables=billing_tables(),
        observer=between_rounds,
    )
    results = []
    with writer:
        write = threading.Thread(target=lambda: results.append(writer.write(charges)))
        write.start()
        assert first_round.wait(WAIT)

        def drain(_seconds: float) -> None:  # the drain: the paused writer finishes its rounds
            go_on.set()
            write.join(WAIT)

        closer = PeriodCloser(provider=backend.provider, shard_map=store, sleep=drain)
        status = closer.close(NOV, drain_seconds=1)
        assert status.state == "closed"
        assert results[0].applied_events == {event_id}
    assert _all_rows(backend, tuple(store.load().shards)) == expected_rows(charges)


def test_a_spread_event_begun_after_the_first_phase_is_refused_on_every_shard(
    two_kinds: Backend,
) -> None:
    """Once every shard is closing, an event of the period with charges on two shards is
    refused whole at its claim: no shard holds any of it."""
    backend = two_kinds
    store, writer = _setup(backend)
    event_id, account = _home_and_account(writer, spread=True, prefix="spread-b")
    home = writer.shard_map.owner(writer.shard_map.slot_for(event_id))
    other = next(a for a in range(2000, 3000) if writer.locate(a)[1] == home)
    charges = [
        _charge(event_id, account, IN_NOV, part=0, parts=2),
        _charge(event_id, other, IN_NOV, part=1, parts=2),
    ]
    results = []
    with writer:

        def write_in_the_drain(_seconds: float) -> None:
            results.append(writer.write(charges))

        closer = PeriodCloser(provider=backend.provider, shard_map=store, sleep=write_in_the_drain)
        assert closer.close(NOV, drain_seconds=1).state == "closed"
    assert results[0].rejected_events == {event_id}
    assert "being closed" in results[0].rejected[0].reason
    shards = tuple(store.load().shards)
    assert event_id not in _ledger_ids(backend, shards)
    assert _all_rows(backend, shards) == expected_rows([])


def test_a_close_during_a_reshard_reaches_the_new_shard(two_kinds: Backend) -> None:
    """A close run while a reshard adding a shard is claimed (before its first fence) closes
    the new shard too; after the reshard, November events routed there are refused."""
    backend = two_kinds
    store, writer = _setup(backend)
    target = store.load().add_shard(backend.shards[3])
    statuses = []

    def close_at_switch(name: str) -> None:
        if name == "switch" and not statuses:
            closer = PeriodCloser(provider=backend.provider, shard_map=store)
            assert backend.shards[3] in closer.shards()
            statuses.append(closer.close(NOV, drain_seconds=0))

    with writer:
        assert writer.write([_charge(f"pre{i}", 1 + i, IN_NOV) for i in range(20)]).ok
        Resharder(
            store=store,
            provider=backend.provider,
            tables=billing_tables(),
            before_step=close_at_switch,
        ).run(target)
        assert statuses[0].shards[backend.shards[3]] == "closed"
        writer.reload_map()
        moved = next(a for a in range(1, 500) if writer.locate(a)[1] == backend.shards[3])
        late = writer.write([_charge("late-new", moved, IN_NOV)])
        assert late.rejected_events == {"late-new"}
    status = PeriodCloser(provider=backend.provider, shard_map=store).status(NOV)[0]
    assert status.state == "closed"
    assert set(status.shards) == set(backend.shards)


def test_a_shard_added_after_the_close_copies_the_closure(two_kinds: Backend) -> None:
    """Close first, then reshard onto a new shard: the new shard gets the closure before it
    takes writes, so a November event routed there is refused."""
    backend = two_kinds
    store, writer = _setup(backend)
    PeriodCloser(provider=backend.provider, shard_map=store).close(NOV, drain_seconds=0)
    target = store.load().add_shard(backend.shards[3])
    with writer:
        Resharder(store=store, provider=backend.provider, tables=billing_tables()).run(target)
        writer.reload_map()
        moved = next(a for a in range(1, 500) if writer.locate(a)[1] == backend.shards[3])
        late = writer.write([_charge("late-new", moved, IN_NOV)])
        assert late.rejected_events == {"late-new"}
        assert writer.write([_charge("dec-new", moved, IN_DEC)]).applied_events == {"dec-new"}
    rows = backend.rows(backend.shards[3], "SELECT period, state FROM shardbill_periods")
    assert ("2026-11", "closed") in rows


def test_shards_from_before_the_periods_table_are_migrated_with_their_gate(
    backend: Backend,
) -> None:
    """A shard without shardbill_periods (made before it existed) is refused by a writer
    until `migrate` adds the table and its gate row; then a close works there."""
    from shardbill.errors import SchemaError
    from shardbill.migrate import migrate

    store, writer = _setup(backend)
    writer.close()
    victim = backend.shards[0]
    backend.execute(victim, "DROP TABLE shardbill_periods")
    fresh = AggregationWriter(shard_map=store, provider=backend.provider, tables=billing_tables())
    with fresh, pytest.raises(SchemaError, match="shardbill_periods"):
        fresh.check_schema()
    steps = migrate(backend.provider, list(backend.shards[:3]), billing_tables())
    assert [(s.shard, s.table) for s in steps] == [(victim, "shardbill_periods")]
    assert backend.rows(victim, "SELECT period, state FROM shardbill_periods") == [("*", "gate")]
    closer = PeriodCloser(provider=backend.provider, shard_map=store)
    assert closer.close(NOV, drain_seconds=0).state == "closed"


def test_a_writer_stopped_between_its_rounds_past_the_drain_is_told_the_rest_is_refused(
    two_kinds: Backend,
) -> None:
    """The limit of the drain, shown: a spread event's first round commits, the writer stops
    past the whole close, then its second round is refused. The event is reported failed with
    PeriodClosedError saying part of it was applied (never 'rejected', which would mean
    nothing was); only the first round's part is on the shards."""
    from shardbill.errors import PeriodClosedError

    backend = two_kinds
    store, writer = _setup(backend)
    event_id, account = _home_and_account(writer, spread=True, prefix="stalled")
    home = writer.shard_map.owner(writer.shard_map.slot_for(event_id))
    other = next(a for a in range(2000, 3000) if writer.locate(a)[1] == home)
    writer.close()
    first_round = threading.Event()
    go_on = threading.Event()

    def between_rounds(event: WriteEvent) -> None:
        if isinstance(event, Committed) and event.shard == home and not first_round.is_set():
            first_round.set()
            assert go_on.wait(WAIT)

    charges = [
        _charge(event_id, account, IN_NOV, part=0, parts=2),
        _charge(event_id, other, IN_NOV, part=1, parts=2),
    ]
    writer = AggregationWriter(
        shard_map=store, provider=backend.provider, tables=billing_tables(), observer=between_rounds
    )
    results = []
    with writer:
        write = threading.Thread(target=lambda: results.append(writer.write(charges)))
        write.start()
        assert first_round.wait(WAIT)
        closer = PeriodCloser(provider=backend.provider, shard_map=store)
        assert closer.close(NOV, drain_seconds=0).state == "closed"
        go_on.set()
        write.join(WAIT)
    (result,) = results
    assert result.failed_events == {event_id}
    assert not result.rejected_events
    error = result.failures[event_id]
    assert isinstance(error, PeriodClosedError)
    assert "2026-11" in str(error)
    assert "Part of this event was applied already" in str(error)
    assert _all_rows(backend, tuple(store.load().shards)) == expected_rows([charges[1]])


@pytest.mark.mysql
def test_a_close_step_outlasts_two_lock_waits_of_the_server(mysql_server: ServerAddress) -> None:
    """A close's step waits for the gate row's lock behind the writers; a lock wait ends in
    a retryable error after ``innodb_lock_wait_timeout`` (the server's own setting). The
    closer's default budget covers two of those waits, so one slow writer does not fail a
    close that a retry would finish."""
    conn = mysql_server.connect(connect_timeout=5)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT @@GLOBAL.innodb_lock_wait_timeout")
            (wait,) = cursor.fetchone()
    finally:
        conn.close()
    closer = PeriodCloser(provider=_NoProvider(), shard_map=ShardMap.create(["s0"], slots=4))
    assert closer._retry.budget_seconds >= 2 * int(wait)
    assert closer._retry.budget_seconds == CLOSE_RETRY_BUDGET_SECONDS


class _NoProvider:
    """A provider the test never asks for a connection."""

    def connection(self, shard: str, *, readonly: bool = False) -> Any:
        raise AssertionError("no connection expected")

    def close(self) -> None:
        pass


def test_a_close_during_a_reshard_stuck_before_its_new_shard_had_tables(
    two_kinds: Backend,
) -> None:
    """A resharder adding s3 died after taking the claim and before s3 had any table: a
    close reaches s3 too (the claim names it) and must not fail on its missing tables; once
    the reshard is resumed, nothing of the closed period is accepted anywhere."""
    backend = two_kinds
    store, writer = _setup(backend)
    with writer:
        assert writer.write([_charge(f"before-{a}", a, IN_NOV) for a in range(1, 20)]).ok
    target = store.load().add_shard(backend.shards[3])
    with pytest.raises(DiedError):
        Resharder(
            store=store,
            provider=DiesOn(backend.provider, backend.shards[3]),
            tables=billing_tables(),
        ).run(target)
    closer = PeriodCloser(provider=backend.provider, shard_map=store)
    status = closer.close(NOV, drain_seconds=0, early=True)
    assert status.state == "closed"
    assert backend.shards[3] in status.shards
    Resharder(store=store, provider=backend.provider, tables=billing_tables()).run()
    late = [_charge(f"late-{a}", a, IN_NOV) for a in range(1, 40)]
    with AggregationWriter(
        shard_map=store, provider=backend.provider, tables=billing_tables()
    ) as after:
        result = after.write(late)
    assert result.rejected_events == {c.event_id for c in late}
    assert set(closer.status(NOV)[0].shards.values()) == {"closed"}
