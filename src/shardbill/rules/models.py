"""Built-in charge models: pure functions from a quantity to an exact amount.

Every model has one method, ``price(quantity) -> Decimal``, and returns the
*exact* amount (no rounding: the engine rounds once to the pricing scale, and a
statement rounds once to the currency). All arithmetic runs in
:data:`shardbill.money.EXACT`, which raises rather than round.

Two kinds, by what ``quantity`` is:

* **Per event** (:class:`PerUnit`, :class:`Package`): ``quantity`` is one
  event's usage. :class:`PerUnit` is additive (pricing each event and summing
  equals pricing the sum), so it is also correct per period. :class:`Package`
  per event bills each event's started blocks (each call's started minute).
  A negative quantity (a correction) is priced as the negation of its
  absolute value.
* **Per period** (:class:`GraduatedTiers`, :class:`VolumeTiers`,
  :class:`FreeAllowance`, :class:`MinimumCharge`): ``quantity`` is the total
  of a billing period. These are not additive (the 1001st email costs
  something only because of the first 1000), so a per-event rule cannot apply
  them without knowing the period's running total, which is state that a
  stateless, replayable worker must not keep. The aggregates hold that total
  exactly, so these models price statement lines from the aggregates
  (:meth:`shardbill.rules.PriceBook.statement_amount`). A negative period
  total is refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from decimal import Decimal

import attrs

from shardbill import money
from shardbill.errors import InvalidInputError, PriceBookError
from shardbill.protocols import ChargeModel

__all__ = [
    "ChargeModel",
    "FreeAllowance",
    "GraduatedTiers",
    "MinimumCharge",
    "Package",
    "PerUnit",
    "Tier",
    "VolumeTiers",
]

_EXACT = money.EXACT
_ZERO = Decimal(0)


def _rate_converter(value: Decimal | int) -> Decimal:
    return money.require_decimal(value, "rate")


def _size_converter(value: Decimal | int) -> Decimal:
    return money.require_decimal(value, "size")


def _start_converter(value: Decimal | int) -> Decimal:
    return money.require_decimal(value, "start")


def _free_converter(value: Decimal | int) -> Decimal:
    return money.require_decimal(value, "free")


def _minimum_converter(value: Decimal | int) -> Decimal:
    return money.require_decimal(value, "minimum")


def _non_negative(instance: object, attribute: attrs.Attribute[Decimal], value: Decimal) -> None:
    if value < 0:
        raise PriceBookError(
            f"{attribute.name!r} must be >= 0: {value}; express a discount as a lower price "
            "and a credit as a correction event"
        )


def _positive(instance: object, attribute: attrs.Attribute[Decimal], value: Decimal) -> None:
    if value <= 0:
        raise PriceBookError(f"{attribute.name!r} must be > 0: {value}")


def _quantity(value: Decimal | int) -> Decimal:
    return money.require_decimal(value, "quantity")


def _period_total(value: Decimal | int) -> Decimal:
    total = money.require_decimal(value, "quantity")
    if total < 0:
        raise InvalidInputError(
            f"a period model needs a period total >= 0: {total}; more corrections than "
            "usage in one period needs a manual adjustment"
        )
    return total


def _power_of_ten(value: Decimal | int) -> Decimal:
    per = money.require_decimal(value, "per")
    sign, digits, exponent = per.normalize(context=_EXACT).as_tuple()
    if sign or digits != (1,) or not isinstance(exponent, int) or exponent < 0:
        raise PriceBookError(
            f"'per' must be a power of ten (1, 10, 100, 1000, ...) so the unit price is exact: "
            f"{value}; to bill per started block of N units use the package model"
        )
    return per


@attrs.frozen(kw_only=True)
class PerUnit:
    """A price per unit, or per ``per`` units pro rata: ``amount = quantity * rate / per``.

    Per event (additive, so also correct per period).

    Attributes:
        rate: the price of ``per`` units, >= 0.
        per: a power of ten (default 1). ``rate=0.95, per=1000`` is 0.95 per
            thousand, i.e. exactly 0.00095 per unit.

    Example:
        >>> PerUnit(rate=Decimal("0.0075")).price(Decimal(3))
        Decimal('0.0225')
        >>> PerUnit(rate=Decimal("0.95"), per=1000).price(Decimal(250))
        Decimal('0.23750')
    """

    rate: Decimal = attrs.field(converter=_rate_converter, validator=_non_negative)
    per: Decimal = attrs.field(default=Decimal(1), converter=_power_of_ten)
    _shift: int = attrs.field(init=False, repr=False, eq=False)

    @_shift.default
    def _shift_default(self) -> int:
        return -len(str(int(self.per))) + 1

    @property
    def unit_price(self) -> Decimal:
        """The exact price of one unit (``rate / per``)."""
        return self.rate.scaleb(self._shift, context=_EXACT)

    def price(self, quantity: Decimal, /) -> Decimal:
        """``quantity * rate / per``, exact.

        Args:
            quantity: the units.

        Returns:
            The exact amount.
        """
        product = _EXACT.multiply(_quantity(quantity), self.rate)
        if self._shift:
            return product.scaleb(self._shift, context=_EXACT)
        return product


@attrs.frozen(kw_only=True)
class Package:
    """A price per started block of ``size`` units: ``amount = ceil(quantity / size) * rate``.

    Per event: a 61-second call with ``size=60`` bills 2 started minutes.
    (Per period it would bill the started blocks of the period's total.)

    Attributes:
        rate: the price of one block, >= 0.
        size: units per block, > 0 (e.g. 60 seconds).

    Example:
        >>> Package(rate=Decimal("0.014"), size=60).price(Decimal(61))
        Decimal('0.028')
    """

    rate: Decimal = attrs.field(converter=_rate_converter, validator=_non_negative)
    size: Decimal = attrs.field(converter=_size_converter, validator=_positive)

    def blocks(self, quantity: Decimal, /) -> Decimal:
        """The number of started blocks, ``ceil(|quantity| / size)``, signed like ``quantity``.

        Args:
            quantity: the units.

        Returns:
            The whole number of blocks, as a Decimal.
        """
        value = _quantity(quantity)
        whole, rest = _EXACT.divmod(abs(value), self.size)
        if rest:
            whole = _EXACT.add(whole, 1)
        return -whole if value < 0 else whole

    def price(self, quantity: Decimal, /) -> Decimal:
        """``blocks(quantity) * rate``, exact.

        Args:
            quantity: the units.

        Returns:
            The exact amount.
        """
        return _EXACT.multiply(self.blocks(quantity), self.rate)


def _optional_bound(value: Decimal | int | None) -> Decimal | None:
    return None if value is None else money.require_decimal(value, "up_to")


@attrs.frozen(kw_only=True)
class Tier:
    """One tier: the units above ``start`` up to and including ``up_to``, at ``rate`` each.

    Attributes:
        start: where the tier begins (exclusive), >= 0.
        up_to: where it ends (inclusive), > ``start``; None for unbounded (last tier only).
        rate: the price per unit in this tier, >= 0.
    """

    start: Decimal = attrs.field(converter=_start_converter, validator=_non_negative)
    up_to: Decimal | None = attrs.field(converter=_optional_bound)
    rate: Decimal = attrs.field(converter=_rate_converter, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.up_to is not None and self.up_to <= self.start:
            raise PriceBookError(
                f"a tier must end after it starts: start={self.start}, up_to={self.up_to}"
            )


def _check_tiers(tiers: Sequence[Tier]) -> tuple[Tier, ...]:
    result = tuple(tiers)
    if not result:
        raise PriceBookError("'tiers' must not be empty: give at least one tier")
    for index, tier in enumerate(result):
        if not isinstance(tier, Tier):
            raise PriceBookError(f"tiers[{index}] must be a Tier: {tier!r}")
    if result[0].start != 0:
        raise PriceBookError(
            f"tiers[0] must start at 0: it starts at {result[0].start}, so quantities up to "
            f"it have no price; start the first tier at 0"
        )
    for index, (before, after) in enumerate(itertools.pairwise(result), start=1):
        if before.up_to is None:
            raise PriceBookError(
                f"tiers[{index - 1}] is unbounded but tiers[{index}] follows it; only the "
                "last tier may omit up_to"
            )
        if after.start < before.up_to:
            raise PriceBookError(
                f"tiers overlap: tiers[{index}] starts at {after.start} but tiers[{index - 1}] "
                f"ends at {before.up_to}; start it at {before.up_to}"
            )
        if after.start > before.up_to:
            raise PriceBookError(
                f"gap between tiers: tiers[{index - 1}] ends at {before.up_to} but "
                f"tiers[{index}] starts at {after.start}; start it at {before.up_to}"
            )
    if result[-1].up_to is not None:
        raise PriceBookError(
            f"the last tier ends at {result[-1].up_to}, so larger quantities have no price; "
            "omit up_to on the last tier"
        )
    return result


@attrs.frozen(kw_only=True)
class GraduatedTiers:
    """Each tier's units at that tier's rate: ``sum(units_in(tier) * tier.rate)``.

    Per period. Tiers must start at 0, touch without gap or overlap, and end
    unbounded.

    Attributes:
        tiers: the tiers, in order.

    Example:
        >>> g = GraduatedTiers(tiers=[Tier(start=0, up_to=1000, rate=Decimal("0.01")),
        ...                           Tier(start=1000, up_to=None, rate=Decimal("0.008"))])
        >>> g.price(Decimal(1500))  # 1000 * 0.01 + 500 * 0.008
        Decimal('14.000')
    """

    tiers: tuple[Tier, ...] = attrs.field(converter=_check_tiers)

    def price(self, quantity: Decimal, /) -> Decimal:
        """The sum over tiers of the units falling in each tier times its price.

        Args:
            quantity: the period total, >= 0.

        Returns:
            The exact amount.
        """
        total = _period_total(quantity)
        amount = _ZERO
        for tier in self.tiers:
            if total <= tier.start:
                break
            top = total if tier.up_to is None or total < tier.up_to else tier.up_to
            units = _EXACT.subtract(top, tier.start)
            amount = _EXACT.add(amount, _EXACT.multiply(units, tier.rate))
        return amount


@attrs.frozen(kw_only=True)
class VolumeTiers:
    """All units at the price of the tier the total falls in: ``quantity * tier.rate``.

    Per period. A total exactly on a boundary (``up_to``) belongs to the lower
    tier. Note that volume pricing is not monotonic: with a cheaper upper
    tier, one more unit can lower the amount (1000 at 0.01 is 10.00; 1001 at
    0.008 is 8.008).

    Attributes:
        tiers: the tiers, in order (same rules as :class:`GraduatedTiers`).

    Example:
        >>> v = VolumeTiers(tiers=[Tier(start=0, up_to=1000, rate=Decimal("0.01")),
        ...                        Tier(start=1000, up_to=None, rate=Decimal("0.008"))])
        >>> v.price(Decimal(1500))  # 1500 * 0.008
        Decimal('12.000')
    """

    tiers: tuple[Tier, ...] = attrs.field(converter=_check_tiers)

    def tier_for(self, quantity: Decimal, /) -> Tier:
        """The tier a period total falls in.

        Args:
            quantity: the period total, >= 0.

        Returns:
            The tier whose range holds it (the first tier for 0).
        """
        total = _period_total(quantity)
        for tier in self.tiers:
            if tier.up_to is None or total <= tier.up_to:
                return tier
        raise AssertionError("unreachable: the last tier is unbounded")  # pragma: no cover

    def price(self, quantity: Decimal, /) -> Decimal:
        """``quantity`` times the price of the tier it falls in.

        Args:
            quantity: the period total, >= 0.

        Returns:
            The exact amount.
        """
        total = _period_total(quantity)
        return _EXACT.multiply(total, self.tier_for(total).rate)


def _model(instance: object, attribute: attrs.Attribute[ChargeModel], value: object) -> None:
    if not callable(getattr(value, "price", None)):
        raise PriceBookError(f"{attribute.name!r} must be a charge model with .price(): {value!r}")


@attrs.frozen(kw_only=True)
class FreeAllowance:
    """The first ``free`` units of a period cost nothing: ``model.price(max(total - free, 0))``.

    Per period.

    Attributes:
        free: the free units per period, >= 0.
        model: how the units beyond the allowance are priced.

    Example:
        >>> FreeAllowance(free=Decimal(1000), model=PerUnit(rate=Decimal("0.95"), per=1000)
        ...               ).price(Decimal(3000))  # (3000 - 1000) * 0.95 / 1000
        Decimal('1.90000')
    """

    free: Decimal = attrs.field(converter=_free_converter, validator=_non_negative)
    model: ChargeModel = attrs.field(validator=_model)

    def price(self, quantity: Decimal, /) -> Decimal:
        """The wrapped model's price of the units beyond the allowance.

        Args:
            quantity: the period total, >= 0.

        Returns:
            The exact amount.
        """
        total = _period_total(quantity)
        billable = _EXACT.subtract(total, self.free) if total > self.free else _ZERO
        return self.model.price(billable)


@attrs.frozen(kw_only=True)
class MinimumCharge:
    """At least ``minimum`` per period: ``max(model.price(total), minimum)``.

    Per period. The minimum applies even to a period with no usage (a
    monthly commitment); bill it only for accounts that have the product.

    Attributes:
        minimum: the least amount per period, >= 0.
        model: how the period's usage is priced.

    Example:
        >>> MinimumCharge(minimum=Decimal("5.00"), model=PerUnit(rate=Decimal("0.01"))
        ...               ).price(Decimal(120))  # max(1.20, 5.00)
        Decimal('5.00')
    """

    minimum: Decimal = attrs.field(converter=_minimum_converter, validator=_non_negative)
    model: ChargeModel = attrs.field(validator=_model)

    def price(self, quantity: Decimal, /) -> Decimal:
        """The larger of the wrapped model's price and the minimum.

        Args:
            quantity: the period total, >= 0.

        Returns:
            The exact amount.
        """
        amount = self.model.price(_period_total(quantity))
        return amount if amount > self.minimum else self.minimum
