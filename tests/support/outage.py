"""A connection provider whose shards can be taken down (a server that refuses connections)."""

from __future__ import annotations

import contextlib

from shardbill.errors import CannotConnectError
from shardbill.providers import ConnectionProvider
from shardbill.providers.base import DBAPIConnection


class Outage:
    """Wraps a provider; a shard named in :attr:`down` refuses every connection."""

    def __init__(self, inner: ConnectionProvider) -> None:
        self._inner = inner
        self.down: set[str] = set()

    def connection(
        self, shard: str, *, readonly: bool = False
    ) -> contextlib.AbstractContextManager[DBAPIConnection]:
        """The inner provider's connection, or :class:`CannotConnectError` for a shard down."""
        if shard in self.down:
            raise CannotConnectError(f"shard {shard} is down (test outage)", shard=shard)
        return self._inner.connection(shard, readonly=readonly)

    def close(self) -> None:
        """Nothing: the inner provider belongs to the caller."""


class DiedError(Exception):
    """Stands for the calling process dying (see :class:`DiesOn`)."""


class DiesOn:
    """Wraps a provider: a connection to ``shard`` kills the caller (:class:`DiedError`).

    A resharder (say) that dies as it first reaches a shard: a new shard's tables
    were never made, its claim names the shard.
    """

    def __init__(self, inner: ConnectionProvider, shard: str) -> None:
        self._inner = inner
        self.shard = shard

    def connection(
        self, shard: str, *, readonly: bool = False
    ) -> contextlib.AbstractContextManager[DBAPIConnection]:
        """The inner provider's connection, or :class:`DiedError` for ``shard``."""
        if shard == self.shard:
            raise DiedError(f"died connecting to {shard} (test)")
        return self._inner.connection(shard, readonly=readonly)

    def close(self) -> None:
        """Nothing: the inner provider belongs to the caller."""
