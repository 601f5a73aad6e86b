"""The per-shard ``shardbill_periods`` table (pure): which periods a shard holds closed.

One row per closed period (``state`` = ``closed``, who closed it, when, why),
and one *gate* row (period ``*``) that every write transaction will read with
a shared lock and a close will update exclusively, so that a close racing with
a writer either waits for it or is waited for: a write commits before the
close or is refused by it, never both (the same argument as the slot fence).
"""

from __future__ import annotations

import enum

from shardbill.tables import Column, ColumnKind, TableDef

__all__ = ["GATE_ROW", "PeriodState", "periods_table_def"]

#: The period key of the gate row every writer locks shared and a close locks exclusively.
GATE_ROW = "*"


class PeriodState(enum.StrEnum):
    """A row's state in ``shardbill_periods``."""

    GATE = "gate"
    CLOSED = "closed"


def periods_table_def(prefix: str = "shardbill") -> TableDef:
    """The logical definition of ``<prefix>_periods``."""
    return TableDef(
        name=f"{prefix}_periods",
        columns=(
            Column(name="period", kind=ColumnKind.ASCII, length=16),
            Column(name="state", kind=ColumnKind.ASCII, length=16),
            # Raised by every close: a writer caches the closed set per generation.
            Column(name="generation", kind=ColumnKind.BIGINT),
            Column(name="closed_at", kind=ColumnKind.BIGINT, nullable=True),
            Column(name="closed_by", kind=ColumnKind.VARCHAR, length=64, nullable=True),
            Column(name="reason", kind=ColumnKind.VARCHAR, length=255, nullable=True),
        ),
        primary_key=("period",),
    )
