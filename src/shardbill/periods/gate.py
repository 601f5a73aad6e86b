"""Refusing the new units of events in a closed period (pure; the writer's in-transaction step).

The writer will call :func:`withhold_closed` inside each shard transaction,
after the ledger check, with the periods that shard holds closed (read under
the gate row's shared lock, see :mod:`shardbill.periods.tables`). Only *new*
units are refused: a redelivery of an event applied before the close stays a
duplicate, so a stream consumer may still acknowledge it.
"""

from __future__ import annotations

from collections.abc import Iterable, Set

from shardbill.batching import Rejection, Unit
from shardbill.periods.calendar import period_of

__all__ = ["withhold_closed"]


def withhold_closed(
    new: Iterable[Unit], closed: Set[str]
) -> tuple[list[Unit], dict[str, Rejection]]:
    """Split ``new`` units into those that may be applied and the events refused.

    An event is judged whole: if any of its new units falls in a closed
    period, none of its new units is kept, and the event gets one rejection
    naming the event, its period and what to do.

    Args:
        new: the transaction's new units.
        closed: the closed periods, as ``YYYY-MM`` text.

    Returns:
        The units to apply, and event id -> its rejection.
    """
    units = list(new)
    if not closed:
        return units, {}
    refused: dict[str, Rejection] = {}
    for unit in units:
        if unit.event_id in refused:
            continue
        period = str(period_of(unit.time))
        if period in closed:
            refused[unit.event_id] = Rejection(
                event_id=unit.event_id,
                reason=(
                    f"event {unit.event_id!r} (time {unit.time}) belongs to period {period}, "
                    "which is closed: its aggregates are final; book it as a correction in an "
                    "open period instead"
                ),
                error="PeriodClosedError",
            )
    return [u for u in units if u.event_id not in refused], refused
