"""A dead-letter sink that needs no broker: a JSON Lines file, synced before offsets move.

Each letter is one line (:meth:`shardbill.worker.DeadLetter.to_dict`:
source topic, partition and offset, event id, stage, reason, key, value).
The file is appended to and ``fsync``-ed before :meth:`JsonlDeadLetters.send`
returns, so a letter whose offset is committed is on disk. A crash between
the sync and the commit writes the letter again on redelivery: read the file
as at-least-once (the ``topic``/``partition``/``offset`` triple identifies a
letter).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from shardbill.worker.records import DeadLetter

__all__ = ["JsonlDeadLetters"]


class JsonlDeadLetters:
    """Appends dead letters to a JSON Lines file.

    Args:
        path: the file (created if missing; never truncated).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)

    @property
    def path(self) -> str:
        """The file."""
        return self._path

    def send(self, letters: Iterable[DeadLetter]) -> None:
        """Append the letters and sync the file.

        Raises:
            OSError: the file cannot be written (the worker sends them again later).
        """
        text = "".join(json.dumps(d.to_dict(), ensure_ascii=False) + "\n" for d in letters)
        if not text:
            return
        with open(self._path, "a", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())

    def __repr__(self) -> str:
        return f"JsonlDeadLetters({self._path!r})"
