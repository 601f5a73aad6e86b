"""Benchmark the writer on the embedded default: SQLite files, one per shard, no server.

For one traffic model, into ``--shards`` fresh SQLite files:

* ``writer``: :meth:`AggregationWriter.write_stream` in batches of ``--batch``;
* ``replay``: the same stream delivered again (every event a duplicate: the
  cost of the ledger lookups alone);
* ``per_event`` (baseline): the same writer given one event per call, one
  exactly-once transaction per shard per event, on fresh files
  (``--baseline-events`` of them).

Run::

    .venv/bin/python benchmarks/bench_sqlite.py --events 40000 --baseline-events 1000
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shardbill import ShardMap
from shardbill.providers import PooledProvider
from shardbill.rules import Charge, comms
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.synthetic import Traffic
from shardbill.writer import AggregationWriter


def _events(model: str, count: int, seed: int) -> list[list[Charge]]:
    engine = comms.engine()
    by_event: dict[str, list[Charge]] = {}
    for batch in Traffic(model=model, events=count, seed=seed).batches(5000):
        for charge in engine.price_batch(batch).charges:
            by_event.setdefault(charge.event_id, []).append(charge)
    return list(by_event.values())


def _rate(
    directory: Path, shards: int, events: list[list[Charge]], batch: int, *, replay: bool
) -> tuple[float, float | None]:
    """Events/s of one delivery (and of a second, full one when ``replay``)."""
    names = [f"s{i}" for i in range(shards)]
    with PooledProvider.sqlite_directory(directory, names) as provider:
        latest = max(c.time for e in events for c in e).timestamp()
        writer = AggregationWriter(
            shard_map=ShardMap.create(names),
            provider=provider,
            tables=billing_tables(),
            clock=lambda: latest,  # the synthetic traffic is dated: the writer's clock too
        )
        writer.ensure_schema()
        batches = [
            [c for e in events[i : i + batch] for c in e] for i in range(0, len(events), batch)
        ]
        rates: list[float] = []
        for _ in range(2 if replay else 1):
            started = time.perf_counter()
            for result in writer.write_stream(batches):
                assert result.ok, result
            rates.append(len(events) / (time.perf_counter() - started))
        writer.close()
    return rates[0], (rates[1] if replay else None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--baseline-events", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--model", default="skewed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    events = _events(args.model, args.events, args.seed)
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        writer, replay = _rate(Path(first), args.shards, events, args.batch, replay=True)
        per_event, _ = _rate(
            Path(second), args.shards, events[: args.baseline_events], 1, replay=False
        )
    gc.unfreeze()
    report: dict[str, Any] = {
        "config": vars(args),
        "writer_events_per_s": writer,
        "replay_events_per_s": replay,
        "per_event_events_per_s": per_event,
        "writer_vs_per_event": writer / per_event,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{args.model} on {args.shards} SQLite files: writer {writer:,.0f} events/s, "
            f"full replay {replay:,.0f} events/s, one event per call {per_event:,.0f} events/s "
            f"(writer {writer / per_event:.1f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
