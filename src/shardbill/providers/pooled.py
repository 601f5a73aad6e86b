"""The configured provider: shard name -> connection URL(s) -> a pool per server.

Example:
    >>> provider = PooledProvider.from_urls(  # doctest: +SKIP
    ...     {
    ...         "shard-0": "mysql+pymysql://app@db0:3306/billing?password_env=DB0_PASSWORD",
    ...         "shard-1": "mysql+mysqldb://app@db1:3306/billing?password_env=DB1_PASSWORD",
    ...     },
    ...     replicas={"shard-0": ["mysql+pymysql://ro@db0-replica/billing?password_env=RO_PW"]},
    ... )
    >>> with provider.connection("shard-0") as conn:  # doctest: +SKIP
    ...     cur = conn.cursor()
    ...     cur.execute("UPDATE totals SET n = n + %s WHERE id = %s", (1, 7))
    >>> provider.close()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import attrs

from shardbill.errors import (
    CannotConnectError,
    ConfigurationError,
    ConnectionLostError,
    InvalidURLError,
    NoReplicaAvailableError,
    PoolTimeoutError,
)
from shardbill.observe import ReadEvent, ReadFellBack, ReadObserver, ReplicaDown, ReplicaLag
from shardbill.providers.pool import ConnectionPool, Driver, LentConnection, PoolStats
from shardbill.providers.url import ConnectionURL

if TYPE_CHECKING:
    from shardbill.dialects.base import Dialect

__all__ = ["PooledProvider", "ReadRoute", "ReplicaStatus"]

logger = logging.getLogger("shardbill.providers")

_FILE_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def _driver(name: str) -> Driver:
    # Each driver module imports its driver lazily; importing the module is cheap.
    if name == "pymysql":
        import shardbill.providers.pymysql as pymysql_module

        driver: Driver = pymysql_module.DRIVER
    elif name == "mysqldb":
        import shardbill.providers.mysqldb as mysqldb_module

        driver = mysqldb_module.DRIVER
    else:
        import shardbill.providers.sqlite as sqlite_module

        driver = sqlite_module.DRIVER
    driver.load()
    return driver


def _as_url(value: str | ConnectionURL, *, shard: str) -> ConnectionURL:
    if isinstance(value, ConnectionURL):
        return value
    try:
        return ConnectionURL.parse(value)
    except InvalidURLError as exc:
        raise InvalidURLError(f"shard {shard!r}: {exc}") from None


REPLICA_READ_TIMEOUT = 10.0
"""Seconds a replica URL without ``read_timeout`` waits for an answer (a primary: 60)."""
REPLICA_BACKOFF = 5.0
"""Seconds a failed replica is skipped before it is tried again (default)."""
LAG_REFRESH = 1.0
"""Seconds a measured replica lag is reused before it is measured again (default)."""


@attrs.frozen(kw_only=True)
class ReplicaStatus:
    """What the provider knows about one replica now (see :meth:`PooledProvider.replicas`).

    Attributes:
        shard: the shard it replicates.
        server: ``host:port`` (never a user name or password).
        healthy: False while it is skipped after a failure.
        down_for: seconds until a skipped replica is tried again (0 when healthy).
        error: the error class name of its last failure, if any.
        lag: seconds behind its primary as just measured; ``None`` when unknown
            (a replication thread stopped, not a replica, or unreachable).
    """

    shard: str
    server: str
    healthy: bool
    down_for: float
    error: str | None
    lag: float | None


class _Server:
    """One replica's pool and what the provider learned about it (guarded by ``lock``)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        url = pool.url
        self.label = f"{url.host or 'localhost'}:{url.port}" if url.family == "mysql" else "sqlite"
        self.lock = threading.Lock()
        self.down_until = 0.0
        self.error: str | None = None
        self.lag: float | None = None
        self.lag_at = float("-inf")


_FAILED = (CannotConnectError, ConnectionLostError)


class ReadRoute:
    """The one server chosen to serve reads of one shard: every loan of the route goes to it.

    Made by :meth:`PooledProvider.route`. A :class:`~shardbill.Reader` takes
    one route per shard for a whole call, so a call never mixes the answers
    of two servers. A connection-level failure on a replica route (refused,
    dropped, timed out) marks that replica down for the provider's back-off
    and is raised; the next route skips it.

    Attributes:
        shard: the shard.
        server: ``host:port`` of the chosen server.
        replica: True for a replica, False for the primary.
    """

    __slots__ = ("_pool", "_provider", "_server", "replica", "server", "shard")

    def __init__(
        self, provider: PooledProvider, shard: str, pool: ConnectionPool, server: _Server | None
    ) -> None:
        self._provider = provider
        self._pool = pool
        self._server = server
        self.shard = shard
        self.replica = server is not None
        url = pool.url
        self.server = f"{url.host or 'localhost'}:{url.port}" if url.family == "mysql" else "sqlite"

    def __repr__(self) -> str:
        role = "replica" if self.replica else "primary"
        return f"<ReadRoute shard={self.shard!r} {role} {self.server}>"

    @contextlib.contextmanager
    def connection(self) -> Iterator[LentConnection]:
        """Lend a read-only connection to this route's server for one transaction.

        Raises:
            CannotConnectError: the server cannot be reached (a replica is marked down).
            ConnectionLostError: the connection failed during the block (likewise).
        """
        try:
            with self._pool.connection(self.shard, readonly=True) as conn:
                yield conn
        except _FAILED as exc:
            if self._server is not None and not isinstance(exc, PoolTimeoutError):
                self._provider._mark_down(self.shard, self._server, exc)
            raise


class PooledProvider:
    """A :class:`~shardbill.providers.ConnectionProvider` over one bounded pool per server.

    Shards whose URLs are equal share a pool. ``readonly=True`` loans go to
    the shard's healthy replicas in turn, or to the primary when the shard has
    none. A replica that fails at the connection level (down: 2002/2003,
    dropped mid-query: 2013/2006, timed out) is skipped for
    ``replica_backoff`` seconds; when no replica can serve a read, it goes to
    the primary (``fallback_to_primary``, the default) or raises
    :class:`~shardbill.errors.NoReplicaAvailableError`. A replica URL without
    ``read_timeout`` gets :data:`REPLICA_READ_TIMEOUT` (10 s), so a frozen
    replica costs a read at most that long. Thread-safe; use it as a context
    manager or call :meth:`close`.

    Args:
        primaries: shard name -> the URL of its primary.
        replicas: shard name -> the URLs of its read replicas (optional).
        replica_backoff: seconds a failed replica is skipped.
        fallback_to_primary: read from the primary when no replica can serve.
        lag_refresh: seconds a measured lag is reused (plus its age) before
            the replica is asked again (see :meth:`route`'s ``max_lag``).
        observer: called with each :data:`~shardbill.observe.ReadEvent`
            (replica down, lag measured, fell back to the primary).
    """

    def __init__(
        self,
        primaries: Mapping[str, ConnectionURL],
        replicas: Mapping[str, Sequence[ConnectionURL]] | None = None,
        *,
        replica_backoff: float = REPLICA_BACKOFF,
        fallback_to_primary: bool = True,
        lag_refresh: float = LAG_REFRESH,
        observer: ReadObserver | None = None,
    ) -> None:
        if not primaries:
            raise ConfigurationError("PooledProvider needs at least one shard URL")
        for name, value in (("replica_backoff", replica_backoff), ("lag_refresh", lag_refresh)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigurationError(
                    f"'{name}' must be a number of seconds >= 0: {value!r}; e.g. {name}=5"
                )
        replicas = dict(replicas or {})
        unknown = sorted(set(replicas) - set(primaries))
        if unknown:
            raise ConfigurationError(
                f"replicas given for shards {unknown} that have no primary URL; "
                f"known shards: {sorted(primaries)}"
            )
        pools: dict[ConnectionURL, ConnectionPool] = {}

        def pool_for(url: ConnectionURL) -> ConnectionPool:
            if url not in pools:
                pools[url] = ConnectionPool(url, _driver(url.driver))
            return pools[url]

        self._primaries = {shard: pool_for(url) for shard, url in primaries.items()}
        servers: dict[ConnectionPool, _Server] = {}

        def server_for(url: ConnectionURL) -> _Server:
            if url.family == "mysql" and url.read_timeout is None:
                url = attrs.evolve(url, read_timeout=REPLICA_READ_TIMEOUT)
            pool = pool_for(url)
            if pool not in servers:
                servers[pool] = _Server(pool)
            return servers[pool]

        self._replicas = {
            shard: tuple(server_for(url) for url in urls)
            for shard, urls in replicas.items()
            if urls
        }
        self._pools = tuple(pools.values())
        self._turns = {shard: itertools.count() for shard in self._replicas}
        self._backoff = float(replica_backoff)
        self._fallback = fallback_to_primary
        self._lag_refresh = float(lag_refresh)
        self._observer = observer

    @classmethod
    def from_urls(
        cls,
        primaries: Mapping[str, str | ConnectionURL],
        *,
        replicas: Mapping[str, Iterable[str | ConnectionURL]] | None = None,
        replica_backoff: float = REPLICA_BACKOFF,
        fallback_to_primary: bool = True,
        lag_refresh: float = LAG_REFRESH,
        observer: ReadObserver | None = None,
    ) -> PooledProvider:
        """Build a provider from URL strings (see :mod:`shardbill.providers.url`).

        The keyword arguments are the constructor's.

        Raises:
            InvalidURLError: a URL cannot be used (the message names the shard).
            DriverNotInstalledError: a URL's driver is not installed.
        """
        parsed = {shard: _as_url(url, shard=shard) for shard, url in primaries.items()}
        parsed_replicas = {
            shard: [_as_url(url, shard=shard) for url in urls]
            for shard, urls in (replicas or {}).items()
        }
        return cls(
            parsed,
            parsed_replicas,
            replica_backoff=replica_backoff,
            fallback_to_primary=fallback_to_primary,
            lag_refresh=lag_refresh,
            observer=observer,
        )

    @classmethod
    def sqlite_directory(
        cls, directory: str | os.PathLike[str], shards: Iterable[str], *, options: str = ""
    ) -> PooledProvider:
        """One SQLite file per shard, ``DIRECTORY/SHARD.db``, the directory created if missing.

        Args:
            directory: where the shard files live.
            shards: the shard names (letters, digits, ``_``, ``.``, ``-``).
            options: a query string for every URL, e.g. ``"busy_timeout=10"``.
        """
        root = os.path.abspath(os.fspath(directory))
        os.makedirs(root, exist_ok=True)
        query = f"?{options.lstrip('?')}" if options else ""
        urls: dict[str, str | ConnectionURL] = {}
        for shard in shards:
            if not _FILE_SAFE.fullmatch(shard):
                raise ConfigurationError(
                    f"shard name {shard!r} cannot be a file name; use letters, digits, "
                    "'_', '.' and '-' (not starting with '.' or '-')"
                )
            urls[shard] = f"sqlite:///{os.path.join(root, shard)}.db{query}"
        return cls.from_urls(urls)

    @property
    def shards(self) -> tuple[str, ...]:
        """The shard names this provider knows, sorted."""
        return tuple(sorted(self._primaries))

    def __repr__(self) -> str:
        return f"PooledProvider(shards={list(self.shards)!r}, servers={len(self._pools)})"

    def __enter__(self) -> PooledProvider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def fallback_to_primary(self) -> bool:
        """Whether a read no replica can serve goes to the primary (else it raises)."""
        return self._fallback

    def url(self, shard: str) -> ConnectionURL:
        """The primary URL of ``shard`` (its ``str`` hides the password)."""
        return self._primary(shard).url

    def replica_urls(self, shard: str) -> tuple[ConnectionURL, ...]:
        """The URLs ``shard``'s replicas are reached with (with their default read timeout)."""
        self._primary(shard)
        return tuple(server.pool.url for server in self._replicas.get(shard, ()))

    @contextlib.contextmanager
    def connection(self, shard: str, *, readonly: bool = False) -> Iterator[LentConnection]:
        """Lend a connection to ``shard`` for one transaction.

        See :meth:`shardbill.providers.ConnectionProvider.connection`: commit on
        normal exit, rollback on exception, the connection back to its pool
        (or discarded when broken).

        Raises:
            ConfigurationError: ``shard`` is unknown.
            PoolTimeoutError: the pool stayed exhausted for ``pool_timeout``.
            CannotConnectError: the server (every replica, for readonly) is unreachable.
            DatabaseError: another translated driver error.
        """
        if readonly and shard in self._replicas:
            with self._replica_connection(shard) as conn:
                yield conn
            return
        with self._primary(shard).connection(shard, readonly=readonly) as conn:
            yield conn

    @contextlib.contextmanager
    def _replica_connection(self, shard: str) -> Iterator[LentConnection]:
        """A loan from a healthy replica; a failure while borrowing moves on to the next."""
        error: Exception | None = None
        for _ in range(len(self._replicas[shard]) + 1):
            route = self.route(shard)
            stack = contextlib.ExitStack()
            try:
                conn = stack.enter_context(route.connection())
            except _FAILED as exc:
                if not route.replica:
                    raise
                error = exc  # marked down by the route (unless a pool timeout): try the next
                continue
            with stack:
                yield conn
            return
        assert error is not None  # noqa: S101 - the loop ran at least once
        raise error

    def route(
        self,
        shard: str,
        *,
        max_lag: float | None = None,
        position: str | None = None,
        wait: float = 0.0,
    ) -> ReadRoute:
        """Choose the server for a read of ``shard``: a healthy replica in turn, else the primary.

        A replica is skipped while it backs off after a failure, when
        ``max_lag`` is given and its lag is unknown or larger, and when
        ``position`` is given and it has not applied that write within the
        wait. Checking a replica (lag or position) borrows one connection from
        it; a connection-level failure then marks it down and the next is tried.

        Args:
            shard: the shard.
            max_lag: the most seconds the replica may be behind its primary
                (measured with ``SHOW REPLICA STATUS``, at most
                ``lag_refresh`` seconds ago, plus that age). ``None``: no check.
            position: a write's position on the shard's primary (MariaDB GTID,
                ``WriteResult.positions``): the replica must have applied it.
            wait: seconds to wait in all for a replica to reach ``position``
                (the first candidate waits, the others are asked once).

        Returns:
            the route; ``route.replica`` is False when it is the primary.

        Raises:
            NoReplicaAvailableError: no replica qualifies and the fallback to the
                primary is off (the message says why for each replica).
            ConfigurationError: ``shard`` is unknown.
        """
        primary = self._primary(shard)
        servers = self._replicas.get(shard)
        if not servers:
            return ReadRoute(self, shard, primary, None)
        first = next(self._turns[shard])
        deadline = time.monotonic() + max(0.0, wait)
        problems: list[str] = []
        reasons: set[str] = set()
        for offset in range(len(servers)):
            server = servers[(first + offset) % len(servers)]
            now = time.monotonic()
            with server.lock:
                until, error = server.down_until, server.error
            if until > now:
                problems.append(f"{server.label} failed ({error}), skipped {until - now:.1f}s more")
                reasons.add("down")
                continue
            try:
                if max_lag is not None:
                    lag = self._lag(shard, server)
                    if lag is None or lag > max_lag:
                        shown = "unknown" if lag is None else f"{lag:.1f}s"
                        problems.append(f"{server.label} lags {shown} (max_lag={max_lag}s)")
                        reasons.add("lag")
                        continue
                if position is not None and not self._reached(
                    shard, server, position, deadline - time.monotonic()
                ):
                    problems.append(f"{server.label} has not applied {position} yet")
                    reasons.add("position")
                    continue
            except _FAILED as exc:
                if not isinstance(exc, PoolTimeoutError):
                    self._mark_down(shard, server, exc)
                problems.append(f"{server.label} failed ({type(exc).__name__})")
                reasons.add("down")
                continue
            return ReadRoute(self, shard, server.pool, server)
        reason = next(r for r in ("position", "lag", "down") if r in reasons)
        if not self._fallback:
            raise NoReplicaAvailableError(
                f"shard {shard!r}: no replica can serve this read ({'; '.join(problems)}) and "
                "fallback_to_primary is off; retry later, or build the provider with "
                "fallback_to_primary=True",
                shard=shard,
            )
        logger.info("shard %r: reading from the primary (%s)", shard, "; ".join(problems))
        self._emit(ReadFellBack(shard=shard, reason=reason))
        return ReadRoute(self, shard, primary, None)

    def primary_route(self, shard: str, *, reason: str | None = None) -> ReadRoute:
        """The route to ``shard``'s primary (always current: reads there never lag).

        Args:
            shard: the shard.
            reason: why a replica read goes to the primary instead (reported as
                :class:`~shardbill.observe.ReadFellBack`); ``None`` reports nothing.
        """
        route = ReadRoute(self, shard, self._primary(shard), None)
        if reason is not None and shard in self._replicas:
            self._emit(ReadFellBack(shard=shard, reason=reason))
        return route

    def replicas(self, shard: str) -> list[ReplicaStatus]:
        """Each replica of ``shard`` with its health and its lag measured now (the lag gauge).

        A replica backing off after a failure is not asked (its lag shows as ``None``).

        Example:
            >>> [(r.server, r.healthy, r.lag) for r in provider.replicas("s0")]  # doctest: +SKIP
            [('10.0.0.7:3306', True, 0.0), ('10.0.0.8:3306', True, None)]
        """
        self._primary(shard)
        found: list[ReplicaStatus] = []
        for server in self._replicas.get(shard, ()):
            lag: float | None = None
            error: str | None = None
            with server.lock:
                backing_off = server.down_until > time.monotonic()
            try:
                if not backing_off:  # (a frozen replica would cost its read timeout again)
                    lag = self._lag(shard, server, refresh=True)
            except _FAILED as exc:
                if not isinstance(exc, PoolTimeoutError):
                    self._mark_down(shard, server, exc)
                error = type(exc).__name__
            now = time.monotonic()
            with server.lock:
                down_for = max(0.0, server.down_until - now)
                error = error or server.error
            found.append(
                ReplicaStatus(
                    shard=shard,
                    server=server.label,
                    healthy=down_for == 0,
                    down_for=down_for,
                    error=error,
                    lag=lag,
                )
            )
        return found

    def _lag(self, shard: str, server: _Server, *, refresh: bool = False) -> float | None:
        from shardbill.dialects.replication import replica_lag

        now = time.monotonic()
        with server.lock:
            age = now - server.lag_at
            if not refresh and age < self._lag_refresh:
                return None if server.lag is None else server.lag + age
        with server.pool.connection(shard, readonly=True) as conn:
            cursor = conn.cursor()
            try:
                # A SQLite "replica" is a file copy: nothing says how current it is.
                lag = None if conn.dialect.embedded else replica_lag(cursor, shard=shard)
            finally:
                cursor.close()
        with server.lock:
            server.lag, server.lag_at = lag, time.monotonic()
        self._emit(ReplicaLag(shard=shard, server=server.label, seconds=lag))
        return lag

    def _reached(self, shard: str, server: _Server, position: str, wait: float) -> bool:
        from shardbill.dialects.replication import wait_for_position

        # The wait runs as one query: keep it inside the replica's read timeout.
        read_timeout = server.pool.url.read_timeout or REPLICA_READ_TIMEOUT
        wait = max(0.0, min(wait, read_timeout - 1.0))
        with server.pool.connection(shard, readonly=True) as conn:
            cursor = conn.cursor()
            try:
                return wait_for_position(cursor, conn.dialect, position, wait)
            finally:
                cursor.close()

    def _mark_down(self, shard: str, server: _Server, exc: BaseException) -> None:
        with server.lock:
            server.down_until = time.monotonic() + self._backoff
            server.error = type(exc).__name__
            server.lag_at = float("-inf")
        server.pool.discard_idle()  # they talked to a server that failed: likely dead too
        logger.warning(
            "shard %r: replica %s failed (%s: %s); skipped for %.1fs",
            shard,
            server.label,
            type(exc).__name__,
            exc,
            self._backoff,
        )
        self._emit(
            ReplicaDown(
                shard=shard, server=server.label, error=type(exc).__name__, seconds=self._backoff
            )
        )

    def _emit(self, event: ReadEvent) -> None:
        if self._observer is not None:
            self._observer(event)

    def dialect(self, shard: str) -> Dialect:
        """The SQL dialect of ``shard``'s primary (asked once per server, then cached)."""
        pool = self._primary(shard)
        with pool.connection(shard, readonly=True) as conn:
            return conn.dialect

    def stats(self, shard: str, *, replica: int | None = None) -> PoolStats:
        """The counters of ``shard``'s primary pool (or of its replica number ``replica``)."""
        if replica is None:
            return self._primary(shard).stats()
        return self._replicas[shard][replica].pool.stats()

    def close(self) -> None:
        """Close every pool (idle connections now, lent ones when returned). Idempotent."""
        for pool in self._pools:
            pool.close()

    def _primary(self, shard: str) -> ConnectionPool:
        try:
            return self._primaries[shard]
        except KeyError:
            raise ConfigurationError(
                f"unknown shard {shard!r}; this provider knows {list(self.shards)}: "
                "give a URL for every shard of the shard map"
            ) from None
