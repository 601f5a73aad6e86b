"""Planning a batch: units per (event, slot), fingerprints, rejections, coalescing (pure)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import xxhash
from hypothesis import given
from hypothesis import strategies as st

from shardbill import ShardMap
from shardbill.rules import Charge
from shardbill.tables.aggregates import BIGINT_MAX, Account
from shardbill.tables.catalog import billing_tables
from shardbill.writer.planning import (
    Plan,
    Rejection,
    Unit,
    coalesce,
    fingerprint,
    plan_batch,
    refusals_ahead,
    split_by_claim,
    spread_events,
)
from tests.test_aggregates import charge

TABLES = billing_tables()
MAP = ShardMap.create(["a", "b", "c"], slots=64)


def _locate(key: object) -> tuple[int, str]:
    slot = MAP.slot_for(key)  # type: ignore[arg-type]
    return slot, MAP.owner(slot)


def plan(charges: list[Charge], **kw: object) -> Plan:
    """The plan of ``charges`` under the default scope (identity claims on)."""
    return plan_batch(
        charges,
        tables=TABLES,
        shard_key=(Account(),),
        locate=_locate,
        home_slot=MAP.slot_for,
        **kw,  # type: ignore[arg-type]
    )


def money_units(p: Plan) -> list[Unit]:
    """The units that carry rows (identity claims without rows left out)."""
    return [u for u in p.units if u.rows]


def test_fingerprint_encoding_is_pinned() -> None:
    """The ledger stores fingerprints for weeks: this golden value must never change."""
    rows = [
        (0, (42, dt.date(2026, 11, 30), "sms"), (3_000_000, 22_500, 1)),
        (3, (42, "USD"), (22_500, 1, 22_500)),
    ]
    canonical = (
        b"[('account_balance', (42, 'USD'), (22500, 1, 22500)), "
        b"('usage_daily', (42, datetime.date(2026, 11, 30), 'sms'), (3000000, 22500, 1))]"
    )
    assert fingerprint(rows, TABLES) == xxhash.xxh3_64_hexdigest(canonical, seed=0x5B1DF1D6)
    assert fingerprint(rows, TABLES) == "11e166250923d080"
    assert fingerprint(list(reversed(rows)), TABLES) == "11e166250923d080"


def test_fingerprint_changes_with_any_value() -> None:
    """A different key value, delta or table gives a different fingerprint."""
    base = [(0, (42, dt.date(2026, 11, 30), "sms"), (3, 22_500, 1))]
    variants = [
        [(0, (43, dt.date(2026, 11, 30), "sms"), (3, 22_500, 1))],
        [(0, (42, dt.date(2026, 11, 29), "sms"), (3, 22_500, 1))],
        [(0, (42, dt.date(2026, 11, 30), "sms"), (3, 22_501, 1))],
        [(1, (42, dt.date(2026, 11, 30), "sms"), (3, 22_500, 1))],
    ]
    prints = {fingerprint(v, TABLES) for v in variants}
    assert fingerprint(base, TABLES) not in prints
    assert len(prints) == len(variants)


def test_an_event_on_two_slots_becomes_two_units_on_their_shards() -> None:
    """A charge to the account and one to its parent make one unit per slot."""
    child = charge(event_id="e-9", account=7, part=0, parts=2)
    parent = charge(event_id="e-9", account=123456, part=1, parts=2)
    planned = plan([child, parent])
    assert planned.rejected == ()
    units = money_units(planned)
    assert sorted(u.slot for u in units) == sorted({MAP.slot_for(7), MAP.slot_for(123456)})
    homes = [u for u in planned.units if u.home]
    assert [u.slot for u in homes] == [MAP.slot_for("e-9")]


def test_one_bad_charge_rejects_its_whole_event_and_nothing_else() -> None:
    """An invalid charge rejects every charge of its event; other events are planned."""
    good = charge(event_id="e-1", account=1)
    half = charge(event_id="e-2", account=2, part=0, parts=2)
    bad = charge(event_id="e-2", account="not-an-int", part=1, parts=2)
    planned = plan([good, half, bad])
    assert [r.event_id for r in planned.rejected] == ["e-2"]
    assert {u.event_id for u in planned.units} == {"e-1"}


def test_coalesce_sums_and_maxes_per_row_in_key_order() -> None:
    """Deltas for the same row merge (sum, and max for the peak) and rows come sorted."""
    a = charge(event_id="e-1", account=5, amount=Decimal("1.5"))
    b = charge(event_id="e-2", account=5, amount=Decimal("2.25"))
    c = charge(event_id="e-3", account=4, amount=Decimal("0.5"))
    balance = coalesce(plan([a, b, c]).units, TABLES)[3]
    assert [r.key for r in balance] == [(4, "USD"), (5, "USD")]
    assert balance[1].deltas == (3_750_000, 2, 2_250_000)


def test_a_time_past_the_calendar_in_the_tables_zone_rejects_only_its_event() -> None:
    """9999-12-31 23:00 UTC is year 10000 in Tokyo: that event is rejected, the batch goes on."""
    from zoneinfo import ZoneInfo

    from shardbill.tables.aggregates import (
        AggregateTable,
        BigInt,
        Count,
        Date,
        Day,
        KeyColumn,
        Measure,
    )

    tokyo_daily = AggregateTable(
        name="tokyo_daily",
        keys=(
            KeyColumn(name="account_id", type=BigInt(), projection=Account()),
            KeyColumn(name="day", type=Date(), projection=Day(tz=ZoneInfo("Asia/Tokyo"))),
        ),
        measures=(Measure(name="n", value=Count()),),
    )
    late = dt.datetime(9999, 12, 31, 23, tzinfo=dt.UTC)
    charges = [charge(event_id="e-ok"), charge(event_id="e-late", time=late)]
    planned = plan_batch(charges, tables=(tokyo_daily,), shard_key=(Account(),), locate=_locate)
    assert [r.event_id for r in planned.rejected] == ["e-late"]
    assert "out of range in time zone Asia/Tokyo" in planned.rejected[0].reason
    assert [u.event_id for u in planned.units] == ["e-ok"]


def test_units_carry_the_fingerprint_of_their_rows() -> None:
    """One charge or several on a slot: the unit's fingerprint is that of its rows."""
    charges = [
        charge(event_id="e-1"),
        charge(event_id="e-2", part=0, parts=2),
        charge(event_id="e-2", product="voice", amount=Decimal("0.5"), part=1, parts=2),
    ]
    planned = plan_batch(charges, tables=TABLES, shard_key=(Account(),), locate=_locate)
    assert sorted(len(u.rows) for u in planned.units) == [4, 8]
    for unit in planned.units:
        assert unit.fingerprint == fingerprint(unit.rows, TABLES)


def test_the_home_unit_holds_the_whole_events_fingerprint() -> None:
    """The identity claim's fingerprint covers every charge of the event, wherever they land."""
    child = charge(event_id="e-5", account=7, part=0, parts=2)
    parent = charge(event_id="e-5", account=123456, amount=Decimal("0.25"), part=1, parts=2)
    planned = plan([child, parent])
    (home,) = [u for u in planned.units if u.home]
    everything = [row for u in planned.units if not u.home for row in u.rows]
    everything += list(home.rows)
    assert home.fingerprint == fingerprint(everything, TABLES)
    moved = plan(
        [child, charge(event_id="e-5", account=99, amount=Decimal("0.25"), part=1, parts=2)]
    )
    (other_home,) = [u for u in moved.units if u.home]
    assert other_home.slot == home.slot
    assert other_home.fingerprint != home.fingerprint


def test_exact_repeats_fold_and_changed_repeats_reject_their_event() -> None:
    """A part seen twice with the same content folds; with other content, its event is refused."""
    a = charge(event_id="e-1")
    b = charge(event_id="e-2")
    b_changed = charge(event_id="e-2", amount=Decimal("9"))
    planned = plan([a, a, a, b, b_changed])
    assert planned.folded == 2
    assert [r.event_id for r in planned.rejected] == ["e-2"]
    assert {u.event_id for u in planned.units} == {"e-1"}
    assert planned.events == ("e-1", "e-2")


def test_an_incomplete_event_is_rejected_with_the_missing_parts() -> None:
    """Part 1 of 3 alone names parts 0 and 2 as missing; nothing of it is planned."""
    planned = plan([charge(event_id="e-3", part=1, parts=3)])
    assert planned.units == ()
    assert "missing part(s) [0, 2]" in planned.rejected[0].reason


def test_an_event_before_the_horizon_is_rejected_as_too_late() -> None:
    """``not_before`` refuses older events by their own time."""
    old = charge(event_id="e-old", time=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    new = charge(event_id="e-new", time=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    cutoff = int(dt.datetime(2026, 2, 1, tzinfo=dt.UTC).timestamp())
    planned = plan([old, new], not_before=cutoff)
    assert [r.event_id for r in planned.rejected] == ["e-old"]
    assert "horizon" in planned.rejected[0].reason
    assert {u.event_id for u in planned.units} == {"e-new"}


def _spread_plan() -> tuple[Plan, frozenset[str]]:
    """One event billed to account 7 and to an account on another shard, and one plain event."""
    other = next(a for a in range(1000, 2000) if _locate(a)[1] != _locate(7)[1])
    planned = plan(
        [
            charge(event_id="s-1", account=7, part=0, parts=2),
            charge(event_id="s-1", account=other, part=1, parts=2),
            charge(event_id="p-1", account=7),
        ]
    )
    return planned, spread_events(planned.units, MAP.owner)


def _after(planned: Plan) -> int:
    """A dedup watermark just after every event of ``planned``."""
    return max(u.time for u in planned.units) + 60


def _judge(
    planned: Plan, spread: frozenset[str], **kw: object
) -> tuple[frozenset[str], dict[str, Rejection]]:
    """refusals_ahead over account 7's shard, with the given reads (defaults: a clean shard)."""
    shard = _locate(7)[1]
    units = [u for u in planned.units if MAP.owner(u.slot) == shard]
    args: dict[str, object] = {
        "known": {},
        "owned": frozenset(u.slot for u in units),
        "watermarks": {},
        "stored": [{} for _ in TABLES],
        "tables": TABLES,
    }
    args.update(kw)
    return refusals_ahead(units, spread, **args)  # type: ignore[arg-type]


def test_spread_events_are_those_whose_money_lands_on_two_shards() -> None:
    _, spread = _spread_plan()
    assert spread == {"s-1"}


def test_a_clean_shard_refuses_nothing_ahead() -> None:
    planned, spread = _spread_plan()
    assert _judge(planned, spread) == (frozenset(), {})


def test_a_row_without_headroom_refuses_the_spread_event_ahead() -> None:
    planned, spread = _spread_plan()
    full = {
        key: (BIGINT_MAX,) * len(TABLES[t].measures)
        for u in planned.units
        for (t, key, _) in u.rows
        for _ in [0]
        if t == 0
    }
    stored = [full if t == 0 else {} for t in range(len(TABLES))]
    blocked, refused = _judge(planned, spread, stored=stored)
    assert blocked == frozenset()
    assert set(refused) == {"s-1"}  # the plain event is the normal path's to judge
    assert refused["s-1"].error == "RowOverflowError"


def test_a_slot_past_its_watermark_refuses_the_spread_event_ahead() -> None:
    planned, spread = _spread_plan()
    _, refused = _judge(planned, spread, watermarks={MAP.slot_for(7): _after(planned)})
    assert set(refused) == {"s-1"}
    assert "horizon" in refused["s-1"].reason


def test_an_event_with_a_part_in_the_ledger_is_never_refused_ahead() -> None:
    """Part of it may be applied already: rejecting it then would strand that part."""
    planned, spread = _spread_plan()
    unit = next(
        u for u in planned.units if u.event_id == "s-1" and MAP.owner(u.slot) == _locate(7)[1]
    )
    known = {(unit.event_id, unit.slot): (unit.fingerprint, "t")}
    assert _judge(planned, spread, known=known, watermarks={MAP.slot_for(7): _after(planned)}) == (
        frozenset({"s-1"}),
        {},
    )


def test_an_event_on_a_slot_in_motion_is_left_to_the_transactions() -> None:
    """Its ledger rows may be on the move's other shard: only the fenced path can judge."""
    planned, spread = _spread_plan()
    blocked, refused = _judge(
        planned, spread, owned=frozenset(), watermarks={MAP.slot_for(7): _after(planned)}
    )
    assert blocked == {"s-1"}
    assert refused == {}


def test_an_event_whose_own_charges_sum_past_bigint_on_one_row_is_rejected_when_planned() -> None:
    """No row state can make it fit: it is refused before any SQL, never left half applied.

    Found by the simulation (seed 23): split over two shards, its other part
    committed and the event stayed failed for good.
    """
    other = next(a for a in range(1000, 2000) if _locate(a)[1] != _locate(7)[1])
    big = Decimal("5000000000000")  # 5e18 micro-units: one fits a BIGINT, two do not
    planned = plan(
        [
            charge(event_id="big", account=7, amount=big, part=0, parts=3),
            charge(event_id="big", account=7, amount=big, part=1, parts=3),
            charge(event_id="big", account=other, part=2, parts=3),
            charge(event_id="fine", account=7, amount=big),
        ]
    )
    assert [r.event_id for r in planned.rejected] == ["big"]
    rejection = planned.rejected[0]
    assert rejection.error == "RowOverflowError"
    assert "amount" in rejection.reason
    assert "split" in rejection.reason
    assert {u.event_id for u in planned.units} == {"fine"}


def _with_one_home_each(units: list[Unit]) -> list[Unit]:
    """Every event of ``units`` with exactly one home unit (its first), as plans give."""
    seen: set[str] = set()
    out = []
    for u in units:
        out.append(u._replace(home=u.event_id not in seen))
        seen.add(u.event_id)
    return out


_UNITS = st.lists(
    st.builds(
        Unit,
        event_id=st.sampled_from(["e1", "e2", "e3", "e4"]),
        slot=st.integers(0, 15),
        fingerprint=st.just("f"),
        rows=st.sampled_from([(), ((0, (1,), (1,)),)]),
        time=st.just(0),
        home=st.booleans(),
    ),
    max_size=12,
).map(_with_one_home_each)


@given(units=_UNITS, owners=st.lists(st.sampled_from("abc"), min_size=16, max_size=16))
def test_split_and_spread_route_as_the_plain_definitions(
    units: list[Unit], owners: list[str]
) -> None:
    """split_by_claim and spread_events give what their one-route-per-use definitions give."""
    route = owners.__getitem__
    home = {u.event_id: route(u.slot) for u in units if u.home}
    first = [u for u in units if u.home or route(u.slot) == home[u.event_id]]
    later = [u for u in units if not (u.home or route(u.slot) == home[u.event_id])]
    assert split_by_claim(units, route) == (first, later)
    shards: dict[str, set[str]] = {}
    for u in units:
        if u.rows:
            shards.setdefault(u.event_id, set()).add(route(u.slot))
    assert spread_events(units, route) == {e for e, s in shards.items() if len(s) > 1}


@given(
    accounts=st.lists(st.integers(0, 10**6), min_size=1, max_size=12),
    scope_global=st.booleans(),
)
def test_units_and_rows_built_as_plain_tuples_are_whole_named_tuples(
    accounts: list[int], scope_global: bool
) -> None:
    """The planner builds its named tuples without their ``__new__`` (the hot path): each
    has every field, equal to what the named tuple's own constructor makes of them."""
    charges = [
        charge(event_id=f"e-{i % 5}-{a}", account=a, amount=Decimal(i + 1))
        for i, a in enumerate(accounts)
    ]
    planned = plan_batch(
        charges,
        tables=TABLES,
        shard_key=(Account(),),
        locate=_locate,
        home_slot=MAP.slot_for if scope_global else None,
    )
    assert planned.units
    for unit in planned.units:
        assert type(unit) is Unit
        assert len(unit) == len(Unit._fields)
        assert unit == Unit(**unit._asdict())
    for table_rows in coalesce(planned.units, TABLES):
        for row in table_rows:
            assert len(row) == len(type(row)._fields)
            assert row == type(row)(**row._asdict())
