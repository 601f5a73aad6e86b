"""DDL and schema introspection per server family.

Logical tables (:mod:`shardbill.tables`) become ``CREATE TABLE IF NOT
EXISTS`` statements (one statement per ``execute``: no multi-statements), and
live tables are described back as logical column kinds so the writer can
refuse to run against a schema that does not match its specs.

Text key columns compare exactly: on MariaDB they use ``utf8mb4_nopad_bin``
and on MySQL 8 ``utf8mb4_0900_bin`` (both NO PAD: ``'a'`` and ``'a '`` are two
keys). MySQL 5.7 has no NO PAD binary collation; there ``utf8mb4_bin``
ignores trailing spaces, so shardbill's key validation is the guard.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from shardbill.dialects.base import Dialect
from shardbill.dialects.mysql import MySQLDialect
from shardbill.errors import SchemaError
from shardbill.protocols import DBAPICursor
from shardbill.tables import Column, ColumnKind, TableDef
from shardbill.tables.aggregates import SLOT_COLUMN

__all__ = [
    "LiveColumn",
    "LiveTable",
    "add_key_column_statements",
    "create_statements",
    "describe_table",
    "insert_missing_clause",
    "prune_statement",
    "share_lock_clause",
    "sqlite_refusals",
    "temporary_table_name",
    "wide_on_sqlite_error",
]


@attrs.frozen(kw_only=True)
class LiveColumn:
    """A column as the server reports it, with the logical kinds it can hold (empty: foreign)."""

    name: str
    kinds: frozenset[ColumnKind]
    length: int | None
    nullable: bool
    declared: str


@attrs.frozen(kw_only=True)
class LiveTable:
    """A table as the server reports it."""

    name: str
    columns: tuple[LiveColumn, ...]
    primary_key: tuple[str, ...]


def _text_collation(dialect: MySQLDialect) -> str:
    if dialect.flavor == "mariadb":
        return "utf8mb4_nopad_bin"
    if dialect.version >= (8, 0, 0):
        return "utf8mb4_0900_bin"
    return "utf8mb4_bin"


def _mysql_type(dialect: MySQLDialect, column: Column) -> str:
    if column.kind is ColumnKind.BIGINT:
        return "BIGINT"
    if column.kind is ColumnKind.DECIMAL:
        return "DECIMAL(65,0)"
    if column.kind is ColumnKind.INT:
        return "INT"
    if column.kind is ColumnKind.DATE:
        return "DATE"
    if column.kind is ColumnKind.ASCII:
        return f"VARCHAR({column.length}) CHARACTER SET ascii COLLATE ascii_bin"
    return f"VARCHAR({column.length}) CHARACTER SET utf8mb4 COLLATE {_text_collation(dialect)}"


def _sqlite_type(table: TableDef, column: Column) -> str:
    if column.kind in (ColumnKind.BIGINT, ColumnKind.INT):
        return "INTEGER"
    if column.kind is ColumnKind.DECIMAL:
        raise wide_on_sqlite_error(table.name, column.name)
    return "TEXT"


def wide_on_sqlite_error(table: str, column: str) -> SchemaError:
    """The refusal of a wide measure on SQLite, naming it and the fixes."""
    return SchemaError(
        f"table {table!r}: measure {column!r} is declared wide (DECIMAL(65,0)), which SQLite "
        "cannot hold exactly (its integers are 64-bit; a wider sum would become a REAL); "
        "put this table set on MySQL/MariaDB shards, or declare the measure without "
        "wide=True and keep each row under 2**63 - 1 units (a coarser scale, or rows split "
        "by period)"
    )


def sqlite_refusals(tables: Sequence[TableDef]) -> list[SchemaError]:
    """One refusal per wide measure column of ``tables`` (SQLite holds none)."""
    return [
        wide_on_sqlite_error(t.name, c.name)
        for t in tables
        for c in t.columns
        if c.kind is ColumnKind.DECIMAL
    ]


def create_statements(dialect: Dialect, table: TableDef) -> list[str]:
    """The statements that create ``table`` if it does not exist (run each separately)."""
    q = dialect.quote
    mysql = dialect if isinstance(dialect, MySQLDialect) else None
    parts = []
    for column in table.columns:
        kind = _mysql_type(mysql, column) if mysql is not None else _sqlite_type(table, column)
        null = "NULL" if column.nullable else "NOT NULL"
        default = f" DEFAULT {int(column.default)}" if column.default is not None else ""
        check = ""
        if mysql is None and column.exact_integer:
            # SQLite turns an overflowing integer sum into a REAL; refuse it instead.
            check = f" CHECK (typeof({q(column.name)}) = 'integer')"
        parts.append(f"{q(column.name)} {kind} {null}{default}{check}")
    parts.append(f"PRIMARY KEY ({', '.join(q(c) for c in table.primary_key)})")
    if mysql is not None:
        for index in table.indexes:
            name = q(f"{'_'.join(index)}_idx")
            parts.append(f"KEY {name} ({', '.join(q(c) for c in index)})")
        return [
            f"CREATE TABLE IF NOT EXISTS {q(table.name)} ({', '.join(parts)}) "
            "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        ]
    statements = [f"CREATE TABLE IF NOT EXISTS {q(table.name)} ({', '.join(parts)}) WITHOUT ROWID"]
    for index in table.indexes:
        name = q(f"{table.name}_{'_'.join(index)}_idx")
        statements.append(
            f"CREATE INDEX IF NOT EXISTS {name} ON {q(table.name)} "
            f"({', '.join(q(c) for c in index)})"
        )
    return statements


def add_key_column_statements(
    dialect: Dialect,
    want: TableDef,
    live: LiveTable,
    column: Column,
    existing: int | str,
) -> list[tuple[str, tuple[object, ...]]]:
    """Add key ``column`` to live table ``want.name``, ``existing`` in every row that exists.

    Returns ``(statement, params)`` pairs to run in order, in one transaction
    where the server has transactional DDL (SQLite), and as one atomic
    statement where it does not (MySQL/MariaDB). The new primary key is
    ``want.primary_key`` restricted to the columns the table then has. The
    rows that exist are unique under it (their old key was unique, and they
    all get the same value in the new column), so nothing is merged.

    * MySQL/MariaDB: one ``ALTER TABLE ... ADD COLUMN c ... NOT NULL DEFAULT
      %s, DROP PRIMARY KEY, ADD PRIMARY KEY (...), ALGORITHM=INPLACE,
      LOCK=NONE``: InnoDB rebuilds the table in place while writes go on (the
      server refuses the statement, changing nothing, if it cannot do that
      online). ``existing`` is the column's DEFAULT, so writers that do not
      know the column go on writing: their rows get ``existing``.
    * SQLite (no ``ALTER`` of a primary key): the table is rebuilt: create the
      new one under a temporary name, copy every row with ``existing`` in the
      new column, drop the old, rename, re-create the indexes.

    ``existing`` is bound (dates as ISO text), never rendered into the SQL.
    """
    q = dialect.quote
    have = {c.name.lower() for c in live.columns} | {column.name.lower()}
    primary = ", ".join(q(c) for c in want.primary_key if c.lower() in have)
    if isinstance(dialect, MySQLDialect):
        return [
            (
                f"ALTER TABLE {q(want.name)} ADD COLUMN {q(column.name)} "
                f"{_mysql_type(dialect, column)} NOT NULL DEFAULT {dialect.placeholder}, "
                f"DROP PRIMARY KEY, ADD PRIMARY KEY ({primary}), ALGORITHM=INPLACE, LOCK=NONE",
                (existing,),
            )
        ]
    kept = [c for c in want.columns if c.name.lower() in have]
    temporary = temporary_table_name(want.name)
    rebuilt = TableDef(
        name=temporary,
        columns=tuple(kept),
        primary_key=tuple(c for c in want.primary_key if c.lower() in have),
    )
    copied = [c.name for c in kept if c.name != column.name]
    names = ", ".join(q(c) for c in (*copied, column.name))
    statements: list[tuple[str, tuple[object, ...]]] = [
        (statement, ()) for statement in create_statements(dialect, rebuilt)
    ]
    statements += [
        (
            f"INSERT INTO {q(temporary)} ({names}) SELECT "
            f"{', '.join(q(c) for c in copied)}, {dialect.placeholder} FROM {q(want.name)}",
            (existing,),
        ),
        (f"DROP TABLE {q(want.name)}", ()),
        (f"ALTER TABLE {q(temporary)} RENAME TO {q(want.name)}", ()),
    ]
    statements += [(statement, ()) for statement in create_statements(dialect, want)[1:]]
    return statements


def temporary_table_name(table: str) -> str:
    """The name a SQLite rebuild of ``table`` creates the new table under."""
    return f"sbmig_{table}"[:64]


def share_lock_clause(dialect: Dialect) -> str:
    """The suffix that makes a SELECT take shared row locks ('' where writers serialise)."""
    return " LOCK IN SHARE MODE" if isinstance(dialect, MySQLDialect) else ""


def prune_statement(dialect: Dialect, table: str, slots_table: str) -> str:
    """Delete at most N ledger rows of events before a cutoff; bind (cutoff, cutoff, N).

    Only rows of slots this shard owns and whose watermark (``pruned_below``)
    is at the cutoff already: a slot in motion is pruned by neither side, and
    an event older than a row that is gone is refused by the watermark.
    MySQL deletes with ``LIMIT`` directly; SQLite (built without
    ``SQLITE_ENABLE_UPDATE_DELETE_LIMIT``) deletes the keys a limited
    sub-select finds.
    """
    q = dialect.quote
    p = dialect.placeholder
    slot = q(SLOT_COLUMN)
    guarded = (
        f"{q('event_time')} < {p} AND {slot} IN (SELECT {slot} FROM {q(slots_table)} "
        f"WHERE {q('state')} = 'owned' AND {q('pruned_below')} >= {p})"
    )
    if isinstance(dialect, MySQLDialect):
        return f"DELETE FROM {q(table)} WHERE {guarded} LIMIT {p}"
    return (
        f"DELETE FROM {q(table)} WHERE ({slot}, {q('event_id')}) IN "
        f"(SELECT {slot}, {q('event_id')} FROM {q(table)} WHERE {guarded} LIMIT {p})"
    )


def raise_watermark_statement(dialect: Dialect, slots_table: str) -> str:
    """Raise the dedup watermark of every owned slot to a cutoff; bind (cutoff, cutoff)."""
    q = dialect.quote
    p = dialect.placeholder
    return (
        f"UPDATE {q(slots_table)} SET {q('pruned_below')} = {p} "
        f"WHERE {q('state')} = 'owned' AND {q('pruned_below')} < {p}"
    )


def exclusive_lock_clause(dialect: Dialect) -> str:
    """The suffix that makes a SELECT lock its rows for update ('' where writers serialise)."""
    return " FOR UPDATE" if isinstance(dialect, MySQLDialect) else ""


_MYSQL_KINDS = {
    "bigint": ColumnKind.BIGINT,
    "int": ColumnKind.INT,
    "date": ColumnKind.DATE,
    "varchar": ColumnKind.VARCHAR,
}


def _sqlite_kinds(declared: str) -> frozenset[ColumnKind]:
    # SQLite's type affinity rules: a declared type containing INT has INTEGER
    # affinity; one containing CHAR, CLOB or TEXT has TEXT affinity (shardbill
    # keeps dates as ISO text there). Anything else cannot hold our values exactly.
    upper = declared.upper()
    if "INT" in upper:
        return frozenset({ColumnKind.BIGINT, ColumnKind.INT})
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")):
        return frozenset({ColumnKind.VARCHAR, ColumnKind.ASCII, ColumnKind.DATE})
    return frozenset()


def describe_table(cursor: DBAPICursor, dialect: Dialect, name: str) -> LiveTable | None:
    """How the server describes table ``name`` now, or None when it does not exist."""
    if isinstance(dialect, MySQLDialect):
        cursor.execute(
            "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH, IS_NULLABLE, COLUMN_TYPE,"
            " CHARACTER_SET_NAME FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (name,),
        )
        rows: Sequence[tuple[object, ...]] = cursor.fetchall()
        if not rows:
            return None
        columns = []
        for col, data_type, length, nullable, declared, charset in rows:
            kind = _MYSQL_KINDS.get(str(data_type).lower())
            if str(declared).lower().replace(" ", "") == "decimal(65,0)":
                kind = ColumnKind.DECIMAL  # a wide measure; any other DECIMAL is foreign
            if kind is ColumnKind.VARCHAR and str(charset).lower() == "ascii":
                kind = ColumnKind.ASCII
            columns.append(
                LiveColumn(
                    name=str(col),
                    kinds=frozenset({kind} if kind else ()),
                    length=int(str(length)) if length is not None else None,
                    nullable=str(nullable).upper() == "YES",
                    declared=str(declared),
                )
            )
        cursor.execute(
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()"
            " AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
            (name,),
        )
        primary = tuple(str(r[0]) for r in cursor.fetchall())
        return LiveTable(name=name, columns=tuple(columns), primary_key=primary)
    cursor.execute(f"PRAGMA table_info({dialect.quote(name)})", ())
    info = cursor.fetchall()
    if not info:
        return None
    columns = []
    keyed: list[tuple[int, str]] = []
    for _cid, col, declared, notnull, _default, pk in info:
        columns.append(
            LiveColumn(
                name=str(col),
                kinds=_sqlite_kinds(str(declared)),
                length=None,
                nullable=not notnull,
                declared=str(declared),
            )
        )
        if pk:
            keyed.append((int(pk), str(col)))
    return LiveTable(
        name=name, columns=tuple(columns), primary_key=tuple(c for _, c in sorted(keyed))
    )


def insert_missing_clause(dialect: Dialect) -> str:
    """The INSERT verb that skips a row whose primary key exists already (no error, no change)."""
    return "INSERT IGNORE" if isinstance(dialect, MySQLDialect) else "INSERT OR IGNORE"
