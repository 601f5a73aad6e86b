"""The ``shardbill`` command line (also ``python -m shardbill``).

Commands (``shardbill COMMAND --help`` shows each one's options and examples):

``demo``
    the main job on four SQLite shard files (no server needed), or on
    servers with ``--mysql URL ...`` or ``--config FILE``: a seeded day of
    skewed traffic priced and written exactly once, a replay, a fifth shard
    added online, an independent audit, a report.
``init``
    create the tables on every shard and publish the first shard map.
``ingest FILE``
    price and write the events of a JSON Lines or CSV file; bad lines go to
    a rejects file with their line numbers and reasons.
``audit [FILE ...]``
    recompute the expected aggregates independently (from events files, or
    from the demo's synthetic day) and compare them with the shards.
``map show`` / ``map plan``
    the live shard map; what adding, removing or re-weighting a shard would move.
``bench``
    throughput and commit latency per traffic model (uniform, skewed, hot).
``reshard plan|run|status|verify|abort``
    add, remove or re-weight shards online (:mod:`shardbill.cli_reshard`).

The configuration file comes from ``--config FILE``, else ``$SHARDBILL_CONFIG``,
else ``./shardbill.toml`` (see ``docs/reference/configuration.md``).
``--json`` prints exactly one JSON object on standard output. Progress bars
appear on standard error only when standard output is a terminal.

Exit codes:

===  ======================================================================
0    success: the audit is exact, every line was applied (or already was)
1    the job ran and found a problem: an audit difference, rejected lines
2    usage or configuration error: a bad option, configuration file, URL,
     schema, missing file or missing extra
3    a database stayed unreachable or kept failing past the retry budget
130  interrupted (Ctrl-C)
===  ======================================================================

Interrupting is safe: every batch is one transaction per shard (its ledger
rows and its UPSERTs commit together), so a batch is either applied whole or
not at all, and running the same command again completes the work exactly
once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shardbill import cli_reshard
from shardbill._version import __version__
from shardbill.errors import (
    ConfigurationError,
    DriverNotInstalledError,
    InvalidInputError,
    ShardbillError,
)

if TYPE_CHECKING:
    from shardbill.config import Config
    from shardbill.providers.url import ConnectionURL
    from shardbill.resharding import MapStore
    from shardbill.rules import UsageEvent
    from shardbill.shardmap import ShardMap

__all__ = ["EXIT_DATABASE", "EXIT_INTERRUPTED", "EXIT_PROBLEM", "EXIT_USAGE", "main"]

EXIT_PROBLEM = 1
"""The job ran and found a problem (an audit difference, rejected lines)."""
EXIT_USAGE = 2
"""A usage or configuration error."""
EXIT_DATABASE = 3
"""A database stayed unreachable or kept failing; nothing is half-written: run again."""
EXIT_INTERRUPTED = 130
"""Interrupted (Ctrl-C)."""

_DEMO_EVENTS = 100_000
_DEMO_SEED = 7
_MODELS = ("uniform", "skewed", "hot")


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions, keeps the examples' lines as written, shows real defaults."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _command(
    sub: Subparsers,
    name: str,
    summary: str,
    description: str,
    examples: str,
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=_Formatter,
    )


def _add_config(parser: argparse._ActionsContainer, *, required: bool = True) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the configuration file (default: $SHARDBILL_CONFIG, else ./shardbill.toml)"
        if required
        else "run on the shards of this configuration file instead of SQLite files",
    )


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout instead of text"
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {value}")
    return value


def _add_traffic(parser: argparse.ArgumentParser, *, events: int, seed: int) -> None:
    parser.add_argument(
        "--events", type=_positive, default=events, help="distinct events to generate"
    )
    parser.add_argument("--seed", type=int, default=seed, help="seed of the synthetic traffic")
    parser.add_argument(
        "--model", choices=_MODELS, default="skewed", help="traffic model of the synthetic day"
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardbill",
        description="Price usage events and write them exactly once into sharded aggregates.",
        epilog="examples:\n"
        "  shardbill demo                 the main job on SQLite files, no server needed\n"
        "  shardbill demo --help          the options of one command\n\n"
        "exit codes: 0 ok, 1 audit difference or rejected lines, 2 usage or configuration\n"
        "error, 3 database unavailable, 130 interrupted",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"shardbill {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what the writer does (to stderr)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_demo, _add_init, _add_ingest, _add_audit, _add_map, _add_bench):
        add(sub)
    cli_reshard.add_parser(sub)
    return parser


def _add_demo(sub: Subparsers) -> None:
    demo = _command(
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
    _add_traffic(demo, events=_DEMO_EVENTS, seed=_DEMO_SEED)
    demo.add_argument("--batch-size", type=_positive, help="events per batch (default 2000)")
    demo.add_argument(
        "--slots", type=_positive, help="slots of the demo's shard map (default 16384)"
    )
    where = demo.add_mutually_exclusive_group()
    where.add_argument(
        "--mysql",
        nargs="+",
        metavar="URL",
        help="run on servers, one URL per shard: all but the last start, the last is added "
        "online; missing databases are created",
    )
    _add_config(where, required=False)
    demo.add_argument(
        "--reset",
        action="store_true",
        help="on servers: DROP the demo's tables first (else they must be empty)",
    )
    _add_json(demo)


def _add_init(sub: Subparsers) -> None:
    init = _command(
        sub,
        "init",
        "create the tables on every shard and publish the first shard map",
        "Create the aggregate, ledger and slot tables on every shard of the map (a no-op "
        "where they exist; a table of another shape is an error), and publish the first shard "
        "map (every shard of [shards], with [weights]) to the map store if it holds none.",
        "  shardbill init --config shardbill.toml",
    )
    _add_config(init)
    _add_json(init)


def _add_ingest(sub: Subparsers) -> None:
    ingest = _command(
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
    ingest.add_argument("--format", choices=("jsonl", "csv"), help="default: by extension")
    ingest.add_argument("--rejects", metavar="PATH", help="default: FILE.rejects.jsonl")
    ingest.add_argument(
        "--batch-size", type=_positive, help="events per batch (default [writer] batch_size)"
    )
    _add_config(ingest)
    _add_json(ingest)


def _add_audit(sub: Subparsers) -> None:
    audit = _command(
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
        "  shardbill audit day1.csv day2.csv --json --max-differences 100",
    )
    audit.add_argument("files", nargs="*", metavar="FILE", help="events files, in ingest order")
    audit.add_argument("--format", choices=("jsonl", "csv"), help="default: by extension")
    _add_traffic(audit, events=_DEMO_EVENTS, seed=_DEMO_SEED)
    audit.add_argument(
        "--max-differences", type=_positive, default=20, help="differences listed (all counted)"
    )
    _add_config(audit)
    _add_json(audit)


def _add_map(sub: Subparsers) -> None:
    mapping = _command(
        sub,
        "map",
        "show the live shard map, or plan a change to it",
        "Show the shard map of the map store, or print what adding, removing or re-weighting "
        "a shard would move (a plan only: nothing is published).",
        "  shardbill map show\n"
        "  shardbill map plan --add s4\n"
        "  shardbill map plan --add s4:2 --json\n"
        "  shardbill map plan --remove s0\n"
        "  shardbill map plan --reweight s1=2 s2=2",
    )
    map_sub = mapping.add_subparsers(dest="map_command", metavar="ACTION", required=True)
    show = _command(
        map_sub,
        "show",
        "slots per shard, weights, balance and epoch",
        "Print the live map: epoch, slot count, and per shard its weight, slots and share.",
        "  shardbill map show --config shardbill.toml --json",
    )
    _add_config(show)
    _add_json(show)
    plan = _command(
        map_sub,
        "plan",
        "what a change would move (ReshardPlan summary)",
        "Plan a change to the live map and print which slots would move, per shard.",
        "  shardbill map plan --add s4\n  shardbill map plan --reweight s0=2 s1=2",
    )
    change = plan.add_mutually_exclusive_group(required=True)
    change.add_argument(
        "--add", metavar="NAME[:WEIGHT]", help="add a shard (weight 1 if not given)"
    )
    change.add_argument("--remove", metavar="NAME", help="remove a shard")
    change.add_argument("--reweight", nargs="+", metavar="NAME=W", help="set shard weights")
    _add_config(plan)
    _add_json(plan)


def _add_bench(sub: Subparsers) -> None:
    bench = _command(
        sub,
        "bench",
        "throughput and commit latency per traffic model",
        "Write each traffic model into fresh shards (temporary SQLite files by default) and "
        "measure events/s, commits/s and p50/p99 commit latency. Events are priced before "
        "the clock starts. On servers the bench writes its own tables (bench_*, "
        "shardbill_bench_*), dropped before and after each model.",
        "  shardbill bench\n"
        "  shardbill bench --events 50000 --json\n"
        "  shardbill bench --models skewed,hot --plot bench.png\n"
        "  shardbill bench --mysql mysql+pymysql://root@127.0.0.1:3306/b0 "
        "mysql+pymysql://root@127.0.0.1:3306/b1",
    )
    bench.add_argument(
        "--models",
        default=",".join(_MODELS),
        help="comma-separated traffic models to run, of " + ", ".join(_MODELS),
    )
    bench.add_argument("--events", type=_positive, default=20_000, help="events per model")
    bench.add_argument("--seed", type=int, default=1, help="seed of the synthetic traffic")
    bench.add_argument("--batch-size", type=_positive, default=2000, help="events per batch")
    bench.add_argument("--shards", type=_positive, default=4, help="temporary SQLite shards")
    bench_where = bench.add_mutually_exclusive_group()
    bench_where.add_argument(
        "--mysql", nargs="+", metavar="URL", help="run on servers, one URL per shard"
    )
    _add_config(bench_where, required=False)
    bench.add_argument(
        "--plot", metavar="FILE.png", help="draw throughput and latency (needs shardbill[plot])"
    )
    _add_json(bench)


# --------------------------------------------------------------------------- helpers


def _print_json(value: object) -> None:
    print(json.dumps(value, ensure_ascii=False))


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.json else None


def _say(args: argparse.Namespace) -> Callable[[str], None]:
    stream = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    return say


def _load_config(args: argparse.Namespace) -> Config:
    from shardbill.config import Config, find_config

    return Config.load(find_config(args.config))


def _parse_urls(texts: Sequence[str], prefix: str) -> dict[str, ConnectionURL]:
    from shardbill.providers.url import ConnectionURL

    urls = {}
    for index, text in enumerate(texts):
        try:
            urls[f"{prefix}{index}"] = ConnectionURL.parse(text)
        except ConfigurationError as exc:
            raise ConfigurationError(f"--mysql URL number {index + 1}: {exc}") from None
    return urls


# --------------------------------------------------------------------------- demo


def _cmd_demo(args: argparse.Namespace) -> int:
    from shardbill.demo import run_demo

    urls = tables = engine = settings = None
    batch_size, slots = args.batch_size, args.slots
    if args.mysql:
        urls = _parse_urls(args.mysql, "shard-")
    elif args.config:
        config = _load_config(args)
        urls, tables, engine = dict(config.shards), config.tables, config.engine()
        settings = config.writer.settings()
        batch_size = batch_size or config.writer.batch_size
        slots = slots or config.slots
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
        progress=_progress(args),
        say=_say(args),
    )
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.render())
    return 0 if report.exact else EXIT_PROBLEM


# --------------------------------------------------------------------------- init


def _cmd_init(args: argparse.Namespace) -> int:
    from shardbill.errors import MapNotPublishedError
    from shardbill.resharding import SqlMapStore
    from shardbill.writer import AggregationWriter

    config = _load_config(args)
    with config.open() as opened:
        store = opened.map_store
        if isinstance(store, SqlMapStore):
            store.ensure_schema()
        try:
            current = store.load()
            published = False
        except MapNotPublishedError:
            current = config.initial_map()
            store.publish(current, expected_epoch=None)
            published = True
        _require_urls(config, current.shards)
        with AggregationWriter(
            shard_map=current,
            provider=opened.provider,
            tables=config.tables,
            settings=config.writer.settings(),
        ) as writer:
            writer.ensure_schema()
    shards = sorted(current.shards)
    if args.json:
        _print_json(
            {
                "shards": shards,
                "tables": [t.name for t in config.tables],
                "map_epoch": current.epoch,
                "slots": current.slots,
                "published": published,
                "map_store": config.map_store.describe(),
            }
        )
        return 0
    print(f"schema ready on {len(shards)} shards: {', '.join(shards)}")
    print(f"  tables: {', '.join(t.name for t in config.tables)} (+ ledger and slot tables)")
    verb = "published" if published else "already holds"
    print(
        f"  map store ({config.map_store.describe()}) {verb} epoch {current.epoch}: "
        f"{current.slots} slots over {len(shards)} shards"
    )
    return 0


def _live_map(config: Config, store: MapStore) -> ShardMap:
    """The map the store holds, every shard of it with a URL."""
    from shardbill.errors import MapNotPublishedError

    try:
        current = store.load()
    except MapNotPublishedError as exc:
        raise ConfigurationError(
            f"{exc} (for a new deployment: shardbill init --config {config.source})"
        ) from None
    _require_urls(config, current.shards)
    return current


def _require_urls(config: Config, shards: Iterable[str]) -> None:
    missing = sorted(set(shards) - set(config.shards))
    if missing:
        raise ConfigurationError(
            f"{config.source}: the shard map names shard(s) {missing} that [shards] has no URL "
            "for; add them to [shards]"
        )


# --------------------------------------------------------------------------- ingest


def _cmd_ingest(args: argparse.Namespace) -> int:
    from shardbill.ingest import detect_format, ingest
    from shardbill.pipeline import Pipeline
    from shardbill.progress import Progress
    from shardbill.writer import AggregationWriter

    path = Path(args.file)
    fmt = detect_format(path, args.format)
    if not path.is_file():
        raise ConfigurationError(f"{path}: no such events file")
    config = _load_config(args)
    engine = config.engine()
    with config.open() as opened:
        _live_map(config, opened.map_store)  # published, and every shard has a URL
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
                enabled=_progress(args),
            ) as bar,
        ):
            summary = ingest(
                path,
                pipeline=Pipeline(engine=engine, writer=writer),
                fmt=fmt,
                account_as_int=config.account_as_int,
                batch_size=args.batch_size or config.writer.batch_size,
                rejects_path=args.rejects,
                on_bytes=bar.update,
            )
    if args.json:
        _print_json(summary.to_dict())
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
        if summary.failed:
            print(
                f"  failed      {summary.failed:,}: a shard stayed unavailable; run the file again"
            )
    return summary.exit_code


# --------------------------------------------------------------------------- audit


def _file_events(
    paths: Sequence[str], fmt: str | None, account_as_int: bool
) -> Iterator[UsageEvent]:
    from shardbill.ingest import detect_format, events_of, read_events

    for name in paths:
        yield from events_of(
            read_events(name, fmt=detect_format(name, fmt), account_as_int=account_as_int)
        )


def _cmd_audit(args: argparse.Namespace) -> int:
    from shardbill.audit import audit
    from shardbill.synthetic import Traffic

    for name in args.files:
        if not Path(name).is_file():
            raise ConfigurationError(f"{name}: no such events file")
    config = _load_config(args)
    if args.files:
        events = _file_events(args.files, args.format, config.account_as_int)
        source = ", ".join(args.files)
    else:
        events = Traffic(model=args.model, events=args.events, seed=args.seed).distinct()
        source = f"synthetic {args.model} day, {args.events:,} events, seed {args.seed}"
    with config.open() as opened:
        current = _live_map(config, opened.map_store)
        report = audit(
            events,
            engine=config.engine(),
            tables=config.tables,
            provider=opened.provider,
            shard_map=current,
        )
    if args.json:
        _print_json({"source": source, **report.to_dict(limit=args.max_differences)})
    else:
        print(
            f"audit of {source}: {report.events:,} events ({report.rejected:,} refused), "
            f"{report.expected_rows:,} rows expected, {report.found_rows:,} found on "
            f"{len(report.shards)} shards"
        )
        for difference in report.differences[: args.max_differences]:
            print(f"  {difference.describe()}")
        hidden = len(report.differences) - args.max_differences
        if hidden > 0:
            print(f"  ... and {hidden:,} more (--max-differences)")
        count = len(report.differences)
        print("audit: exact" if report.exact else f"audit: {count:,} difference(s)")
    return 0 if report.exact else EXIT_PROBLEM


# --------------------------------------------------------------------------- map


def _cmd_map(args: argparse.Namespace) -> int:
    config = _load_config(args)
    with config.open() as opened:
        current = _live_map(config, opened.map_store)
    if args.map_command == "show":
        return _map_show(args, config, current)
    return _map_plan(args, config, current)


def _map_show(args: argparse.Namespace, config: Config, current: ShardMap) -> int:
    counts, weights = current.slot_counts, current.shards
    if args.json:
        _print_json(
            {
                "epoch": current.epoch,
                "slots": current.slots,
                "balanced": current.is_balanced(),
                "map_store": config.map_store.describe(),
                "shards": {
                    s: {
                        "weight": weights[s],
                        "slots": counts[s],
                        "share": round(counts[s] / current.slots, 6),
                    }
                    for s in weights
                },
            }
        )
        return 0
    print(
        f"shard map epoch {current.epoch}: {current.slots} slots over {len(weights)} shards "
        f"({config.map_store.describe()})"
    )
    rows = [("shard", "weight", "slots", "share")]
    rows += [
        (s, str(weights[s]), str(counts[s]), f"{counts[s] / current.slots:.2%}") for s in weights
    ]
    print(_table(rows))
    state = "exact to one slot" if current.is_balanced() else "NOT within one slot of the weights"
    print(f"balance: {state} (slots per shard {min(counts.values())}-{max(counts.values())})")
    return 0


def _map_plan(args: argparse.Namespace, config: Config, current: ShardMap) -> int:
    if args.add:
        name, _, weight = args.add.partition(":")
        target = current.add_shard(name, int(weight) if weight.isdigit() else _weight(weight))
    elif args.remove:
        target = current.remove_shard(args.remove)
    else:
        target = current.reweight(dict(_assignment(item) for item in args.reweight))
    plan = current.plan_to(target)
    no_url = sorted(set(target.shards) - set(config.shards))
    if args.json:
        _print_json(
            {
                "source_epoch": plan.source_epoch,
                "target_epoch": plan.target_epoch,
                "slots": plan.slots,
                "moved_slots": len(plan.moves),
                "moved_fraction": plan.moved_fraction,
                "changes": [
                    {
                        "shard": c.shard,
                        "before": c.before,
                        "after": c.after,
                        "gives": c.gives,
                        "receives": c.receives,
                    }
                    for c in plan.changes
                ],
                "flows": [
                    {"source": s, "target": t, "slots": n} for (s, t), n in plan.flows.items()
                ],
                "shards_without_url": no_url,
            }
        )
        return 0
    print(plan.summary())
    for (source, target_shard), count in plan.flows.items():
        print(f"  {source} -> {target_shard}: {count} slots")
    if no_url:
        print(f"note: add a URL to [shards] for {', '.join(no_url)} before executing this plan")
    print("(a plan only: nothing was published)")
    return 0


def _weight(text: str) -> int:
    if not text:
        return 1
    raise ConfigurationError(f"--add NAME:WEIGHT needs a positive integer weight, got {text!r}")


def _assignment(item: str) -> tuple[str, int]:
    name, sep, weight = item.partition("=")
    if not sep or not weight.isdigit() or int(weight) < 1:
        raise ConfigurationError(f"--reweight takes NAME=WEIGHT with a positive integer: {item!r}")
    return name, int(weight)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------- bench


def _cmd_bench(args: argparse.Namespace) -> int:
    from shardbill.demo import check_plotting, plot_bench, run_bench

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(_MODELS))
    if unknown or not models:
        raise ConfigurationError(
            f"--models takes a comma-separated list of {', '.join(_MODELS)}; got {args.models!r}"
        )
    if args.plot:
        check_plotting()
    urls = tables = engine = settings = None
    backend = f"{args.shards} temporary SQLite shards"
    if args.mysql:
        urls = _parse_urls(args.mysql, "s")
    elif args.config:
        config = _load_config(args)
        urls, tables, engine = dict(config.shards), config.tables, config.engine()
        settings = config.writer.settings()
    if urls is not None:
        from shardbill.demo import ensure_databases

        ensure_databases(urls, _say(args))
        backend = f"{len(urls)} shards: " + ", ".join(str(u) for u in urls.values())
    results = run_bench(
        models=models,
        events=args.events,
        seed=args.seed,
        batch_size=args.batch_size,
        urls=urls,
        shards=args.shards,
        tables=tables,
        engine=engine,
        settings=settings,
        progress=_progress(args),
    )
    if args.plot:
        plot_bench(results, args.plot)
    if args.json:
        _print_json(
            {
                "backend": backend,
                "events_per_model": args.events,
                "batch_size": args.batch_size,
                "models": {r.model: r.to_dict() for r in results},
                **({"plot": args.plot} if args.plot else {}),
            }
        )
        return 0
    print(f"shardbill bench: {args.events:,} events per model, batches of {args.batch_size}, "
          f"{backend}")  # fmt: skip
    rows = [("model", "events/s", "commits/s", "rows/s", "p50 ms", "p99 ms", "seconds")]
    for result in results:
        d = result.to_dict()
        rows.append(
            (
                result.model,
                f"{d['events_per_s']:,.0f}",
                f"{d['commits_per_s']:,.1f}",
                f"{d['rows_per_s']:,.0f}",
                _fmt_ms(d["commit_p50_ms"]),
                _fmt_ms(d["commit_p99_ms"]),
                f"{result.seconds:.2f}",
            )
        )
    print(_table(rows))
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def _fmt_ms(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "n/a"


# --------------------------------------------------------------------------- main


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _cmd_demo,
    "init": _cmd_init,
    "ingest": _cmd_ingest,
    "audit": _cmd_audit,
    "map": _cmd_map,
    "bench": _cmd_bench,
    "reshard": cli_reshard.run,
}


def _error(message: object) -> None:
    print(f"shardbill: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code (see the module docstring)."""
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (argparse printed it)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _error(
            "interrupted; every batch either committed whole or not at all: run the same "
            "command again to finish (the ledger skips what was applied)"
        )
        return EXIT_INTERRUPTED
    except (ConfigurationError, DriverNotInstalledError, InvalidInputError) as exc:
        _error(exc)
        return EXIT_USAGE
    except ShardbillError as exc:  # DatabaseError and what resharding raises
        _error(f"{type(exc).__name__}: {exc}")
        return EXIT_DATABASE
    except OSError as exc:
        _error(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return EXIT_USAGE
