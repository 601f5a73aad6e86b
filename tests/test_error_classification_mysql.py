"""Real server events raise the same shardbill errors through PyMySQL and mysqlclient.

Every event is provoked on the real server: a deadlock between two
transactions, a lock wait timeout, KILL CONNECTION (also during COMMIT),
KILL QUERY on a statement waiting for a lock, read_only=ON against a user
without the privilege to bypass it, and the usual fatal errors.
"""

from __future__ import annotations

import queue
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shardbill.errors import (
    CannotConnectError,
    CommitOutcomeUnknownError,
    ConnectionLostError,
    DatabaseError,
    DeadlockError,
    DuplicateKeyError,
    FatalDatabaseError,
    LockWaitTimeoutError,
    QueryInterruptedError,
    ReadOnlyError,
)
from shardbill.providers import LentConnection, PooledProvider
from tests.support.mysql import ServerAddress

DRIVERS = pytest.mark.parametrize("driver", ["pymysql", "mysqldb"])


@pytest.fixture
def table(mysql_server: ServerAddress, mysql_database: str) -> Iterator[str]:
    """A fresh InnoDB table ``(k INT PRIMARY KEY, n INT)`` holding rows 1 and 2."""
    name = f"ev_{secrets.token_hex(4)}"
    admin: Any = mysql_server.connect(mysql_database)
    cur = admin.cursor()
    cur.execute(f"CREATE TABLE {name} (k INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB")
    cur.execute(f"INSERT INTO {name} VALUES (1, 0), (2, 0)")
    try:
        yield name
    finally:
        cur.execute(f"DROP TABLE IF EXISTS {name}")
        admin.close()


@pytest.fixture
def provider(
    mysql_server: ServerAddress, mysql_database: str, driver: str
) -> Iterator[PooledProvider]:
    """A provider for shard ``s`` on the test database through ``driver``."""
    url = mysql_server.url(mysql_database, driver=driver) + "?pool_size=4&pool_timeout=30"
    with PooledProvider.from_urls({"s": url}) as provider:
        yield provider


def _admin(server: ServerAddress, sql: str) -> None:
    conn: Any = server.connect()
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


def _thread_id(conn: LentConnection) -> int:
    cur = conn.cursor()
    cur.execute("SELECT CONNECTION_ID()")
    row = cur.fetchone()
    assert row is not None
    return int(row[0])


def _wait_until_waiting(server: ServerAddress, thread_id: int) -> None:
    """Poll the process list until ``thread_id`` is running a statement (bounded)."""
    conn: Any = server.connect()
    cur = conn.cursor()
    try:
        for _ in range(2000):
            cur.execute(
                "SELECT INFO FROM information_schema.PROCESSLIST WHERE ID = %s", (thread_id,)
            )
            row = cur.fetchone()
            if row and row[0] and row[0].startswith("UPDATE"):
                return
            time.sleep(0.005)
        pytest.fail(f"connection {thread_id} never started its UPDATE")
    finally:
        conn.close()


@DRIVERS
def test_deadlock(provider: PooledProvider, table: str) -> None:
    """Two transactions locking two rows in opposite order: one gets DeadlockError (1213)."""
    barrier = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def transaction(first: int, second: int) -> None:
        try:
            with provider.connection("s") as conn:
                cur = conn.cursor()
                cur.execute("SET SESSION innodb_lock_wait_timeout = 30")
                cur.execute(f"UPDATE {table} SET n = n + 1 WHERE k = %s", (first,))
                barrier.wait()
                cur.execute(f"UPDATE {table} SET n = n + 1 WHERE k = %s", (second,))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=transaction, args=args) for args in ((1, 2), (2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(errors) == 1, errors
    error = errors[0]
    assert type(error) is DeadlockError
    assert (error.errno, error.shard) == (1213, "s")
    assert error.__cause__ is not None
    assert provider.stats("s").discarded == 0  # the victim's connection stays usable


@DRIVERS
def test_lock_wait_timeout(provider: PooledProvider, table: str) -> None:
    """A row lock held past innodb_lock_wait_timeout gives LockWaitTimeoutError (1205)."""
    with provider.connection("s") as holder, provider.connection("s") as waiter:
        holder.cursor().execute(f"UPDATE {table} SET n = n + 1 WHERE k = 1")
        cur = waiter.cursor()
        cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
        with pytest.raises(LockWaitTimeoutError) as info:
            cur.execute(f"UPDATE {table} SET n = n + 1 WHERE k = 1")
    assert info.value.errno == 1205


@DRIVERS
def test_kill_connection(provider: PooledProvider, table: str, mysql_server: ServerAddress) -> None:
    """After KILL CONNECTION, the victim's next statement raises ConnectionLostError and the
    pool discards the connection."""
    with pytest.raises(ConnectionLostError) as info, provider.connection("s") as conn:  # noqa: PT012 - the error must also leave the block
        _admin(mysql_server, f"KILL CONNECTION {_thread_id(conn)}")
        conn.cursor().execute(f"SELECT n FROM {table}")
    assert type(info.value) is ConnectionLostError
    assert info.value.errno in (2006, 2013, 1927, 0)
    assert provider.stats("s").discarded == 1
    with provider.connection("s") as conn:
        conn.cursor().execute(f"SELECT n FROM {table}")


@DRIVERS
def test_kill_during_commit_is_outcome_unknown(
    provider: PooledProvider, table: str, mysql_server: ServerAddress
) -> None:
    """A connection lost when the block commits raises CommitOutcomeUnknownError."""

    def write_then_get_killed() -> None:
        with provider.connection("s") as conn:
            conn.cursor().execute(f"UPDATE {table} SET n = n + 1 WHERE k = 1")
            _admin(mysql_server, f"KILL CONNECTION {_thread_id(conn)}")

    with pytest.raises(CommitOutcomeUnknownError) as info:
        write_then_get_killed()
    assert isinstance(info.value, ConnectionLostError)
    assert provider.stats("s").discarded == 1


@DRIVERS
def test_explicit_commit_after_kill_is_outcome_unknown(
    provider: PooledProvider, table: str, mysql_server: ServerAddress
) -> None:
    """conn.commit() on a killed connection raises CommitOutcomeUnknownError too, and a
    block that swallows it still ends with an error (never a silent success)."""

    def swallow_the_commit_error() -> None:
        with provider.connection("s") as conn:
            conn.cursor().execute(f"UPDATE {table} SET n = n + 1 WHERE k = 1")
            _admin(mysql_server, f"KILL CONNECTION {_thread_id(conn)}")
            with pytest.raises(CommitOutcomeUnknownError):
                conn.commit()

    with pytest.raises(CommitOutcomeUnknownError, match="ended normally after its connection"):
        swallow_the_commit_error()
    assert provider.stats("s").discarded == 1


@DRIVERS
def test_kill_query(provider: PooledProvider, table: str, mysql_server: ServerAddress) -> None:
    """KILL QUERY on a statement waiting for a lock raises QueryInterruptedError (1317);
    the connection survives."""
    ids: queue.Queue[int] = queue.Queue()
    errors: list[BaseException] = []

    def victim() -> None:
        try:
            with provider.connection("s") as conn:
                cur = conn.cursor()
                cur.execute("SET SESSION innodb_lock_wait_timeout = 30")
                ids.put(_thread_id(conn))
                cur.execute(f"UPDATE {table} SET n = n + 1 WHERE k = 1")
        except BaseException as exc:
            errors.append(exc)

    with provider.connection("s") as holder:
        holder.cursor().execute(f"UPDATE {table} SET n = n + 1 WHERE k = 1")
        thread = threading.Thread(target=victim)
        thread.start()
        thread_id = ids.get(timeout=30)
        _wait_until_waiting(mysql_server, thread_id)
        _admin(mysql_server, f"KILL QUERY {thread_id}")
        thread.join(60)
    assert len(errors) == 1
    assert type(errors[0]) is QueryInterruptedError
    assert errors[0].errno == 1317
    assert provider.stats("s").discarded == 0


@DRIVERS
def test_read_only_server(
    table: str, mysql_server: ServerAddress, mysql_database: str, driver: str
) -> None:
    """With read_only=ON, a user without READ_ONLY ADMIN/SUPER gets ReadOnlyError (1290);
    a statement outside its grants is FatalDatabaseError (1142)."""
    user = f"sb_ro_{secrets.token_hex(3)}"
    password = f"Ro-{secrets.token_hex(6)}"
    hosts = ("%", "localhost", "127.0.0.1")
    for host in hosts:
        _admin(mysql_server, f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}'")
        _admin(
            mysql_server,
            f"GRANT SELECT, INSERT, UPDATE ON `{mysql_database}`.* TO '{user}'@'{host}'",
        )
    url = (
        f"mysql+{driver}://{user}:{password}@{mysql_server.host}:{mysql_server.port}/"
        f"{mysql_database}"
    )
    try:
        with PooledProvider.from_urls({"s": url}) as provider:
            with pytest.raises(FatalDatabaseError) as denied, provider.connection("s") as conn:
                conn.cursor().execute(f"DELETE FROM {table}")
            assert denied.value.errno == 1142
            assert password not in str(denied.value)
            _admin(mysql_server, "SET GLOBAL read_only = ON")
            try:
                with pytest.raises(ReadOnlyError) as info, provider.connection("s") as conn:
                    conn.cursor().execute(f"UPDATE {table} SET n = n + 1 WHERE k = 1")
            finally:
                _admin(mysql_server, "SET GLOBAL read_only = OFF")
            assert info.value.errno == 1290
            with provider.connection("s") as conn:  # writable again
                conn.cursor().execute(f"UPDATE {table} SET n = n + 1 WHERE k = 1")
    finally:
        for host in hosts:
            _admin(mysql_server, f"DROP USER IF EXISTS '{user}'@'{host}'")


@DRIVERS
def test_duplicate_key(provider: PooledProvider, table: str) -> None:
    """Inserting an existing primary key is DuplicateKeyError (1062)."""
    with pytest.raises(DuplicateKeyError) as info, provider.connection("s") as conn:
        conn.cursor().execute(f"INSERT INTO {table} (k, n) VALUES (%s, %s)", (1, 5))
    assert info.value.errno == 1062


@DRIVERS
@pytest.mark.parametrize(
    ("sql", "errno"),
    [("SELECT * FROM no_such_table_xyz", 1146), ("SELEKT 1", 1064)],
)
def test_fatal_errors(provider: PooledProvider, sql: str, errno: int) -> None:
    """Unknown table (1146) and syntax errors (1064) are FatalDatabaseError."""
    with pytest.raises(FatalDatabaseError) as info, provider.connection("s") as conn:
        conn.cursor().execute(sql)
    assert info.value.errno == errno
    assert provider.stats("s").discarded == 0


@DRIVERS
def test_access_denied_to_a_database(mysql_server: ServerAddress, driver: str) -> None:
    """Connecting to a database one has no grant on is FatalDatabaseError (1044 or 1045)."""
    user = f"sb_na_{secrets.token_hex(3)}"
    password = f"Na-{secrets.token_hex(6)}"
    hosts = ("%", "localhost", "127.0.0.1")
    for host in hosts:
        _admin(mysql_server, f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}'")
    url = f"mysql+{driver}://{user}:{password}@{mysql_server.host}:{mysql_server.port}/mysql"
    try:
        with PooledProvider.from_urls({"s": url}) as provider:
            with pytest.raises(FatalDatabaseError) as info, provider.connection("s"):
                pass
            assert provider.stats("s").open == 0
    finally:
        for host in hosts:
            _admin(mysql_server, f"DROP USER IF EXISTS '{user}'@'{host}'")
    assert info.value.errno in (1044, 1045)
    assert password not in str(info.value)


@DRIVERS
def test_cannot_connect_to_a_closed_port(mysql_server: ServerAddress, driver: str) -> None:
    """Nothing listening is CannotConnectError (2003 or 2002), and the pool stays empty."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"mysql+{driver}://root@127.0.0.1:{port}/db?connect_timeout=5"
    with PooledProvider.from_urls({"s": url}) as provider:
        with pytest.raises(CannotConnectError) as info, provider.connection("s"):
            pass
        assert info.value.errno in (2002, 2003)
        assert provider.stats("s").open == 0
        with pytest.raises(CannotConnectError), provider.connection("s"):
            pass


def test_same_event_same_class_for_both_drivers(
    mysql_server: ServerAddress, mysql_database: str, table: str
) -> None:
    """For one event (duplicate key) PyMySQL and mysqlclient give equal class and errno."""
    seen: list[tuple[type[DatabaseError], int | None]] = []
    for name in ("pymysql", "mysqldb"):
        with PooledProvider.from_urls({"s": mysql_server.url(mysql_database, driver=name)}) as p:
            with pytest.raises(DatabaseError) as info, p.connection("s") as conn:
                conn.cursor().execute(f"INSERT INTO {table} VALUES (2, 2)")
            seen.append((type(info.value), info.value.errno))
    assert seen[0] == seen[1] == (DuplicateKeyError, 1062)
