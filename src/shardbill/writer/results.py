r"""What a write did, per event and per shard: the writer's results (pure data).

:meth:`shardbill.writer.AggregationWriter.write` returns a
:class:`WriteResult`. Every distinct event id of the call is in exactly one
:class:`EventState`:

``applied``
    this call applied it (all of it is now in the aggregates; this includes
    an event whose COMMIT's answer was lost but which the ledger shows this
    call committed, and an event an earlier failed call left half done that
    this call completed);
``duplicate``
    all of it was applied before this call: nothing was added;
``conflict``
    its id was applied before with other content (another amount, account,
    product...): nothing of this delivery was applied (see :attr:`WriteResult.conflicts`);
``rejected``
    refused for its content, with the reason (:meth:`WriteResult.rejection`):
    invalid, incomplete, older than the dedup horizon, or it would overflow
    a row; nothing of it was applied;
``failed``
    a shard failed past the retry budget: deliver it again (the ledger
    applies exactly what is missing). :attr:`WriteResult.failures` says why.

:attr:`WriteResult.done` (applied or duplicate) is what a stream consumer may
acknowledge; :attr:`WriteResult.retry` is what it must deliver again;
conflicts and rejections need a fix, not a retry. :attr:`WriteResult.ok` is
true only when every event is done.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

import attrs

from shardbill.errors import PeriodClosedError, RowOverflowError, ShardbillError
from shardbill.writer.planning import Plan, Rejection, Unit

__all__ = ["Conflict", "EventState", "EventTally", "Rejection", "ShardResult", "WriteResult"]


class EventState(enum.StrEnum):
    """What one write call did with one event (see the module docstring)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REJECTED = "rejected"
    FAILED = "failed"


@attrs.frozen(kw_only=True)
class Conflict:
    """A unit whose event id was applied before with different content: not applied.

    Attributes:
        event_id: the event.
        slot: the slot whose ledger row holds the earlier content (for the
            identity claim: the slot the id hashes to).
        shard: the shard that found it.
        stored_fingerprint: the fingerprint stored with the earlier delivery.
        fingerprint: this delivery's.
    """

    event_id: str
    slot: int
    shard: str
    stored_fingerprint: str
    fingerprint: str


@attrs.frozen(kw_only=True)
class ShardResult:
    """What one shard did with its part of a call (event ids sorted and unique).

    An event may appear on several shards; its state for the whole call is
    :meth:`WriteResult.state_of`.
    """

    shard: str
    applied: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    failed: tuple[str, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    error: ShardbillError | None = None
    attempts: int = 0  # the most attempts one of its transactions took
    commits: int = 0  # transactions committed (a call may run one per round)
    position: str | None = None  # the primary's GTID after its last commit (when tracked)

    @property
    def ok(self) -> bool:
        """True when the shard's transaction did not fail."""
        return self.error is None


def _frozen_states(value: Mapping[str, EventState]) -> Mapping[str, EventState]:
    return dict(value)


@attrs.frozen(kw_only=True)
class WriteResult:
    """The outcome of one :meth:`AggregationWriter.write` call.

    Attributes:
        events: every distinct event id of the call -> its state.
        shards: per shard touched, what its transactions did.
        rejected: the rejected events with their reasons.
        conflicts: the conflicting units found (one or more per conflicting event).
        failures: failed event id -> the error that made it fail.
        folded: exact repeats inside the call folded into their first copy.
        adjusted: the events this call applied in another period than their
            own (the ``adjust`` late-event policy) -> the period they were
            booked in, ``YYYY-MM`` (their own is the period of their time).
        positions: with ``WriterSettings(track_positions=True)``: per shard
            that committed, the position a replica must reach to show this
            call's writes (a MariaDB GTID), or ``None`` when the server gives
            none (SQLite, MySQL, no binary log). ``None`` when not tracked.
            Pass the result as ``Reader.totals(..., replica=True, after=result)``.
    """

    events: Mapping[str, EventState] = attrs.field(factory=dict, converter=_frozen_states)
    shards: Mapping[str, ShardResult] = attrs.field(factory=dict)
    rejected: tuple[Rejection, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    failures: Mapping[str, ShardbillError] = attrs.field(factory=dict)
    folded: int = 0
    positions: Mapping[str, str | None] | None = None
    adjusted: Mapping[str, str] = attrs.field(factory=dict)

    def _in(self, state: EventState) -> frozenset[str]:
        return frozenset(e for e, s in self.events.items() if s is state)

    @property
    def ok(self) -> bool:
        """True when every event of the call is done (applied or duplicate)."""
        return all(
            s is EventState.APPLIED or s is EventState.DUPLICATE for s in self.events.values()
        )

    @property
    def applied_events(self) -> frozenset[str]:
        """Events this call applied."""
        return self._in(EventState.APPLIED)

    @property
    def duplicate_events(self) -> frozenset[str]:
        """Events applied before this call; nothing added."""
        return self._in(EventState.DUPLICATE)

    @property
    def conflict_events(self) -> frozenset[str]:
        """Events whose id was applied before with other content; nothing applied."""
        return self._in(EventState.CONFLICT)

    @property
    def rejected_events(self) -> frozenset[str]:
        """Events refused for their content, with a reason; nothing applied."""
        return self._in(EventState.REJECTED)

    @property
    def failed_events(self) -> frozenset[str]:
        """Events to deliver again: a shard failed past the retry budget."""
        return self._in(EventState.FAILED)

    @property
    def done(self) -> frozenset[str]:
        """Applied or duplicate: what a stream consumer may acknowledge."""
        return frozenset(
            e
            for e, s in self.events.items()
            if s is EventState.APPLIED or s is EventState.DUPLICATE
        )

    @property
    def retry(self) -> frozenset[str]:
        """What to deliver again (the same as :attr:`failed_events`)."""
        return self.failed_events

    def state_of(self, event_id: str) -> EventState:
        """The state of one event of this call.

        Raises:
            KeyError: the event was not part of the call.
        """
        return self.events[event_id]

    def rejection(self, event_id: str) -> Rejection:
        """Why ``event_id`` was rejected.

        Raises:
            KeyError: the event was not rejected by this call.
        """
        for item in self.rejected:
            if item.event_id == event_id:
                return item
        raise KeyError(event_id)


class EventTally:
    """One write call's bookkeeping, unit by unit, that decides each event's state (pure).

    The writer reports every unit's fate here as its transactions finish;
    :meth:`result` then puts every event of the call in exactly one state:
    conflict if any unit conflicted; rejected if refused with nothing of it
    applied (failed instead when some of its money was applied already, since
    it can only be completed, never undone); failed if a unit failed or was
    never attempted; applied if all its units are in and this call applied
    one; duplicate if all were in before.
    """

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self._units: dict[str, int] = {}
        for unit in plan.units:
            self._units[unit.event_id] = self._units.get(unit.event_id, 0) + 1
        self._applied: dict[str, int] = {}
        self._duplicate: dict[str, int] = {}
        self._money: set[str] = set()  # events with a unit holding rows applied (now or before)
        self._home: set[str] = set()  # events whose identity claim is in
        self._claimed_before: set[str] = set()  # events whose claim was in before this call
        self._conflicts: list[Conflict] = []
        self._conflicting: set[str] = set()
        self._rejected: dict[str, Rejection] = {r.event_id: r for r in plan.rejected}
        self._late: dict[str, Rejection] = {}
        self._failures: dict[str, ShardbillError] = {}
        self._booked: dict[str, str] = {}  # events this call booked in another period

    def applied(self, units: Iterable[Unit]) -> None:
        """These units were applied by this call."""
        units = tuple(units)
        self._count(units, self._applied)
        self._booked.update((u.event_id, u.booked) for u in units if u.booked is not None)

    def duplicates(self, units: Iterable[Unit]) -> None:
        """These units were applied before this call."""
        units = tuple(units)
        self._count(units, self._duplicate)
        self._claimed_before.update(u.event_id for u in units if u.home)

    @property
    def units(self) -> tuple[Unit, ...]:
        """Every unit of the call's plan."""
        return self._plan.units

    def unsure(self) -> frozenset[str]:
        """Events refused in a transaction with none of their money seen by this call,
        whose identity claim was in before it.

        An earlier call got past such an event's claim, so a part of it may be
        applied on a shard this call never asked (a reshard can put the claim
        with the refused part). The writer reads those shards' ledgers and
        reports what it finds (or cannot read) through :meth:`maybe_applied`.
        """
        stopped = self._conflicting | self._failures.keys() | self._rejected.keys()
        return frozenset(
            e
            for e in self._late
            if e in self._claimed_before and e not in self._money and e not in stopped
        )

    def maybe_applied(self, events: Iterable[str]) -> None:
        """Some money of these events is (or may be) applied already: they fail, never reject."""
        self._money.update(events)

    def _count(self, units: Iterable[Unit], into: dict[str, int]) -> None:
        for unit in units:
            into[unit.event_id] = into.get(unit.event_id, 0) + 1
            if unit.rows:
                self._money.add(unit.event_id)
            if unit.home:
                self._home.add(unit.event_id)

    def conflict(self, conflict: Conflict) -> None:
        """A unit of ``conflict.event_id`` was applied before with other content."""
        self._conflicts.append(conflict)
        self._conflicting.add(conflict.event_id)

    def withheld(self, rejections: Mapping[str, Rejection]) -> None:
        """Events refused in a transaction (too late, overflow); nothing of them applied there."""
        self._late.update(rejections)

    def failed(self, units: Iterable[Unit], error: ShardbillError) -> None:
        """These units were not applied: their shard failed with ``error``."""
        for unit in units:
            self._failures.setdefault(unit.event_id, error)

    def released(self) -> frozenset[str]:
        """Events refused in a transaction with none of their money in, whose claim is in.

        Such an event is rejected, and a rejected event changes nothing: the
        writer deletes its identity claim, so that the corrected event can be
        delivered under the same id.
        """
        stopped = self._conflicting | self._failures.keys() | self._rejected.keys()
        return frozenset(
            e for e in self._late if e in self._home and e not in self._money and e not in stopped
        )

    def confirmed(self) -> frozenset[str]:
        """Events whose identity claim is in and that nothing has stopped so far."""
        stopped = self._conflicting | self._late.keys() | self._failures.keys()
        return frozenset(self._home - stopped)

    def result(self, shards: Mapping[str, ShardResult], folded: int) -> WriteResult:
        """Every event's state, with the reasons; see the class docstring."""
        states: dict[str, EventState] = {}
        rejected = dict(self._rejected)
        failures: dict[str, ShardbillError] = {}
        for event_id in self._plan.events:
            if event_id in self._conflicting:
                states[event_id] = EventState.CONFLICT
            elif event_id in rejected:
                states[event_id] = EventState.REJECTED
            elif event_id in self._late:
                refusal = self._late[event_id]
                if event_id in self._money:
                    states[event_id] = EventState.FAILED
                    failures[event_id] = _blocked(refusal)
                else:
                    states[event_id] = EventState.REJECTED
                    rejected[event_id] = refusal
            elif event_id in self._failures:
                states[event_id] = EventState.FAILED
                failures[event_id] = self._failures[event_id]
            else:
                applied = self._applied.get(event_id, 0)
                done = applied + self._duplicate.get(event_id, 0)
                if done < self._units.get(event_id, 0):
                    states[event_id] = EventState.FAILED
                    failures[event_id] = ShardbillError(
                        f"event {event_id!r} was not completed (a part was never attempted); "
                        "deliver it again: the ledger applies exactly what is missing"
                    )
                elif applied or not self._units.get(event_id):
                    states[event_id] = EventState.APPLIED
                else:
                    states[event_id] = EventState.DUPLICATE
        return WriteResult(
            events=states,
            shards=shards,
            rejected=tuple(rejected[e] for e in sorted(rejected)),
            conflicts=tuple(self._conflicts),
            failures=failures,
            folded=folded,
            adjusted={
                e: p for e, p in sorted(self._booked.items()) if states[e] is EventState.APPLIED
            },
        )


def _blocked(refusal: Rejection) -> ShardbillError:
    """The failure of an event refused after some of its money was applied: finish it later."""
    message = (
        f"{refusal.reason} Part of this event was applied already, so it cannot be rejected: "
        "it stays to be completed (fix the cause, then deliver it again)"
    )
    if refusal.error == "RowOverflowError":
        return RowOverflowError(message)
    if refusal.error == "PeriodClosedError":
        return PeriodClosedError(message)
    return ShardbillError(message)
