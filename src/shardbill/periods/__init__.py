"""The month-end: billing periods, their close, and the per-shard table that records it (issue 20).

Only the pure parts exist so far: :mod:`shardbill.periods.calendar` (what a
period is, and which period an event belongs to) and
:mod:`shardbill.periods.tables` (the logical definition of the per-shard
``shardbill_periods`` table the close will write and the writer will check),
and :mod:`shardbill.periods.gate` (the pure refusal of new units in closed periods).
"""

from shardbill.periods.calendar import Period, period_of
from shardbill.periods.tables import GATE_ROW, PeriodState, periods_table_def

__all__ = ["GATE_ROW", "Period", "PeriodState", "period_of", "periods_table_def"]
