"""A seeded random run of competing, crashing and reverting resharders, with a writer and
readers checking the totals at every step (issue 14).

Each seed draws a sequence of operator actions on four shards: plans (add, remove,
re-weight) run to the end or crashed at a random step, resumes, reverts (also crashed),
and rival plans while a reshard is unfinished (which must be refused). Inside the
resharder's steps a writer writes the next batch and two readers (one on the store,
one on the first map) must give the oracle's total of what was written. At the end
everything is finished, redelivered, verified and compared with the oracle.

The seed fixes the operators' actions and crash points; with two slots moving at once
the hooks' draws interleave by thread scheduling, so a failing seed is rerun with
``parallel_slots`` forced to 1 to reproduce it exactly. CI runs
``SHARDBILL_RESHARD_RANDOM_SEEDS`` (default 3) seeds on SQLite and on MariaDB through
both drivers (a few seconds per seed on SQLite); the long run is, e.g.::

    SHARDBILL_RESHARD_RANDOM_SEEDS=100 .venv/bin/python -m pytest \\
        tests/test_reshard_random.py -k sqlite
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from shardbill import Reader, ShardMap
from shardbill.errors import ReshardClaimedError
from shardbill.resharding import MemoryMapStore, Resharder, ReshardSettings
from shardbill.rules import Charge
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter
from shardbill.writer.schema import apply_schema
from tests.support.backends import KINDS, Backend, make_backend
from tests.support.oracle import actual_rows, expected_rows
from tests.test_writer import make_charges

SLOTS = 32
SEEDS = int(os.environ.get("SHARDBILL_RESHARD_RANDOM_SEEDS", "3"))
SHARDS = ("s0", "s1", "s2", "s3")


class CrashError(Exception):
    """Stands for the resharding process dying at a step."""


@pytest.fixture(params=KINDS)
def four(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Four shards (s0..s3), every one with its tables."""
    yield from make_backend(request.param, 4, tmp_path, request)


def _grand(charges: list[Charge]) -> Decimal:
    balance = expected_rows(charges)["account_balance"]
    return Decimal(sum(v[0] for v in balance.values())).scaleb(-6)


def _change(rng: random.Random, current: ShardMap) -> ShardMap:
    unused = [s for s in SHARDS if s not in current.shards]
    choices = (
        ["reweight"] + (["add"] if unused else []) + (["remove"] if len(current.shards) > 1 else [])
    )
    kind = rng.choice(choices)
    if kind == "add":
        return current.add_shard(rng.choice(unused), rng.choice([1, 2]))
    if kind == "remove":
        return current.remove_shard(rng.choice(sorted(current.shards)))
    weights = {s: rng.choice([1, 2, 3]) for s in current.shards}
    if weights == dict(current.shards):
        weights[min(weights)] += 1
    return current.reweight(weights)


class _Run:
    """The shared state of one seeded run: store, writer, batches, what was written."""

    def __init__(self, backend: Backend, seed: int) -> None:
        self.backend = backend
        self.rng = random.Random(seed)
        self.store = MemoryMapStore(ShardMap.create(["s0", "s1"], slots=SLOTS))
        self.first = self.store.load()
        self.writer = AggregationWriter(
            shard_map=self.store, provider=backend.provider, tables=billing_tables()
        )
        self.writer.ensure_schema()
        apply_schema(
            backend.provider, self.first, billing_tables(), shards=["s2", "s3"],
            record_ownership=False,
        )  # fmt: skip
        charges = make_charges(500 + seed, 400, accounts=40)
        events: dict[str, list[Charge]] = {}
        for c in charges:
            events.setdefault(c.event_id, []).append(c)
        values = list(events.values())
        self.batches = [[c for e in values[i : i + 8] for c in e] for i in range(0, len(values), 8)]
        self.written: list[Charge] = []
        self.checks = 0
        # With two slots moving at once, hooks run on two threads: a read must not overlap
        # a write, or the oracle (what was written) and the shards disagree by that write.
        self.lock = threading.RLock()

    def write_next(self) -> None:
        if not self.batches:
            return
        batch = self.batches.pop(0)
        result = self.writer.write(batch)
        for _ in range(20):
            if result.ok:
                break
            result = self.writer.write([c for c in batch if c.event_id in result.failed_events])
        assert result.ok, result
        self.written.extend(batch)

    def check_reads(self) -> None:
        grand = _grand(self.written) if self.written else Decimal(0)
        for shard_map in (self.store, self.first):
            reader = Reader(
                shard_map=shard_map,  # type: ignore[arg-type]
                provider=self.backend.provider,
                tables=billing_tables(),
            )
            totals = reader.totals("account_balance", group_by=[])
            got = totals[()]["amount"] if totals else Decimal(0)
            assert got == grand, (shard_map, got, grand)
        self.checks += 1

    def hook(self, crash_at: int | None) -> Callable[[str], None]:
        countdown = [crash_at]

        def before_step(_name: str) -> None:
            with self.lock:
                roll = self.rng.random()
                if roll < 0.3:
                    self.write_next()
                elif roll < 0.45:
                    self.check_reads()
            if countdown[0] is not None:
                countdown[0] -= 1
                if countdown[0] <= 0:
                    raise CrashError

        return before_step

    def resharder(self, crash_at: int | None = None) -> Resharder:
        return Resharder(
            store=self.store,
            provider=self.backend.provider,
            tables=billing_tables(),
            settings=ReshardSettings(
                chunk_rows=self.rng.choice([2, 5, 40]),
                parallel_slots=self.rng.choice([1, 2]),
                lease_wait=0,
            ),
            before_step=self.hook(crash_at),
        )


@pytest.mark.parametrize("seed", range(SEEDS))
def test_random_operators_keep_every_total_exact(four: Backend, seed: int) -> None:
    """Seeded plans, crashes, resumes, reverts and refused rivals, with a writer and readers
    in between: every read equals the oracle, and the end state is exact and verified."""
    run = _Run(four, seed)
    rng = run.rng
    refused = 0
    with run.writer:
        for _ in range(6):
            run.write_next()
            claim = run.store.load_claim()
            unfinished = claim is not None and claim.state == "moving"
            crash = rng.randrange(1, 40) if rng.random() < 0.5 else None
            action = rng.choice(["plan", "plan", "revert"] + (["rival"] if unfinished else []))
            try:
                if action == "rival":
                    assert claim is not None
                    other = _change(rng, run.store.load())
                    if other.epoch == claim.target.epoch and other == claim.target:
                        continue
                    with pytest.raises(ReshardClaimedError):
                        run.resharder().run(other)
                    refused += 1
                elif action == "revert" and claim is not None and claim.state != "aborted":
                    if run.store.load().epoch <= claim.target.epoch:
                        run.resharder(crash).revert()
                elif unfinished:
                    run.resharder(crash).run()  # resume the claimed reshard
                else:
                    run.resharder(crash).run(_change(rng, run.store.load()))
            except CrashError:
                pass
        # Finish what is unfinished, write the rest, redeliver everything.
        claim = run.store.load_claim()
        if claim is not None and claim.state == "moving":
            run.resharder().run()
        while run.batches:
            run.write_next()
        redelivered = run.writer.write(run.written)
    assert redelivered.ok
    assert redelivered.applied_events == frozenset()
    run.check_reads()
    final = run.store.load()
    assert run.resharder().verify() == []

    def owner(shard: str, key: tuple[object, ...], slot: int) -> None:
        assert final.owner(slot) == shard, (key, slot, shard)

    assert actual_rows(four, slot_check=owner) == expected_rows(run.written)
    assert run.checks > 1
