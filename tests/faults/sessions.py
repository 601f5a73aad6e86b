"""Other sessions on a shard: lock holders, deadlock makers, killers (root, direct, no proxy).

These play the rest of the world around a writer: an operator's transaction
that holds a row lock, an application that locks rows in the opposite order,
a DBA who kills a query or a connection. Every wait here is for a condition
the server reports (a transaction in LOCK WAIT, a query in the process
list), bounded by a deadline, never a sleep that hopes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Any, Generic, TypeVar

import pymysql
import pymysql.connections

from shardbill.observe import Committed, Observer, Retried, WriteEvent
from tests.faults.cluster import ShardCluster

__all__ = [
    "INNODB_TRX_CACHE",
    "Background",
    "Session",
    "Tripwire",
    "fresh",
    "kill",
    "lock_waits",
    "running",
    "sleeping",
    "wait_for",
]

_POLL = 0.005
_T = TypeVar("_T")


def wait_for(
    condition: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(_POLL)


class Session:
    """A root connection to one shard's database with autocommit off (a transaction holder).

    Use as a context manager; :meth:`close` rolls back what is still open.
    """

    def __init__(self, cluster: ShardCluster, shard: str) -> None:
        self.cluster = cluster
        self.shard = shard
        self.conn: pymysql.connections.Connection[Any] = cluster.server(shard).connect(
            cluster.database(shard)
        )
        self.conn.autocommit(False)
        self.thread_id: int = self.conn.thread_id()  # type: ignore[no-untyped-call]

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(
        self, sql: str, params: Sequence[object] | None = None
    ) -> tuple[tuple[Any, ...], ...]:
        """Run one statement in the open transaction; its rows."""
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return tuple(cur.fetchall())

    def rollback(self) -> None:
        """Roll the transaction back (its locks are released)."""
        self.conn.rollback()

    def close(self) -> None:
        """Roll back and close."""
        if self.conn.open:
            # A killed or broken session: closing is all that is left.
            with contextlib.suppress(pymysql.err.MySQLError):
                self.conn.rollback()
            self.conn.close()


INNODB_TRX_CACHE = 0.1
"""InnoDB refreshes its INFORMATION_SCHEMA transaction tables at most this often (s)."""


def fresh(condition: Callable[[], bool]) -> Callable[[], bool]:
    """``condition`` that only counts once a cached INNODB_TRX snapshot must be newer than now.

    A read of INNODB_TRX may return a snapshot up to ``INNODB_TRX_CACHE``
    seconds old, showing a transaction of a previous round; a read made that
    long after this call sees only what has happened since.
    """
    after = time.monotonic() + INNODB_TRX_CACHE * 1.5
    return lambda: time.monotonic() > after and condition()


def lock_waits(cluster: ShardCluster, shard: str, *, exclude: int) -> list[int]:
    """Server thread ids of transactions (other than ``exclude``'s) waiting for a row lock.

    INNODB_TRX is a snapshot refreshed at most every 0.1 s: wrap a poll of it
    in :func:`fresh`, and poll only for a state that lasts (a lock wait).
    """
    rows = cluster.rows(
        shard,
        "SELECT trx_mysql_thread_id FROM information_schema.INNODB_TRX "
        "WHERE trx_state = 'LOCK WAIT' AND trx_mysql_thread_id <> %s",
        (exclude,),
    )
    return [int(r[0]) for r in rows]


def running(cluster: ShardCluster, shard: str, prefix: str) -> list[int]:
    """Server thread ids whose current statement on ``shard``'s database starts with ``prefix``."""
    rows = cluster.rows(
        shard,
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND INFO LIKE %s "
        "AND ID <> CONNECTION_ID()",
        (cluster.database(shard), prefix.replace("%", r"\%").replace("_", r"\_") + "%"),
    )
    return [int(r[0]) for r in rows]


def sleeping(cluster: ShardCluster, shard: str) -> list[int]:
    """Server thread ids of idle connections (other than this one) to ``shard``'s database."""
    rows = cluster.rows(
        shard,
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND COMMAND = 'Sleep' "
        "AND ID <> CONNECTION_ID()",
        (cluster.database(shard),),
    )
    return [int(r[0]) for r in rows]


def kill(cluster: ShardCluster, shard: str, thread_id: int, *, query_only: bool) -> None:
    """``KILL QUERY`` or ``KILL CONNECTION`` one server thread."""
    what = "QUERY" if query_only else "CONNECTION"
    cluster.execute(shard, f"KILL {what} {int(thread_id)}")


class Tripwire:
    """An observer that counts retries by error class and wakes a waiter at a count.

    Args:
        forward: another observer to pass every event on to (e.g. a Stats).
    """

    def __init__(self, forward: Observer | None = None) -> None:
        self._forward = forward
        self._lock = threading.Lock()
        self.retries: Counter[str] = Counter()
        self.commits = 0
        self._waiters: list[tuple[frozenset[str], int, threading.Event]] = []

    def __call__(self, event: WriteEvent) -> None:
        """Count ``event`` and wake waiters whose count is reached."""
        if isinstance(event, Committed):
            with self._lock:
                self.commits += 1
        elif isinstance(event, Retried):
            with self._lock:
                self.retries[event.error] += 1
                for errors, target, flag in self._waiters:
                    if sum(self.retries[e] for e in errors) >= target:
                        flag.set()
        if self._forward is not None:
            self._forward(event)

    def arm(self, errors: Collection[str], count: int = 1) -> threading.Event:
        """An Event set once ``count`` more retries for any of ``errors`` have happened."""
        flag = threading.Event()
        names = frozenset(errors)
        with self._lock:
            self._waiters.append((names, sum(self.retries[e] for e in names) + count, flag))
        return flag


class Background(Generic[_T]):
    """Run ``fn`` on a thread now; :meth:`result` joins it and returns (or raises) its outcome."""

    def __init__(self, fn: Callable[[], _T], *, name: str = "fx-background") -> None:
        self._fn = fn
        self._value: _T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # handed to result()
            self._error = exc

    @property
    def done(self) -> bool:
        """True once ``fn`` has returned or raised."""
        return not self._thread.is_alive()

    def result(self, timeout: float = 120.0) -> _T:
        """Wait for ``fn`` (AssertionError after ``timeout`` s) and return its value."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"{self._thread.name} still running after {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set when no error
