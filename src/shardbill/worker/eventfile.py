"""One events file, or standard input, as a finite worker source (the reader is ``ingest``'s).

:class:`FileSource` reads a JSON Lines or CSV stream with
:func:`shardbill.ingest.read_stream`, so a line means exactly what it means to
``shardbill ingest`` (exact decimals, a key twice or a line over 1 MiB
refused, CSV headers, an id repeated with the same content counted once, with
other content a conflict). The stream is one partition, ``(NAME, 0)`` (the
file's name, ``-`` for a stream without one); a record's offset is its line
number (its first line, for a CSV record over several). Each record carries
its parsed event, or the reason it has none (stage ``decode`` for a line that
is no event, ``conflict`` for an id reused in the file), so the worker does
not decode it again. A repeat is counted (:attr:`FileSource.repeats`), not
delivered. The source is :class:`~shardbill.worker.protocols.Finite`: a
:class:`~shardbill.worker.Worker` on it stops by itself at the end.

Commits are kept in memory (:attr:`FileSource.committed`: the line below
which every record is done); a file is made whole again by running it again,
the ledger skipping what was applied, as with ``ingest``.

:func:`shardbill.ingest.ingest` runs on it: the same batching, commit and
shutdown code for a file as for a stream (issue 19).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import IO, TYPE_CHECKING

from shardbill.errors import ConfigurationError, StreamError
from shardbill.worker.protocols import RebalanceListener
from shardbill.worker.records import Partition, Record, Stage

if TYPE_CHECKING:
    from shardbill.ingest import Item, RejectedLine

__all__ = ["FileSource"]

_STAGES = {"parse": Stage.DECODE, "event": Stage.DECODE, "conflict": Stage.CONFLICT}


class FileSource:
    """The events of one file or stream (see the module docstring).

    Args:
        events: a path, or an open binary stream (``sys.stdin.buffer``; read, not closed).
        fmt: ``"jsonl"`` or ``"csv"`` (default: from the path's extension; a stream needs it).
        account_as_int: parse a text ``account`` as an integer (an integer account column).
        name: the partition's topic name (default: the file's name, ``-`` for a stream).
        sleep: how a poll with nothing to return waits (paused, or at the end).
        on_bytes: called with the bytes read so far (for progress).

    Raises:
        ConfigurationError: no format given for a stream, or none to tell from the path.
    """

    def __init__(
        self,
        events: str | os.PathLike[str] | IO[bytes],
        *,
        fmt: str | None = None,
        account_as_int: bool = False,
        name: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        from shardbill.ingest import Format, detect_format

        if isinstance(events, str | os.PathLike):
            self._path: Path | None = Path(events)
            self._stream: IO[bytes] | None = None
            self._format = detect_format(self._path, fmt)
            default = self._path.name
        else:
            if fmt is None:
                raise ConfigurationError(
                    "FileSource on a stream: give fmt='jsonl' or fmt='csv' (a stream has no "
                    "extension to tell it from)"
                )
            self._path, self._stream = None, events
            self._format = Format(detect_format("-", fmt))
            default = "-"
        self._account_as_int = account_as_int
        self._sleep = sleep
        self._on_bytes = on_bytes
        self._rejected: dict[int, RejectedLine] = {}
        self.items = 0
        """Records read (repeats and the ones with no event included; blank lines not)."""
        self.events = 0
        """Records read with an event, the first of their id in the stream."""
        self.last_line = 0
        """The line number of the last record read."""
        self.partition: Partition = (name or default, 0)
        """The one partition, ``(NAME, 0)``."""
        self._listener: RebalanceListener | None = None
        self._handle: IO[bytes] | None = None
        self._items: Iterator[Item] | None = None
        self._assigned = False
        self._exhausted = False
        self._paused = False
        self._held = False
        self.repeats = 0
        """Records repeating an earlier one of the stream (same id and content): counted once."""
        self.committed = 0
        """The line number below which every record is done (0: nothing committed)."""

    def __repr__(self) -> str:
        return f"FileSource({self.partition[0]!r}, fmt={self._format.value!r})"

    @property
    def exhausted(self) -> bool:
        """True once every record of the stream was returned."""
        return self._exhausted

    def start(self, listener: RebalanceListener) -> None:
        """Open the file (a stream is used as given); the first poll assigns the partition.

        Raises:
            StreamError: the file cannot be opened.
        """
        from shardbill.ingest import read_stream

        self._listener = listener
        if self._path is not None:
            try:
                self._handle = self._path.open("rb")
            except OSError as exc:
                raise StreamError(f"{self._path}: cannot read the events file: {exc}") from exc
        stream = self._handle if self._handle is not None else self._stream
        assert stream is not None  # noqa: S101 - a path was opened, or a stream given
        self._items = read_stream(
            stream, fmt=self._format, account_as_int=self._account_as_int, on_bytes=self._on_bytes
        )

    def poll(self, max_records: int, timeout: float) -> Sequence[Record]:
        """Up to ``max_records`` records in stream order (none while paused)."""
        from shardbill.ingest import FileEvent, RejectedLine, Repeat

        if self._listener is None or self._items is None:
            raise StreamError("poll() before start(): start the source first")
        if not self._assigned:
            self._assigned = True
            self._listener.assigned([self.partition])
        out: list[Record] = []
        if self._paused or self._held or self._exhausted:
            if timeout > 0:  # a worker waiting for a failed shard must not spin
                self._sleep(timeout)
            return out
        topic = self.partition[0]
        while len(out) < max_records:
            item = next(self._items, None)
            if item is None:
                self._exhausted = True
                break
            self.items += 1
            self.last_line = item.line
            if isinstance(item, Repeat):
                self.repeats += 1
            elif isinstance(item, FileEvent):
                self.events += 1
                value = item.text.encode("utf-8", errors="replace")
                out.append(
                    Record(
                        topic=topic, partition=0, offset=item.line, value=value, event=item.event
                    )
                )
            elif isinstance(item, RejectedLine):
                self._rejected[item.line] = item
                value = item.text.encode("utf-8", errors="replace")
                out.append(
                    Record(
                        topic=topic,
                        partition=0,
                        offset=item.line,
                        value=value,
                        refused=(_STAGES[item.stage], item.reason),
                    )
                )
        return out

    def pop_rejected(self, line: int) -> RejectedLine | None:
        """The reader's own rejection of the record at ``line`` (its ``ingest`` stage, ``parse``,
        ``event`` or ``conflict``, and text), once; None for a record delivered with an event."""
        return self._rejected.pop(line, None)

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Remember the committed line (in memory)."""
        offset = offsets.get(self.partition)
        if offset is not None and offset > self.committed:
            self.committed = offset

    def pause(self, paused: bool) -> None:
        """Stop or resume returning records."""
        self._paused = paused

    def pause_partitions(self, partitions: AbstractSet[Partition]) -> None:
        """Return nothing while the one partition is among ``partitions``."""
        self._held = self.partition in partitions

    def close(self) -> None:
        """Revoke the partition (the worker commits what is done) and close the file."""
        if self._listener is not None and self._assigned:
            self._assigned = False
            self._listener.revoked([self.partition])
        if self._handle is not None:
            self._handle.close()
            self._handle = None
