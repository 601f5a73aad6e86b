"""Lock faults: deadlocks, lock-wait timeouts, and queries or connections killed mid-transaction.

Each round's fault is made deterministic by waiting for what the server
reports (a transaction in LOCK WAIT, the writer's statement in the process
list, the writer's own retry) before acting, never by sleeping.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from functools import partial

import pymysql
import pytest

from shardbill.observe import Stats
from tests.faults.cluster import ShardCluster, default_retry
from tests.faults.conftest import ClusterFactory
from tests.faults.invariants import Recorder, assert_invariants
from tests.faults.report import by_error, note
from tests.faults.scale import iterations, seed_for
from tests.faults.sessions import (
    Background,
    Session,
    Tripwire,
    fresh,
    kill,
    lock_waits,
    running,
    sleeping,
    wait_for,
)
from tests.faults.workload import Events, batches, priced_events
from tests.support.proxy import is_commit

ER_LOCK_DEADLOCK = 1213
BALLAST_ROWS = 2000
SHARD = "s0"
_LAST_UPSERT = "INSERT INTO `account_balance`"


def _accounts(events: Events, ids: Sequence[str]) -> set[int]:
    return {int(c.account) for e in ids for c in events[e]}


def _existing_accounts(cluster: ShardCluster) -> set[int]:
    return {int(r[0]) for r in cluster.rows(SHARD, "SELECT account_id FROM account_balance")}


def _batches_touching(
    cluster: ShardCluster, events: Events, ids: Sequence[str], size: int, rng: random.Random
) -> Iterator[tuple[list[str], list[int]]]:
    """Batches with the existing accounts they touch (ascending), skipping those touching < 2."""
    for batch in batches(ids, size, rng):
        touched = sorted(_accounts(events, batch) & _existing_accounts(cluster))
        if len(touched) >= 2:
            yield batch, touched


def test_opposite_order_batches_and_deadlocks_end_exact(
    make_cluster: ClusterFactory, driver: str
) -> None:
    """Writers given hot accounts in opposite orders, and sessions that deadlock them, end exact."""
    seed = seed_for(f"deadlocks-{driver}")
    rng = random.Random(seed)
    cluster = make_cluster(servers=1, shards=1, proxied=False)
    cluster.execute(SHARD, "CREATE TABLE fx_ballast (n INT NOT NULL) ENGINE=InnoDB")
    rounds = iterations(3, 100)
    opposite = iterations(100, 3000)
    events = priced_events(seed, 20 + opposite + rounds * 30, accounts=6, split_fraction=0.1)
    retry = default_retry(seed)
    recorder = Recorder(events, cluster.shard_map, retry=retry)
    ids = list(events)
    warm, pair, rogue_part = ids[:20], ids[20 : 20 + opposite], ids[20 + opposite :]
    stats = Stats()
    up, down = (cluster.writer(observer=stats, retry=retry) for _ in range(2))
    recorder.write_until_done("warm", up, warm)

    # Two writers, the same hot accounts, batches built in opposite account orders.
    def by_account(part: list[str], reverse: bool) -> list[str]:
        return sorted(part, key=lambda e: min(int(c.account) for c in events[e]), reverse=reverse)

    def deliver(label: str, writer_ids: list[str], reverse: bool) -> int:
        writer = up if not reverse else down
        for batch in batches(by_account(writer_ids, reverse), 10):
            recorder.write_until_done(label, writer, batch)
        return 0

    jobs = [
        Background(lambda: deliver("up", pair[::2], False), name="fx-up"),
        Background(lambda: deliver("down", pair[1::2], True), name="fx-down"),
    ]
    for job in jobs:
        job.result()

    # A session locks the highest account's row, waits until the writer waits for it,
    # then asks for the lowest one, which the writer holds: a deadlock. Its ballast
    # makes it the heavier transaction, so InnoDB rolls the writer back.
    victim_stats = Stats()
    writer = cluster.writer(observer=victim_stats, retry=retry)
    writer_victims = 0
    made = 0
    for batch, touched in _batches_touching(cluster, events, rogue_part, 10, rng):
        if made == rounds:
            break
        made += 1
        low, high = touched[0], touched[-1]
        with Session(cluster, SHARD) as rogue:
            values = ", ".join(f"({n})" for n in range(BALLAST_ROWS))
            rogue.query(f"INSERT INTO fx_ballast (n) VALUES {values}")
            rogue.query(
                "SELECT amount FROM account_balance WHERE account_id = %s FOR UPDATE", (high,)
            )
            victim = Background(partial(recorder.write, "victim", writer, batch), name="fx-victim")
            wait_for(
                lambda: bool(running(cluster, SHARD, _LAST_UPSERT)),
                what="the writer's last UPSERT to start",
            )
            wait_for(
                fresh(lambda: bool(lock_waits(cluster, SHARD, exclude=rogue.thread_id))),
                what="the writer to wait for the locked row",
            )
            refused: int | None = None
            try:
                rogue.query(
                    "SELECT amount FROM account_balance WHERE account_id = %s FOR UPDATE", (low,)
                )
            except pymysql.err.OperationalError as exc:
                refused = exc.args[0]  # InnoDB chose the session as the victim instead
            assert refused in (None, ER_LOCK_DEADLOCK), refused
            writer_victims += refused is None
            rogue.rollback()
            result = victim.result()
        assert result.ok, result
        assert result.applied_events == frozenset(batch)
    assert made == rounds, f"only {made} batches touched two existing accounts"
    deadlocks = sum(n for (_, e), n in victim_stats.retries.items() if e == "DeadlockError")
    assert writer_victims >= 1
    assert deadlocks == writer_victims, victim_stats.retries
    verdict = assert_invariants(recorder, cluster, settled=True, context=f"seed {seed}")
    note(
        "deadlocks",
        driver,
        seed=seed,
        injected={"deadlock rounds": made, "opposite-order batches": len(pair) // 10},
        verdict=verdict,
        extra={
            "writer chosen as victim": writer_victims,
            "deadlocks between the opposite-order writers": by_error(stats.retries).get(
                "DeadlockError", 0
            ),
            "opposite-order retries": by_error(stats.retries),
        },
    )


@pytest.mark.parametrize("rollback_on_timeout", [False, True], ids=["rollback_off", "rollback_on"])
def test_lock_wait_timeouts_are_retried_and_leave_nothing_half_done(
    make_cluster: ClusterFactory, driver: str, rollback_on_timeout: bool
) -> None:
    """A row or ledger lock held past innodb_lock_wait_timeout=1: the retry applies it once."""
    seed = seed_for(f"lock-wait-{driver}-{rollback_on_timeout}")
    rng = random.Random(seed)
    cluster = make_cluster(
        servers=1,
        shards=1,
        proxied=False,
        innodb_lock_wait_timeout=1,
        extra_args=(f"--innodb-rollback-on-timeout={'ON' if rollback_on_timeout else 'OFF'}",),
    )
    ((setting,),) = cluster.rows(SHARD, "SELECT @@innodb_rollback_on_timeout")
    assert bool(setting) is rollback_on_timeout
    rounds = iterations(2, 12)
    events = priced_events(seed, 40 + rounds * 10, accounts=6)
    retry = default_retry(seed)
    recorder = Recorder(events, cluster.shard_map, retry=retry)
    tripwire = Tripwire()
    writer = cluster.writer(observer=tripwire, retry=retry)
    ids = list(events)
    recorder.write_until_done("warm", writer, ids[:40])
    blocked = {"row": 0, "ledger": 0}
    for batch, touched in _batches_touching(cluster, events, ids[40:], 10, rng):
        if sum(blocked.values()) == rounds:
            break
        target = rng.choice(["row", "ledger"])
        blocked[target] += 1
        timeouts = rng.randint(1, 2)
        with Session(cluster, SHARD) as holder:
            if target == "row":
                account = rng.choice(touched)
                holder.query(
                    "SELECT amount FROM account_balance WHERE account_id = %s FOR UPDATE",
                    (account,),
                )
            else:
                event_id = rng.choice(batch)
                slot, _ = recorder.units_of(event_id)[0]
                holder.query(
                    "INSERT INTO shardbill_ledger (event_id, sb_slot, fingerprint, event_time) "
                    "VALUES (%s, %s, 'fx-holder', 0)",
                    (event_id, slot),
                )
            timed_out = tripwire.arm({"LockWaitTimeoutError"}, timeouts)
            job = Background(partial(recorder.write, "w", writer, batch), name="fx-lock-wait")
            assert timed_out.wait(60), "the writer never timed out on the held lock"
            holder.rollback()  # held for more than innodb_lock_wait_timeout
        result = job.result()
        assert result.ok, result
        assert result.applied_events == frozenset(batch)
    assert sum(blocked.values()) == rounds
    assert tripwire.retries["LockWaitTimeoutError"] >= rounds
    verdict = assert_invariants(recorder, cluster, settled=True, context=f"seed {seed}, {blocked}")
    note(
        f"lock-wait timeout (rollback_on_timeout {'ON' if rollback_on_timeout else 'OFF'})",
        driver,
        seed=seed,
        injected={f"{k} lock held": v for k, v in blocked.items()},
        verdict=verdict,
        extra={"LockWaitTimeoutError retries": tripwire.retries["LockWaitTimeoutError"]},
    )


@pytest.mark.parametrize("query_only", [True, False], ids=["kill_query", "kill_connection"])
def test_a_killed_upsert_between_ledger_insert_and_commit_is_retried(
    make_cluster: ClusterFactory, driver: str, query_only: bool
) -> None:
    """KILL QUERY / CONNECTION of the UPSERT after the ledger INSERT: applied exactly once."""
    seed = seed_for(f"kill-upsert-{driver}-{query_only}")
    rng = random.Random(seed)
    cluster = make_cluster(servers=1, shards=1, proxied=False)
    rounds = iterations(2, 40)
    events = priced_events(seed, 40 + rounds * 10, accounts=6)
    retry = default_retry(seed)
    recorder = Recorder(events, cluster.shard_map, retry=retry)
    tripwire = Tripwire()
    writer = cluster.writer(observer=tripwire, retry=retry)
    ids = list(events)
    recorder.write_until_done("warm", writer, ids[:40])
    error = "QueryInterruptedError" if query_only else "ConnectionLostError"
    kills = 0
    for batch, touched in _batches_touching(cluster, events, ids[40:], 10, rng):
        if kills == rounds:
            break
        kills += 1
        with Session(cluster, SHARD) as holder:
            # The last UPSERT waits on this row: the ledger rows and the other
            # tables' UPSERTs are done in its transaction when the kill comes.
            holder.query(
                "SELECT amount FROM account_balance WHERE account_id = %s FOR UPDATE",
                (rng.choice(touched),),
            )
            retried = tripwire.arm({error})
            job = Background(partial(recorder.write, "w", writer, batch), name="fx-killed")
            wait_for(
                lambda: bool(running(cluster, SHARD, _LAST_UPSERT)),
                what="the writer's UPSERT to wait for the held row",
            )
            (victim,) = running(cluster, SHARD, _LAST_UPSERT)
            kill(cluster, SHARD, victim, query_only=query_only)
            assert retried.wait(60), f"the writer never retried after the kill ({error})"
            holder.rollback()
        result = job.result()
        assert result.ok, result
        assert result.applied_events == frozenset(batch)
    assert kills == rounds
    assert tripwire.retries[error] >= rounds, tripwire.retries
    verdict = assert_invariants(recorder, cluster, settled=True, context=f"seed {seed}")
    what = "KILL QUERY" if query_only else "KILL CONNECTION"
    note(
        f"{what} of a blocked UPSERT",
        driver,
        seed=seed,
        injected={what: kills},
        verdict=verdict,
        extra={"retries": dict(tripwire.retries)},
    )


def test_a_connection_killed_idle_before_its_commit_is_retried(
    make_cluster: ClusterFactory, driver: str
) -> None:
    """KILL CONNECTION while the writer's transaction is open and idle, just before COMMIT."""
    seed = seed_for(f"kill-idle-{driver}")
    rng = random.Random(seed)
    cluster = make_cluster(servers=1, shards=1)
    proxy = cluster.proxies[0]
    rounds = iterations(3, 100)
    events = priced_events(seed, rounds * 10)
    retry = default_retry(seed)
    recorder = Recorder(events, cluster.shard_map, retry=retry)
    stats = Stats()
    writer = cluster.writer(observer=stats, retry=retry)
    killed: list[int] = []
    problems: list[BaseException] = []
    armed = threading.Event()

    def kill_before_commit(sql: str) -> bool:
        # Runs on the proxy thread with the COMMIT held back: the transaction's
        # ledger rows and UPSERTs are done; its connection is idle in it.
        if not (armed.is_set() and is_commit(sql)):
            return False
        armed.clear()
        try:
            # PROCESSLIST is live (INNODB_TRX is a cache up to 0.1 s old): the
            # writer's connections to the shard are idle ("Sleep"); the one in
            # the transaction is among them. Killing the pooled idle ones too
            # only adds lost connections the writer retries as well.
            idle = sleeping(cluster, SHARD)
            for thread_id in idle:
                kill(cluster, SHARD, thread_id, query_only=False)
            killed.append(len(idle))
        except Exception as exc:  # an exception here would stop the proxy
            problems.append(exc)
        return False  # forward the COMMIT: it reaches a killed connection

    proxy.cut_when(kill_before_commit, count=1, label="kill-before-commit")
    for batch in batches(list(events), 10, rng):
        armed.set()
        result = recorder.write("w", writer, batch)
        assert not armed.is_set(), "no COMMIT passed the proxy"
        assert result.ok, result
        assert result.applied_events == frozenset(batch)
    proxy.clear_cuts()
    assert not problems, problems
    assert len(killed) == rounds
    assert all(killed), killed
    lost = sum(n for (_, e), n in stats.retries.items() if e == "CommitOutcomeUnknownError")
    assert lost == rounds, stats.retries
    verdict = assert_invariants(recorder, cluster, settled=True, context=f"seed {seed}")
    note(
        "KILL CONNECTION idle before COMMIT",
        driver,
        seed=seed,
        injected={"KILL CONNECTION": rounds},
        verdict=verdict,
        extra={"connections killed": sum(killed)},
    )
