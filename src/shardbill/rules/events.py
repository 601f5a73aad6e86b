"""Usage events (what happened) and charges (who pays how much for it).

Both are frozen, keyword-only attrs classes, validated when built: a
malformed event or charge raises :class:`~shardbill.errors.InvalidInputError`
(a ``ValueError``) naming the field, the value and the fix; a float where a
number belongs raises :class:`~shardbill.errors.MoneyTypeError` (a
``TypeError``). Times are normalised to UTC. Dimensions are stored as an
immutable, hashable :class:`Dimensions` mapping.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final, TypeAlias, TypeVar, overload

import attrs

from shardbill import money
from shardbill.errors import InvalidInputError

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_PARTS",
    "Account",
    "Charge",
    "DimensionValue",
    "Dimensions",
    "PricedEvent",
    "UsageEvent",
]

Account: TypeAlias = int | str
"""An account id, an int (a signed 64-bit BIGINT) or a non-empty string."""

DimensionValue: TypeAlias = str | int
"""A dimension value, a string or an int (bool is refused)."""

MAX_ID_LENGTH: Final = 191
"""The longest event id or string account, 191 characters (fits an indexed utf8mb4 VARCHAR)."""

_T = TypeVar("_T")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_INT64 = range(-(2**63), 2**63)


def _check_text(field: str, value: object, *, max_length: int = MAX_ID_LENGTH) -> str:
    if type(value) is not str:
        raise InvalidInputError(f"{field!r} must be a str, not {type(value).__name__}: {value!r}")
    if not value:
        raise InvalidInputError(f"{field!r} must not be empty")
    if value.isspace():
        raise InvalidInputError(f"{field!r} must not be only whitespace: {value!r}")
    if len(value) > max_length:
        raise InvalidInputError(
            f"{field!r} must be at most {max_length} characters (an indexed utf8mb4 VARCHAR): "
            f"got {len(value)}, {value[:40]!r}...; use a shorter id or a hash of it"
        )
    if not value.isprintable():
        raise InvalidInputError(
            f"{field!r} must be printable text without control characters: {value!r}"
        )
    return value


# Tokens (products, rule names, dimension names) are few and repeat on every
# event: remember the valid ones so the hot path is one set lookup.
_VALID_TOKENS: set[str] = set()
_VALID_TOKENS_MAX = 65_536


def _check_token(field: str, value: object) -> str:
    if type(value) is str and value in _VALID_TOKENS:
        return value
    if type(value) is not str or _TOKEN.fullmatch(value) is None:
        raise InvalidInputError(
            f"{field!r} must be a token of 1-64 letters, digits, '_', '.', ':' or '-' "
            f"starting with a letter or digit: {value!r}"
        )
    if len(_VALID_TOKENS) >= _VALID_TOKENS_MAX:
        _VALID_TOKENS.clear()
    _VALID_TOKENS.add(value)
    return value


def _check_account(field: str, value: object) -> Account:
    if type(value) is int:
        if value not in _INT64:
            raise InvalidInputError(
                f"{field!r} must fit a signed 64-bit integer (BIGINT): {value!r}"
            )
        return value
    if type(value) is str:
        return _check_text(field, value)
    raise InvalidInputError(
        f"{field!r} must be an int or a non-empty str, not {type(value).__name__}: {value!r}"
    )


def _check_time(field: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidInputError(
            f"{field!r} must be a timezone-aware datetime, not {type(value).__name__}: {value!r}"
        )
    if value.tzinfo is UTC:
        return value
    if value.utcoffset() is None:
        raise InvalidInputError(
            f"{field!r} must be timezone-aware: {value.isoformat()} has no time zone; "
            "attach one, e.g. value.replace(tzinfo=datetime.UTC) if it is UTC"
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 pushed past the calendar by the offset
        raise InvalidInputError(
            f"{field!r} is out of range in UTC: {value.isoformat()}; give a time between "
            "years 1 and 9999 in UTC"
        ) from None


def _check_quantity(field: str, value: object) -> Decimal:
    return money.require_decimal(value, field)


def _check_dimension(name: object, value: object) -> DimensionValue:
    _check_token("dimensions key", name)
    if type(value) is int:
        if value not in _INT64:
            raise InvalidInputError(
                f"dimension {name!r} must fit a signed 64-bit integer: {value!r}"
            )
        return value
    if type(value) is str:
        if len(value) > MAX_ID_LENGTH or not value.isprintable():
            raise InvalidInputError(
                f"dimension {name!r} must be printable text of at most "
                f"{MAX_ID_LENGTH} characters: {value!r}"
            )
        return value
    raise InvalidInputError(
        f"dimension {name!r} must be a str or an int, not {type(value).__name__}: {value!r}"
    )


class Dimensions(Mapping[str, DimensionValue]):
    """An immutable, hashable mapping of dimension names to values, kept sorted by name.

    Names are tokens (letters, digits, ``_ . : -``); values are strings or
    ints. Two Dimensions with the same pairs are equal and hash alike, so
    charges can be grouped by them.

    Example:
        >>> d = Dimensions.of({"country": "US", "channel": "api"})
        >>> list(d.items())
        [('channel', 'api'), ('country', 'US')]
        >>> d["country"]
        'US'
    """

    __slots__ = ("_hash", "_items", "_map")

    _items: tuple[tuple[str, DimensionValue], ...]
    _map: dict[str, DimensionValue]
    _hash: int

    @overload
    def __init__(self, pairs: Mapping[str, DimensionValue] = ..., /) -> None: ...
    @overload
    def __init__(self, pairs: Iterable[tuple[str, DimensionValue]], /) -> None: ...

    def __init__(
        self,
        pairs: Mapping[str, DimensionValue] | Iterable[tuple[str, DimensionValue]] = (),
        /,
    ) -> None:
        mapping = dict(pairs.items() if isinstance(pairs, Mapping) else pairs)
        for name, value in mapping.items():
            _check_dimension(name, value)
        items = tuple(sorted(mapping.items()))
        object.__setattr__(self, "_items", items)
        object.__setattr__(self, "_map", dict(items))
        object.__setattr__(self, "_hash", hash(items))

    @classmethod
    def of(cls, value: Mapping[str, DimensionValue]) -> Dimensions:
        """Return ``value`` if it already is a Dimensions, else build one from it.

        Args:
            value: a Dimensions or another mapping of names to values.

        Returns:
            The Dimensions.
        """
        return _to_dimensions(value)

    def __reduce__(self) -> tuple[type[Dimensions], tuple[tuple[tuple[str, DimensionValue], ...]]]:
        return (Dimensions, (self._items,))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Dimensions is immutable; build a new one instead of setting {name}")

    def __getitem__(self, key: str) -> DimensionValue:
        return self._map[key]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._map

    @overload
    def get(self, key: str, /) -> DimensionValue | None: ...
    @overload
    def get(self, key: str, default: DimensionValue, /) -> DimensionValue: ...
    @overload
    def get(self, key: str, default: _T, /) -> DimensionValue | _T: ...

    def get(self, key: str, default: object = None, /) -> object:
        """The value for ``key``, or ``default`` when absent."""
        return self._map.get(key, default)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Dimensions):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._map == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Dimensions({dict(self._items)!r})"

    @property
    def pairs(self) -> tuple[tuple[str, DimensionValue], ...]:
        """The ``(name, value)`` pairs, sorted by name."""
        return self._items

    def with_values(self, **updates: DimensionValue | None) -> Dimensions:
        """A copy with some values set (a value of None removes that name).

        Args:
            **updates: dimension names and new values.

        Returns:
            A new Dimensions.
        """
        merged = dict(self._items)
        for name, value in updates.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = _check_dimension(name, value)
        return Dimensions._trusted(tuple(sorted(merged.items())))

    def only(self, names: Iterable[str]) -> Dimensions:
        """A copy keeping only the given names (those present).

        Args:
            names: the dimension names to keep.

        Returns:
            A new Dimensions (or this one, if nothing is dropped).
        """
        keep = names if isinstance(names, frozenset | set) else frozenset(names)
        if keep.issuperset(self._map):
            return self
        return Dimensions._trusted(tuple((k, v) for k, v in self._items if k in keep))

    @classmethod
    def _trusted(cls, items: tuple[tuple[str, DimensionValue], ...]) -> Dimensions:
        """Build from pairs already validated and sorted (a subset of another Dimensions)."""
        if not items:
            return _EMPTY
        new = cls.__new__(cls)
        object.__setattr__(new, "_items", items)
        object.__setattr__(new, "_map", dict(items))
        object.__setattr__(new, "_hash", hash(items))
        return new


_EMPTY = Dimensions()


def _to_dimensions(value: Mapping[str, DimensionValue] | None) -> Dimensions:
    if type(value) is Dimensions:
        return value
    if value is None:
        return _EMPTY
    candidate: object = value
    if isinstance(candidate, str | bytes) or not isinstance(candidate, Mapping | Iterable):
        raise InvalidInputError(
            f"'dimensions' must be a mapping of names to str or int values: {value!r}"
        )
    try:
        return Dimensions(value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(
            f"'dimensions' must be a mapping of names to str or int values: {value!r:.80}"
        ) from None


def _event_id(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    _check_text(attribute.name, value)


def _account(instance: object, attribute: attrs.Attribute[Account], value: object) -> None:
    _check_account(attribute.name, value)


def _token(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    _check_token(attribute.name, value)


def _time_converter(value: datetime) -> datetime:
    return _check_time("time", value)


def _quantity_converter(value: Decimal | int) -> Decimal:
    return _check_quantity("quantity", value)


def _amount_converter(value: Decimal | int) -> Decimal:
    return _check_quantity("amount", value)


@attrs.frozen(kw_only=True)
class UsageEvent:
    """One usage event: an SMS sent, a call, a batch of emails.

    Attributes:
        event_id: globally unique id, the idempotency key: non-empty printable
            text, at most 191 characters.
        account: the account that produced the usage (int or non-empty str).
        time: when it happened; must be timezone-aware, stored in UTC.
        product: the product token, e.g. ``"sms"``, ``"voice"``, ``"email"``.
        quantity: how much (segments, seconds, emails), an exact Decimal (an
            int is converted; a float raises MoneyTypeError). Must be >= 0
            unless ``correction`` is set.
        dimensions: attributes such as region, channel, country or
            ``parent_account``, as an immutable :class:`Dimensions`.
        correction: marks a correction (a credit or re-rating). Only a
            correction may have a negative quantity, and the rules engine
            accepts one only for products whose price book entry sets
            ``corrections = true``. A plain negative quantity is refused, so a
            sign bug upstream cannot silently credit an account.

    Example:
        >>> from datetime import datetime, UTC
        >>> e = UsageEvent(event_id="e-1", account=42, time=datetime(2026, 1, 5, tzinfo=UTC),
        ...                product="sms", quantity=2, dimensions={"country": "US"})
        >>> e.quantity
        Decimal('2')
    """

    event_id: str = attrs.field(validator=_event_id)
    account: Account = attrs.field(validator=_account)
    time: datetime = attrs.field(converter=_time_converter)
    product: str = attrs.field(validator=_token)
    quantity: Decimal = attrs.field(converter=_quantity_converter)
    dimensions: Dimensions = attrs.field(default=_EMPTY, converter=_to_dimensions)
    correction: bool = attrs.field(default=False)

    def __attrs_post_init__(self) -> None:
        if type(self.correction) is not bool:
            raise InvalidInputError(f"'correction' must be a bool: {self.correction!r}")
        if self.quantity < 0 and not self.correction:
            raise InvalidInputError(
                f"'quantity' must be >= 0: {self.quantity} (event {self.event_id!r}); "
                "a negative quantity is allowed only on a correction event "
                "(correction=True) for a product whose price book allows corrections"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, account_as_int: bool = False) -> UsageEvent:
        """Build an event from a parsed JSON Lines object or a CSV row.

        Strings are parsed: ``quantity`` as a Decimal, ``time`` as ISO 8601
        (``Z`` allowed; it must carry an offset), ``correction`` as
        ``true``/``false``. Dimensions come from a ``dimensions`` mapping
        and/or flat ``dimensions.NAME`` keys (the CSV form). Unknown keys are
        refused, so a typo is not silently dropped.

        Args:
            data: the mapping.
            account_as_int: parse a string ``account`` (as CSV gives it) as an
                int. Int and str account ids are different keys, so pick the
                form your system uses and stick to it.

        Returns:
            The event.

        Raises:
            InvalidInputError: naming the field and the value that cannot be used.
            MoneyTypeError: for a float quantity (parse JSON with
                ``json.loads(text, parse_float=Decimal)``).

        Example:
            >>> UsageEvent.from_dict({"event_id": "e-1", "account": "42", "product": "sms",
            ...     "time": "2026-01-05T10:00:00Z", "quantity": "1",
            ...     "dimensions.country": "US"}, account_as_int=True).account
            42
        """
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"an event must be a mapping, not {type(data).__name__}")
        fields: dict[str, object] = {}
        dimensions: dict[str, DimensionValue] = {}
        for key, value in data.items():
            if key in _FROM_DICT_FIELDS:
                fields[key] = value
            elif isinstance(key, str) and key.startswith("dimensions."):
                dimensions[key.removeprefix("dimensions.")] = value  # type: ignore[assignment]
            else:
                raise InvalidInputError(
                    f"unknown event field {key!r}: the fields are "
                    f"{', '.join(sorted(_FROM_DICT_FIELDS))} and dimensions.NAME"
                )
        missing = {"event_id", "account", "time", "product", "quantity"} - set(fields)
        if missing:
            raise InvalidInputError(
                f"event {fields.get('event_id')!r} lacks required field(s) "
                f"{', '.join(sorted(missing))}"
            )
        nested = fields.pop("dimensions", None)
        if nested is not None:
            if not isinstance(nested, Mapping):
                raise InvalidInputError(
                    f"'dimensions' must be a mapping of names to values: {nested!r}"
                )
            dimensions = {**nested, **dimensions}
        account = fields["account"]
        if account_as_int and type(account) is str:
            account = _parse_int("account", account)
        return cls(
            event_id=fields["event_id"],  # type: ignore[arg-type]
            account=account,  # type: ignore[arg-type]
            time=_parse_time(fields["time"]),
            product=fields["product"],  # type: ignore[arg-type]
            quantity=_parse_decimal("quantity", fields["quantity"]),
            dimensions=dimensions,
            correction=_parse_bool("correction", fields.get("correction", False)),
        )


_FROM_DICT_FIELDS = frozenset(
    {"event_id", "account", "time", "product", "quantity", "dimensions", "correction"}
)


# Text numbers are strict: int() and Decimal() also take " 42 ", "4_2", "+42", "1e3" and
# non-ASCII digits ("\u0664\u0662" is 42), each a different text for the same number, or
# an id that only looks like one. Only the one plain spelling of each number passes.
_PLAIN_INT = re.compile(r"0|-?[1-9][0-9]{0,18}")
_PLAIN_DECIMAL = re.compile(r"(?!-0(?:\.0+)?$)-?(?:0|[1-9][0-9]{0,29})(?:\.[0-9]{1,30})?")


def _parse_int(field: str, value: str) -> int:
    if not _PLAIN_INT.fullmatch(value):
        raise InvalidInputError(
            f"{field!r} must be an integer written plainly (ASCII digits, an optional '-', no "
            f"spaces, '_', '+' or leading zeros): {value!r}"
        )
    return int(value)


def _parse_decimal(field: str, value: object) -> Decimal:
    if type(value) is str:
        if not _PLAIN_DECIMAL.fullmatch(value):
            raise InvalidInputError(
                f"{field!r} must be a decimal number written plainly, such as '12' or '0.5' "
                f"(ASCII digits, at most one '.', an optional '-'; no spaces, '_', '+', "
                f"exponent or leading zeros): {value!r}"
            )
        return Decimal(value)
    return money.require_decimal(value, field)


def _parse_time(value: object) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidInputError(
                f"'time' must be an ISO 8601 timestamp with an offset, such as "
                f"'2026-01-05T10:00:00Z': {value!r}"
            ) from None
    if isinstance(value, datetime):
        return value
    raise InvalidInputError(
        f"'time' must be an ISO 8601 string or a datetime, not {type(value).__name__}: {value!r}"
    )


def _parse_bool(field: str, value: object) -> bool:
    if type(value) is bool:
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0", ""}:
        return value.strip().lower() in {"true", "1"}
    raise InvalidInputError(f"{field!r} must be true or false: {value!r}")


def _currency(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if value not in money.CURRENCIES:
        raise InvalidInputError(
            f"'currency' must be a supported ISO 4217 code: {value!r}; "
            f"known: {', '.join(sorted(money.CURRENCIES))}"
        )


def _scale(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    money.check_scale(value, attribute.name)


def _version(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    _check_text(attribute.name, value, max_length=64)


MAX_PARTS: Final = 10_000
"""The most charges one event may have."""


def _part(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or not 0 <= value < MAX_PARTS:
        raise InvalidInputError(
            f"'part' must be an int from 0 to {MAX_PARTS - 1} (this charge's index among its "
            f"event's charges): {value!r}"
        )


def _parts(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or not 1 <= value <= MAX_PARTS:
        raise InvalidInputError(
            f"'parts' must be an int from 1 to {MAX_PARTS} (how many charges the event has): "
            f"{value!r}"
        )


@attrs.frozen(kw_only=True)
class Charge:
    """What one event costs one account: the unit the aggregation writer adds up.

    Build charges inside a rule with :meth:`shardbill.rules.RuleContext.charge`,
    which fills in the event's fields and the rule's name and version, and
    rounds the amount to the pricing scale (the one rounding point). Built
    directly, a charge refuses an amount that is not exact at its ``scale``.

    Attributes:
        event_id: the id of the event this charge comes from.
        account: the account that pays (after any routing to a parent).
        product: the product token.
        dimensions: the aggregate dimensions this charge is summed under.
        quantity: the usage quantity this charge covers (exact Decimal).
        amount: the price in major currency units, exact at ``scale`` places;
            negative for a credit.
        currency: the ISO 4217 code.
        time: the event's time, in UTC.
        rule: the name of the rule that priced it.
        rule_version: that rule's version.
        scale: the pricing scale (decimal places) at which ``amount`` is exact;
            :attr:`amount_minor` is the amount in integer units of it.
        part: this charge's index among its event's charges, ``0 <= part < parts``.
        parts: how many charges the event has in all (default 1). The writer
            applies an event only with all its parts in one call, folds exact
            repeats of a part, and refuses an event whose parts disagree; the
            rules engine numbers the charges it makes.

    Example:
        >>> from datetime import datetime, UTC
        >>> c = Charge(event_id="e-1", account=42, product="sms", quantity=3,
        ...            amount=Decimal("0.0225"), currency="USD",
        ...            time=datetime(2026, 1, 5, tzinfo=UTC), rule="comms.sms", rule_version="1")
        >>> c.amount_minor  # micro-dollars at the default scale 6
        22500
    """

    event_id: str = attrs.field(validator=_event_id)
    account: Account = attrs.field(validator=_account)
    product: str = attrs.field(validator=_token)
    dimensions: Dimensions = attrs.field(default=_EMPTY, converter=_to_dimensions)
    quantity: Decimal = attrs.field(converter=_quantity_converter)
    amount: Decimal = attrs.field(converter=_amount_converter)
    currency: str = attrs.field(validator=_currency)
    time: datetime = attrs.field(converter=_time_converter)
    rule: str = attrs.field(validator=_token)
    rule_version: str = attrs.field(validator=_version)
    scale: int = attrs.field(default=money.DEFAULT_SCALE, validator=_scale)
    part: int = attrs.field(default=0, validator=_part)
    parts: int = attrs.field(default=1, validator=_parts)

    def __attrs_post_init__(self) -> None:
        if self.part >= self.parts:
            raise InvalidInputError(
                f"charge for event {self.event_id!r} says it is part {self.part} of "
                f"{self.parts}; 'part' counts from 0 and must be below 'parts'"
            )
        if not money.is_exact_at(self.amount, self.scale):
            raise InvalidInputError(
                f"'amount' {self.amount} of the charge for event {self.event_id!r} has more "
                f"than scale={self.scale} decimal places; round it once with "
                f"shardbill.money.quantize(amount, {self.scale}, rounding) or build it with "
                "RuleContext.charge(), which does"
            )

    @property
    def amount_minor(self) -> int:
        """The amount in integer units of ``10**-scale`` (micro-units at scale 6)."""
        return money.to_minor_units(self.amount, self.scale)


def _charges_of_event(
    instance: PricedEvent, attribute: attrs.Attribute[tuple[Charge, ...]], value: object
) -> None:
    for index, item in enumerate(instance.charges):
        if getattr(item, "event_id", None) != instance.event_id:
            raise InvalidInputError(
                f"charges[{index}] of priced event {instance.event_id!r} belongs to event "
                f"{getattr(item, 'event_id', None)!r}; a PricedEvent holds its own charges only"
            )
    if len(instance.charges) > MAX_PARTS:
        raise InvalidInputError(
            f"priced event {instance.event_id!r} has {len(instance.charges)} charges; at most "
            f"{MAX_PARTS} are allowed"
        )


@attrs.frozen(kw_only=True)
class PricedEvent:
    """One event's id, time and *all* its charges: the writer's unit of delivery.

    Writing priced events instead of loose charges makes it impossible to
    split an event over two calls or to repeat a charge by accident: the
    charges are numbered by their position here (whatever their own
    ``part``/``parts`` say), an identical repeat of the whole event folds to
    one, and a repeat with other charges is refused.

    Attributes:
        event_id: the event's id.
        time: the event's time (UTC), checked against the dedup horizon.
        charges: every charge of the event, possibly none.

    Example:
        >>> from datetime import datetime, UTC
        >>> when = datetime(2026, 1, 5, tzinfo=UTC)
        >>> c = Charge(event_id="e-1", account=42, product="sms", quantity=1,
        ...            amount=Decimal("0.0075"), currency="USD", time=when,
        ...            rule="comms.sms", rule_version="1")
        >>> PricedEvent(event_id="e-1", time=when, charges=[c]).charges[0].amount
        Decimal('0.0075')
    """

    event_id: str = attrs.field(validator=_event_id)
    time: datetime = attrs.field(converter=_time_converter)
    charges: tuple[Charge, ...] = attrs.field(converter=tuple, validator=_charges_of_event)


_CHARGE_FIELDS = frozenset(field.name for field in attrs.fields(Charge))


def _checked_currency(value: object) -> str:
    _currency(None, None, value)  # type: ignore[arg-type]  # the validator ignores both
    return value  # type: ignore[return-value]  # a known currency code, hence a str


def _unchecked_charge(**fields: object) -> Charge:
    """Build a Charge without running its validators: the engine's hot path.

    Only for callers that pass values already validated (taken from a
    validated event or charge, or checked with the ``_check_*`` functions
    here) and an amount already exact at ``scale``. Every field must be given.
    """
    if fields.keys() != _CHARGE_FIELDS:  # pragma: no cover - a programming error
        raise TypeError(f"_unchecked_charge needs exactly {sorted(_CHARGE_FIELDS)}")
    charge = object.__new__(Charge)
    for name, value in fields.items():
        object.__setattr__(charge, name, value)
    return charge


def _replace_charge(charge: Charge, **changes: object) -> Charge:
    """A copy of a valid charge with some fields replaced by already-validated values."""
    fields: dict[str, object] = {name: getattr(charge, name) for name in _CHARGE_FIELDS}
    fields.update(changes)
    return _unchecked_charge(**fields)
