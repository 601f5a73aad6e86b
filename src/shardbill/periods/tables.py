"""The per-shard ``shardbill_periods`` table (pure): which periods a shard holds closing or closed.

One row per period a close has reached on the shard (``state`` ``closing``
or ``closed``, who closed it, when, why), and one *gate* row (period ``*``)
that every write transaction with new units reads with a shared lock and a
close updates exclusively, so that a close racing with a writer either waits
for it or is waited for: a write commits before the close or is judged by
it, never both (the same argument as the slot fence). The table's
definition is :meth:`shardbill.tables.SystemTables.periods_def`.
"""

from __future__ import annotations

import enum

from shardbill.tables import SystemTables, TableDef

__all__ = ["GATE_ROW", "PeriodState", "periods_table_def"]

#: The period key of the gate row every writer locks shared and a close locks exclusively.
GATE_ROW = "*"


class PeriodState(enum.StrEnum):
    """A row's state in ``shardbill_periods`` (a period with no row is open there).

    ``closing`` is the first phase of a close: the shard takes no new event of
    the period (no new identity claim) but still takes the remaining parts of
    events already claimed, so an event spread over shards is never half in a
    closed period. ``closed`` takes nothing new of the period.
    """

    GATE = "gate"
    CLOSING = "closing"
    CLOSED = "closed"


#: How far along a close each state is (a close never moves a shard backwards).
RANK = {PeriodState.CLOSING: 1, PeriodState.CLOSED: 2}


def periods_table_def(prefix: str = "shardbill") -> TableDef:
    """The logical definition of ``<prefix>_periods``."""
    return SystemTables(prefix=prefix).periods_def()
