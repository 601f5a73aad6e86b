"""A property: random writes, redeliveries and period closes under ``late_events = "adjust"``
against an independent model of where each event's rows must be.

On SQLite (each example gets fresh shards); ``test_adjust.py`` runs the
same paths on MariaDB. The model: an event is booked when first delivered,
into its own period if that is open, else into the first open period after
it; a redelivery (same content) never changes anything; the rows are the
oracle's over the events at their booking time (the first day of the
booking period, or their own time).
"""

from __future__ import annotations

import datetime as dt
import tempfile
import types
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardbill import ShardMap
from shardbill.periods import Period, PeriodCloser, period_of, read_adjustments
from shardbill.providers import PooledProvider
from shardbill.rules import Charge
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter, WriterSettings
from tests.support.backends import Backend
from tests.support.oracle import actual_rows, expected_rows

PERIODS = [Period.parse(p) for p in ("2026-10", "2026-11", "2026-12")]
NOW = dt.datetime(2027, 1, 20, tzinfo=dt.UTC).timestamp()
EVENTS = 8


def _charges(index: int, period: int, accounts: list[int]) -> list[Charge]:
    start = PERIODS[period].start + 86_400 * (3 + index)
    when = dt.datetime.fromtimestamp(start, dt.UTC)
    return [
        Charge(
            event_id=f"e{index}",
            account=account,
            product="sms",
            quantity=1,
            amount=Decimal("0.010000"),
            currency="USD",
            time=when,
            rule="test",
            rule_version="1",
            part=part,
            parts=len(accounts),
        )
        for part, account in enumerate(accounts)
    ]


steps = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, EVENTS - 1)),
        st.tuples(st.just("close"), st.just(0)),
    ),
    max_size=14,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    periods=st.lists(st.integers(0, 2), min_size=EVENTS, max_size=EVENTS),
    accounts=st.lists(
        st.lists(st.integers(1, 40), min_size=1, max_size=3, unique=True),
        min_size=EVENTS,
        max_size=EVENTS,
    ),
    plan=steps,
)
def test_random_late_events_match_the_model(
    periods: list[int], accounts: list[list[int]], plan: list[Any]
) -> None:
    """Every write's states and adjusted periods are the model's, and after every step the
    rows equal the oracle over the events at their booking time; the adjustments on the
    shards name exactly the events booked elsewhere."""
    with tempfile.TemporaryDirectory() as tmp:
        shards = ("s0", "s1", "s2")
        provider = PooledProvider.sqlite_directory(Path(tmp), shards)
        shard_map = ShardMap.create(list(shards), slots=32)
        backend = Backend(
            kind="sqlite",
            shards=shards,
            provider=provider,
            locations={s: str(Path(tmp) / f"{s}.db") for s in shards},
            urls={},
        )
        writer = AggregationWriter(
            shard_map=shard_map,
            provider=provider,
            tables=billing_tables(),
            settings=WriterSettings(late_events="adjust", ledger_retention_days=200),
            clock=lambda: NOW,
        )
        closer = PeriodCloser(provider=provider, shard_map=shard_map, clock=lambda: NOW)
        try:
            writer.ensure_schema()
            closed = 0  # PERIODS[:closed] are closed
            booked: dict[str, str] = {}  # event -> its booking period (the model)
            applied: list[Charge] = []
            for kind, index in plan:
                if kind == "close":
                    if closed < len(PERIODS):
                        closer.close(PERIODS[closed], drain_seconds=0)
                        closed += 1
                    continue
                charges = _charges(index, periods[index], accounts[index])
                event_id = charges[0].event_id
                result = writer.write(charges)
                if event_id in booked:
                    assert result.duplicate_events == {event_id}
                    assert result.adjusted == {}
                    continue
                own = period_of(int(charges[0].time.timestamp()))
                if PERIODS.index(own) >= closed:
                    target = own
                else:
                    target = PERIODS[closed] if closed < len(PERIODS) else PERIODS[-1].next()
                booked[event_id] = str(target)
                assert result.applied_events == {event_id}, result
                want = {} if target == own else {event_id: str(target)}
                assert result.adjusted == want
                moved = dt.datetime.fromtimestamp(target.start, dt.UTC)
                applied.extend(c if target == own else _moved(c, moved) for c in charges)
                view = types.SimpleNamespace(shards=shards, rows=backend.rows)
                assert actual_rows(view) == expected_rows(applied)
            recorded = read_adjustments(provider, shards)
            own_period = {
                f"e{i}": str(period_of(int(_charges(i, p, [1])[0].time.timestamp())))
                for i, p in enumerate(periods)
            }
            assert recorded == {e: p for e, p in booked.items() if p != own_period[e]}
        finally:
            writer.close()
            provider.close()


def _moved(charge: Charge, when: dt.datetime) -> Charge:
    import attrs

    return attrs.evolve(charge, time=when)
