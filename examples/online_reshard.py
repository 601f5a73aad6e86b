"""Add a shard online: a writer keeps writing while the Resharder moves slots from 3 shards to 4.

The live shard map sits in a map store (a JSON file here). The writer loads it
from there, so when a shard fences a slot that moved, the writer reloads the
map and sends the write to the new owner: nobody has to tell it. The
:class:`~shardbill.resharding.Resharder` fences the moving slots on their old
owners, publishes the new map, then merges each slot's history into its new
owner chunk by chunk, resumably. At the end the totals are compared with the
sum of every charge written: they are exact.

Run it on SQLite shard files in a temporary directory::

    python examples/online_reshard.py

or on MariaDB/MySQL, four URLs (the databases must exist; the fourth is the new shard)::

    python examples/online_reshard.py mysql+pymysql://root@127.0.0.1:3306/rs0 \
        mysql+pymysql://root@127.0.0.1:3306/rs1 mysql+pymysql://root@127.0.0.1:3306/rs2 \
        mysql+pymysql://root@127.0.0.1:3306/rs3
"""

from __future__ import annotations

import sys
import tempfile
import threading
from decimal import Decimal
from pathlib import Path

from shardbill import AggregationWriter, JsonFileMapStore, PooledProvider, Reader, ShardMap
from shardbill.resharding import Resharder, ReshardSettings
from shardbill.rules import Charge, comms
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.synthetic import Traffic

SLOTS = 1024  # fewer than the default 16384: the example moves a quarter of them in seconds


def rows_per_shard(provider: PooledProvider, shards: list[str]) -> str:
    """``usage_daily`` rows on each shard, read directly (a balance report)."""
    counts = []
    for shard in shards:
        with provider.connection(shard, readonly=True) as conn:
            cursor = conn.cursor()
            cursor.execute("SELECT COUNT(*) FROM usage_daily", ())
            (count,) = cursor.fetchone() or (0,)
        counts.append(f"{shard} {count} rows")
    return ", ".join(counts)


def write_all(writer: AggregationWriter, batches: list[list[Charge]]) -> None:
    """Write each batch; retry what failed (a shard down past the retries) until it lands."""
    for batch in batches:
        result = writer.write(batch)
        while result.retry:
            result = writer.write([c for c in batch if c.event_id in result.retry])


def run(provider: PooledProvider, shards: list[str], store: JsonFileMapStore) -> None:
    """Write history on three shards, then add the fourth while writing goes on."""
    tables = billing_tables()
    store.publish(ShardMap.create(shards[:3], slots=SLOTS), expected_epoch=None)
    traffic = Traffic(model="skewed", events=6000, seed=7, accounts=800)
    engine = comms.engine()
    batches = [list(engine.price_batch(events).charges) for events in traffic.batches(200)]

    # The synthetic traffic is dated: the writer's clock goes with it.
    with AggregationWriter(
        shard_map=store, provider=provider, tables=tables, clock=traffic.end.timestamp
    ) as writer:
        writer.ensure_schema()
        write_all(writer, batches[:15])  # history before the move
        print(f"before: {rows_per_shard(provider, shards[:3])}")

        target = store.load().add_shard(shards[3])
        plan = store.load().plan_to(target)
        print(plan.summary().splitlines()[0])

        # The writer keeps writing (it routes with epoch 1 until a shard fences it).
        background = threading.Thread(target=write_all, args=(writer, batches[15:-1]))
        background.start()
        resharder = Resharder(
            store=store,
            provider=provider,
            tables=tables,
            settings=ReshardSettings(chunk_rows=500, parallel_slots=2),
        )
        progress = resharder.run(target)
        background.join()
        writer.reload_map()  # it follows forwarding addresses anyway; this routes directly
        write_all(writer, batches[-1:])
        print(
            f"moved {progress.slots_finished} slots ({progress.rows_moved} aggregate rows, "
            f"{progress.ledger_rows_moved} ledger rows) in {progress.seconds:.1f} s; "
            f"the writer routes with epoch {writer.shard_map.epoch} now"
        )

    print(f"after: {rows_per_shard(provider, shards)}")
    reader = Reader(shard_map=store.load(), provider=provider, tables=tables)
    (total,) = reader.totals("account_balance", group_by=[]).values()
    charged = sum((c.amount for batch in batches for c in batch), Decimal(0))
    print(f"total {total['amount']} USD over {total['charges']} charges")
    problems = resharder.verify()
    for problem in problems:
        print(f"verify: {problem}")
    print("exact" if total["amount"] == charged and not problems else f"NOT exact: {charged}")


def main(urls: list[str]) -> None:
    """SQLite files in a temporary directory, or the four databases named on the command line."""
    shards = ["s0", "s1", "s2", "s3"]
    with tempfile.TemporaryDirectory() as directory:
        store = JsonFileMapStore(Path(directory) / "shardmap.json")
        if urls:
            if len(urls) != len(shards):
                raise SystemExit(f"give four URLs (three shards and the new one), not {len(urls)}")
            with PooledProvider.from_urls(dict(zip(shards, urls, strict=True))) as provider:
                run(provider, shards, store)
            return
        with PooledProvider.sqlite_directory(Path(directory) / "shards", shards) as provider:
            run(provider, shards, store)


if __name__ == "__main__":
    main(sys.argv[1:])
