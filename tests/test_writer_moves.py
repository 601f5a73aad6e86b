"""The writer while slots are in motion: moves both ways on SQLite, and bounded map reloads.

These set the ownership rows by hand (as a reshard between its fence and its
finish leaves them) so that each situation is forced, not hoped for.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from contextlib import closing
from decimal import Decimal
from pathlib import Path

from shardbill import ShardMap
from shardbill.observe import MapReloaded
from shardbill.providers import PooledProvider
from shardbill.resharding import MemoryMapStore
from shardbill.retry import RetryPolicy
from shardbill.rules import Charge
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter, WriterSettings

NOW = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)


def _charge(event_id: str, account: int) -> Charge:
    return Charge(
        event_id=event_id,
        account=account,
        product="sms",
        quantity=1,
        amount=Decimal("0.01"),
        currency="USD",
        time=NOW,
        rule="test",
        rule_version="1",
    )


def _move(root: Path, slot: int, source: str, target: str) -> None:
    """Leave ``slot`` as a reshard leaves it after its fence: gone on source, incoming on target."""
    with closing(sqlite3.connect(root / f"{source}.db")) as conn:
        conn.execute(
            "UPDATE shardbill_slots SET state = 'gone', peer = ? WHERE sb_slot = ?", (target, slot)
        )
        conn.commit()
    with closing(sqlite3.connect(root / f"{target}.db")) as conn:
        conn.execute(
            "INSERT INTO shardbill_slots (sb_slot, state, epoch, peer) "
            "VALUES (?, 'incoming', 2, ?)",
            (slot, source),
        )
        conn.commit()


def _account_on(shard_map: ShardMap, shard: str, start: int) -> int:
    return next(a for a in range(start, start + 10_000) if shard_map.shard_for(a) == shard)


def test_sqlite_writers_do_not_stall_when_slots_move_both_ways(tmp_path: Path) -> None:
    """A slot moving a -> b and one moving b -> a: two writers, each reading the other's
    source ledger, never wait on each other's write lock (every write lands, no retry)."""
    shard_map = ShardMap.create(["a", "b"], slots=16)
    provider = PooledProvider.sqlite_directory(tmp_path, ["a", "b"], options="busy_timeout=0.5")
    x = _account_on(shard_map, "a", 1)
    y = _account_on(shard_map, "b", 1)
    settings = WriterSettings(
        retry=RetryPolicy(max_attempts=2, base_delay=0.0),
        max_workers=1,
    )
    writers = [
        AggregationWriter(
            shard_map=shard_map,
            provider=provider,
            tables=billing_tables(),
            settings=settings,
            clock=NOW.timestamp,
        )
        for _ in range(2)
    ]
    writers[0].ensure_schema()
    _move(tmp_path, shard_map.slot_for(x), "a", "b")
    _move(tmp_path, shard_map.slot_for(y), "b", "a")
    failures: list[object] = []

    def write(writer: AggregationWriter, account: int, prefix: str) -> None:
        for n in range(40):
            result = writer.write([_charge(f"{prefix}-{n}", account)])
            if not result.ok:
                failures.append(result)

    threads = [
        threading.Thread(target=write, args=(writers[0], x, "x")),
        threading.Thread(target=write, args=(writers[1], y, "y")),
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for writer in writers:
            writer.close()
        provider.close()
    assert failures == []


def test_a_stuck_move_costs_a_writer_one_reload_not_one_per_write(tmp_path: Path) -> None:
    """Fenced with a forwarding address while the store still has the old map (a resharder
    died between fence and publish): the writer follows the address without reloading again."""
    shard_map = ShardMap.create(["a", "b"], slots=16)
    store = MemoryMapStore(shard_map)
    provider = PooledProvider.sqlite_directory(tmp_path, ["a", "b"])
    reloads: list[MapReloaded] = []
    x = _account_on(shard_map, "a", 1)
    with AggregationWriter(
        shard_map=store,
        provider=provider,
        tables=billing_tables(),
        clock=NOW.timestamp,
        observer=lambda e: reloads.append(e) if isinstance(e, MapReloaded) else None,
    ) as writer:
        writer.ensure_schema()
        _move(tmp_path, shard_map.slot_for(x), "a", "b")
        results = [writer.write([_charge(f"s-{n}", x)]) for n in range(20)]
    provider.close()
    assert all(r.ok for r in results)
    assert len(reloads) == 1


def _rows_on(root: Path, shard: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(root / f"{shard}.db")) as conn:
        return conn.execute("SELECT account_id, charges FROM account_balance").fetchall()


def test_a_former_owner_accepting_a_slot_back_takes_no_write_before_the_source_is_fenced(
    tmp_path: Path,
) -> None:
    """A reshard that moves a slot back to a shard that owned it before (a revert, or a
    re-weighting back) accepts on the target first, then fences the source. In between
    (or for as long as a crash leaves it there) the former owner says incoming while the
    source still owns the slot and takes writes: a writer with an old map, which routes
    to the former owner, must not write there too (the two would be applied apart,
    reads of the current map would miss it, and the source would not see its ledger).
    Found by the simulation (seed 3074, a revert crashed between accept and fence)."""
    shard_map = ShardMap.create(["a", "b"], slots=16)
    provider = PooledProvider.sqlite_directory(tmp_path, ["a", "b"])
    x = _account_on(shard_map, "a", 1)
    slot = shard_map.slot_for(x)
    with AggregationWriter(
        shard_map=shard_map, provider=provider, tables=billing_tables(), clock=NOW.timestamp
    ) as writer:
        writer.ensure_schema()
        # The slot went a -> b in an earlier reshard (finished) ...
        with closing(sqlite3.connect(tmp_path / "a.db")) as conn:
            conn.execute(
                "UPDATE shardbill_slots SET state = 'gone', peer = 'b' WHERE sb_slot = ?", (slot,)
            )
            conn.commit()
        with closing(sqlite3.connect(tmp_path / "b.db")) as conn:
            conn.execute(
                "INSERT INTO shardbill_slots (sb_slot, state, epoch, peer) "
                "VALUES (?, 'owned', 2, NULL)",
                (slot,),
            )
            conn.commit()
        # ... and now comes back: accepted on a, b not fenced yet.
        with closing(sqlite3.connect(tmp_path / "a.db")) as conn:
            conn.execute(
                "UPDATE shardbill_slots SET state = 'incoming', peer = 'b', epoch = 3 "
                "WHERE sb_slot = ?",
                (slot,),
            )
            conn.commit()
        result = writer.write([_charge("back-1", x)])  # its map routes x to a
    provider.close()
    assert result.ok, result
    assert _rows_on(tmp_path, "a") == []
    assert _rows_on(tmp_path, "b") == [(x, 1)]
