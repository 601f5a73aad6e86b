"""Online schema changes: a measure and a table added to live shards, resumably, writers on."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import pytest

from shardbill import AggregateTable, AggregationWriter, KeyColumn, Measure, Pipeline, ShardMap
from shardbill.aggregates import Account, BigInt, Count, Quantity
from shardbill.catalog import billing_tables
from shardbill.errors import SchemaError
from shardbill.migrate import MigrationStep, migrate, plan_migration
from shardbill.rules import UsageEvent, comms
from shardbill.workloads.synthetic import Traffic
from tests.support.backends import Backend
from tests.support.clock import recent_start
from tests.support.oracle import actual_rows, expected_rows

SLOTS = 64


def _day(seed: int, n: int = 300) -> list[UsageEvent]:
    return list(
        Traffic(model="skewed", events=n, seed=seed, accounts=40, start=recent_start()).distinct()
    )


def _grown() -> tuple[AggregateTable, ...]:
    """billing_tables() with a measure added to usage_daily and one new table."""
    old = billing_tables()
    daily = next(t for t in old if t.name == "usage_daily")
    grown_daily = attrs.evolve(
        daily, measures=(*daily.measures, Measure(name="units", value=Quantity(scale=0)))
    )
    per_account = AggregateTable(
        name="usage_by_account",
        keys=(KeyColumn(name="account_id", type=BigInt(), projection=Account()),),
        measures=(Measure(name="charges", value=Count()),),
    )
    return (*(grown_daily if t is daily else t for t in old), per_account)


def _write(backend: Backend, tables: Sequence[AggregateTable], events: list[UsageEvent]) -> None:
    with AggregationWriter(
        shard_map=ShardMap.create(backend.shards, slots=SLOTS),
        provider=backend.provider,
        tables=tables,
    ) as writer:
        writer.ensure_schema()
        assert Pipeline(engine=comms.engine(), writer=writer).process(events).ok


def test_a_measure_and_a_table_are_added_to_live_shards(backend: Backend) -> None:
    """Planned per shard, applied, 0 in existing rows; old rows unchanged; new writes count."""
    before = _day(1)
    _write(backend, billing_tables(), before)
    rows_before = actual_rows(backend)
    grown = _grown()

    steps = plan_migration(backend.provider, backend.shards, grown)
    assert {s.describe() for s in steps} == {
        *(f"{s}: add measure usage_daily.units (0 in existing rows)" for s in backend.shards),
        *(f"{s}: create table usage_by_account" for s in backend.shards),
    }
    heard: list[MigrationStep] = []
    assert migrate(backend.provider, backend.shards, grown, on_step=heard.append) == steps
    assert heard == steps
    assert plan_migration(backend.provider, backend.shards, grown) == []
    assert migrate(backend.provider, backend.shards, grown) == []  # a re-run changes nothing

    for shard in backend.shards:
        units = backend.rows(shard, "SELECT DISTINCT `units` FROM `usage_daily`")
        assert units in ([], [(0,)])
    assert actual_rows(backend) == rows_before  # the old tables' rows, the old columns

    after = _day(2)
    _write(backend, grown, after)  # the new declaration's writer accepts the migrated shards
    everything = comms.engine().price_batch([*before, *after]).charges
    assert actual_rows(backend) == expected_rows(everything)  # old measures exact throughout
    counted = sum(
        int(n)
        for shard in backend.shards
        for (n,) in backend.rows(
            shard, "SELECT COALESCE(SUM(`charges`), 0) FROM `usage_by_account`"
        )
    )
    assert counted == len(comms.engine().price_batch(after).charges)  # from the change on


def test_a_writer_with_the_new_tables_refuses_an_unmigrated_shard(backend: Backend) -> None:
    """Half-migrated: the new declaration's writer names the column and `shardbill migrate`."""
    _write(backend, billing_tables(), _day(3, 50))
    first = backend.shards[:1]
    migrate(backend.provider, first, _grown())  # stopped after one shard
    with pytest.raises(SchemaError) as refused:
        _write(backend, _grown(), _day(4, 50))
    message = str(refused.value)
    assert "'units' is missing" in message
    assert "shardbill migrate" in message
    assert repr(first[0]) + ":" not in message  # the migrated shard is fine
    assert migrate(backend.provider, backend.shards, _grown())  # resumed: the others
    assert plan_migration(backend.provider, backend.shards, _grown()) == []


def test_an_old_writer_keeps_writing_to_migrated_shards(backend: Backend) -> None:
    """Writers that do not know the new measure write on; their rows hold 0 in it."""
    _write(backend, billing_tables(), _day(5, 100))
    migrate(backend.provider, backend.shards, _grown())
    more = _day(6, 100)
    _write(backend, billing_tables(), more)
    for shard in backend.shards:
        assert backend.rows(shard, "SELECT COUNT(*) FROM `usage_daily` WHERE `units` <> 0") == [
            (0,)
        ]


def test_a_new_key_column_is_refused_with_the_reason(backend: Backend) -> None:
    """A key column would change every row's key: refused, naming shard, table and column."""
    _write(backend, billing_tables(), _day(7, 20))
    old = billing_tables()
    balance = next(t for t in old if t.name == "account_balance")
    keyed = attrs.evolve(
        balance, keys=(*balance.keys, KeyColumn(name="region", type=BigInt(), projection=Account()))
    )
    with pytest.raises(SchemaError, match=r"lacks key column 'region'.*a new table"):
        plan_migration(
            backend.provider, backend.shards, [keyed if t is balance else t for t in old]
        )
