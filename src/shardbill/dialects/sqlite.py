"""SQLite: ``INSERT ... ON CONFLICT (key) DO UPDATE``.

::

    INSERT INTO "t" ("k", "n") VALUES (?, ?), (?, ?)
    ON CONFLICT ("k") DO UPDATE SET "n" = "n" + excluded."n"

MIN and MAX merges use the two-argument scalar ``min()`` / ``max()``. Values
are bound, so a statement's size is its text alone, and the binding limit
``SQLITE_MAX_VARIABLE_NUMBER`` (32766 in builds since 3.32, 999 before; read
from the connection by :func:`~shardbill.dialects.dialect_for`) bounds the
rows per statement.

SQLite has no exact decimal type: keep amounts in INTEGER columns of minor
units. :meth:`SQLiteDialect.render_literal` therefore refuses a Decimal with
a fraction, which SQLite would turn into a floating-point number.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar, Literal

import attrs

from shardbill.dialects.base import Dialect, UpsertSpec, checked_int
from shardbill.errors import ConfigurationError, MoneyTypeError, SchemaError
from shardbill.protocols import DBAPICursor
from shardbill.tables.aggregates import SLOT_COLUMN, MergeKind
from shardbill.tables.definitions import Column, ColumnKind, LiveColumn, LiveTable, TableDef

__all__ = ["SQLiteDialect", "temporary_table_name", "wide_on_sqlite_error"]

_MIN_VERSION = (3, 24, 0)  # ON CONFLICT ... DO UPDATE


def _validate_version(_: object, field: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    if tuple(value) < _MIN_VERSION:
        raise ConfigurationError(
            f"SQLite {'.'.join(map(str, value))} is too old for UPSERT ({field.name}); "
            "shardbill needs SQLite >= 3.24.0 (Python's sqlite3 links the system library: "
            "upgrade it or use a newer Python build)"
        )


def _validate_positive(_: object, field: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"SQLiteDialect {field.name!r} must be an integer >= 1: {value!r}")


@attrs.frozen(kw_only=True, cache_hash=True)
class SQLiteDialect(Dialect):
    """SQLite 3.24 or later (the embedded default).

    Attributes:
        version: the SQLite library version (``sqlite3.sqlite_version_info``).
        variable_limit: the most ``?`` one statement may bind
            (``SQLITE_LIMIT_VARIABLE_NUMBER``; 999 unless read from a
            connection, the value of old builds).
        sql_length_limit: the longest statement text (``SQLITE_LIMIT_SQL_LENGTH``).
    """

    paramstyle: ClassVar[Literal["format", "qmark"]] = "qmark"
    placeholder: ClassVar[str] = "?"
    quote_char: ClassVar[str] = '"'
    embedded: ClassVar[bool] = True
    share_lock_suffix: ClassVar[str] = ""  # a write transaction holds the whole file
    exclusive_lock_suffix: ClassVar[str] = ""
    insert_ignore_verb: ClassVar[str] = "INSERT OR IGNORE"
    integer_type: ClassVar[str] = "INTEGER"
    document_type: ClassVar[str] = "TEXT"
    binary_table_options: ClassVar[str] = ""  # TEXT compares bytes (BINARY collation)

    version: tuple[int, int, int] = attrs.field(default=(3, 24, 0), validator=_validate_version)
    variable_limit: int = attrs.field(default=999, validator=_validate_positive)
    sql_length_limit: int = attrs.field(default=1_000_000_000, validator=_validate_positive)

    @property
    def name(self) -> str:
        """``"sqlite"``."""
        return "sqlite"

    @property
    def max_statement_bytes(self) -> int:
        """``sql_length_limit``."""
        return self.sql_length_limit

    @property
    def max_parameters(self) -> int | None:
        """``variable_limit``."""
        return self.variable_limit

    # ------------------------------------------------------------------ DDL and upkeep

    def column_type(self, table: TableDef, column: Column) -> str:
        """``INTEGER`` or ``TEXT`` (dates as ISO text); a wide measure is refused."""
        if column.kind in (ColumnKind.BIGINT, ColumnKind.INT):
            return "INTEGER"
        if column.kind is ColumnKind.DECIMAL:
            raise wide_on_sqlite_error(table.name, column.name)
        return "TEXT"

    def table_exists_statement(self) -> str:
        # sqlite_master is the documented schema table in every SQLite version.
        return "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?"

    def create_statements(self, table: TableDef) -> list[str]:
        """``CREATE TABLE IF NOT EXISTS ... WITHOUT ROWID``, then one ``CREATE INDEX`` each.

        An exact-integer column gets ``CHECK (typeof(col) = 'integer')``:
        SQLite would otherwise turn an overflowing sum into a lossy REAL.
        """
        q = self.quote
        parts = []
        for column in table.columns:
            null = "NULL" if column.nullable else "NOT NULL"
            default = f" DEFAULT {int(column.default)}" if column.default is not None else ""
            check = f" CHECK (typeof({q(column.name)}) = 'integer')" if column.exact_integer else ""
            parts.append(
                f"{q(column.name)} {self.column_type(table, column)} {null}{default}{check}"
            )
        parts.append(f"PRIMARY KEY ({', '.join(q(c) for c in table.primary_key)})")
        statements = [
            f"CREATE TABLE IF NOT EXISTS {q(table.name)} ({', '.join(parts)}) WITHOUT ROWID"
        ]
        for index in table.indexes:
            name = q(f"{table.name}_{'_'.join(index)}_idx")
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {name} ON {q(table.name)} "
                f"({', '.join(q(c) for c in index)})"
            )
        return statements

    def add_key_column_statements(
        self, want: TableDef, live: LiveTable, column: Column, existing: int | str
    ) -> list[tuple[str, tuple[object, ...]]]:
        """A rebuild, in one transaction (SQLite has transactional DDL, and no ``ALTER``
        of a primary key): create the new table under :func:`temporary_table_name`,
        copy every row with ``existing`` in the new column, drop the old, rename,
        re-create the indexes."""
        q = self.quote
        have = {c.name.lower() for c in live.columns} | {column.name.lower()}
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
            (statement, ()) for statement in self.create_statements(rebuilt)
        ]
        statements += [
            (
                f"INSERT INTO {q(temporary)} ({names}) SELECT "
                f"{', '.join(q(c) for c in copied)}, ? FROM {q(want.name)}",
                (existing,),
            ),
            (f"DROP TABLE {q(want.name)}", ()),
            (f"ALTER TABLE {q(temporary)} RENAME TO {q(want.name)}", ()),
        ]
        statements += [(statement, ()) for statement in self.create_statements(want)[1:]]
        return statements

    def add_measure_statement(self, table: str, column: Column) -> str:
        """``ALTER TABLE ... ADD COLUMN``, with the same CHECK as a created table."""
        q = self.quote
        return (
            f"ALTER TABLE {q(table)} ADD COLUMN {q(column.name)} INTEGER NOT NULL DEFAULT 0 "
            f"CHECK (typeof({q(column.name)}) = 'integer')"
        )

    def describe_table(self, cursor: DBAPICursor, name: str) -> LiveTable | None:
        """From ``PRAGMA table_info``; kinds by SQLite's type affinity rules."""
        cursor.execute(f"PRAGMA table_info({self.quote(name)})", ())
        info = cursor.fetchall()
        if not info:
            return None
        columns = []
        keyed: list[tuple[int, str]] = []
        for _cid, col, declared, notnull, _default, pk in info:
            columns.append(
                LiveColumn(
                    name=str(col),
                    kinds=_kinds(str(declared)),
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

    def refusals(self, tables: Sequence[TableDef]) -> list[SchemaError]:
        """One refusal per wide measure column (SQLite holds none exactly)."""
        return [
            wide_on_sqlite_error(t.name, c.name)
            for t in tables
            for c in t.columns
            if c.kind is ColumnKind.DECIMAL
        ]

    def prune_statement(self, table: str, slots_table: str) -> str:
        """The keys a limited sub-select finds (SQLite is built without
        ``SQLITE_ENABLE_UPDATE_DELETE_LIMIT``)."""
        q = self.quote
        slot = q(SLOT_COLUMN)
        return (
            f"DELETE FROM {q(table)} WHERE ({slot}, {q('event_id')}) IN "
            f"(SELECT {slot}, {q('event_id')} FROM {q(table)} "
            f"WHERE {self._prune_guard(slots_table)} LIMIT ?)"
        )

    def _pairs_per_statement(self) -> int:
        # An OR chain is an expression tree as deep as it is long: stay well under
        # SQLITE_MAX_EXPR_DEPTH (1000 in the default build) and the variable limit.
        return max(1, min(250, self.variable_limit))

    def _pairs_condition(self, first: str, second: str, pairs: Sequence[tuple[int, str]]) -> str:
        # One term per pair: SQLite seeks each in the primary key (a multi-index
        # OR). Two IN lists would seek every slot x id combination (a million
        # seeks for a thousand pairs), and a row-value IN list scans the table.
        return " OR ".join(
            [f"({first} = {checked_int(slot)} AND {second} = ?)" for slot, _ in pairs]
        )

    def _build_upsert_sql(self, spec: UpsertSpec, rows: int) -> str:
        q = self.quote
        assignments = []
        for column, kind in spec.merges:
            target = q(column)
            incoming = f"excluded.{target}"
            if kind is MergeKind.SUM:
                expression = f"{target} + {incoming}"
            elif kind is MergeKind.MIN:
                expression = f"min({target}, {incoming})"
            elif kind is MergeKind.MAX:
                expression = f"max({target}, {incoming})"
            else:
                expression = incoming
            assignments.append(f"{target} = {expression}")
        keys = ", ".join(q(column) for column in spec.key_columns)
        action = f"DO UPDATE SET {', '.join(assignments)}" if assignments else "DO NOTHING"
        columns = ", ".join(q(column) for column in spec.columns)
        values = self._values_list(len(spec.columns), rows)
        return (
            f"INSERT INTO {q(spec.table)} ({columns}) VALUES {values} ON CONFLICT ({keys}) {action}"
        )

    def _row_bytes(self, row: Sequence[object]) -> int:
        # Values are bound: only "(?, ?, ...)" reaches the statement text.
        return 3 * len(row)

    def _render_decimal(self, value: Decimal) -> str:
        if value != value.to_integral_value():
            raise MoneyTypeError(
                f"SQLite has no exact decimal type: {value} would become a floating-point "
                "number; store integer minor units (e.g. cents) in INTEGER columns"
            )
        return format(value.to_integral_value(), "f")


def wide_on_sqlite_error(table: str, column: str) -> SchemaError:
    """The refusal of a wide measure on SQLite, naming it and the fixes."""
    return SchemaError(
        f"table {table!r}: measure {column!r} is declared wide (DECIMAL(65,0)), which SQLite "
        "cannot hold exactly (its integers are 64-bit; a wider sum would become a REAL); "
        "put this table set on MySQL/MariaDB shards, or declare the measure without "
        "wide=True and keep each row under 2**63 - 1 units (a coarser scale, or rows split "
        "by period)"
    )


def temporary_table_name(table: str) -> str:
    """The name a SQLite rebuild of ``table`` creates the new table under."""
    return f"sbmig_{table}"[:64]


def _kinds(declared: str) -> frozenset[ColumnKind]:
    # SQLite's type affinity rules: a declared type containing INT has INTEGER
    # affinity; one containing CHAR, CLOB or TEXT has TEXT affinity (shardbill
    # keeps dates as ISO text there). Anything else cannot hold our values exactly.
    upper = declared.upper()
    if "INT" in upper:
        return frozenset({ColumnKind.BIGINT, ColumnKind.INT})
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")):
        return frozenset({ColumnKind.VARCHAR, ColumnKind.ASCII, ColumnKind.DATE})
    return frozenset()
