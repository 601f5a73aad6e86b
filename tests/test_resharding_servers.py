"""Online resharding across private MariaDB servers, one ``mariadbd`` per shard, crashes included.

Four private servers (``private_servers``) hold shards s0..s3, each in a
database ``billing``; the first map uses three of them (or all four, to remove
one). Writers run with their own connection pools, as separate processes
would. Every test ends with exact totals against the independent oracle
(tests/support/oracle.py), every row on the shard the final map names, and
``Resharder.verify() == []``.

The resharding process is SIGKILLed at seeded steps in a spawned child
(tests/support/reshard_worker.py). CI runs ``SHARDBILL_RESHARD_SEEDS`` seeds
(default 4); the long run is::

    SHARDBILL_RESHARD_SEEDS=200 .venv/bin/python -m pytest tests/test_resharding_servers.py \
        -k process_sigkilled -rP
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest

from shardbill import ShardMap
from shardbill.errors import ShardbillError
from shardbill.observe import Stats
from shardbill.providers import PooledProvider
from shardbill.reader import Reader
from shardbill.resharding import JsonFileMapStore, Resharder, ReshardSettings
from shardbill.retry import RetryPolicy
from shardbill.rules import Charge
from shardbill.shardmap import ReshardPlan
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter, MapSource, WriteResult, WriterSettings
from tests.support import reshard_worker
from tests.support.backends import Backend
from tests.support.oracle import actual_rows, expected_rows
from tests.support.server_fixtures import ServerFactory
from tests.support.servers import MariaDBServer
from tests.test_writer import make_charges

SLOTS = 64
DB = "billing"
DRIVERS = ("pymysql", "mysqldb")
# CI runs a bounded number of seeded kill points; SHARDBILL_RESHARD_SEEDS=200 is the long run.
SEEDS = int(os.environ.get("SHARDBILL_RESHARD_SEEDS", "4"))
# A bound on waiting for the other side of a test (a hang fails instead of blocking CI).
PATIENCE = 120.0

# What a writer reports (Stats.retries) while a server is down.
CONNECTION_ERRORS = frozenset(
    {"CannotConnectError", "ConnectionLostError", "CommitOutcomeUnknownError"}
)

SlotCheck = Callable[[str, tuple[object, ...], int], None]


@attrs.define
class ServerBackend(Backend):
    """Shards on separate private servers, one database ``billing`` on each."""

    servers: dict[str, MariaDBServer] = attrs.field(factory=dict)

    def rows(self, shard: str, sql: str) -> list[tuple[Any, ...]]:
        """Run a SELECT on the shard's own server (not through shardbill)."""
        found = self.servers[shard].execute(sql, database=DB)
        return [tuple(v.isoformat() if isinstance(v, dt.date) else v for v in r) for r in found]

    def execute(self, shard: str, sql: str) -> None:
        """Run one statement on the shard's own server."""
        self.servers[shard].execute(sql, database=DB)


Cluster = Callable[[str], ServerBackend]


@pytest.fixture
def cluster(private_servers: ServerFactory) -> Iterator[Cluster]:
    """``cluster(driver)``: four private servers as shards s0..s3, through ``driver``."""
    providers: list[PooledProvider] = []

    def make(driver: str) -> ServerBackend:
        # flush at commit = 2: a SIGKILLed mariadbd keeps every commit (the OS has it).
        servers = private_servers(4, innodb_lock_wait_timeout=10, innodb_flush_log_at_trx_commit=2)
        shards = tuple(f"s{i}" for i in range(len(servers)))
        for server in servers:
            server.execute(f"CREATE DATABASE `{DB}` CHARACTER SET utf8mb4")
        urls = {s: server.url(DB, driver) for s, server in zip(shards, servers, strict=True)}
        provider = PooledProvider.from_urls(urls)
        providers.append(provider)
        return ServerBackend(
            kind=driver,
            shards=shards,
            provider=provider,
            locations=dict.fromkeys(shards, DB),
            urls=urls,
            servers=dict(zip(shards, servers, strict=True)),
        )

    yield make
    for provider in providers:
        provider.close()


# ---------------------------------------------------------------------- helpers


def owner_check(shard_map: ShardMap) -> SlotCheck:
    """A ``slot_check`` for ``actual_rows``: the row's slot is its key's, owned by its shard."""

    def check(shard: str, key: tuple[object, ...], slot: int) -> None:
        assert shard_map.slot_for(key[0]) == slot, (key, slot)  # type: ignore[arg-type]
        assert shard_map.owner(slot) == shard, (key, slot, shard)

    return check


def by_event(charges: list[Charge]) -> list[list[Charge]]:
    """The charges grouped by event, in stream order."""
    out: dict[str, list[Charge]] = {}
    for charge in charges:
        out.setdefault(charge.event_id, []).append(charge)
    return list(out.values())


def batches(events: list[list[Charge]], size: int) -> list[list[Charge]]:
    """Whole events, ``size`` per batch."""
    return [[c for e in events[i : i + size] for c in e] for i in range(0, len(events), size)]


def make_store(tmp_path: Path, shards: list[str]) -> JsonFileMapStore:
    """A map store file (shared with child processes) holding the first map."""
    store = JsonFileMapStore(tmp_path / "shardmap.json")
    store.publish(ShardMap.create(shards, slots=SLOTS), expected_epoch=None)
    return store


@contextmanager
def own_writer(
    urls: dict[str, str], shard_map: ShardMap | MapSource, stats: Stats | None = None
) -> Iterator[AggregationWriter]:
    """A writer with its own connection pool, as a separate writer process would have."""
    with ExitStack() as stack:
        provider = stack.enter_context(PooledProvider.from_urls(urls))
        yield stack.enter_context(
            AggregationWriter(
                shard_map=shard_map, provider=provider, tables=billing_tables(), observer=stats
            )
        )


def write_until_ok(writer: AggregationWriter, batch: list[Charge]) -> WriteResult:
    """Write, then retry what failed (as a stream consumer would) until all of it landed."""
    result = writer.write(batch)
    deadline = time.monotonic() + PATIENCE
    assert not result.rejected_events, result
    assert not result.conflict_events, result
    while result.retry:
        assert time.monotonic() < deadline, f"writes kept failing: {result.shards}"
        time.sleep(0.05)  # a shard is down or fenced: do not spin
        result = writer.write([c for c in batch if c.event_id in result.retry])
    return result


def prepare(backend: ServerBackend, store: JsonFileMapStore, preload: list[list[Charge]]) -> None:
    """Create the schema on the map's shards and write ``preload`` batches."""
    with own_writer(backend.urls, store) as writer:
        writer.ensure_schema()
        for batch in preload:
            write_until_ok(writer, batch)


def assert_exact(
    backend: ServerBackend, store: JsonFileMapStore, target: ShardMap, charges: list[Charge]
) -> None:
    """The map is published, every move finished and verified, totals exact and in place,
    and the ledger holds each (event, slot) unit exactly once, on the slot's owner."""
    assert store.load() == target
    with PooledProvider.from_urls(backend.urls) as provider:  # no connection from before a crash
        resharder = Resharder(store=store, provider=provider, tables=billing_tables())
        assert {s.state for s in resharder.status(target)} == {"finished"}
        assert resharder.verify() == []
    assert actual_rows(backend, slot_check=owner_check(target)) == expected_rows(charges)
    ledger: list[tuple[str, int]] = []
    for shard in backend.shards:
        for event_id, slot in backend.rows(shard, "SELECT event_id, sb_slot FROM shardbill_ledger"):
            assert target.owner(int(slot)) == shard, (event_id, slot, shard)
            ledger.append((str(event_id), int(slot)))
    units = {(c.event_id, target.slot_for(c.account)) for c in charges}
    claims = {(c.event_id, target.slot_for(c.event_id)) for c in charges}  # identity claims
    assert sorted(ledger) == sorted(units | claims)


class Interleave:
    """Holds the resharder before chosen steps until a writer batch that *started* after the
    step was reached has committed: writes provably interleave with the move."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self._prefixes = prefixes
        self._cond = threading.Condition()
        self._generation = 0
        self._finished = -1
        self.waits = 0

    def batch_started(self) -> int:
        """Call before a batch; pass the result to :meth:`batch_done`."""
        with self._cond:
            return self._generation

    def batch_done(self, started: int) -> None:
        """A batch that began at generation ``started`` committed."""
        with self._cond:
            self._finished = max(self._finished, started)
            self._cond.notify_all()

    def before_step(self, name: str) -> None:
        """The resharder's ``before_step``."""
        if not name.startswith(self._prefixes):
            return
        with self._cond:
            self._generation += 1
            wanted = self._generation
            assert self._cond.wait_for(lambda: self._finished >= wanted, PATIENCE), name
            self.waits += 1


def full_run_steps(backend: ServerBackend, plan: ReshardPlan, chunk_rows: int) -> int:
    """How many steps an uninterrupted run of ``plan`` takes on what the shards hold now.

    "switch", "records" and "publish" (no correction records or bookings here, so no
    "records-delete:"); per slot with rows "ledger:", "merge:" per table and
    "finish:", and one "ledger-delete:" or "merge-delete:" per chunk of rows moved;
    one "finish-empty:" per target shard that receives empty slots.
    """
    tables = ("shardbill_ledger", *(t.name for t in billing_tables()))
    steps = 3
    occupied: set[int] = set()
    for source in sorted({m.source for m in plan.moves}):
        slots = ", ".join(str(m.slot) for m in plan.moves if m.source == source)
        for name in tables:
            for slot, count in backend.rows(
                source,
                f"SELECT sb_slot, COUNT(*) FROM `{name}` WHERE sb_slot IN ({slots}) "
                "GROUP BY sb_slot",
            ):
                occupied.add(int(slot))
                steps += -(-int(count) // chunk_rows)
    steps += len(occupied) * (len(tables) + 1)
    steps += len({m.target for m in plan.moves if m.slot not in occupied})
    return steps


def spawn(target: Callable[..., None], *args: object) -> Any:
    """Start ``target(*args)`` in a spawned child process."""
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    return process


def join(process: Any) -> int:
    """Wait for a child (bounded) and return its exit code."""
    process.join(PATIENCE)
    if process.is_alive():
        process.kill()
        process.join()
        pytest.fail("the child process hung")
    code: int = process.exitcode
    return code


# ---------------------------------------------------------------------- writers through a move


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("change", ["add", "remove"])
def test_writer_threads_write_through_a_move_between_servers_exactly(
    cluster: Cluster, tmp_path: Path, driver: str, change: str
) -> None:
    """3 -> 4 servers (add s3) or 4 -> 3 (remove s1) while three writer threads, each with its
    own pool and the map store, write new events and replays through every step: exact."""
    backend = cluster(driver)
    store = make_store(tmp_path, ["s0", "s1", "s2"] if change == "add" else list(backend.shards))
    charges = make_charges(7 if change == "add" else 8, 900, accounts=150)
    events = by_event(charges)
    prepare(backend, store, batches(events[:300], 30))
    live = events[300:]
    old = store.load()
    target = old.add_shard("s3") if change == "add" else old.remove_shard("s1")
    gate = Interleave(("merge:", "finish:"))
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(k: int) -> None:
        rng = random.Random(k)
        try:
            with own_writer(backend.urls, store) as writer:
                for batch in batches(live[k::3], 10):  # new events
                    started = gate.batch_started()
                    write_until_ok(writer, batch)
                    gate.batch_done(started)
                while not stop.is_set():  # then replays of anyone's events, until the end
                    started = gate.batch_started()
                    write_until_ok(writer, [c for e in rng.sample(events, 10) for c in e])
                    gate.batch_done(started)
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [threading.Thread(target=write, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    try:
        with PooledProvider.from_urls(backend.urls) as provider:
            progress = Resharder(
                store=store,
                provider=provider,
                tables=billing_tables(),
                settings=ReshardSettings(chunk_rows=7, parallel_slots=2),
                before_step=gate.before_step,
            ).run(target)
    finally:
        stop.set()
        for thread in threads:
            thread.join(PATIENCE)
    assert errors == []
    assert progress.slots_finished == len(progress.plan.moves) > 0
    assert progress.rows_moved > 0
    # Every slot with rows was held at each merge and at its finish (empty slots are
    # handed over in one batch, without steps of their own).
    assert progress.slots_empty < len(progress.plan.moves)
    moved_slots = len(progress.plan.moves) - progress.slots_empty
    assert gate.waits == moved_slots * (len(billing_tables()) + 1)
    if change == "remove":
        for table in ("usage_daily", "shardbill_ledger"):
            assert backend.rows("s1", f"SELECT COUNT(*) FROM `{table}`") == [(0,)]
    assert_exact(backend, store, target, charges)


# ---------------------------------------------------------------------- the resharder killed


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(SEEDS))
def test_resharding_process_sigkilled_at_seeded_steps_then_run_again_is_exact(
    cluster: Cluster, tmp_path: Path, seed: int
) -> None:
    """The resharding process is SIGKILLed at seeded steps, two to five times, writers write
    between attempts, the last run completes: exact, in place, and a replay applies nothing."""
    rng = random.Random(seed)
    driver = DRIVERS[seed % 2]
    change = ("add", "remove")[(seed // 2) % 2]
    backend = cluster(driver)
    store = make_store(tmp_path, ["s0", "s1", "s2"] if change == "add" else list(backend.shards))
    charges = make_charges(100 + seed, 400, accounts=200)
    events = by_event(charges)
    prepare(backend, store, batches(events[:250], 50))
    later = batches(events[250:], 15)
    old = store.load()
    target = old.add_shard("s3") if change == "add" else old.remove_shard("s1")
    chunk_rows, parallel = rng.choice((2, 5, 40)), rng.choice((1, 2, 4))
    remaining = full_run_steps(backend, old.plan_to(target), chunk_rows)
    kills_wanted = rng.randint(2, 5)
    killed_at: list[str] = []
    written = batches(events[:250], 50)
    # The writer is made before the reshard and never told: it is fenced and reloads.
    with own_writer(backend.urls, store) as writer:
        for attempt in range(kills_wanted + 1):
            # Uniform over the steps a run still has to take: every kind of step gets hit.
            kill_at = rng.randint(1, max(remaining, 1)) if attempt < kills_wanted else None
            log = str(tmp_path / f"steps-{attempt}.log")
            child = spawn(
                reshard_worker.reshard,
                backend.urls,
                str(store.path),
                target.to_json(),
                kill_at,
                chunk_rows,
                parallel,
                log,
            )
            code = join(child)
            if code == 0:
                break
            assert code == -signal.SIGKILL, f"the resharder failed (exit {code}); see stderr"
            killed_at.append(reshard_worker.last_step(log))
            # A re-run repeats switch, records and publish.
            remaining -= reshard_worker.steps_taken(log) - 3
            # Writers keep going between attempts: new events, and a replay of old ones.
            if later:
                written.append(later.pop(0))
                write_until_ok(writer, written[-1])
            write_until_ok(writer, rng.choice(written))
        else:
            pytest.fail(f"the reshard did not complete after kills at {killed_at}")
        for batch in later:
            write_until_ok(writer, batch)
        replay = write_until_ok(writer, charges)
    print(
        f"seed {seed} ({driver}, {change}, chunk {chunk_rows}, x{parallel}): killed at {killed_at}"
    )
    assert killed_at
    assert replay.applied_events == frozenset()
    assert replay.duplicate_events == {e[0].event_id for e in events}
    # Running it again finds nothing left to do.
    again = Resharder(store=store, provider=backend.provider, tables=billing_tables()).run(target)
    assert (again.slots_finished, again.rows_moved, again.ledger_rows_moved) == (0, 0, 0)
    assert_exact(backend, store, target, charges)


# ---------------------------------------------------------------------- a shard server killed


@pytest.mark.slow
@pytest.mark.parametrize(
    ("victim", "driver", "seed"), [("source", "pymysql", 1), ("target", "mysqldb", 2)]
)
def test_a_shard_server_sigkilled_during_the_copy_and_restarted_the_run_again_is_exact(
    cluster: Cluster, tmp_path: Path, victim: str, driver: str, seed: int
) -> None:
    """At a seeded merge step the source (or target) server is SIGKILLed while a writer thread
    writes (and retries against the dead server); the run fails; the server restarts on its
    datadir; the run again completes exactly."""
    rng = random.Random(seed)
    backend = cluster(driver)
    store = make_store(tmp_path, ["s0", "s1", "s2"])
    charges = make_charges(200 + seed, 700, accounts=200)
    events = by_event(charges)
    prepare(backend, store, batches(events[:400], 50))
    old = store.load()
    target = old.add_shard("s3")
    plan = {m.slot: m for m in old.plan_to(target).moves}
    kill_at = rng.randint(1, 4 * len(plan))  # merge steps: at least one per slot and table
    merge_steps = 0
    killed: list[str] = []
    lock = threading.Lock()

    def crash_a_server(name: str) -> None:
        nonlocal merge_steps
        if not name.startswith(("merge:", "merge-delete:")):
            return
        with lock:
            merge_steps += 1
            if merge_steps != kill_at:
                return
            move = plan[int(name.split(":")[1])]
            shard = move.source if victim == "source" else move.target
            backend.servers[shard].kill()
            killed.append(shard)

    stop = threading.Event()
    errors: list[BaseException] = []
    stats = Stats()

    def write(writer: AggregationWriter) -> None:
        try:
            for batch in batches(events[400:], 10):  # new events
                write_until_ok(writer, batch)
            while not stop.is_set():  # then replays, until the end
                write_until_ok(writer, [c for e in rng.sample(events, 10) for c in e])
        except BaseException as exc:
            errors.append(exc)
            raise

    with own_writer(backend.urls, store, stats) as writer:
        thread = threading.Thread(target=write, args=(writer,))
        thread.start()
        try:
            with (
                PooledProvider.from_urls(backend.urls) as provider,
                pytest.raises(ShardbillError),
            ):
                Resharder(
                    store=store,
                    provider=provider,
                    tables=billing_tables(),
                    # No retries: this is the operator's re-run (the next test rides through).
                    settings=ReshardSettings(
                        chunk_rows=5, parallel_slots=2, retry=RetryPolicy(max_attempts=1)
                    ),
                    before_step=crash_a_server,
                ).run(target)
            assert len(killed) == 1
            # The writer runs into the dead server (and retries) before it comes back: directly,
            # or through a slot moving out of it (its ledger is read until the slot finished).
            deadline = time.monotonic() + PATIENCE
            while not any(error in CONNECTION_ERRORS for _, error in stats.retries):
                assert time.monotonic() < deadline, "the writer never tried the dead server"
                time.sleep(0.01)
            backend.servers[killed[0]].restart()
            # The operator runs it again (a new process: a new pool).
            with PooledProvider.from_urls(backend.urls) as provider:
                Resharder(store=store, provider=provider, tables=billing_tables()).run(target)
        finally:
            stop.set()
            thread.join(PATIENCE)
    assert errors == []
    with own_writer(backend.urls, store) as writer:
        for batch in batches(events[400:], 50):  # whatever the thread did not reach
            write_until_ok(writer, batch)
        assert write_until_ok(writer, charges).applied_events == frozenset()
    assert_exact(backend, store, target, charges)


@pytest.mark.slow
@pytest.mark.parametrize(("victim", "driver"), [("source", "mysqldb"), ("target", "pymysql")])
def test_one_run_rides_through_a_shard_server_restart_and_is_exact(
    cluster: Cluster, tmp_path: Path, victim: str, driver: str
) -> None:
    """A server SIGKILLed at a merge step and restarted 1 s later: the same run() retries,
    resumes where the shards say the move stands, and finishes exactly."""
    backend = cluster(driver)
    store = make_store(tmp_path, ["s0", "s1", "s2"])
    charges = make_charges(300, 500, accounts=150)
    events = by_event(charges)
    prepare(backend, store, batches(events, 50))
    old = store.load()
    target = old.add_shard("s3")
    plan = {m.slot: m for m in old.plan_to(target).moves}
    killed: list[str] = []
    restarts: list[threading.Thread] = []
    lock = threading.Lock()  # two slots move at once: one kill only

    def crash_a_server(name: str) -> None:
        if not name.startswith("merge-delete:"):
            return
        with lock:
            if killed:
                return
            move = plan[int(name.split(":")[1])]
            shard = move.source if victim == "source" else move.target
            backend.servers[shard].kill()
            killed.append(shard)

            def restart_later() -> None:
                time.sleep(1.0)
                backend.servers[shard].restart()

            restart = threading.Thread(target=restart_later)
            restarts.append(restart)
            restart.start()

    with PooledProvider.from_urls(backend.urls) as provider:
        progress = Resharder(
            store=store,
            provider=provider,
            tables=billing_tables(),
            settings=ReshardSettings(
                chunk_rows=5,
                parallel_slots=2,
                retry=RetryPolicy(max_attempts=30, base_delay=0.2, max_delay=1.0, seed=7),
            ),
            before_step=crash_a_server,
        ).run(target)
    for thread in restarts:
        thread.join(PATIENCE)
    assert len(killed) == 1
    assert progress.attempts > 1
    assert store.load() == target
    with PooledProvider.from_urls(backend.urls) as provider:
        resharder = Resharder(store=store, provider=provider, tables=billing_tables())
        assert {s.state for s in resharder.status(target)} == {"finished"}
        assert resharder.verify() == []
    with own_writer(backend.urls, store) as writer:
        assert write_until_ok(writer, charges).applied_events == frozenset()
    assert_exact(backend, store, target, charges)


# ---------------------------------------------------------------------- stale writers


def test_writers_made_before_the_move_are_fenced_and_reload_the_map(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A writer process and a writer thread, both made on the old map before the move and never
    told, write after it: each is fenced by the old owner, reloads, lands on the new owner."""
    backend = cluster("mysqldb")
    store = make_store(tmp_path, ["s0", "s1", "s2"])
    charges = make_charges(31, 600, accounts=150)
    events = by_event(charges)
    prepare(backend, store, batches(events[:200], 50))
    old = store.load()
    target = old.add_shard("s3")
    moved = {m.slot for m in old.plan_to(target).moves}
    for part in (events[220:400], events[420:]):  # both write to moving slots after the move
        assert any(old.slot_for(c.account) in moved for e in part for c in e)
    process_batches = batches(events[200:400], 20)
    parent, child = multiprocessing.get_context("spawn").Pipe()
    process = spawn(
        reshard_worker.stale_writer, backend.urls, None, str(store.path), process_batches, child
    )
    child.close()  # the child holds its own copy
    try:
        assert parent.poll(PATIENCE)
        assert parent.recv() == "ready"
        stats = Stats()
        with own_writer(backend.urls, store, stats) as writer:
            thread_batches = batches(events[400:], 20)
            write_until_ok(writer, thread_batches[0])  # on the old map, before the move
            Resharder(store=store, provider=backend.provider, tables=billing_tables()).run(target)
            parent.send("go")
            errors: list[BaseException] = []

            def write() -> None:
                try:
                    for batch in thread_batches[1:]:
                        write_until_ok(writer, batch)
                except BaseException as exc:
                    errors.append(exc)
                    raise

            thread = threading.Thread(target=write)
            thread.start()
            thread.join(PATIENCE)
            assert parent.poll(PATIENCE)
            report = parent.recv()
    finally:
        parent.close()
        assert join(process) == 0
    assert errors == []
    assert report["ok"]
    assert report["fenced"] > 0
    assert report["epoch"] == target.epoch
    assert sum(n for (_, error), n in stats.failures.items() if error == "FencedError") > 0
    assert stats.map_reloads > 0
    assert writer.shard_map.epoch == target.epoch
    assert_exact(backend, store, target, charges)


def test_a_writer_with_a_fixed_old_map_follows_the_forwarding_address(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A writer process given the old map itself (no map store) and never told writes after
    the move: fenced by the old owner, it sends each moved slot where the fence points."""
    backend = cluster("pymysql")
    store = make_store(tmp_path, ["s0", "s1", "s2"])
    charges = make_charges(32, 400, accounts=150)
    events = by_event(charges)
    prepare(backend, store, batches(events[:200], 50))
    old = store.load()
    target = old.add_shard("s3")
    parent, child = multiprocessing.get_context("spawn").Pipe()
    process = spawn(
        reshard_worker.stale_writer,
        backend.urls,
        old.to_json(),
        None,
        batches(events[200:], 20),
        child,
    )
    child.close()  # the child holds its own copy
    try:
        assert parent.poll(PATIENCE)
        assert parent.recv() == "ready"
        Resharder(store=store, provider=backend.provider, tables=billing_tables()).run(target)
        parent.send("go")
        assert parent.poll(PATIENCE)
        report = parent.recv()
    finally:
        parent.close()
        assert join(process) == 0
    assert report["fenced"] > 0
    assert report["epoch"] == old.epoch  # never told: it only followed forwarding addresses
    assert report["ok"]
    assert_exact(backend, store, target, charges)


# ---------------------------------------------------------------------- retries across the switch


def test_a_retry_of_an_event_committed_on_the_old_owner_is_a_duplicate_on_the_new_one(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Events committed on their old owner before the switch (the caller never saw the
    outcome) are retried through the new map at every stage of their slot's move: each retry
    is a duplicate, a retry with other content is a conflict, and nothing counts twice."""
    backend = cluster("pymysql")
    store = make_store(tmp_path, ["s0", "s1", "s2"])
    charges = make_charges(41, 500, accounts=150)
    events = by_event(charges)
    prepare(backend, store, batches(events[:300], 50))
    old = store.load()
    target = old.add_shard("s3")
    moved = sorted({m.slot for m in old.plan_to(target).moves})
    # The "lost" first attempts: committed on the old owners of moving slots.
    lost = [e for e in events[300:] if all(old.slot_for(c.account) in moved for c in e)]
    assert len(lost) > 20
    lost_ids = {e[0].event_id for e in lost}
    with own_writer(backend.urls, old) as first_attempt:
        first = first_attempt.write([c for e in lost for c in e])  # the caller never sees this
    assert first.applied_events == lost_ids
    others = [e for e in events[300:] if e[0].event_id not in lost_ids]
    retries: dict[str, WriteResult] = {}
    altered = attrs.evolve(lost[0][0], amount=lost[0][0].amount + Decimal("0.000002"))
    altered_event = [altered, *lost[0][1:]]  # the whole event, with other content

    with own_writer(backend.urls, store) as retrier:

        def before_step(name: str) -> None:
            # Fenced and published, nothing copied: the target reads the source's ledger.
            # Mid-copy: the ledger row is on both. Mid-merge: the ledger is on the target.
            for stage in ("ledger:", "ledger-delete:", "merge-delete:"):
                if name.startswith(stage) and stage not in retries:
                    retries[stage] = retrier.write([c for e in lost for c in e])
                    retries[stage + "conflict"] = retrier.write(altered_event)

        Resharder(
            store=store,
            provider=backend.provider,
            tables=billing_tables(),
            settings=ReshardSettings(chunk_rows=3, parallel_slots=1),
            before_step=before_step,
        ).run(target)
        retries["finished"] = retrier.write([c for e in lost for c in e])
        for batch in batches(others, 50):
            write_until_ok(retrier, batch)
    assert set(retries) == {
        "ledger:",
        "ledger:conflict",
        "ledger-delete:",
        "ledger-delete:conflict",
        "merge-delete:",
        "merge-delete:conflict",
        "finished",
    }
    for stage, result in retries.items():
        assert result.retry == frozenset(), stage
        assert result.applied_events == frozenset(), stage
        if stage.endswith("conflict"):
            assert result.conflict_events == {altered.event_id}, stage
        else:
            assert result.duplicate_events == lost_ids, stage
            assert "s3" in result.shards, stage  # the retry went to the new owner
    assert_exact(backend, store, target, charges)


# ---------------------------------------------------------------------- regressions
# Each of these failed on a bug these tests found; the fixes keep them passing.


def test_a_first_write_to_a_shard_whose_server_is_down_is_reported_not_raised(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A writer's first write to a shard whose server is down (as a long-running writer meets
    a shard added by a reshard) comes back as failed events to retry, like any other outage."""
    backend = cluster("pymysql")
    store = make_store(tmp_path, list(backend.shards))
    charges = make_charges(61, 200, accounts=100)
    prepare(backend, store, [])
    backend.servers["s3"].kill()
    with PooledProvider.from_urls(backend.urls) as provider:
        writer = AggregationWriter(
            shard_map=store,
            provider=provider,
            tables=billing_tables(),
            settings=WriterSettings(retry=RetryPolicy(max_attempts=2, seed=1)),
        )
        with writer:
            try:
                result = writer.write(charges)
            finally:
                backend.servers["s3"].restart()
            assert not result.ok
            assert result.shards["s3"].failed
            assert write_until_ok(writer, charges).ok
    assert actual_rows(backend, slot_check=owner_check(store.load())) == expected_rows(charges)


def test_a_slot_returning_to_a_shard_that_received_it_before_is_merged(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Add s3, remove it, add it again (slots come back to s3): every reshard completes
    and the totals stay exact."""
    backend = cluster("pymysql")
    store = make_store(tmp_path, ["s0", "s1", "s2"])
    charges = make_charges(51, 450, accounts=150)
    parts = [batches(by_event(charges)[i::3], 50) for i in range(3)]
    prepare(backend, store, parts[0])
    resharder = Resharder(store=store, provider=backend.provider, tables=billing_tables())
    with own_writer(backend.urls, store) as writer:
        resharder.run(store.load().add_shard("s3"))
        for batch in parts[1]:
            write_until_ok(writer, batch)
        resharder.run(store.load().remove_shard("s3"))
        for batch in parts[2]:
            write_until_ok(writer, batch)
        resharder.run(target := store.load().add_shard("s3"))
    assert_exact(backend, store, target, charges)


def test_fan_out_totals_are_exact_during_a_second_move_of_the_same_slots(
    cluster: Cluster, tmp_path: Path
) -> None:
    """After s3 was added, it is removed again: fan-out totals read at every step of the
    second move equal the oracle."""
    backend = cluster("pymysql")
    store = make_store(tmp_path, ["s0", "s1", "s2"])
    charges = make_charges(52, 300, accounts=120)
    prepare(backend, store, batches(by_event(charges), 50))
    Resharder(store=store, provider=backend.provider, tables=billing_tables()).run(
        store.load().add_shard("s3")
    )
    target = store.load().remove_shard("s3")
    grand = Decimal(sum(v[0] for v in expected_rows(charges)["account_balance"].values()))
    reader = Reader(shard_map=store.load(), provider=backend.provider, tables=billing_tables())
    wrong: list[tuple[str, Decimal]] = []

    def read(name: str) -> None:
        if name.startswith(("ledger:", "merge:", "finish:")):
            total = reader.totals("account_balance", group_by=[])[()]["amount"]
            assert isinstance(total, Decimal)
            if total != grand.scaleb(-6):
                wrong.append((name, total))

    Resharder(
        store=store,
        provider=backend.provider,
        tables=billing_tables(),
        settings=ReshardSettings(parallel_slots=1),
        before_step=read,
    ).run(target)
    assert wrong == []
    assert_exact(backend, store, target, charges)


# ---------------------------------------------------------------------- claims and revert


@pytest.mark.parametrize("driver", DRIVERS)
def test_killed_between_fence_and_publish_a_rival_is_refused_and_the_revert_is_exact(
    cluster: Cluster, tmp_path: Path, driver: str
) -> None:
    """The resharding process is SIGKILLed after its fence, before its publish (issue 14,
    case 2): a different plan is refused and names the dead holder; writers keep writing
    (fenced, they follow the forwarding addresses); the revert, with a writer thread
    running, moves every slot back exactly and publishes the old assignment again."""
    backend = cluster(driver)
    store = make_store(tmp_path, ["s0", "s1", "s2"])
    charges = make_charges(190, 400, accounts=150)
    events = by_event(charges)
    prepare(backend, store, batches(events[:200], 50))
    old = store.load()
    target = old.add_shard("s3")
    log = str(tmp_path / "steps.log")
    child = spawn(
        reshard_worker.reshard, backend.urls, str(store.path), target.to_json(), 3, 5, 2, log
    )
    assert join(child) == -signal.SIGKILL
    assert reshard_worker.last_step(log) == "publish"
    assert store.load() == old  # fenced, not published
    claim = store.load_claim()
    assert claim is not None
    assert claim.state == "moving"
    rival = Resharder(store=store, provider=backend.provider, tables=billing_tables())
    with pytest.raises(ShardbillError, match="resume it") as caught:
        rival.run(old.reweight({"s0": 2, "s1": 1, "s2": 1}))
    assert getattr(caught.value, "owner", None) == claim.owner
    with own_writer(backend.urls, store) as writer:
        for batch in batches(events[200:300], 20):
            write_until_ok(writer, batch)  # fenced on the sources: written on s3
        rest = batches(events[300:], 10)
        thread = threading.Thread(target=lambda: [write_until_ok(writer, b) for b in rest])
        thread.start()
        # The dead holder's lease (1 s) has expired by the reverter's clock.
        reverter = Resharder(
            store=store,
            provider=backend.provider,
            tables=billing_tables(),
            settings=ReshardSettings(chunk_rows=5, parallel_slots=2),
            clock=lambda: time.time() + 5,
        )
        reverter.revert()
        thread.join(PATIENCE)
        replay = write_until_ok(writer, charges)
    assert replay.applied_events == frozenset()
    back = store.load()
    assert back.assignment == old.assignment
    assert back.epoch == target.epoch + 1
    assert_exact(backend, store, back, charges)
