"""A reshard is claimed in the map store before it touches a shard (issue 14, cases 1-3, 11).

Competing, crashed and careless operators: a second plan is refused before it
changes anything and the refusal names the holder; the same plan takes over
only an expired lease; a crashed reshard is resumed, never replaced; two
resharders of one plan never merge a chunk twice; a target that already
claims the slots it should receive stops the reshard before anything changes.
Every scenario runs on SQLite and on MariaDB through both drivers, and ends
with the totals compared with the independent oracle.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardbill import ShardMap
from shardbill.dialects.detect import dialect_for
from shardbill.errors import ReshardClaimedError, ReshardError
from shardbill.resharding import JsonFileMapStore, MemoryMapStore, Resharder, ReshardSettings
from shardbill.resharding.records import _still_arriving
from shardbill.resharding.sql import ReshardStatements
from shardbill.rules import Charge
from shardbill.tables import SystemTables
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter
from shardbill.writer.schema import apply_schema
from tests.support.backends import KINDS, Backend, make_backend
from tests.support.oracle import actual_rows, expected_rows
from tests.test_writer import make_charges

SLOTS = 64


class CrashError(Exception):
    """Stands for the resharding process dying at a step."""


@pytest.fixture(params=KINDS)
def four(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Four shards (s0..s3); the first map uses two of them."""
    yield from make_backend(request.param, 4, tmp_path, request)


def _setup(
    backend: Backend,
    shards: list[str],
    charges: list[Charge],
    store: MemoryMapStore | JsonFileMapStore | None = None,
) -> tuple[MemoryMapStore | JsonFileMapStore, AggregationWriter]:
    if store is None:
        store = MemoryMapStore()
    store.publish(ShardMap.create(shards, slots=SLOTS), expected_epoch=None)
    writer = AggregationWriter(shard_map=store, provider=backend.provider, tables=billing_tables())
    writer.ensure_schema()
    # The spare shards get empty tables without ownership (what `reshard prepare` does), so
    # that the oracle can read every shard.
    apply_schema(
        backend.provider,
        store.load(),
        billing_tables(),
        shards=[s for s in backend.shards if s not in shards],
        record_ownership=False,
    )
    assert writer.write(charges).ok
    return store, writer


def _resharder(
    store: MemoryMapStore | JsonFileMapStore, backend: Backend, **kw: object
) -> Resharder:
    settings = kw.pop("settings", ReshardSettings(chunk_rows=4, parallel_slots=1, lease_wait=0))
    return Resharder(
        store=store,
        provider=backend.provider,
        tables=billing_tables(),
        settings=settings,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def _slot_rows(backend: Backend) -> dict[str, list[tuple[object, ...]]]:
    """Every shard's ownership rows, read directly (an empty list: the table is missing)."""
    out: dict[str, list[tuple[object, ...]]] = {}
    for shard in backend.shards:
        try:
            out[shard] = sorted(
                backend.rows(shard, "SELECT `sb_slot`, `state`, `peer` FROM `shardbill_slots`")
            )
        except Exception:  # a shard that never got its tables
            out[shard] = []
    return out


def _owner_check(shard_map: ShardMap):  # type: ignore[no-untyped-def]
    def check(shard: str, key: tuple[object, ...], slot: int) -> None:
        assert shard_map.owner(slot) == shard, (key, slot, shard)

    return check


def test_a_second_plan_during_a_reshard_is_refused_before_it_changes_anything(
    four: Backend,
) -> None:
    """Case 1: while one reshard runs, another plan of the same epoch changes no shard and
    names the holder; the first finishes exact and a redelivery applies nothing again."""
    charges = make_charges(141, 200, accounts=40)
    store, writer = _setup(four, ["s0", "s1"], charges)
    current = store.load()
    first_target, second_target = current.add_shard("s2"), current.add_shard("s3")
    refusals: list[ReshardClaimedError] = []
    seen: list[dict[str, list[tuple[object, ...]]]] = []

    def rival(name: str) -> None:
        if name == "switch" and not refusals:
            before = _slot_rows(four)
            with pytest.raises(ReshardClaimedError) as caught:
                _resharder(store, four, owner="rival").run(second_target)
            refusals.append(caught.value)
            seen.append(before)
            seen.append(_slot_rows(four))

    first = _resharder(store, four, owner="first", before_step=rival)
    first.run(first_target)
    (refusal,) = refusals
    assert refusal.owner == "first"
    assert "'first'" in str(refusal)
    assert seen[0] == seen[1]  # the rival changed no ownership row
    assert _slot_rows(four)["s3"] == []
    assert store.load() == first_target
    assert first.verify() == []
    with writer:
        redelivered = writer.write(charges)
    assert redelivered.ok
    assert redelivered.applied_events == frozenset()
    assert actual_rows(four, slot_check=_owner_check(first_target)) == expected_rows(charges)


def test_a_reshard_crashed_before_publish_is_resumed_never_replaced(four: Backend) -> None:
    """Case 2: a reshard dies between fence and publish; a different plan of the same epoch
    is refused (even with the lease expired); resuming without a target finishes exact."""
    charges = make_charges(142, 200, accounts=40)
    store, writer = _setup(four, ["s0", "s1"], charges)
    current = store.load()
    first_target, second_target = current.add_shard("s2"), current.add_shard("s3")

    def crash(name: str) -> None:
        if name == "publish":
            raise CrashError

    with pytest.raises(CrashError):
        _resharder(store, four, owner="crashed", before_step=crash).run(first_target)
    assert store.load() == current  # fenced, not published
    before = _slot_rows(four)
    with pytest.raises(ReshardClaimedError, match="resume it") as caught:
        _resharder(store, four, owner="other").run(second_target)
    assert caught.value.owner == "crashed"
    assert caught.value.target_epoch == first_target.epoch
    assert _slot_rows(four) == before
    with writer:
        more = make_charges(143, 60, accounts=40)
        assert writer.write(more).ok  # writes go on meanwhile, following the fences
        resumed = _resharder(store, four, owner="other").run()
        assert resumed.plan.moves == current.plan_to(first_target).moves
        redelivered = writer.write(charges + more)
    assert redelivered.applied_events == frozenset()
    assert store.load() == first_target
    assert Resharder(store=store, provider=four.provider, tables=billing_tables()).verify() == []
    assert actual_rows(four, slot_check=_owner_check(first_target)) == expected_rows(charges + more)


def test_the_same_plan_takes_over_only_an_expired_lease(four: Backend, tmp_path: Path) -> None:
    """Case 3: a resharder of the same plan is refused while the holder's lease is live,
    naming it; once the lease has expired it takes over and finishes exact."""
    charges = make_charges(144, 150, accounts=30)
    store, writer = _setup(
        four, ["s0", "s1"], charges, store=JsonFileMapStore(tmp_path / "shardmap.json")
    )
    writer.close()
    assert isinstance(store, JsonFileMapStore)
    target = store.load().add_shard("s2")
    now = [1_000_000.0]
    outcomes: list[str] = []

    def compete(name: str) -> None:
        if name.startswith("ledger:") and not outcomes:
            with pytest.raises(ReshardClaimedError, match="same reshard is running") as caught:
                _resharder(store, four, owner="second", clock=lambda: now[0]).run(target)
            outcomes.append(caught.value.owner)
            raise CrashError  # the holder stalls here, its lease still live

    with pytest.raises(CrashError):
        _resharder(
            store,
            four,
            owner="holder",
            clock=lambda: now[0],
            before_step=compete,
            settings=ReshardSettings(
                chunk_rows=4, parallel_slots=1, lease_seconds=60, lease_wait=0
            ),
        ).run(target)
    assert outcomes == ["holder"]
    claim = store.load_claim()
    assert claim is not None
    assert claim.owner == "holder"
    assert claim.state == "moving"
    now[0] += 61  # (the crashed holder's lease had been ended at once: it failed)
    taken = _resharder(store, four, owner="second", clock=lambda: now[0]).run(target)
    assert taken.slots_finished > 0
    claim = store.load_claim()
    assert claim is not None
    assert (claim.owner, claim.state) == ("second", "finished")
    assert Resharder(store=store, provider=four.provider, tables=billing_tables()).verify() == []
    assert actual_rows(four, slot_check=_owner_check(target)) == expected_rows(charges)


def test_two_resharders_of_one_plan_never_merge_a_chunk_twice(four: Backend) -> None:
    """Case 3: a stalled resharder whose lease was taken over resumes mid-merge while the
    new holder merges the same slot: every chunk is merged once, the totals are exact."""
    first = ShardMap.create(["s0", "s1"], slots=SLOTS)
    moved = {m.slot for m in first.plan_to(first.add_shard("s2")).moves}
    charges = [
        c
        for c in make_charges(145, 600, accounts=40)
        if c.parts == 1 and first.slot_for(c.account) in moved  # whole one-charge events
    ]
    store, writer = _setup(four, ["s0", "s1"], charges)
    writer.close()
    target = store.load().add_shard("s2")
    now = [1_000_000.0]
    first_chunk_merged = threading.Event()
    second_chunk_merged = threading.Event()
    taken: list[BaseException | None] = []
    slot: list[int] = []

    def newcomer() -> None:
        def hold(name: str) -> None:
            # The newcomer merged the stalled one's next chunk, not yet deleted on the source.
            if name.startswith("merge-delete:") and not second_chunk_merged.is_set():
                second_chunk_merged.set()
                first_chunk_merged.wait(30)

        try:
            _resharder(
                store,
                four,
                owner="newcomer",
                clock=lambda: now[0] + 120,  # sees the stalled lease expired
                before_step=hold,
            ).run(target)
        except BaseException as exc:  # reported by the assertion below
            taken.append(exc)
        else:
            taken.append(None)

    thread = threading.Thread(target=newcomer)

    def stall(name: str) -> None:
        if name.startswith("merge-delete:") and not slot:
            slot.append(int(name.split(":")[1]))
            thread.start()  # the lease is taken over while this resharder stalls here
            assert second_chunk_merged.wait(30)
            first_chunk_merged.set()  # let the newcomer go on after this one's next chunk

    stalled = _resharder(
        store,
        four,
        owner="stalled",
        clock=lambda: now[0],
        before_step=stall,
        settings=ReshardSettings(chunk_rows=2, parallel_slots=1, lease_seconds=60, lease_wait=0),
    )
    with pytest.raises(ReshardClaimedError) as caught:  # it notices the takeover and stops
        stalled.run(target)
    assert caught.value.owner == "newcomer"
    thread.join(60)
    assert taken == [None]
    assert Resharder(store=store, provider=four.provider, tables=billing_tables()).verify() == []
    assert actual_rows(four, slot_check=_owner_check(target)) == expected_rows(charges)


class _BeforeConnect:
    """Wraps a provider: ``hook(shard)`` runs before each connection it lends."""

    def __init__(self, inner: object, hook: object) -> None:
        self.inner = inner
        self.hook = hook

    def connection(self, shard: str, *, readonly: bool = False) -> object:
        self.hook(shard)  # type: ignore[operator]
        return self.inner.connection(shard, readonly=readonly)  # type: ignore[attr-defined]

    def close(self) -> None:
        pass


def test_the_holder_goes_on_past_a_slot_a_stalled_resharder_finished_meanwhile(
    four: Backend,
) -> None:
    """Case 3: the stalled resharder of the same plan, which has not yet noticed the
    takeover, finishes a slot between the holder's read of its ledger chunk and the
    holder's copy: the holder takes the slot as finished and completes the reshard (it
    stopped with "another resharder finished it", and the operator had to run it again;
    CI, 2026-12-04). The stalled one stops with "lost its claim"; the totals are exact."""
    charges = make_charges(148, 300, accounts=40)
    store, writer = _setup(four, ["s0", "s1"], charges)
    writer.close()
    target = store.load().add_shard("s2")
    targets = {m.slot: m.target for m in store.load().plan_to(target).moves}
    now = [1_000_000.0]
    at_slot = threading.Event()
    go = threading.Event()
    slot_done = threading.Event()
    go_on = threading.Event()
    first: list[int] = []
    stalled_result: list[BaseException | None] = []

    def stalled_steps(name: str) -> None:
        if name.startswith("ledger:") and not first:
            first.append(int(name.split(":")[1]))
            at_slot.set()  # stalled here while its lease expires and the plan is taken over
            assert go.wait(60)
        elif first and not slot_done.is_set() and name.split(":")[1:2] != [str(first[0])]:
            slot_done.set()  # it finished the slot, and stops before its next one
            assert go_on.wait(60)

    def stalled_run() -> None:
        try:
            _resharder(
                store,
                four,
                owner="stalled",
                clock=lambda: now[0],
                before_step=stalled_steps,
                settings=ReshardSettings(
                    chunk_rows=4, parallel_slots=1, lease_seconds=60, lease_wait=0
                ),
            ).run(target)
        except BaseException as exc:  # reported by the assertion below
            stalled_result.append(exc)
        else:
            stalled_result.append(None)

    thread = threading.Thread(target=stalled_run)
    thread.start()
    assert at_slot.wait(60)
    armed: list[int] = []

    def holder_steps(name: str) -> None:
        if name == f"ledger:{first[0]}":
            armed.append(first[0])

    def before_connect(shard: str) -> None:
        # The holder read the slot's first ledger chunk; its copy to the target is next.
        if armed and shard == targets[armed[0]]:
            armed.clear()
            go.set()
            assert slot_done.wait(60)

    holder = Resharder(
        store=store,
        provider=_BeforeConnect(four.provider, before_connect),  # type: ignore[arg-type]
        tables=billing_tables(),
        settings=ReshardSettings(chunk_rows=4, parallel_slots=1, lease_seconds=60, lease_wait=0),
        owner="holder",
        clock=lambda: now[0] + 120,  # sees the stalled lease expired
        before_step=holder_steps,
    )
    try:
        progress = holder.run(target)
    finally:
        go.set()
        go_on.set()
        thread.join(60)
    assert slot_done.is_set()  # the stalled one did finish the slot under the holder
    assert progress.slots_finished > 0
    assert len(stalled_result) == 1
    assert isinstance(stalled_result[0], ReshardClaimedError)
    claim = store.load_claim()
    assert claim is not None
    assert (claim.owner, claim.state) == ("holder", "finished")
    assert Resharder(store=store, provider=four.provider, tables=billing_tables()).verify() == []
    assert actual_rows(four, slot_check=_owner_check(target)) == expected_rows(charges)


def test_the_records_step_leaves_a_slot_another_resharder_finished(four: Backend) -> None:
    """Case 3, the records step: a slot its target owns already (finished by another
    resharder of the plan since this one read the slots' states) is left alone, not a
    reason to stop; a slot the target neither receives nor owns still stops it."""
    charges = make_charges(149, 100, accounts=20)
    store, writer = _setup(four, ["s0", "s1"], charges)
    writer.close()
    target = store.load().add_shard("s2")
    finished, arriving, elsewhere = store.load().plan_to(target).moves[:3]

    def crash(name: str) -> None:
        if name == "records":
            raise CrashError

    with pytest.raises(CrashError):  # every moving slot is fenced and incoming on s2
        _resharder(store, four, before_step=crash).run(target)
    rows = "UPDATE `shardbill_slots` SET `state` = '{}', `peer` = {} WHERE `sb_slot` = {}"
    four.execute("s2", rows.format("owned", "NULL", finished.slot))
    four.execute("s2", rows.format("gone", "'s3'", elsewhere.slot))
    with four.provider.connection("s2") as conn:
        cursor = conn.cursor()
        sql = ReshardStatements.of(dialect_for(conn), SystemTables())
        assert _still_arriving(cursor, sql, [finished, arriving], "s2") == [arriving]
        with pytest.raises(ReshardError, match=f"slot {elsewhere.slot} is no longer moving"):
            _still_arriving(cursor, sql, [elsewhere], "s2")


def test_a_resharder_paused_inside_its_switch_changes_no_later_reshards_rows(
    four: Backend,
) -> None:
    """Case 3, inside a step: a resharder pauses between its accept and its fences (one
    transaction per shard) while its lease expires; another takes the plan over and
    finishes it, and a later reshard moves the slots back. Resumed, the stale one must not
    fence the rows the later reshard handed back (it did: ``epoch`` was not compared, and
    the slots were left owned by no shard; simulation long run, seed 60241). Every
    ownership change is guarded by the rows' epoch: it stops with "lost its claim"."""
    charges = make_charges(150, 200, accounts=40)
    store, writer = _setup(four, ["s0", "s1"], charges)
    writer.close()
    target = store.load().add_shard("s2")
    now = [1_000_000.0]
    at_fence = threading.Event()
    go = threading.Event()
    stale_result: list[BaseException | None] = []
    stepped: list[str] = []

    def before_connect(shard: str) -> None:
        # The switch's first transaction is the accept on s2; the next, a fence on s0/s1.
        if stepped == ["switch"] and shard in ("s0", "s1") and not at_fence.is_set():
            at_fence.set()
            assert go.wait(60)

    def stale_run() -> None:
        try:
            Resharder(
                store=store,
                provider=_BeforeConnect(four.provider, before_connect),  # type: ignore[arg-type]
                tables=billing_tables(),
                settings=ReshardSettings(chunk_rows=4, parallel_slots=1, lease_wait=0),
                owner="stale",
                clock=lambda: now[0],
                before_step=stepped.append,
            ).run(target)
        except BaseException as exc:  # reported by the assertion below
            stale_result.append(exc)
        else:
            stale_result.append(None)

    thread = threading.Thread(target=stale_run)
    thread.start()
    try:
        assert at_fence.wait(60)
        later = [now[0] + 1_000.0]  # past the stale lease
        _resharder(store, four, owner="holder", clock=lambda: later[0]).run(target)
        back = store.load().remove_shard("s2")
        _resharder(store, four, owner="holder", clock=lambda: later[0]).run(back)
    finally:
        go.set()
        thread.join(60)
    assert len(stale_result) == 1
    assert isinstance(stale_result[0], ReshardClaimedError), stale_result
    final = store.load()
    assert final.epoch == 3
    assert Resharder(store=store, provider=four.provider, tables=billing_tables()).verify() == []
    assert actual_rows(four, slot_check=_owner_check(final)) == expected_rows(charges)


def test_a_resharder_paused_past_its_lease_stops_when_it_resumes(four: Backend) -> None:
    """Case 3: paused (at a step) while its lease expired, another resharder took the plan
    over and finished, and a later reshard moved slots on; on resuming it stops with
    "lost its claim" and changes nothing, whatever real time passed meanwhile.

    Found by the simulation (seed 17): it went on and refused with a misleading
    "ownership rows do not fit" that sent the operator to repair healthy rows.
    """
    charges = make_charges(147, 200, accounts=40)
    store, writer = _setup(four, ["s0", "s1"], charges)
    writer.close()
    target = store.load().add_shard("s2")
    now = [1_000_000.0]
    paused: list[str] = []

    def pause(name: str) -> None:
        if name.startswith("ledger:") and not paused:
            paused.append(name)
            now[0] += 120  # the lease (60 s) expires while it is paused
            _resharder(store, four, owner="other", clock=lambda: now[0]).run(target)
            later = store.load().reweight({"s0": 1, "s1": 2, "s2": 1})
            _resharder(store, four, owner="other", clock=lambda: now[0]).run(later)

    stalled = _resharder(
        store,
        four,
        owner="stalled",
        clock=lambda: now[0],
        before_step=pause,
        settings=ReshardSettings(chunk_rows=4, parallel_slots=1, lease_seconds=60, lease_wait=0),
    )
    with pytest.raises(ReshardClaimedError, match="lost its claim"):
        stalled.run(target)
    assert paused
    final = store.load()
    assert Resharder(store=store, provider=four.provider, tables=billing_tables()).verify() == []
    assert actual_rows(four, slot_check=_owner_check(final)) == expected_rows(charges)


class _FirstConnectionHook:
    """A provider that runs ``hook`` once, as the first connection is asked for."""

    def __init__(self, inner: object, hook: object) -> None:
        self._inner = inner
        self._hook = hook

    @contextlib.contextmanager
    def connection(self, shard: str, *, readonly: bool = False) -> Iterator[object]:
        hook, self._hook = self._hook, None
        if hook is not None:
            hook()  # type: ignore[operator]
        with self._inner.connection(shard, readonly=readonly) as conn:  # type: ignore[attr-defined]
            yield conn

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def test_a_resharder_paused_before_its_first_step_stops_when_it_resumes(four: Backend) -> None:
    """Paused right after taking the claim (before any step) while its lease expired,
    another resharder finished the plan and fenced a later one; on resuming it stops
    with "lost its claim", not a misleading "ownership rows do not fit" (found by the
    simulation, seed 3039, with a revert paused at its first transaction)."""
    charges = make_charges(148, 200, accounts=40)
    store, writer = _setup(four, ["s0", "s1"], charges)
    writer.close()
    target = store.load().add_shard("s2")
    now = [1_000_000.0]

    def meanwhile() -> None:
        now[0] += 120  # the lease (60 s) expires while it is paused
        _resharder(store, four, owner="other", clock=lambda: now[0]).run(target)
        later = store.load().reweight({"s0": 1, "s1": 2, "s2": 1})

        def stop_after_fence(step: str) -> None:
            if step == "publish":
                raise CrashError(step)

        with pytest.raises(CrashError):
            _resharder(
                store, four, owner="other", clock=lambda: now[0], before_step=stop_after_fence
            ).run(later)

    stalled = Resharder(
        store=store,
        provider=_FirstConnectionHook(four.provider, meanwhile),  # type: ignore[arg-type]
        tables=billing_tables(),
        owner="stalled",
        clock=lambda: now[0],
        settings=ReshardSettings(chunk_rows=4, parallel_slots=1, lease_seconds=60, lease_wait=0),
    )
    with pytest.raises(ReshardClaimedError, match="lost its claim"):
        stalled.run(target)


def test_a_stale_resharder_that_misses_its_lost_lease_deletes_no_live_ledger_row(
    four: Backend,
) -> None:
    """Case 3, the data-level fence: as above, but the lease check is defeated (as by a
    pause right after a renewal). The stale resharder's steps still change nothing that
    the current map owns: every ledger row stays, so a redelivery applies nothing."""
    charges = make_charges(148, 200, accounts=40)
    store, writer = _setup(four, ["s0", "s1"], charges)
    target = store.load().add_shard("s2")
    now = [1_000_000.0]
    paused: list[str] = []

    def pause(name: str) -> None:
        if name.startswith("ledger:") and not paused:
            paused.append(name)
            now[0] += 120
            _resharder(store, four, owner="other", clock=lambda: now[0]).run(target)
            later = store.load().reweight({"s0": 1, "s1": 2, "s2": 1})
            _resharder(store, four, owner="other", clock=lambda: now[0]).run(later)

    stalled = _resharder(
        store,
        four,
        owner="stalled",
        clock=lambda: now[0],
        before_step=pause,
        settings=ReshardSettings(chunk_rows=4, parallel_slots=1, lease_seconds=60, lease_wait=0),
    )
    stalled._renew = lambda force=False: None  # type: ignore[method-assign]
    with contextlib.suppress(ReshardError):
        stalled.run(target)
    assert paused
    final = store.load()
    again = writer.write(charges)
    writer.close()
    assert again.applied_events == frozenset()
    assert Resharder(store=store, provider=four.provider, tables=billing_tables()).verify() == []
    assert actual_rows(four, slot_check=_owner_check(final)) == expected_rows(charges)


def test_a_target_that_already_owns_its_slots_stops_the_reshard_before_any_change(
    four: Backend,
) -> None:
    """Case 11: ensure_schema() of a writer given a one-shard map, pointed at the new shard,
    marks every slot owned there; the reshard that adds it stops before fencing anything,
    says how to fix it, and after the fix moves every slot exactly."""
    charges = make_charges(146, 200, accounts=40)
    store, writer = _setup(four, ["s0", "s1"], charges)
    writer.close()
    careless = AggregationWriter(
        shard_map=ShardMap.create(["s2"], slots=SLOTS),
        provider=four.provider,
        tables=billing_tables(),
    )
    careless.ensure_schema()
    careless.close()
    target = store.load().add_shard("s2")
    before = _slot_rows(four)
    with pytest.raises(ReshardError, match="already marks slots owned") as caught:
        _resharder(store, four).run(target)
    assert "reshard prepare" in str(caught.value)
    assert _slot_rows(four) == before  # nothing fenced, nothing accepted
    assert store.load().epoch == target.epoch - 1
    # The fix the message gives: the new shard holds no rows, so drop its ownership rows.
    four.execute("s2", "DELETE FROM `shardbill_slots`")
    progress = _resharder(store, four).run(target)
    assert progress.slots_finished == len(store.load_epoch(1).plan_to(target).moves) > 0
    assert Resharder(store=store, provider=four.provider, tables=billing_tables()).verify() == []
    assert actual_rows(four, slot_check=_owner_check(target)) == expected_rows(charges)


def test_a_source_that_forwards_elsewhere_stops_the_reshard_before_any_change(
    four: Backend,
) -> None:
    """Every move checks the source's peer: a slot already fenced towards another shard
    (a reshard run without the claim) stops this one before it changes anything."""
    charges = make_charges(147, 100, accounts=30)
    store, writer = _setup(four, ["s0", "s1"], charges)
    writer.close()
    target = store.load().add_shard("s2")
    move = store.load().plan_to(target).moves[0]
    four.execute(
        move.source,
        f"UPDATE `shardbill_slots` SET `state` = 'gone', `peer` = 's3' WHERE `sb_slot` = "
        f"{move.slot}",
    )
    before = _slot_rows(four)
    with pytest.raises(ReshardError, match="forwards them to 's3'"):
        _resharder(store, four).run(target)
    assert _slot_rows(four) == before
    assert store.load().epoch == target.epoch - 1


# ---------------------------------------------------------------- verify sees it all


def _finished(four: Backend, new: str) -> tuple[MemoryMapStore | JsonFileMapStore, Resharder]:
    """s0, s1 -> add ``new``, finished exact; returns the store and a resharder."""
    store, writer = _setup(four, ["s0", "s1"], make_charges(148, 200, accounts=40))
    writer.close()
    resharder = _resharder(store, four)
    resharder.run(store.load().add_shard(new))
    assert resharder.verify() == []
    return store, resharder


def test_verify_reports_a_shard_in_no_map_that_claims_owned_slots(four: Backend) -> None:
    """Case 1's end state: a shard no published map names marks slots owned and holds rows
    of them; verify names the double ownership and the rows."""
    store, resharder = _finished(four, "s2")
    slot = store.load().slots_of("s2")[0]
    four.execute(
        "s3",
        "INSERT INTO `shardbill_slots` (`sb_slot`, `state`, `epoch`, `peer`) "
        f"VALUES ({slot}, 'owned', 2, NULL)",
    )
    four.execute(
        "s3",
        "INSERT INTO `usage_daily` (`account_id`, `day`, `product`, `sb_slot`, `quantity`, "
        f"`amount`, `charges`) VALUES (1, '2026-11-01', 'sms', {slot}, 1, 1, 1)",
    )
    problems = resharder.verify()
    assert f"slot {slot}: owned by ['s2', 's3'], but the map (epoch 2) gives it to 's2'" in (
        "\n".join(problems)
    )
    assert any(f"rows of slot {slot} are on shard 's3'" in p for p in problems)


def test_verify_reports_forwarding_to_a_shard_left_incoming(four: Backend) -> None:
    """Case 2's end state: a source forwards a slot to a shard in no map, which was left
    incoming with rows; verify names the stray forwarding, the incoming slot and the rows."""
    store, resharder = _finished(four, "s3")
    move = store.load_epoch(1).plan_to(store.load()).moves[0]
    four.execute(
        move.source, f"UPDATE `shardbill_slots` SET `peer` = 's2' WHERE `sb_slot` = {move.slot}"
    )
    four.execute(
        "s2",
        "INSERT INTO `shardbill_slots` (`sb_slot`, `state`, `epoch`, `peer`) "
        f"VALUES ({move.slot}, 'incoming', 2, '{move.source}')",
    )
    four.execute(
        "s2",
        "INSERT INTO `shardbill_ledger` (`event_id`, `sb_slot`, `fingerprint`, `event_time`) "
        f"VALUES ('stray', {move.slot}, '0000000000000000', 0)",
    )
    text = "\n".join(resharder.verify())
    assert f"slot {move.slot}: {move.source!r} forwards writers to 's2'" in text
    assert f"slot {move.slot}: left incoming on 's2'" in text
    assert f"rows of slot {move.slot} are on shard 's2'" in text


def test_verify_reports_a_slot_owned_by_no_shard(four: Backend) -> None:
    """Every slot must be owned by exactly one shard: a lost ownership row is reported."""
    store, resharder = _finished(four, "s2")
    slot = store.load().slots_of("s0")[0]
    four.execute("s0", f"DELETE FROM `shardbill_slots` WHERE `sb_slot` = {slot}")
    assert f"slot {slot}: owned by no shard" in "\n".join(resharder.verify())


def test_verify_is_exact_at_every_step_of_a_claimed_move(four: Backend) -> None:
    """While the claimed reshard runs (before and after publish, mid-merge), verify finds
    nothing wrong: slots in motion fit a step of their move."""
    charges = make_charges(149, 200, accounts=40)
    store, writer = _setup(four, ["s0", "s1"], charges)
    writer.close()
    target = store.load().add_shard("s2")
    checker = Resharder(store=store, provider=four.provider, tables=billing_tables())
    checked: list[str] = []

    def check(name: str) -> None:
        if name in ("switch", "publish") or name.startswith(("merge-delete:", "finish:")):
            assert checker.verify() == [], name
            checked.append(name)

    _resharder(store, four, before_step=check).run(target)
    assert {"switch", "publish"} <= set(checked)
    assert any(n.startswith("merge-delete:") for n in checked)
    assert checker.verify() == []


def test_prepare_creates_a_new_shards_tables_and_no_ownership(four: Backend) -> None:
    """Resharder.prepare() (`shardbill reshard prepare`) gives the shards a plan adds their
    tables without recording any slot as theirs, so the reshard that follows moves them."""
    charges = make_charges(150, 120, accounts=30)
    store = MemoryMapStore(ShardMap.create(["s0", "s1"], slots=SLOTS))
    with AggregationWriter(
        shard_map=store, provider=four.provider, tables=billing_tables()
    ) as writer:
        writer.ensure_schema()
        assert writer.write(charges).ok
    target = store.load().add_shard("s3")
    resharder = _resharder(store, four)
    assert resharder.prepare(target) == ["s3"]
    assert four.rows("s3", "SELECT COUNT(*) FROM `shardbill_slots`") == [(0,)]
    assert four.rows("s3", "SELECT COUNT(*) FROM `usage_daily`") == [(0,)]
    status = resharder.status(target)
    assert {s.state for s in status} == {"pending"}
    progress = resharder.run(target)
    assert progress.slots_finished == len(status)
    assert resharder.verify() == []


def test_a_slot_failing_transiently_is_retried_before_the_queued_slots(four: Backend) -> None:
    """Case 10: after a transient failure in one slot's move, the run starts again at once
    (the queued slots are cancelled), instead of first working through every queued slot."""
    from shardbill.errors import DeadlockError
    from shardbill.retry import RetryPolicy

    charges = make_charges(151, 300, accounts=40)
    store, writer = _setup(four, ["s0", "s1"], charges)
    writer.close()
    steps: list[str] = []

    def fail_once(name: str) -> None:
        steps.append(name)
        if name.startswith("ledger:") and "failed" not in steps:
            steps.append("failed")
            raise DeadlockError("injected", errno=1213, shard="s0")

    progress = _resharder(
        store,
        four,
        before_step=fail_once,
        settings=ReshardSettings(
            chunk_rows=4,
            parallel_slots=1,
            lease_wait=0,
            retry=RetryPolicy(max_attempts=3, base_delay=0, max_delay=0),
        ),
    ).run(store.load().add_shard("s2"))
    assert progress.attempts == 2
    after = steps[steps.index("failed") + 1 :]
    assert after[0] == "switch"  # no other slot moved before the retry began
    assert Resharder(store=store, provider=four.provider, tables=billing_tables()).verify() == []
    assert actual_rows(four, slot_check=_owner_check(store.load())) == expected_rows(charges)


def test_the_ledger_copy_takes_its_columns_from_the_ledger_definition(four: Backend) -> None:
    """The resharder copies every column SystemTables.ledger_def() declares: a column added
    there (here a nullable one, filled on the source by hand) arrives on the target."""
    import attrs

    from shardbill.tables import Column, ColumnKind, SystemTables, TableDef
    from shardbill.writer import WriterSettings

    @attrs.frozen(kw_only=True)
    class Wider(SystemTables):
        def ledger_def(self) -> TableDef:
            base = super().ledger_def()
            extra = Column(name="noted", kind=ColumnKind.BIGINT, nullable=True)
            return attrs.evolve(base, columns=(*base.columns, extra))

    system = Wider()
    store = MemoryMapStore(ShardMap.create(["s0", "s1"], slots=SLOTS))
    with AggregationWriter(
        shard_map=store,
        provider=four.provider,
        tables=billing_tables(),
        settings=WriterSettings(system_tables=system),
    ) as writer:
        writer.ensure_schema()
        assert writer.write(make_charges(152, 120, accounts=30)).ok
    for shard in ("s0", "s1"):
        four.execute(shard, "UPDATE `shardbill_ledger` SET `noted` = `sb_slot` * 7")
    target = store.load().add_shard("s2")
    Resharder(
        store=store, provider=four.provider, tables=billing_tables(), system_tables=system
    ).run(target)
    moved = four.rows("s2", "SELECT `sb_slot`, `noted` FROM `shardbill_ledger`")
    assert moved
    assert all(noted == slot * 7 for slot, noted in moved)


@pytest.mark.parametrize("how", ["run", "revert"])
def test_a_resharder_that_lost_its_claim_never_retries_another_plan(
    four: Backend, how: str
) -> None:
    """Paused after its claim while its lease expired: another resharder finished its
    plan and then a newer reshard. A transient failure when it resumes must not make
    it retry: its run (or revert) resolved no target of its own, and a retry took the
    claim of whatever reshard the store held then (simulation seed 7013: a revert
    woke up ten days later and claimed the newer, finished reshard as moving, which
    refused the next plan)."""
    from shardbill.errors import DeadlockError

    charges = make_charges(149, 200, accounts=40)
    store, writer = _setup(four, ["s0", "s1"], charges)
    writer.close()
    first = store.load().add_shard("s2")
    now = [1_000_000.0]
    settings = ReshardSettings(chunk_rows=4, parallel_slots=1, lease_seconds=60, lease_wait=0)
    if how == "revert":
        _resharder(store, four, owner="first", clock=lambda: now[0]).run(first)
    woke: list[str] = []

    def meanwhile(step: str) -> None:
        if woke or step != "switch":
            return
        woke.append(step)
        now[0] += 864_000  # ten days: its lease is long gone
        other = _resharder(store, four, owner="other", clock=lambda: now[0])
        other.run()  # takes its plan over and finishes it
        later = store.load().reweight(dict.fromkeys(store.load().shards, 1) | {"s0": 2})
        _resharder(store, four, owner="other", clock=lambda: now[0]).run(later)
        raise DeadlockError("injected: the stalled resharder's first step deadlocks")

    stalled = _resharder(
        store, four, owner="stalled", clock=lambda: now[0], before_step=meanwhile, settings=settings
    )
    finished = None
    with pytest.raises(ReshardClaimedError, match="lost its claim"):
        stalled.revert() if how == "revert" else stalled.run(first)
    finished = store.load_claim()
    assert woke
    assert finished is not None
    assert finished.owner == "other"
    assert finished.state == "finished"
    assert finished.target == store.load()
