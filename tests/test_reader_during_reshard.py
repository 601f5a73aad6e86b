"""Reads exact at every moment of a move (issue 14, cases 4-8), on SQLite and MariaDB.

Each test forces one interleaving deterministically: the reader's ``at_gap``
hook (or the resharder's ``before_step``) runs a whole reshard, or one step
of it, inside the gap between two of the other's reads. Each read must give
the oracle's number (or a retryable error), never a wrong one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from shardbill import Reader, ShardMap
from shardbill.errors import ConfigurationError, SlotsMovedDuringReadError
from shardbill.resharding import MemoryMapStore, Resharder, ReshardSettings
from shardbill.rules import Charge
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter
from shardbill.writer.schema import apply_schema
from tests.support.backends import KINDS, Backend, make_backend
from tests.support.oracle import expected_rows
from tests.test_writer import make_charges

SLOTS = 64


@pytest.fixture(params=KINDS)
def four(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Four shards (s0..s3), every one with its tables."""
    yield from make_backend(request.param, 4, tmp_path, request)


def _setup(backend: Backend, shards: list[str], charges: list[Charge]) -> MemoryMapStore:
    store = MemoryMapStore(ShardMap.create(shards, slots=SLOTS))
    with AggregationWriter(
        shard_map=store, provider=backend.provider, tables=billing_tables()
    ) as writer:
        writer.ensure_schema()
        apply_schema(
            backend.provider,
            store.load(),
            billing_tables(),
            shards=[s for s in backend.shards if s not in shards],
            record_ownership=False,
        )
        assert writer.write(charges).ok
    return store


def _reshard(store: MemoryMapStore, backend: Backend, target: ShardMap, **kw: object) -> None:
    Resharder(
        store=store,
        provider=backend.provider,
        tables=billing_tables(),
        settings=ReshardSettings(chunk_rows=3, parallel_slots=1, lease_wait=0),
        **kw,  # type: ignore[arg-type]
    ).run(target)


def _balance(charges: list[Charge], account: int) -> list[int]:
    """The oracle's account_balance measures of ``account`` (one currency in these tests)."""
    (found,) = [v for k, v in expected_rows(charges)["account_balance"].items() if k[0] == account]
    return found


def _grand(charges: list[Charge]) -> Decimal:
    balance = expected_rows(charges)["account_balance"]
    return Decimal(sum(v[0] for v in balance.values())).scaleb(-6)


def _reader(
    backend: Backend,
    shard_map: object,
    at_gap: Callable[[str], None] | None = None,
    **kw: object,
) -> Reader:
    if at_gap is not None:
        kw["at_gap"] = at_gap
    return Reader(
        shard_map=shard_map,  # type: ignore[arg-type]
        provider=backend.provider,
        tables=billing_tables(),
        **kw,  # type: ignore[arg-type]
    )


def _once(name: str, action: Callable[[], None]) -> Callable[[str], None]:
    """A hook that runs ``action`` the first time the gap ``name`` is reached."""
    done: list[str] = []

    def hook(gap: str) -> None:
        if gap == name and not done:
            done.append(gap)
            action()

    hook.done = done  # type: ignore[attr-defined]
    return hook


@pytest.mark.parametrize("held", ["old", "new"])
def test_totals_count_a_slot_merged_between_two_shards_snapshots_once(
    four: Backend, held: str
) -> None:
    """Case 4: a whole move (fence, merge, finish) between one shard's snapshot and the
    next ones' is counted once, not on both sides (nor on neither): the totals equal the
    oracle, whether the reader holds the map before the move or the one after it."""
    charges = make_charges(241, 240, accounts=40)
    store = _setup(four, ["s0", "s1"], charges)
    old = store.load()
    target = old.add_shard("s2")
    # One worker reads the shards in sorted order: s0 is read before the move, the rest after.
    hook = _once("totals:part:s0", lambda: _reshard(store, four, target))
    reader = _reader(four, old if held == "old" else target, hook, max_workers=1)
    assert reader.totals("account_balance", group_by=[])[()]["amount"] == _grand(charges)
    assert hook.done  # type: ignore[attr-defined]


def test_a_point_read_whose_slot_moves_after_its_state_was_read_is_exact(
    four: Backend,
) -> None:
    """Case 5: with the old map, the slot's whole move happens between reading its state
    and reading its rows: the read still returns the account's rows, not nothing."""
    charges = make_charges(242, 240, accounts=40)
    store = _setup(four, ["s0", "s1"], charges)
    old = store.load()
    target = old.add_shard("s2")
    account = next(
        a
        for a, _ in sorted(expected_rows(charges)["account_balance"])
        if target.shard_for(a) == "s2"
    )
    balance = _balance(charges, account)
    hook = _once("rows:located", lambda: _reshard(store, four, target))
    (row,) = _reader(four, old, hook).rows("account_balance", account)
    assert hook.done  # type: ignore[attr-defined]
    assert row.measures["charges"] == balance[1]
    assert row.measures["amount"] == Decimal(balance[0]).scaleb(-6)


def test_removing_a_shard_totals_stay_exact_with_the_published_map(four: Backend) -> None:
    """Case 6: during a 3 -> 2 move, a reader built from the map in the store (which no
    longer names the removed shard) still counts the rows not merged yet."""
    charges = make_charges(243, 300, accounts=40)
    store = _setup(four, ["s0", "s1", "s2"], charges)
    target = store.load().remove_shard("s1")
    grand = _grand(charges)
    seen: list[Decimal] = []

    def read(step: str) -> None:
        if step.startswith(("merge-delete:", "ledger:")) and len(seen) < 12:
            reader = _reader(four, store.load())  # the documented way
            seen.append(reader.totals("account_balance", group_by=[])[()]["amount"])

    _reshard(store, four, target, before_step=read)
    assert len(seen) == 12
    assert seen == [grand] * 12


def test_reads_spanning_a_whole_reweight_are_exact(four: Backend) -> None:
    """Case 7: a reader that stalls as long as a whole re-weight (between reading the
    moving rows and the shards' own rows, or between a point read's two shards) still
    returns the oracle's totals and balances, holding a map from before both moves."""
    charges = make_charges(244, 300, accounts=40)
    store = _setup(four, ["s0", "s1", "s2"], charges)
    oldest = store.load()
    first = oldest.add_shard("s3")
    _reshard(store, four, first)
    target = first.reweight({"s0": 3, "s1": 1, "s2": 1, "s3": 1})
    hook = _once("totals:sources", lambda: _reshard(store, four, target))
    reader = _reader(four, oldest, hook)
    assert reader.totals("account_balance", group_by=[])[()]["amount"] == _grand(charges)
    assert hook.done  # type: ignore[attr-defined]
    back = target.reweight({"s0": 1, "s1": 1, "s2": 1, "s3": 1})
    account = next(
        a
        for a, _ in sorted(expected_rows(charges)["account_balance"])
        if target.shard_for(a) != back.shard_for(a)
    )
    hook = _once("rows:source", lambda: _reshard(store, four, back))
    (row,) = _reader(four, oldest, hook).rows("account_balance", account)
    assert hook.done  # type: ignore[attr-defined]
    assert row.measures["charges"] == _balance(charges, account)[1]


def test_a_read_that_keeps_racing_moves_raises_a_retryable_error(four: Backend) -> None:
    """Reads never return a number they cannot vouch for: when slots move during every
    attempt, the read raises SlotsMovedDuringReadError (a RetryableError)."""
    charges = make_charges(245, 120, accounts=30)
    store = _setup(four, ["s0", "s1"], charges)
    maps = [store.load()]

    def move(gap: str) -> None:
        if gap == "totals:sources":
            current = store.load()
            change = current.remove_shard if "s2" in current.shards else current.add_shard
            nxt = change("s2")
            _reshard(store, four, nxt)
            maps.append(nxt)

    reader = _reader(four, store, move, max_attempts=2)
    with pytest.raises(SlotsMovedDuringReadError, match="read again"):
        reader.totals("account_balance", group_by=[])
    assert len(maps) == 3
    settled = _reader(four, store)
    assert settled.totals("account_balance", group_by=[])[()]["amount"] == _grand(charges)


def test_a_reader_takes_a_map_store_and_follows_its_newest_map(four: Backend) -> None:
    """Case 8: Reader(shard_map=store) reads (no AttributeError) and, once a reshard has
    published a new map, routes with it after the first read that finds the old one stale."""
    charges = make_charges(246, 200, accounts=40)
    store = _setup(four, ["s0", "s1"], charges)
    reader = _reader(four, store)
    account = next(
        a
        for a, _ in sorted(expected_rows(charges)["account_balance"])
        if store.load().add_shard("s2").shard_for(a) == "s2"
    )
    balance = _balance(charges, account)
    (row,) = reader.rows("account_balance", account)
    assert row.measures["charges"] == balance[1]
    target = store.load().add_shard("s2")
    _reshard(store, four, target)
    assert reader.totals("account_balance", group_by=[])[()]["amount"] == _grand(charges)
    assert reader.shard_map == target
    (row,) = reader.rows("account_balance", account)
    assert row.measures["charges"] == balance[1]


def test_a_reader_refuses_a_shard_map_of_the_wrong_type(four: Backend) -> None:
    """Anything but a ShardMap or a map store is a ConfigurationError naming the type."""
    with pytest.raises(ConfigurationError, match="'shard_map' must be a ShardMap or a map store"):
        _reader(four, {"s0": 1})


def test_a_newer_map_loaded_by_another_thread_mid_read_is_harmless(four: Backend) -> None:
    """While a totals read is between its steps, a whole reshard adds a shard and another
    thread using the same reader switches it to the new map: the read starts over and
    returns the oracle's total (it does not trip over the shard it has not read)."""
    charges = make_charges(247, 150, accounts=30)
    store = _setup(four, ["s0", "s1"], charges)
    target = store.load().add_shard("s2")
    holder: list[Reader] = []

    def move_and_switch() -> None:
        _reshard(store, four, target)
        holder[0].use_map(store.load())  # as another thread's read would have

    hook = _once("totals:sources", move_and_switch)
    holder.append(_reader(four, store.load(), hook))
    assert holder[0].totals("account_balance", group_by=[])[()]["amount"] == _grand(charges)
    assert hook.done  # type: ignore[attr-defined]
