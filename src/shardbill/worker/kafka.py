"""Kafka for the stream worker, through confluent-kafka (the ``shardbill[kafka]`` extra).

:class:`KafkaSource` is one member of a consumer group on the classic group
protocol with an eager assignor (every rebalance revokes all partitions
first, so a revoke is the moment to commit): auto-commit and the automatic
offset store are off, and offsets are committed synchronously, only the
ones the worker passes. A new group starts from the earliest offset.
:class:`KafkaDeadLetters` produces dead letters to a topic with an
idempotent producer (``acks=all``) and waits for every delivery report
before returning, so a letter's offset is committed only once the broker
has the letter. The letter keeps the record's key and value; its
``shardbill.*`` headers carry the stage, the reason and the source topic,
partition and offset.

``options`` pass librdkafka settings through (``security.protocol``,
``sasl.*``, ``ssl.*``, timeouts); the worker's own settings (group id,
auto-commit, offset store) cannot be overridden. Their values are never
logged or shown in an error (a ``sasl.password`` is one).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

from shardbill.errors import ConfigurationError, DriverNotInstalledError, StreamError
from shardbill.worker.protocols import RebalanceListener
from shardbill.worker.records import DeadLetter, Partition, Record

if TYPE_CHECKING:
    import confluent_kafka

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "KafkaDeadLetters", "KafkaSource"]

_log = logging.getLogger("shardbill.worker.kafka")

DEFAULT_CONNECT_TIMEOUT = 30.0
"""Seconds a :class:`KafkaSource` waits at its start for a broker to answer."""

_FIXED = ("group.id", "enable.auto.commit", "enable.auto.offset.store", "bootstrap.servers")


def _kafka() -> Any:
    try:
        import confluent_kafka
    except ImportError as exc:
        raise DriverNotInstalledError(
            "the Kafka source needs confluent-kafka: pip install 'shardbill[kafka]'"
        ) from exc
    return confluent_kafka


def _check_options(options: Mapping[str, str]) -> dict[str, str]:
    for key in options:
        if key in _FIXED:
            raise ConfigurationError(
                f"Kafka option {key!r} is set by the worker; remove it from the options "
                "(use --bootstrap-servers / --group)"
            )
    return dict(options)


def _error(what: str, exc: BaseException) -> StreamError:
    return StreamError(f"Kafka {what} failed: {exc}")


def _detail(exc: Any) -> str:
    """A KafkaException's own text (its KafkaError's), else ``str(exc)``."""
    return str(exc.args[0].str()) if exc.args and hasattr(exc.args[0], "str") else str(exc)


def _refused(what: str, exc: Any) -> ConfigurationError:
    # librdkafka refuses a setting when the client is created: name it, say where it came from.
    return ConfigurationError(
        f"Kafka refused the {what} settings: {_detail(exc)}; check the --kafka-option values"
    )


class KafkaSource:
    """One consumer of ``topics`` in ``group`` (see the module docstring).

    Args:
        bootstrap_servers: ``host:port[,host:port...]``.
        topics: the topics to read.
        group: the consumer group id (all workers of a fleet share it).
        options: more librdkafka settings (``session.timeout.ms``,
            ``security.protocol``...).
        connect_timeout: seconds :meth:`start` waits for a broker to answer
            (a metadata request) before it fails.

    Raises:
        ConfigurationError: no topic, no group, or a connect timeout not > 0.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topics: Sequence[str],
        group: str,
        options: Mapping[str, str] | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        if not topics:
            raise ConfigurationError("KafkaSource needs at least one topic (--topic NAME)")
        if not group:
            raise ConfigurationError("KafkaSource needs a consumer group id (--group NAME)")
        number = isinstance(connect_timeout, int | float) and not isinstance(connect_timeout, bool)
        if not (number and math.isfinite(connect_timeout) and connect_timeout > 0):
            raise ConfigurationError(
                f"'connect_timeout' must be > 0 seconds: {connect_timeout!r} (the default is "
                f"{DEFAULT_CONNECT_TIMEOUT:g})"
            )
        self._connect_timeout = float(connect_timeout)
        self._bootstrap = bootstrap_servers
        self._config: dict[str, str | bool] = {
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "range,roundrobin",  # eager: revoke all, then assign
            **_check_options(options or {}),
            "bootstrap.servers": bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
        self._topics = list(topics)
        self._group = group
        strategy = str(self._config["partition.assignment.strategy"])
        self._cooperative = "cooperative" in strategy  # incremental assignments
        self._consumer: confluent_kafka.Consumer | None = None
        self._listener: RebalanceListener | None = None
        self._paused = False
        self._held: frozenset[Partition] = frozenset()
        self._stale = False  # the consumer's paused partitions may differ from the wanted ones

    def __repr__(self) -> str:
        return f"KafkaSource(topics={self._topics!r}, group={self._group!r})"

    def start(self, listener: RebalanceListener) -> None:
        """Create the consumer, check that a broker answers, and subscribe (the group is
        joined in the first polls).

        Raises:
            ConfigurationError: librdkafka refused a setting (an unknown or bad option).
            StreamError: no broker answered within ``connect_timeout`` seconds.
        """
        kafka = _kafka()
        self._listener = listener
        try:
            consumer = kafka.Consumer(self._config)
        except kafka.KafkaException as exc:
            raise _refused("consumer", exc) from None
        try:
            # librdkafka itself retries an unreachable broker for ever, and an empty group
            # looks like an idle one: ask for the cluster's metadata, within a bound.
            consumer.list_topics(timeout=self._connect_timeout)
        except kafka.KafkaException as exc:
            consumer.close()
            raise StreamError(
                f"Kafka: no broker of {self._bootstrap} answered within "
                f"{self._connect_timeout:g} s ({_detail(exc)}): check --bootstrap-servers "
                "(or [worker] bootstrap_servers, $SHARDBILL_KAFKA_BOOTSTRAP), that the brokers "
                "run and that this host reaches them (and the --kafka-option security "
                "settings); --connect-timeout SECONDS waits longer"
            ) from None
        consumer.subscribe(
            self._topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._consumer = consumer

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        assert self._listener is not None  # noqa: S101 - set in start()
        self._stale = True  # the next poll applies the wanted pauses to the whole assignment
        self._listener.assigned([(p.topic, p.partition) for p in partitions])
        # librdkafka hands the partitions over unpaused (a pause before the assignment does
        # not stick), and this very poll would fetch from them: assign them here, then pause
        # what must not flow (every one while paused, else the held ones).
        stop = [p for p in partitions if self._paused or (p.topic, p.partition) in self._held]
        if stop:
            if self._cooperative:
                consumer.incremental_assign(partitions)
            else:
                consumer.assign(partitions)
            consumer.pause(stop)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        assert self._listener is not None  # noqa: S101 - set in start()
        self._listener.revoked([(p.topic, p.partition) for p in partitions])

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        assert self._listener is not None  # noqa: S101 - set in start()
        self._listener.lost([(p.topic, p.partition) for p in partitions])

    def _live(self) -> confluent_kafka.Consumer:
        if self._consumer is None:
            raise StreamError("the Kafka source is not started (or closed already)")
        return self._consumer

    def poll(self, max_records: int, timeout: float) -> Sequence[Record]:
        """Up to ``max_records`` records (rebalance callbacks run in here).

        Raises:
            StreamError: a fatal consumer error (a partition's end is no error).
        """
        consumer = self._live()
        kafka = _kafka()
        if self._paused or self._stale:
            self._apply_pauses(consumer)
        try:
            messages = consumer.consume(num_messages=max_records, timeout=timeout)
        except kafka.KafkaException as exc:
            raise _error("poll", exc) from None
        out: list[Record] = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == kafka.KafkaError._PARTITION_EOF:
                    continue
                if error.fatal():
                    raise _error("consumer", kafka.KafkaException(error))
                _log.warning("Kafka consumer: %s", error)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                continue
            value = message.value()
            out.append(
                Record(
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    value=value if isinstance(value, bytes) else b"",
                    key=_bytes(message.key()),
                )
            )
        return out

    def _apply_pauses(self, consumer: confluent_kafka.Consumer) -> None:
        # Pause what must be (all when paused, else the held partitions), resume the rest.
        self._stale = False
        assignment = consumer.assignment()
        if not assignment:
            return
        if self._paused:
            consumer.pause(assignment)
            return
        stop = [tp for tp in assignment if (tp.topic, tp.partition) in self._held]
        go = [tp for tp in assignment if (tp.topic, tp.partition) not in self._held]
        if stop:
            consumer.pause(stop)
        if go:
            consumer.resume(go)

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit synchronously.

        Raises:
            StreamError: the commit failed (or a partition's part of it did).
        """
        kafka = _kafka()
        consumer = self._live()
        wanted = [kafka.TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
        try:
            answer = consumer.commit(offsets=wanted, asynchronous=False)
        except kafka.KafkaException as exc:
            raise _error("offset commit", exc) from None
        failed = [p for p in answer or () if p.error is not None]
        if failed:
            first = failed[0]
            raise StreamError(
                f"Kafka offset commit failed for {first.topic}[{first.partition}]: {first.error}"
            )

    def pause(self, paused: bool) -> None:
        """Pause or resume every assigned partition (resuming keeps the held ones paused)."""
        consumer = self._live()
        self._paused = paused
        self._apply_pauses(consumer)

    def pause_partitions(self, partitions: AbstractSet[Partition]) -> None:
        """Pause exactly these assigned partitions; resume the others (unless all are paused)."""
        consumer = self._live()
        self._held = frozenset(partitions)
        self._apply_pauses(consumer)

    def end_offsets(self, partitions: AbstractSet[Partition]) -> dict[Partition, int]:
        """The high watermarks librdkafka cached from its last fetch responses (no round trip);
        a partition with none known yet is left out."""
        consumer = self._consumer
        if consumer is None:
            return {}
        kafka = _kafka()
        out: dict[Partition, int] = {}
        for topic, number in partitions:
            try:
                marks = consumer.get_watermark_offsets(
                    kafka.TopicPartition(topic, number), cached=True
                )
            except kafka.KafkaException:
                continue
            if marks is not None and marks[1] >= 0:
                out[(topic, number)] = int(marks[1])
        return out

    def close(self) -> None:
        """Leave the group: the revoke callback runs (the worker commits), then the consumer
        closes. Idempotent."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()


def _bytes(value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return str(value).encode()


class KafkaDeadLetters:
    """Produces dead letters to ``topic``, waiting for every delivery (see the module docstring).

    Args:
        bootstrap_servers: ``host:port[,host:port...]``.
        topic: the dead-letter topic (it must exist, or the broker must create it).
        options: more librdkafka producer settings.
        timeout: seconds to wait for the deliveries of one send.

    Raises:
        ConfigurationError: librdkafka refused a setting.
        DriverNotInstalledError: confluent-kafka is not installed.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        options: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not topic:
            raise ConfigurationError("KafkaDeadLetters needs a topic (--dead-letter-topic NAME)")
        self._topic = topic
        self._timeout = timeout
        self._config: dict[str, str | bool] = {
            "enable.idempotence": True,
            "acks": "all",
            **_check_options(options or {}),
            "bootstrap.servers": bootstrap_servers,
        }
        kafka = _kafka()
        try:  # now, so that a bad setting stops the worker before it reads anything
            self._producer: confluent_kafka.Producer | None = kafka.Producer(self._config)
        except kafka.KafkaException as exc:
            raise _refused("dead-letter producer", exc) from None

    def __repr__(self) -> str:
        return f"KafkaDeadLetters(topic={self._topic!r})"

    @property
    def topic(self) -> str:
        """The dead-letter topic."""
        return self._topic

    def send(self, letters: Iterable[DeadLetter]) -> None:
        """Produce the letters and wait until the broker acknowledged each.

        Raises:
            StreamError: a letter was not acknowledged in time (they are all sent
                again later: the topic may then hold a letter twice).
        """
        kafka = _kafka()
        producer = self._producer
        if producer is None:
            raise StreamError("the dead-letter producer is closed")
        errors: list[str] = []

        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                errors.append(str(error))

        sent = 0
        for letter in letters:
            try:
                producer.produce(
                    self._topic,
                    value=letter.record.value,
                    key=letter.record.key,
                    headers=list(letter.headers().items()),
                    on_delivery=delivered,
                )
            except (kafka.KafkaException, BufferError) as exc:
                raise _error("dead-letter send", exc) from None
            sent += 1
        if not sent:
            return
        left = producer.flush(self._timeout)
        if left:
            raise StreamError(
                f"Kafka dead-letter send: {left} of {sent} letters not acknowledged within "
                f"{self._timeout:g} s"
            )
        if errors:
            raise StreamError(f"Kafka dead-letter send failed: {errors[0]}")

    def close(self) -> None:
        """Wait for what is in flight (up to the timeout) and drop the producer."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(self._timeout)
