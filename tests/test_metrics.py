"""The Prometheus adapter counts what a real writer does."""

from __future__ import annotations

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from shardbill import ShardMap  # noqa: E402
from shardbill.metrics import PrometheusObserver  # noqa: E402
from shardbill.tables.catalog import billing_tables  # noqa: E402
from shardbill.writer import AggregationWriter  # noqa: E402
from tests.support.backends import Backend  # noqa: E402
from tests.test_writer import make_charges  # noqa: E402


def _value(registry: object, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
    return 0.0 if found is None else float(found)


def test_commits_units_and_duplicates_are_counted_per_shard(backend: Backend) -> None:
    """After a batch and its replay, the counters equal what the write results report."""
    registry = prometheus_client.CollectorRegistry()
    observer = PrometheusObserver(registry=registry)
    shard_map = ShardMap.create(backend.shards, slots=64)
    charges = make_charges(51, 120)
    writer = AggregationWriter(
        shard_map=shard_map, provider=backend.provider, tables=billing_tables(), observer=observer
    )
    with writer:
        writer.ensure_schema()
        first = writer.write(charges)
        second = writer.write(charges)
    for shard in backend.shards:
        applied = len(first.shards[shard].applied) if shard in first.shards else 0
        dupes = len(second.shards[shard].duplicates) if shard in second.shards else 0
        commits = sum(r.shards[shard].commits for r in (first, second) if shard in r.shards)
        assert _value(registry, "shardbill_commits_total", shard=shard) == commits
        assert _value(registry, "shardbill_commit_seconds_count", shard=shard) == commits
        # Units, not events: an event billed to two slots of one shard counts twice.
        assert _value(registry, "shardbill_units_applied_total", shard=shard) >= applied
        assert _value(registry, "shardbill_duplicates_skipped_total", shard=shard) >= dupes
    total_units = sum(
        _value(registry, "shardbill_units_applied_total", shard=s) for s in backend.shards
    )
    total_dupes = sum(
        _value(registry, "shardbill_duplicates_skipped_total", shard=s) for s in backend.shards
    )
    assert total_units == total_dupes > 0
