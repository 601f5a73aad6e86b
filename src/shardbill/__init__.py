"""shardbill: price usage events and write them exactly once into sharded MySQL aggregates.

The public names are listed in ``__all__``; the documented public submodules
are ``shardbill.aggregates``, ``shardbill.audit``, ``shardbill.catalog``,
``shardbill.config``, ``shardbill.dialects``, ``shardbill.errors``,
``shardbill.ingest``, ``shardbill.keys``, ``shardbill.metrics``,
``shardbill.money``, ``shardbill.observe``, ``shardbill.providers``,
``shardbill.reader``, ``shardbill.resharding``, ``shardbill.rules``,
``shardbill.shardmap``, ``shardbill.synthetic`` and ``shardbill.writer``.
"""

from shardbill._version import __version__
from shardbill.aggregates import AggregateTable, KeyColumn, Measure
from shardbill.config import Config
from shardbill.errors import (
    CannotConnectError,
    CommitOutcomeUnknownError,
    ConfigurationError,
    ConnectionLostError,
    DatabaseError,
    DeadlockError,
    DriverNotInstalledError,
    DuplicateKeyError,
    EpochConflictError,
    FatalDatabaseError,
    FencedError,
    InvalidInputError,
    InvalidURLError,
    KeyTypeError,
    LockWaitTimeoutError,
    MapNotPublishedError,
    MoneyTypeError,
    ParameterTypeError,
    PoolTimeoutError,
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
from shardbill.pipeline import Pipeline, PipelineResult
from shardbill.providers import ConnectionProvider, ConnectionURL, PooledProvider
from shardbill.reader import AggregateRow, Reader
from shardbill.resharding import CachedMap, JsonFileMapStore, MapStore, SqlMapStore
from shardbill.rules import Charge, PriceBook, Rule, RuleContext, RulesEngine, UsageEvent
from shardbill.shardmap import ReshardPlan, ShardChange, ShardMap, SlotMove
from shardbill.synthetic import Traffic, TrafficModel
from shardbill.writer import AggregationWriter, WriteResult, WriterSettings

__all__ = [
    "AggregateRow",
    "AggregateTable",
    "AggregationWriter",
    "CachedMap",
    "CannotConnectError",
    "Charge",
    "CommitOutcomeUnknownError",
    "Config",
    "ConfigurationError",
    "ConnectionLostError",
    "ConnectionProvider",
    "ConnectionURL",
    "DatabaseError",
    "DeadlockError",
    "DriverNotInstalledError",
    "DuplicateKeyError",
    "EpochConflictError",
    "FatalDatabaseError",
    "FencedError",
    "InvalidInputError",
    "InvalidURLError",
    "JsonFileMapStore",
    "KeyColumn",
    "KeyTypeError",
    "LockWaitTimeoutError",
    "MapNotPublishedError",
    "MapStore",
    "Measure",
    "MoneyTypeError",
    "ParameterTypeError",
    "Pipeline",
    "PipelineResult",
    "PoolTimeoutError",
    "PooledProvider",
    "PriceBook",
    "PriceBookError",
    "QueryInterruptedError",
    "ReadOnlyError",
    "Reader",
    "ReshardError",
    "ReshardPlan",
    "RetryableError",
    "Rule",
    "RuleContext",
    "RuleError",
    "RulesEngine",
    "SchemaError",
    "ShardChange",
    "ShardMap",
    "ShardMapError",
    "ShardbillError",
    "SlotMove",
    "SqlMapStore",
    "Traffic",
    "TrafficModel",
    "UsageEvent",
    "WriteResult",
    "WriterSettings",
    "__version__",
]
