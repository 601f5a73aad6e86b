"""Cancel and amend applied events, each correction exactly once (``shardbill correct``).

:class:`Corrector` corrects one event at a time, in five steps:

1. **Find the event's history.** Every shard's ``shardbill_corrections``
   rows of the event (a record stays where it was written, so all shards
   are read). A record with this correction id is a repeat: a duplicate if
   it is applied, resumed if it is still pending.
2. **Know the exact charges applied.** The event's content as ingested
   (given by the caller) is priced again and cut into units as the writer
   would (:meth:`~shardbill.AggregationWriter.plan_of`); each unit's
   fingerprint must be in the ledger (any shard): then those units, and
   nothing else, are what the event added. Each earlier correction's units
   are checked the same way under its ledger id, so the current revision's
   content (kept in its record) is known to be what the aggregates hold.
3. **The deltas.** The current content's row deltas negated (cancel), or
   the new content's minus the current's (amend), per slot; only sums can
   be taken back.
4. **Record, then write.** A *pending* record on the event's home shard
   (primary key: event and revision, so a concurrent correction of the same
   revision there fails to insert), then the deltas through the writer
   (:meth:`~shardbill.AggregationWriter.write_rows`) under the ledger id
   ``(event, revision)``: the writer's exactly-once machinery (ledger,
   identity claim, fence, period gate, retries) covers the correction as it
   covers any event, and a second, different correction of the same
   revision conflicts there, wherever its record went.
5. **Settle.** Applied: the record is marked applied. Refused, with none of
   its units in the ledger: the record is deleted. Failed (a shard down):
   the record stays pending; running the same correction again finishes it.

The argument is in ``docs/explanation/exactly-once.md`` (corrections).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import attrs

from shardbill.corrections.records import (
    CorrectionKind,
    CorrectionRecord,
    EventFilter,
    RecordState,
    event_to_text,
    irreversible,
    ledger_id,
    row_deltas,
    shown_id,
)
from shardbill.corrections.store import (
    RecordElsewhere,
    declarations_on,
    delete_pending,
    insert_record,
    ledger_prints,
    mark_applied,
    period_states,
    read_records,
)
from shardbill.declarations import ReplayJudge
from shardbill.errors import InvalidInputError, ShardbillError
from shardbill.mapstore.base import MapStore
from shardbill.periods.close import fleet_shards
from shardbill.periods.months import period_of
from shardbill.periods.store import read_adjustments
from shardbill.providers.base import ConnectionProvider
from shardbill.retry import is_retryable
from shardbill.rules import PricedEvent, RulesEngine, UsageEvent
from shardbill.tables import EVENT_ID_LENGTH
from shardbill.writer import AggregationWriter
from shardbill.writer.extraction import RowDelta
from shardbill.writer.planning import IdScope, Unit, plan_rows
from shardbill.writer.results import EventState, WriteResult

__all__ = ["CorrectionResult", "Corrector"]

log = logging.getLogger(__name__)

Outcome = Literal["applied", "duplicate", "refused", "failed"]


@attrs.frozen(kw_only=True)
class CorrectionResult:
    """What one correction did.

    Attributes:
        correction_id: the caller's id of the correction.
        event_id: the corrected event.
        kind: cancel or amend.
        state: ``applied`` (now, exactly once), ``duplicate`` (applied
            before: nothing done), ``refused`` (nothing changed; ``reason``
            says why and what to do) or ``failed`` (a shard failed: run the
            same correction again, it finishes what is missing).
        revision: the revision the correction creates (None when refused early).
        ledger_id: its ledger id, the separator shown as ``~`` (None when refused early).
        reason: why it was refused or failed.
    """

    correction_id: str
    event_id: str
    kind: CorrectionKind
    state: Outcome
    revision: int | None = None
    ledger_id: str | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True when the correction is in the aggregates (applied now or before)."""
        return self.state in ("applied", "duplicate")

    def to_dict(self) -> dict[str, object]:
        """The result as JSON-ready data."""
        return {
            "correction_id": self.correction_id,
            "event_id": self.event_id,
            "kind": self.kind.value,
            "state": self.state,
            "revision": self.revision,
            "ledger_id": self.ledger_id,
            "reason": self.reason,
        }


@attrs.frozen(kw_only=True)
class _Request:
    """One correction as the caller asked for it."""

    kind: CorrectionKind
    event_id: str
    given: UsageEvent | None  # the content as ingested, or as last amended
    new: UsageEvent | None  # an amend's new content
    correction_id: str
    reason: str
    by: str


class _Refused(Exception):  # noqa: N818 - a control-flow signal, never raised to callers
    """A correction is refused: the reason is the message."""


class _HomeBusy(Exception):  # noqa: N818 - a control-flow signal, never raised to callers
    """The event's home slot stayed in motion past the wait: the correction failed (retry)."""


#: How many forwarding addresses one record write follows before it waits and reloads.
_HOPS = 8

#: Passes over the shards of one read of records or ledger rows (see Corrector.records).
READ_PASSES = 4


def _key(record: CorrectionRecord) -> tuple[str, int, str]:
    return (record.event_id, record.revision, record.correction_id)


def _keys(records: Sequence[CorrectionRecord]) -> set[tuple[str, int, str, str]]:
    return {(*_key(r), r.state.value) for r in records}


def _text(field: str, value: object, length: int, *, empty: bool = False) -> str:
    if type(value) is not str or (not value.strip() and not empty) or len(value) > length:
        raise InvalidInputError(
            f"{field!r} must be {'' if empty else 'non-empty '}text of at most {length} "
            f"characters: {value!r}"
        )
    if not value.isprintable():
        raise InvalidInputError(f"{field!r} must be printable text: {value!r}")
    return value


class Corrector:
    """Cancels and amends applied events, each correction exactly once, with an audit trail.

    Args:
        writer: the writer the events were written with (its tables, shard
            key, id scope and system tables); the corrections are written
            through it.
        engine: the rules engine, with the price book the events were priced with.
        provider: lends connections to the shards (the writer's).
        map_store: the map store, when the writer loads from one: then the
            shards of an unfinished reshard are read too (a record or a
            ledger row may be on a shard the reshard adds before it is
            published).
        clock: Unix time, recorded as each correction's time.
        home_wait: seconds a record write waits for its event's home slot
            while a reshard moves that slot's records (normally a moment
            after the reshard fences it); past that the correction fails
            and running it again finishes it.
        sleep: waits between the runs of a correction that met a transient
            failure (a cut connection, a lost COMMIT): it is run again, within
            the writer's retry budget, before the error is raised.

    Example:
        >>> corrector = Corrector(writer=writer, engine=engine, provider=p)  # doctest: +SKIP
        >>> done = corrector.cancel(event, correction_id="fix-1", reason="test")  # doctest: +SKIP
        >>> done.state  # doctest: +SKIP
        'applied'
    """

    def __init__(
        self,
        *,
        writer: AggregationWriter,
        engine: RulesEngine,
        provider: ConnectionProvider,
        map_store: MapStore | None = None,
        clock: Callable[[], float] = time.time,
        home_wait: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._writer = writer
        self._store = map_store
        self._engine = engine
        self._provider = provider
        self._clock = clock
        self._home_wait = home_wait
        self._sleep = sleep
        self._system = writer.settings.system_tables

    # ------------------------------------------------------------------ public

    def cancel(
        self,
        event: UsageEvent | str,
        *,
        correction_id: str,
        reason: str,
        by: str = "shardbill",
    ) -> CorrectionResult:
        """Reverse an applied event's exact charges, once.

        Args:
            event: the event as it was ingested (or as its last amend made
                it), or only its id when it has been corrected before (the
                current content is in its record).
            correction_id: this correction's id (a repeat is a duplicate).
            reason: why (recorded).
            by: who (recorded).
        """
        event_id = event if isinstance(event, str) else event.event_id
        given = None if isinstance(event, str) else event
        return self._run(
            _Request(
                kind=CorrectionKind.CANCEL,
                event_id=event_id,
                given=given,
                new=None,
                correction_id=correction_id,
                reason=reason,
                by=by,
            )
        )

    def amend(
        self,
        new: UsageEvent,
        *,
        correction_id: str,
        reason: str,
        by: str = "shardbill",
        original: UsageEvent | None = None,
    ) -> CorrectionResult:
        """Replace an applied event's content with ``new``: the difference is applied once.

        Args:
            new: the event's new content (same id; a time in the same period).
            correction_id: this correction's id (a repeat is a duplicate).
            reason: why (recorded).
            by: who (recorded).
            original: the event as it was ingested (or as its last amend made
                it); needed unless the event has been corrected before.
        """
        if not isinstance(new, UsageEvent):
            raise InvalidInputError(f"'new' must be a UsageEvent: {new!r}")
        return self._run(
            _Request(
                kind=CorrectionKind.AMEND,
                event_id=new.event_id,
                given=original,
                new=new,
                correction_id=correction_id,
                reason=reason,
                by=by,
            )
        )

    def cancel_matching(
        self,
        events: Iterable[UsageEvent],
        where: EventFilter,
        *,
        correction_id: str,
        reason: str,
        by: str = "shardbill",
    ) -> list[CorrectionResult]:
        """Cancel each event of ``events`` (as ingested) that ``where`` takes: a correction
        by filter (account, product, time range) over a supplied events file.

        Each event is cancelled as :meth:`cancel` does, under ``correction_id``
        (so running the same filter again is a duplicate for each).
        """
        return [
            self.cancel(event, correction_id=correction_id, reason=reason, by=by)
            for event in where.select(events)
        ]

    def records(self, event_ids: Sequence[str] | None = None) -> list[CorrectionRecord]:
        """The correction records (pending and applied) on every shard, by event and revision.

        The shards are read one after the other, so a record a reshard moves meanwhile
        (copied to a shard already read, deleted from one read next) can be on neither
        when each is read: they are read again until two passes agree (at most
        :data:`READ_PASSES`; then a record seen in an earlier pass only is kept too).
        """
        passes = [read_records(self._provider, self.shards(), self._system, event_ids=event_ids)]
        while len(passes) < READ_PASSES:
            passes.append(
                read_records(self._provider, self.shards(), self._system, event_ids=event_ids)
            )
            if _keys(passes[-1]) == _keys(passes[-2]):
                return passes[-1]
        latest = {_key(r): r for r in passes[-1]}
        for earlier in passes[:-1]:
            for record in earlier:
                latest.setdefault(_key(record), record)
        return sorted(latest.values(), key=lambda r: (r.event_id, r.revision, r.shard))

    def _prints(self, units: Sequence[Unit]) -> dict[tuple[str, int], str]:
        """(event id, slot) -> the ledger's fingerprint, for ``units``, on any shard.

        Read again while some are missing (at most :data:`READ_PASSES` passes): a
        ledger row a reshard moves between two shards' reads is on neither when each
        is read (simulation seed 30377), but on one of them at every moment.
        """
        pairs = [(u.slot, u.event_id) for u in units]
        found: dict[tuple[str, int], str] = {}
        for _ in range(READ_PASSES):
            found.update(ledger_prints(self._provider, self.shards(), self._system, pairs))
            if all((event_id, slot) in found for slot, event_id in pairs):
                break
        return found

    def shards(self) -> tuple[str, ...]:
        """Every shard a correction reads: the writer's known shards, and an unfinished
        reshard's (with ``map_store``)."""
        names = set(self._writer.known_shards())
        if self._store is not None:
            names.update(fleet_shards(self._store))
        return tuple(sorted(names))

    # ------------------------------------------------------------------ steps

    def _run(self, request: _Request) -> CorrectionResult:
        _text("correction_id", request.correction_id, EVENT_ID_LENGTH)
        _text("reason", request.reason, 255)
        _text("by", request.by, 64)
        given, event_id = request.given, request.event_id
        if given is not None and not isinstance(given, UsageEvent):
            raise InvalidInputError(f"the event to correct must be a UsageEvent: {given!r}")
        if given is not None and given.event_id != event_id:
            raise InvalidInputError(
                f"'original' is event {given.event_id!r} but the correction is of {event_id!r}; "
                "give the same event's content"
            )
        # A transient failure (a connection cut, a lost COMMIT, a lock wait) runs the whole
        # correction again: a correction is safe to run again by design (its record is
        # resumed, its ledger id applies it once), within the writer's retry budget.
        delays = self._writer.settings.retry.delays()
        while True:
            try:
                return self._attempt(request)
            except ShardbillError as error:
                delay = next(delays, None) if is_retryable(error) else None
                if delay is None:
                    raise
                log.info("correction %r: %s; running it again", request.correction_id, error)
                self._sleep(delay)

    def _attempt(self, request: _Request) -> CorrectionResult:
        outcome: Outcome
        try:
            return self._correct(request)
        except _HomeBusy as busy:
            outcome, reason = "failed", f"{busy}; run the same correction again"
        except _Refused as refusal:
            outcome, reason = "refused", str(refusal)
        return CorrectionResult(
            correction_id=request.correction_id,
            event_id=request.event_id,
            kind=request.kind,
            state=outcome,
            reason=reason,
        )

    def _correct(self, request: _Request) -> CorrectionResult:
        kind, event_id, given, new = request.kind, request.event_id, request.given, request.new
        correction_id = request.correction_id
        history = self.records([event_id])
        mine = [r for r in history if r.correction_id == correction_id]
        if mine:
            record = mine[-1]
            if record.kind is not kind or record.after != new:
                raise _Refused(
                    f"correction id {correction_id!r} already names a {record.kind.value} of "
                    f"event {event_id!r} (revision {record.revision}) with other content; a "
                    "correction id names one correction: give this one its own id"
                )
            if record.state is RecordState.APPLIED:
                return self._result(record, "duplicate")
            deltas = self._deltas_of(record, [r for r in history if r is not record], given)
            return self._apply(record, deltas, fresh=False)
        base, revision = self._base(event_id, history, given)
        if new is not None and period_of(_unix(new)) != period_of(_unix(base)):
            raise _Refused(
                f"event {event_id!r}: the amended 'time' {new.time.isoformat()} is in period "
                f"{period_of(_unix(new))}, the event's is {period_of(_unix(base))}; an amend "
                "keeps the event in its period: cancel it and ingest a new event instead"
            )
        if new is not None and new.account != base.account:
            raise _Refused(
                f"event {event_id!r}: the amended 'account' {new.account!r} is not the event's "
                f"({base.account!r}); an amend keeps the account (its rows and ledger rows "
                "stay where the event's are): cancel it and ingest a new event instead"
            )
        deltas = self._verified_deltas(event_id, history, given, base, new)
        try:
            derived = ledger_id(event_id, revision)
            for content in (base, new):  # both must fit the record's columns
                if content is not None:
                    event_to_text(content)
        except InvalidInputError as exc:
            raise _Refused(str(exc)) from None
        self._period_open(event_id, _unix(base))
        record = CorrectionRecord(
            event_id=event_id,
            revision=revision,
            correction_id=correction_id,
            kind=kind,
            state=RecordState.PENDING,
            ledger_id=derived,
            event_time=_unix(base),
            before=base,
            after=new,
            corrected_by=request.by,
            reason=request.reason,
            corrected_at=int(self._clock()),
            shard=self._writer.locate(event_id)[1],
        )
        try:
            record = self._at_home(record, insert_record)
        except Exception:
            # Another correction's record of this revision won the key; ours (a lost
            # COMMIT that did commit) is resumed by the run again.
            for other in self.records([event_id]):
                if other.revision == revision and other.correction_id != correction_id:
                    raise _Refused(
                        f"event {event_id!r}: correction {other.correction_id!r} of revision "
                        f"{revision - 1} was recorded at the same time; run this correction "
                        "again to see whether it is a duplicate or needs its own revision"
                    ) from None
            raise
        return self._apply(record, deltas, fresh=True)

    def _base(
        self, event_id: str, history: Sequence[CorrectionRecord], given: UsageEvent | None
    ) -> tuple[UsageEvent, int]:
        """The event's current content and the revision a new correction creates."""
        if not history:
            if given is None:
                raise _Refused(
                    f"event {event_id!r} has no correction yet: give its content as it was "
                    "ingested (the events file line), so its charges can be checked against "
                    "the ledger"
                )
            return given, 1
        latest = history[-1]
        if latest.state is RecordState.PENDING:
            raise _Refused(
                f"event {event_id!r}: correction {latest.correction_id!r} of revision "
                f"{latest.revision - 1} is still pending; run it again to finish it, then "
                f"correct revision {latest.revision}"
            )
        if latest.kind is CorrectionKind.CANCEL or latest.after is None:
            raise _Refused(
                f"event {event_id!r} was cancelled by correction {latest.correction_id!r} "
                f"(revision {latest.revision}); nothing is left to correct: ingest a new event "
                "instead"
            )
        if given is not None and given not in (history[0].before, latest.after):
            raise _Refused(
                f"event {event_id!r}: the content given is neither the event as ingested nor "
                f"its current revision {latest.revision} (by correction "
                f"{latest.correction_id!r}); give one of them, or only the id"
            )
        return latest.after, latest.revision + 1

    def _units(self, event: UsageEvent, what: str) -> tuple[Unit, ...]:
        """The units the writer makes of ``event`` (priced now), or a refusal."""
        priced = self._engine.price(event)
        if priced.rejection is not None:
            raise _Refused(
                f"event {event.event_id!r} ({what}): the rules refuse it: {priced.rejection.reason}"
            )
        plan = self._writer.plan_of(
            [
                PricedEvent(
                    event_id=event.event_id,
                    time=event.time,
                    charges=priced.charges,  # type: ignore[arg-type]  # attrs converter=tuple
                )
            ]
        )
        if plan.rejected:
            raise _Refused(
                f"event {event.event_id!r} ({what}) cannot be corrected: {plan.rejected[0].reason}"
            )
        return plan.units

    def _delta_units(self, record: CorrectionRecord) -> tuple[Unit, ...]:
        """The units of an applied record's deltas, as the writer planned them."""
        deltas = row_deltas(
            self._units(record.before, f"revision {record.revision - 1}"),
            self._units(record.after, f"revision {record.revision}")
            if record.after is not None
            else (),
            self._writer.tables,
        )
        return self._plan_deltas(record.ledger_id, record.event_time, deltas)

    def _plan_deltas(
        self, derived: str, when: int, deltas: Mapping[int, Sequence[RowDelta]]
    ) -> tuple[Unit, ...]:
        writer = self._writer
        scope = writer.settings.id_scope
        plan = plan_rows(
            [(derived, when, deltas)],
            tables=writer.tables,
            home_slot=writer.shard_map.slot_for if scope is IdScope.GLOBAL else None,
        )
        if plan.rejected:
            raise _Refused(plan.rejected[0].reason)
        return plan.units

    def _check_ledger(self, event_id: str, units: Sequence[Unit], what: str) -> None:
        """Refuse unless every unit is in the ledger with its fingerprint."""
        stored = self._prints(units)
        missing = [u for u in units if (u.event_id, u.slot) not in stored]
        other = [
            u for u in units if stored.get((u.event_id, u.slot), u.fingerprint) != u.fingerprint
        ]
        if other and self._applied_before_a_migration(other, stored):
            raise _Refused(
                f"event {event_id!r} was applied under an older table declaration (before "
                "`shardbill migrate` changed the tables): a correction reverses its rows as the "
                "tables are declared now, which would take from measures, keys or tables it "
                "never added to. Correcting an event from before a migration is not supported: "
                "book the difference as a new event with its own id"
            )
        if other:
            raise _Refused(
                f"event {event_id!r}: the ledger holds other content for {what} on slot "
                f"{other[0].slot} (fingerprint {stored[(other[0].event_id, other[0].slot)]}, "
                f"this content's {other[0].fingerprint}): give the event exactly as it was "
                "ingested, priced with the price book it was priced with"
            )
        if missing and len(missing) == len(units):
            raise _Refused(
                f"event {event_id!r} was never applied ({what}: no ledger row on any shard): "
                "nothing to correct; ingest it instead"
            )
        if missing:
            raise _Refused(
                f"event {event_id!r} is only partly applied ({what}: slot(s) "
                f"{sorted({u.slot for u in missing})[:8]} missing): write it again to complete "
                "it, then correct it"
            )

    def _verified_deltas(
        self,
        event_id: str,
        history: Sequence[CorrectionRecord],
        given: UsageEvent | None,
        base: UsageEvent,
        new: UsageEvent | None,
    ) -> dict[int, list[RowDelta]]:
        """Check the event's chain against the ledger; the deltas from ``base`` to ``new``."""
        original = history[0].before if history else given
        assert original is not None  # noqa: S101 - _base refused otherwise
        self._check_ledger(event_id, self._units(original, "as ingested"), "the event")
        for record in history:
            self._check_ledger(
                event_id,
                self._delta_units(record),
                f"correction {record.correction_id!r} (revision {record.revision})",
            )
        base_units = self._units(base, "current revision")
        new_units = self._units(new, "amended") if new is not None else ()
        deltas = row_deltas(base_units, new_units, self._writer.tables)
        problem = irreversible(deltas, self._writer.tables)
        if problem is not None:
            raise _Refused(f"event {event_id!r}: {problem}")
        return deltas

    def _deltas_of(
        self,
        record: CorrectionRecord,
        others: Sequence[CorrectionRecord],
        given: UsageEvent | None,
    ) -> dict[int, list[RowDelta]]:
        """A pending record's deltas, its event's chain checked first."""
        earlier = [r for r in others if r.revision < record.revision]
        return self._verified_deltas(
            record.event_id, earlier, given or record.before, record.before, record.after
        )

    def _period_open(self, event_id: str, when: int) -> None:
        period = str(period_of(when))
        states = period_states(self._provider, self.shards(), self._system, period)
        if states:
            shard, state = sorted(states.items())[0]
            booked = read_adjustments(
                self._provider, self.shards(), self._system, event_ids=[event_id]
            ).get(event_id)
            moved = (
                f" (the late-event policy 'adjust' booked it into period {booked}; a "
                "correction is never moved out of the event's period)"
                if booked is not None
                else ""
            )
            raise _Refused(
                f"event {event_id!r} (time {_iso(when)}) belongs to period {period}, which is "
                f"{state.value} (shard {shard!r}){moved}: its aggregates are final, so a "
                "correction of it is refused; book the difference as a new event in an open "
                "period (correction=true)"
            )

    def _apply(
        self, record: CorrectionRecord, deltas: Mapping[int, Sequence[RowDelta]], *, fresh: bool
    ) -> CorrectionResult:
        """Write the record's deltas and settle the record (see the module docstring)."""
        try:
            result = self._writer.write_rows([(record.ledger_id, record.event_time, deltas)])
        except ShardbillError as exc:
            return self._result(record, "failed", f"{exc}; run the same correction again")
        state = result.state_of(record.ledger_id)
        if state is EventState.APPLIED or (state is EventState.DUPLICATE and not fresh):
            try:
                record = self._at_home(record, mark_applied)
            except _HomeBusy as busy:
                return self._result(
                    record,
                    "failed",
                    f"its deltas are applied, but {busy}; the record stays pending: run the "
                    "same correction again, which marks it applied",
                )
            return self._result(record, "applied")
        if state is EventState.FAILED:
            return self._result(
                record,
                "failed",
                f"{_failure(result, record.ledger_id)}; the correction is recorded as pending: "
                "run the same correction again, it applies what is missing",
            )
        why = _refusal(result, record)
        units = self._plan_deltas(record.ledger_id, record.event_time, deltas)
        # Fresh (this call's one write): a duplicate is another correction's deltas, not
        # ours; otherwise ours may be in only if the ledger holds them with our content.
        if fresh and (state is EventState.DUPLICATE or not self._in_ledger(units)):
            # If it cannot, the record stays pending; running the correction again refuses it.
            with contextlib.suppress(_HomeBusy):
                self._at_home(record, delete_pending)
            return self._result(record, "refused", why)
        return self._result(
            record,
            "refused",
            f"{why}; the record stays pending, as part of it may be in the ledger: resolve it "
            "by hand (see docs/howto/month-end.md)",
        )

    def _at_home(
        self,
        record: CorrectionRecord,
        write: Callable[..., None],
    ) -> CorrectionRecord:
        """Run one record ``write`` on the shard that holds the event's home slot's records.

        A shard the slot moved from names its new owner (followed at once); a
        slot whose records are still moving is waited for, the map reloaded
        between tries, for up to ``home_wait`` seconds (then :class:`_HomeBusy`).

        Returns:
            The record, with the shard it was written on.
        """
        slot = self._writer.locate(record.event_id)[0]
        deadline = time.monotonic() + self._home_wait
        delay = 0.02
        hops = 0
        while True:
            try:
                write(self._provider, record, self._system, slot=slot)
                return record
            except RecordElsewhere as elsewhere:
                if elsewhere.peer is not None and hops < _HOPS:
                    hops += 1
                    record = attrs.evolve(record, shard=elsewhere.peer)
                    continue
                if time.monotonic() >= deadline:
                    raise _HomeBusy(
                        f"the records of event {record.event_id!r} (slot {slot}) are being "
                        f"moved by a reshard: {elsewhere}"
                    ) from None
            self._sleep(delay)
            delay = min(delay * 2, 0.5)
            hops = 0
            with contextlib.suppress(ShardbillError):  # a writer given a plain map: none
                self._writer.reload_map()
            record = attrs.evolve(record, shard=self._writer.locate(record.event_id)[1])

    def _applied_before_a_migration(
        self, units: Sequence[Unit], stored: Mapping[tuple[str, int], str]
    ) -> bool:
        """Whether each unit's stored fingerprint is its own under an older declaration."""
        history = declarations_on(self._provider, self.shards(), self._system)
        judge = ReplayJudge(self._writer.tables, history)
        return all(judge.recognises(stored[(u.event_id, u.slot)], u.signed) for u in units)

    def _in_ledger(self, units: Sequence[Unit]) -> bool:
        """Whether any of these units (with their own content) is in the ledger."""
        stored = self._prints(units)
        return any(stored.get((u.event_id, u.slot)) == u.fingerprint for u in units)

    @staticmethod
    def _result(record: CorrectionRecord, state: Outcome, reason: str = "") -> CorrectionResult:
        return CorrectionResult(
            correction_id=record.correction_id,
            event_id=record.event_id,
            kind=record.kind,
            state=state,
            revision=record.revision,
            ledger_id=shown_id(record.ledger_id),
            reason=reason,
        )


def _refusal(result: WriteResult, record: CorrectionRecord) -> str:
    state = result.state_of(record.ledger_id)
    if state is EventState.DUPLICATE:
        return (
            f"event {record.event_id!r}: an identical correction of revision "
            f"{record.revision - 1} was applied by another correction at the same time"
        )
    if state is EventState.CONFLICT:
        return (
            f"event {record.event_id!r}: revision {record.revision - 1} was corrected "
            "differently already (the ledger holds other deltas under "
            f"{shown_id(record.ledger_id)!r}); read its corrections and correct the current "
            "revision"
        )
    for rejection in result.rejected:
        if rejection.event_id == record.ledger_id:
            return f"event {record.event_id!r}: {rejection.reason}".replace(
                record.ledger_id, shown_id(record.ledger_id)
            )
    return f"event {record.event_id!r}: the writer did not apply the correction ({state.value})"


def _failure(result: WriteResult, derived: str) -> str:
    error = result.failures.get(derived)
    return f"a shard failed ({type(error).__name__}: {error})" if error else "a shard failed"


def _unix(event: UsageEvent) -> int:
    return int(event.time.timestamp() // 1)


def _iso(seconds: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat().replace("+00:00", "Z")
