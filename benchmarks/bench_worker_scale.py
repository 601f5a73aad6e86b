"""Scale-out of ``shardbill worker``: K workers x P partitions x N private MariaDB servers.

For each N in ``--servers`` (private ``mariadbd`` processes, started with
``tests/support/servers.py``, durable commits: ``innodb_flush_log_at_trx_commit
= 1``) and each K in ``--workers``: fresh shard databases (``--shards-per-server``
on each server), a fresh topic of ``--partitions`` partitions on a private
Tansu broker holding the same seeded ``--events`` events, then K worker
processes started together in one consumer group until the topic is drained.

Measured over the steady window (from the first progress line that shows
records to the last one, every worker's lines together; the group's join and
the idle wait at the end are left out):

* ``events_per_s``: records done in the window / its length;
* ``worker_cpu_us_per_event`` and ``server_cpu_us_per_event``: CPU time
  (user + system, from ``/proc/PID/stat``, sampled every 0.1 s) of all worker
  processes, and of all ``mariadbd`` processes, over the window, per event;
  ``broker_cpu_us_per_event`` the same for Tansu;
* ``batches``: worker batches (each one transaction per shard it touches).

The baseline in the same run is K=1, N=1: ``speedup`` is each row's events/s
over it. The machine's cores are reported (``cpus``): on a machine with fewer
cores than processes, rates stop growing with K and N when the cores are busy,
and CPU per event is the figure to plan with.

Run::

    .venv/bin/python benchmarks/bench_worker_scale.py --events 30000 --workers 1,2,3 --servers 1,2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' support package

from tests.support.kafka import start_broker, stop_broker
from tests.support.servers import MariaDBServer, short_tempdir, start_servers

from shardbill.workloads.synthetic import Traffic

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


class _Sampler(threading.Thread):
    """Samples the CPU seconds of some processes every 0.1 s."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        super().__init__(daemon=True)
        self.groups = groups
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.done = threading.Event()

    def run(self) -> None:
        last: dict[int, float] = {}
        while not self.done.is_set():
            now = time.monotonic()
            totals = {}
            for name, pids in self.groups.items():
                total = 0.0
                for pid in pids:
                    value = _cpu_seconds(pid)
                    if value is not None:
                        last[pid] = value
                    total += last.get(pid, 0.0)
                totals[name] = total
            self.samples.append((now, totals))
            self.done.wait(0.1)

    def between(self, start: float, end: float) -> tuple[float, float, dict[str, float]]:
        """The first and last sample inside [start, end] and each group's CPU seconds between.

        A window shorter than two samples (a small run on a fast or a busy machine) is
        measured between the samples just around it instead.
        """
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            before = [s for s in self.samples if s[0] <= start]
            after = [s for s in self.samples if s[0] >= end]
            if not before or not after:
                raise RuntimeError("the steady window was not sampled: give more --events")
            inside = [before[-1], after[0]]
        (t0, first), (t1, last) = inside[0], inside[-1]
        return t0, t1, {name: last[name] - first[name] for name in first}


def _lines(events: int, seed: int) -> list[tuple[bytes, bytes]]:
    day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    out = []
    for e in Traffic(model="skewed", events=events, seed=seed, accounts=5000, start=day).distinct():
        value = {"event_id": e.event_id, "account": e.account, "time": e.time.isoformat(),
                 "product": e.product, "quantity": str(e.quantity),
                 "dimensions": dict(e.dimensions)}  # fmt: skip
        out.append((str(e.account).encode(), json.dumps(value).encode()))
    return out


def _produce(bootstrap: str, topic: str, partitions: int, lines: list[tuple[bytes, bytes]]) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for number, (key, value) in enumerate(lines):
        producer.produce(topic, value=value, key=key)
        if number % 1000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("events not delivered to the broker")


def _deployment(root: Path, servers: list[MariaDBServer], per_server: int, batch: int) -> str:
    shards = {}
    for index, server in enumerate(servers):
        for j in range(per_server):
            database = f"bench_{index}_{j}"
            server.execute(f"DROP DATABASE IF EXISTS `{database}`")
            server.execute(f"CREATE DATABASE `{database}`")
            shards[f"s{index}x{j}"] = server.url(database)
    root.mkdir(parents=True)
    config = root / "shardbill.toml"
    config.write_text(
        "[shards]\n"
        + "".join(f'{name} = "{url}"\n' for name, url in shards.items())
        + f"[writer]\nbatch_size = {batch}\n",
        encoding="utf-8",
    )
    subprocess.run(
        [sys.executable, "-m", "shardbill", "init", "--config", str(config)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return str(config)


def _read_progress(process: subprocess.Popen[str], into: list[tuple[float, int, dict[str, Any]]],
                   index: int) -> None:  # fmt: skip
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("{"):
            into.append((time.monotonic(), index, json.loads(line)))


def _one(  # noqa: PLR0917 - one configuration's whole context, private
    args: argparse.Namespace,
    bootstrap: str,
    broker_pid: int,
    servers: list[MariaDBServer],
    workers: int,
    lines: list[tuple[bytes, bytes]],
    root: Path,
) -> dict[str, Any]:
    tag = f"n{len(servers)}k{workers}-{time.monotonic_ns()}"
    config = _deployment(root / tag, servers, args.shards_per_server, args.batch)
    _produce(bootstrap, tag, args.partitions, lines)
    command = [
        sys.executable, "-m", "shardbill", "worker", "--topic", tag, "--group", tag,
        "--bootstrap-servers", bootstrap, "--config", config,
        "--dead-letters", str(root / f"{tag}.dead.jsonl"), "--linger-ms", "50",
        "--exit-when-idle", "4", "--progress", "0.1", "--json",
        "--kafka-option", "session.timeout.ms=6000",
    ]  # fmt: skip
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    progress: list[tuple[float, int, dict[str, Any]]] = []
    readers = [
        threading.Thread(target=_read_progress, args=(p, progress, i), daemon=True)
        for i, p in enumerate(processes)
    ]
    for reader in readers:
        reader.start()
    sampler = _Sampler(
        {
            "worker": [p.pid for p in processes],
            "server": [s.pid for s in servers if s.pid is not None],
            "broker": [broker_pid],
        }
    )
    sampler.start()
    outs = []
    for process in processes:  # stderr is the readers'; stdout holds the summary
        assert process.stdout is not None
        outs.append(process.stdout.read())
        process.wait(timeout=900)
    for reader in readers:
        reader.join()
    for process in processes:
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.close()
        process.stderr.close()
    sampler.done.set()
    sampler.join()
    summaries = [json.loads(out) for out in outs]
    applied = sum(s["applied"] for s in summaries)
    if applied != len(lines):
        raise RuntimeError(f"{tag}: {applied} events applied of {len(lines)}")
    moving = [p for p in progress if p[2]["records"] > 0]
    start = moving[0][0]
    final = {i: max(p[2]["records"] for p in moving if p[1] == i) for i in {p[1] for p in moving}}
    end = max(min(t for t, i, d in moving if d["records"] == final[i]) for i in final)
    t0, t1, cpu = sampler.between(start, end)

    def done_by(when: float) -> int:  # records reported by every worker at ``when``
        return sum(max((d["records"] for t, j, d in progress if j == i and t <= when), default=0)
                   for i in range(workers))  # fmt: skip

    done_in_span = done_by(t1) - done_by(t0)
    rate = done_in_span / (t1 - t0)
    return {
        "workers": workers,
        "servers": len(servers),
        "partitions": args.partitions,
        "shards": len(servers) * args.shards_per_server,
        "events": len(lines),
        "events_per_s": round(rate),
        "worker_cpu_us_per_event": round(cpu["worker"] / done_in_span * 1e6, 1),
        "server_cpu_us_per_event": round(cpu["server"] / done_in_span * 1e6, 1),
        "broker_cpu_us_per_event": round(cpu["broker"] / done_in_span * 1e6, 1),
        "batches": sum(s["batches"] for s in summaries),
        "rebalances": sum(s["rebalances"] for s in summaries),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every configuration, the baseline first; returns the report."""
    lines = _lines(args.events, args.seed)
    rows = []
    base = Path(short_tempdir("sbw-"))
    work = Path(tempfile.mkdtemp(prefix="sbw-run-"))
    broker = start_broker(work)
    try:
        for n in args.servers:
            servers = start_servers(
                n, base / f"n{n}", innodb_buffer_pool_size="128M", max_connections=300
            )
            try:
                for k in args.workers:
                    row = _one(args, broker.bootstrap, broker.process.pid, servers, k, lines, work)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
            finally:
                for server in servers:
                    server.cleanup()
    finally:
        stop_broker(broker)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    baseline = rows[0]["events_per_s"]
    for row in rows:
        row["speedup"] = round(row["events_per_s"] / baseline, 2)
    return {"cpus": os.cpu_count(), "batch": args.batch, "rows": rows}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; prints a table or, with ``--json``, one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--workers", type=_ints, default=[1, 2, 3], help="K values, e.g. 1,2,3")
    parser.add_argument("--servers", type=_ints, default=[1, 2], help="N values, e.g. 1,2")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--shards-per-server", type=int, default=2)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"cpus {report['cpus']}, batch {report['batch']}")
    keys = list(report["rows"][0])
    print(" ".join(f"{k:>10}" for k in keys))
    for row in report["rows"]:
        print(" ".join(f"{row[k]!s:>10}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
