"""In-memory stand-ins for a broker, for tests (users' and shardbill's own).

:class:`MemoryBroker` holds topics of partitions and each group's committed
offsets; :class:`MemorySource` is one consumer of a group that owns every
partition of its topics (a group of one), and can be told to
:meth:`~MemorySource.rebalance` (revoke everything, then read again from the
committed offsets, as a new owner would). :class:`MemoryDeadLetters` keeps
dead letters in a list. They follow the same contracts as the Kafka
implementations, so the worker's loop is tested without a broker.

Example:
    >>> broker = MemoryBroker({"usage": 2})
    >>> broker.produce("usage", b'{"event_id": "e-1"}', partition=1).offset
    0
    >>> broker.committed("billing")
    {}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet

from shardbill.errors import StreamError
from shardbill.worker.protocols import RebalanceListener
from shardbill.worker.records import DeadLetter, Partition, Record

__all__ = ["MemoryBroker", "MemoryDeadLetters", "MemorySource"]


class MemoryBroker:
    """Topics of partitions of records, and each group's committed offsets.

    Args:
        topics: topic name -> number of partitions.
    """

    def __init__(self, topics: Mapping[str, int]) -> None:
        self._logs: dict[Partition, list[Record]] = {
            (topic, p): [] for topic, count in topics.items() for p in range(count)
        }
        self._committed: dict[str, dict[Partition, int]] = {}

    def partitions(self, topics: Iterable[str]) -> list[Partition]:
        """The partitions of ``topics``, sorted."""
        wanted = set(topics)
        return sorted(p for p in self._logs if p[0] in wanted)

    def produce(
        self, topic: str, value: bytes, *, key: bytes | None = None, partition: int = 0
    ) -> Record:
        """Append a record; returns it (with its offset)."""
        log = self._logs[(topic, partition)]
        record = Record(topic=topic, partition=partition, offset=len(log), value=value, key=key)
        log.append(record)
        return record

    def read(self, partition: Partition, offset: int, limit: int) -> list[Record]:
        """Up to ``limit`` records of ``partition`` from ``offset`` on."""
        return self._logs[partition][offset : offset + limit]

    def end(self, partition: Partition) -> int:
        """The offset the next record of ``partition`` will get."""
        return len(self._logs[partition])

    def committed(self, group: str) -> dict[Partition, int]:
        """The group's committed offsets."""
        return dict(self._committed.get(group, {}))

    def commit(self, group: str, offsets: Mapping[Partition, int]) -> None:
        """Store the group's offsets."""
        self._committed.setdefault(group, {}).update(offsets)


class MemorySource:
    """A consumer of ``topics`` in ``group`` on a :class:`MemoryBroker`, owning every partition.

    Args:
        broker: the broker.
        topics: the topics read.
        group: the consumer group (whose committed offsets reading starts from).
        sleep: how an empty poll waits (default :func:`time.sleep`).
    """

    def __init__(
        self,
        broker: MemoryBroker,
        *,
        topics: Sequence[str],
        group: str,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._broker = broker
        self._topics = tuple(topics)
        self._group = group
        self._sleep = sleep
        self._listener: RebalanceListener | None = None
        self._positions: dict[Partition, int] = {}
        self._paused = False
        self._held: frozenset[Partition] = frozenset()
        self._rebalance = True  # the first poll assigns
        self.fail_commits = 0
        """Refuse this many commits from now on (:class:`StreamError`), for fault tests."""
        self.commits: list[dict[Partition, int]] = []
        """Every commit made, in order."""

    def start(self, listener: RebalanceListener) -> None:
        """Join: the first :meth:`poll` assigns every partition."""
        self._listener = listener

    def rebalance(self) -> None:
        """Make the next poll revoke every partition and assign them again (redelivery)."""
        self._rebalance = True

    def poll(self, max_records: int, timeout: float) -> Sequence[Record]:
        """Records from the positions on, partition after partition; waits when there are none."""
        if self._listener is None:
            raise StreamError("poll() before start(): start the source first")
        if self._rebalance:
            self._rebalance = False
            if self._positions:
                self._listener.revoked(sorted(self._positions))
            committed = self._broker.committed(self._group)
            partitions = self._broker.partitions(self._topics)
            self._positions = {p: committed.get(p, 0) for p in partitions}
            self._listener.assigned(partitions)
        out: list[Record] = []
        if not self._paused:
            for partition, position in self._positions.items():
                if partition in self._held:
                    continue
                got = self._broker.read(partition, position, max_records - len(out))
                self._positions[partition] = position + len(got)
                out.extend(got)
                if len(out) >= max_records:
                    break
        if not out and timeout > 0:
            self._sleep(timeout)
        return out

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Store the offsets for the group (or fail, while :attr:`fail_commits` is set)."""
        if self.fail_commits:
            self.fail_commits -= 1
            raise StreamError("commit refused (MemorySource.fail_commits)")
        self.commits.append(dict(offsets))
        self._broker.commit(self._group, offsets)

    def pause(self, paused: bool) -> None:
        """Stop or resume returning records."""
        self._paused = paused

    def pause_partitions(self, partitions: AbstractSet[Partition]) -> None:
        """Return no records of these partitions (until called again without them)."""
        self._held = frozenset(partitions)

    def end_offsets(self, partitions: AbstractSet[Partition]) -> dict[Partition, int]:
        """The broker's end of each assigned partition asked for."""
        return {p: self._broker.end(p) for p in partitions if p in self._positions}

    def close(self) -> None:
        """Revoke every partition (the worker commits what is done) and leave."""
        if self._listener is not None and self._positions:
            self._listener.revoked(sorted(self._positions))
        self._positions = {}


class MemoryDeadLetters:
    """Dead letters kept in :attr:`letters`; :attr:`fail_sends` makes sends fail."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []
        self.fail_sends = 0
        """Refuse this many sends from now on (:class:`StreamError`), for fault tests."""

    def send(self, letters: Iterable[DeadLetter]) -> None:
        """Keep the letters (or fail, while :attr:`fail_sends` is set)."""
        if self.fail_sends:
            self.fail_sends -= 1
            raise StreamError("send refused (MemoryDeadLetters.fail_sends)")
        self.letters.extend(letters)
