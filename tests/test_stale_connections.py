"""After a server restart: a read, and a writer's ensure_schema(), are not an error.

A restart (or a failover) kills every pooled connection at once. The first
read meets a dead one: the pool discards it and has the other idle ones
pinged before their next loan, and the reader runs the read again, within its
retry policy, so the caller gets the rows; ``ensure_schema()`` runs each
shard's (idempotent) step again the same way. On MariaDB through both drivers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shardbill import Reader, ShardMap
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter
from tests.support.backends import KINDS, Backend, make_backend
from tests.support.oracle import expected_rows
from tests.test_writer import make_charges


@pytest.fixture(params=KINDS[1:])
def mariadb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Two shards, each a database on the test server."""
    yield from make_backend(request.param, 2, tmp_path, request)


def _kill_pooled(backend: Backend) -> int:
    """KILL CONNECTION every connection to the shards' databases but this admin one."""
    assert backend.server is not None
    admin = backend.server.connect()
    killed = 0
    try:
        with admin.cursor() as cur:  # type: ignore[attr-defined]
            names = ", ".join(f"'{db}'" for db in backend.locations.values())
            cur.execute(
                "SELECT ID FROM information_schema.PROCESSLIST "
                f"WHERE DB IN ({names}) AND ID <> CONNECTION_ID()"
            )
            for (thread,) in cur.fetchall():
                cur.execute(f"KILL CONNECTION {int(thread)}")
                killed += 1
    finally:
        admin.close()  # type: ignore[attr-defined]
    return killed


def test_a_read_after_every_pooled_connection_died_returns_the_rows(mariadb: Backend) -> None:
    """Totals and a point read, each right after every pooled connection was killed (as a
    restart would), give the rows written before, without raising."""
    charges = make_charges(401, 120, accounts=15)
    shard_map = ShardMap.create(list(mariadb.shards), slots=16)
    with AggregationWriter(
        shard_map=shard_map, provider=mariadb.provider, tables=billing_tables()
    ) as writer:
        writer.ensure_schema()
        assert writer.write(charges).ok
    reader = Reader(shard_map=shard_map, provider=mariadb.provider, tables=billing_tables())
    want = expected_rows(charges)["account_balance"]
    reader.totals("account_balance", group_by=["account_id"])  # every pool holds idle ones
    assert _kill_pooled(mariadb) >= len(mariadb.shards)
    totals = reader.totals("account_balance", group_by=["account_id"])
    assert {key[0]: int(m["charges"]) for key, m in totals.items()} == {
        key[0]: values[1] for key, values in want.items()
    }
    account = charges[0].account
    assert _kill_pooled(mariadb) >= 1
    rows = reader.rows("account_balance", account)
    assert [int(r.measures["charges"]) for r in rows] == [want[(account, "USD")][1]]


def test_ensure_schema_after_every_pooled_connection_died(mariadb: Backend) -> None:
    """A writer's ensure_schema() at start-up, right after every pooled connection was
    killed (a database restart during a deploy), creates nothing twice and does not raise."""
    shard_map = ShardMap.create(list(mariadb.shards), slots=16)
    with AggregationWriter(
        shard_map=shard_map, provider=mariadb.provider, tables=billing_tables()
    ) as writer:
        writer.ensure_schema()
        assert _kill_pooled(mariadb) >= len(mariadb.shards)
        writer.ensure_schema()
        assert writer.write(make_charges(402, 20, accounts=5)).ok
    for shard in mariadb.shards:
        owned = mariadb.rows(shard, "SELECT COUNT(*) FROM shardbill_slots")
        assert owned == [(len(shard_map.slots_of(shard)),)]
