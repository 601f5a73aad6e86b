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
from shardbill.errors import ConfigurationError, MoneyTypeError
from shardbill.tables.aggregates import MergeKind

__all__ = ["SQLiteDialect"]

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
