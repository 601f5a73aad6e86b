"""Where the simulation's shards live: SQLite files (default) or databases on MariaDB.

On MariaDB every example gets one fresh database per shard name on the
server the MySQL tests use (``SHARDBILL_TEST_MYSQL_URL``, see
``tests/support/mysql.py``), dropped when the example ends. The actors and
faults are the same: the step gates and the injected COMMIT cuts live in the
connection provider, not in a driver.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from shardbill import PooledProvider
from tests.support.mysql import configured_address

Backend = Callable[[Path, tuple[str, ...]], tuple[PooledProvider, Callable[[], None]]]


def sqlite_backend(
    root: Path, shards: tuple[str, ...]
) -> tuple[PooledProvider, Callable[[], None]]:
    """One SQLite file per shard under ``root``."""
    provider = PooledProvider.sqlite_directory(
        root, shards, options="synchronous=normal&busy_timeout=10"
    )
    return provider, lambda: None


def mariadb_backend(
    root: Path, shards: tuple[str, ...]
) -> tuple[PooledProvider, Callable[[], None]]:
    """One database per shard on the configured MariaDB server (PyMySQL)."""
    del root
    server = configured_address()
    tag = secrets.token_hex(4)
    names = {s: f"sbsim_{tag}_{s}" for s in shards}
    conn = server.connect()
    with conn.cursor() as cur:  # type: ignore[attr-defined]
        for name in names.values():
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn.close()  # type: ignore[attr-defined]
    provider = PooledProvider.from_urls({s: server.url(db, "pymysql") for s, db in names.items()})

    def drop() -> None:
        done = server.connect()
        with done.cursor() as cur:  # type: ignore[attr-defined]
            for name in names.values():
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        done.close()  # type: ignore[attr-defined]

    return provider, drop


BACKENDS: dict[str, Backend] = {"sqlite": sqlite_backend, "mariadb": mariadb_backend}
