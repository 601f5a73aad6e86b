"""Dialects without a server: UpsertSpec validation, rendered SQL, chunking, literals."""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Sequence
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardbill.dialects import (
    MergeKind,
    MySQLDialect,
    SQLiteDialect,
    UpsertSpec,
    dialect_for,
    parse_server_version,
)
from shardbill.errors import ConfigurationError, InvalidInputError, MoneyTypeError
from shardbill.providers import ParameterTypeError

SPEC = UpsertSpec(
    table="usage_daily",
    columns=("account_id", "day", "events", "first_seen", "last_seen", "plan"),
    key_columns=("account_id", "day"),
    merges=(
        ("events", MergeKind.SUM),
        ("first_seen", MergeKind.MIN),
        ("last_seen", MergeKind.MAX),
        ("plan", MergeKind.REPLACE),
    ),
)

MARIADB = MySQLDialect(flavor="mariadb", version=(10, 11, 19))
MYSQL_57 = MySQLDialect(flavor="mysql", version=(5, 7, 44))
MYSQL_8019 = MySQLDialect(flavor="mysql", version=(8, 0, 19))
MYSQL_8020 = MySQLDialect(flavor="mysql", version=(8, 0, 20))
SQLITE = SQLiteDialect(version=(3, 40, 1), variable_limit=32766)


# --- UpsertSpec ----------------------------------------------------------------------------


def test_spec_accepts_a_mapping_of_merges_and_knows_its_measures() -> None:
    """merges may be a mapping of column -> kind name; measure columns keep INSERT order."""
    spec = UpsertSpec(
        table="t", columns=("k", "a", "b"), key_columns=("k",), merges={"b": "max", "a": "sum"}
    )
    assert spec.merges == (("b", MergeKind.MAX), ("a", MergeKind.SUM))
    assert spec.measure_columns == ("a", "b")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"table": "bad-name"}, "table name 'bad-name'"),
        ({"table": "1abc"}, "table name '1abc'"),
        ({"table": "a" * 65}, "not a valid SQL identifier"),
        ({"columns": ("k", "n; DROP TABLE x")}, "column name"),
        ({"columns": ()}, "'columns' must not be empty"),
        ({"columns": ("k", "n", "N")}, "more than once"),
        ({"key_columns": ()}, "'key_columns' must not be empty"),
        ({"key_columns": ("missing",)}, "key columns \\['missing'\\]"),
        ({"merges": {"k": "sum"}}, "is a key column"),
        ({"merges": {"zzz": "sum"}}, "not in columns"),
        ({"merges": {"n": "average"}}, "merge kind 'average'"),
        ({"merges": (("n", "sum"), ("n", "max"))}, "two merges"),
    ],
)
def test_spec_validation_names_the_problem(kwargs: dict[str, object], needle: str) -> None:
    """Each invalid spec raises ConfigurationError saying which field is wrong, with the value."""
    fields: dict[str, object] = {
        "table": "t",
        "columns": ("k", "n"),
        "key_columns": ("k",),
        "merges": {"n": "sum"},
    }
    fields.update(kwargs)
    with pytest.raises(ConfigurationError, match=needle):
        UpsertSpec(**fields)  # type: ignore[arg-type]


def test_spec_is_hashable_and_frozen() -> None:
    """Specs are immutable values usable as cache keys."""
    copy = UpsertSpec(
        table=SPEC.table, columns=SPEC.columns, key_columns=SPEC.key_columns, merges=SPEC.merges
    )
    assert copy == SPEC
    assert hash(copy) == hash(SPEC)
    with pytest.raises(AttributeError):
        SPEC.table = "other"  # type: ignore[misc]


# --- rendered SQL -------------------------------------------------------------------------


_VALUES_FORM = (
    "INSERT INTO `usage_daily` (`account_id`, `day`, `events`, `first_seen`, `last_seen`, `plan`)"
    " VALUES (%s, %s, %s, %s, %s, %s), (%s, %s, %s, %s, %s, %s)"
    " ON DUPLICATE KEY UPDATE `events` = `events` + VALUES(`events`),"
    " `first_seen` = LEAST(`first_seen`, VALUES(`first_seen`)),"
    " `last_seen` = GREATEST(`last_seen`, VALUES(`last_seen`)),"
    " `plan` = VALUES(`plan`)"
)


@pytest.mark.parametrize("dialect", [MARIADB, MYSQL_57, MYSQL_8019])
def test_mariadb_and_old_mysql_use_values_function(dialect: MySQLDialect) -> None:
    """MariaDB and MySQL < 8.0.20 refer to the incoming row with VALUES(col)."""
    assert not dialect.row_alias
    assert dialect.upsert_sql(SPEC, 2) == _VALUES_FORM


def test_mysql_8_0_20_uses_the_row_alias() -> None:
    """MySQL >= 8.0.20 renders ``VALUES (...) AS new ... new.col`` and no VALUES() call.

    Render-only: the local test server is MariaDB, which does not accept this syntax.
    """
    sql = MYSQL_8020.upsert_sql(SPEC, 2)
    assert sql == (
        "INSERT INTO `usage_daily` (`account_id`, `day`, `events`, `first_seen`, `last_seen`,"
        " `plan`) VALUES (%s, %s, %s, %s, %s, %s), (%s, %s, %s, %s, %s, %s) AS new"
        " ON DUPLICATE KEY UPDATE `events` = `events` + new.`events`,"
        " `first_seen` = LEAST(`first_seen`, new.`first_seen`),"
        " `last_seen` = GREATEST(`last_seen`, new.`last_seen`),"
        " `plan` = new.`plan`"
    )
    assert "VALUES(" not in sql


def test_row_alias_never_collides_with_a_table_named_new() -> None:
    """A table called ``new`` gets a different row alias."""
    spec = UpsertSpec(table="new", columns=("k", "n"), key_columns=("k",), merges={"n": "sum"})
    sql = MYSQL_8020.upsert_sql(spec, 1)
    assert " AS incoming " in sql
    assert "`n` + incoming.`n`" in sql


def test_sqlite_uses_on_conflict_with_excluded() -> None:
    """SQLite renders ON CONFLICT (keys) DO UPDATE with excluded.col and scalar min/max."""
    assert SQLITE.upsert_sql(SPEC, 2) == (
        'INSERT INTO "usage_daily" ("account_id", "day", "events", "first_seen", "last_seen",'
        ' "plan") VALUES (?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?)'
        ' ON CONFLICT ("account_id", "day") DO UPDATE SET "events" = "events" + excluded."events",'
        ' "first_seen" = min("first_seen", excluded."first_seen"),'
        ' "last_seen" = max("last_seen", excluded."last_seen"),'
        ' "plan" = excluded."plan"'
    )


def test_no_merges_means_insert_new_keys_only() -> None:
    """merges=() renders a no-op update on MySQL and DO NOTHING on SQLite (a ledger claim)."""
    spec = UpsertSpec(table="ledger", columns=("event_id", "slot"), key_columns=("event_id",))
    assert MARIADB.upsert_sql(spec, 1) == (
        "INSERT INTO `ledger` (`event_id`, `slot`) VALUES (%s, %s)"
        " ON DUPLICATE KEY UPDATE `event_id` = `event_id`"
    )
    assert SQLITE.upsert_sql(spec, 1) == (
        'INSERT INTO "ledger" ("event_id", "slot") VALUES (?, ?)'
        ' ON CONFLICT ("event_id") DO NOTHING'
    )


def test_upsert_sql_is_built_once_per_spec_and_row_count() -> None:
    """The same (dialect, spec, rows) returns the very same cached string."""
    assert MARIADB.upsert_sql(SPEC, 7) is MARIADB.upsert_sql(SPEC, 7)
    equal_dialect = MySQLDialect(flavor="mariadb", version=(10, 11, 19))
    assert equal_dialect.upsert_sql(SPEC, 7) is MARIADB.upsert_sql(SPEC, 7)


@pytest.mark.parametrize("rows", [0, -1, True])
def test_upsert_sql_needs_a_positive_row_count(rows: int) -> None:
    """rows must be a positive integer."""
    with pytest.raises(InvalidInputError, match="rows >= 1"):
        MARIADB.upsert_sql(SPEC, rows)


def test_quote_validates_identifiers() -> None:
    """quote() wraps valid identifiers in the dialect's quotes and refuses others."""
    assert MARIADB.quote("ledger_2") == "`ledger_2`"
    assert SQLITE.quote("ledger_2") == '"ledger_2"'
    for bad in ("a`b", 'a"b', "", "x y", "ü"):
        with pytest.raises(ConfigurationError):
            MARIADB.quote(bad)


def test_paramstyles() -> None:
    """MySQL uses format (%s), SQLite qmark (?)."""
    assert (MARIADB.paramstyle, MARIADB.placeholder) == ("format", "%s")
    assert (SQLITE.paramstyle, SQLITE.placeholder) == ("qmark", "?")


# --- versions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "family", "version", "row_alias"),
    [
        ("10.11.19-MariaDB-0+deb12u1", "mariadb", (10, 11, 19), False),
        ("5.5.5-10.6.12-MariaDB-log", "mariadb", (10, 6, 12), False),
        ("11.4.2-MariaDB", "mariadb", (11, 4, 2), False),
        ("8.0.36", "mysql", (8, 0, 36), True),
        ("8.0.20", "mysql", (8, 0, 20), True),
        ("8.0.19-log", "mysql", (8, 0, 19), False),
        ("8.0.28-0ubuntu0.20.04.3", "mysql", (8, 0, 28), True),
        ("5.7.44-48-log", "mysql", (5, 7, 44), False),
        ("8.0.mysql_aurora.3.04.0", "mysql", (8, 0, 0), False),
        ("9.1.0", "mysql", (9, 1, 0), True),
    ],
)
def test_server_versions_choose_the_upsert_form(
    text: str, family: str, version: tuple[int, int, int], row_alias: bool
) -> None:
    """VERSION() strings map to the family and version; only MySQL >= 8.0.20 gets the alias."""
    assert parse_server_version(text) == (family, version)
    assert MySQLDialect.from_server_version(text).row_alias is row_alias


def test_unparseable_version_is_a_configuration_error() -> None:
    """A version string without numbers says how to build the dialect by hand."""
    with pytest.raises(ConfigurationError, match="MySQLDialect"):
        parse_server_version("unknown")


def test_sqlite_older_than_3_24_is_refused() -> None:
    """SQLite without UPSERT support is a configuration error."""
    with pytest.raises(ConfigurationError, match=r"3\.24"):
        SQLiteDialect(version=(3, 23, 1))


def test_dialect_for_a_sqlite_connection_reads_its_limits() -> None:
    """dialect_for(sqlite3.Connection) gives SQLite with the library's variable limit."""
    conn = sqlite3.connect(":memory:")
    dialect = dialect_for(conn)
    assert isinstance(dialect, SQLiteDialect)
    assert dialect.variable_limit == conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    assert dialect.version == sqlite3.sqlite_version_info
    conn.close()


# --- render_literal ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        (0, "0"),
        (-42, "-42"),
        (2**70, str(2**70)),
        (Decimal("12.3400"), "12.3400"),
        (Decimal("-0.01"), "-0.01"),
        (Decimal("1E+3"), "1000"),
        (Decimal("1E-7"), "0.0000001"),
    ],
)
def test_render_literal_renders_exact_numbers_in_plain_notation(
    value: object, literal: str
) -> None:
    """ints and finite Decimals render as plain literals (never exponent notation)."""
    assert MARIADB.render_literal(value) == literal


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (True, ParameterTypeError),
        (1.5, MoneyTypeError),
        (Decimal("NaN"), MoneyTypeError),
        (Decimal("-Infinity"), MoneyTypeError),
        ("1", ParameterTypeError),
        (b"1", ParameterTypeError),
        (None, ParameterTypeError),
        ({"a": 1}, ParameterTypeError),
    ],
)
def test_render_literal_refuses_everything_else(value: object, error: type[Exception]) -> None:
    """Anything but int and finite Decimal is a TypeError."""
    for dialect in (MARIADB, SQLITE):
        with pytest.raises(error):
            dialect.render_literal(value)


def test_sqlite_render_literal_refuses_fractional_decimals() -> None:
    """SQLite would turn 1.5 into a float: only integral Decimals render there."""
    assert SQLITE.render_literal(Decimal("1500")) == "1500"
    assert SQLITE.render_literal(Decimal("15E+2")) == "1500"
    with pytest.raises(MoneyTypeError, match="minor units"):
        SQLITE.render_literal(Decimal("1.5"))


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_rendered_decimal_reads_back_exactly(value: Decimal) -> None:
    """A rendered Decimal literal parses back to the same number."""
    assert Decimal(MARIADB.render_literal(value)) == value


# --- chunking -------------------------------------------------------------------------------


_SMALL = UpsertSpec(table="t", columns=("k", "label", "n"), key_columns=("k",), merges={"n": "sum"})

_values = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.decimals(
        allow_nan=False, allow_infinity=False, places=4, max_value=10**12, min_value=-(10**12)
    ),
    st.text(max_size=60),
    st.binary(max_size=40),
    st.datetimes(),
    st.dates(),
)


def _rendered_bytes(
    dialect: MySQLDialect, spec: UpsertSpec, rows: Sequence[Sequence[object]]
) -> int:
    """The real size of the statement PyMySQL would send (its own escaping)."""
    from pymysql.converters import escape_item

    text = dialect.upsert_sql(spec, len(rows))
    params = tuple(escape_item(value, "utf8mb4") for row in rows for value in row)
    return len((text % params).encode("utf-8"))


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 10**6), _values, _values), max_size=60),
    limit=st.integers(min_value=1024, max_value=6000),
)
def test_mysql_chunks_keep_every_statement_under_the_limit(
    rows: list[tuple[object, ...]], limit: int
) -> None:
    """Chunks concatenate back to the rows, in order, and each rendered statement fits."""
    dialect = MySQLDialect(flavor="mariadb", version=(10, 11, 0), max_allowed_packet=limit)
    try:
        chunks = list(dialect.chunks(_SMALL, rows))
    except InvalidInputError:
        return  # one row alone is too large for this limit: refused, never sent
    assert [row for chunk in chunks for row in chunk] == rows
    for chunk in chunks:
        assert chunk
        assert _rendered_bytes(dialect, _SMALL, list(chunk)) <= limit


def test_sqlite_chunks_respect_the_variable_limit() -> None:
    """SQLite statements bind at most variable_limit values."""
    dialect = SQLiteDialect(variable_limit=999)
    rows = [(i, "x", i) for i in range(1000)]
    chunks = list(dialect.chunks(_SMALL, rows))
    assert [len(chunk) for chunk in chunks] == [333, 333, 333, 1]
    assert [row for chunk in chunks for row in chunk] == rows


def test_no_rows_means_no_statements() -> None:
    """An empty batch yields no chunk and no statement."""
    assert list(MARIADB.chunks(_SMALL, [])) == []
    assert list(SQLITE.upsert_statements(_SMALL, [])) == []


def test_more_columns_than_bindable_values_is_refused() -> None:
    """A row wider than the variable limit can never be bound: InvalidInputError."""
    with pytest.raises(InvalidInputError, match="columns"):
        list(SQLiteDialect(variable_limit=2).chunks(_SMALL, [(1, "a", 1)]))


def test_max_rows_caps_a_chunk() -> None:
    """max_rows bounds the rows of every chunk."""
    rows = [(i, "x", i) for i in range(10)]
    assert [len(c) for c in MARIADB.chunks(_SMALL, rows, max_rows=4)] == [4, 4, 2]
    with pytest.raises(InvalidInputError, match="max_rows"):
        list(MARIADB.chunks(_SMALL, rows, max_rows=0))


def test_row_with_the_wrong_width_is_refused() -> None:
    """A row whose value count differs from the columns names its index."""
    with pytest.raises(InvalidInputError, match=r"row 1 .* 2 values; expected 3"):
        list(MARIADB.chunks(_SMALL, [(1, "a", 1), (2, "b")]))


def test_row_too_large_for_any_statement_is_refused() -> None:
    """A single row bigger than the limit cannot be chunked: InvalidInputError says so."""
    dialect = MySQLDialect(flavor="mariadb", version=(10, 11, 0), max_allowed_packet=2048)
    with pytest.raises(InvalidInputError, match="max_allowed_packet"):
        list(dialect.chunks(_SMALL, [(1, "x" * 5000, 1)]))


def test_upsert_statements_pair_sql_with_flat_params() -> None:
    """upsert_statements yields the cached SQL and the chunk's values flattened in order."""
    rows = [(1, "a", 10), (2, "b", 20), (3, "c", 30)]
    pairs = list(MARIADB.upsert_statements(_SMALL, rows, max_rows=2))
    assert pairs == [
        (MARIADB.upsert_sql(_SMALL, 2), [1, "a", 10, 2, "b", 20]),
        (MARIADB.upsert_sql(_SMALL, 1), [3, "c", 30]),
    ]


def test_mysql_value_size_bounds_cover_dates() -> None:
    """Dates and datetimes chunk like any other value (their rendered size is bounded)."""
    dialect = MySQLDialect(flavor="mariadb", version=(10, 11, 0), max_allowed_packet=1024)
    rows = [
        (i, datetime.datetime(2024, 1, 1, 0, 0, 0, 1), datetime.date(2024, 1, 1)) for i in range(50)
    ]
    chunks = list(dialect.chunks(_SMALL, rows))
    assert len(chunks) > 1
    for chunk in chunks:
        assert _rendered_bytes(dialect, _SMALL, list(chunk)) <= 1024
