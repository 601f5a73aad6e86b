"""Writer processes: the same events delivered by several at once, and one SIGKILLed mid-batch.

Processes are started with ``spawn`` (a fresh interpreter, as separate
stream consumers would be) and report every write result back to the
parent's recorder.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
from multiprocessing.connection import Connection

from shardbill.rules import Charge
from tests.faults.cluster import ShardCluster
from tests.faults.conftest import ClusterFactory
from tests.faults.invariants import BatchReport, Outcome, Recorder, assert_invariants
from tests.faults.report import note
from tests.faults.scale import iterations, seed_for
from tests.faults.workers import Delivery, deliver_all_to, stream
from tests.faults.workload import priced_events
from tests.support.proxy import is_commit

_SPAWN = multiprocessing.get_context("spawn")


def _deliver_in_processes(
    arguments: list[tuple[dict[str, str], str, int, int, int, int]], *, label: str
) -> list[list[Delivery]]:
    """One spawned process per argument tuple, all at once; their deliveries, in order.

    Plain processes with a pipe each rather than a Pool: a worker that dies
    (a crash in a driver's C code) shows as its exit code here, where a
    Pool would wait forever for the task it lost.
    """
    started = []
    for n, args in enumerate(arguments):
        receive, send = _SPAWN.Pipe(duplex=False)
        process = _SPAWN.Process(target=deliver_all_to, args=(send, *args), name=f"{label}p{n}")
        process.start()
        send.close()
        started.append((process, receive))
    results: list[list[Delivery]] = []
    try:
        for process, receive in started:
            assert receive.poll(600), f"{process.name} sent nothing within 600 s"
            try:
                results.append(receive.recv())
            except EOFError:
                process.join(10)
                raise AssertionError(
                    f"{process.name} died without a result (exit code {process.exitcode})"
                ) from None
    finally:
        for process, receive in started:
            process.join(60)
            if process.is_alive():
                process.kill()
                process.join()
            receive.close()
    codes = {process.name: process.exitcode for process, _ in started}
    assert all(code == 0 for code in codes.values()), codes
    for process, _ in started:
        process.close()
    return results


def test_events_delivered_two_to_five_times_by_concurrent_processes_count_once(
    make_cluster: ClusterFactory, driver: str
) -> None:
    """2-5 writer processes deliver the same events in their own orders; each applies once."""
    seed = seed_for(f"duplicate-processes-{driver}")
    rng = random.Random(seed)
    cluster = make_cluster(servers=2, shards=4, proxied=False)
    rounds = iterations(1, 10)
    count = 300
    recorder_events: dict[str, tuple[Charge, ...]] = {}
    deliveries: list[tuple[str, tuple[tuple[str, ...], BatchReport]]] = []
    copies_per_round = []
    for number in range(rounds):
        round_seed = seed + number
        copies = rng.randint(2, 5)
        copies_per_round.append(copies)
        recorder_events.update(priced_events(round_seed, count))
        urls = cluster.urls(direct=True)
        args = [
            (urls, cluster.shard_map.to_json(), round_seed, count, rng.randrange(1 << 30), size)
            for size in (rng.randint(5, 40) for _ in range(copies))
        ]
        per_process = _deliver_in_processes(args, label=f"r{number}")
        deliveries.extend((f"r{number}p{i}", d) for i, ds in enumerate(per_process) for d in ds)
    recorder = Recorder(recorder_events, cluster.shard_map)
    for label, (ids, report) in deliveries:
        recorder.outcome(recorder.send(label, ids), report)
    outcomes = recorder.outcomes()
    # Every unit was delivered `copies` times and applied by exactly one of the processes.
    assert all(said.count(Outcome.APPLIED) == 1 for said in outcomes.values())
    verdict = assert_invariants(recorder, cluster, settled=True, context=f"seed {seed}")
    note(
        "same events to 2-5 processes",
        driver,
        seed=seed,
        injected={"duplicate deliveries": sum(c - 1 for c in copies_per_round) * count},
        verdict=verdict,
        extra={"copies per round": copies_per_round},
    )


class _CommitHold:
    """A proxy predicate that holds the N-th COMMIT until the test has killed the writer."""

    def __init__(self, nth: int, *, commit_after_kill: bool) -> None:
        self.nth = nth
        self.commit_after_kill = commit_after_kill
        self.seen = 0
        self.held = threading.Event()
        self.killed = threading.Event()

    def __call__(self, sql: str) -> bool:
        if not is_commit(sql):
            return False
        self.seen += 1
        if self.seen != self.nth:
            return False
        self.held.set()
        self.killed.wait(30)
        # True: drop the COMMIT (never committed); False: forward it to the
        # server, which commits for a client that is already dead.
        return not self.commit_after_kill


def _drain(conn: Connection, recorder: Recorder, state: dict[str, int], label: str) -> bool:
    """Record every message waiting on ``conn``; False once the writer is gone (EOF)."""
    while conn.poll(0):
        try:
            message = conn.recv()
        except EOFError:
            return False
        kind = message[0]
        if kind == "sent":
            state["attempt"] = recorder.send(label, message[2])
        elif kind == "result":
            report: BatchReport = message[2]
            recorder.outcome(state.pop("attempt"), report)
        elif kind == "ack":
            state["acked"] = message[1]
        elif kind == "end":
            state["ended"] = 1
    return True


def _run_stream(
    cluster: ShardCluster,
    recorder: Recorder,
    *,
    seed: int,
    count: int,
    size: int,
    first_batch: int,
    label: str,
    hold: _CommitHold | None,
) -> dict[str, int]:
    """Run one stream writer from ``first_batch``; SIGKILL it at ``hold``'s COMMIT if given."""
    receive, send = _SPAWN.Pipe(duplex=False)
    urls = cluster.urls()
    args = (urls, cluster.shard_map.to_json(), seed, count, size, first_batch, send)
    process = _SPAWN.Process(target=stream, args=args, name=label)
    process.start()
    send.close()
    state = {"acked": first_batch - 1}
    try:
        while True:
            alive = _drain(receive, recorder, state, label)
            if hold is not None and hold.held.is_set() and not hold.killed.is_set():
                assert process.pid is not None
                os.kill(process.pid, signal.SIGKILL)
                process.join()
                hold.killed.set()
            if not alive or "ended" in state:
                break
            receive.poll(0.05)
        process.join(60)
        assert not process.is_alive(), f"{label} did not exit"
    finally:
        if process.is_alive():
            process.kill()
            process.join()
        receive.close()
        process.close()
    if "attempt" in state:
        recorder.lost(state.pop("attempt"), f"{label} was SIGKILLed mid-batch")
    return state


def test_a_writer_process_sigkilled_mid_batch_is_replayed_from_its_last_ack(
    make_cluster: ClusterFactory, driver: str
) -> None:
    """A stream writer is SIGKILLed at a seeded COMMIT; a new one resumes after the last ack."""
    seed = seed_for(f"kill-writer-process-{driver}")
    rng = random.Random(seed)
    cluster = make_cluster(servers=1, shards=3)
    proxy = cluster.proxies[0]
    rounds = iterations(1, 30)
    count, size = 240, 12
    all_events: dict[str, tuple[Charge, ...]] = {}
    recorder = Recorder(all_events, cluster.shard_map)  # holds this dict; filled per round
    committed_after_kill = 0
    for number in range(rounds):
        round_seed = seed + 1000 * number
        events = priced_events(round_seed, count)
        all_events.update(events)
        hold = _CommitHold(rng.randint(3, 40), commit_after_kill=rng.random() < 0.5)
        committed_after_kill += hold.commit_after_kill
        proxy.cut_when(hold, before=True, count=1, label="hold-then-kill")
        first = _run_stream(
            cluster,
            recorder,
            seed=round_seed,
            count=count,
            size=size,
            first_batch=0,
            label=f"r{number}a",
            hold=hold,
        )
        assert hold.killed.is_set(), "the writer finished before its COMMIT was held"
        assert "ended" not in first
        proxy.clear_cuts()
        resumed = _run_stream(
            cluster,
            recorder,
            seed=round_seed,
            count=count,
            size=size,
            first_batch=first["acked"] + 1,
            label=f"r{number}b",
            hold=None,
        )
        assert "ended" in resumed
    verdict = assert_invariants(recorder, cluster, settled=True, context=f"seed {seed}")
    note(
        "writer process SIGKILL mid-batch + replay",
        driver,
        seed=seed,
        injected={"writer sigkill": rounds},
        verdict=verdict,
        extra={"held COMMIT forwarded after the kill": committed_after_kill},
    )
