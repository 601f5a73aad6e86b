"""Aggregate table specs: what a charge adds to which row (pure, no I/O).

An aggregate table is declared by its name, its key columns and its measure
columns. Each key column has a *projection*, a small frozen callable that
reads one key value from a charge (the account, the product, the UTC day or
month of the event, a dimension); each measure has a *value* (the quantity or
the amount as integer units at a fixed scale, or a count of 1) and a merge
kind (sum, min, max). One charge usually updates several tables (daily,
monthly, per product, balance): each table contributes one row delta.

Storage is exact and the same on every backend: every measure is a BIGINT.
Money and quantities are stored as integer units at a declared decimal scale
(``Amount(scale=6)`` stores 0.0075 USD as 7500); counts are plain integers.
Readers turn units back into :class:`~decimal.Decimal` exactly. A measure
whose row sums need more than 63 bits is declared ``wide=True``: a
``DECIMAL(65,0)`` column on MySQL/MariaDB (integers up to 65 digits, summed
exactly by the server); SQLite has no exact type that wide, so a table set
with a wide measure is refused there when the schema is applied or checked.

Every row also stores its slot (column ``sb_slot``, indexed), so the rows of
one slot are an index range that resharding can copy. The slot comes from the
*shard key*, by default the charge's account, and every table must contain the
shard key's columns so a row's slot is a function of its key.

Example::

    daily = AggregateTable(
        name="usage_daily",
        keys=(
            KeyColumn(name="account_id", type=BigInt(), projection=Account()),
            KeyColumn(name="day", type=Date(), projection=Day()),
            KeyColumn(name="product", type=VarChar(32), projection=Product()),
        ),
        measures=(
            Measure(name="quantity", value=Quantity(scale=6)),
            Measure(name="amount", value=Amount(scale=6)),
            Measure(name="events", value=Count()),
        ),
    )
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Protocol, runtime_checkable

import attrs

from shardbill import money
from shardbill.errors import ConfigurationError, InvalidInputError, MoneyTypeError

__all__ = [
    "BIGINT_MAX",
    "BIGINT_MIN",
    "SLOT_COLUMN",
    "WIDE_MAX",
    "WIDE_MIN",
    "Account",
    "AggregateTable",
    "Amount",
    "BigInt",
    "ChargeLike",
    "ColumnType",
    "Count",
    "Currency",
    "Date",
    "Day",
    "Dimension",
    "KeyColumn",
    "KeyValue",
    "Measure",
    "MeasureValue",
    "MergeKind",
    "Month",
    "Product",
    "Projection",
    "Quantity",
    "VarChar",
    "check_identifier",
    "measure_range_error",
]

#: The column every aggregate and ledger row stores its slot in.
SLOT_COLUMN = "sb_slot"

#: The range of a (narrow) measure column: a signed 64-bit BIGINT.
BIGINT_MIN = -(2**63)
BIGINT_MAX = 2**63 - 1
#: The range of a wide measure column: ``DECIMAL(65,0)``, every integer of up to 65 digits.
WIDE_MAX = 10**65 - 1
WIDE_MIN = -WIDE_MAX
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_RESERVED = frozenset({SLOT_COLUMN})


class MergeKind(enum.StrEnum):
    """How an incoming value merges into the value already stored under the same key."""

    SUM = "sum"
    """``stored + incoming`` (counters, amounts)."""
    MIN = "min"
    """The smaller of the two (first seen)."""
    MAX = "max"
    """The larger of the two (last seen, peak)."""
    REPLACE = "replace"
    """The incoming value (last writer wins; not commutative, so not replay-order safe)."""


KeyValue = int | str | dt.date


def check_identifier(value: str, *, what: str) -> str:
    """Return ``value`` if it is a safe SQL identifier, else raise ConfigurationError.

    Identifiers come only from configuration and are always quoted as well;
    this check is the first line: letters, digits and underscores, starting
    with a letter or underscore, at most 64 characters.
    """
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ConfigurationError(
            f"{what} must match ^[A-Za-z_][A-Za-z0-9_]{{0,63}}$ (letters, digits, underscore): "
            f"{value!r}"
        )
    return value


@runtime_checkable
class ChargeLike(Protocol):
    """What the aggregates read from a charge (:class:`shardbill.rules.Charge` has it all)."""

    @property
    def event_id(self) -> str: ...
    @property
    def account(self) -> int | str: ...
    @property
    def product(self) -> str: ...
    @property
    def dimensions(self) -> Mapping[str, str | int]: ...
    @property
    def quantity(self) -> Decimal: ...
    @property
    def amount(self) -> Decimal: ...
    @property
    def currency(self) -> str: ...
    @property
    def time(self) -> dt.datetime: ...


# --------------------------------------------------------------------------- column types


@attrs.frozen
class BigInt:
    """A signed 64-bit integer key column (account ids, numeric codes)."""

    def check(self, value: object, *, column: str) -> int:
        """Return ``value`` if it fits, else raise InvalidInputError naming the column."""
        if type(value) is not int:
            raise InvalidInputError(
                f"key column {column!r} holds BIGINT: expected an int, got "
                f"{type(value).__name__} {value!r}"
            )
        if not BIGINT_MIN <= value <= BIGINT_MAX:
            raise InvalidInputError(
                f"key column {column!r} holds BIGINT: {value} is outside "
                f"[{BIGINT_MIN}, {BIGINT_MAX}]"
            )
        return value


@attrs.frozen
class VarChar:
    """A text key column of at most ``length`` characters, compared exactly (binary, no pad)."""

    length: int = attrs.field(validator=attrs.validators.in_(range(1, 769)))

    def check(self, value: object, *, column: str) -> str:
        """Return ``value`` if it fits, else raise InvalidInputError naming the column."""
        if type(value) is not str:
            raise InvalidInputError(
                f"key column {column!r} holds VARCHAR({self.length}): expected a str, got "
                f"{type(value).__name__} {value!r}"
            )
        if len(value) > self.length:
            raise InvalidInputError(
                f"key column {column!r} holds VARCHAR({self.length}): {value[:40]!r}... has "
                f"{len(value)} characters; shorten it or declare a longer column"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInputError(
                f"key column {column!r}: {value!r} is not valid text (lone surrogate)"
            ) from exc
        return value


@attrs.frozen
class Date:
    """A calendar-date key column (day or month buckets)."""

    def check(self, value: object, *, column: str) -> dt.date:
        """Return ``value`` if it is a date (not a datetime), else raise InvalidInputError."""
        if type(value) is not dt.date:
            raise InvalidInputError(
                f"key column {column!r} holds DATE: expected a datetime.date, got "
                f"{type(value).__name__} {value!r}"
            )
        return value


ColumnType = BigInt | VarChar | Date


# --------------------------------------------------------------------------- projections


class Projection(Protocol):
    """Reads one key value from a charge. Implementations are frozen and compare by value.

    ``name`` describes the projection in messages and configuration files.
    """

    @property
    def name(self) -> str: ...

    def __call__(self, charge: ChargeLike, /) -> KeyValue: ...


@attrs.frozen
class Account:
    """The account that pays for the charge."""

    name: str = attrs.field(default="account", init=False)

    def __call__(self, charge: ChargeLike, /) -> int | str:
        return charge.account


@attrs.frozen
class Product:
    """The charge's product (``sms``, ``voice``, ...)."""

    name: str = attrs.field(default="product", init=False)

    def __call__(self, charge: ChargeLike, /) -> str:
        return charge.product


@attrs.frozen
class Currency:
    """The charge's ISO 4217 currency code."""

    name: str = attrs.field(default="currency", init=False)

    def __call__(self, charge: ChargeLike, /) -> str:
        return charge.currency


def _as_utc(charge: ChargeLike, tz: dt.tzinfo) -> dt.datetime:
    moment = charge.time
    if moment.tzinfo is None:
        raise InvalidInputError(
            f"charge {charge.event_id!r}: time {moment.isoformat()} has no timezone; "
            "give an aware datetime (e.g. with tzinfo=datetime.UTC)"
        )
    try:
        return moment.astimezone(tz)
    except OverflowError as exc:  # year 1 or 9999 pushed past the calendar by the zone
        raise InvalidInputError(
            f"charge {charge.event_id!r}: time {moment.isoformat()} is out of range in "
            f"time zone {tz}; give a time between years 1 and 9999 in that zone too"
        ) from exc


@attrs.frozen
class Day:
    """The calendar day of the event time, in ``tz`` (UTC unless configured)."""

    tz: dt.tzinfo = dt.UTC
    name: str = attrs.field(default="day", init=False)

    def __call__(self, charge: ChargeLike, /) -> dt.date:
        return _as_utc(charge, self.tz).date()


@attrs.frozen
class Month:
    """The first day of the event time's month, in ``tz`` (UTC unless configured)."""

    tz: dt.tzinfo = dt.UTC
    name: str = attrs.field(default="month", init=False)

    def __call__(self, charge: ChargeLike, /) -> dt.date:
        return _as_utc(charge, self.tz).date().replace(day=1)


@attrs.frozen
class Dimension:
    """A free-form dimension of the charge (``country``, ``channel``), or ``default``.

    Without a default, a charge lacking the dimension is rejected with its reason.
    """

    key: str
    default: str | int | None = None

    @property
    def name(self) -> str:
        """``dimension:KEY``."""
        return f"dimension:{self.key}"

    def __call__(self, charge: ChargeLike, /) -> str | int:
        value = charge.dimensions.get(self.key, self.default)
        if value is None:
            raise InvalidInputError(
                f"charge {charge.event_id!r} has no dimension {self.key!r} and the column "
                "has no default; add the dimension or declare Dimension(key, default=...)"
            )
        return value


# --------------------------------------------------------------------------- measures


def _commutative(_inst: object, _attribute: attrs.Attribute[MergeKind], value: MergeKind) -> None:
    if value not in (MergeKind.SUM, MergeKind.MIN, MergeKind.MAX):
        raise ConfigurationError(
            f"measure merge must be sum, min or max, not {value!r}: replays and resharding "
            "apply deltas in any order, so the merge must be commutative"
        )


class MeasureValue(Protocol):
    """Reads one measure delta from a charge as an exact integer."""

    @property
    def name(self) -> str: ...

    @property
    def scale(self) -> int: ...

    def __call__(self, charge: ChargeLike, /) -> int: ...


def _units(value: object, scale: int, *, what: str, charge: ChargeLike) -> int:
    if type(value) is not Decimal:
        if isinstance(value, float):
            raise MoneyTypeError(
                f"charge {charge.event_id!r}: {what} is a float ({value!r}); money and "
                "quantities must be decimal.Decimal or int, never float"
            )
        raise InvalidInputError(
            f"charge {charge.event_id!r}: {what} must be a Decimal, got "
            f"{type(value).__name__} {value!r}"
        )
    if not value.is_finite():
        raise InvalidInputError(f"charge {charge.event_id!r}: {what} is {value}, not a number")
    units = money.units_if_exact(value, scale)
    if units is None:
        raise InvalidInputError(
            f"charge {charge.event_id!r}: {what} {value} is not a whole number of units at "
            f"scale {scale} (more than {scale} decimal places, or more digits than can be "
            "held exactly); round it in the rules (pricing scale) or declare the measure with "
            "a larger scale"
        )
    return units


@attrs.frozen
class Quantity:
    """The charge's quantity as integer units of ``10**-scale``."""

    scale: int = attrs.field(default=6, validator=attrs.validators.in_(range(19)))
    name: str = attrs.field(default="quantity", init=False)

    def __call__(self, charge: ChargeLike, /) -> int:
        return _units(charge.quantity, self.scale, what="quantity", charge=charge)


@attrs.frozen
class Amount:
    """The charge's amount as integer units of ``10**-scale`` of its currency."""

    scale: int = attrs.field(default=6, validator=attrs.validators.in_(range(19)))
    name: str = attrs.field(default="amount", init=False)

    def __call__(self, charge: ChargeLike, /) -> int:
        return _units(charge.amount, self.scale, what="amount", charge=charge)


@attrs.frozen
class Count:
    """1 per charge: summed, it counts the charges that reached the row."""

    name: str = attrs.field(default="count", init=False)
    scale: int = attrs.field(default=0, init=False)

    def __call__(self, charge: ChargeLike, /) -> int:
        return 1


# --------------------------------------------------------------------------- table spec


def _check_column_name(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    check_identifier(value, what=f"column name ({attribute.name})")
    if value in _RESERVED:
        raise ConfigurationError(f"column name {value!r} is reserved by shardbill; rename it")


def _check_existing(
    inst: KeyColumn, _attribute: attrs.Attribute[KeyValue | None], value: KeyValue | None
) -> None:
    if value is None:
        return
    try:
        inst.type.check(value, column=inst.name)
    except InvalidInputError as exc:
        raise ConfigurationError(
            f"key column {inst.name!r}: existing={value!r} does not fit the column ({exc}); "
            "give a value of the column's type"
        ) from None


@attrs.frozen(kw_only=True)
class KeyColumn:
    """One column of an aggregate table's primary key.

    Args:
        name: the column name (a validated identifier).
        type: the column type.
        projection: reads the key value from a charge.
        existing: the value rows that exist get when the column is added to
            a live table by ``shardbill migrate`` (:mod:`shardbill.migrate`),
            e.g. ``existing="--"`` for a dimension nobody recorded before.
            None (the default): the column cannot be added to a live table.
            It must fit ``type``. On MySQL/MariaDB the added column also takes
            it as its DEFAULT, so writers with the old declaration go on
            writing (their rows get it).
    """

    name: str = attrs.field(validator=_check_column_name)
    type: ColumnType
    projection: Projection
    existing: KeyValue | None = attrs.field(default=None, validator=_check_existing)


def measure_range_error(
    event_id: str, table: str, measure: Measure, value: int
) -> InvalidInputError:
    """The rejection of a charge whose delta does not fit ``measure``'s column."""
    fix = (
        "split the charge"
        if measure.wide
        else "declare the measure wide=True (DECIMAL(65,0), MySQL/MariaDB) or split the charge"
    )
    return InvalidInputError(
        f"charge {event_id!r}: measure {measure.name!r} of table {table!r} is {value}, "
        f"outside the {measure.column_type} range; {fix}"
    )


@attrs.frozen(kw_only=True)
class Measure:
    """One measure column: a BIGINT (or, ``wide``, a DECIMAL(65,0)) merging deltas by ``merge``.

    Args:
        name: the column name (a validated identifier).
        value: what one charge adds (quantity, amount, count).
        merge: sum (default), min or max.
        wide: store the measure as ``DECIMAL(65,0)`` instead of ``BIGINT``: row
            values up to 65 digits instead of about 9.2e18 units. MySQL/MariaDB
            only (SQLite refuses the table set); each row takes up to 29 bytes
            for the column instead of 8, and the server's decimal addition is a
            little slower than integer addition. Use it when a row's sum can pass
            2**63 - 1 units (e.g. bytes at ``scale=6`` near 9.2 TB per row).
    """

    name: str = attrs.field(validator=_check_column_name)
    value: MeasureValue
    merge: MergeKind = attrs.field(
        default=MergeKind.SUM, converter=MergeKind, validator=_commutative
    )
    wide: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    @property
    def low(self) -> int:
        """The least value the column holds."""
        return WIDE_MIN if self.wide else BIGINT_MIN

    @property
    def high(self) -> int:
        """The greatest value the column holds."""
        return WIDE_MAX if self.wide else BIGINT_MAX

    @property
    def column_type(self) -> str:
        """``BIGINT`` or ``DECIMAL(65,0)``: the range named in messages."""
        return "DECIMAL(65,0)" if self.wide else "BIGINT"


def _check_table_name(_inst: object, _attribute: attrs.Attribute[str], value: str) -> None:
    check_identifier(value, what="table name")


def _non_empty(
    _inst: object, attribute: attrs.Attribute[tuple[object, ...]], value: tuple[object, ...]
) -> None:
    if not value:
        raise ConfigurationError(f"an aggregate table needs at least one {attribute.name[:-1]}")


def _key_tuple(value: Iterable[KeyColumn]) -> tuple[KeyColumn, ...]:
    return tuple(value)


def _measure_tuple(value: Iterable[Measure]) -> tuple[Measure, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class AggregateTable:
    """An aggregate table: key columns (the primary key) and measure columns.

    Args:
        name: the table name (a validated identifier).
        keys: the primary key columns, shard key columns first by convention.
        measures: the measure columns.
    """

    name: str = attrs.field(validator=_check_table_name)
    keys: tuple[KeyColumn, ...] = attrs.field(converter=_key_tuple, validator=_non_empty)
    measures: tuple[Measure, ...] = attrs.field(converter=_measure_tuple, validator=_non_empty)

    def __attrs_post_init__(self) -> None:
        names = [c.name for c in self.keys] + [m.name for m in self.measures]
        seen: set[str] = set()
        for name in names:
            if name.lower() in seen:
                raise ConfigurationError(f"table {self.name!r}: column {name!r} is declared twice")
            seen.add(name.lower())

    @property
    def key_names(self) -> tuple[str, ...]:
        """The key column names in order."""
        return tuple(c.name for c in self.keys)

    @property
    def measure_names(self) -> tuple[str, ...]:
        """The measure column names in order."""
        return tuple(m.name for m in self.measures)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column in INSERT order: keys, the slot column, measures."""
        return (*self.key_names, SLOT_COLUMN, *self.measure_names)

    def key_of(self, charge: ChargeLike) -> tuple[KeyValue, ...]:
        """The row key this charge updates, validated against the column types."""
        return tuple(c.type.check(c.projection(charge), column=c.name) for c in self.keys)

    @property
    def has_wide(self) -> bool:
        """True when one of the measures is wide (``DECIMAL(65,0)``)."""
        return any(m.wide for m in self.measures)

    def deltas_of(self, charge: ChargeLike) -> tuple[int, ...]:
        """The measure deltas this charge adds, each validated against its column's range."""
        out = []
        for measure in self.measures:
            value = measure.value(charge)
            if not measure.low <= value <= measure.high:
                raise measure_range_error(charge.event_id, self.name, measure, value)
            out.append(value)
        return tuple(out)

    def has_projection(self, projection: Projection) -> bool:
        """True when one of the key columns reads ``projection``."""
        return any(c.projection == projection for c in self.keys)
