"""Reading and writing ``shardbill_corrections`` and reading the ledger, on the shards' primaries.

Corrections are rare, so every read here asks every shard it is given (the
fleet: the map's shards and an unfinished reshard's): a ledger row may be on
either side of a reshard, and so may a record while its slot moves.

A record lives on the shard that owns its event's *home slot* (the slot of
the event id, as the map places keys), and a reshard moves it with that slot
(:mod:`shardbill.resharding.records`). So every write of a record checks, in
its own transaction, that its shard may write it: the home slot is owned
there, or is arriving there and its records have arrived (the move's
``shardbill_moves`` row for the corrections table is done). Otherwise it
raises :class:`RecordElsewhere`: the slot's new owner (follow it) or none
yet (wait for the move). Writes can therefore never land beside a copy the
reshard is taking, and a removed shard keeps no record behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from shardbill.corrections.records import (
    CorrectionKind,
    CorrectionRecord,
    RecordState,
    event_from_text,
    event_to_text,
)
from shardbill.declarations import Declaration
from shardbill.declarations.store import read_history
from shardbill.dialects.base import Dialect
from shardbill.dialects.detect import dialect_for
from shardbill.errors import PicklableError
from shardbill.periods.store import has_table
from shardbill.periods.tables import GATE_ROW, PeriodState
from shardbill.providers.base import ConnectionProvider, DBAPICursor
from shardbill.tables import SlotState, SystemTables
from shardbill.tables.aggregates import SLOT_COLUMN

__all__ = [
    "RecordElsewhere",
    "delete_pending",
    "insert_record",
    "ledger_prints",
    "mark_applied",
    "period_states",
    "read_records",
]

_COLUMNS = (
    "event_id",
    "revision",
    "correction_id",
    "kind",
    "state",
    "ledger_id",
    "event_time",
    "before_event",
    "after_event",
    "corrected_by",
    "reason",
    "corrected_at",
)


class RecordElsewhere(PicklableError):  # noqa: N818 - a routing signal, handled by the Corrector
    """This shard may not write records of the home slot now.

    Attributes:
        slot: the home slot.
        peer: the shard the slot moved to (follow it), or None (it is being
            moved here and its records have not arrived yet, or the shard has
            no row of it: wait, reload the map, try again).
    """

    def __init__(self, shard: str, slot: int, peer: str | None) -> None:
        where = f"moved to {peer!r}" if peer else "in motion"
        super().__init__(f"shard {shard!r} does not hold the records of slot {slot} ({where})")
        self.slot = slot
        self.peer = peer


def check_home(
    cursor: DBAPICursor, dialect: Dialect, system: SystemTables, shard: str, slot: int
) -> None:
    """Raise :class:`RecordElsewhere` unless ``shard`` may write records of ``slot`` now.

    Its ownership row is share-locked till the transaction ends, as a
    writer's fence is, so a reshard cannot fence the slot between this check
    and the write it guards.
    """
    q = dialect.quote
    cursor.execute(
        f"SELECT {q('state')}, {q('peer')} FROM {q(system.slots)} "
        f"WHERE {q(SLOT_COLUMN)} = {int(slot)}{dialect.share_lock_suffix}",
        (),
    )
    row = cursor.fetchone()
    state = None if row is None else str(row[0])
    if state == SlotState.OWNED.value:
        return
    if state == SlotState.INCOMING.value:
        cursor.execute(
            f"SELECT {q('done')} FROM {q(system.moves)} WHERE {q(SLOT_COLUMN)} = {int(slot)} "
            f"AND {q('table_name')} = {dialect.placeholder}",
            (system.corrections,),
        )
        arrived = cursor.fetchone()
        if arrived is not None and int(str(arrived[0])):
            return
        raise RecordElsewhere(shard, slot, None)
    peer = None if row is None or row[1] is None else str(row[1])
    raise RecordElsewhere(shard, slot, peer if state == SlotState.GONE.value else None)


def read_records(
    provider: ConnectionProvider,
    shards: Iterable[str],
    system: SystemTables,
    *,
    event_ids: Sequence[str] | None = None,
) -> list[CorrectionRecord]:
    """The correction records of ``event_ids`` (None: all) on ``shards``, by (event, revision)."""
    found: list[CorrectionRecord] = []
    for shard in shards:
        with provider.connection(shard) as conn:
            dialect = dialect_for(conn)
            q = dialect.quote
            cursor = conn.cursor()
            try:
                if not has_table(cursor, dialect, shard, system, system.corrections):
                    continue
                select = f"SELECT {', '.join(q(c) for c in _COLUMNS)} FROM {q(system.corrections)}"
                batches: list[tuple[str, list[object]]]
                if event_ids is None:
                    batches = [(select, [])]
                else:
                    ids = sorted(set(event_ids))
                    batches = [
                        (
                            f"{select} WHERE {q('event_id')} IN "
                            f"({', '.join([dialect.placeholder] * len(ids[i : i + 500]))})",
                            list(ids[i : i + 500]),
                        )
                        for i in range(0, len(ids), 500)
                    ]
                for sql, params in batches:
                    cursor.execute(sql, params)
                    found.extend(_record(row, shard) for row in cursor.fetchall())
            finally:
                cursor.close()
    # A record being moved by a reshard may be on both sides for a moment: one of them
    # (applied, if either is: a copy is never more advanced than the record it copies).
    kept: dict[tuple[str, int, str], CorrectionRecord] = {}
    for record in found:
        key = (record.event_id, record.revision, record.correction_id)
        seen = kept.get(key)
        if seen is None or (
            seen.state is RecordState.PENDING and record.state is RecordState.APPLIED
        ):
            kept[key] = record
    return sorted(kept.values(), key=lambda r: (r.event_id, r.revision, r.shard))


def _record(row: Sequence[object], shard: str) -> CorrectionRecord:
    (event_id, revision, correction_id, kind, state, ledger, at, before, after, by, why, when) = row
    return CorrectionRecord(
        event_id=str(event_id),
        revision=int(str(revision)),
        correction_id=str(correction_id),
        kind=CorrectionKind(str(kind)),
        state=RecordState(str(state)),
        ledger_id=str(ledger),
        event_time=int(str(at)),
        before=event_from_text(str(before)),
        after=None if after is None else event_from_text(str(after)),
        corrected_by=str(by),
        reason=str(why),
        corrected_at=int(str(when)),
        shard=shard,
    )


def insert_record(
    provider: ConnectionProvider, record: CorrectionRecord, system: SystemTables, *, slot: int
) -> None:
    """Insert ``record`` on its shard (a plain INSERT: one row per event and revision there).

    Raises:
        RecordElsewhere: the shard does not hold the home ``slot``'s records now.
    """
    with provider.connection(record.shard) as conn:
        dialect = dialect_for(conn)
        q = dialect.quote
        cursor = conn.cursor()
        try:
            check_home(cursor, dialect, system, record.shard, slot)
            cursor.execute(
                f"INSERT INTO {q(system.corrections)} ({', '.join(q(c) for c in _COLUMNS)}) "
                f"VALUES ({', '.join([dialect.placeholder] * len(_COLUMNS))})",
                (
                    record.event_id,
                    record.revision,
                    record.correction_id,
                    record.kind.value,
                    record.state.value,
                    record.ledger_id,
                    record.event_time,
                    event_to_text(record.before),
                    None if record.after is None else event_to_text(record.after),
                    record.corrected_by,
                    record.reason,
                    record.corrected_at,
                ),
            )
        finally:
            cursor.close()


def _change(
    provider: ConnectionProvider,
    record: CorrectionRecord,
    system: SystemTables,
    verb: str,
    slot: int,
) -> int:
    with provider.connection(record.shard) as conn:
        dialect = dialect_for(conn)
        q = dialect.quote
        p = dialect.placeholder
        cursor = conn.cursor()
        try:
            check_home(cursor, dialect, system, record.shard, slot)
            where = (
                f"WHERE {q('event_id')} = {p} AND {q('revision')} = {p} AND "
                f"{q('correction_id')} = {p} AND {q('state')} = {p}"
            )
            params: list[object] = [
                record.event_id,
                record.revision,
                record.correction_id,
                RecordState.PENDING.value,
            ]
            if verb == "delete":
                cursor.execute(f"DELETE FROM {q(system.corrections)} {where}", params)
            else:
                cursor.execute(
                    f"UPDATE {q(system.corrections)} SET {q('state')} = {p} {where}",
                    [RecordState.APPLIED.value, *params],
                )
            return max(cursor.rowcount, 0)
        finally:
            cursor.close()


def mark_applied(
    provider: ConnectionProvider, record: CorrectionRecord, system: SystemTables, *, slot: int
) -> None:
    """Mark a pending record applied (a no-op when it is already).

    Raises:
        RecordElsewhere: the shard does not hold the home ``slot``'s records now.
    """
    _change(provider, record, system, "update", slot)


def delete_pending(
    provider: ConnectionProvider, record: CorrectionRecord, system: SystemTables, *, slot: int
) -> None:
    """Delete a pending record whose deltas are in no ledger (the correction was refused).

    Raises:
        RecordElsewhere: the shard does not hold the home ``slot``'s records now.
    """
    _change(provider, record, system, "delete", slot)


def ledger_prints(
    provider: ConnectionProvider,
    shards: Iterable[str],
    system: SystemTables,
    pairs: Sequence[tuple[int, str]],
) -> dict[tuple[str, int], str]:
    """(event id, slot) -> stored fingerprint, for the ``(slot, event id)`` pairs, on any shard."""
    wanted = {(event_id, slot) for slot, event_id in pairs}
    found: dict[tuple[str, int], str] = {}
    if not pairs:
        return found
    ordered = sorted(set(pairs))
    for shard in shards:
        with provider.connection(shard) as conn:
            dialect = dialect_for(conn)
            cursor = conn.cursor()
            try:
                if not has_table(cursor, dialect, shard, system, system.ledger):
                    continue
                select = (
                    f"SELECT event_id, {SLOT_COLUMN}, fingerprint FROM "
                    f"{dialect.quote(system.ledger)} WHERE "
                )
                for condition, params in dialect.pairs_statements(
                    (SLOT_COLUMN, "event_id"), ordered
                ):
                    cursor.execute(select + condition, params)
                    for event_id, slot, fingerprint in cursor.fetchall():
                        key = (str(event_id), int(slot))
                        if key in wanted:
                            found[key] = str(fingerprint)
            finally:
                cursor.close()
    return found


def declarations_on(
    provider: ConnectionProvider, shards: Iterable[str], system: SystemTables
) -> list[Declaration]:
    """Every table declaration recorded on any of ``shards`` (each version once)."""
    found: dict[str, Declaration] = {}
    for shard in shards:
        with provider.connection(shard) as conn:
            dialect = dialect_for(conn)
            cursor = conn.cursor()
            try:
                if not has_table(cursor, dialect, shard, system, system.declarations):
                    continue
                for recorded in read_history(cursor, dialect, system.declarations):
                    found.setdefault(recorded.declaration.version, recorded.declaration)
            finally:
                cursor.close()
    return list(found.values())


def period_states(
    provider: ConnectionProvider, shards: Iterable[str], system: SystemTables, period: str
) -> dict[str, PeriodState]:
    """Shard -> the state of ``period`` there, for the shards that hold it closing or closed."""
    out: dict[str, PeriodState] = {}
    for shard in shards:
        with provider.connection(shard) as conn:
            dialect = dialect_for(conn)
            p = dialect.placeholder
            cursor = conn.cursor()
            try:
                if not has_table(cursor, dialect, shard, system, system.periods):
                    continue
                cursor.execute(
                    f"SELECT state FROM {dialect.quote(system.periods)} WHERE period = {p} "
                    f"AND period <> {p}",
                    (period, GATE_ROW),
                )
                row = cursor.fetchone()
                if row is not None:
                    out[shard] = PeriodState(str(row[0]))
            finally:
                cursor.close()
    return out
