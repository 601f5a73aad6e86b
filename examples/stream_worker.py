"""A stream worker in a program of your own: consume events, write them exactly once, commit after.

The stream here is an in-memory broker (:class:`shardbill.worker.MemoryBroker`)
holding a seeded day of events, a few of them twice and one that is not an
event at all; in production the source is Kafka, and only the ``source=``
line changes::

    from shardbill.worker.kafka import KafkaSource
    source = KafkaSource(bootstrap_servers="kafka:9092", topics=["usage"], group="billing")

(or run ``shardbill worker``, which is this program with a configuration
file). Run it on SQLite shard files in a temporary directory::

    python examples/stream_worker.py
"""

from __future__ import annotations

import json
import signal
import tempfile
from pathlib import Path

from shardbill import AggregationWriter, Pipeline, PooledProvider, Reader, ShardMap
from shardbill.rules import UsageEvent, comms
from shardbill.tables.catalog import billing_tables
from shardbill.worker import (
    JsonlDeadLetters,
    MemoryBroker,
    MemorySource,
    Worker,
    WorkerSettings,
)
from shardbill.workloads.synthetic import Traffic


def _message(event: UsageEvent) -> bytes:
    """One event as a producer would send it: a JSON object."""
    return json.dumps(
        {
            "event_id": event.event_id,
            "account": event.account,
            "time": event.time.isoformat(),
            "product": event.product,
            "quantity": str(event.quantity),
            "dimensions": dict(event.dimensions),
        }
    ).encode()


def main(directory: Path) -> None:
    """Fill a topic, run one worker until the topic is drained, print what the shards hold."""
    stream = Traffic(model="skewed", events=3000, seed=42, duplicate_fraction=0.02)
    broker = MemoryBroker({"usage": 4})
    for number, event in enumerate(stream.deliveries()):
        broker.produce("usage", _message(event), partition=hash(event.account) % 4)
        if number == 100:
            broker.produce("usage", b"{not an event", partition=0)

    shards = ["s0", "s1", "s2"]
    with PooledProvider.sqlite_directory(directory, shards) as provider:
        writer = AggregationWriter(
            shard_map=ShardMap.create(shards),
            provider=provider,
            tables=billing_tables(),
            clock=stream.end.timestamp,  # the synthetic day is dated; a service leaves this out
        )
        writer.ensure_schema()
        with writer:
            worker = Worker(
                source=MemorySource(broker, topics=["usage"], group="billing"),
                processor=Pipeline(engine=comms.engine(), writer=writer),
                dead_letters=JsonlDeadLetters(directory / "dead-letters.jsonl"),
                settings=WorkerSettings(batch_size=500, exit_when_idle=0.2),
            )
            signal.signal(signal.SIGTERM, lambda *_: worker.stop())  # drain, commit, stop
            summary = worker.run()
        reader = Reader(shard_map=writer.shard_map, provider=provider, tables=billing_tables())
        totals = reader.totals("account_balance", group_by=["currency"])
    print(
        f"records {summary.records}, applied {summary.applied}, duplicates {summary.duplicates}, "
        f"repeats {summary.repeats}, "
        f"dead letters {summary.dead_lettered}"
    )
    print(f"committed offsets {sum(broker.committed('billing').values())} of {summary.records}")
    for (currency,), sums in totals.items():
        print(f"charged {sums['amount']} {currency} in {sums['charges']} charges")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
