"""The private Kafka-protocol broker of the ``kafka`` tests: one per session.

A plugin of tests/conftest.py, so that the worker tests and the docs tests
(``tests/test_docs.py`` runs the stream-worker tutorial on it) share one broker.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.kafka import KafkaBroker, start_broker, stop_broker, unavailable


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """Tansu on a free port for the whole session; skips (or fails under CI) when it cannot run."""
    try:
        import confluent_kafka  # noqa: F401 - the tests' client

        broker = start_broker(tmp_path_factory.mktemp("kafka"))
    except (ImportError, RuntimeError, OSError) as exc:
        unavailable(f"{type(exc).__name__}: {exc}")
    try:
        yield broker
    finally:
        stop_broker(broker)
