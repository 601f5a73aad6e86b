"""The small interfaces the stream worker is built around (what users implement).

* :class:`Source`: where records come from and where their offsets are
  committed (Kafka: :class:`~shardbill.worker.kafka.KafkaSource`; in memory:
  :class:`~shardbill.worker.memory.MemorySource`);
* :class:`RebalanceListener`: what a source tells the worker when its
  partitions change (the worker implements it);
* :class:`DeadLetterSink`: where records that cannot be applied go;
* :class:`Processor`: prices and writes a batch (a
  :class:`~shardbill.pipeline.Pipeline`);
* :data:`Decoder`: turns a record's bytes into a usage event;
* :class:`KnowsEnds`: optional, a source that can tell where its partitions
  end (the worker then reports each partition's lag);
* :class:`Finite`: optional, a source with an end (an events file): the
  worker stops by itself once it is exhausted and every record is done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from shardbill.pipeline import PipelineResult
    from shardbill.rules import UsageEvent
    from shardbill.worker.records import DeadLetter, Partition, Record

__all__ = [
    "DeadLetterSink",
    "Decoder",
    "Finite",
    "KnowsEnds",
    "Processor",
    "RebalanceListener",
    "Source",
]

Decoder = Callable[[bytes], "UsageEvent"]
"""Turns a record's value into an event; raises ``ValueError`` (or a
:class:`~shardbill.errors.ShardbillError`) for a value that is not one, with
the reason: the record then goes to the dead letters (stage ``decode``)."""


class RebalanceListener(Protocol):
    """What a source calls, from inside :meth:`Source.poll`, when its partitions change."""

    def assigned(self, partitions: Sequence[Partition]) -> None:
        """These partitions are now this consumer's (reading starts at their committed offset)."""

    def revoked(self, partitions: Sequence[Partition]) -> None:
        """These partitions are being taken away: commit what is done now, the call may block."""

    def lost(self, partitions: Sequence[Partition]) -> None:
        """These partitions were taken away already (a missed heartbeat): commit nothing."""


class Source(Protocol):
    """Records in, offsets committed: one consumer of a consumer group.

    Offsets follow Kafka's meaning: the committed offset of a partition is
    the offset of the next record to read there.
    """

    def start(self, listener: RebalanceListener) -> None:
        """Join the group; ``listener`` hears about assignments from then on."""

    def poll(self, max_records: int, timeout: float) -> Sequence[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout`` seconds for the first.

        Rebalance callbacks run inside this call. Records of a partition come in
        offset order. Returns nothing while paused.

        Raises:
            StreamError: the broker failed.
        """

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit these offsets (each the next offset to read), synchronously.

        Raises:
            StreamError: the commit failed (the records will be delivered again).
        """

    def pause(self, paused: bool) -> None:
        """Stop (``True``) or resume (``False``) fetching from every assigned partition.

        While paused, partitions assigned later are paused too; resuming leaves the
        partitions of :meth:`pause_partitions` paused.
        """

    def pause_partitions(self, partitions: AbstractSet[Partition]) -> None:
        """Fetch nothing from exactly these partitions (an empty set: from none of them).

        The worker pauses the partitions whose records wait for a failed shard, so
        the other partitions keep flowing. A partition not assigned (any more) is
        ignored; a record of a paused partition fetched before the pause may still
        be returned (the worker copes).
        """

    def close(self) -> None:
        """Leave the group (revoking every partition first) and release the connection."""


@runtime_checkable
class KnowsEnds(Protocol):
    """A :class:`Source` that can also tell where its partitions end (optional).

    The worker asks from its own thread, at most once a second, and reports
    each partition's lag (the end minus the last committed offset).
    """

    def end_offsets(self, partitions: AbstractSet[Partition]) -> Mapping[Partition, int]:
        """The offset each partition's next record will get, as far as known without a
        round trip to the broker; a partition not known is left out."""
        ...  # pragma: no cover - a protocol


@runtime_checkable
class Finite(Protocol):
    """A :class:`Source` that ends (optional): an events file, standard input.

    Once :attr:`exhausted` is true the worker processes what it holds at once
    (no linger: nothing more will fill the batch), commits, and stops once
    every record is done (records waiting for a failed shard are retried as
    usual first), then drains and closes as after a stop request.
    """

    @property
    def exhausted(self) -> bool:
        """True once every record was returned by :meth:`Source.poll`."""
        ...  # pragma: no cover - a protocol


class DeadLetterSink(Protocol):
    """Where records that cannot be applied go, with their reasons."""

    def send(self, letters: Iterable[DeadLetter]) -> None:
        """Store the letters durably before returning.

        Raises:
            StreamError: (or ``OSError``) they may not be stored: the worker
                keeps their offsets uncommitted and sends them again.
        """


class Processor(Protocol):
    """Prices and writes one batch exactly once (:class:`~shardbill.pipeline.Pipeline`)."""

    def process(self, events: Iterable[UsageEvent]) -> PipelineResult:
        """See :meth:`shardbill.pipeline.Pipeline.process`."""
        ...  # pragma: no cover - a protocol
