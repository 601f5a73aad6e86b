"""Rendered UPSERTs run for real on MariaDB (both drivers) and SQLite.

The MySQL >= 8.0.20 row-alias form cannot run here (the test server is
MariaDB); tests/test_dialects.py checks its text.
"""

from __future__ import annotations

import random
import secrets
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from shardbill.dialects import MySQLDialect, SQLiteDialect, UpsertSpec, dialect_for
from shardbill.errors import DatabaseError
from shardbill.providers import PooledProvider
from tests.support.mysql import ServerAddress

SPEC = UpsertSpec(
    table="agg",
    columns=("account_id", "day", "events", "amount_minor", "first_seen", "last_seen", "plan"),
    key_columns=("account_id", "day"),
    merges={
        "events": "sum",
        "amount_minor": "sum",
        "first_seen": "min",
        "last_seen": "max",
        "plan": "replace",
    },
)

_DDL = (
    "CREATE TABLE {table} (account_id INTEGER NOT NULL, day INTEGER NOT NULL,"
    " events INTEGER NOT NULL, amount_minor BIGINT NOT NULL, first_seen INTEGER NOT NULL,"
    " last_seen INTEGER NOT NULL, plan VARCHAR(20) NOT NULL, PRIMARY KEY (account_id, day))"
)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("pymysql", marks=pytest.mark.mysql),
        pytest.param("mysqldb", marks=pytest.mark.mysql),
    ]
)
def provider(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PooledProvider]:
    """A provider with one shard ``s`` of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/s.db"
    else:
        server: ServerAddress = request.getfixturevalue("mysql_server")
        url = server.url(request.getfixturevalue("mysql_database"), driver=request.param)
    with PooledProvider.from_urls({"s": url}) as provider:
        yield provider


def _spec_for(table: str) -> UpsertSpec:
    return UpsertSpec(
        table=table, columns=SPEC.columns, key_columns=SPEC.key_columns, merges=SPEC.merges
    )


def _model(rows: list[tuple[Any, ...]]) -> dict[tuple[int, int], tuple[Any, ...]]:
    """What the table must hold: an independent fold of the merges in Python."""
    state: dict[tuple[int, int], list[Any]] = {}
    for account, day, events, amount, first, last, plan in rows:
        key = (account, day)
        if key not in state:
            state[key] = [events, amount, first, last, plan]
            continue
        old = state[key]
        state[key] = [old[0] + events, old[1] + amount, min(old[2], first), max(old[3], last), plan]
    return {key: tuple(value) for key, value in state.items()}


def test_upsert_merges_sum_min_max_replace(provider: PooledProvider) -> None:
    """Seeded batches (with repeated keys inside and across batches) merge as specified."""
    table = f"agg_{secrets.token_hex(3)}"
    spec = _spec_for(table)
    rng = random.Random(20240531)
    written: list[tuple[Any, ...]] = []
    with provider.connection("s") as conn:
        conn.cursor().execute(_DDL.format(table=table))
    dialect = provider.dialect("s")
    for _ in range(5):
        batch = [
            (
                rng.randrange(4),
                rng.randrange(2),
                rng.randrange(1, 5),
                rng.randrange(-500, 5000),
                rng.randrange(10**6),
                rng.randrange(10**6),
                rng.choice(["free", "pro", "team"]),
            )
            for _ in range(12)
        ]
        with provider.connection("s") as conn:
            cur = conn.cursor()
            for sql, params in dialect.upsert_statements(spec, batch, max_rows=5):
                cur.execute(sql, params)
        written.extend(batch)
    with provider.connection("s", readonly=True) as conn:
        cur = conn.cursor()
        cur.execute(
            "SELECT account_id, day, events, amount_minor, first_seen, last_seen, plan"
            f" FROM {table}"
        )
        stored = {(row[0], row[1]): tuple(row[2:]) for row in cur.fetchall()}
    assert stored == _model(written)


def test_insert_only_spec_counts_new_rows(provider: PooledProvider) -> None:
    """With merges=(), existing keys are left alone and rowcount counts the inserted rows."""
    table = f"ledger_{secrets.token_hex(3)}"
    spec = UpsertSpec(table=table, columns=("event_id", "note"), key_columns=("event_id",))
    with provider.connection("s") as conn:
        conn.cursor().execute(
            f"CREATE TABLE {table} (event_id VARCHAR(40) PRIMARY KEY, note VARCHAR(10) NOT NULL)"
        )
    dialect = provider.dialect("s")
    with provider.connection("s") as conn:
        cur = conn.cursor()
        cur.execute(dialect.upsert_sql(spec, 2), ["e1", "first", "e2", "first"])
        assert cur.rowcount == 2
        cur.execute(dialect.upsert_sql(spec, 3), ["e1", "again", "e3", "new", "e2", "again"])
        assert cur.rowcount == 1
        cur.execute(f"SELECT event_id, note FROM {table} ORDER BY event_id")
        assert list(cur.fetchall()) == [("e1", "first"), ("e2", "first"), ("e3", "new")]


def test_dialect_matches_the_server(provider: PooledProvider) -> None:
    """The detected dialect is SQLite for files and MariaDB's VALUES() family here."""
    dialect = provider.dialect("s")
    url = provider.url("s")
    if url.family == "sqlite":
        assert isinstance(dialect, SQLiteDialect)
    else:
        assert isinstance(dialect, MySQLDialect)
        assert dialect.name in ("mariadb", "mysql")
        assert dialect.max_allowed_packet >= 1024


@pytest.mark.parametrize("driver", ["pymysql", "mysqldb"])
def test_dialect_for_a_plain_driver_connection(
    mysql_server: ServerAddress, mysql_database: str, driver: str
) -> None:
    """dialect_for works on a user's own driver connection, and caches the answer per connection."""
    if driver == "pymysql":
        import pymysql

        conn: Any = pymysql.connect(
            host=mysql_server.host,
            port=mysql_server.port,
            user=mysql_server.user,
            password=mysql_server.password,
            database=mysql_database,
        )
    else:
        import MySQLdb

        conn = MySQLdb.connect(
            host=mysql_server.host,
            port=mysql_server.port,
            user=mysql_server.user,
            password=mysql_server.password,
            database=mysql_database,
        )
    cur = conn.cursor()
    cur.execute("SELECT VERSION(), @@max_allowed_packet")
    version, packet = cur.fetchone()
    dialect = dialect_for(conn)
    assert dialect == MySQLDialect.from_server_version(version, max_allowed_packet=packet)
    conn.close()
    # A closed connection cannot answer a query: the second answer comes from the cache.
    assert dialect_for(conn) == dialect


@pytest.mark.parametrize("driver", ["pymysql", "mysqldb"])
def test_chunks_fit_a_small_max_allowed_packet(
    mysql_server: ServerAddress, mysql_database: str, driver: str
) -> None:
    """Under a 16 KiB max_allowed_packet, one big statement fails but the chunked batch lands.

    The global value is lowered only while this test's connections open, then restored; the
    sessions keep the small value they started with.
    """
    table = f"small_{driver}_{secrets.token_hex(3)}"
    spec = UpsertSpec(
        table=table, columns=("k", "label", "n"), key_columns=("k",), merges={"n": "sum"}
    )
    url = mysql_server.url(mysql_database, driver=driver) + "?pool_size=1"
    admin: Any = mysql_server.connect(mysql_database)
    acur = admin.cursor()
    acur.execute(
        f"CREATE TABLE {table} (k INT PRIMARY KEY, label VARCHAR(200) NOT NULL, n INT NOT NULL)"
    )
    acur.execute("SELECT @@GLOBAL.max_allowed_packet")
    (original,) = acur.fetchone()
    provider = PooledProvider.from_urls({"s": url})
    try:
        acur.execute("SET GLOBAL max_allowed_packet = 16384")
        try:
            dialect = provider.dialect("s")  # opens the pooled connection now
            victim: Any = mysql_server.connect(mysql_database)
        finally:
            acur.execute(f"SET GLOBAL max_allowed_packet = {int(original)}")
        assert isinstance(dialect, MySQLDialect)
        assert dialect.max_allowed_packet == 16384
        rows = [(k, f"label-{k:05d}-" + "x" * 150, 1) for k in range(400)]
        # The limit is real: the whole batch in one statement is refused by the server.
        flat = [value for row in rows for value in row]
        import pymysql

        with pytest.raises(pymysql.err.OperationalError) as refused:
            victim.cursor().execute(dialect.upsert_sql(spec, len(rows)), flat)
        assert refused.value.args[0] in (1153, 2006, 2013)
        chunks = list(dialect.chunks(spec, rows))
        assert len(chunks) > 1
        for _ in range(2):
            with provider.connection("s") as conn:
                cur = conn.cursor()
                cur.execute("SELECT @@SESSION.max_allowed_packet")
                assert cur.fetchone() == (16384,)
                for sql, params in dialect.upsert_statements(spec, rows):
                    cur.execute(sql, params)
        acur.execute(f"SELECT COUNT(*), SUM(n) FROM {table}")
        count, total = acur.fetchone()
        assert (count, int(total)) == (400, 800)
        assert provider.stats("s").created == 1
    finally:
        provider.close()
        acur.execute(f"DROP TABLE IF EXISTS {table}")
        admin.close()


def test_sqlite_chunks_under_a_lowered_variable_limit(tmp_path: Path) -> None:
    """A SQLite connection whose variable limit is lowered still takes a chunked batch."""
    import sqlite3

    conn = sqlite3.connect(tmp_path / "limit.db", isolation_level=None)
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 30)
    dialect = dialect_for(conn)
    assert isinstance(dialect, SQLiteDialect)
    assert dialect.variable_limit == 30
    spec = UpsertSpec(table="t", columns=("k", "n"), key_columns=("k",), merges={"n": "sum"})
    conn.execute('CREATE TABLE "t" (k INTEGER PRIMARY KEY, n INTEGER NOT NULL)')
    rows = [(k % 50, 1) for k in range(200)]
    with pytest.raises(sqlite3.OperationalError):
        conn.execute(dialect.upsert_sql(spec, len(rows)), [v for row in rows for v in row])
    statements = list(dialect.upsert_statements(spec, rows))
    assert len(statements) == 14  # 15 rows (30 values) per statement
    conn.execute("BEGIN")
    for sql, params in statements:
        conn.execute(sql, params)
    conn.execute("COMMIT")
    assert conn.execute('SELECT COUNT(*), SUM(n) FROM "t"').fetchone() == (50, 200)
    conn.close()


def test_translated_errors_keep_the_driver_error_as_cause(provider: PooledProvider) -> None:
    """A failing statement raises a shardbill DatabaseError whose __cause__ is the driver's."""
    with pytest.raises(DatabaseError) as info, provider.connection("s") as conn:
        conn.cursor().execute("SELECT * FROM no_such_table_here")
    assert info.value.__cause__ is not None
    assert info.value.shard == "s"


def _count_step(steps: Counter[str]) -> int:
    steps["vm"] += 1
    return 0  # go on


def test_pair_lookups_read_only_the_pairs_asked_for(provider: PooledProvider) -> None:
    """A ledger lookup costs the pairs it asks for, however many rows their slots hold.

    The ledger's key is (slot, event id). 24,000 rows sit in 480 slots;
    looking up 1,200 pairs over those slots must seek each pair, never walk a
    slot's rows. (The two-IN-lists form does walk them on MariaDB once slots
    times ids is too many ranges for its optimizer: its cost would grow with
    the ledger.)
    """
    from shardbill.tables import SystemTables

    system = SystemTables(prefix=f"sb{secrets.token_hex(3)}")
    dialect = provider.dialect("s")
    ledger = system.ledger_def()
    rows = [(f"e-{n:05d}", n % 480, "0" * 16, 1, None) for n in range(24_000)]
    spec = UpsertSpec(table=ledger.name, columns=[c.name for c in ledger.columns],
                      key_columns=ledger.primary_key)  # fmt: skip
    with provider.connection("s") as conn:
        cur = conn.cursor()
        for statement in dialect.create_statements(ledger):
            cur.execute(statement)
        for sql, params in dialect.upsert_statements(spec, rows, max_rows=1000):
            cur.execute(sql, params)
    # 1,200 pairs: 800 present, 400 absent (right slot, unknown id)
    wanted = [(n % 480, f"e-{n:05d}") for n in range(0, 24_000, 30)]
    wanted += [(n % 480, f"x-{n:05d}") for n in range(400)]
    wanted.sort()
    table = dialect.quote(ledger.name)
    found: set[tuple[int, str]] = set()
    with provider.connection("s", readonly=True) as conn:
        cur = conn.cursor()
        statements = list(dialect.pairs_statements(("sb_slot", "event_id"), wanted))
        assert len(statements) > 1  # chunked
        for condition, params in statements:
            select = f"SELECT sb_slot, event_id FROM {table} WHERE {condition}"
            asked = len(params)
            if dialect.name == "sqlite":
                cur.execute("EXPLAIN QUERY PLAN " + select, params)
                plan = " ".join(str(row[-1]) for row in cur.fetchall())
                assert "USING PRIMARY KEY (sb_slot=? AND event_id=?)" in plan, plan
                # The work done, in virtual-machine steps: a seek per pair, not per
                # slot x id combination (which would be ~asked**2).
                steps: Counter[str] = Counter()
                conn.raw.set_progress_handler(partial(_count_step, steps), 1)  # type: ignore[attr-defined]
            else:
                cur.execute("FLUSH STATUS")
            cur.execute(select, params)
            found.update((int(slot), str(event_id)) for slot, event_id in cur.fetchall())
            if dialect.name == "sqlite":
                conn.raw.set_progress_handler(None, 1)  # type: ignore[attr-defined]
                assert steps["vm"] < 100 * asked, f"{steps['vm']} VM steps for {asked} pairs"
            else:
                cur.execute("SHOW SESSION STATUS LIKE 'Handler_read_%'")
                reads = {name: int(value) for name, value in cur.fetchall()}
                walked = reads["Handler_read_next"] + reads["Handler_read_rnd_next"]
                assert walked == 0, f"the lookup walked {walked} rows"
                assert reads["Handler_read_key"] <= asked, f"{reads} for {asked} pairs"
    # SQLite's form may also match cross pairs; callers drop them. Every wanted pair is found.
    present = {pair for pair in wanted if pair[1].startswith("e-")}
    assert present <= found
    assert not {pair for pair in found if pair[1].startswith("x-")}
