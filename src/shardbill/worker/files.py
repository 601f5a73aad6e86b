"""A directory of JSON Lines files as a worker source (no broker needed; pairs with SQLite shards).

:class:`DirectorySource` treats each ``*.jsonl`` file of a directory as one
partition, ``(file name, 0)``, and a record's offset as its line index (0 for
the first line). Files are read in name order, complete lines only (a line
still being written, with no newline yet, waits for the next poll); new files
are picked up as they appear (the first poll reports an assignment even
when there is no file yet, so ``exit_when_idle`` ends a run on an empty
directory). Committed offsets (per file, the index of the
next line to read) go to an offsets file (default ``.shardbill-offsets.json``
in the directory), written to a temporary file, synced and renamed, so a
commit is durable and all or nothing. The worker commits only after the
ledger holds the lines below, so a restart resumes exactly at the first line
not done and a crash only redelivers lines the ledger reports as duplicates.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import IO

from shardbill.errors import ConfigurationError, StreamError
from shardbill.worker.protocols import RebalanceListener
from shardbill.worker.records import Partition, Record

__all__ = ["DirectorySource"]

OFFSETS_FILE = ".shardbill-offsets.json"


class DirectorySource:
    """The ``pattern`` files of ``directory`` as partitions (see the module docstring).

    Args:
        directory: the directory of event files.
        pattern: the file names read (a glob).
        offsets: the offsets file (default ``directory/.shardbill-offsets.json``).
        sleep: how an empty poll waits.

    Raises:
        ConfigurationError: ``directory`` is not a directory, or the offsets file
            is not one this source wrote.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        pattern: str = "*.jsonl",
        offsets: str | os.PathLike[str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._dir = Path(directory)
        if not self._dir.is_dir():
            raise ConfigurationError(
                f"DirectorySource: {str(self._dir)!r} is not a directory: give the directory "
                "of the .jsonl event files"
            )
        self._pattern = pattern
        self._offsets_path = Path(offsets) if offsets is not None else self._dir / OFFSETS_FILE
        self._sleep = sleep
        self._committed = self._load()
        self._listener: RebalanceListener | None = None
        self._files: dict[Partition, IO[bytes]] = {}
        self._next: dict[Partition, int] = {}
        self._paused = False
        self._held: frozenset[Partition] = frozenset()
        self._scanned = False

    def _load(self) -> dict[str, int]:
        if not self._offsets_path.exists():
            return {}
        try:
            data = json.loads(self._offsets_path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in data.items()
            ):
                raise ValueError("not an object of file name -> line index")
        except ValueError as exc:
            raise ConfigurationError(
                f"DirectorySource: the offsets file {str(self._offsets_path)!r} is not valid "
                f"({exc}); restore it, or remove it to read every file from its first line"
            ) from None
        return dict(data)

    @property
    def committed(self) -> dict[str, int]:
        """File name -> the index of the next line to read, as last committed."""
        return dict(self._committed)

    def start(self, listener: RebalanceListener) -> None:
        """Remember the listener; the first poll assigns the files found."""
        self._listener = listener

    def _scan(self) -> None:
        assert self._listener is not None  # noqa: S101 - set in start()
        new: list[Partition] = []
        for path in sorted(self._dir.glob(self._pattern)):
            partition = (path.name, 0)
            if partition in self._files or not path.is_file():
                continue
            handle = path.open("rb")
            skip = self._committed.get(path.name, 0)
            for _ in range(skip):
                if not handle.readline().endswith(b"\n"):
                    handle.close()
                    raise StreamError(
                        f"{path}: the committed offset {skip} is past the file's complete "
                        "lines; was the file truncated or replaced?"
                    )
            self._files[partition] = handle
            self._next[partition] = skip
            new.append(partition)
        if new or not self._scanned:  # the directory is this reader's even with no file yet
            self._scanned = True
            self._listener.assigned(new)

    def poll(self, max_records: int, timeout: float) -> Sequence[Record]:
        """Up to ``max_records`` complete lines, file after file; waits when there are none."""
        if self._listener is None:
            raise StreamError("poll() before start(): start the source first")
        self._scan()
        out: list[Record] = []
        if not self._paused:
            for partition, handle in self._files.items():
                if partition in self._held:
                    continue
                while len(out) < max_records:
                    where = handle.tell()
                    line = handle.readline()
                    if not line.endswith(b"\n"):
                        handle.seek(where)  # incomplete (or none): read it when it is whole
                        break
                    offset = self._next[partition]
                    self._next[partition] = offset + 1
                    if line.strip():
                        out.append(
                            Record(
                                topic=partition[0], partition=0, offset=offset, value=line.strip()
                            )
                        )
                if len(out) >= max_records:
                    break
        if not out and timeout > 0:
            self._sleep(timeout)
        return out

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Write the offsets durably (temporary file, fsync, rename)."""
        merged = dict(self._committed)
        for (name, _), offset in offsets.items():
            merged[name] = offset
        temporary = self._offsets_path.with_name(self._offsets_path.name + ".tmp")
        try:
            with temporary.open("w", encoding="utf-8") as out:
                json.dump(merged, out, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            temporary.replace(self._offsets_path)
        except OSError as exc:
            raise StreamError(f"offsets file {str(self._offsets_path)!r}: {exc}") from exc
        self._committed = merged

    def pause(self, paused: bool) -> None:
        """Stop or resume returning records."""
        self._paused = paused

    def pause_partitions(self, partitions: AbstractSet[Partition]) -> None:
        """Return no lines of these files (until called again without them)."""
        self._held = frozenset(partitions)

    def close(self) -> None:
        """Revoke every file (the worker commits what is done) and close them."""
        if self._listener is not None and self._files:
            self._listener.revoked(sorted(self._files))
        for handle in self._files.values():
            handle.close()
        self._files = {}
