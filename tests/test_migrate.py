"""Online schema changes: a measure and a table added to live shards, resumably, writers on."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest

from shardbill import AggregateTable, AggregationWriter, KeyColumn, Measure, Pipeline, ShardMap
from shardbill.errors import (
    CannotConnectError,
    CommitOutcomeUnknownError,
    ConfigurationError,
    SchemaError,
)
from shardbill.migrate import MigrationStep, migrate, plan_migration
from shardbill.pipeline import PipelineResult
from shardbill.providers import PooledProvider
from shardbill.resharding import MemoryMapStore, Resharder
from shardbill.retry import RetryPolicy
from shardbill.rules import Charge, PricedEvent, UsageEvent, comms
from shardbill.tables.aggregates import (
    Account,
    BigInt,
    Count,
    Dimension,
    Product,
    Quantity,
    VarChar,
)
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.synthetic import Traffic
from shardbill.writer import WriterSettings
from tests.support.backends import KINDS, Backend, make_backend
from tests.support.clock import recent_start
from tests.support.oracle import KEYS, MEASURES, actual_rows, expected_rows

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


def test_a_new_key_column_without_existing_is_refused_naming_the_fix(backend: Backend) -> None:
    """No rule for the rows that exist: refused, naming shard, table, column and existing=."""
    _write(backend, billing_tables(), _day(7, 20))
    old = billing_tables()
    balance = next(t for t in old if t.name == "account_balance")
    keyed = attrs.evolve(
        balance, keys=(*balance.keys, KeyColumn(name="region", type=BigInt(), projection=Account()))
    )
    declaration = [keyed if t is balance else t for t in old]
    with pytest.raises(SchemaError) as refused:
        migrate(backend.provider, backend.shards, declaration)
    message = str(refused.value)
    for shard in backend.shards:
        assert f"shard {shard!r}: table 'account_balance' lacks key column 'region'" in message
    assert "existing=" in message
    assert "nothing was changed" in message
    for shard in backend.shards:  # nothing changed: the column is not there
        assert "region" not in _columns(backend, shard, "account_balance")


# --------------------------------------------------------------------------- key columns


def _columns(backend: Backend, shard: str, table: str) -> list[str]:
    """The live table's column names, read directly."""
    if backend.kind == "sqlite":
        return [str(r[1]) for r in backend.rows(shard, f"PRAGMA table_info(`{table}`)")]
    return [
        str(r[0])
        for r in backend.rows(
            shard,
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
            f"AND TABLE_NAME = '{table}' ORDER BY ORDINAL_POSITION",
        )
    ]


UNKNOWN = "unknown"
DAILY_KEYS = ("account_id", "day", "product")
DAILY_MEASURES = ("quantity", "amount", "charges")


def _keyed(existing: str | None = UNKNOWN) -> tuple[AggregateTable, ...]:
    """billing_tables() with key column `country` added to usage_daily."""
    old = billing_tables()
    daily = next(t for t in old if t.name == "usage_daily")
    country = KeyColumn(
        name="country",
        type=VarChar(8),
        projection=Dimension("country", default="--"),
        existing=existing,
    )
    return tuple(attrs.evolve(t, keys=(*t.keys, country)) if t is daily else t for t in old)


def _daily(backend: Backend) -> dict[tuple[object, ...], list[int]]:
    """usage_daily rows by (account, day, product, country), read directly."""
    cols = ", ".join(f"`{c}`" for c in (*DAILY_KEYS, "country", *DAILY_MEASURES))
    out: dict[tuple[object, ...], list[int]] = {}
    for shard in backend.shards:
        for row in backend.rows(shard, f"SELECT {cols} FROM `usage_daily`"):
            key = tuple(row[:4])
            assert key not in out
            out[key] = [int(v) for v in row[4:]]
    return out


def _by_old_key(rows: dict[tuple[object, ...], list[int]]) -> dict[tuple[object, ...], list[int]]:
    """Rows of the new key summed over the new column: the old key's totals."""
    out: dict[tuple[object, ...], list[int]] = {}
    for key, values in rows.items():
        total = out.setdefault(key[:3], [0, 0, 0])
        for i, v in enumerate(values):
            total[i] += v
    return out


def _table_rows(backend: Backend, table: str) -> dict[tuple[object, ...], list[int]]:
    """One standard table's rows by key (its keys unchanged), read directly."""
    keys, measures = KEYS[table], MEASURES[table]
    cols = ", ".join(f"`{c}`" for c in (*keys, *measures))
    out: dict[tuple[object, ...], list[int]] = {}
    for shard in backend.shards:
        for row in backend.rows(shard, f"SELECT {cols} FROM `{table}`"):
            out[tuple(row[: len(keys)])] = [int(v) for v in row[len(keys) :]]
    return out


def _sums(backend: Backend, table: str, measures: Sequence[str]) -> list[int]:
    sql = (
        f"SELECT {', '.join(f'COALESCE(SUM(`{m}`), 0)' for m in measures)}, COUNT(*) FROM `{table}`"
    )
    totals = [0] * (len(measures) + 1)
    for shard in backend.shards:
        for row in backend.rows(shard, sql):
            totals = [t + int(v) for t, v in zip(totals, row, strict=True)]
    return totals


def test_a_key_column_is_added_with_the_existing_value(backend: Backend) -> None:
    """Every row kept exactly (sums equal), `existing` in the new column, new writes keyed by it."""
    before = _day(11)
    _write(backend, billing_tables(), before)
    rows_before = actual_rows(backend)
    sums_before = _sums(backend, "usage_daily", DAILY_MEASURES)

    steps = plan_migration(backend.provider, backend.shards, _keyed())
    assert [s.describe() for s in steps] == [
        f"{s}: add key column usage_daily.country ('unknown' in existing rows; the primary key "
        "grows)"
        for s in backend.shards
    ]
    assert [s.to_dict()["kind"] for s in steps] == ["key"] * len(backend.shards)
    assert migrate(backend.provider, backend.shards, _keyed()) == steps
    assert plan_migration(backend.provider, backend.shards, _keyed()) == []
    assert migrate(backend.provider, backend.shards, _keyed()) == []  # a re-run changes nothing

    assert _sums(backend, "usage_daily", DAILY_MEASURES) == sums_before
    assert actual_rows(backend) == rows_before  # every row, every measure, every other table
    migrated = _daily(backend)
    assert {k[3] for k in migrated} == {UNKNOWN}
    assert {k[:3]: v for k, v in migrated.items()} == rows_before["usage_daily"]
    if backend.kind == "sqlite":  # the rebuild left its index and no temporary table behind
        for shard in backend.shards:
            names = {
                n
                for (n,) in backend.rows(
                    shard, "SELECT name FROM sqlite_master WHERE name LIKE '%usage_daily%'"
                )
            }
            assert names == {"usage_daily", "usage_daily_sb_slot_idx"}

    after = _day(12)
    _write(backend, _keyed(), after)  # the new declaration's writer accepts the shards
    charges = comms.engine().price_batch(after).charges
    rows = _daily(backend)
    assert {k: v for k, v in rows.items() if k[3] == UNKNOWN} == migrated  # old rows untouched
    counted: dict[tuple[object, ...], int] = {}
    for c in charges:
        key = (c.account, c.time.date().isoformat(), c.product, c.dimensions.get("country", "--"))
        counted[key] = counted.get(key, 0) + 1
    assert {k: v[2] for k, v in rows.items() if k[3] != UNKNOWN} == counted  # keyed by country
    everything = comms.engine().price_batch([*before, *after]).charges
    expected = expected_rows(everything)
    assert _by_old_key(rows) == expected["usage_daily"]
    for table in ("usage_monthly", "usage_by_country", "account_balance"):
        assert _table_rows(backend, table) == expected[table]


def test_writers_of_both_declarations_after_a_key_column(backend: Backend) -> None:
    """A writer running since before goes on (MariaDB: into `existing`; SQLite: fails, no change).

    A writer started after the migration with the old declaration is refused,
    naming the key column it lacks; the new declaration's writer counts
    everything exactly once, including what the old writer could not write.
    """
    first, second, third = _day(21, 150), _day(22, 150), _day(23, 150)
    shard_map = ShardMap.create(backend.shards, slots=SLOTS)
    with AggregationWriter(
        shard_map=shard_map, provider=backend.provider, tables=billing_tables()
    ) as old:
        old.ensure_schema()
        pipeline = Pipeline(engine=comms.engine(), writer=old)
        assert pipeline.process(first).ok
        migrate(backend.provider, backend.shards, _keyed())
        if backend.kind == "sqlite":
            before = _daily(backend)
            failed = pipeline.process(second)
            assert not failed.ok
            assert not failed.write.done  # no event of the batch is claimed anywhere
            assert failed.write.failures
            assert all("ON CONFLICT" in str(e) for e in failed.write.failures.values())
            assert _daily(backend) == before  # nothing of the failed batch was applied
        else:
            assert pipeline.process(second).ok
            assert {k[3] for k in _daily(backend)} == {UNKNOWN}  # the DEFAULT
    with pytest.raises(SchemaError, match=r"has key column\(s\) \['country'\] that this"):
        _write(backend, billing_tables(), third)  # a new writer must know the key
    _write(backend, _keyed(), third)
    with AggregationWriter(shard_map=shard_map, provider=backend.provider, tables=_keyed()) as new:
        replay = Pipeline(engine=comms.engine(), writer=new).process(second)
    if backend.kind == "sqlite":  # the old writer could not write it: applied now
        assert replay.ok
        assert replay.write.applied_events == {e.event_id for e in second}
    else:
        # Applied by the old writer after the migration: its fingerprints are of the old
        # declaration, which its schema check recorded, so the replay is a duplicate.
        assert replay.write.duplicate_events == {e.event_id for e in second}
        assert not replay.write.conflict_events
    everything = comms.engine().price_batch([*first, *second, *third]).charges
    assert _by_old_key(_daily(backend)) == expected_rows(everything)["usage_daily"]


def test_a_key_column_migration_resumes_after_a_stop(backend: Backend) -> None:
    """Stopped after one shard: new writers refuse the rest; a re-run does only the rest."""
    _write(backend, billing_tables(), _day(31, 200))
    rows_before = actual_rows(backend)

    def stop(step: MigrationStep) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        migrate(backend.provider, backend.shards, _keyed(), on_step=stop)
    with pytest.raises(SchemaError) as refused:
        _write(backend, _keyed(), _day(32, 20))
    message = str(refused.value)
    assert "column 'country' is missing" in message
    assert "shardbill migrate" in message
    assert f"shard {backend.shards[0]!r}" not in message  # done before the stop
    rest = plan_migration(backend.provider, backend.shards, _keyed())
    assert [s.shard for s in rest] == list(backend.shards[1:])
    assert migrate(backend.provider, backend.shards, _keyed()) == rest
    assert actual_rows(backend) == rows_before
    assert {k[3] for k in _daily(backend)} == {UNKNOWN}


def test_existing_must_fit_the_key_column() -> None:
    """existing= is checked when declared, naming the column and the value."""
    with pytest.raises(ConfigurationError, match=r"key column 'country': existing=5"):
        KeyColumn(name="country", type=VarChar(8), projection=Product(), existing=5)
    with pytest.raises(ConfigurationError, match="existing='far too long'"):
        KeyColumn(name="country", type=VarChar(8), projection=Product(), existing="far too long")
    assert KeyColumn(name="n", type=BigInt(), projection=Account(), existing=0).existing == 0


def test_a_replay_after_a_measure_migration_is_a_duplicate(backend: Backend) -> None:
    """An event applied before a migration and delivered again after it is a duplicate."""
    day = _day(41, 30)
    _write(backend, billing_tables(), day)
    migrate(backend.provider, backend.shards, _grown())
    with AggregationWriter(
        shard_map=ShardMap.create(backend.shards, slots=SLOTS),
        provider=backend.provider,
        tables=_grown(),
    ) as writer:
        replay = Pipeline(engine=comms.engine(), writer=writer).process(day)
    assert replay.write.duplicate_events == {e.event_id for e in day}


class _LosesFirstCommits:
    """Wraps a provider: on each shard, the first block that adds ledger rows commits, then
    reports its COMMIT lost (as a connection dropped during COMMIT would)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.lost: set[str] = set()

    def _ledger_rows(self, shard: str) -> int:
        return int(self.backend.rows(shard, "SELECT COUNT(*) FROM shardbill_ledger")[0][0])

    @contextlib.contextmanager
    def connection(self, shard: str, *, readonly: bool = False) -> Iterator[Any]:
        before = self._ledger_rows(shard)
        with self.backend.provider.connection(shard, readonly=readonly) as conn:
            yield conn
        if shard not in self.lost and self._ledger_rows(shard) > before:
            self.lost.add(shard)
            raise CommitOutcomeUnknownError("test: the COMMIT's answer was lost", shard=shard)

    def close(self) -> None:
        pass


def test_a_replay_beside_a_lost_commit_after_a_migration_is_a_duplicate(backend: Backend) -> None:
    """A call's COMMIT is lost, past the retry budget: the ledger is asked once more, and an
    event applied before the migration is recognised there as a duplicate (under the
    declaration it was applied with), not reported failed."""
    day = _day(43, 20)
    _write(backend, billing_tables(), day)
    migrate(backend.provider, backend.shards, _grown())
    fresh = _day(44, 20)
    lossy = _LosesFirstCommits(backend)
    with AggregationWriter(
        shard_map=ShardMap.create(backend.shards, slots=SLOTS),
        provider=lossy,
        tables=_grown(),
        settings=WriterSettings(retry=RetryPolicy(max_attempts=1)),
    ) as writer:
        result = Pipeline(engine=comms.engine(), writer=writer).process([*day, *fresh])
    assert lossy.lost == set(backend.shards)
    assert result.write.duplicate_events == {e.event_id for e in day}
    assert result.write.applied_events == {e.event_id for e in fresh}
    assert not result.write.retry


# ------------------------------------------------- replays across a schema change (issue 22)


def _with_units(tables: Sequence[AggregateTable]) -> tuple[AggregateTable, ...]:
    """``tables`` with measure `units` added to usage_daily."""
    units = Measure(name="units", value=Quantity(scale=0))
    return tuple(
        attrs.evolve(t, measures=(*t.measures, units)) if t.name == "usage_daily" else t
        for t in tables
    )


def _with_table(tables: Sequence[AggregateTable]) -> tuple[AggregateTable, ...]:
    """``tables`` with table usage_by_account added."""
    return (*tables, next(t for t in _grown() if t.name == "usage_by_account"))


def _with_country(tables: Sequence[AggregateTable]) -> tuple[AggregateTable, ...]:
    """``tables`` with key column `country` (existing='unknown') added to usage_daily."""
    country = next(k for t in _keyed() for k in t.keys if k.name == "country")
    return tuple(
        attrs.evolve(t, keys=(*t.keys, country)) if t.name == "usage_daily" else t for t in tables
    )


MIGRATIONS = {
    "measure": [_with_units],
    "table": [_with_table],
    "key-column": [_with_country],
    "measure-then-key-column-then-table": [_with_units, _with_country, _with_table],
}


def _process(
    backend: Backend, tables: Sequence[AggregateTable], events: list[UsageEvent]
) -> PipelineResult:
    with AggregationWriter(
        shard_map=ShardMap.create(backend.shards, slots=SLOTS),
        provider=backend.provider,
        tables=tables,
    ) as writer:
        return Pipeline(engine=comms.engine(), writer=writer).process(events)


def _snapshot(backend: Backend, tables: Sequence[AggregateTable]) -> dict[str, list[Any]]:
    """Every row of every table, as stored, per shard (read directly)."""
    return {
        f"{shard}.{t.name}": sorted(backend.rows(shard, f"SELECT * FROM `{t.name}`"))
        for shard in backend.shards
        for t in tables
    }


@pytest.mark.parametrize("kind", sorted(MIGRATIONS))
def test_a_replay_after_each_kind_of_migration_is_a_duplicate(backend: Backend, kind: str) -> None:
    """Events applied under every declaration of a migration chain replay as duplicates after
    the last one, change no row, and a really changed event is still a conflict."""
    tables = billing_tables()
    written = [_day(51, 40)]
    _write(backend, tables, written[0])
    for n, grow in enumerate(MIGRATIONS[kind]):
        tables = grow(tables)
        migrate(backend.provider, backend.shards, tables)
        written.append(_day(52 + n, 40))
        _write(backend, tables, written[-1])
    rows = _snapshot(backend, tables)
    for events in written:
        replay = _process(backend, tables, events)
        assert replay.write.duplicate_events == {e.event_id for e in events}
        assert not replay.write.conflict_events
    assert _snapshot(backend, tables) == rows  # nothing applied twice

    first = written[0]
    more = [attrs.evolve(e, quantity=e.quantity + 1) for e in first[:5]]
    sms = [e for e in first[5:] if e.product == "sms"][:5]  # other products ignore the country
    moved = [attrs.evolve(e, dimensions={**e.dimensions, "country": "ZZ"}) for e in sms]
    same = [e for e in first if e not in first[:5] and e not in sms]
    changed = _process(backend, tables, [*more, *moved, *same])
    assert len(moved) == 5
    assert changed.write.conflict_events == {e.event_id for e in [*more, *moved]}
    assert changed.write.duplicate_events == {e.event_id for e in same}
    assert _snapshot(backend, tables) == rows


def test_a_shard_made_before_the_history_gets_it_from_migrate(backend: Backend) -> None:
    """A shard without shardbill_declarations (made before it existed) is refused by writers;
    `migrate` creates it, records the declaration before its steps (derived) and after them,
    even when stopped between steps and run again; replays are then duplicates."""
    day = _day(61, 40)
    _write(backend, billing_tables(), day)
    for shard in backend.shards:
        backend.execute(shard, "DROP TABLE `shardbill_declarations`")
    with pytest.raises(SchemaError, match="shardbill_declarations"):
        _process(backend, billing_tables(), _day(62, 5))

    def stop(step: MigrationStep) -> None:
        if step.table == "usage_daily":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        migrate(backend.provider, backend.shards, _grown(), on_step=stop)
    migrate(backend.provider, backend.shards, _grown())
    for shard in backend.shards:
        origins = backend.rows(shard, "SELECT `origin` FROM `shardbill_declarations`")
        assert sorted(o for (o,) in origins) == ["declared", "derived"]
    replay = _process(backend, _grown(), day)
    assert replay.write.duplicate_events == {e.event_id for e in day}
    assert not replay.write.conflict_events


class _Unreachable:
    """Wraps a provider: connections to ``shard`` are refused."""

    def __init__(self, inner: PooledProvider, shard: str) -> None:
        self.inner = inner
        self.shard = shard

    @contextlib.contextmanager
    def connection(self, shard: str, *, readonly: bool = False) -> Iterator[Any]:
        if shard == self.shard:
            raise CannotConnectError("test: unreachable", errno=2003, shard=shard)
        with self.inner.connection(shard, readonly=readonly) as conn:
            yield conn

    def close(self) -> None:
        pass


def _spread_event(event_id: str, accounts: Sequence[int]) -> PricedEvent:
    """An event with one charge for each of ``accounts``."""
    charges = tuple(
        Charge(
            event_id=event_id,
            account=account,
            product="sms",
            quantity=Decimal(2),
            amount=Decimal("0.25"),
            currency="USD",
            time=recent_start(),
            rule="test",
            rule_version="1",
            part=part,
            parts=len(accounts),
        )
        for part, account in enumerate(accounts)
    )
    return PricedEvent(event_id=event_id, time=recent_start(), charges=charges)


def test_a_spread_event_half_applied_before_a_migration_completes_after_it(
    backend: Backend,
) -> None:
    """An event whose identity claim (of the whole event) committed under the old declaration
    and whose part on another shard did not: its replay after the migration finds the claim a
    duplicate and applies the rest once; a replay after that is a duplicate everywhere."""
    shard_map = ShardMap.create(backend.shards, slots=SLOTS)
    home_of = {s: [] for s in backend.shards}  # type: dict[str, list[str]]
    for n in range(400):
        home_of[shard_map.owner(shard_map.slot_for(f"spread-{n}"))].append(f"spread-{n}")
    home, other, down = backend.shards

    def account(where: Callable[[int], bool]) -> int:
        return next(a for a in range(1, 10_000) if where(a))

    claim = shard_map.slot_for(home_of[home][0])
    on_claim = account(lambda a: shard_map.slot_for(a) == claim)  # money on the claim's slot
    on_down = account(lambda a: shard_map.shard_for(a) == down)
    on_other = account(lambda a: shard_map.shard_for(a) == other)
    with_rows = _spread_event(home_of[home][0], [on_claim, on_down])
    without = _spread_event(home_of[home][1], [on_other, on_down])  # none on the claim's shard
    events = [with_rows, without]
    _write(backend, billing_tables(), [])
    with AggregationWriter(
        shard_map=shard_map,
        provider=_Unreachable(backend.provider, down),
        tables=billing_tables(),
        settings=WriterSettings(retry=RetryPolicy(max_attempts=1)),
    ) as old:
        half = old.write(events)
    assert half.failed_events == {e.event_id for e in events}
    for event in events:  # the claims committed, the parts on the unreachable shard did not
        count = f"SELECT COUNT(*) FROM `shardbill_ledger` WHERE `event_id` = '{event.event_id}'"
        assert backend.rows(home, count) == [(1,)]
        assert backend.rows(down, count) == [(0,)]
    migrate(backend.provider, backend.shards, _grown())
    with AggregationWriter(shard_map=shard_map, provider=backend.provider, tables=_grown()) as new:
        rest = new.write(events)
        again = new.write(events)
    assert rest.applied_events == {e.event_id for e in events}, rest
    assert not rest.conflict_events
    assert again.duplicate_events == {e.event_id for e in events}
    charges = [c for e in events for c in e.charges]
    assert actual_rows(backend) == expected_rows(charges)  # every part once, none twice


@pytest.fixture(params=KINDS)
def four(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Four shards (s0..s3); the first map uses three of them."""
    yield from make_backend(request.param, 4, tmp_path, request)


def test_a_shard_a_reshard_adds_gets_the_declaration_history(four: Backend) -> None:
    """Ledger rows a reshard copies keep their fingerprints: the new shard gets the history
    they were made under, so replays of events applied before a migration stay duplicates."""
    store = MemoryMapStore(ShardMap.create(["s0", "s1", "s2"], slots=SLOTS))
    day = _day(71, 80)
    with AggregationWriter(shard_map=store, provider=four.provider, tables=billing_tables()) as w:
        w.ensure_schema()
        assert Pipeline(engine=comms.engine(), writer=w).process(day).ok
    migrate(four.provider, ["s0", "s1", "s2"], _grown())
    target = store.load().add_shard("s3")
    progress = Resharder(store=store, provider=four.provider, tables=_grown()).run(target)
    assert four.rows("s3", "SELECT COUNT(*) FROM `shardbill_ledger`") != [(0,)]
    assert len(four.rows("s3", "SELECT `version` FROM `shardbill_declarations`")) == 2
    assert progress.slots_finished > 0
    with AggregationWriter(shard_map=store, provider=four.provider, tables=_grown()) as writer:
        replay = Pipeline(engine=comms.engine(), writer=writer).process(day)
    assert replay.write.duplicate_events == {e.event_id for e in day}
    assert not replay.write.conflict_events


def test_each_writer_records_its_declaration_so_a_later_one_recognises_its_events(
    backend: Backend,
) -> None:
    """A writer declaring fewer tables than the shards hold needs no migration; its schema
    check records its declaration, so the full declaration's writer finds its events
    duplicates. Measures reordered give the full declaration's shape: the two cannot be
    told apart, so events of the one replayed by the other stay conflicts (never taken
    for duplicates), while events of the smaller declaration are still recognised."""
    tables = billing_tables()
    _write(backend, tables, [])
    fewer = tuple(t for t in tables if t.name != "account_balance")
    day = _day(81, 30)
    assert _process(backend, fewer, day).ok
    for shard in backend.shards:
        assert len(backend.rows(shard, "SELECT `version` FROM `shardbill_declarations`")) == 2
    replay = _process(backend, tables, day)
    assert replay.write.duplicate_events == {e.event_id for e in day}

    daily = next(t for t in tables if t.name == "usage_daily")
    swapped = attrs.evolve(
        daily, measures=(daily.measures[1], daily.measures[0], daily.measures[2])
    )
    reordered = tuple(swapped if t is daily else t for t in tables)
    full = _day(82, 30)
    assert _process(backend, tables, full).ok
    rows = _snapshot(backend, tables)
    again = _process(backend, reordered, [*day, *full])
    assert again.write.duplicate_events == {e.event_id for e in day}
    assert again.write.conflict_events == {e.event_id for e in full}
    assert _snapshot(backend, tables) == rows
