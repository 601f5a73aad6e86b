"""The ``shardbill`` command line (also ``python -m shardbill``).

Commands:
    demo    the main job on embedded SQLite shard files, no server needed
    bench   measure the write path (``--json`` prints one JSON object)

Exit codes: 0 success, 1 the job ran and found a problem (e.g. an audit
difference), 2 usage or configuration error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from shardbill._version import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardbill",
        description="Price usage events and write them exactly once into sharded aggregates.",
        epilog="Run `shardbill COMMAND --help` for the options and examples of one command.",
    )
    parser.add_argument("--version", action="version", version=f"shardbill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="run the main job on local SQLite shard files",
        description="Generate seeded synthetic usage, write it exactly once across SQLite "
        "shard files, replay duplicates, and report.",
        epilog="example: shardbill demo --dir ./shardbill-demo --events 20000",
    )
    demo.add_argument("--dir", default="shardbill-demo", help="directory for the shard files")
    demo.add_argument("--events", type=int, default=20_000, help="number of events to generate")
    demo.add_argument("--seed", type=int, default=7, help="seed for the synthetic traffic")
    demo.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from shardbill.demo import run_demo

    return run_demo(directory=args.dir, events=args.events, seed=args.seed, as_json=args.json)


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = _build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
