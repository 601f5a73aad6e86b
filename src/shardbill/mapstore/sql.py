"""The map store in a table of a control database: :class:`SqlMapStore`, for several hosts.

The control database is reached through a
:class:`~shardbill.providers.ConnectionProvider`; MySQL, MariaDB and SQLite.
The table holds one row per published epoch (the history is the audit
trail), and the SQL for a dialect and table is built once (``_Statements``).
A publish is one transaction whose locking read, ``PRIMARY KEY (epoch)`` and
``UNIQUE (previous_epoch)`` make it a compare-and-set; it is retried on
deadlocks and lock wait timeouts.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from typing import Final

import attrs

from shardbill.dialects.base import Dialect, validate_identifier
from shardbill.dialects.detect import dialect_for
from shardbill.dialects.translate import translating
from shardbill.errors import (
    ClaimConflictError,
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
from shardbill.mapstore.base import (
    _check_arguments,
    _check_claim_allows,
    _check_claim_swap,
    _check_publish,
    _parse,
)
from shardbill.mapstore.claim import ReshardClaim
from shardbill.providers.base import ConnectionProvider, DBAPIConnection, Row
from shardbill.shardmap import ShardMap

__all__ = ["SqlMapStore"]


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
    claim_create: str
    claim_read: str
    claim_read_for_update: str
    claim_insert: str
    claim_update: str

    @classmethod
    def build(cls, dialect: Dialect, table: str, claim_table: str) -> _Statements:
        t = dialect.quote(table)
        c = dialect.quote(claim_table)
        p = dialect.placeholder
        i, d, options = dialect.integer_type, dialect.document_type, dialect.binary_table_options
        create = (
            f"CREATE TABLE IF NOT EXISTS {t} ("
            f"epoch {i} NOT NULL PRIMARY KEY, "
            f"previous_epoch {i} NOT NULL UNIQUE, "
            f"document {d} NOT NULL, "
            f"published_at {i} NOT NULL){options}"
        )
        claim_create = (
            f"CREATE TABLE IF NOT EXISTS {c} (id {i} NOT NULL PRIMARY KEY, "
            f"version {i} NOT NULL, document {d} NOT NULL){options}"
        )
        # SQLite: the provider's write transaction (BEGIN IMMEDIATE) is already exclusive.
        lock = dialect.exclusive_lock_suffix
        head = f"SELECT epoch, document FROM {t} ORDER BY epoch DESC LIMIT 1"
        return cls(
            create=create,
            probe=f"SELECT epoch, previous_epoch, document, published_at FROM {t} WHERE 1 = 0",
            head=head,
            head_for_update=f"{head}{lock}",
            head_epoch=f"SELECT MAX(epoch) FROM {t}",
            at_epoch=f"SELECT epoch, document FROM {t} WHERE epoch = {p}",
            epochs=f"SELECT epoch FROM {t} ORDER BY epoch",
            insert=(
                f"INSERT INTO {t} (epoch, previous_epoch, document, published_at) "
                f"VALUES ({p}, {p}, {p}, {p})"
            ),
            table_exists=dialect.table_exists_statement(),
            claim_create=claim_create,
            claim_read=f"SELECT version, document FROM {c} WHERE id = 1",
            claim_read_for_update=f"SELECT version, document FROM {c} WHERE id = 1{lock}",
            claim_insert=f"INSERT INTO {c} (id, version, document) VALUES (1, {p}, {p})",
            claim_update=(
                f"UPDATE {c} SET version = {p}, document = {p} WHERE id = 1 AND version = {p}"
            ),
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

    A second table, ``claim_table`` (default ``TABLE_claim``), holds one row:
    the reshard claim (:meth:`load_claim`, :meth:`swap_claim`), changed by
    compare-and-set on its ``version`` column.

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
        claim_table: the reshard claim's table (default ``TABLE_claim``).
    """

    def __init__(
        self,
        provider: ConnectionProvider,
        *,
        shard: str = "control",
        table: str = "shardbill_map",
        claim_table: str | None = None,
    ) -> None:
        validate_identifier(table, what="map store table")
        claim_table = claim_table if claim_table is not None else f"{table}_claim"
        validate_identifier(claim_table, what="map store claim table")
        if not isinstance(shard, str) or not shard:
            raise ConfigurationError(
                f"SqlMapStore 'shard' must be a non-empty shard name: {shard!r}; "
                "the provider's name for the control database"
            )
        self._provider = provider
        self._shard = shard
        self._table = table
        self._claim_table = claim_table
        self._claim_table_ready = False
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
            statements = self._statements[dialect.name] = _Statements.build(
                dialect, self._table, self._claim_table
            )
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
        with translating(self._shard), self._provider.connection(self._shard) as conn:
            _execute(conn, self._sql(conn).claim_create)
        self._claim_table_ready = True
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
                if _fetch(conn, sql.table_exists, (self._claim_table,))[0][0]:
                    claims = _fetch(conn, sql.claim_read_for_update)
                    claim = self._parse_claim(claims[0]) if claims else None
                    _check_claim_allows(repr(self), claim, new_map)
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

    def load_claim(self) -> ReshardClaim | None:
        """The reshard claim (``None``: no reshard ever claimed, or no claim table yet).

        Raises:
            ShardMapError: the stored claim is damaged.
            DatabaseError: the database refused.
        """
        try:
            with translating(self._shard), self._provider.connection(self._shard) as conn:
                rows = _fetch(conn, self._sql(conn).claim_read)
        except FatalDatabaseError as exc:
            if self._missing_claim_table(exc):
                return None
            raise
        if not rows:
            return None
        return self._parse_claim(rows[0])

    def swap_claim(self, claim: ReshardClaim, *, expected_version: int | None) -> None:
        """Compare-and-set of the reshard claim in one transaction (creating its table if needed).

        Raises:
            ClaimConflictError: the stored claim is not at ``expected_version``.
            DatabaseError: the database refused.
        """
        if not self._claim_table_ready:
            with translating(self._shard), self._provider.connection(self._shard) as conn:
                _execute(conn, self._sql(conn).claim_create)
            self._claim_table_ready = True
        try:
            with translating(self._shard), self._provider.connection(self._shard) as conn:
                sql = self._sql(conn)
                rows = _fetch(conn, sql.claim_read_for_update)
                stored = self._parse_claim(rows[0]) if rows else None
                _check_claim_swap(repr(self), stored, claim, expected_version)
                if stored is None:
                    _execute(conn, sql.claim_insert, (claim.version, claim.to_json()))
                else:
                    cursor = conn.cursor()
                    try:
                        cursor.execute(
                            sql.claim_update, (claim.version, claim.to_json(), stored.version)
                        )
                        changed = cursor.rowcount
                    finally:
                        cursor.close()
                    if changed != 1:  # a racer the read did not serialize with
                        raise ClaimConflictError(
                            f"{self!r}: the reshard claim changed from version "
                            f"{stored.version} while it was swapped; read it again "
                            "(load_claim()) and decide again"
                        )
        except (DuplicateKeyError, DeadlockError, LockWaitTimeoutError) as exc:
            raise ClaimConflictError(
                f"{self!r}: another resharder changed the reshard claim at the same time "
                f"({type(exc).__name__}); read it again (load_claim()) and decide again"
            ) from exc

    def _parse_claim(self, row: Row) -> ReshardClaim:
        document = row[1]
        if isinstance(document, bytes):
            document = document.decode("utf-8")
        return ReshardClaim.from_json(str(document), where=f"{self!r}, table {self._claim_table!r}")

    def _missing_claim_table(self, error: FatalDatabaseError) -> bool:
        if error.errno == _NO_SUCH_TABLE:
            return True
        try:
            with (
                translating(self._shard),
                self._provider.connection(self._shard, readonly=True) as conn,
            ):
                rows = _fetch(conn, self._sql(conn).table_exists, (self._claim_table,))
        except DatabaseError:
            return False
        return not (rows and rows[0][0])
