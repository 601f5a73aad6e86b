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

The late-event policy (``WriterSettings.late_events``, ``[writer]
late_events`` in the configuration file) says what such an event gets:

* ``refuse`` (the default, :func:`withhold_closed`): it is rejected with
  its reason, nothing of it applied;
* ``adjust`` (:func:`judge_late` with a :class:`Rebooker`): where ``refuse``
  would refuse an event *whole* (its identity claim is new on this shard, or
  the event has no claim under ``IdScope.PER_ACCOUNT``), its rows are moved
  to the first period after its own that this shard holds neither closing
  nor closed (the *booking period*): each date or month key column takes
  the booking period's first day. The units keep the event's own time and
  fingerprint, so the ledger still knows the delivered content (a
  redelivery is a duplicate, whatever happened to the booking period
  since), and carry the booking period (``Unit.booked``), which the
  writer records in ``shardbill_adjustments`` in the same transaction and
  gives the event's other parts on other shards, so an event is booked in
  one period. A part already booked is judged by its booking period. What
  ``adjust`` never moves: the remaining parts of an event that began in its
  period (refused as under ``refuse``: the event stays to be completed), and
  corrections (their rows must be in the corrected event's period).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence, Set

from shardbill.errors import ConfigurationError
from shardbill.periods.months import Period, period_of
from shardbill.tables.aggregates import (
    Account,
    AggregateTable,
    Currency,
    Day,
    Dimension,
    Month,
    Product,
)
from shardbill.writer.planning import Rejection, Unit

__all__ = [
    "ADJUST",
    "LATE_EVENT_POLICIES",
    "REFUSE",
    "Rebooker",
    "booking_period",
    "check_policy",
    "judge_late",
    "withhold_closed",
]

#: The default late-event policy: an event of a closed period is refused with its reason.
REFUSE = "refuse"
#: The late-event policy that books an event of a closed period into the first open one.
ADJUST = "adjust"
#: Every late-event policy, the default first.
LATE_EVENT_POLICIES = (REFUSE, ADJUST)

# A correction's ledger id holds this (shardbill.corrections.records.SEPARATOR, kept equal by
# tests/periods/test_adjust.py; imported from there it would make an import cycle).
_CORRECTION_SEPARATOR = "\x1f"


def check_policy(value: object, *, key: str = "late_events") -> str:
    """``value`` if it is a late-event policy.

    Raises:
        ConfigurationError: it is not; the message names ``key``, the value and the choices.
    """
    if not isinstance(value, str) or value not in LATE_EVENT_POLICIES:
        raise ConfigurationError(
            f"{key!r} must be 'refuse' or 'adjust', got {value!r}: 'refuse' (the default) "
            "rejects an event of a closing or closed period with its reason, 'adjust' books "
            "it into the first open period and records the period it belongs to"
        )
    return value


class Rebooker:
    """Moves a unit's rows to a booking period: every Day or Month key becomes its first day.

    Built from the aggregate tables; only key projections whose dependence on
    the event's time is known can be moved (account, product, currency,
    dimension: none; day, month: the time).

    Raises:
        ConfigurationError: a table has a key projection of another kind.
    """

    def __init__(self, tables: Sequence[AggregateTable]) -> None:
        positions: list[frozenset[int]] = []
        for table in tables:
            found: set[int] = set()
            for i, column in enumerate(table.keys):
                if isinstance(column.projection, Day | Month):
                    found.add(i)
                elif not isinstance(column.projection, Account | Product | Currency | Dimension):
                    raise ConfigurationError(
                        f"late_events 'adjust': table {table.name!r} key column "
                        f"{column.name!r} has projection {column.projection!r}, which the "
                        "adjust policy cannot move to another period (it moves day and month "
                        "keys); use late_events 'refuse' with this table"
                    )
            positions.append(frozenset(found))
        self._positions = tuple(positions)

    def rebook(self, unit: Unit, period: Period) -> Unit:
        """``unit`` with its rows in ``period`` (same event, slot, time and fingerprint; the
        rows the fingerprint covers kept as ``whole``)."""
        first = dt.date(period.year, period.month, 1)
        rows = []
        for index, key, deltas in unit.rows:
            places = self._positions[index]
            moved = tuple(first if i in places else v for i, v in enumerate(key)) if places else key
            rows.append((index, moved, deltas))
        # The fingerprint still covers the delivered rows: a replay judged under an older
        # declaration recomputes it from Unit.signed.
        return unit._replace(rows=tuple(rows), whole=unit.signed, booked=str(period))


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


def booking_period(period: Period, closed: Set[str], closing: Set[str]) -> Period:
    """The first period after ``period`` that is neither closed nor closing (on one shard)."""
    booked = period.next()
    while str(booked) in closed or str(booked) in closing:
        booked = booked.next()
    return booked


def judge_late(
    new: Iterable[Unit],
    closed: Set[str],
    closing: Set[str] = frozenset(),
    *,
    shard: str | None = None,
    rebooker: Rebooker | None = None,
    claims: bool = True,
) -> tuple[list[Unit], dict[str, Rejection]]:
    """The period gate under the policy: ``refuse`` without a ``rebooker``, else ``adjust``.

    Under ``adjust`` (see the module docstring) an event that ``refuse``
    would refuse whole is kept, its units moved to the booking period; a
    unit booked already (a later part of an adjusted event) is kept unless
    its booking period is closed here too.

    Args:
        new: the transaction's new units.
        closed: the closed periods, as ``YYYY-MM`` text.
        closing: the periods being closed (first phase), as ``YYYY-MM`` text.
        shard: the shard judging (named in the reasons).
        rebooker: the tables' :class:`Rebooker` (``adjust``), or None (``refuse``).
        claims: whether events have identity claims (``IdScope.GLOBAL``).

    Returns:
        The units to apply (moved ones replaced), and event id -> its rejection.
    """
    if rebooker is None:
        return withhold_closed(new, closed, closing, shard=shard)
    units = list(new)
    if not closed and not closing:
        return units, {}
    where = f" on shard {shard!r}" if shard is not None else ""
    groups: dict[str, list[Unit]] = {}
    for unit in units:
        groups.setdefault(unit.event_id, []).append(unit)
    moved: dict[str, Period] = {}
    refused: dict[str, Rejection] = {}
    for event_id, group in groups.items():
        booked = next((u.booked for u in group if u.booked is not None), None)
        first = group[0]
        if booked is not None:
            if booked in closed:
                refused[event_id] = Rejection(
                    event_id=event_id,
                    reason=(
                        f"event {event_id!r} (time {_iso(first.time)}) was booked into period "
                        f"{booked} by the late-event policy 'adjust', which is closed{where} "
                        "too; its aggregates are final, so this part is not applied"
                    ),
                    error="PeriodClosedError",
                )
            continue
        period = period_of(first.time)
        name = str(period)
        home = any(u.home for u in group)
        if name in closed:
            state = "closed"
        elif name in closing and home:
            state = "being closed"
        else:
            continue
        if _CORRECTION_SEPARATOR in event_id:
            why = "a correction is never moved out of the corrected event's period"
        elif claims and not home:
            why = (
                "the event began in its period before the close (its identity claim is in), "
                "so its remaining parts cannot be moved to another period"
            )
        else:
            moved[event_id] = booking_period(period, closed, closing)
            continue
        refused[event_id] = Rejection(
            event_id=event_id,
            reason=(
                f"event {event_id!r} (time {_iso(first.time)}) belongs to period {name}, which "
                f"is {state}{where}; late-event policy 'adjust': {why}; its aggregates are "
                "final, so the event is not applied; book it as a correction in an open "
                "period instead"
            ),
            error="PeriodClosedError",
        )
    return [
        rebooker.rebook(u, moved[u.event_id]) if u.event_id in moved else u
        for u in units
        if u.event_id not in refused
    ], refused
