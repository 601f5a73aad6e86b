"""The writer's multi-row statements, built fast and safely.

The writer's rows are validated before any SQL (:mod:`shardbill.tables.aggregates`):
every integer column holds an ``int`` within its range (BIGINT, or DECIMAL(65,0)
for a wide measure), every text column a
``str`` within its declared length, every date column a ``datetime.date``.
Two consequences make the hot path cheaper without weakening safety:

* **Chunking by a bound.** A row's rendered size has an upper bound known
  from the column types alone (a BIGINT takes at most 20 bytes, a wide
  measure 66, a
  ``VARCHAR(n)`` at most ``2 + 8n`` escaped), so statements are cut by row
  count under the server's ``max_allowed_packet`` without measuring every
  value.
* **Integers rendered, text bound.** On MySQL/MariaDB (``%s`` paramstyle),
  integer columns are rendered into the statement with ``%d`` from validated
  ``int`` values (digits and a minus sign only); text and dates are still
  bound and escaped by the driver. The drivers' Python-side escaping was the
  largest client cost of the write path; this is the one place shardbill
  renders values, and only integers. SQLite binds everything (its binding is
  native code).

SQL text other than the row groups (table, columns, merge clause) comes from
the dialect and is built once per table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from shardbill.dialects.base import Dialect, UpsertSpec
from shardbill.tables import Column, ColumnKind

__all__ = ["RowStatements", "row_bound"]

_INT_KINDS = frozenset({ColumnKind.BIGINT, ColumnKind.INT, ColumnKind.DECIMAL})


def row_bound(columns: Sequence[Column]) -> int:
    """An upper bound of the bytes one row group takes in a rendered statement."""
    total = 2  # the parentheses
    for column in columns:
        if column.kind is ColumnKind.DECIMAL:
            total += 66  # 65 digits and a sign
        elif column.kind in _INT_KINDS:
            total += 20
        elif column.kind is ColumnKind.DATE:
            total += 12
        else:
            total += 2 + 8 * column.length  # quotes; 4 bytes a character, each possibly escaped
        total += 2  # ", "
    return total


class RowStatements:
    """The multi-row statements that apply rows to one table on one dialect.

    Args:
        dialect: the shard's dialect.
        spec: the UPSERT (or, with ``merges=()``, plain-insert) description.
        columns: the logical columns in ``spec.columns`` order (for types).
        max_rows: rows per statement at most.
        plain_insert: render ``INSERT`` without a conflict clause (the ledger:
            a concurrent claim must fail with a duplicate key, not be ignored).
    """

    def __init__(
        self,
        dialect: Dialect,
        spec: UpsertSpec,
        columns: Sequence[Column],
        *,
        max_rows: int,
        plain_insert: bool = False,
    ) -> None:
        if [c.name for c in columns] != list(spec.columns):
            raise ValueError("columns must match spec.columns in order")
        self._dialect = dialect
        width = len(columns)
        budget = dialect.max_statement_bytes - 1024
        group = "(" + ", ".join([dialect.placeholder] * width) + ")"
        full = dialect.upsert_sql(spec, 1)
        head, _, tail = full.partition(group)
        if plain_insert:
            tail = ""
        self._head = head
        self._tail = tail
        fixed = len(head.encode()) + len(tail.encode())
        rows = max(1, (budget - fixed) // row_bound(columns))
        if dialect.max_parameters is not None:
            rows = min(rows, dialect.max_parameters // width)
        self.rows_per_statement = max(1, min(max_rows, rows))
        self._render = dialect.paramstyle == "format"
        self._int_positions = tuple(i for i, c in enumerate(columns) if c.kind in _INT_KINDS)
        self._bound_positions = tuple(i for i, c in enumerate(columns) if c.kind not in _INT_KINDS)
        if self._render:
            # "%d" for integers; "%%s" becomes the driver's "%s" once the ints are in.
            parts = ["%d" if c.kind in _INT_KINDS else "%%s" for c in columns]
            self._template = "(" + ", ".join(parts) + ")"
        else:
            self._group = group

    def statements(self, rows: Sequence[Sequence[object]]) -> Iterator[tuple[str, list[object]]]:
        """``(sql, params)`` pairs applying ``rows`` (each in ``spec.columns`` order)."""
        step = self.rows_per_statement
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            if self._render:
                ints = self._int_positions
                bound = self._bound_positions
                template = self._template
                groups = [template % tuple([row[i] for i in ints]) for row in chunk]
                params = [row[i] for row in chunk for i in bound]
                yield f"{self._head}{', '.join(groups)}{self._tail}", params
            else:
                values = ", ".join([self._group] * len(chunk))
                params = [value for row in chunk for value in row]
                yield f"{self._head}{values}{self._tail}", params
