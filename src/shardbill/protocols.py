"""Every interface shardbill is built around, in one place (issue 18).

Each is a structural :class:`typing.Protocol`: an object with the right
methods satisfies it, no base class needed. They are what a user implements
to put shardbill on their own infrastructure, and what the library's parts
use to talk to each other:

- a database: :class:`DBAPICursor`, :class:`DBAPIConnection` (a plain
  ``pymysql``, ``MySQLdb`` or ``sqlite3`` connection satisfies them) and
  :class:`ConnectionProvider` (lends one per shard, one transaction per
  ``with`` block; see :mod:`shardbill.providers` and
  ``examples/custom_provider.py``), with :data:`SQLValue` and :data:`Row`;
  :class:`KnowsDialect`, a lent connection that already knows its SQL dialect,
  :class:`ChecksParameters`, one whose cursors check every bound value;
  :class:`WrapsConnection`, a per-loan wrapper that names the pooled
  connection under it; and
  :class:`KnowsShards`, a provider that can list the shards it reaches;
- the shard map: :class:`MapSource` (``load``), :class:`MapStore` (plus an
  atomic compare-and-set ``publish``), and the optional :class:`MapHistory`
  and :class:`ClaimStore` a store may also offer (checked with ``isinstance``);
- pricing: :class:`Rule` (usage event -> charges) and :class:`ChargeModel`
  (quantity -> exact amount).

The protocols of a table's parts (``ChargeLike``, ``Projection``,
``MeasureValue``) stay in :mod:`shardbill.tables.aggregates` beside the
specs they type, and the stream worker's (``Source``, ``DeadLetterSink``,
``Processor``, ``RebalanceListener``) in :mod:`shardbill.worker.protocols`:
each is used by that one package only. The modules that used to declare the
ones here re-export them, so ``from shardbill.providers import
ConnectionProvider`` and the like keep working.

This module imports only :mod:`typing`, the standard library and, for type
checking only, the types the signatures name: it sits at the bottom of the
layers (``tests/test_layers.py``).
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    from shardbill.dialects.base import Dialect
    from shardbill.mapstore.claim import ReshardClaim
    from shardbill.rules.engine import RuleContext
    from shardbill.rules.events import Charge, UsageEvent
    from shardbill.shardmap import ShardMap

__all__ = [
    "ChargeModel",
    "ChecksParameters",
    "ClaimStore",
    "ConnectionProvider",
    "DBAPIConnection",
    "DBAPICursor",
    "KnowsDialect",
    "KnowsShards",
    "MapHistory",
    "MapSource",
    "MapStore",
    "Row",
    "Rule",
    "SQLValue",
    "WrapsConnection",
]

SQLValue: TypeAlias = int | str | bytes | Decimal | datetime.date | datetime.datetime | None
"""A value shardbill binds to a statement (``datetime.datetime`` is also a ``date``)."""

Row: TypeAlias = tuple[Any, ...]
"""A fetched row. Its values are whatever the driver decoded, hence ``Any``."""


class DBAPICursor(Protocol):
    """The part of a DB-API 2.0 cursor shardbill uses.

    Parameters are positional-only so that ``pymysql``, ``MySQLdb`` and
    ``sqlite3`` cursors (which name them differently) all match.
    """

    @property
    def rowcount(self) -> int:
        """Rows the last ``execute`` changed (drivers differ on SELECT; do not rely on it there)."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> object:
        """Run one statement with bound ``params`` (placeholders per the dialect's paramstyle)."""
        ...

    def executemany(self, sql: str, seq_of_params: Iterable[Sequence[Any]], /) -> object:
        """Run one statement once per parameter sequence."""
        ...

    def fetchone(self) -> Row | None:
        """The next row of the last SELECT, or ``None`` when there is none."""
        ...

    def fetchall(self) -> Sequence[Row]:
        """Every remaining row of the last SELECT."""
        ...

    def close(self) -> None:
        """Release the cursor."""
        ...


class DBAPIConnection(Protocol):
    """The part of a DB-API 2.0 connection shardbill uses (autocommit off)."""

    def cursor(self) -> DBAPICursor:
        """A new cursor on this connection."""
        ...

    def commit(self) -> None:
        """Commit the current transaction."""
        ...

    def rollback(self) -> None:
        """Roll the current transaction back."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


class ConnectionProvider(Protocol):
    """Lends connections to shards. Implement this to use your own pool or secrets manager.

    Example:
        A provider over a user's own pool (``examples/custom_provider.py`` has
        a complete one)::

            class MyProvider:
                @contextlib.contextmanager
                def connection(self, shard, *, readonly=False):
                    with my_pool.get(shard) as conn, transaction(conn):
                        yield conn

                def close(self):
                    my_pool.close()
    """

    def connection(
        self, shard: str, *, readonly: bool = False
    ) -> contextlib.AbstractContextManager[DBAPIConnection]:
        """Lend a connection to ``shard``'s primary (or a replica when ``readonly``).

        The connection has autocommit off: the with-block is one transaction.
        On normal exit of the with-block: commit; on exception: rollback, then
        re-raise; either way the connection goes back to its pool (or is
        discarded when it is broken).

        Args:
            shard: the shard name, as the shard map knows it.
            readonly: the block only reads; a provider with replicas for
                ``shard`` may lend one of them (replicas may lag the primary).
        """
        ...

    def close(self) -> None:
        """Close every idle connection and refuse new loans. Idempotent."""
        ...


class MapSource(Protocol):
    """Where a writer or reader (re)loads the shard map from: every :class:`MapStore`
    (and :class:`~shardbill.mapstore.CachedMap`) satisfies it.

    The writer reloads when a shard fences a slot it routed there; the reader
    when a read finds a slot moved.
    """

    def load(self) -> ShardMap:
        """The current shard map."""
        ...


class MapStore(Protocol):
    """Where the live shard map lives, shared by every writer process.

    Implementations must make :meth:`publish` an atomic compare-and-set, so
    that of several publishers that read the same epoch at most one succeeds.
    """

    def load(self) -> ShardMap:
        """The current map (the one with the highest epoch).

        Raises:
            MapNotPublishedError: nothing was published yet; the message says how.
            ShardMapError: the stored document is damaged; the message names the store.
        """
        ...

    def epoch(self) -> int | None:
        """The current map's epoch (``None`` when empty), cheaper than :meth:`load`."""
        ...

    def publish(self, new_map: ShardMap, *, expected_epoch: int | None) -> None:
        """Make ``new_map`` current if the store still holds ``expected_epoch``.

        Args:
            new_map: the map to publish; its epoch must be greater than the stored one.
            expected_epoch: the epoch the publisher planned from; ``None`` for
                the first publish to an empty store.

        Raises:
            EpochConflictError: the store holds another epoch than
                ``expected_epoch``, or ``new_map.epoch`` is not greater.
            ShardMapError: ``new_map`` has another slot count than the stored
                map, or an argument is invalid.
        """
        ...


@runtime_checkable
class MapHistory(Protocol):
    """A map store that also keeps every published epoch.

    The file, SQL and memory stores implement it. The writer uses it to find
    every shard a fence may point at; the resharder uses it to rebuild the
    map before a published epoch when resuming a move. A store without
    history simply does not satisfy it (``isinstance(store, MapHistory)``
    is false), and both fall back to what the current map says.
    """

    def history(self) -> tuple[int, ...]:
        """The epochs kept, ascending."""
        ...

    def load_epoch(self, epoch: int) -> ShardMap:
        """The map published at ``epoch``; :class:`~shardbill.errors.ShardMapError` if not kept."""
        ...


@runtime_checkable
class ClaimStore(Protocol):
    """A map store that also keeps a reshard's claim (every shipped store does).

    The claim (:class:`~shardbill.mapstore.claim.ReshardClaim`) is one
    document next to the map, changed only by compare-and-set on its
    ``version``, so that of several resharders at most one holds it.
    """

    def load_claim(self) -> ReshardClaim | None:
        """The stored claim, or ``None`` when no reshard ever claimed this store."""
        ...

    def swap_claim(self, claim: ReshardClaim, *, expected_version: int | None) -> None:
        """Store ``claim`` if the stored claim still has ``expected_version``.

        Args:
            claim: the claim to store (its ``version`` must be greater).
            expected_version: the version read before (``None``: no claim stored).

        Raises:
            ClaimConflictError: the stored claim changed since it was read.
        """
        ...


@runtime_checkable
class Rule(Protocol):
    """A billing rule: turns an event (and the charges so far) into the event's charges.

    Any callable with ``name`` and ``version`` attributes is a rule: a
    function decorated with :func:`rule`, or an instance of a class (frozen
    attrs classes with ``name`` and ``version`` fields work).
    """

    @property
    def name(self) -> str:
        """A token naming the rule, e.g. ``"comms.sms"``, recorded on every charge it makes.

        Entry points publish a rule under this name.
        """
        ...

    @property
    def version(self) -> str:
        """The rule's version, recorded on every charge it makes.

        Change it whenever the rule would price an event differently.
        """
        ...

    def __call__(self, event: UsageEvent, context: RuleContext, /) -> Iterable[Charge] | None:
        """Price one event.

        Called once per event, in chain order, with the charges the earlier
        rules produced in ``context.charges``. Must not do I/O or keep state
        between events.

        Args:
            event: the usage event.
            context: the read-only context.

        Returns:
            None if the rule does not apply (the charges so far pass on), or
            the complete new list of charges for the event (empty: no charges).
        """
        ...


class ChargeModel(Protocol):
    """What every charge model is: an exact price for a quantity."""

    def price(self, quantity: Decimal, /) -> Decimal:
        """The exact, unrounded amount for ``quantity``.

        Args:
            quantity: one event's quantity (per-event models) or a period's
                total (per-period models).

        Returns:
            The amount in major currency units, not rounded.
        """
        ...


@runtime_checkable
class KnowsDialect(Protocol):
    """A connection that already knows which SQL dialect its server speaks.

    The connections :class:`~shardbill.providers.PooledProvider` lends detect
    it once per pooled connection; :func:`shardbill.dialects.dialect_for`
    asks a connection like this instead of querying the server again.
    """

    @property
    def dialect(self) -> Dialect:
        """The dialect of the server this connection talks to."""
        ...


@runtime_checkable
class ChecksParameters(Protocol):
    """A connection whose cursors check every bound value before it is sent.

    The connections :class:`~shardbill.providers.PooledProvider` lends check
    each parameter with :func:`~shardbill.providers.check_params`. A caller
    whose values are validated already (the writer's batch planner) asks for
    a cursor that skips the second check; any other connection's plain
    ``cursor()`` is used as it is.
    """

    def unchecked_cursor(self) -> DBAPICursor:
        """A new cursor that binds values without checking them again."""
        ...


@runtime_checkable
class KnowsShards(Protocol):
    """A :class:`ConnectionProvider` that can name every shard it reaches.

    :class:`~shardbill.providers.PooledProvider` can. ``verify()`` of the
    resharder then also reads the shards no map names (a reshard run without
    a claim may have left owned slots there); a provider without it gets the
    map's shards read only.
    """

    @property
    def shards(self) -> Sequence[str]:
        """The names of the shards this provider lends connections to."""
        ...


@runtime_checkable
class WrapsConnection(Protocol):
    """A connection lent as a new wrapper per loan around a pooled driver connection.

    :class:`~shardbill.providers.PooledProvider`'s are. Session state set once
    per server connection (the writer's isolation level) is remembered by the
    object :attr:`raw` names, which stays the same across loans.
    """

    @property
    def raw(self) -> Any:
        """The driver's connection under the wrapper."""
        ...
