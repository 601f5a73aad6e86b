"""``shardbill status``: the fleet in one view (:mod:`shardbill.status`).

Prints the live map (epoch, slots, store), one line per shard (answers or
not, slots owned / incoming / gone, aggregate and ledger rows) and a reshard
in progress (moving slots by state, its claim). ``--json`` prints the same
as one object. ``--watch`` redraws it every ``--interval`` seconds with each
shard's ledger rows per second since the previous view (on a terminal the
screen is cleared; otherwise each view is printed in turn; ``--count N``
stops after N views; Ctrl-C ends it). ``--metrics URL`` (repeatable) also
reads a writer's or worker's Prometheus endpoint and shows its units
applied, commits, failures and retries by shard and error, rejected events
and dead letters (totals since it started; units applied per second with
``--watch``). Exit 0 when every shard and endpoint answered, else
:data:`~shardbill.cli._common.EXIT_PROBLEM`.
"""

from __future__ import annotations

import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from shardbill.cli._common import (
    EXIT_PROBLEM,
    add_config_and_json,
    command,
    load_config,
    positive,
    print_json,
    table,
)
from shardbill.errors import ConfigurationError
from shardbill.workloads.progress import interactive

if TYPE_CHECKING:
    import argparse

    from shardbill.cli._common import Subparsers
    from shardbill.config import Config, Opened
    from shardbill.status import FleetStatus, WriterMetrics

__all__ = ["add_parser", "run"]


def add_parser(sub: Subparsers) -> None:
    """Register ``status`` on the main parser's subcommands."""
    status = command(
        sub,
        "status",
        "the fleet in one view: shards, map, rows, ledger, a reshard in progress",
        "Read every shard of the live map (and every other configured shard) and the map "
        "store, and show per shard whether it answers, its slots by state, its rows per "
        "table and its ledger rows; the map's epoch; a reshard in progress. --watch redraws "
        "it with each shard's ledger rows per second (applied events). Exit 0 when every "
        "shard answered, 1 when one did not.",
        "  shardbill status --config prod.toml\n"
        "  shardbill status --json\n"
        "  shardbill status --watch --interval 5\n"
        "  shardbill status --metrics http://worker-1:9108/metrics --watch",
    )
    status.add_argument(
        "--watch", action="store_true", help="redraw every --interval seconds, with write rates"
    )
    status.add_argument(
        "--interval", type=float, default=2.0, metavar="SECONDS", help="between views (default 2)"
    )
    status.add_argument("--count", type=positive, help="with --watch: stop after N views")
    status.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="URL",
        help="a writer's or worker's Prometheus endpoint (http/https; repeatable): its "
        "throughput, failures and retries",
    )
    add_config_and_json(status)


def run(args: argparse.Namespace) -> int:
    """Run ``status``; returns the exit code."""
    if args.watch and args.json:
        raise ConfigurationError("--watch redraws text; --json prints one object: choose one")
    if not args.interval > 0:
        raise ConfigurationError(
            f"--interval must be a positive number of seconds: {args.interval}"
        )
    sources = [_endpoint(url) for url in args.metrics]
    config = load_config(args)
    with config.open() as opened:
        if not args.watch:
            current = _read(config, opened)
            writers = [_scrape(url, source) for url, source in sources]
            if args.json:
                data = current.to_dict()
                if writers:
                    data["writers"] = [w.to_dict() for w in writers]
                    data["ok"] = current.ok and all(w.error is None for w in writers)
                print_json(data)
            else:
                print(_render(current, None, writers, None))
            return 0 if _ok(current, writers) else EXIT_PROBLEM
        return _watch(args, config, opened, sources)


def _ok(status: FleetStatus, writers: Sequence[WriterMetrics]) -> bool:
    return status.ok and all(w.error is None for w in writers)


def _endpoint(url: str) -> tuple[str, str]:
    """``url`` checked, and how to show it (without credentials)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"--metrics: {parts.scheme + '://' if parts.scheme else ''}"
            f"{parts.hostname or ''}... is not an http(s) URL of a Prometheus endpoint; "
            "give one like http://worker-1:9108/metrics"
        )
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return url, urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _scrape(url: str, source: str) -> WriterMetrics:
    from shardbill.status import WriterMetrics, parse_metrics

    at = time.time()
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (scheme checked)
            text = response.read().decode("utf-8", errors="replace")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return WriterMetrics(source=source, at=at, error=f"{type(exc).__name__}: {reason}")
    return parse_metrics(text, source=source, at=at)


def _read(config: Config, opened: Opened) -> FleetStatus:
    from shardbill.status import fleet_status

    return fleet_status(
        provider=opened.provider,
        store=opened.map_store,
        store_description=config.map_store.describe(),
        tables=config.tables,
        shards=list(config.shards),
        system_tables=config.writer.settings().system_tables,
    )


def _watch(
    args: argparse.Namespace, config: Config, opened: Opened, sources: Sequence[tuple[str, str]]
) -> int:
    terminal = interactive(sys.stdout)
    previous: FleetStatus | None = None
    before: list[WriterMetrics] = []
    views = 0
    ok = True
    try:
        while True:
            current = _read(config, opened)
            writers = [_scrape(url, source) for url, source in sources]
            rates = current.rates_since(previous) if previous is not None else None
            per_second = (
                [w.applied_per_second(b) for w, b in zip(writers, before, strict=True)]
                if before
                else None
            )
            text = _render(current, rates, writers, per_second)
            if terminal:
                sys.stdout.write("\x1b[H\x1b[2J")  # home, clear screen
            print(text + f"\n(every {args.interval:g} s; Ctrl-C to stop)", flush=True)
            previous, before, views = current, writers, views + 1
            ok = _ok(current, writers)
            if args.count is not None and views >= args.count:
                return 0 if ok else EXIT_PROBLEM
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0 if ok else EXIT_PROBLEM


def _render(
    status: FleetStatus,
    rates: Mapping[str, float] | None,
    writers: Sequence[WriterMetrics] = (),
    per_second: Sequence[float | None] | None = None,
) -> str:
    m = status.shard_map
    lines = [
        f"shard map epoch {m.epoch}: {m.slots} slots over {len(m.shards)} shards ({status.store})"
    ]
    head = ["shard", "state", "owned", "incoming", "gone", "rows", "ledger rows"]
    if rates is not None:
        head.append("ledger rows/s")
    rows = [tuple(head)]
    problems = []
    for s in status.shards:
        if not s.reachable:
            rows.append((s.name, "DOWN", *("-" for _ in head[2:])))
            problems.append(f"{s.name}: {s.error}")
            continue
        line = [
            s.name,
            "ok" if s.in_map else "ok, no slots in the map",
            f"{s.slots.get('owned', 0):,}",
            f"{s.slots.get('incoming', 0):,}",
            f"{s.slots.get('gone', 0):,}",
            f"{sum(s.rows.values()):,}",
            f"{s.ledger_rows:,}",
        ]
        if rates is not None:
            line.append(f"{rates[s.name]:,.1f}" if s.name in rates else "-")
        rows.append(tuple(line))
    lines.append(table(rows))
    lines += problems
    states = ", ".join(f"{n:,} {state}" for state, n in status.moving.items())
    if status.in_progress:
        lines.append(f"reshard: in progress, {status.in_progress:,} slot(s) moving ({states})")
    elif status.moving:
        lines.append(f"reshard: none in progress (the last one: {states})")
    elif all(s.reachable for s in status.shards if s.in_map):
        lines.append("reshard: none in progress")
    else:
        lines.append("reshard: unknown (a shard of the map did not answer)")
    if status.claim is not None:
        lines.append(f"claim: {status.claim}")
    if writers:
        lines.append(_render_writers(writers, per_second))
    return "\n".join(lines)


def _render_writers(
    writers: Sequence[WriterMetrics], per_second: Sequence[float | None] | None
) -> str:
    head = ["writer", "applied", "commits", "failures", "retries", "rejected", "dead letters"]
    if per_second is not None:
        head.append("applied/s")
    rows = [tuple(head)]
    problems = []
    for i, w in enumerate(writers):
        if w.error is not None:
            rows.append((w.source, "DOWN", *("-" for _ in head[2:])))
            problems.append(f"{w.source}: {w.error}")
            continue
        line = [
            w.source,
            f"{sum(w.applied.values()):,}",
            f"{sum(w.commits.values()):,}",
            f"{sum(w.failures.values()):,}",
            f"{sum(w.retries.values()):,}",
            f"{w.rejected:,}",
            f"{sum(w.dead_letters.values()):,}",
        ]
        if per_second is not None:
            rate = per_second[i]
            line.append("-" if rate is None else f"{rate:,.1f}")
        rows.append(tuple(line))
        problems += [
            f"{w.source}: {n:,} failed on {shard} ({error})"
            for (shard, error), n in sorted(w.failures.items())
            if n
        ]
    return "\n".join(["writers (totals since each started):", table(rows), *problems])
