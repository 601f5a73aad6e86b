"""The stream worker respects a closed period: late events are dead letters, offsets move on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from shardbill.periods import PeriodCloser, period_of
from shardbill.rules import comms
from shardbill.worker import MemoryBroker, MemoryDeadLetters, MemorySource, Worker, WorkerSettings
from tests.support.backends import Backend, make_backend
from tests.support.oracle import actual_rows, expected_rows
from tests.worker.test_loop import FAST, TOPIC, _ends, _events, _pipeline, _publish


@pytest.fixture
def sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Three SQLite shards."""
    yield from make_backend("sqlite", 3, tmp_path, request)


def test_events_of_a_closed_period_are_dead_letters_and_their_offsets_are_committed(
    sqlite: Backend,
) -> None:
    """A day written, its month closed, the day redelivered with new events mixed in: the
    redelivery is all duplicates, each new event is a writer-stage dead letter naming the
    period, every offset is committed, and the totals are the first day's."""
    first = _events(120, seed=5)
    late = [attrs.evolve(e, event_id=f"late-{e.event_id}") for e in _events(80, seed=6)]
    assert len(late) == 80
    month = str(period_of(int(first[0].time.timestamp())))
    broker = MemoryBroker({TOPIC: 3})
    _publish(broker, first)
    pipeline = _pipeline(sqlite)
    with pipeline.writer:
        settings = WorkerSettings(batch_size=32, **FAST)
        source = MemorySource(broker, topics=[TOPIC], group="g")
        Worker(
            source=source,
            processor=pipeline,
            dead_letters=MemoryDeadLetters(),
            settings=settings,
        ).run()
        closer = PeriodCloser(provider=sqlite.provider, shard_map=pipeline.writer.shard_map)
        assert closer.close(month, drain_seconds=0).state == "closed"

        _publish(broker, [*first, *late])
        letters = MemoryDeadLetters()
        summary = Worker(
            source=MemorySource(broker, topics=[TOPIC], group="g"),
            processor=pipeline,
            dead_letters=letters,
            settings=settings,
        ).run()
    assert (summary.applied, summary.duplicates) == (0, len(first))
    assert summary.dead_letters == {"writer": len(late)}
    assert {d.event_id for d in letters.letters} == {e.event_id for e in late}
    assert all(month in d.reason and "PeriodClosedError" in d.reason for d in letters.letters)
    assert broker.committed("g") == _ends(broker)
    assert actual_rows(sqlite) == expected_rows(comms.engine().price_batch(first).charges)
