"""Soak the writer: hold a fraction of its measured peak for a while, with faults injected.

Private MariaDB servers are started (``tests/support/servers.py``), each behind
a :class:`~tests.support.proxy.FaultProxy`; shards are databases spread over
them. Skewed synthetic traffic (:class:`shardbill.workloads.synthetic.Traffic`) is
priced by the example rules (:mod:`shardbill.rules.comms`) and written by
``--writers`` threads, each with its own AggregationWriter, all through the
proxies.

1. **Calibrate** for ``--calibrate`` seconds flat out: the peak, in
   acknowledged events per second.
2. **Hold** ``--fraction`` of that peak for ``--duration`` seconds (a shared
   token bucket paces the batches) while a seeded chaos thread injects
   ``--fault-rate`` faults per minute: COMMIT cut before or after it reaches
   the server, a ledger INSERT cut after it ran, every connection reset, a
   latency spike. Failed events are delivered again by the caller until
   acknowledged, as a stream consumer would.
3. **Check** the fault suite's invariants (``tests/faults/invariants.py``:
   nothing lost, nothing counted twice, every unknown outcome resolved) over
   everything written.

Reported per minute of the hold: p50/p99/max commit latency (ms), events/s,
retries and faults; then the totals and the invariants. ``--json`` prints one
JSON object instead of the text report. Memory grows with the events written
(about 200 bytes per charge, kept for the final check).

Run (two minutes at 60 % of peak, 6 faults a minute)::

    .venv/bin/python benchmarks/soak.py --duration 120 --fraction 0.6 --fault-rate 6
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import shutil
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' support package

from tests.faults.cluster import ShardCluster, default_retry
from tests.faults.invariants import Recorder, check
from tests.support.servers import short_tempdir, start_servers

from shardbill.observe import Committed, Failed, Retried, WriteEvent
from shardbill.rules import Charge, comms
from shardbill.workloads.synthetic import Traffic

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SCALE = 6


class _Dimensions(NamedTuple):
    country: str | None

    def get(self, name: str, default: str) -> str:
        return self.country if name == "country" and self.country is not None else default


class LiteCharge(NamedTuple):
    """The part of a Charge the oracle reads, small enough to keep millions of."""

    event_id: str
    account: int
    product: str
    currency: str
    minute: int
    country: str | None
    quantity_units: int
    amount_units: int
    part: int = 0  # which charge of its event (the writer refuses repeats of one part)
    parts: int = 1

    @property
    def time(self) -> dt.datetime:
        return _EPOCH + dt.timedelta(minutes=self.minute)

    @property
    def quantity(self) -> Decimal:
        return Decimal(self.quantity_units).scaleb(-_SCALE)

    @property
    def amount(self) -> Decimal:
        return Decimal(self.amount_units).scaleb(-_SCALE)

    @property
    def dimensions(self) -> _Dimensions:
        return _Dimensions(self.country)


def _lite(charge: Charge) -> LiteCharge:
    country = charge.dimensions.get("country")
    return LiteCharge(
        event_id=charge.event_id,
        account=int(charge.account),
        product=sys.intern(charge.product),
        currency=sys.intern(charge.currency),
        minute=int((charge.time - _EPOCH).total_seconds()) // 60,
        country=None if country is None else sys.intern(str(country)),
        quantity_units=int(charge.quantity.scaleb(_SCALE)),
        amount_units=int(charge.amount.scaleb(_SCALE)),
        part=charge.part,
        parts=charge.parts,
    )


class Feed:
    """Priced batches of the skewed stream, handed out to writer threads (thread-safe)."""

    def __init__(self, seed: int, batch: int, accounts: int) -> None:
        traffic = Traffic(
            model="skewed", events=10**9, seed=seed, accounts=accounts, id_prefix="sk"
        )
        self._events = traffic.distinct()
        self._engine = comms.engine()
        self._batch = batch
        self._lock = threading.Lock()
        self.catalogue: dict[str, tuple[LiteCharge, ...]] = {}

    def next_batch(self) -> list[str]:
        """The next batch's event ids (their charges are in :attr:`catalogue`)."""
        with self._lock:
            events = [next(self._events) for _ in range(self._batch)]
            priced = self._engine.price_batch(events)
            out: dict[str, list[LiteCharge]] = defaultdict(list)
            for charge in priced.charges:
                out[charge.event_id].append(_lite(charge))
            for event_id, charges in out.items():
                self.catalogue[event_id] = tuple(charges)
            return list(out)


class Pace:
    """A token bucket shared by the writers: ``rate`` events per second (0: unlimited)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rate = 0.0
        self._next = time.monotonic()

    def set(self, rate: float) -> None:
        with self._lock:
            self.rate = rate
            self._next = time.monotonic()

    def take(self, events: int) -> None:
        with self._lock:
            if self.rate <= 0:
                return
            start = max(self._next, time.monotonic())
            self._next = start + events / self.rate
        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class Meter:
    """The observer: per-minute commit latencies, retries and failures (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.origin = time.monotonic()
        self.latency: defaultdict[int, list[float]] = defaultdict(list)
        self.retries: defaultdict[int, Counter[str]] = defaultdict(Counter)
        self.failures: defaultdict[int, int] = defaultdict(int)
        self.events: defaultdict[int, int] = defaultdict(int)
        self.faults: defaultdict[int, Counter[str]] = defaultdict(Counter)

    def minute(self) -> int:
        return int((time.monotonic() - self.origin) // 60)

    def __call__(self, event: WriteEvent) -> None:
        with self._lock:
            minute = self.minute()
            if isinstance(event, Committed):
                self.latency[minute].append(event.seconds)
            elif isinstance(event, Retried):
                self.retries[minute][event.error] += 1
            elif isinstance(event, Failed):
                self.failures[minute] += 1

    def acknowledged(self, count: int) -> None:
        with self._lock:
            self.events[self.minute()] += count

    def fault(self, kind: str) -> None:
        with self._lock:
            self.faults[self.minute()][kind] += 1

    def restart(self) -> None:
        with self._lock:
            self.origin = time.monotonic()
            for table in (self.latency, self.retries, self.failures, self.events, self.faults):
                table.clear()


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank] * 1000


def _ledger_insert(sql: str) -> bool:
    return sql.startswith("INSERT INTO `shardbill_ledger`")


FAULTS = ("commit_before", "commit_after", "ledger_insert_after", "reset_all", "latency_spike")


def chaos(
    cluster: ShardCluster, meter: Meter, rate: float, seed: int, stop: threading.Event
) -> None:
    """Inject ``rate`` faults a minute (seeded kinds, targets and exponential gaps)."""
    rng = random.Random(seed)
    while rate > 0 and not stop.wait(rng.expovariate(rate / 60)):
        kind = rng.choice(FAULTS)
        proxy = rng.choice(cluster.proxies)
        if kind == "commit_before":
            proxy.cut_before_commit()
        elif kind == "commit_after":
            proxy.cut_after_commit()
        elif kind == "ledger_insert_after":
            proxy.cut_when(_ledger_insert, before=False, label=kind)
        elif kind == "reset_all":
            proxy.reset_all()
        else:
            proxy.latency(0.02)
            stop.wait(2.0)
            proxy.latency(0.0)
        meter.fault(kind)


def _per_minute(meter: Meter, duration: float) -> list[dict[str, Any]]:
    minutes = []
    # Minutes of the hold only (not the batches still finishing after it).
    held = [m for m in sorted(set(meter.latency) | set(meter.events)) if 60 * m < duration]
    for minute in held:
        latencies = meter.latency.get(minute, [])
        span = min(60.0, duration - 60 * minute) or 60.0
        minutes.append(
            {
                "minute": minute,
                "events_per_s": round(meter.events.get(minute, 0) / span, 1),
                "commits": len(latencies),
                "p50_ms": round(_pct(latencies, 0.5), 2) if latencies else None,
                "p99_ms": round(_pct(latencies, 0.99), 2) if latencies else None,
                "max_ms": round(max(latencies) * 1000, 2) if latencies else None,
                "retries": dict(meter.retries.get(minute, {})),
                "failed_shard_results": meter.failures.get(minute, 0),
                "faults": dict(meter.faults.get(minute, {})),
            }
        )
    return minutes


class Writers:
    """``count`` writer threads delivering the feed, paced, retrying failures until acknowledged."""

    def __init__(
        self, cluster: ShardCluster, feed: Feed, recorder: Recorder, meter: Meter, count: int
    ) -> None:
        self.pace = Pace()
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._cluster, self._feed, self._recorder, self._meter = cluster, feed, recorder, meter
        self._threads = [
            threading.Thread(target=self._loop, args=(f"w{i}",), name=f"soak-w{i}")
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _loop(self, label: str) -> None:
        writer = self._cluster.writer(observer=self._meter, retry=self._recorder.retry)
        try:
            while not self._stop.is_set():
                ids = self._feed.next_batch()
                self.pace.take(len(ids))
                pending = ids
                while pending:
                    result = self._recorder.write(label, writer, pending)
                    pending = sorted(result.failed_events)
                    if pending:
                        time.sleep(0.05)  # the caller's own backoff before redelivering
                self._meter.acknowledged(len(ids))
        except BaseException as exc:  # reported at the end
            self.errors.append(exc)

    def stop(self) -> None:
        """Finish the batches in flight and join every thread."""
        self._stop.set()
        for thread in self._threads:
            thread.join()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Set up, calibrate, hold with faults, check; the report as a dict."""
    base = short_tempdir("sb-soak-")
    servers = start_servers(args.servers, base)
    cluster = ShardCluster(servers, driver=args.driver, shards=args.shards, slots=1024)
    stop_chaos = threading.Event()
    writers: Writers | None = None
    try:
        cluster.ensure_schema()
        feed = Feed(args.seed, args.batch, args.accounts)
        retry = default_retry(args.seed, max_attempts=6, max_delay=0.2)
        catalogue = cast(Mapping[str, Sequence[Charge]], feed.catalogue)
        recorder = Recorder(catalogue, cluster.shard_map, retry=retry)
        meter = Meter()
        writers = Writers(cluster, feed, recorder, meter, args.writers)
        time.sleep(args.calibrate)
        peak = sum(meter.events.values()) / args.calibrate
        writers.pace.set(peak * args.fraction)
        meter.restart()
        chaos_thread = threading.Thread(
            target=chaos, args=(cluster, meter, args.fault_rate, args.seed, stop_chaos)
        )
        chaos_thread.start()
        time.sleep(args.duration)
        stop_chaos.set()
        chaos_thread.join()
        for proxy in cluster.proxies:
            proxy.heal()
        writers.stop()
        verdict = check(recorder, cluster, settled=True, strict_failure_reports=False)
        return {
            "driver": args.driver,
            "servers": args.servers,
            "shards": args.shards,
            "writers": args.writers,
            "batch": args.batch,
            "seed": args.seed,
            "peak_events_per_s": round(peak, 1),
            "target_events_per_s": round(peak * args.fraction, 1),
            "held_events_per_s": round(sum(meter.events.values()) / args.duration, 1),
            "duration_s": args.duration,
            "faults": dict(sum((Counter(m) for m in meter.faults.values()), Counter())),
            "retries": dict(sum((Counter(m) for m in meter.retries.values()), Counter())),
            "minutes": _per_minute(meter, args.duration),
            "invariants_ok": verdict.ok,
            "violations": list(verdict.violations[:20]),
            "checked": dict(verdict.counts),
            "writer_errors": [repr(e) for e in writers.errors],
        }
    finally:
        stop_chaos.set()
        if writers is not None:
            writers.stop()
        cluster.close()
        for server in servers:
            server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def _print(report: dict[str, Any]) -> None:
    print(
        f"peak {report['peak_events_per_s']} events/s; held {report['held_events_per_s']} "
        f"(target {report['target_events_per_s']}) for {report['duration_s']} s "
        f"with {report['driver']}, {report['writers']} writers, {report['shards']} shards"
    )
    print(
        f"{'min':>3} {'ev/s':>8} {'commits':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  faults"
    )
    for m in report["minutes"]:
        print(
            f"{m['minute']:>3} {m['events_per_s']:>8} {m['commits']:>8} {m['p50_ms']!s:>8} "
            f"{m['p99_ms']!s:>8} {m['max_ms']!s:>8}  {m['faults']} retries={m['retries']}"
        )
    print(f"faults: {report['faults']}")
    print(f"retries: {report['retries']}")
    state = "hold" if report["invariants_ok"] else "VIOLATED"
    print(f"invariants: {state}; {report['checked']}")
    for violation in report["violations"]:
        print(f"  {violation}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run, report; exit status 1 when an invariant failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--driver", choices=("pymysql", "mysqldb"), default="pymysql")
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=200, help="events per batch")
    parser.add_argument("--accounts", type=int, default=100_000, help="skewed model population")
    parser.add_argument("--calibrate", type=float, default=15.0, help="seconds flat out")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds held")
    parser.add_argument("--fraction", type=float, default=0.6, help="of the measured peak")
    parser.add_argument("--fault-rate", type=float, default=6.0, help="faults per minute")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        _print(report)
    return 0 if report["invariants_ok"] and not report["writer_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
