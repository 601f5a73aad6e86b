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
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import TypeVar

from shardbill.errors import MoneyTypeError, ParameterTypeError
from shardbill.protocols import ConnectionProvider, DBAPIConnection, DBAPICursor, Row, SQLValue

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
