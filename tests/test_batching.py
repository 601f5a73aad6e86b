"""Planning a batch: units per (event, slot), fingerprints, rejections, coalescing (pure)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import xxhash

from shardbill import ShardMap
from shardbill.aggregates import Account
from shardbill.batching import coalesce, fingerprint, plan_batch
from shardbill.catalog import billing_tables
from shardbill.rules import Charge
from tests.test_aggregates import charge

TABLES = billing_tables()
MAP = ShardMap.create(["a", "b", "c"], slots=64)


def _locate(key: object) -> tuple[int, str]:
    slot = MAP.slot_for(key)  # type: ignore[arg-type]
    return slot, MAP.owner(slot)


def plan(charges: list[Charge]):  # type: ignore[no-untyped-def]
    return plan_batch(charges, tables=TABLES, shard_key=(Account(),), locate=_locate)


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
    child = charge(event_id="e-9", account=7)
    parent = charge(event_id="e-9", account=123456)
    work, rejected = plan([child, parent])
    assert rejected == []
    units = [u for w in work.values() for u in w.units]
    assert sorted(u.slot for u in units) == sorted({MAP.slot_for(7), MAP.slot_for(123456)})
    for shard, w in work.items():
        assert all(MAP.owner(u.slot) == shard for u in w.units)


def test_one_bad_charge_rejects_its_whole_event_and_nothing_else() -> None:
    """An invalid charge rejects every charge of its event; other events are planned."""
    good = charge(event_id="e-1", account=1)
    half = charge(event_id="e-2", account=2)
    bad = charge(event_id="e-2", account="not-an-int")
    work, rejected = plan([good, half, bad])
    assert [r.event_id for r in rejected] == ["e-2"]
    planned = {u.event_id for w in work.values() for u in w.units}
    assert planned == {"e-1"}


def test_coalesce_sums_and_maxes_per_row_in_key_order() -> None:
    """Deltas for the same row merge (sum, and max for the peak) and rows come sorted."""
    a = charge(event_id="e-1", account=5, amount=Decimal("1.5"))
    b = charge(event_id="e-2", account=5, amount=Decimal("2.25"))
    c = charge(event_id="e-3", account=4, amount=Decimal("0.5"))
    work, _ = plan([a, b, c])
    units = [u for w in work.values() for u in w.units]
    balance = coalesce(units, TABLES)[3]
    assert [r.key for r in balance] == [(4, "USD"), (5, "USD")]
    assert balance[1].deltas == (3_750_000, 2, 2_250_000)


def test_a_time_past_the_calendar_in_the_tables_zone_rejects_only_its_event() -> None:
    """9999-12-31 23:00 UTC is year 10000 in Tokyo: that event is rejected, the batch goes on."""
    from zoneinfo import ZoneInfo

    from shardbill.aggregates import AggregateTable, BigInt, Count, Date, Day, KeyColumn, Measure

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
    work, rejected = plan_batch(
        charges, tables=(tokyo_daily,), shard_key=(Account(),), locate=_locate
    )
    assert [r.event_id for r in rejected] == ["e-late"]
    assert "out of range in time zone Asia/Tokyo" in rejected[0].reason
    assert [u.event_id for w in work.values() for u in w.units] == ["e-ok"]


def test_units_carry_the_fingerprint_of_their_rows() -> None:
    """One charge or several on a slot: the unit's fingerprint is that of its rows."""
    charges = [
        charge(event_id="e-1"),
        charge(event_id="e-2"),
        charge(event_id="e-2", product="voice", amount=Decimal("0.5")),
    ]
    work, _ = plan(charges)
    units = [u for w in work.values() for u in w.units]
    assert sorted(len(u.rows) for u in units) == [4, 8]
    for unit in units:
        assert unit.fingerprint == fingerprint(unit.rows, TABLES)
