"""The worker's loop on the in-memory broker and SQLite shards: offsets move only past done work."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import pytest

from shardbill import AggregationWriter, Pipeline, ShardMap
from shardbill.providers import ConnectionProvider
from shardbill.retry import RetryPolicy
from shardbill.rules import UsageEvent, comms
from shardbill.tables.catalog import billing_tables
from shardbill.worker import (
    JsonlDeadLetters,
    MemoryBroker,
    MemoryDeadLetters,
    MemorySource,
    Record,
    Stage,
    Worker,
    WorkerSettings,
    WorkerSummary,
)
from shardbill.workloads.synthetic import Traffic
from shardbill.writer import WriterSettings
from tests.support.backends import Backend, make_backend
from tests.support.oracle import actual_rows, expected_rows
from tests.support.outage import Outage

TOPIC = "usage"
FAST = {"linger": 0.0, "poll_timeout": 0.001, "retry_backoff": 0.001, "exit_when_idle": 0.02}


@pytest.fixture
def sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Three SQLite shards."""
    yield from make_backend("sqlite", 3, tmp_path, request)


def _pipeline(backend: Backend, provider: ConnectionProvider | None = None) -> Pipeline:
    writer = AggregationWriter(
        shard_map=ShardMap.create(backend.shards, slots=64),
        provider=provider or backend.provider,
        tables=billing_tables(),
        settings=WriterSettings(retry=RetryPolicy(max_attempts=2, base_delay=0.0)),
    )
    writer.ensure_schema()
    return Pipeline(engine=comms.engine(), writer=writer)


def _events(n: int, seed: int = 5) -> list[UsageEvent]:
    return list(Traffic(model="skewed", events=n, seed=seed, accounts=30).distinct())


def _value(event: UsageEvent, **changes: object) -> bytes:
    data: dict[str, object] = {
        "event_id": event.event_id,
        "account": event.account,
        "time": event.time.isoformat(),
        "product": event.product,
        "quantity": str(event.quantity),
        "dimensions": dict(event.dimensions),
    }
    data.update(changes)
    return json.dumps(data).encode()


def _publish(broker: MemoryBroker, events: list[UsageEvent], partitions: int = 3) -> None:
    for event in events:
        broker.produce(TOPIC, _value(event), partition=hash(event.account) % partitions)


def _ends(broker: MemoryBroker) -> dict[tuple[str, int], int]:
    return {p: broker.end(p) for p in broker.partitions([TOPIC]) if broker.end(p)}


def test_every_event_lands_once_and_every_offset_is_committed(sqlite: Backend) -> None:
    """A stream of good events: exact totals, and each partition committed to its end."""
    events = _events(400)
    broker = MemoryBroker({TOPIC: 3})
    _publish(broker, events)
    source = MemorySource(broker, topics=[TOPIC], group="g")
    pipeline = _pipeline(sqlite)
    with pipeline.writer:
        summary = Worker(
            source=source,
            processor=pipeline,
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(batch_size=64, **FAST),
        ).run()
    assert (summary.records, summary.applied, summary.duplicates) == (400, 400, 0)
    assert summary.uncommitted == 0
    assert broker.committed("g") == _ends(broker)
    assert actual_rows(sqlite) == expected_rows(comms.engine().price_batch(events).charges)


def test_bad_records_go_to_the_dead_letters_with_reason_and_offset(
    sqlite: Backend, tmp_path: Path
) -> None:
    """Not JSON, no valid event, no rule, a reused id: each a dead letter; the rest applied;
    the offsets move past the letters once they are stored."""
    events = _events(60)
    broker = MemoryBroker({TOPIC: 1})
    for event in events[:30]:
        broker.produce(TOPIC, _value(event))
    broker.produce(TOPIC, b"{not json")  # offset 30
    broker.produce(TOPIC, b'{"event_id": "x-1", "account": 1}')  # 31: not an event
    broker.produce(TOPIC, _value(events[0], event_id="fax-1", product="fax"))  # 32: no rule
    broker.produce(TOPIC, _value(events[1], quantity="999"))  # 33: its id applied with 1 unit
    for event in events[30:]:
        broker.produce(TOPIC, _value(event))
    sink = JsonlDeadLetters(tmp_path / "dead.jsonl")
    pipeline = _pipeline(sqlite)
    with pipeline.writer:
        summary = Worker(
            source=MemorySource(broker, topics=[TOPIC], group="g"),
            processor=pipeline,
            dead_letters=sink,
            settings=WorkerSettings(batch_size=20, **FAST),
        ).run()
    letters = [json.loads(line) for line in Path(sink.path).read_text().splitlines()]
    assert [(d["offset"], d["stage"]) for d in letters] == [
        (30, "decode"),
        (31, "decode"),
        (32, "rules"),
        (33, "conflict"),
    ]
    assert "not valid JSON" in letters[0]["reason"]
    assert letters[0]["value"] == "{not json"
    assert "fax" in letters[2]["reason"]
    assert letters[3]["event_id"] == events[1].event_id
    assert summary.dead_letters == {"conflict": 1, "decode": 2, "rules": 1}
    assert summary.applied == 60
    assert broker.committed("g") == {(TOPIC, 0): 64}
    assert actual_rows(sqlite) == expected_rows(comms.engine().price_batch(events).charges)


def test_a_failed_shard_pauses_and_holds_the_commit_until_its_events_are_written(
    sqlite: Backend,
) -> None:
    """While a shard is down no offset passes its first unwritten event and nothing new is
    fetched; once it is back the batch is retried and the commit reaches the end."""
    events = _events(120)
    broker = MemoryBroker({TOPIC: 1})
    for event in events:
        broker.produce(TOPIC, _value(event))
    outage = Outage(sqlite.provider)
    source = MemorySource(broker, topics=[TOPIC], group="g")
    pipeline = _pipeline(sqlite, outage)
    outage.down.add("s1")
    seen: list[int] = []
    held_in_memory: list[int] = []

    def on_batch(summary: WorkerSummary) -> None:
        seen.append(len(source.commits))
        if outage.down:
            held_in_memory.append(summary.records)
        if len(seen) == 4:  # three failed rounds: the shard comes back
            outage.down.clear()

    with pipeline.writer:
        worker = Worker(
            source=source,
            processor=pipeline,
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(batch_size=50, **FAST),
            on_batch=on_batch,
        )
        summary = worker.run()
    first_s1 = next(
        i for i, e in enumerate(events) if pipeline.writer.locate(e.account)[1] == "s1"
    )  # the offset of the first event on s1
    held = [c[(TOPIC, 0)] for c in source.commits[: seen[3]]]
    assert held
    assert max(held) <= first_s1
    assert summary.retries >= 3
    assert held_in_memory == [50, 50, 50, 50]  # paused: nothing more fetched while failing
    assert summary.records == 120  # and nothing read twice
    assert broker.committed("g") == {(TOPIC, 0): 120}
    assert actual_rows(sqlite) == expected_rows(comms.engine().price_batch(events).charges)


def test_a_rebalance_redelivers_uncommitted_records_as_duplicates(sqlite: Backend) -> None:
    """Commits refused, then a rebalance: the new owner reads again from the committed
    offset, and every redelivered event is a duplicate; totals stay exact."""
    events = _events(200)
    broker = MemoryBroker({TOPIC: 2})
    _publish(broker, events, partitions=2)
    source = MemorySource(broker, topics=[TOPIC], group="g")
    source.fail_commits = 1_000_000  # nothing is committed...
    batches = 0

    def on_batch(summary: object) -> None:
        nonlocal batches
        batches += 1
        if batches == 3:  # ... until a rebalance after three batches, whose commit fails too
            source.fail_commits = 1
            source.rebalance()

    pipeline = _pipeline(sqlite)
    with pipeline.writer:
        summary = Worker(
            source=source,
            processor=pipeline,
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(batch_size=40, **FAST),
            on_batch=on_batch,
        ).run()
    assert summary.commit_failures == 4
    assert summary.rebalances == 2
    assert summary.applied == 200
    assert summary.duplicates == 120  # the three batches read again
    assert summary.records == 320
    assert broker.committed("g") == _ends(broker)
    assert actual_rows(sqlite) == expected_rows(comms.engine().price_batch(events).charges)


def test_dead_letters_that_cannot_be_stored_hold_their_offsets(sqlite: Backend) -> None:
    """A sink that fails keeps the bad record's offset uncommitted until a send succeeds."""
    events = _events(10)
    broker = MemoryBroker({TOPIC: 1})
    for event in events[:5]:
        broker.produce(TOPIC, _value(event))
    broker.produce(TOPIC, b"oops")  # offset 5
    for event in events[5:]:
        broker.produce(TOPIC, _value(event))
    sink = MemoryDeadLetters()
    sink.fail_sends = 2
    source = MemorySource(broker, topics=[TOPIC], group="g")
    pipeline = _pipeline(sqlite)
    with pipeline.writer:
        Worker(
            source=source,
            processor=pipeline,
            dead_letters=sink,
            settings=WorkerSettings(batch_size=100, **FAST),
        ).run()
    assert source.commits[0] == {(TOPIC, 0): 5}
    assert source.commits[-1] == {(TOPIC, 0): 11}
    assert [(d.record.offset, d.stage) for d in sink.letters] == [(5, Stage.DECODE)]


def test_stop_drains_the_pending_batch_and_commits_it(sqlite: Backend) -> None:
    """A stop request with a batch still lingering: it is written and committed before exit."""
    events = _events(30)
    broker = MemoryBroker({TOPIC: 1})
    for event in events:
        broker.produce(TOPIC, _value(event))
    source = MemorySource(broker, topics=[TOPIC], group="g")
    pipeline = _pipeline(sqlite)
    worker: Worker

    class _StopAfterFirstPoll(MemorySource):
        def poll(self, max_records: int, timeout: float) -> Sequence[Record]:
            got = super().poll(max_records, timeout)
            if got:
                worker.stop()
            return got

    source = _StopAfterFirstPoll(broker, topics=[TOPIC], group="g")
    with pipeline.writer:
        worker = Worker(
            source=source,
            processor=pipeline,
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(batch_size=1000, linger=60.0, poll_timeout=0.001),
        )
        summary = worker.run()
    assert (summary.records, summary.applied, summary.uncommitted) == (30, 30, 0)
    assert broker.committed("g") == {(TOPIC, 0): 30}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "'batch_size' must be an integer >= 1: 0"),
        ("linger", -1.0, "'linger' must be >= 0 seconds: -1.0"),
        ("poll_timeout", 0.0, "'poll_timeout' must be > 0 seconds: 0.0"),
        ("exit_when_idle", 0, "'exit_when_idle' must be > 0 seconds or None: 0"),
    ],
)
def test_settings_name_the_field_and_the_value(field: str, value: object, message: str) -> None:
    """A bad setting is refused with its name and value."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        WorkerSettings(**{field: value})  # type: ignore[arg-type]


def test_time_spent_retrying_is_not_idle_time(sqlite: Backend) -> None:
    """``exit_when_idle`` counts from the last work done: a worker that waited out a shard
    outage longer than its idle limit does not stop when the first poll after resuming
    comes back empty (Kafka re-fetches after a resume), and reads the rest."""
    events = _events(100)
    broker = MemoryBroker({TOPIC: 1})
    for event in events:
        broker.produce(TOPIC, _value(event))

    class _SlowResume(MemorySource):
        def __init__(self) -> None:
            super().__init__(broker, topics=[TOPIC], group="g")
            self.empty_polls = 0

        def pause(self, paused: bool) -> None:
            super().pause(paused)
            if not paused:
                self.empty_polls = 3  # like a consumer fetching again after a resume

        def pause_partitions(self, partitions: AbstractSet[tuple[str, int]]) -> None:
            resumed = bool(self._held - partitions)
            super().pause_partitions(partitions)
            if resumed:
                self.empty_polls = 3  # the same after a partition's resume

        def poll(self, max_records: int, timeout: float) -> Sequence[Record]:
            if self.empty_polls:
                self.empty_polls -= 1
                self._sleep(timeout)
                return []
            return super().poll(max_records, timeout)

    outage = Outage(sqlite.provider)
    pipeline = _pipeline(sqlite, outage)
    outage.down.add("s1")
    rounds = 0

    def on_batch(summary: WorkerSummary) -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 3:
            outage.down.clear()

    source = _SlowResume()
    with pipeline.writer:
        summary = Worker(
            source=source,
            processor=pipeline,
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(
                batch_size=50,
                linger=0.0,
                poll_timeout=0.01,
                retry_backoff=0.05,
                exit_when_idle=0.05,
            ),
            on_batch=on_batch,
        ).run()
    assert summary.retries >= 2
    assert summary.records == 100
    assert broker.committed("g") == {(TOPIC, 0): 100}


def test_a_revoke_while_a_batch_waits_for_a_retry_commits_only_what_is_written(
    sqlite: Backend,
) -> None:
    """Partitions revoked while a shard is down: the waiting batch is tried once more, only
    offsets below its first unwritten record are committed, the rest is dropped and read
    again by the next owner (here the same worker), and the totals end exact."""
    events = _events(80)
    broker = MemoryBroker({TOPIC: 1})
    for event in events:
        broker.produce(TOPIC, _value(event))
    outage = Outage(sqlite.provider)
    source = MemorySource(broker, topics=[TOPIC], group="g")
    pipeline = _pipeline(sqlite, outage)
    outage.down.add("s1")
    first_s1 = next(i for i, e in enumerate(events) if pipeline.writer.locate(e.account)[1] == "s1")
    committed_while_down: list[int] = []
    rounds = 0

    def on_batch(summary: WorkerSummary) -> None:
        nonlocal rounds
        rounds += 1
        if outage.down:
            committed_while_down.extend(c[(TOPIC, 0)] for c in source.commits)
        if rounds == 1:
            source.rebalance()  # revoked during the retry's backoff
        if rounds == 4:
            outage.down.clear()

    with pipeline.writer:
        summary = Worker(
            source=source,
            processor=pipeline,
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(batch_size=100, **FAST),
            on_batch=on_batch,
        ).run()
    assert committed_while_down
    assert max(committed_while_down) <= first_s1
    assert summary.rebalances == 2
    assert summary.records == 80 + (80 - min(committed_while_down))  # the dropped part, again
    assert broker.committed("g") == {(TOPIC, 0): 80}
    assert actual_rows(sqlite) == expected_rows(comms.engine().price_batch(events).charges)


def test_prometheus_metrics_follow_the_summary(sqlite: Backend) -> None:
    """The ``on_batch`` adapter counts records, applied events and dead letters by stage."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from shardbill.worker.prometheus import WorkerMetrics

    events = _events(50)
    broker = MemoryBroker({TOPIC: 1})
    for event in events:
        broker.produce(TOPIC, _value(event))
    broker.produce(TOPIC, b"nope")
    registry = prometheus_client.CollectorRegistry()
    pipeline = _pipeline(sqlite)
    with pipeline.writer:
        Worker(
            source=MemorySource(broker, topics=[TOPIC], group="g"),
            processor=pipeline,
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(batch_size=20, **FAST),
            on_batch=WorkerMetrics(registry=registry),
        ).run()

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)  # type: ignore[no-any-return]

    assert sample("shardbill_worker_records_total") == 51
    assert sample("shardbill_worker_events_applied_total") == 50
    assert sample("shardbill_worker_dead_letters_total", stage="decode") == 1
    assert sample("shardbill_worker_dead_letters_total", stage="rules") == 0
    assert sample("shardbill_worker_batches_total") == 3
    assert sample("shardbill_worker_uncommitted_records") == 0
    assert sample("shardbill_worker_held_records") == 0
    assert sample("shardbill_worker_paused_partitions") == 0


def test_a_shard_down_through_the_drain_leaves_its_records_uncommitted_and_says_so(
    sqlite: Backend,
) -> None:
    """Stopped while a shard is down: the drain gives up after ``drain_timeout``, nothing past
    the first unwritten record is committed, and the summary counts what was left."""
    events = _events(40)
    broker = MemoryBroker({TOPIC: 1})
    for event in events:
        broker.produce(TOPIC, _value(event))
    outage = Outage(sqlite.provider)
    source = MemorySource(broker, topics=[TOPIC], group="g")
    pipeline = _pipeline(sqlite, outage)
    outage.down.add("s1")
    first_s1 = next(i for i, e in enumerate(events) if pipeline.writer.locate(e.account)[1] == "s1")
    worker: Worker

    def on_batch(summary: WorkerSummary) -> None:
        worker.stop()

    with pipeline.writer:
        worker = Worker(
            source=source,
            processor=pipeline,
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(
                batch_size=100,
                linger=0.0,
                poll_timeout=0.001,
                retry_backoff=0.01,
                drain_timeout=0.05,
            ),
            on_batch=on_batch,
        )
        summary = worker.run()
    assert summary.uncommitted > 0
    assert summary.uncommitted == 40 - summary.applied  # every record not written is left
    assert broker.committed("g")[(TOPIC, 0)] <= first_s1


def _shards_of(pipeline: Pipeline, event: UsageEvent) -> set[str]:
    """The shards an event touches: its home shard (its id's) and its charges' (a parent
    account or a split may move them)."""
    charges = comms.engine().price_batch([event]).charges
    home = pipeline.writer.locate(event.event_id)[1]
    return {home} | {pipeline.writer.locate(c.account)[1] for c in charges}


def test_a_shard_down_pauses_only_the_partitions_waiting_for_it(sqlite: Backend) -> None:
    """Each partition carries one shard's events; with one shard down its partition is paused
    and the other partitions are written and committed to their ends meanwhile; once the
    shard is back, everything lands once."""
    outage = Outage(sqlite.provider)
    pipeline = _pipeline(sqlite, outage)
    shards = sorted(sqlite.shards)
    routed = [(e, _shards_of(pipeline, e)) for e in _events(1200)]
    events = [e for e, to in routed if len(to) == 1]  # the events of exactly one shard
    broker = MemoryBroker({TOPIC: 3})
    for event, to in routed:  # partition i: the events of shard i, in their order
        if len(to) == 1:
            broker.produce(TOPIC, _value(event), partition=shards.index(to.pop()))
    assert all(broker.end((TOPIC, p)) > 60 for p in range(3))
    down = shards[1]
    source = MemorySource(broker, topics=[TOPIC], group="g")
    outage.down.add(down)
    others_done_while_down: list[bool] = []
    paused_while_down: list[int] = []
    rounds = 0

    def on_batch(summary: WorkerSummary) -> None:
        nonlocal rounds
        if not outage.down:
            return
        rounds += 1
        paused_while_down.append(summary.paused_partitions)
        committed = broker.committed("g")
        done = all(committed.get((TOPIC, p)) == broker.end((TOPIC, p)) for p in (0, 2))
        if done or rounds == 200:  # the healthy partitions are through (or give up)
            others_done_while_down.append(done)
            outage.down.clear()

    with pipeline.writer:
        summary = Worker(
            source=source,
            processor=pipeline,
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(batch_size=20, retry_backoff_max=0.01, **FAST),
            on_batch=on_batch,
        ).run()
    assert others_done_while_down == [True]
    assert max(paused_while_down) == 1  # one partition paused: the failed shard's
    assert summary.retries >= 1
    assert summary.records == len(events)  # nothing read twice
    assert (summary.applied, summary.duplicates) == (len(events), 0)
    assert broker.committed("g") == _ends(broker)
    assert actual_rows(sqlite) == expected_rows(comms.engine().price_batch(events).charges)


class _Slow:
    """Wraps a provider; every connection to :attr:`slow` shards waits ``delay`` seconds."""

    def __init__(self, inner: ConnectionProvider, slow: str, delay: float) -> None:
        self._inner, self.slow, self._delay = inner, slow, delay

    def connection(self, shard: str, *, readonly: bool = False) -> Any:
        if shard == self.slow:
            time.sleep(self._delay)
        return self._inner.connection(shard, readonly=readonly)

    def close(self) -> None:
        """Nothing: the inner provider belongs to the caller."""


@pytest.mark.parametrize("fault", ["down", "slow"])
def test_records_held_stay_within_the_batch_size_under_a_failed_or_slow_shard(
    sqlite: Backend, fault: str
) -> None:
    """A shard down for many retry rounds (or slow) while eight partitions mixing every shard
    have far more records than the bound: the records held (the loop's count, and the offset
    tracker's open records) never exceed ``max_held`` (twice ``batch_size`` by default), and
    reach it while the shard is down; nothing is lost or doubled."""
    batch_size = 25
    events = _events(600, seed=11)
    outage = Outage(sqlite.provider)
    provider: ConnectionProvider = outage
    pipeline = _pipeline(sqlite, outage)
    shards = sorted(sqlite.shards)
    if fault == "slow":
        provider = _Slow(sqlite.provider, shards[2], 0.002)
        pipeline = _pipeline(sqlite, provider)
    broker = MemoryBroker({TOPIC: 8})
    for i, event in enumerate(events):
        broker.produce(TOPIC, _value(event), partition=i % 8)
    source = MemorySource(broker, topics=[TOPIC], group="g")
    held: list[int] = []
    open_records: list[int] = []
    rounds = 0
    if fault == "down":
        outage.down.add(shards[2])

    def on_batch(summary: WorkerSummary) -> None:
        nonlocal rounds
        rounds += 1
        held.append(summary.held)
        open_records.append(summary.uncommitted)  # counted by the offset tracker
        if rounds == 60:
            outage.down.clear()

    with pipeline.writer:
        summary = Worker(
            source=source,
            processor=pipeline,
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(batch_size=batch_size, retry_backoff_max=0.01, **FAST),
            on_batch=on_batch,
        ).run()
    limit = 2 * batch_size  # max_held's default
    assert summary.peak_held <= limit
    assert max(held) <= limit
    assert max(open_records) <= limit
    if fault == "down":
        assert summary.peak_held == limit  # the bound was reached: the shard held records back
        assert summary.retries >= 1
    assert summary.records == 600
    assert (summary.applied, summary.duplicates) == (600, 0)
    assert broker.committed("g") == _ends(broker)
    assert actual_rows(sqlite) == expected_rows(comms.engine().price_batch(events).charges)


def test_prometheus_gauges_show_the_records_held_and_the_paused_partitions(
    sqlite: Backend,
) -> None:
    """While a shard is down the held-records gauge is the summary's (within ``max_held``)
    and one partition is shown paused; afterwards both are back at 0."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from shardbill.worker.prometheus import WorkerMetrics

    events = _events(120)
    broker = MemoryBroker({TOPIC: 1})
    for event in events:
        broker.produce(TOPIC, _value(event))
    registry = prometheus_client.CollectorRegistry()
    metrics = WorkerMetrics(registry=registry)
    outage = Outage(sqlite.provider)
    pipeline = _pipeline(sqlite, outage)
    outage.down.add("s1")
    while_down: list[tuple[int, float | None, float | None]] = []

    def on_batch(summary: WorkerSummary) -> None:
        metrics(summary)
        if outage.down:
            while_down.append(
                (
                    summary.held,
                    registry.get_sample_value("shardbill_worker_held_records"),
                    registry.get_sample_value("shardbill_worker_paused_partitions"),
                )
            )
            if summary.retries == 2:
                outage.down.clear()

    with pipeline.writer:
        Worker(
            source=MemorySource(broker, topics=[TOPIC], group="g"),
            processor=pipeline,
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(batch_size=20, **FAST),
            on_batch=on_batch,
        ).run()
    assert while_down
    assert all(gauge == held for held, gauge, _ in while_down)
    assert 0 < max(held for held, _, _ in while_down) <= 40
    assert {paused for _, _, paused in while_down} == {1}
    assert registry.get_sample_value("shardbill_worker_held_records") == 0
    assert registry.get_sample_value("shardbill_worker_paused_partitions") == 0
    assert broker.committed("g") == {(TOPIC, 0): 120}
