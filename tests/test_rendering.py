"""The writer's statements: integers rendered, text bound, cut under the packet limit."""

from __future__ import annotations

from shardbill.dialects import MySQLDialect, SQLiteDialect, UpsertSpec
from shardbill.tables import aggregate_table_def
from shardbill.tables.catalog import billing_tables
from shardbill.writer.upserts import RowStatements, row_bound

TABLE = billing_tables()[0]  # usage_daily: account_id, day, product | slot | 3 measures
SPEC = UpsertSpec(
    table=TABLE.name,
    columns=TABLE.columns,
    key_columns=TABLE.key_names,
    merges=tuple((m.name, m.merge) for m in TABLE.measures),
)
COLUMNS = list(aggregate_table_def(TABLE).columns)
ROWS = [
    (7, "2026-11-01", "sms", 12, 1_000_000, 7_900, 1),
    (-8, "2026-11-02", "o'brien", 3, 5, 6, 2),
]


def test_mysql_renders_integers_and_binds_text() -> None:
    """On MySQL the ints are in the text as digits and only text and dates are parameters."""
    renderer = RowStatements(MySQLDialect(flavor="mariadb", version=(10, 11, 0)), SPEC, COLUMNS,
                             max_rows=100)  # fmt: skip
    ((sql, params),) = renderer.statements(ROWS)
    assert "VALUES (7, %s, %s, 12, 1000000, 7900, 1), (-8, %s, %s, 3, 5, 6, 2)" in sql
    assert sql.endswith("`charges` = `charges` + VALUES(`charges`)")
    assert params == ["2026-11-01", "sms", "2026-11-02", "o'brien"]


def test_sqlite_binds_everything() -> None:
    """On SQLite every value is a bound parameter."""
    renderer = RowStatements(SQLiteDialect(), SPEC, COLUMNS, max_rows=100)
    ((sql, params),) = renderer.statements(ROWS)
    assert "VALUES (?, ?, ?, ?, ?, ?, ?), (?, ?, ?, ?, ?, ?, ?)" in sql
    assert params == [v for row in ROWS for v in row]


def test_statements_are_cut_by_the_row_bound_under_the_packet_limit() -> None:
    """A small max_allowed_packet cuts a batch into several statements, none above it."""
    dialect = MySQLDialect(flavor="mariadb", version=(10, 11, 0), max_allowed_packet=8 * 1024)
    renderer = RowStatements(dialect, SPEC, COLUMNS, max_rows=1000)
    rows = [(i, "2026-11-01", "x" * 64, 1, 2, 3, 4) for i in range(100)]
    statements = list(renderer.statements(rows))
    assert len(statements) > 1
    assert sum(sql.count("), (") + 1 for sql, _ in statements) == 100
    for sql, params in statements:
        rendered = sql % tuple(f"'{p}'" for p in params)
        assert len(rendered.encode()) < 8 * 1024
    assert renderer.rows_per_statement * row_bound(COLUMNS) <= 8 * 1024


def test_the_ledger_insert_has_no_conflict_clause() -> None:
    """A plain insert: a concurrent claim of the same unit must fail, never be ignored."""
    ledger = UpsertSpec(
        table="shardbill_ledger",
        columns=("event_id", "sb_slot", "fingerprint", "event_time"),
        key_columns=("sb_slot", "event_id"),
    )
    from shardbill.tables import SystemTables

    columns = [SystemTables().ledger_def().column(c) for c in ledger.columns]
    for dialect in (MySQLDialect(flavor="mariadb", version=(10, 11, 0)), SQLiteDialect()):
        renderer = RowStatements(dialect, ledger, columns, max_rows=10, plain_insert=True)
        ((sql, _),) = renderer.statements([("e-1", 5, "00ff", 1)])
        assert "ON DUPLICATE" not in sql
        assert "ON CONFLICT" not in sql
