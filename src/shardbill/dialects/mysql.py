"""MySQL and MariaDB: ``INSERT ... ON DUPLICATE KEY UPDATE``, in the form the server wants.

* MariaDB (every version) and MySQL before 8.0.20 refer to the incoming row
  with ``VALUES(col)``::

      INSERT INTO `t` (`k`, `n`) VALUES (%s, %s), (%s, %s)
      ON DUPLICATE KEY UPDATE `n` = `n` + VALUES(`n`)

* MySQL 8.0.20 and later deprecate ``VALUES()`` there; they get a row alias::

      INSERT INTO `t` (`k`, `n`) VALUES (%s, %s), (%s, %s) AS new
      ON DUPLICATE KEY UPDATE `n` = `n` + new.`n`

MIN and MAX merges use ``LEAST`` and ``GREATEST``; REPLACE assigns the
incoming value. MySQL drivers interpolate values client-side, so a statement's
size is its text with the values rendered; :meth:`MySQLDialect.chunks` keeps
it under ``max_allowed_packet``.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar, Literal

import attrs

from shardbill.dialects.base import Dialect, UpsertSpec, checked_int
from shardbill.errors import ConfigurationError
from shardbill.tables.aggregates import MergeKind

__all__ = ["MySQLDialect", "parse_server_version"]

_ROW_ALIAS_SINCE = (8, 0, 20)
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
# Some MariaDB builds prefix the real version with "5.5.5-" so that old MySQL
# clients accept them.
_MARIADB_PREFIX = "5.5.5-"

_DATETIME_BYTES = len("'2000-01-01 00:00:00.000000'")
_DATE_BYTES = len("'2000-01-01'")


def parse_server_version(text: str) -> tuple[Literal["mysql", "mariadb"], tuple[int, int, int]]:
    """Split a ``SELECT VERSION()`` answer into the server family and its version.

    Example:
        >>> parse_server_version("10.11.19-MariaDB-0+deb12u1")
        ('mariadb', (10, 11, 19))
        >>> parse_server_version("5.5.5-10.6.12-MariaDB-log")
        ('mariadb', (10, 6, 12))
        >>> parse_server_version("8.0.36-28")
        ('mysql', (8, 0, 36))

    A missing patch number counts as 0, so an unusual version string errs
    towards the older ``VALUES()`` form (still accepted by MySQL 8).

    Raises:
        ConfigurationError: no version number in ``text``.
    """
    family: Literal["mysql", "mariadb"] = "mariadb" if "mariadb" in text.lower() else "mysql"
    body = text
    if family == "mariadb" and body.startswith(_MARIADB_PREFIX):
        body = body[len(_MARIADB_PREFIX) :]
    match = _VERSION.match(body.strip())
    if match is None:
        raise ConfigurationError(
            f"server version {text!r} has no MAJOR.MINOR[.PATCH] number; build the dialect "
            "yourself with MySQLDialect(flavor=..., version=(8, 0, 36))"
        )
    major, minor, patch = match.groups()
    return family, (int(major), int(minor), int(patch or 0))


def _validate_version(_: object, field: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    if len(value) != 3 or not all(isinstance(part, int) and part >= 0 for part in value):
        raise ConfigurationError(
            f"MySQLDialect {field.name!r} must be three non-negative integers: {value!r}"
        )


def _validate_packet(_: object, field: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
        raise ConfigurationError(
            f"MySQLDialect {field.name!r} must be an integer >= 1024 (the server minimum): "
            f"{value!r}"
        )


@attrs.frozen(kw_only=True, cache_hash=True)
class MySQLDialect(Dialect):
    """MySQL or MariaDB. :func:`~shardbill.dialects.dialect_for` builds it from the server.

    Example:
        >>> MySQLDialect(flavor="mysql", version=(8, 0, 36)).row_alias
        True
        >>> MySQLDialect(flavor="mariadb", version=(11, 4, 2)).row_alias
        False

    Attributes:
        flavor: ``"mysql"`` or ``"mariadb"``.
        version: the server version, ``(major, minor, patch)``.
        max_allowed_packet: the server's ``@@max_allowed_packet`` (bytes):
            the largest statement it accepts. The default, 1 MiB, is below
            every modern server's default.
    """

    paramstyle: ClassVar[Literal["format", "qmark"]] = "format"
    placeholder: ClassVar[str] = "%s"
    quote_char: ClassVar[str] = "`"

    flavor: Literal["mysql", "mariadb"] = attrs.field(
        default="mysql", validator=attrs.validators.in_(("mysql", "mariadb"))
    )
    version: tuple[int, int, int] = attrs.field(default=(8, 0, 0), validator=_validate_version)
    max_allowed_packet: int = attrs.field(default=1 << 20, validator=_validate_packet)

    @classmethod
    def from_server_version(cls, text: str, *, max_allowed_packet: int = 1 << 20) -> MySQLDialect:
        """The dialect for a ``SELECT VERSION()`` answer (see :func:`parse_server_version`)."""
        flavor, version = parse_server_version(text)
        return cls(flavor=flavor, version=version, max_allowed_packet=max_allowed_packet)

    @property
    def name(self) -> str:
        """``"mysql"`` or ``"mariadb"``."""
        return self.flavor

    @property
    def row_alias(self) -> bool:
        """True for MySQL >= 8.0.20: the UPSERT uses ``AS new`` instead of ``VALUES()``."""
        return self.flavor == "mysql" and self.version >= _ROW_ALIAS_SINCE

    @property
    def max_statement_bytes(self) -> int:
        """``max_allowed_packet``."""
        return self.max_allowed_packet

    @property
    def max_parameters(self) -> int | None:
        """65535, the protocol's limit for server-side prepared statements."""
        return 65535

    def _pairs_per_statement(self) -> int:
        # A row-constructor IN list is range-optimised into point lookups on
        # both key parts. MariaDB turns an IN list of in_predicate_conversion_
        # threshold values (default 1000) or more into a subquery that seeks the
        # first key part only, reading every ledger row of the slot: stay below.
        return 400

    def _pairs_condition(self, first: str, second: str, pairs: Sequence[tuple[int, str]]) -> str:
        groups = ", ".join([f"({checked_int(slot)}, %s)" for slot, _ in pairs])
        return f"({first}, {second}) IN ({groups})"

    def _build_upsert_sql(self, spec: UpsertSpec, rows: int) -> str:
        q = self.quote
        alias = "new" if spec.table.lower() != "new" else "incoming"

        def incoming(column: str) -> str:
            return f"{alias}.{q(column)}" if self.row_alias else f"VALUES({q(column)})"

        assignments = []
        for column, kind in spec.merges:
            target = q(column)
            if kind is MergeKind.SUM:
                expression = f"{target} + {incoming(column)}"
            elif kind is MergeKind.MIN:
                expression = f"LEAST({target}, {incoming(column)})"
            elif kind is MergeKind.MAX:
                expression = f"GREATEST({target}, {incoming(column)})"
            else:
                expression = incoming(column)
            assignments.append(f"{target} = {expression}")
        if not assignments:
            # Insert new keys, leave existing rows alone: a no-op assignment
            # (unlike INSERT IGNORE, which also turns data errors into warnings).
            first_key = q(spec.key_columns[0])
            assignments.append(f"{first_key} = {first_key}")
        columns = ", ".join(q(column) for column in spec.columns)
        values = self._values_list(len(spec.columns), rows)
        alias_clause = f" AS {alias}" if self.row_alias else ""
        return (
            f"INSERT INTO {q(spec.table)} ({columns}) VALUES {values}{alias_clause}"
            f" ON DUPLICATE KEY UPDATE {', '.join(assignments)}"
        )

    def _row_bytes(self, row: Sequence[object]) -> int:
        # "(" + values joined by ", " + ")"
        return 2 * len(row) + sum(_value_bytes(value) for value in row)


def _value_bytes(value: object) -> int:  # noqa: PLR0911 - one return per type reads best
    """An upper bound of ``value``'s size once a MySQL driver renders it into the statement."""
    kind = type(value)
    if kind is int:
        return len(str(value))
    if kind is Decimal:
        return len(format(value, "f"))
    if kind is str:
        text: str = value  # type: ignore[assignment]
        # Quotes, plus every character possibly escaped into two.
        return 2 + 2 * (len(text) if text.isascii() else len(text.encode("utf-8")))
    if value is None:
        return 4
    if isinstance(value, bytes | bytearray | memoryview):
        return 10 + 2 * len(value)  # _binary'...' with escapes
    if isinstance(value, datetime.datetime):
        return _DATETIME_BYTES
    if isinstance(value, datetime.date):
        return _DATE_BYTES
    return 2 + 2 * len(str(value).encode("utf-8"))
