"""The interface everything that touches a database is built around.

A :class:`ConnectionProvider` lends a DB-API connection for a shard inside a
``with`` block: the block is one transaction, committed when it ends
normally and rolled back when it raises. That is the whole contract, so a
user can put shardbill on top of their own pool or secrets manager in a dozen
lines (see ``examples/custom_provider.py``); :func:`transaction` does the
commit-or-rollback part for them.

The protocols are structural: a plain ``pymysql``, ``MySQLdb`` or ``sqlite3``
connection already satisfies :class:`DBAPIConnection`.

Values bound to statements are checked by :func:`check_params` (the lent
connections of :class:`~shardbill.providers.PooledProvider` do it on every
``execute``): a ``dict``, ``list``, ``set``, ``bytearray`` or ``float`` never
reaches a driver. PyMySQL < 1.1.1 rendered dict keys as SQL identifiers
(CVE-2024-36039), and a float in a money column is a silent rounding.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, Protocol, TypeAlias, TypeVar

from shardbill.errors import MoneyTypeError, ParameterTypeError

__all__ = [
    "ConnectionProvider",
    "DBAPIConnection",
    "DBAPICursor",
    "ParameterTypeError",
    "Row",
    "SQLValue",
    "check_params",
    "transaction",
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


# Exact types first (one set lookup per value); subclasses (a datetime
# subclass from a date library, an int enum) go through isinstance below.
_ALLOWED_EXACT = frozenset({int, str, bytes, type(None), datetime.datetime, datetime.date})
_ALLOWED_SUBCLASSES = (int, str, bytes, datetime.date)


def check_params(params: Sequence[object], /) -> None:
    """Refuse a parameter sequence holding any value shardbill must never bind.

    Allowed: ``None``, ``int`` (not ``bool``), ``Decimal`` (finite), ``str``,
    ``bytes``, ``datetime.date`` and ``datetime.datetime``. Everything else
    raises before any driver sees it: ``float`` and non-finite ``Decimal``
    raise :class:`~shardbill.errors.MoneyTypeError`; ``dict``, ``list``,
    ``tuple``, ``set``, ``bytearray``, ``bool`` and other objects raise
    :class:`ParameterTypeError`. Both are ``TypeError`` s naming the position
    and the type (never the value, which may be sensitive).

    Args:
        params: the values of one ``execute`` (a sequence, not a mapping: the
            placeholders are positional).

    Raises:
        ParameterTypeError: ``params`` is a mapping or a string, or holds a
            value of a refused type.
        MoneyTypeError: ``params`` holds a float or a NaN/infinite Decimal.

    Example:
        >>> check_params((1, "acct-7", Decimal("0.25"), None))
        >>> check_params((1, {"id": 1}))
        Traceback (most recent call last):
        ...
        shardbill.providers.base.ParameterTypeError: parameter 1 is a dict; ...
    """
    if type(params) not in (tuple, list) and (
        isinstance(params, str | bytes | bytearray) or not isinstance(params, Sequence)
    ):
        raise ParameterTypeError(
            f"parameters must be a tuple or list of values, not a {type(params).__name__}; "
            "placeholders are positional (%s or ?), so pass the values in order",
            position=-1,
        )
    allowed = _ALLOWED_EXACT
    for position, value in enumerate(params):
        kind = type(value)
        if kind in allowed:
            continue
        if kind is Decimal:
            if value.is_finite():  # type: ignore[attr-defined]
                continue
            raise MoneyTypeError(
                f"parameter {position} is a non-finite Decimal ({value}); "
                "only finite amounts can be stored"
            )
        _check_unusual(position, value)


def _check_unusual(position: int, value: object) -> None:
    """The slow path of :func:`check_params`: subclasses allowed, everything else refused."""
    if isinstance(value, float):
        raise MoneyTypeError(
            f"parameter {position} is a float; floats are never bound because money must be "
            "exact: pass a Decimal (Decimal(str(x)) if you must convert) or integer minor units"
        )
    if isinstance(value, bool):
        raise ParameterTypeError(
            f"parameter {position} is a bool; pass int(value) (0 or 1) if you mean a number",
            position=position,
        )
    if isinstance(value, Decimal):
        if value.is_finite():
            return
        raise MoneyTypeError(
            f"parameter {position} is a non-finite Decimal ({value}); "
            "only finite amounts can be stored"
        )
    if isinstance(value, _ALLOWED_SUBCLASSES):
        return
    raise ParameterTypeError(
        f"parameter {position} is a {type(value).__name__}; only None, int, Decimal, str, "
        "bytes, date and datetime are bound (a dict, list, tuple or set would be rendered as "
        "SQL syntax by some drivers): pass one scalar per placeholder",
        position=position,
    )


_C = TypeVar("_C", bound=DBAPIConnection)


@contextlib.contextmanager
def transaction(connection: _C, /) -> Iterator[_C]:
    """Make a with-block one transaction on ``connection``: commit on success, else roll back.

    This is the commit-or-rollback half of :meth:`ConnectionProvider.connection`,
    for custom providers. It does not close or return the connection. When
    the rollback itself fails (the connection is gone), the block's original
    exception is the one raised.

    Args:
        connection: a connection with autocommit off.

    Yields:
        ``connection`` itself.
    """
    try:
        yield connection
    except BaseException:
        # The block's error matters more than a failed rollback on a broken
        # connection: the server rolls back on disconnect anyway.
        with contextlib.suppress(Exception):
            connection.rollback()
        raise
    connection.commit()
