"""``audit --repair``: rows changed behind the writer's back are re-derived from their events."""

from __future__ import annotations

from collections.abc import Sequence

from shardbill import AggregationWriter, Pipeline, ShardMap
from shardbill.audit import AuditReport, audit
from shardbill.repair import RepairReport, repair
from shardbill.rules import UsageEvent, comms
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.synthetic import Traffic
from tests.support import oracle
from tests.support.backends import Backend

SLOTS = 64


def _day(seed: int, n: int = 300) -> list[UsageEvent]:
    return list(Traffic(model="skewed", events=n, seed=seed, accounts=40).distinct())


def _write(backend: Backend, shard_map: ShardMap, events: Sequence[UsageEvent]) -> None:
    with AggregationWriter(
        shard_map=shard_map, provider=backend.provider, tables=billing_tables()
    ) as writer:
        writer.ensure_schema()
        assert Pipeline(engine=comms.engine(), writer=writer).process(events).ok


def _audit(backend: Backend, shard_map: ShardMap, events: Sequence[UsageEvent]) -> AuditReport:
    return audit(
        events,
        engine=comms.engine(),
        tables=billing_tables(),
        provider=backend.provider,
        shard_map=shard_map,
    )


def _repair(backend: Backend, shard_map: ShardMap, events: Sequence[UsageEvent]) -> RepairReport:
    return repair(
        events,
        engine=comms.engine(),
        tables=billing_tables(),
        provider=backend.provider,
        shard_map=shard_map,
    )


def _rows(backend: Backend, shard: str) -> list[tuple[object, ...]]:
    return backend.rows(
        shard,
        "SELECT `account_id`, `day`, `product`, `sb_slot` FROM `usage_daily` "
        "ORDER BY `account_id`, `day`, `product`",
    )


def _damage(backend: Backend) -> tuple[str, int]:
    """A changed amount, a deleted row and a made-up row, all on one shard; its name, a slot."""
    shard = next(s for s in backend.shards if len(_rows(backend, s)) >= 2)
    (a1, d1, p1, slot), (a2, d2, p2, _) = _rows(backend, shard)[:2]
    backend.execute(
        shard,
        "UPDATE `usage_daily` SET `amount` = `amount` + 1000000 "
        f"WHERE `account_id` = {a1} AND `day` = '{d1}' AND `product` = '{p1}'",
    )
    backend.execute(
        shard,
        f"DELETE FROM `usage_daily` WHERE `account_id` = {a2} AND `day` = '{d2}' "
        f"AND `product` = '{p2}'",
    )
    backend.execute(
        shard,
        "INSERT INTO `usage_daily` (`account_id`, `day`, `product`, `sb_slot`, `quantity`, "
        f"`amount`, `charges`) VALUES ({a1}, '2020-01-01', 'sms', {slot}, 1, 1, 1)",
    )
    return shard, int(str(slot))


def test_a_repair_re_derives_damaged_rows_and_a_second_run_does_nothing(
    backend: Backend,
) -> None:
    """Changed, deleted and made-up rows are corrected on their shard; then the audit is exact."""
    events = _day(1)
    shard_map = ShardMap.create(backend.shards, slots=SLOTS)
    _write(backend, shard_map, events)
    exact = oracle.actual_rows(backend)
    shard, _slot = _damage(backend)
    assert len(_audit(backend, shard_map, events).differences) == 3

    done = _repair(backend, shard_map, events)
    assert done.refused == ()
    assert sorted(a.action for a in done.actions) == ["delete", "insert", "update"]
    assert {a.shard for a in done.actions} == {shard}
    update = next(a for a in done.actions if a.action == "update")
    assert update.changes["amount"][0] == update.changes["amount"][1] + 1000000  # type: ignore[operator]
    assert _audit(backend, shard_map, events).exact
    assert oracle.actual_rows(backend) == exact  # every row as the writer left it

    again = _repair(backend, shard_map, events)
    assert again.actions == ()
    assert again.refused == ()
    assert oracle.actual_rows(backend) == exact


def test_a_slot_fed_by_events_the_audit_lacks_is_left_alone(backend: Backend) -> None:
    """The ledger holds an event missing from the audit: the slot's rows are not touched."""
    events = _day(2)
    shard_map = ShardMap.create(backend.shards, slots=SLOTS)
    _write(backend, shard_map, events)
    shard, slot = _damage(backend)
    damaged = oracle.actual_rows(backend)
    charges = comms.engine().price_batch(events).charges
    lacking = next(c.event_id for c in charges if shard_map.slot_for(c.account) == slot)
    done = _repair(backend, shard_map, [e for e in events if e.event_id != lacking])
    assert done.actions == ()
    (refusal,) = (r for r in done.refused if f"{shard} slot {slot}:" in r)
    assert f"its ledger holds 1 event(s) the audit does not (e.g. {lacking!r})" in refusal
    assert "audit every events file" in refusal
    assert oracle.actual_rows(backend) == damaged  # nothing changed


def test_events_never_written_are_ingested_not_patched(backend: Backend) -> None:
    """An audited event missing from the slot's ledger: refused, saying to ingest first."""
    events = _day(3)
    shard_map = ShardMap.create(backend.shards, slots=SLOTS)
    written = events[: len(events) // 2]
    _write(backend, shard_map, written)
    report = _repair(backend, shard_map, events)
    assert report.actions == ()
    assert report.refused
    assert all("ingest the files first" in r for r in report.refused if "slot" in r)
    _write(backend, shard_map, events)  # the rest, through the ledger: exactly once
    assert _audit(backend, shard_map, events).exact


def test_a_row_with_a_copy_on_another_shard_is_left_to_the_resharder(backend: Backend) -> None:
    """Split over two shards and off by one: correcting one copy would count the other twice."""
    events = _day(4)
    shard_map = ShardMap.create(backend.shards, slots=SLOTS)
    _write(backend, shard_map, events)
    shard = next(s for s in backend.shards if _rows(backend, s))
    other = next(s for s in backend.shards if s != shard)
    account, day, product, slot = _rows(backend, shard)[0]
    where = f"`account_id` = {account} AND `day` = '{day}' AND `product` = '{product}'"
    backend.execute(shard, f"UPDATE `usage_daily` SET `amount` = `amount` - 1001 WHERE {where}")
    backend.execute(
        other,
        "INSERT INTO `usage_daily` (`account_id`, `day`, `product`, `sb_slot`, `quantity`, "
        f"`amount`, `charges`) VALUES ({account}, '{day}', '{product}', {slot}, 0, 1000, 0)",
    )
    before = {
        s: backend.rows(s, f"SELECT `amount` FROM `usage_daily` WHERE {where}")
        for s in (shard, other)
    }
    kinds = sorted(d.kind for d in _audit(backend, shard_map, events).differences)
    assert kinds == ["misplaced", "value"]
    done = _repair(backend, shard_map, events)
    assert done.actions == ()
    assert len(done.refused) == 2
    assert all("left alone" in r for r in done.refused)
    after = {
        s: backend.rows(s, f"SELECT `amount` FROM `usage_daily` WHERE {where}")
        for s in (shard, other)
    }
    assert after == before


def test_a_repair_fills_the_history_of_what_migrate_added(backend: Backend) -> None:
    """A new table (empty) and a new measure (0): a repair with every event fills both."""
    from shardbill.migrate import migrate
    from tests.test_migrate import _grown

    events = _day(5)
    shard_map = ShardMap.create(backend.shards, slots=SLOTS)
    _write(backend, shard_map, events)
    grown = _grown()
    migrate(backend.provider, backend.shards, grown)

    def check() -> AuditReport:
        return audit(
            events,
            engine=comms.engine(),
            tables=grown,
            provider=backend.provider,
            shard_map=shard_map,
        )

    missing = check().differences
    assert missing
    assert {(d.table, d.kind) for d in missing} == {
        ("usage_by_account", "missing"),
        ("usage_daily", "value"),
    }
    assert {d.measure for d in missing if d.kind == "value"} == {"units"}
    done = repair(
        events, engine=comms.engine(), tables=grown, provider=backend.provider, shard_map=shard_map
    )
    assert done.refused == ()
    assert {(a.table, a.action) for a in done.actions} == {
        ("usage_by_account", "insert"),
        ("usage_daily", "update"),
    }
    assert check().exact
    counted = sum(
        int(n)
        for s in backend.shards
        for (n,) in backend.rows(s, "SELECT COALESCE(SUM(`charges`), 0) FROM `usage_by_account`")
    )
    assert counted == len(comms.engine().price_batch(events).charges)


def test_a_repair_re_keys_history_by_a_key_column_migrate_added(backend: Backend) -> None:
    """Rows under `existing` are re-derived per value of the new key; the totals are unchanged."""
    from shardbill.migrate import migrate
    from tests.test_migrate import UNKNOWN, _by_old_key, _daily, _keyed

    events = _day(6)
    shard_map = ShardMap.create(backend.shards, slots=SLOTS)
    _write(backend, shard_map, events)
    keyed = _keyed()
    migrate(backend.provider, backend.shards, keyed)
    totals = _by_old_key(_daily(backend))
    done = repair(
        events, engine=comms.engine(), tables=keyed, provider=backend.provider, shard_map=shard_map
    )
    assert done.refused == ()
    assert {a.action for a in done.actions} == {"delete", "insert"}
    assert audit(
        events, engine=comms.engine(), tables=keyed, provider=backend.provider, shard_map=shard_map
    ).exact
    assert UNKNOWN not in {k[3] for k in _daily(backend)}
    assert _by_old_key(_daily(backend)) == totals
