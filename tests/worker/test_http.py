"""The worker's HTTP endpoint: ``/metrics`` in the Prometheus format, ``/healthz`` 200 or 503."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardbill import AggregationWriter, Pipeline, ShardMap
from shardbill.retry import RetryPolicy
from shardbill.rules import comms
from shardbill.tables.catalog import billing_tables
from shardbill.worker import MemoryBroker, MemoryDeadLetters, MemorySource, Worker, WorkerSettings
from shardbill.worker.http import WorkerHttp, worker_health
from shardbill.workloads.synthetic import Traffic
from shardbill.writer import WriterSettings
from tests.support.backends import Backend, make_backend
from tests.support.outage import Outage

prometheus_client = pytest.importorskip("prometheus_client")

TOPIC = "usage"


@pytest.fixture
def sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Two SQLite shards."""
    yield from make_backend("sqlite", 2, tmp_path, request)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _worker(
    backend: Backend,
    clock: _Clock,
    on_batch: object = None,
    *,
    source: MemorySource | None = None,
    provider: object = None,
) -> Worker:
    broker = MemoryBroker({TOPIC: 2})
    for i, event in enumerate(Traffic(model="uniform", events=50, seed=3, accounts=10).distinct()):
        data = {
            "event_id": event.event_id,
            "account": event.account,
            "time": event.time.isoformat(),
            "product": event.product,
            "quantity": str(event.quantity),
            "dimensions": dict(event.dimensions),
        }
        broker.produce(TOPIC, json.dumps(data).encode(), partition=i % 2)
    writer = AggregationWriter(
        shard_map=ShardMap.create(backend.shards, slots=64),
        provider=provider or backend.provider,  # type: ignore[arg-type]
        tables=billing_tables(),
        settings=WriterSettings(retry=RetryPolicy(max_attempts=2, base_delay=0.0)),
    )
    writer.ensure_schema()

    def sleep(seconds: float) -> None:
        clock.now += seconds

    return Worker(
        source=source or MemorySource(broker, topics=[TOPIC], group="g", sleep=sleep),
        processor=Pipeline(engine=comms.engine(), writer=writer),
        dead_letters=MemoryDeadLetters(),
        settings=WorkerSettings(batch_size=20, linger=0.0, poll_timeout=0.01, exit_when_idle=0.05),
        clock=clock,
        on_batch=on_batch,  # type: ignore[arg-type]
    )


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_health_is_503_with_a_reason_before_the_first_poll_and_when_the_loop_is_stale(
    sqlite: Backend,
) -> None:
    """Not polled yet, or not polled for longer than ``stale_after``: 503 saying which; 200 when
    the loop polled recently and no batch waits for a shard."""
    clock = _Clock()
    worker = _worker(sqlite, clock)
    check = worker_health(worker, stale_after=5.0, clock=clock)
    with WorkerHttp(address="127.0.0.1", port=0, health=check) as http:
        status, body = _get(http.port, "/healthz")
        assert status == 503
        assert "not polled its source yet" in json.loads(body)["reason"]
        worker.run()
        status, body = _get(http.port, "/healthz")
        assert (status, json.loads(body)["ok"]) == (200, True)
        clock.now += 6.0
        status, body = _get(http.port, "/healthz")
        assert status == 503
        assert "has not polled for 6.0 s" in json.loads(body)["reason"]
        assert _get(http.port, "/nowhere")[0] == 404


def test_health_is_503_while_a_batch_waits_for_a_failed_shard(sqlite: Backend) -> None:
    """A worker whose batch waits for a retry reports its shards unreachable."""
    clock = _Clock()
    worker = _worker(sqlite, clock)
    worker.run()
    worker._backoff = 0.5  # the state a failed shard leaves (see test_loop for the real path)
    ok, details = worker_health(worker, clock=clock)()
    assert not ok
    assert "failed shard" in str(details["reason"])


def test_metrics_serves_the_worker_counts_in_the_prometheus_text_format(sqlite: Backend) -> None:
    """``/metrics`` shows the registry's worker counters after a run, with the run's counts."""
    from shardbill.worker.prometheus import WorkerMetrics

    registry = prometheus_client.CollectorRegistry()
    clock = _Clock()
    worker = _worker(sqlite, clock, on_batch=WorkerMetrics(registry=registry))
    summary = worker.run()
    with WorkerHttp(
        address="127.0.0.1", port=0, health=worker_health(worker, clock=clock), registry=registry
    ) as http:
        status, body = _get(http.port, "/metrics")
    assert status == 200
    lines = body.decode().splitlines()
    assert f"shardbill_worker_records_total {float(summary.records)}" in lines
    assert f"shardbill_worker_events_applied_total {float(summary.applied)}" in lines
    assert summary.applied == 50


def test_a_port_in_use_is_a_configuration_error_naming_it() -> None:
    """Two endpoints on one port: the second is refused, naming the address."""
    from shardbill.errors import ConfigurationError

    with WorkerHttp(address="127.0.0.1", port=0, health=lambda: (True, {})) as first:
        busy = first.port
        with pytest.raises(ConfigurationError, match=f"127.0.0.1:{busy}"):
            WorkerHttp(address="127.0.0.1", port=busy, health=lambda: (True, {}))


def _partitions(details: dict[str, object]) -> dict[tuple[str, int], dict[str, object]]:
    rows = details["partitions"]
    assert isinstance(rows, list)
    return {(row["topic"], row["partition"]): row for row in rows}


def test_health_lists_each_partition_with_its_commit_and_lag(sqlite: Backend) -> None:
    """While the worker runs, ``/healthz`` lists every assigned partition: paused or not,
    records held, the last committed offset and how long ago, and the lag behind the end of
    the partition where the source knows it (the in-memory broker does)."""
    clock = _Clock()
    seen: list[tuple[bool, dict[str, object]]] = []
    holder: list[Worker] = []

    def on_batch(summary: object) -> None:
        seen.append(worker_health(holder[0], clock=clock)())

    worker = _worker(sqlite, clock, on_batch)
    holder.append(worker)
    worker.run()
    ok, first = seen[0]
    assert ok
    rows = _partitions(first)
    assert set(rows) == {(TOPIC, 0), (TOPIC, 1)}
    # The source reads partition after partition: the first batch of 20 is partition 0's.
    assert rows[(TOPIC, 0)]["committed"] == 20
    assert rows[(TOPIC, 0)]["lag"] == 5  # 25 records in partition 0
    assert rows[(TOPIC, 0)]["last_commit_seconds_ago"] == 0.0
    assert rows[(TOPIC, 0)]["paused"] is False
    assert rows[(TOPIC, 0)]["stuck"] is False
    assert rows[(TOPIC, 1)]["committed"] is None  # nothing committed there yet: unknown
    assert rows[(TOPIC, 1)]["lag"] is None
    ok, last = seen[-1]
    assert ok
    assert {k: (r["committed"], r["lag"]) for k, r in _partitions(last).items()} == {
        (TOPIC, 0): (25, 0),
        (TOPIC, 1): (25, 0),
    }


def test_a_partition_whose_commits_stop_is_stuck_and_makes_health_503(sqlite: Backend) -> None:
    """Every event is applied but the source refuses every offset commit: no batch waits for a
    shard, yet once a partition's records stay uncommitted for more than ``stuck_after``
    seconds, ``/healthz`` is 503 naming the partition, and its row says ``stuck``."""
    clock = _Clock()
    broker = MemoryBroker({TOPIC: 2})

    def sleep(seconds: float) -> None:
        clock.now += seconds

    source = MemorySource(broker, topics=[TOPIC], group="g", sleep=sleep)
    source.fail_commits = 10**6
    results: list[tuple[bool, dict[str, object]]] = []
    holder: list[Worker] = []

    def on_batch(summary: object) -> None:
        check = worker_health(holder[0], stuck_after=60.0, clock=clock)
        results.append(check())
        clock.now += 61.0
        results.append(check())

    worker = _worker(sqlite, clock, on_batch, source=source)
    holder.append(worker)
    for i, event in enumerate(Traffic(model="uniform", events=50, seed=3, accounts=10).distinct()):
        data = {
            "event_id": event.event_id,
            "account": event.account,
            "time": event.time.isoformat(),
            "product": event.product,
            "quantity": str(event.quantity),
            "dimensions": dict(event.dimensions),
        }
        broker.produce(TOPIC, json.dumps(data).encode(), partition=i % 2)
    summary = worker.run()
    assert summary.applied == 50
    assert summary.commits == 0
    (ok_before, _), (ok_after, after) = results[0], results[1]
    assert ok_before  # records uncommitted for 0 s: not stuck yet
    assert not ok_after
    assert f"{TOPIC}[0]" in str(after["reason"])
    assert "no commit" in str(after["reason"])
    assert _partitions(after)[(TOPIC, 0)]["stuck"] is True
    assert not worker.waiting_for_retry


def test_partitions_waiting_for_a_failed_shard_show_paused(sqlite: Backend) -> None:
    """With a shard down, the partitions whose records wait for it are reported paused, with
    the records they hold; once it is back they flow again and are committed to their end."""
    clock = _Clock()
    outage = Outage(sqlite.provider)
    results: list[tuple[bool, dict[str, object]]] = []
    holder: list[Worker] = []

    def on_batch(summary: object) -> None:
        if outage.down:
            results.append(worker_health(holder[0], clock=clock)())
            if len(results) == 3:
                outage.down.clear()

    worker = _worker(sqlite, clock, on_batch, provider=outage)
    holder.append(worker)
    outage.down.add(sqlite.shards[0])  # after the schema is in place
    worker.run()
    ok, details = results[-1]
    assert not ok
    rows = _partitions(details)
    paused = [key for key, row in rows.items() if row["paused"]]
    assert paused
    assert all(int(rows[key]["held"]) > 0 for key in paused)  # type: ignore[call-overload]
