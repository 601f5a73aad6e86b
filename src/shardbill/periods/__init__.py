"""The month-end: billing periods and their close (issue 20).

* :mod:`shardbill.periods.months` (pure): what a period is (a UTC month),
  and which period an event time belongs to;
* :mod:`shardbill.periods.tables` (pure): the per-shard ``shardbill_periods``
  table's states and its gate row;
* :mod:`shardbill.periods.gate` (pure): the refusal of new units of closing
  and closed periods, which the writer runs in every write transaction;
* :mod:`shardbill.periods.store`: reading and changing one shard's rows;
* :mod:`shardbill.periods.close`: :class:`PeriodCloser`, the two-phase close
  on every shard, and the status of a period (``shardbill period``).

The late-event policies (``refuse``, ``adjust``) are :mod:`shardbill.periods.gate` (pure);
:func:`read_adjustments` reads what ``adjust`` booked. Corrections (cancel,
amend) are :mod:`shardbill.corrections`; statements of a closed period are
:mod:`shardbill.statements`.

Level: above the map stores, below the writer, which reads the gate in every
transaction (``tests/test_layers.py``).
"""

from shardbill.periods.close import DEFAULT_DRAIN_SECONDS, PeriodCloser, PeriodStatus, fleet_shards
from shardbill.periods.months import Period, period_of
from shardbill.periods.store import read_adjustments
from shardbill.periods.tables import GATE_ROW, PeriodState, periods_table_def

__all__ = [
    "DEFAULT_DRAIN_SECONDS",
    "GATE_ROW",
    "Period",
    "PeriodCloser",
    "PeriodState",
    "PeriodStatus",
    "fleet_shards",
    "period_of",
    "periods_table_def",
    "read_adjustments",
]
