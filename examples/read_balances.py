"""Reading aggregates back: one account's balance, and month totals across every shard.

It first writes a small seeded month of usage (so it runs on its own), then
reads with :class:`shardbill.Reader`:

* ``reader.rows(table, account)``: the rows of one account, from the one shard
  that owns it (optionally from a read replica);
* ``reader.totals(table, group_by=..., where=...)``: every shard asked in
  parallel, the answers merged (sums added, maxima compared).

Measures come back as exact ``Decimal`` amounts and ``int`` counts. Run::

    python examples/read_balances.py                      # SQLite files in a temporary dir
    python examples/read_balances.py mysql+pymysql://root@127.0.0.1:3306/rb0 \
        mysql+pymysql://root@127.0.0.1:3306/rb1           # databases that exist
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
from collections import Counter

from shardbill import AggregationWriter, Pipeline, PooledProvider, Reader, ShardMap
from shardbill.rules import comms
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.synthetic import Traffic

NOVEMBER = dt.date(2026, 11, 1)


def run(provider: PooledProvider, shards: list[str]) -> None:
    """Write a seeded month, then read balances and totals."""
    shard_map, tables = ShardMap.create(shards), billing_tables()
    traffic = Traffic(
        model="skewed",
        events=3000,
        seed=5,
        accounts=200,
        start=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
        span=dt.timedelta(days=29),  # all of it in November
    )
    with AggregationWriter(
        shard_map=shard_map,
        provider=provider,
        tables=tables,
        clock=traffic.end.timestamp,  # the month is dated: the writer's "now" goes with it
    ) as writer:
        writer.ensure_schema()
        pipeline = Pipeline(engine=comms.engine(), writer=writer)
        for batch in traffic.batches(1000):
            pipeline.process(batch)

    reader = Reader(shard_map=shard_map, provider=provider, tables=tables)

    # The account with the most charges, and its balance: one query, on the shard that owns it.
    charges = comms.engine().price_batch(traffic.distinct()).charges
    busiest, _ = Counter(c.account for c in charges).most_common(1)[0]
    for row in reader.rows("account_balance", busiest):
        m = row.measures
        print(
            f"account {busiest} balance: {m['amount']} {row.key['currency']} over "
            f"{m['charges']} charges (largest {m['largest_charge']})"
        )

    # Month totals per product: every shard in parallel, merged.
    totals = reader.totals("usage_monthly", group_by=["product"], where={"month": NOVEMBER})
    for (product,), m in totals.items():
        print(f"{NOVEMBER:%Y-%m} {product:6} quantity {m['quantity']:>14} amount {m['amount']:>12}")
    everything = reader.totals("account_balance", group_by=["currency"])
    for (currency,), m in everything.items():
        print(f"total {m['amount']} {currency} over {m['charges']} charges")


def main(urls: list[str]) -> None:
    """SQLite files in a temporary directory, or the servers named on the command line."""
    if urls:
        shards = [f"s{i}" for i in range(len(urls))]
        with PooledProvider.from_urls(dict(zip(shards, urls, strict=True))) as provider:
            run(provider, shards)
        return
    shards = ["s0", "s1", "s2"]
    with (
        tempfile.TemporaryDirectory() as directory,
        PooledProvider.sqlite_directory(directory, shards) as provider,
    ):
        run(provider, shards)


if __name__ == "__main__":
    main(sys.argv[1:])
