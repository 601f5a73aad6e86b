"""Revert: a fenced, published or finished reshard goes back to the map before it (issue 14).

With the same guarantees as a forward move: writers keep writing, nothing is
lost or counted twice, a crash is resumed, and verify() is exact afterwards.
On SQLite and MariaDB through both drivers.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardbill import ShardMap
from shardbill.errors import ReshardClaimedError, ReshardError, ReshardStoppedError
from shardbill.resharding import MemoryMapStore, Resharder, ReshardSettings
from shardbill.rules import Charge
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter, WriteResult
from shardbill.writer.schema import apply_schema
from tests.support.backends import KINDS, Backend, make_backend
from tests.support.oracle import actual_rows, expected_rows
from tests.support.outage import DiedError, DiesOn
from tests.test_writer import make_charges

SLOTS = 64


class CrashError(Exception):
    """Stands for the resharding process dying at a step."""


@pytest.fixture(params=KINDS)
def four(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Four shards (s0..s3), every one with its tables."""
    yield from make_backend(request.param, 4, tmp_path, request)


def _setup(
    backend: Backend, shards: list[str], charges: list[Charge]
) -> tuple[MemoryMapStore, AggregationWriter]:
    store = MemoryMapStore(ShardMap.create(shards, slots=SLOTS))
    writer = AggregationWriter(shard_map=store, provider=backend.provider, tables=billing_tables())
    writer.ensure_schema()
    apply_schema(
        backend.provider,
        store.load(),
        billing_tables(),
        shards=[s for s in backend.shards if s not in shards],
        record_ownership=False,
    )
    assert writer.write(charges).ok
    return store, writer


def _resharder(store: MemoryMapStore, backend: Backend, **kw: object) -> Resharder:
    return Resharder(
        store=store,
        provider=backend.provider,
        tables=billing_tables(),
        settings=ReshardSettings(chunk_rows=3, parallel_slots=2, lease_wait=0),
        **kw,  # type: ignore[arg-type]
    )


def _owner_check(shard_map: ShardMap):  # type: ignore[no-untyped-def]
    def check(shard: str, key: tuple[object, ...], slot: int) -> None:
        assert shard_map.owner(slot) == shard, (key, slot, shard)

    return check


def _writing(writer: AggregationWriter, charges: list[Charge]) -> threading.Thread:
    """Write ``charges`` in batches from a thread, retrying what failed (the ledger keeps it
    exact)."""
    events: dict[str, list[Charge]] = {}
    for c in charges:
        events.setdefault(c.event_id, []).append(c)
    batches = [
        [c for e in list(events.values())[i : i + 10] for c in e] for i in range(0, len(events), 10)
    ]
    results: list[WriteResult] = []

    def run() -> None:
        for batch in batches:
            result = writer.write(batch)
            while not result.ok:
                result = writer.write([c for c in batch if c.event_id in result.failed_events])
            results.append(result)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("stop_at", ["finished", "publish", "merge-delete:"])
def test_a_reshard_is_reverted_exactly_while_writers_write(four: Backend, stop_at: str) -> None:
    """A reshard stopped before its publish, in the middle of its merge, or finished, is
    reverted with writes going on: the old assignment is back as a new epoch, every row is
    on it, the totals equal the oracle and a redelivery applies nothing again."""
    charges = make_charges(341, 240, accounts=40)
    later = make_charges(342, 200, accounts=40)
    store, writer = _setup(four, ["s0", "s1", "s2"], charges)
    original = store.load()
    target = original.add_shard("s3")

    def crash(name: str) -> None:
        if stop_at != "finished" and name.startswith(stop_at):
            raise CrashError

    with writer:
        try:
            _resharder(store, four, before_step=crash).run(target)
        except CrashError:
            assert stop_at != "finished"
        thread = _writing(writer, later)
        progress = _resharder(store, four).revert()
        thread.join()
        redelivered = writer.write(charges + later)
    assert redelivered.ok
    assert redelivered.applied_events == frozenset()
    back = store.load()
    assert back.epoch == target.epoch + 1
    assert back.assignment == original.assignment
    assert progress.plan.target_epoch == back.epoch
    claim = store.load_claim()
    assert claim is not None
    assert (claim.state, claim.reverts) == ("finished", target.epoch)
    assert Resharder(store=store, provider=four.provider, tables=billing_tables()).verify() == []
    assert actual_rows(four, slot_check=_owner_check(back)) == expected_rows(charges + later)


def _written(backend: Backend, charges: list[Charge], *, slots: int) -> MemoryMapStore:
    """A store over s0..s2 (tables made), with ``charges`` written."""
    store = MemoryMapStore(ShardMap.create(["s0", "s1", "s2"], slots=slots))
    with AggregationWriter(
        shard_map=store, provider=backend.provider, tables=billing_tables()
    ) as writer:
        writer.ensure_schema()
        assert writer.write(charges).ok
    return store


def test_a_reshard_killed_before_its_new_shard_had_tables_is_reverted(four: Backend) -> None:
    """The resharder adding s3 dies at its first statement there, after taking the claim and
    before s3 has any table (simulation seeds 9024 and 9069). The revert reads the shards the
    reverted plan added too: it must not fail on their missing tables for ever."""
    charges = make_charges(344, 150, accounts=30)
    store = _written(four, charges, slots=SLOTS)
    original = store.load()
    with pytest.raises(DiedError):
        Resharder(
            store=store,
            provider=DiesOn(four.provider, "s3"),
            tables=billing_tables(),
            settings=ReshardSettings(lease_wait=0),
        ).run(original.add_shard("s3"))
    claim = store.load_claim()
    assert claim is not None
    assert claim.state == "moving"
    _resharder(store, four).revert()
    back = store.load()
    assert back.assignment == original.assignment
    assert Resharder(store=store, provider=four.provider, tables=billing_tables()).verify() == []
    assert actual_rows(four, slot_check=_owner_check(back)) == expected_rows(charges)


def test_a_stopped_revert_resumes_and_a_new_plan_may_follow(four: Backend) -> None:
    """A revert stopped at a safe point is resumed by run(); afterwards a new plan from the
    reverted map starts as usual."""
    charges = make_charges(343, 200, accounts=40)
    store, writer = _setup(four, ["s0", "s1"], charges)
    writer.close()
    _resharder(store, four).run(store.load().add_shard("s2"))
    stopper: list[Resharder] = []

    def stop(name: str) -> None:
        if name.startswith("merge-delete:"):
            stopper[0].stop()

    stopper.append(_resharder(store, four, before_step=stop))
    with pytest.raises(ReshardStoppedError, match="run it again to resume"):
        stopper[0].revert()
    _resharder(store, four).run()
    assert store.load().assignment == store.load_epoch(1).assignment
    then = store.load().add_shard("s3")
    _resharder(store, four).run(then)
    assert Resharder(store=store, provider=four.provider, tables=billing_tables()).verify() == []
    assert actual_rows(four, slot_check=_owner_check(then)) == expected_rows(charges)


def test_a_running_reshard_cannot_be_reverted_under_its_feet(four: Backend) -> None:
    """A revert while the reshard's holder still holds a live lease is refused and names it;
    with nothing claimed there is nothing to revert."""
    charges = make_charges(344, 100, accounts=30)
    store, writer = _setup(four, ["s0", "s1"], charges)
    writer.close()
    with pytest.raises(ReshardError, match="no reshard to revert"):
        _resharder(store, four).revert()
    refused: list[ReshardClaimedError] = []

    def try_revert(name: str) -> None:
        if name.startswith("ledger:") and not refused:
            with pytest.raises(ReshardClaimedError, match="stop it first") as caught:
                _resharder(store, four, owner="operator").revert()
            refused.append(caught.value)

    _resharder(store, four, owner="runner", before_step=try_revert).run(
        store.load().add_shard("s2")
    )
    assert [e.owner for e in refused] == ["runner"]


def test_a_reshard_killed_before_moving_is_reverted_past_old_forwarding_rows(
    four: Backend,
) -> None:
    """A slot that left a shard in an earlier reshard keeps a ``gone`` row there pointing
    at the shard it went to. A later plan that gives it back to that shard dies before it
    moves anything; the revert must see that the slot never moved (its owner still owns
    it), not refuse it for ever because the old row points elsewhere (simulation seed
    9225)."""
    charges = make_charges(345, 150, accounts=30)
    store = _written(four, charges, slots=32)
    first = store.load()
    apply_schema(four.provider, first, billing_tables(), shards=["s3"], record_ownership=False)
    _resharder(store, four).run(first.reweight({"s0": 1, "s1": 1, "s2": 2}))
    _resharder(store, four).run(store.load().reweight({"s0": 2, "s1": 1, "s2": 1}))
    before = store.load()
    target = before.reweight({"s0": 1, "s1": 1, "s2": 1})
    history = [store.load_epoch(e) for e in range(1, before.epoch + 1)]
    # The case itself: a slot the plan gives to a shard it once left for a third shard.
    assert any(
        target.owner(slot) != before.owner(slot)
        and any(
            a.owner(slot) == target.owner(slot)
            and b.owner(slot) not in (target.owner(slot), before.owner(slot))
            for a, b in itertools.pairwise(history)
        )
        for slot in range(32)
    )

    def crash(name: str) -> None:
        if name == "switch":
            raise CrashError

    with pytest.raises(CrashError):
        _resharder(store, four, before_step=crash).run(target)
    _resharder(store, four).revert()
    back = store.load()
    assert back.assignment == before.assignment
    assert Resharder(store=store, provider=four.provider, tables=billing_tables()).verify() == []
    assert actual_rows(four, slot_check=_owner_check(back)) == expected_rows(charges)
