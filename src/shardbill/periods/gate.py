"""Refusing new units of events in closing or closed periods (pure; a step of each write).

The writer calls :func:`withhold_closed` inside each shard transaction that
has new units, after the ledger check, with the periods that shard holds
closing or closed (read under the gate row's shared lock, see
:mod:`shardbill.periods.store`). Only *new* units are judged: a redelivery
of an event applied before the close stays a duplicate, so a stream
consumer may still acknowledge it.

The two phases of a close (:mod:`shardbill.periods.close`):

* in a **closing** period, an event whose *identity claim* is new here (a
  new home unit: the event has not begun anywhere) is refused; the other
  parts of events whose claim committed already (round two of the writer,
  or a redelivery completing an event) are still applied;
* in a **closed** period, every new unit is refused.

Every shard is closing before any shard is closed, so no event of the
period begins once any shard refuses its parts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Set

from shardbill.periods.months import period_of
from shardbill.writer.planning import Rejection, Unit

__all__ = ["REFUSE", "withhold_closed"]

#: The late-event policy built so far: an event of a closed period is refused with its reason.
REFUSE = "refuse"


def _iso(moment: int) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def withhold_closed(
    new: Iterable[Unit],
    closed: Set[str],
    closing: Set[str] = frozenset(),
    *,
    shard: str | None = None,
    policy: str = REFUSE,
) -> tuple[list[Unit], dict[str, Rejection]]:
    """Split ``new`` units into those that may be applied and the events refused.

    An event is judged whole: if any of its new units falls in a closed
    period (or, in a closing period, the event's identity claim is among
    them), none of its new units is kept, and the event gets one rejection
    naming the event, its period, the late-event policy and what to do.

    Args:
        new: the transaction's new units.
        closed: the closed periods, as ``YYYY-MM`` text.
        closing: the periods being closed (first phase), as ``YYYY-MM`` text.
        shard: the shard judging (named in the reason).
        policy: the late-event policy (named in the reason).

    Returns:
        The units to apply, and event id -> its rejection.
    """
    units = list(new)
    if not closed and not closing:
        return units, {}
    where = f" on shard {shard!r}" if shard is not None else ""
    refused: dict[str, Rejection] = {}
    for unit in units:
        if unit.event_id in refused:
            continue
        period = str(period_of(unit.time))
        if period in closed:
            state = "closed"
        elif period in closing and unit.home:
            state = "being closed"
        else:
            continue
        refused[unit.event_id] = Rejection(
            event_id=unit.event_id,
            reason=(
                f"event {unit.event_id!r} (time {_iso(unit.time)}) belongs to period {period}, "
                f"which is {state}{where}; late-event policy {policy!r}: its aggregates are "
                "final, so the event is not applied; book it as a correction in an open "
                "period instead"
            ),
            error="PeriodClosedError",
        )
    return [u for u in units if u.event_id not in refused], refused
