"""Events in, exact aggregates out: the comms rules in front of the writer."""

from __future__ import annotations

from shardbill import Pipeline, ShardMap
from shardbill.rules import UsageEvent, comms
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.synthetic import Traffic
from shardbill.writer import AggregationWriter
from tests.support.backends import Backend
from tests.support.oracle import actual_rows, expected_rows


def _pipeline(backend: Backend) -> Pipeline:
    writer = AggregationWriter(
        shard_map=ShardMap.create(backend.shards, slots=128),
        provider=backend.provider,
        tables=billing_tables(),
    )
    writer.ensure_schema()
    return Pipeline(engine=comms.engine(), writer=writer)


def test_a_replayed_day_changes_no_total(backend: Backend) -> None:
    """A day of skewed traffic with duplicates and reordering, then the whole day again."""
    traffic = Traffic(
        model="skewed", events=1500, seed=11, duplicate_fraction=0.05, reorder_window=40
    )
    pipeline = _pipeline(backend)
    with pipeline.writer:
        for batch in traffic.batches(250):
            assert pipeline.process(batch).ok
        first = actual_rows(backend)
        for batch in traffic.batches(400):  # the replay, cut differently
            result = pipeline.process(batch)
            assert result.ok
            assert result.write.applied_events == frozenset()
    assert actual_rows(backend) == first
    priced = comms.engine().price_batch(traffic.distinct())
    assert first == expected_rows(priced.charges)


def test_repeats_inside_a_batch_count_once_and_conflicts_are_rejected(backend: Backend) -> None:
    """An identical repeat is folded; the same id with other content rejects both copies."""
    events = list(Traffic(model="uniform", events=20, seed=12).distinct())
    changed = UsageEvent(
        event_id=events[1].event_id,
        account=events[1].account,
        time=events[1].time,
        product=events[1].product,
        quantity=events[1].quantity + 1,
        dimensions=events[1].dimensions,
    )
    pipeline = _pipeline(backend)
    with pipeline.writer:
        result = pipeline.process([*events, events[0], changed])
    assert result.repeats == 1
    assert result.conflicting_repeats == (events[1].event_id,)
    assert events[1].event_id in result.rejected_events
    kept = [e for e in events if e.event_id != events[1].event_id]
    priced = comms.engine().price_batch(kept)
    assert actual_rows(backend) == expected_rows(priced.charges)


def test_a_rule_rejection_names_the_rule_and_spares_the_batch(backend: Backend) -> None:
    """An event the rules cannot price is rejected with the reason; the rest is written."""
    events = list(Traffic(model="uniform", events=10, seed=13).distinct())
    unknown = UsageEvent(event_id="x-1", account=5, time=events[0].time, product="fax", quantity=1)
    pipeline = _pipeline(backend)
    with pipeline.writer:
        result = pipeline.process([*events, unknown])
    assert [r.event_id for r in result.pricing_rejected] == ["x-1"]
    assert not result.ok  # a rejected event needs a look
    assert result.done == {e.event_id for e in events}
    assert actual_rows(backend) == expected_rows(comms.engine().price_batch(events).charges)
