"""The aggregation writer on SQLite and on real MariaDB (PyMySQL and mysqlclient).

Every test compares what the shards hold with an independent oracle
(tests/support/oracle.py), never with the writer's own arithmetic.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest

from shardbill import ShardMap
from shardbill.errors import FencedError, SchemaError
from shardbill.observe import Stats
from shardbill.rules import Charge
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter, WriterSettings
from tests.support.backends import Backend
from tests.support.oracle import actual_rows, expected_rows

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def make_charges(
    seed: int, events: int, *, accounts: int = 40, start: dt.datetime = START
) -> list[Charge]:
    """A seeded stream over 45 days from ``start``: 1-2 charges per event (a second part
    bills a parent account)."""
    rng = random.Random(seed)
    charges = []
    for i in range(events):
        account = rng.randrange(1, accounts + 1)
        when = start + dt.timedelta(minutes=rng.randrange(0, 60 * 24 * 45))
        product = rng.choice(["sms", "voice", "email"])
        country = rng.choice(["US", "DE", "FR", None])
        dims = {"country": country} if country else {}
        amount = Decimal(2 * rng.randrange(1, 25_000)).scaleb(-6)
        base = {
            "event_id": f"e{seed}-{i}",
            "product": product,
            "quantity": rng.randrange(1, 20),
            "currency": "USD",
            "time": when,
            "rule": "test",
            "rule_version": "1",
            "dimensions": dims,
        }
        if rng.random() < 0.2:  # two parts: the account and its parent
            charges.append(Charge(account=account, amount=amount, part=0, parts=2, **base))
            charges.append(
                Charge(account=1000 + account % 3, amount=amount / 2, part=1, parts=2, **base)
            )
        else:
            charges.append(Charge(account=account, amount=amount, **base))
    return charges


def _writer(backend: Backend, shard_map: ShardMap, **kw: object) -> AggregationWriter:
    writer = AggregationWriter(
        shard_map=shard_map,
        provider=backend.provider,
        tables=billing_tables(),
        **kw,  # type: ignore[arg-type]
    )
    writer.ensure_schema()
    return writer


def test_totals_match_the_oracle_and_rows_sit_on_their_owner(backend: Backend) -> None:
    """A batch lands exactly: every row equals the oracle and lives on the shard owning its slot."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    charges = make_charges(1, 400)
    with _writer(backend, shard_map) as writer:
        result = writer.write(charges)
    assert result.ok
    assert result.applied_events == {c.event_id for c in charges}

    def owner_check(shard: str, key: tuple[object, ...], slot: int) -> None:
        assert shard_map.slot_for(key[0]) == slot  # type: ignore[arg-type]
        assert shard_map.owner(slot) == shard

    assert actual_rows(backend, slot_check=owner_check) == expected_rows(charges)


def test_replaying_batches_in_any_order_changes_no_total(backend: Backend) -> None:
    """Replays (whole, partial, shuffled, within one call and across calls) add nothing."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    charges = make_charges(2, 300)
    rng = random.Random(2)
    with _writer(backend, shard_map) as writer:
        first = writer.write(charges[:150])
        assert first.ok
        by_event: dict[str, list[Charge]] = {}
        for c in charges:
            by_event.setdefault(c.event_id, []).append(c)
        events = list(by_event)
        rng.shuffle(events)
        replay = [c for e in events for c in by_event[e]]
        second = writer.write(replay)
        third = writer.write(replay[: len(replay) // 2])
    assert second.ok
    assert third.ok
    assert third.applied_events == frozenset()
    assert len(third.duplicate_events) > 0
    assert actual_rows(backend) == expected_rows(charges)


def test_same_id_with_different_content_is_a_conflict_not_applied(backend: Backend) -> None:
    """An event id reused for different charges is reported as a conflict and changes nothing."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    charges = make_charges(3, 50)
    with _writer(backend, shard_map) as writer:
        assert writer.write(charges).ok
        original = charges[0]
        altered = Charge(
            event_id=original.event_id,
            account=original.account,
            product=original.product,
            quantity=original.quantity,
            amount=original.amount + Decimal("1"),
            currency=original.currency,
            time=original.time,
            rule="test",
            rule_version="2",
            dimensions=original.dimensions,
        )
        result = writer.write([altered])
    assert result.conflict_events == {original.event_id}
    assert result.applied_events == frozenset()
    assert actual_rows(backend) == expected_rows(charges)


def test_an_invalid_charge_rejects_its_event_and_the_rest_is_written(backend: Backend) -> None:
    """A charge that cannot be stored rejects its whole event before SQL; others are written."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    charges = make_charges(4, 60)
    good_parent = charges[0]
    bad = Charge(  # a string account in a BIGINT column
        event_id=good_parent.event_id,
        account="acct-x",
        product="sms",
        quantity=1,
        amount=Decimal("0.01"),
        currency="USD",
        time=START,
        rule="test",
        rule_version="1",
    )
    with _writer(backend, shard_map) as writer:
        result = writer.write([*charges, bad])
    assert [r.event_id for r in result.rejected] == [good_parent.event_id]
    assert "account_id" in result.rejected[0].reason
    assert result.retry == frozenset()
    assert result.done == {c.event_id for c in charges} - {good_parent.event_id}
    survivors = [c for c in charges if c.event_id != good_parent.event_id]
    assert actual_rows(backend) == expected_rows(survivors)


def test_schema_mismatch_refuses_to_write_and_names_the_column(backend: Backend) -> None:
    """A live column whose type differs from the spec stops the writer with a precise error."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    with _writer(backend, shard_map):
        pass
    backend.execute(backend.shards[1], "DROP TABLE `usage_daily`")
    backend.execute(
        backend.shards[1],
        "CREATE TABLE `usage_daily` (`account_id` BIGINT NOT NULL, `day` INT NOT NULL,"
        " `product` VARCHAR(64) NOT NULL, `sb_slot` INT NOT NULL, `quantity` BIGINT NOT NULL,"
        " `amount` BIGINT NOT NULL, `charges` BIGINT NOT NULL,"
        " PRIMARY KEY (`account_id`, `day`, `product`))",
    )
    writer = AggregationWriter(
        shard_map=shard_map, provider=backend.provider, tables=billing_tables()
    )
    with writer, pytest.raises(SchemaError, match=r"(?i)table 'usage_daily' column 'day' is int"):
        writer.write(make_charges(9, 20))


def test_a_missing_table_is_reported_with_the_fix(backend: Backend) -> None:
    """Without the schema, the writer says which table is missing and how to create it."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    writer = AggregationWriter(
        shard_map=shard_map, provider=backend.provider, tables=billing_tables()
    )
    with writer, pytest.raises(SchemaError, match="shardbill init"):
        writer.write(make_charges(5, 3))


def test_applying_the_schema_twice_is_a_no_op(backend: Backend) -> None:
    """ensure_schema twice keeps data and ownership as they were."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    charges = make_charges(6, 40)
    with _writer(backend, shard_map) as writer:
        writer.write(charges)
        writer.ensure_schema()
    owned = sum(
        len(backend.rows(s, "SELECT `sb_slot` FROM `shardbill_slots`")) for s in backend.shards
    )
    assert owned == 64
    assert actual_rows(backend) == expected_rows(charges)


@pytest.mark.parametrize("forwarding", [True, False], ids=["forwarded", "reloaded"])
def test_a_stale_map_is_fenced_and_rerouted(backend: Backend, forwarding: bool) -> None:
    """A writer holding an old map is refused by the old owner and lands on the new one.

    With a forwarding address in the old owner's ownership row, the writer
    follows it; without one, it goes where the reloaded map says.
    """
    old = ShardMap.create(backend.shards, slots=64)
    new = old.remove_shard(backend.shards[0])
    charges = make_charges(7, 200)
    with _writer(backend, old):
        pass
    # Hand slot ownership over as a finished reshard would (no rows to move yet).
    for move in old.plan_to(new).moves:
        peer = f"'{move.target}'" if forwarding else "NULL"
        backend.execute(
            move.source,
            f"UPDATE `shardbill_slots` SET `state` = 'gone', `peer` = {peer}"
            f" WHERE `sb_slot` = {move.slot}",
        )
        backend.execute(
            move.target,
            "INSERT INTO `shardbill_slots` (`sb_slot`, `state`, `epoch`, `peer`)"
            f" VALUES ({move.slot}, 'owned', {new.epoch}, NULL)",
        )

    class Store:
        """Hands out the old map first (a long-running writer's start), the new one after."""

        def __init__(self) -> None:
            self.maps = [old, new]

        def load(self) -> ShardMap:
            return self.maps.pop(0) if len(self.maps) > 1 else self.maps[0]

    stats = Stats()
    stale = AggregationWriter(
        shard_map=Store(), provider=backend.provider, tables=billing_tables(), observer=stats
    )
    assert stale.shard_map == old
    with stale:
        result = stale.write(charges)
    assert result.ok
    assert stats.map_reloads >= 1  # it has a map source: later batches route directly
    assert backend.rows(backend.shards[0], "SELECT COUNT(*) FROM `usage_daily`") == [(0,)]
    assert actual_rows(backend) == expected_rows(charges)


def test_without_a_map_source_a_fenced_shard_fails_its_events_only(backend: Backend) -> None:
    """With a plain map, fenced units are reported failed (to retry), others still commit."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    charges = make_charges(8, 100)
    with _writer(backend, shard_map) as writer:
        backend.execute(backend.shards[2], "DELETE FROM `shardbill_slots`")
        result = writer.write(charges)
    assert not result.ok
    assert isinstance(result.shards[backend.shards[2]].error, FencedError)
    failed = result.failed_events
    assert failed
    assert result.applied_events.isdisjoint(failed)
    assert result.applied_events
    assert backend.rows(backend.shards[2], "SELECT COUNT(*) FROM `shardbill_ledger`") == [(0,)]


def test_settings_are_validated() -> None:
    """Writer settings refuse nonsense with a ValueError naming the field."""
    with pytest.raises(ValueError, match="max_workers"):
        WriterSettings(max_workers=0)


def test_reader_point_and_fan_out_reads_are_exact_decimals(backend: Backend) -> None:
    """Routed reads and merged fan-out totals equal the oracle, as Decimals at the scale."""
    from shardbill.reader import Reader

    shard_map = ShardMap.create(backend.shards, slots=64)
    charges = make_charges(10, 300)
    with _writer(backend, shard_map) as writer:
        assert writer.write(charges).ok
    reader = Reader(shard_map=shard_map, provider=backend.provider, tables=billing_tables())
    expected = expected_rows(charges)

    account = charges[0].account
    got = reader.rows("account_balance", account)
    (want,) = [v for k, v in expected["account_balance"].items() if k[0] == account]
    assert [r.measures for r in got] == [
        {
            "amount": Decimal(want[0]).scaleb(-6),
            "charges": want[1],
            "largest_charge": Decimal(want[2]).scaleb(-6),
        }
    ]

    month = dt.date(2026, 11, 1)
    totals = reader.totals("usage_monthly", group_by=["product"], where={"month": month})
    want_totals: dict[str, list[int]] = {}
    for (_, m, product, _), values in expected["usage_monthly"].items():
        if m == month.isoformat():
            acc = want_totals.setdefault(product, [0, 0, 0])
            for i in range(3):
                acc[i] += values[i]
    assert {k[0]: v for k, v in totals.items()} == {
        p: {
            "quantity": Decimal(v[0]).scaleb(-6),
            "amount": Decimal(v[1]).scaleb(-6),
            "charges": v[2],
        }
        for p, v in want_totals.items()
    }
    grand = reader.totals("account_balance", group_by=[])
    assert grand[()]["amount"] == sum(
        (Decimal(v[0]).scaleb(-6) for v in expected["account_balance"].values()), Decimal(0)
    )


def test_reader_refuses_unknown_columns_before_any_sql(backend: Backend) -> None:
    """A filter or group-by column that is not a key column is an error naming it."""
    from shardbill.errors import InvalidInputError
    from shardbill.reader import Reader

    reader = Reader(
        shard_map=ShardMap.create(backend.shards, slots=64),
        provider=backend.provider,
        tables=billing_tables(),
    )
    with pytest.raises(InvalidInputError, match="'amount; DROP TABLE x'"):
        reader.totals("usage_monthly", group_by=["amount; DROP TABLE x"])
    with pytest.raises(InvalidInputError, match="'nope'"):
        reader.rows("usage_monthly", 1, where={"nope": 1})


def test_prune_deletes_only_ledger_rows_older_than_retention(backend: Backend) -> None:
    """prune removes the ledger rows of events past the horizon, in chunks, keeping recent
    ones and every total; a replay inside the horizon is a duplicate, one past it refused."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    old = make_charges(11, 120)
    recent = make_charges(12, 80, start=START + dt.timedelta(days=100))
    now = [(START + dt.timedelta(days=50)).timestamp()]
    settings = WriterSettings(ledger_retention_days=60)
    with _writer(backend, shard_map, settings=settings, clock=lambda: now[0]) as writer:
        assert writer.write(old).ok
        now[0] = (START + dt.timedelta(days=150)).timestamp()  # old events: > 100 days old
        assert writer.write(recent).ok
        deleted = writer.prune(chunk_rows=7)
        kept_ids = {
            r[0]
            for s in backend.shards
            for r in backend.rows(s, "SELECT `event_id` FROM `shardbill_ledger`")
        }
        assert writer.write(recent).duplicate_events == {c.event_id for c in recent}
        assert writer.write(old).rejected_events == {c.event_id for c in old}
    assert sum(deleted.values()) > 0
    assert kept_ids == {c.event_id for c in recent}
    assert actual_rows(backend) == expected_rows(old + recent)


def test_write_stream_keeps_batch_order_and_exact_totals(backend: Backend) -> None:
    """Pipelined batches (several in flight, overlapping rows and replays) land exactly."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    charges = make_charges(13, 300, accounts=8)
    by_event: dict[str, list[Charge]] = {}
    for c in charges:
        by_event.setdefault(c.event_id, []).append(c)
    events = list(by_event)
    batches = [[c for e in events[i : i + 25] for c in by_event[e]] for i in range(0, 300, 25)]
    batches.append(batches[0])  # a replay while others are in flight
    with _writer(backend, shard_map) as writer:
        results = list(writer.write_stream(batches, depth=3))
    assert len(results) == len(batches)
    assert all(r.ok for r in results)
    assert results[-1].applied_events == frozenset()
    for batch, result in zip(batches[:-1], results, strict=False):
        assert result.applied_events == {c.event_id for c in batch}
    assert actual_rows(backend) == expected_rows(charges)
