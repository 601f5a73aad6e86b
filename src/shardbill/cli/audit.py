"""``shardbill audit [FILE ...]``: recompute the aggregates independently and compare.

Prices the events again and aggregates them in plain Python with
:func:`shardbill.audit.audit` (not through the writer), reads every row from
every shard of the live map and compares per account and table; rows on the
wrong shard or with a wrong slot count as differences. The events come from
the FILEs, read as ``shardbill ingest`` reads them and in the order given, or,
without FILE, from the demo's synthetic day (the same ``--model``,
``--events`` and ``--seed`` as ``shardbill demo``). Prints the first
``--max-differences`` differences (all are counted); exit 0 when exact,
:data:`~shardbill.cli._common.EXIT_PROBLEM` on any difference.

The corrections recorded on the shards (``shardbill correct``) count too:
Σ events + Σ corrections = Σ aggregates; the events the ``adjust`` late-event policy
booked in another period (``shardbill_adjustments``) are expected there.

``--period YYYY-MM`` compares only the rows of that billing period (tables
keyed by day or month; a table with no period key, such as
``account_balance``, is skipped and named with the reason), proving
Σ events + Σ corrections = Σ aggregates for the period, per account and table.

``--repair`` first corrects what can be re-derived from the events
(:func:`shardbill.repair.repair`: a changed measure, a deleted row, a row no
event makes, on slots whose ledger shows the events are their whole truth),
printing each correction and each difference left alone with its reason,
then audits again and reports as above. ``--json`` adds ``repair``
(``actions``, ``refused``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from shardbill.cli._common import (
    DEMO_EVENTS,
    DEMO_SEED,
    EXIT_PROBLEM,
    add_config_and_json,
    add_format,
    add_traffic,
    command,
    live_map,
    load_config,
    positive,
    print_json,
)
from shardbill.errors import ConfigurationError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable, Iterator, Sequence

    from shardbill.audit import AuditReport
    from shardbill.cli._common import Subparsers
    from shardbill.periods import Period
    from shardbill.repair import RepairReport
    from shardbill.rules import UsageEvent

__all__ = ["add_parser", "run"]


def add_parser(sub: Subparsers) -> None:
    """Register ``audit`` on the main parser's subcommands."""
    audit = command(
        sub,
        "audit",
        "recompute the aggregates independently and compare with the shards",
        "Price the events again and aggregate them in plain Python (not through the writer), "
        "read every row from every shard, and compare per account and table; rows on the "
        "wrong shard or with a wrong slot count as differences. Events come from FILEs (as "
        "ingest reads them) or, without FILE, from the synthetic day of the demo (same "
        "--model, --events and --seed). Exit 0 when exact, 1 on any difference.",
        "  shardbill audit events.jsonl --config shardbill.toml\n"
        "  shardbill audit --config shardbill-demo/shardbill.toml      # after `shardbill demo`\n"
        "  shardbill audit day1.csv day2.csv --json --max-differences 100\n"
        "  shardbill audit events.jsonl --repair --config shardbill.toml\n"
        "  shardbill audit november.jsonl --period 2026-11 --config shardbill.toml",
    )
    audit.add_argument("files", nargs="*", metavar="FILE", help="events files, in ingest order")
    add_format(audit)
    add_traffic(audit, events=DEMO_EVENTS, seed=DEMO_SEED)
    audit.add_argument(
        "--max-differences", type=positive, default=20, help="differences listed (all counted)"
    )
    audit.add_argument(
        "--repair",
        action="store_true",
        help="first re-derive the differing rows from the events where the ledger shows they "
        "are the slot's whole truth, then audit again",
    )
    audit.add_argument(
        "--period",
        metavar="YYYY-MM",
        help="compare only the rows of this billing period (tables keyed by day or month; "
        "the others are skipped, with the reason)",
    )
    add_config_and_json(audit)


def _file_events(
    paths: Sequence[str], fmt: str | None, account_as_int: bool
) -> Iterator[UsageEvent]:
    from shardbill.ingest import detect_format, events_of, read_events

    for name in paths:
        yield from events_of(
            read_events(name, fmt=detect_format(name, fmt), account_as_int=account_as_int)
        )


def _period(args: argparse.Namespace) -> Period | None:
    from shardbill.periods import Period

    period = None if args.period is None else Period.parse(args.period)
    if period is not None and args.repair:
        raise ConfigurationError(
            "--repair compares every row; run it without --period, then audit the period"
        )
    return period


def _print_period(report: AuditReport) -> None:
    if report.period is not None:
        print(f"period {report.period}: {', '.join(report.tables)}")
        for name, note in sorted(report.skipped.items()):
            print(f"  {name}: {note}")


def run(args: argparse.Namespace) -> int:
    """Run ``audit``; returns the exit code."""
    from shardbill.audit import audit
    from shardbill.corrections import read_records
    from shardbill.periods import read_adjustments
    from shardbill.workloads.synthetic import Traffic

    period = _period(args)

    for name in args.files:
        if not Path(name).is_file():
            raise ConfigurationError(f"{name}: no such events file")
    config = load_config(args)
    events: Iterable[UsageEvent]
    if args.files:
        events = _file_events(args.files, args.format, config.account_as_int)
        source = ", ".join(args.files)
    else:
        events = Traffic(model=args.model, events=args.events, seed=args.seed).distinct()
        source = f"synthetic {args.model} day, {args.events:,} events, seed {args.seed}"
    repaired: RepairReport | None = None
    with config.open() as opened:
        current = live_map(config, opened.map_store)
        corrections = read_records(
            opened.provider,
            sorted(current.shards),
            config.writer.settings().system_tables,
        )
        adjustments = read_adjustments(
            opened.provider, sorted(current.shards), config.writer.settings().system_tables
        )
        if args.repair:
            from shardbill.repair import repair

            events = list(events)  # read twice: to repair, then to audit again
            repaired = repair(
                events,
                engine=config.engine(),
                tables=config.tables,
                provider=opened.provider,
                shard_map=current,
                system_tables=config.writer.settings().system_tables,
                corrections=corrections,
                adjustments=adjustments,
            )
        report = audit(
            events,
            engine=config.engine(),
            tables=config.tables,
            provider=opened.provider,
            shard_map=current,
            corrections=corrections,
            period=period,
            adjustments=adjustments,
        )
    if args.json:
        extra = {"repair": repaired.to_dict()} if repaired is not None else {}
        print_json({"source": source, **extra, **report.to_dict(limit=args.max_differences)})
    else:
        if repaired is not None:
            print(
                f"repair of {source}: {len(repaired.before.differences):,} difference(s) "
                f"found, {len(repaired.actions):,} row(s) corrected, "
                f"{len(repaired.refused):,} left alone"
            )
            for action in repaired.actions:
                print(f"  corrected: {action.describe()}")
            for refusal in repaired.refused:
                print(f"  left alone: {refusal}")
        _print_period(report)
        print(
            f"audit of {source}: {report.events:,} events ({report.rejected:,} refused), "
            f"{report.expected_rows:,} rows expected, {report.found_rows:,} found on "
            f"{len(report.shards)} shards"
        )
        for difference in report.differences[: args.max_differences]:
            print(f"  {difference.describe()}")
            print(f"    repair: {difference.repair()}")
        hidden = len(report.differences) - args.max_differences
        if hidden > 0:
            print(f"  ... and {hidden:,} more (--max-differences)")
        count = len(report.differences)
        print("audit: exact" if report.exact else f"audit: {count:,} difference(s)")
    return 0 if report.exact else EXIT_PROBLEM
