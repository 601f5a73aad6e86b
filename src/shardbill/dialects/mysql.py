"""MySQL and MariaDB: ``INSERT ... ON DUPLICATE KEY UPDATE``, in the form the server wants.

* MariaDB (every version) and MySQL before 8.0.20 refer to the incoming row
  with ``VALUES(col)``::

      INSERT INTO `t` (`k`, `n`) VALUES (%s, %s), (%s, %s)
      ON DUPLICATE KEY UPDATE `n` = `n` + VALUES(`n`)

* MySQL 8.0.20 and later deprecate ``VALUES()`` there; they get a row alias::

      INSERT INTO `t` (`k`, `n`) VALUES (%s, %s), (%s, %s) AS new
      ON DUPLICATE KEY UPDATE `n` = `n` + new.`n`

MIN and MAX merges use ``LEAST`` and ``GREATEST``; REPLACE assigns the
incoming value. MySQL drivers interpolate values client-side, so a statement's
size is its text with the values rendered; :meth:`MySQLDialect.chunks` keeps
it under ``max_allowed_packet``.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar, Literal

import attrs

from shardbill.dialects.base import Dialect, UpsertSpec, checked_int
from shardbill.errors import ConfigurationError
from shardbill.protocols import DBAPICursor
from shardbill.tables.aggregates import MergeKind
from shardbill.tables.definitions import Column, ColumnKind, LiveColumn, LiveTable, TableDef

__all__ = ["MySQLDialect", "parse_server_version"]

_ROW_ALIAS_SINCE = (8, 0, 20)
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
# Some MariaDB builds prefix the real version with "5.5.5-" so that old MySQL
# clients accept them.
_MARIADB_PREFIX = "5.5.5-"

_DATETIME_BYTES = len("'2000-01-01 00:00:00.000000'")
_DATE_BYTES = len("'2000-01-01'")


def parse_server_version(text: str) -> tuple[Literal["mysql", "mariadb"], tuple[int, int, int]]:
    """Split a ``SELECT VERSION()`` answer into the server family and its version.

    Example:
        >>> parse_server_version("10.11.19-MariaDB-0+deb12u1")
        ('mariadb', (10, 11, 19))
        >>> parse_server_version("5.5.5-10.6.12-MariaDB-log")
        ('mariadb', (10, 6, 12))
        >>> parse_server_version("8.0.36-28")
        ('mysql', (8, 0, 36))

    A missing patch number counts as 0, so an unusual version string errs
    towards the older ``VALUES()`` form (still accepted by MySQL 8).

    Raises:
        ConfigurationError: no version number in ``text``.
    """
    family: Literal["mysql", "mariadb"] = "mariadb" if "mariadb" in text.lower() else "mysql"
    body = text
    if family == "mariadb" and body.startswith(_MARIADB_PREFIX):
        body = body[len(_MARIADB_PREFIX) :]
    match = _VERSION.match(body.strip())
    if match is None:
        raise ConfigurationError(
            f"server version {text!r} has no MAJOR.MINOR[.PATCH] number; build the dialect "
            "yourself with MySQLDialect(flavor=..., version=(8, 0, 36))"
        )
    major, minor, patch = match.groups()
    return family, (int(major), int(minor), int(patch or 0))


def _validate_version(_: object, field: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    if len(value) != 3 or not all(isinstance(part, int) and part >= 0 for part in value):
        raise ConfigurationError(
            f"MySQLDialect {field.name!r} must be three non-negative integers: {value!r}"
        )


def _validate_packet(_: object, field: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
        raise ConfigurationError(
            f"MySQLDialect {field.name!r} must be an integer >= 1024 (the server minimum): "
            f"{value!r}"
        )


@attrs.frozen(kw_only=True, cache_hash=True)
class MySQLDialect(Dialect):
    """MySQL or MariaDB. :func:`~shardbill.dialects.dialect_for` builds it from the server.

    Example:
        >>> MySQLDialect(flavor="mysql", version=(8, 0, 36)).row_alias
        True
        >>> MySQLDialect(flavor="mariadb", version=(11, 4, 2)).row_alias
        False

    Attributes:
        flavor: ``"mysql"`` or ``"mariadb"``.
        version: the server version, ``(major, minor, patch)``.
        max_allowed_packet: the server's ``@@max_allowed_packet`` (bytes):
            the largest statement it accepts. The default, 1 MiB, is below
            every modern server's default.
    """

    paramstyle: ClassVar[Literal["format", "qmark"]] = "format"
    placeholder: ClassVar[str] = "%s"
    quote_char: ClassVar[str] = "`"
    embedded: ClassVar[bool] = False
    share_lock_suffix: ClassVar[str] = " LOCK IN SHARE MODE"
    exclusive_lock_suffix: ClassVar[str] = " FOR UPDATE"
    insert_ignore_verb: ClassVar[str] = "INSERT IGNORE"
    integer_type: ClassVar[str] = "BIGINT"
    document_type: ClassVar[str] = "LONGTEXT"
    binary_table_options: ClassVar[str] = (
        " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    )

    flavor: Literal["mysql", "mariadb"] = attrs.field(
        default="mysql", validator=attrs.validators.in_(("mysql", "mariadb"))
    )
    version: tuple[int, int, int] = attrs.field(default=(8, 0, 0), validator=_validate_version)
    max_allowed_packet: int = attrs.field(default=1 << 20, validator=_validate_packet)

    @classmethod
    def from_server_version(cls, text: str, *, max_allowed_packet: int = 1 << 20) -> MySQLDialect:
        """The dialect for a ``SELECT VERSION()`` answer (see :func:`parse_server_version`)."""
        flavor, version = parse_server_version(text)
        return cls(flavor=flavor, version=version, max_allowed_packet=max_allowed_packet)

    @property
    def name(self) -> str:
        """``"mysql"`` or ``"mariadb"``."""
        return self.flavor

    # ------------------------------------------------------------------ DDL and upkeep
    #
    # Text key columns compare exactly: on MariaDB they use utf8mb4_nopad_bin and on
    # MySQL 8 utf8mb4_0900_bin (both NO PAD: 'a' and 'a ' are two keys). MySQL 5.7
    # has no NO PAD binary collation; there utf8mb4_bin ignores trailing spaces, so
    # shardbill's key validation is the guard.

    @property
    def text_collation(self) -> str:
        """The binary, NO PAD (where the server has one) collation of text key columns."""
        if self.flavor == "mariadb":
            return "utf8mb4_nopad_bin"
        if self.version >= (8, 0, 0):
            return "utf8mb4_0900_bin"
        return "utf8mb4_bin"

    def column_type(self, column: Column) -> str:
        """The column type ``column`` is created with."""
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
        return f"VARCHAR({column.length}) CHARACTER SET utf8mb4 COLLATE {self.text_collation}"

    def table_exists_statement(self) -> str:
        return (
            "SELECT COUNT(*) FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = %s"
        )

    def create_statements(self, table: TableDef) -> list[str]:
        """One ``CREATE TABLE IF NOT EXISTS`` (InnoDB, utf8mb4), its indexes inline."""
        q = self.quote
        parts = []
        for column in table.columns:
            null = "NULL" if column.nullable else "NOT NULL"
            default = f" DEFAULT {int(column.default)}" if column.default is not None else ""
            parts.append(f"{q(column.name)} {self.column_type(column)} {null}{default}")
        parts.append(f"PRIMARY KEY ({', '.join(q(c) for c in table.primary_key)})")
        for index in table.indexes:
            name = q(f"{'_'.join(index)}_idx")
            parts.append(f"KEY {name} ({', '.join(q(c) for c in index)})")
        return [
            f"CREATE TABLE IF NOT EXISTS {q(table.name)} ({', '.join(parts)}) "
            "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        ]

    def add_key_column_statements(
        self, want: TableDef, live: LiveTable, column: Column, existing: int | str
    ) -> list[tuple[str, tuple[object, ...]]]:
        """One atomic, online ``ALTER TABLE ... ADD COLUMN c ... NOT NULL DEFAULT %s,
        DROP PRIMARY KEY, ADD PRIMARY KEY (...), ALGORITHM=INPLACE, LOCK=NONE``.

        InnoDB rebuilds the table in place while writes go on (the server
        refuses the statement, changing nothing, if it cannot do that online).
        ``existing`` is the column's DEFAULT, so writers that do not know the
        column go on writing: their rows get ``existing``.
        """
        q = self.quote
        have = {c.name.lower() for c in live.columns} | {column.name.lower()}
        primary = ", ".join(q(c) for c in want.primary_key if c.lower() in have)
        return [
            (
                f"ALTER TABLE {q(want.name)} ADD COLUMN {q(column.name)} "
                f"{self.column_type(column)} NOT NULL DEFAULT {self.placeholder}, "
                f"DROP PRIMARY KEY, ADD PRIMARY KEY ({primary}), ALGORITHM=INPLACE, LOCK=NONE",
                (existing,),
            )
        ]

    def add_measure_statement(self, table: str, column: Column) -> str:
        """``ALTER TABLE ... ADD COLUMN c BIGINT NOT NULL DEFAULT 0``."""
        q = self.quote
        return f"ALTER TABLE {q(table)} ADD COLUMN {q(column.name)} BIGINT NOT NULL DEFAULT 0"

    def describe_table(self, cursor: DBAPICursor, name: str) -> LiveTable | None:
        """From ``information_schema`` (COLUMNS, and STATISTICS for the primary key)."""
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
            kind = _KINDS.get(str(data_type).lower())
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

    def prune_statement(self, table: str, slots_table: str) -> str:
        """``DELETE ... LIMIT %s`` directly."""
        return f"DELETE FROM {self.quote(table)} WHERE {self._prune_guard(slots_table)} LIMIT %s"

    @property
    def row_alias(self) -> bool:
        """True for MySQL >= 8.0.20: the UPSERT uses ``AS new`` instead of ``VALUES()``."""
        return self.flavor == "mysql" and self.version >= _ROW_ALIAS_SINCE

    @property
    def max_statement_bytes(self) -> int:
        """``max_allowed_packet``."""
        return self.max_allowed_packet

    @property
    def max_parameters(self) -> int | None:
        """65535, the protocol's limit for server-side prepared statements."""
        return 65535

    def _pairs_per_statement(self) -> int:
        # A row-constructor IN list is range-optimised into point lookups on
        # both key parts. MariaDB turns an IN list of in_predicate_conversion_
        # threshold values (default 1000) or more into a subquery that seeks the
        # first key part only, reading every ledger row of the slot: stay below.
        return 400

    def _pairs_condition(self, first: str, second: str, pairs: Sequence[tuple[int, str]]) -> str:
        groups = ", ".join([f"({checked_int(slot)}, %s)" for slot, _ in pairs])
        return f"({first}, {second}) IN ({groups})"

    def _build_upsert_sql(self, spec: UpsertSpec, rows: int) -> str:
        q = self.quote
        alias = "new" if spec.table.lower() != "new" else "incoming"

        def incoming(column: str) -> str:
            return f"{alias}.{q(column)}" if self.row_alias else f"VALUES({q(column)})"

        assignments = []
        for column, kind in spec.merges:
            target = q(column)
            if kind is MergeKind.SUM:
                expression = f"{target} + {incoming(column)}"
            elif kind is MergeKind.MIN:
                expression = f"LEAST({target}, {incoming(column)})"
            elif kind is MergeKind.MAX:
                expression = f"GREATEST({target}, {incoming(column)})"
            else:
                expression = incoming(column)
            assignments.append(f"{target} = {expression}")
        if not assignments:
            # Insert new keys, leave existing rows alone: a no-op assignment
            # (unlike INSERT IGNORE, which also turns data errors into warnings).
            first_key = q(spec.key_columns[0])
            assignments.append(f"{first_key} = {first_key}")
        columns = ", ".join(q(column) for column in spec.columns)
        values = self._values_list(len(spec.columns), rows)
        alias_clause = f" AS {alias}" if self.row_alias else ""
        return (
            f"INSERT INTO {q(spec.table)} ({columns}) VALUES {values}{alias_clause}"
            f" ON DUPLICATE KEY UPDATE {', '.join(assignments)}"
        )

    def _row_bytes(self, row: Sequence[object]) -> int:
        # "(" + values joined by ", " + ")"
        return 2 * len(row) + sum(_value_bytes(value) for value in row)


def _value_bytes(value: object) -> int:  # noqa: PLR0911 - one return per type reads best
    """An upper bound of ``value``'s size once a MySQL driver renders it into the statement."""
    kind = type(value)
    if kind is int:
        return len(str(value))
    if kind is Decimal:
        return len(format(value, "f"))
    if kind is str:
        text: str = value  # type: ignore[assignment]
        # Quotes, plus every character possibly escaped into two.
        return 2 + 2 * (len(text) if text.isascii() else len(text.encode("utf-8")))
    if value is None:
        return 4
    if isinstance(value, bytes | bytearray | memoryview):
        return 10 + 2 * len(value)  # _binary'...' with escapes
    if isinstance(value, datetime.datetime):
        return _DATETIME_BYTES
    if isinstance(value, datetime.date):
        return _DATE_BYTES
    return 2 + 2 * len(str(value).encode("utf-8"))


_KINDS = {
    "bigint": ColumnKind.BIGINT,
    "int": ColumnKind.INT,
    "date": ColumnKind.DATE,
    "varchar": ColumnKind.VARCHAR,
}
