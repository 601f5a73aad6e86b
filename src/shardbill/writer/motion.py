"""Rows in motion: the headroom of a row whose slot is between its fence and its merge.

While a reshard moves a slot, an aggregate row lives in two parts: the old
owner's frozen row (the slot is ``gone`` there, nothing writes to it) and the
new owner's row, which holds only what was written since the fence (the slot
is ``incoming``). The merge later adds the first part to the second, in
chunks of rows in key order, recording on the new owner how far it got
(``shardbill_moves.last_key``) before it deletes the merged rows from the old
owner. A row's value is therefore::

    new owner's row  (+ the old owner's row, unless its key is merged already)

and an event that fits the first part but not the sum must be refused when it
is written: acknowledged, it would make the merge overflow on every run and the
reshard would never finish (found by the simulation, seed 1066).

The writer reads the two parts in an order that can only over-count, never
under-count (so a race can refuse an event that would have fit, never accept
one that does not):

1. the merge progress on the new owner (which keys are merged);
2. the new owner's rows, locked (a merge of an existing row waits for the
   writer; the slot's ownership row is locked exclusively too, so writers of a
   slot in motion take turns and each sees the others' committed deltas);
3. the old owner's rows not merged at step 1, without a lock (frozen).

A key merged between 1 and 3 may be counted in both parts (an over-count); a
key merged and deleted between 2 and 3 was absent at 2 (an existing row would
have made the merge wait), so the writer's own UPSERT lands on the merged row
and the database's range check covers it.

This module holds the SQL reads and the arithmetic; the writer calls them from
its transaction (:mod:`shardbill.writer`) and its look-ahead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from shardbill.dialects.base import Dialect
from shardbill.providers.base import DBAPICursor
from shardbill.tables.aggregates import SLOT_COLUMN, AggregateTable
from shardbill.writer.planning import merge_values

__all__ = ["MERGED", "combine", "merge_marks", "read_rows", "sql_value", "unmerged_scope"]

MERGED = "merged"
"""A :func:`merge_marks` value: every row of that slot and table is merged."""

Rows = dict[tuple[Any, ...], tuple[int, ...]]
"""One table's rows: key -> measures."""


def sql_value(value: object) -> object:
    """A key value as bound to SQL: dates as ISO text, everything else as is."""
    if hasattr(value, "isoformat") and not isinstance(value, str):
        return value.isoformat()
    return value


def read_rows(
    cursor: DBAPICursor,
    dialect: Dialect,
    table: AggregateTable,
    keys: Sequence[tuple[Any, ...]],
    *,
    lock_clause: str = "",
    slot: int | None = None,
    after: Sequence[Any] | None = None,
) -> Rows:
    """The stored measures of ``keys`` in ``table`` (absent rows: not in the result).

    Args:
        cursor: a cursor on the shard.
        dialect: its dialect.
        table: the table.
        keys: the keys, as the writer holds them.
        lock_clause: appended to each SELECT (e.g. ``FOR UPDATE``).
        slot: only rows of this slot (validated int).
        after: only rows whose key is past this one in key order (a merge's
            ``last_key``: the rows it has not merged yet).
    """
    by_sql = {tuple(sql_value(v) for v in key): key for key in keys}
    q = dialect.quote
    names = table.key_names
    one = "(" + " AND ".join(f"{q(n)} = {dialect.placeholder}" for n in names) + ")"
    select = (
        f"SELECT {', '.join(q(n) for n in names)}, "
        f"{', '.join(q(m.name) for m in table.measures)} FROM {q(table.name)} WHERE "
    )
    scope = ""
    scope_params: list[Any] = []
    if slot is not None:
        scope += f" AND {SLOT_COLUMN} = {int(slot)}"
    if after is not None:
        marks = ", ".join([dialect.placeholder] * len(after))
        scope += f" AND ({', '.join(q(n) for n in names)}) > ({marks})"
        scope_params = list(after)
    found: Rows = {}
    sql_keys = sorted(by_sql)
    width = len(names)
    for start in range(0, len(sql_keys), 100):
        chunk = sql_keys[start : start + 100]
        cursor.execute(
            select + "(" + " OR ".join([one] * len(chunk)) + ")" + scope + lock_clause,
            [v for key in chunk for v in key] + scope_params,
        )
        for row in cursor.fetchall():
            key = tuple(sql_value(v) for v in row[:width])
            if key in by_sql:
                found[by_sql[key]] = tuple(int(v) for v in row[width:])
    return found


def merge_marks(
    cursor: DBAPICursor, dialect: Dialect, moves_table: str, slots: Sequence[int]
) -> dict[tuple[int, str], str | list[Any]]:
    """How far each incoming slot's merge got, per table, on the new owner.

    Returns:
        (slot, table) -> :data:`MERGED`, or the last merged key (rows up to it
        are merged); a table whose merge has not started is absent.
    """
    literal = ", ".join(str(int(s)) for s in slots)
    cursor.execute(
        f"SELECT {SLOT_COLUMN}, table_name, last_key, done FROM {dialect.quote(moves_table)} "
        f"WHERE {SLOT_COLUMN} IN ({literal})",
        (),
    )
    out: dict[tuple[int, str], str | list[Any]] = {}
    for slot, table, last_key, done in cursor.fetchall():
        if int(done):
            out[(int(slot), str(table))] = MERGED
        elif last_key is not None:
            out[(int(slot), str(table))] = list(json.loads(str(last_key)))
    return out


def combine(
    tables: Sequence[AggregateTable], target: Sequence[Rows], source: Sequence[Rows]
) -> list[Rows]:
    """Per table, each row's value once merged: the new owner's part merged with the old's."""
    out: list[Rows] = []
    for table, mine, theirs in zip(tables, target, source, strict=True):
        kinds = tuple(m.merge for m in table.measures)
        rows = dict(mine)
        for key, values in theirs.items():
            have = rows.get(key)
            rows[key] = values if have is None else merge_values(kinds, have, values)
        out.append(rows)
    return out


def unmerged_scope(
    marks: Mapping[tuple[int, str], str | list[Any]], slot: int, table: str
) -> tuple[bool, list[Any] | None]:
    """Whether the old owner may hold unmerged rows of (slot, table), and past which key."""
    mark = marks.get((slot, table))
    if mark == MERGED:
        return False, None
    return True, mark if isinstance(mark, list) else None
