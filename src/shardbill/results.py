r"""What a write did, per shard and per event: the writer's results (pure data).

:meth:`shardbill.writer.AggregationWriter.write` returns a
:class:`WriteResult`: one :class:`ShardResult` per shard the batch touched
(applied, duplicates skipped, conflicts, failed, with the error and the
attempts), and the events rejected before any SQL. A caller retries exactly
:attr:`WriteResult.failed_events`; rejections and :class:`Conflict`\ s need
a fix, not a retry.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from shardbill.batching import Rejection
from shardbill.errors import ShardbillError

__all__ = ["Conflict", "ShardResult", "WriteResult"]


@attrs.frozen(kw_only=True)
class Conflict:
    """A unit whose event id was applied before with different content: not applied."""

    event_id: str
    slot: int
    shard: str
    stored_fingerprint: str
    fingerprint: str


@attrs.frozen(kw_only=True)
class ShardResult:
    """What one shard did with its part of a batch.

    ``applied``, ``duplicates`` and ``failed`` hold event ids (sorted, unique).
    """

    shard: str
    applied: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    failed: tuple[str, ...] = ()
    error: ShardbillError | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing failed on this shard."""
        return self.error is None


@attrs.frozen(kw_only=True)
class WriteResult:
    """The outcome of one :meth:`AggregationWriter.write`.

    Retry exactly :attr:`failed_events` (whole events: the ledger skips the
    parts that are done). :attr:`rejected` and :attr:`conflict_events` need a
    fix, not a retry.
    """

    shards: Mapping[str, ShardResult]
    rejected: tuple[Rejection, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no shard failed (rejections and conflicts are reported, not failures)."""
        return all(r.ok for r in self.shards.values())

    @property
    def failed_events(self) -> frozenset[str]:
        """Events with at least one unit not applied because its shard failed."""
        return frozenset(e for r in self.shards.values() for e in r.failed)

    @property
    def conflict_events(self) -> frozenset[str]:
        """Events whose id was applied before with different content."""
        return frozenset(c.event_id for r in self.shards.values() for c in r.conflicts)

    @property
    def applied_events(self) -> frozenset[str]:
        """Events with at least one unit applied by this call and none failed or conflicting."""
        applied = {e for r in self.shards.values() for e in r.applied}
        return frozenset(applied - self.failed_events - self.conflict_events)

    @property
    def duplicate_events(self) -> frozenset[str]:
        """Events every unit of which was already applied before this call."""
        dup = {e for r in self.shards.values() for e in r.duplicates}
        applied = {e for r in self.shards.values() for e in r.applied}
        return frozenset(dup - applied - self.failed_events - self.conflict_events)
