"""Writer processes for concurrency tests (module-level so ``spawn`` can import them)."""

from __future__ import annotations

import random

from shardbill import ShardMap
from shardbill.providers import PooledProvider
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter
from tests.support.clock import fixed_clock


def write_stream(  # noqa: PLR0917 - called through Pool.starmap, so positional
    urls: dict[str, str], map_json: str, seed: int, events: int, order_seed: int, batch: int
) -> tuple[int, int]:
    """Write the seeded stream in a seeded order and batching; returns (ok batches, failed)."""
    from tests.test_writer_concurrency import charges_by_event

    by_event = charges_by_event(seed, events)
    order = list(by_event)
    random.Random(order_seed).shuffle(order)
    ok = failed = 0
    provider = PooledProvider.from_urls(urls)
    writer = AggregationWriter(
        shard_map=ShardMap.from_json(map_json),
        provider=provider,
        tables=billing_tables(),
        clock=fixed_clock,
    )
    try:
        for start in range(0, len(order), batch):
            chunk = [c for e in order[start : start + batch] for c in by_event[e]]
            result = writer.write(chunk)
            if result.ok:
                ok += 1
            else:
                failed += 1
    finally:
        writer.close()
        provider.close()
    return ok, failed
