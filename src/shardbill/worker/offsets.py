"""Which offsets may be committed: the lowest offset not yet done, per partition (pure).

The worker tells an :class:`OffsetTracker` every record it receives and
every record that is done (applied, a duplicate, free, or sent to the dead
letters). :meth:`OffsetTracker.committable` then gives, per partition, the
offset below which *every* received record is done: the lowest offset still
open, or one past the highest received when none is. A record that waits for
a retry therefore holds its partition's commit back, however many records
after it are done; when it is done the commit jumps past all of them.

Offsets may have gaps (compacted topics, transaction markers): only received
offsets count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shardbill.worker.records import Partition

__all__ = ["OffsetTracker"]


class OffsetTracker:
    """Received and done offsets per partition; what may be committed (not thread-safe)."""

    def __init__(self) -> None:
        self._open: dict[Partition, set[int]] = {}
        self._next: dict[Partition, int] = {}
        self._committed: dict[Partition, int] = {}

    def received(self, partition: Partition, offset: int) -> None:
        """A record at ``offset`` was delivered and is not done yet."""
        self._open.setdefault(partition, set()).add(offset)
        if offset + 1 > self._next.get(partition, -1):
            self._next[partition] = offset + 1

    def done(self, partition: Partition, offset: int) -> None:
        """The record at ``offset`` is done; nothing happens for an offset not received."""
        waiting = self._open.get(partition)
        if waiting is not None:
            waiting.discard(offset)

    def committable(self) -> dict[Partition, int]:
        """Per partition, the offset to commit where it moved past the last commit.

        Returns:
            Partition -> the next offset to read (every received record below it is done).
        """
        out: dict[Partition, int] = {}
        for partition, following in self._next.items():
            waiting = self._open.get(partition)
            target = min(waiting) if waiting else following
            if target > self._committed.get(partition, -1):
                out[partition] = target
        return out

    def committed(self, offsets: Mapping[Partition, int]) -> None:
        """These offsets were committed."""
        for partition, offset in offsets.items():
            if offset > self._committed.get(partition, -1):
                self._committed[partition] = offset

    def forget(self, partitions: Iterable[Partition]) -> None:
        """These partitions are no longer ours (revoked or lost): drop what is known of them."""
        for partition in partitions:
            self._open.pop(partition, None)
            self._next.pop(partition, None)
            self._committed.pop(partition, None)

    def next_offset(self, partition: Partition) -> int | None:
        """One past the highest offset received in ``partition`` (None: nothing received)."""
        return self._next.get(partition)

    def last_committed(self, partition: Partition) -> int | None:
        """The offset last committed for ``partition`` (None: none since it was assigned)."""
        return self._committed.get(partition)

    def open_in(self, partition: Partition) -> int:
        """Records of ``partition`` received and not done."""
        return len(self._open.get(partition, ()))

    @property
    def open(self) -> int:
        """Records received and not done, over all partitions."""
        return sum(len(offsets) for offsets in self._open.values())
