"""The writer against the loop a careful user would write instead (issue 21), in one run.

Three ways write the same seeded, priced event stream (batches of
``--batch`` events) into the same tables (the billing catalog's four
aggregates, made by the writer's ``ensure_schema``), on ``--shards``
databases of one MariaDB/MySQL server:

* ``loop``: the hand-written batched exactly-once loop. Per batch and shard,
  in one transaction: a ledger SELECT of the batch's (slot, event id) pairs,
  a multi-row ledger INSERT of the new ones, the new charges coalesced in
  dicts, one client-rendered multi-row ``INSERT ... ON DUPLICATE KEY UPDATE``
  per table, COMMIT. Shards one after another, as a plain loop does;
* ``loop_no_ledger``: the same without the ledger (at-least-once: a replay
  would count twice);
* ``writer``: shardbill's :class:`~shardbill.writer.AggregationWriter`
  (``write_stream``, ``--depth`` batches in flight), with its default
  guarantees (identity across slots, fencing, conflict detection);
* ``writer_per_account`` (with ``--per-account``): the same writer with
  ``IdScope.PER_ACCOUNT`` (ids compared per slot: no second ledger row for
  the event's identity claim).

Reported per way: events/s, client CPU per event (``time.process_time``:
every thread of this process, the driver included) and server CPU per event
(utime + stime of the server process from ``/proc/<pid>/stat``, when the
server runs on this machine: ``--private``, ``--server-pid`` or the
server's ``@@pid_file``). Ratios ``writer/loop`` (and ``/loop_no_ledger``)
are taken within each repeat, in which the ways run alternately (the order
rotates), then the median over ``--repeat`` repeats. Every way's grand
total (sum of ``account_balance.amount``) is checked equal to the others'.

Run (a private, durable MariaDB; the figures in docs/explanation/performance.md)::

    .venv/bin/python benchmarks/bench_baseline.py --private --events 40000 --repeat 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' support package
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_writer's helpers

from bench_writer import _by_event, _connect, _price

from shardbill import ShardMap
from shardbill.dialects.base import MergeKind
from shardbill.providers import PooledProvider
from shardbill.rules import Charge
from shardbill.tables.aggregates import AggregateTable
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter, WriterSettings
from shardbill.writer.planning import IdScope

WAYS = ("loop", "loop_no_ledger", "writer")
PER_ACCOUNT = "writer_per_account"  # --per-account: the writer with IdScope.PER_ACCOUNT
_TICK = os.sysconf("SC_CLK_TCK")
_SCALE = 6  # billing_tables() default: quantities and amounts in millionths


def server_cpu(pid: int | None) -> float:
    """Seconds of CPU (user + system) the process ``pid`` has used; 0.0 when unknown."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name (which may hold spaces), from field 3 on.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _local_server_pid(args: argparse.Namespace, admin: Any) -> int | None:
    """The server's pid when it runs here: ``--server-pid``, else its ``@@pid_file``."""
    if args.server_pid:
        return int(args.server_pid)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        return None
    with admin.cursor() as cur:
        cur.execute("SELECT @@pid_file")
        (pid_file,) = cur.fetchone()
    try:
        pid = int(Path(str(pid_file)).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if Path(f"/proc/{pid}/stat").exists() else None


# --------------------------------------------------------------------------- the loop


class Loop:
    """The hand-written batched loop: what a user writes in an afternoon, written carefully.

    Routing by the writer's own shard map (same slots, same shards), SQL text
    built once per table and row count, values bound by the driver.
    """

    def __init__(
        self,
        conns: dict[str, Any],
        shard_map: ShardMap,
        tables: Sequence[AggregateTable],
        *,
        ledger: bool,
    ) -> None:
        self.conns = conns
        self.map = shard_map
        self.tables = tuple(tables)
        self.ledger = ledger
        self.statements = 0
        self._heads: list[tuple[str, str, int]] = []
        for table in self.tables:
            cols = (*table.key_names, "sb_slot", *table.measure_names)
            updates = ", ".join(
                f"`{m.name}` = GREATEST(`{m.name}`, VALUES(`{m.name}`))"
                if m.merge is MergeKind.MAX
                else f"`{m.name}` = LEAST(`{m.name}`, VALUES(`{m.name}`))"
                if m.merge is MergeKind.MIN
                else f"`{m.name}` = `{m.name}` + VALUES(`{m.name}`)"
                for m in table.measures
            )
            head = f"INSERT INTO `{table.name}` ({', '.join(f'`{c}`' for c in cols)}) VALUES "
            self._heads.append((head, f" ON DUPLICATE KEY UPDATE {updates}", len(cols)))
        names = tuple(t.name for t in self.tables)
        if names != ("usage_daily", "usage_monthly", "usage_by_country", "account_balance"):
            raise ValueError(f"the loop is written for billing_tables(), not {names}")

    def write(self, batch: Sequence[Charge]) -> None:
        """One batch: per shard, one transaction (ledger check + insert, four UPSERTs)."""
        by_shard: dict[str, list[tuple[int, Charge]]] = {}
        slot_for, owner = self.map.slot_for, self.map.owner
        for c in batch:
            slot = slot_for(c.account)
            by_shard.setdefault(owner(slot), []).append((slot, c))
        for shard, part in by_shard.items():
            conn = self.conns[shard]
            cur = conn.cursor()
            fresh = self._claim(cur, part) if self.ledger else part
            for t, rows in enumerate(_coalesce(fresh)):
                if not rows:
                    continue
                head, tail, width = self._heads[t]
                one = "(" + ", ".join(["%s"] * width) + ")"
                params: list[Any] = []
                for key, measures in sorted(rows.items()):  # key order: fewer deadlocks
                    params.extend(key)
                    params.extend(measures)
                cur.execute(head + ", ".join([one] * len(rows)) + tail, params)
                self.statements += 1
            conn.commit()

    def _claim(self, cur: Any, part: list[tuple[int, Charge]]) -> list[tuple[int, Charge]]:
        """The charges of events not in the ledger yet; their ledger rows inserted."""
        events: dict[tuple[int, str], Charge] = {}
        for slot, c in part:
            events.setdefault((slot, c.event_id), c)
        pairs = sorted(events)
        marks = ", ".join(["(%s, %s)"] * len(pairs))
        cur.execute(
            f"SELECT sb_slot, event_id FROM shardbill_ledger WHERE (sb_slot, event_id) IN ({marks})"
            " FOR UPDATE",
            [v for pair in pairs for v in pair],
        )
        seen = {(int(s), str(e)) for s, e in cur.fetchall()}
        self.statements += 1
        new = [p for p in pairs if p not in seen]
        if new:
            now = int(time.time())
            rows = ", ".join(["(%s, %s, %s, %s, %s)"] * len(new))
            params: list[Any] = []
            for slot, event_id in new:
                params.extend((event_id, slot, "0" * 16, now, "0" * 16))
            cur.execute(
                "INSERT INTO shardbill_ledger (event_id, sb_slot, fingerprint, event_time, "
                f"writer_token) VALUES {rows}",
                params,
            )
            self.statements += 1
        keep = set(new)
        return [(slot, c) for slot, c in part if (slot, c.event_id) in keep]


Rows = dict[tuple[Any, ...], list[int]]


def _coalesce(part: Sequence[tuple[int, Charge]]) -> tuple[Rows, Rows, Rows, Rows]:
    """The four billing tables' rows of ``part``, coalesced by hand in dicts."""
    daily: Rows = {}
    monthly: Rows = {}
    country: Rows = {}
    balance: Rows = {}
    for slot, c in part:
        acct, product, currency = c.account, c.product, c.currency
        day = c.time.astimezone(dt.UTC).date()
        month = day.replace(day=1)
        q = int(c.quantity.scaleb(_SCALE))
        a = int(c.amount.scaleb(_SCALE))
        if (r := daily.get(k := (acct, day, product, slot))) is None:
            daily[k] = [q, a, 1]
        else:
            r[0] += q
            r[1] += a
            r[2] += 1
        if (r := monthly.get(k := (acct, month, product, currency, slot))) is None:
            monthly[k] = [q, a, 1]
        else:
            r[0] += q
            r[1] += a
            r[2] += 1
        k = (acct, month, c.dimensions.get("country", "--"), slot)
        if (r := country.get(k)) is None:
            country[k] = [a, 1]
        else:
            r[0] += a
            r[1] += 1
        if (r := balance.get(k := (acct, currency, slot))) is None:
            balance[k] = [a, 1, a]
        else:
            r[0] += a
            r[1] += 1
            r[2] = max(r[2], a)
    return daily, monthly, country, balance


# --------------------------------------------------------------------------- one measurement


@contextmanager
def _databases(args: argparse.Namespace, admin: Any, shards: int) -> Iterator[dict[str, str]]:
    """``shards`` fresh databases with the writer's schema; dropped afterwards."""
    tag = secrets.token_hex(3)
    dbs = {f"shard-{i}": f"sbbase_{tag}_{i}" for i in range(shards)}
    with admin.cursor() as cur:
        for db in dbs.values():
            cur.execute(f"CREATE DATABASE `{db}`")
    try:
        setup = AggregationWriter(
            shard_map=ShardMap.create(sorted(dbs), slots=args.slots),
            provider=(p := PooledProvider.from_urls(_urls(args, dbs))),
            tables=billing_tables(),
        )
        setup.ensure_schema()
        setup.close()
        p.close()
        yield dbs
    finally:
        with admin.cursor() as cur:
            for db in dbs.values():
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")


def _urls(args: argparse.Namespace, dbs: dict[str, str]) -> dict[str, str]:
    auth = args.user + (f":{args.password}" if args.password else "")
    return {
        s: f"mysql+{args.driver}://{auth}@{args.host}:{args.port}/{db}" for s, db in dbs.items()
    }


def _batches(charges: Sequence[Charge], size: int) -> list[list[Charge]]:
    events = _by_event(charges)
    return [
        [c for e in events[start : start + size] for c in e]
        for start in range(0, len(events), size)
    ]


def _grand_total(args: argparse.Namespace, dbs: dict[str, str]) -> Decimal:
    total = Decimal(0)
    for db in dbs.values():
        conn = _connect(args, db)
        try:
            cur = conn.cursor()
            cur.execute("SELECT COALESCE(SUM(amount), 0) FROM account_balance")
            total += Decimal(cur.fetchone()[0])
        finally:
            conn.close()
    return total


def run_way(
    way: str,
    *,
    args: argparse.Namespace,
    dbs: dict[str, str],
    batches: Sequence[Sequence[Charge]],
    events: int,
    pid: int | None,
) -> dict[str, Any]:
    """One way over the whole stream: events/s, client and server CPU µs per event."""
    shard_map = ShardMap.create(sorted(dbs), slots=args.slots)
    latest = max(c.time for b in batches for c in b).timestamp()
    if way in ("writer", PER_ACCOUNT):
        provider = PooledProvider.from_urls(_urls(args, dbs))
        writer = AggregationWriter(
            shard_map=shard_map,
            provider=provider,
            tables=billing_tables(),
            settings=WriterSettings(
                max_workers=args.workers,
                id_scope=IdScope.PER_ACCOUNT if way == PER_ACCOUNT else IdScope.GLOBAL,
            ),
            clock=lambda: latest,  # the traffic is dated: so is the clock
        )
        writer.check_schema()  # connections opened before the clock starts, as for the loop
        cpu0, srv0, t0 = time.process_time(), server_cpu(pid), time.perf_counter()
        for result in writer.write_stream(batches, depth=args.depth):
            assert result.ok, result
        elapsed = time.perf_counter() - t0
        cpu, srv = time.process_time() - cpu0, server_cpu(pid) - srv0
        writer.close()
        provider.close()
    else:
        conns = {s: _connect(args, db) for s, db in dbs.items()}
        for conn in conns.values():
            conn.autocommit(False)
        loop = Loop(conns, shard_map, billing_tables(), ledger=way == "loop")
        cpu0, srv0, t0 = time.process_time(), server_cpu(pid), time.perf_counter()
        for batch in batches:
            loop.write(batch)
        elapsed = time.perf_counter() - t0
        cpu, srv = time.process_time() - cpu0, server_cpu(pid) - srv0
        for conn in conns.values():
            conn.close()
    return {
        "events_per_s": events / elapsed,
        "client_cpu_us_per_event": cpu / events * 1e6,
        "server_cpu_us_per_event": srv / events * 1e6 if pid else None,
        "seconds": elapsed,
        "grand_total": str(_grand_total(args, dbs)),
    }


def one_repeat(
    args: argparse.Namespace,
    admin: Any,
    batches: Sequence[Sequence[Charge]],
    events: int,
    shards: int,
    *,
    pid: int | None,
    rotation: int,
) -> dict[str, Any]:
    """Every way once, in a rotated order, each into fresh databases; ratios of this repeat."""
    ways = _ways(args)
    order = ways[rotation % len(ways) :] + ways[: rotation % len(ways)]
    run: dict[str, Any] = {"order": list(order)}
    for way in order:
        with _databases(args, admin, shards) as dbs:
            gc.collect()
            run[way] = run_way(way, args=args, dbs=dbs, batches=batches, events=events, pid=pid)
    totals = {run[way]["grand_total"] for way in ways}
    if len(totals) != 1:
        raise SystemExit(f"the ways disagree on the grand total: {totals}")
    _ratios(run, run)
    return run


def _ways(args: argparse.Namespace) -> tuple[str, ...]:
    return (*WAYS, PER_ACCOUNT) if args.per_account else WAYS


def _ratios(into: dict[str, Any], src: dict[str, Any]) -> None:
    for writer in ("writer", PER_ACCOUNT):
        if writer not in src:
            continue
        w = src[writer]
        for base in ("loop", "loop_no_ledger"):
            b = src[base]
            into[f"speed_{writer}_vs_{base}"] = w["events_per_s"] / b["events_per_s"]
            into[f"client_cpu_{writer}_vs_{base}"] = (
                w["client_cpu_us_per_event"] / b["client_cpu_us_per_event"]
            )
            if w["server_cpu_us_per_event"] and b["server_cpu_us_per_event"]:
                into[f"server_cpu_{writer}_vs_{base}"] = (
                    w["server_cpu_us_per_event"] / b["server_cpu_us_per_event"]
                )


def _median_of(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per way the medians of its figures; the ratios' medians (taken per repeat)."""
    out: dict[str, Any] = {"runs": list(runs)}
    for way in [w for w in (*WAYS, PER_ACCOUNT) if w in runs[0]]:
        out[way] = {
            key: statistics.median(run[way][key] for run in runs)
            for key, value in runs[0][way].items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        out[way]["grand_total"] = runs[0][way]["grand_total"]
    for key, value in runs[0].items():
        if key.startswith(("speed_", "client_cpu_", "server_cpu_")) and isinstance(value, float):
            out[key] = statistics.median(run[key] for run in runs if key in run)
    return out


def _print(model: str, shards: int, r: dict[str, Any]) -> None:
    print(f"\n== {model}, {shards} shard(s), median of {len(r['runs'])}", file=sys.stderr)
    for way in [w for w in (*WAYS, PER_ACCOUNT) if w in r]:
        w = r[way]
        server = w.get("server_cpu_us_per_event")
        print(
            f"  {way:15} {w['events_per_s']:>9,.0f} events/s  "
            f"client {w['client_cpu_us_per_event']:6.1f} us/event  "
            f"server {server if server is None else f'{server:6.1f}'} us/event",
            file=sys.stderr,
        )
    print(
        f"  writer/loop: speed {r['speed_writer_vs_loop']:.2f}x  "
        f"client CPU {r['client_cpu_writer_vs_loop']:.2f}x  "
        f"server CPU {r.get('server_cpu_writer_vs_loop', float('nan')):.2f}x   "
        f"writer/loop_no_ledger: speed {r['speed_writer_vs_loop_no_ledger']:.2f}x",
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
    parser.add_argument(
        "--private", action="store_true",
        help="start a private, durable MariaDB for the run (tests/support/servers.py)",
    )  # fmt: skip
    parser.add_argument("--server-pid", type=int, help="the server's pid, for its CPU")
    parser.add_argument("--driver", choices=("pymysql", "mysqldb"), default="mysqldb")
    parser.add_argument("--slots", type=int, default=16384)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--depth", type=int, default=2, help="writer batches in flight")
    parser.add_argument("--shards", default="1,4", help="shard counts, comma-separated")
    parser.add_argument("--models", default="uniform,skewed,hot")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="repeats; medians reported")
    parser.add_argument(
        "--per-account", action="store_true",
        help="also the writer with IdScope.PER_ACCOUNT (one ledger row per event and slot)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    server = None
    if args.private:
        from tests.support.servers import short_tempdir, start_servers

        (server,) = start_servers(
            1, short_tempdir("sb-base-"), innodb_buffer_pool_size="512M",
            innodb_log_file_size="256M", max_connections=200,
        )  # fmt: skip
        args.host, args.port, args.user, args.password = server.host, server.port, "root", ""
    try:
        report = _measure(args, server.pid if server else None)
    finally:
        if server is not None:
            server.cleanup()
    if args.json:
        print(json.dumps(report, default=str))
    return 0


def _measure(args: argparse.Namespace, private_pid: int | None) -> dict[str, Any]:
    config = {k: v for k, v in vars(args).items() if k != "password"}
    report: dict[str, Any] = {"config": config}
    admin = _connect(args)
    pid = private_pid or _local_server_pid(args, admin)
    report["server_cpu_measured"] = pid is not None
    shard_counts = [int(s) for s in str(args.shards).split(",")]
    try:
        for model in args.models.split(","):
            charges, _ = _price(model, args.events, args.seed)
            events = len(_by_event(charges))
            batches = _batches(charges, args.batch)
            gc.collect()
            gc.freeze()  # the inputs out of the collector's way, the same heap for every way
            report[model] = {}
            for shards in shard_counts:
                runs = [
                    one_repeat(args, admin, batches, events, shards, pid=pid, rotation=r)
                    for r in range(args.repeat)
                ]
                result = _median_of(runs)
                result["charges"] = len(charges)
                report[model][str(shards)] = result
                if not args.json:
                    _print(model, shards, result)
            gc.unfreeze()
    finally:
        admin.close()
    return report


if __name__ == "__main__":
    raise SystemExit(main())
