"""The configuration file: shards, map store, aggregate tables, rules and writer settings.

One TOML file (read with :mod:`tomllib`) describes a deployment for the
``shardbill`` command line (and for any program that wants the same
wiring: :meth:`Config.load` then :meth:`Config.open`). Every key is
optional except ``[shards]``::

    slots = 16384                       # slots of the first map (fixed for the map's life)

    [shards]                            # shard name -> URL of its primary
    s0 = "mysql+pymysql://app@db0:3306/billing?password_env=SHARDBILL_DB_PASSWORD"
    s1 = "mysql+pymysql://app@db1:3306/billing?password_env=SHARDBILL_DB_PASSWORD"

    [replicas]                          # optional: shard name -> read replica URLs
    s0 = ["mysql+pymysql://ro@db0-replica:3306/billing?password_env=SHARDBILL_RO_PASSWORD"]

    [weights]                           # optional: weights of the first map (default 1 each)
    s1 = 2

    [map_store]                         # where the live map lives (default: this JSON file)
    kind = "json"                       # or "sql" with url = "..." or shard = "s0"
    path = "shardmap.json"

    [aggregates]
    tables = "billing"                  # the four standard tables, or "none"
    scale = 6                           # decimal places kept for quantities and amounts
    account_type = "bigint"             # or "varchar(64)" for string account ids

    [[aggregates.custom]]               # optional: your own tables
    name = "usage_by_channel"
    keys = [
      { name = "account_id", projection = "account" },
      { name = "channel", projection = "dimension:channel", default = "--", type = "varchar(16)" },
    ]
    measures = [
      { name = "amount", value = "amount" },
      { name = "largest", value = "amount", merge = "max" },
      { name = "events", value = "count" },
    ]

    [rules]                             # default: the comms example rules
    names = ["comms.sms", "comms.voice", "comms.email"]   # or import = "pkg.module:factory"
    price_book = "prices.toml"

    [writer]
    max_workers = 8
    batch_size = 2000
    retry_seconds = 45                  # retries of a shard transaction stop after this long
    retry_attempts = 1000
    ledger_retention_days = 35          # the dedup horizon
    max_rows_per_statement = 1000
    late_events = "refuse"              # or "adjust": book events of closed periods in an open one

    [worker]                            # optional: defaults of `shardbill worker`
    source = "kafka"                    # or "dir:events" (a directory of .jsonl files, no broker)
    bootstrap_servers = "kafka-1:9092,kafka-2:9092"
    topics = ["usage"]
    group = "billing"
    dead_letter_topic = "usage.dead-letters"   # or dead_letters = "dead.jsonl"
    linger_ms = 200
    max_held = 4000                     # records held in memory at most (default 2 x batch)
    drain_timeout_seconds = 30
    connect_timeout_seconds = 30        # a broker must answer within this at the start

    [worker.kafka]                      # librdkafka settings; secrets only as "env:NAME"
    "security.protocol" = "SASL_SSL"
    "sasl.password" = "env:KAFKA_PASSWORD"

Relative paths (``map_store.path``, ``rules.price_book``,
``worker.dead_letters``, ``worker.source = "dir:PATH"`` and
``sqlite:///relative.db`` URLs) are resolved against the directory of the
file. Passwords never belong in the file: put
``password_env=NAME`` in the URL and the password in that environment
variable. Nothing here prints a
password: URLs are shown through :class:`~shardbill.providers.ConnectionURL`,
whose ``str`` hides it.

Errors are :class:`~shardbill.errors.ConfigurationError` naming the file,
the key and the fix, e.g. ``shardbill.toml: writer.batch_size: must be an
integer >= 1, got 0``. Unknown keys are refused, so a typo never passes
silently. The complete reference is ``docs/reference/configuration.md``.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import attrs

from shardbill._parsing import toml_loads
from shardbill.errors import (
    ConfigurationError,
    InvalidInputError,
    InvalidURLError,
    PicklableError,
    ShardbillError,
)
from shardbill.mapstore import JsonFileMapStore, MapStore, SqlMapStore
from shardbill.providers.pooled import PooledProvider
from shardbill.providers.url import ConnectionURL
from shardbill.retry import RetryPolicy
from shardbill.rules import PriceBook, RulesEngine
from shardbill.shardmap import ShardMap
from shardbill.tables.aggregates import (
    Account,
    AggregateTable,
    Amount,
    BigInt,
    ColumnType,
    Count,
    Currency,
    Date,
    Day,
    Dimension,
    KeyColumn,
    Measure,
    MeasureValue,
    MergeKind,
    Month,
    Product,
    Projection,
    Quantity,
    VarChar,
)
from shardbill.tables.catalog import billing_tables
from shardbill.writer import WriterSettings

__all__ = [
    "DEFAULT_CONFIG",
    "Config",
    "MapStoreConfig",
    "Opened",
    "RulesConfig",
    "WorkerConfig",
    "WriterConfig",
    "find_config",
]

MAX_CONFIG_CHARS = 1024 * 1024
"""The longest configuration file read (1 Mi characters)."""

DEFAULT_CONFIG = "shardbill.toml"
"""The file the command line reads when neither ``--config`` nor ``SHARDBILL_CONFIG`` is set."""

_RULE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_VARCHAR = re.compile(r"^varchar\((\d+)\)$")
_TOP_KEYS = frozenset(
    {"slots", "shards", "replicas", "weights", "map_store", "aggregates", "rules", "writer"}
    | {"worker"}
)


class _KeyProblemError(PicklableError):
    """A problem at one key, turned into a ConfigurationError naming the file by the caller."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


# --------------------------------------------------------------------------- value checks


def _table(value: object, key: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise _KeyProblemError(key, f"must be a table ([{key}] or {{ ... }}), got {_show(value)}")
    return value


def _known(data: Mapping[str, object], allowed: Sequence[str] | frozenset[str], key: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        where = f"{key}." if key else ""
        raise _KeyProblemError(
            f"{where}{_shown_key(unknown[0])}",
            f"unknown key; the keys here are {', '.join(sorted(allowed))}",
        )


def _int(value: object, key: str, *, low: int, high: int | None = None) -> int:
    if type(value) is not int or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"from {low} to {high}"
        raise _KeyProblemError(key, f"must be an integer {bound}, got {_show(value)}")
    return value


def _seconds(value: object, key: str) -> float:
    """A positive, finite number of seconds (an integer or a float)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and 0 < value <= 86_400)
    ):
        raise _KeyProblemError(
            key, f"must be a number of seconds > 0 (at most 86400), got {_show(value)}"
        )
    return float(value)


def _str(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise _KeyProblemError(key, f"must be a non-empty string, got {_show(value)}")
    return value


_TOML_TYPES: dict[type, str] = {list: "an array", tuple: "an array", dict: "a table"}


def _show(value: object) -> str:
    """A value for a message; never a URL or a container (either may hold a password)."""
    if isinstance(value, str) and ("://" in value or "@" in value):
        return "a URL-like string (not shown: it may hold a password)"
    if isinstance(value, (list, tuple, Mapping)):
        kind = _TOML_TYPES.get(type(value), "a table")
        return f"{kind} (not shown: it may hold a URL with a password)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: object) -> str:
    """The TOML type of ``value``, for messages that must not show it."""
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return _TOML_TYPES.get(type(value), "a table" if isinstance(value, Mapping) else "a value")


def _shown_key(name: str) -> str:
    """A key of the file for a message: itself, unless it looks like a URL (or is very long)."""
    if "://" in name or "@" in name or len(name) > 64:
        return "<a key like a URL (not shown: it may hold a password)>"
    return name


def _url(value: object, key: str, base: Path) -> ConnectionURL:
    if not isinstance(value, str) or not value:
        raise _KeyProblemError(
            key,
            'must be a connection URL string like "mysql+pymysql://user@host:3306/db", got '
            f"{_kind(value)} (not shown: it may hold a password)",
        )
    text = value
    if text.startswith("sqlite:///") and not text.startswith("sqlite:////"):
        # Relative SQLite paths follow the file, not the working directory.
        head, sep, query = text.removeprefix("sqlite:///").partition("?")
        text = f"sqlite:///{(base / head).resolve()}{sep}{query}"
    try:
        url = ConnectionURL.parse(text)
    except InvalidURLError as exc:
        raise _KeyProblemError(key, str(exc)) from None
    if url.password is not None:
        raise _KeyProblemError(
            key,
            f"{url} holds a password; a configuration file must not: remove it from the URL, "
            "export it in an environment variable and add password_env=NAME to the URL",
        )
    return url


def _column_type(value: object, key: str) -> ColumnType:
    text = _str(value, key).strip().lower()
    if text == "bigint":
        return BigInt()
    if text == "date":
        return Date()
    match = _VARCHAR.fullmatch(text)
    if match and 1 <= int(match.group(1)) <= 768:
        return VarChar(int(match.group(1)))
    raise _KeyProblemError(
        key, f"must be 'bigint', 'date' or 'varchar(N)' with N 1..768, got {_show(value)}"
    )


def _type_name(column_type: ColumnType) -> str:
    if isinstance(column_type, VarChar):
        return f"varchar({column_type.length})"
    return "bigint" if isinstance(column_type, BigInt) else "date"


# --------------------------------------------------------------------------- sections


@attrs.frozen(kw_only=True)
class MapStoreConfig:
    """The ``[map_store]`` section: where the live shard map is kept.

    Attributes:
        kind: ``"json"`` (a JSON file, one host) or ``"sql"`` (a table in a
            control database, shared by every host).
        path: the JSON file (``kind = "json"``), absolute.
        url: the control database (``kind = "sql"`` with ``url``).
        shard: a shard of ``[shards]`` that holds the table (``kind = "sql"``
            with ``shard``).
        table: the map table (``kind = "sql"``).
    """

    kind: Literal["json", "sql"] = attrs.field(validator=attrs.validators.in_(("json", "sql")))
    path: Path | None = None
    url: ConnectionURL | None = None
    shard: str | None = None
    table: str = "shardbill_map"

    def describe(self) -> str:
        """Where the map is, for messages (never a password).

        Returns:
            E.g. ``json file /etc/shardbill/shardmap.json``.
        """
        if self.kind == "json":
            return f"json file {self.path}"
        where = f"shard {self.shard!r}" if self.shard is not None else str(self.url)
        return f"sql table {self.table!r} on {where}"


@attrs.frozen(kw_only=True)
class RulesConfig:
    """The ``[rules]`` section: how to build the rules engine.

    Exactly one way applies: ``names`` (rules published under the
    ``shardbill.rules`` entry points, in chain order), ``factory`` (the
    ``import = "pkg.module:attr"`` key: a :class:`~shardbill.rules.RulesEngine`
    or a callable with no arguments returning one), or neither (the comms
    example engine, :func:`shardbill.rules.comms.engine`). ``price_book``
    replaces the price book in any of them.
    """

    names: tuple[str, ...] | None = None
    factory: str | None = None
    price_book: Path | None = None

    def engine(self) -> RulesEngine:
        """Build the engine.

        Returns:
            The rules engine.

        Raises:
            ConfigurationError: an unknown rule name, an import that fails, a
                factory that does not give a RulesEngine, or a bad price book.
        """
        from shardbill.rules import comms

        book = PriceBook.load(self.price_book) if self.price_book is not None else None
        if self.names is not None:
            return RulesEngine.from_entry_points(
                names=self.names, price_book=book if book is not None else comms.price_book()
            )
        if self.factory is None:
            return comms.engine(book=book)
        made = _import_engine(self.factory)
        if book is not None:
            made = attrs.evolve(made, price_book=book, settings=book.settings)
        return made


def _import_engine(spec: str) -> RulesEngine:
    module_name, _, attribute = spec.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"rules.import: cannot import {spec!r} ({type(exc).__name__}: {exc}); give "
            "'package.module:attribute' of an installed module"
        ) from None
    made = target
    if callable(target) and not isinstance(target, RulesEngine):
        try:
            made = target()
        except Exception as exc:  # a user's factory: any failure is a configuration problem
            raise ConfigurationError(
                f"rules.import: {spec!r} raised {type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(made, RulesEngine):
        raise ConfigurationError(
            f"rules.import: {spec!r} gave a {type(made).__name__}, not a RulesEngine; point it "
            "at a RulesEngine or at a function with no arguments that returns one"
        )
    return made


@attrs.frozen(kw_only=True)
class WriterConfig:
    """The ``[writer]`` section.

    Attributes:
        max_workers: shard transactions run in parallel.
        batch_size: events per batch (one transaction per shard per batch).
        retry_seconds: how long a shard transaction is retried (a failover rides through).
        retry_attempts: tries per shard transaction at most, the first included.
        ledger_retention_days: the dedup horizon: events older than this are refused,
            and prune deletes ledger rows of older events (keep it longer than any replay).
        max_rows_per_statement: rows in one multi-row UPSERT.
        late_events: the late-event policy, ``"refuse"`` or ``"adjust"`` (see
            :attr:`~shardbill.writer.WriterSettings.late_events`).
    """

    max_workers: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    batch_size: int = attrs.field(default=2000, validator=attrs.validators.ge(1))
    retry_seconds: int = attrs.field(default=45, validator=attrs.validators.ge(1))
    retry_attempts: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    ledger_retention_days: int = attrs.field(default=35, validator=attrs.validators.ge(1))
    max_rows_per_statement: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    late_events: str = "refuse"

    def settings(self) -> WriterSettings:
        """The :class:`~shardbill.writer.WriterSettings` these values make.

        Returns:
            The writer settings.
        """
        return WriterSettings(
            max_workers=self.max_workers,
            retry=RetryPolicy(
                max_attempts=self.retry_attempts, budget_seconds=float(self.retry_seconds)
            ),
            ledger_retention_days=self.ledger_retention_days,
            max_rows_per_statement=self.max_rows_per_statement,
            late_events=self.late_events,
        )


_SECRET_WORDS = ("password", "secret", "sasl.oauthbearer.config")


def _options(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class WorkerConfig:
    """The ``[worker]`` section: defaults of ``shardbill worker`` (its options override them).

    Attributes:
        source: where records come from: ``"kafka"``, or a directory of JSON
            Lines files (one partition per file, no broker), given as
            ``"dir:PATH"`` and kept as its absolute path (None: Kafka when
            topics are given).
        bootstrap_servers: the Kafka brokers, ``host:port[,...]``.
        topics: the topics consumed.
        group: the consumer group id.
        dead_letter_topic: where dead letters go (default: the first topic + ``.dead-letters``).
        dead_letters: instead, a JSON Lines file of dead letters.
        batch_size: records per batch (default: ``[writer] batch_size``).
        max_held: the most records held in memory at once (fetched, or waiting
            for a failed shard or the dead-letter sink); at least the batch
            size (None: twice the batch size).
        linger_ms: how long a batch's first record waits for the batch to fill.
        drain_timeout_seconds: on SIGTERM, how long to finish the pending batch.
        connect_timeout_seconds: at the start, how long to wait for a Kafka
            broker to answer before the worker fails.
        kafka: librdkafka settings (``[worker.kafka]``); a value ``env:NAME`` is
            read from the environment when the worker starts (secrets must be).
    """

    source: Literal["kafka"] | Path | None = None
    bootstrap_servers: str | None = None
    topics: tuple[str, ...] = ()
    group: str | None = None
    dead_letter_topic: str | None = None
    dead_letters: Path | None = None
    batch_size: int | None = None
    max_held: int | None = None
    linger_ms: int = 200
    drain_timeout_seconds: int = 30
    connect_timeout_seconds: float = 30.0
    kafka: Mapping[str, str] = attrs.field(converter=_options, factory=dict)


def _urls(value: Mapping[str, ConnectionURL]) -> Mapping[str, ConnectionURL]:
    return MappingProxyType(dict(value))


def _url_lists(
    value: Mapping[str, tuple[ConnectionURL, ...]],
) -> Mapping[str, tuple[ConnectionURL, ...]]:
    return MappingProxyType(dict(value))


def _ints(value: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class Opened:
    """What :meth:`Config.open` connected: the shard provider and the map store.

    Close it (or use it as a context manager) to close the pools.
    """

    provider: PooledProvider
    map_store: MapStore
    _closers: tuple[Callable[[], None], ...] = attrs.field(alias="closers", default=())

    def close(self) -> None:
        """Close every pool this opened. Idempotent."""
        for close in self._closers:
            close()

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@attrs.frozen(kw_only=True)
class Config:
    """A validated configuration file. Build it with :meth:`load` (or :meth:`from_mapping`).

    Attributes:
        source: the file it came from (for messages).
        shards: shard name -> primary URL, in file order.
        replicas: shard name -> read replica URLs.
        weights: shard name -> weight for the first map (every shard, default 1).
        slots: the slot count of the first map.
        map_store: where the live map is.
        tables: the aggregate tables (standard ones first, then custom ones).
        account_type: the account column type (``BigInt()`` or ``VarChar(n)``).
        rules: how to build the rules engine.
        writer: the writer settings.
        worker: the defaults of ``shardbill worker``.

    Example:
        >>> config = Config.from_toml('[shards]\\ns0 = "sqlite:///s0.db"', source="x.toml",
        ...                           base="/tmp")
        >>> list(config.shards), [t.name for t in config.tables][:2], config.writer.batch_size
        (['s0'], ['usage_daily', 'usage_monthly'], 2000)
    """

    source: str
    shards: Mapping[str, ConnectionURL] = attrs.field(converter=_urls)
    replicas: Mapping[str, tuple[ConnectionURL, ...]] = attrs.field(
        converter=_url_lists, factory=dict
    )
    weights: Mapping[str, int] = attrs.field(converter=_ints)
    slots: int = 16384
    map_store: MapStoreConfig
    tables: tuple[AggregateTable, ...]
    account_type: BigInt | VarChar = attrs.field(factory=BigInt)
    rules: RulesConfig = attrs.field(factory=RulesConfig)
    writer: WriterConfig = attrs.field(factory=WriterConfig)
    worker: WorkerConfig = attrs.field(factory=WorkerConfig)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Config:
        """Read and validate a configuration file.

        Args:
            path: the TOML file.

        Returns:
            The configuration.

        Raises:
            ConfigurationError: the file cannot be read, is not TOML, or a key
                is wrong (the message names the file, the key and the fix).
        """
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"{file}: cannot read the configuration file ({exc.strerror or exc}); check "
                "the path given with --config (or SHARDBILL_CONFIG)"
            ) from None
        return cls.from_toml(text, source=str(file), base=file.resolve().parent)

    @classmethod
    def from_toml(cls, text: str, *, source: str, base: str | os.PathLike[str]) -> Config:
        """Parse configuration text.

        Args:
            text: the TOML document.
            source: a name for messages (the file name).
            base: the directory relative paths are resolved against.

        Returns:
            The configuration.

        Raises:
            ConfigurationError: naming ``source``, the key and the fix.
        """
        try:
            data = toml_loads(text, max_chars=MAX_CONFIG_CHARS)
        except InvalidInputError as exc:
            raise ConfigurationError(f"{source}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{source}: not valid TOML: {exc}") from None
        return cls.from_mapping(data, source=source, base=base)

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, object], *, source: str, base: str | os.PathLike[str]
    ) -> Config:
        """Validate parsed configuration data (the structure of the TOML file).

        Args:
            data: the parsed document.
            source: a name for messages.
            base: the directory relative paths are resolved against.

        Returns:
            The configuration.

        Raises:
            ConfigurationError: naming ``source``, the key and the fix.
        """
        try:
            return _parse(data, source, Path(base))
        except _KeyProblemError as exc:
            raise ConfigurationError(f"{source}: {exc}") from None
        except ShardbillError as exc:
            # A check deeper down (a table spec, a URL) that has no key of ours.
            raise ConfigurationError(f"{source}: {exc}") from None

    # ------------------------------------------------------------------ using

    @property
    def account_as_int(self) -> bool:
        """True when account ids are integers (``account_type = "bigint"``).

        Text files (CSV always, JSON when quoted) then have their ``account``
        parsed as an int; see :meth:`shardbill.rules.UsageEvent.from_dict`.
        """
        return isinstance(self.account_type, BigInt)

    def initial_map(self) -> ShardMap:
        """The first shard map: every shard of ``[shards]`` with its weight.

        Returns:
            A map at epoch 1.
        """
        return ShardMap.create(dict(self.weights), slots=self.slots)

    def provider(self) -> PooledProvider:
        """A connection provider over the shards (and their replicas).

        Returns:
            The provider; close it when done.
        """
        return PooledProvider(self.shards, self.replicas)

    def open(self) -> Opened:
        """Connect the provider and the map store (nothing is queried yet).

        Returns:
            The provider and the store; close them when done.
        """
        provider = self.provider()
        store = self.map_store
        closers: list[Callable[[], None]] = [provider.close]
        if store.kind == "json":
            assert store.path is not None  # noqa: S101 - the parser sets it
            opened: MapStore = JsonFileMapStore(store.path)
        elif store.shard is not None:
            opened = SqlMapStore(provider, shard=store.shard, table=store.table)
        else:
            assert store.url is not None  # noqa: S101 - the parser sets one of the two
            control = PooledProvider({"control": store.url})
            closers.append(control.close)
            opened = SqlMapStore(control, shard="control", table=store.table)
        return Opened(provider=provider, map_store=opened, closers=tuple(closers))

    def engine(self) -> RulesEngine:
        """The rules engine of ``[rules]``.

        Returns:
            The engine.

        Raises:
            ConfigurationError: naming this file and the ``rules`` key.
        """
        try:
            return self.rules.engine()
        except ConfigurationError as exc:
            raise ConfigurationError(f"{self.source}: rules: {exc}") from None


def find_config(explicit: str | None) -> Path:
    """The configuration file the command line uses.

    Args:
        explicit: the ``--config`` value, if given.

    Returns:
        ``explicit``, else ``$SHARDBILL_CONFIG``, else ``./shardbill.toml``.

    Raises:
        ConfigurationError: the file does not exist (saying how to give one).
    """
    from_env = os.environ.get("SHARDBILL_CONFIG")
    chosen = explicit or from_env or DEFAULT_CONFIG
    if not Path(chosen).is_file():
        given = "--config" if explicit else "SHARDBILL_CONFIG" if from_env else "the default"
        raise ConfigurationError(
            f"{chosen}: no such configuration file (named by {given}); write one (see "
            "docs/reference/configuration.md) and pass it with --config FILE"
        )
    return Path(chosen)


# --------------------------------------------------------------------------- parsing


def _parse(data: Mapping[str, object], source: str, base: Path) -> Config:
    _known(data, _TOP_KEYS, "")
    if "shards" not in data:
        raise _KeyProblemError(
            "shards", 'is missing; add [shards] with name = "URL" lines, one per shard'
        )
    shards = _shards(_table(data["shards"], "shards"), base)
    replicas = _replicas(data.get("replicas", {}), shards, base)
    weights = _weights(data.get("weights", {}), shards)
    slots = _int(data.get("slots", 16384), "slots", low=1, high=1 << 20)
    if slots < len(shards):
        raise _KeyProblemError("slots", f"{slots} is fewer than the {len(shards)} shards; raise it")
    aggregates = _table(data.get("aggregates", {}), "aggregates")
    account_type, tables = _aggregates(aggregates)
    _refuse_wide_on_sqlite(aggregates, shards)
    return Config(
        source=source,
        shards=shards,
        replicas=replicas,
        weights=weights,
        slots=slots,
        map_store=_map_store(data.get("map_store", {}), shards, base),
        tables=tables,
        account_type=account_type,
        rules=_rules(data.get("rules", {}), base),
        writer=_writer(data.get("writer", {})),
        worker=_worker(data.get("worker", {}), base),
    )


def _shards(section: Mapping[str, object], base: Path) -> dict[str, ConnectionURL]:
    if not section:
        raise _KeyProblemError("shards", 'is empty; add name = "URL" lines, one per shard')
    out = {}
    for name, value in section.items():
        key = f"shards.{_shown_key(name)}"
        if not _SHARD_NAME.fullmatch(name):
            raise _KeyProblemError(
                key, "a shard name is 1-64 letters, digits, '_', '.' or '-' (not first)"
            )
        out[name] = _url(value, key, base)
    seen: dict[tuple[str, ...], str] = {}
    for name, url in out.items():
        other = seen.setdefault(url.target, name)
        if other != name:
            raise _KeyProblemError(
                f"shards.{name}",
                f"shard {name!r} names the same database as shard {other!r} "
                f"({url.target[-1] or url}); two "
                "shards would share their tables and count every event of their slots twice: "
                "give each shard its own database (or file)",
            )
    return out


def _replicas(
    value: object, shards: Mapping[str, ConnectionURL], base: Path
) -> dict[str, tuple[ConnectionURL, ...]]:
    section = _table(value, "replicas")
    out = {}
    for name, urls in section.items():
        key = f"replicas.{_shown_key(name)}"
        if name not in shards:
            raise _KeyProblemError(
                key, f"is not a shard of [shards] ({', '.join(shards)}); add it there"
            )
        listed = [urls] if isinstance(urls, str) else urls
        if not isinstance(listed, list):
            raise _KeyProblemError(key, f"must be a list of URLs, got {_show(urls)}")
        out[name] = tuple(_url(u, f"{key}[{i}]", base) for i, u in enumerate(listed))
    return out


def _weights(value: object, shards: Mapping[str, ConnectionURL]) -> dict[str, int]:
    section = _table(value, "weights")
    out = dict.fromkeys(shards, 1)
    for name, weight in section.items():
        key = f"weights.{name}"
        if name not in shards:
            raise _KeyProblemError(key, f"is not a shard of [shards] ({', '.join(shards)})")
        out[name] = _int(weight, key, low=1, high=1_000_000)
    return out


def _map_store(value: object, shards: Mapping[str, ConnectionURL], base: Path) -> MapStoreConfig:
    section = _table(value, "map_store")
    kind = section.get("kind", "json")
    if kind == "json":
        _known(section, ("kind", "path"), "map_store")
        path = _str(section.get("path", "shardmap.json"), "map_store.path")
        return MapStoreConfig(kind="json", path=(base / path).resolve())
    if kind != "sql":
        raise _KeyProblemError("map_store.kind", f"must be 'json' or 'sql', got {_show(kind)}")
    _known(section, ("kind", "url", "shard", "table"), "map_store")
    table = _str(section.get("table", "shardbill_map"), "map_store.table")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", table):
        raise _KeyProblemError("map_store.table", f"must be a SQL identifier, got {table!r}")
    if ("url" in section) == ("shard" in section):
        raise _KeyProblemError(
            "map_store",
            "kind = 'sql' needs exactly one of url = '<control database URL>' or "
            "shard = '<a shard of [shards]>'",
        )
    if "shard" in section:
        shard = _str(section["shard"], "map_store.shard")
        if shard not in shards:
            raise _KeyProblemError("map_store.shard", f"{shard!r} is not a shard of [shards]")
        return MapStoreConfig(kind="sql", shard=shard, table=table)
    return MapStoreConfig(kind="sql", url=_url(section["url"], "map_store.url", base), table=table)


def _aggregates(
    section: Mapping[str, object],
) -> tuple[BigInt | VarChar, tuple[AggregateTable, ...]]:
    _known(section, ("tables", "scale", "account_type", "custom"), "aggregates")
    which = section.get("tables", "billing")
    if which not in ("billing", "none"):
        raise _KeyProblemError(
            "aggregates.tables", f"must be 'billing' or 'none', got {_show(which)}"
        )
    scale = _int(section.get("scale", 6), "aggregates.scale", low=0, high=18)
    account_type = _column_type(section.get("account_type", "bigint"), "aggregates.account_type")
    if isinstance(account_type, Date):
        raise _KeyProblemError(
            "aggregates.account_type", "must be 'bigint' or 'varchar(N)', not 'date'"
        )
    tables: list[AggregateTable] = []
    if which == "billing":
        tables.extend(billing_tables(scale=scale, account_type=account_type))
    custom = section.get("custom", [])
    if not isinstance(custom, list):
        raise _KeyProblemError(
            "aggregates.custom", "must be a list of tables ([[aggregates.custom]])"
        )
    for index, item in enumerate(custom):
        table = _custom_table(item, f"aggregates.custom[{index}]", scale, account_type)
        if any(t.name == table.name for t in tables):
            raise _KeyProblemError(
                f"aggregates.custom[{index}].name",
                f"table {table.name!r} is declared twice (the standard tables are "
                f"{', '.join(t.name for t in billing_tables())}); rename it",
            )
        tables.append(table)
    if not tables:
        raise _KeyProblemError(
            "aggregates",
            "declares no table: set tables = 'billing' or add [[aggregates.custom]] tables",
        )
    return account_type, tuple(tables)


def _projection(text: str, key: str, default: object) -> Projection:
    fixed: dict[str, Projection] = {
        "account": Account(),
        "product": Product(),
        "currency": Currency(),
        "day": Day(),
        "month": Month(),
    }
    if text in fixed:
        if default is not None:
            raise _KeyProblemError(
                key, f"'default' applies to dimension projections only, not {text!r}"
            )
        return fixed[text]
    if text.startswith("dimension:") and re.fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", text[10:]
    ):
        if default is not None and (type(default) not in (int, str)):
            raise _KeyProblemError(
                key, f"'default' must be a string or an integer, got {_show(default)}"
            )
        return Dimension(text[10:], default=default)  # type: ignore[arg-type]
    raise _KeyProblemError(
        key,
        f"projection must be account, product, currency, day, month or dimension:NAME, "
        f"got {text!r}",
    )


def _default_type(projection: Projection, account_type: BigInt | VarChar) -> ColumnType:
    if isinstance(projection, Account):
        return account_type
    if isinstance(projection, Day | Month):
        return Date()
    if isinstance(projection, Currency):
        return VarChar(3)
    return VarChar(64)


def _check_type(projection: Projection, column_type: ColumnType, key: str) -> None:
    allowed: tuple[type, ...]
    if isinstance(projection, Day | Month):
        allowed, names = (Date,), "date"
    elif isinstance(projection, Account | Dimension):
        allowed, names = (BigInt, VarChar), "bigint or varchar(N)"
    else:
        allowed, names = (VarChar,), "varchar(N)"
    if not isinstance(column_type, allowed):
        raise _KeyProblemError(
            key,
            f"type {_type_name(column_type)!r} cannot hold projection {projection.name!r}; "
            f"use {names}",
        )
    if isinstance(projection, Dimension) and projection.default is not None:
        want = int if isinstance(column_type, BigInt) else str
        if type(projection.default) is not want:
            raise _KeyProblemError(
                key,
                f"default {projection.default!r} does not fit type {_type_name(column_type)!r}",
            )


def _key_column(item: object, key: str, account_type: BigInt | VarChar) -> KeyColumn:
    spec = _table(item, key)
    _known(spec, ("name", "projection", "type", "default", "existing"), key)
    name = _str(spec.get("name"), f"{key}.name")
    projection = _projection(
        _str(spec.get("projection"), f"{key}.projection"), f"{key}.projection", spec.get("default")
    )
    if "type" in spec:
        column_type = _column_type(spec["type"], f"{key}.type")
    else:
        column_type = _default_type(projection, account_type)
    _check_type(projection, column_type, f"{key}.type")
    existing = spec.get("existing")
    if existing is not None:
        try:
            column_type.check(existing, column=name)
        except InvalidInputError:
            raise _KeyProblemError(
                f"{key}.existing",
                f"{_show(existing)} does not fit type {_type_name(column_type)!r}; give the "
                "value rows that exist get when `shardbill migrate` adds the column",
            ) from None
    try:
        return KeyColumn(
            name=name,
            type=column_type,
            projection=projection,
            existing=existing,  # type: ignore[arg-type]  # checked just above
        )
    except ConfigurationError as exc:
        raise _KeyProblemError(f"{key}.name", str(exc)) from None


def _measure(item: object, key: str, scale: int) -> Measure:
    spec = _table(item, key)
    _known(spec, ("name", "value", "scale", "merge", "wide"), key)
    name = _str(spec.get("name"), f"{key}.name")
    kind = spec.get("value")
    value: MeasureValue
    if kind == "count":
        if "scale" in spec:
            raise _KeyProblemError(f"{key}.scale", "a count has no scale; remove it")
        value = Count()
    elif kind in ("quantity", "amount"):
        own = _int(spec.get("scale", scale), f"{key}.scale", low=0, high=18)
        value = Quantity(scale=own) if kind == "quantity" else Amount(scale=own)
    else:
        raise _KeyProblemError(
            f"{key}.value", f"must be 'quantity', 'amount' or 'count', got {kind!r}"
        )
    merge = spec.get("merge", "sum")
    if merge not in ("sum", "min", "max"):
        raise _KeyProblemError(f"{key}.merge", f"must be 'sum', 'min' or 'max', got {_show(merge)}")
    wide = spec.get("wide", False)
    if type(wide) is not bool:
        raise _KeyProblemError(
            f"{key}.wide", f"must be true or false (DECIMAL(65,0) on MySQL), got {_show(wide)}"
        )
    try:
        return Measure(name=name, value=value, merge=MergeKind(merge), wide=wide)
    except ConfigurationError as exc:
        raise _KeyProblemError(f"{key}.name", str(exc)) from None


def _refuse_wide_on_sqlite(
    aggregates: Mapping[str, object], shards: Mapping[str, ConnectionURL]
) -> None:
    """A wide measure (DECIMAL(65,0)) cannot live on a SQLite shard: refuse it here, by key."""
    on_sqlite = [n for n, url in shards.items() if url.driver == "sqlite"]
    custom = aggregates.get("custom", [])
    if not on_sqlite or not isinstance(custom, list):
        return
    for i, table in enumerate(custom):
        measures = table.get("measures", []) if isinstance(table, Mapping) else []
        for j, measure in enumerate(measures):
            if isinstance(measure, Mapping) and measure.get("wide") is True:
                raise _KeyProblemError(
                    f"aggregates.custom[{i}].measures[{j}].wide",
                    f"measure {measure.get('name')!r} of table {table.get('name')!r} is wide "
                    f"(DECIMAL(65,0)), which SQLite shard {on_sqlite[0]!r} cannot hold exactly; "
                    "use MySQL/MariaDB shards, or remove wide = true and keep each row under "
                    "2**63 - 1 units (a coarser scale, or rows split by period)",
                )


def _custom_table(
    item: object, key: str, scale: int, account_type: BigInt | VarChar
) -> AggregateTable:
    spec = _table(item, key)
    _known(spec, ("name", "keys", "measures"), key)
    name = _str(spec.get("name"), f"{key}.name")
    raw_keys, raw_measures = spec.get("keys"), spec.get("measures")
    if not isinstance(raw_keys, list) or not raw_keys:
        raise _KeyProblemError(f"{key}.keys", "must be a non-empty list of key columns")
    if not isinstance(raw_measures, list) or not raw_measures:
        raise _KeyProblemError(f"{key}.measures", "must be a non-empty list of measures")
    keys = [_key_column(k, f"{key}.keys[{i}]", account_type) for i, k in enumerate(raw_keys)]
    if not any(isinstance(k.projection, Account) for k in keys):
        raise _KeyProblemError(
            f"{key}.keys",
            "needs a key column with projection = 'account' (rows are sharded by account)",
        )
    measures = [_measure(m, f"{key}.measures[{i}]", scale) for i, m in enumerate(raw_measures)]
    try:
        return AggregateTable(name=name, keys=keys, measures=measures)
    except ConfigurationError as exc:
        raise _KeyProblemError(key, str(exc)) from None


def _rules(value: object, base: Path) -> RulesConfig:
    section = _table(value, "rules")
    _known(section, ("names", "import", "price_book"), "rules")
    names = section.get("names")
    factory = section.get("import")
    if names is not None and factory is not None:
        raise _KeyProblemError("rules", "give either names = [...] or import = '...', not both")
    if names is not None and (
        not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)
    ):
        raise _KeyProblemError(
            "rules.names", f"must be a non-empty list of rule names, got {_show(names)}"
        )
    for index, name in enumerate(names or ()):
        if not _RULE_NAME.fullmatch(name):
            raise _KeyProblemError(
                f"rules.names[{index}]",
                f"{_show(name)} is not a rule name; give the name of an entry point in the "
                "shardbill.rules group, like 'comms.sms'",
            )
    if factory is not None:
        text = _str(factory, "rules.import")
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", text):
            raise _KeyProblemError(
                "rules.import", f"must look like 'package.module:attribute', got {_show(text)}"
            )
    book = section.get("price_book")
    return RulesConfig(
        names=tuple(names) if names is not None else None,
        factory=factory,  # type: ignore[arg-type]
        price_book=(base / _str(book, "rules.price_book")).resolve() if book is not None else None,
    )


def _writer(value: object) -> WriterConfig:
    section = _table(value, "writer")
    fields = {f.name: f.default for f in attrs.fields(WriterConfig)}
    _known(section, tuple(fields), "writer")
    policy = fields.pop("late_events")
    values: dict[str, Any] = {
        name: _int(section.get(name, default), f"writer.{name}", low=1, high=10_000_000)
        for name, default in fields.items()
    }
    from shardbill.periods.gate import LATE_EVENT_POLICIES  # at call time: no import cycle

    policy = section.get("late_events", policy)
    if policy not in LATE_EVENT_POLICIES:
        raise _KeyProblemError(
            "writer.late_events",
            f'must be "refuse" (reject an event of a closing or closed period with its reason) '
            f'or "adjust" (book it into the first open period), got {_show(policy)}',
        )
    return WriterConfig(**values, late_events=policy)


_WORKER_TEXT = ("bootstrap_servers", "group", "dead_letter_topic")


def _worker_source(value: object, base: Path) -> Literal["kafka"] | Path | None:
    if value is None:
        return None
    text = _str(value, "worker.source")
    if text == "kafka":
        return "kafka"
    if text.startswith("dir:") and text[4:]:
        return (base / text[4:]).resolve()
    raise _KeyProblemError(
        "worker.source",
        f'must be "kafka" or "dir:PATH" (a directory of .jsonl files), got {_show(text)}',
    )


def _worker(value: object, base: Path) -> WorkerConfig:
    section = _table(value, "worker")
    allowed = (*_WORKER_TEXT, "source", "topics", "dead_letters", "batch_size", "linger_ms")
    timeouts = ("drain_timeout_seconds", "connect_timeout_seconds")
    _known(section, (*allowed, "max_held", *timeouts, "kafka"), "worker")
    if "dead_letter_topic" in section and "dead_letters" in section:
        raise _KeyProblemError(
            "worker", "give either dead_letter_topic or dead_letters (a file), not both"
        )
    text = {name: _str(section[name], f"worker.{name}") for name in _WORKER_TEXT if name in section}
    topics = section.get("topics", [])
    if not isinstance(topics, list) or not all(isinstance(t, str) and t for t in topics):
        raise _KeyProblemError(
            "worker.topics", f"must be a list of topic names, got {_show(topics)}"
        )
    dead = section.get("dead_letters")
    kafka = _table(section.get("kafka", {}), "worker.kafka")
    for key, setting in kafka.items():
        where = f"worker.kafka.{_shown_key(key)}"
        if not isinstance(setting, str):
            raise _KeyProblemError(
                where, f"must be a string (librdkafka reads text), got {_kind(setting)}"
            )
        secret = any(word in key.lower() for word in _SECRET_WORDS)
        if secret and not setting.startswith("env:"):
            raise _KeyProblemError(
                where,
                "a secret never belongs in the file (it was not shown); write "
                '"env:NAME" and put the value in the environment variable NAME',
            )
    batch_size = (
        _int(section["batch_size"], "worker.batch_size", low=1, high=10_000_000)
        if "batch_size" in section
        else None
    )
    max_held = (
        _int(section["max_held"], "worker.max_held", low=1, high=100_000_000)
        if "max_held" in section
        else None
    )
    if max_held is not None and batch_size is not None and max_held < batch_size:
        raise _KeyProblemError(
            "worker.max_held",
            f"{max_held} is below worker.batch_size ({batch_size}): a batch could never fill; "
            f"give max_held = {batch_size} or more (or leave it out: twice the batch size)",
        )
    return WorkerConfig(
        source=_worker_source(section.get("source"), base),
        bootstrap_servers=text.get("bootstrap_servers"),
        topics=tuple(topics),
        group=text.get("group"),
        dead_letter_topic=text.get("dead_letter_topic"),
        dead_letters=(base / _str(dead, "worker.dead_letters")).resolve()
        if dead is not None
        else None,
        batch_size=batch_size,
        max_held=max_held,
        linger_ms=_int(section.get("linger_ms", 200), "worker.linger_ms", low=0, high=3_600_000),
        drain_timeout_seconds=_int(
            section.get("drain_timeout_seconds", 30),
            "worker.drain_timeout_seconds",
            low=0,
            high=86_400,
        ),
        connect_timeout_seconds=_seconds(
            section.get("connect_timeout_seconds", 30.0), "worker.connect_timeout_seconds"
        ),
        kafka={str(k): str(v) for k, v in kafka.items()},
    )
