"""Corrections (cancel, amend) exactly once, on SQLite and MariaDB.

Every expectation is recomputed by the test's own oracle
(:mod:`tests.support.oracle`) from the events' *current* contents, not by
shardbill's aggregation code, and the rows are read from the shards
directly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from shardbill import ShardMap
from shardbill.audit import audit
from shardbill.corrections import Corrector, EventFilter, RecordState
from shardbill.dialects.detect import dialect_for
from shardbill.errors import SchemaError
from shardbill.migrate import migrate
from shardbill.periods import PeriodCloser
from shardbill.periods.store import read_adjustments
from shardbill.pipeline import Pipeline
from shardbill.repair import repair
from shardbill.resharding import MemoryMapStore, Resharder
from shardbill.rules import UsageEvent, comms
from shardbill.tables.aggregates import Measure, Quantity
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter
from tests.support.backends import KINDS, Backend, make_backend
from tests.support.oracle import actual_rows, expected_rows
from tests.support.outage import DiedError, DiesOn

IN_NOV = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
SLOTS = 64


@pytest.fixture(params=KINDS[:2])
def shards(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Four shards on SQLite or on MariaDB (PyMySQL)."""
    yield from make_backend(request.param, 4, tmp_path, request)


class Deployment:
    """A writer, a pipeline and a corrector over three of the backend's shards."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.used = list(backend.shards[:3])  # the shards with tables (a reshard adds one)
        self.store = MemoryMapStore(ShardMap.create(list(backend.shards[:3]), slots=SLOTS))
        self.engine = comms.engine()
        self.writer = AggregationWriter(
            shard_map=self.store, provider=backend.provider, tables=billing_tables()
        )
        self.writer.ensure_schema()
        self.pipeline = Pipeline(engine=self.engine, writer=self.writer)
        self.corrector = Corrector(
            writer=self.writer, engine=self.engine, provider=backend.provider, clock=lambda: 1e9
        )

    def rows(self) -> Any:
        return actual_rows(types.SimpleNamespace(shards=self.used, rows=self.backend.rows))


@pytest.fixture
def deploy(shards: Backend) -> Iterator[Deployment]:
    deployment = Deployment(shards)
    with deployment.writer:
        yield deployment


def event(event_id: str, account: int = 7, *, quantity: int = 1, chars: int = 100) -> UsageEvent:
    return UsageEvent(
        event_id=event_id,
        account=account,
        time=IN_NOV,
        product="sms",
        quantity=quantity,
        dimensions={"country": "GB", "characters": chars},
    )


def oracle(
    engine: Any, current: Iterable[UsageEvent], ever: Iterable[UsageEvent]
) -> dict[str, dict[tuple[Any, ...], list[int]]]:
    """The rows the shards must hold: sums of the current contents; every row any content
    ever made (a cancelled row stays, at zero); a max is the max over every content ever
    applied (a correction cannot take a max back)."""
    now = expected_rows(c for e in current for c in engine.price(e).charges)
    seen = expected_rows(c for e in ever for c in engine.price(e).charges)
    out: dict[str, dict[tuple[Any, ...], list[int]]] = {}
    for table, rows in seen.items():
        out[table] = {}
        for key, values in rows.items():
            sums = now[table].get(key, [0] * len(values))
            if table == "account_balance":
                out[table][key] = [sums[0], sums[1], values[2]]
            else:
                out[table][key] = list(sums)
    return out


def _audit_exact(deploy: Deployment, events: list[UsageEvent]) -> None:
    report = audit(
        events,
        engine=deploy.engine,
        tables=billing_tables(),
        provider=deploy.backend.provider,
        shard_map=deploy.writer.shard_map,
        corrections=deploy.corrector.records(),
    )
    assert report.exact, [d.describe() for d in report.differences[:5]]


def test_cancel_reverses_the_exact_charges_once_and_a_repeat_is_a_duplicate(
    deploy: Deployment,
) -> None:
    """A cancel takes the event's sums back to what the other events make; the same
    correction again is a duplicate and changes nothing; the audit with the correction is
    exact; the record says who, why and when."""
    events = [event("a", 7), event("b", 7, chars=300), event("c", 9)]
    assert deploy.pipeline.process(events).ok
    done = deploy.corrector.cancel(events[1], correction_id="fix-1", reason="test", by="ana")
    assert (done.state, done.revision, done.ledger_id) == ("applied", 1, "b~r1")
    after = deploy.rows()
    assert after == oracle(deploy.engine, [events[0], events[2]], events)
    again = deploy.corrector.cancel(events[1], correction_id="fix-1", reason="test", by="ana")
    assert again.state == "duplicate"
    assert deploy.rows() == after
    (record,) = deploy.corrector.records()
    assert (record.correction_id, record.corrected_by, record.reason, record.corrected_at) == (
        "fix-1",
        "ana",
        "test",
        1_000_000_000,
    )
    assert record.state is RecordState.APPLIED
    assert record.before == events[1]
    _audit_exact(deploy, events)


def test_redelivery_of_a_cancelled_event_is_a_duplicate(deploy: Deployment) -> None:
    """After a cancel, the original delivered again is recognised by the ledger: nothing is
    re-applied."""
    original = event("r", 11)
    assert deploy.pipeline.process([original]).ok
    assert deploy.corrector.cancel(original, correction_id="c", reason="dup").state == "applied"
    before = deploy.rows()
    again = deploy.pipeline.process([original])
    assert again.write.duplicate_events == {"r"}
    assert deploy.rows() == before


def test_a_second_different_correction_of_the_same_revision_is_refused(
    deploy: Deployment,
) -> None:
    """Once revision 0 is cancelled, another correction (an amend, another id) is refused
    with the reason, and the aggregates do not move."""
    original = event("x", 5)
    assert deploy.pipeline.process([original]).ok
    assert deploy.corrector.cancel(original, correction_id="k1", reason="r").ok
    before = deploy.rows()
    other = deploy.corrector.amend(
        event("x", 5, chars=500), correction_id="k2", reason="r", original=original
    )
    assert other.state == "refused"
    assert "cancelled by correction 'k1'" in other.reason
    assert deploy.rows() == before
    same_id = deploy.corrector.amend(
        event("x", 5, chars=500), correction_id="k1", reason="r", original=original
    )
    assert same_id.state == "refused"
    assert "correction id 'k1' already names a cancel" in same_id.reason


def _elsewhere(deploy: Deployment, event_id: str) -> Any:
    """The writer's ``locate``, but ``event_id``'s home is a slot of another shard: its
    records land apart from the first ones (as an older version, which did not move records
    with their slot, could leave them across a reshard)."""
    real = deploy.writer.locate
    home = real(event_id)[1]
    other = next(s for s in deploy.backend.shards[:3] if s != home)
    slot = deploy.store.load().slots_of(other)[0]
    return lambda key: (slot, other) if key == event_id else real(key)


def test_a_race_of_two_corrections_of_one_revision_lets_one_in(deploy: Deployment) -> None:
    """Two corrections of revision 0 whose records land on different shards (as an older
    version could leave them across a reshard): the ledger id (event, revision) lets only
    the first apply; the second is refused and its record removed."""
    original = event("y", 5)
    assert deploy.pipeline.process([original]).ok
    first = deploy.corrector.amend(
        event("y", 5, chars=300), correction_id="k1", reason="r", original=original
    )
    assert first.state == "applied"
    before = deploy.rows()
    # The second corrector has not seen k1's record: it reads an empty history.
    late = Corrector(writer=deploy.writer, engine=deploy.engine, provider=deploy.backend.provider)
    late.records = lambda event_ids=None: []  # type: ignore[method-assign]
    deploy.writer.locate = _elsewhere(deploy, "y")  # type: ignore[method-assign]
    second = late.cancel(original, correction_id="k2", reason="r")
    assert second.state == "refused"
    assert "corrected differently already" in second.reason
    assert deploy.rows() == before
    assert [r.correction_id for r in deploy.corrector.records()] == ["k1"]


def test_an_identical_correction_racing_the_first_is_refused_and_leaves_no_record(
    deploy: Deployment,
) -> None:
    """Two identical cancels of revision 0 under different ids, the second not seeing the
    first's record (on another shard): the ledger finds its deltas in already, so it is
    refused and its own record removed; the money moved once."""
    original = event("v", 5)
    assert deploy.pipeline.process([original]).ok
    assert deploy.corrector.cancel(original, correction_id="k1", reason="r").state == "applied"
    before = deploy.rows()
    late = Corrector(writer=deploy.writer, engine=deploy.engine, provider=deploy.backend.provider)
    late.records = lambda event_ids=None: []  # type: ignore[method-assign]
    deploy.writer.locate = _elsewhere(deploy, "v")  # type: ignore[method-assign]
    second = late.cancel(original, correction_id="k2", reason="r")
    assert second.state == "refused"
    assert "an identical correction of revision 0 was applied" in second.reason
    assert deploy.rows() == before
    assert [r.correction_id for r in deploy.corrector.records()] == ["k1"]


def test_amend_applies_the_difference_exactly_and_chains(deploy: Deployment) -> None:
    """An amend (more characters: more segments) moves the sums to the new content's; a
    second amend starts from the first's result; a cancel after both takes the event out;
    each step is exact against the oracle and the audit."""
    others = [event("o1", 3), event("o2", 4)]
    v0 = event("m", 3, chars=100)
    assert deploy.pipeline.process([*others, v0]).ok
    v1 = event("m", 3, chars=400)
    r1 = deploy.corrector.amend(v1, correction_id="a1", reason="resend", original=v0)
    assert (r1.state, r1.revision) == ("applied", 1)
    assert deploy.rows() == oracle(deploy.engine, [*others, v1], [*others, v0, v1])
    v2 = event("m", 3, quantity=2, chars=400)
    r2 = deploy.corrector.amend(v2, correction_id="a2", reason="quantity")
    assert (r2.state, r2.revision) == ("applied", 2)
    assert deploy.rows() == oracle(deploy.engine, [*others, v2], [*others, v0, v1, v2])
    _audit_exact(deploy, [*others, v0])
    r3 = deploy.corrector.cancel(v0, correction_id="c3", reason="gone")
    assert (r3.state, r3.revision) == ("applied", 3)
    assert deploy.rows() == oracle(deploy.engine, others, [*others, v0, v1, v2])
    _audit_exact(deploy, [*others, v0])


def test_a_correction_of_an_event_never_applied_is_refused(deploy: Deployment) -> None:
    """No ledger row for the event: refused, naming the event and the fix; nothing
    recorded."""
    result = deploy.corrector.cancel(event("ghost"), correction_id="g", reason="r")
    assert result.state == "refused"
    assert "'ghost' was never applied" in result.reason
    assert "ingest it instead" in result.reason
    assert deploy.corrector.records() == []


def test_a_correction_with_other_content_than_applied_is_refused(deploy: Deployment) -> None:
    """The content given must be what the ledger holds: other content is refused."""
    assert deploy.pipeline.process([event("z", 8)]).ok
    result = deploy.corrector.cancel(event("z", 8, chars=900), correction_id="g", reason="r")
    assert result.state == "refused"
    assert "the ledger holds other content" in result.reason
    assert deploy.corrector.records() == []


def test_a_correction_of_an_event_applied_before_a_migration_is_refused(
    deploy: Deployment,
) -> None:
    """Applied before a measure was added: its rows hold nothing in the new measure, so a
    cancel by the current declaration would take what was never added. Refused, naming the
    migration and what to do instead; the aggregates and the corrections table do not
    change (not the misleading "other content" refusal)."""
    original = event("pre", 5)
    assert deploy.pipeline.process([original]).ok
    units = Measure(name="units", value=Quantity(scale=0))
    grown = [
        attrs.evolve(t, measures=(*t.measures, units)) if t.name == "usage_daily" else t
        for t in billing_tables()
    ]
    migrate(deploy.backend.provider, deploy.used, grown)
    before = deploy.rows()
    with AggregationWriter(
        shard_map=deploy.store, provider=deploy.backend.provider, tables=grown
    ) as writer:
        corrector = Corrector(writer=writer, engine=deploy.engine, provider=deploy.backend.provider)
        result = corrector.cancel(original, correction_id="pm", reason="r")
        assert result.state == "refused"
        assert "applied under an older table declaration" in result.reason
        assert "shardbill migrate" in result.reason
        assert "the ledger holds other content" not in result.reason
        assert corrector.records() == []
        changed = corrector.amend(
            event("pre", 5, quantity=3), correction_id="pn", reason="r", original=original
        )
        assert changed.state == "refused"
        assert "applied under an older table declaration" in changed.reason
    assert deploy.rows() == before


def test_a_correction_of_a_closed_period_is_refused(deploy: Deployment) -> None:
    """After November is closed, a cancel of a November event is refused with the period
    and the reason; the aggregates and the corrections table do not change."""
    original = event("n", 6)
    assert deploy.pipeline.process([original]).ok
    PeriodCloser(provider=deploy.backend.provider, shard_map=deploy.store).close(
        "2026-11", drain_seconds=0, early=True
    )
    before = deploy.rows()
    result = deploy.corrector.cancel(original, correction_id="p", reason="r")
    assert result.state == "refused"
    assert "period 2026-11, which is closed" in result.reason
    assert deploy.rows() == before
    assert deploy.corrector.records() == []


def test_bad_input_names_the_field(deploy: Deployment) -> None:
    """An empty correction id or reason is refused before anything is read, naming it."""
    with pytest.raises(ValueError, match="'correction_id'"):
        deploy.corrector.cancel(event("q"), correction_id="", reason="r")
    with pytest.raises(ValueError, match="'reason'"):
        deploy.corrector.cancel(event("q"), correction_id="k", reason=" ")


def test_corrections_during_and_after_a_reshard_apply_once(deploy: Deployment) -> None:
    """A shard is added while corrections run: a cancel in the middle of the move (the
    ledger of moved slots half copied), an amend after it; every correction applies once,
    redeliveries of the originals are duplicates, and the audit over every shard is exact."""
    backend = deploy.backend
    events = [event(f"e{i}", 1 + i % 12, chars=50 + 40 * i) for i in range(24)]
    assert deploy.pipeline.process(events).ok
    corrector = Corrector(
        writer=deploy.writer,
        engine=deploy.engine,
        provider=backend.provider,
        map_store=deploy.store,
    )
    target = deploy.store.load().add_shard(backend.shards[3])
    moved = {e.event_id for e in events if target.shard_for(e.account) == backend.shards[3]}
    assert moved, "the test needs events whose account moves"
    mid = sorted(moved)[0]
    results = []
    once = threading.Lock()  # the resharder moves slots in parallel: one hook corrects

    def correct_mid_move(name: str) -> None:
        if name.startswith("merge:") and once.acquire(blocking=False):
            original = next(e for e in events if e.event_id == mid)
            results.append(corrector.cancel(original, correction_id="mid", reason="reshard"))

    Resharder(
        store=deploy.store,
        provider=backend.provider,
        tables=billing_tables(),
        before_step=correct_mid_move,
    ).run(target)
    deploy.used.append(backend.shards[3])
    assert [r.state for r in results] == ["applied"]
    later = sorted(moved)[-1]
    original = next(e for e in events if e.event_id == later)
    amended = event(later, original.account, chars=999)
    late = corrector.amend(amended, correction_id="after", reason="r", original=original)
    assert late.state == "applied"
    current = [amended if e.event_id == later else e for e in events if e.event_id != mid]
    assert deploy.rows() == oracle(deploy.engine, current, [*events, amended])
    again = deploy.pipeline.process(events)
    assert again.write.duplicate_events == {e.event_id for e in events}
    first = next(e for e in events if e.event_id == mid)
    assert corrector.cancel(first, correction_id="mid", reason="reshard").state == "duplicate"
    assert deploy.rows() == oracle(deploy.engine, current, [*events, amended])
    _audit_exact(deploy, events)


def test_an_existing_install_gets_the_corrections_table_from_migrate(deploy: Deployment) -> None:
    """A shard without shardbill_corrections (installed before corrections existed) is
    refused by the schema check, naming the table and the command that creates it; migrate
    creates it, and a correction then works."""
    backend = deploy.backend
    original = event("old", 4)
    assert deploy.pipeline.process([original]).ok
    backend.execute(backend.shards[0], "DROP TABLE shardbill_corrections")
    with pytest.raises(SchemaError, match="shardbill_corrections") as caught:
        deploy.writer.check_schema()
    assert "shardbill init" in str(caught.value)
    steps = migrate(backend.provider, list(backend.shards[:3]), billing_tables())
    assert [(s.shard, s.table) for s in steps] == [(backend.shards[0], "shardbill_corrections")]
    deploy.writer.check_schema()
    assert deploy.corrector.cancel(original, correction_id="m", reason="r").state == "applied"


def test_an_amend_that_moves_the_account_or_period_is_refused(deploy: Deployment) -> None:
    """An amend keeps the event's account and period: another is refused, naming the
    field; nothing changes."""
    original = event("w", 4)
    assert deploy.pipeline.process([original]).ok
    before = deploy.rows()
    moved = deploy.corrector.amend(event("w", 5), correction_id="k", reason="r", original=original)
    assert moved.state == "refused"
    assert "'account' 5" in moved.reason
    december = UsageEvent(
        event_id="w",
        account=4,
        time=dt.datetime(2026, 12, 2, tzinfo=dt.UTC),
        product="sms",
        quantity=1,
        dimensions={"country": "GB", "characters": 100},
    )
    later = deploy.corrector.amend(december, correction_id="k", reason="r", original=original)
    assert later.state == "refused"
    assert "period 2026-12" in later.reason
    assert deploy.rows() == before
    assert deploy.corrector.records() == []


def test_cancel_by_filter_takes_only_the_matching_events_of_the_file(deploy: Deployment) -> None:
    """A filter (account and time range) over a supplied file cancels exactly the events
    it matches; running it again is a duplicate for each."""
    early = dt.datetime(2026, 11, 3, 9, tzinfo=dt.UTC)
    events = [
        UsageEvent(
            event_id=f"f{i}",
            account=1 + i % 3,
            time=early + dt.timedelta(hours=6 * i),
            product="sms",
            quantity=1,
            dimensions={"country": "GB", "characters": 100},
        )
        for i in range(12)
    ]
    assert deploy.pipeline.process(events).ok
    where = EventFilter(
        account=2,
        start=dt.datetime(2026, 11, 3, 12, tzinfo=dt.UTC),
        end=dt.datetime(2026, 11, 5, tzinfo=dt.UTC),
    )
    chosen = [e for e in events if e.account == 2 and where.start <= e.time < where.end]  # type: ignore[operator]
    assert 0 < len(chosen) < len(events)
    results = deploy.corrector.cancel_matching(events, where, correction_id="meter", reason="r")
    assert [(r.event_id, r.state) for r in results] == [(e.event_id, "applied") for e in chosen]
    kept = [e for e in events if e not in chosen]
    assert deploy.rows() == oracle(deploy.engine, kept, events)
    again = deploy.corrector.cancel_matching(events, where, correction_id="meter", reason="r")
    assert {r.state for r in again} == {"duplicate"}
    with pytest.raises(ValueError, match="'end'"):
        EventFilter(start=where.end, end=where.start)


class CrashError(Exception):
    """The process dies here (the test's fault injection)."""


def test_a_correction_that_crashed_is_finished_by_running_it_again(
    deploy: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the record and before the write leaves the record pending and the
    rows unchanged; another correction of the event is refused meanwhile, naming the
    pending one; the same correction run again applies once. A crash after the write and
    before the record is settled: run again, the ledger finds the deltas in and the record
    is settled without applying them twice."""
    first, second = event("c1", 3), event("c2", 4, chars=300)
    assert deploy.pipeline.process([first, second]).ok
    before = deploy.rows()

    def crash(*args: object, **kwargs: object) -> None:
        raise CrashError

    with monkeypatch.context() as patch:
        patch.setattr(deploy.writer, "write_rows", crash)
        with pytest.raises(CrashError):
            deploy.corrector.cancel(first, correction_id="k1", reason="r")
    assert deploy.rows() == before
    (pending,) = deploy.corrector.records()
    assert pending.state is RecordState.PENDING
    other = deploy.corrector.cancel(first, correction_id="k2", reason="r")
    assert other.state == "refused"
    assert "'k1' of revision 0 is still pending" in other.reason
    assert deploy.corrector.cancel(first, correction_id="k1", reason="r").state == "applied"
    assert deploy.rows() == oracle(deploy.engine, [second], [first, second])

    with monkeypatch.context() as patch:
        patch.setattr("shardbill.corrections.correct.mark_applied", crash)
        with pytest.raises(CrashError):
            deploy.corrector.cancel(second, correction_id="k3", reason="r")
    assert deploy.rows() == oracle(deploy.engine, [], [first, second])  # the write committed
    again = deploy.corrector.cancel(second, correction_id="k3", reason="r")
    assert again.state == "applied"
    assert deploy.rows() == oracle(deploy.engine, [], [first, second])
    assert {r.state for r in deploy.corrector.records()} == {RecordState.APPLIED}


def test_repair_counts_the_corrections_and_restores_a_corrected_row(deploy: Deployment) -> None:
    """After a cancel, a row changed behind the writer's back is repaired to what the
    events and the corrections imply (not to the events alone), and the audit is exact."""
    events = [event("h1", 2), event("h2", 2, chars=300), event("h3", 3)]
    assert deploy.pipeline.process(events).ok
    assert deploy.corrector.cancel(events[1], correction_id="k", reason="r").state == "applied"
    want = deploy.rows()
    shard = deploy.writer.locate(2)[1]
    deploy.backend.execute(
        shard, "UPDATE `usage_monthly` SET `amount` = `amount` + 5 WHERE `account_id` = 2"
    )
    assert deploy.rows() != want
    report = repair(
        events,
        engine=deploy.engine,
        tables=billing_tables(),
        provider=deploy.backend.provider,
        shard_map=deploy.writer.shard_map,
        corrections=deploy.corrector.records(),
    )
    assert report.actions, report.refused
    assert deploy.rows() == want
    _audit_exact(deploy, events)


def _records_on(deploy: Deployment, shard: str) -> set[tuple[str, int, str, str]]:
    """(event, revision, correction id, state) of every record on ``shard``, read directly."""
    return {
        (str(e), int(r), str(c), str(s))
        for e, r, c, s in deploy.backend.rows(
            shard, "SELECT event_id, revision, correction_id, state FROM shardbill_corrections"
        )
    }


def _corrected_month(deploy: Deployment) -> tuple[list[UsageEvent], list[UsageEvent], str]:
    """Events written, then half of them cancelled or amended; the shard holding most of the
    records (the one a reshard will remove); the current contents."""
    events = [event(f"m{i}", 1 + i % 9, chars=60 + 30 * i) for i in range(30)]
    assert deploy.pipeline.process(events).ok
    current = list(events)
    for i, original in enumerate(events[::2]):
        if i % 2:
            result = deploy.corrector.cancel(original, correction_id=f"c{i}", reason="r")
            current.remove(original)
        else:
            amended = event(original.event_id, original.account, chars=999 + i)
            result = deploy.corrector.amend(
                amended, correction_id=f"c{i}", reason="r", original=original
            )
            current[current.index(original)] = amended
        assert result.state == "applied"
    homes = [deploy.writer.locate(e.event_id)[1] for e in events[::2]]
    return events, current, max(sorted(set(homes)), key=homes.count)


def test_a_reshard_moves_the_correction_records_with_their_slots(deploy: Deployment) -> None:
    """A reshard removes the shard that holds correction records: they move with their
    events' home slots, so the removed shard keeps none, records() and the audit over the
    new map find every one, a repeated correction is a duplicate and the next amend of a
    moved record's event is its next revision."""
    backend = deploy.backend
    events, current, removed = _corrected_month(deploy)
    before = set().union(*(_records_on(deploy, s) for s in deploy.used))
    assert _records_on(deploy, removed), "the test needs records on the shard it removes"
    target = deploy.store.load().remove_shard(removed)
    Resharder(store=deploy.store, provider=backend.provider, tables=billing_tables()).run(target)
    deploy.writer.reload_map()
    assert _records_on(deploy, removed) == set()
    assert set().union(*(_records_on(deploy, s) for s in target.shards)) == before
    for shard in target.shards:
        for event_id, *_ in _records_on(deploy, shard):
            assert target.shard_for(event_id) == shard, (event_id, shard)
    corrector = Corrector(
        writer=deploy.writer,
        engine=deploy.engine,
        provider=backend.provider,
        map_store=deploy.store,
    )
    assert {
        (r.event_id, r.revision, r.correction_id, r.state.value) for r in corrector.records()
    } == before
    first = events[0]  # amended by c0 (chars 999)
    amended = event(first.event_id, first.account, chars=999)
    repeat = corrector.amend(amended, correction_id="c0", reason="r", original=first)
    assert repeat.state == "duplicate", repeat.reason
    newer = event(first.event_id, first.account, chars=5)
    again = corrector.amend(newer, correction_id="next", reason="r")
    assert again.state == "applied", again.reason
    assert again.revision == 2
    ever = [*events, *(c for c in current if c not in events), newer]
    current[current.index(amended)] = newer
    assert deploy.rows() == oracle(deploy.engine, current, ever)
    _audit_exact(deploy, events)


class _CrashError(Exception):
    """Stands for the resharding process dying at a step."""


def _reshard_dying_at(deploy: Deployment, target: ShardMap, at: Callable[[str], bool]) -> None:
    """Run a reshard to ``target`` that dies before the first step ``at`` accepts."""

    def crash(name: str) -> None:
        if at(name):
            raise _CrashError

    with pytest.raises(_CrashError):
        Resharder(
            store=deploy.store,
            provider=deploy.backend.provider,
            tables=billing_tables(),
            before_step=crash,
        ).run(target)


def test_a_reshard_stopped_between_the_copy_and_the_delete_shows_each_record_once(
    deploy: Deployment,
) -> None:
    """A resharder dies after copying the records and before deleting them from the
    source: both sides hold a copy, records() shows each once; the resumed reshard deletes
    the source's, and every record is on its home slot's owner."""
    backend = deploy.backend
    _, _, removed = _corrected_month(deploy)
    before = set().union(*(_records_on(deploy, s) for s in deploy.used))
    target = deploy.store.load().remove_shard(removed)

    _reshard_dying_at(deploy, target, lambda name: name.startswith("records-delete:"))
    assert _records_on(deploy, removed)
    both = [_records_on(deploy, s) for s in deploy.used]
    assert sum(len(r) for r in both) > len(before)  # copies on both sides
    corrector = Corrector(
        writer=deploy.writer,
        engine=deploy.engine,
        provider=backend.provider,
        map_store=deploy.store,
    )
    shown = [(r.event_id, r.revision, r.correction_id, r.state.value) for r in corrector.records()]
    assert sorted(shown) == sorted(before)
    Resharder(store=deploy.store, provider=backend.provider, tables=billing_tables()).run()
    assert _records_on(deploy, removed) == set()
    assert set().union(*(_records_on(deploy, s) for s in target.shards)) == before


def test_a_correction_routed_by_an_old_map_writes_its_record_where_the_slot_went(
    deploy: Deployment,
) -> None:
    """A corrector whose writer still routes by the map from before a reshard follows the
    fence of the event's home slot: the record is written on the slot's new owner, never on
    the shard it left, and the correction applies once."""
    backend = deploy.backend
    events = [event(f"o{i}", 1 + i % 9) for i in range(30)]
    assert deploy.pipeline.process(events).ok
    old = deploy.store.load()
    removed = backend.shards[2]
    homed = [e for e in events if old.shard_for(e.event_id) == removed]
    assert homed, "the test needs an event homed on the shard it removes"
    target = old.remove_shard(removed)
    Resharder(store=deploy.store, provider=backend.provider, tables=billing_tables()).run(target)
    with AggregationWriter(
        shard_map=old, provider=backend.provider, tables=billing_tables()
    ) as stale:
        corrector = Corrector(writer=stale, engine=deploy.engine, provider=backend.provider)
        done = corrector.cancel(homed[0], correction_id="old-map", reason="r")
    assert done.state == "applied", done.reason
    assert _records_on(deploy, removed) == set()
    owner = target.shard_for(homed[0].event_id)
    assert (homed[0].event_id, 1, "old-map", "applied") in _records_on(deploy, owner)
    current = [e for e in events if e is not homed[0]]
    assert deploy.rows() == oracle(deploy.engine, current, events)


def test_a_correction_waits_for_its_records_in_motion_and_fails_cleanly_past_the_wait(
    deploy: Deployment,
) -> None:
    """A resharder died after fencing the slots and before moving their records: a
    correction of an event homed on a moving slot may write its record on neither side, so
    it fails after ``home_wait`` with the reason and changes nothing; once the reshard is
    resumed, the same correction applies."""
    backend = deploy.backend
    events = [event(f"w{i}", 1 + i % 9) for i in range(30)]
    assert deploy.pipeline.process(events).ok
    old = deploy.store.load()
    removed = backend.shards[2]
    homed = next(e for e in events if old.shard_for(e.event_id) == removed)
    before = deploy.rows()

    _reshard_dying_at(deploy, old.remove_shard(removed), lambda name: name == "records")
    corrector = Corrector(
        writer=deploy.writer,
        engine=deploy.engine,
        provider=backend.provider,
        map_store=deploy.store,
        home_wait=0.05,
    )
    stuck = corrector.cancel(homed, correction_id="in-motion", reason="r")
    assert stuck.state == "failed"
    assert "being moved by a reshard" in stuck.reason
    assert "run the same correction again" in stuck.reason
    assert deploy.rows() == before
    assert corrector.records() == []
    Resharder(store=deploy.store, provider=backend.provider, tables=billing_tables()).run()
    done = corrector.cancel(homed, correction_id="in-motion", reason="r")
    assert done.state == "applied", done.reason
    assert deploy.rows() == oracle(deploy.engine, [e for e in events if e is not homed], events)


def test_a_reverted_reshard_moves_the_records_back(deploy: Deployment) -> None:
    """A reshard that removed the shard holding correction records is reverted: the records
    go back with their slots, each on its home slot's owner again, none lost or doubled,
    and a repeated correction is still a duplicate."""
    backend = deploy.backend
    events, _, removed = _corrected_month(deploy)
    before = set().union(*(_records_on(deploy, s) for s in deploy.used))
    original = deploy.store.load()
    Resharder(store=deploy.store, provider=backend.provider, tables=billing_tables()).run(
        original.remove_shard(removed)
    )
    assert _records_on(deploy, removed) == set()
    Resharder(store=deploy.store, provider=backend.provider, tables=billing_tables()).revert()
    back = deploy.store.load()
    assert back.assignment == original.assignment
    deploy.writer.reload_map()
    placed = {shard: _records_on(deploy, shard) for shard in deploy.used}
    assert set().union(*placed.values()) == before
    assert sum(len(r) for r in placed.values()) == len(before)
    for shard, records in placed.items():
        assert all(back.shard_for(event_id) == shard for event_id, *_ in records)
    assert _records_on(deploy, removed)
    first = events[0]
    repeat = deploy.corrector.amend(
        event(first.event_id, first.account, chars=999),
        correction_id="c0",
        reason="r",
        original=first,
    )
    assert repeat.state == "duplicate", repeat.reason


class _ReshardMidRead:
    """The corrector's provider: once it has read a ledger on ``after`` it runs ``reshard``
    before lending its next connection to ``before`` (that shard's ledger is read last, and
    the reshard moves the event's ledger rows from it to a shard read already)."""

    def __init__(self, inner: Any, after: str, before: str, reshard: Callable[[], None]):
        self.inner, self.after, self.before, self.reshard = inner, after, before, reshard
        self.armed = False
        self.fired = False

    @contextlib.contextmanager
    def connection(self, shard: str, *, readonly: bool = False) -> Iterator[Any]:
        if shard == self.before and self.armed and not self.fired:
            self.fired = True
            self.reshard()
        with self.inner.connection(shard, readonly=readonly) as conn:
            yield _Watched(conn, self, shard)

    def close(self) -> None:
        pass


class _Watched:
    """A lent connection whose cursors arm the provider on a ledger read on ``after``."""

    def __init__(self, conn: Any, owner: _ReshardMidRead, shard: str) -> None:
        self._conn, self._owner, self._shard = conn, owner, shard

    def cursor(self) -> Any:
        return _WatchedCursor(self._conn.cursor(), self._owner, self._shard)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _WatchedCursor:
    def __init__(self, cursor: Any, owner: _ReshardMidRead, shard: str) -> None:
        self._cursor, self._owner, self._shard = cursor, owner, shard

    def execute(self, sql: str, params: Any = ()) -> Any:
        if self._shard == self._owner.after and "shardbill_ledger" in sql:
            self._owner.armed = "fingerprint" in sql or self._owner.armed
        return self._cursor.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def test_a_correction_whose_ledger_read_straddles_a_move_finds_every_unit(
    deploy: Deployment,
) -> None:
    """The corrector reads the ledgers shard by shard. A reshard that removes the event's
    shard runs between its read of the shard the rows go to and its read of the shard they
    leave: the rows were on neither when it looked. It must not refuse the cancel as "only
    partly applied" (simulation seed 30377): it reads again, and the cancel applies once."""
    backend = deploy.backend
    old = deploy.store.load()
    removed = backend.shards[2]
    events = [event(f"r{i}", 1 + i % 9) for i in range(40)]
    assert deploy.pipeline.process(events).ok
    target = old.remove_shard(removed)
    moving = next(e for e in events if old.shard_for(e.account) == removed)
    reads_before = min(s for s in old.shards if s != removed)  # sorted order: read earlier
    assert reads_before < removed

    def reshard() -> None:
        Resharder(store=deploy.store, provider=backend.provider, tables=billing_tables()).run(
            target
        )

    provider = _ReshardMidRead(backend.provider, reads_before, removed, reshard)
    corrector = Corrector(
        writer=deploy.writer, engine=deploy.engine, provider=provider, map_store=deploy.store
    )
    done = corrector.cancel(moving, correction_id="straddle", reason="r")
    assert provider.fired, "the reshard must run between the ledger reads"
    assert done.state == "applied", done.reason
    current = [e for e in events if e is not moving]
    assert deploy.rows() == oracle(deploy.engine, current, events)


def test_records_and_corrections_go_on_while_a_reshard_is_stuck_before_its_new_shard_has_tables(
    deploy: Deployment,
) -> None:
    """A reshard claimed a new shard and died making its tables (the shard's server was
    down): the corrector reads the claimed reshard's shards too, and a shard with none of
    shardbill's tables holds nothing to read. Its records, adjustments and corrections
    go on; they raised "no such table" until the reshard was resumed."""
    events = [event(f"n{i}", 1 + i % 9) for i in range(12)]
    assert deploy.pipeline.process(events).ok
    assert deploy.corrector.cancel(events[0], correction_id="c0", reason="r").state == "applied"
    new = deploy.backend.shards[3]
    target = deploy.store.load().add_shard(new)
    with pytest.raises(DiedError):
        Resharder(
            store=deploy.store,
            provider=DiesOn(deploy.backend.provider, new),
            tables=billing_tables(),
        ).run(target)
    corrector = Corrector(
        writer=deploy.writer,
        engine=deploy.engine,
        provider=deploy.backend.provider,
        map_store=deploy.store,
        clock=lambda: 1e9,
    )
    assert new in corrector.shards()
    assert [(r.event_id, r.correction_id) for r in corrector.records()] == [("n0", "c0")]
    assert read_adjustments(deploy.backend.provider, corrector.shards()) == {}
    cancelled = corrector.cancel(events[1], correction_id="c1", reason="r")
    assert cancelled.state == "applied", cancelled
    assert sorted(r.correction_id for r in corrector.records()) == ["c0", "c1"]
    _audit_exact(deploy, events)  # the originals, with the records that correct them


def test_a_shard_with_a_ledger_but_no_corrections_table_is_told_to_migrate(
    deploy: Deployment,
) -> None:
    """The other case of a missing table: a shard with shardbill's ledger (it took
    writes) but without the corrections or adjustments table is an older schema, and
    reading it says to run `shardbill migrate` (not a driver's "no such table")."""
    shard = deploy.used[0]
    deploy.backend.execute(shard, "DROP TABLE `shardbill_corrections`")
    deploy.backend.execute(shard, "DROP TABLE `shardbill_adjustments`")
    with pytest.raises(SchemaError, match=r"shardbill_corrections.*migrate"):
        deploy.corrector.records()
    with pytest.raises(SchemaError, match=r"shardbill_adjustments.*migrate"):
        read_adjustments(deploy.backend.provider, deploy.used)


def _misplace(deploy: Deployment, record: tuple[str, int], to: str) -> None:
    """Move a correction record, as stored, from its home slot's owner to ``to`` (where a
    version before the records step could have left it: on a former owner)."""
    event_id, revision = record
    home = deploy.writer.locate(event_id)[1]
    provider = deploy.backend.provider
    with provider.connection(home) as conn:
        p = dialect_for(conn).placeholder
        cursor = conn.cursor()
        cursor.execute(
            f"SELECT * FROM shardbill_corrections WHERE event_id = {p} AND revision = {p}",
            (event_id, revision),
        )
        row = cursor.fetchone()
        names = [d[0] for d in cursor.description]
        cursor.execute(
            f"DELETE FROM shardbill_corrections WHERE event_id = {p} AND revision = {p}",
            (event_id, revision),
        )
    with provider.connection(to) as conn:
        cursor = conn.cursor()
        cursor.execute(
            f"INSERT INTO shardbill_corrections ({', '.join(names)}) "
            f"VALUES ({', '.join([p] * len(names))})",
            tuple(row),
        )


def test_a_reshard_takes_records_an_older_version_left_on_another_shard_home(
    deploy: Deployment,
) -> None:
    """A record on a shard that does not own its event's home slot (an older version left
    it on a former owner) goes home when a reshard moves slots off that shard; removing the
    shard kept it there, out of records() and the audit, for good."""
    events, _, removed = _corrected_month(deploy)
    before = set().union(*(_records_on(deploy, s) for s in deploy.used))
    elsewhere = next((e, r) for e, r, *_ in sorted(before) if deploy.writer.locate(e)[1] != removed)
    _misplace(deploy, elsewhere, removed)
    home = deploy.writer.locate(elsewhere[0])[1]
    assert elsewhere not in {(e, r) for e, r, *_ in _records_on(deploy, home)}
    target = deploy.store.load().remove_shard(removed)
    Resharder(store=deploy.store, provider=deploy.backend.provider, tables=billing_tables()).run(
        target
    )
    deploy.writer.reload_map()
    assert _records_on(deploy, removed) == set()
    assert elsewhere in {(e, r) for e, r, *_ in _records_on(deploy, home)}
    assert set().union(*(_records_on(deploy, s) for s in target.shards)) == before
    corrector = Corrector(
        writer=deploy.writer,
        engine=deploy.engine,
        provider=deploy.backend.provider,
        map_store=deploy.store,
    )
    assert {
        (r.event_id, r.revision, r.correction_id, r.state.value) for r in corrector.records()
    } == before
    _audit_exact(deploy, events)
