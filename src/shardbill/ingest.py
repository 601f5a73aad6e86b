"""Usage events from files: JSON Lines or CSV in, exactly-once aggregates out, bad lines set aside.

:func:`read_events` reads a file record by record (a line of JSON Lines, a
record of CSV) and yields, in file order, one of:

* :class:`FileEvent`: a valid event seen for the first time in this file;
* :class:`Repeat`: the same event again (same id, same content): delivered
  twice, counted once;
* :class:`RejectedLine`: a record that cannot be used, with its line number
  and the reason: not JSON / not UTF-8 (``parse``), not a valid event
  (``event``), or an event id seen earlier in the file with *different*
  content (``conflict``: an id names one event; the first one wins).

:func:`ingest` feeds the events through a :class:`~shardbill.pipeline.Pipeline`
in batches, on the stream worker's loop (:class:`~shardbill.worker.Worker`
on a :class:`~shardbill.worker.FileSource`), and writes every line that was
not applied for a reason in the data to a *rejects file* (JSON Lines:
``line``, ``event_id``, ``stage``, ``reason``, ``text``), adding the stages
``rules`` (a billing rule refused the event), ``writer`` (a charge does not
fit the aggregate tables), ``conflict`` (the ledger holds this id with
different content, from an earlier file) and ``failed`` (a shard stayed
unavailable past the retry budget: run the file again). Good lines are
written; re-running the same file changes nothing (the ledger reports every
event as a duplicate) and rejects the same lines again.

Formats:

JSON Lines (``.jsonl``, ``.ndjson``, ``.json``)
    one object per line, the fields of :meth:`shardbill.rules.UsageEvent.from_dict`;
    numbers with a fraction are read exactly (as ``Decimal``). Blank lines
    are skipped. A line with a key twice, nested more than 32 levels deep,
    or longer than 1 MiB is rejected (``parse``); the next line is read.
CSV (``.csv``)
    a header row naming the fields, each once; dimensions as ``dimensions.NAME``
    columns (an empty cell means "no such dimension"); every value is text.
    A header that names a column twice is rejected and no record is read.

Account ids: with an integer account column (``account_type = "bigint"``)
a quoted account (CSV always) is parsed as an integer (``account_as_int``).

Memory: the event ids of the file are kept (to find repeats and conflicts
across batches), about 100 bytes per event.
"""

from __future__ import annotations

import csv
import enum
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import attrs

from shardbill._parsing import json_loads
from shardbill.errors import (
    ConfigurationError,
    FatalDatabaseError,
    ShardbillError,
    _rebuild_error,
)
from shardbill.pipeline import Pipeline
from shardbill.retry import describe
from shardbill.rules import UsageEvent

if TYPE_CHECKING:
    from shardbill.pipeline import PipelineResult
    from shardbill.worker import DeadLetter, FileSource, WorkerSummary

__all__ = [
    "FileEvent",
    "Format",
    "IngestInterrupted",
    "IngestSummary",
    "RejectedLine",
    "Repeat",
    "Stage",
    "detect_format",
    "events_of",
    "ingest",
    "read_events",
    "read_stream",
]

Stage = Literal["parse", "event", "conflict", "rules", "writer", "failed"]
"""Why a line was not applied (see the module docstring)."""

log = logging.getLogger("shardbill.ingest")

_MAX_TEXT = 10_000  # characters of a rejected line kept in the rejects file
MAX_LINE_BYTES = 1024 * 1024
"""The longest line read (1 MiB): a longer one is rejected unparsed, and reading goes on."""
# What the CSV reader sees instead of an oversized line: one cell it cannot mistake for a
# record's end or a quote (the record is rejected by line number whatever the reader does).
_OVERSIZED = "\x00\n"
_JSON_SPACE = " \t\r\n"  # the whitespace JSON allows around a value


class Format(enum.StrEnum):
    """An events file format."""

    JSONL = "jsonl"
    CSV = "csv"


_SUFFIXES = {".jsonl": Format.JSONL, ".ndjson": Format.JSONL, ".json": Format.JSONL}
_SUFFIXES[".csv"] = Format.CSV


def detect_format(path: str | os.PathLike[str], explicit: str | None = None) -> Format:
    """The format of an events file: ``explicit``, else from the file name's extension.

    Args:
        path: the file.
        explicit: ``"jsonl"`` or ``"csv"`` (the ``--format`` option), or None.

    Returns:
        The format.

    Raises:
        ConfigurationError: an unknown format or extension, saying how to name it.
    """
    if explicit is not None:
        try:
            return Format(explicit.lower())
        except ValueError:
            raise ConfigurationError(
                f"--format must be 'jsonl' or 'csv', got {explicit!r}"
            ) from None
    suffix = Path(path).suffix.lower()
    found = _SUFFIXES.get(suffix)
    if found is None:
        raise ConfigurationError(
            f"{path}: cannot tell the format from the extension {suffix or '(none)'!r}; name "
            "the file .jsonl or .csv, or pass --format jsonl|csv"
        )
    return found


@attrs.frozen(kw_only=True)
class FileEvent:
    """A valid event, the first of its id in the file (``text``: the record as read)."""

    line: int
    event: UsageEvent
    text: str


@attrs.frozen(kw_only=True)
class Repeat:
    """The same event (same id, same content) again at ``line``; first seen at ``first_line``."""

    line: int
    event_id: str
    first_line: int


@attrs.frozen(kw_only=True)
class RejectedLine:
    """A line not applied, with why. ``text`` is the line as read (cut at 10,000 characters)."""

    line: int
    event_id: str | None
    stage: Stage
    reason: str
    text: str

    def to_dict(self) -> dict[str, object]:
        """The rejects-file object of this line.

        Returns:
            ``{"line", "event_id", "stage", "reason", "text"}``.
        """
        return {
            "line": self.line,
            "event_id": self.event_id,
            "stage": self.stage,
            "reason": self.reason,
            "text": self.text,
        }


Item = FileEvent | Repeat | RejectedLine


# --------------------------------------------------------------------------- reading


class _Lines:
    """Physical lines of a binary file as text, counting bytes and remembering bad lines.

    A line longer than :data:`MAX_LINE_BYTES` is never held whole: its first
    part is kept for the rejects file, the rest is skipped, and the line's
    number goes into ``oversized``.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.bytes_read = 0
        self.number = 0
        self.bad: set[int] = set()
        self.oversized: dict[int, int] = {}  # line number -> its length in bytes
        self.recent: list[str] = []  # lines since the last CSV record, for its raw text

    def __iter__(self) -> Iterator[str]:
        while raw := self._handle.readline(MAX_LINE_BYTES + 1):
            self.bytes_read += len(raw)
            self.number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                length = len(raw)
                while rest := self._handle.readline(MAX_LINE_BYTES):
                    self.bytes_read += len(rest)
                    length += len(rest)
                    if rest.endswith(b"\n"):
                        break
                self.oversized[self.number] = length
                self.recent.append(raw[:_MAX_TEXT].decode("utf-8", errors="replace"))
                yield _OVERSIZED
                continue
            try:
                text = raw.decode("utf-8-sig" if self.number == 1 else "utf-8")
            except UnicodeDecodeError:
                self.bad.add(self.number)
                text = raw.decode("utf-8", errors="replace")
            self.recent.append(text)
            yield text

    def too_long(self, first: int, last: int) -> str | None:
        """Why lines ``first``..``last`` cannot be used because one is oversized, or None."""
        for number in range(first, last + 1):
            if number in self.oversized:
                return (
                    f"line {number} is {self.oversized[number]} bytes long; the limit is "
                    f"{MAX_LINE_BYTES // (1024 * 1024)} MiB per line (the line was not parsed)"
                )
        return None


def _id_of(data: object) -> str | None:
    if isinstance(data, dict):
        value = data.get("event_id")
        if isinstance(value, str) and value:
            return value[:191]
    return None


def _parse_json(text: str) -> object:
    # Bounded depth and size, duplicated keys refused, NaN/Infinity refused.
    return json_loads(text, max_chars=MAX_LINE_BYTES, parse_float=Decimal)


Record = tuple[int, str, dict[str, object] | None, str | None]
"""(line number, text, the record's fields or None, why it cannot be read or None)."""


def _json_records(lines: _Lines) -> Iterator[Record]:
    for text in lines:
        number = lines.number
        too_long = lines.too_long(number, number)
        if too_long is not None:
            yield number, lines.recent[-1], None, too_long
            lines.recent.clear()
            continue
        lines.recent.clear()
        stripped = text.strip(_JSON_SPACE)  # not str.strip(): a line of U+0085 is no blank line
        if not stripped:
            continue
        if number in lines.bad:
            yield number, stripped, None, "the line is not valid UTF-8"
            continue
        try:
            data = _parse_json(stripped)
        except ValueError as exc:
            yield number, stripped, None, f"not valid JSON: {exc}"
            continue
        if not isinstance(data, dict):
            yield number, stripped, None, f"a line must be a JSON object, not {type(data).__name__}"
            continue
        yield number, stripped, data, None


def _csv_records(lines: _Lines) -> Iterator[Record]:
    reader = csv.reader(lines, strict=True)
    try:
        header = [h.strip() for h in next(reader)]
        problem = lines.too_long(1, reader.line_num)
    except StopIteration:
        return
    except csv.Error as exc:
        problem = lines.too_long(1, reader.line_num) or f"not valid CSV: {exc}"
        header = []
    twice = sorted({name for name in header if header.count(name) > 1})
    if problem is None and twice:
        problem = (
            f"the header names the column {twice[0]!r} twice (after trimming spaces); "
            "name each column once (which one would count is a guess)"
        )
    if problem is not None:
        text = "".join(lines.recent).rstrip("\r\n")[:_MAX_TEXT]
        yield 1, text, None, f"the CSV header cannot be used: {problem}; no record was read"
        return
    lines.recent.clear()
    previous = reader.line_num
    while True:
        first = previous + 1
        try:
            row = next(reader)
            error = None
        except StopIteration:
            return
        except csv.Error as exc:
            row, error = [], f"not valid CSV: {exc}"
        previous = reader.line_num
        text = "".join(lines.recent).rstrip("\r\n")
        lines.recent.clear()
        too_long = lines.too_long(first, previous)
        if too_long is not None:
            error = too_long
        if error is None and not any(cell.strip() for cell in row):
            continue  # a blank line
        if error is None and any(n in lines.bad for n in range(first, previous + 1)):
            error = "the record is not valid UTF-8"
        if error is None and len(row) != len(header):
            error = f"the record has {len(row)} fields, the header has {len(header)}"
        if error is not None:
            yield first, text, None, error
            continue
        # An empty dimension cell means the event has no such dimension.
        fields: dict[str, object] = {
            name: cell
            for name, cell in zip(header, row, strict=True)
            if not (cell == "" and name.startswith("dimensions."))
        }
        yield first, text, fields, None


def read_events(
    path: str | os.PathLike[str],
    *,
    fmt: Format,
    account_as_int: bool,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[Item]:
    """Read an events file; see the module docstring for what is yielded.

    Args:
        path: the file.
        fmt: its format.
        account_as_int: parse a text ``account`` as an integer.
        on_bytes: called with the number of bytes read so far (for progress).

    Yields:
        :class:`FileEvent`, :class:`Repeat` or :class:`RejectedLine`, in file order.

    Raises:
        OSError: the file cannot be opened.
    """
    with open(path, "rb") as handle:
        yield from read_stream(handle, fmt=fmt, account_as_int=account_as_int, on_bytes=on_bytes)


def read_stream(
    handle: IO[bytes],
    *,
    fmt: Format,
    account_as_int: bool,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[Item]:
    """:func:`read_events` on an open binary stream (standard input's ``sys.stdin.buffer``).

    The stream is read, not closed.

    Args:
        handle: the stream.
        fmt: its format.
        account_as_int: parse a text ``account`` as an integer.
        on_bytes: called with the number of bytes read so far.

    Yields:
        :class:`FileEvent`, :class:`Repeat` or :class:`RejectedLine`, in stream order.
    """
    seen: dict[str, tuple[int, int]] = {}  # event id -> (hash of the event, first line)
    lines = _Lines(handle)
    records = _json_records(lines) if fmt is Format.JSONL else _csv_records(lines)
    for number, text, data, error in records:
        if on_bytes is not None:
            on_bytes(lines.bytes_read)
        shown = text[:_MAX_TEXT]
        if data is None:
            assert error is not None  # noqa: S101 - _records gives one of the two
            yield RejectedLine(line=number, event_id=None, stage="parse", reason=error, text=shown)
            continue
        try:
            event = UsageEvent.from_dict(data, account_as_int=account_as_int)
        except (ShardbillError, ValueError, TypeError) as exc:
            yield RejectedLine(
                line=number, event_id=_id_of(data), stage="event", reason=str(exc), text=shown
            )
            continue
        digest = hash(event)
        first = seen.get(event.event_id)
        if first is None:
            seen[event.event_id] = (digest, number)
            yield FileEvent(line=number, event=event, text=shown)
        elif first[0] == digest:
            yield Repeat(line=number, event_id=event.event_id, first_line=first[1])
        else:
            yield RejectedLine(
                line=number,
                event_id=event.event_id,
                stage="conflict",
                reason=(
                    f"event id {event.event_id!r} was first seen at line {first[1]} with "
                    "different content; an id names one event (the first one is used): "
                    "give this event its own id"
                ),
                text=shown,
            )


def events_of(items: Iterable[Item]) -> Iterator[UsageEvent]:
    """The events to apply from :func:`read_events`' items (first occurrences only).

    Args:
        items: what :func:`read_events` yielded.

    Yields:
        The events.
    """
    for item in items:
        if isinstance(item, FileEvent):
            yield item.event


# --------------------------------------------------------------------------- ingesting


@attrs.frozen(kw_only=True)
class IngestSummary:
    """What :func:`ingest` did with a file.

    Attributes:
        path: the events file.
        rejects_path: the rejects file (written even when empty).
        records: records read (blank lines not counted).
        events: distinct valid events sent to the pipeline.
        applied: events applied by this run.
        duplicates: events applied before this run (the ledger skipped them).
        repeats: records repeating an earlier record of the file (counted once).
        free: events priced with no charge (nothing to write).
        rejected: lines rejected for their content (stages parse, event,
            conflict, rules, writer).
        failed: events not written because a shard stayed unavailable or refused.
        refused: of ``failed``, those whose shard refused for a reason retrying
            cannot fix (a :class:`~shardbill.errors.FatalDatabaseError`: access
            denied, TLS, a missing grant); fix it, then run the file again.
        seconds: wall time.
        interrupted: the run was stopped (Ctrl-C) before the end of the file.
        done_through_line: every line up to this one was handled (applied,
            skipped or in the rejects file); after an interruption, the lines
            after it are not (the batch in flight committed whole or not at all).
    """

    path: str
    rejects_path: str
    records: int = 0
    events: int = 0
    applied: int = 0
    duplicates: int = 0
    repeats: int = 0
    free: int = 0
    rejected: int = 0
    failed: int = 0
    refused: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    done_through_line: int = 0

    @property
    def exit_code(self) -> int:
        """0: all applied or there; 1: lines rejected; 2: a shard refused; 3: writes failed."""
        if self.refused:
            return 2
        if self.failed:
            return 3
        return 1 if self.rejected else 0

    def to_dict(self) -> dict[str, object]:
        """The summary as a JSON-ready dict.

        Returns:
            Every attribute, plus ``exit_code``.
        """
        out: dict[str, object] = attrs.asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["exit_code"] = self.exit_code
        return out


class IngestInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`ingest`; :attr:`summary` is what it did until then.

    A :class:`KeyboardInterrupt`, so code that does not know it still stops.

    Args:
        summary: the counts so far, with ``interrupted`` set.
    """

    def __init__(self, summary: IngestSummary) -> None:
        super().__init__(summary.path)
        self.summary = summary

    def __reduce__(self) -> tuple[Any, ...]:
        # cls(*args) would pass the path where the summary goes: rebuild without __init__.
        return (_rebuild_error, (type(self), self.args, dict(self.__dict__)))

    def describe(self) -> str:
        """What was written and how to resume, for a person (several lines)."""
        s = self.summary
        return (
            f"interrupted: {s.path} was handled through line {s.done_through_line:,} "
            f"({s.applied:,} events applied, {s.duplicates:,} already there, {s.rejected:,} "
            f"rejected -> {s.rejects_path}); the batch in flight after it committed whole or "
            "not at all.\nTo finish, run the same command again: the ledger skips every event "
            "already applied and writes the rest exactly once (the rejects file is rewritten "
            "from the start)."
        )


class _Recorder:
    """The pipeline as the worker's processor, keeping the last batch's result (for the
    rejects file's ``failed`` reasons)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self.last: PipelineResult | None = None

    def process(self, events: Iterable[UsageEvent]) -> PipelineResult:
        self.last = self._pipeline.process(events)
        return self.last


class _RejectsNotWrittenError(Exception):
    """The rejects file could not be written (an OSError the worker must not retry)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _RejectsFile:
    """The worker's dead-letter sink: each letter becomes a line of the rejects file."""

    def __init__(self, out: IO[str], source: FileSource, recorder: _Recorder) -> None:
        self._out = out
        self._source = source
        self._recorder = recorder
        self.rejected = 0
        self.failed = 0
        self.refused = 0
        self.event_rows = 0  # rows for events the pipeline saw (rules, writer, conflict, failed)

    def send(self, letters: Iterable[DeadLetter]) -> None:
        rows: list[RejectedLine] = []
        for letter in letters:
            line = letter.record.offset
            read = self._source.pop_rejected(line)
            if read is not None:  # the reader's own: parse, event, conflict in the file
                rows.append(read)
                continue
            self.event_rows += 1
            stage: Stage = letter.stage.value  # type: ignore[assignment]
            reason = letter.reason
            if letter.stage.value == "failed" and letter.event_id is not None:
                reason = self._failed(letter.event_id)
            rows.append(
                RejectedLine(
                    line=line,
                    event_id=letter.event_id,
                    stage=stage,
                    reason=reason,
                    text=letter.record.value.decode("utf-8", errors="replace"),
                )
            )
        try:
            for row in sorted(rows, key=lambda r: r.line):
                self._out.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
                if row.stage == "failed":
                    self.failed += 1
                else:
                    self.rejected += 1
            self._out.flush()
        except OSError as exc:
            raise _RejectsNotWrittenError(exc) from exc

    def _failed(self, event_id: str) -> str:
        result = self._recorder.last
        if result is None:  # pragma: no cover - a failed event comes from a processed batch
            return "not written; run the same file again"
        write = result.write
        errors = {s: r.error for s, r in write.shards.items() if r.error is not None}
        shards = sorted(s for s, r in write.shards.items() if event_id in r.failed)
        reason = "; ".join(f"shard {s}: {describe(errors[s])}" for s in shards if s in errors)
        fatal = any(isinstance(errors.get(s), FatalDatabaseError) for s in shards)
        if fatal:
            self.refused += 1
        return (
            f"not written ({reason or 'shard failed'}); "
            f"{'fix the cause, then ' if fatal else ''}run the same file again: the ledger "
            "applies what is missing exactly once"
        )


def ingest(
    path: str | os.PathLike[str],
    *,
    pipeline: Pipeline,
    fmt: Format,
    account_as_int: bool,
    batch_size: int,
    rejects_path: str | os.PathLike[str] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_events: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Price and write the events of a file in batches; set bad lines aside.

    Each batch is one transaction per shard (its ledger rows and its UPSERTs
    commit together), so an interruption leaves whole batches applied or not
    applied, and running the file again completes it exactly.

    The file runs on the stream worker's loop (:class:`~shardbill.worker.Worker`
    on a :class:`~shardbill.worker.FileSource`): the same batching, offset
    commits and shutdown as ``shardbill worker``, with batches of
    ``batch_size`` events (``batch_counts="events"``) and the events of a
    shard that stays down set aside (``shard_failures="set_aside"``).

    Args:
        path: the events file.
        pipeline: prices and writes.
        fmt: the file's format.
        account_as_int: parse a text ``account`` as an integer.
        batch_size: events per batch.
        rejects_path: where rejected lines go (default ``PATH.rejects.jsonl``).
        on_bytes: called with the bytes read so far (for progress).
        on_events: called after each batch with the distinct events settled so
            far (for an events/s rate). Each batch is also logged at INFO on
            the ``shardbill.ingest`` logger (``shardbill -v ingest``).

    Returns:
        The summary; its :attr:`~IngestSummary.exit_code` says whether anything was rejected.

    Raises:
        IngestInterrupted: Ctrl-C; it carries the summary so far.
        OSError: the events file cannot be read or the rejects file written.
    """
    from shardbill.worker import Worker, WorkerSettings
    from shardbill.worker.eventfile import FileSource

    source = Path(path)
    rejects = Path(rejects_path) if rejects_path is not None else Path(f"{source}.rejects.jsonl")
    started = time.perf_counter()
    with open(rejects, "w", encoding="utf-8") as out, open(source, "rb") as handle:
        files = FileSource(
            handle,
            fmt=fmt.value,
            account_as_int=account_as_int,
            name=source.name,
            on_bytes=on_bytes,
        )
        recorder = _Recorder(pipeline)
        sink = _RejectsFile(out, files, recorder)
        last = {"through": 0, "settled": 0, "applied": 0, "duplicates": 0, "rows": 0}
        last_at = [time.perf_counter()]

        def on_batch(progress: WorkerSummary) -> None:
            settled = progress.applied + progress.duplicates + progress.free + sink.event_rows
            through = max(last["through"], files.committed - 1)
            rows = sink.rejected + sink.failed
            now = time.perf_counter()
            log.info(
                "%s lines %d-%d: %d events, %d applied, %d already applied, %d lines set aside "
                "(%.0f ms)",
                source.name,
                last["through"] + 1,
                through,
                settled - last["settled"],
                progress.applied - last["applied"],
                progress.duplicates - last["duplicates"],
                rows - last["rows"],
                (now - last_at[0]) * 1000,
            )
            last.update(
                through=through,
                settled=settled,
                applied=progress.applied,
                duplicates=progress.duplicates,
                rows=rows,
            )
            last_at[0] = now
            if on_events is not None:
                on_events(settled)

        worker = Worker(
            source=files,
            processor=recorder,
            dead_letters=sink,
            settings=WorkerSettings(
                batch_size=batch_size,
                linger=float("inf"),  # a batch is full, or the file ended
                poll_timeout=0.001,
                batch_counts="events",
                shard_failures="set_aside",
            ),
            on_batch=on_batch,
        )

        def summary(*, interrupted: bool = False) -> IngestSummary:
            done = worker.summary()
            through = files.committed - 1 if files.committed else 0
            if not interrupted and files.exhausted and not done.uncommitted:
                through = max(through, files.last_line)  # trailing repeats are done too
            return IngestSummary(
                path=str(source),
                rejects_path=str(rejects),
                records=files.items,
                events=files.events,
                applied=done.applied,
                duplicates=done.duplicates,
                repeats=files.repeats,
                free=done.free,
                rejected=sink.rejected,
                failed=sink.failed,
                refused=sink.refused,
                seconds=time.perf_counter() - started,
                interrupted=interrupted,
                done_through_line=through,
            )

        try:
            worker.run()
        except KeyboardInterrupt:
            raise IngestInterrupted(summary(interrupted=True)) from None
        except _RejectsNotWrittenError as exc:
            raise exc.error from None
    return summary()
