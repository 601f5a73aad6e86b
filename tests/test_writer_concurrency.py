"""Concurrent writers (threads and processes) applying overlapping, duplicated streams.

Each ends with exact totals (independent oracle) and no failure surfacing to
the caller: deadlocks, lock waits and concurrent ledger claims are retried.
"""

from __future__ import annotations

import multiprocessing
import random
import threading

from shardbill import ShardMap
from shardbill.observe import Stats
from shardbill.rules import Charge
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter, WriteResult
from tests.support.backends import Backend
from tests.support.oracle import actual_rows, expected_rows
from tests.support.workers import write_stream
from tests.test_writer import make_charges


def charges_by_event(seed: int, events: int) -> dict[str, list[Charge]]:
    """The seeded stream grouped by event id (insertion order kept)."""
    out: dict[str, list[Charge]] = {}
    for charge in make_charges(seed, events, accounts=12):
        out.setdefault(charge.event_id, []).append(charge)
    return out


def test_threads_writing_the_same_events_in_different_orders_end_exact(backend: Backend) -> None:
    """Four threads deliver the same events in shuffled batches; every event counts once."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    by_event = charges_by_event(21, 300)
    setup = AggregationWriter(
        shard_map=shard_map, provider=backend.provider, tables=billing_tables()
    )
    setup.ensure_schema()
    setup.close()
    stats = Stats()
    results: list[WriteResult] = []
    lock = threading.Lock()

    def run(order_seed: int) -> None:
        order = list(by_event)
        random.Random(order_seed).shuffle(order)
        writer = AggregationWriter(
            shard_map=shard_map, provider=backend.provider, tables=billing_tables(), observer=stats
        )
        with writer:
            for start in range(0, len(order), 40):
                result = writer.write([c for e in order[start : start + 40] for c in by_event[e]])
                with lock:
                    results.append(result)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok for r in results), [r.shards for r in results if not r.ok]
    # Each event's part on each shard was applied by exactly one of the writers.
    for shard in backend.shards:
        on_shard = [e for r in results if shard in r.shards for e in r.shards[shard].applied]
        assert len(on_shard) == len(set(on_shard)), shard
    assert {e for r in results for e in r.applied_events} == set(by_event)
    everything = [c for cs in by_event.values() for c in cs]
    assert actual_rows(backend) == expected_rows(everything)


def test_two_processes_with_overlapping_streams_end_exact(backend: Backend) -> None:
    """Two writer processes deliver overlapping halves of a stream; totals are exact."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    setup = AggregationWriter(
        shard_map=shard_map, provider=backend.provider, tables=billing_tables()
    )
    setup.ensure_schema()
    setup.close()
    urls = backend.urls
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        outcomes = pool.starmap(
            write_stream,
            [(urls, shard_map.to_json(), 22, 240, order, 30) for order in (1, 2)],
        )
    assert all(failed == 0 for _, failed in outcomes)
    everything = [c for cs in charges_by_event(22, 240).values() for c in cs]
    assert actual_rows(backend) == expected_rows(everything)
