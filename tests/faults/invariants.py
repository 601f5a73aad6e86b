"""The oracle recorder and the invariant checker every fault scenario ends with.

A :class:`Recorder` notes every delivery of events to a writer (an
*attempt*) and what came of it, per event and shard, in the caller's terms:

=============  ===============================================================
outcome        meaning
=============  ===============================================================
``applied``    the write result says this call applied it (acknowledged)
``duplicate``  the write result says it was applied before (acknowledged)
``failed``     the write result says the shard failed with an error that
               claims nothing was committed (the caller must retry it)
``unknown``    nobody knows: the shard failed with
               ``CommitOutcomeUnknownError``, the call raised, or the writer
               process died before it reported
=============  ===============================================================

:func:`check` then reads every shard directly (root, no proxy, no shardbill
code) and tests, against the independent oracle of
``tests/support/oracle.py``:

I1
    no acknowledged event is missing: every unit (event, slot) of an event
    acknowledged on a shard is in the ledger.
I2
    per shard, every aggregate row equals the oracle computed from exactly the
    units in that shard's ledger (so no effect without its ledger row, no
    ledger row without its effect, nothing counted twice), and no ledger row
    belongs to an event that was never sent.
I3
    over all shards, the aggregates equal the oracle over the accepted units:
    the acknowledged ones plus the unknown-outcome ones found in a ledger.
I4
    every outcome resolves: a unit that only ever *failed* (never
    acknowledged, never unknown) is in no ledger, nor is one that a later
    call found already applied (``duplicate``) while no call ever said
    ``applied`` or ``unknown`` for it (a failure report hid a commit);
    no shard result took more
    attempts than the retry budget; with ``settled=True`` (the caller retried
    until success) every unit sent was acknowledged; and no unit was reported
    ``applied`` by two calls (exactly one call applies it).
I5
    placement: every aggregate and ledger row sits on the shard that the
    shard map (the map after a reshard, when one ran) names for its
    ``sb_slot``, and an aggregate row's ``sb_slot`` is its account's slot.

An event's units are its charges' slots and the slot its id hashes to (the
identity claim of the writer's default id scope, a ledger row that carries
the event's charges on that slot, if any, or none).
"""

from __future__ import annotations

import enum
import itertools
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from shardbill import ShardMap
from shardbill.retry import RetryPolicy
from shardbill.rules import Charge
from shardbill.writer import AggregationWriter, WriteResult
from tests.support.oracle import KEYS, MEASURES, Rows, expected_rows

__all__ = [
    "KNOWN_BUG_APPLIED_TWICE",
    "KNOWN_BUG_FAILED_AFTER_LOST_COMMIT",
    "BatchReport",
    "Outcome",
    "Reader",
    "Recorder",
    "ShardReport",
    "Verdict",
    "assert_invariants",
    "check",
    "summarize",
]

LEDGER = "shardbill_ledger"

KNOWN_BUG_FAILED_AFTER_LOST_COMMIT = False
"""The writer still reports a unit *failed* (with the last attempt's error, e.g.
CannotConnectError) when an earlier attempt's COMMIT was lost but did commit
(``test_regressions.py::test_a_lost_commit_followed_by_an_outage_is_reported_as_unknown``).
Scenarios whose retry budget can run out after a lost COMMIT count such reports
instead of failing on them while this is True. Set it to False when that test passes."""

KNOWN_BUG_APPLIED_TWICE = False
"""The writer reports a unit *applied* after a lost COMMIT also when a concurrent
writer committed it meanwhile (``test_regressions.py::
test_a_unit_committed_by_another_writer_during_a_lost_commit_is_reported_applied_once``).
Scenarios with concurrent delivery of the same events and lost COMMITs skip the
"applied by one call" check while this is True. Set it to False when that test passes."""
UNKNOWN_ERRORS = frozenset({"CommitOutcomeUnknownError"})
"""Error class names whose failure report means "outcome unknown", not "not applied"."""


class Outcome(enum.StrEnum):
    """What one attempt's result said about one event on one shard."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    FAILED = "failed"
    UNKNOWN = "unknown"
    CONFLICT = "conflict"
    REJECTED = "rejected"

    @property
    def acknowledged(self) -> bool:
        """Applied or duplicate: the caller may consider the event done on that shard."""
        return self in (Outcome.APPLIED, Outcome.DUPLICATE)


@attrs.frozen(kw_only=True)
class ShardReport:
    """A picklable summary of a :class:`~shardbill.writer.ShardResult`."""

    applied: frozenset[str] = frozenset()
    duplicates: frozenset[str] = frozenset()
    failed: frozenset[str] = frozenset()
    conflicts: frozenset[str] = frozenset()
    error: str | None = None
    attempts: int = 0


@attrs.frozen(kw_only=True)
class BatchReport:
    """A picklable summary of a :class:`~shardbill.writer.WriteResult` (crosses processes)."""

    shards: Mapping[str, ShardReport]
    rejected: frozenset[str] = frozenset()
    events: Mapping[str, str] = attrs.field(factory=dict)  # event id -> its state for the call

    @property
    def ok(self) -> bool:
        """True when no shard failed."""
        return all(r.error is None for r in self.shards.values())

    @property
    def failed_events(self) -> frozenset[str]:
        """Events to deliver again."""
        return frozenset(e for r in self.shards.values() for e in r.failed)


def summarize(result: WriteResult) -> BatchReport:
    """The :class:`BatchReport` of a write result."""
    return BatchReport(
        shards={
            shard: ShardReport(
                applied=frozenset(r.applied),
                duplicates=frozenset(r.duplicates),
                failed=frozenset(r.failed),
                conflicts=frozenset(c.event_id for c in r.conflicts),
                error=None if r.error is None else type(r.error).__name__,
                attempts=r.attempts,
            )
            for shard, r in result.shards.items()
        },
        rejected=frozenset(r.event_id for r in result.rejected),
        events={e: state.value for e, state in result.events.items()},
    )


@attrs.define
class _Attempt:
    number: int
    writer: str
    events: tuple[str, ...]
    report: BatchReport | None = None
    lost: str | None = None


class Recorder:
    """Records every event delivered to a writer and what came of it (thread-safe).

    Args:
        events: every event the scenario may send: id -> its charges.
        shard_map: the map the writers route with (to know each event's units).
        retry: the writers' retry policy (I4 checks attempts against it).
        follow_moves: the map changes while writers run (a reshard), so a unit's
            shard is not known in advance: every unit of an event takes the
            event's state for the call (applied, duplicate; a failed event is
            unknown, since some of its units may have landed).
    """

    def __init__(
        self,
        events: Mapping[str, Sequence[Charge]],
        shard_map: ShardMap,
        *,
        retry: RetryPolicy | None = None,
        follow_moves: bool = False,
    ) -> None:
        self.events = events
        self.shard_map = shard_map
        self.retry = retry
        self.follow_moves = follow_moves
        self._lock = threading.Lock()
        self._attempts: list[_Attempt] = []
        self._numbers = itertools.count(1)
        self._units: dict[str, tuple[tuple[int, str], ...]] = {}

    # -- what an event touches ------------------------------------------------

    def slot_of(self, charge: Charge) -> int:
        """The slot a charge's row lives in (the shard key is the paying account)."""
        return self.shard_map.slot_for(charge.account)

    def home_slot(self, event_id: str) -> int:
        """The slot of the event's identity claim (the writer's default id scope)."""
        return self.shard_map.slot_for(event_id)

    def units_of(self, event_id: str) -> tuple[tuple[int, str], ...]:
        """The (slot, shard) units of an event, sorted: its charges' slots and its claim's."""
        found = self._units.get(event_id)
        if found is None:
            slots = {self.slot_of(c) for c in self.events[event_id]}
            slots.add(self.home_slot(event_id))
            found = tuple(sorted((s, self.shard_map.owner(s)) for s in slots))
            self._units[event_id] = found
        return found

    def shards_of(self, event_id: str) -> frozenset[str]:
        """The shards an event touches."""
        return frozenset(shard for _, shard in self.units_of(event_id))

    def charges(self, event_ids: Iterable[str]) -> list[Charge]:
        """The charges of ``event_ids`` (what a writer is given)."""
        return [c for e in event_ids for c in self.events[e]]

    # -- recording --------------------------------------------------------------

    def send(self, writer: str, event_ids: Iterable[str]) -> int:
        """Note a delivery of ``event_ids`` to ``writer``; returns the attempt number."""
        ids = tuple(event_ids)
        unknown = [e for e in ids if e not in self.events]
        if unknown:
            raise KeyError(f"events not in the recorder's catalogue: {unknown[:5]}")
        with self._lock:
            number = next(self._numbers)
            self._attempts.append(_Attempt(number=number, writer=writer, events=ids))
        return number

    def outcome(self, attempt: int, report: BatchReport) -> None:
        """Note the result of ``attempt``."""
        with self._lock:
            found = self._attempts[attempt - 1]
            if found.report is not None or found.lost is not None:
                raise ValueError(f"attempt {attempt} already has an outcome")
            found.report = report

    def lost(self, attempt: int, reason: str) -> None:
        """Note that ``attempt`` never reported (the call raised, the process died)."""
        with self._lock:
            found = self._attempts[attempt - 1]
            if found.report is None and found.lost is None:
                found.lost = reason

    def write(self, label: str, writer: AggregationWriter, event_ids: Sequence[str]) -> WriteResult:
        """Deliver ``event_ids`` to ``writer`` and record the attempt and its outcome."""
        attempt = self.send(label, event_ids)
        try:
            result = writer.write(self.charges(event_ids))
        except BaseException as exc:
            self.lost(attempt, f"write raised {type(exc).__name__}")
            raise
        self.outcome(attempt, summarize(result))
        return result

    def write_until_done(
        self,
        label: str,
        writer: AggregationWriter,
        event_ids: Sequence[str],
        *,
        max_rounds: int = 200,
        pause: Callable[[int], None] | None = None,
    ) -> int:
        """Deliver ``event_ids``, then redeliver the failed ones until none fails.

        This is the caller's side of the contract ("retry exactly
        ``failed_events``"). ``pause(round)`` runs between rounds (a caller's
        backoff). Returns the number of rounds; raises AssertionError after
        ``max_rounds``.
        """
        pending = list(event_ids)
        for round_number in range(1, max_rounds + 1):
            result = self.write(label, writer, pending)
            if result.ok:
                return round_number
            pending = sorted(result.failed_events)
            if pause is not None:
                pause(round_number)
        raise AssertionError(f"{label}: {len(pending)} events still failing after {max_rounds}")

    # -- reading the record -------------------------------------------------------

    @property
    def attempts(self) -> int:
        """How many deliveries were recorded."""
        with self._lock:
            return len(self._attempts)

    def outcomes(self) -> dict[tuple[str, int], list[Outcome]]:
        """(event, slot) -> the outcome of every attempt that carried it, in order."""
        with self._lock:
            attempts = list(self._attempts)
        out: dict[tuple[str, int], list[Outcome]] = defaultdict(list)
        for attempt in attempts:
            for event_id in attempt.events:
                for slot, routed in self.units_of(event_id):
                    said = (
                        _event_outcome(attempt, event_id)
                        if self.follow_moves
                        else _outcome(attempt, event_id, routed)
                    )
                    out[(event_id, slot)].append(said)
        return out

    def reports(self) -> list[BatchReport]:
        """Every recorded batch report."""
        with self._lock:
            return [a.report for a in self._attempts if a.report is not None]


_BY_STATE = {
    "applied": Outcome.APPLIED,
    "duplicate": Outcome.DUPLICATE,
    "conflict": Outcome.CONFLICT,
    "rejected": Outcome.REJECTED,
}


def _event_outcome(attempt: _Attempt, event_id: str) -> Outcome:
    """The outcome of every unit of ``event_id``, from the event's state for the call."""
    if attempt.report is None:
        return Outcome.UNKNOWN
    return _BY_STATE.get(attempt.report.events.get(event_id, ""), Outcome.UNKNOWN)


def _outcome(attempt: _Attempt, event_id: str, shard: str) -> Outcome:
    report = attempt.report
    result = None if report is None else report.shards.get(shard)
    if report is not None and event_id in report.rejected:
        return Outcome.REJECTED
    if result is None:
        return Outcome.UNKNOWN  # lost or pending (nobody was told anything), or not reported
    for outcome, ids in (
        (Outcome.APPLIED, result.applied),
        (Outcome.DUPLICATE, result.duplicates),
        (Outcome.CONFLICT, result.conflicts),
    ):
        if event_id in ids:
            return outcome
    if event_id in result.failed and result.error not in UNKNOWN_ERRORS:
        return Outcome.FAILED
    return Outcome.UNKNOWN


# ---------------------------------------------------------------------------
# Reading the shards


class Reader(Protocol):
    """Direct read access to the shards (not through shardbill)."""

    @property
    def shards(self) -> tuple[str, ...]:
        """The shard names."""
        ...

    def rows(
        self, shard: str, sql: str, params: Sequence[object] | None = None
    ) -> list[tuple[Any, ...]]:
        """Rows of one statement on ``shard``, dates as ISO text."""
        ...


@attrs.frozen(kw_only=True)
class Verdict:
    """What :func:`check` found: violations (empty when every invariant holds) and counts."""

    violations: tuple[str, ...]
    counts: Mapping[str, int]

    @property
    def ok(self) -> bool:
        """True when every invariant held."""
        return not self.violations


def _read_ledgers(reader: Reader) -> dict[str, dict[tuple[str, int], str]]:
    return {
        shard: {
            (str(event_id), int(slot)): str(fp)
            for event_id, slot, fp in reader.rows(
                shard, f"SELECT event_id, sb_slot, fingerprint FROM `{LEDGER}`"
            )
        }
        for shard in reader.shards
    }


def _read_rows(
    reader: Reader, shard: str
) -> dict[str, dict[tuple[Any, ...], tuple[list[int], int]]]:
    out: dict[str, dict[tuple[Any, ...], tuple[list[int], int]]] = {}
    for table, keys in KEYS.items():
        cols = ", ".join(f"`{c}`" for c in (*keys, *MEASURES[table], "sb_slot"))
        found: dict[tuple[Any, ...], tuple[list[int], int]] = {}
        for row in reader.rows(shard, f"SELECT {cols} FROM `{table}`"):
            key = tuple(row[: len(keys)])
            found[key] = ([int(v) for v in row[len(keys) : -1]], int(row[-1]))
        out[table] = found
    return out


def _diff(
    what: str, expected: Rows, actual: Mapping[str, Mapping[tuple[Any, ...], list[int]]]
) -> list[str]:
    problems = []
    for table in KEYS:
        want = expected.get(table, {})
        got = actual.get(table, {})
        for key in sorted(set(want) | set(got), key=repr):
            if want.get(key) != got.get(key):
                problems.append(
                    f"{what}: {table} row {key}: expected {want.get(key)}, found {got.get(key)}"
                )
    return problems


class _Checker:
    """One run of the checks; each method adds to ``violations`` and ``counts``."""

    def __init__(self, recorder: Recorder, reader: Reader, placement: ShardMap) -> None:
        self.recorder = recorder
        self.reader = reader
        self.placement = placement
        self.violations: list[str] = []
        self.counts: Counter[str] = Counter()
        self.ledgers = _read_ledgers(reader)
        self.rows = {shard: _read_rows(reader, shard) for shard in reader.shards}
        self.located: dict[tuple[str, int], str] = {}
        self.accepted: set[tuple[str, int]] = set()

    def ledger_placement(self) -> None:
        """I2 (one ledger row per unit in all) and I5 for ledger rows."""
        for shard, ledger in self.ledgers.items():
            self.counts["ledger rows"] += len(ledger)
            for unit in ledger:
                if unit in self.located:
                    self.violations.append(
                        f"I2: unit {unit} is in the ledgers of {self.located[unit]} and {shard}"
                    )
                self.located[unit] = shard
                owner = self.placement.owner(unit[1])
                if owner != shard:
                    self.violations.append(
                        f"I5: ledger row {unit} is on {shard}, the map names {owner}"
                    )

    def outcomes(self, *, settled: bool, exclusive_applied: bool, strict_failures: bool) -> None:
        """I1 and I4: per unit, what the callers were told against what the ledger holds."""
        outcomes = self.recorder.outcomes()
        self.counts["attempts"] = self.recorder.attempts
        self.counts["units sent"] = len(outcomes)
        self.counts["events sent"] = len({event_id for event_id, _ in outcomes})
        for unit, said in sorted(outcomes.items()):
            self.counts.update(f"outcome {o.value}" for o in said)
            told = [o.value for o in said]
            in_ledger = unit in self.located
            acknowledged = any(o.acknowledged for o in said)
            unknown = Outcome.UNKNOWN in said
            if acknowledged or (unknown and in_ledger):
                self.accepted.add(unit)
            if acknowledged and not in_ledger:
                self.violations.append(f"I1: acknowledged unit {unit} ({told}) is in no ledger")
            elif unknown and not acknowledged:
                resolved = "applied" if in_ledger else "not applied"
                self.counts[f"unknown resolved: {resolved}"] += 1
            elif in_ledger and not acknowledged:
                self.violations.append(
                    f"I4: unit {unit} was only ever reported failed ({told}) but is in the "
                    "ledger: a failure report must mean not applied"
                )
            if unknown and acknowledged:
                # The next acknowledgement tells what the unknown attempt did: a
                # duplicate means its COMMIT (or another writer's) had happened.
                after = said[said.index(Outcome.UNKNOWN) + 1 :]
                first = next((o for o in after if o.acknowledged), None)
                if first is not None:
                    found = "already applied" if first is Outcome.DUPLICATE else "applied then"
                    self.counts[f"unknown, redelivered: {found}"] += 1
            hid_a_commit = (
                Outcome.DUPLICATE in said
                and Outcome.FAILED in said
                and Outcome.APPLIED not in said
                and not unknown
            )
            if hid_a_commit:
                self.counts["failed report hid a commit"] += 1
                if strict_failures:
                    self.violations.append(
                        f"I4: unit {unit} ({told}) was applied by a call that reported it "
                        "failed: a failure report must mean not applied"
                    )
            if settled and not acknowledged:
                self.violations.append(f"I4: unit {unit} never acknowledged ({told})")
            if exclusive_applied and said.count(Outcome.APPLIED) > 1:
                self.violations.append(
                    f"I4: unit {unit} reported applied by {said.count(Outcome.APPLIED)} calls"
                )
            self.violations.extend(
                f"I4: unit {unit} was reported {bad.value}"
                for bad in (Outcome.CONFLICT, Outcome.REJECTED)
                if bad in said
            )

    def budget(self) -> None:
        """I4: no shard result took more attempts than the retry policy allows."""
        if self.recorder.retry is None:
            return
        budget = self.recorder.retry.max_attempts
        self.violations.extend(
            f"I4: a result on {shard} took {result.attempts} attempts > {budget}"
            for report in self.recorder.reports()
            for shard, result in report.shards.items()
            if result.attempts > budget
        )

    def _charges_of(self, shard: str, units: Iterable[tuple[str, int]]) -> list[Charge]:
        charges: list[Charge] = []
        for event_id, slot in units:
            if event_id not in self.recorder.events:
                self.violations.append(
                    f"I2: ledger row ({event_id}, {slot}) on {shard}: never sent"
                )
                continue
            mine = [c for c in self.recorder.events[event_id] if self.recorder.slot_of(c) == slot]
            if not mine and slot != self.recorder.home_slot(event_id):
                self.violations.append(
                    f"I2: ledger row ({event_id}, {slot}) on {shard}: no such unit"
                )
            charges.extend(mine)
        return charges

    def per_shard(self) -> None:
        """I2 (rows == the oracle of the shard's ledger) and I5 for aggregate rows."""
        for shard in self.reader.shards:
            charges = self._charges_of(shard, self.ledgers[shard])
            actual = {t: {k: v for k, (v, _) in r.items()} for t, r in self.rows[shard].items()}
            self.violations.extend(_diff(f"I2 on {shard}", expected_rows(charges), actual))
            for table, table_rows in self.rows[shard].items():
                self.counts["aggregate rows"] += len(table_rows)
                for key, (_, slot) in table_rows.items():
                    owner = self.placement.owner(slot)
                    if owner != shard:
                        self.violations.append(
                            f"I5: {table} row {key} (slot {slot}) is on {shard}, "
                            f"the map names {owner}"
                        )
                    if self.placement.slot_for(key[0]) != slot:
                        self.violations.append(
                            f"I5: {table} row {key} has slot {slot}, not its account's"
                        )

    def totals(self) -> None:
        """I3: all shards together against the oracle of the accepted units."""
        merged: dict[str, dict[tuple[Any, ...], list[int]]] = {table: {} for table in KEYS}
        for shard in self.reader.shards:
            for table, table_rows in self.rows[shard].items():
                for key, (values, _) in table_rows.items():
                    if key in merged[table]:
                        self.violations.append(f"I3: {table} row {key} is on two shards")
                    merged[table][key] = values
        accepted = [
            c
            for event_id, slot in sorted(self.accepted)
            for c in self.recorder.events[event_id]
            if self.recorder.slot_of(c) == slot
        ]
        self.violations.extend(_diff("I3 over all shards", expected_rows(accepted), merged))
        self.counts["units accepted"] = len(self.accepted)
        balances = merged["account_balance"].values()
        self.counts["amount total (micro)"] = sum(v[0] for v in balances)
        self.counts["charges total"] = sum(v[1] for v in balances)


def check(
    recorder: Recorder,
    reader: Reader,
    *,
    shard_map: ShardMap | None = None,
    settled: bool = False,
    exclusive_applied: bool = True,
    strict_failure_reports: bool = True,
) -> Verdict:
    """Check I1-I5 (see the module docstring) and return what was found.

    Args:
        recorder: what was sent and what the writers said.
        reader: direct access to the shards.
        shard_map: the map rows must sit by (I5); default the recorder's
            (pass the new map after a reshard).
        settled: the caller retried every failure until success, so every
            unit sent must be acknowledged.
        exclusive_applied: no unit may be reported ``applied`` by two calls.
        strict_failure_reports: a failure report that hid a commit (found
            later as a duplicate nobody reported applied) is a violation;
            when False it is only counted (``failed report hid a commit``).
    """
    checker = _Checker(recorder, reader, shard_map if shard_map is not None else recorder.shard_map)
    checker.ledger_placement()
    checker.outcomes(
        settled=settled,
        exclusive_applied=exclusive_applied,
        strict_failures=strict_failure_reports,
    )
    checker.budget()
    checker.per_shard()
    checker.totals()
    return Verdict(violations=tuple(checker.violations), counts=dict(checker.counts))


def assert_invariants(
    recorder: Recorder,
    reader: Reader,
    *,
    shard_map: ShardMap | None = None,
    settled: bool = False,
    exclusive_applied: bool = True,
    strict_failure_reports: bool = True,
    context: str = "",
) -> Verdict:
    """:func:`check`, raising AssertionError that lists the first violations."""
    verdict = check(
        recorder,
        reader,
        shard_map=shard_map,
        settled=settled,
        exclusive_applied=exclusive_applied,
        strict_failure_reports=strict_failure_reports,
    )
    if verdict.violations:
        shown = "\n  ".join(verdict.violations[:25])
        more = len(verdict.violations) - 25
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise AssertionError(
            f"{len(verdict.violations)} invariant violations{f' ({context})' if context else ''}:"
            f"\n  {shown}{tail}\ncounts: {dict(verdict.counts)}"
        )
    return verdict
