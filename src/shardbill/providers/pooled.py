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
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from shardbill.errors import CannotConnectError, ConfigurationError, InvalidURLError
from shardbill.providers.pool import ConnectionPool, Driver, LentConnection, PoolStats
from shardbill.providers.url import ConnectionURL

if TYPE_CHECKING:
    from shardbill.dialects.base import Dialect

__all__ = ["PooledProvider"]

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


class PooledProvider:
    """A :class:`~shardbill.providers.ConnectionProvider` over one bounded pool per server.

    Shards whose URLs are equal share a pool. ``readonly=True`` loans go to the
    shard's replicas in turn (a replica that cannot be reached is skipped for
    the next one) or to the primary when the shard has none. Thread-safe;
    use it as a context manager or call :meth:`close`.

    Args:
        primaries: shard name -> the URL of its primary.
        replicas: shard name -> the URLs of its read replicas (optional).
    """

    def __init__(
        self,
        primaries: Mapping[str, ConnectionURL],
        replicas: Mapping[str, Sequence[ConnectionURL]] | None = None,
    ) -> None:
        if not primaries:
            raise ConfigurationError("PooledProvider needs at least one shard URL")
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
        self._replicas = {
            shard: tuple(pool_for(url) for url in urls) for shard, urls in replicas.items() if urls
        }
        self._pools = tuple(pools.values())
        self._turns = {shard: itertools.count() for shard in self._replicas}

    @classmethod
    def from_urls(
        cls,
        primaries: Mapping[str, str | ConnectionURL],
        *,
        replicas: Mapping[str, Iterable[str | ConnectionURL]] | None = None,
    ) -> PooledProvider:
        """Build a provider from URL strings (see :mod:`shardbill.providers.url`).

        Raises:
            InvalidURLError: a URL cannot be used (the message names the shard).
            DriverNotInstalledError: a URL's driver is not installed.
        """
        parsed = {shard: _as_url(url, shard=shard) for shard, url in primaries.items()}
        parsed_replicas = {
            shard: [_as_url(url, shard=shard) for url in urls]
            for shard, urls in (replicas or {}).items()
        }
        return cls(parsed, parsed_replicas)

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

    def url(self, shard: str) -> ConnectionURL:
        """The primary URL of ``shard`` (its ``str`` hides the password)."""
        return self._primary(shard).url

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
        pools = self._replicas[shard]
        first = next(self._turns[shard])
        last_error: CannotConnectError | None = None
        for offset in range(len(pools)):
            pool = pools[(first + offset) % len(pools)]
            stack = contextlib.ExitStack()
            try:
                conn = stack.enter_context(pool.connection(shard, readonly=True))
            except CannotConnectError as exc:
                last_error = exc
                continue
            with stack:
                yield conn
            return
        assert last_error is not None  # noqa: S101 - the loop ran at least once
        raise last_error

    def dialect(self, shard: str) -> Dialect:
        """The SQL dialect of ``shard``'s primary (asked once per server, then cached)."""
        pool = self._primary(shard)
        with pool.connection(shard, readonly=True) as conn:
            return conn.dialect

    def stats(self, shard: str, *, replica: int | None = None) -> PoolStats:
        """The counters of ``shard``'s primary pool (or of its replica number ``replica``)."""
        if replica is None:
            return self._primary(shard).stats()
        return self._replicas[shard][replica].stats()

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
