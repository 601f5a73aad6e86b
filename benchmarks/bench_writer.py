"""Benchmark the aggregation writer against two baselines, on a real MariaDB/MySQL server.

For each traffic model (uniform, skewed, hot) the same priced events are
written three ways, in one run, into ``--shards`` databases on one server:

* ``writer``: shardbill's AggregationWriter (ledger, coalescing, batched
  multi-row UPSERTs, one transaction per shard per batch and round, shards in
  parallel), with its default identity guarantee (``IdScope.GLOBAL``: an id
  is one event whatever account it bills; one claim row per event, and a
  second round of transactions when the claim lives on another shard);
* ``writer_per_account``: the same writer with ``IdScope.PER_ACCOUNT`` (ids
  compared only on their charges' slots): the cost of the identity guarantee
  is ``writer_vs_per_account``;
* ``writer_wide``: the same writer with every quantity and amount measure
  wide (``DECIMAL(65,0)``, for sums past 2**63): the cost of wide measures
  is ``writer_vs_wide`` (narrow events/s over wide events/s);
* ``per_event`` (baseline a): the straightforward exactly-once code, one
  transaction per event: ledger INSERT, one UPSERT per table, COMMIT;
* ``floor`` (baseline b): the writer's own pre-aggregated rows written by bare
  multi-row INSERTs into empty tables: no ledger, no UPSERT, no retries.

Reported per model and way: events/s, UPSERT statements/s, commits/s and
p50/p99 commit latency (ms), and the ratios writer/per_event,
writer/floor, writer/writer_per_account and writer/writer_wide. ``--json`` prints one JSON object.

``--repeat N`` runs every model N times and reports medians (the ratios are
taken within each run, then the median); ``--prefill-ledger ROWS`` loads
that many ledger rows of earlier events into the shards first, as a
service's retention window would.

Run (the local MariaDB, four tables per charge, as in the docs)::

    .venv/bin/python benchmarks/bench_writer.py --events 40000 --baseline-events 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import json
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import attrs
import pymysql

from shardbill import ShardMap
from shardbill.observe import Stats
from shardbill.providers import PooledProvider
from shardbill.rules import Charge, comms
from shardbill.tables.aggregates import AggregateTable, Amount, Quantity
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.synthetic import Traffic
from shardbill.writer import AggregationWriter, WriterSettings
from shardbill.writer.planning import IdScope, coalesce, plan_batch


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _connect(args: argparse.Namespace, db: str | None = None) -> Any:
    """A plain driver connection (autocommit on), with the driver the writer uses."""
    if args.driver == "mysqldb":
        import MySQLdb

        conn = MySQLdb.connect(
            host=args.host, port=args.port, user=args.user, passwd=args.password,
            **({"db": db} if db else {}), charset="utf8mb4",
        )  # fmt: skip
        conn.autocommit(True)
        return conn
    return pymysql.connect(
        host=args.host, port=args.port, user=args.user, password=args.password,
        database=db, autocommit=True, charset="utf8mb4",
    )  # fmt: skip


def _rates(
    events: int, kind: str, statements: int, latencies: Sequence[float], elapsed: float
) -> dict[str, Any]:
    """A baseline's report: events, statements and commits per second, commit p50/p99."""
    return {
        "events_per_s": events / elapsed,
        f"{kind}_statements_per_s": statements / elapsed,
        "commits_per_s": len(latencies) / elapsed,
        "p50_ms": _pct(latencies, 0.50),
        "p99_ms": _pct(latencies, 0.99),
        "events": events,
        "seconds": elapsed,
    }


def _price(model: str, events: int, seed: int) -> tuple[list[Charge], int]:
    traffic = Traffic(model=model, events=events, seed=seed)
    engine = comms.engine()
    charges: list[Charge] = []
    for batch in traffic.batches(5000):
        charges.extend(engine.price_batch(batch).charges)
    return charges, events


def _by_event(charges: Sequence[Charge]) -> list[list[Charge]]:
    out: dict[str, list[Charge]] = {}
    for c in charges:
        out.setdefault(c.event_id, []).append(c)
    return list(out.values())


def wide_tables() -> tuple[AggregateTable, ...]:
    """The billing tables with every quantity and amount measure wide (DECIMAL(65,0))."""
    return tuple(
        attrs.evolve(
            t,
            measures=[
                attrs.evolve(m, wide=True) if isinstance(m.value, Quantity | Amount) else m
                for m in t.measures
            ],
        )
        for t in billing_tables()
    )


def run_writer(
    args: argparse.Namespace,
    urls: dict[str, str],
    charges: list[Charge],
    id_scope: IdScope = IdScope.GLOBAL,
    tables: Sequence[AggregateTable] | None = None,
) -> dict[str, Any]:
    shard_map = ShardMap.create(sorted(urls), slots=args.slots)
    provider = PooledProvider.from_urls(urls)
    stats = Stats()
    latest = max(c.time for c in charges).timestamp()  # the traffic is dated: so is the clock
    writer = AggregationWriter(
        shard_map=shard_map, provider=provider, tables=tables or billing_tables(),
        observer=stats,
        settings=WriterSettings(
            max_workers=args.workers, id_scope=id_scope, track_positions=args.track_positions
        ),
        clock=lambda: latest,
    )  # fmt: skip
    writer.ensure_schema()
    events = _by_event(charges)
    batches = [
        [c for e in events[start : start + args.batch] for c in e]
        for start in range(0, len(events), args.batch)
    ]
    started = time.perf_counter()
    for result in writer.write_stream(batches, depth=args.depth):
        assert result.ok, result
    elapsed = time.perf_counter() - started
    writer.close()
    provider.close()
    lat = stats.all_latencies()
    commits = sum(stats.commits.values())
    upserts = stats.statements
    return {
        "events_per_s": len(events) / elapsed,
        "upsert_statements_per_s": upserts / elapsed,
        "rows_per_s": stats.rows / elapsed,
        "commits_per_s": commits / elapsed,
        "p50_ms": _pct(lat, 0.50),
        "p99_ms": _pct(lat, 0.99),
        "retries": sum(stats.retries.values()),
        "seconds": elapsed,
    }


_TABLE_SQL = {
    "usage_daily": (("account_id", "day", "product"), ("quantity", "amount", "charges")),
    "usage_monthly": (
        ("account_id", "month", "product", "currency"),
        ("quantity", "amount", "charges"),
    ),
    "usage_by_country": (("account_id", "month", "country"), ("amount", "charges")),
    "account_balance": (("account_id", "currency"), ("amount", "charges", "largest_charge")),
}


def run_per_event(
    args: argparse.Namespace, dbs: dict[str, str], charges: list[Charge]
) -> dict[str, Any]:
    """Baseline (a): one transaction per event, one statement per table per charge."""
    shard_map = ShardMap.create(sorted(dbs), slots=args.slots)
    tables = billing_tables()
    conns = {s: _connect(args, db) for s, db in dbs.items()}
    for conn in conns.values():
        conn.autocommit(False)
    events = _by_event(charges)[: args.baseline_events]
    latencies: list[float] = []
    statements = 0
    started = time.perf_counter()
    for event in events:
        by_shard: dict[str, list[Charge]] = {}
        for c in event:
            by_shard.setdefault(shard_map.shard_for(c.account), []).append(c)
        for shard, part in by_shard.items():
            t0 = time.perf_counter()
            cur = conns[shard].cursor()
            slot = shard_map.slot_for(part[0].account)
            cur.execute(
                "INSERT INTO shardbill_ledger (event_id, sb_slot, fingerprint, event_time, "
                "writer_token) VALUES (%s, %s, %s, %s, %s)",
                (part[0].event_id, slot, "0" * 16, int(time.time()), "0" * 16),
            )  # fmt: skip
            for c in part:
                for table in tables:
                    keys = [
                        v.isoformat() if hasattr(v, "isoformat") else v for v in table.key_of(c)
                    ]
                    deltas = table.deltas_of(c)
                    key_cols, measure_cols = _TABLE_SQL[table.name]
                    cols = ", ".join((*key_cols, "sb_slot", *measure_cols))
                    marks = ", ".join(["%s"] * (len(key_cols) + 1 + len(measure_cols)))
                    updates = ", ".join(
                        f"{m} = GREATEST({m}, VALUES({m}))" if m == "largest_charge"
                        else f"{m} = {m} + VALUES({m})" for m in measure_cols
                    )  # fmt: skip
                    cur.execute(
                        f"INSERT INTO {table.name} ({cols}) VALUES ({marks})"
                        f" ON DUPLICATE KEY UPDATE {updates}", (*keys, slot, *deltas),
                    )  # fmt: skip
                    statements += 1
            conns[shard].commit()
            latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    for conn in conns.values():
        conn.close()
    return _rates(len(events), "upsert", statements, latencies, elapsed)


def run_floor(
    args: argparse.Namespace, dbs: dict[str, str], charges: list[Charge]
) -> dict[str, Any]:
    """Baseline (b): the writer's coalesced rows, bare multi-row INSERTs into empty tables."""
    shard_map = ShardMap.create(sorted(dbs), slots=args.slots)
    tables = billing_tables()
    conns = {s: _connect(args, db) for s, db in dbs.items()}
    for conn in conns.values():
        conn.autocommit(False)
    events = _by_event(charges)
    # Pre-aggregate outside the timing: the floor is only the INSERTs of the same rows.
    prepared: list[list[tuple[str, str, list[Any]]]] = []
    salt = 0
    for start in range(0, len(events), args.batch):
        batch = [c for e in events[start : start + args.batch] for c in e]
        plan = plan_batch(
            batch, tables=tables, shard_key=(tables[0].keys[0].projection,),
            locate=lambda k: (shard_map.slot_for(k), shard_map.shard_for(k)),
        )  # fmt: skip
        by_shard: dict[str, list[Any]] = {}
        for unit in plan.units:
            by_shard.setdefault(shard_map.owner(unit.slot), []).append(unit)
        statements_of_batch: list[tuple[str, str, list[Any]]] = []
        for shard, units in by_shard.items():
            for table, rows in zip(tables, coalesce(units, tables), strict=True):
                key_cols, measure_cols = _TABLE_SQL[table.name]
                cols = ", ".join((*key_cols, "sb_slot", *measure_cols))
                width = len(key_cols) + 1 + len(measure_cols)
                for i in range(0, len(rows), 1000):
                    chunk = rows[i : i + 1000]
                    marks = ", ".join(["(" + ", ".join(["%s"] * width) + ")"] * len(chunk))
                    params: list[Any] = []
                    for r in chunk:
                        salt += 1  # empty tables, no UPSERT: keys unique across batches
                        key = [v.isoformat() if hasattr(v, "isoformat") else v for v in r.key]
                        key[0] = salt
                        params.extend((*key, r.slot, *r.deltas))
                    sql = f"INSERT INTO {table.name} ({cols}) VALUES {marks}"
                    statements_of_batch.append((shard, sql, params))
        prepared.append(statements_of_batch)
    latencies: list[float] = []
    statements = 0
    started = time.perf_counter()
    for batch_statements in prepared:
        by_shard: dict[str, list[tuple[str, list[Any]]]] = {}
        for shard, sql, params in batch_statements:
            by_shard.setdefault(shard, []).append((sql, params))
        for shard, items in by_shard.items():
            t0 = time.perf_counter()
            cur = conns[shard].cursor()
            for sql, params in items:
                cur.execute(sql, params)
                statements += 1
            conns[shard].commit()
            latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    for conn in conns.values():
        conn.close()
    return _rates(len(events), "insert", statements, latencies, elapsed)


WAYS = ("writer", "writer_per_account", "writer_wide", "per_event", "floor")


def _one_run(args: argparse.Namespace, admin: Any, charges: list[Charge]) -> dict[str, Any]:
    """The three ways once each, each into fresh databases with the writer's schema."""
    run: dict[str, Any] = {}
    for way in WAYS:
        tag = secrets.token_hex(3)
        dbs = {f"shard-{i}": f"sbbench_{tag}_{i}" for i in range(args.shards)}
        with admin.cursor() as cur:
            for db in dbs.values():
                cur.execute(f"CREATE DATABASE `{db}`")
        try:
            urls = {
                s: f"mysql+{args.driver}://{args.user}@{args.host}:{args.port}/{db}"
                for s, db in dbs.items()
            }
            # Every way starts from the same empty schema, made by the writer.
            setup = AggregationWriter(
                shard_map=ShardMap.create(sorted(dbs), slots=args.slots),
                provider=(p := PooledProvider.from_urls(urls)),
                tables=wide_tables() if way == "writer_wide" else billing_tables(),
            )  # fmt: skip
            setup.ensure_schema()
            setup.close()
            p.close()
            if args.prefill_ledger:
                _prefill_ledger(args, dbs)
            if way == "writer":
                run[way] = run_writer(args, urls, charges)
            elif way == "writer_per_account":
                run[way] = run_writer(args, urls, charges, IdScope.PER_ACCOUNT)
            elif way == "writer_wide":
                run[way] = run_writer(args, urls, charges, tables=wide_tables())
            elif way == "per_event":
                run[way] = run_per_event(args, dbs, charges)
            else:
                run[way] = run_floor(args, dbs, charges)
        finally:
            with admin.cursor() as cur:
                for db in dbs.values():
                    cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
    w = run["writer"]["events_per_s"]
    run["writer_vs_per_event"] = w / run["per_event"]["events_per_s"]
    run["writer_vs_floor"] = w / run["floor"]["events_per_s"]
    run["writer_vs_per_account"] = w / run["writer_per_account"]["events_per_s"]
    run["writer_vs_wide"] = w / run["writer_wide"]["events_per_s"]
    return run


def _prefill_ledger(args: argparse.Namespace, dbs: dict[str, str]) -> None:
    """``--prefill-ledger`` rows of earlier events in every shard's ledger, spread over its slots.

    A service's ledger holds the retention window (weeks of events): lookups
    must cost the same against it as against an empty one.
    """
    per_shard = args.prefill_ledger // len(dbs)
    for db in dbs.values():
        conn = _connect(args, db)
        try:
            cur = conn.cursor()
            for start in range(0, per_shard, 5000):
                rows = [
                    (f"old-{n:012d}", n % args.slots, "0" * 16, 0, "0" * 16)
                    for n in range(start, min(per_shard, start + 5000))
                ]
                cur.executemany(
                    "INSERT INTO shardbill_ledger (event_id, sb_slot, fingerprint, event_time, "
                    "writer_token) VALUES (%s, %s, %s, %s, %s)", rows,
                )  # fmt: skip
        finally:
            conn.close()


def _print_model(model: str, results: dict[str, Any]) -> None:
    runs = results["runs"]
    print(f"\n== {model}: {results['charges']} charges, median of {len(runs)} run(s)",
          file=sys.stderr)  # fmt: skip
    for way in WAYS:
        r = results[way]
        print(
            f"  {way:18} {r['events_per_s']:>10,.0f} events/s  "
            f"{r['commits_per_s']:>8,.0f} commits/s  p50 {r['p50_ms']:6.2f} ms  "
            f"p99 {r['p99_ms']:6.2f} ms",
            file=sys.stderr,
        )
    each = ", ".join(f"{run['writer_vs_per_event']:.1f}x" for run in runs)
    print(
        f"  writer/per_event {results['writer_vs_per_event']:.1f}x ({each})   "
        f"writer/floor {results['writer_vs_floor']:.2f}x   "
        f"writer/per_account {results['writer_vs_per_account']:.2f}x   "
        f"writer/wide {results['writer_vs_wide']:.2f}x",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--driver", choices=("pymysql", "mysqldb"), default="mysqldb")
    parser.add_argument("--slots", type=int, default=16384)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--baseline-events", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--depth", type=int, default=2, help="batches in flight (write_stream)")
    parser.add_argument("--models", default="uniform,skewed,hot")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="runs per model; medians reported")
    parser.add_argument(
        "--prefill-ledger", type=int, default=0, metavar="ROWS",
        help="ledger rows of earlier events to load into the shards before each way",
    )  # fmt: skip
    parser.add_argument(
        "--track-positions", action="store_true",
        help="WriterSettings(track_positions=True): ask each commit's GTID (read your writes)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {"config": {k: v for k, v in vars(args).items() if k != "password"}}
    admin = _connect(args)
    for model in args.models.split(","):
        charges, _ = _price(model, args.events, args.seed)
        # Long-lived inputs out of the collector's way (docs: "Tuning"): every way
        # measured below runs with the same heap.
        gc.collect()
        gc.freeze()
        runs = [_one_run(args, admin, charges) for _ in range(args.repeat)]
        results: dict[str, Any] = {"charges": len(charges), "runs": runs}
        for way in WAYS:
            results[way] = {
                key: statistics.median(run[way][key] for run in runs)
                for key, value in runs[0][way].items()
                if isinstance(value, int | float)
            }
        # Ratios are taken within each run (same machine state), then the median.
        for ratio in (
            "writer_vs_per_event",
            "writer_vs_floor",
            "writer_vs_per_account",
            "writer_vs_wide",
        ):
            results[ratio] = statistics.median(run[ratio] for run in runs)
        report[model] = results
        if not args.json:
            _print_model(model, results)
    admin.close()
    gc.unfreeze()
    if args.json:
        print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
