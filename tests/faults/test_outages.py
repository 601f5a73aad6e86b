"""Servers that crash, freeze, fail over to read-only, fill up or go away under writers.

Writers use a small retry budget, so an outage outlasts it: the write result
reports the failure, and the caller (``Recorder.write_until_done``) delivers
the failed events again, with its own backoff, until they are acknowledged.
The invariants must hold exactly, however the outage fell.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pymysql
import pymysql.connections
import pytest

from shardbill.observe import Stats
from shardbill.retry import RetryPolicy
from shardbill.writer import AggregationWriter
from tests.faults.cluster import ShardCluster, default_retry
from tests.faults.conftest import ClusterFactory
from tests.faults.invariants import (
    KNOWN_BUG_FAILED_AFTER_LOST_COMMIT,
    Recorder,
    Verdict,
    assert_invariants,
)
from tests.faults.report import note
from tests.faults.scale import iterations, seed_for
from tests.faults.sessions import Background, Tripwire, kill, wait_for
from tests.faults.workload import batches, priced_events
from tests.support.servers import MariaDBServer, SettingsKwargs

LOST = frozenset({"ConnectionLostError", "CommitOutcomeUnknownError", "CannotConnectError"})
USER, PASSWORD = "fxwriter", "fx-Writer-pw-7"
ER_CON_COUNT_ERROR = 1040
ER_LOCK_WAIT_TIMEOUT = 1205
WRITER_GRANTS = ("SELECT, INSERT, UPDATE, DELETE ON `{db}`.*",)


def _caller_backoff(round_number: int) -> None:
    time.sleep(min(0.02 * round_number, 0.3))


def _start_writers(
    recorder: Recorder,
    writers: Sequence[AggregationWriter],
    ids: Sequence[str],
    size: int,
    stop: threading.Event,
) -> list[Background[int]]:
    """Each writer delivers its share of ``ids`` batch by batch, retrying failures until done.

    A writer stops early, at a batch boundary, once ``stop`` is set (the
    events are plenty, so the faults never run out of traffic).
    """

    def deliver(label: str, writer: AggregationWriter, share: Sequence[str]) -> int:
        rounds = 0
        for batch in batches(share, size):
            if stop.is_set():
                break
            rounds += recorder.write_until_done(
                label, writer, batch, max_rounds=1000, pause=_caller_backoff
            )
        return rounds

    return [
        Background(partial(deliver, f"w{i}", writer, ids[i :: len(writers)]), name=f"fx-w{i}")
        for i, writer in enumerate(writers)
    ]


def _reached(tripwire: Tripwire, target: int, jobs: Sequence[Background[int]]) -> bool:
    return tripwire.commits >= target or all(job.done for job in jobs)


def _inject_while_running(
    jobs: Sequence[Background[int]],
    tripwire: Tripwire,
    rng: random.Random,
    count: int,
    fault: Callable[[int], None],
) -> int:
    """Call ``fault(n)`` ``count`` times, each a seeded number of commits apart; how many ran."""
    made = 0
    for n in range(count):
        target = tripwire.commits + rng.randint(4, 40)
        wait_for(
            partial(_reached, tripwire, target, jobs),
            timeout=120,
            what=f"{target} commits",
        )
        if all(j.done for j in jobs):
            break
        fault(n)
        made += 1
    return made


def test_sigkill_of_a_server_under_writers_loses_nothing(
    make_cluster: ClusterFactory, driver: str
) -> None:
    """Servers SIGKILLed at seeded moments under three writers, then restarted: totals exact."""
    seed = seed_for(f"sigkill-server-{driver}")
    rng = random.Random(seed)
    cluster = make_cluster(servers=2, shards=4, proxied=False)
    kills = iterations(2, 40)
    events = priced_events(seed, 1000 + kills * 400)
    retry = default_retry(seed, max_attempts=4, max_delay=0.05)
    recorder = Recorder(events, cluster.shard_map, retry=retry)
    stats = Stats()
    tripwire = Tripwire(forward=stats)
    writers = [cluster.writer(observer=tripwire, retry=retry) for _ in range(3)]
    stop = threading.Event()
    jobs = _start_writers(recorder, writers, list(events), 10, stop)

    def crash(_n: int) -> None:
        server = rng.choice(cluster.servers)
        hurt = tripwire.arm(LOST, rng.randint(1, 4))
        server.kill()
        try:
            assert hurt.wait(60), "no writer noticed the crash"
        finally:
            server.restart()  # InnoDB crash recovery; same port

    try:
        made = _inject_while_running(jobs, tripwire, rng, kills, crash)
    finally:
        stop.set()
        rounds = sum(job.result() for job in jobs)
    assert made == kills, f"writers finished after {made} of {kills} kills"
    failed_results = sum(stats.failures.values())
    verdict = assert_invariants(
        recorder,
        cluster,
        settled=True,
        strict_failure_reports=not KNOWN_BUG_FAILED_AFTER_LOST_COMMIT,
        context=f"seed {seed}",
    )
    note(
        "server SIGKILL + restart",
        driver,
        seed=seed,
        injected={"sigkill": made},
        verdict=verdict,
        extra={"failed shard results": failed_results, "caller rounds": rounds},
    )


def _under_timed_out_writers(
    cluster: ShardCluster,
    seed: int,
    count: int,
    fault: Callable[[Tripwire, random.Random], None],
) -> tuple[int, Verdict, Tripwire]:
    """Two writers with 1 s timeouts deliver while ``fault`` runs ``count`` times, each a
    seeded number of commits apart; the callers retry until acknowledged; then I1-I5."""
    rng = random.Random(seed)
    events = priced_events(seed, 600 + count * 400)
    retry = default_retry(seed, max_attempts=3, max_delay=0.05)
    recorder = Recorder(events, cluster.shard_map, retry=retry)
    tripwire = Tripwire(forward=Stats())
    timeouts = {"read_timeout": 1, "write_timeout": 1, "connect_timeout": 1}
    writers = [cluster.writer(observer=tripwire, retry=retry, options=timeouts) for _ in range(2)]
    stop = threading.Event()
    jobs = _start_writers(recorder, writers, list(events), 10, stop)
    try:
        made = _inject_while_running(jobs, tripwire, rng, count, lambda _n: fault(tripwire, rng))
    finally:
        stop.set()
        for job in jobs:
            job.result()
    verdict = assert_invariants(
        recorder,
        cluster,
        settled=True,
        strict_failure_reports=not KNOWN_BUG_FAILED_AFTER_LOST_COMMIT,
        context=f"seed {seed}",
    )
    return made, verdict, tripwire


def test_sigstop_longer_than_the_read_timeout_loses_nothing(
    make_cluster: ClusterFactory, driver: str
) -> None:
    """A server frozen (SIGSTOP) past read_timeout=1 under two writers, then resumed: exact."""
    seed = seed_for(f"sigstop-{driver}")
    cluster = make_cluster(servers=1, shards=2, proxied=False)
    pauses = iterations(1, 15)
    (server,) = cluster.servers

    def freeze(tripwire: Tripwire, _rng: random.Random) -> None:
        timed_out = tripwire.arm(LOST)
        server.pause()
        try:
            # Resumed only once a writer has timed out: frozen longer than read_timeout.
            assert timed_out.wait(60), "no writer timed out on the frozen server"
        finally:
            server.resume()

    made, verdict, tripwire = _under_timed_out_writers(cluster, seed, pauses, freeze)
    assert made == pauses
    note(
        "server SIGSTOP > read_timeout",
        driver,
        seed=seed,
        injected={"sigstop": made},
        verdict=verdict,
        extra={"retries": dict(tripwire.retries)},
    )


def test_a_network_partition_healed_or_reset_loses_nothing(
    make_cluster: ClusterFactory, driver: str
) -> None:
    """The proxy blackholes the server (nothing forwarded, nothing closed) under two writers
    until one times out; then the partition heals, delivering what it held (a COMMIT may
    reach the server after its writer gave up on it), or its connections are reset first."""
    seed = seed_for(f"partition-{driver}")
    cluster = make_cluster(servers=1, shards=2)
    partitions = iterations(2, 20)
    (proxy,) = cluster.proxies
    injected: Counter[str] = Counter()

    def partition(tripwire: Tripwire, rng: random.Random) -> None:
        timed_out = tripwire.arm(LOST)
        proxy.blackhole()
        reset = rng.random() < 0.5
        try:
            assert timed_out.wait(60), "no writer timed out in the partition"
            if reset:
                proxy.reset_all()
        finally:
            proxy.blackhole(False)
        injected["partition, then reset" if reset else "partition, then healed"] += 1

    made, verdict, tripwire = _under_timed_out_writers(cluster, seed, partitions, partition)
    assert made == partitions
    note(
        "network partition (blackhole), healed or reset",
        driver,
        seed=seed,
        injected=dict(injected),
        verdict=verdict,
        extra={"retries": dict(tripwire.retries)},
    )


def test_read_only_failover_window_loses_nothing(make_cluster: ClusterFactory, driver: str) -> None:
    """read_only=ON for a while (a failover) under two writers without READ ONLY ADMIN: exact."""
    seed = seed_for(f"read-only-{driver}")
    rng = random.Random(seed)
    cluster = make_cluster(servers=1, shards=2, proxied=False)
    cluster.create_user(USER, PASSWORD, WRITER_GRANTS)
    windows = iterations(1, 20)
    events = priced_events(seed, 600 + windows * 400)
    retry = default_retry(seed, max_attempts=3, max_delay=0.05)
    recorder = Recorder(events, cluster.shard_map, retry=retry)
    stats = Stats()
    tripwire = Tripwire(forward=stats)
    writers = [
        cluster.writer(observer=tripwire, retry=retry, user=USER, password=PASSWORD)
        for _ in range(2)
    ]
    stop = threading.Event()
    jobs = _start_writers(recorder, writers, list(events), 10, stop)
    (server,) = cluster.servers
    refused = 0
    stalls = 0

    def failover(_n: int) -> None:
        nonlocal refused, stalls
        wanted = rng.randint(2, 8)
        read_only = tripwire.arm({"ReadOnlyError"}, wanted)
        stalls += _set_read_only(server)
        try:
            assert read_only.wait(60), "no writer was refused by the read-only server"
        finally:
            server.execute("SET GLOBAL read_only = OFF")
        refused += wanted

    try:
        made = _inject_while_running(jobs, tripwire, rng, windows, failover)
    finally:
        stop.set()
        for job in jobs:
            job.result()
    assert made == windows
    assert tripwire.retries["ReadOnlyError"] >= refused
    verdict = assert_invariants(recorder, cluster, settled=True, context=f"seed {seed}")
    note(
        "read_only=ON window",
        driver,
        seed=seed,
        injected={"read_only windows": made},
        verdict=verdict,
        extra={
            "ReadOnlyError retries": tripwire.retries["ReadOnlyError"],
            "SET GLOBAL read_only stalls": stalls,
        },
    )


def _set_read_only(server: MariaDBServer) -> int:
    """SET GLOBAL read_only=ON as a failover tool should: short lock waits, retried.

    Under write load the statement can stall: it waits (a metadata lock) for
    the statements in flight, one of which may wait for a row lock held by a
    transaction whose next statement waits behind the read_only request. No
    one detects that cycle; it ends only at innodb_lock_wait_timeout (50 s by
    default). With lock_wait_timeout=1 the request gives up instead, the
    writers go on, and it is tried again. Returns how many tries gave up.
    """
    conn = server.connect()
    stalls = 0
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION lock_wait_timeout = 1")
            while True:
                try:
                    cur.execute("SET GLOBAL read_only = ON")
                except pymysql.err.OperationalError as exc:
                    if exc.args[0] != ER_LOCK_WAIT_TIMEOUT or stalls >= 30:
                        raise
                    stalls += 1
                else:
                    return stalls
    finally:
        conn.close()


def _hold_every_connection(cluster: ShardCluster) -> list[pymysql.connections.Connection[Any]]:
    """Open connections as the writer user until the server answers 1040 (too many)."""
    server = cluster.servers[0]
    held: list[pymysql.connections.Connection[Any]] = []
    refused: int | None = None
    while refused is None and len(held) < 50:
        try:
            held.append(server.connect(user=USER, password=PASSWORD))
        except pymysql.err.OperationalError as exc:
            refused = exc.args[0]
    if refused != ER_CON_COUNT_ERROR:
        for conn in held:
            conn.close()
    assert refused == ER_CON_COUNT_ERROR, f"no 'too many connections' after {len(held)}: {refused}"
    return held


@pytest.mark.parametrize("outage", ["refuse", "stop", "too_many_connections"])
def test_an_outage_fails_the_write_after_exactly_max_attempts(
    make_cluster: ClusterFactory, driver: str, outage: str
) -> None:
    """A refused, stopped or full server: each shard result fails after max_attempts, no more."""
    seed = seed_for(f"bounded-{driver}-{outage}")
    settings: SettingsKwargs = {"max_connections": 4} if outage == "too_many_connections" else {}
    cluster = make_cluster(servers=1, shards=2, proxied=outage == "refuse", **settings)
    cluster.create_user(USER, PASSWORD, WRITER_GRANTS)
    (server,) = cluster.servers
    events = priced_events(seed, 60)
    ids = list(events)
    recorder = Recorder(events, cluster.shard_map)
    expected_errors = {"CannotConnectError"}
    if outage == "refuse":
        expected_errors.add("ConnectionLostError")
    injected = 0
    for budget, batch in zip((2, 5), (ids[:30], ids[30:]), strict=True):
        stats = Stats()
        retry: RetryPolicy = default_retry(seed, max_attempts=budget)
        writer = cluster.writer(
            observer=stats, retry=retry, user=USER, password=PASSWORD, options={"ping_after": 0}
        )
        held: list[pymysql.connections.Connection[Any]] = []
        if outage == "refuse":
            proxy = cluster.proxies[0]
            proxy.refuse()
            proxy.reset_all()
        elif outage == "stop":
            server.stop()
        else:
            for (thread_id,) in cluster.rows(
                "s0", "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (USER,)
            ):
                kill(cluster, "s0", int(thread_id), query_only=False)
            held = _hold_every_connection(cluster)
        injected += 1
        try:
            result = recorder.write(f"w{budget}", writer, batch)
        finally:
            if outage == "refuse":
                cluster.proxies[0].refuse(False)
            elif outage == "stop":
                server.start()
            for conn in held:
                conn.close()
        assert not result.ok
        assert result.failed_events == frozenset(batch)
        for shard in cluster.shards:
            shard_result = result.shards[shard]
            assert shard_result.attempts == budget, shard_result
            # A connection reset before the greeting reads as "can't connect" or, when the
            # client already waits for the handshake, as a lost connection (mysqlclient).
            error = type(shard_result.error).__name__
            assert error in expected_errors, shard_result.error
            retried = sum(n for (s, _), n in stats.retries.items() if s == shard)
            assert retried == budget - 1, stats.retries
            assert sum(n for (s, _), n in stats.failures.items() if s == shard) == 1
        assert not stats.commits
        # Nothing was written: the caller now delivers the failed events until done.
        recorder.write_until_done(f"w{budget}", writer, sorted(result.failed_events))
    verdict = assert_invariants(recorder, cluster, settled=True, context=f"seed {seed}")
    note(f"outage: {outage}", driver, seed=seed, injected={outage: injected}, verdict=verdict)
