"""Throughput and commit latency per traffic model: ``shardbill bench``.

:func:`run_bench` writes each traffic model (uniform, skewed, hot) into fresh
shards (temporary SQLite files by default, or your servers, where it writes
its own ``bench_*`` and ``shardbill_bench_*`` tables, dropped before and
after each model) and measures events/s, commits/s and commit latency
(:class:`BenchResult`). Events are priced before the clock starts: the bench
measures the write path. :func:`plot_bench` draws the results into a PNG (it
needs the ``plot`` extra; :func:`check_plotting` says so before a long run).

Interrupting the bench (Ctrl-C) stops after the shard transactions in
flight: each batch either committed whole or not at all.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from shardbill.errors import ConfigurationError
from shardbill.observe import Stats
from shardbill.providers.pooled import PooledProvider
from shardbill.providers.url import ConnectionURL
from shardbill.rules import Charge, RulesEngine
from shardbill.shardmap import ShardMap
from shardbill.tables import SystemTables
from shardbill.tables.aggregates import AggregateTable
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.demo import drop_tables, round_ms, table_names
from shardbill.workloads.progress import Progress
from shardbill.workloads.synthetic import Traffic
from shardbill.writer import AggregationWriter, WriterSettings

__all__ = ["BenchResult", "check_plotting", "plot_bench", "run_bench"]


@attrs.frozen(kw_only=True)
class BenchResult:
    """One traffic model's measurements.

    Attributes:
        model: the traffic model.
        events: events written.
        seconds: wall time of the writes (pricing excluded).
        commits: shard transactions committed.
        rows: aggregate rows upserted (after coalescing).
        statements: SQL statements run by the transactions.
        latencies: every commit latency, seconds, sorted.
    """

    model: str
    events: int
    seconds: float
    commits: int
    rows: int
    statements: int
    latencies: tuple[float, ...] = attrs.field(repr=False)

    def percentile_ms(self, q: float) -> float | None:
        """The ``q`` quantile of commit latency in milliseconds (nearest rank).

        Args:
            q: the quantile, 0..1.

        Returns:
            Milliseconds, or None without commits.
        """
        if not self.latencies:
            return None
        rank = max(0, min(len(self.latencies) - 1, round(q * len(self.latencies) + 0.5) - 1))
        return self.latencies[rank] * 1000

    def to_dict(self) -> dict[str, object]:
        """The JSON object of this model.

        Returns:
            Events/s, commits/s, rows/s, p50/p99 commit latency (ms) and totals.
        """
        per_s = 1 / self.seconds if self.seconds > 0 else 0.0
        return {
            "model": self.model,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events * per_s, 1),
            "commits_per_s": round(self.commits * per_s, 1),
            "rows_per_s": round(self.rows * per_s, 1),
            "commits": self.commits,
            "rows": self.rows,
            "statements": self.statements,
            "commit_p50_ms": round_ms(self.percentile_ms(0.5)),
            "commit_p99_ms": round_ms(self.percentile_ms(0.99)),
        }


def _bench_tables(tables: Sequence[AggregateTable]) -> tuple[AggregateTable, ...]:
    return tuple(attrs.evolve(t, name=f"bench_{t.name}"[:64]) for t in tables)


def _priced_batches(
    engine: RulesEngine, model: str, events: int, seed: int, batch_size: int
) -> list[list[Charge]]:
    traffic = Traffic(model=model, events=events, seed=seed, id_prefix=f"bench-{model}-")
    return [list(engine.price_batch(batch).charges) for batch in traffic.batches(batch_size)]


def run_bench(
    *,
    models: Sequence[str],
    events: int,
    seed: int = 1,
    batch_size: int = 2000,
    urls: Mapping[str, ConnectionURL] | None = None,
    shards: int = 4,
    tables: Sequence[AggregateTable] | None = None,
    engine: RulesEngine | None = None,
    settings: WriterSettings | None = None,
    progress: bool | None = None,
) -> list[BenchResult]:
    """Write each traffic model into fresh shards and measure (see the module docstring).

    Args:
        models: the traffic models to run, in order.
        events: events per model.
        seed: the traffic seed.
        batch_size: events per batch.
        urls: shard name -> URL on servers; None: ``shards`` temporary SQLite files.
        shards: how many temporary SQLite shards.
        tables: the aggregate tables (default ``billing_tables()``); the bench
            writes them as ``bench_<name>`` (and its own ledger and slot tables,
            ``shardbill_bench_*``), dropped before and after each model.
        engine: prices the events (default the comms example).
        settings: writer settings (the system table prefix is replaced).
        progress: draw progress bars (default: when a person is watching).

    Returns:
        One result per model.
    """
    from shardbill.rules import comms

    engine = engine or comms.engine()
    bench_tables = _bench_tables(tables or billing_tables())
    system = SystemTables(prefix="shardbill_bench")
    settings = attrs.evolve(settings or WriterSettings(), system_tables=system)
    results = []
    with contextlib.ExitStack() as stack:
        if urls is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shardbill-bench-")))
        for model in models:
            priced = _priced_batches(engine, model, events, seed, batch_size)
            if urls is None:
                here = root / model
                shard_urls = {
                    f"s{i}": ConnectionURL.parse(f"sqlite:///{here / f's{i}'}.db")
                    for i in range(shards)
                }
                os.makedirs(here, exist_ok=True)
            else:
                shard_urls = dict(urls)
            results.append(
                _bench_model(
                    model=model,
                    events=events,
                    priced=priced,
                    urls=shard_urls,
                    tables=bench_tables,
                    settings=settings,
                    progress=progress,
                )
            )
    return results


def _bench_model(
    *,
    model: str,
    events: int,
    priced: list[list[Charge]],
    urls: Mapping[str, ConnectionURL],
    tables: Sequence[AggregateTable],
    settings: WriterSettings,
    progress: bool | None,
) -> BenchResult:
    stats = Stats()
    names = table_names(tables, settings.system_tables)
    # The traffic is dated; the writer's clock goes with it (not with the wall clock).
    latest = max((c.time for batch in priced for c in batch), default=None)
    now = latest.timestamp() if latest is not None else None
    with PooledProvider(urls) as provider:
        drop_tables(provider, list(urls), names)
        try:
            with AggregationWriter(
                shard_map=ShardMap.create(list(urls)),
                provider=provider,
                tables=tables,
                settings=settings,
                observer=stats,
                clock=(lambda: now) if now is not None else None,
            ) as writer:
                writer.ensure_schema()
                with Progress(f"bench {model}", total=len(priced), unit="batches",
                              enabled=progress) as bar:  # fmt: skip
                    started = time.perf_counter()
                    for _ in writer.write_stream(priced, depth=2):
                        bar.advance(1)
                    seconds = time.perf_counter() - started
        finally:
            drop_tables(provider, list(urls), names)
    return BenchResult(
        model=model,
        events=events,
        seconds=seconds,
        commits=sum(stats.commits.values()),
        rows=stats.rows,
        statements=stats.statements,
        latencies=tuple(stats.all_latencies()),
    )


def plot_bench(results: Sequence[BenchResult], path: str | os.PathLike[str]) -> None:
    """Draw throughput and commit-latency distributions per model into a PNG.

    Args:
        results: from :func:`run_bench`.
        path: the image file.

    Raises:
        ConfigurationError: matplotlib is missing (install ``shardbill[plot]``).
    """
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [r.model for r in results]
    left.bar(names, [r.to_dict()["events_per_s"] for r in results], color="#4477aa")
    left.set_title("throughput")
    left.set_ylabel("events/s")
    right.boxplot(
        [[s * 1000 for s in r.latencies] or [0.0] for r in results],
        tick_labels=names,
        whis=(1, 99),
        showfliers=False,
    )
    right.set_yscale("log")
    right.set_title("commit latency (box: p25-p75, whiskers: p1-p99)")
    right.set_ylabel("ms")
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=110)
    plt.close(figure)


def _pyplot() -> Any:
    try:
        # Imported by name: the plot extra is optional, and so are its type stubs.
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        raise ConfigurationError(
            "--plot needs matplotlib, which is not installed; install the extra: "
            "pip install 'shardbill[plot]'"
        ) from None
    return plt


def check_plotting() -> None:
    """Raise the missing-extra error now, before a long bench, if matplotlib is absent.

    Raises:
        ConfigurationError: naming the ``plot`` extra.
    """
    _pyplot()
