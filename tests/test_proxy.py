"""The fault-injecting proxy: framing, pass-through and every fault, against the real server."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pymysql
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.proxy import (
    CLIENT_QUERY_ATTRIBUTES,
    CLIENT_SSL,
    MAX_PAYLOAD,
    CommandFramer,
    Direction,
    FaultKind,
    FaultProxy,
    Piece,
    is_commit,
)

CR_CONNECTION_ERROR = 2002  # mysqlclient: "Can't connect to server"
CR_CONN_HOST_ERROR = 2003  # PyMySQL: "Can't connect to MySQL server"
CR_SERVER_GONE_ERROR = 2006  # "MySQL server has gone away" (the write failed)
CR_SERVER_LOST = 2013  # "Lost connection to MySQL server during query" (the read failed)

CONNECTION_LOST = {CR_SERVER_GONE_ERROR, CR_SERVER_LOST}
CONNECT_FAILED = {CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR, CR_SERVER_LOST}

DRIVERS = ["pymysql", "mysqldb"]
TABLE = "proxy_rows"

_ids = itertools.count(1)


class ServerAddress(Protocol):
    """What these tests use of the ``mysql_server`` fixture's value."""

    host: str
    port: int
    user: str
    password: str

    def connect(self, database: str | None = None, **kwargs: object) -> object:
        """A direct autocommit PyMySQL connection."""
        ...


# ---------------------------------------------------------------------------
# Helpers


def packets(payload: bytes, sequence: int) -> bytes:
    """``payload`` framed as MySQL packets (split at 0xFFFFFF bytes) from ``sequence`` on."""
    out = bytearray()
    while True:
        chunk, payload = payload[:MAX_PAYLOAD], payload[MAX_PAYLOAD:]
        out += len(chunk).to_bytes(3, "little") + bytes([sequence % 256]) + chunk
        sequence += 1
        if len(chunk) < MAX_PAYLOAD:
            return bytes(out)


def handshake_response(flags: int = 0x000F_A28D) -> bytes:
    """A client handshake response packet (sequence 1) carrying capability ``flags``."""
    payload = flags.to_bytes(4, "little") + b"\x00\x00\x00\x01\x2d" + bytes(23) + b"root\x00\x00"
    return packets(payload, 1)


def feed_all(framer: CommandFramer, chunks: list[bytes]) -> list[Piece]:
    """Every piece the framer returns for ``chunks`` fed in order."""
    return [piece for chunk in chunks for piece in framer.feed(chunk)]


def driver_error(driver: str) -> type[Exception]:
    """The OperationalError class of ``driver``."""
    if driver == "pymysql":
        return pymysql.err.OperationalError
    import MySQLdb

    error: type[Exception] = MySQLdb.OperationalError
    return error


def connect(
    driver: str,
    proxy: FaultProxy,
    server: ServerAddress,
    database: str,
    *,
    read_timeout: int = 5,
    autocommit: bool = False,
) -> Any:
    """A ``driver`` connection through ``proxy`` (TCP, 127.0.0.1)."""
    options: dict[str, Any] = {
        "host": proxy.host,
        "port": proxy.port,
        "user": server.user,
        "password": server.password,
        "database": database,
        "connect_timeout": 5,
        "read_timeout": read_timeout,
        "write_timeout": 5,
        "autocommit": autocommit,
    }
    if driver == "pymysql":
        return pymysql.connect(**options)
    import MySQLdb

    return MySQLdb.connect(**options)


def close_quietly(conn: Any) -> None:
    """Close a driver connection that may already be broken."""
    with contextlib.suppress(Exception):
        conn.close()


def insert_row(conn: Any, row_id: int, tag: str) -> None:
    """INSERT one row of the test table on ``conn`` (no commit)."""
    with contextlib.closing(conn.cursor()) as cur:
        cur.execute(f"INSERT INTO {TABLE} (id, tag) VALUES (%s, %s)", (row_id, tag))


def server_thread_id(conn: Any) -> int:
    """The server's connection id for ``conn``."""
    with contextlib.closing(conn.cursor()) as cur:
        cur.execute("SELECT CONNECTION_ID()")
        return int(cur.fetchone()[0])


def committed_tag(direct: Any, row_id: int) -> str | None:
    """The committed tag of row ``row_id``, read on a direct (unproxied) connection."""
    with direct.cursor() as cur:
        cur.execute(f"SELECT tag FROM {TABLE} WHERE id = %s", (row_id,))
        row = cur.fetchone()
    return None if row is None else str(row[0])


def wait_until_disconnected(direct: Any, thread_id: int) -> None:
    """Wait (up to a generous 10 s) until the server has ended session ``thread_id``."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with direct.cursor() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (thread_id,)
            )
            if cur.fetchone()[0] == 0:
                return
        time.sleep(0.02)
    pytest.fail(f"server session {thread_id} still alive 10 s after the proxy closed it")


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    """Each MySQL driver in turn (mysqlclient skipped when not installed)."""
    name = str(request.param)
    if name == "mysqldb":
        pytest.importorskip("MySQLdb")
    return name


@pytest.fixture
def proxy(mysql_server: ServerAddress) -> Iterator[FaultProxy]:
    """A running proxy in front of the test server."""
    with FaultProxy(mysql_server.host, mysql_server.port) as running:
        yield running


@pytest.fixture(scope="module")
def direct(mysql_server: ServerAddress, mysql_database: str) -> Iterator[Any]:
    """A direct autocommit connection to the session database, with the test table created."""
    conn: Any = mysql_server.connect(mysql_database)
    with conn.cursor() as cur:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} "
            "(id BIGINT PRIMARY KEY, tag VARCHAR(64) NOT NULL, body MEDIUMTEXT) ENGINE=InnoDB"
        )
    yield conn
    conn.close()


@pytest.fixture
def open_conn(
    proxy: FaultProxy, mysql_server: ServerAddress, mysql_database: str, direct: Any
) -> Iterator[Callable[..., Any]]:
    """Opens driver connections through ``proxy``; closes them all at teardown."""
    opened: list[Any] = []

    def factory(driver: str, **options: Any) -> Any:
        conn = connect(driver, proxy, mysql_server, mysql_database, **options)
        opened.append(conn)
        return conn

    yield factory
    for conn in opened:
        close_quietly(conn)


# ---------------------------------------------------------------------------
# Framing (no server)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("COMMIT", True),
        ("commit", True),
        ("  Commit Work ; ", True),
        ("COMMIT AND NO CHAIN", True),
        ("COMMIT\nWORK", True),
        ("XA COMMIT 'x'", False),
        ("COMMITTED", False),
        ("INSERT INTO t VALUES (1); COMMIT", False),
        ("ROLLBACK", False),
    ],
)
def test_is_commit_matches_plain_commit_statements_only(sql: str, expected: bool) -> None:
    """COMMIT, stripped and case-insensitive (with WORK/CHAIN/RELEASE), matches; nothing else."""
    assert is_commit(sql) is expected


@st.composite
def client_streams(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """A client byte stream (handshake, then commands) and the SQL of its COM_QUERYs."""
    stream = bytearray(handshake_response())
    sqls: list[str] = []
    # An auth-switch answer whose payload starts with 0x03: not a command (sequence 3).
    stream += packets(b"\x03" + draw(st.binary(max_size=20)), 3)
    commands = st.one_of(
        st.text(max_size=300).map(lambda sql: ("query", sql)),
        st.tuples(st.just("other"), st.binary(max_size=300)),
        st.tuples(st.just("data"), st.binary(max_size=300)),
    )
    for kind, body in draw(st.lists(commands, max_size=12)):
        if kind == "query":
            assert isinstance(body, str)
            stream += packets(b"\x03" + body.encode(), 0)
            sqls.append(body)
        elif kind == "other":
            assert isinstance(body, bytes)
            stream += packets(b"\x16" + body, 0)  # COM_STMT_PREPARE
        else:
            assert isinstance(body, bytes)
            stream += packets(b"\x03" + body, 2)  # LOAD DATA LOCAL content, sequence 2
    return bytes(stream), sqls


@pytest.mark.property
@given(stream=client_streams(), data=st.data())
def test_framer_finds_every_query_however_the_stream_is_split(
    stream: tuple[bytes, list[str]], data: st.DataObject
) -> None:
    """Split anywhere, the framer forwards exactly the input and finds exactly the COM_QUERYs."""
    raw, sqls = stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=20)))
    chunks = [raw[a:b] for a, b in itertools.pairwise([0, *cuts, len(raw)])]
    pieces = feed_all(CommandFramer(), chunks)
    assert b"".join(piece.data for piece in pieces) == raw
    assert [piece.sql for piece in pieces if piece.sql is not None] == sqls
    for piece in pieces:
        if piece.sql is not None:
            assert piece.data == packets(b"\x03" + piece.sql.encode(), 0)


def test_framer_joins_a_query_continued_over_several_packets() -> None:
    """A COM_QUERY longer than 0xFFFFFF bytes (two packets) comes out as one whole query."""
    sql = "SELECT '" + "x" * (MAX_PAYLOAD + 1000) + "'"
    raw = handshake_response() + packets(b"\x03" + sql.encode(), 0) + packets(b"\x03COMMIT", 0)
    chunks = [raw[i : i + 1_000_003] for i in range(0, len(raw), 1_000_003)]
    pieces = feed_all(CommandFramer(), chunks)
    assert [piece.sql for piece in pieces if piece.sql is not None] == [sql, "COMMIT"]
    assert b"".join(piece.data for piece in pieces) == raw


def test_framer_passes_tls_connections_through_uninspected() -> None:
    """After a handshake asking for TLS the framer stops parsing and forwards bytes as they come."""
    framer = CommandFramer()
    query = packets(b"\x03COMMIT", 0)
    pieces = feed_all(framer, [handshake_response(0x000F_A28D | CLIENT_SSL), query])
    assert framer.opaque
    assert all(piece.sql is None for piece in pieces)
    assert b"".join(piece.data for piece in pieces).endswith(query)


def test_framer_skips_the_query_attributes_header() -> None:
    """With CLIENT_QUERY_ATTRIBUTES the SQL after an empty attribute header is found."""
    framer = CommandFramer()
    raw = handshake_response(0x000F_A28D | CLIENT_QUERY_ATTRIBUTES)
    pieces = feed_all(framer, [raw, packets(b"\x03\x00\x01COMMIT", 0)])
    assert [piece.sql for piece in pieces if piece.sql is not None] == ["COMMIT"]


# ---------------------------------------------------------------------------
# Pass-through


def test_queries_and_transactions_pass_through(
    driver: str, proxy: FaultProxy, open_conn: Callable[..., Any], direct: Any
) -> None:
    """Commit and rollback through the proxy work as directly; the driver's commit() is a COMMIT."""
    kept, dropped = next(_ids), next(_ids)
    conn = open_conn(driver)
    insert_row(conn, kept, "kept")
    conn.commit()
    insert_row(conn, dropped, "dropped")
    conn.rollback()
    assert committed_tag(direct, kept) == "kept"
    assert committed_tag(direct, dropped) is None
    assert proxy.stats.commits_seen == 1  # the driver's commit() sent COM_QUERY "COMMIT"
    assert proxy.stats.resets == 0


@pytest.mark.parametrize("size", [100 * 1024, 1536 * 1024])
def test_large_queries_pass_through_intact(
    driver: str, size: int, proxy: FaultProxy, open_conn: Callable[..., Any], direct: Any
) -> None:
    """A multi-row INSERT of ~100 KiB or ~1.5 MiB arrives intact, and framing stays aligned."""
    rng = random.Random(size)
    rows = [
        (next(_ids), "large", "".join(rng.choices("abcdefghij", k=rng.randrange(1000, 20000))))
        for _ in range(size // 10_000)
    ]
    conn = open_conn(driver)
    with contextlib.closing(conn.cursor()) as cur:
        values = ", ".join(["(%s, %s, %s)"] * len(rows))
        cur.execute(
            f"INSERT INTO {TABLE} (id, tag, body) VALUES {values}", [v for r in rows for v in r]
        )
    conn.commit()
    with direct.cursor() as cur:
        cur.execute(
            f"SELECT id, SHA2(body, 256) FROM {TABLE} WHERE id BETWEEN %s AND %s ORDER BY id",
            (rows[0][0], rows[-1][0]),
        )
        stored = [(int(row_id), str(digest)) for row_id, digest in cur.fetchall()]
    assert stored == [
        (row_id, hashlib.sha256(body.encode()).hexdigest()) for row_id, _, body in rows
    ]
    assert proxy.stats.commits_seen == 1


def test_many_concurrent_connections_pass_through(
    proxy: FaultProxy, open_conn: Callable[..., Any], direct: Any
) -> None:
    """Eight threads committing at once through one proxy all get their rows stored."""
    ids = [[next(_ids) for _ in range(10)] for _ in range(8)]
    conns = [open_conn("pymysql") for _ in ids]
    errors: list[BaseException] = []

    def work(conn: Any, mine: list[int]) -> None:
        try:
            for row_id in mine:
                insert_row(conn, row_id, "concurrent")
                conn.commit()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=pair) for pair in zip(conns, ids, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with direct.cursor() as cur:
        flat = [row_id for mine in ids for row_id in mine]
        cur.execute(
            f"SELECT COUNT(*) FROM {TABLE} WHERE id IN ({', '.join(['%s'] * len(flat))})", flat
        )
        assert cur.fetchone()[0] == 80
    assert proxy.stats.commits_seen == 80
    assert proxy.stats.connections_accepted == 8


# ---------------------------------------------------------------------------
# Cuts around COMMIT


def test_cut_before_commit_loses_the_connection_and_the_transaction(
    driver: str, proxy: FaultProxy, open_conn: Callable[..., Any], direct: Any
) -> None:
    """A COMMIT cut before the server: commit() reports a lost connection; the row never commits."""
    row_id = next(_ids)
    conn = open_conn(driver)
    session = server_thread_id(conn)
    insert_row(conn, row_id, "cut-before")
    proxy.cut_before_commit()
    with pytest.raises(driver_error(driver)) as raised:
        conn.commit()
    assert raised.value.args[0] in CONNECTION_LOST
    wait_until_disconnected(direct, session)  # the server has rolled back by now
    assert committed_tag(direct, row_id) is None
    stats = proxy.stats
    assert (stats.commits_seen, stats.commits_cut_before, stats.resets) == (1, 1, 1)
    assert [event.kind for event in proxy.events] == [FaultKind.CUT_BEFORE]


def test_cut_after_commit_loses_the_connection_but_commits(
    driver: str, proxy: FaultProxy, open_conn: Callable[..., Any], direct: Any
) -> None:
    """A COMMIT whose reply is cut: commit() reports a lost connection, yet the row is committed."""
    row_id = next(_ids)
    conn = open_conn(driver)
    insert_row(conn, row_id, "cut-after")
    proxy.cut_after_commit()
    with pytest.raises(driver_error(driver)) as raised:
        conn.commit()
    assert raised.value.args[0] in CONNECTION_LOST
    assert committed_tag(direct, row_id) == "cut-after"
    stats = proxy.stats
    assert (stats.commits_seen, stats.commits_cut_after, stats.resets) == (1, 1, 1)
    (event,) = proxy.events
    assert event.kind is FaultKind.CUT_AFTER
    assert "server replied OK" in event.detail


def test_cut_count_covers_exactly_the_next_commits(
    proxy: FaultProxy, open_conn: Callable[..., Any], direct: Any
) -> None:
    """cut_before_commit(count=2) cuts two COMMITs (on any connection); the third goes through."""
    proxy.cut_before_commit(count=2)
    outcomes = []
    for _ in range(3):
        row_id = next(_ids)
        conn = open_conn("pymysql")
        insert_row(conn, row_id, "counted")
        try:
            conn.commit()
        except pymysql.err.OperationalError:
            outcomes.append("cut")
        else:
            outcomes.append("committed")
        assert (committed_tag(direct, row_id) == "counted") is (outcomes[-1] == "committed")
    assert outcomes == ["cut", "cut", "committed"]
    assert proxy.pending_cuts == 0


@pytest.mark.parametrize(("before", "stored"), [(True, False), (False, True)])
def test_cut_when_cuts_any_chosen_statement(
    before: bool, stored: bool, proxy: FaultProxy, open_conn: Callable[..., Any], direct: Any
) -> None:
    """cut_when on an autocommit INSERT: cut before, the row is absent; cut after, it is stored."""
    row_id = next(_ids)
    conn = open_conn("pymysql", autocommit=True)
    marker = f"cut-when-{row_id}"
    proxy.cut_when(lambda sql: marker in sql, before=before, label="ledger insert")
    with pytest.raises(pymysql.err.OperationalError) as raised:
        insert_row(conn, row_id, marker)
    assert raised.value.args[0] in CONNECTION_LOST
    assert (committed_tag(direct, row_id) == marker) is stored
    stats = proxy.stats
    assert (stats.cuts_before, stats.cuts_after) == ((1, 0) if before else (0, 1))
    assert stats.commits_seen == stats.commits_cut_before == stats.commits_cut_after == 0
    assert proxy.events[-1].detail.startswith("ledger insert: INSERT")


# ---------------------------------------------------------------------------
# Network faults


def test_reset_all_breaks_idle_connections(
    driver: str, proxy: FaultProxy, open_conn: Callable[..., Any]
) -> None:
    """reset_all() aborts every open connection: the next query on each fails as lost."""
    conns = [open_conn(driver) for _ in range(2)]
    assert proxy.reset_all() == 2
    for conn in conns:
        with (
            pytest.raises(driver_error(driver)) as raised,
            contextlib.closing(conn.cursor()) as cur,
        ):
            cur.execute("SELECT 1")
        assert raised.value.args[0] in CONNECTION_LOST
    assert proxy.stats.resets == 2
    assert [event.kind for event in proxy.events] == [FaultKind.RESET, FaultKind.RESET]


def test_reset_and_refusal_reach_the_client_as_a_tcp_rst(proxy: FaultProxy) -> None:
    """reset_all() and refuse() abort the client's TCP connection with a RST, not a FIN."""
    with socket.create_connection(proxy.address, timeout=5) as raw:
        assert raw.recv(4096)  # the server's greeting
        proxy.reset_all()
        with pytest.raises(ConnectionResetError):
            raw.recv(4096)
    proxy.refuse()
    # The RST can land while connect() is still returning or at the first recv().
    with pytest.raises(ConnectionResetError), socket.create_connection(proxy.address, 5) as raw:
        raw.recv(4096)


def test_blackhole_holds_a_new_connection_and_delivers_after_it(proxy: FaultProxy) -> None:
    """A connection made in a blackhole gets no greeting; once lifted, the greeting arrives."""
    proxy.blackhole()
    with socket.create_connection(proxy.address, timeout=5) as raw:
        raw.settimeout(0.5)
        with pytest.raises(TimeoutError):
            raw.recv(4096)
        proxy.blackhole(False)
        raw.settimeout(5)
        greeting = raw.recv(4096)
    assert greeting[4] == 10  # protocol version 10: a real server greeting came through
    assert [event.detail for event in proxy.events] == ["on", "off"]


def test_refuse_makes_new_connections_fail_until_lifted(
    driver: str, proxy: FaultProxy, open_conn: Callable[..., Any]
) -> None:
    """While refusing, connect() fails but open connections work; after it, connect works."""
    survivor = open_conn(driver)
    proxy.refuse()
    with pytest.raises(driver_error(driver)) as raised:
        open_conn(driver)
    assert raised.value.args[0] in CONNECT_FAILED
    with contextlib.closing(survivor.cursor()) as cur:
        cur.execute("SELECT 1")
    proxy.refuse(False)
    with contextlib.closing(open_conn(driver).cursor()) as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone()[0] == 2
    assert proxy.stats.connections_refused == 1


def test_blackhole_times_out_queries_and_connects_until_lifted(
    proxy: FaultProxy, open_conn: Callable[..., Any]
) -> None:
    """In a blackhole a query and a new connect hit their read timeout; after it, connect works."""
    conn = open_conn("pymysql", read_timeout=1)
    proxy.blackhole()
    with (
        pytest.raises(pymysql.err.OperationalError) as raised,
        contextlib.closing(conn.cursor()) as cur,
    ):
        cur.execute("SELECT 1")
    assert raised.value.args[0] == CR_SERVER_LOST
    with pytest.raises(pymysql.err.OperationalError):
        open_conn("pymysql", read_timeout=1)
    proxy.reset_all()  # drop the stalled connections rather than deliver to them later
    proxy.blackhole(False)
    with contextlib.closing(open_conn("pymysql").cursor()) as cur:
        cur.execute("SELECT 3")
        assert cur.fetchone()[0] == 3


@pytest.mark.parametrize("direction", list(Direction))
def test_latency_keeps_queries_working(
    direction: Direction, proxy: FaultProxy, open_conn: Callable[..., Any]
) -> None:
    """With a small latency in any direction queries still return the right answer."""
    conn = open_conn("pymysql")
    proxy.latency(0.02, direction=direction)
    with contextlib.closing(conn.cursor()) as cur:
        cur.execute("SELECT 4")
        assert cur.fetchone()[0] == 4
    assert proxy.events[-1].kind is FaultKind.LATENCY


def test_latency_beyond_the_read_timeout_fails_the_query(
    proxy: FaultProxy, open_conn: Callable[..., Any]
) -> None:
    """A 3 s one-way delay on replies makes a query with read_timeout=1 fail (it is applied)."""
    conn = open_conn("pymysql", read_timeout=1)
    proxy.latency(3.0, direction=Direction.TO_CLIENT)
    with (
        pytest.raises(pymysql.err.OperationalError) as raised,
        contextlib.closing(conn.cursor()) as cur,
    ):
        cur.execute("SELECT 5")
    assert raised.value.args[0] == CR_SERVER_LOST


# ---------------------------------------------------------------------------
# Lifecycle


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
def test_stop_closes_every_socket_and_joins_its_thread(
    mysql_server: ServerAddress, mysql_database: str
) -> None:
    """After stop() the proxy's thread is gone, its port refuses, and no file descriptor is left."""
    before = _open_fds()
    proxy = FaultProxy(mysql_server.host, mysql_server.port).start()
    conn = connect("pymysql", proxy, mysql_server, mysql_database)
    proxy.cut_after_commit()  # armed, never fired
    proxy.stop()
    with pytest.raises(pymysql.err.OperationalError), contextlib.closing(conn.cursor()) as cur:
        cur.execute("SELECT 1")
    close_quietly(conn)
    assert not [t for t in threading.enumerate() if t.name.startswith("FaultProxy:")]
    with pytest.raises(ConnectionRefusedError), socket.create_connection(proxy.address, 2):
        pass
    assert _open_fds() == before
