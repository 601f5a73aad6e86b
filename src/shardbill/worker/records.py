"""What flows through the stream worker: records from a source, dead letters to a sink (pure).

A :class:`Record` is one message as a source delivered it (topic, partition,
offset, key, value). A :class:`DeadLetter` is a record the worker could not
apply for a reason in its content, with that reason: it is sent to the
dead-letter sink before its offset is committed, so nothing is dropped
silently.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from shardbill.rules import UsageEvent

__all__ = ["DeadLetter", "Partition", "PartitionState", "Record", "Stage"]

Partition = tuple[str, int]
"""A topic partition: ``(topic, partition number)``."""


class Stage(enum.StrEnum):
    """Why a record became a dead letter.

    ``decode``: not JSON, or not a valid event; ``rules``: a billing rule
    refused the event; ``writer``: a charge does not fit the aggregate tables
    (or is older than the dedup horizon); ``conflict``: its event id was
    applied before (or is repeated in the batch) with different content;
    ``failed``: a shard failed past the writer's retries and the worker was
    told to set such events aside (``WorkerSettings(shard_failures="set_aside")``)
    rather than retry them: deliver them again once the shard is back.
    """

    DECODE = "decode"
    RULES = "rules"
    WRITER = "writer"
    CONFLICT = "conflict"
    FAILED = "failed"


@attrs.frozen(kw_only=True)
class Record:
    """One message as a source delivered it.

    Attributes:
        topic: the topic it came from.
        partition: its partition.
        offset: its offset in the partition (the committed offset of a
            partition is the offset of the next record to read).
        value: the message's bytes (for the JSON decoder, one event object).
        key: the message key, if any.
        event: the event, when the source parsed the record itself (an events
            file read by :func:`shardbill.ingest.read_events`): the worker then
            does not decode ``value``.
        refused: instead, why the source found no event in it (stage, reason):
            the record goes straight to the dead letters.
    """

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    event: UsageEvent | None = attrs.field(default=None, eq=False, repr=False)
    refused: tuple[Stage, str] | None = None
    source: Partition = attrs.field(init=False, eq=False, repr=False)
    """``(topic, partition)`` (computed once: the loop asks for it several times a record)."""

    @source.default
    def _source(self) -> Partition:
        return (self.topic, self.partition)


@attrs.frozen(kw_only=True)
class DeadLetter:
    """A record set aside with the reason; its offset may be committed once it is sent.

    Attributes:
        record: the record as delivered.
        stage: where it was refused.
        reason: why, in words that say what to fix.
        event_id: the event's id, when the record decoded far enough to have one.
    """

    record: Record
    stage: Stage
    reason: str
    event_id: str | None = None

    def headers(self) -> dict[str, str]:
        """The letter's metadata as message headers (``shardbill.*``), for a dead-letter topic."""
        out = {
            "shardbill.stage": self.stage.value,
            "shardbill.reason": self.reason,
            "shardbill.topic": self.record.topic,
            "shardbill.partition": str(self.record.partition),
            "shardbill.offset": str(self.record.offset),
        }
        if self.event_id is not None:
            out["shardbill.event_id"] = self.event_id
        return out

    def to_dict(self) -> dict[str, object]:
        """The letter as a JSON-ready object (the JSON Lines sink's line).

        Returns:
            ``topic``, ``partition``, ``offset``, ``event_id``, ``stage``,
            ``reason``, ``key`` and ``value`` (the bytes as UTF-8 text, invalid
            bytes replaced).
        """
        return {
            "topic": self.record.topic,
            "partition": self.record.partition,
            "offset": self.record.offset,
            "event_id": self.event_id,
            "stage": self.stage.value,
            "reason": self.reason,
            "key": None if self.record.key is None else _text(self.record.key),
            "value": _text(self.record.value),
        }


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


@attrs.frozen(kw_only=True)
class PartitionState:
    """One assigned partition as the worker last saw it (:meth:`Worker.partitions`).

    Times are the worker's clock (monotonic seconds), so that a health check
    can say how long ago they were.

    Attributes:
        topic: the topic.
        partition: the partition number.
        paused: no record of it is fetched now (its records wait for a failed
            shard or the dead-letter sink, or the worker is at ``max_held``).
        held: its records in memory (fetched, waiting for a retry or the sink).
        open: its records received and not done.
        position: one past the highest offset received (None: nothing yet).
        committed: the offset this worker last committed (None: none since
            the partition was assigned).
        committed_at: when that commit was made (None: no commit yet).
        end: the offset the partition's next record will get, as far as the
            source knows (None: the source does not say).
        behind_since: since when records of it have been received and not
            committed, or since the last commit that left some (None: everything
            received is committed).
    """

    topic: str
    partition: int
    paused: bool
    held: int
    open: int
    position: int | None
    committed: int | None
    committed_at: float | None
    end: int | None
    behind_since: float | None

    @property
    def lag(self) -> int | None:
        """Records between the last commit and the partition's end (None: not known)."""
        if self.end is None or self.committed is None:
            return None
        return max(0, self.end - self.committed)
