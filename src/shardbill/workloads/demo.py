"""Synthetic workloads through the real write path: ``shardbill demo``.

**The demo** (:func:`run_demo`) is the main job in miniature, on four SQLite
shard files by default (or on real servers):

1. generate a seeded day of skewed usage (:class:`~shardbill.workloads.synthetic.Traffic`),
   delivered at least once (a few events twice, reordered a little);
2. price it with the example rules (:func:`shardbill.rules.comms.engine`) and
   write it exactly once through :class:`~shardbill.pipeline.Pipeline`, in
   batches (one transaction per shard per batch);
3. replay a slice of the day: every replayed event is a duplicate, nothing changes;
4. add a fifth shard online while the last fifth of the day is written
   (:func:`_reshard_online`);
5. audit: recompute every aggregate row independently (:mod:`shardbill.audit`)
   and compare with the shards;
6. report throughput, commit latency, rows per shard, duplicates skipped,
   slots moved and the audit verdict.

The scratch-shard helpers here (:func:`ensure_databases`, :func:`table_names`,
:func:`drop_tables`) also serve the bench (:mod:`shardbill.workloads.bench`), which
writes each traffic model into fresh shards and measures.

Interrupting the demo (Ctrl-C) stops after the shard transactions in flight:
each batch either committed whole or not at all, and the ledger makes a
re-run exact.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs

from shardbill.audit import audit
from shardbill.dialects.detect import dialect_for
from shardbill.errors import ConfigurationError
from shardbill.mapstore import JsonFileMapStore
from shardbill.observe import Stats
from shardbill.pipeline import Pipeline, PipelineResult
from shardbill.providers.base import ConnectionProvider
from shardbill.providers.pooled import PooledProvider
from shardbill.providers.url import ConnectionURL
from shardbill.rules import RulesEngine, UsageEvent
from shardbill.shardmap import ShardMap
from shardbill.tables import SystemTables
from shardbill.tables.aggregates import AggregateTable
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.progress import Progress
from shardbill.workloads.synthetic import Traffic, TrafficModel
from shardbill.writer import AggregationWriter, WriterSettings

__all__ = [
    "DEMO_SHARDS",
    "DemoReport",
    "ReshardOutcome",
    "demo_shards",
    "ensure_databases",
    "run_demo",
]

DEMO_SHARDS = ("shard-0", "shard-1", "shard-2", "shard-3", "shard-4")
"""The demo's SQLite shards: four to start with, the fifth added online."""

_DUPLICATES = 0.01  # of the stream re-delivered (at-least-once delivery)
_REORDER = 64  # events shuffled within a window of this many
_REPLAY = 0.10  # of the day replayed after the first part
_ONLINE = 0.20  # of the day written while the fifth shard is added

_DEMO_SQLITE = "synchronous=normal"

Say = Callable[[str], None]


# --------------------------------------------------------------------------- shards


def demo_shards(directory: Path) -> dict[str, ConnectionURL]:
    """The demo's SQLite shard URLs in ``directory`` (``shard-0.db`` ... ``shard-4.db``).

    The files use ``synchronous=normal``: in WAL mode a power cut may lose the
    last few commits (each whole: its ledger rows with its UPSERTs, so a
    re-run is still exact), never half of one; scratch files need no more.

    Args:
        directory: where the shard files live.

    Returns:
        Shard name -> URL, in order (the last one is added online).
    """
    root = directory.resolve()
    return {
        name: ConnectionURL.parse(f"sqlite:///{root / name}.db?{_DEMO_SQLITE}")
        for name in DEMO_SHARDS
    }


def _remove_demo_files(directory: Path, shards: Iterable[str]) -> None:
    """Delete the demo's own files from an earlier run (shard files and the map)."""
    doomed = [directory / f"{s}.db{tail}" for s in shards for tail in ("", "-wal", "-shm")]
    doomed += [directory / "shardmap.json", directory / "shardmap.json.lock"]
    doomed += list(directory.glob("shardmap.epoch-*.json"))
    for path in doomed:
        path.unlink(missing_ok=True)


def ensure_databases(urls: Mapping[str, ConnectionURL], say: Say) -> list[str]:
    """Create the database of every MySQL URL that names one the server lacks.

    Args:
        urls: shard name -> URL (SQLite URLs are skipped).
        say: where to report each database created.

    Returns:
        The names of the databases created.

    Raises:
        ConfigurationError: a database name that is not a plain identifier.
        DatabaseError: the server refused (e.g. no CREATE privilege).
    """
    created = []
    for shard, url in urls.items():
        if url.family != "mysql" or not url.database:
            continue
        name = url.database
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
            raise ConfigurationError(
                f"shard {shard!r}: cannot create database {name!r}: use a name of letters, "
                "digits and '_' (or create it yourself)"
            )
        server = attrs.evolve(url, database=None)
        with PooledProvider({"server": server}) as admin, admin.connection("server") as conn:
            cursor = conn.cursor()
            try:
                cursor.execute(
                    "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                    (name,),
                )
                if cursor.fetchall():
                    continue
                cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4", ())
            finally:
                cursor.close()
        created.append(name)
        say(f"created database `{name}` on {server} (shard {shard})")
    return created


def _occupied(
    provider: ConnectionProvider, shards: Sequence[str], names: Sequence[str]
) -> list[str]:
    """``shard.table (N rows)`` for every named table that exists and holds rows."""
    found = []
    for shard in shards:
        with provider.connection(shard) as conn:
            dialect = dialect_for(conn)
            cursor = conn.cursor()
            try:
                for name in names:
                    if dialect.describe_table(cursor, name) is None:
                        continue
                    cursor.execute(f"SELECT COUNT(*) FROM {dialect.quote(name)}", ())
                    row = cursor.fetchone()
                    if row is not None and int(row[0]):
                        found.append(f"{shard}.{name} ({int(row[0])} rows)")
            finally:
                cursor.close()
    return found


def drop_tables(provider: ConnectionProvider, shards: Sequence[str], names: Sequence[str]) -> None:
    """``DROP TABLE IF EXISTS`` every named table on every shard (the demo's and the bench's)."""
    for shard in shards:
        with provider.connection(shard) as conn:
            dialect = dialect_for(conn)
            cursor = conn.cursor()
            try:
                for name in names:
                    cursor.execute(f"DROP TABLE IF EXISTS {dialect.quote(name)}", ())
            finally:
                cursor.close()


def table_names(tables: Sequence[AggregateTable], system: SystemTables) -> list[str]:
    """Every table the demo (or the bench) keeps on a shard: aggregates, ledger, slots, moves."""
    return [t.name for t in tables] + [d.name for d in system.all_defs(())]


def _write_demo_config(directory: Path, shards: Mapping[str, ConnectionURL], say: Say) -> Path:
    """A configuration file for the demo's shards, so later commands can inspect them.

    SQLite shard files are named relative to the file's directory. A URL's
    inline password is never written: the shard's line goes without it and
    ``say`` notes how to complete it (``?password_env=VARIABLE``).
    """
    path = directory / "shardbill.toml"
    lines = [
        "# Written by `shardbill demo`: the demo's shards, for `shardbill map show`,",
        "# `shardbill audit` and friends, e.g.",
        f"#   shardbill map show --config {path}",
        "",
        "[shards]",
    ]
    for name, url in shards.items():
        if url.family == "sqlite":
            text = f"sqlite:///{Path(url.path or name).name}?{_DEMO_SQLITE}"
        else:
            if url.password is not None:
                say(
                    f"{path}: the password of shard {name} is not written there; "
                    "add ?password_env=VARIABLE to its URL to use the file"
                )
            text = str(attrs.evolve(url, password=None))
        lines.append(f"{json.dumps(name)} = {json.dumps(text)}")
    lines += ["", "[map_store]", 'kind = "json"', 'path = "shardmap.json"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the demo


@attrs.frozen(kw_only=True)
class ReshardOutcome:
    """What the online resharding step did.

    Attributes:
        status: ``done``, ``not available yet`` or ``skipped`` (no spare shard).
        slots_moved: slots that changed owner.
        rows_moved: aggregate rows merged into the new shard.
        shard: the shard added.
        seconds: how long the reshard took.
    """

    status: str
    slots_moved: int = 0
    rows_moved: int = 0
    shard: str | None = None
    seconds: float = 0.0


@attrs.frozen(kw_only=True)
class DemoReport:
    """What the demo did and found (:meth:`to_dict` is the ``--json`` object)."""

    backend: str
    location: str
    model: str
    seed: int
    events: int
    deliveries: int
    applied: int
    duplicates_skipped: int
    replayed: int
    replay_applied: int
    rejected: int
    failed: int
    seconds: float
    commits: int
    commit_p50_ms: float | None
    commit_p99_ms: float | None
    rows_per_shard: Mapping[str, int]
    slots_per_shard: Mapping[str, int]
    map_epoch: int
    resharding: ReshardOutcome
    written_while_resharding: int
    wall_seconds: float
    audit_rows: int
    differences: tuple[str, ...]
    difference_count: int

    @property
    def exact(self) -> bool:
        """True when the audit found no difference and no write failed."""
        return self.difference_count == 0 and self.failed == 0

    @property
    def events_per_second(self) -> float:
        """Events applied per second of writing (replay and audit not counted)."""
        return self.applied / self.seconds if self.seconds > 0 else 0.0

    @property
    def row_balance(self) -> float:
        """The fullest shard's rows over the mean (1.0: perfectly even)."""
        counts = list(self.rows_per_shard.values())
        mean = sum(counts) / len(counts) if counts else 0
        return max(counts) / mean if mean else 1.0

    def to_dict(self) -> dict[str, object]:
        """The report as one JSON-ready object.

        Returns:
            Every attribute, with ``events_per_second``, ``row_balance`` and
            ``audit`` (``"exact"`` or ``"different"``).
        """
        return {
            "backend": self.backend,
            "location": self.location,
            "model": self.model,
            "seed": self.seed,
            "events": self.events,
            "deliveries": self.deliveries,
            "applied": self.applied,
            "duplicates_skipped": self.duplicates_skipped,
            "replayed": self.replayed,
            "replay_applied": self.replay_applied,
            "rejected": self.rejected,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second),
            "commits": self.commits,
            "commit_p50_ms": round_ms(self.commit_p50_ms),
            "commit_p99_ms": round_ms(self.commit_p99_ms),
            "rows_per_shard": dict(self.rows_per_shard),
            "row_balance": round(self.row_balance, 3),
            "slots_per_shard": dict(self.slots_per_shard),
            "map_epoch": self.map_epoch,
            "resharding": self.resharding.status,
            "slots_moved": self.resharding.slots_moved,
            "rows_moved": self.resharding.rows_moved,
            "reshard_seconds": round(self.resharding.seconds, 3),
            "written_while_resharding": self.written_while_resharding,
            "wall_seconds": round(self.wall_seconds, 3),
            "audit": "exact" if self.exact else "different",
            "audit_rows": self.audit_rows,
            "audit_differences": self.difference_count,
            "differences": list(self.differences),
        }

    def render(self) -> str:
        """The report for people: a few aligned lines.

        Returns:
            The text.
        """
        p50, p99 = _ms(self.commit_p50_ms), _ms(self.commit_p99_ms)
        cells = [f"{s} {n:,}" for s, n in self.rows_per_shard.items()]
        cells.append(f"(max/mean {self.row_balance:.2f})")
        shards = "\n              ".join(
            "  ".join(cells[i : i + 4]) for i in range(0, len(cells), 4)
        )
        stream_dups = self.duplicates_skipped - self.replayed
        first, *rest = self.location.split(", ")
        where = f"{first} (+{len(rest)} more)" if rest else first
        lines = [
            f"shardbill demo: {self.events:,} {self.model} usage events (seed {self.seed}) -> "
            f"{len(self.rows_per_shard) - (self.resharding.status == 'done')} {self.backend} "
            f"shards in {where}",
            f"  write       {self.deliveries:,} deliveries, {self.applied:,} events applied in "
            f"{self.seconds:.1f} s: {self.events_per_second:,.0f} events/s",
            f"  commits     {self.commits:,} shard transactions, latency p50 {p50}, p99 {p99}",
            f"  duplicates  {stream_dups:,} re-delivered + {self.replayed:,} replayed: "
            f"{self.duplicates_skipped:,} skipped, {self.replay_applied} applied twice",
            f"  resharding  {self._reshard_text()}",
            f"  rows        {shards}",
        ]
        if self.rejected or self.failed:
            lines.append(f"  problems    {self.rejected} events rejected, {self.failed} failed")
        if self.exact:
            lines.append(
                f"  audit       exact: {self.audit_rows:,} rows match an independent recomputation"
            )
        else:
            lines.append(f"  audit       {self.difference_count} differences:")
            lines.extend(f"    {d}" for d in self.differences)
        return "\n".join(lines)

    def _reshard_text(self) -> str:
        outcome = self.resharding
        if outcome.status == "done":
            return (
                f"added {outcome.shard} online in {outcome.seconds:.1f} s: "
                f"{outcome.slots_moved:,} slots, {outcome.rows_moved:,} rows moved\n"
                f"              while {self.written_while_resharding:,} events were written "
                f"(map epoch {self.map_epoch})"
            )
        return outcome.status


def round_ms(value: float | None) -> float | None:
    """A latency in milliseconds rounded for JSON (three decimals); None stays None."""
    return None if value is None else round(value, 3)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


@attrs.define
class _Tally:
    deliveries: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    failed: int = 0
    seconds: float = 0.0

    def add(self, result: PipelineResult, delivered: int) -> None:
        self.deliveries += delivered
        self.applied += len(result.write.applied_events)
        self.duplicates += len(result.write.duplicate_events) + result.repeats
        self.rejected += len(result.rejected_events)
        self.failed += len(result.failed_events)


def _write(
    pipeline: Pipeline,
    batches: Iterable[list[UsageEvent]],
    tally: _Tally,
    bar: Progress,
    stop: threading.Event | None = None,
) -> None:
    started = time.perf_counter()
    try:
        for batch in batches:
            if stop is not None and stop.is_set():  # Ctrl-C in the thread that started us
                return
            tally.add(pipeline.process(batch), len(batch))
            bar.advance(len(batch))
    finally:
        tally.seconds += time.perf_counter() - started


def run_demo(
    *,
    directory: Path,
    urls: Mapping[str, ConnectionURL] | None = None,
    tables: Sequence[AggregateTable] | None = None,
    engine: RulesEngine | None = None,
    settings: WriterSettings | None = None,
    events: int = 100_000,
    seed: int = 7,
    model: str = "skewed",
    batch_size: int = 2000,
    slots: int = 16384,
    reset: bool = False,
    write_config: bool = True,
    progress: bool | None = None,
    say: Say = print,
) -> DemoReport:
    """Run the demo (see the module docstring) and return its report.

    Args:
        directory: the demo's directory: SQLite shard files (when ``urls`` is
            None), the demo's map (``shardmap.json``) and, for SQLite, a
            ``shardbill.toml`` describing the shards.
        urls: shard name -> URL on servers; all but the last start, the last
            is added online (one URL: no resharding). None: SQLite files.
        tables: the aggregate tables (default ``billing_tables()``).
        engine: the rules engine (default the comms example).
        settings: the writer settings.
        events: distinct events in the day.
        seed: the traffic seed.
        model: the traffic model.
        batch_size: events per batch (at most a tenth of ``events``).
        slots: the slot count of the demo's shard map.
        reset: drop the demo's tables on the servers first (else they must be empty).
        write_config: write ``directory/shardbill.toml`` naming the shards and the
            demo's map (no inline password), for ``map show``, ``audit`` and the rest.
        progress: draw progress bars (default: when a person is watching).
        say: where progress messages go (a line at a time).

    Returns:
        The report; :attr:`DemoReport.exact` says whether the audit matched.

    Raises:
        ConfigurationError: the servers' tables hold data (and ``reset`` is false).
    """
    from shardbill.rules import comms

    began = time.perf_counter()
    batch_size = max(1, min(batch_size, events // 10))  # at least ten batches: phases need them
    tables = tuple(tables or billing_tables())
    engine = engine or comms.engine()
    settings = settings or WriterSettings()
    directory.mkdir(parents=True, exist_ok=True)
    sqlite = urls is None
    shard_urls = dict(demo_shards(directory) if urls is None else urls)
    names = list(shard_urls)
    start, spare = (names[:-1], names[-1]) if len(names) > 1 else (names, None)
    if sqlite:
        _remove_demo_files(directory, names)
    else:
        _remove_demo_files(directory, ())
        ensure_databases(shard_urls, say)
    stats = Stats()
    with PooledProvider(shard_urls) as provider:
        if not sqlite:
            _prepare_servers(provider, names, tables, settings.system_tables, reset=reset)
        store = JsonFileMapStore(directory / "shardmap.json")
        store.publish(ShardMap.create(start, slots=slots), expected_epoch=None)
        if write_config:
            _write_demo_config(directory, shard_urls, say)
        traffic = Traffic(
            model=model,
            events=events,
            seed=seed,
            duplicate_fraction=_DUPLICATES,
            reorder_window=_REORDER,
        )
        with AggregationWriter(
            shard_map=store,
            provider=provider,
            tables=tables,
            settings=settings,
            observer=stats,
            clock=traffic.end.timestamp,  # the demo's day is dated: its clock goes with it
        ) as writer:
            writer.ensure_schema()
            pipeline = Pipeline(engine=engine, writer=writer)
            tally = _Tally()
            expected_deliveries = round(events * (1 + _DUPLICATES))
            with Progress(
                "writing", total=expected_deliveries, unit="events", enabled=progress
            ) as bar:
                batches = traffic.batches(batch_size)
                first_part = round(expected_deliveries * (1 - _ONLINE))
                _write(pipeline, _until(batches, first_part), tally, bar)
            replay = _Tally()
            replayed = round(events * _REPLAY)
            _write(
                pipeline,
                _chunks(itertools.islice(traffic.distinct(), replayed), batch_size),
                replay,
                Progress("replaying", total=0, enabled=False),
            )
            with Progress(
                "writing while resharding", total=expected_deliveries - tally.deliveries,
                unit="events", enabled=progress,
            ) as bar:  # fmt: skip
                before = tally.deliveries
                stop = threading.Event()
                outcome = _reshard_online(
                    store=store,
                    provider=provider,
                    tables=tables,
                    system_tables=settings.system_tables,
                    new_shard=spare,
                    write_rest=lambda: _write(pipeline, batches, tally, bar, stop),
                    say=say,
                    bar=bar,
                    stop=stop,
                )
        final = store.load()
        report = audit(
            traffic.distinct(),
            engine=engine,
            tables=tables,
            provider=provider,
            shard_map=final,
        )
    p50, p99 = stats.percentile(0.5), stats.percentile(0.99)
    return DemoReport(
        backend="SQLite" if sqlite else _family(shard_urls),
        location=f"{directory}/" if sqlite else ", ".join(str(u) for u in shard_urls.values()),
        model=str(TrafficModel(model)),
        seed=seed,
        events=events,
        deliveries=tally.deliveries + replay.deliveries,
        applied=tally.applied,
        duplicates_skipped=tally.duplicates + replay.duplicates,
        replayed=replay.deliveries,
        replay_applied=replay.applied,
        rejected=tally.rejected,
        failed=tally.failed + replay.failed,
        seconds=tally.seconds,
        commits=sum(stats.commits.values()),
        commit_p50_ms=None if p50 is None else p50 * 1000,
        commit_p99_ms=None if p99 is None else p99 * 1000,
        rows_per_shard=report.rows_per_shard,
        slots_per_shard=dict(final.slot_counts),
        map_epoch=final.epoch,
        resharding=outcome,
        written_while_resharding=tally.deliveries - before,
        wall_seconds=time.perf_counter() - began,
        audit_rows=report.expected_rows,
        differences=tuple(d.describe() for d in report.differences[:20]),
        difference_count=len(report.differences),
    )


def _family(urls: Mapping[str, ConnectionURL]) -> str:
    return "MySQL/MariaDB" if all(u.family == "mysql" for u in urls.values()) else "mixed"


def _prepare_servers(
    provider: ConnectionProvider,
    shards: Sequence[str],
    tables: Sequence[AggregateTable],
    system: SystemTables,
    *,
    reset: bool,
) -> None:
    names = table_names(tables, system)
    if reset:
        drop_tables(provider, shards, names)
        return
    occupied = _occupied(provider, shards, names)
    if occupied:
        raise ConfigurationError(
            "the demo needs empty shards, but these tables hold rows: "
            + ", ".join(occupied[:6])
            + (" ..." if len(occupied) > 6 else "")
            + "; point it at fresh databases, or pass --reset to DROP the demo's tables "
            f"({', '.join(names)}) first"
        )


def _until(batches: Iterator[list[UsageEvent]], deliveries: int) -> Iterator[list[UsageEvent]]:
    """Batches from ``batches`` until about ``deliveries`` events were taken (the rest stay)."""
    taken = 0
    while taken < deliveries:
        batch = next(batches, None)
        if batch is None:
            return
        taken += len(batch)
        yield batch


def _chunks(events: Iterable[UsageEvent], size: int) -> Iterator[list[UsageEvent]]:
    it = iter(events)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _reshard_online(
    *,
    store: JsonFileMapStore,
    provider: ConnectionProvider,
    tables: Sequence[AggregateTable],
    system_tables: SystemTables,
    new_shard: str | None,
    write_rest: Callable[[], None],
    say: Say,
    bar: Progress | None = None,
    stop: threading.Event | None = None,
) -> ReshardOutcome:
    """Add ``new_shard`` to the live map while ``write_rest`` keeps writing.

    On Ctrl-C (or any error) in the resharder, ``stop`` is set, so that
    ``write_rest`` stops at its next batch instead of writing the rest of
    the day before the demo can end.

    Once the writes are done, the writing ``bar`` gives way to a bar of the
    slots the reshard has finished (when bars are drawn at all).

    The writer routes with ``store`` as its map source, so a shard that fences
    a moved slot makes it reload the map and write to the new owner. The
    resharder (:class:`shardbill.resharding.Resharder`) runs here in the
    calling thread while the rest of the day is written from a second thread.

    Without a resharder (an older shardbill), this says ``resharding: not
    available yet`` and only writes the rest.
    """
    from shardbill import resharding

    resharder = getattr(resharding, "Resharder", None)
    if new_shard is None:
        write_rest()
        return ReshardOutcome(status="skipped (no spare shard)")
    if resharder is None:
        say("resharding: not available yet")
        write_rest()
        return ReshardOutcome(status="not available yet")
    current = store.load()
    target = current.add_shard(new_shard)
    slots_bar: list[Progress] = []

    def on_progress(report: resharding.ReshardReport) -> None:
        if bar is None or (not bar.enabled and not slots_bar) or not writing.done():
            return
        if not slots_bar:
            bar.close()
            slots_bar.append(
                Progress("resharding", total=report.slots_total, unit="slots", enabled=True)
            )
        slots_bar[0].update(report.slots_done)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shardbill-demo") as lane:
        writing = lane.submit(write_rest)
        try:
            progress = resharder(
                store=store,
                provider=provider,
                tables=tables,
                system_tables=system_tables,
                on_progress=on_progress,
            ).run(target)
        except BaseException:
            if stop is not None:
                stop.set()
            raise
        finally:
            writing.result()
            for shown in slots_bar:
                shown.close()
    return ReshardOutcome(
        status="done",
        slots_moved=len(progress.plan.moves),
        rows_moved=progress.rows_moved,
        shard=new_shard,
        seconds=progress.seconds,
    )
