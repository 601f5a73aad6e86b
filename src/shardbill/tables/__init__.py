"""What the tables look like: aggregate specs, the billing tables, the system tables (pure).

- :mod:`shardbill.tables.aggregates`: :class:`AggregateTable`, its key columns
  and their projections, its measures, :class:`MergeKind`: what a user declares.
- :mod:`shardbill.tables.catalog`: :func:`billing_tables`, the four standard tables.
- :mod:`shardbill.tables.definitions`: the logical definitions the dialects
  render to DDL, and shardbill's own per-shard tables (:class:`SystemTables`:
  ledger, slot ownership, move ledger, periods) with :class:`SlotState`.

This package does no I/O and imports only :mod:`shardbill.money` and
:mod:`shardbill.errors` (kept by ``tests/test_layers.py``). The names of
``definitions`` are re-exported here, as ``shardbill.tables`` held them before.
"""

from __future__ import annotations

from shardbill.tables.definitions import (
    CONTENT_LENGTH,
    EVENT_ID_LENGTH,
    Column,
    ColumnKind,
    LiveColumn,
    LiveTable,
    SlotState,
    SystemTables,
    TableDef,
    aggregate_table_def,
)

__all__ = [
    "CONTENT_LENGTH",
    "EVENT_ID_LENGTH",
    "Column",
    "ColumnKind",
    "LiveColumn",
    "LiveTable",
    "SlotState",
    "SystemTables",
    "TableDef",
    "aggregate_table_def",
]
