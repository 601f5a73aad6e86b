"""A directory of JSON Lines files as the worker's source: offsets are file + line, durable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardbill import AggregationWriter, Pipeline, ShardMap
from shardbill.errors import ConfigurationError
from shardbill.rules import UsageEvent, comms
from shardbill.tables.catalog import billing_tables
from shardbill.worker import MemoryDeadLetters, Worker, WorkerSettings, WorkerSummary
from shardbill.worker.files import DirectorySource
from shardbill.workloads.synthetic import Traffic
from tests.support.backends import Backend, make_backend
from tests.support.oracle import actual_rows, expected_rows

FAST = {"linger": 0.0, "poll_timeout": 0.001, "exit_when_idle": 0.02}


@pytest.fixture
def sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Two SQLite shards."""
    yield from make_backend("sqlite", 2, tmp_path / "shards", request)


def _line(event: UsageEvent) -> str:
    return json.dumps(
        {
            "event_id": event.event_id,
            "account": event.account,
            "time": event.time.isoformat(),
            "product": event.product,
            "quantity": str(event.quantity),
            "dimensions": dict(event.dimensions),
        }
    )


def _write(path: Path, events: list[UsageEvent], *, mode: str = "w") -> None:
    with path.open(mode, encoding="utf-8") as out:
        out.writelines(_line(e) + "\n" for e in events)


def _run(backend: Backend, directory: Path) -> WorkerSummary:
    writer = AggregationWriter(
        shard_map=ShardMap.create(backend.shards, slots=64),
        provider=backend.provider,
        tables=billing_tables(),
    )
    with writer:
        writer.ensure_schema()
        return Worker(
            source=DirectorySource(directory),
            processor=Pipeline(engine=comms.engine(), writer=writer),
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(batch_size=25, **FAST),
        ).run()


def test_a_restart_resumes_at_the_first_line_not_done_with_exact_totals(
    sqlite: Backend, tmp_path: Path
) -> None:
    """Two files read and committed to their ends; lines appended to one and a new file: a new
    worker reads only those (no duplicates), and the totals match an independent pricing."""
    events = list(Traffic(model="skewed", events=300, seed=8, accounts=20).distinct())
    directory = tmp_path / "in"
    directory.mkdir()
    _write(directory / "a.jsonl", events[:100])
    _write(directory / "b.jsonl", events[100:180])
    with (directory / "b.jsonl").open("a", encoding="utf-8") as out:
        out.write('{"event_id": "half')  # no newline: not read yet
    first = _run(sqlite, directory)
    assert (first.records, first.applied, first.uncommitted) == (180, 180, 0)
    assert DirectorySource(directory).committed == {"a.jsonl": 100, "b.jsonl": 80}
    with (directory / "b.jsonl").open("a", encoding="utf-8") as out:  # finish the line
        out.write('", "account": 1}\n')
    _write(directory / "a.jsonl", events[180:220], mode="a")
    _write(directory / "c.jsonl", events[220:])
    second = _run(sqlite, directory)
    assert (second.records, second.applied, second.duplicates) == (121, 120, 0)
    assert second.dead_letters == {"decode": 1}
    assert DirectorySource(directory).committed == {
        "a.jsonl": 140,
        "b.jsonl": 81,
        "c.jsonl": 80,
    }
    assert actual_rows(sqlite) == expected_rows(comms.engine().price_batch(events).charges)


def test_a_damaged_offsets_file_is_refused_naming_it_and_the_fix(tmp_path: Path) -> None:
    """An offsets file that is not file -> line index stops the source before it reads."""
    (tmp_path / ".shardbill-offsets.json").write_text('{"a.jsonl": -1}')
    with pytest.raises(ConfigurationError, match="remove it to read every file"):
        DirectorySource(tmp_path)


class _CrashError(Exception):
    """The process dying after a batch's shard commits, before its offsets are committed."""


def test_a_crash_after_the_shard_commits_redelivers_that_batch_as_duplicates_only(
    sqlite: Backend, tmp_path: Path
) -> None:
    """The third batch is written to the shards, then the worker dies before committing its
    offsets: the next worker reads that batch again (all duplicates), then the rest; the
    totals are exact."""
    events = list(Traffic(model="uniform", events=150, seed=9, accounts=15).distinct())
    directory = tmp_path / "in"
    directory.mkdir()
    _write(directory / "a.jsonl", events)
    writer = AggregationWriter(
        shard_map=ShardMap.create(sqlite.shards, slots=64),
        provider=sqlite.provider,
        tables=billing_tables(),
    )
    pipeline = Pipeline(engine=comms.engine(), writer=writer)
    batches = []

    class Dying:
        def process(self, items: object) -> object:
            result = pipeline.process(items)  # type: ignore[arg-type]
            batches.append(result)
            if len(batches) == 3:
                raise _CrashError
            return result

    with writer:
        writer.ensure_schema()
        worker = Worker(
            source=DirectorySource(directory),
            processor=Dying(),  # type: ignore[arg-type]
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(batch_size=25, **FAST),
        )
        with pytest.raises(_CrashError):
            worker.run()
    assert DirectorySource(directory).committed == {"a.jsonl": 50}
    second = _run(sqlite, directory)
    assert (second.records, second.duplicates, second.applied) == (100, 25, 75)
    assert DirectorySource(directory).committed == {"a.jsonl": 150}
    assert actual_rows(sqlite) == expected_rows(comms.engine().price_batch(events).charges)


def test_an_empty_directory_counts_as_assigned_so_exit_when_idle_stops_the_worker(
    sqlite: Backend, tmp_path: Path
) -> None:
    """With no file yet the directory is still this worker's whole input: ``exit_when_idle``
    ends the run (it counts from the first assignment, which a directory gives at once)."""
    import threading

    directory = tmp_path / "empty"
    directory.mkdir()
    done: list[WorkerSummary] = []
    runner = threading.Thread(target=lambda: done.append(_run(sqlite, directory)), daemon=True)
    runner.start()
    runner.join(timeout=60)
    assert done, "the worker on an empty directory did not stop within 60 s"
    assert (done[0].records, done[0].rebalances) == (0, 1)
