"""Which dialect a connection speaks, asked of the connection itself.

:func:`dialect_for` works with the connections shardbill's providers lend and
with plain driver connections a user-written provider lends:

* a ``sqlite3.Connection`` gets a :class:`~shardbill.dialects.SQLiteDialect`
  with the library's version and binding limits (no query needed);
* any other connection is asked ``SELECT VERSION(), @@max_allowed_packet``:
  MariaDB (also when it reports ``5.5.5-10.x-MariaDB``) and MySQL < 8.0.20
  get the ``VALUES()`` form, MySQL >= 8.0.20 the row alias form.

The answer is cached per driver connection (and, for pooled connections, per
server), so asking again costs nothing.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from typing import Any

from shardbill.dialects.base import Dialect
from shardbill.dialects.mysql import MySQLDialect
from shardbill.dialects.sqlite import SQLiteDialect
from shardbill.dialects.translate import is_driver_error, translate
from shardbill.errors import ConfigurationError
from shardbill.protocols import KnowsDialect

__all__ = ["detect_dialect", "dialect_for"]

_cache: weakref.WeakKeyDictionary[Any, Dialect] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def dialect_for(connection: object) -> Dialect:
    """The dialect of the server behind ``connection``.

    Args:
        connection: a connection lent by a shardbill provider, or a plain
            ``sqlite3``, PyMySQL or mysqlclient connection. A MySQL connection
            runs one ``SELECT`` the first time (inside its current
            transaction, which it does not end).

    Raises:
        DatabaseError: the version query failed (translated driver error).
        ConfigurationError: the server is not one shardbill supports.

    Example:
        >>> import sqlite3
        >>> dialect_for(sqlite3.connect(":memory:")).name
        'sqlite'
    """
    if isinstance(connection, KnowsDialect):  # a pooled connection: detected once
        return connection.dialect
    return detect_dialect(connection)


def detect_dialect(raw: Any, *, shard: str | None = None) -> Dialect:
    """:func:`dialect_for` for a driver connection (no pooled-wrapper handling).

    Args:
        raw: a DB-API connection.
        shard: the shard, for error messages.
    """
    if isinstance(raw, sqlite3.Connection):
        return SQLiteDialect(
            version=sqlite3.sqlite_version_info,
            variable_limit=raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER),
            sql_length_limit=raw.getlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH),
        )
    try:
        with _cache_lock:
            cached = _cache.get(raw)
    except TypeError:  # not weak-referenceable: detect every time
        cached = None
    if cached is not None:
        return cached
    dialect = _query_mysql(raw, shard=shard)
    try:
        with _cache_lock:
            _cache[raw] = dialect
    except TypeError:
        pass
    return dialect


def _query_mysql(raw: Any, *, shard: str | None) -> Dialect:
    cursor = raw.cursor()
    try:
        cursor.execute("SELECT VERSION(), @@max_allowed_packet")
        row = cursor.fetchone()
    except Exception as exc:
        if is_driver_error(exc):
            raise translate(exc, shard=shard) from exc
        raise
    finally:
        cursor.close()
    if not row or not isinstance(row[0], str | bytes):
        raise ConfigurationError(
            f"cannot tell which SQL dialect {type(raw).__name__} speaks: SELECT VERSION() "
            f"returned {row!r}; shardbill supports MySQL, MariaDB and sqlite3 connections"
        )
    version = row[0].decode() if isinstance(row[0], bytes) else row[0]
    packet = int(row[1]) if row[1] is not None else 1 << 20
    return MySQLDialect.from_server_version(version, max_allowed_packet=packet)
