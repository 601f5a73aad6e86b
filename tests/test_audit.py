"""The audit: an independent recomputation that agrees with the shards, and catches every damage."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal

import pytest

from shardbill import AggregateTable, AggregationWriter, KeyColumn, Measure, Pipeline, ShardMap
from shardbill.audit import AuditReport, Difference, audit, expected_rows
from shardbill.rules import UsageEvent, comms
from shardbill.tables.aggregates import Account, Amount, BigInt, Count, Dimension, Quantity, VarChar
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.synthetic import Traffic
from tests.support import oracle
from tests.support.backends import Backend

MAP_SLOTS = 64


def _write(
    backend: Backend,
    events: Sequence[UsageEvent],
    tables: Sequence[AggregateTable] | None = None,
) -> ShardMap:
    shard_map = ShardMap.create(backend.shards, slots=MAP_SLOTS)
    with AggregationWriter(
        shard_map=shard_map, provider=backend.provider, tables=tables or billing_tables()
    ) as writer:
        writer.ensure_schema()
        pipeline = Pipeline(engine=comms.engine(), writer=writer)
        for start in range(0, len(events), 200):
            assert pipeline.process(events[start : start + 200]).retry == frozenset()
    return shard_map


def _audit(
    backend: Backend,
    events: Sequence[UsageEvent],
    shard_map: ShardMap,
    tables: Sequence[AggregateTable] | None = None,
) -> AuditReport:
    return audit(
        events,
        engine=comms.engine(),
        tables=tables or billing_tables(),
        provider=backend.provider,
        shard_map=shard_map,
    )


def _day(n: int = 400) -> list[UsageEvent]:
    return list(Traffic(model="skewed", events=n, seed=31, accounts=60).distinct())


def test_the_recomputation_agrees_with_the_test_oracle() -> None:
    """Two independent recomputations of the billing tables give the same rows."""
    events = _day(2000)
    mine = expected_rows(events, engine=comms.engine(), tables=billing_tables())
    theirs = oracle.expected_rows(comms.engine().price_batch(events).charges)
    as_text = {
        table: {
            tuple(v.isoformat() if isinstance(v, dt.date) else v for v in key): values
            for key, values in rows.items()
        }
        for table, rows in mine.rows.items()
    }
    assert as_text == theirs
    assert (mine.events, mine.rejected, mine.unwritable) == (2000, 0, 0)


def test_a_faithful_write_audits_exact(backend: Backend) -> None:
    """What the writer wrote matches the recomputation row for row, placement included."""
    events = _day()
    shard_map = _write(backend, events)
    report = _audit(backend, events, shard_map)
    assert report.exact, [d.describe() for d in report.differences]
    assert report.expected_rows == report.found_rows
    assert sum(report.rows_per_shard.values()) == report.found_rows
    assert report.to_dict()["audit"] == "exact"


def _some_row(backend: Backend, table: str) -> tuple[str, tuple[object, ...]]:
    for shard in backend.shards:
        rows = backend.rows(
            shard,
            "SELECT `account_id`, `day`, `product`, `amount`, `sb_slot` "
            f"FROM `{table}` ORDER BY `account_id`, `day`, `product`",
        )
        if rows:
            return shard, rows[0]
    raise AssertionError("no rows written")


def test_a_corrupted_row_is_named_with_account_table_and_values(backend: Backend) -> None:
    """An amount changed behind the writer's back is one 'value' difference, exactly located."""
    events = _day()
    shard_map = _write(backend, events)
    shard, (account, day, product, amount, _slot) = _some_row(backend, "usage_daily")
    backend.execute(
        shard,
        f"UPDATE `usage_daily` SET `amount` = `amount` + 1234 WHERE `account_id` = {account} "
        f"AND `day` = '{day}' AND `product` = '{product}'",
    )
    report = _audit(backend, events, shard_map)
    (difference,) = report.differences
    assert (difference.kind, difference.table, difference.account) == (
        "value",
        "usage_daily",
        account,
    )
    assert (difference.measure, difference.expected, difference.found) == (
        "amount",
        amount,
        amount + 1234,  # type: ignore[operator]
    )
    text = difference.describe()
    assert f"account {account}" in text
    assert f"expected {Decimal(amount).scaleb(-6)}" in text  # type: ignore[arg-type]


def test_missing_and_unexpected_rows_are_reported(backend: Backend) -> None:
    """A deleted row is missing; a row no event makes is unexpected."""
    events = _day()
    shard_map = _write(backend, events)
    shard, (account, day, product, _amount, slot) = _some_row(backend, "usage_daily")
    backend.execute(
        shard,
        f"DELETE FROM `usage_daily` WHERE `account_id` = {account} AND `day` = '{day}' "
        f"AND `product` = '{product}'",
    )
    backend.execute(
        shard,
        "INSERT INTO `usage_daily` (`account_id`, `day`, `product`, `sb_slot`, `quantity`, "
        f"`amount`, `charges`) VALUES ({account}, '2020-01-01', 'sms', {slot}, 1, 1, 1)",
    )
    report = _audit(backend, events, shard_map)
    kinds = sorted((d.kind, d.key["day"]) for d in report.differences)
    assert kinds == [
        ("missing", dt.date.fromisoformat(str(day))),
        ("unexpected", dt.date(2020, 1, 1)),
    ]
    assert all(d.account == account for d in report.differences)


def test_a_row_on_the_wrong_shard_or_with_a_wrong_slot_is_reported(backend: Backend) -> None:
    """Placement is audited: the owner of the row's slot must hold it, under the right slot."""
    events = _day()
    shard_map = _write(backend, events)
    rows = backend.rows(
        backend.shards[0],
        "SELECT `account_id`, `currency`, `sb_slot`, `amount`, `charges`, `largest_charge` "
        "FROM `account_balance` ORDER BY `account_id`",
    )
    (account, currency, slot, amount, charges, largest), (other, _, _, _, _, _) = rows[:2]
    backend.execute(
        backend.shards[0], f"DELETE FROM `account_balance` WHERE `account_id` = {account}"
    )
    backend.execute(
        backend.shards[1],
        "INSERT INTO `account_balance` (`account_id`, `currency`, `sb_slot`, `amount`, "
        f"`charges`, `largest_charge`) VALUES ({account}, '{currency}', {slot}, {amount}, "
        f"{charges}, {largest})",
    )
    backend.execute(
        backend.shards[0],
        f"UPDATE `account_balance` SET `sb_slot` = {(slot + 1) % MAP_SLOTS} "
        f"WHERE `account_id` = {other}",
    )
    report = _audit(backend, events, shard_map)
    found = sorted((d.kind, d.account) for d in report.differences)
    assert found == [("misplaced", account), ("slot", other)]
    moved = next(d for d in report.differences if d.kind == "misplaced")
    assert backend.shards[1] in moved.detail
    assert backend.shards[0] in moved.detail


def _custom() -> tuple[AggregateTable, ...]:
    return (
        AggregateTable(
            name="by_direction",
            keys=(
                KeyColumn(name="account_id", type=BigInt(), projection=Account()),
                KeyColumn(name="direction", type=VarChar(16), projection=Dimension("direction")),
            ),
            measures=(
                Measure(name="seconds", value=Quantity(scale=0)),
                Measure(name="amount", value=Amount(scale=6)),
                Measure(name="smallest", value=Amount(scale=6), merge="min"),
                Measure(name="largest", value=Amount(scale=6), merge="max"),
                Measure(name="calls", value=Count()),
            ),
        ),
    )


def test_events_the_tables_refuse_are_not_expected(backend: Backend) -> None:
    """A dimension without a default rejects an event in the writer and in the audit alike."""
    events = _day()
    shard_map = _write(backend, events, _custom())
    report = _audit(backend, events, shard_map, _custom())
    voice = sum(1 for e in events if e.product == "voice")
    assert 0 < voice < len(events)
    assert report.rejected == len(events) - voice  # sms and email have no direction
    assert report.exact, [d.describe() for d in report.differences]
    assert report.expected_rows > 0


def test_the_report_lists_differences_as_json() -> None:
    """to_dict shows units as decimals at the measure's scale and keeps the count."""
    difference = Difference(
        kind="value",
        table="t",
        account=7,
        key={"account_id": 7, "day": dt.date(2026, 1, 2)},
        account_column="account_id",
        measure="amount",
        expected=1500,
        found=2500,
        scale=6,
    )
    report = AuditReport(
        tables=("t",),
        shards=("a",),
        events=1,
        rejected=0,
        expected_rows=1,
        found_rows=1,
        rows_per_shard={"a": 1},
        differences=(difference, difference),
    )
    data = report.to_dict(limit=1)
    assert data["audit"] == "different"
    assert data["difference_count"] == 2
    (shown,) = data["differences"]  # type: ignore[misc]
    assert shown["expected"] == "0.001500"
    assert shown["key"] == {"account_id": 7, "day": "2026-01-02"}
    assert (
        difference.describe()
        == "t account 7 (day=2026-01-02): amount expected 0.001500, found 0.002500"
    )


@pytest.mark.parametrize("merge", ["min", "max"])
def test_min_and_max_are_recomputed_by_their_merge(merge: str) -> None:
    """A min or max measure keeps the extreme charge, not the sum."""
    table = _custom()[0]
    events = [e for e in _day(300) if e.product == "voice"]
    rows = expected_rows(events, engine=comms.engine(), tables=[table]).rows["by_direction"]
    charges = comms.engine().price_batch(events).charges
    pick = min if merge == "min" else max
    index = 2 if merge == "min" else 3
    for (account, direction), values in rows.items():
        amounts = [
            int(c.amount.scaleb(6))
            for c in charges
            if c.account == account and c.dimensions.get("direction") == direction
        ]
        assert values[index] == pick(amounts)
        assert values[4] == len(amounts)


def test_a_difference_names_its_shard_and_slot_and_the_repair(backend: Backend) -> None:
    """Value and unexpected rows: the shard holding them; missing rows: the shard owning the slot.

    Each difference says how to repair it, and a changed value's repair is the
    additive correction (expected - found) on that shard.
    """
    events = _day()
    shard_map = _write(backend, events)
    shard, (account, day, product, _amount, slot) = _some_row(backend, "usage_daily")
    backend.execute(
        shard,
        f"UPDATE `usage_daily` SET `amount` = `amount` + 1234 WHERE `account_id` = {account} "
        f"AND `day` = '{day}' AND `product` = '{product}'",
    )
    backend.execute(
        shard,
        f"DELETE FROM `account_balance` WHERE `account_id` = {account}",
    )
    report = _audit(backend, events, shard_map)
    by_kind = {d.kind: d for d in report.differences}
    assert sorted(by_kind) == ["missing", "value"]
    value, missing = by_kind["value"], by_kind["missing"]
    assert (value.shard, value.slot) == (shard, slot)
    assert (missing.shard, missing.slot) == (shard_map.owner(slot), slot)
    assert f"on {shard} slot {slot}" in value.describe()
    assert value.to_dict()["shard"] == shard
    assert value.to_dict()["slot"] == slot
    assert "add -0.001234 to amount" in value.repair()
    assert "shardbill audit" not in missing.repair()
    assert "re-ingest" in missing.repair()
