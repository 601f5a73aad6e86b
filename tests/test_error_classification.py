"""translate(): driver exceptions to shardbill errors, by error number only.

The driver exceptions here are instances of the drivers' real classes (or
real sqlite3 errors provoked on a real database); the server-side events are
provoked for real in tests/test_error_classification_mysql.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shardbill.dialects import (
    error_number,
    is_connection_error,
    is_driver_error,
    translate,
    translating,
)
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
    RetryableError,
)

pymysql = pytest.importorskip("pymysql")
MySQLdb = pytest.importorskip("MySQLdb")

EXPECTED: list[tuple[int, type[DatabaseError]]] = [
    (1213, DeadlockError),
    (1205, LockWaitTimeoutError),
    (3572, LockWaitTimeoutError),
    (1290, ReadOnlyError),
    (1836, ReadOnlyError),
    (1792, ReadOnlyError),
    (2006, ConnectionLostError),
    (2013, ConnectionLostError),
    (2055, ConnectionLostError),
    (2014, ConnectionLostError),
    (1927, ConnectionLostError),
    (4031, ConnectionLostError),
    (1053, ConnectionLostError),
    (2002, CannotConnectError),
    (2003, CannotConnectError),
    (2005, CannotConnectError),
    (1040, CannotConnectError),
    (1203, CannotConnectError),
    (1226, CannotConnectError),
    (1317, QueryInterruptedError),
    (3024, QueryInterruptedError),
    (1969, QueryInterruptedError),
    (1062, DuplicateKeyError),
    (1586, DuplicateKeyError),
    (1146, FatalDatabaseError),
    (1142, FatalDatabaseError),
    (1044, FatalDatabaseError),
    (1045, FatalDatabaseError),
    (1064, FatalDatabaseError),
    (2026, FatalDatabaseError),
    (1129, FatalDatabaseError),
]

DRIVER_CLASSES = [
    pymysql.err.OperationalError,
    pymysql.err.IntegrityError,
    pymysql.err.ProgrammingError,
    pymysql.err.InternalError,
    MySQLdb.OperationalError,
    MySQLdb.IntegrityError,
    MySQLdb.ProgrammingError,
]


@pytest.mark.parametrize(("errno", "expected"), EXPECTED)
@pytest.mark.parametrize(
    "driver_class", DRIVER_CLASSES, ids=lambda c: f"{c.__module__}.{c.__name__}"
)
def test_errno_decides_the_class_whatever_the_driver_class(
    errno: int, expected: type[DatabaseError], driver_class: type[Exception]
) -> None:
    """The same errno gives the same shardbill class from any driver exception class."""
    error = translate(driver_class(errno, "server said no"), shard="s1")
    assert type(error) is expected
    assert error.errno == errno
    assert error.shard == "s1"


@pytest.mark.parametrize("errno", [2006, 2013, 2055, 1927, 4031])
def test_connection_lost_during_commit_means_outcome_unknown(errno: int) -> None:
    """A lost connection while committing is CommitOutcomeUnknownError (still retryable)."""
    error = translate(pymysql.err.OperationalError(errno, "gone"), during_commit=True)
    assert type(error) is CommitOutcomeUnknownError
    assert isinstance(error, ConnectionLostError)
    assert isinstance(error, RetryableError)


def test_other_errors_during_commit_keep_their_class() -> None:
    """during_commit changes only connection-lost errors."""
    error = translate(MySQLdb.OperationalError(1213, "deadlock"), during_commit=True)
    assert type(error) is DeadlockError


def test_message_names_shard_errno_driver_message_and_advice() -> None:
    """The message carries the shard, the errno, the driver's text and what to do."""
    cause = pymysql.err.OperationalError(1205, "Lock wait timeout exceeded; try restarting")
    error = translate(cause, shard="eu-7")
    message = str(error)
    assert "'eu-7'" in message
    assert "1205" in message
    assert "Lock wait timeout exceeded" in message
    assert "retry" in message
    assert error.__cause__ is cause


def test_classification_ignores_the_message_text() -> None:
    """A message that reads like a deadlock does not make an unknown errno a deadlock."""
    error = translate(pymysql.err.OperationalError(1146, "Deadlock found when trying to get lock"))
    assert type(error) is FatalDatabaseError


def test_pymysql_closed_connection_is_connection_lost() -> None:
    """PyMySQL's InterfaceError(0, '') on a closed connection is ConnectionLostError."""
    assert type(translate(pymysql.err.InterfaceError(0, ""))) is ConnectionLostError
    assert type(translate(pymysql.err.InterfaceError())) is ConnectionLostError


def test_error_without_a_number_is_fatal() -> None:
    """A driver error carrying no errno is FatalDatabaseError with errno None."""
    error = translate(pymysql.err.ProgrammingError("bad"))
    assert type(error) is FatalDatabaseError
    assert error.errno is None


def test_translate_passes_shardbill_errors_through() -> None:
    """Translating an already translated error returns it, filling in a missing shard."""
    original = DeadlockError("x", errno=1213)
    assert translate(original, shard="s9") is original
    assert original.shard == "s9"


def test_translate_upgrades_a_translated_lost_connection_during_commit() -> None:
    """A ConnectionLostError seen at COMMIT becomes CommitOutcomeUnknownError, cause kept."""
    cause = pymysql.err.OperationalError(2013, "Lost connection")
    lost = translate(cause, shard="s")
    upgraded = translate(lost, during_commit=True)
    assert type(upgraded) is CommitOutcomeUnknownError
    assert upgraded.__cause__ is cause
    assert upgraded.errno == 2013


def test_is_driver_error_recognises_driver_exceptions_only() -> None:
    """Driver exceptions are recognised by their module; ordinary exceptions are not."""
    assert is_driver_error(pymysql.err.OperationalError(1, "x"))
    assert is_driver_error(MySQLdb.OperationalError(1, "x"))
    assert is_driver_error(sqlite3.OperationalError("x"))
    assert not is_driver_error(ValueError(1, "x"))
    assert not is_driver_error(OSError(111, "refused"))
    assert not is_driver_error(DeadlockError("x"))


def test_error_number_reads_args_or_errno() -> None:
    """error_number takes args[0] for MySQL drivers and None when there is no number."""
    assert error_number(MySQLdb.OperationalError(2006, "gone")) == 2006
    assert error_number(pymysql.err.Error("Already closed")) is None


def test_is_connection_error() -> None:
    """Lost and cannot-connect errors (raw or translated) mean the connection must go."""
    assert is_connection_error(pymysql.err.OperationalError(2013, "lost"))
    assert is_connection_error(CannotConnectError("x"))
    assert not is_connection_error(pymysql.err.OperationalError(1213, "deadlock"))
    assert not is_connection_error(QueryInterruptedError("x"))
    assert not is_connection_error(RuntimeError("x"))


def test_translating_context_manager() -> None:
    """translating() converts driver errors with __cause__ and leaves other exceptions alone."""
    cause = MySQLdb.OperationalError(1205, "lock wait")
    with pytest.raises(LockWaitTimeoutError) as info, translating("s2"):
        raise cause
    assert info.value.__cause__ is cause
    assert info.value.shard == "s2"
    with pytest.raises(KeyError), translating("s2"):
        raise KeyError("not a database error")
    already = DuplicateKeyError("dup", errno=1062)
    with pytest.raises(DuplicateKeyError) as again, translating("s3"):
        raise already
    assert again.value is already
    assert already.__cause__ is None


# --- sqlite3, provoked for real --------------------------------------------------------------


def test_sqlite_busy_is_lock_wait_timeout(tmp_path: Path) -> None:
    """A writer that cannot get the file lock (SQLITE_BUSY) gets LockWaitTimeoutError."""
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError) as info:
        waiter.execute("BEGIN IMMEDIATE")
    error = translate(info.value, shard="lite")
    assert type(error) is LockWaitTimeoutError
    assert error.errno is not None
    assert error.errno & 0xFF == 5  # SQLITE_BUSY
    assert "SQLITE_BUSY" in str(error)
    holder.close()
    waiter.close()


@pytest.mark.parametrize(
    ("ddl", "insert"),
    [
        ("CREATE TABLE t (k INTEGER PRIMARY KEY, v INT)", "INSERT INTO t VALUES (1, 1)"),
        ("CREATE TABLE t (k TEXT PRIMARY KEY, v INT)", "INSERT INTO t VALUES ('a', 1)"),
        ("CREATE TABLE t (k INT, v INT, UNIQUE (k))", "INSERT INTO t VALUES (1, 1)"),
    ],
)
def test_sqlite_constraint_is_duplicate_key(ddl: str, insert: str) -> None:
    """A PRIMARY KEY or UNIQUE violation in SQLite is DuplicateKeyError."""
    conn = sqlite3.connect(":memory:")
    conn.execute(ddl)
    conn.execute(insert)
    with pytest.raises(sqlite3.IntegrityError) as info:
        conn.execute(insert)
    assert type(translate(info.value)) is DuplicateKeyError


def test_sqlite_not_null_is_fatal() -> None:
    """Other constraint failures (NOT NULL) are not duplicates: FatalDatabaseError."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v INT NOT NULL)")
    with pytest.raises(sqlite3.IntegrityError) as info:
        conn.execute("INSERT INTO t VALUES (1, NULL)")
    assert type(translate(info.value)) is FatalDatabaseError


def test_sqlite_interrupt_is_query_interrupted() -> None:
    """A statement aborted by an interrupt (SQLITE_INTERRUPT) is QueryInterruptedError."""
    conn = sqlite3.connect(":memory:")
    conn.set_progress_handler(lambda: 1, 1)  # abort at the first VM step
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
        )
    assert type(translate(info.value)) is QueryInterruptedError


def test_sqlite_cannot_open_is_cannot_connect(tmp_path: Path) -> None:
    """A shard file that cannot be opened (SQLITE_CANTOPEN) is CannotConnectError."""
    with pytest.raises(sqlite3.OperationalError) as info:
        sqlite3.connect(tmp_path / "missing-dir" / "s.db")
    assert type(translate(info.value)) is CannotConnectError


def test_sqlite_unknown_table_is_fatal() -> None:
    """An unknown table in SQLite is FatalDatabaseError."""
    conn = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute("SELECT * FROM nope")
    assert type(translate(info.value)) is FatalDatabaseError
