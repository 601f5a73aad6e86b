"""A bounded, thread-safe connection pool per server, and the connections it lends.

:class:`ConnectionPool` keeps at most ``pool_size`` connections to one server
(one :class:`~shardbill.providers.url.ConnectionURL`). Borrowing blocks while
all are lent, for at most ``pool_timeout`` seconds, then raises
:class:`~shardbill.errors.PoolTimeoutError`. A connection idle for
``ping_after`` seconds or more is pinged before it is lent; a dead one is
closed and replaced. A connection whose with-block raised a connection-level
error (or whose rollback failed) is discarded, never lent again, and the
connections idle at that moment are pinged before their next loan (a server
restart kills them all at once).

The pool lends a :class:`LentConnection`: the driver's connection wrapped so
that

* every ``execute`` checks its parameters (:func:`~shardbill.providers.check_params`),
* driver errors come out translated (:func:`~shardbill.dialects.translate.translate`),
  with the driver's exception as ``__cause__``,
* it cannot be used once its with-block has ended (the pool may have lent
  the driver connection to another thread by then).

For a measured hot path, ``connection.cursor(check_params=False)`` skips the
parameter check (the caller then guarantees the types, e.g. through
:meth:`~shardbill.dialects.Dialect.render_literal`), and ``connection.raw`` is
the driver's connection itself.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import attrs

from shardbill.dialects.translate import is_connection_error, is_driver_error, translate
from shardbill.errors import (
    CannotConnectError,
    ConnectionLostError,
    DatabaseError,
    FatalDatabaseError,
    PoolTimeoutError,
)
from shardbill.providers.base import Row, check_params
from shardbill.providers.url import ConnectionURL

if TYPE_CHECKING:
    from shardbill.dialects.base import Dialect

__all__ = ["ConnectionPool", "Driver", "LentConnection", "LentCursor", "PoolStats"]

logger = logging.getLogger("shardbill.providers")


class Driver(abc.ABC):
    """The seam between the pool and one DB-API driver (one module per driver).

    Implementations import their driver lazily, inside their methods, so that
    ``import shardbill.providers`` never imports a MySQL driver.
    """

    name: ClassVar[str]
    """The URL driver name (``pymysql``, ``mysqldb``, ``sqlite``)."""

    @abc.abstractmethod
    def load(self) -> None:
        """Import the driver now.

        Raises:
            DriverNotInstalledError: it is not installed; the message names
                the extra to install.
        """

    @abc.abstractmethod
    def connect(self, url: ConnectionURL) -> Any:
        """Open a driver connection with autocommit off and the safe defaults.

        Raises:
            Exception: the driver's own errors (the pool translates them).
        """

    @abc.abstractmethod
    def ping(self, raw: Any) -> None:
        """Raise when ``raw`` is no longer usable (never reconnects)."""

    def begin(self, raw: Any, *, readonly: bool) -> None:  # noqa: B027 - optional hook
        """Start a transaction before a statement when the driver needs it done explicitly."""

    def adapt(self, params: Sequence[Any]) -> Sequence[Any]:
        """Convert checked parameter values the driver cannot bind as they are."""
        return params

    explicit_begin: ClassVar[bool] = False
    """True when :meth:`begin` must run before statements (sqlite3 with autocommit)."""
    adapts: ClassVar[bool] = False
    """True when :meth:`adapt` changes anything (skipped otherwise, for speed)."""


@attrs.frozen(kw_only=True)
class PoolStats:
    """A snapshot of one pool's counters.

    Attributes:
        max_size: the most connections the pool opens.
        open: connections open now (idle + lent + being opened).
        idle: connections waiting in the pool.
        created: connections opened since the pool was made.
        discarded: connections closed because they were dead, broken or
            closed by their borrower.
        loans: with-blocks served.
    """

    max_size: int
    open: int
    idle: int
    created: int
    discarded: int
    loans: int

    @property
    def lent(self) -> int:
        """Connections lent (or being opened) right now."""
        return self.open - self.idle


@attrs.define
class _Slot:
    raw: Any
    last_used: float


class ConnectionPool:
    """At most ``url.pool_size`` connections to one server, lent one with-block at a time.

    Thread-safe. Most code uses :class:`~shardbill.providers.PooledProvider`,
    which holds one pool per server URL.

    Args:
        url: the server; its ``pool_size``, ``pool_timeout`` and
            ``ping_after`` options configure the pool.
        driver: the driver module's :class:`Driver`.
    """

    def __init__(self, url: ConnectionURL, driver: Driver) -> None:
        self.url = url
        self.driver = driver
        self._cond = threading.Condition(threading.Lock())
        self._idle: collections.deque[_Slot] = collections.deque()
        self._open = 0
        self._closed = False
        self._created = 0
        self._discarded = 0
        self._loans = 0
        self._dialect: Dialect | None = None

    def __repr__(self) -> str:
        return f"ConnectionPool({self.url!r})"

    def stats(self) -> PoolStats:
        """The pool's counters now."""
        with self._cond:
            return PoolStats(
                max_size=self.url.pool_size,
                open=self._open,
                idle=len(self._idle),
                created=self._created,
                discarded=self._discarded,
                loans=self._loans,
            )

    @contextlib.contextmanager
    def connection(self, shard: str, *, readonly: bool = False) -> Iterator[LentConnection]:
        """Lend a connection for one transaction (see :class:`ConnectionProvider`).

        Raises:
            PoolTimeoutError: every connection stayed lent for ``pool_timeout``.
            CannotConnectError: a new connection could not be opened.
            FatalDatabaseError: the pool is closed, or connecting failed for a
                reason retrying will not fix (access denied, TLS).
        """
        slot = self._acquire(shard)
        lent = LentConnection(slot.raw, pool=self, shard=shard, readonly=readonly)
        broken = True
        failed: BaseException | None = None
        try:
            try:
                yield lent
            except BaseException as exc:
                failed = exc
                broken = lent._abort(exc)
                raise
            try:
                lent._commit_at_exit()
            except Exception:
                broken = lent._broken
                raise
            broken = lent._broken
        finally:
            lost = lent._lost is not None or isinstance(
                failed, ConnectionLostError | CannotConnectError
            )
            lent._detach()
            self._release(slot, broken=broken, shard=shard)
            if lost:
                self._suspect_idle()

    def close(self) -> None:
        """Close idle connections now, lent ones when they come back; refuse new loans."""
        with self._cond:
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
            self._open -= len(idle)
            self._cond.notify_all()
        for slot in idle:
            self._close_quietly(slot.raw)
        if idle:
            logger.debug("closed %d idle connections to %s", len(idle), self.url)

    def discard_idle(self) -> int:
        """Close the idle connections now (the server failed); lent ones are not touched.

        Returns:
            how many were closed.
        """
        with self._cond:
            idle = list(self._idle)
            self._idle.clear()
            self._open -= len(idle)
            self._discarded += len(idle)
            self._cond.notify_all()
        for slot in idle:
            self._close_quietly(slot.raw)
        return len(idle)

    def dialect(self, lent: LentConnection) -> Dialect:
        """This server's dialect, detected once through ``lent`` and then cached."""
        dialect = self._dialect
        if dialect is None:
            from shardbill.dialects.detect import detect_dialect

            dialect = self._dialect = detect_dialect(lent.raw, shard=lent.shard)
        return dialect

    def _acquire(self, shard: str) -> _Slot:
        deadline = time.monotonic() + self.url.pool_timeout
        with self._cond:
            while True:
                if self._closed:
                    raise FatalDatabaseError(
                        f"the connection pool for shard {shard!r} ({self.url}) is closed; "
                        "create a new provider",
                        shard=shard,
                    )
                if self._idle:
                    slot: _Slot | None = self._idle.pop()
                    break
                if self._open < self.url.pool_size:
                    self._open += 1
                    slot = None
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PoolTimeoutError(
                        f"no connection to shard {shard!r} ({self.url}) came free within "
                        f"pool_timeout={self.url.pool_timeout}s: all {self.url.pool_size} are "
                        "lent; raise pool_size, or shorten the with-blocks that hold them",
                        shard=shard,
                    )
                self._cond.wait(remaining)
            self._loans += 1
        if slot is not None:
            if time.monotonic() - slot.last_used < self.url.ping_after:
                return slot
            try:
                self.driver.ping(slot.raw)
            except Exception as exc:
                logger.info(
                    "replacing a dead idle connection to %s (%s)", self.url, type(exc).__name__
                )
                self._close_quietly(slot.raw)
                with self._cond:
                    self._discarded += 1
            else:
                return slot
        return self._open_slot(shard)

    def _open_slot(self, shard: str) -> _Slot:
        """Open a connection for a reserved place in the pool (``_open`` already counts it)."""
        try:
            raw = self.driver.connect(self.url)
        except BaseException as exc:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            if is_driver_error(exc):
                raise translate(exc, shard=shard) from exc
            raise
        with self._cond:
            self._created += 1
        logger.debug("opened a connection to %s for shard %r", self.url, shard)
        return _Slot(raw=raw, last_used=time.monotonic())

    def _suspect_idle(self) -> None:
        """A lent connection was lost: the server may have restarted, and then every idle
        connection is dead too. Each is pinged before its next loan (a live one goes on)."""
        with self._cond:
            for idle in self._idle:
                idle.last_used = float("-inf")

    def _release(self, slot: _Slot, *, broken: bool, shard: str) -> None:
        if not broken:
            slot.last_used = time.monotonic()
            with self._cond:
                if not self._closed:
                    self._idle.append(slot)
                    self._cond.notify()
                    return
        self._close_quietly(slot.raw)
        with self._cond:
            self._open -= 1
            if broken:
                self._discarded += 1
            self._cond.notify()
        if broken:
            logger.info("discarded a broken connection to %s (shard %r)", self.url, shard)

    @staticmethod
    def _close_quietly(raw: Any) -> None:
        # Closing a dead connection may raise; it is being thrown away anyway.
        with contextlib.suppress(Exception):
            raw.close()


def _returned(shard: str) -> NoReturn:
    raise FatalDatabaseError(
        f"this connection to shard {shard!r} was used after its with-block ended; the pool "
        "may have lent it to another thread: use connections only inside their with-block",
        shard=shard,
    )


class LentConnection:
    """A pooled driver connection, lent for one with-block (one transaction).

    Satisfies :class:`~shardbill.providers.DBAPIConnection`. Statements run
    through :meth:`cursor`; driver errors come out as shardbill
    :class:`~shardbill.errors.DatabaseError` s.

    Attributes:
        shard: the shard this connection was lent for.
        readonly: whether it was lent for reading only.
    """

    __slots__ = ("_closed_by_borrower", "_lost", "_pool", "_raw", "readonly", "shard")

    def __init__(self, raw: Any, *, pool: ConnectionPool, shard: str, readonly: bool) -> None:
        self._raw = raw
        self._pool = pool
        self._closed_by_borrower = False
        self._lost: DatabaseError | None = None
        self.shard = shard
        self.readonly = readonly

    def __repr__(self) -> str:
        state = "returned" if self._raw is None else ("broken" if self._broken else "lent")
        return f"<LentConnection shard={self.shard!r} {state} to {self._pool.url}>"

    @property
    def raw(self) -> Any:
        """The driver's connection, unwrapped: no parameter checks, no error translation.

        Raises:
            FatalDatabaseError: the with-block has ended.
        """
        if self._raw is None:
            _returned(self.shard)
        return self._raw

    @property
    def dialect(self) -> Dialect:
        """The server's dialect (detected on first use, then cached for the server)."""
        return self._pool.dialect(self)

    @property
    def url(self) -> ConnectionURL:
        """The URL of the server this connection talks to."""
        return self._pool.url

    def cursor(self, *, check_params: bool = True) -> LentCursor:
        """A new cursor.

        Args:
            check_params: check every parameter with
                :func:`~shardbill.providers.check_params` (the default). Turn
                it off only on a hot path whose values are already validated.
        """
        return LentCursor(self.raw.cursor(), self, check=check_params)

    def unchecked_cursor(self) -> LentCursor:
        """A new cursor that skips the parameter check (``ChecksParameters``)."""
        return self.cursor(check_params=False)

    def commit(self) -> None:
        """Commit now (the with-block's end then commits whatever follows).

        Raises:
            CommitOutcomeUnknownError: the connection was lost during COMMIT.
        """
        self._call(self.raw.commit, during_commit=True)

    def rollback(self) -> None:
        """Roll back now; later statements start a new transaction."""
        self._call(self.raw.rollback, during_commit=False)

    def close(self) -> None:
        """Abandon the transaction and the connection; the pool discards it.

        The with-block then ends without committing (and without an error).
        """
        if self._raw is None:
            return
        raw = self._raw
        self._closed_by_borrower = True
        with contextlib.suppress(Exception):
            raw.rollback()
        with contextlib.suppress(Exception):
            raw.close()

    def _call(self, method: Any, *, during_commit: bool) -> None:
        try:
            method()
        except Exception as exc:
            self._fail(exc, during_commit=during_commit)

    def _fail(self, exc: Exception, *, during_commit: bool = False) -> NoReturn:
        """Translate a driver error (re-raise anything else), noting a dead connection."""
        if not is_driver_error(exc):
            raise exc
        error = translate(exc, shard=self.shard, during_commit=during_commit)
        if isinstance(error, ConnectionLostError | CannotConnectError) and self._lost is None:
            self._lost = error
        raise error from exc

    @property
    def _broken(self) -> bool:
        return self._closed_by_borrower or self._lost is not None

    def _commit_at_exit(self) -> None:
        if self._closed_by_borrower:
            return
        lost = self._lost
        if lost is not None:
            # The block swallowed a connection error and ended normally: its
            # transaction did not commit, and saying nothing would lose it.
            kind = type(lost)
            raise kind(
                f"the with-block on shard {self.shard!r} ended normally after its connection "
                f"failed ({lost}); nothing after that failure was committed",
                errno=lost.errno,
                shard=self.shard,
            ) from lost
        raw = self._raw
        try:
            raw.commit()
        except Exception as exc:
            if not is_driver_error(exc):
                raise
            error = translate(exc, shard=self.shard, during_commit=True)
            if isinstance(error, ConnectionLostError | CannotConnectError):
                self._lost = error
            else:
                try:
                    raw.rollback()
                except Exception:
                    self._lost = error
            raise error from exc

    def _abort(self, exc: BaseException) -> bool:
        """Roll back after the block raised ``exc``; True when the connection must go."""
        if self._broken or not isinstance(exc, Exception) or is_connection_error(exc):
            # Closing the connection rolls the transaction back on the server;
            # a rollback on a dead (or interrupted mid-protocol) connection
            # could only fail or hang.
            return True
        try:
            self._raw.rollback()
        except Exception:
            return True
        return False

    def _detach(self) -> None:
        self._raw = None


class LentCursor:
    """A driver cursor that checks parameters and translates driver errors.

    Satisfies :class:`~shardbill.providers.DBAPICursor`.
    """

    __slots__ = ("_check", "_conn", "_cursor", "_driver")

    def __init__(self, cursor: Any, conn: LentConnection, *, check: bool) -> None:
        self._cursor = cursor
        self._conn = conn
        self._check = check
        self._driver = conn._pool.driver

    def __repr__(self) -> str:
        return f"<LentCursor on {self._conn!r}>"

    @property
    def rowcount(self) -> int:
        """Rows the last statement changed (MySQL UPSERT: 1 per insert, 2 per update)."""
        count: int = self._cursor.rowcount
        return count

    @property
    def description(self) -> Any:
        """The DB-API column description of the last SELECT."""
        return self._cursor.description

    def execute(self, sql: str, params: Sequence[Any] | None = None, /) -> None:
        """Run one statement with bound ``params`` (checked unless turned off).

        Raises:
            ParameterTypeError: a value of a type shardbill never binds.
            MoneyTypeError: a float or non-finite Decimal.
            DatabaseError: the translated driver error.
        """
        conn = self._conn
        raw = conn._raw
        if raw is None:
            _returned(conn.shard)
        driver = self._driver
        if params is not None:
            if self._check:
                check_params(params)
            if driver.adapts:
                params = driver.adapt(params)
        try:
            if driver.explicit_begin:
                driver.begin(raw, readonly=conn.readonly)
            if params is None:
                self._cursor.execute(sql)
            else:
                self._cursor.execute(sql, params)
        except Exception as exc:
            conn._fail(exc)

    def executemany(self, sql: str, seq_of_params: Iterable[Sequence[Any]], /) -> None:
        """Run one statement per parameter sequence (each checked unless turned off)."""
        conn = self._conn
        raw = conn._raw
        if raw is None:
            _returned(conn.shard)
        driver = self._driver
        rows = list(seq_of_params)
        if self._check:
            for row in rows:
                check_params(row)
        if driver.adapts:
            rows = [driver.adapt(row) for row in rows]
        try:
            if driver.explicit_begin:
                driver.begin(raw, readonly=conn.readonly)
            self._cursor.executemany(sql, rows)
        except Exception as exc:
            conn._fail(exc)

    def fetchone(self) -> Row | None:
        """The next row, or ``None``."""
        try:
            row: Row | None = self._cursor.fetchone()
        except Exception as exc:
            self._conn._fail(exc)
        return row

    def fetchall(self) -> Sequence[Row]:
        """Every remaining row."""
        try:
            rows: Sequence[Row] = self._cursor.fetchall()
        except Exception as exc:
            self._conn._fail(exc)
        return rows

    def close(self) -> None:
        """Close the cursor (errors from an already dead connection are ignored)."""
        with contextlib.suppress(Exception):
            self._cursor.close()
