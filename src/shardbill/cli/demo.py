"""``shardbill demo``: the main job in miniature, from the command line.

Runs :func:`shardbill.workloads.demo.run_demo` on four SQLite shard files in ``--dir``
(the files of an earlier run are replaced), or on servers: ``--mysql URL ...``
(one URL per shard, all but the last start, the last is added online; missing
databases are created) or the shards of ``--config FILE``. ``--reset`` drops
the demo's tables on the servers first; else they must be empty.

Prints the demo's report (or, with ``--json``, its JSON object). Exit 0 only
when the audit is exact, else :data:`~shardbill.cli._common.EXIT_PROBLEM`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shardbill.cli._common import (
    DEMO_EVENTS,
    DEMO_SEED,
    EXIT_INTERRUPTED,
    EXIT_PROBLEM,
    add_json,
    add_servers,
    add_traffic,
    command,
    positive,
    print_json,
    progress_bars,
    say,
    servers,
)

if TYPE_CHECKING:
    import argparse

    from shardbill.cli._common import Subparsers

__all__ = ["add_parser", "run"]


def add_parser(sub: Subparsers) -> None:
    """Register ``demo`` on the main parser's subcommands."""
    demo = command(
        sub,
        "demo",
        "the main job on local SQLite shard files (or on servers)",
        "Generate a seeded day of skewed usage, price it with the example rules, write it "
        "exactly once across four shards, replay duplicates, add a fifth shard online, audit "
        "every aggregate row against an independent recomputation, and report. Exit 0 only "
        "when the audit is exact. On SQLite the shard files of an earlier run are replaced.",
        "  shardbill demo\n"
        "  shardbill demo --events 20000 --json\n"
        "  shardbill demo --mysql mysql+pymysql://root@127.0.0.1:3306/sb0 \\\n"
        "      mysql+pymysql://root@127.0.0.1:3306/sb1 ... mysql+pymysql://root@127.0.0.1:3306/sb4\n"
        "  shardbill demo --config shardbill.toml --reset",
    )
    demo.add_argument(
        "--dir",
        default="shardbill-demo",
        help="directory for the SQLite shard files and the demo's shard map",
    )
    add_traffic(demo, events=DEMO_EVENTS, seed=DEMO_SEED)
    demo.add_argument("--batch-size", type=positive, help="events per batch (default 2000)")
    demo.add_argument(
        "--slots", type=positive, help="slots of the demo's shard map (default 16384)"
    )
    add_servers(
        demo,
        mysql_help="run on servers, one URL per shard: all but the last start, the last is "
        "added online; missing databases are created",
    )
    demo.add_argument(
        "--reset",
        action="store_true",
        help="on servers: DROP the demo's tables first (else they must be empty)",
    )
    add_json(demo)


def run(args: argparse.Namespace) -> int:
    """Run ``demo``; returns the exit code."""
    from shardbill.workloads.demo import run_demo

    urls, config = servers(args, "shard-")
    tables = engine = settings = None
    batch_size, slots = args.batch_size, args.slots
    if config is not None:
        tables, engine, settings = config.tables, config.engine(), config.writer.settings()
        batch_size = batch_size or config.writer.batch_size
        slots = slots or config.slots
    try:
        report = run_demo(
            directory=Path(args.dir),
            urls=urls,
            tables=tables,
            engine=engine,
            settings=settings,
            events=args.events,
            seed=args.seed,
            model=args.model,
            batch_size=batch_size or 2000,
            slots=slots or 16384,
            reset=args.reset,
            write_config=config is None,  # a configuration file of the user's is theirs
            progress=progress_bars(args),
            say=say(args),
        )
    except KeyboardInterrupt:
        print(_INTERRUPTED.format(where=args.dir), file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.render())
    return 0 if report.exact else EXIT_PROBLEM


_INTERRUPTED = (
    "shardbill: interrupted: the demo stopped; what it wrote stays in {where} (or on the "
    "servers), every batch whole or not at all. The demo does not resume: run it again and it "
    "starts over (on SQLite it replaces its shard files; on servers add --reset to drop its "
    "tables first)."
)
