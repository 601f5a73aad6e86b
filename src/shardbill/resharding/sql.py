"""The resharder's SQL, one named statement each, for one shard's dialect.

Three small groups, after the tables they touch:

* :class:`SlotTable`: the slot-ownership table (``shardbill_slots``): read
  the rows, accept a slot, fence it, hand it over, its dedup watermark;
* :class:`MoveLedger`: the move ledger (``shardbill_moves``), the progress of
  the merge on the receiving shard: start, advance (compare-and-set), finish;
* :class:`SlotRows`: a slot's rows in the ledger and the aggregate tables:
  read them in chunks in key order, delete what was merged, count what is left.

:class:`ReshardStatements` holds the three for one shard
(``ReshardStatements.of(dialect, system_tables)``). Every method returns
``(sql, params)`` for one ``cursor.execute``: identifiers are validated and
quoted by the dialect, values are bound, and only integers are rendered into
the text, from ``int(...)`` of a slot, an epoch or a limit. No statement holds
more than one command. What differs per server family (the share-lock suffix)
comes from the :class:`~shardbill.dialects.base.Dialect`. The multi-row
inserts of the copy and the merge are the writer's
(:class:`~shardbill.writer.upserts.RowStatements`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeAlias

import attrs

from shardbill.dialects.base import Dialect
from shardbill.tables import SlotState, SystemTables
from shardbill.tables.aggregates import SLOT_COLUMN, AggregateTable

__all__ = ["MoveLedger", "ReshardStatements", "SlotRows", "SlotTable", "Statement"]

Statement: TypeAlias = tuple[str, tuple[object, ...]]
"""One statement and the values it binds, for ``cursor.execute(*statement)``."""


def _ints(values: Iterable[int]) -> str:
    """Integers for an ``IN (...)`` list, each rendered from ``int(value)``."""
    return ", ".join(str(int(v)) for v in values)


@attrs.frozen(kw_only=True)
class SlotTable:
    """Statements on one shard's slot-ownership table (``sb_slot, state, epoch, peer,
    pruned_below``)."""

    dialect: Dialect
    name: str

    def _names(self) -> tuple[str, str, str, str, str]:
        q = self.dialect.quote
        return q(self.name), q(SLOT_COLUMN), q("state"), q("peer"), q("epoch")

    def all_rows(self) -> Statement:
        """Every slot's ``(slot, state, peer)``; binds nothing."""
        table, slot, state, peer, _ = self._names()
        return f"SELECT {slot}, {state}, {peer} FROM {table}", ()

    def rows(self, slots: Sequence[int]) -> Statement:
        """``(slot, state, peer)`` of the rows of ``slots``; binds nothing."""
        table, slot, state, peer, _ = self._names()
        return f"SELECT {slot}, {state}, {peer} FROM {table} WHERE {slot} IN ({_ints(slots)})", ()

    def states(self, slots: Sequence[int]) -> Statement:
        """``(slot, state)`` of the rows of ``slots``; binds nothing."""
        table, slot, state, _, _ = self._names()
        return f"SELECT {slot}, {state} FROM {table} WHERE {slot} IN ({_ints(slots)})", ()

    def locked_row(self, slot: int) -> Statement:
        """``(state, peer, epoch)`` of ``slot``'s row, share-locked till commit; binds
        nothing."""
        table, slot_column, state, peer, epoch = self._names()
        return (
            f"SELECT {state}, {peer}, {epoch} FROM {table} WHERE {slot_column} = {int(slot)}"
            f"{self.dialect.share_lock_suffix}",
            (),
        )

    def locked_epochs(self, slots: Sequence[int]) -> Statement:
        """``(slot, state, epoch)`` of the rows of ``slots``, locked exclusively till commit
        (the epoch of the reshard that changed each last); binds nothing."""
        table, slot_column, state, _, epoch = self._names()
        return (
            f"SELECT {slot_column}, {state}, {epoch} FROM {table} WHERE {slot_column} IN "
            f"({_ints(slots)}){self.dialect.exclusive_lock_suffix}",
            (),
        )

    def locked_rows(self, slots: Sequence[int]) -> Statement:
        """``(slot, state, peer)`` of the rows of ``slots``, share-locked till commit; binds
        nothing."""
        table, slot_column, state, peer, _ = self._names()
        return (
            f"SELECT {slot_column}, {state}, {peer} FROM {table} WHERE {slot_column} IN "
            f"({_ints(slots)}){self.dialect.share_lock_suffix}",
            (),
        )

    def accept(self, slot: int, source: str, epoch: int) -> Statement:
        """Add ``slot`` as ``incoming`` from ``source`` at ``epoch``; binds (incoming, source)."""
        table, slot_column, state, peer, epoch_column = self._names()
        p = self.dialect.placeholder
        return (
            f"INSERT INTO {table} ({slot_column}, {state}, {epoch_column}, {peer}) "
            f"VALUES ({int(slot)}, {p}, {int(epoch)}, {p})",
            (SlotState.INCOMING.value, source),
        )

    def accept_back(self, slot: int, source: str, epoch: int) -> Statement:
        """Make a ``gone`` row of ``slot`` ``incoming`` again, unless a later reshard than
        ``epoch`` changed it; binds (incoming, source, gone)."""
        table, slot_column, state, peer, epoch_column = self._names()
        p = self.dialect.placeholder
        return (
            f"UPDATE {table} SET {state} = {p}, {peer} = {p}, {epoch_column} = {int(epoch)} "
            f"WHERE {slot_column} = {int(slot)} AND {state} = {p} "
            f"AND {epoch_column} <= {int(epoch)}",
            (SlotState.INCOMING.value, source, SlotState.GONE.value),
        )

    def fence(
        self, slots: Sequence[int], dest: str, epoch: int, *, receiving: bool = False
    ) -> Statement:
        """Fence ``owned`` rows of ``slots``: ``gone`` to ``dest``; binds (gone, dest, owned).

        With ``receiving`` (a revert), rows ``incoming`` from ``dest`` too; binds
        (incoming, dest) after them. A row a later reshard than ``epoch`` changed
        is left alone.
        """
        table, slot_column, state, peer, epoch_column = self._names()
        p = self.dialect.placeholder
        also = f" OR ({state} = {p} AND {peer} = {p})" if receiving else ""
        return (
            f"UPDATE {table} SET {state} = {p}, {peer} = {p}, {epoch_column} = {int(epoch)} "
            f"WHERE ({state} = {p}{also}) AND {slot_column} IN ({_ints(slots)}) "
            f"AND {epoch_column} <= {int(epoch)}",
            (SlotState.GONE.value, dest, SlotState.OWNED.value)
            + ((SlotState.INCOMING.value, dest) if receiving else ()),
        )

    def mark_owned(self, slots: Sequence[int], source: str, *, epoch: int) -> Statement:
        """Hand ``slots`` over from ``source`` (owned), unless a later reshard than ``epoch``
        changed them; binds (owned, incoming, source)."""
        table, slot_column, state, peer, epoch_column = self._names()
        p = self.dialect.placeholder
        return (
            f"UPDATE {table} SET {state} = {p}, {peer} = NULL WHERE {state} = {p} AND "
            f"{peer} = {p} AND {slot_column} IN ({_ints(slots)}) "
            f"AND {epoch_column} <= {int(epoch)}",
            (SlotState.OWNED.value, SlotState.INCOMING.value, source),
        )

    def drop_incoming(self, slots: Sequence[int]) -> Statement:
        """Delete the ``incoming`` rows of ``slots`` (an aborted acceptance); binds (incoming,)."""
        table, slot_column, state, _, _ = self._names()
        return (
            f"DELETE FROM {table} WHERE {state} = {self.dialect.placeholder} AND "
            f"{slot_column} IN ({_ints(slots)})",
            (SlotState.INCOMING.value,),
        )

    def watermarks(self, slots: Sequence[int]) -> Statement:
        """``(slot, pruned_below)`` of the rows of ``slots``; binds nothing."""
        q = self.dialect.quote
        table, slot_column, _, _, _ = self._names()
        return (
            f"SELECT {slot_column}, {q('pruned_below')} FROM {table} "
            f"WHERE {slot_column} IN ({_ints(slots)})",
            (),
        )

    def raise_watermark(self, slot: int, mark: int) -> Statement:
        """Raise ``slot``'s ``pruned_below`` to ``mark`` where it is lower; binds (mark, mark)."""
        q = self.dialect.quote
        table, slot_column, _, _, _ = self._names()
        p = self.dialect.placeholder
        pruned = q("pruned_below")
        return (
            f"UPDATE {table} SET {pruned} = {p} WHERE {slot_column} = {int(slot)} "
            f"AND {pruned} < {p}",
            (mark, mark),
        )


@attrs.frozen(kw_only=True)
class MoveLedger:
    """Statements on one shard's move ledger: per (slot, table) received, the source's
    manifest and how far the merge got (``moved``, ``last_key``, ``done``)."""

    dialect: Dialect
    name: str

    def _names(self) -> tuple[str, str, str]:
        q = self.dialect.quote
        return q(self.name), q(SLOT_COLUMN), q("table_name")

    def all_records(self) -> Statement:
        """Every record's ``(slot, table_name, manifest, moved, done)``; binds nothing."""
        q = self.dialect.quote
        table, slot, name = self._names()
        return (
            f"SELECT {slot}, {name}, {q('manifest')}, {q('moved')}, {q('done')} FROM {table}",
            (),
        )

    def forget(self, slot: int) -> Statement:
        """Delete every record of ``slot`` (an earlier move's history); binds nothing."""
        table, slot_column, _ = self._names()
        return f"DELETE FROM {table} WHERE {slot_column} = {int(slot)}", ()

    def slots_recorded(self, slots: Sequence[int], *, other_than: str) -> Statement:
        """The distinct slots of ``slots`` with a record of a table but ``other_than`` (the
        corrections table, whose record says only that the slot's records arrived); binds
        (other_than,)."""
        table, slot_column, name = self._names()
        return (
            f"SELECT DISTINCT {slot_column} FROM {table} WHERE {slot_column} IN ({_ints(slots)}) "
            f"AND {name} <> {self.dialect.placeholder}",
            (other_than,),
        )

    def unfinished(self, slots: Sequence[int]) -> Statement:
        """``(slot, table_name, source, last_key)`` of undone records; binds nothing."""
        q = self.dialect.quote
        table, slot_column, name = self._names()
        return (
            f"SELECT {slot_column}, {name}, {q('source')}, {q('last_key')} FROM {table} "
            f"WHERE {q('done')} = 0 AND {slot_column} IN ({_ints(slots)})",
            (),
        )

    def drop_unfinished(self, slot: int, table_name: str) -> Statement:
        """Delete ``slot``'s record of ``table_name`` unless done; binds (table_name,)."""
        q = self.dialect.quote
        table, slot_column, name = self._names()
        return (
            f"DELETE FROM {table} WHERE {slot_column} = {int(slot)} AND "
            f"{name} = {self.dialect.placeholder} AND {q('done')} = 0",
            (table_name,),
        )

    def progress(self, slot: int, table_name: str) -> Statement:
        """``(manifest, moved, last_key, done)`` of one record; binds (table_name,)."""
        q = self.dialect.quote
        table, slot_column, name = self._names()
        return (
            f"SELECT {q('manifest')}, {q('moved')}, {q('last_key')}, {q('done')} FROM {table} "
            f"WHERE {slot_column} = {int(slot)} AND {name} = {self.dialect.placeholder}",
            (table_name,),
        )

    def start(
        self, slot: int, table_name: str, source: str, manifest: str, moved: str
    ) -> Statement:
        """Start a record, nothing merged; binds (table_name, source, manifest, moved)."""
        q = self.dialect.quote
        table, slot_column, name = self._names()
        p = self.dialect.placeholder
        rest = ("source", "manifest", "moved", "last_key", "done")
        columns = ", ".join([slot_column, name, *(q(c) for c in rest)])
        return (
            f"INSERT INTO {table} ({columns}) VALUES ({int(slot)}, {p}, {p}, {p}, {p}, NULL, 0)",
            (table_name, source, manifest, moved),
        )

    def advance(
        self, slot: int, table_name: str, *, moved: str, last_key: str, before: str
    ) -> Statement:
        """Advance a record; binds (moved, last_key, table_name, before).

        A compare-and-set: it changes one row only if the record is not done and its
        ``moved`` is still ``before``, else none.
        """
        q = self.dialect.quote
        table, slot_column, name = self._names()
        p = self.dialect.placeholder
        return (
            f"UPDATE {table} SET {q('moved')} = {p}, {q('last_key')} = {p} "
            f"WHERE {slot_column} = {int(slot)} AND {name} = {p} AND {q('done')} = 0 "
            f"AND {q('moved')} = {p}",
            (moved, last_key, table_name, before),
        )

    def tallies(self, slot: int) -> Statement:
        """``(table_name, manifest, moved)`` of every record of ``slot``; binds nothing."""
        q = self.dialect.quote
        table, slot_column, name = self._names()
        return (
            f"SELECT {name}, {q('manifest')}, {q('moved')} FROM {table} "
            f"WHERE {slot_column} = {int(slot)}",
            (),
        )

    def finish(self, slot: int) -> Statement:
        """Mark every record of ``slot`` done; binds nothing."""
        table, slot_column, _ = self._names()
        done = self.dialect.quote("done")
        return f"UPDATE {table} SET {done} = 1 WHERE {slot_column} = {int(slot)}", ()


@attrs.frozen(kw_only=True)
class SlotRows:
    """Statements on a slot's rows in one shard's ledger and aggregate tables."""

    dialect: Dialect
    ledger: str

    def distinct_slots(self, table: str) -> Statement:
        """The distinct slots ``table`` holds rows of; binds nothing."""
        q = self.dialect.quote
        return f"SELECT DISTINCT {q(SLOT_COLUMN)} FROM {q(table)}", ()

    def slots_among(self, table: str, slots: Sequence[int]) -> Statement:
        """The distinct slots of ``slots`` that ``table`` holds rows of; binds nothing."""
        q = self.dialect.quote
        slot = q(SLOT_COLUMN)
        return f"SELECT DISTINCT {slot} FROM {q(table)} WHERE {slot} IN ({_ints(slots)})", ()

    def count(self, table: str) -> Statement:
        """The number of rows in ``table``; binds nothing."""
        return f"SELECT COUNT(*) FROM {self.dialect.quote(table)}", ()

    def left(self, slot: int, tables: Sequence[str]) -> Statement:
        """One row: per table of ``tables``, its row count of ``slot``; binds nothing."""
        q = self.dialect.quote
        counts = ", ".join(
            f"(SELECT COUNT(*) FROM {q(name)} WHERE {q(SLOT_COLUMN)} = {int(slot)})"
            for name in tables
        )
        return f"SELECT {counts}", ()

    def ledger_chunk(self, slot: int, columns: Sequence[str], limit: int) -> Statement:
        """The first ``limit`` ledger rows of ``slot`` by event id; binds nothing."""
        q = self.dialect.quote
        return (
            f"SELECT {', '.join(q(c) for c in columns)} FROM {q(self.ledger)} "
            f"WHERE {q(SLOT_COLUMN)} = {int(slot)} ORDER BY {q('event_id')} LIMIT {int(limit)}",
            (),
        )

    def delete_ledger_through(self, slot: int, event_id: object) -> Statement:
        """Delete the ledger rows of ``slot`` up to ``event_id`` (included); binds (event_id,)."""
        q = self.dialect.quote
        return (
            f"DELETE FROM {q(self.ledger)} WHERE {q(SLOT_COLUMN)} = {int(slot)} "
            f"AND {q('event_id')} <= {self.dialect.placeholder}",
            (event_id,),
        )

    def aggregate_chunk(
        self, table: AggregateTable, slot: int, after: Sequence[object] | None, limit: int
    ) -> Statement:
        """``limit`` rows of ``slot`` in ``table`` by key, after ``after``; binds ``after``.

        Each row is the keys then the measures; ``after=None`` starts at the first key.
        """
        q = self.dialect.quote
        keys = ", ".join(q(k) for k in table.key_names)
        measures = ", ".join(q(m) for m in table.measure_names)
        where = f"{q(SLOT_COLUMN)} = {int(slot)}"
        if after is not None:
            where += f" AND ({keys}) > ({self._marks(len(after))})"
        return (
            f"SELECT {keys}, {measures} FROM {q(table.name)} WHERE {where} "
            f"ORDER BY {keys} LIMIT {int(limit)}",
            tuple(after or ()),
        )

    def delete_aggregates_through(
        self, table: AggregateTable, slot: int, last_key: Sequence[object]
    ) -> Statement:
        """Delete ``slot``'s rows in ``table`` up to key ``last_key``; binds ``last_key``."""
        q = self.dialect.quote
        keys = ", ".join(q(k) for k in table.key_names)
        return (
            f"DELETE FROM {q(table.name)} WHERE {q(SLOT_COLUMN)} = {int(slot)} "
            f"AND ({keys}) <= ({self._marks(len(last_key))})",
            tuple(last_key),
        )

    def _marks(self, count: int) -> str:
        return ", ".join([self.dialect.placeholder] * count)


@attrs.frozen(kw_only=True)
class ReshardStatements:
    """The resharder's statements for one shard: its dialect and the three groups."""

    dialect: Dialect
    slots: SlotTable
    moves: MoveLedger
    rows: SlotRows

    @classmethod
    def of(cls, dialect: Dialect, system: SystemTables) -> ReshardStatements:
        """The statements on ``system``'s tables in ``dialect``."""
        return cls(
            dialect=dialect,
            slots=SlotTable(dialect=dialect, name=system.slots),
            moves=MoveLedger(dialect=dialect, name=system.moves),
            rows=SlotRows(dialect=dialect, ledger=system.ledger),
        )
