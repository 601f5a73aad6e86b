"""A minimal billing service: price a stream of usage events and write them exactly once.

The stream here is synthetic (a seeded day of skewed traffic, delivered at
least once: a few events come twice); in a real service it is a consumer of
Kafka, Kinesis or a queue, and the loop body is the same. Run it on SQLite
shard files in a temporary directory::

    python examples/minimal_service.py

or on MariaDB/MySQL, one URL per shard (the databases must exist)::

    python examples/minimal_service.py mysql+pymysql://app@db0:3306/billing?password_env=PW \
        mysql+pymysql://app@db1:3306/billing?password_env=PW
"""

from __future__ import annotations

import sys
import tempfile

from shardbill import AggregationWriter, Pipeline, PooledProvider, Reader, ShardMap
from shardbill.rules import comms
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.synthetic import Traffic


def run(provider: PooledProvider, shards: list[str]) -> None:
    """Set up the writer once, then process the stream batch by batch."""
    stream = Traffic(model="skewed", events=5000, seed=42, duplicate_fraction=0.02)
    writer = AggregationWriter(
        shard_map=ShardMap.create(shards),
        provider=provider,
        tables=billing_tables(),
        # The synthetic stream is dated (November 2026); a real service leaves the
        # clock alone: events older than the dedup horizon (35 days) are refused.
        clock=stream.end.timestamp,
    )
    writer.ensure_schema()  # CREATE TABLE IF NOT EXISTS ...; a no-op the second time
    pipeline = Pipeline(engine=comms.engine(), writer=writer)

    applied = duplicates = rejected = 0
    with writer:
        for batch in stream.batches(500):  # in a service: consumer.poll(max_records=500)
            result = pipeline.process(batch)
            while result.retry:  # a shard stayed down past the retries: try again
                retry = [e for e in batch if e.event_id in result.retry]
                result = pipeline.process(retry)
            applied += len(result.write.applied_events)
            duplicates += len(result.write.duplicate_events) + result.repeats
            rejected += len(result.rejected_events)
            # Only now is it safe to commit the consumer's offsets.

    print(f"applied {applied} events, skipped {duplicates} duplicates, rejected {rejected}")
    reader = Reader(shard_map=writer.shard_map, provider=provider, tables=billing_tables())
    for (currency,), totals in reader.totals("account_balance", group_by=["currency"]).items():
        print(f"charged {totals['amount']} {currency} in {totals['charges']} charges")


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
