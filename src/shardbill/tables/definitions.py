"""Logical table definitions: aggregate tables and shardbill's own per-shard tables (pure).

Dialects render these to DDL; the schema check compares the live tables with
them. These system tables live on every shard next to the aggregates:

``shardbill_declarations``
    The declarations the shard's ledger was written under: per declaration
    its version (16 hex digits), its canonical description (each table's key
    columns and measures), when it was recorded and whether it was declared
    or derived (:mod:`shardbill.declarations`). A writer reads it on a
    fingerprint mismatch only, to tell a replay after a schema change from a
    changed event.

``shardbill_ledger``
    One row per applied ``(slot, event_id)``: the fingerprint of what the
    event contributed to that slot (on the slot the event id hashes to: of
    the whole event, its identity claim), the event's time (Unix seconds:
    the dedup horizon prunes by it) and a token of the write attempt that
    applied it. Written in the same transaction as the UPSERTs it guards.

``shardbill_moves``
    On a shard receiving slots during a reshard: per (slot, table), the
    source's manifest (row count, sums, checksum) and the merge progress (the
    last key merged), written in the same transaction as each merged chunk.

``shardbill_periods``
    The billing periods this shard holds closing or closed (one row per
    period, with who closed it, when and why), and one *gate* row (period
    ``*``) that every write transaction with new units reads with a shared
    lock and a period close updates exclusively (see
    :mod:`shardbill.periods`).

``shardbill_corrections``
    The corrections recorded on this shard (cancel and amend, see
    :mod:`shardbill.corrections`): per corrected event and revision, the
    caller's correction id, who, why and when, the ledger id the
    correction's deltas were applied under, and the event's content before
    and after (the current revision, which the next correction of the event
    starts from). Rows stay on the shard that recorded them (a reshard does
    not move them): readers read every shard.

``shardbill_slots``
    The slots this shard owns (``state`` = ``owned``), is receiving during a
    reshard (``incoming``, with the source shard in ``peer``), or has handed
    over (``gone``, with the target in ``peer``). Every write transaction
    reads its slots' rows with a shared lock: this is the fence that rejects a
    writer holding an old shard map. ``pruned_below`` is the slot's dedup
    watermark: ledger rows of events before it may be gone, so such events
    are refused, whatever the writer's clock says.

Aggregate measure columns hold exact integers only: on SQLite a CHECK
refuses anything else (SQLite would otherwise turn an overflowing sum into a
REAL); MySQL's strict mode refuses an out-of-range BIGINT. A wide measure
(``Measure(wide=True)``) is a ``DECIMAL(65,0)`` column (kind ``DECIMAL``),
MySQL/MariaDB only.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs

from shardbill.tables.aggregates import (
    SLOT_COLUMN,
    AggregateTable,
    BigInt,
    Date,
    VarChar,
    check_identifier,
)

__all__ = [
    "CONTENT_LENGTH",
    "DESCRIPTION_LENGTH",
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

#: Longest event id: 191 characters fit a utf8mb4 index prefix on every InnoDB row format.
EVENT_ID_LENGTH = 191

#: Longest event content (its JSON) a correction records, before and after.
CONTENT_LENGTH = 4000
#: Longest declaration description (ASCII): about 200 columns of 64-character names.
DESCRIPTION_LENGTH = 16_000


class ColumnKind(enum.StrEnum):
    """The logical column types shardbill uses."""

    BIGINT = "bigint"
    INT = "int"
    VARCHAR = "varchar"
    ASCII = "ascii"  # fixed vocabulary text (states, fingerprints), ASCII only
    DATE = "date"
    DECIMAL = "decimal(65,0)"  # a wide measure: integers of up to 65 digits (MySQL only)


class SlotState(enum.StrEnum):
    """A slot's state in one shard's ``shardbill_slots`` table."""

    OWNED = "owned"
    INCOMING = "incoming"
    GONE = "gone"


@attrs.frozen(kw_only=True)
class Column:
    """One column of a logical table."""

    name: str
    kind: ColumnKind
    length: int = 0
    nullable: bool = False
    default: int | None = None  # an integer default, for columns added after first release
    exact_integer: bool = False  # SQLite: CHECK that the value is stored as an integer


@attrs.frozen(kw_only=True)
class TableDef:
    """A logical table: columns, primary key and secondary indexes (each a column tuple)."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()

    def column(self, name: str) -> Column:
        """The column called ``name``."""
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)


def aggregate_table_def(table: AggregateTable) -> TableDef:
    """The logical definition of an aggregate table: keys, slot, measures."""
    columns: list[Column] = []
    for key in table.keys:
        if isinstance(key.type, BigInt):
            columns.append(Column(name=key.name, kind=ColumnKind.BIGINT))
        elif isinstance(key.type, VarChar):
            columns.append(Column(name=key.name, kind=ColumnKind.VARCHAR, length=key.type.length))
        elif isinstance(key.type, Date):
            columns.append(Column(name=key.name, kind=ColumnKind.DATE))
    columns.append(Column(name=SLOT_COLUMN, kind=ColumnKind.INT))
    columns.extend(
        Column(
            name=m.name,
            kind=ColumnKind.DECIMAL if m.wide else ColumnKind.BIGINT,
            exact_integer=True,
        )
        for m in table.measures
    )
    return TableDef(
        name=table.name,
        columns=tuple(columns),
        primary_key=table.key_names,
        indexes=((SLOT_COLUMN,),),
    )


@attrs.frozen(kw_only=True)
class SystemTables:
    """The names of shardbill's own per-shard tables (configurable prefix)."""

    prefix: str = attrs.field(default="shardbill")

    def __attrs_post_init__(self) -> None:
        check_identifier(f"{self.prefix}_ledger", what="system table prefix")

    @property
    def ledger(self) -> str:
        """The ledger table's name."""
        return f"{self.prefix}_ledger"

    @property
    def slots(self) -> str:
        """The slot-ownership table's name."""
        return f"{self.prefix}_slots"

    def ledger_def(self) -> TableDef:
        """The ledger of applied (event, slot) units."""
        return TableDef(
            name=self.ledger,
            columns=(
                Column(name="event_id", kind=ColumnKind.VARCHAR, length=EVENT_ID_LENGTH),
                Column(name=SLOT_COLUMN, kind=ColumnKind.INT),
                Column(name="fingerprint", kind=ColumnKind.ASCII, length=16),
                # The event's time, Unix seconds: prune deletes below the horizon by it.
                Column(name="event_time", kind=ColumnKind.BIGINT),
                # A random token per write attempt: after a lost COMMIT, the retry
                # tells its own committed units from another writer's.
                Column(name="writer_token", kind=ColumnKind.ASCII, length=16, nullable=True),
            ),
            # Slot first: a slot's ledger rows are one primary-key range to move,
            # and lookups give both parts (Dialect.pairs_statements).
            primary_key=(SLOT_COLUMN, "event_id"),
            indexes=(("event_time",),),
        )

    def ledger_columns(self) -> tuple[str, ...]:
        """The ledger columns the writer fills, in this order (a reshard copies them all)."""
        return ("event_id", SLOT_COLUMN, "fingerprint", "event_time", "writer_token")

    def slots_def(self) -> TableDef:
        """The slot-ownership (fence) table."""
        return TableDef(
            name=self.slots,
            columns=(
                Column(name=SLOT_COLUMN, kind=ColumnKind.INT),
                Column(name="state", kind=ColumnKind.ASCII, length=16),
                Column(name="epoch", kind=ColumnKind.BIGINT),
                Column(name="peer", kind=ColumnKind.VARCHAR, length=64, nullable=True),
                # The dedup watermark: events before it are refused (see the module docstring).
                Column(name="pruned_below", kind=ColumnKind.BIGINT, default=0),
            ),
            primary_key=(SLOT_COLUMN,),
        )

    @property
    def moves(self) -> str:
        """The move ledger's name (a reshard's progress, on the receiving shard)."""
        return f"{self.prefix}_moves"

    def moves_def(self) -> TableDef:
        """The move ledger: per (slot, table) being received, the source's manifest and
        the progress of the merge, updated in the same transaction as each merged chunk."""
        return TableDef(
            name=self.moves,
            columns=(
                Column(name=SLOT_COLUMN, kind=ColumnKind.INT),
                Column(name="table_name", kind=ColumnKind.ASCII, length=64),
                Column(name="source", kind=ColumnKind.VARCHAR, length=64),
                Column(name="manifest", kind=ColumnKind.VARCHAR, length=1024),
                Column(name="moved", kind=ColumnKind.VARCHAR, length=1024),
                Column(name="last_key", kind=ColumnKind.VARCHAR, length=2048, nullable=True),
                Column(name="done", kind=ColumnKind.INT),
            ),
            primary_key=(SLOT_COLUMN, "table_name"),
        )

    @property
    def periods(self) -> str:
        """The periods table's name (closed billing periods and the gate row)."""
        return f"{self.prefix}_periods"

    def periods_def(self) -> TableDef:
        """The periods table: one row per closing or closed period, and the gate row."""
        return TableDef(
            name=self.periods,
            columns=(
                Column(name="period", kind=ColumnKind.ASCII, length=16),
                Column(name="state", kind=ColumnKind.ASCII, length=16),
                # Raised by every change a close makes on the shard (on the gate row).
                Column(name="generation", kind=ColumnKind.BIGINT),
                Column(name="closed_at", kind=ColumnKind.BIGINT, nullable=True),
                Column(name="closed_by", kind=ColumnKind.VARCHAR, length=64, nullable=True),
                Column(name="reason", kind=ColumnKind.VARCHAR, length=255, nullable=True),
            ),
            primary_key=("period",),
        )

    @property
    def corrections(self) -> str:
        """The corrections audit table's name."""
        return f"{self.prefix}_corrections"

    def corrections_def(self) -> TableDef:
        """The corrections audit table: one row per (corrected event, revision it creates)."""
        return TableDef(
            name=self.corrections,
            columns=(
                Column(name="event_id", kind=ColumnKind.VARCHAR, length=EVENT_ID_LENGTH),
                # The revision this correction creates (1 corrects the event as ingested).
                Column(name="revision", kind=ColumnKind.INT),
                Column(name="correction_id", kind=ColumnKind.VARCHAR, length=EVENT_ID_LENGTH),
                Column(name="kind", kind=ColumnKind.ASCII, length=16),  # cancel | amend
                Column(name="state", kind=ColumnKind.ASCII, length=16),  # pending | applied
                # The id the correction's deltas are in the ledger under.
                Column(name="ledger_id", kind=ColumnKind.VARCHAR, length=EVENT_ID_LENGTH),
                Column(name="event_time", kind=ColumnKind.BIGINT),  # the period's
                Column(name="before_event", kind=ColumnKind.VARCHAR, length=CONTENT_LENGTH),
                Column(
                    name="after_event",
                    kind=ColumnKind.VARCHAR,
                    length=CONTENT_LENGTH,
                    nullable=True,
                ),
                Column(name="corrected_by", kind=ColumnKind.VARCHAR, length=64),
                Column(name="reason", kind=ColumnKind.VARCHAR, length=255),
                Column(name="corrected_at", kind=ColumnKind.BIGINT),
            ),
            primary_key=("event_id", "revision"),
        )

    @property
    def declarations(self) -> str:
        """The declaration history's name."""
        return f"{self.prefix}_declarations"

    def declarations_def(self) -> TableDef:
        """The declarations the ledger's fingerprints were made under (see the module docstring)."""
        return TableDef(
            name=self.declarations,
            columns=(
                Column(name="version", kind=ColumnKind.ASCII, length=16),
                Column(name="description", kind=ColumnKind.ASCII, length=DESCRIPTION_LENGTH),
                Column(name="recorded_at", kind=ColumnKind.BIGINT),
                Column(name="origin", kind=ColumnKind.ASCII, length=16),
            ),
            primary_key=("version",),
        )

    @property
    def adjustments(self) -> str:
        """The adjustments table's name (late events booked into another period)."""
        return f"{self.prefix}_adjustments"

    def adjustments_def(self) -> TableDef:
        """The adjustments table: one row per unit the ``adjust`` late-event policy moved.

        Written in the same transaction as the unit's ledger row and rows, on
        the shard that applied them (a reshard does not move these rows).
        """
        return TableDef(
            name=self.adjustments,
            columns=(
                Column(name="event_id", kind=ColumnKind.VARCHAR, length=EVENT_ID_LENGTH),
                Column(name=SLOT_COLUMN, kind=ColumnKind.INT),
                Column(name="event_time", kind=ColumnKind.BIGINT),  # the event's own time
                Column(name="belongs_to", kind=ColumnKind.ASCII, length=16),  # its period
                Column(name="booked_in", kind=ColumnKind.ASCII, length=16),  # where its rows are
                Column(name="adjusted_at", kind=ColumnKind.BIGINT),
            ),
            primary_key=("event_id", SLOT_COLUMN),
        )

    def all_defs(self, aggregates: Sequence[AggregateTable]) -> tuple[TableDef, ...]:
        """Every table one shard holds: the system tables, then the aggregates."""
        return (
            self.ledger_def(),
            self.slots_def(),
            self.moves_def(),
            self.periods_def(),
            self.corrections_def(),
            self.declarations_def(),
            self.adjustments_def(),
            *(aggregate_table_def(t) for t in aggregates),
        )


@attrs.frozen(kw_only=True)
class LiveColumn:
    """A column as the server reports it, with the logical kinds it can hold (empty: foreign)."""

    name: str
    kinds: frozenset[ColumnKind]
    length: int | None
    nullable: bool
    declared: str


@attrs.frozen(kw_only=True)
class LiveTable:
    """A table as the server reports it."""

    name: str
    columns: tuple[LiveColumn, ...]
    primary_key: tuple[str, ...]
