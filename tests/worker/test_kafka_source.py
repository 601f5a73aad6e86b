"""The Kafka source's own contract, against the private Tansu broker (no shards, no worker).

The worker's memory bound rests on it: while the source is paused, a poll
returns nothing, even the poll inside which the group assigns partitions.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Sequence

import pytest

from shardbill.errors import ConfigurationError, StreamError
from shardbill.worker.kafka import KafkaSource
from shardbill.worker.records import Partition, Record
from tests.support.kafka import KafkaBroker

pytestmark = pytest.mark.kafka

SESSION = {"session.timeout.ms": "6000"}


class _Listener:
    """Records the assignments and revocations the source reports."""

    def __init__(self) -> None:
        self.assigned_partitions: list[Partition] = []
        self.revoked_partitions: list[Partition] = []

    def assigned(self, partitions: Sequence[Partition]) -> None:
        self.assigned_partitions.extend(partitions)

    def revoked(self, partitions: Sequence[Partition]) -> None:
        self.revoked_partitions.extend(partitions)

    def lost(self, partitions: Sequence[Partition]) -> None:
        """Nothing to do: the test commits nothing."""


def _names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"source-{tag}", f"source-group-{tag}"


def _poll_until_assigned(source: KafkaSource, listener: _Listener, polls: int) -> list[Record]:
    """Poll (each with room for one record, as a worker at its bound does) until the
    assignment came and a few more polls passed; returns every record received."""
    got: list[Record] = []
    after = 0
    for _ in range(polls):
        got.extend(source.poll(1, 2.0))
        if listener.assigned_partitions:
            after += 1
            if after > 2:
                break
    assert listener.assigned_partitions, "the group never assigned the topic's partitions"
    return got


def test_a_paused_source_returns_nothing_from_the_poll_that_assigns_its_partitions(
    kafka_broker: KafkaBroker,
) -> None:
    """A source paused before its first assignment returns no record, neither from the poll
    in which the group hands it the partitions (librdkafka assigns them unpaused) nor after;
    once resumed it returns every record exactly once. This is what keeps a worker at its
    ``max_held`` bound from taking one record more when a poll assigns partitions."""
    topic, group = _names()
    kafka_broker.create_topic(topic, 2)
    kafka_broker.produce(topic, [(None, b'{"n": %d}' % i) for i in range(20)])
    listener = _Listener()
    source = KafkaSource(
        bootstrap_servers=kafka_broker.bootstrap, topics=[topic], group=group, options=SESSION
    )
    source.start(listener)
    try:
        source.pause(True)
        while_paused = _poll_until_assigned(source, listener, polls=30)
        assert while_paused == []
        source.pause(False)
        got: list[Record] = []
        for _ in range(40):
            got.extend(source.poll(20, 1.0))
            if len(got) >= 20:
                break
        assert sorted((r.partition, r.offset) for r in got) == sorted(
            {(r.partition, r.offset) for r in got}
        )
        assert len(got) == 20
    finally:
        source.close()


def test_partitions_held_before_the_assignment_stay_paused_through_it(
    kafka_broker: KafkaBroker,
) -> None:
    """A partition named by ``pause_partitions`` before the group assigns it returns nothing
    from the assigning poll on, while the other partition flows."""
    topic, group = _names()
    kafka_broker.create_topic(topic, 2)
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for i in range(10):
        for partition in (0, 1):
            producer.produce(topic, value=b'{"n": %d}' % i, partition=partition)
    assert producer.flush(30) == 0
    listener = _Listener()
    source = KafkaSource(
        bootstrap_servers=kafka_broker.bootstrap, topics=[topic], group=group, options=SESSION
    )
    source.start(listener)
    try:
        source.pause_partitions({(topic, 1)})
        got = _poll_until_assigned(source, listener, polls=30)
        for _ in range(20):
            got.extend(source.poll(10, 0.5))
            if sum(1 for r in got if r.partition == 0) >= 10:
                break
        assert {r.partition for r in got} == {0}
        assert len(got) == 10
    finally:
        source.close()


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_no_reachable_broker_fails_the_start_naming_the_servers_and_the_fix() -> None:
    """A source whose brokers do not answer fails its start with a StreamError naming the
    bootstrap servers and what to check, instead of polling an empty group for ever."""
    pytest.importorskip("confluent_kafka")
    servers = f"127.0.0.1:{_closed_port()}"
    source = KafkaSource(
        bootstrap_servers=servers, topics=["usage"], group="g", connect_timeout=0.5
    )
    with pytest.raises(StreamError) as caught:
        source.start(_Listener())
    message = str(caught.value)
    assert servers in message
    assert "--bootstrap-servers" in message
    assert "--connect-timeout" in message
    with pytest.raises(StreamError, match="not started"):
        source.poll(1, 0.1)  # nothing was left half open


@pytest.mark.parametrize("value", [0, -1.0, float("nan")])
def test_a_connect_timeout_that_is_not_positive_is_refused(value: float) -> None:
    """The connect timeout is a number of seconds > 0; the error names it and the value."""
    with pytest.raises(ConfigurationError, match=r"connect_timeout.*must be > 0 seconds"):
        KafkaSource(bootstrap_servers="x:1", topics=["usage"], group="g", connect_timeout=value)
