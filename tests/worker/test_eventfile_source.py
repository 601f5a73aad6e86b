"""An events file (or standard input) as a finite worker source, read by ``ingest``'s reader.

The worker's loop runs a :class:`~shardbill.worker.eventfile.FileSource` to its
end and stops by itself; each line's fate matches what ``ingest`` does with the
same file (the same lines set aside at the same stages, the same totals).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardbill import AggregationWriter, Pipeline, ShardMap
from shardbill.ingest import Format, ingest
from shardbill.retry import RetryPolicy
from shardbill.rules import UsageEvent, comms
from shardbill.tables.catalog import billing_tables
from shardbill.worker import MemoryDeadLetters, Worker, WorkerSettings, WorkerSummary
from shardbill.worker.eventfile import FileSource
from shardbill.workloads.synthetic import Traffic
from shardbill.writer import WriterSettings
from tests.support.backends import Backend, make_backend
from tests.support.clock import recent_start
from tests.support.oracle import actual_rows, expected_rows

# No exit_when_idle: a finite source ends the run by itself.
SETTINGS = {"linger": 0.0, "poll_timeout": 0.001, "retry_backoff": 0.001}
# ingest's stages as the worker's dead-letter stages.
STAGES = {"parse": "decode", "event": "decode", "conflict": "conflict", "rules": "rules"}
STAGES["writer"] = "writer"


@pytest.fixture
def two(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Backend, Backend]]:
    """Two independent deployments of three SQLite shards: one for the worker, one for ingest."""
    first = make_backend("sqlite", 3, tmp_path / "worker", request)
    second = make_backend("sqlite", 3, tmp_path / "ingest", request)
    yield next(first), next(second)
    for rest in (first, second):
        next(rest, None)


def _pipeline(backend: Backend) -> Pipeline:
    writer = AggregationWriter(
        shard_map=ShardMap.create(backend.shards, slots=64),
        provider=backend.provider,
        tables=billing_tables(),
    )
    writer.ensure_schema()
    return Pipeline(engine=comms.engine(), writer=writer)


def _events(n: int) -> list[UsageEvent]:
    return list(
        Traffic(model="skewed", events=n, seed=23, accounts=40, start=recent_start()).distinct()
    )


def _as_dict(event: UsageEvent) -> dict[str, object]:
    return {
        "event_id": event.event_id,
        "account": event.account,
        "time": event.time.isoformat(),
        "product": event.product,
        "quantity": str(event.quantity),
        "dimensions": dict(event.dimensions),
    }


def _day(tmp_path: Path) -> tuple[Path, list[UsageEvent]]:
    good = _events(120)
    lines = [json.dumps(_as_dict(e)) for e in good]
    lines.insert(5, "oops")  # line 6: not JSON
    lines.insert(9, json.dumps(_as_dict(good[2])))  # line 10: a repeat of line 3
    lines.insert(14, "")  # line 15: blank
    fax = {**_as_dict(good[0]), "event_id": "fax-1", "product": "fax"}
    lines.insert(20, json.dumps(fax))  # line 21: no rule for fax
    lines.insert(30, json.dumps({**_as_dict(good[1]), "quantity": "77"}))  # line 31: conflict
    lines.insert(40, json.dumps({"event_id": "x-1", "account": 1}))  # line 41: not an event
    path = tmp_path / "day.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, good


def _run(
    source: FileSource, pipeline: Pipeline, batch_size: int
) -> tuple[WorkerSummary, list[tuple[int, str]]]:
    sink = MemoryDeadLetters()
    with pipeline.writer:
        summary = Worker(
            source=source,
            processor=pipeline,
            dead_letters=sink,
            settings=WorkerSettings(batch_size=batch_size, **SETTINGS),
        ).run()
    return summary, [(d.record.offset, d.stage.value) for d in sink.letters]


def test_a_file_runs_to_its_end_with_the_fates_ingest_gives_its_lines(
    two: tuple[Backend, Backend], tmp_path: Path
) -> None:
    """The worker on a FileSource stops at the file's end by itself; its dead letters are
    ingest's rejected lines (same line numbers, matching stages), its totals ingest's and
    the oracle's, every line is committed, and the repeat is counted, not sent."""
    path, good = _day(tmp_path)
    on_worker, on_ingest = two
    source = FileSource(path)
    summary, letters = _run(source, _pipeline(on_worker), batch_size=16)
    pipeline = _pipeline(on_ingest)
    with pipeline.writer:
        reference = ingest(path, pipeline=pipeline, fmt=Format.JSONL, account_as_int=False,
                           batch_size=16)  # fmt: skip
    rejects = [
        json.loads(line)
        for line in Path(reference.rejects_path).read_text(encoding="utf-8").splitlines()
    ]
    assert sorted(letters) == [(r["line"], STAGES[r["stage"]]) for r in rejects]
    assert [line for line, _ in sorted(letters)] == [6, 21, 31, 41]
    assert summary.applied == reference.applied == len(good)
    assert summary.uncommitted == 0
    assert source.repeats == reference.repeats == 1
    assert source.committed == len(good) + 6 + 1  # the next line to read: past the last one
    oracle = expected_rows(comms.engine().price_batch(good).charges)
    assert actual_rows(on_worker) == oracle
    assert actual_rows(on_ingest) == oracle


def test_a_second_run_of_the_same_file_adds_nothing(
    two: tuple[Backend, Backend], tmp_path: Path
) -> None:
    """Running the same file again through the worker: every event a duplicate, the same
    lines set aside, the totals unchanged."""
    path, good = _day(tmp_path)
    backend = two[0]
    first, letters = _run(FileSource(path), _pipeline(backend), batch_size=50)
    assert first.applied == len(good)
    rows = actual_rows(backend)
    again, letters_again = _run(FileSource(path), _pipeline(backend), batch_size=7)
    assert (again.applied, again.duplicates) == (0, len(good))
    assert sorted(letters_again) == sorted(letters)
    assert actual_rows(backend) == rows


def test_csv_from_a_stream_with_no_name(two: tuple[Backend, Backend], tmp_path: Path) -> None:
    """A CSV stream (standard input, here a BytesIO) named ``-``: the records' partition is
    ``("-", 0)`` and their offsets the records' first line numbers; a bad record is a dead
    letter and the rest land exactly."""
    good = _events(30)
    names = sorted({name for e in good for name in e.dimensions})
    header = ",".join(["event_id", "account", "time", "product", "quantity"])
    header += "".join(f",dimensions.{n}" for n in names) + "\n"
    rows = [
        f"{e.event_id},{e.account},{e.time.isoformat()},{e.product},{e.quantity}"
        + "".join(f",{e.dimensions.get(n, '')}" for n in names)
        + "\n"
        for e in good
    ]
    rows.insert(3, "only,three,fields\n")  # line 5 (the header is line 1)
    stream = io.BytesIO((header + "".join(rows)).encode())
    backend = two[0]
    source = FileSource(stream, fmt="csv", account_as_int=True)
    summary, letters = _run(source, _pipeline(backend), batch_size=8)
    assert letters == [(5, "decode")]
    assert summary.applied == len(good)
    assert source.partition == ("-", 0)
    assert actual_rows(backend) == expected_rows(comms.engine().price_batch(good).charges)


def test_a_stream_needs_its_format_and_a_path_without_a_known_extension_too(
    tmp_path: Path,
) -> None:
    """No format for a stream, or a path whose extension says none: a ConfigurationError
    saying to give ``fmt``."""
    from shardbill.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="give fmt"):
        FileSource(io.BytesIO(b""))
    with pytest.raises(ConfigurationError, match=r"--format jsonl\|csv"):
        FileSource(tmp_path / "events.txt")


class _SpinGuard:
    """A fake monotonic clock that only a sleep moves; reading it a million times without a
    sleep means the loop spins, and fails the test instead of hanging it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        if self.reads > 1_000_000:
            raise AssertionError("the worker's loop spun without waiting")
        return self.now

    def sleep(self, seconds: float) -> None:
        self.reads = 0
        self.now += seconds


def test_a_shard_down_at_the_end_of_the_file_is_waited_for_then_the_run_ends_exact(
    two: tuple[Backend, Backend], tmp_path: Path
) -> None:
    """The file is read to its end while a shard is down: the worker waits (the source sleeps
    its polls, the loop does not spin) through the retry rounds, and once the shard is back
    every event lands exactly and the run ends by itself."""
    from tests.support.outage import Outage

    path, good = _day(tmp_path)
    backend = two[0]
    outage = Outage(backend.provider)
    writer = AggregationWriter(
        shard_map=ShardMap.create(backend.shards, slots=64),
        provider=outage,
        tables=billing_tables(),
        settings=WriterSettings(retry=RetryPolicy(max_attempts=1, base_delay=0.0)),
    )
    writer.ensure_schema()
    pipeline = Pipeline(engine=comms.engine(), writer=writer)
    outage.down.add(backend.shards[1])
    clock = _SpinGuard()

    def on_batch(summary: WorkerSummary) -> None:
        if summary.retries >= 3:
            outage.down.clear()

    with pipeline.writer:
        summary = Worker(
            source=FileSource(path, sleep=clock.sleep),
            processor=pipeline,
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(
                batch_size=500, linger=0.0, poll_timeout=0.05, retry_backoff=0.5
            ),
            clock=clock,
            on_batch=on_batch,
        ).run()
    assert summary.retries >= 3
    assert (summary.applied, summary.uncommitted) == (len(good), 0)
    assert actual_rows(backend) == expected_rows(comms.engine().price_batch(good).charges)


def test_set_aside_makes_the_events_of_a_failed_shard_dead_letters_instead_of_retrying(
    two: tuple[Backend, Backend], tmp_path: Path
) -> None:
    """With ``shard_failures="set_aside"`` an event whose shard fails past the writer's
    retries becomes a dead letter of stage ``failed`` naming the shard's error and what to do,
    nothing is retried, the run ends by itself, and every other event lands exactly; the
    same file run again once the shard is back applies exactly the missing events."""
    from tests.support.outage import Outage

    path, good = _day(tmp_path)
    backend = two[0]
    outage = Outage(backend.provider)
    writer = AggregationWriter(
        shard_map=ShardMap.create(backend.shards, slots=64),
        provider=outage,
        tables=billing_tables(),
        settings=WriterSettings(retry=RetryPolicy(max_attempts=1, base_delay=0.0)),
    )
    writer.ensure_schema()
    pipeline = Pipeline(engine=comms.engine(), writer=writer)
    outage.down.add(backend.shards[1])
    sink = MemoryDeadLetters()
    with pipeline.writer:
        summary = Worker(
            source=FileSource(path),
            processor=pipeline,
            dead_letters=sink,
            settings=WorkerSettings(batch_size=16, shard_failures="set_aside", **SETTINGS),
        ).run()
        failed = [d for d in sink.letters if d.stage.value == "failed"]
        assert failed
        assert summary.retries == 0
        assert summary.uncommitted == 0
        assert summary.applied == len(good) - len(failed)
        assert all("s1" in d.reason and "again" in d.reason for d in failed)
        assert {d.event_id for d in failed} <= {e.event_id for e in good}
        outage.down.clear()
        again = Worker(
            source=FileSource(path),
            processor=pipeline,
            dead_letters=MemoryDeadLetters(),
            settings=WorkerSettings(batch_size=16, shard_failures="set_aside", **SETTINGS),
        ).run()
    assert again.applied == len(failed)
    assert actual_rows(backend) == expected_rows(comms.engine().price_batch(good).charges)


def test_shard_failures_takes_retry_or_set_aside() -> None:
    """Any other value is refused naming the field, the value and the choices."""
    with pytest.raises(ValueError, match=r"'shard_failures' must be 'retry' or 'set_aside'"):
        WorkerSettings(shard_failures="drop")  # type: ignore[arg-type]


def test_batches_of_events_leave_the_lines_set_aside_out_of_the_count(
    two: tuple[Backend, Backend], tmp_path: Path
) -> None:
    """With ``batch_counts="events"`` (and no linger) every batch but the last has exactly
    ``batch_size`` events, however many lines around them are set aside; with the default
    (``"records"``) the lines set aside take room in the batch."""
    path, good = _day(tmp_path)
    sizes: dict[str, list[int]] = {"events": [], "records": []}
    for counts, backend in zip(("events", "records"), two, strict=True):
        done = [0]

        def on_batch(summary: WorkerSummary, counts: str = counts, done: list[int] = done) -> None:
            settled = summary.applied + summary.duplicates + summary.free
            settled += summary.dead_letters.get("rules", 0)  # the fax event: priced, refused
            if settled > done[0]:
                sizes[counts].append(settled - done[0])
                done[0] = settled

        pipeline = _pipeline(backend)
        with pipeline.writer:
            Worker(
                source=FileSource(path),
                processor=pipeline,
                dead_letters=MemoryDeadLetters(),
                settings=WorkerSettings(
                    batch_size=16, batch_counts=counts, **{**SETTINGS, "linger": float("inf")}
                ),
                on_batch=on_batch,
            ).run()
    events = len(good) + 1  # the good ones and the fax event no rule prices
    assert sizes["events"] == [16] * (events // 16) + [events % 16]
    assert sizes["records"] != sizes["events"]
    assert sum(sizes["records"]) == sum(sizes["events"]) == events


def test_batch_counts_takes_records_or_events() -> None:
    """Any other value is refused naming the field and the choices."""
    with pytest.raises(ValueError, match=r"'batch_counts' must be 'records' or 'events'"):
        WorkerSettings(batch_counts="bytes")  # type: ignore[arg-type]
