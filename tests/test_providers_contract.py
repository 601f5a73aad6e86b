"""The ConnectionProvider contract, run against every shipped provider.

SQLite always; PyMySQL and mysqlclient against the real MariaDB/MySQL server
of the ``mysql_server`` fixture (never a mock).
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shardbill.dialects import UpsertSpec, dialect_for
from shardbill.errors import ConnectionLostError, FatalDatabaseError, PoolTimeoutError
from shardbill.providers import ConnectionProvider, LentConnection, PooledProvider
from tests.support.mysql import ServerAddress

_SCHEMA = "CREATE TABLE {table} (k INTEGER PRIMARY KEY, n INTEGER NOT NULL)"


class Backend:
    """One provider kind plus the out-of-band powers a test needs (read, kill)."""

    def __init__(self, name: str, tmp_path: Path, server: ServerAddress | None, db: str) -> None:
        self.name = name
        self.tmp_path = tmp_path
        self.server = server
        self.database = db
        self.table = f"t_{secrets.token_hex(4)}"

    def url(self, *, replica: bool = False, **options: object) -> str:
        """A URL for the primary (or the replica) with the given query options."""
        query = "&".join(f"{key}={value}" for key, value in options.items())
        suffix = f"?{query}" if query else ""
        if self.server is None:
            name = "replica" if replica else "primary"
            return f"sqlite:///{self.tmp_path / name}.db{suffix}"
        database = f"{self.database}_r" if replica else self.database
        return self.server.url(database, driver=self.name) + suffix

    def direct(self, *, replica: bool = False) -> Any:
        """An independent autocommit connection (not through the provider)."""
        if self.server is None:
            name = "replica" if replica else "primary"
            return sqlite3.connect(self.tmp_path / f"{name}.db", isolation_level=None)
        database = f"{self.database}_r" if replica else self.database
        return self.server.connect(database)

    def run(self, sql: str, *, replica: bool = False) -> list[tuple[Any, ...]]:
        """Run ``sql`` on an independent connection and return its rows."""
        conn = self.direct(replica=replica)
        try:
            cur = conn.cursor()
            cur.execute(sql)
            rows = list(cur.fetchall())
            cur.close()
            return rows
        finally:
            conn.close()

    def identity(self, conn: LentConnection) -> object:
        """Which physical connection ``conn`` is (server thread id, or the sqlite object)."""
        if self.server is None:
            return id(conn.raw)
        cur = conn.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        row = cur.fetchone()
        assert row is not None
        return row[0]

    def killer(self, conn: LentConnection) -> Callable[[], None]:
        """A function that kills ``conn``'s physical connection from outside, later."""
        if self.server is None:
            raw = conn.raw
            return raw.close  # type: ignore[no-any-return]
        thread_id = self.identity(conn)
        server = self.server

        def kill() -> None:
            admin = server.connect()
            try:
                admin.cursor().execute(f"KILL CONNECTION {int(thread_id)}")  # type: ignore[attr-defined,call-overload]
            finally:
                admin.close()  # type: ignore[attr-defined]

        return kill


@pytest.fixture(scope="module")
def replica_database(mysql_server: ServerAddress, mysql_database: str) -> Iterator[str]:
    """A second database on the same server that stands in for a read replica."""
    name = f"{mysql_database}_r"
    conn = mysql_server.connect()
    cur = conn.cursor()  # type: ignore[attr-defined]
    cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}`")
    try:
        yield name
    finally:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()  # type: ignore[attr-defined]


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("pymysql", marks=pytest.mark.mysql),
        pytest.param("mysqldb", marks=pytest.mark.mysql),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each provider kind in turn, with a fresh table on its primary and replica."""
    if request.param == "sqlite":
        backend = Backend("sqlite", tmp_path, None, "")
    else:
        server = request.getfixturevalue("mysql_server")
        database = request.getfixturevalue("mysql_database")
        request.getfixturevalue("replica_database")
        backend = Backend(request.param, tmp_path, server, database)
    for replica in (False, True):
        conn = backend.direct(replica=replica)
        conn.cursor().execute(_SCHEMA.format(table=backend.table))
        conn.close()
    return backend


def _put(conn: LentConnection, table: str, key: int, n: int) -> None:
    placeholder = dialect_for(conn).placeholder
    conn.cursor().execute(
        f"INSERT INTO {table} (k, n) VALUES ({placeholder}, {placeholder})", (key, n)
    )


def test_a_pooled_provider_is_a_connection_provider(backend: Backend) -> None:
    """PooledProvider satisfies the ConnectionProvider protocol structurally."""
    provider: ConnectionProvider = PooledProvider.from_urls({"s": backend.url()})
    with provider.connection("s") as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    provider.close()


def test_normal_exit_commits(backend: Backend) -> None:
    """Rows written in a with-block that ends normally are visible to other connections."""
    with PooledProvider.from_urls({"s": backend.url()}) as provider:
        with provider.connection("s") as conn:
            _put(conn, backend.table, 1, 10)
            _put(conn, backend.table, 2, 20)
        assert backend.run(f"SELECT k, n FROM {backend.table} ORDER BY k") == [(1, 10), (2, 20)]


def test_exception_rolls_back_and_is_reraised(backend: Backend) -> None:
    """An exception in the block rolls the transaction back and propagates unchanged."""

    class BoomError(Exception):
        pass

    with PooledProvider.from_urls({"s": backend.url()}) as provider:

        def fail_after_writing() -> None:
            with provider.connection("s") as conn:
                _put(conn, backend.table, 1, 10)
                raise BoomError

        with pytest.raises(BoomError):
            fail_after_writing()
        assert backend.run(f"SELECT k FROM {backend.table}") == []
        stats = provider.stats("s")
        assert stats.discarded == 0  # an application error leaves the connection usable
        assert stats.idle == 1


def test_transaction_is_isolated_until_commit(backend: Backend) -> None:
    """Other connections do not see a block's writes before it ends."""
    with PooledProvider.from_urls({"s": backend.url()}) as provider:
        with provider.connection("s") as conn:
            _put(conn, backend.table, 5, 50)
            assert backend.run(f"SELECT k FROM {backend.table}") == []
        assert backend.run(f"SELECT k FROM {backend.table}") == [(5,)]


def test_connections_are_reused(backend: Backend) -> None:
    """Two loans in a row get the same physical connection; only one is opened."""
    with PooledProvider.from_urls({"s": backend.url()}) as provider:
        with provider.connection("s") as conn:
            first = backend.identity(conn)
        with provider.connection("s") as conn:
            second = backend.identity(conn)
        assert first == second
        stats = provider.stats("s")
        assert (stats.created, stats.loans, stats.open) == (1, 2, 1)


def test_pool_is_bounded_and_times_out(backend: Backend) -> None:
    """With every connection lent, a further loan waits pool_timeout and raises."""
    url = backend.url(pool_size=2, pool_timeout=0.05)
    with PooledProvider.from_urls({"s": url}) as provider:
        with provider.connection("s"), provider.connection("s"):
            with pytest.raises(PoolTimeoutError, match="pool_size") as info:
                provider.connection("s").__enter__()
            assert info.value.shard == "s"
            assert provider.stats("s").open == 2
        with provider.connection("s") as conn:
            conn.cursor().execute("SELECT 1")
        assert provider.stats("s").created == 2


def test_waiting_loan_gets_a_returned_connection(backend: Backend) -> None:
    """A loan blocked on a full pool proceeds when another thread returns its connection."""
    with PooledProvider.from_urls({"s": backend.url(pool_size=1, pool_timeout=30)}) as provider:
        lent = threading.Event()
        release = threading.Event()

        def holder() -> None:
            with provider.connection("s"):
                lent.set()
                release.wait(30)

        thread = threading.Thread(target=holder)
        thread.start()
        assert lent.wait(30)
        release.set()
        with provider.connection("s") as conn:
            conn.cursor().execute("SELECT 1")
        thread.join()
        assert provider.stats("s").created == 1


def test_dead_idle_connection_is_replaced_after_ping(backend: Backend) -> None:
    """A connection killed while idle fails its ping and is replaced before being lent."""
    with PooledProvider.from_urls({"s": backend.url(ping_after=0)}) as provider:
        with provider.connection("s") as conn:
            victim = backend.identity(conn)
            kill = backend.killer(conn)
        kill()
        with provider.connection("s") as conn:
            assert backend.identity(conn) != victim
            _put(conn, backend.table, 1, 1)
        stats = provider.stats("s")
        assert (stats.created, stats.discarded) == (2, 1)
        assert backend.run(f"SELECT k FROM {backend.table}") == [(1,)]


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("pymysql", marks=pytest.mark.mysql),
        pytest.param("mysqldb", marks=pytest.mark.mysql),
    ],
    indirect=True,
)
def test_connection_killed_without_ping_is_discarded_after_its_error(backend: Backend) -> None:
    """Without a ping, the killed connection's statement raises ConnectionLostError and the
    pool discards it, so the next loan works."""
    with PooledProvider.from_urls({"s": backend.url(ping_after=3600)}) as provider:
        with provider.connection("s") as conn:
            kill = backend.killer(conn)
        kill()
        with pytest.raises(ConnectionLostError) as info, provider.connection("s") as conn:
            _put(conn, backend.table, 1, 1)
        assert info.value.shard == "s"
        assert info.value.__cause__ is not None
        with provider.connection("s") as conn:
            _put(conn, backend.table, 2, 2)
        assert provider.stats("s").discarded == 1
        assert backend.run(f"SELECT k FROM {backend.table}") == [(2,)]


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("pymysql", marks=pytest.mark.mysql),
        pytest.param("mysqldb", marks=pytest.mark.mysql),
    ],
    indirect=True,
)
def test_after_a_lost_connection_the_other_idle_ones_are_pinged_before_a_loan(
    backend: Backend,
) -> None:
    """A server restart kills every idle connection of the pool at once. Without a ping
    (idle less than ping_after), the first loan meets a dead one and fails; the pool then
    pings the other idle connections before it lends them, so the next loans work instead
    of each failing on another dead connection (a retry budget would run out on them)."""
    with PooledProvider.from_urls({"s": backend.url(ping_after=3600)}) as provider:
        with (
            provider.connection("s") as a,
            provider.connection("s") as b,
            provider.connection("s") as c,
        ):
            kills = [backend.killer(conn) for conn in (a, b, c)]
        for kill in kills:  # as a restart would: every connection of the pool is gone
            kill()
        with pytest.raises(ConnectionLostError), provider.connection("s") as conn:
            _put(conn, backend.table, 1, 1)
        for key in (2, 3, 4):
            with provider.connection("s") as conn:
                _put(conn, backend.table, key, key)
        assert backend.run(f"SELECT k FROM {backend.table} ORDER BY k") == [(2,), (3,), (4,)]


def test_readonly_goes_to_the_replica(backend: Backend) -> None:
    """readonly=True loans read the replica; writes and default loans use the primary."""
    conn = backend.direct(replica=True)
    conn.cursor().execute(f"INSERT INTO {backend.table} (k, n) VALUES (99, 9)")
    conn.close()
    provider = PooledProvider.from_urls(
        {"s": backend.url()}, replicas={"s": [backend.url(replica=True)]}
    )
    with provider:
        query = f"SELECT k FROM {backend.table}"
        with provider.connection("s", readonly=True) as conn:
            cur = conn.cursor()
            cur.execute(query)
            assert list(cur.fetchall()) == [(99,)]
        with provider.connection("s") as conn:
            cur = conn.cursor()
            cur.execute(query)
            assert list(cur.fetchall()) == []
        assert provider.stats("s", replica=0).loans == 1
        assert provider.stats("s").loans == 1


def test_readonly_without_replica_uses_the_primary(backend: Backend) -> None:
    """A shard with no replica serves readonly loans from its primary."""
    with PooledProvider.from_urls({"s": backend.url()}) as provider:
        with provider.connection("s") as conn:
            _put(conn, backend.table, 3, 3)
        with provider.connection("s", readonly=True) as conn:
            cur = conn.cursor()
            cur.execute(f"SELECT k FROM {backend.table}")
            assert list(cur.fetchall()) == [(3,)]


def test_concurrent_threads_share_a_bounded_pool(backend: Backend) -> None:
    """Many threads doing read-modify-write loans lose no update and open <= pool_size."""
    spec = UpsertSpec(
        table=backend.table, columns=("k", "n"), key_columns=("k",), merges={"n": "sum"}
    )
    url = (
        backend.url(pool_size=3, pool_timeout=60, busy_timeout=30)
        if backend.server is None
        else backend.url(pool_size=3, pool_timeout=60)
    )
    with PooledProvider.from_urls({"s": url}) as provider:
        dialect = provider.dialect("s")

        def work(worker: int) -> None:
            for i in range(10):
                with provider.connection("s") as conn:
                    conn.cursor().execute(dialect.upsert_sql(spec, 2), (1, 1, 1000 + worker, i))

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(work, range(8)))
        assert backend.run(f"SELECT n FROM {backend.table} WHERE k = 1") == [(80,)]
        stats = provider.stats("s")
        assert stats.created <= 3
        assert stats.loans == 80 + 1
        assert stats.lent == 0


def test_close_refuses_new_loans_and_closes_returned_connections(backend: Backend) -> None:
    """After close(), idle connections are closed, lent ones close on return, loans fail."""
    provider = PooledProvider.from_urls({"s": backend.url()})
    with provider.connection("s"):
        pass
    with provider.connection("s") as conn:
        provider.close()
        assert provider.stats("s").open == 1
        conn.cursor().execute("SELECT 1")
    assert provider.stats("s").open == 0
    with pytest.raises(FatalDatabaseError, match="closed"), provider.connection("s"):
        pass
    provider.close()  # idempotent


def test_connection_unusable_after_its_block(backend: Backend) -> None:
    """A connection or cursor kept past its with-block refuses to run statements."""
    with PooledProvider.from_urls({"s": backend.url()}) as provider:
        with provider.connection("s") as conn:
            cur = conn.cursor()
        with pytest.raises(FatalDatabaseError, match="after its with-block"):
            cur.execute("SELECT 1")
        with pytest.raises(FatalDatabaseError, match="after its with-block"):
            conn.cursor()
        assert "returned" in repr(conn)


def test_explicit_commit_then_more_work_is_one_more_transaction(backend: Backend) -> None:
    """commit() inside the block commits now; later statements commit at the block's end,
    and an exception after commit() rolls back only what came after it."""
    with PooledProvider.from_urls({"s": backend.url()}) as provider:

        def commit_then_fail() -> None:
            with provider.connection("s") as conn:
                _put(conn, backend.table, 1, 1)
                conn.commit()
                _put(conn, backend.table, 2, 2)
                raise RuntimeError

        with pytest.raises(RuntimeError):
            commit_then_fail()
        assert backend.run(f"SELECT k FROM {backend.table}") == [(1,)]


def test_borrower_close_discards_without_commit(backend: Backend) -> None:
    """Closing a lent connection abandons its transaction; the pool opens a new one next."""
    with PooledProvider.from_urls({"s": backend.url()}) as provider:
        with provider.connection("s") as conn:
            _put(conn, backend.table, 1, 1)
            conn.close()
        assert backend.run(f"SELECT k FROM {backend.table}") == []
        with provider.connection("s") as conn:
            _put(conn, backend.table, 2, 2)
        stats = provider.stats("s")
        assert (stats.created, stats.discarded) == (2, 1)


def test_unknown_shard_is_a_configuration_error(backend: Backend) -> None:
    """Asking for a shard without a URL names it and the known shards."""
    from shardbill.errors import ConfigurationError

    with (
        PooledProvider.from_urls({"s": backend.url()}) as provider,
        pytest.raises(ConfigurationError, match=r"'nope'.*'s'"),
    ):
        provider.connection("nope").__enter__()


def test_interrupt_discards_the_connection(backend: Backend) -> None:
    """A BaseException (an interrupt, possibly mid-protocol) rolls back by discarding the
    connection instead of reusing it."""

    class InterruptError(BaseException):
        pass

    with PooledProvider.from_urls({"s": backend.url()}) as provider:

        def interrupted() -> None:
            with provider.connection("s") as conn:
                _put(conn, backend.table, 1, 1)
                raise InterruptError

        with pytest.raises(InterruptError):
            interrupted()
        assert provider.stats("s").discarded == 1
        assert provider.stats("s").open == 0
        assert backend.run(f"SELECT k FROM {backend.table}") == []
