"""Where the live shard map lives: one store every writer reads and operators publish to.

A :class:`MapStore` holds the current :class:`~shardbill.shardmap.ShardMap`
and changes it only by compare-and-set on the epoch:
``publish(new_map, expected_epoch=E)`` succeeds only when the store still
holds epoch ``E`` (``None``: the store is empty) and ``new_map.epoch > E``.
Two operators racing to publish from the same map therefore cannot both
succeed: exactly one wins, the other gets :class:`EpochConflictError`,
reloads and re-plans. Epochs only grow.

Implementations:

* :class:`JsonFileMapStore`: the map as a JSON file (``ShardMap.to_json()``),
  replaced atomically under an exclusive ``flock`` on a sidecar lock file;
  every published epoch is also archived next to it. For one host (or a
  shared filesystem with working ``flock``); POSIX only.
* :class:`SqlMapStore`: a table in a control database reached through a
  :class:`~shardbill.providers.ConnectionProvider`; one row per published
  epoch (the history is the audit trail). MySQL, MariaDB and SQLite.
* :class:`MemoryMapStore`: in memory, for tests and single-process tools.

Writers hold the map in a :class:`CachedMap` and call
:meth:`CachedMap.reload` when a shard fences them
(:class:`~shardbill.errors.FencedError`).

Example:
    >>> store = MemoryMapStore()
    >>> m1 = ShardMap.create(["a", "b"], slots=64)
    >>> store.publish(m1, expected_epoch=None)
    >>> store.publish(m1.add_shard("c"), expected_epoch=1)
    >>> try:  # a second operator who also planned from epoch 1 loses
    ...     store.publish(m1.add_shard("d"), expected_epoch=1)
    ... except EpochConflictError as exc:
    ...     print(exc.stored_epoch, exc.expected_epoch)
    2 1
    >>> CachedMap(store).current.epoch
    2
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Protocol

import attrs

from shardbill.dialects.base import Dialect, validate_identifier
from shardbill.dialects.detect import dialect_for
from shardbill.dialects.errors import translating
from shardbill.errors import (
    ConfigurationError,
    DatabaseError,
    DeadlockError,
    DuplicateKeyError,
    EpochConflictError,
    FatalDatabaseError,
    LockWaitTimeoutError,
    MapNotPublishedError,
    SchemaError,
    ShardMapError,
)
from shardbill.providers.base import ConnectionProvider, DBAPIConnection, Row
from shardbill.shardmap import ShardMap

__all__ = [
    "CachedMap",
    "JsonFileMapStore",
    "MapStore",
    "MemoryMapStore",
    "SqlMapStore",
]


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


def _check_arguments(new_map: object, expected_epoch: object) -> None:
    if not isinstance(new_map, ShardMap):
        raise ShardMapError(
            f"publish needs a ShardMap, got {type(new_map).__name__}; "
            "build one with ShardMap.create() or ShardMap.from_json()"
        )
    if expected_epoch is not None and (
        not isinstance(expected_epoch, int)
        or isinstance(expected_epoch, bool)
        or expected_epoch < 1
    ):
        raise ShardMapError(
            f"'expected_epoch' must be None (first publish) or an int >= 1: {expected_epoch!r}; "
            "pass the epoch of the map you planned from"
        )


def _check_publish(
    store: str, stored: ShardMap | None, new_map: ShardMap, expected_epoch: int | None
) -> None:
    """The compare-and-set rule every store applies, under its own lock."""
    stored_epoch = None if stored is None else stored.epoch
    if stored_epoch != expected_epoch:
        if stored_epoch is None:
            message = (
                f"{store} holds no map yet, but the publish expected epoch {expected_epoch}; "
                "publish the first map with expected_epoch=None"
            )
        elif expected_epoch is None:
            message = (
                f"{store} already holds epoch {stored_epoch}, but the publish expected an "
                "empty store (expected_epoch=None): another publisher was first; load() the "
                f"map, re-plan from it and publish with expected_epoch={stored_epoch}"
            )
        else:
            message = (
                f"{store} holds epoch {stored_epoch}, not the expected {expected_epoch}: the "
                "map changed since you read it; load() it, re-plan from it and publish with "
                f"expected_epoch={stored_epoch}"
            )
        raise EpochConflictError(
            message,
            store=store,
            stored_epoch=stored_epoch,
            expected_epoch=expected_epoch,
            new_epoch=new_map.epoch,
        )
    if stored is None:
        return
    if new_map.epoch <= stored.epoch:
        raise EpochConflictError(
            f"{store} holds epoch {stored.epoch} and the new map has epoch {new_map.epoch}: "
            "epochs only grow; derive the new map from the stored one (add_shard, remove_shard "
            "and reweight raise the epoch) and publish it",
            store=store,
            stored_epoch=stored.epoch,
            expected_epoch=expected_epoch,
            new_epoch=new_map.epoch,
        )
    if new_map.slots != stored.slots:
        raise ShardMapError(
            f"{store} holds a map of {stored.slots} slots; the new map has {new_map.slots}: "
            "changing the slot count would move almost every key, which no plan can do "
            "online; derive the new map from the stored one"
        )


def _damaged(store: str, where: str, exc: ShardMapError, advice: str) -> ShardMapError:
    error = ShardMapError(f"{store}: the shard map in {where} is damaged: {exc}; {advice}")
    error.__cause__ = exc
    return error


def _parse(
    store: str, where: str, document: str | bytes, epoch: int | None, advice: str
) -> ShardMap:
    """Parse a stored document; any defect is a ShardMapError naming the store."""
    try:
        shard_map = ShardMap.from_json(document, require_balance=False)
    except ShardMapError as exc:
        raise _damaged(store, where, exc, advice) from exc
    if epoch is not None and shard_map.epoch != epoch:
        raise ShardMapError(
            f"{store}: the shard map in {where} is damaged: it is stored as epoch {epoch} but "
            f"its document says epoch {shard_map.epoch}; {advice}"
        )
    return shard_map


class MemoryMapStore:
    """A :class:`MapStore` in memory: for tests and single-process tools. Thread-safe.

    Keeps every published map (:meth:`history`, :meth:`load_epoch`).

    Args:
        initial: a map to publish at once (as with ``expected_epoch=None``).
    """

    def __init__(self, initial: ShardMap | None = None) -> None:
        self._lock = threading.Lock()
        self._maps: dict[int, ShardMap] = {}
        self._current: ShardMap | None = None
        if initial is not None:
            self.publish(initial, expected_epoch=None)

    def __repr__(self) -> str:
        return "MemoryMapStore()"

    def load(self) -> ShardMap:
        """The current map.

        Raises:
            MapNotPublishedError: nothing was published yet.
        """
        current = self._current
        if current is None:
            raise MapNotPublishedError(
                f"{self!r} holds no shard map yet; publish the first one with "
                "store.publish(ShardMap.create([...]), expected_epoch=None)",
                store=repr(self),
            )
        return current

    def epoch(self) -> int | None:
        """The current epoch, or ``None`` when empty."""
        current = self._current
        return None if current is None else current.epoch

    def publish(self, new_map: ShardMap, *, expected_epoch: int | None) -> None:
        """Compare-and-set (see :meth:`MapStore.publish`)."""
        _check_arguments(new_map, expected_epoch)
        with self._lock:
            _check_publish(repr(self), self._current, new_map, expected_epoch)
            self._maps[new_map.epoch] = new_map
            self._current = new_map

    def history(self) -> tuple[int, ...]:
        """Every published epoch, oldest first."""
        with self._lock:
            return tuple(sorted(self._maps))

    def load_epoch(self, epoch: int) -> ShardMap:
        """The map published as ``epoch``.

        Raises:
            MapNotPublishedError: no map was published with that epoch.
        """
        with self._lock:
            found = self._maps.get(epoch)
        if found is None:
            raise MapNotPublishedError(
                f"{self!r} has no map of epoch {epoch!r}; history() lists the epochs it has",
                store=repr(self),
            )
        return found


def _fsync_directory(directory: Path) -> None:
    # Makes the rename durable. Best effort: it runs after the new file is
    # already visible, so failing here must not report the publish as failed.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``target``, fsync it, and rename it over ``target``."""
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with open(fd, "wb", closefd=True) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(target.parent)


class JsonFileMapStore:
    """A :class:`MapStore` in a JSON file: ``ShardMap.to_json()``, replaced atomically.

    Readers read the file without a lock: it is only ever replaced by
    ``os.replace`` of a complete, fsynced temp file from the same directory,
    so a reader sees the old map or the new one, never a mix.

    :meth:`publish` holds an exclusive ``fcntl.flock`` on a sidecar lock file
    (``PATH.lock``, created on first publish and never deleted) from reading
    the stored epoch to the rename, so of several threads or processes
    publishing from the same epoch exactly one wins. Publishers need write
    access to the directory; readers only need to read the file.

    With ``keep_history`` (the default) a publish first archives the map it
    replaces as ``STEM.epoch-N.json`` beside the file, so every archive holds
    a map that really was current (a publish that fails before its rename
    leaves at most a fresh copy of the still-current map). :meth:`history`
    and :meth:`load_epoch` show the past epochs; to go back to one, publish
    a copy of it with a new epoch (``old.with_epoch(current.epoch + 1)``).
    Nothing is pruned: the files are small; delete old ones by hand.

    POSIX only (``fcntl``). Several hosts may share the file only on a
    filesystem whose ``flock`` works across hosts; otherwise use
    :class:`SqlMapStore`.

    Args:
        path: the map file, e.g. ``/etc/shardbill/shardmap.json``.
        keep_history: archive each replaced map as ``STEM.epoch-N.json``.
    """

    def __init__(self, path: str | os.PathLike[str], *, keep_history: bool = True) -> None:
        self._path = Path(path)
        if self._path.name in ("", ".", ".."):
            raise ConfigurationError(
                f"JsonFileMapStore needs a file path, got {os.fspath(path)!r}; "
                "e.g. /etc/shardbill/shardmap.json"
            )
        self._keep_history = keep_history
        self._history_name = re.compile(rf"{re.escape(self._path.stem)}\.epoch-([0-9]+)\.json")

    def __repr__(self) -> str:
        return f"JsonFileMapStore({str(self._path)!r})"

    @property
    def path(self) -> Path:
        """The map file."""
        return self._path

    @property
    def lock_path(self) -> Path:
        """The sidecar file publishers lock (``PATH.lock``)."""
        return self._path.with_name(f"{self._path.name}.lock")

    def history_path(self, epoch: int) -> Path:
        """Where the map of ``epoch`` is archived once replaced (``STEM.epoch-N.json``)."""
        return self._path.with_name(f"{self._path.stem}.epoch-{epoch}.json")

    def _advice(self) -> str:
        return (
            f"restore a good copy (archived maps: {self._path.stem}.epoch-N.json in "
            f"{self._path.parent}) or fix the file by hand"
        )

    def _read(self, path: Path, epoch: int | None = None) -> ShardMap | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return _parse(repr(self), str(path), data, epoch, self._advice())

    def _not_published(self) -> MapNotPublishedError:
        return MapNotPublishedError(
            f"{self!r} holds no shard map yet ({self._path} does not exist); publish the first "
            "one with JsonFileMapStore(path).publish(ShardMap.create([...]), expected_epoch=None)",
            store=repr(self),
        )

    def load(self) -> ShardMap:
        """The current map (see :meth:`MapStore.load`)."""
        current = self._read(self._path)
        if current is None:
            raise self._not_published()
        return current

    def epoch(self) -> int | None:
        """The current epoch (``None`` when the file does not exist); reads only that field.

        Raises:
            ShardMapError: the file is not JSON or has no valid epoch.
        """
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            epoch = json.loads(data).get("epoch")
        except (ValueError, AttributeError) as exc:
            raise _damaged(
                repr(self), str(self._path), ShardMapError(str(exc)), self._advice()
            ) from exc
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise ShardMapError(
                f"{self!r}: the shard map in {self._path} is damaged: 'epoch' must be an int "
                f">= 1: {epoch!r}; {self._advice()}"
            )
        return epoch

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl  # POSIX only; imported here so the module imports everywhere

        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def publish(self, new_map: ShardMap, *, expected_epoch: int | None) -> None:
        """Compare-and-set under the lock, then an atomic replace (see :meth:`MapStore.publish`).

        Raises:
            EpochConflictError: the stored epoch is not ``expected_epoch``, or
                ``new_map`` is not newer.
            ShardMapError: the stored file is damaged (restore it first), or
                ``new_map`` has another slot count.
            ConfigurationError: the file's directory does not exist.
        """
        _check_arguments(new_map, expected_epoch)
        if not self._path.parent.is_dir():
            raise ConfigurationError(
                f"{self!r}: directory {self._path.parent} does not exist; create it first"
            )
        data = new_map.to_json().encode()
        with self._locked():
            current = self._read(self._path)
            _check_publish(repr(self), current, new_map, expected_epoch)
            if self._keep_history and current is not None:
                _write_atomically(self.history_path(current.epoch), current.to_json().encode())
            _write_atomically(self._path, data)

    def history(self) -> tuple[int, ...]:
        """The archived epochs and the current one, oldest first."""
        current = self.epoch()
        if current is None:
            return ()
        epochs = {current}
        with os.scandir(self._path.parent) as entries:
            for entry in entries:
                match = self._history_name.fullmatch(entry.name)
                if match is not None and int(match.group(1)) < current:
                    epochs.add(int(match.group(1)))
        return tuple(sorted(epochs))

    def load_epoch(self, epoch: int) -> ShardMap:
        """The map published as ``epoch`` (the current file, or its archive).

        Raises:
            MapNotPublishedError: no map of that epoch is kept.
            ShardMapError: the archive is damaged.
        """
        current = self._read(self._path)
        if current is None:
            raise self._not_published()
        if current.epoch == epoch:
            return current
        found = self._read(self.history_path(epoch), epoch) if epoch < current.epoch else None
        if found is None:
            raise MapNotPublishedError(
                f"{self!r} keeps no map of epoch {epoch!r} (the current epoch is "
                f"{current.epoch}); history() lists the epochs it keeps",
                store=repr(self),
            )
        return found


_PUBLISH_ATTEMPTS: Final = 8
"""Tries of one SQL publish: publishers racing into an empty InnoDB table deadlock on the
gap locks of their locking reads; a retry then sees the winner and reports a conflict."""

_NO_SUCH_TABLE: Final = 1146
"""ER_NO_SUCH_TABLE."""


@attrs.frozen
class _Statements:
    """The map store's SQL for one dialect and table, built once."""

    create: str
    probe: str
    head: str
    head_for_update: str
    head_epoch: str
    at_epoch: str
    epochs: str
    insert: str
    table_exists: str

    @classmethod
    def build(cls, dialect: Dialect, table: str) -> _Statements:
        t = dialect.quote(table)
        p = "?" if dialect.paramstyle == "qmark" else "%s"
        sqlite = dialect.name == "sqlite"
        if sqlite:
            create = (
                f"CREATE TABLE IF NOT EXISTS {t} ("
                "epoch INTEGER NOT NULL PRIMARY KEY, "
                "previous_epoch INTEGER NOT NULL UNIQUE, "
                "document TEXT NOT NULL, "
                "published_at INTEGER NOT NULL)"
            )
            # sqlite_master is the documented schema table in every SQLite version.
            table_exists = f"SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = {p}"
        else:
            create = (
                f"CREATE TABLE IF NOT EXISTS {t} ("
                "epoch BIGINT NOT NULL PRIMARY KEY, "
                "previous_epoch BIGINT NOT NULL UNIQUE, "
                "document LONGTEXT NOT NULL, "
                "published_at BIGINT NOT NULL"
                ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            )
            table_exists = (
                "SELECT COUNT(*) FROM information_schema.tables "
                f"WHERE table_schema = DATABASE() AND table_name = {p}"
            )
        head = f"SELECT epoch, document FROM {t} ORDER BY epoch DESC LIMIT 1"
        return cls(
            create=create,
            probe=f"SELECT epoch, previous_epoch, document, published_at FROM {t} WHERE 1 = 0",
            head=head,
            # SQLite: the provider's write transaction (BEGIN IMMEDIATE) is already exclusive.
            head_for_update=head if sqlite else f"{head} FOR UPDATE",
            head_epoch=f"SELECT MAX(epoch) FROM {t}",
            at_epoch=f"SELECT epoch, document FROM {t} WHERE epoch = {p}",
            epochs=f"SELECT epoch FROM {t} ORDER BY epoch",
            insert=(
                f"INSERT INTO {t} (epoch, previous_epoch, document, published_at) "
                f"VALUES ({p}, {p}, {p}, {p})"
            ),
            table_exists=table_exists,
        )


def _fetch(conn: DBAPIConnection, sql: str, params: tuple[int | str, ...] = ()) -> list[Row]:
    cursor = conn.cursor()
    try:
        if params:
            cursor.execute(sql, params)
        else:
            cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _execute(conn: DBAPIConnection, sql: str, params: tuple[int | str, ...] = ()) -> None:
    cursor = conn.cursor()
    try:
        if params:
            cursor.execute(sql, params)
        else:
            cursor.execute(sql)
    finally:
        cursor.close()


class SqlMapStore:
    """A :class:`MapStore` in a table of a control database, one row per published epoch.

    The table (created by :meth:`ensure_schema`)::

        epoch           BIGINT  PRIMARY KEY     the map's epoch
        previous_epoch  BIGINT  UNIQUE          the epoch it replaced (0: the first map)
        document        LONGTEXT (SQLite TEXT)  ShardMap.to_json()
        published_at    BIGINT                  Unix time of the publish, in milliseconds

    The current map is the row with the highest epoch; older rows stay as the
    audit trail (:meth:`history`, :meth:`load_epoch`).

    :meth:`publish` is one transaction on the provider's ``shard``: it reads
    the newest row with a locking read (``SELECT ... FOR UPDATE`` on MySQL
    and MariaDB; on SQLite the provider's ``BEGIN IMMEDIATE`` already holds
    the write lock), checks the compare-and-set rule and inserts the new row.
    Two constraints guard it even when the read does not serialize (a
    custom provider over plain ``sqlite3``, whose deferred transactions take
    no lock on a read; an unusual isolation level): the primary key on
    ``epoch``, and the ``UNIQUE`` ``previous_epoch``, which lets every epoch
    have one successor only, so two publishers from the same epoch cannot
    both insert even with different new epochs. Either violation becomes
    :class:`EpochConflictError`.

    Reads (:meth:`load`, :meth:`epoch`, :meth:`history`) borrow
    ``readonly`` connections: when the provider has read replicas for the
    control shard they may lag a publish. That is safe (a writer holding an
    old map is fenced again and reloads again) but costs retries; give the
    control shard no replicas to avoid it.

    Args:
        provider: lends connections to the control database.
        shard: the provider's name for the control database.
        table: the table name (``^[A-Za-z_][A-Za-z0-9_]{0,63}$``).
    """

    def __init__(
        self,
        provider: ConnectionProvider,
        *,
        shard: str = "control",
        table: str = "shardbill_map",
    ) -> None:
        validate_identifier(table, what="map store table")
        if not isinstance(shard, str) or not shard:
            raise ConfigurationError(
                f"SqlMapStore 'shard' must be a non-empty shard name: {shard!r}; "
                "the provider's name for the control database"
            )
        self._provider = provider
        self._shard = shard
        self._table = table
        self._statements: dict[str, _Statements] = {}

    def __repr__(self) -> str:
        return f"SqlMapStore(shard={self._shard!r}, table={self._table!r})"

    @property
    def shard(self) -> str:
        """The provider's name for the control database."""
        return self._shard

    @property
    def table(self) -> str:
        """The table name."""
        return self._table

    def _sql(self, conn: DBAPIConnection) -> _Statements:
        dialect = dialect_for(conn)
        statements = self._statements.get(dialect.name)
        if statements is None:
            statements = self._statements[dialect.name] = _Statements.build(dialect, self._table)
        return statements

    def _advice(self) -> str:
        return (
            f"repair the row in table {self._table!r} from a good copy (history() and "
            "load_epoch() show the earlier maps), or delete the damaged row"
        )

    def _parse_row(self, row: Row) -> ShardMap:
        epoch, document = row[0], row[1]
        if not isinstance(document, str | bytes):
            raise ShardMapError(
                f"{self!r}: the shard map of epoch {epoch!r} is damaged: its document is a "
                f"{type(document).__name__}, not text; {self._advice()}"
            )
        return _parse(
            repr(self), f"the row of epoch {epoch!r}", document, int(epoch), self._advice()
        )

    def ensure_schema(self) -> None:
        """Create the table when it is missing, and check an existing one has its columns.

        Raises:
            SchemaError: a table of that name exists without the map store's columns.
            DatabaseError: the database refused (e.g. no CREATE privilege).
        """
        with translating(self._shard), self._provider.connection(self._shard) as conn:
            _execute(conn, self._sql(conn).create)
        try:
            with translating(self._shard), self._provider.connection(self._shard) as conn:
                _fetch(conn, self._sql(conn).probe)
        except FatalDatabaseError as exc:
            raise SchemaError(
                f"{self!r}: table {self._table!r} cannot be read as a map store table ({exc}); "
                "it needs columns epoch, previous_epoch, document, published_at: if another "
                "table has that name, choose another table= or rename the existing one"
            ) from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[tuple[DBAPIConnection, _Statements]]:
        """A readonly transaction; a missing table becomes MapNotPublishedError."""
        try:
            with (
                translating(self._shard),
                self._provider.connection(self._shard, readonly=True) as conn,
            ):
                yield conn, self._sql(conn)
        except FatalDatabaseError as exc:
            if self._missing_table(exc):
                raise MapNotPublishedError(
                    f"{self!r}: table {self._table!r} does not exist on shard {self._shard!r}; "
                    "create it with store.ensure_schema(), then publish the first map with "
                    "store.publish(ShardMap.create([...]), expected_epoch=None)",
                    store=repr(self),
                ) from exc
            raise

    def _missing_table(self, error: FatalDatabaseError) -> bool:
        """Whether ``error`` came from the table not existing (asked of the catalog if unsure)."""
        if error.errno == _NO_SUCH_TABLE:
            return True
        try:
            with (
                translating(self._shard),
                self._provider.connection(self._shard, readonly=True) as conn,
            ):
                rows = _fetch(conn, self._sql(conn).table_exists, (self._table,))
        except DatabaseError:
            return False  # the original error is the one worth reporting
        return not (rows and rows[0][0])

    def load(self) -> ShardMap:
        """The map with the highest epoch (see :meth:`MapStore.load`).

        Raises:
            MapNotPublishedError: the table is missing or empty.
            ShardMapError: the newest row's document is damaged.
            DatabaseError: the database refused.
        """
        with self._reading() as (conn, sql):
            rows = _fetch(conn, sql.head)
        if not rows:
            raise MapNotPublishedError(
                f"{self!r} holds no shard map yet; publish the first one with "
                "store.publish(ShardMap.create([...]), expected_epoch=None)",
                store=repr(self),
            )
        return self._parse_row(rows[0])

    def epoch(self) -> int | None:
        """The highest stored epoch (``None`` when the table is empty); one small query.

        Raises:
            MapNotPublishedError: the table is missing.
        """
        with self._reading() as (conn, sql):
            rows = _fetch(conn, sql.head_epoch)
        if not rows or rows[0][0] is None:
            return None
        return int(rows[0][0])

    def history(self) -> tuple[int, ...]:
        """Every stored epoch, oldest first.

        Raises:
            MapNotPublishedError: the table is missing.
        """
        with self._reading() as (conn, sql):
            rows = _fetch(conn, sql.epochs)
        return tuple(int(row[0]) for row in rows)

    def load_epoch(self, epoch: int) -> ShardMap:
        """The map published as ``epoch``.

        Raises:
            MapNotPublishedError: no row of that epoch (or no table).
            ShardMapError: its document is damaged.
        """
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise ShardMapError(f"'epoch' must be an int: {epoch!r}")
        with self._reading() as (conn, sql):
            rows = _fetch(conn, sql.at_epoch, (epoch,))
        if not rows:
            raise MapNotPublishedError(
                f"{self!r} has no map of epoch {epoch}; history() lists the epochs it has",
                store=repr(self),
            )
        return self._parse_row(rows[0])

    def publish(self, new_map: ShardMap, *, expected_epoch: int | None) -> None:
        """Compare-and-set in one transaction (see :meth:`MapStore.publish`).

        If the COMMIT's outcome is unknown
        (:class:`~shardbill.errors.CommitOutcomeUnknownError`), :meth:`load`
        tells: the map is published when the stored epoch is ``new_map.epoch``
        and the maps are equal. Do not simply publish again: a publish that did
        commit makes the repeat fail with :class:`EpochConflictError`.

        Raises:
            EpochConflictError: the stored epoch is not ``expected_epoch``, or
                ``new_map`` is not newer, or a racing publisher committed first.
            ShardMapError: the newest stored map is damaged, or ``new_map``
                has another slot count.
            MapNotPublishedError: the table is missing (run :meth:`ensure_schema`).
            DatabaseError: the database refused.
        """
        _check_arguments(new_map, expected_epoch)
        document = new_map.to_json()
        for attempt in range(1, _PUBLISH_ATTEMPTS + 1):
            try:
                self._publish_once(new_map, document, expected_epoch)
            except DuplicateKeyError as exc:
                stored_epoch = self.epoch()
                raise EpochConflictError(
                    f"{self!r}: a racing publisher committed a successor of epoch "
                    f"{expected_epoch or 'none (empty store)'} first; the store now holds "
                    f"epoch {stored_epoch}: load() the map, re-plan from it and publish with "
                    f"expected_epoch={stored_epoch}",
                    store=repr(self),
                    stored_epoch=stored_epoch,
                    expected_epoch=expected_epoch,
                    new_epoch=new_map.epoch,
                ) from exc
            except (DeadlockError, LockWaitTimeoutError):
                if attempt == _PUBLISH_ATTEMPTS:
                    raise
                # Full jitter, so that deadlocked publishers do not collide again.
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))  # noqa: S311
            else:
                return

    def _publish_once(self, new_map: ShardMap, document: str, expected_epoch: int | None) -> None:
        try:
            with translating(self._shard), self._provider.connection(self._shard) as conn:
                sql = self._sql(conn)
                rows = _fetch(conn, sql.head_for_update)
                stored = self._parse_row(rows[0]) if rows else None
                _check_publish(repr(self), stored, new_map, expected_epoch)
                published_at = time.time_ns() // 1_000_000
                _execute(
                    conn,
                    sql.insert,
                    (new_map.epoch, expected_epoch or 0, document, published_at),
                )
        except FatalDatabaseError as exc:
            if self._missing_table(exc):
                raise MapNotPublishedError(
                    f"{self!r}: table {self._table!r} does not exist on shard {self._shard!r}; "
                    "create it with store.ensure_schema() and publish again",
                    store=repr(self),
                ) from exc
            raise


class CachedMap:
    """A writer's copy of the current shard map, reloaded from a :class:`MapStore` on demand.

    Thread-safe: :attr:`current` is a plain read; :meth:`reload` is serialized
    so that many threads fenced at once cause one load, not one each. The
    cached epoch never goes back: a store that shows an older map (a lagging
    replica) leaves the newer one in place.

    Example:
        A writer thread::

            maps = CachedMap(store)
            while True:
                shard_map = maps.current
                try:
                    write(batch, shard_map)
                    break
                except FencedError:
                    maps.reload(newer_than=shard_map.epoch)

    Args:
        store: where the map lives.
    """

    def __init__(self, store: MapStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._map: ShardMap | None = None

    def __repr__(self) -> str:
        shard_map = self._map
        epoch = "not loaded" if shard_map is None else f"epoch {shard_map.epoch}"
        return f"<CachedMap {epoch} from {self._store!r}>"

    @property
    def store(self) -> MapStore:
        """The store the map comes from."""
        return self._store

    @property
    def current(self) -> ShardMap:
        """The cached map (loaded from the store on first use).

        Raises:
            MapNotPublishedError: first use, and the store holds no map.
        """
        shard_map = self._map
        if shard_map is None:
            return self.reload()
        return shard_map

    def reload(self, *, newer_than: int | None = None) -> ShardMap:
        """Bring the cached map up to the store's, and return it.

        Asks the store for its epoch first and loads the whole map only when
        that is newer than the cached one.

        Args:
            newer_than: the epoch of the map the caller was fenced with: when
                the cached map is already newer (another thread reloaded
                meanwhile), return it without asking the store.

        Raises:
            MapNotPublishedError: the store holds no map (and none is cached).
            ShardMapError: the stored map is damaged.
        """
        with self._lock:
            cached = self._map
            if cached is not None:
                if newer_than is not None and cached.epoch > newer_than:
                    return cached
                stored_epoch = self._store.epoch()
                if stored_epoch is None or stored_epoch <= cached.epoch:
                    return cached
            loaded = self._store.load()
            if cached is None or loaded.epoch > cached.epoch:
                self._map = cached = loaded
            return cached
