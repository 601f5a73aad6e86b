"""The stream worker's loop: poll, decode, batch, price and write, then commit what is done.

One :class:`Worker` runs one consumer of a consumer group (a
:class:`~shardbill.worker.protocols.Source`):

1. **poll** up to the batch's room, waiting at most the rest of the linger
   time; every record received is *open* in the
   :class:`~shardbill.worker.offsets.OffsetTracker`;
2. **decode** each record (a record that is no event becomes a dead letter,
   stage ``decode``);
3. when the batch is full (``batch_size``) or the first record waited
   ``linger`` seconds, **process** it (rules, then the writer: one
   transaction per shard, ledger and UPSERTs together) and sort each record
   by its event's outcome:

   * applied, duplicate, or priced with no charge: **done**;
   * refused for its content (rules, writer, a conflicting id): a
     **dead letter**, done once the sink has stored it;
   * a shard failed past the writer's retry budget: **retry**: the record
     is held for a retry round after a backoff that doubles up to
     ``retry_backoff_max``, and only *its partition* is paused
     (:meth:`~shardbill.worker.protocols.Source.pause_partitions`): the other
     partitions keep flowing, and their events for healthy shards keep
     landing (an event of theirs for the failed shard is held too, and
     pauses its partition in turn). A record fetched from a paused partition
     before the pause took effect joins the held records unprocessed, so one
     account's events are still written in partition order;

4. **commit** per partition the offset below which every record is done.

Memory is bounded by configuration: the records held (fetched, waiting for
a retry, or for the dead-letter sink) never exceed ``max_held`` (default
twice ``batch_size``), because each poll asks for at most the room left
(and at most what fills the batch). While a failed shard's records wait,
the healthy partitions keep the rest of that room; when the waiting records
fill all of it, every partition is paused (nothing is fetched, the group is
still served) until a retry round frees some. :attr:`WorkerSummary.held` and
:attr:`WorkerSummary.peak_held` report it. The Kafka client's own prefetch
is outside this bound: librdkafka's ``queued.max.messages.kbytes`` (and
``fetch.max.bytes``) cap it; a paused partition is not fetched.

Offsets are committed only after the ledger holds the events below them, so
a crash at any point (before the write, between a shard's commit and the
offset commit, during the offset commit) makes the source deliver the
records again, and the ledger makes every redelivered event a duplicate:
at-least-once delivery, exactly-once effect.

Rebalances: when partitions are revoked (inside a poll), the pending batch
is processed once, what is done is committed, and the records of the revoked
partitions that are not done are dropped (their next owner reads them again
from the committed offset). Lost partitions are dropped without a commit.

Stopping: :meth:`Worker.stop` (safe from a signal handler) ends the loop; the
pending batch is then processed until done or ``drain_timeout``, what is
done is committed, and the source is closed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import attrs

from shardbill.errors import ShardbillError, StreamError
from shardbill.retry import describe
from shardbill.worker.decoding import json_decoder
from shardbill.worker.offsets import OffsetTracker
from shardbill.worker.protocols import (
    DeadLetterSink,
    Decoder,
    Finite,
    KnowsEnds,
    Processor,
    Source,
)
from shardbill.worker.records import DeadLetter, Partition, PartitionState, Record, Stage

if TYPE_CHECKING:
    from shardbill.pipeline import PipelineResult
    from shardbill.rules import UsageEvent

__all__ = ["Worker", "WorkerSettings", "WorkerSummary", "verdicts"]

_log = logging.getLogger("shardbill.worker")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name!r} must be > 0 seconds: {value!r}")


def _not_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name!r} must be >= 0 seconds: {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name!r} must be an integer >= 1: {value!r}")


def _idle(instance: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name!r} must be > 0 seconds or None: {value!r}")


def _max_held(
    instance: WorkerSettings, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < instance.batch_size:
        raise ValueError(
            f"{attribute.name!r} must be an integer >= batch_size ({instance.batch_size}) "
            f"or None (twice batch_size): {value!r}"
        )


def _batch_counts(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("records", "events"):
        raise ValueError(f"{attribute.name!r} must be 'records' or 'events': {value!r}")


def _shard_failures(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("retry", "set_aside"):
        raise ValueError(f"{attribute.name!r} must be 'retry' or 'set_aside': {value!r}")


@attrs.frozen(kw_only=True)
class WorkerSettings:
    """How a worker batches, retries and stops.

    Attributes:
        batch_size: records per batch.
        max_held: the most records held in memory at once: fetched, waiting
            for a retry (a failed shard) or for the dead-letter sink. None:
            twice ``batch_size`` (room for a batch of the healthy partitions
            beside a batch waiting for a failed shard). At least ``batch_size``.
        linger: seconds the first record of a batch waits for the batch to fill.
        poll_timeout: the longest one poll waits (it bounds how late a stop
            request is seen).
        retry_backoff: seconds before a batch whose shard failed is processed
            again; doubled on each failure, up to ``retry_backoff_max``.
        retry_backoff_max: the longest backoff.
        drain_timeout: after a stop request, seconds to keep trying to finish
            the pending batch before leaving it uncommitted (it is delivered
            again, to this or another worker).
        exit_when_idle: stop after this many seconds with nothing received and
            nothing pending, counted from the first assignment (None: run until
            stopped). For batch-like runs and tests.
        batch_counts: what fills a batch: ``"records"`` (events and the records
            set aside as dead letters alike: a stream's default, so that a run of
            bad records is flushed too) or ``"events"`` (only the events: a batch
            is ``batch_size`` events however many lines around them are set
            aside, as ``ingest`` batches a file).
        shard_failures: what happens to an event whose shard failed past the
            writer's retries: ``"retry"`` (hold it, pause its partition, process
            it again after a backoff: a stream's default) or ``"set_aside"``
            (a dead letter of stage ``failed``, its offset committed: for a
            file run again later, as ``ingest`` does).
    """

    batch_size: int = attrs.field(default=500, validator=_at_least_one)
    max_held: int | None = attrs.field(default=None, validator=_max_held)
    linger: float = attrs.field(default=0.2, validator=_not_negative)
    poll_timeout: float = attrs.field(default=0.2, validator=_positive)
    retry_backoff: float = attrs.field(default=0.5, validator=_positive)
    retry_backoff_max: float = attrs.field(default=10.0, validator=_positive)
    drain_timeout: float = attrs.field(default=30.0, validator=_not_negative)
    exit_when_idle: float | None = attrs.field(default=None, validator=_idle)
    batch_counts: Literal["records", "events"] = attrs.field(
        default="records", validator=_batch_counts
    )
    shard_failures: Literal["retry", "set_aside"] = attrs.field(
        default="retry", validator=_shard_failures
    )

    @property
    def held_limit(self) -> int:
        """``max_held``, or twice ``batch_size`` when it is None."""
        return self.max_held if self.max_held is not None else 2 * self.batch_size


@attrs.frozen(kw_only=True)
class WorkerSummary:
    """What a worker did so far (:meth:`Worker.summary`) or in all (:meth:`Worker.run`).

    Attributes:
        records: records received (redeliveries included).
        applied: events this worker applied.
        duplicates: events applied before (by anyone): nothing added.
        free: events priced with no charge (nothing to write).
        repeats: records repeating an event of the same batch (counted once).
        dead_letters: records sent to the dead letters, by stage.
        retries: times a batch was processed again after a shard failed.
        batches: batches processed.
        commits: offset commits that succeeded.
        commit_failures: offset commits the source refused (redelivered later).
        rebalances: assignments received.
        held: records held in memory now (waiting for a batch, a retry or the
            dead-letter sink); never more than ``max_held``.
        peak_held: the most records held at once so far.
        paused_partitions: partitions paused now because their records wait
            for a failed shard (or the dead-letter sink).
        uncommitted: records received and not done when the worker stopped
            (delivered again to whoever reads their partition next).
        seconds: wall time since :meth:`Worker.run` started.
    """

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    free: int = 0
    repeats: int = 0
    dead_letters: dict[str, int] = attrs.field(factory=dict)
    retries: int = 0
    batches: int = 0
    commits: int = 0
    commit_failures: int = 0
    rebalances: int = 0
    held: int = 0
    peak_held: int = 0
    paused_partitions: int = 0
    uncommitted: int = 0
    seconds: float = 0.0

    @property
    def dead_lettered(self) -> int:
        """Records sent to the dead letters, all stages."""
        return sum(self.dead_letters.values())

    def to_dict(self) -> dict[str, object]:
        """The summary as a JSON-ready dict (``dead_lettered`` added)."""
        out: dict[str, object] = attrs.asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["dead_lettered"] = self.dead_lettered
        return out


@attrs.define
class _Item:
    record: Record
    event: UsageEvent


_RETRY = "retry"
Verdict = tuple[Stage, str] | str  # a dead letter's (stage, reason), or _RETRY


def verdicts(result: PipelineResult) -> dict[str, Verdict]:
    """The events of a batch that are not done, and why (pure).

    Args:
        result: what the pipeline did with the batch.

    Returns:
        Event id -> ``"retry"`` (a shard failed: process it again) or
        ``(stage, reason)`` (refused for its content: a dead letter). Events
        not in the mapping are done.
    """
    out: dict[str, Verdict] = {}
    for pricing in result.pricing_rejected:
        who = pricing.rule or "engine"
        out[pricing.event_id] = (
            Stage.RULES,
            f"{who}: {pricing.error_type.__name__}: {pricing.reason}",
        )
    for refused in result.write.rejected:
        out[refused.event_id] = (Stage.WRITER, f"{refused.error}: {refused.reason}")
    for event_id in result.conflicting_repeats:
        out[event_id] = (
            Stage.CONFLICT,
            "this event id came twice in one batch with different content; neither copy was "
            "applied: give each event its own id",
        )
    for event_id in result.write.conflict_events:
        out[event_id] = (
            Stage.CONFLICT,
            "this event id was applied before with different content (the ledger's fingerprint "
            "differs); not applied: give the event its own id, or send the original content",
        )
    for event_id in result.retry:
        out[event_id] = _RETRY
    return out


class Worker:
    """Consumes usage events from a source and writes them exactly once; see the module docstring.

    Args:
        source: the consumer (:class:`~shardbill.worker.kafka.KafkaSource`,
            :class:`~shardbill.worker.memory.MemorySource`).
        processor: prices and writes a batch (a :class:`~shardbill.pipeline.Pipeline`).
        dead_letters: where records that cannot be applied go.
        decoder: record value -> event (default: :func:`~shardbill.worker.json_decoder`).
        settings: batching, retries and stopping.
        clock: monotonic seconds (for linger, backoff and idle time).
        on_batch: called after each batch with :meth:`summary` (progress output).

    Example:
        >>> worker = Worker(source=source, processor=pipeline,  # doctest: +SKIP
        ...                 dead_letters=JsonlDeadLetters("dead.jsonl"))
        >>> signal.signal(signal.SIGTERM, lambda *_: worker.stop())  # doctest: +SKIP
        >>> summary = worker.run()  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        source: Source,
        processor: Processor,
        dead_letters: DeadLetterSink,
        decoder: Decoder | None = None,
        settings: WorkerSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[WorkerSummary], None] | None = None,
    ) -> None:
        self._source = source
        self._processor = processor
        self._sink = dead_letters
        self._decode = decoder or json_decoder()
        self._settings = settings or WorkerSettings()
        self._clock = clock
        self._on_batch = on_batch
        self._tracker = OffsetTracker()
        self._pending: list[_Item] = []  # fetched, not processed yet
        self._retrying: list[_Item] = []  # processed, waiting for a failed shard
        self._letters: list[DeadLetter] = []
        self._first_pending: float | None = None
        self._stopping = False
        self._closing = False
        self._draining = False
        self._flushing = False
        self._assigned: set[Partition] = set()
        self._ever_assigned = False
        self._last_activity = clock()
        self._last_poll: float | None = None  # when the loop last served the source
        self._backoff = 0.0
        self._retry_at: float | None = None  # when the held records are processed again
        self._paused = False
        self._held_partitions: frozenset[Partition] = frozenset()
        self._peak = 0
        self._started = clock()
        self._left: int | None = None  # records not done when the worker stopped
        self._counts: Counter[str] = Counter()
        self._dead: Counter[str] = Counter()
        # Per partition, for Worker.partitions() (health): read by other threads as one tuple.
        self._behind_since: dict[Partition, float] = {}
        self._committed_at: dict[Partition, float] = {}
        self._ends: dict[Partition, int] = {}
        self._ends_at: float | None = None
        self._view: tuple[PartitionState, ...] = ()

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask the loop to stop: drain, commit, close. Safe from a signal handler or a thread."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (or the worker went idle with ``exit_when_idle``)."""
        return self._stopping

    @property
    def last_poll(self) -> float | None:
        """The clock's time of the loop's last poll (None before the first): its liveness."""
        return self._last_poll

    @property
    def waiting_for_retry(self) -> bool:
        """True while a batch waits for a failed shard (or dead-letter sink) to come back."""
        return self._backoff > 0

    def partitions(self) -> tuple[PartitionState, ...]:
        """The assigned partitions as the loop last saw them (after its last poll or commit),
        sorted; safe from another thread (the HTTP health check's)."""
        return self._view

    def summary(self) -> WorkerSummary:
        """What the worker did so far."""
        return WorkerSummary(
            records=self._counts["records"],
            applied=self._counts["applied"],
            duplicates=self._counts["duplicates"],
            free=self._counts["free"],
            repeats=self._counts["repeats"],
            dead_letters=dict(sorted(self._dead.items())),
            retries=self._counts["retries"],
            batches=self._counts["batches"],
            commits=self._counts["commits"],
            commit_failures=self._counts["commit_failures"],
            rebalances=self._counts["rebalances"],
            held=self._held(),
            peak_held=self._peak,
            paused_partitions=len(self._held_partitions),
            uncommitted=self._tracker.open if self._left is None else self._left,
            seconds=self._clock() - self._started,
        )

    def run(self) -> WorkerSummary:
        """Consume until :meth:`stop` (or idle, with ``exit_when_idle``); then drain and close.

        Returns:
            The summary.

        Raises:
            StreamError: the source failed to start or to poll.
            ShardbillError: the processor raised (nothing of the pending batch
                is committed; it is delivered again).
        """
        self._started = self._clock()
        self._source.start(self)
        try:
            self._loop()
            self._drain()
            # Counted before closing: the close revokes (and forgets) every partition.
            self._left = self._tracker.open
        finally:
            self._closing = True
            self._source.close()
        return self.summary()

    # ------------------------------------------------------------------ rebalance listener

    def assigned(self, partitions: Sequence[Partition]) -> None:
        """The source assigned these partitions (see :class:`RebalanceListener`)."""
        self._assigned.update(partitions)
        self._ever_assigned = True
        self._last_activity = self._clock()
        self._counts["rebalances"] += 1
        _log.info("assigned %s", _names(partitions))
        self._observe()

    def revoked(self, partitions: Sequence[Partition]) -> None:
        """Finish the pending batch once, commit what is done, drop the rest of ``partitions``."""
        _log.info("revoked %s", _names(partitions))
        if not self._closing and not self._flushing and self._held():
            self._flush(everything=True)
        self._commit()
        self._drop(partitions)

    def lost(self, partitions: Sequence[Partition]) -> None:
        """Drop ``partitions`` without committing (another member owns them already)."""
        _log.warning(
            "lost %s (not committed; their records are delivered again)", _names(partitions)
        )
        self._drop(partitions)

    def _drop(self, partitions: Sequence[Partition]) -> None:
        gone = set(partitions)
        self._pending = [i for i in self._pending if i.record.source not in gone]
        self._retrying = [i for i in self._retrying if i.record.source not in gone]
        self._letters = [d for d in self._letters if d.record.source not in gone]
        if not self._pending and not self._letters:
            self._first_pending = None
        if not self._retrying and not self._letters:
            self._backoff = 0.0
            self._retry_at = None
        if not self._closing:
            self._hold(self._held_partitions - gone)
        self._tracker.forget(gone)
        self._assigned -= gone
        for known in (self._behind_since, self._committed_at, self._ends):
            for partition in gone:
                known.pop(partition, None)
        self._observe()

    def _held(self) -> int:
        return len(self._pending) + len(self._retrying) + len(self._letters)

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        settings = self._settings
        while not self._stopping:
            now = self._clock()
            if self._retry_at is not None and now >= self._retry_at:
                self._counts["retries"] += 1
                self._flush(everything=True)
                continue
            held = self._held()
            filling = len(self._pending) + (
                len(self._letters) if settings.batch_counts == "records" else 0
            )
            room = min(settings.batch_size - filling, settings.held_limit - held)
            self._set_paused(room <= 0)  # no room: fetch nothing, keep serving the group
            timeout = settings.poll_timeout
            if self._first_pending is not None:
                timeout = min(timeout, max(0.0, self._first_pending + settings.linger - now))
            if self._retry_at is not None:
                timeout = min(timeout, max(0.0, self._retry_at - now))
            records = self._source.poll(max(1, room), timeout)
            self._last_poll = self._clock()
            self._take(records)
            self._observe()
            held = self._held()
            now = self._clock()
            ended = isinstance(self._source, Finite) and self._source.exhausted
            fresh = len(self._pending) + (len(self._letters) if self._retry_at is None else 0)
            full = (
                len(self._pending) if settings.batch_counts == "events" else fresh
            ) >= settings.batch_size
            if fresh and (
                full
                or held >= settings.held_limit
                or ended  # nothing more will come to fill the batch
                or (
                    self._first_pending is not None and now - self._first_pending >= settings.linger
                )
            ):
                self._flush(everything=False)
            elif ended and not held:
                _log.info("the source is exhausted and every record is done: stopping")
                self._stopping = True
            elif (
                settings.exit_when_idle is not None
                and self._ever_assigned
                and not held
                and now - self._last_activity >= settings.exit_when_idle
            ):
                _log.info("idle for %.1f s: stopping", now - self._last_activity)
                self._stopping = True

    def _wait(self, seconds: float) -> bool:
        """Let ``seconds`` pass while serving the source (heartbeats, rebalances), paused (drain).

        Returns:
            False when a stop request ended the wait early.
        """
        until = self._clock() + seconds
        while self._clock() < until:
            if self._stopping:
                return False
            remaining = until - self._clock()
            self._take(self._source.poll(1, min(self._settings.poll_timeout, max(0.0, remaining))))
            self._last_poll = self._clock()
            self._observe()
        return True

    def _drain(self) -> None:
        """After a stop request: finish the pending batch within ``drain_timeout``, commit."""
        deadline = self._clock() + self._settings.drain_timeout
        self._draining = True
        self._set_paused(True)
        self._stopping = False  # let _wait serve the source while draining
        try:
            while self._held():
                self._flush(everything=True)
                if not self._held() or self._clock() >= deadline:
                    break
                self._wait(
                    min(self._backoff or self._settings.retry_backoff, deadline - self._clock())
                )
        finally:
            self._stopping = True
        self._commit()

    def _take(self, records: Sequence[Record]) -> None:
        if not records:
            return
        self._last_activity = self._clock()
        if self._first_pending is None:
            self._first_pending = self._last_activity
        self._counts["records"] += len(records)
        for record in records:
            self._tracker.received(record.source, record.offset)
            if record.refused is not None:  # the source parsed it and found no event
                stage, reason = record.refused
                self._letters.append(DeadLetter(record=record, stage=stage, reason=reason))
                continue
            if record.event is not None:  # the source parsed it (an events file)
                self._pending.append(_Item(record=record, event=record.event))
                continue
            try:
                event = self._decode(record.value)
            except (ValueError, TypeError, ShardbillError) as exc:
                self._letters.append(DeadLetter(record=record, stage=Stage.DECODE, reason=str(exc)))
            else:
                self._pending.append(_Item(record=record, event=event))
        self._peak = max(self._peak, self._held())  # what is held only grew in here

    # ------------------------------------------------------------------ a batch

    def _flush(self, *, everything: bool) -> None:
        """Process a batch once; commit what is done; hold what must be retried.

        Args:
            everything: a retry round: the held records and the fetched ones.
                Otherwise only the fetched ones, those of a paused partition
                joining the held records unprocessed (their partition's order
                is kept).
        """
        blocked: list[_Item] = []
        if everything:
            batch = self._retrying + self._pending
        elif not self._held_partitions:
            batch = self._pending  # replaced below, never changed in place
        else:
            paused = self._held_partitions
            batch = [i for i in self._pending if i.record.source not in paused]
            blocked = [i for i in self._pending if i.record.source in paused]
        self._flushing = True
        try:
            keep = self._process(batch)
            sent = self._send_letters()
        finally:
            self._flushing = False
        self._retrying = ([] if everything else self._retrying) + blocked + keep
        self._pending = []
        self._first_pending = None
        self._last_activity = self._clock()  # idle time counts from the last work done
        if self._retrying or not sent:
            if everything or self._retry_at is None:
                step = self._settings.retry_backoff
                grown = self._backoff * 2 if everything else self._backoff
                self._backoff = min(self._settings.retry_backoff_max, grown or step)
                self._retry_at = self._clock() + self._backoff
        else:
            self._backoff = 0.0
            self._retry_at = None
        self._hold(
            frozenset(i.record.source for i in self._retrying)
            | frozenset(d.record.source for d in self._letters)
        )
        self._commit()
        if self._on_batch is not None:
            self._on_batch(self.summary())

    def _process(self, items: list[_Item]) -> list[_Item]:
        if not items:
            return []
        self._counts["batches"] += 1
        result = self._processor.process(i.event for i in items)
        outcome = verdicts(result)
        keep: list[_Item] = []
        seen: set[str] = set()
        set_aside = self._settings.shard_failures == "set_aside"
        for item in items:
            event_id = item.event.event_id
            verdict = outcome.get(event_id)
            if verdict == _RETRY and set_aside:
                verdict = (Stage.FAILED, _failed_reason(result, event_id))
            elif verdict == _RETRY:
                keep.append(item)
                continue
            if event_id in seen:
                self._counts["repeats"] += 1
            seen.add(event_id)
            if isinstance(verdict, tuple):
                stage, reason = verdict
                self._letters.append(
                    DeadLetter(record=item.record, stage=stage, reason=reason, event_id=event_id)
                )
            else:
                self._tracker.done(item.record.source, item.record.offset)
        applied = result.write.applied_events
        duplicates = result.write.duplicate_events
        self._counts["applied"] += len(applied & seen)
        self._counts["duplicates"] += len(duplicates & seen)
        self._counts["free"] += len({i for i in seen if i not in outcome} - applied - duplicates)
        if keep:
            failures = result.write.failures
            waiting = {k.event.event_id for k in keep}
            errors = {type(failures[i]).__name__ for i in waiting if i in failures}
            _log.warning(
                "%d records wait for a retry (a shard failed: %s); their partitions are paused",
                len(keep),
                ", ".join(sorted(errors)) or "unknown",
            )
        return keep

    def _send_letters(self) -> bool:
        letters = self._letters
        if not letters:
            return True
        try:
            self._sink.send(letters)
        except (StreamError, OSError) as exc:
            _log.warning("dead letters not stored (%s); sending them again after a backoff", exc)
            return False
        for letter in letters:
            self._tracker.done(letter.record.source, letter.record.offset)
            self._dead[letter.stage.value] += 1
        self._letters = []
        return True

    def _commit(self) -> None:
        offsets = self._tracker.committable()
        if not offsets:
            return
        try:
            self._source.commit(offsets)
        except StreamError as exc:
            self._counts["commit_failures"] += 1
            _log.warning("offset commit failed (%s); the records are delivered again if lost", exc)
            self._observe()
            return
        self._tracker.committed(offsets)
        self._counts["commits"] += 1
        now = self._clock()
        for partition in offsets:
            self._committed_at[partition] = now
            if partition in self._behind_since:  # what is still behind counts from this commit
                self._behind_since[partition] = now
        self._observe()

    def _observe(self) -> None:
        """Rebuild :meth:`partitions`' view (the loop's thread only)."""
        now = self._clock()
        tracker = self._tracker
        if isinstance(self._source, KnowsEnds) and (
            self._ends_at is None or now - self._ends_at >= 1.0
        ):
            self._ends_at = now
            try:
                self._ends.update(self._source.end_offsets(frozenset(self._assigned)))
            except StreamError as exc:  # only the health view's lag is missing then
                _log.debug("end offsets unknown: %s", exc)
        held: Counter[Partition] = Counter(
            i.record.source for i in (*self._pending, *self._retrying)
        )
        held.update(d.record.source for d in self._letters)
        view: list[PartitionState] = []
        for partition in sorted(self._assigned):
            position = tracker.next_offset(partition)
            committed = tracker.last_committed(partition)
            if position is None or (committed is not None and committed >= position):
                self._behind_since.pop(partition, None)
            else:
                self._behind_since.setdefault(partition, now)
            view.append(
                PartitionState(
                    topic=partition[0],
                    partition=partition[1],
                    paused=self._paused or partition in self._held_partitions,
                    held=held[partition],
                    open=tracker.open_in(partition),
                    position=position,
                    committed=committed,
                    committed_at=self._committed_at.get(partition),
                    end=self._ends.get(partition),
                    behind_since=self._behind_since.get(partition),
                )
            )
        self._view = tuple(view)

    def _set_paused(self, paused: bool) -> None:
        if paused != self._paused:
            self._paused = paused
            self._source.pause(paused)
            self._observe()

    def _hold(self, partitions: frozenset[Partition]) -> None:
        """Pause exactly ``partitions`` (those whose records wait), resume the others."""
        if partitions != self._held_partitions:
            self._held_partitions = partitions
            self._source.pause_partitions(partitions)
            self._observe()


def _failed_reason(result: PipelineResult, event_id: str) -> str:
    """Why an event was set aside: its shards' errors, and what to do."""
    write = result.write
    errors = [
        f"shard {shard}: {describe(outcome.error)}"
        for shard, outcome in sorted(write.shards.items())
        if event_id in outcome.failed and outcome.error is not None
    ]
    if not errors and event_id in write.failures:
        errors = [describe(write.failures[event_id])]
    return (
        f"not written ({'; '.join(errors) or 'a shard failed'}); deliver it again once the "
        "shard is back: the ledger applies what is missing exactly once"
    )


def _names(partitions: Sequence[Partition]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(partitions)) or "nothing"
