"""The stdlib sqlite3 driver (``sqlite:///`` URLs): one file per shard, the embedded default.

Each connection is opened with ``isolation_level=None`` (sqlite3 never opens
or ends transactions behind shardbill's back) and ``check_same_thread=False``
(the pool lends a connection to one thread at a time). A transaction starts
explicitly before the first statement of a with-block: ``BEGIN IMMEDIATE``
for writes (the file's write lock is taken up front, so two writers queue on
``busy_timeout`` instead of deadlocking at commit), plain ``BEGIN`` for
``readonly`` blocks. The journal is WAL (readers never block the writer) and
``synchronous`` is FULL unless the URL says ``normal``.

Values are adapted before binding: a ``Decimal`` becomes an ``int`` when it
is integral and its exact text otherwise (keep amounts in INTEGER minor
units); a ``date``/``datetime`` becomes ISO 8601 text.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar

from shardbill.errors import InvalidURLError
from shardbill.providers.pool import Driver
from shardbill.providers.url import ConnectionURL

__all__ = ["SQLiteDriver"]


def _adapt_value(value: Any) -> Any:  # noqa: PLR0911 - one return per type reads best
    kind = type(value)
    if kind is Decimal:
        if value == value.to_integral_value():
            return int(value)
        return format(value, "f")
    if kind is datetime.datetime:
        return value.isoformat(" ")
    if kind is datetime.date:
        return value.isoformat()
    if isinstance(value, datetime.datetime):
        return value.isoformat(" ")
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


_NEEDS_ADAPTING = (Decimal, datetime.date)


class SQLiteDriver(Driver):
    """Opens shard files with the standard library's sqlite3."""

    name: ClassVar[str] = "sqlite"
    explicit_begin: ClassVar[bool] = True
    adapts: ClassVar[bool] = True

    def load(self) -> None:
        """Nothing to load: sqlite3 is in the standard library."""

    def connect(self, url: ConnectionURL) -> Any:
        """Open ``url.path`` in WAL mode with the configured busy timeout."""
        if url.path is None:  # pragma: no cover - ConnectionURL guarantees a path
            raise InvalidURLError(f"{url} has no file path")
        directory = os.path.dirname(url.path)
        if not os.path.isdir(directory):
            # sqlite3 would say "unable to open database file", read as an unreachable server.
            raise InvalidURLError(
                f"sqlite shard file {url.path}: the directory {directory} does not exist; "
                "create it (shardbill creates the file, not its directory) or fix the URL"
            )
        conn = sqlite3.connect(
            url.path,
            timeout=url.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute(f"PRAGMA busy_timeout={int(url.busy_timeout * 1000)}")
            conn.execute(f"PRAGMA synchronous={url.synchronous.upper()}")
        except BaseException:
            conn.close()
            raise
        return conn

    def ping(self, raw: Any) -> None:
        """Run ``SELECT 1`` (fails on a closed connection)."""
        raw.execute("SELECT 1").fetchone()

    def begin(self, raw: Any, *, readonly: bool) -> None:
        """``BEGIN IMMEDIATE`` (or ``BEGIN`` when readonly) unless a transaction is open."""
        if not raw.in_transaction:
            raw.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")

    def adapt(self, params: Sequence[Any]) -> Sequence[Any]:
        """Decimals to int/text, dates to ISO text; other values unchanged."""
        for value in params:
            if isinstance(value, _NEEDS_ADAPTING):
                return [_adapt_value(item) for item in params]
        return params


DRIVER = SQLiteDriver()
