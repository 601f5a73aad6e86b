"""``shardbill period close`` / ``period status``: billing periods on every shard (issue 20).

* ``close YYYY-MM`` closes the period on every shard of the live map (and
  on both sides of an unfinished reshard) in two phases, ``closing`` then,
  after ``--drain`` seconds, ``closed`` (:mod:`shardbill.periods.close`).
  Idempotent: a shard done is left alone, so an interrupted close is
  finished by running it again. From then on a writer refuses every new
  event of the period, with the reason (late-event policy ``refuse``).
* ``status [YYYY-MM]`` prints each period some shard has begun closing (or
  the one named): ``open``, ``closing`` (a close in progress or stopped:
  run it again) or ``closed``, and each shard's state.

``--json`` prints one object: ``periods`` (each ``period``, ``state``,
``shards``: shard -> state).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from shardbill.cli._common import (
    EXIT_INTERRUPTED,
    add_config_and_json,
    command,
    live_map,
    load_config,
    print_json,
)
from shardbill.errors import ConfigurationError

if TYPE_CHECKING:
    import argparse

    from shardbill.cli._common import Subparsers
    from shardbill.periods import PeriodStatus

__all__ = ["add_parser", "run"]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise ConfigurationError(
            f"--drain {text!r} is not a number of seconds >= 0; give e.g. --drain 90"
        )
    return value


def add_parser(sub: Subparsers) -> None:
    """Register ``period`` and its actions on the main parser's subcommands."""
    from shardbill.periods import DEFAULT_DRAIN_SECONDS

    period = command(
        sub,
        "period",
        "close a billing period on every shard, or show where periods stand",
        "Close a billing period (a UTC month, YYYY-MM) on every shard, so that its "
        "aggregates are final and later events of it are refused with the reason; or show "
        "each period's state per shard.",
        "  shardbill period close 2026-11 --config prod.toml\n"
        "  shardbill period status --config prod.toml\n"
        "  shardbill period status 2026-11 --json",
    )
    period_sub = period.add_subparsers(dest="period_command", metavar="ACTION", required=True)
    close = command(
        period_sub,
        "close",
        "close a period on every shard (two phases; idempotent, resumable)",
        "Close PERIOD on every shard of the live map and of an unfinished reshard: first "
        "'closing' everywhere (no event of the period begins; parts of events begun still "
        "land), then, after --drain seconds, 'closed' (nothing new of the period is applied; "
        "redeliveries stay duplicates). Run it again after an interruption: shards done are "
        "left alone.",
        "  shardbill period close 2026-11\n"
        '  shardbill period close 2026-11 --reason "November invoices" --json\n'
        "  shardbill period close 2026-11 --drain 0   # no writer is running",
    )
    close.add_argument("period", metavar="PERIOD", help="the period, YYYY-MM (UTC month)")
    close.add_argument(
        "--reason", default="", help="recorded with the closure on every shard (255 characters)"
    )
    close.add_argument(
        "--drain",
        type=_seconds,
        default=DEFAULT_DRAIN_SECONDS,
        metavar="SECONDS",
        help="the wait between the two phases, for writes begun before the close to finish",
    )
    close.add_argument(
        "--early",
        action="store_true",
        help="close a period that has not ended yet by this host's clock",
    )
    add_config_and_json(close)
    status = command(
        period_sub,
        "status",
        "open / closing / closed, per period and per shard",
        "Print each period some shard has begun closing (or only PERIOD): open, closing "
        "(a close in progress or interrupted: run it again) or closed, with each shard's state.",
        "  shardbill period status\n  shardbill period status 2026-11 --json",
    )
    status.add_argument("period", metavar="PERIOD", nargs="?", help="only this period, YYYY-MM")
    add_config_and_json(status)


def _who() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in this environment
        return "unknown user"


def _print(statuses: list[PeriodStatus]) -> None:
    if not statuses:
        print("no period is closing or closed on any shard")
    for status in statuses:
        print(f"period {status.period}: {status.state}")
        for shard, state in sorted(status.shards.items()):
            print(f"  {shard:<12} {state}")


def run(args: argparse.Namespace) -> int:
    """Run ``period close`` or ``period status``; returns the exit code."""
    from shardbill.periods import Period, PeriodCloser

    period = Period.parse(args.period) if args.period is not None else None
    config = load_config(args)
    with config.open() as opened:
        live_map(config, opened.map_store)
        closer = PeriodCloser(
            provider=opened.provider,
            shard_map=opened.map_store,
            system_tables=config.writer.settings().system_tables,
            closed_by=f"shardbill period close ({_who()})",
        )
        if args.period_command == "status":
            statuses = closer.status(period)
        else:
            assert period is not None  # noqa: S101 - a required argument
            say = (lambda _line: None) if args.json else print
            try:
                statuses = [
                    closer.close(
                        period,
                        reason=args.reason,
                        drain_seconds=args.drain,
                        early=args.early,
                        on_shard=lambda shard, state, changed: say(
                            f"  {shard:<12} {state.value}{'' if changed else ' (already)'}"
                        ),
                    )
                ]
            except KeyboardInterrupt:
                print(
                    f"shardbill: interrupted; the shards done stay done: run `shardbill period "
                    f"close {period}` again to finish",
                    file=sys.stderr,
                )
                return EXIT_INTERRUPTED
    if args.json:
        print_json({"periods": [s.to_dict() for s in statuses]})
    else:
        _print(statuses)
    return 0
