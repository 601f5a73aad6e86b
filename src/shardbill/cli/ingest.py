"""``shardbill ingest FILE``: price and write the events of a JSON Lines or CSV file.

Reads the file with :func:`shardbill.ingest.ingest` (the format by extension,
or ``--format``), prices the events with the configuration's rules and writes
them exactly once in batches through the writer, which reloads the shard map
from the map store when a shard fences a moved slot. Lines that cannot be
applied go to the rejects file (default ``FILE.rejects.jsonl``) with their
line numbers and reasons. Prints the counts (``--json``: the summary's
object). The exit code is the summary's: 0 when every line was applied (or
already was), 1 when lines were rejected, 2 when a shard refused writes for a
reason retrying cannot fix (access denied, TLS), 3 when writes failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shardbill.cli._common import (
    EXIT_INTERRUPTED,
    add_config_and_json,
    add_format,
    command,
    live_map,
    load_config,
    positive,
    print_json,
    progress_bars,
)
from shardbill.errors import ConfigurationError

if TYPE_CHECKING:
    from shardbill.cli._common import Subparsers

__all__ = ["add_parser", "run"]


def add_parser(sub: Subparsers) -> None:
    """Register ``ingest`` on the main parser's subcommands."""
    ingest = command(
        sub,
        "ingest",
        "price and write the events of a JSON Lines or CSV file",
        "Read usage events from FILE (JSON Lines, or CSV by extension or --format), price "
        "them and write them exactly once in batches. Lines that cannot be applied (not "
        "parseable, not a valid event, refused by a rule or by the tables, an id reused with "
        "other content, a shard that stayed down) go to the rejects file as JSON Lines with "
        "their line number and reason. Running the same file again changes nothing. Exit 0 "
        "when every line was applied (or already was), 1 when lines were rejected, 3 when "
        "writes failed (run the file again).",
        "  shardbill ingest events.jsonl\n"
        "  shardbill ingest usage-2026-11-01.csv --rejects bad.jsonl --config prod.toml\n"
        "  shardbill ingest export.txt --format csv --json",
    )
    ingest.add_argument("file", metavar="FILE", help="the events file")
    add_format(ingest)
    ingest.add_argument("--rejects", metavar="PATH", help="default: FILE.rejects.jsonl")
    ingest.add_argument(
        "--batch-size", type=positive, help="events per batch (default [writer] batch_size)"
    )
    ingest.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,  # keeps `shardbill -v ingest ...` working too
        help="log every batch (its lines, applied, duplicates, set aside) to stderr",
    )
    add_config_and_json(ingest)


def run(args: argparse.Namespace) -> int:
    """Run ``ingest``; returns the exit code."""
    from shardbill.ingest import IngestInterrupted, detect_format, ingest
    from shardbill.pipeline import Pipeline
    from shardbill.workloads.progress import Progress
    from shardbill.writer import AggregationWriter

    path = Path(args.file)
    fmt = detect_format(path, args.format)
    if not path.is_file():
        raise ConfigurationError(f"{path}: no such events file")
    config = load_config(args)
    engine = config.engine()
    with config.open() as opened:
        live_map(config, opened.map_store)  # published, and every shard has a URL
        with (
            AggregationWriter(
                shard_map=opened.map_store,  # reloaded from the store when a shard fences
                provider=opened.provider,
                tables=config.tables,
                settings=config.writer.settings(),
            ) as writer,
            Progress(
                f"ingesting {path.name}",
                total=path.stat().st_size,
                unit="bytes",
                rate_unit="events",
                enabled=progress_bars(args),
            ) as bar,
        ):
            try:
                summary = ingest(
                    path,
                    pipeline=Pipeline(engine=engine, writer=writer),
                    fmt=fmt,
                    account_as_int=config.account_as_int,
                    batch_size=args.batch_size or config.writer.batch_size,
                    rejects_path=args.rejects,
                    on_bytes=bar.update,
                    on_events=bar.count,
                )
            except IngestInterrupted as stop:
                bar.close()
                if args.json:
                    print_json(stop.summary.to_dict())
                print(f"shardbill: {stop.describe()}", file=sys.stderr)
                return EXIT_INTERRUPTED
    if args.json:
        print_json(summary.to_dict())
    else:
        print(
            f"{summary.path}: {summary.records:,} records, {summary.events:,} distinct events "
            f"in {summary.seconds:.1f} s"
        )
        print(f"  applied     {summary.applied:,}")
        print(
            f"  duplicates  {summary.duplicates:,} already applied, {summary.repeats:,} "
            "repeated in the file"
        )
        if summary.free:
            print(f"  free        {summary.free:,} (priced with no charge)")
        print(f"  rejected    {summary.rejected:,} -> {summary.rejects_path}")
        if summary.refused:
            print(
                f"  failed      {summary.failed:,}: a shard refused ({summary.refused:,} events; "
                "see the rejects file); fix the cause, then run the file again"
            )
        elif summary.failed:
            print(
                f"  failed      {summary.failed:,}: a shard stayed unavailable; run the file again"
            )
    return summary.exit_code
