"""``shardbill worker`` against a real Kafka-protocol broker (Tansu) on SQLite shard files.

Each test uses its own topics and consumer group (a new group must see its
first assignment complete; see tests/support/kafka.py), runs the command in
a subprocess and checks the totals against an independent oracle.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from shardbill import AggregationWriter, Pipeline, ShardMap
from shardbill.providers import PooledProvider
from shardbill.retry import RetryPolicy
from shardbill.rules import UsageEvent, comms
from shardbill.tables.catalog import billing_tables
from shardbill.worker import MemoryDeadLetters, Worker, WorkerSettings, WorkerSummary
from shardbill.worker.kafka import KafkaSource
from shardbill.workloads.synthetic import Traffic
from shardbill.writer import WriterSettings
from tests.support.clock import recent_start
from tests.support.kafka import KafkaBroker
from tests.support.oracle import actual_rows, expected_rows
from tests.support.outage import Outage

pytestmark = pytest.mark.kafka

SHARDS = ("s0", "s1", "s2")
SESSION = ["--kafka-option", "session.timeout.ms=6000"]


class _Files:
    """The SQLite shard files, read directly (not through shardbill) for the oracle."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.shards = SHARDS

    def rows(self, shard: str, sql: str) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.directory / f"{shard}.db")) as conn:
            return list(conn.execute(sql.replace("`", '"')).fetchall())

    def ledger(self) -> int:
        """Distinct event ids in the ledgers (an event has a row per slot it touched)."""
        ids = {
            r[0] for s in self.shards for r in self.rows(s, "SELECT event_id FROM shardbill_ledger")
        }
        return len(ids)


def _deployment(tmp_path: Path, worker: str = "") -> tuple[str, _Files]:
    config = tmp_path / "shardbill.toml"
    config.write_text(
        "[shards]\n" + "".join(f'{s} = "sqlite:///{s}.db"\n' for s in SHARDS) + worker,
        encoding="utf-8",
    )
    init = _cli("init", "--config", str(config), cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    return str(config), _Files(tmp_path)


def _cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    try:
        return _run(*args, cwd=cwd, timeout=timeout)
    finally:
        print(f"{args[0]}: {time.monotonic() - started:.1f} s")


def _run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardbill", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        timeout=timeout,
    )


def _events(n: int, seed: int) -> list[UsageEvent]:
    return list(
        Traffic(model="skewed", events=n, seed=seed, accounts=40, start=recent_start()).distinct()
    )


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


def _messages(events: list[UsageEvent]) -> list[tuple[bytes | None, bytes]]:
    return [(str(e.account).encode(), _value(e)) for e in events]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int, wanted: str, timeout: float = 30) -> str:
    """The metrics page once it shows ``wanted`` (metrics follow each batch's end)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
                text = page.read().decode()
        except OSError:
            text = ""
        if wanted in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{wanted!r} not on the metrics page:\n{text[-2000:]}")


def _names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"usage-{tag}", f"billing-{tag}"


def _one_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stdout + result.stderr
    value = json.loads(result.stdout)
    assert isinstance(value, dict)
    return value


def _worker(config: str, topic: str, group: str, *extra: str) -> list[str]:
    return [
        "worker",
        "--topic",
        topic,
        "--group",
        group,
        "--config",
        config,
        "--linger-ms",
        "100",
        *SESSION,
        *extra,
    ]


def test_events_land_once_bad_ones_go_to_the_dead_letter_topic_and_a_replay_is_duplicates(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """Good events are applied exactly and every partition is committed to its end; the bad
    records are on the dead-letter topic with their reasons; a second group reading the same
    committed topic again adds nothing (every event a duplicate)."""
    config, files = _deployment(tmp_path)
    topic, group = _names()
    kafka_broker.create_topic(topic, 3)
    kafka_broker.create_topic(f"{topic}.dead-letters", 1)
    events = _events(300, seed=31)
    messages = _messages(events)
    messages.insert(7, (b"1", b"{oops"))
    messages.insert(70, (b"2", _value(events[0], event_id="fax-1", product="fax")))
    kafka_broker.produce(topic, messages)

    args = _worker(config, topic, group, "--bootstrap-servers", kafka_broker.bootstrap)
    first = _one_json(
        _cli(*args, "--batch-size", "64", "--exit-when-idle", "2", "--json", cwd=tmp_path)
    )
    assert (first["records"], first["applied"], first["duplicates"]) == (302, 300, 0)
    assert first["dead_letters"] == {"decode": 1, "rules": 1}
    assert first["uncommitted"] == 0
    oracle = expected_rows(comms.engine().price_batch(events).charges)
    assert actual_rows(files) == oracle
    committed = kafka_broker.committed(group, topic, 3)
    assert sum(committed.values()) == 302  # every record, each partition to its end

    letters = kafka_broker.read_all(f"{topic}.dead-letters", expected=2)
    headers = sorted(
        ({k: v.decode() for k, v in m.headers()} for m in letters),
        key=lambda h: h["shardbill.stage"],
    )
    assert [h["shardbill.stage"] for h in headers] == ["decode", "rules"]
    assert "not valid JSON" in headers[0]["shardbill.reason"]
    assert headers[1]["shardbill.event_id"] == "fax-1"
    assert headers[1]["shardbill.topic"] == topic
    assert {m.value() for m in letters} == {b"{oops", messages[70][1]}

    replay = _one_json(
        _cli(
            *_worker(
                config, topic, f"{group}-replay", "--bootstrap-servers", kafka_broker.bootstrap
            ),
            "--dead-letters",
            str(tmp_path / "replay-dead.jsonl"),
            "--exit-when-idle",
            "2",
            "--json",
            cwd=tmp_path,
        )
    )
    assert (replay["applied"], replay["duplicates"]) == (0, 300)
    assert actual_rows(files) == oracle
    assert files.ledger() == 300


def test_a_worker_killed_between_its_shard_commits_and_its_offset_commit_loses_and_doubles_nothing(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """kill -9 of a worker after a batch's shard transactions committed and before its offsets
    did: a survivor in the same group takes the partitions over, the redelivered batch is all
    duplicates, and the totals are exact."""
    config, files = _deployment(tmp_path)
    topic, group = _names()
    kafka_broker.create_topic(topic, 2)
    kafka_broker.create_topic(f"{topic}.dead-letters", 1)
    events = _events(240, seed=32)
    kafka_broker.produce(topic, _messages(events))
    args = _worker(config, topic, group, "--bootstrap-servers", kafka_broker.bootstrap)

    killed = subprocess.run(
        [sys.executable, "-m", "tests.support.kafka_worker", "3", *args, "--batch-size", "40"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
        timeout=120,
        env={**os.environ, "SHARDBILL_CONFIG": config},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert "SIGKILL before commit 3" in killed.stdout
    written = files.ledger()
    committed = sum(kafka_broker.committed(group, topic, 2).values())
    assert written > committed  # the killed batch is in the ledger, its offsets are not

    survivor = _one_json(
        _cli(*args, "--batch-size", "40", "--exit-when-idle", "2", "--json", cwd=tmp_path)
    )
    assert survivor["duplicates"] == written - committed
    assert survivor["applied"] == 240 - written
    assert survivor["uncommitted"] == 0
    assert files.ledger() == 240
    assert actual_rows(files) == expected_rows(comms.engine().price_batch(events).charges)
    assert sum(kafka_broker.committed(group, topic, 2).values()) == 240


def test_sigterm_finishes_the_batch_commits_and_exits_zero_with_a_summary(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """SIGTERM to a running worker configured by its file's ``[worker]`` section alone: it
    stops fetching, commits what it wrote, prints its summary and exits 0; nothing is left
    uncommitted."""
    topic, group = _names()
    config, files = _deployment(
        tmp_path,
        f'[worker]\nbootstrap_servers = "{kafka_broker.bootstrap}"\ntopics = ["{topic}"]\n'
        f'group = "{group}"\ndead_letters = "dead.jsonl"\nlinger_ms = 100\n'
        '[worker.kafka]\n"session.timeout.ms" = "6000"\n',
    )
    kafka_broker.create_topic(topic, 2)
    events = _events(150, seed=33)
    kafka_broker.produce(topic, _messages(events))
    errors = tmp_path / "worker.err"
    port, http = _free_port(), _free_port()
    with open(errors, "w") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shardbill",
                "worker",
                "--config",
                config,
                "--progress",
                "0.05",
                "--metrics-port",
                str(port),
                "--http",
                f"127.0.0.1:{http}",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 60
        while files.ledger() < 150 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert files.ledger() == 150
        metrics = _scrape(port, "shardbill_worker_records_total 150.0")
        assert "shardbill_worker_events_applied_total 150.0" in metrics
        assert 'shardbill_commits_total{shard="s0"}' in metrics  # the writer's, same endpoint
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=5) as page:
            assert (page.status, json.loads(page.read())["ok"]) == (200, True)
        assert "shardbill_worker_records_total 150.0" in _scrape(
            http, "shardbill_worker_records_total 150.0"
        )  # --http serves the same registry
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, errors.read_text()
    summary = json.loads(out)
    assert (summary["applied"], summary["uncommitted"], summary["exit_code"]) == (150, 0, 0)
    assert (summary["group"], summary["topics"]) == (group, [topic])
    assert "SIGTERM: finishing the batch" in errors.read_text()
    assert sum(kafka_broker.committed(group, topic, 2).values()) == 150
    assert actual_rows(files) == expected_rows(comms.engine().price_batch(events).charges)


def test_a_worker_joining_mid_stream_rebalances_and_every_event_lands_once(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """A second worker joins the group while the first is consuming a steady trickle of
    events: the first is revoked mid-stream (it commits what it wrote), both then share the
    partitions, and between them every event is applied exactly once."""
    config, files = _deployment(tmp_path)
    topic, group = _names()
    kafka_broker.create_topic(topic, 4)
    events = _events(400, seed=34)
    messages = _messages(events)
    kafka_broker.produce(topic, messages[:200])
    command = [
        sys.executable,
        "-m",
        "shardbill",
        *_worker(config, topic, group, "--bootstrap-servers", kafka_broker.bootstrap),
        "--dead-letters",
        str(tmp_path / "dead.jsonl"),
        "--batch-size",
        "25",
        "--exit-when-idle",
        "8",
        "--json",
    ]

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
        )

    workers = [start()]
    outputs = []
    try:
        deadline = time.monotonic() + 60
        while files.ledger() < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert files.ledger() == 200
        workers.append(start())
        for first in range(200, 400, 20):  # a trickle through the rebalance
            kafka_broker.produce(topic, messages[first : first + 20])
            time.sleep(0.5)
        for process in workers:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            outputs.append(json.loads(out))
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
    first_worker, joiner = outputs
    assert first_worker["rebalances"] >= 2  # assigned, revoked, assigned again
    assert joiner["applied"] > 0
    assert first_worker["applied"] + joiner["applied"] == 400
    assert all(o["uncommitted"] == 0 for o in outputs)
    assert files.ledger() == 400
    assert sum(kafka_broker.committed(group, topic, 4).values()) == 400
    assert actual_rows(files) == expected_rows(comms.engine().price_batch(events).charges)


def test_a_shard_down_pauses_its_partitions_and_after_it_nothing_is_skipped_or_lost(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """In process, on the real broker: while a shard refuses connections the worker pauses
    the partitions waiting for it and retries; once the shard is back every record was
    received exactly once (per-partition pause and resume skip nothing), the totals are
    exact and the partitions are committed to their ends."""
    topic, group = _names()
    kafka_broker.create_topic(topic, 2)
    events = _events(300, seed=35)
    kafka_broker.produce(topic, _messages(events))
    provider = PooledProvider.sqlite_directory(tmp_path, SHARDS)
    outage = Outage(provider)
    writer = AggregationWriter(
        shard_map=ShardMap.create(SHARDS, slots=64),
        provider=outage,
        tables=billing_tables(),
        settings=WriterSettings(retry=RetryPolicy(max_attempts=2, base_delay=0.0)),
    )
    writer.ensure_schema()
    outage.down.add("s1")
    rounds: list[WorkerSummary] = []

    def on_batch(summary: WorkerSummary) -> None:
        rounds.append(summary)
        if summary.retries == 3:  # three failed retry rounds: the shard comes back
            outage.down.clear()

    with writer, provider:
        summary = Worker(
            source=KafkaSource(
                bootstrap_servers=kafka_broker.bootstrap,
                topics=[topic],
                group=group,
                options={"session.timeout.ms": "6000"},
            ),
            processor=Pipeline(engine=comms.engine(), writer=writer),
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(
                batch_size=50, linger=0.05, retry_backoff=0.2, exit_when_idle=2.0
            ),
            on_batch=on_batch,
        ).run()
    assert summary.retries >= 3
    assert max(r.paused_partitions for r in rounds) >= 1
    assert max(r.held for r in rounds) <= 100  # max_held's default: twice the batch
    assert summary.records == 300
    assert (summary.applied, summary.duplicates) == (300, 0)
    assert sum(kafka_broker.committed(group, topic, 2).values()) == 300
    assert actual_rows(_Files(tmp_path)) == expected_rows(
        comms.engine().price_batch(events).charges
    )


def test_a_shard_down_leaves_the_other_partitions_flowing_on_the_real_broker(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """Partition i carries only shard i's events; with s1 down, every event of partitions 0
    and 2 is applied while s1 is still down (only partition 1 is paused); once s1 is back,
    every record was received once, the totals are exact and every partition is committed
    to its end."""
    from confluent_kafka import Producer

    topic, group = _names()
    kafka_broker.create_topic(topic, 3)
    provider = PooledProvider.sqlite_directory(tmp_path, SHARDS)
    outage = Outage(provider)
    writer = AggregationWriter(
        shard_map=ShardMap.create(SHARDS, slots=64),
        provider=outage,
        tables=billing_tables(),
        settings=WriterSettings(retry=RetryPolicy(max_attempts=2, base_delay=0.0)),
    )
    writer.ensure_schema()
    by_partition: dict[int, list[UsageEvent]] = {0: [], 1: [], 2: []}
    for event in _events(2000, seed=41):
        home = writer.locate(event.event_id)[1]
        shards = {home} | {
            writer.locate(c.account)[1] for c in comms.engine().price_batch([event]).charges
        }
        if len(shards) == 1:  # an event of exactly one shard: its partition is its shard's
            by_partition[SHARDS.index(shards.pop())].append(event)
    assert all(len(events) > 30 for events in by_partition.values())
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "enable.idempotence": True})
    for partition, events in by_partition.items():
        for event in events:
            producer.produce(topic, value=_value(event), partition=partition)
    assert producer.flush(30) == 0
    events = [e for p in (0, 1, 2) for e in by_partition[p]]
    healthy = len(by_partition[0]) + len(by_partition[2])
    outage.down.add("s1")
    landed_while_down: list[bool] = []

    def on_batch(summary: WorkerSummary) -> None:
        if outage.down and (summary.applied >= healthy or summary.retries >= 40):
            landed_while_down.append(summary.applied == healthy)
            outage.down.clear()

    with writer, provider:
        summary = Worker(
            source=KafkaSource(
                bootstrap_servers=kafka_broker.bootstrap,
                topics=[topic],
                group=group,
                options={"session.timeout.ms": "6000"},
            ),
            processor=Pipeline(engine=comms.engine(), writer=writer),
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(
                batch_size=30,
                linger=0.05,
                retry_backoff=0.05,
                retry_backoff_max=0.2,
                exit_when_idle=2.0,
            ),
            on_batch=on_batch,
        ).run()
    assert landed_while_down == [True]
    assert summary.records == len(events)  # pause and resume skipped and repeated nothing
    assert (summary.applied, summary.duplicates) == (len(events), 0)
    committed = kafka_broker.committed(group, topic, 3)
    assert committed == {p: len(by_partition[p]) for p in (0, 1, 2)}
    assert actual_rows(_Files(tmp_path)) == expected_rows(
        comms.engine().price_batch(events).charges
    )


def test_a_slow_shard_pauses_its_partition_holds_memory_bounded_and_ends_exact(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """A shard that answers but is slow: another connection holds its SQLite file's write
    lock, so its transactions wait out the lock timeout and fail past the writer's retries.
    Partition i carries only shard i's events. While s1 is slow, only partition 1 is paused,
    the records held never exceed ``max_held`` (the loop's count, per partition too), and
    every event of partitions 0 and 2 lands; once the lock is released, every record was
    received once, the totals equal the oracle's and every partition is committed to its
    end."""
    from confluent_kafka import Producer

    topic, group = _names()
    kafka_broker.create_topic(topic, 3)
    provider = PooledProvider.sqlite_directory(tmp_path, SHARDS, options="busy_timeout=0.02")
    writer = AggregationWriter(
        shard_map=ShardMap.create(SHARDS, slots=64),
        provider=provider,
        tables=billing_tables(),
        settings=WriterSettings(retry=RetryPolicy(max_attempts=2, base_delay=0.0)),
    )
    writer.ensure_schema()
    by_partition: dict[int, list[UsageEvent]] = {0: [], 1: [], 2: []}
    for event in _events(2000, seed=43):
        home = writer.locate(event.event_id)[1]
        shards = {home} | {
            writer.locate(c.account)[1] for c in comms.engine().price_batch([event]).charges
        }
        if len(shards) == 1:  # an event of exactly one shard: its partition is its shard's
            by_partition[SHARDS.index(shards.pop())].append(event)
    assert all(len(events) > 60 for events in by_partition.values())
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "enable.idempotence": True})
    for partition, events in by_partition.items():
        for event in events:
            producer.produce(topic, value=_value(event), partition=partition)
    assert producer.flush(30) == 0
    events = [e for p in (0, 1, 2) for e in by_partition[p]]
    healthy = len(by_partition[0]) + len(by_partition[2])
    lock = sqlite3.connect(tmp_path / "s1.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # s1's write lock, held until released below
    slow = True
    max_held = 60
    landed_while_slow: list[bool] = []
    held: list[int] = []
    held_by_partition: list[int] = []
    paused_sets: list[frozenset[int]] = []
    holder: list[Worker] = []

    def on_batch(summary: WorkerSummary) -> None:
        nonlocal slow
        held.append(summary.held)
        states = holder[0].partitions()
        held_by_partition.extend(s.held for s in states)
        if slow:
            paused_sets.append(frozenset(s.partition for s in states if s.paused))
            if summary.applied >= healthy or summary.retries >= 60:
                landed_while_slow.append(summary.applied == healthy)
                lock.execute("ROLLBACK")
                slow = False

    try:
        with writer, provider:
            worker = Worker(
                source=KafkaSource(
                    bootstrap_servers=kafka_broker.bootstrap,
                    topics=[topic],
                    group=group,
                    options={"session.timeout.ms": "6000"},
                ),
                processor=Pipeline(engine=comms.engine(), writer=writer),
                dead_letters=MemoryDeadLetters(),
                settings=WorkerSettings(
                    batch_size=30,
                    max_held=max_held,
                    linger=0.05,
                    retry_backoff=0.05,
                    retry_backoff_max=0.2,
                    exit_when_idle=2.0,
                ),
                on_batch=on_batch,
            )
            holder.append(worker)
            summary = worker.run()
    finally:
        lock.close()
    assert landed_while_slow == [True]
    assert frozenset({1}) in paused_sets  # partition 1 alone paused while the others flowed
    assert summary.retries >= 1
    assert summary.peak_held <= max_held
    assert max(held) <= max_held
    assert max(held_by_partition) <= max_held
    assert summary.records == len(events)  # pause and resume skipped and repeated nothing
    assert (summary.applied, summary.duplicates) == (len(events), 0)
    committed = kafka_broker.committed(group, topic, 3)
    assert committed == {p: len(by_partition[p]) for p in (0, 1, 2)}
    assert actual_rows(_Files(tmp_path)) == expected_rows(
        comms.engine().price_batch(events).charges
    )
