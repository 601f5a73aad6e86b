"""shardbill: price usage events and write them exactly once into sharded MySQL aggregates.

The public names are listed in ``__all__``; everything else is internal unless a
submodule documents itself as public.
"""

from shardbill._version import __version__
from shardbill.errors import (
    CannotConnectError,
    CommitOutcomeUnknownError,
    ConfigurationError,
    ConnectionLostError,
    DatabaseError,
    DeadlockError,
    DriverNotInstalledError,
    DuplicateKeyError,
    FatalDatabaseError,
    FencedError,
    InvalidInputError,
    InvalidURLError,
    KeyTypeError,
    LockWaitTimeoutError,
    MoneyTypeError,
    PriceBookError,
    QueryInterruptedError,
    ReadOnlyError,
    ReshardError,
    RetryableError,
    RuleError,
    SchemaError,
    ShardbillError,
    ShardMapError,
)
from shardbill.shardmap import ReshardPlan, ShardChange, ShardMap, SlotMove

__all__ = [
    "CannotConnectError",
    "CommitOutcomeUnknownError",
    "ConfigurationError",
    "ConnectionLostError",
    "DatabaseError",
    "DeadlockError",
    "DriverNotInstalledError",
    "DuplicateKeyError",
    "FatalDatabaseError",
    "FencedError",
    "InvalidInputError",
    "InvalidURLError",
    "KeyTypeError",
    "LockWaitTimeoutError",
    "MoneyTypeError",
    "PriceBookError",
    "QueryInterruptedError",
    "ReadOnlyError",
    "ReshardError",
    "ReshardPlan",
    "RetryableError",
    "RuleError",
    "SchemaError",
    "ShardChange",
    "ShardMap",
    "ShardMapError",
    "ShardbillError",
    "SlotMove",
    "__version__",
]
