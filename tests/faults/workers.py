"""Writer processes for the fault suite (module level, so ``spawn`` can import them).

Each process rebuilds its events from the seed (nothing large is pickled),
writes them with its own provider and writer, and sends back what every
write result said as :class:`~tests.faults.invariants.BatchReport` s, so the
parent's recorder sees every delivery, however the processes interleave.
"""

from __future__ import annotations

import faulthandler
import random
from multiprocessing.connection import Connection

from shardbill import ShardMap
from shardbill.providers import PooledProvider
from shardbill.retry import RetryPolicy
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter, WriterSettings
from tests.faults.invariants import BatchReport, summarize
from tests.faults.workload import batches, charges_of, priced_events
from tests.support.clock import fixed_clock

__all__ = ["Delivery", "deliver_all", "deliver_all_to", "stream"]

Delivery = tuple[tuple[str, ...], BatchReport]


def _writer(provider: PooledProvider, map_json: str, seed: int) -> AggregationWriter:
    retry = RetryPolicy(max_attempts=8, base_delay=0.005, max_delay=0.1, seed=seed)
    return AggregationWriter(
        shard_map=ShardMap.from_json(map_json),
        provider=provider,
        tables=billing_tables(),
        settings=WriterSettings(retry=retry, max_workers=4),
        clock=fixed_clock,
    )


def deliver_all(  # noqa: PLR0917 - called through Pool.starmap, so positional
    urls: dict[str, str], map_json: str, seed: int, count: int, order_seed: int, size: int
) -> list[Delivery]:
    """Deliver all of the seeded events in a shuffled order; retry failures until done.

    Returns every delivery (the ids sent and the report) in order.
    """
    events = priced_events(seed, count)
    rng = random.Random(order_seed)
    out: list[Delivery] = []
    provider = PooledProvider.from_urls(urls)
    writer = _writer(provider, map_json, order_seed)
    try:
        for batch in batches(list(events), size, rng):
            pending = batch
            for _ in range(100):
                report = summarize(writer.write(charges_of(events, pending)))
                out.append((tuple(pending), report))
                if report.ok:
                    break
                pending = sorted(report.failed_events)
    finally:
        writer.close()
        provider.close()
    return out


def deliver_all_to(  # noqa: PLR0917 - a Process target, so positional
    conn: Connection,
    urls: dict[str, str],
    map_json: str,
    seed: int,
    count: int,
    order_seed: int,
    size: int,
) -> None:
    """:func:`deliver_all`, its deliveries sent on ``conn`` (a crash shows as EOF, never a hang)."""
    faulthandler.enable()  # a crash in a driver's C code prints where it happened
    try:
        conn.send(deliver_all(urls, map_json, seed, count, order_seed, size))
    finally:
        conn.close()


def stream(  # noqa: PLR0917 - a Process target, so positional
    urls: dict[str, str],
    map_json: str,
    seed: int,
    count: int,
    size: int,
    first_batch: int,
    conn: Connection,
) -> None:
    """Write the seeded stream in fixed batches from ``first_batch`` on, reporting as it goes.

    Messages on ``conn``: ``("sent", batch, ids)`` before each write,
    ``("result", batch, report)`` after it, ``("ack", batch)`` once every
    event of the batch is acknowledged (the position a consumer would
    commit), and ``("end",)`` at the end.
    """
    faulthandler.enable()
    events = priced_events(seed, count)
    parts = list(batches(list(events), size))
    provider = PooledProvider.from_urls(urls)
    writer = _writer(provider, map_json, seed + first_batch)
    try:
        for number in range(first_batch, len(parts)):
            pending = parts[number]
            while pending:
                conn.send(("sent", number, tuple(pending)))
                report = summarize(writer.write(charges_of(events, pending)))
                conn.send(("result", number, report))
                pending = sorted(report.failed_events)
            conn.send(("ack", number))
        conn.send(("end",))
    finally:
        writer.close()
        provider.close()
        conn.close()
