"""A shard set for fault scenarios: private servers, a FaultProxy in front of each, shards.

Each shard is a database on one of the private servers (shards are spread
round-robin over the servers). Writers reach their shards through the
server's :class:`~tests.support.proxy.FaultProxy` (when the cluster is
proxied), so a test can cut COMMITs, reset or refuse connections; the
checks read the shards directly, as root, never through the proxy or
through shardbill.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from shardbill import ShardMap
from shardbill.observe import Observer
from shardbill.providers import PooledProvider
from shardbill.retry import RetryPolicy
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter, WriterSettings
from tests.support.clock import fixed_clock
from tests.support.proxy import FaultProxy
from tests.support.servers import MariaDBServer

__all__ = ["DRIVERS", "ShardCluster", "default_retry"]

DRIVERS = ("pymysql", "mysqldb")
"""Every scenario runs once per MySQL driver."""


def default_retry(seed: int, *, max_attempts: int = 8, max_delay: float = 0.1) -> RetryPolicy:
    """The scenarios' retry policy: seeded jitter, short waits (faults come fast here)."""
    return RetryPolicy(max_attempts=max_attempts, base_delay=0.005, max_delay=max_delay, seed=seed)


def _normalize(value: object) -> object:
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        return int(value)
    if isinstance(value, bytes):
        return value.decode()
    return value


class ShardCluster:
    """Shards (databases) on private servers, optionally behind one FaultProxy per server.

    Args:
        servers: running private servers.
        driver: ``pymysql`` or ``mysqldb`` for every writer URL.
        shards: how many shards (``s0``, ``s1``, ...), spread round-robin over ``servers``.
        proxied: put a FaultProxy in front of every server (writers connect through it).
        slots: slots of the shard map.
    """

    def __init__(
        self,
        servers: Sequence[MariaDBServer],
        *,
        driver: str,
        shards: int,
        proxied: bool = True,
        slots: int = 64,
    ) -> None:
        if driver not in DRIVERS:
            raise ValueError(f"driver must be one of {DRIVERS}: {driver!r}")
        self.driver = driver
        self.servers = tuple(servers)
        self.shards = tuple(f"s{i}" for i in range(shards))
        self._placement = {shard: i % len(self.servers) for i, shard in enumerate(self.shards)}
        self.shard_map = ShardMap.create(self.shards, slots=slots)
        self.tables = billing_tables()
        self._providers: list[PooledProvider] = []
        self._writers: list[AggregationWriter] = []
        self.proxies: tuple[FaultProxy, ...] = ()
        for shard in self.shards:
            self.server(shard).execute(
                f"CREATE DATABASE IF NOT EXISTS `{self.database(shard)}` CHARACTER SET utf8mb4"
            )
        if proxied:
            proxies = []
            try:
                for server in self.servers:
                    proxies.append(FaultProxy(server.host, server.port).start())
            except BaseException:
                for proxy in proxies:
                    proxy.stop()
                raise
            self.proxies = tuple(proxies)

    # -- where things are -----------------------------------------------------

    def database(self, shard: str) -> str:
        """The database that holds ``shard``."""
        return f"fx_{shard}"

    def server(self, shard: str) -> MariaDBServer:
        """The server that holds ``shard``."""
        return self.servers[self._placement[shard]]

    def proxy(self, shard: str) -> FaultProxy:
        """The proxy in front of ``shard``'s server."""
        if not self.proxies:
            raise RuntimeError("this cluster has no proxies (proxied=False)")
        return self.proxies[self._placement[shard]]

    def shards_on(self, server: MariaDBServer) -> tuple[str, ...]:
        """The shards that live on ``server``."""
        return tuple(s for s in self.shards if self.server(s) is server)

    def url(
        self,
        shard: str,
        *,
        user: str = "root",
        password: str = "",
        direct: bool = False,
        options: Mapping[str, object] | None = None,
        driver: str | None = None,
    ) -> str:
        """A shardbill URL for ``shard``: through its proxy unless ``direct`` (or unproxied)."""
        server = self.server(shard)
        host, port = server.host, server.port
        if self.proxies and not direct:
            host, port = self.proxy(shard).address
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        query = f"?{urlencode(dict(options))}" if options else ""
        scheme = f"mysql+{driver or self.driver}"
        return f"{scheme}://{auth}@{host}:{port}/{self.database(shard)}{query}"

    def urls(self, **kwargs: Any) -> dict[str, str]:
        """:meth:`url` for every shard (same keyword arguments)."""
        return {shard: self.url(shard, **kwargs) for shard in self.shards}

    # -- shardbill objects (closed by close()) --------------------------------

    def provider(self, **url_kwargs: Any) -> PooledProvider:
        """A provider over every shard (URLs from :meth:`url` with ``url_kwargs``)."""
        provider = PooledProvider.from_urls(self.urls(**url_kwargs))
        self._providers.append(provider)
        return provider

    def writer(
        self,
        *,
        provider: PooledProvider | None = None,
        observer: Observer | None = None,
        retry: RetryPolicy | None = None,
        max_workers: int = 4,
        checked: bool = True,
        **url_kwargs: Any,
    ) -> AggregationWriter:
        """A writer over every shard, with the scenarios' retry policy unless given.

        With ``checked`` (the default) the writer checks the schema of every
        shard now, before any fault is armed, so that the scenarios' faults
        land on write transactions rather than on the one-time check
        (``test_regressions.py`` covers faults during that check).
        """
        writer = AggregationWriter(
            shard_map=self.shard_map,
            provider=provider if provider is not None else self.provider(**url_kwargs),
            tables=self.tables,
            settings=WriterSettings(
                retry=retry if retry is not None else default_retry(0), max_workers=max_workers
            ),
            observer=observer,
            clock=fixed_clock,
        )
        self._writers.append(writer)
        if checked:
            writer.check_schema()
        return writer

    def ensure_schema(self) -> None:
        """Create the tables and ownership rows on every shard (as root, directly)."""
        provider = PooledProvider.from_urls(self.urls(direct=True))
        try:
            setup = AggregationWriter(
                shard_map=self.shard_map, provider=provider, tables=self.tables, clock=fixed_clock
            )
            with setup:
                setup.ensure_schema()
        finally:
            provider.close()

    def close(self) -> None:
        """Close every writer and provider made here, then stop the proxies."""
        errors: list[BaseException] = []
        for writer in self._writers:
            writer.close()
        for provider in self._providers:
            provider.close()
        for proxy in self.proxies:
            try:
                proxy.stop()
            except RuntimeError as exc:  # keep stopping the others
                errors.append(exc)
        self._writers.clear()
        self._providers.clear()
        if errors:
            raise errors[0]

    # -- direct access for checks (root, no proxy, no shardbill) --------------

    def rows(
        self, shard: str, sql: str, params: Sequence[object] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement on ``shard`` directly as root; rows with dates as ISO text."""
        conn = self.server(shard).connect(self.database(shard))
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                found = cur.fetchall()
        finally:
            conn.close()
        return [tuple(_normalize(v) for v in row) for row in found]

    def execute(self, shard: str, sql: str, params: Sequence[object] | None = None) -> None:
        """Run one statement on ``shard`` directly as root (autocommit)."""
        self.rows(shard, sql, params)

    def create_user(self, user: str, password: str, grants: Iterable[str]) -> None:
        """Create ``user`` on every server and grant it ``grants`` on every shard database.

        Each grant is a privilege list with ``{db}`` for the database, e.g.
        ``"SELECT, INSERT, UPDATE ON `{db}`.*"``.
        """
        for server in self.servers:
            server.execute(
                "CREATE USER IF NOT EXISTS %s@'127.0.0.1' IDENTIFIED BY %s", (user, password)
            )
            for shard in self.shards_on(server):
                for grant in grants:
                    server.execute(
                        f"GRANT {grant.format(db=self.database(shard))} TO %s@'127.0.0.1'", (user,)
                    )
