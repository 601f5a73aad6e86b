"""Safe by default: session settings, refused parameters, TLS, lazy drivers, no leaked password."""

from __future__ import annotations

import datetime
import logging
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardbill.errors import (
    DatabaseError,
    DriverNotInstalledError,
    FatalDatabaseError,
    MoneyTypeError,
)
from shardbill.protocols import ChecksParameters, WrapsConnection
from shardbill.providers import ParameterTypeError, PooledProvider, check_params
from tests.support.mysql import ServerAddress

MYSQL_DRIVERS = ["pymysql", "mysqldb"]


def _one(provider: PooledProvider, sql: str) -> tuple[Any, ...]:
    with provider.connection("s") as conn:
        cur = conn.cursor()
        cur.execute(sql)
        row = cur.fetchone()
    assert row is not None
    return row


# --- check_params -----------------------------------------------------------------------------


def test_check_params_accepts_the_bindable_types() -> None:
    """None, int, finite Decimal, str, bytes, date and datetime pass."""
    check_params(
        (
            None,
            0,
            -(2**63),
            Decimal("12.3400"),
            "acct",
            b"\x00\xff",
            datetime.date(2024, 1, 31),
            datetime.datetime(2024, 1, 31, 23, 59, 59),
        )
    )
    check_params([])


@pytest.mark.parametrize(
    ("value", "error", "type_name"),
    [
        ({"id": 1}, ParameterTypeError, "dict"),
        ([1, 2], ParameterTypeError, "list"),
        ((1, 2), ParameterTypeError, "tuple"),
        ({1, 2}, ParameterTypeError, "set"),
        (frozenset({1}), ParameterTypeError, "frozenset"),
        (bytearray(b"x"), ParameterTypeError, "bytearray"),
        (True, ParameterTypeError, "bool"),
        (object(), ParameterTypeError, "object"),
        (1.5, MoneyTypeError, "float"),
        (Decimal("NaN"), MoneyTypeError, "non-finite"),
        (Decimal("Infinity"), MoneyTypeError, "non-finite"),
    ],
)
def test_check_params_refuses_unsafe_values_naming_position_and_type(
    value: object, error: type[Exception], type_name: str
) -> None:
    """Each refused value raises a TypeError naming its position and its type."""
    with pytest.raises(error) as info:
        check_params(("ok", 1, value))
    assert isinstance(info.value, TypeError)
    assert "parameter 2" in str(info.value)
    assert type_name in str(info.value)


@pytest.mark.parametrize("params", [{"a": 1}, "abc", b"abc", 5])
def test_check_params_refuses_non_sequences(params: object) -> None:
    """Parameters must be a tuple or list: a mapping or a string is refused."""
    with pytest.raises(ParameterTypeError, match="tuple or list"):
        check_params(params)  # type: ignore[arg-type]


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.integers(),
            st.text(),
            st.binary(),
            st.decimals(allow_nan=False, allow_infinity=False),
            st.dates(),
            st.datetimes(),
        )
    )
)
def test_check_params_accepts_any_mix_of_allowed_values(values: list[object]) -> None:
    """Any list of allowed values passes."""
    check_params(values)


def test_check_params_refusal_never_shows_the_value() -> None:
    """The refusal names the type, not the value (which may be sensitive)."""
    with pytest.raises(ParameterTypeError) as info:
        check_params(({"card": "4111-secret"},))
    assert "4111-secret" not in str(info.value)


# --- parameters refused at the lent cursor ------------------------------------------------------


def _provider(
    request: pytest.FixtureRequest, driver: str, tmp_path: Path, **options: str
) -> PooledProvider:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    query = f"?{query}" if query else ""
    if driver == "sqlite":
        return PooledProvider.from_urls({"s": f"sqlite:///{tmp_path}/s.db{query}"})
    server: ServerAddress = request.getfixturevalue("mysql_server")
    database: str = request.getfixturevalue("mysql_database")
    return PooledProvider.from_urls({"s": server.url(database, driver=driver) + query})


@pytest.mark.parametrize(
    "driver",
    [
        "sqlite",
        pytest.param("pymysql", marks=pytest.mark.mysql),
        pytest.param("mysqldb", marks=pytest.mark.mysql),
    ],
)
@pytest.mark.parametrize("bad", [{"k": 1}, [1], {1}, 1.25, bytearray(b"x")])
def test_lent_cursor_refuses_unsafe_parameters_before_the_driver(
    request: pytest.FixtureRequest, tmp_path: Path, driver: str, bad: object
) -> None:
    """execute() and executemany() refuse dict/list/set/float/bytearray; the block rolls back."""
    with _provider(request, driver, tmp_path) as provider:
        placeholder = "?" if driver == "sqlite" else "%s"
        with pytest.raises(TypeError), provider.connection("s") as conn:
            conn.cursor().execute(f"SELECT {placeholder}", (bad,))
        with pytest.raises(TypeError), provider.connection("s") as conn:
            conn.cursor().executemany(f"SELECT {placeholder}", [(1,), (bad,)])
        assert provider.stats("s").discarded == 0


@pytest.mark.parametrize(
    "driver",
    [
        "sqlite",
        pytest.param("pymysql", marks=pytest.mark.mysql),
        pytest.param("mysqldb", marks=pytest.mark.mysql),
    ],
)
def test_unchecked_cursor_is_the_documented_way_around(
    request: pytest.FixtureRequest, tmp_path: Path, driver: str
) -> None:
    """cursor(check_params=False) binds values without the check (the caller vouches)."""
    with _provider(request, driver, tmp_path) as provider, provider.connection("s") as conn:
        placeholder = "?" if driver == "sqlite" else "%s"
        cur = conn.cursor(check_params=False)
        cur.execute(f"SELECT {placeholder} + 1", (41,))
        assert cur.fetchone() == (42,)


def test_a_forwarding_proxy_is_judged_per_connection_not_per_class(tmp_path: Path) -> None:
    """A user's connection proxy that forwards attributes (``__getattr__``) offers what the
    connection it wraps offers: the writer's per-class cache of "offers an unchecked cursor"
    must not give the second proxy the first one's answer."""
    import sqlite3

    from shardbill.writer.aggregation import _checks_parameters, _wraps

    class Proxy:
        def __init__(self, inner: object) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    with _provider_sqlite(tmp_path) as provider, provider.connection("s") as conn:
        assert _checks_parameters(Proxy(conn))
        assert _wraps(Proxy(conn))
    plain = sqlite3.connect(":memory:")
    try:
        assert not _checks_parameters(Proxy(plain))
        assert not _wraps(Proxy(plain))
    finally:
        plain.close()


def test_only_the_lent_connection_offers_unchecked_cursors(tmp_path: Path) -> None:
    """ChecksParameters tells a lent connection from a plain one: the writer asks for an
    unchecked cursor only where one exists, and it skips the check (a float goes through)."""
    import sqlite3

    with _provider_sqlite(tmp_path) as provider, provider.connection("s") as conn:
        assert isinstance(conn, ChecksParameters)
        cur = conn.unchecked_cursor()
        cur.execute("SELECT ? + 1", (0.5,))  # refused by a checked cursor: see above
        assert cur.fetchone() == (1.5,)
    plain = sqlite3.connect(":memory:")
    try:
        assert not isinstance(plain, ChecksParameters)
        assert not isinstance(plain, WrapsConnection)
    finally:
        plain.close()


@pytest.mark.mysql
@pytest.mark.parametrize("driver", ["pymysql", "mysqldb"])
def test_the_writer_sets_read_committed_on_the_pooled_connection_under_the_loan(
    request: pytest.FixtureRequest, tmp_path: Path, driver: str
) -> None:
    """The writer sets its isolation level once per driver connection a loan wraps (through
    WrapsConnection): later writes on the same pooled connection issue no SET, and the
    connection lent next keeps the level."""
    from shardbill import AggregationWriter, ShardMap
    from shardbill.tables.catalog import billing_tables
    from tests.test_exactly_once_edges import NOW, charge

    with _provider(request, driver, tmp_path) as provider:
        with provider.connection("s") as conn:
            assert isinstance(conn, WrapsConnection)
            conn.cursor().execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        with AggregationWriter(
            shard_map=ShardMap.create(["s"], slots=64),
            provider=provider,
            tables=billing_tables(),
            clock=NOW.timestamp,
        ) as writer:
            writer.ensure_schema()
            assert writer.write([charge("rc-1", 5)]).ok
            sets = _set_statements(provider)
            assert writer.write([charge("rc-2", 5)]).ok
            assert writer.write([charge("rc-3", 5)]).ok
            assert _set_statements(provider) == sets
        with provider.connection("s") as conn:
            cursor = conn.cursor()
            cursor.execute("SELECT @@session.tx_isolation")
            assert cursor.fetchone() == ("READ-COMMITTED",)


def _set_statements(provider: PooledProvider) -> int:
    """The SET statements the session of the pooled connection lent next has run."""
    with provider.connection("s") as conn:
        cursor = conn.cursor()
        cursor.execute("SHOW SESSION STATUS LIKE 'Com_set_option'")
        return int(cursor.fetchone()[1])


def _provider_sqlite(tmp_path: Path) -> PooledProvider:
    return PooledProvider.from_urls({"s": f"sqlite:///{tmp_path}/s.db"})


def test_sqlite_binds_decimals_and_dates_exactly(tmp_path: Path) -> None:
    """SQLite gets integral Decimals as integers, others as exact text, dates as ISO text."""
    with PooledProvider.from_urls({"s": f"sqlite:///{tmp_path}/s.db"}) as provider:
        with provider.connection("s") as conn:
            cur = conn.cursor()
            cur.execute("CREATE TABLE v (i INTEGER, t TEXT, d TEXT, ts TEXT)")
            cur.execute(
                "INSERT INTO v VALUES (?, ?, ?, ?)",
                (
                    Decimal("1234567890123456789"),
                    Decimal("0.10000000000000000001"),
                    datetime.date(2024, 2, 29),
                    datetime.datetime(2024, 2, 29, 12, 30, 1, 5),
                ),
            )
            cur.execute("SELECT i, typeof(i), t, d, ts FROM v")
            row = cur.fetchone()
        assert row == (
            1234567890123456789,
            "integer",
            "0.10000000000000000001",
            "2024-02-29",
            "2024-02-29 12:30:01.000005",
        )


# --- MySQL session defaults ---------------------------------------------------------------------


@pytest.mark.parametrize("driver", MYSQL_DRIVERS)
def test_mysql_session_is_utf8mb4_strict_and_transactional(
    mysql_server: ServerAddress, mysql_database: str, driver: str
) -> None:
    """Lent MySQL connections use utf8mb4 both ways, autocommit off and strict SQL mode."""
    url = mysql_server.url(mysql_database, driver=driver)
    with PooledProvider.from_urls({"s": url}) as provider:
        row = _one(
            provider,
            "SELECT @@autocommit, @@character_set_client, @@character_set_connection, "
            "@@character_set_results, @@SESSION.sql_mode",
        )
    assert row[:4] == (0, "utf8mb4", "utf8mb4", "utf8mb4")
    assert "STRICT_ALL_TABLES" in row[4].split(",")


@pytest.mark.parametrize("driver", MYSQL_DRIVERS)
def test_strict_mode_can_be_turned_off(
    mysql_server: ServerAddress, mysql_database: str, driver: str
) -> None:
    """strict_mode=false leaves the server's sql_mode as it is."""
    url = mysql_server.url(mysql_database, driver=driver)
    with PooledProvider.from_urls({"s": url + "?strict_mode=false"}) as provider:
        session, global_mode = _one(provider, "SELECT @@SESSION.sql_mode, @@GLOBAL.sql_mode")
    assert session == global_mode


@pytest.mark.parametrize("driver", MYSQL_DRIVERS)
def test_out_of_range_amount_is_an_error_not_a_clamp(
    mysql_server: ServerAddress, mysql_database: str, driver: str
) -> None:
    """An amount too large for its DECIMAL column fails (1264) instead of being clamped."""
    url = mysql_server.url(mysql_database, driver=driver)
    table = f"amount_{driver}"
    with PooledProvider.from_urls({"s": url}) as provider:
        with provider.connection("s") as conn:
            cur = conn.cursor()
            cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.execute(f"CREATE TABLE {table} (a DECIMAL(5,2)) ENGINE=MyISAM")
        with pytest.raises(FatalDatabaseError) as info, provider.connection("s") as conn:
            conn.cursor().execute(f"INSERT INTO {table} VALUES (%s)", (Decimal("123456.78"),))
        assert info.value.errno == 1264
        assert _one(provider, f"SELECT COUNT(*) FROM {table}") == (0,)


@pytest.mark.parametrize("driver", MYSQL_DRIVERS)
def test_multi_statements_are_refused(
    mysql_server: ServerAddress, mysql_database: str, driver: str
) -> None:
    """Two statements in one execute() are a syntax error (1064): multi-statements are off."""
    url = mysql_server.url(mysql_database, driver=driver)
    with PooledProvider.from_urls({"s": url}) as provider:
        with pytest.raises(FatalDatabaseError) as info, provider.connection("s") as conn:
            conn.cursor().execute("SELECT 1; SELECT 2")
        assert info.value.errno == 1064


@pytest.mark.parametrize("driver", MYSQL_DRIVERS)
def test_load_data_local_infile_is_refused(
    mysql_server: ServerAddress, mysql_database: str, driver: str, tmp_path: Path
) -> None:
    """LOAD DATA LOCAL INFILE fails even though the server allows it: the client flag is off."""
    source = tmp_path / "rows.csv"
    source.write_text("1\n2\n")
    url = mysql_server.url(mysql_database, driver=driver)
    table = f"infile_{driver}"
    with PooledProvider.from_urls({"s": url}) as provider:
        with provider.connection("s") as conn:
            cur = conn.cursor()
            cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.execute(f"CREATE TABLE {table} (a INT)")
        with pytest.raises(DatabaseError), provider.connection("s") as conn:
            conn.cursor().execute(f"LOAD DATA LOCAL INFILE '{source}' INTO TABLE {table}")
        assert _one(provider, f"SELECT COUNT(*) FROM {table}") == (0,)


@pytest.mark.parametrize("driver", MYSQL_DRIVERS)
def test_required_tls_is_enforced(
    mysql_server: ServerAddress, mysql_database: str, driver: str
) -> None:
    """ssl_mode=REQUIRED gives an encrypted session, or no connection at all (errno 2026)."""
    admin = mysql_server.connect()
    cur = admin.cursor()  # type: ignore[attr-defined]
    cur.execute("SELECT @@have_ssl")
    (have_ssl,) = cur.fetchone()
    admin.close()  # type: ignore[attr-defined]
    url = mysql_server.url(mysql_database, driver=driver) + "?ssl_mode=REQUIRED"
    with PooledProvider.from_urls({"s": url}) as provider:
        if have_ssl == "YES":
            assert _one(provider, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")[1] != ""
        else:
            with pytest.raises(FatalDatabaseError, match=r"not encrypted|SSL") as info:
                _one(provider, "SELECT 1")
            assert info.value.errno == 2026
            assert provider.stats("s").open == 0


# --- passwords ------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", MYSQL_DRIVERS)
def test_access_denied_never_shows_the_password(
    mysql_server: ServerAddress, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password is a FatalDatabaseError (1045) whose message, cause and logs hide it."""
    caplog.set_level(logging.DEBUG)
    password = "Wrong-Pw-91c2e"
    url = (
        f"mysql+{driver}://{mysql_server.user}:{password}@{mysql_server.host}:"
        f"{mysql_server.port}/mysql"
    )
    with (
        PooledProvider.from_urls({"s": url}) as provider,
        pytest.raises(FatalDatabaseError) as info,
    ):
        provider.connection("s").__enter__()
    assert info.value.errno == 1045
    assert info.value.shard == "s"
    assert password not in str(info.value)
    assert password not in repr(info.value.__cause__)
    for record in caplog.records:
        assert password not in record.getMessage()


@pytest.mark.parametrize("driver", MYSQL_DRIVERS)
def test_password_from_environment_connects(
    mysql_server: ServerAddress,
    mysql_database: str,
    driver: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A URL with password_env connects with the variable's value."""
    monkeypatch.setenv("SB_TEST_MYSQL_PASSWORD", mysql_server.password)
    url = (
        f"mysql+{driver}://{mysql_server.user}@{mysql_server.host}:{mysql_server.port}/"
        f"{mysql_database}?password_env=SB_TEST_MYSQL_PASSWORD"
    )
    with PooledProvider.from_urls({"s": url}) as provider:
        assert _one(provider, "SELECT 1") == (1,)


# --- drivers load lazily ----------------------------------------------------------------------


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_importing_providers_and_dialects_imports_no_mysql_driver(tmp_path: Path) -> None:
    """import shardbill.providers / shardbill.dialects, and a SQLite provider, load no driver."""
    result = _run(
        f"""
        import sys
        import shardbill, shardbill.providers, shardbill.dialects
        from shardbill.providers import PooledProvider
        with PooledProvider.from_urls({{"s": "sqlite:///{tmp_path}/s.db"}}) as p:
            with p.connection("s") as c:
                c.cursor().execute("SELECT 1")
        print(",".join(m for m in ("pymysql", "MySQLdb") if m in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize(
    ("module", "scheme", "extra"),
    [
        ("pymysql", "mysql+pymysql", "shardbill[pymysql]"),
        ("MySQLdb", "mysql+mysqldb", "shardbill[mysqlclient]"),
    ],
)
def test_missing_driver_names_the_extra(module: str, scheme: str, extra: str) -> None:
    """Without the driver, asking for it raises DriverNotInstalledError naming the extra."""
    result = _run(
        f"""
        import sys
        sys.modules[{module!r}] = None  # makes `import {module}` raise ImportError
        from shardbill.errors import DriverNotInstalledError
        from shardbill.providers import PooledProvider
        try:
            PooledProvider.from_urls({{"s": "{scheme}://u@db/b"}})
        except DriverNotInstalledError as exc:
            assert isinstance(exc, ImportError)
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert f"pip install '{extra}'" in result.stdout


def test_driver_not_installed_error_is_an_import_error() -> None:
    """DriverNotInstalledError is both a ShardbillError and an ImportError."""
    assert issubclass(DriverNotInstalledError, ImportError)
