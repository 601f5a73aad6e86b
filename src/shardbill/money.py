"""Exact money: Decimal and integer units, currencies, one rounding point, exact splits.

This is a public, documented submodule (``import shardbill.money``). It is pure:
no I/O, no global state, and it never touches the global :mod:`decimal`
context. Every operation runs in :data:`EXACT`, a local context that *traps*
:class:`decimal.Inexact`: an arithmetic step that would have to round raises
instead of rounding silently. The only functions that round are
:func:`quantize` and :func:`round_to_currency`, and each takes the rounding
mode explicitly.

The money model, in three scales:

* **Prices** are exact Decimals with as many places as the price book needs
  (an SMS at ``0.0075`` USD, an email at ``0.00095``).
* **Charges** carry amounts at a fixed *pricing scale* (default
  :data:`DEFAULT_SCALE` = 6 decimal places). The rules engine rounds each
  charge's amount to that scale exactly once, when the charge is made
  (:meth:`shardbill.rules.RuleContext.charge`). Storage is integer units of
  that scale (:func:`to_minor_units`), so sums over millions of sub-cent
  charges are exact.
* **Statements** round a period's total to the currency's minor unit (cents,
  yen, fils) with :func:`round_to_currency`: once per statement line, never
  per event.

Floats never enter: :func:`require_decimal` raises
:class:`~shardbill.errors.MoneyTypeError` (a ``TypeError``) for a ``float``
or a ``bool`` and names the field.

Example:
    >>> from decimal import Decimal
    >>> from shardbill import money
    >>> money.quantize(Decimal("0.0075") * 3, 6)
    Decimal('0.022500')
    >>> money.to_minor_units(Decimal("0.022500"), 6)
    22500
    >>> money.round_to_currency(Decimal("1234.5650005"), "USD")
    Decimal('1234.57')
    >>> money.split(Decimal("10.00"), [1, 1, 1], 2)
    [Decimal('3.34'), Decimal('3.33'), Decimal('3.33')]
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping, Sequence
from decimal import Decimal

import attrs

from shardbill.errors import InvalidInputError, MoneyTypeError

__all__ = [
    "CURRENCIES",
    "DEFAULT_ROUNDING",
    "DEFAULT_SCALE",
    "EXACT",
    "MAX_SCALE",
    "PRICING",
    "ROUNDING_MODES",
    "Currency",
    "check_rounding",
    "check_scale",
    "from_minor_units",
    "integer_weights",
    "is_exact_at",
    "quantize",
    "require_decimal",
    "round_to_currency",
    "split",
    "split_units",
    "to_minor_units",
    "units_if_exact",
]

DEFAULT_SCALE = 6
"""The default pricing scale, 6 decimal places (charge amounts in micro-units)."""

MAX_SCALE = 18
"""The largest pricing scale accepted (integer units still fit comfortably in DECIMAL(65))."""

DEFAULT_ROUNDING = decimal.ROUND_HALF_EVEN
"""Banker's rounding (halves go to the even neighbour, so rounding carries no bias)."""

ROUNDING_MODES = frozenset(
    {
        decimal.ROUND_CEILING,
        decimal.ROUND_DOWN,
        decimal.ROUND_FLOOR,
        decimal.ROUND_HALF_DOWN,
        decimal.ROUND_HALF_EVEN,
        decimal.ROUND_HALF_UP,
        decimal.ROUND_UP,
        decimal.ROUND_05UP,
    }
)
"""The rounding modes :mod:`decimal` defines, by their string values."""

EXACT = decimal.Context(
    prec=60,
    rounding=decimal.ROUND_HALF_EVEN,
    Emin=-999_999,
    Emax=999_999,
    traps=[
        decimal.Inexact,
        decimal.InvalidOperation,
        decimal.DivisionByZero,
        decimal.Overflow,
        decimal.FloatOperation,
    ],
)
"""The local context for money arithmetic, 60 digits, where rounding is an error.

Use its methods (``EXACT.multiply(a, b)``, ``EXACT.add(a, b)``) for money
arithmetic. Because :class:`decimal.Inexact` is trapped, a result that does not
fit exactly raises :class:`decimal.Inexact` rather than being rounded.
"""

PRICING = decimal.Context(
    prec=EXACT.prec,
    rounding=decimal.ROUND_HALF_EVEN,
    Emin=EXACT.Emin,
    Emax=EXACT.Emax,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)
"""The context the rules engine prices in, whatever the caller's thread context is.

60 digits, far beyond any pricing scale, so a rule's products and sums are
exact and only the pricing-scale rounding point (:func:`quantize`) rounds; a
division that does not terminate is carried to 60 digits before that. Without
it a caller's ``decimal.getcontext().prec = 10`` would silently round prices.
"""

# Contexts that *do* round, one per mode; used only by quantize().
_ROUNDING_CONTEXTS = {
    mode: decimal.Context(
        prec=EXACT.prec,
        rounding=mode,
        Emin=EXACT.Emin,
        Emax=EXACT.Emax,
        traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
    )
    for mode in ROUNDING_MODES
}
_TRUNCATE = _ROUNDING_CONTEXTS[decimal.ROUND_DOWN]
_EXPONENTS = tuple(Decimal(1).scaleb(-s) for s in range(MAX_SCALE + 1))


def check_scale(value: object, field: str = "scale") -> int:
    """Check a pricing or storage scale (number of decimal places).

    Args:
        value: the candidate scale.
        field: the field name to put in the error message.

    Returns:
        The scale, an int in ``0..MAX_SCALE``.

    Raises:
        InvalidInputError: if it is not an int in range (bool is refused).
    """
    if type(value) is not int or not 0 <= value <= MAX_SCALE:
        raise InvalidInputError(
            f"{field!r} must be an int from 0 to {MAX_SCALE} (decimal places): {value!r}"
        )
    return value


def check_rounding(value: object, field: str = "rounding") -> str:
    """Check a rounding mode.

    Args:
        value: the candidate mode, e.g. ``decimal.ROUND_HALF_EVEN`` (``"ROUND_HALF_EVEN"``).
        field: the field name to put in the error message.

    Returns:
        The mode.

    Raises:
        InvalidInputError: if it is not one of :data:`ROUNDING_MODES`.
    """
    if value not in ROUNDING_MODES:
        raise InvalidInputError(
            f"{field!r} must be one of the decimal module's rounding modes "
            f"({', '.join(sorted(ROUNDING_MODES))}): {value!r}"
        )
    return value


def require_decimal(value: object, field: str) -> Decimal:
    """Return ``value`` as an exact, finite Decimal, or raise naming ``field``.

    ``int`` is accepted and converted exactly. ``float`` and ``bool`` are
    refused: a float has already lost the exact value (``0.1`` is not one
    tenth), and a bool is a programming error that ``int`` would hide.

    Args:
        value: the candidate amount or quantity.
        field: the field name to put in the error message.

    Returns:
        The value as a :class:`~decimal.Decimal`.

    Raises:
        MoneyTypeError: for a float, a bool, a string or any other non-Decimal type.
        InvalidInputError: for NaN or an infinity.

    Example:
        >>> require_decimal(3, "quantity")
        Decimal('3')
        >>> require_decimal(0.5, "quantity")
        Traceback (most recent call last):
        ...
        shardbill.errors.MoneyTypeError: 'quantity' must be a Decimal or an int, not float: 0.5; ...
    """
    cls = type(value)
    if cls is Decimal:
        if not value.is_finite():  # type: ignore[attr-defined]
            raise InvalidInputError(f"{field!r} must be a finite number: {value!r}")
        return value  # type: ignore[return-value]
    if cls is int:
        return Decimal(value)  # type: ignore[arg-type]
    if isinstance(value, bool):
        raise MoneyTypeError(
            f"{field!r} must be a Decimal or an int, not bool: {value!r}; pass a number"
        )
    if isinstance(value, float):
        raise MoneyTypeError(
            f"{field!r} must be a Decimal or an int, not float: {value!r}; "
            f"floats cannot hold money exactly: use Decimal({str(value)!r}) from the "
            "original text, or parse JSON with json.loads(parse_float=Decimal)"
        )
    if isinstance(value, Decimal):  # a Decimal subclass
        return require_decimal(Decimal(value), field)
    if isinstance(value, int):  # an int subclass other than bool (IntEnum, ...)
        return Decimal(int(value))
    raise MoneyTypeError(
        f"{field!r} must be a Decimal or an int, not {cls.__name__}: {value!r}; "
        "convert text with decimal.Decimal(text)"
    )


def is_exact_at(amount: Decimal, scale: int) -> bool:
    """Whether ``amount`` has no non-zero digit beyond ``scale`` decimal places.

    Args:
        amount: a finite Decimal.
        scale: decimal places.

    Returns:
        True if ``quantize(amount, scale)`` would not change its value.
    """
    if amount.as_tuple().exponent >= -scale:  # type: ignore[operator]  # finite: int exponent
        return True
    return amount == amount.quantize(_EXPONENTS[scale], context=_TRUNCATE)


def quantize(amount: Decimal | int, scale: int, rounding: str = DEFAULT_ROUNDING) -> Decimal:
    """Round ``amount`` to ``scale`` decimal places with ``rounding``.

    This is the pricing-scale rounding point: the rules engine calls it once
    per charge (through :meth:`shardbill.rules.RuleContext.charge`). The result
    always has exactly ``scale`` decimal places.

    Args:
        amount: a Decimal (or int).
        scale: decimal places, ``0..MAX_SCALE``.
        rounding: a :mod:`decimal` rounding mode; default ``ROUND_HALF_EVEN``.

    Returns:
        The rounded Decimal.

    Raises:
        MoneyTypeError: if ``amount`` is a float.
        InvalidInputError: for a bad scale or rounding mode, or a non-finite amount.

    Example:
        >>> quantize(Decimal("0.0000125"), 6)
        Decimal('0.000012')
        >>> quantize(Decimal("0.0000125"), 6, decimal.ROUND_HALF_UP)
        Decimal('0.000013')
    """
    value = require_decimal(amount, "amount")
    check_scale(scale)
    context = _ROUNDING_CONTEXTS.get(rounding)
    if context is None:
        check_rounding(rounding)
    return value.quantize(_EXPONENTS[scale], context=context)


def to_minor_units(amount: Decimal | int, scale: int) -> int:
    """Convert an amount to integer units of ``10**-scale`` (e.g. micro-dollars at scale 6).

    This never rounds: an amount with more places than ``scale`` is an error,
    so that rounding stays at its one documented point (:func:`quantize`).

    Args:
        amount: a Decimal (or int) exact at ``scale``.
        scale: decimal places of one unit, ``0..MAX_SCALE``.

    Returns:
        The integer number of units.

    Raises:
        MoneyTypeError: for a float.
        InvalidInputError: if ``amount`` needs rounding at ``scale``.

    Example:
        >>> to_minor_units(Decimal("12.34"), 2)
        1234
        >>> to_minor_units(Decimal("0.0075"), 6)
        7500
    """
    value = require_decimal(amount, "amount")
    check_scale(scale)
    if not is_exact_at(value, scale):
        raise InvalidInputError(
            f"'amount' {value} has more than {scale} decimal places, so it is not a whole "
            f"number of units at scale {scale}; round it first with "
            f"shardbill.money.quantize(amount, {scale}, rounding)"
        )
    return int(value.scaleb(scale, context=EXACT))


def units_if_exact(value: Decimal, scale: int) -> int | None:
    """``value`` in integer units of ``10**-scale``, or None when it is not a whole number of them.

    The conversion runs in :data:`EXACT`, never in the caller's thread
    context, so a low ``decimal.getcontext().prec`` cannot round it; a value
    whose digits do not fit is None too, never rounded.

    Example:
        >>> units_if_exact(Decimal("1234567.123456"), 6)
        1234567123456
        >>> units_if_exact(Decimal("0.0000005"), 6) is None
        True
    """
    try:
        scaled = value.scaleb(scale, EXACT)
    except decimal.DecimalException:
        return None
    units = int(scaled)
    return units if units == scaled else None


def from_minor_units(units: int, scale: int) -> Decimal:
    """Convert integer units of ``10**-scale`` back to an exact Decimal with ``scale`` places.

    Args:
        units: an int (bool and float are refused).
        scale: decimal places of one unit, ``0..MAX_SCALE``.

    Returns:
        The Decimal amount.

    Raises:
        MoneyTypeError: if ``units`` is not an int.

    Example:
        >>> from_minor_units(22500, 6)
        Decimal('0.022500')
    """
    if type(units) is not int:
        if isinstance(units, bool | float) or not isinstance(units, int):
            raise MoneyTypeError(
                f"'units' must be an int (integer minor units), not "
                f"{type(units).__name__}: {units!r}"
            )
        units = int(units)
    check_scale(scale)
    # Built from its digits, not by scaleb: exact for any number of digits (a wide
    # measure's 65), where a context's precision would round or trap.
    sign, digits, exponent = Decimal(units).as_tuple()
    assert isinstance(exponent, int)  # noqa: S101 - an int's Decimal is finite
    return Decimal((sign, digits, exponent - scale))


@attrs.frozen(kw_only=True)
class Currency:
    """An ISO 4217 currency and its minor unit.

    Look one up with :meth:`Currency.of`; the supported ones are in
    :data:`CURRENCIES`.

    Attributes:
        code: the three-letter ISO 4217 code, e.g. ``"USD"``.
        exponent: decimal places of the minor unit (2 for cents, 0 for JPY, 3 for KWD).
        name: the English name.
    """

    code: str = attrs.field(validator=attrs.validators.matches_re(r"[A-Z]{3}"))
    exponent: int = attrs.field(validator=attrs.validators.in_(range(5)))
    name: str

    @classmethod
    def of(cls, code: str | Currency) -> Currency:
        """Look up a supported currency by its code.

        Args:
            code: an ISO 4217 code (case-sensitive, upper case), or a Currency.

        Returns:
            The Currency.

        Raises:
            InvalidInputError: for a code shardbill does not know, listing the known ones.

        Example:
            >>> Currency.of("JPY").exponent
            0
        """
        if isinstance(code, Currency):
            return code
        found = CURRENCIES.get(code)
        if found is None:
            raise InvalidInputError(
                f"unknown currency {code!r}: use an upper-case ISO 4217 code from "
                f"{', '.join(sorted(CURRENCIES))}"
            )
        return found


_ISO_4217: tuple[tuple[str, int, str], ...] = (
    ("AED", 2, "UAE Dirham"),
    ("ARS", 2, "Argentine Peso"),
    ("AUD", 2, "Australian Dollar"),
    ("BHD", 3, "Bahraini Dinar"),
    ("BRL", 2, "Brazilian Real"),
    ("CAD", 2, "Canadian Dollar"),
    ("CHF", 2, "Swiss Franc"),
    ("CLF", 4, "Unidad de Fomento"),
    ("CLP", 0, "Chilean Peso"),
    ("CNY", 2, "Yuan Renminbi"),
    ("COP", 2, "Colombian Peso"),
    ("CZK", 2, "Czech Koruna"),
    ("DKK", 2, "Danish Krone"),
    ("EGP", 2, "Egyptian Pound"),
    ("EUR", 2, "Euro"),
    ("GBP", 2, "Pound Sterling"),
    ("HKD", 2, "Hong Kong Dollar"),
    ("HUF", 2, "Forint"),
    ("IDR", 2, "Rupiah"),
    ("ILS", 2, "New Israeli Sheqel"),
    ("INR", 2, "Indian Rupee"),
    ("IQD", 3, "Iraqi Dinar"),
    ("ISK", 0, "Iceland Krona"),
    ("JOD", 3, "Jordanian Dinar"),
    ("JPY", 0, "Yen"),
    ("KES", 2, "Kenyan Shilling"),
    ("KRW", 0, "Won"),
    ("KWD", 3, "Kuwaiti Dinar"),
    ("LYD", 3, "Libyan Dinar"),
    ("MXN", 2, "Mexican Peso"),
    ("MYR", 2, "Malaysian Ringgit"),
    ("NGN", 2, "Naira"),
    ("NOK", 2, "Norwegian Krone"),
    ("NZD", 2, "New Zealand Dollar"),
    ("OMR", 3, "Rial Omani"),
    ("PEN", 2, "Sol"),
    ("PHP", 2, "Philippine Peso"),
    ("PLN", 2, "Zloty"),
    ("PYG", 0, "Guarani"),
    ("RON", 2, "Romanian Leu"),
    ("SAR", 2, "Saudi Riyal"),
    ("SEK", 2, "Swedish Krona"),
    ("SGD", 2, "Singapore Dollar"),
    ("THB", 2, "Baht"),
    ("TND", 3, "Tunisian Dinar"),
    ("TRY", 2, "Turkish Lira"),
    ("TWD", 2, "New Taiwan Dollar"),
    ("UGX", 0, "Uganda Shilling"),
    ("USD", 2, "US Dollar"),
    ("UYU", 2, "Peso Uruguayo"),
    ("VND", 0, "Dong"),
    ("XAF", 0, "CFA Franc BEAC"),
    ("XOF", 0, "CFA Franc BCEAO"),
    ("ZAR", 2, "Rand"),
)

CURRENCIES: Mapping[str, Currency] = {
    code: Currency(code=code, exponent=exponent, name=name) for code, exponent, name in _ISO_4217
}
"""The supported currencies by ISO 4217 code, with their minor-unit exponents."""


def round_to_currency(
    amount: Decimal | int, currency: str | Currency, rounding: str = DEFAULT_ROUNDING
) -> Decimal:
    """Round an amount to the currency's minor unit: the statement-time rounding point.

    Call it once per statement line (a period's total for an account and
    product), never per event: per-event rounding of sub-cent prices would
    lose or invent money across millions of events.

    Args:
        amount: a Decimal, usually a sum of charge amounts at the pricing scale.
        currency: an ISO 4217 code or a :class:`Currency`.
        rounding: a :mod:`decimal` rounding mode; default ``ROUND_HALF_EVEN``.

    Returns:
        The amount with exactly ``currency.exponent`` decimal places.

    Raises:
        MoneyTypeError: if ``amount`` is a float.
        InvalidInputError: for an unknown currency or rounding mode.

    Example:
        >>> round_to_currency(Decimal("0.0225"), "USD")
        Decimal('0.02')
        >>> round_to_currency(Decimal("1234.5"), "JPY")
        Decimal('1234')
        >>> round_to_currency(Decimal("1.2345"), "KWD")
        Decimal('1.234')
    """
    return quantize(amount, Currency.of(currency).exponent, rounding)


def split_units(units: int, weights: Sequence[Decimal | int]) -> list[int]:
    """Split an integer number of units by weights; the parts always sum to ``units``.

    Largest-remainder method: each part first gets the floor of its exact
    share ``units * w / sum(w)``; the units left over go, one each, to the
    parts with the largest remainders, ties to the earlier part. Every part is
    therefore within one unit of its exact share, and the result depends only
    on the inputs. A negative ``units`` is split as its absolute value and
    negated, so ``split_units(-n, w) == [-p for p in split_units(n, w)]``.

    Args:
        units: the whole, an int.
        weights: non-negative Decimals or ints (percentages, ratios); their sum must be > 0.

    Returns:
        One int per weight.

    Raises:
        MoneyTypeError: for a float weight or a non-int ``units``.
        InvalidInputError: for an empty, negative or all-zero list of weights.

    Example:
        >>> split_units(100, [1, 1, 1])
        [34, 33, 33]
    """
    if type(units) is not int:
        raise MoneyTypeError(f"'units' must be an int, not {type(units).__name__}: {units!r}")
    ints = integer_weights(weights)
    total = sum(ints)
    if units < 0:
        return [-part for part in split_units(-units, ints)]
    parts: list[int] = []
    remainders: list[tuple[int, int]] = []
    for index, weight in enumerate(ints):
        part, remainder = divmod(units * weight, total)
        parts.append(part)
        remainders.append((-remainder, index))
    left = units - sum(parts)
    for _, index in sorted(remainders)[:left]:
        parts[index] += 1
    return parts


def split(amount: Decimal | int, weights: Sequence[Decimal | int], scale: int) -> list[Decimal]:
    """Split an amount by weights at ``scale``; the parts always sum exactly to ``amount``.

    The amount must already be exact at ``scale`` (round it first with
    :func:`quantize`); the parts are exact at ``scale`` too. See
    :func:`split_units` for the largest-remainder rule and its tie-break.

    Args:
        amount: the whole, a Decimal exact at ``scale``.
        weights: non-negative Decimals or ints, e.g. percentages ``[60, 40]``.
        scale: decimal places of one unit.

    Returns:
        One Decimal per weight, each with exactly ``scale`` places.

    Raises:
        MoneyTypeError: for a float amount or weight.
        InvalidInputError: for bad weights or an amount that needs rounding at ``scale``.

    Example:
        >>> split(Decimal("0.01"), [Decimal("33.3"), Decimal("33.3"), Decimal("33.4")], 2)
        [Decimal('0.00'), Decimal('0.00'), Decimal('0.01')]
    """
    units = to_minor_units(amount, scale)
    exponent = -scale
    return [Decimal(part).scaleb(exponent, context=EXACT) for part in split_units(units, weights)]


def integer_weights(weights: Sequence[Decimal | int]) -> list[int]:
    """Scale weights by a common power of ten to exact integers with the same ratios.

    :func:`split_units` does this itself; call it ahead to reuse the result
    when the same weights split many amounts.

    Args:
        weights: non-negative Decimals or ints; their sum must be > 0.

    Returns:
        The integer weights.

    Raises:
        MoneyTypeError: for a float weight.
        InvalidInputError: for an empty, negative or all-zero list.

    Example:
        >>> integer_weights([Decimal("33.3"), Decimal("66.7")])
        [333, 667]
    """
    if len(weights) == 0:
        raise InvalidInputError("'weights' must not be empty: give one weight per part")
    if all(type(w) is int and w >= 0 for w in weights) and any(weights):
        return list(weights)  # type: ignore[arg-type]  # all ints, checked just above
    values = [require_decimal(w, f"weights[{i}]") for i, w in enumerate(weights)]
    for i, value in enumerate(values):
        if value < 0:
            raise InvalidInputError(f"'weights[{i}]' must be >= 0: {value}")
    places = max(0, *(-int(v.as_tuple().exponent) for v in values))
    ints = [int(v.scaleb(places, context=EXACT)) for v in values]
    if sum(ints) == 0:
        raise InvalidInputError(
            f"'weights' must not all be zero: {[str(v) for v in values]}; give at least one > 0"
        )
    return ints
