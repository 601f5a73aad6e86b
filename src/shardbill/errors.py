"""Every error shardbill raises on purpose, in one tree.

::

    ShardbillError
    ├── ConfigurationError (ValueError)      something you configured is wrong; fix and restart
    │   ├── ShardMapError                     invalid map, plan or map JSON
    │   ├── PriceBookError                    invalid price book (tiers, prices, currencies)
    │   ├── SchemaError                       live tables do not match the declared specs
    │   ├── InvalidURLError                   a connection URL that cannot be used
    │   └── MapNotPublishedError              the map store holds no shard map yet
    ├── KeyTypeError (TypeError)              a shard key type with no canonical encoding
    ├── MoneyTypeError (TypeError)            a float (or other non-exact number) in a money path
    ├── ParameterTypeError (TypeError)        a value of a type never bound to SQL (dict, list, ...)
    ├── InvalidInputError (ValueError)        one event or charge is malformed; it is rejected alone
    ├── RuleError                             a billing rule raised; its event is rejected
    ├── DriverNotInstalledError (ImportError) a database driver extra is missing
    ├── FencedError                           a shard no longer owns the slot; reload the map
    ├── PeriodClosedError                     an event or change of a closed billing period
    ├── PeriodNotClosedError                  a statement of a period that is not closed yet
    ├── StreamError                           the broker (Kafka) failed a poll, commit or send
    ├── ReshardError                          a resharding step cannot proceed
    │   ├── EpochConflictError                a map publish lost its compare-and-set
    │   ├── ReshardClaimedError               another reshard holds the map store's claim
    │   ├── ReshardStoppedError               a reshard stopped at a safe point on request
    │   └── ClaimConflictError                a claim's compare-and-set lost to another writer
    └── DatabaseError                         a database said no; ``errno`` and ``shard`` attached
        ├── RetryableError                    transient: the same work may be tried again
        │   ├── DeadlockError                 1213: the transaction was rolled back; retry it whole
        │   ├── LockWaitTimeoutError          1205/3572, SQLITE_BUSY/LOCKED: roll back, retry
        │   ├── ReadOnlyError                 1290/1836/1792: failover in progress; back off
        │   ├── ConnectionLostError           2006/2013/2055/2014/1927/4031/1053: connection gone
        │   │   └── CommitOutcomeUnknownError lost during COMMIT: resolve through the ledger
        │   ├── CannotConnectError            2002/2003/2005/1040/1203/1226: down or full; back off
        │   │   ├── PoolTimeoutError          no pooled connection came free in time
    │   │   └── NoReplicaAvailableError   no replica can serve a read, primary fallback off
        │   ├── QueryInterruptedError         1317/3024/1969: the statement was killed; retry
        │   └── SlotsMovedDuringReadError     a read kept racing a reshard; read again
        ├── DuplicateKeyError                 1062/1586, SQLITE_CONSTRAINT_PRIMARYKEY/UNIQUE
        └── FatalDatabaseError                everything else (denied, unknown table, syntax, TLS)
            └── RowOverflowError              1264/1690, SQLITE_CONSTRAINT_CHECK: a sum left BIGINT

Driver exceptions are translated at exactly one edge
(:func:`shardbill.dialects.translate.translate`) and kept as ``__cause__``.
Messages say what was wrong, with the value, and what to do; they never carry
a password.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "CannotConnectError",
    "ClaimConflictError",
    "CommitOutcomeUnknownError",
    "ConfigurationError",
    "ConnectionLostError",
    "DatabaseError",
    "DeadlockError",
    "DriverNotInstalledError",
    "DuplicateKeyError",
    "EpochConflictError",
    "FatalDatabaseError",
    "FencedError",
    "InvalidInputError",
    "InvalidURLError",
    "KeyTypeError",
    "LockWaitTimeoutError",
    "MapNotPublishedError",
    "MoneyTypeError",
    "NoReplicaAvailableError",
    "ParameterTypeError",
    "PeriodClosedError",
    "PeriodNotClosedError",
    "PoolTimeoutError",
    "PriceBookError",
    "QueryInterruptedError",
    "ReadOnlyError",
    "ReshardClaimedError",
    "ReshardError",
    "ReshardStoppedError",
    "RetryableError",
    "RowOverflowError",
    "RuleError",
    "SchemaError",
    "ShardMapError",
    "ShardbillError",
    "SlotsMovedDuringReadError",
    "StreamError",
]


def _rebuild_error(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
) -> BaseException:
    """Unpickle an error without its ``__init__``, whose keyword-only fields pickle cannot pass."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class PicklableError(Exception):
    """An exception that survives pickling whatever its ``__init__`` signature.

    Python's default reduces an exception to ``cls(*args)``, which fails for
    errors whose fields are keyword-only; these cross process pools (a
    ``WriteResult`` carries them), so every shardbill error derives from this.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (type(self), self.args, dict(self.__dict__)))


class ShardbillError(PicklableError):
    """Base class of every error shardbill raises on purpose."""


class ConfigurationError(ShardbillError, ValueError):
    """Something configured is wrong (a map, a table spec, a URL, a file); fix it and restart."""


class ShardMapError(ConfigurationError):
    """A shard map, resharding plan or map document is invalid."""


class PriceBookError(ConfigurationError):
    """A price book is invalid: overlapping tiers, gaps, negative prices, unknown currencies."""


class SchemaError(ConfigurationError):
    """The live database schema does not match the declared aggregate table specs."""


class InvalidURLError(ConfigurationError):
    """A connection URL cannot be used. The message never contains the password."""


class KeyTypeError(ShardbillError, TypeError):
    """A shard key has a type that has no canonical encoding (bool, float, None, dict, ...)."""


class MoneyTypeError(ShardbillError, TypeError):
    """A float or other inexact number reached a money path; use Decimal or integer minor units."""


class ParameterTypeError(ShardbillError, TypeError):
    """A value of a type shardbill never binds reached a statement.

    Attributes:
        position: the index of the value in its parameter sequence.
    """

    def __init__(self, message: str, *, position: int) -> None:
        super().__init__(message)
        self.position = position


class InvalidInputError(ShardbillError, ValueError):
    """One event or charge is malformed. It is rejected alone; the rest of its batch goes on."""


class RuleError(ShardbillError):
    """A billing rule raised while pricing an event; that event is rejected, others go on.

    Attributes:
        rule: the name (and version) of the rule that failed.
    """

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


class DriverNotInstalledError(ShardbillError, ImportError):
    """A database driver was asked for but its extra is not installed."""


class FencedError(ShardbillError):
    """A shard refused a write for a slot it no longer owns: reload the shard map and retry.

    Attributes:
        shard: the shard that refused.
        slots: the slots it no longer owns.
        epoch: the shard map epoch the shard knows, when it reported one.
        moved: slot -> the shard it was handed to, for the slots whose new
            owner the refusing shard recorded (a reshard's forwarding address).
    """

    def __init__(
        self,
        message: str,
        *,
        shard: str,
        slots: tuple[int, ...],
        epoch: int | None = None,
        moved: Mapping[int, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.shard = shard
        self.slots = slots
        self.epoch = epoch
        self.moved: Mapping[int, str] = dict(moved or {})


class PeriodClosedError(ShardbillError):
    """An event (or change) belongs to a billing period that is closed: refused with the reason.

    A writer reports such an event as rejected (``error`` names this class);
    nothing of it is applied.
    """


class PeriodNotClosedError(ShardbillError):
    """A statement was asked for a billing period that is not closed on every shard.

    Its aggregates may still change (events of the period are still
    arriving, or a close stopped half-way), so no statement is made: close
    the period first (``shardbill period close``).
    """


class ReshardError(ShardbillError):
    """A resharding step cannot proceed (conflicting epoch, verification failed, ...)."""


class DatabaseError(ShardbillError):
    """A database refused an operation.

    Attributes:
        errno: the server or client error number, when the driver gave one.
        shard: the shard the operation ran on, when known.
    """

    def __init__(self, message: str, *, errno: int | None = None, shard: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.shard = shard


class RetryableError(DatabaseError):
    """A transient failure: the same unit of work may be tried again after rolling back."""


class DeadlockError(RetryableError):
    """Errno 1213: the server rolled the whole transaction back; retry it from the start."""


class LockWaitTimeoutError(RetryableError):
    """Errno 1205/3572 (SQLite: BUSY/LOCKED): a lock was not granted in time; roll back, retry."""


class ReadOnlyError(RetryableError):
    """Errno 1290/1836/1792: the server is read-only (failover); back off and re-resolve."""


class ConnectionLostError(RetryableError):
    """Errno 2006/2013/2055/2014/1927/4031/1053: the connection is gone; retry on a new one."""


class CommitOutcomeUnknownError(ConnectionLostError):
    """The connection was lost while COMMIT was in flight: it may or may not have committed.

    Never guess: retry through the ledger, which tells which events committed.
    """


class CannotConnectError(RetryableError):
    """Errno 2002/2003/2005/1040/1203/1226: the server is down or full; back off and retry."""


class PoolTimeoutError(CannotConnectError):
    """Every connection of a pool stayed lent for the whole ``pool_timeout``; back off and retry.

    Raised by the pooled providers (``errno`` is ``None``). Seen often, it means
    the pool is too small for the number of threads writing to one server
    (raise ``pool_size``), or a with-block holds its connection too long.
    """


class NoReplicaAvailableError(CannotConnectError):
    """No replica of a shard can serve a read and the provider may not fall back to the primary.

    Raised by :class:`~shardbill.providers.PooledProvider` built with
    ``fallback_to_primary=False`` (``errno`` is ``None``); the message says what
    each replica's problem was (down and backing off, lagging, not at the
    position asked for). Back off and retry, or allow the fallback.
    """


class QueryInterruptedError(RetryableError):
    """Errno 1317/3024/1969: the statement was killed or timed out; roll back and retry."""


class SlotsMovedDuringReadError(RetryableError):
    """Slots moved during every attempt of a read (``errno`` is ``None``); read again.

    A :class:`~shardbill.Reader` checks, after reading, that no slot it read
    changed state or merge progress meanwhile, and reads again if one did; it
    raises this, rather than return a number that might be wrong, when that
    kept happening.
    """


class DuplicateKeyError(DatabaseError):
    """Errno 1062/1586 (SQLite: a PRIMARY KEY or UNIQUE constraint): the key already exists."""


class FatalDatabaseError(DatabaseError):
    """A database error that retrying will not fix: access denied, unknown table, syntax."""


class RowOverflowError(FatalDatabaseError):
    """An aggregate value would leave its exact-integer column's range.

    The range is BIGINT's, or DECIMAL(65,0)'s for a wide measure
    (``Measure(wide=True)``, MySQL/MariaDB).

    The writer never lets it through: it finds the events that would push a
    row past the edge and rejects them alone (the rest of the batch is
    applied). Seen by a caller only in a result, as the reason an event was
    rejected or, when other parts of that event were applied already, why it
    failed: give the measure a coarser scale, or declare it wide.
    """


class EpochConflictError(ReshardError):
    """A publish lost its compare-and-set: the map changed since it was read, or is not newer.

    Reload the map (:meth:`MapStore.load`), re-plan from it, and publish again
    with ``expected_epoch`` set to the reloaded map's epoch.

    Attributes:
        store: the store's ``repr``.
        stored_epoch: the epoch the store held when the publish checked
            (``None``: empty), as far as it could be read.
        expected_epoch: the epoch the publisher expected (``None``: empty).
        new_epoch: the epoch of the map that was not published.
    """

    def __init__(
        self,
        message: str,
        *,
        store: str,
        stored_epoch: int | None,
        expected_epoch: int | None,
        new_epoch: int,
    ) -> None:
        super().__init__(message)
        self.store = store
        self.stored_epoch = stored_epoch
        self.expected_epoch = expected_epoch
        self.new_epoch = new_epoch


class ReshardClaimedError(ReshardError):
    """Another reshard holds the map store's claim, so this one changes nothing.

    A claim names its plan (source and target epoch), its owner and its
    lease. A different plan is refused while a reshard is unfinished, even
    with an expired lease (resume or revert it instead); the same plan may
    take over only an expired lease.

    Attributes:
        owner: the holder's owner id.
        source_epoch: the epoch the held reshard moves from.
        target_epoch: the epoch it moves to.
        expires_at: when the holder's lease expires (Unix time, seconds).
    """

    def __init__(
        self,
        message: str,
        *,
        owner: str,
        source_epoch: int,
        target_epoch: int,
        expires_at: float,
    ) -> None:
        super().__init__(message)
        self.owner = owner
        self.source_epoch = source_epoch
        self.target_epoch = target_epoch
        self.expires_at = expires_at


class ReshardStoppedError(ReshardError):
    """A reshard stopped at a safe point because it was asked to (``Resharder.stop()``,
    Ctrl-C): every step so far is recorded on the shards; run it again to resume."""


class ClaimConflictError(ReshardError):
    """A claim's compare-and-set failed: the stored claim changed since it was read.

    Read it again (``load_claim()``) and decide again; a resharder that loses
    its own claim this way stops (another one took over its expired lease).
    """


class MapNotPublishedError(ConfigurationError):
    """The store holds no shard map (or not the epoch asked for): publish one first.

    Attributes:
        store: the store's ``repr``.
    """

    def __init__(self, message: str, *, store: str) -> None:
        super().__init__(message)
        self.store = store


class StreamError(ShardbillError):
    """The message broker failed a poll, an offset commit or a dead-letter send.

    The stream worker (:mod:`shardbill.worker`) never commits an offset past
    an event that is not done, so such a failure costs a redelivery (a
    duplicate the ledger skips), never an event.
    """
