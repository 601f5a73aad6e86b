"""COMMITs cut while a reshard runs: for the writers and for the resharder itself.

Four shards on two private servers, each server behind a FaultProxy; the
map starts on three of them and a reshard adds the fourth while a writer
delivers the rest of the stream. Writer and resharder both connect through
the proxies, and before every batch one COMMIT on a random proxy is armed to
be cut, before or after it reaches the server, whoever sends it next:

* a writer's lost COMMIT is resolved through the ledger (on the slot's new
  owner, or through the source's ledger while the slot is still arriving);
* the resharder's lost COMMIT (an acceptance, a fence, a copied ledger
  chunk, a merged chunk and its progress record, a finish) makes
  ``Resharder.run`` run again from the top, which resumes from what the
  shards recorded.

At the end every event is delivered again until acknowledged, and I1-I5 are
checked against the new map: every unit applied exactly once, on the shard
that owns its slot now.
"""

from __future__ import annotations

import random
import threading
from collections import Counter

from shardbill import ShardMap
from shardbill.observe import Stats
from shardbill.providers import PooledProvider
from shardbill.resharding import MemoryMapStore, Resharder, ReshardProgress, ReshardSettings
from shardbill.retry import RetryPolicy
from shardbill.writer import AggregationWriter, WriterSettings
from shardbill.writer.schema import apply_schema
from tests.faults.cluster import ShardCluster, default_retry
from tests.faults.conftest import ClusterFactory
from tests.faults.invariants import Recorder, assert_invariants
from tests.faults.report import note
from tests.faults.scale import iterations, seed_for
from tests.faults.workload import batches, priced_events
from tests.support.clock import fixed_clock
from tests.support.proxy import is_commit


def _arm(cluster: ShardCluster, rng: random.Random, injected: Counter[str]) -> None:
    proxy = rng.choice(cluster.proxies)
    if proxy.pending_cuts:
        return  # the last one has not fired yet
    before = rng.random() < 0.5
    proxy.cut_when(is_commit, before=before, count=1, label="cut")
    injected["commit_before" if before else "commit_after"] += 1


def test_cut_commits_during_a_reshard_apply_every_event_exactly_once(
    make_cluster: ClusterFactory, driver: str
) -> None:
    """Writers and the resharder lose COMMITs during a 3 -> 4 move; every total stays exact."""
    seed = seed_for(f"reshard-commit-cuts-{driver}")
    rng = random.Random(seed)
    cluster = make_cluster(servers=2, shards=4, schema=False)
    old = ShardMap.create(["s0", "s1", "s2"], slots=64)
    target = old.add_shard("s3")
    store = MemoryMapStore(old)
    direct = PooledProvider.from_urls(cluster.urls(direct=True))
    try:
        apply_schema(direct, old, cluster.tables, shards=["s0", "s1", "s2"])
        events = priced_events(seed, iterations(36, 600) * 10, split_fraction=0.0)
        retry = default_retry(seed)
        recorder = Recorder(events, old, retry=retry, follow_moves=True)
        stats = Stats()
        writer = AggregationWriter(
            shard_map=store,
            provider=cluster.provider(),
            tables=cluster.tables,
            settings=WriterSettings(retry=retry, max_workers=4),
            observer=stats,
            clock=fixed_clock,
        )
        ids = list(events)
        first, rest = ids[: len(ids) // 3], ids[len(ids) // 3 :]
        injected: Counter[str] = Counter()
        for batch in batches(first, 10, rng):
            _arm(cluster, rng, injected)
            recorder.write_until_done("before", writer, batch)

        resharder = Resharder(
            store=store,
            provider=cluster.provider(),
            tables=cluster.tables,
            settings=ReshardSettings(
                chunk_rows=5,
                parallel_slots=2,
                retry=RetryPolicy(max_attempts=60, base_delay=0.01, max_delay=0.2, seed=seed),
            ),
        )
        outcome: list[ReshardProgress | BaseException] = []

        def move() -> None:
            try:
                outcome.append(resharder.run(target))
            except BaseException as exc:
                outcome.append(exc)
                raise

        mover = threading.Thread(target=move)
        mover.start()
        during = 0
        for batch in batches(rest, 10, rng):
            _arm(cluster, rng, injected)
            recorder.write_until_done("during", writer, batch)
            during += mover.is_alive()
        for _ in range(3):  # the writer is done: a few more cuts for the resharder alone
            if not mover.is_alive():
                break
            _arm(cluster, rng, injected)
            while mover.is_alive() and any(p.pending_cuts for p in cluster.proxies):
                mover.join(0.05)
        mover.join()
        for proxy in cluster.proxies:
            proxy.clear_cuts()
        (progress,) = outcome
        assert isinstance(progress, ReshardProgress), progress
        assert store.load() == target
        assert during > 0, "no batch was written while the reshard ran"

        # The caller's side of the contract: deliver everything again until acknowledged.
        replay = recorder.write_until_done("settle", writer, ids)
        verdict = assert_invariants(
            recorder, cluster, shard_map=target, settled=True, context=f"seed {seed}"
        )
        checker = Resharder(store=store, provider=direct, tables=cluster.tables)
        assert checker.verify() == []
        assert {s.state for s in checker.status(target)} == {"finished"}
    finally:
        direct.close()
    cuts = sum(p.stats.commits_cut_before + p.stats.commits_cut_after for p in cluster.proxies)
    assert cuts > 0
    note(
        "COMMIT cuts during a reshard (writer and resharder)",
        driver,
        seed=seed,
        injected=dict(injected),
        verdict=verdict,
        extra={
            "commits cut": cuts,
            "resharder runs": progress.attempts,
            "batches during the move": during,
            "settle rounds": replay,
        },
    )
