"""Benchmark an online reshard 3 -> 4 on a real MariaDB/MySQL server (databases as shards).

For each of two settings, in one run, four fresh databases on one server are
shards s0..s3; the first map uses three of them:

1. **load** ``--events`` priced events (the same seeded stream every time);
2. **before**: a paced foreground writer (``--write-rate`` batches per second of
   ``--batch`` new events) runs for ``--before-seconds``; commit latency is
   recorded by :class:`shardbill.observe.Stats`;
3. **during**: the :class:`~shardbill.resharding.Resharder` moves the slots of
   ``ShardMap.add_shard("s3")`` while the same writer keeps its pace; rows
   moved per second (aggregate rows merged + ledger rows copied) and the
   writer's commit latency are recorded;
4. **check**: ``Resharder.verify()`` is empty and the grand total of
   ``account_balance`` equals the sum of every charge written ("exact").

The settings are ``unthrottled`` (``rows_per_second=None``), run ``--repeats``
times (default 3), and ``throttled`` (``--rows-per-second``; ``auto`` is a
quarter of the median unthrottled rate measured just before; ``--no-throttled``
skips it). Latency is reported as p50/p99 in milliseconds and as the ratio
during / before of the same run; ``summary`` gives the medians over the
unthrottled repeats of slots/s, rows/s, the foreground commit p50 before and
during the move, and the ratio of the two (each ratio taken within one run).
Nothing is asserted about speed.

Run (the local MariaDB)::

    .venv/bin/python benchmarks/bench_reshard.py --events 100000 --json
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import pymysql

from shardbill import ShardMap
from shardbill.observe import Stats, WriteEvent
from shardbill.providers import PooledProvider
from shardbill.resharding import MemoryMapStore, Resharder, ReshardSettings
from shardbill.rules import Charge, comms
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.synthetic import Traffic
from shardbill.writer import AggregationWriter, WriterSettings


def _traffic_clock() -> float:
    """The synthetic traffic is dated (its default day): the writers' clock goes with it."""
    return Traffic(model="uniform", events=0).end.timestamp()


def _connect(args: argparse.Namespace) -> Any:
    return pymysql.connect(
        host=args.host, port=args.port, user=args.user, password=args.password,
        autocommit=True, charset="utf8mb4",
    )  # fmt: skip


def _priced(traffic: Traffic, batch: int) -> Iterator[list[Charge]]:
    engine = comms.engine()
    for events in traffic.batches(batch):
        yield list(engine.price_batch(events).charges)


class _Phases:
    """An observer that sends each event to the Stats of the current phase."""

    def __init__(self) -> None:
        self.current = Stats()

    def __call__(self, event: WriteEvent) -> None:
        self.current(event)


class _PacedWriter(threading.Thread):
    """Writes ``rate`` batches of new events per second until stopped; sums what it wrote."""

    def __init__(
        self, writer: AggregationWriter, stream: Iterator[list[Charge]], rate: float
    ) -> None:
        super().__init__(name="foreground-writer")
        self._writer = writer
        self._stream = stream
        self._period = 1.0 / rate
        self.stop = threading.Event()
        self.amount = Decimal(0)
        self.batches = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        due = time.monotonic()
        try:
            while not self.stop.is_set():
                charges = next(self._stream)
                result = self._writer.write(charges)
                while not result.ok:  # retry what failed, as a consumer would
                    result = self._writer.write(
                        [c for c in charges if c.event_id in result.failed_events]
                    )
                self.amount += sum((c.amount for c in charges), Decimal(0))
                self.batches += 1
                due = max(due + self._period, time.monotonic() - self._period)
                self.stop.wait(max(0.0, due - time.monotonic()))
        except BaseException as exc:
            self.error = exc
            raise


def _latency(stats: Stats, seconds: float, batches: int) -> dict[str, Any]:
    p50, p99 = stats.percentile(0.50), stats.percentile(0.99)
    return {
        "commits": sum(stats.commits.values()),
        "batches": batches,
        "seconds": seconds,
        "p50_ms": None if p50 is None else p50 * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
        "retries": sum(stats.retries.values()),
        "map_reloads": stats.map_reloads,
    }


def _grand_total(args: argparse.Namespace, dbs: dict[str, str]) -> Decimal:
    conn = _connect(args)
    total = Decimal(0)
    with conn.cursor() as cur:
        for db in dbs.values():
            cur.execute(f"SELECT COALESCE(SUM(amount), 0) FROM `{db}`.`account_balance`")
            (units,) = cur.fetchone()
            total += Decimal(int(units)).scaleb(-6)
    conn.close()
    return total


def run_setting(
    args: argparse.Namespace, admin: Any, rows_per_second: float | None, seed: int
) -> dict[str, Any]:
    """Load, measure before, move 3 -> 4 while writing, check; on fresh databases."""
    tag = secrets.token_hex(3)
    dbs = {f"s{i}": f"sbreshard_{tag}_{i}" for i in range(4)}
    with admin.cursor() as cur:
        for db in dbs.values():
            cur.execute(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
    urls = {
        s: f"mysql+{args.driver}://{args.user}@{args.host}:{args.port}/{db}"
        for s, db in dbs.items()
    }
    try:
        with (
            PooledProvider.from_urls(urls) as load_provider,
            PooledProvider.from_urls(urls) as writer_provider,
            PooledProvider.from_urls(urls) as reshard_provider,
        ):
            store = MemoryMapStore(ShardMap.create(["s0", "s1", "s2"], slots=args.slots))
            tables = billing_tables()
            written = Decimal(0)
            started = time.perf_counter()
            with AggregationWriter(
                shard_map=store, provider=load_provider, tables=tables,
                settings=WriterSettings(max_workers=args.workers), clock=_traffic_clock,
            ) as loader:  # fmt: skip
                loader.ensure_schema()
                load = list(_priced(Traffic(model=args.model, events=args.events, seed=seed), 2000))
                for result in loader.write_stream(load):
                    assert result.ok, result
                written += sum((c.amount for charges in load for c in charges), Decimal(0))
            load_seconds = time.perf_counter() - started

            phases = _Phases()
            foreground = Traffic(
                model=args.model, events=10**9, seed=seed + 1, id_prefix="fg"
            )  # a stream that never runs out; priced lazily
            writer = AggregationWriter(
                shard_map=store, provider=writer_provider, tables=tables, observer=phases,
                settings=WriterSettings(max_workers=args.workers), clock=_traffic_clock,
            )  # fmt: skip
            paced = _PacedWriter(writer, _priced(foreground, args.batch), args.write_rate)
            paced.start()
            time.sleep(args.before_seconds)
            before, before_batches = phases.current, paced.batches
            phases.current = Stats()
            target = store.load().add_shard("s3")
            resharder = Resharder(
                store=store,
                provider=reshard_provider,
                tables=tables,
                settings=ReshardSettings(
                    chunk_rows=args.chunk_rows,
                    parallel_slots=args.parallel_slots,
                    rows_per_second=rows_per_second,
                ),
            )
            progress = resharder.run(target)
            during, during_batches = phases.current, paced.batches - before_batches
            paced.stop.set()
            paced.join()
            writer.close()
            if paced.error is not None:
                raise paced.error
            written += paced.amount
            problems = resharder.verify()
        moved = progress.rows_moved + progress.ledger_rows_moved
        report: dict[str, Any] = {
            "rows_per_second_setting": rows_per_second,
            "load": {"events": args.events, "seconds": load_seconds},
            "plan": {
                "moved_slots": len(progress.plan.moves),
                "moved_fraction": progress.plan.moved_fraction,
            },
            "move": {
                "seconds": progress.seconds,
                "aggregate_rows": progress.rows_moved,
                "ledger_rows": progress.ledger_rows_moved,
                "rows_per_s": moved / progress.seconds,
                "slots_per_s": len(progress.plan.moves) / progress.seconds,
            },
            "before": _latency(before, args.before_seconds, before_batches),
            "during": _latency(during, progress.seconds, during_batches),
            "verify_problems": problems,
            "exact": _grand_total(args, dbs) == written and not problems,
        }
        b, d = report["before"], report["during"]
        if b["p99_ms"] and d["p99_ms"]:
            report["p50_during_vs_before"] = d["p50_ms"] / b["p50_ms"]
            report["p99_during_vs_before"] = d["p99_ms"] / b["p99_ms"]
        return report
    finally:
        with admin.cursor() as cur:
            for db in dbs.values():
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")


def _print(name: str, r: dict[str, Any]) -> None:
    m, b, d = r["move"], r["before"], r["during"]
    print(
        f"== {name} (rows_per_second={r['rows_per_second_setting']}): "
        f"{r['plan']['moved_slots']} slots, {m['aggregate_rows']} aggregate + "
        f"{m['ledger_rows']} ledger rows in {m['seconds']:.1f} s = {m['rows_per_s']:,.0f} rows/s "
        f"({m['slots_per_s']:,.1f} slots/s)\n"
        f"   writes before: p50 {b['p50_ms']:.2f} ms  p99 {b['p99_ms']:.2f} ms "
        f"({b['commits']} commits)\n"
        f"   writes during: p50 {d['p50_ms']:.2f} ms  p99 {d['p99_ms']:.2f} ms "
        f"({d['commits']} commits, {d['retries']} retries)\n"
        f"   exact: {r['exact']}",
        file=sys.stderr,
    )


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeated runs of one setting (each ratio taken within its own run)."""
    ratios = [r["p50_during_vs_before"] for r in runs if "p50_during_vs_before" in r]
    return {
        "repeats": len(runs),
        "slots_per_s": _median([r["move"]["slots_per_s"] for r in runs]),
        "rows_per_s": _median([r["move"]["rows_per_s"] for r in runs]),
        "p50_before_ms": _median([r["before"]["p50_ms"] or 0.0 for r in runs]),
        "p50_during_ms": _median([r["during"]["p50_ms"] or 0.0 for r in runs]),
        "p50_during_vs_before": _median(ratios) if ratios else None,
        "all_exact": all(r["exact"] for r in runs),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run both settings, print the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    parser.add_argument("--driver", choices=("pymysql", "mysqldb"), default="mysqldb")
    parser.add_argument("--slots", type=int, default=16384)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--model", default="skewed", choices=("uniform", "skewed", "hot"))
    parser.add_argument("--batch", type=int, default=100, help="events per foreground batch")
    parser.add_argument("--write-rate", type=float, default=20.0, help="foreground batches/s")
    parser.add_argument("--before-seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=4, help="writer threads per writer")
    parser.add_argument("--chunk-rows", type=int, default=1000)
    parser.add_argument("--parallel-slots", type=int, default=4)
    parser.add_argument(
        "--rows-per-second",
        default="auto",
        help="the throttled setting's ceiling; auto = a quarter of the unthrottled rate",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--repeats", type=int, default=3, help="unthrottled runs (medians in 'summary')"
    )
    parser.add_argument("--no-throttled", action="store_true", help="skip the throttled run")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {"config": {k: v for k, v in vars(args).items() if k != "password"}}
    admin = _connect(args)
    try:
        runs = [run_setting(args, admin, None, args.seed) for _ in range(max(1, args.repeats))]
        report["unthrottled"] = runs[0]
        report["unthrottled_runs"] = runs
        report["summary"] = summarise(runs)
        if not args.no_throttled:
            if args.rows_per_second == "auto":
                ceiling = report["summary"]["rows_per_s"] / 4
            else:
                ceiling = float(args.rows_per_second)
            report["throttled"] = run_setting(args, admin, ceiling, args.seed)
    finally:
        admin.close()
    if args.json:
        print(json.dumps(report, default=str))
    else:
        for i, run in enumerate(report["unthrottled_runs"], 1):
            _print(f"unthrottled {i}", run)
        if "throttled" in report:
            _print("throttled", report["throttled"])
        print(f"== summary (medians): {json.dumps(report['summary'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
