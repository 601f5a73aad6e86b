"""Driver exceptions to shardbill errors, by error number, at exactly one edge.

:func:`translate` maps an exception from PyMySQL, mysqlclient (``MySQLdb``)
or ``sqlite3`` to a :class:`~shardbill.errors.DatabaseError` subclass. The
classification uses only the error number (``exc.args[0]`` for the MySQL
drivers, ``exc.errno`` for drivers that have it, ``sqlite_errorcode`` for
sqlite3), never the message text, so both MySQL drivers raise the same
shardbill error for the same server event. The driver exception becomes the
``__cause__``.

========================================  ================================================
errno                                     shardbill error
========================================  ================================================
1213                                      :class:`~shardbill.errors.DeadlockError`
1205, 3572; SQLite BUSY, LOCKED           :class:`~shardbill.errors.LockWaitTimeoutError`
1290, 1836, 1792                          :class:`~shardbill.errors.ReadOnlyError`
2006, 2013, 2055, 2014, 1927, 4031,       :class:`~shardbill.errors.ConnectionLostError`
1053, 0 (PyMySQL: connection closed)      (:class:`~shardbill.errors.CommitOutcomeUnknownError`
                                          when ``during_commit``)
2002, 2003, 2005, 1040, 1203, 1226;       :class:`~shardbill.errors.CannotConnectError`
SQLite CANTOPEN
1317, 3024, 1969; SQLite INTERRUPT        :class:`~shardbill.errors.QueryInterruptedError`
1062, 1586; SQLite CONSTRAINT_PRIMARYKEY  :class:`~shardbill.errors.DuplicateKeyError`
and CONSTRAINT_UNIQUE
1264, 1690; SQLite CONSTRAINT_CHECK       :class:`~shardbill.errors.RowOverflowError`
anything else                             :class:`~shardbill.errors.FatalDatabaseError`
========================================  ================================================
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Final

from shardbill.errors import (
    CannotConnectError,
    CommitOutcomeUnknownError,
    ConnectionLostError,
    DatabaseError,
    DeadlockError,
    DuplicateKeyError,
    FatalDatabaseError,
    LockWaitTimeoutError,
    QueryInterruptedError,
    ReadOnlyError,
    RowOverflowError,
)

__all__ = [
    "CANNOT_CONNECT",
    "CONNECTION_LOST",
    "DEADLOCK",
    "DUPLICATE_KEY",
    "LOCK_WAIT_TIMEOUT",
    "QUERY_INTERRUPTED",
    "READ_ONLY",
    "ROW_OVERFLOW",
    "error_number",
    "is_connection_error",
    "is_driver_error",
    "translate",
    "translating",
]

DEADLOCK: Final = frozenset({1213})
"""ER_LOCK_DEADLOCK."""
LOCK_WAIT_TIMEOUT: Final = frozenset({1205, 3572})
"""ER_LOCK_WAIT_TIMEOUT, ER_LOCK_NOWAIT."""
READ_ONLY: Final = frozenset({1290, 1836, 1792})
"""ER_OPTION_PREVENTS_STATEMENT (``--read-only``), ER_READ_ONLY_MODE,
ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION."""
CONNECTION_LOST: Final = frozenset({0, 2006, 2013, 2055, 2014, 1927, 4031, 1053})
"""CR_SERVER_GONE_ERROR, CR_SERVER_LOST, CR_SERVER_LOST_EXTENDED, CR_COMMANDS_OUT_OF_SYNC,
ER_CONNECTION_KILLED (MariaDB), ER_CLIENT_INTERACTION_TIMEOUT, ER_SERVER_SHUTDOWN, and 0:
PyMySQL's ``InterfaceError(0, '')`` on a closed connection."""
CANNOT_CONNECT: Final = frozenset({2002, 2003, 2005, 1040, 1203, 1226})
"""CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR, CR_UNKNOWN_HOST, ER_CON_COUNT_ERROR,
ER_TOO_MANY_USER_CONNECTIONS, ER_USER_LIMIT_REACHED."""
QUERY_INTERRUPTED: Final = frozenset({1317, 3024, 1969})
"""ER_QUERY_INTERRUPTED, ER_QUERY_TIMEOUT (MySQL ``max_execution_time``),
ER_STATEMENT_TIMEOUT (MariaDB ``max_statement_time``)."""
DUPLICATE_KEY: Final = frozenset({1062, 1586})
"""ER_DUP_ENTRY, ER_DUP_ENTRY_WITH_KEY_NAME."""
ROW_OVERFLOW: Final = frozenset({1264, 1690})
"""ER_WARN_DATA_OUT_OF_RANGE (strict mode), ER_DATA_OUT_OF_RANGE (BIGINT arithmetic)."""

_BY_ERRNO: Final[dict[int, type[DatabaseError]]] = {
    errno: kind
    for numbers, kind in (
        (DEADLOCK, DeadlockError),
        (LOCK_WAIT_TIMEOUT, LockWaitTimeoutError),
        (READ_ONLY, ReadOnlyError),
        (CONNECTION_LOST, ConnectionLostError),
        (CANNOT_CONNECT, CannotConnectError),
        (QUERY_INTERRUPTED, QueryInterruptedError),
        (DUPLICATE_KEY, DuplicateKeyError),
        (ROW_OVERFLOW, RowOverflowError),
    )
    for errno in numbers
}

# SQLite result codes (https://sqlite.org/rescode.html).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_INTERRUPT = 9
_SQLITE_CANTOPEN = 14
_SQLITE_CONSTRAINT_CHECK = 275  # shardbill's only CHECKs: measures are exact integers
_SQLITE_CONSTRAINT_PRIMARYKEY = 1555
_SQLITE_CONSTRAINT_UNIQUE = 2067

_DRIVER_MODULES: Final = frozenset(
    {"pymysql", "MySQLdb", "_mysql_exceptions", "mysql", "mariadb", "sqlite3"}
)

_ADVICE: Final[dict[type[DatabaseError], str]] = {
    DeadlockError: "the server rolled the transaction back; retry it from the start",
    LockWaitTimeoutError: "a lock was not granted in time; roll back and retry",
    ReadOnlyError: "the server is read-only (failover?); back off, then retry",
    CommitOutcomeUnknownError: (
        "the connection was lost during COMMIT, which may or may not have happened; "
        "retry through the ledger, never blindly"
    ),
    ConnectionLostError: "the connection is gone; retry the transaction on a new connection",
    CannotConnectError: "the server is unreachable or full; back off, then retry",
    QueryInterruptedError: "the statement was killed or timed out; roll back and retry",
    DuplicateKeyError: "a row with this key already exists",
    RowOverflowError: (
        "an aggregate value would leave its column's range (BIGINT, or DECIMAL(65,0) for a "
        "wide measure); the writer rejects the events that overflow (give the measure a "
        "coarser scale, or declare it wide=True on MySQL/MariaDB)"
    ),
    FatalDatabaseError: "retrying will not help; fix the cause (grants, schema, SQL, TLS)",
}


def is_driver_error(exc: BaseException) -> bool:
    """True when ``exc`` comes from a DB-API driver (PyMySQL, mysqlclient, sqlite3, ...).

    Recognised by the module of the driver's ``Error`` class, so no driver is
    imported to check.
    """
    if isinstance(exc, sqlite3.Error):
        return True
    for klass in type(exc).__mro__:
        if klass.__name__ in ("Error", "MySQLError") and (
            klass.__module__.partition(".")[0] in _DRIVER_MODULES
        ):
            return True
    return False


def error_number(exc: BaseException) -> int | None:
    """The driver's error number for ``exc``, or ``None`` when it has none.

    ``sqlite_errorcode`` (the extended result code) for sqlite3,
    ``exc.errno`` when it is an int (mysql-connector style), else
    ``exc.args[0]`` when it is an int (PyMySQL, mysqlclient).
    """
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code if isinstance(code, int) else None
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and not isinstance(errno, bool):
        return errno
    if exc.args and isinstance(exc.args[0], int) and not isinstance(exc.args[0], bool):
        return exc.args[0]
    return None


def _driver_message(exc: BaseException) -> str:
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", None)
        return f"{name}: {exc}" if name else str(exc)
    if len(exc.args) >= 2 and isinstance(exc.args[0], int):
        return str(exc.args[1])
    return str(exc)


_SQLITE_BY_PRIMARY: Final[dict[int, type[DatabaseError]]] = {
    _SQLITE_BUSY: LockWaitTimeoutError,
    _SQLITE_LOCKED: LockWaitTimeoutError,
    _SQLITE_INTERRUPT: QueryInterruptedError,
    _SQLITE_CANTOPEN: CannotConnectError,
}
_SQLITE_BY_EXTENDED: Final[dict[int, type[DatabaseError]]] = {
    _SQLITE_CONSTRAINT_PRIMARYKEY: DuplicateKeyError,
    _SQLITE_CONSTRAINT_UNIQUE: DuplicateKeyError,
    _SQLITE_CONSTRAINT_CHECK: RowOverflowError,
}


def _classify_sqlite(code: int | None) -> type[DatabaseError]:
    if code is None:
        return FatalDatabaseError
    return _SQLITE_BY_PRIMARY.get(code & 0xFF) or _SQLITE_BY_EXTENDED.get(code, FatalDatabaseError)


def _tls_failure(exc: BaseException) -> bool:
    """True when the exception chain holds an ssl.SSLError (a certificate or handshake failure)."""
    import ssl

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _classify_mysql(errno: int | None, exc: BaseException) -> type[DatabaseError]:
    # PyMySQL reports a failed certificate check as "can't connect" (2003); the
    # caller renumbers it 2026, as mysqlclient reports it, and retrying cannot fix it.
    if errno == 2026:
        return FatalDatabaseError
    if errno is None:
        # PyMySQL raises InterfaceError (without a number, or with 0) for a
        # connection it already closed; classify by type, never by message.
        if type(exc).__name__ == "InterfaceError":
            return ConnectionLostError
        return FatalDatabaseError
    return _BY_ERRNO.get(errno, FatalDatabaseError)


def translate(
    exc: BaseException, *, shard: str | None = None, during_commit: bool = False
) -> DatabaseError:
    """The shardbill error for a driver exception; raise it ``from exc``.

    Example:
        >>> try:  # doctest: +SKIP
        ...     cursor.execute(sql, params)
        ... except Exception as exc:
        ...     if is_driver_error(exc):
        ...         raise translate(exc, shard="shard-3") from exc
        ...     raise

    Args:
        exc: the exception a driver raised. A shardbill ``DatabaseError`` is
            returned as it is (its ``shard`` filled in when missing; upgraded
            to ``CommitOutcomeUnknownError`` when ``during_commit``), so code
            that may see either kind can call this; re-raise it with a bare
            ``raise`` when the result ``is exc``, or use :func:`translating`.
        shard: the shard the statement ran on, for the message and ``.shard``.
        during_commit: the exception came from COMMIT: a lost connection
            then becomes :class:`~shardbill.errors.CommitOutcomeUnknownError`.

    Returns:
        The error, with ``errno``, ``shard`` and ``__cause__`` (= ``exc``)
        set. Its message holds the shard, the errno, the driver's message and
        what to do; never a password.
    """
    if isinstance(exc, DatabaseError):
        if shard is not None and exc.shard is None:
            exc.shard = shard
        if (
            during_commit
            and isinstance(exc, ConnectionLostError)
            and not isinstance(exc, CommitOutcomeUnknownError)
        ):
            upgraded = CommitOutcomeUnknownError(
                f"{exc} (during COMMIT: outcome unknown; retry through the ledger)",
                errno=exc.errno,
                shard=exc.shard,
            )
            upgraded.__cause__ = exc.__cause__ or exc
            return upgraded
        return exc
    errno = error_number(exc)
    if errno == 2003 and _tls_failure(exc):
        errno = 2026  # CR_SSL_CONNECTION_ERROR, as mysqlclient reports it
    if isinstance(exc, sqlite3.Error):
        kind = _classify_sqlite(errno)
    else:
        kind = _classify_mysql(errno, exc)
    if during_commit and kind is ConnectionLostError:
        kind = CommitOutcomeUnknownError
    where = f"shard {shard!r}" if shard is not None else "the database"
    number = f"errno {errno}" if errno is not None else "no errno"
    error = kind(
        f"{kind.__name__} on {where} ({number}, {type(exc).__name__}): "
        f"{_driver_message(exc)}; {_ADVICE[kind]}",
        errno=errno,
        shard=shard,
    )
    error.__cause__ = exc
    return error


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` (a driver or shardbill error) means the connection is unusable.

    A pool discards a connection whose with-block raised such an error.
    """
    if isinstance(exc, DatabaseError):
        return isinstance(exc, ConnectionLostError | CannotConnectError)
    if is_driver_error(exc):
        return isinstance(translate(exc), ConnectionLostError | CannotConnectError)
    return False


@contextlib.contextmanager
def translating(shard: str | None = None, *, during_commit: bool = False) -> Iterator[None]:
    """Translate driver errors raised inside the block (others pass through unchanged).

    Example:
        >>> with translating("shard-3"):  # doctest: +SKIP
        ...     cursor.execute(sql, params)
    """
    try:
        yield
    except Exception as exc:
        if not (is_driver_error(exc) or isinstance(exc, DatabaseError)):
            raise
        error = translate(exc, shard=shard, during_commit=during_commit)
        if error is exc:
            raise
        raise error from error.__cause__
