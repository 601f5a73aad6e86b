"""``shardbill prune``: delete the ledger rows of events older than the dedup horizon.

On every shard the map store has named (the current map's and every kept
epoch's), the watermark of each owned slot is raised to the horizon first
(from then on events before it are refused there, whatever a writer's clock
says), then the ledger rows of older events are deleted in short chunks,
retried like writes. ``--dry-run`` counts them and changes nothing. The
horizon is ``[writer] ledger_retention_days`` before now (this host's clock,
or ``--now``). Exit 0 when every shard was pruned,
:data:`~shardbill.cli._common.EXIT_DATABASE`-style failures as the other
commands report them.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import TYPE_CHECKING

from shardbill.cli._common import (
    add_config_and_json,
    command,
    live_map,
    load_config,
    positive,
    print_json,
    progress_bars,
)
from shardbill.errors import ConfigurationError

if TYPE_CHECKING:
    import argparse

    from shardbill.cli._common import Subparsers

__all__ = ["add_parser", "run"]


def _moment(text: str) -> float:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"--now {text!r} is not an ISO 8601 time; give e.g. 2026-12-01T00:00:00+00:00"
        ) from None
    if moment.utcoffset() is None:
        raise ConfigurationError(f"--now {text!r} has no time zone; add one, e.g. +00:00")
    return moment.timestamp()


def add_parser(sub: Subparsers) -> None:
    """Register ``prune`` on the main parser's subcommands."""
    prune = command(
        sub,
        "prune",
        "delete ledger rows of events older than the dedup horizon",
        "Raise every owned slot's dedup watermark to the horizon ([writer] "
        "ledger_retention_days before now), then delete the ledger rows of older events in "
        "short chunks, on every shard the map store has named. Events older than the horizon "
        "are refused as too late from then on, so a redelivery can never apply twice. "
        "--dry-run counts the rows and changes nothing.",
        "  shardbill prune --config shardbill.toml --dry-run\n"
        "  shardbill prune --config shardbill.toml --json\n"
        "  shardbill prune --config shardbill.toml --now 2026-12-01T00:00:00+00:00",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="count the rows that would go; change nothing"
    )
    prune.add_argument(
        "--chunk-rows", type=positive, default=10_000, help="rows deleted per transaction"
    )
    prune.add_argument(
        "--now",
        type=_moment,
        default=None,
        metavar="TIME",
        help="the time to measure the horizon from (ISO 8601; default: this host's clock)",
    )
    add_config_and_json(prune)


def run(args: argparse.Namespace) -> int:
    """Run ``prune``; returns the exit code."""
    from shardbill.writer import AggregationWriter

    config = load_config(args)
    draw = progress_bars(args) and not args.json
    with config.open() as opened:
        live_map(config, opened.map_store)
        with AggregationWriter(
            shard_map=opened.map_store,
            provider=opened.provider,
            tables=config.tables,
            settings=config.writer.settings(),
        ) as writer:
            horizon = writer.horizon(args.now)
            shards = writer.known_shards()

            def progress(shard: str, rows: int) -> None:
                if draw:
                    print(f"\r  {shard}: {rows:,} rows", end="", file=sys.stderr, flush=True)

            counts = writer.prune(
                now=args.now,
                chunk_rows=args.chunk_rows,
                dry_run=args.dry_run,
                progress=progress,
            )
            if draw:
                print(file=sys.stderr)
    when = dt.datetime.fromtimestamp(horizon, dt.UTC).isoformat()
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "horizon": when,
                "shards": {s: counts.get(s, 0) for s in shards},
                "rows": sum(counts.values()),
            }
        )
        return 0
    verb = "to delete" if args.dry_run else "deleted"
    print(f"prune: events before {when} (the dedup horizon)")
    for shard in shards:
        print(f"  {shard:<12} {counts.get(shard, 0):>12,} ledger rows {verb}")
    print(f"  total        {sum(counts.values()):>12,}")
    return 0
