"""The invariant checker itself: each invariant catches the violation it exists for.

No server here: an in-memory stand-in for the shards answers the checker's
SELECTs, its rows computed by the oracle from the units "applied" on each
shard, then corrupted on purpose.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pytest

from shardbill import ShardMap
from shardbill.retry import RetryPolicy
from tests.faults.invariants import BatchReport, Recorder, ShardReport, Verdict, check
from tests.faults.workload import RESELLER, priced_events
from tests.support.oracle import expected_rows

SHARDS = ("s0", "s1", "s2")


class FakeShards:
    """Shards in memory: ledger rows and the aggregate rows of the units applied on each."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.shards = SHARDS
        self.ledgers: dict[str, dict[tuple[str, int], str]] = {s: {} for s in SHARDS}
        self.effects: dict[str, list[tuple[str, int]]] = defaultdict(list)
        self.moved: dict[tuple[str, tuple[Any, ...]], str] = {}  # (table, key) -> shard

    def apply(self, event_id: str, *, ledger: bool = True, effect: bool = True) -> None:
        """Apply every unit of ``event_id`` on its shard (its ledger row and/or its effect)."""
        for slot, shard in self.recorder.units_of(event_id):
            if ledger:
                self.ledgers[shard][(event_id, slot)] = "fp"
            if effect:
                self.effects[shard].append((event_id, slot))

    def rows(
        self, shard: str, sql: str, params: Sequence[object] | None = None
    ) -> list[tuple[Any, ...]]:
        """Answer the checker's two kinds of SELECT."""
        table = re.search(r"FROM `(\w+)`", sql)
        assert table is not None
        name = table.group(1)
        if name == "shardbill_ledger":
            return [(e, slot, fp) for (e, slot), fp in self.ledgers[shard].items()]
        rows: dict[tuple[Any, ...], tuple[list[int], str]] = {}
        for owner in SHARDS:
            charges = [
                c
                for e, slot in self.effects[owner]
                for c in self.recorder.events[e]
                if self.recorder.slot_of(c) == slot
            ]
            for key, values in expected_rows(charges)[name].items():
                where = self.moved.get((name, key), owner)
                if key in rows and rows[key][1] == where:
                    raise AssertionError("the fake merges no rows")
                rows[key] = (values, where)
        slot_of = self.recorder.shard_map.slot_for
        return [(*k, *v, slot_of(k[0])) for k, (v, where) in rows.items() if where == shard]


@pytest.fixture
def setup() -> tuple[Recorder, FakeShards, list[str]]:
    """A recorder over 40 events (some split over two accounts) and empty fake shards."""
    events = priced_events(7, 40, split_fraction=0.3)
    recorder = Recorder(
        events, ShardMap.create(SHARDS, slots=64), retry=RetryPolicy(max_attempts=3)
    )
    return recorder, FakeShards(recorder), list(events)


def _report(recorder: Recorder, ids: Sequence[str], kind: str, **extra: Any) -> BatchReport:
    shards: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for event_id in ids:
        for shard in recorder.shards_of(event_id):
            shards[shard][kind].add(event_id)
    return BatchReport(
        shards={
            shard: ShardReport(
                applied=frozenset(parts["applied"]),
                duplicates=frozenset(parts["duplicates"]),
                failed=frozenset(parts["failed"]),
                error=extra.get("error") if parts["failed"] else None,
                attempts=extra.get("attempts", 1),
            )
            for shard, parts in shards.items()
        }
    )


def _deliver(
    recorder: Recorder, shards: FakeShards, ids: Sequence[str], kind: str, **extra: Any
) -> None:
    recorder.outcome(recorder.send("w", ids), _report(recorder, ids, kind, **extra))
    if kind == "applied":
        for event_id in ids:
            shards.apply(event_id)


def _found(verdict: Verdict, tag: str) -> bool:
    return any(v.startswith(tag) for v in verdict.violations)


def test_a_consistent_history_passes(setup: tuple[Recorder, FakeShards, list[str]]) -> None:
    """Applied, then redelivered as duplicates: no violation, and the counts add up."""
    recorder, shards, ids = setup
    _deliver(recorder, shards, ids, "applied")
    _deliver(recorder, shards, ids, "duplicates")
    verdict = check(recorder, shards, settled=True)
    assert verdict.ok, verdict.violations
    assert verdict.counts["units accepted"] == verdict.counts["ledger rows"]
    assert any(c.account == RESELLER for e in ids for c in recorder.events[e])


def test_an_acknowledged_event_missing_everywhere_is_i1(
    setup: tuple[Recorder, FakeShards, list[str]],
) -> None:
    """Reported applied, but neither its ledger row nor its effect is there: lost (I1)."""
    recorder, shards, ids = setup
    _deliver(recorder, shards, ids[1:], "applied")
    recorder.outcome(recorder.send("w", ids[:1]), _report(recorder, ids[:1], "applied"))
    assert _found(check(recorder, shards), "I1")


def test_an_effect_without_its_ledger_row_is_i2(
    setup: tuple[Recorder, FakeShards, list[str]],
) -> None:
    """An effect applied a second time without a ledger row (counted twice) breaks I2 and I3."""
    recorder, shards, ids = setup
    _deliver(recorder, shards, ids, "applied")
    shards.apply(ids[3], ledger=False)
    verdict = check(recorder, shards)
    assert _found(verdict, "I2")
    assert _found(verdict, "I3")


def test_a_ledger_row_without_its_effect_is_i2(
    setup: tuple[Recorder, FakeShards, list[str]],
) -> None:
    """A ledger row whose effect is missing (claimed but not applied) breaks I2."""
    recorder, shards, ids = setup
    _deliver(recorder, shards, ids[1:], "applied")
    recorder.outcome(recorder.send("w", ids[:1]), _report(recorder, ids[:1], "applied"))
    shards.apply(ids[0], effect=False)
    assert _found(check(recorder, shards), "I2")


def test_a_ledger_row_of_an_event_never_sent_is_i2(
    setup: tuple[Recorder, FakeShards, list[str]],
) -> None:
    """A ledger row for an event id nobody sent is a phantom (I2)."""
    recorder, shards, ids = setup
    _deliver(recorder, shards, ids, "applied")
    shards.ledgers["s0"][("never-sent", 1)] = "fp"
    assert _found(check(recorder, shards), "I2")


def test_a_failure_report_for_an_applied_unit_is_i4(
    setup: tuple[Recorder, FakeShards, list[str]],
) -> None:
    """Reported failed (not unknown) but applied: a failure must mean not applied (I4)."""
    recorder, shards, ids = setup
    _deliver(recorder, shards, ids, "failed", error="CannotConnectError")
    for event_id in ids[:2]:
        shards.apply(event_id)
    assert _found(check(recorder, shards), "I4")


def test_an_unknown_outcome_may_resolve_either_way(
    setup: tuple[Recorder, FakeShards, list[str]],
) -> None:
    """A CommitOutcomeUnknownError failure is fine applied or not; settled needs a later ack."""
    recorder, shards, ids = setup
    _deliver(recorder, shards, ids, "failed", error="CommitOutcomeUnknownError")
    shards.apply(ids[0])
    verdict = check(recorder, shards)
    assert verdict.ok, verdict.violations
    assert verdict.counts["unknown resolved: applied"] >= 1
    assert _found(check(recorder, shards, settled=True), "I4")


def test_a_failure_then_a_duplicate_nobody_applied_is_a_hidden_commit(
    setup: tuple[Recorder, FakeShards, list[str]],
) -> None:
    """Failed, later found as duplicate with no call saying applied: the failure hid a commit."""
    recorder, shards, ids = setup
    _deliver(recorder, shards, ids, "failed", error="CannotConnectError")
    for event_id in ids:
        shards.apply(event_id)
    _deliver(recorder, shards, ids, "duplicates")
    assert _found(check(recorder, shards, settled=True), "I4")
    relaxed = check(recorder, shards, settled=True, strict_failure_reports=False)
    assert relaxed.ok, relaxed.violations
    assert relaxed.counts["failed report hid a commit"] > 0


def test_two_calls_reporting_one_unit_applied_is_i4(
    setup: tuple[Recorder, FakeShards, list[str]],
) -> None:
    """Exactly one call may report a unit applied."""
    recorder, shards, ids = setup
    _deliver(recorder, shards, ids, "applied")
    recorder.outcome(recorder.send("w2", ids[:1]), _report(recorder, ids[:1], "applied"))
    assert _found(check(recorder, shards), "I4")
    assert check(recorder, shards, exclusive_applied=False).ok


def test_more_attempts_than_the_budget_is_i4(
    setup: tuple[Recorder, FakeShards, list[str]],
) -> None:
    """A shard result that took more attempts than max_attempts breaks I4."""
    recorder, shards, ids = setup
    _deliver(recorder, shards, ids, "applied", attempts=4)
    assert _found(check(recorder, shards), "I4")


def test_a_row_on_a_shard_the_map_does_not_name_is_i5(
    setup: tuple[Recorder, FakeShards, list[str]],
) -> None:
    """An aggregate row sitting on another shard than its slot's owner breaks I5."""
    recorder, shards, ids = setup
    _deliver(recorder, shards, ids, "applied")
    charge = recorder.events[ids[0]][0]
    owner = recorder.shard_map.shard_for(charge.account)
    other = next(s for s in SHARDS if s != owner)
    key = next(k for k in expected_rows([charge])["account_balance"])
    shards.moved[("account_balance", key)] = other
    verdict = check(recorder, shards)
    assert _found(verdict, "I5")
    # A map under which `other` owns every slot accepts that row where it is.
    everything_on_other = ShardMap.create([other], slots=64)
    assert not any(
        v.startswith("I5") and str(key) in v
        for v in check(recorder, shards, shard_map=everything_on_other).violations
    )


def test_a_redelivery_tells_what_an_unknown_outcome_did(
    setup: tuple[Recorder, FakeShards, list[str]],
) -> None:
    """Unknown, then redelivered: a duplicate means it had committed, applied means it had not."""
    recorder, shards, ids = setup
    _deliver(recorder, shards, ids, "failed", error="CommitOutcomeUnknownError")
    committed, lost = ids[:10], ids[10:]
    for event_id in committed:
        shards.apply(event_id)
    _deliver(recorder, shards, committed, "duplicates")
    _deliver(recorder, shards, lost, "applied")
    verdict = check(recorder, shards, settled=True)
    assert verdict.ok, verdict.violations
    units = {e: len(recorder.units_of(e)) for e in ids}
    assert verdict.counts["unknown, redelivered: already applied"] == sum(
        units[e] for e in committed
    )
    assert verdict.counts["unknown, redelivered: applied then"] == sum(units[e] for e in lost)
