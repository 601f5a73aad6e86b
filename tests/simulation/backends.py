"""Where the simulation's shards live: SQLite files (default) or databases on MariaDB.

On ``mariadb`` every example gets one fresh database per shard name on the
server the MySQL tests use (``SHARDBILL_TEST_MYSQL_URL``, see
``tests/support/mysql.py``), dropped when the example ends. On ``servers``
the shards are spread over two private ``mariadbd`` servers of this process
(started once, at the first example), which the scheduler may SIGKILL and
restart (InnoDB crash recovery) between steps: :func:`private_servers`. The
actors and faults are the same: the step gates and the injected COMMIT cuts
live in the connection provider, not in a driver.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from shardbill import PooledProvider
from tests.support.mysql import configured_address
from tests.support.servers import MariaDBServer, short_tempdir

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
    urls = {s: server.url(db, "pymysql") for s, db in names.items()}
    URLS.clear()
    URLS.update(urls)
    provider = PooledProvider.from_urls(urls)

    def drop() -> None:
        done = server.connect()
        with done.cursor() as cur:  # type: ignore[attr-defined]
            for name in names.values():
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        done.close()  # type: ignore[attr-defined]

    return provider, drop


_SERVERS: list[MariaDBServer] = []

#: The server of each shard of the servers backend last made (one simulation at a time).
SERVER_OF: dict[str, MariaDBServer] = {}

#: The shards' URLs of the MariaDB backend last made (a writer process opens its own).
URLS: dict[str, str] = {}


def private_servers() -> list[MariaDBServer]:
    """The two private servers of this process (started at the first call; removed at exit)."""
    if not _SERVERS:
        for server_id in (1, 2):
            server = MariaDBServer(short_tempdir("sbsim-"), server_id=server_id)
            server.start()
            _SERVERS.append(server)
    return _SERVERS


def servers_backend(
    root: Path, shards: tuple[str, ...]
) -> tuple[PooledProvider, Callable[[], None]]:
    """One database per shard, the shards spread over two private servers (PyMySQL)."""
    del root
    servers = private_servers()
    tag = secrets.token_hex(4)
    placement = {s: (servers[i % len(servers)], f"sbsim_{tag}_{s}") for i, s in enumerate(shards)}
    SERVER_OF.clear()
    SERVER_OF.update({s: server for s, (server, _) in placement.items()})
    for server, name in placement.values():
        server.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    urls = {s: srv.url(db) for s, (srv, db) in placement.items()}
    URLS.clear()
    URLS.update(urls)
    provider = PooledProvider.from_urls(urls)

    def drop() -> None:
        for server, name in placement.values():
            if not server.is_running:
                server.start()
            server.execute(f"DROP DATABASE IF EXISTS `{name}`")

    return provider, drop


BACKENDS: dict[str, Backend] = {
    "sqlite": sqlite_backend,
    "mariadb": mariadb_backend,
    "servers": servers_backend,
}
