"""The reshard step that moves the slots' correction records and adjustment bookings.

Two of shardbill's own tables hold rows that belong to a slot without being
aggregates or ledger rows:

* ``shardbill_corrections``: a record lives with its event's *home slot*
  (the slot of the event id, as the map places keys);
* ``shardbill_adjustments``: a booking row carries the slot of the unit it
  booked.

They move with their slot, so that a shard a reshard removes keeps nothing
the month-end needs (``Corrector.records()``, ``audit --period``, a
correction repeated after the reshard). The step runs once the moving slots
are fenced on their sources (``switch``) and before any slot is handed over:

1. **Read** each source's records and bookings of its moving slots. The
   source is fenced, so nothing adds to them there: writers are refused by
   the fence, a correction's record write by its home check
   (:func:`shardbill.corrections.store.check_home`).
2. **Copy** them to each target, in one transaction per target with a done
   ``shardbill_moves`` row per slot for the corrections table: from that row
   on, the target writes the slot's records itself (a correction waits for
   it, for a moment, after the fence). A slot whose row is there already was
   copied by an earlier run, which may since have changed a record on the
   target: it is not copied again.
3. **Delete** them from the source (step ``records-delete:<source>``, for a
   source that had any).

A run stopped anywhere resumes: copies are insert-if-absent and the delete
is the same again. Between 2 and 3 both sides hold a copy;
:func:`shardbill.corrections.store.read_records` shows each record once.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager

from shardbill.dialects.base import UpsertSpec
from shardbill.errors import ReshardError
from shardbill.providers.base import DBAPICursor
from shardbill.resharding.sql import ReshardStatements
from shardbill.shardmap import SlotMove
from shardbill.tables import Column, ColumnKind, SlotState, SystemTables, TableDef
from shardbill.tables.aggregates import SLOT_COLUMN
from shardbill.writer.upserts import RowStatements

__all__ = ["move_records"]

CursorFor = Callable[[str], AbstractContextManager[tuple[DBAPICursor, ReshardStatements]]]
CheckMoving = Callable[[DBAPICursor, ReshardStatements, SlotMove, str], None]

log = logging.getLogger("shardbill.resharding")

#: Rows per statement and slots per IN list.
_CHUNK = 500


Row = tuple[object, ...]


def move_records(
    moves: Sequence[SlotMove],
    *,
    system: SystemTables,
    home_slot: Callable[[str], int],
    owner: Callable[[int], str],
    cursor_for: CursorFor,
    check_moving: CheckMoving,
    step: Callable[[str], None],
) -> int:
    """Move the correction records and adjustment bookings of the fenced ``moves``' slots.

    Also sends home what a source holds of slots it owns in neither map (records
    an older version left on a former owner: :func:`_send_home`).

    Args:
        moves: the moves whose source has fenced the slot for the target.
        system: the names of shardbill's own tables.
        home_slot: an event id's home slot.
        owner: the shard that owns a slot in the map the reshard moves to.
        cursor_for: a shard's cursor and statements, in one transaction.
        check_moving: raises unless the shard's ownership row still says the
            move is under way (locked), as for every other copy.
        step: the resharder's step hook (``records-delete:<source>``).

    Returns:
        The rows copied (records and bookings).
    """
    corrections = system.corrections_def()
    adjustments = system.adjustments_def()
    booking_slot = [c.name for c in adjustments.columns].index(SLOT_COLUMN)
    copied = 0
    by_source: dict[str, list[SlotMove]] = defaultdict(list)
    for move in moves:
        by_source[move.source].append(move)
    for source, chunk in sorted(by_source.items()):
        at = {m.slot: m for m in chunk}
        # (slot, row): a record by its event's home slot, a booking by its own.
        rows: dict[str, list[tuple[int, Row]]] = {corrections.name: [], adjustments.name: []}
        stray: dict[str, list[tuple[int, Row]]] = {corrections.name: [], adjustments.name: []}
        with cursor_for(source) as (cursor, sql):
            for r in _select(cursor, sql, corrections, ""):
                home = home_slot(str(r[0]))
                if home in at:
                    rows[corrections.name].append((home, r))
                elif owner(home) != source:
                    stray[corrections.name].append((home, r))
            for r in _select(cursor, sql, adjustments, ""):
                slot = int(str(r[booking_slot]))
                if slot in at:
                    rows[adjustments.name].append((slot, r))
                elif owner(slot) != source:
                    stray[adjustments.name].append((slot, r))
        per_target: dict[str, list[SlotMove]] = defaultdict(list)
        for move in chunk:
            per_target[move.target].append(move)
        finished: set[int] = set()  # by another resharder of the plan: not this one's
        for target, group in sorted(per_target.items()):
            count, done = _copy(cursor_for, system, group, target, rows)
            copied += count
            finished |= done
        busy = sorted({slot for found in rows.values() for slot, _ in found} - finished)
        if busy:
            step(f"records-delete:{source}")
            records = [(s, r) for s, r in rows[corrections.name] if s not in finished]
            with cursor_for(source) as (cursor, sql):
                for slot in busy:
                    check_moving(cursor, sql, at[slot], source)
                _delete(cursor, sql, system, records, busy)
        copied += _send_home(cursor_for, system, source, stray, owner=owner, step=step)
    return copied


def _send_home(
    cursor_for: CursorFor,
    system: SystemTables,
    source: str,
    stray: dict[str, list[tuple[int, Row]]],
    *,
    owner: Callable[[int], str],
    step: Callable[[str], None],
) -> int:
    """Copy ``source``'s records and bookings of slots it does not own to their owners,
    then delete them from ``source``; returns the rows copied.

    The owner writes the slot's records itself (a correction writes its record on
    its home slot's owner: :func:`shardbill.corrections.store.check_home`), so a
    copy is insert-if-absent; a record whose key the owner holds with another
    correction stays where it is, logged, for an operator to look at.
    """
    corrections = system.corrections_def()
    if not any(stray.values()):
        return 0
    by_owner: dict[str, dict[str, list[tuple[int, Row]]]] = defaultdict(
        lambda: {name: [] for name in stray}
    )
    for name, found in stray.items():
        for slot, row in found:
            by_owner[owner(slot)][name].append((slot, row))
    copied = 0
    sent: dict[str, list[tuple[int, Row]]] = {name: [] for name in stray}
    for home, share in sorted(by_owner.items()):
        with cursor_for(home) as (cursor, sql):
            kept = _keys_held(cursor, sql, system, [r for _, r in share[corrections.name]])
            records = []
            for slot, row in share[corrections.name]:
                held = kept.get((str(row[0]), int(str(row[1]))))
                if held is not None and held != str(row[2]):
                    log.warning(
                        "correction record %s revision %s on %s: its home %s holds another "
                        "correction (%s) under that revision; left on %s",
                        row[0], row[1], source, home, held, source,
                    )  # fmt: skip
                    continue
                records.append((slot, row))
            for table, found in (
                (corrections, records),
                (system.adjustments_def(), share[system.adjustments]),
            ):
                _insert(cursor, sql, table, [r for _, r in found])
                sent[table.name].extend(found)
                copied += len(found)
    step(f"records-home:{source}")
    with cursor_for(source) as (cursor, sql):
        slots = sorted({slot for slot, _ in sent[system.adjustments]})
        _delete(cursor, sql, system, sent[corrections.name], slots)
    log.info("sent %d record(s) and booking(s) on %s to their slots' owners", copied, source)
    return copied


def _keys_held(
    cursor: DBAPICursor, sql: ReshardStatements, system: SystemTables, records: Sequence[Row]
) -> dict[tuple[str, int], str]:
    """(event id, revision) -> correction id, of ``records``' keys the shard holds."""
    q, p = sql.dialect.quote, sql.dialect.placeholder
    held: dict[tuple[str, int], str] = {}
    for event_id, revision, *_ in records:
        cursor.execute(
            f"SELECT {q('correction_id')} FROM {q(system.corrections)} "
            f"WHERE {q('event_id')} = {p} AND {q('revision')} = {p}",
            (event_id, revision),
        )
        row = cursor.fetchone()
        if row is not None:
            held[(str(event_id), int(str(revision)))] = str(row[0])
    return held


def _copy(
    cursor_for: CursorFor,
    system: SystemTables,
    group: Sequence[SlotMove],
    target: str,
    rows: dict[str, list[tuple[int, Row]]],
) -> tuple[int, set[int]]:
    """Copy one target's share, and mark each slot's records arrived; one transaction.

    Returns the rows copied and the slots another resharder of the plan finished
    meanwhile (they are left alone: that resharder moved their records first).
    """
    moves = system.moves_def()
    with cursor_for(target) as (cursor, sql):
        q = sql.dialect.quote
        arrived: set[int] = set()
        for some in _chunks(sorted(m.slot for m in group)):
            cursor.execute(
                f"SELECT {q(SLOT_COLUMN)} FROM {q(moves.name)} WHERE {_slot_in(sql, some)} "
                f"AND {q('table_name')} = {sql.dialect.placeholder}",
                (system.corrections,),
            )
            arrived.update(int(str(r[0])) for r in cursor.fetchall())
        waiting = [m for m in group if m.slot not in arrived]
        todo = _still_arriving(cursor, sql, waiting, target)
        wanted = {m.slot for m in todo}
        mine = {name: [(s, r) for s, r in found if s in wanted] for name, found in rows.items()}
        per_slot: dict[int, int] = defaultdict(int)
        for found in mine.values():
            for slot, _ in found:
                per_slot[slot] += 1
        for table in (system.corrections_def(), system.adjustments_def()):
            _insert(cursor, sql, table, [r for _, r in mine[table.name]])
        tally = {m.slot: _tally(per_slot[m.slot]) for m in todo}
        _insert(
            cursor,
            sql,
            moves,
            [
                (m.slot, system.corrections, m.source, tally[m.slot], tally[m.slot], None, 1)
                for m in todo
            ],
        )
    return sum(per_slot.values()), {m.slot for m in waiting} - wanted


def _still_arriving(
    cursor: DBAPICursor, sql: ReshardStatements, moves: Sequence[SlotMove], target: str
) -> list[SlotMove]:
    """The ``moves`` that ``target`` still receives (rows share-locked); stop if one is
    neither arriving nor finished.

    A resharder that missed the loss of its lease must not mark a slot's records
    arrived on a shard that a later move of the slot is filling: that move would then
    skip the copy and delete the source's records. A slot the target owns already
    was finished by another resharder of the plan since this one read the slots'
    states (one that took over, or the stalled one it took over from): leaving it
    alone changes nothing, whichever of the two this one is.
    """
    found: dict[int, tuple[str, str | None]] = {}
    for some in _chunks(sorted(m.slot for m in moves)):
        cursor.execute(*sql.slots.locked_rows(some))
        for slot, state, peer in cursor.fetchall():
            found[int(str(slot))] = (str(state), None if peer is None else str(peer))
    arriving = []
    for move in moves:
        want = (SlotState.INCOMING.value, move.source)
        if found.get(move.slot) == (SlotState.OWNED.value, None):
            continue
        if found.get(move.slot) != want:
            raise ReshardError(
                f"slot {move.slot} is no longer moving from {move.source!r} to {target!r} "
                f"({target!r} holds {found.get(move.slot) or 'no row'} where the move needs "
                f"{want}): another resharder finished it, so this one stops without touching "
                "it; run `shardbill reshard status` to see the reshard that holds the claim"
            )
        arriving.append(move)
    return arriving


def _tally(rows: int) -> str:
    """A move record's manifest: the rows moved (the resharder's tally format)."""
    return json.dumps({"rows": rows, "totals": [], "checksum": 0})


def _select(cursor: DBAPICursor, sql: ReshardStatements, table: TableDef, where: str) -> list[Row]:
    q = sql.dialect.quote
    names = ", ".join(q(c.name) for c in table.columns)
    cursor.execute(f"SELECT {names} FROM {q(table.name)}{where}", ())
    return [
        tuple(_plain(c, v) for c, v in zip(table.columns, row, strict=True))
        for row in cursor.fetchall()
    ]


def _insert(
    cursor: DBAPICursor,
    sql: ReshardStatements,
    table: TableDef,
    rows: Sequence[Row],
) -> None:
    """Insert-if-absent: a row copied before a crash is copied again harmlessly."""
    if not rows:
        return
    columns = list(table.columns)
    spec = UpsertSpec(
        table=table.name, columns=tuple(c.name for c in columns), key_columns=table.primary_key
    )
    for statement in RowStatements(sql.dialect, spec, columns, max_rows=_CHUNK).statements(rows):
        cursor.execute(*statement)


def _delete(
    cursor: DBAPICursor,
    sql: ReshardStatements,
    system: SystemTables,
    records: Sequence[tuple[int, Row]],
    slots: Sequence[int],
) -> None:
    q = sql.dialect.quote
    p = sql.dialect.placeholder
    for _, (event_id, revision, *_rest) in records:
        cursor.execute(
            f"DELETE FROM {q(system.corrections)} WHERE {q('event_id')} = {p} "
            f"AND {q('revision')} = {p}",
            (event_id, revision),
        )
    for some in _chunks(list(slots)):
        cursor.execute(f"DELETE FROM {q(system.adjustments)} WHERE {_slot_in(sql, some)}", ())


def _slot_in(sql: ReshardStatements, slots: Sequence[int]) -> str:
    """``slot IN (...)`` from validated ints (the map's slots)."""
    return f"{sql.dialect.quote(SLOT_COLUMN)} IN ({', '.join(str(int(s)) for s in slots)})"


def _chunks(items: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _plain(column: Column, raw: object) -> object:
    """A value as read, made plain for the copy (ints, text; NULL stays None)."""
    if raw is None:
        return None
    if column.kind in (ColumnKind.BIGINT, ColumnKind.INT):
        return int(raw)  # type: ignore[call-overload]
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
