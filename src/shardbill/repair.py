"""Repairing what an audit found: re-derive the rows of a slot from its events (``audit --repair``).

The events files are the truth :mod:`shardbill.audit` recomputes from; their
ids are in the ledger, so ingesting them again changes nothing for a row that
was changed behind the writer's back. :func:`repair` corrects such rows on
their shard, one transaction per (shard, slot), so that the slot holds
exactly what its events imply, and only where that is provably the whole
truth of the slot:

1. the slot's row in the ownership table is locked for update (writers take
   it shared in every write transaction: they wait for the repair, and a
   reshard cannot move the slot under it); a slot that is not ``owned``
   (in a move) is refused: finish the reshard first;
2. the slot's ledger must hold no event the audit lacks (else another
   events file fed it: audit that too), and every audited event with a
   charge on the slot (else it was never written: ingest the files first,
   which applies it exactly once, then repair);
3. each differing row is read again under the lock and set to what the
   events imply: a summed measure by adding the difference, a min/max
   measure to its value, a missing row inserted, a row no event makes
   deleted.

Exactly once: every correction is computed, inside the transaction, from
the row as it is then, so a second run (or a retry after a lost COMMIT)
finds nothing left to correct. Rows on the wrong shard or under the wrong
slot are a reshard's to fix (``shardbill reshard run`` / ``verify``) and are
left alone. Ledger rows that prune has deleted (events older than the dedup
horizon) make step 2 refuse: such a slot can only be repaired by hand. The
events are priced with the rules given, which must be the ones they were
written with (as for the audit).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence

import attrs

from shardbill.audit import (
    AuditReport,
    Difference,
    compare,
    events_on_slots,
    expected_rows,
    read_rows,
)
from shardbill.corrections.records import CorrectionRecord, RecordState
from shardbill.dialects.base import Dialect
from shardbill.dialects.detect import dialect_for
from shardbill.providers.base import ConnectionProvider, DBAPICursor
from shardbill.rules import RulesEngine, UsageEvent
from shardbill.shardmap import ShardMap
from shardbill.tables import SlotState, SystemTables
from shardbill.tables.aggregates import SLOT_COLUMN, AggregateTable, KeyValue, MergeKind

__all__ = ["RepairAction", "RepairReport", "repair"]

_REPAIRABLE = frozenset({"value", "missing", "unexpected"})


@attrs.frozen(kw_only=True)
class RepairAction:
    """One row corrected.

    Attributes:
        shard: the shard.
        slot: the row's slot.
        table: the table.
        key: the row's key columns, name -> value.
        action: ``update``, ``insert`` or ``delete``.
        changes: measure -> (value before, value after), in stored units.
    """

    shard: str
    slot: int
    table: str
    key: Mapping[str, KeyValue]
    action: str
    changes: Mapping[str, tuple[int | None, int | None]]

    def describe(self) -> str:
        """One line for people."""
        key = ", ".join(f"{k}={_show(v)}" for k, v in self.key.items())
        changes = ", ".join(f"{m} {b} -> {a}" for m, (b, a) in self.changes.items())
        return f"{self.shard} slot {self.slot}: {self.action} {self.table} ({key}): {changes}"

    def to_dict(self) -> dict[str, object]:
        """``shard``, ``slot``, ``table``, ``key``, ``action``, ``changes`` and ``text``."""
        return {
            "shard": self.shard,
            "slot": self.slot,
            "table": self.table,
            "key": {k: _show(v) for k, v in self.key.items()},
            "action": self.action,
            "changes": {m: list(v) for m, v in self.changes.items()},
            "text": self.describe(),
        }


@attrs.frozen(kw_only=True)
class RepairReport:
    """What :func:`repair` did.

    Attributes:
        before: the audit the repair started from.
        actions: every row corrected.
        refused: one line per difference left alone, with the reason and what to do.
    """

    before: AuditReport
    actions: tuple[RepairAction, ...]
    refused: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        """``actions`` (each :meth:`RepairAction.to_dict`) and ``refused``."""
        return {"actions": [a.to_dict() for a in self.actions], "refused": list(self.refused)}


def repair(
    events: Iterable[UsageEvent],
    *,
    engine: RulesEngine,
    tables: Sequence[AggregateTable],
    provider: ConnectionProvider,
    shard_map: ShardMap,
    system_tables: SystemTables | None = None,
    corrections: Iterable[CorrectionRecord] = (),
    adjustments: Mapping[str, str] | None = None,
) -> RepairReport:
    """Audit, then correct every row that differs where the slot's events are all audited.

    Args:
        events: every event of the slots to repair (the truth), distinct ids.
        engine: the rules engine that priced them.
        tables: the aggregate tables.
        provider: lends connections to the shards.
        shard_map: the current map.
        system_tables: the names of shardbill's own tables.
        corrections: the correction records (``shardbill correct``): the
            applied ones count as part of the truth (their ledger ids are
            audited too); a slot holding a pending one's is left alone.
        adjustments: the events the ``adjust`` late-event policy booked in
            another period (see :func:`shardbill.audit.expected_rows`).

    Returns:
        The audit before, the corrections and the refusals. Audit again to
        see the result.
    """
    system = system_tables or SystemTables()
    audited = _distinct(events)
    applied = [r for r in corrections if r.state is RecordState.APPLIED]
    expected = expected_rows(
        audited, engine=engine, tables=tables, corrections=applied, adjustments=adjustments
    )
    found = read_rows(provider, sorted(shard_map.shards), tables)
    before = compare(expected, found, tables=tables, shard_map=shard_map)
    refused: list[str] = []
    groups: dict[tuple[str, int], list[Difference]] = {}
    # A row with a copy elsewhere or under another slot is the resharder's: correcting one
    # copy to the whole expected value would count the other copy twice.
    placed = {
        (d.table, tuple(d.key.values())) for d in before.differences if d.kind not in _REPAIRABLE
    }
    for difference in before.differences:
        if (
            difference.kind not in _REPAIRABLE
            or difference.shard is None
            or (difference.table, tuple(difference.key.values())) in placed
        ):
            refused.append(f"{difference.describe()}: left alone; {difference.repair()}")
            continue
        assert difference.slot is not None  # noqa: S101 - a shard is named with its slot
        groups.setdefault((difference.shard, difference.slot), []).append(difference)
    ids = {e.event_id for e in audited} | {r.ledger_id for r in applied}
    on_slot = events_on_slots(
        audited,
        engine=engine,
        tables=tables,
        shard_map=shard_map,
        slots={slot for _, slot in groups},
    )
    by_name = {t.name: t for t in tables}
    actions: list[RepairAction] = []
    for (shard, slot), differences in sorted(groups.items()):
        rows = sorted({(d.table, tuple(d.key.values())) for d in differences}, key=repr)
        with provider.connection(shard) as conn:
            dialect = dialect_for(conn)
            cursor = conn.cursor()
            try:
                reason = _slot_refusal(
                    cursor, dialect, system, slot, audited=ids, with_charges=on_slot[slot]
                )
                if reason is not None:
                    refused.append(f"{shard} slot {slot}: {len(rows)} row(s) left alone: {reason}")
                    continue
                for table_name, key in rows:
                    table = by_name[table_name]
                    action = _repair_row(
                        cursor,
                        dialect,
                        table,
                        key,
                        slot=slot,
                        want=expected.rows[table_name].get(key),
                    )
                    if action is not None:
                        actions.append(attrs.evolve(action, shard=shard))
            finally:
                cursor.close()
    return RepairReport(before=before, actions=tuple(actions), refused=tuple(refused))


def _distinct(events: Iterable[UsageEvent]) -> list[UsageEvent]:
    seen: set[str] = set()
    out = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            out.append(event)
    return out


def _slot_refusal(
    cursor: DBAPICursor,
    dialect: Dialect,
    system: SystemTables,
    slot: int,
    *,
    audited: set[str],
    with_charges: set[str],
) -> str | None:
    """Lock the slot; why its rows cannot be re-derived from the audited events (None: they can)."""
    q, p = dialect.quote, dialect.placeholder
    cursor.execute(
        f"SELECT {q('state')} FROM {q(system.slots)} WHERE {q(SLOT_COLUMN)} = {p}"
        f"{dialect.exclusive_lock_suffix}",
        (slot,),
    )
    row = cursor.fetchone()
    state = str(row[0]) if row is not None else None
    if state != SlotState.OWNED.value:
        return (
            f"the slot is {state or 'not recorded'} on this shard, not owned (a reshard is "
            "moving it): finish it (`shardbill reshard run`), then audit --repair again"
        )
    cursor.execute(
        f"SELECT {q('event_id')} FROM {q(system.ledger)} WHERE {q(SLOT_COLUMN)} = {p}", (slot,)
    )
    applied = {str(r[0]) for r in cursor.fetchall()}
    extra = sorted(applied - audited)
    if extra:
        return (
            f"its ledger holds {len(extra)} event(s) the audit does not (e.g. {extra[0]!r}): "
            "audit every events file that fed these shards"
        )
    unwritten = sorted(with_charges - applied)
    if unwritten:
        return (
            f"{len(unwritten)} audited event(s) with charges here are not in its ledger (e.g. "
            f"{unwritten[0]!r}): never written, or pruned; ingest the files first (the ledger "
            "applies only what is missing, exactly once), then audit --repair again"
        )
    return None


def _repair_row(
    cursor: DBAPICursor,
    dialect: Dialect,
    table: AggregateTable,
    key: tuple[KeyValue, ...],
    *,
    slot: int,
    want: list[int] | None,
) -> RepairAction | None:
    """Set one row to ``want`` (None: no row), reading it again under the lock first."""
    q, p = dialect.quote, dialect.placeholder
    where = " AND ".join(f"{q(c)} = {p}" for c in (*table.key_names, SLOT_COLUMN))
    bound = [*(_bound(v) for v in key), slot]
    cursor.execute(
        f"SELECT {', '.join(q(m) for m in table.measure_names)} FROM {q(table.name)} "
        f"WHERE {where}{dialect.exclusive_lock_suffix}",
        bound,
    )
    found = cursor.fetchall()
    have = [int(v) for v in found[0]] if found else None
    if have == want:
        return None  # corrected already (a second run, or a retry after a lost COMMIT)
    named = dict(zip(table.key_names, key, strict=True))
    changes: dict[str, tuple[int | None, int | None]]
    base = RepairAction(shard="", slot=slot, table=table.name, key=named, action="", changes={})
    if want is None:
        assert have is not None  # noqa: S101 - have != want
        cursor.execute(f"DELETE FROM {q(table.name)} WHERE {where}", bound)
        changes = {m: (v, None) for m, v in zip(table.measure_names, have, strict=True)}
        return attrs.evolve(base, action="delete", changes=changes)
    if have is None:
        columns = (*table.key_names, SLOT_COLUMN, *table.measure_names)
        cursor.execute(
            f"INSERT INTO {q(table.name)} ({', '.join(q(c) for c in columns)}) "
            f"VALUES ({', '.join([p] * len(columns))})",
            [*bound, *want],
        )
        changes = {m: (None, v) for m, v in zip(table.measure_names, want, strict=True)}
        return attrs.evolve(base, action="insert", changes=changes)
    sets: list[str] = []
    values: list[object] = []
    changes = {}
    for measure, now, then in zip(table.measures, have, want, strict=True):
        if now == then:
            continue
        changes[measure.name] = (now, then)
        column = q(measure.name)
        if measure.merge is MergeKind.SUM:
            sets.append(f"{column} = {column} + {p}")  # additive: the difference
            values.append(then - now)
        else:
            sets.append(f"{column} = {p}")
            values.append(then)
    cursor.execute(f"UPDATE {q(table.name)} SET {', '.join(sets)} WHERE {where}", [*values, *bound])
    return attrs.evolve(base, action="update", changes=changes)


def _bound(value: KeyValue) -> int | str:
    return value.isoformat() if isinstance(value, dt.date) else value


def _show(value: KeyValue) -> str:
    return value.isoformat() if isinstance(value, dt.date) else str(value)
