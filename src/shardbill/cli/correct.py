"""``shardbill correct cancel|amend|list``: corrections of applied events, exactly once (issue 20).

* ``cancel --id ID --reason WHY [FILE]``: reverse the exact charges of each
  event in FILE (JSON Lines or CSV, as ``ingest`` reads them; ``-`` or no
  FILE: JSON Lines on standard input), each event given as it was ingested
  (or as its last amend made it);
* ``amend --id ID --reason WHY [--original FILE] [FILE]``: give each event in
  FILE its new content; ``--original`` holds the events as ingested
  (matched by id), needed for an event not corrected before;
* ``list [EVENT_ID ...]``: the correction records (who, why, when, the
  revision, pending or applied).

Each event's correction is :class:`shardbill.corrections.Corrector`'s, under
the one correction id ``--id`` (an id names one correction of each event:
running the same command again is a duplicate). Prints one line per event
(``--json``: ``corrections``, each result's object, and the counts). Exit 0
when every correction is applied (now or before), 1 when one was refused
(the reason says what to do), 3 when a shard failed (run it again: the
correction finishes).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from shardbill.cli._common import (
    EXIT_PROBLEM,
    add_config_and_json,
    add_format,
    command,
    live_map,
    load_config,
    print_json,
)
from shardbill.errors import ConfigurationError, InvalidInputError, ShardbillError

if TYPE_CHECKING:
    import argparse

    from shardbill.cli._common import Subparsers
    from shardbill.corrections import CorrectionResult, Corrector, EventFilter
    from shardbill.rules import UsageEvent

__all__ = ["add_parser", "run"]

EXIT_DATABASE = 3  # as shardbill.cli.EXIT_DATABASE: a shard failed, run it again


def add_parser(sub: Subparsers) -> None:
    """Register ``correct`` and its actions on the main parser's subcommands."""
    correct = command(
        sub,
        "correct",
        "cancel or amend applied events, each correction exactly once, with an audit trail",
        "Cancel an applied event (its exact charges are reversed once) or amend it (new "
        "content replaces the old: the difference is applied once). Each correction has "
        "its own id: running it again is a duplicate. A correction of an event never "
        "applied, of a closed period, or a second different correction of the same "
        "revision is refused with the reason. Who, why and when are recorded on the shards.",
        "  shardbill correct cancel --id fix-42 --reason 'test traffic' bad.jsonl\n"
        "  shardbill correct amend --id fix-43 --reason 're-rated' --original old.jsonl "
        "new.jsonl\n"
        "  shardbill correct list e-17 --json",
    )
    actions = correct.add_subparsers(dest="correct_command", metavar="ACTION", required=True)
    cancel = command(
        actions,
        "cancel",
        "reverse the exact charges of the events in FILE, once",
        "Each event of FILE (as it was ingested, or as its last amend made it) is cancelled: "
        "its charges, checked against the ledger, are reversed once. With --account, "
        "--product, --from or --to, only the events of FILE that match all of them (a "
        "correction by filter over the file).",
        "  shardbill correct cancel --id fix-42 --reason 'test traffic' bad.jsonl\n"
        "  cat bad.jsonl | shardbill correct cancel --id fix-42 --reason duplicate -\n"
        "  shardbill correct cancel day.jsonl --account 42 --from 2026-11-03T00:00:00Z "
        "--to 2026-11-04T00:00:00Z --id fix-44 --reason 'meter fault'",
    )
    amend = command(
        actions,
        "amend",
        "give the events in FILE their new content; the difference is applied once",
        "Each event of FILE is the new content of an applied event (same id, same period). "
        "--original gives the events as they were ingested (matched by id); an event "
        "corrected before needs none (its current content is recorded).",
        "  shardbill correct amend --id fix-43 --reason 're-rated' --original old.jsonl new.jsonl",
    )
    for parser in (cancel, amend):
        parser.add_argument(
            "file", metavar="FILE", nargs="?", default="-", help="events file (- : stdin)"
        )
        add_format(parser)
        parser.add_argument("--id", required=True, help="the correction's id (191 characters)")
        parser.add_argument("--reason", required=True, help="why (recorded; 255 characters)")
        parser.add_argument("--by", help="who (recorded; default: the login name)")
    amend.add_argument(
        "--original", metavar="FILE", help="the events as ingested (or as last amended)"
    )
    cancel.add_argument("--account", help="only the events of this account (by filter)")
    cancel.add_argument("--product", help="only the events of this product (by filter)")
    cancel.add_argument(
        "--from", dest="start", metavar="TIME", help="only events at or after TIME (ISO 8601)"
    )
    cancel.add_argument(
        "--to", dest="end", metavar="TIME", help="only events before TIME (ISO 8601)"
    )
    for parser in (cancel, amend):
        add_config_and_json(parser)
    listing = command(
        actions,
        "list",
        "the correction records (who, why, when, revision, state)",
        "Print the correction records of every shard, or of the events named.",
        "  shardbill correct list\n  shardbill correct list e-17 --json",
    )
    listing.add_argument("event_ids", metavar="EVENT_ID", nargs="*", help="only these events")
    add_config_and_json(listing)


def _events(name: str, fmt: str | None, account_as_int: bool) -> Iterator[UsageEvent]:
    """The events of a file (or JSON Lines on stdin); a bad line stops with its number."""
    from shardbill.ingest import FileEvent, RejectedLine, detect_format, read_events
    from shardbill.rules import UsageEvent

    if name == "-":
        for number, line in enumerate(sys.stdin, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line, parse_float=Decimal)
                yield UsageEvent.from_dict(data, account_as_int=account_as_int)
            except (ValueError, ShardbillError) as exc:
                raise InvalidInputError(f"stdin line {number}: {exc}") from None
        return
    if not Path(name).is_file():
        raise ConfigurationError(f"{name}: no such events file")
    for item in read_events(name, fmt=detect_format(name, fmt), account_as_int=account_as_int):
        if isinstance(item, RejectedLine):
            raise InvalidInputError(
                f"{name} line {item.line}: {item.reason}; fix the line (nothing was corrected)"
            )
        if isinstance(item, FileEvent):
            yield item.event


def _print(results: list[CorrectionResult]) -> None:
    for r in results:
        where = f" (revision {r.revision}, ledger id {r.ledger_id})" if r.revision else ""
        print(f"{r.kind.value} {r.event_id!r} by correction {r.correction_id!r}: {r.state}{where}")
        if r.reason:
            print(f"  {r.reason}")


def _list(corrector: Corrector, args: argparse.Namespace) -> int:
    records = corrector.records(args.event_ids or None)
    if args.json:
        print_json({"corrections": [r.to_dict() for r in records]})
        return 0
    if not records:
        print("no correction recorded")
    for r in records:
        print(
            f"{r.event_id!r} revision {r.revision}: {r.kind.value} by correction "
            f"{r.correction_id!r}, {r.state.value}, by {r.corrected_by!r} at "
            f"{r.corrected_at}: {r.reason}"
        )
    return 0


def _filter(args: argparse.Namespace) -> EventFilter:
    from shardbill.corrections import EventFilter

    def when(option: str, text: str | None) -> dt.datetime | None:
        if text is None:
            return None
        try:
            moment = dt.datetime.fromisoformat(text.strip())
        except ValueError:
            moment = None
        if moment is None or moment.utcoffset() is None:
            raise ConfigurationError(
                f"{option} {text!r} is not an ISO 8601 time with an offset; give e.g. "
                f"{option} 2026-11-03T00:00:00Z"
            )
        return moment

    return EventFilter(
        account=args.account,
        product=args.product,
        start=when("--from", args.start),
        end=when("--to", args.end),
    )


def _correct(
    corrector: Corrector,
    args: argparse.Namespace,
    events: list[UsageEvent],
    originals: dict[str, UsageEvent],
) -> list[CorrectionResult]:
    from shardbill.cli.period import _who

    by = args.by or _who()
    results = []
    if args.correct_command == "cancel":
        events = _filter(args).select(events)
    for event in events:
        if args.correct_command == "cancel":
            results.append(
                corrector.cancel(event, correction_id=args.id, reason=args.reason, by=by)
            )
        else:
            results.append(
                corrector.amend(
                    event,
                    correction_id=args.id,
                    reason=args.reason,
                    by=by,
                    original=originals.get(event.event_id),
                )
            )
    return results


def run(args: argparse.Namespace) -> int:
    """Run ``correct cancel``, ``correct amend`` or ``correct list``; returns the exit code."""
    from shardbill.corrections import Corrector
    from shardbill.writer import AggregationWriter

    config = load_config(args)
    action = args.correct_command
    events: list[UsageEvent] = []
    originals: dict[str, UsageEvent] = {}
    if action != "list":
        events = list(_events(args.file, args.format, config.account_as_int))
        if action == "amend" and args.original:
            originals = {
                e.event_id: e for e in _events(args.original, args.format, config.account_as_int)
            }
    with config.open() as opened:
        live_map(config, opened.map_store)
        with AggregationWriter(
            shard_map=opened.map_store,
            provider=opened.provider,
            tables=config.tables,
            settings=config.writer.settings(),
        ) as writer:
            corrector = Corrector(
                writer=writer,
                engine=config.engine(),
                provider=opened.provider,
                map_store=opened.map_store,
            )
            if action == "list":
                return _list(corrector, args)
            results = _correct(corrector, args, events, originals)
    counts = {s: sum(r.state == s for r in results) for s in ("applied", "duplicate", "refused")}
    counts["failed"] = sum(r.state == "failed" for r in results)
    if args.json:
        print_json({"corrections": [r.to_dict() for r in results], **counts})
    else:
        _print(results)
        print(", ".join(f"{n} {s}" for s, n in counts.items()))
    if counts["failed"]:
        return EXIT_DATABASE
    return EXIT_PROBLEM if counts["refused"] else 0
