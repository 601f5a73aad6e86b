"""The ``adjust`` late-event policy on SQLite and MariaDB (issue 20).

A late event (its period closing or closed) is booked into the first open
period, recorded in ``shardbill_adjustments``, and reported as adjusted; a
redelivery is a duplicate whatever happened since (the booking period closed
too, a reshard); an event spread over shards is booked in one period; the
audit is exact with the adjustments; ``refuse`` stays the default.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import types
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from shardbill import Pipeline, ShardMap
from shardbill.audit import audit
from shardbill.errors import CannotConnectError, ConfigurationError
from shardbill.periods import Period, PeriodCloser, PeriodState, read_adjustments
from shardbill.periods.store import advance
from shardbill.providers import ConnectionProvider
from shardbill.providers.base import DBAPIConnection
from shardbill.resharding import MemoryMapStore, Resharder
from shardbill.retry import RetryPolicy
from shardbill.rules import Charge, UsageEvent, comms
from shardbill.tables import SystemTables
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter, WriterSettings
from tests.support.backends import KINDS, Backend, make_backend
from tests.support.oracle import actual_rows, expected_rows

NOV = Period.parse("2026-11")
DEC = Period.parse("2026-12")
IN_NOV = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
IN_DEC = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
DEC_FIRST = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
JAN_FIRST = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 12, 5, 9, tzinfo=dt.UTC).timestamp()
SLOTS = 64
ADJUST = WriterSettings(late_events="adjust")


@pytest.fixture(params=KINDS[:2])
def two_kinds(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Four shards on SQLite or on MariaDB (PyMySQL)."""
    yield from make_backend(request.param, 4, tmp_path, request)


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


def _setup(
    backend: Backend,
    shards: int = 3,
    *,
    provider: ConnectionProvider | None = None,
    settings: WriterSettings = ADJUST,
) -> tuple[MemoryMapStore, AggregationWriter]:
    store = MemoryMapStore(ShardMap.create(list(backend.shards[:shards]), slots=SLOTS))
    writer = AggregationWriter(
        shard_map=store,
        provider=provider or backend.provider,
        tables=billing_tables(),
        settings=settings,
        clock=lambda: NOW,
    )
    writer.ensure_schema()
    return store, writer


def _rows(backend: Backend, shards: tuple[str, ...]) -> object:
    return actual_rows(types.SimpleNamespace(shards=shards, rows=backend.rows))


def _adjustments(backend: Backend, shards: tuple[str, ...]) -> set[tuple[str, str, str, str]]:
    """(shard, event id, the period it belongs to, the period booked in), every row."""
    return {
        (shard, str(e), str(belongs), str(booked))
        for shard in shards
        for e, belongs, booked in backend.rows(
            shard, "SELECT event_id, belongs_to, booked_in FROM shardbill_adjustments"
        )
    }


def _close(store: MemoryMapStore, backend: Backend, period: Period) -> None:
    closer = PeriodCloser(provider=backend.provider, shard_map=store, clock=lambda: NOW)
    assert closer.close(period, drain_seconds=0, early=True).state == "closed"


def _closing_on(backend: Backend, shard: str, period: Period) -> None:
    """The first phase of a close, on one shard only (a close that has reached it first)."""
    with backend.provider.connection(shard) as conn:
        from shardbill.dialects.detect import dialect_for

        cursor = conn.cursor()
        try:
            advance(
                cursor,
                dialect_for(conn),
                SystemTables().periods,
                shard=shard,
                period=str(period),
                state=PeriodState.CLOSING,
                closed_at=int(NOW),
                closed_by="test",
                reason="",
            )
        finally:
            cursor.close()


def _spread(writer: AggregationWriter, prefix: str) -> tuple[str, int, int, str]:
    """An event id, an account on another shard than its home, an account on its home, home."""
    shard_map = writer.shard_map
    for i in range(10_000):
        event_id = f"{prefix}{i}"
        home = shard_map.owner(shard_map.slot_for(event_id))
        account = 1 + i % 50
        if writer.locate(account)[1] != home:
            near = next(a for a in range(2000, 3000) if writer.locate(a)[1] == home)
            return event_id, account, near, home
    raise AssertionError("no such event id")


def test_refuse_is_still_the_default(backend: Backend) -> None:
    """Without late_events, a late event is rejected naming the 'refuse' policy; no adjustment."""
    assert WriterSettings().late_events == "refuse"
    store, writer = _setup(backend, settings=WriterSettings())
    with writer:
        assert writer.write([_charge("early", 1, IN_NOV)]).ok
        _close(store, backend, NOV)
        late = writer.write([_charge("late", 2, IN_NOV)])
    assert late.rejected_events == {"late"}
    assert "'refuse'" in late.rejection("late").reason
    assert not late.adjusted
    shards = tuple(store.load().shards)
    assert _adjustments(backend, shards) == set()
    assert _rows(backend, shards) == expected_rows([_charge("early", 1, IN_NOV)])


def test_a_late_event_is_booked_into_the_first_open_period_and_stays_a_duplicate(
    backend: Backend,
) -> None:
    """Adjusted into December (its rows keyed on December 1st), recorded and reported; its
    redelivery is a duplicate, also once December is closed too (never booked into January)."""
    store, writer = _setup(backend)
    early = [_charge(f"b{i}", 1 + i, IN_NOV) for i in range(10)]
    late = [_charge("late-1", 3, IN_NOV), _charge("late-2", 4, IN_NOV)]
    shards = tuple(store.load().shards)
    with writer:
        assert writer.write(early).ok
        _close(store, backend, NOV)

        result = writer.write([*late, _charge("dec-1", 5, IN_DEC)])

        assert result.ok
        assert result.applied_events == {"late-1", "late-2", "dec-1"}
        assert result.adjusted == {"late-1": "2026-12", "late-2": "2026-12"}
        booked = [_charge(c.event_id, c.account, DEC_FIRST) for c in late]
        want = expected_rows([*early, *booked, _charge("dec-1", 5, IN_DEC)])
        assert _rows(backend, shards) == want
        assert {(e, b, k) for _, e, b, k in _adjustments(backend, shards)} == {
            ("late-1", "2026-11", "2026-12"),
            ("late-2", "2026-11", "2026-12"),
        }

        again = writer.write(late)
        assert again.duplicate_events == {"late-1", "late-2"}
        assert not again.adjusted
        _close(store, backend, DEC)
        after = writer.write(late)
        assert after.duplicate_events == {"late-1", "late-2"}
        assert _rows(backend, shards) == want

        # A new late event now goes to January: the first period open on the shard.
        january = writer.write([_charge("late-3", 6, IN_NOV)])
        assert january.adjusted == {"late-3": "2027-01"}
        assert _rows(backend, shards) == expected_rows(
            [*early, *booked, _charge("dec-1", 5, IN_DEC), _charge("late-3", 6, JAN_FIRST)]
        )


def test_a_changed_redelivery_of_an_adjusted_event_is_a_conflict(backend: Backend) -> None:
    """The ledger keeps the delivered content's fingerprint: other content under the id
    conflicts, and changes nothing."""
    store, writer = _setup(backend)
    shards = tuple(store.load().shards)
    with writer:
        _close(store, backend, NOV)
        assert writer.write([_charge("late", 3, IN_NOV)]).adjusted == {"late": "2026-12"}
        before = _rows(backend, shards)
        changed = writer.write([_charge("late", 4, IN_NOV)])
    assert changed.conflict_events == {"late"}
    assert _rows(backend, shards) == before


def test_a_spread_late_event_is_booked_in_one_period_on_every_shard(two_kinds: Backend) -> None:
    """Closing reached only the event's home shard: its claim is booked into December there,
    and its part on a shard still open for November follows it into December."""
    backend = two_kinds
    store, writer = _setup(backend)
    event_id, account, near, home = _spread(writer, "spread")
    other = writer.locate(account)[1]
    _closing_on(backend, home, NOV)
    charges = [
        _charge(event_id, account, IN_NOV, part=0, parts=2),
        _charge(event_id, near, IN_NOV, part=1, parts=2),
    ]
    shards = tuple(store.load().shards)
    with writer:
        result = writer.write(charges)
        assert result.applied_events == {event_id}
        assert result.adjusted == {event_id: "2026-12"}
        booked = [
            _charge(event_id, c.account, DEC_FIRST, part=c.part, parts=c.parts) for c in charges
        ]
        assert _rows(backend, shards) == expected_rows(booked)
        recorded = _adjustments(backend, shards)
        assert {s for s, *_ in recorded} == {home, other}
        assert {(e, b, k) for _, e, b, k in recorded} == {(event_id, "2026-11", "2026-12")}
        _close(store, backend, NOV)
        assert writer.write(charges).duplicate_events == {event_id}
    assert _rows(backend, shards) == expected_rows(booked)


class _Down:
    """A provider whose read-write connections to the shards in ``down`` are refused."""

    def __init__(self, inner: ConnectionProvider) -> None:
        self._inner = inner
        self.down: set[str] = set()

    @contextlib.contextmanager
    def connection(self, shard: str, *, readonly: bool = False) -> Iterator[DBAPIConnection]:
        if shard in self.down and not readonly:
            raise CannotConnectError(f"shard {shard!r} is down (test)")
        with self._inner.connection(shard, readonly=readonly) as conn:
            yield conn

    def close(self) -> None:
        """Nothing: the inner provider belongs to the backend."""


def test_a_redelivery_completing_an_adjusted_spread_event_books_the_rest_alike(
    two_kinds: Backend,
) -> None:
    """The second round's shard is down: the claim and home part are booked into December, the
    event fails. November then closes everywhere; the redelivery reads the claim's booking
    from shardbill_adjustments and books the rest into December too (not refused, not into
    November)."""
    backend = two_kinds
    down = _Down(backend.provider)
    store, writer = _setup(
        backend,
        provider=down,
        settings=WriterSettings(late_events="adjust", retry=RetryPolicy(max_attempts=1)),
    )
    event_id, account, near, home = _spread(writer, "crash")
    other = writer.locate(account)[1]
    charges = [
        _charge(event_id, account, IN_NOV, part=0, parts=2),
        _charge(event_id, near, IN_NOV, part=1, parts=2),
    ]
    shards = tuple(store.load().shards)
    _closing_on(backend, home, NOV)
    with writer:
        down.down = {other}
        first = writer.write(charges)
        assert first.failed_events == {event_id}
        assert _rows(backend, shards) == expected_rows(
            [_charge(event_id, near, DEC_FIRST, part=1, parts=2)]
        )
        down.down = set()
        _close(store, backend, NOV)
        second = writer.write(charges)
    assert second.applied_events == {event_id}
    assert second.adjusted == {event_id: "2026-12"}
    booked = [_charge(event_id, c.account, DEC_FIRST, part=c.part, parts=c.parts) for c in charges]
    assert _rows(backend, shards) == expected_rows(booked)


def test_an_adjusted_event_stays_a_duplicate_across_a_reshard(two_kinds: Backend) -> None:
    """Its ledger rows move with their slots: after a reshard the redelivery is a duplicate."""
    backend = two_kinds
    store, writer = _setup(backend)
    late = [_charge(f"late-{a}", a, IN_NOV) for a in range(1, 30)]
    with writer:
        _close(store, backend, NOV)
        assert set(writer.write(late).adjusted.values()) == {"2026-12"}
        target = store.load().add_shard(backend.shards[3])
        Resharder(store=store, provider=backend.provider, tables=billing_tables()).run(target)
        writer.reload_map()
        again = writer.write(late)
    assert again.duplicate_events == {c.event_id for c in late}
    shards = tuple(backend.shards)
    booked = [_charge(c.event_id, c.account, DEC_FIRST) for c in late]
    assert _rows(backend, shards) == expected_rows(booked)
    assert {e for _, e, _, _ in _adjustments(backend, shards)} == {c.event_id for c in late}


def test_a_reshard_that_removes_a_shard_moves_its_bookings_with_their_slots(
    two_kinds: Backend,
) -> None:
    """The bookings of a shard the reshard removes go with their slots: every booking is on
    the shard that owns its slot afterwards, none is left behind, read_adjustments over the
    new map finds them all, and a redelivery stays a duplicate in its booking period."""
    backend = two_kinds
    store, writer = _setup(backend)
    late = [_charge(f"late-{a}", a, IN_NOV) for a in range(1, 40)]
    removed = backend.shards[2]
    with writer:
        _close(store, backend, NOV)
        assert set(writer.write(late).adjusted.values()) == {"2026-12"}
        before = _adjustments(backend, tuple(backend.shards[:3]))
        assert any(shard == removed for shard, *_ in before), "the test needs bookings there"
        target = store.load().remove_shard(removed)
        Resharder(store=store, provider=backend.provider, tables=billing_tables()).run(target)
        writer.reload_map()
        again = writer.write(late)
    assert again.duplicate_events == {c.event_id for c in late}
    after = _adjustments(backend, tuple(backend.shards[:3]))
    assert not [row for row in after if row[0] == removed]
    assert {row[1:] for row in after} == {row[1:] for row in before}
    slots = {
        str(e): (int(slot), shard)
        for shard in backend.shards[:3]
        for e, slot in backend.rows(shard, "SELECT event_id, sb_slot FROM shardbill_adjustments")
    }
    assert all(target.owner(slot) == shard for slot, shard in slots.values())
    found = read_adjustments(backend.provider, sorted(target.shards))
    assert found == {c.event_id: "2026-12" for c in late}


def _usage(event_id: str, account: int, when: dt.datetime) -> UsageEvent:
    return UsageEvent(
        event_id=event_id,
        account=account,
        product="sms",
        quantity=1,
        time=when,
        dimensions={"country": "GB", "characters": 120},
    )


def test_the_audit_is_exact_with_the_adjustments_and_a_correction_of_one_is_refused(
    backend: Backend,
) -> None:
    """shardbill audit expects an adjusted event in its booking period (from the shards'
    adjustments): exact; without them it would see the rows in the wrong month. A cancel of
    the adjusted event is refused with the reason: its period is closed."""
    from shardbill.corrections import Corrector

    store, writer = _setup(backend)
    engine = comms.engine()
    pipeline = Pipeline(engine=engine, writer=writer)
    events = [_usage(f"u{i}", 100 + i, IN_NOV) for i in range(5)]
    late = [_usage(f"late{i}", 200 + i, IN_NOV) for i in range(3)]
    shards = store.load()
    with writer:
        assert pipeline.process(events).ok
        _close(store, backend, NOV)
        result = pipeline.process(late)
        assert result.ok
        assert result.write.adjusted == {e.event_id: "2026-12" for e in late}
        adjustments = read_adjustments(backend.provider, sorted(shards.shards))
        assert adjustments == {e.event_id: "2026-12" for e in late}
        kw = {"engine": engine, "tables": billing_tables(), "provider": backend.provider}
        report = audit([*events, *late], shard_map=shards, adjustments=adjustments, **kw)
        assert report.exact, report.differences[:5]
        assert not audit([*events, *late], shard_map=shards, **kw).exact

        corrector = Corrector(
            writer=writer, engine=engine, provider=backend.provider, map_store=store
        )
        cancel = corrector.cancel(late[0], correction_id="fix", reason="test")
        assert cancel.state == "refused"
        assert "2026-11" in cancel.reason
        assert "'adjust' booked it into period 2026-12" in cancel.reason
    assert audit([*events, *late], shard_map=shards, adjustments=adjustments, **kw).exact


def test_bad_late_event_settings_name_the_key_the_value_and_the_fix() -> None:
    with pytest.raises(ConfigurationError, match=r"'late_events' must be 'refuse' or 'adjust'"):
        WriterSettings(late_events="book")


def test_a_table_the_adjust_policy_cannot_move_is_refused_at_construction(
    tmp_path: Path,
) -> None:
    """A custom key projection may read the time in ways adjust cannot redo: refused, named."""
    import attrs

    from shardbill.providers import PooledProvider
    from shardbill.tables.aggregates import AggregateTable, Count, KeyColumn, Measure, VarChar

    @attrs.frozen
    class Hour:
        name: str = "hour"

        def __call__(self, charge: Charge) -> str:
            return charge.time.strftime("%H")

    table = AggregateTable(
        name="by_hour",
        keys=[
            KeyColumn(
                name="account_id",
                type=billing_tables()[0].keys[0].type,
                projection=billing_tables()[0].keys[0].projection,
            ),
            KeyColumn(name="hour", type=VarChar(2), projection=Hour()),
        ],
        measures=[Measure(name="events", value=Count())],
    )
    provider = PooledProvider.sqlite_directory(str(tmp_path), ["s0"])
    with pytest.raises(ConfigurationError, match=r"by_hour.*'hour'.*late_events 'refuse'"):
        AggregationWriter(
            shard_map=ShardMap.create(["s0"]), provider=provider, tables=[table], settings=ADJUST
        )
    provider.close()


def test_an_existing_install_gets_the_adjustments_table_from_migrate(backend: Backend) -> None:
    """A shard without shardbill_adjustments (installed before adjust existed) is refused by
    the schema check, naming the table; migrate creates it, and a late event is then booked."""
    from shardbill.errors import SchemaError
    from shardbill.migrate import migrate

    store, writer = _setup(backend)
    backend.execute(backend.shards[0], "DROP TABLE shardbill_adjustments")
    with pytest.raises(SchemaError, match="shardbill_adjustments"):
        writer.check_schema()
    with pytest.raises(SchemaError, match="shardbill migrate"):
        read_adjustments(backend.provider, backend.shards[:3])
    steps = migrate(backend.provider, list(backend.shards[:3]), billing_tables())
    assert [(s.shard, s.table) for s in steps] == [(backend.shards[0], "shardbill_adjustments")]
    writer.check_schema()
    with writer:
        _close(store, backend, NOV)
        late = [_charge(f"late-{a}", a, IN_NOV) for a in range(1, 10)]
        assert set(writer.write(late).adjusted.values()) == {"2026-12"}
    assert set(read_adjustments(backend.provider, backend.shards[:3])) == {c.event_id for c in late}


def _closed_on(backend: Backend, shard: str, period: Period) -> None:
    _closing_on(backend, shard, period)
    with backend.provider.connection(shard) as conn:
        from shardbill.dialects.detect import dialect_for

        cursor = conn.cursor()
        try:
            advance(
                cursor,
                dialect_for(conn),
                SystemTables().periods,
                shard=shard,
                period=str(period),
                state=PeriodState.CLOSED,
                closed_at=int(NOW),
                closed_by="test",
                reason="",
            )
        finally:
            cursor.close()


def test_a_released_claim_takes_its_adjustment_record_with_it(two_kinds: Backend) -> None:
    """The claim is booked into December on its home shard, but the event's money is on a shard
    that has December closed too: the event is rejected whole, its claim released, and its
    adjustment record goes with the claim, so a redelivery is judged afresh (rejected again,
    not failed on a left-over record)."""
    backend = two_kinds
    store, writer = _setup(backend)
    event_id, account, _, home = _spread(writer, "released")
    other = writer.locate(account)[1]
    _closed_on(backend, home, NOV)
    _closed_on(backend, other, NOV)
    _closed_on(backend, other, DEC)
    shards = tuple(store.load().shards)
    with writer:
        first = writer.write([_charge(event_id, account, IN_NOV)])
        assert first.rejected_events == {event_id}
        assert "booked into period 2026-12" in first.rejection(event_id).reason
        assert _adjustments(backend, shards) == set()
        again = writer.write([_charge(event_id, account, IN_NOV)])
    assert again.rejected_events == {event_id}
    assert _rows(backend, shards) == expected_rows([])
