"""``shardbill bench``: throughput and commit latency per traffic model.

Runs :func:`shardbill.workloads.bench.run_bench` for each model of ``--models``
(uniform, skewed, hot) on ``--shards`` temporary SQLite files, or on servers:
``--mysql URL ...`` (one URL per shard) or the shards of ``--config FILE``
(with its tables, rules and writer settings); missing databases are created.
``--plot FILE.png`` also draws the results (:func:`shardbill.workloads.bench.plot_bench`);
without matplotlib the command stops before benchmarking, naming the extra.

Prints one row per model: events/s, commits/s, rows/s, p50/p99 commit
latency and seconds (``--json``: one object with ``backend``,
``events_per_model``, ``batch_size`` and ``models``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardbill.cli._common import (
    MODELS,
    add_json,
    add_servers,
    command,
    positive,
    print_json,
    progress_bars,
    say,
    servers,
    table,
)
from shardbill.errors import ConfigurationError

if TYPE_CHECKING:
    import argparse

    from shardbill.cli._common import Subparsers

__all__ = ["add_parser", "run"]


def add_parser(sub: Subparsers) -> None:
    """Register ``bench`` on the main parser's subcommands."""
    bench = command(
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
        default=",".join(MODELS),
        help="comma-separated traffic models to run, of " + ", ".join(MODELS),
    )
    bench.add_argument("--events", type=positive, default=20_000, help="events per model")
    bench.add_argument("--seed", type=int, default=1, help="seed of the synthetic traffic")
    bench.add_argument(
        "--batch-size",
        type=positive,
        help="events per batch (default: [writer] batch_size with --config, else 2000)",
    )
    bench.add_argument("--shards", type=positive, default=4, help="temporary SQLite shards")
    add_servers(bench, mysql_help="run on servers, one URL per shard")
    bench.add_argument(
        "--plot", metavar="FILE.png", help="draw throughput and latency (needs shardbill[plot])"
    )
    add_json(bench)


def run(args: argparse.Namespace) -> int:
    """Run ``bench``; returns the exit code."""
    from shardbill.workloads.bench import check_plotting, plot_bench, run_bench

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        raise ConfigurationError(
            f"--models takes a comma-separated list of {', '.join(MODELS)}; got {args.models!r}"
        )
    if args.plot:
        check_plotting()
    backend = f"{args.shards} temporary SQLite shards"
    urls, config = servers(args, "s")
    tables = engine = settings = None
    batch_size = args.batch_size
    if config is not None:
        tables, engine, settings = config.tables, config.engine(), config.writer.settings()
        batch_size = batch_size or config.writer.batch_size
    batch_size = batch_size or 2000
    if urls is not None:
        from shardbill.workloads.demo import ensure_databases

        ensure_databases(urls, say(args))
        backend = f"{len(urls)} shards: " + ", ".join(str(u) for u in urls.values())
    results = run_bench(
        models=models,
        events=args.events,
        seed=args.seed,
        batch_size=batch_size,
        urls=urls,
        shards=args.shards,
        tables=tables,
        engine=engine,
        settings=settings,
        progress=progress_bars(args),
    )
    if args.plot:
        plot_bench(results, args.plot)
    if args.json:
        print_json(
            {
                "backend": backend,
                "events_per_model": args.events,
                "batch_size": batch_size,
                "models": {r.model: r.to_dict() for r in results},
                **({"plot": args.plot} if args.plot else {}),
            }
        )
        return 0
    print(f"shardbill bench: {args.events:,} events per model, batches of {batch_size}, "
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
    print(table(rows))
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def _fmt_ms(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "n/a"
