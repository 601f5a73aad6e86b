"""What every SQL dialect offers, and the UPSERT description they all render.

An :class:`UpsertSpec` says which table, which columns in which order, which
of them form the unique key, and how each measure column merges into an
existing row (:class:`MergeKind`). A :class:`Dialect` turns it into one
multi-row statement whose text is built once per ``(spec, rows)`` and cached,
splits a batch so every statement stays under the server's limits
(:meth:`Dialect.chunks`), and renders exact numbers as SQL literals for
callers that inline them (:meth:`Dialect.render_literal`).

Identifiers are validated against ``^[A-Za-z_][A-Za-z0-9_]{0,63}$`` and
quoted; values are always bound parameters.
"""

from __future__ import annotations

import abc
import functools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, ClassVar, Literal

import attrs

from shardbill.errors import (
    ConfigurationError,
    InvalidInputError,
    MoneyTypeError,
    ParameterTypeError,
    SchemaError,
)
from shardbill.protocols import DBAPICursor
from shardbill.tables.aggregates import SLOT_COLUMN, MergeKind
from shardbill.tables.definitions import Column, LiveTable, TableDef

__all__ = ["Dialect", "MergeKind", "UpsertSpec", "checked_int", "validate_identifier"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def validate_identifier(name: object, *, what: str = "identifier") -> str:
    """Return ``name`` when it is a safe SQL identifier, else raise ConfigurationError.

    Args:
        name: the candidate (a table or column name from configuration).
        what: what the name is, for the message (``"table"``, ``"column"``).

    Raises:
        ConfigurationError: ``name`` is not a str matching
            ``^[A-Za-z_][A-Za-z0-9_]{0,63}$``.
    """
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ConfigurationError(
            f"{what} name {name!r} is not a valid SQL identifier; use 1 to 64 ASCII letters, "
            "digits and underscores, not starting with a digit"
        )
    return name


def checked_int(value: object) -> int:
    """``value`` if it is an ``int`` (not a bool), to be rendered into SQL; else TypeError."""
    if type(value) is not int:
        raise TypeError(f"expected an int to render into SQL, got {type(value).__name__} {value!r}")
    return value


def _as_names(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        # A bare string would otherwise become a tuple of one-letter columns.
        return (value,)
    return tuple(value)


def _as_merges(
    value: Mapping[str, MergeKind | str] | Iterable[tuple[str, MergeKind | str]],
) -> tuple[tuple[str, MergeKind], ...]:
    pairs = value.items() if isinstance(value, Mapping) else value
    merges: list[tuple[str, MergeKind]] = []
    for column, kind in pairs:
        try:
            merges.append((column, MergeKind(kind)))
        except ValueError:
            valid = ", ".join(k.value for k in MergeKind)
            raise ConfigurationError(
                f"merge kind {kind!r} for column {column!r} is unknown; use one of {valid}"
            ) from None
    return tuple(merges)


def _validate_table(_: object, __: attrs.Attribute[Any], value: str) -> None:
    validate_identifier(value, what="table")


def _validate_columns(_: object, field: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value:
        raise ConfigurationError(f"UpsertSpec {field.name!r} must not be empty")
    for name in value:
        validate_identifier(name, what="column")
    lowered = [name.lower() for name in value]
    duplicates = sorted({name for name in value if lowered.count(name.lower()) > 1})
    if duplicates:
        raise ConfigurationError(
            f"UpsertSpec {field.name!r} names {duplicates} more than once "
            "(column names are case-insensitive); list each column once"
        )


@attrs.frozen(kw_only=True, cache_hash=True)
class UpsertSpec:
    """One aggregate table's UPSERT: insert new keys, merge measures into existing ones.

    Example:
        >>> spec = UpsertSpec(
        ...     table="usage_daily",
        ...     columns=("account_id", "day", "events", "amount_minor", "last_seen"),
        ...     key_columns=("account_id", "day"),
        ...     merges={"events": "sum", "amount_minor": "sum", "last_seen": "max"},
        ... )
        >>> spec.measure_columns
        ('events', 'amount_minor', 'last_seen')

    With ``merges=()`` the statement inserts new keys and leaves existing rows
    untouched (a ledger claim); the cursor's ``rowcount`` then counts the rows
    inserted, on every dialect.

    Attributes:
        table: the table name.
        columns: the INSERT column order: the key columns and the measure
            columns. Row values are given in this order.
        key_columns: the columns of the unique key the conflict is detected
            on (a subset of ``columns``; on SQLite exactly a PRIMARY KEY or
            UNIQUE index).
        merges: ``(column, MergeKind)`` pairs (a mapping is accepted) for the
            non-key columns to update on conflict; a non-key column not listed
            keeps its stored value.
    """

    table: str = attrs.field(validator=_validate_table)
    columns: tuple[str, ...] = attrs.field(converter=_as_names, validator=_validate_columns)
    key_columns: tuple[str, ...] = attrs.field(converter=_as_names, validator=_validate_columns)
    merges: tuple[tuple[str, MergeKind], ...] = attrs.field(default=(), converter=_as_merges)

    def __attrs_post_init__(self) -> None:
        by_lower = {name.lower() for name in self.columns}
        keys = {name.lower() for name in self.key_columns}
        missing = [name for name in self.key_columns if name.lower() not in by_lower]
        if missing:
            raise ConfigurationError(
                f"UpsertSpec for table {self.table!r}: key columns {missing} are not in "
                f"columns {list(self.columns)}; add them to columns"
            )
        seen: set[str] = set()
        for column, _ in self.merges:
            validate_identifier(column, what="merge column")
            lower = column.lower()
            if lower not in by_lower:
                raise ConfigurationError(
                    f"UpsertSpec for table {self.table!r}: merge column {column!r} is not in "
                    f"columns {list(self.columns)}; add it to columns or drop its merge"
                )
            if lower in keys:
                raise ConfigurationError(
                    f"UpsertSpec for table {self.table!r}: merge column {column!r} is a key "
                    "column; key columns identify the row and are never merged"
                )
            if lower in seen:
                raise ConfigurationError(
                    f"UpsertSpec for table {self.table!r}: column {column!r} has two merges; "
                    "give each column one merge kind"
                )
            seen.add(lower)

    @property
    def measure_columns(self) -> tuple[str, ...]:
        """The non-key columns, in INSERT order."""
        keys = {name.lower() for name in self.key_columns}
        return tuple(name for name in self.columns if name.lower() not in keys)


class Dialect(abc.ABC):
    """The SQL that differs per server family. Instances are immutable and thread-safe.

    Get one from :func:`shardbill.dialects.dialect_for` (it asks the server),
    or build :class:`~shardbill.dialects.MySQLDialect` /
    :class:`~shardbill.dialects.SQLiteDialect` directly.
    """

    paramstyle: ClassVar[Literal["format", "qmark"]]
    """The DB-API paramstyle: ``"format"`` (``%s``) or ``"qmark"`` (``?``)."""
    placeholder: ClassVar[str]
    """The placeholder for one bound value (``%s`` or ``?``)."""
    quote_char: ClassVar[str]
    """The identifier quote character (backtick or double quote)."""
    embedded: ClassVar[bool]
    """An embedded database (SQLite: one file, no server). It has no replication
    (no binlog positions, no replica lag), no session isolation levels (a
    transaction is serializable), and a ``readonly`` connection reads the same
    file, so reads outside a write transaction may use one (a server's
    read-only connection may be a lagging replica)."""
    share_lock_suffix: ClassVar[str]
    """What makes a SELECT take shared row locks (``''`` where writers serialise)."""
    exclusive_lock_suffix: ClassVar[str]
    """What makes a SELECT lock its rows for update (``''`` where writers serialise)."""
    insert_ignore_verb: ClassVar[str]
    """The INSERT verb that skips a row whose primary key exists (no error, no change)."""
    integer_type: ClassVar[str]
    """The column type of a 64-bit integer (``BIGINT``; SQLite's ``INTEGER`` is 64-bit)."""
    document_type: ClassVar[str]
    """The column type of a JSON document of any length (``LONGTEXT`` or ``TEXT``)."""
    binary_table_options: ClassVar[str]
    """What follows a CREATE TABLE's column list for a table of exact-byte documents
    (InnoDB, utf8mb4 with a binary collation; nothing on SQLite)."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """``"mysql"``, ``"mariadb"`` or ``"sqlite"``."""

    @property
    @abc.abstractmethod
    def max_statement_bytes(self) -> int:
        """The largest statement the server accepts (``max_allowed_packet`` on MySQL)."""

    @property
    @abc.abstractmethod
    def max_parameters(self) -> int | None:
        """The most bound values one statement may have, or ``None`` when unbounded."""

    def quote(self, identifier: str) -> str:
        """Validate ``identifier`` and quote it for this dialect.

        Raises:
            ConfigurationError: not a valid identifier.
        """
        validate_identifier(identifier)
        return f"{self.quote_char}{identifier}{self.quote_char}"

    def pairs_statements(
        self, columns: tuple[str, str], pairs: Sequence[tuple[int, str]]
    ) -> Iterator[tuple[str, list[object]]]:
        """WHERE conditions matching ``(int column, text column)`` pairs, chunked.

        Yields ``(condition, params)``; together the conditions match every
        pair in ``pairs``, and each is answered by point lookups on a primary
        key made of the two columns, however many rows the key's first
        column holds. A condition may also match a few pairs that are not in
        ``pairs`` (SQLite's form): callers drop rows they did not ask for.
        The integers are rendered (validated ints), the texts bound.
        """
        first, second = (self.quote(c) for c in columns)
        step = self._pairs_per_statement()
        for start in range(0, len(pairs), step):
            chunk = pairs[start : start + step]
            yield self._pairs_condition(first, second, chunk), [text for _, text in chunk]

    @abc.abstractmethod
    def _pairs_per_statement(self) -> int:
        """How many pairs one :meth:`pairs_statements` condition holds."""

    @abc.abstractmethod
    def _pairs_condition(self, first: str, second: str, pairs: Sequence[tuple[int, str]]) -> str:
        """One condition for ``pairs`` (quoted column names; one placeholder per text)."""

    # ------------------------------------------------------------------ DDL and upkeep

    @abc.abstractmethod
    def table_exists_statement(self) -> str:
        """A query with one placeholder, the table's name: ``COUNT(*)`` 1 when it exists."""

    @abc.abstractmethod
    def create_statements(self, table: TableDef) -> list[str]:
        """The statements that create ``table`` if it does not exist (run each separately)."""

    @abc.abstractmethod
    def add_key_column_statements(
        self, want: TableDef, live: LiveTable, column: Column, existing: int | str
    ) -> list[tuple[str, tuple[object, ...]]]:
        """Add key ``column`` to live table ``want.name``, ``existing`` in every row there.

        Returns ``(statement, params)`` pairs to run in order. The new
        primary key is ``want.primary_key`` restricted to the columns the
        table then has; the rows that exist stay unique under it (they all
        get the same value in the new column), so nothing is merged.
        ``existing`` is bound (dates as ISO text), never rendered.
        """

    @abc.abstractmethod
    def add_measure_statement(self, table: str, column: Column) -> str:
        """Add exact-integer measure ``column`` to ``table``, 0 in every row that exists."""

    @abc.abstractmethod
    def describe_table(self, cursor: DBAPICursor, name: str) -> LiveTable | None:
        """How the server describes table ``name`` now, or None when it does not exist."""

    def refusals(self, tables: Sequence[TableDef]) -> list[SchemaError]:
        """What of ``tables`` this server family cannot hold exactly (nothing, by default)."""
        del tables
        return []

    @abc.abstractmethod
    def prune_statement(self, table: str, slots_table: str) -> str:
        """Delete at most N ledger rows of events before a cutoff; bind (cutoff, cutoff, N).

        Only rows of slots this shard owns and whose watermark
        (``pruned_below``) is at the cutoff already: a slot in motion is pruned
        by neither side, and an event older than a row that is gone is refused
        by the watermark.
        """

    def _prune_guard(self, slots_table: str) -> str:
        q = self.quote
        p = self.placeholder
        slot = q(SLOT_COLUMN)
        return (
            f"{q('event_time')} < {p} AND {slot} IN (SELECT {slot} FROM {q(slots_table)} "
            f"WHERE {q('state')} = 'owned' AND {q('pruned_below')} >= {p})"
        )

    def raise_watermark_statement(self, slots_table: str) -> str:
        """Raise the dedup watermark of every owned slot to a cutoff; bind (cutoff, cutoff)."""
        q = self.quote
        p = self.placeholder
        return (
            f"UPDATE {q(slots_table)} SET {q('pruned_below')} = {p} "
            f"WHERE {q('state')} = 'owned' AND {q('pruned_below')} < {p}"
        )

    # ------------------------------------------------------------------ UPSERTs

    def upsert_sql(self, spec: UpsertSpec, rows: int) -> str:
        """The multi-row UPSERT statement for ``rows`` rows of ``spec`` (cached).

        Bind the rows' values flattened in row order, each row in
        ``spec.columns`` order.

        Raises:
            InvalidInputError: ``rows`` is not a positive integer.
        """
        return _cached_upsert_sql(self, spec, rows)

    @abc.abstractmethod
    def _build_upsert_sql(self, spec: UpsertSpec, rows: int) -> str:
        """Build the statement text; :meth:`upsert_sql` caches the result."""

    @abc.abstractmethod
    def _row_bytes(self, row: Sequence[object]) -> int:
        """An upper bound of the bytes one row's ``(...)`` group takes in what the server gets."""

    def _row_group(self, width: int) -> str:
        """One row's placeholder group: ``(%s, %s)`` or ``(?, ?)``."""
        return "(" + ", ".join([self.placeholder] * width) + ")"

    def _values_list(self, width: int, rows: int) -> str:
        """``rows`` placeholder groups joined by ``, ``."""
        return ", ".join([self._row_group(width)] * rows)

    def chunks(
        self,
        spec: UpsertSpec,
        rows: Sequence[Sequence[object]],
        *,
        max_statement_bytes: int | None = None,
        max_rows: int | None = None,
    ) -> Iterator[Sequence[Sequence[object]]]:
        """Split ``rows`` into consecutive slices, each small enough for one statement.

        A slice keeps the rendered statement under ``max_statement_bytes``
        (default: the dialect's :attr:`max_statement_bytes`, minus a safety
        margin), its bound values under :attr:`max_parameters`, and its row
        count under ``max_rows``. Order is kept, so rows sorted by key stay
        sorted.

        Raises:
            InvalidInputError: a row has the wrong number of values, or one
                row alone is too large for a statement.
        """
        limit = max_statement_bytes if max_statement_bytes is not None else self.max_statement_bytes
        budget = limit - 1024 if limit >= 8192 else limit * 7 // 8
        width = len(spec.columns)
        if max_rows is not None and max_rows < 1:
            raise InvalidInputError(f"max_rows must be >= 1: {max_rows}")
        row_cap = max(len(rows), 1) if max_rows is None else max_rows
        if self.max_parameters is not None:
            if width > self.max_parameters:
                raise InvalidInputError(
                    f"table {spec.table!r} has {width} columns, more than the "
                    f"{self.max_parameters} values one {self.name} statement may bind"
                )
            row_cap = min(row_cap, self.max_parameters // width)
        # Everything but the row groups: the INSERT head and the merge clause.
        fixed = len(self.upsert_sql(spec, 1).encode("utf-8")) - len(self._row_group(width))
        start = 0
        size = fixed
        count = 0
        for index, row in enumerate(rows):
            if len(row) != width:
                raise InvalidInputError(
                    f"row {index} for table {spec.table!r} has {len(row)} values; expected "
                    f"{width} (one per column of {list(spec.columns)})"
                )
            cost = self._row_bytes(row) + 2  # the ", " between rows
            if fixed + cost > budget:
                raise InvalidInputError(
                    f"row {index} for table {spec.table!r} needs about {cost} bytes, more than "
                    f"a statement may hold ({budget} of max {limit}); raise the server's "
                    "max_allowed_packet or store smaller values"
                )
            if count and (size + cost > budget or count >= row_cap):
                yield rows[start:index]
                start, size, count = index, fixed, 0
            size += cost
            count += 1
        if count:
            yield rows[start:]

    def upsert_statements(
        self,
        spec: UpsertSpec,
        rows: Sequence[Sequence[object]],
        *,
        max_statement_bytes: int | None = None,
        max_rows: int | None = None,
    ) -> Iterator[tuple[str, list[object]]]:
        """``(sql, params)`` pairs that apply ``rows``: :meth:`chunks` + :meth:`upsert_sql`.

        Example:
            >>> for sql, params in dialect.upsert_statements(spec, rows):  # doctest: +SKIP
            ...     cursor.execute(sql, params)
        """
        for chunk in self.chunks(
            spec, rows, max_statement_bytes=max_statement_bytes, max_rows=max_rows
        ):
            params = [value for row in chunk for value in row]
            yield self.upsert_sql(spec, len(chunk)), params

    def render_literal(self, value: object) -> str:
        """Render an exact number as a SQL literal; refuse everything else.

        Only ``int`` (not ``bool``) and finite ``Decimal`` values are
        rendered (a Decimal in plain notation, never ``1E+2``, which MySQL
        would read as a floating-point number). For callers that inline
        validated numbers instead of binding them.

        Raises:
            MoneyTypeError: a float or a NaN/infinite Decimal.
            ParameterTypeError: any other type (strings are never rendered:
                bind them).
        """
        kind = type(value)
        if kind is int:
            return str(value)
        if kind is Decimal and value.is_finite():  # type: ignore[attr-defined]
            return self._render_decimal(value)  # type: ignore[arg-type]
        return self._render_unusual(value)

    def _render_decimal(self, value: Decimal) -> str:
        return format(value, "f")

    def _render_unusual(self, value: object) -> str:
        if isinstance(value, bool):
            raise ParameterTypeError(
                "render_literal got a bool; pass int(value) if you mean 0 or 1", position=0
            )
        if isinstance(value, int):
            return str(int(value))
        if isinstance(value, Decimal):
            if value.is_finite():
                return self._render_decimal(value)
            raise MoneyTypeError(f"render_literal got a non-finite Decimal ({value})")
        if isinstance(value, float):
            raise MoneyTypeError(
                "render_literal got a float; money must be exact: pass a Decimal or integer "
                "minor units"
            )
        raise ParameterTypeError(
            f"render_literal renders only int and Decimal, not {type(value).__name__}; "
            "bind other values as parameters",
            position=0,
        )


@functools.lru_cache(maxsize=4096)
def _cached_upsert_sql(dialect: Dialect, spec: UpsertSpec, rows: int) -> str:
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise InvalidInputError(f"upsert_sql needs rows >= 1: {rows!r}")
    return dialect._build_upsert_sql(spec, rows)
