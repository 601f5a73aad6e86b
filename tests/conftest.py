"""Shared fixtures: the local MySQL/MariaDB server and a fresh database per test session."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

import shardbill.writer.aggregation
from tests.support.clock import fixed_clock
from tests.support.mysql import (
    SKIP_REASON,
    ServerAddress,
    configured_address,
    mysql_required,
)

pytest_plugins = [
    "tests.support.server_fixtures",
    "tests.support.backends",
    "tests.support.rule_package",
    "tests.support.kafka_fixtures",
]

_MYSQL_FIXTURES = {"mysql_server", "mysql_database", "mysql_database_url", "private_servers"}


@pytest.fixture(autouse=True)
def _fixed_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers built without a clock read TEST_NOW, so the dedup horizon does not move
    with the date the suite runs on (its data is dated around November 2026)."""
    monkeypatch.setattr(shardbill.writer.aggregation, "wall_clock", fixed_clock)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses a MySQL fixture carries the ``mysql`` marker (for ``-m``)."""
    for item in items:
        if _MYSQL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.mysql)


@pytest.fixture(scope="session")
def mysql_server() -> ServerAddress:
    """The running server at SHARDBILL_TEST_MYSQL_URL; skips (or fails under CI) without one."""
    address = configured_address()
    try:
        conn = address.connect(connect_timeout=5)
    except Exception as exc:  # any failure means "no usable server"
        where = f"{address.host}:{address.port}"
        reason = SKIP_REASON.format(where=where, error=type(exc).__name__)
        if mysql_required():
            pytest.fail(f"MySQL tests are mandatory here (CI): {reason}", pytrace=False)
        pytest.skip(reason)
    conn.close()  # type: ignore[attr-defined]
    return address


@pytest.fixture(scope="session")
def mysql_database(mysql_server: ServerAddress) -> Iterator[str]:
    """A database created fresh for this test session and dropped after it; yields its name."""
    name = f"shardbill_test_{secrets.token_hex(4)}"
    conn = mysql_server.connect()
    with conn.cursor() as cur:  # type: ignore[attr-defined]
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield name
    finally:
        with conn.cursor() as cur:  # type: ignore[attr-defined]
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def mysql_database_url(mysql_server: ServerAddress, mysql_database: str) -> str:
    """A ``mysql+pymysql://`` URL for the session database."""
    return mysql_server.url(mysql_database)
