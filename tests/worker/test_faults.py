"""Fault tests of ``shardbill worker`` on the real broker (Tansu): members coming and going,
a shard server killed under the workers, the broker restarted.

Each test runs workers as processes on a topic and group of its own, injects
its fault while events are flowing, and ends with the shards' totals equal to
an independent oracle's, every event once in the ledgers and every partition
committed to its end: nothing lost, nothing doubled. Waits are bounded and
say what they waited for; nothing asserts on how long anything took. They
take tens of seconds each (rebalances with the classic protocol take
seconds), so they are marked ``slow`` as well as ``kafka``.

A poison message (not JSON, or no rule for its product) is covered by
``test_kafka.py::test_events_land_once_bad_ones_go_to_the_dead_letter_topic_and_a_replay_is_duplicates``:
it goes to the dead letters and every partition is committed to its end.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardbill.rules import comms
from tests.support.kafka import (
    KafkaBroker,
    S3Server,
    start_broker,
    start_s3,
    stop_broker,
    unavailable,
)
from tests.support.oracle import actual_rows, expected_rows
from tests.support.server_fixtures import ServerFactory
from tests.support.servers import MariaDBServer
from tests.support.worker_fleet import Fleet, SqliteShards, events, message, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SHARDS = ("s0", "s1", "s2")


def test_three_workers_joining_and_leaving_mid_batch_lose_and_double_nothing(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """A first worker consumes; two more join while events trickle in; one of them leaves
    cleanly (SIGTERM) and the other is SIGKILLed, each while batches wait to fill (a long
    linger), so every rebalance revokes partitions mid-batch; a fourth joins after the kill.
    Once the two left are idle, every event is in the ledger once, the totals equal the
    oracle's and every partition is committed to its end."""
    shards = SqliteShards(tmp_path / "shards", SHARDS)
    shards.directory.mkdir()
    fleet = Fleet.deploy(tmp_path / "deploy", shards, shards.urls(), kafka_broker.bootstrap)
    kafka_broker.create_topic(fleet.topic, 6)
    day = events(900, seed=41)
    messages = [message(e) for e in day]
    kafka_broker.produce(fleet.topic, messages[:300])
    options = ("--batch-size", "40", "--linger-ms", "1500", "--exit-when-idle", "15")
    try:
        first = fleet.start("a", *options)
        wait_until("worker a to write its first events", lambda: fleet.ledger() >= 40, timeout=90)
        joiners = [fleet.start("b", *options), fleet.start("c", *options)]
        sent = 300
        for step in range(12):  # a trickle through the joins and the leaves
            kafka_broker.produce(fleet.topic, messages[sent : sent + 40])
            sent += 40
            time.sleep(0.5)
            if step == 5:
                joiners[0].send_signal(signal.SIGTERM)  # b leaves cleanly, mid-batch
            if step == 8:
                joiners[1].kill()  # c dies: its partitions come back after its session
                late = fleet.start("d", *options)
        kafka_broker.produce(fleet.topic, messages[sent:])
        leaver = fleet.finish(joiners[0], "b", timeout=120)
        assert leaver["uncommitted"] == 0  # b drained and committed what it wrote
        joiners[1].communicate(timeout=30)
        assert joiners[1].returncode == -signal.SIGKILL
        summaries = [fleet.finish(first, "a", timeout=240), fleet.finish(late, "d", timeout=240)]
    finally:
        fleet.kill_all()
    assert summaries[0]["rebalances"] >= 3, summaries[0]  # a: joined, b and c came, b/c went
    for summary in (*summaries, leaver):
        assert summary["uncommitted"] == 0, summary
        assert summary["dead_lettered"] == 0, summary
    assert fleet.ledger() == 900
    assert actual_rows(shards) == expected_rows(comms.engine().price_batch(day).charges)
    assert sum(kafka_broker.committed(fleet.group, fleet.topic, 6).values()) == 900


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    """A private S3 endpoint (moto) for a broker whose topics survive a restart."""
    try:
        server = start_s3(tmp_path)
    except RuntimeError as exc:
        unavailable(f"{exc} (pip install 'moto[server]==5.2.5')")
    try:
        yield server
    finally:
        server.stop()


def test_the_broker_killed_and_restarted_under_two_workers_loses_and_doubles_nothing(
    kafka_broker: KafkaBroker,  # not used: it skips the test (or fails it in CI) without Tansu
    s3: S3Server,
    tmp_path: Path,
) -> None:
    """A broker of its own, on S3 storage (memory storage would lose the topic): SIGKILLed
    while two workers consume, down for a few seconds, started again on the same port; the
    workers reconnect (offset commits refused meanwhile are counted, their records read
    again as duplicates), the rest of the events is produced after the restart, and in the
    end every event is in the ledger once and the totals equal the oracle's."""
    env = s3.broker_env()
    broker = start_broker(tmp_path, storage="s3://tansu/", env=env)
    shards = SqliteShards(tmp_path / "shards", SHARDS)
    shards.directory.mkdir()
    fleet = Fleet.deploy(tmp_path / "deploy", shards, shards.urls(), broker.bootstrap)
    broker.create_topic(fleet.topic, 4)
    day = events(600, seed=42)
    messages = [message(e) for e in day]
    broker.produce(fleet.topic, messages[:400])
    options = ("--batch-size", "25", "--linger-ms", "200", "--exit-when-idle", "25")
    try:
        workers = [fleet.start("a", *options), fleet.start("b", *options)]
        wait_until("the workers to write 50 events", lambda: fleet.ledger() >= 50, timeout=90)
        broker.process.kill()  # a crash: no shutdown
        broker.process.wait()
        before = fleet.ledger()
        time.sleep(3)  # down for a while: polls and commits fail meanwhile
        broker = start_broker(tmp_path, port=broker.port, storage="s3://tansu/", env=env)
        broker.produce(fleet.topic, messages[400:])
        summaries = [
            fleet.finish(w, name, timeout=300) for w, name in zip(workers, "ab", strict=True)
        ]
        assert before < 600, "the broker was killed after every event was written"
        assert fleet.ledger() == 600
        assert sum(broker.committed(fleet.group, fleet.topic, 4).values()) == 600
    finally:
        fleet.kill_all()
        stop_broker(broker)
    for summary in summaries:
        assert (summary["uncommitted"], summary["dead_lettered"]) == (0, 0), summary
    assert sum(s["applied"] for s in summaries) == 600
    assert actual_rows(shards) == expected_rows(comms.engine().price_batch(day).charges)


class _MariaDBShards:
    """Shard databases on private servers, read directly with PyMySQL."""

    def __init__(self, where: dict[str, tuple[MariaDBServer, str]]) -> None:
        self.where = where
        self.shards = tuple(where)

    def rows(self, shard: str, sql: str) -> list[tuple[Any, ...]]:
        server, database = self.where[shard]
        found = server.execute(sql, database=database)
        return [tuple(v.isoformat() if isinstance(v, dt.date) else v for v in r) for r in found]


@pytest.mark.mysql
def test_a_shard_server_killed_under_two_workers_and_restarted_loses_and_doubles_nothing(
    kafka_broker: KafkaBroker, private_servers: ServerFactory, tmp_path: Path
) -> None:
    """Three shards on two private MariaDB servers; the server of one shard is SIGKILLed
    while two workers write, and started again (InnoDB crash recovery) after a few seconds.
    The workers pause and retry the waiting batches meanwhile (none exits, nothing is
    committed past a batch not written); in the end every event is in the ledger once and
    the totals equal the oracle's."""
    servers = private_servers(2)
    where = {"s0": (servers[0], "sb_w0"), "s1": (servers[0], "sb_w1"), "s2": (servers[1], "sb_w2")}
    for server, database in where.values():
        server.execute(f"CREATE DATABASE `{database}`")
    shards = _MariaDBShards(where)
    urls = {shard: server.url(database) for shard, (server, database) in where.items()}
    fleet = Fleet.deploy(
        tmp_path, shards, urls, kafka_broker.bootstrap, writer="retry_seconds = 1\n"
    )
    kafka_broker.create_topic(fleet.topic, 4)
    day = events(600, seed=43)
    messages = [message(e) for e in day]
    kafka_broker.produce(fleet.topic, messages[:300])
    options = ("--batch-size", "25", "--linger-ms", "200", "--exit-when-idle", "20")
    try:
        workers = [fleet.start("a", *options), fleet.start("b", *options)]
        wait_until("the workers to write 50 events", lambda: fleet.ledger() >= 50, timeout=90)
        servers[1].kill()  # s2's server crashes under the workers
        kafka_broker.produce(fleet.topic, messages[300:])
        time.sleep(4)  # down longer than the writer's retry budget: the workers pause
        assert all(w.poll() is None for w in workers), "a worker exited while a shard was down"
        servers[1].restart()
        summaries = [
            fleet.finish(w, name, timeout=300) for w, name in zip(workers, "ab", strict=True)
        ]
    finally:
        fleet.kill_all()
    assert sum(s["retries"] for s in summaries) >= 1, summaries  # the outage was seen
    for summary in summaries:
        assert (summary["uncommitted"], summary["dead_lettered"]) == (0, 0), summary
    assert sum(s["applied"] for s in summaries) == 600
    assert fleet.ledger() == 600
    assert actual_rows(shards) == expected_rows(comms.engine().price_batch(day).charges)
    assert sum(kafka_broker.committed(fleet.group, fleet.topic, 4).values()) == 600
