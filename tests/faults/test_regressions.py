"""Writer bugs the fault suite found, each fixed; these tests keep them fixed.

* the first write's schema check ran outside the retry loop (a lost
  connection or a down shard escaped ``write()`` as an exception);
* a lost COMMIT followed by an outage was reported as a plain failure, not
  as an unknown outcome;
* after a lost COMMIT, units another writer committed meanwhile were
  reported applied by both writers (the ledger now records a token per
  write attempt).
"""

from __future__ import annotations

import random

from shardbill.observe import Retried, WriteEvent
from tests.faults.cluster import default_retry
from tests.faults.conftest import ClusterFactory
from tests.faults.invariants import Recorder, check
from tests.faults.scale import seed_for
from tests.faults.workload import priced_events


def test_a_lost_connection_during_the_first_schema_check_is_retried(
    make_cluster: ClusterFactory, driver: str
) -> None:
    """A fresh writer whose first (schema check) COMMIT is cut retries like any other fault."""
    cluster = make_cluster(servers=1, shards=1)
    events = priced_events(seed_for(f"schema-check-{driver}"), 10)
    writer = cluster.writer(checked=False)
    cluster.proxies[0].cut_before_commit()
    result = writer.write([c for charges in events.values() for c in charges])
    assert result.ok
    assert result.applied_events == frozenset(events)


def test_a_shard_down_at_the_first_write_is_reported_not_raised(
    make_cluster: ClusterFactory, driver: str
) -> None:
    """One server down at the first write: the other's part applies, the rest is reported."""
    cluster = make_cluster(servers=2, shards=2)
    seed = seed_for(f"first-write-down-{driver}")
    events = priced_events(seed, 40)
    retry = default_retry(seed, max_attempts=3)
    recorder = Recorder(events, cluster.shard_map, retry=retry)
    writer = cluster.writer(retry=retry, checked=False)
    cluster.proxy("s1").refuse()
    result = recorder.write("w", writer, list(events))
    assert not result.ok
    assert result.failed_events == {e for e in events if "s1" in recorder.shards_of(e)}
    assert result.shards["s0"].ok


def test_a_lost_commit_followed_by_an_outage_is_reported_as_unknown(
    make_cluster: ClusterFactory, driver: str
) -> None:
    """A lost COMMIT that committed, then an outage: the result must not say failed."""
    cluster = make_cluster(servers=1, shards=1)
    seed = seed_for(f"lost-commit-outage-{driver}")
    events = priced_events(seed, 10)
    retry = default_retry(seed, max_attempts=3)
    recorder = Recorder(events, cluster.shard_map, retry=retry)
    proxy = cluster.proxies[0]

    def outage_after_the_lost_commit(event: WriteEvent) -> None:
        if isinstance(event, Retried) and event.error == "CommitOutcomeUnknownError":
            proxy.refuse()

    writer = cluster.writer(retry=retry, observer=outage_after_the_lost_commit)
    proxy.cut_after_commit()
    result = recorder.write("w", writer, list(events))
    assert not result.ok
    assert proxy.stats.commits_cut_after == 1
    verdict = check(recorder, cluster)
    assert verdict.ok, verdict.violations[:3]


def test_a_unit_committed_by_another_writer_during_a_lost_commit_is_reported_applied_once(
    make_cluster: ClusterFactory, driver: str
) -> None:
    """A loses a COMMIT (not committed), B applies the same events: one report says applied."""
    cluster = make_cluster(servers=1, shards=1)
    seed = seed_for(f"applied-twice-{driver}")
    events = priced_events(seed, 10)
    retry = default_retry(seed)
    recorder = Recorder(events, cluster.shard_map, retry=retry)
    other = cluster.writer(retry=retry, direct=True)
    ids = list(events)
    random.Random(seed).shuffle(ids)

    def the_other_writer_delivers_meanwhile(event: WriteEvent) -> None:
        if isinstance(event, Retried) and event.error == "CommitOutcomeUnknownError":
            assert recorder.write("b", other, ids).ok

    writer = cluster.writer(retry=retry, observer=the_other_writer_delivers_meanwhile)
    cluster.proxies[0].cut_before_commit()
    assert recorder.write("a", writer, sorted(events)).ok
    verdict = check(recorder, cluster, settled=True)
    assert verdict.ok, verdict.violations[:3]
