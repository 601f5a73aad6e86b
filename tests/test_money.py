"""shardbill.money: exact Decimal arithmetic, minor units, currencies, rounding, splits."""

from __future__ import annotations

import decimal
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardbill import money
from shardbill.errors import InvalidInputError, MoneyTypeError

D = Decimal


# --- require_decimal -------------------------------------------------------------------------


def test_require_decimal_accepts_decimal_and_int() -> None:
    """Decimals pass through unchanged and ints convert exactly."""
    assert money.require_decimal(D("0.0075"), "rate") == D("0.0075")
    assert money.require_decimal(7, "quantity") == D(7)
    assert type(money.require_decimal(7, "quantity")) is Decimal


def test_require_decimal_refuses_float_naming_the_field() -> None:
    """A float raises MoneyTypeError (a TypeError) naming the field, the value and the fix."""
    with pytest.raises(MoneyTypeError, match=r"'amount'.*float.*0\.1.*Decimal") as info:
        money.require_decimal(0.1, "amount")
    assert isinstance(info.value, TypeError)


def test_require_decimal_refuses_bool_and_text() -> None:
    """A bool (an int subclass) and a string are type errors, not silently converted."""
    with pytest.raises(MoneyTypeError, match=r"'quantity'.*bool"):
        money.require_decimal(True, "quantity")
    with pytest.raises(MoneyTypeError, match=r"'quantity'.*str"):
        money.require_decimal("1.5", "quantity")


@pytest.mark.parametrize("value", [D("NaN"), D("sNaN"), D("Infinity"), D("-Infinity")])
def test_require_decimal_refuses_non_finite(value: Decimal) -> None:
    """NaN and infinities are not amounts."""
    with pytest.raises(InvalidInputError, match="'amount' must be a finite number"):
        money.require_decimal(value, "amount")


# --- quantize: the pricing-scale rounding point ----------------------------------------------


def test_quantize_uses_half_even_by_default() -> None:
    """0.0000125 lies exactly halfway at 6 places: half-even keeps the even 2, half-up gives 3."""
    assert money.quantize(D("0.0000125"), 6) == D("0.000012")
    assert money.quantize(D("0.0000135"), 6) == D("0.000014")
    assert money.quantize(D("0.0000125"), 6, decimal.ROUND_HALF_UP) == D("0.000013")
    assert money.quantize(D("0.0000125"), 6, decimal.ROUND_DOWN) == D("0.000012")


def test_quantize_pads_to_exactly_scale_places() -> None:
    """The result always carries exactly ``scale`` places (0.0225 -> 0.022500)."""
    result = money.quantize(D("0.0225"), 6)
    assert str(result) == "0.022500"


def test_quantize_refuses_bad_scale_and_rounding() -> None:
    """Scale must be an int in 0..18 and rounding one of decimal's modes; errors say which."""
    with pytest.raises(InvalidInputError, match=r"'scale'.*19"):
        money.quantize(D(1), 19)
    with pytest.raises(InvalidInputError, match="'scale'"):
        money.quantize(D(1), True)
    with pytest.raises(InvalidInputError, match=r"'rounding'.*'HALF'"):
        money.quantize(D(1), 2, "HALF")


def test_money_arithmetic_ignores_the_global_context() -> None:
    """A 3-digit global context changes nothing: money uses its own local context."""
    with decimal.localcontext() as ctx:
        ctx.prec = 3
        ctx.rounding = decimal.ROUND_UP
        assert money.quantize(D("1234.5650005"), 6) == D("1234.565000")  # 7th place 5 -> 0
        assert money.to_minor_units(D("123456.789"), 3) == 123456789
        assert money.round_to_currency(D("1234.565"), "USD") == D("1234.56")  # half even


def test_exact_context_raises_instead_of_rounding() -> None:
    """EXACT traps Inexact: 1/3 cannot be a money result, so it raises."""
    with pytest.raises(decimal.Inexact):
        money.EXACT.divide(D(1), D(3))
    assert money.EXACT.divide(D(1), D(8)) == D("0.125")


# --- minor units -----------------------------------------------------------------------------


def test_to_minor_units_worked_examples() -> None:
    """0.0075 USD at scale 6 is 7500 micro-dollars; 12.34 at scale 2 is 1234 cents."""
    assert money.to_minor_units(D("0.0075"), 6) == 7500
    assert money.to_minor_units(D("12.34"), 2) == 1234
    assert money.to_minor_units(D("-0.5"), 2) == -50
    assert money.to_minor_units(D("1.500000000"), 2) == 150  # trailing zeros are exact


def test_to_minor_units_never_rounds() -> None:
    """An amount with more places than the scale is an error that says to quantize first."""
    with pytest.raises(InvalidInputError, match=r"quantize"):
        money.to_minor_units(D("0.0000001"), 6)


def test_from_minor_units_worked_examples() -> None:
    """22500 micro-units is 0.022500; ints only."""
    assert str(money.from_minor_units(22500, 6)) == "0.022500"
    assert money.from_minor_units(-150, 2) == D("-1.50")
    with pytest.raises(MoneyTypeError, match=r"'units'.*float"):
        money.from_minor_units(1.0, 2)  # type: ignore[arg-type]
    with pytest.raises(MoneyTypeError, match=r"'units'.*bool"):
        money.from_minor_units(True, 2)


@pytest.mark.property
@settings(max_examples=100, deadline=None)
@given(units=st.integers(min_value=-(10**20), max_value=10**20), scale=st.integers(0, 18))
def test_minor_units_round_trip(units: int, scale: int) -> None:
    """from_minor_units then to_minor_units gives back the same integer."""
    assert money.to_minor_units(money.from_minor_units(units, scale), scale) == units


# --- currencies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "exponent"),
    [("USD", 2), ("EUR", 2), ("GBP", 2), ("JPY", 0), ("CLP", 0), ("KWD", 3), ("BHD", 3)],
)
def test_currency_exponents_follow_iso_4217(code: str, exponent: int) -> None:
    """The minor-unit exponents are ISO 4217's."""
    assert money.Currency.of(code).exponent == exponent


def test_brief_currencies_are_all_supported() -> None:
    """Every currency the project promises is in the table."""
    wanted = "USD EUR GBP JPY CHF CAD AUD SEK NOK DKK PLN BRL INR MXN ZAR SGD HKD NZD KWD BHD CLP"
    assert set(wanted.split()) <= set(money.CURRENCIES)


def test_unknown_currency_lists_the_known_ones() -> None:
    """An unknown code is an error naming it and listing the supported codes."""
    with pytest.raises(InvalidInputError, match=r"unknown currency 'usd'.*USD"):
        money.Currency.of("usd")


def test_round_to_currency_worked_examples() -> None:
    """Statement rounding: half-even to the currency's minor unit."""
    assert money.round_to_currency(D("0.125"), "USD") == D("0.12")  # 2 is even
    assert money.round_to_currency(D("0.135"), "USD") == D("0.14")  # 4 is even
    assert money.round_to_currency(D("0.1250001"), "USD") == D("0.13")  # above half
    assert money.round_to_currency(D("1234.5"), "JPY") == D("1234")
    assert money.round_to_currency(D("1235.5"), "JPY") == D("1236")
    assert money.round_to_currency(D("1.2345"), "KWD") == D("1.234")
    assert money.round_to_currency(D("0.125"), "USD", decimal.ROUND_HALF_UP) == D("0.13")


def test_sub_cent_prices_summed_then_rounded_once() -> None:
    """Why one rounding point: 1000 SMS at 0.0075 make 7.50; rounding each to cents makes 10.00.

    Per event, 0.0075 rounds (half even) to 0.01; 1000 of those is 10.00,
    33% too much. At the pricing scale each is exactly 0.007500; the sum is
    7.500000 and rounds to 7.50.
    """
    per_event = money.quantize(D("0.0075"), 6)
    total = sum([per_event] * 1000, D(0))
    assert money.round_to_currency(total, "USD") == D("7.50")
    rounded_each = money.round_to_currency(D("0.0075"), "USD")
    assert sum([rounded_each] * 1000, D(0)) == D("10.00")


# --- split -----------------------------------------------------------------------------------


def test_split_worked_examples() -> None:
    """Largest remainder: 10.00 in thirds is 3.34 + 3.33 + 3.33 (the tie goes to the first)."""
    assert money.split(D("10.00"), [1, 1, 1], 2) == [D("3.34"), D("3.33"), D("3.33")]
    # 1 cent by 33.3/33.3/33.4 %: exact shares .333/.333/.334 cent; the largest remainder wins
    assert money.split(D("0.01"), [D("33.3"), D("33.3"), D("33.4")], 2) == [
        D("0.00"),
        D("0.00"),
        D("0.01"),
    ]
    # 0.092600 by 70/30: 92600 units * 0.7 = 64820, * 0.3 = 27780: exact, no remainder
    assert money.split(D("0.092600"), [70, 30], 6) == [D("0.064820"), D("0.027780")]
    # 5 units by weights 0 and 1: the zero weight gets nothing
    assert money.split(D("0.05"), [0, 1], 2) == [D("0.00"), D("0.05")]


def test_split_of_negative_amount_mirrors_positive() -> None:
    """A credit splits as the negation of the charge it reverses."""
    assert money.split(D("-10.00"), [1, 1, 1], 2) == [D("-3.34"), D("-3.33"), D("-3.33")]


def test_split_refuses_bad_weights_and_inexact_amounts() -> None:
    """Empty, negative, all-zero or float weights, and amounts finer than the scale, raise."""
    with pytest.raises(InvalidInputError, match="'weights' must not be empty"):
        money.split(D(1), [], 2)
    with pytest.raises(InvalidInputError, match=r"'weights\[1\]' must be >= 0"):
        money.split(D(1), [1, -1], 2)
    with pytest.raises(InvalidInputError, match="must not all be zero"):
        money.split(D(1), [0, 0], 2)
    with pytest.raises(MoneyTypeError, match=r"'weights\[0\]'.*float"):
        money.split(D(1), [0.5, 0.5], 2)  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="quantize"):
        money.split(D("0.001"), [1, 1], 2)


weights_strategy = st.lists(
    st.one_of(
        st.integers(min_value=0, max_value=1000),
        st.decimals(min_value=0, max_value=100, places=3, allow_nan=False, allow_infinity=False),
    ),
    min_size=1,
    max_size=8,
).filter(lambda ws: sum(ws) > 0)


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(units=st.integers(min_value=-(10**12), max_value=10**12), weights=weights_strategy)
def test_split_units_sum_to_whole_and_stay_within_one_unit(
    units: int, weights: list[Decimal | int]
) -> None:
    """Parts always sum to the whole and each is within one unit of its exact share."""
    parts = money.split_units(units, weights)
    assert sum(parts) == units
    total = sum(Fraction(w) for w in weights)
    for part, weight in zip(parts, weights, strict=True):
        exact = Fraction(units) * Fraction(weight) / total
        assert abs(Fraction(part) - exact) < 1


@pytest.mark.property
@settings(max_examples=100, deadline=None)
@given(units=st.integers(min_value=0, max_value=10**9), weights=weights_strategy)
def test_split_is_deterministic_and_sign_symmetric(
    units: int, weights: list[Decimal | int]
) -> None:
    """The same inputs give the same parts, and a negative whole gives the negated parts."""
    first = money.split_units(units, weights)
    assert money.split_units(units, list(weights)) == first
    assert money.split_units(-units, weights) == [-p for p in first]


@pytest.mark.property
@settings(max_examples=100, deadline=None)
@given(
    amount=st.decimals(min_value=-(10**6), max_value=10**6, places=6, allow_nan=False),
    scale=st.integers(0, 8),
)
def test_quantize_moves_at_most_half_a_unit(amount: Decimal, scale: int) -> None:
    """Half-even rounding changes a value by at most half a unit and is idempotent."""
    rounded = money.quantize(amount, scale)
    assert abs(rounded - amount) <= D(1).scaleb(-scale) / 2
    assert money.quantize(rounded, scale) == rounded
    assert money.is_exact_at(rounded, scale)


HOSTILE_CONTEXTS = [
    decimal.Context(prec=3),
    decimal.Context(prec=6, rounding=decimal.ROUND_DOWN, traps=[]),
    decimal.Context(prec=12, rounding=decimal.ROUND_CEILING, Emin=-5, Emax=5, traps=[]),
]


@pytest.mark.parametrize("context", HOSTILE_CONTEXTS, ids=["prec3", "down-no-traps", "tiny-exp"])
@settings(max_examples=60, deadline=None)
@given(units=st.integers(min_value=-(2**63), max_value=2**63 - 1), scale=st.integers(0, 18))
def test_conversions_ignore_a_hostile_thread_context(
    context: decimal.Context, units: int, scale: int
) -> None:
    """Minor units <-> Decimal give the same exact answer whatever the caller's context."""
    expected_amount = money.from_minor_units(units, scale)
    with decimal.localcontext(context):
        amount = money.from_minor_units(units, scale)
        assert amount == expected_amount
        assert money.to_minor_units(amount, scale) == units
        assert money.units_if_exact(amount, scale) == units
    assert Fraction(amount) == Fraction(units, 10**scale)


@pytest.mark.parametrize("context", HOSTILE_CONTEXTS, ids=["prec3", "down-no-traps", "tiny-exp"])
def test_an_amount_that_is_not_exact_at_its_scale_is_refused_in_any_context(
    context: decimal.Context,
) -> None:
    """units_if_exact refuses (None) rather than rounds, and to_minor_units raises."""
    with decimal.localcontext(context):
        assert money.units_if_exact(Decimal("1.0000005"), 6) is None
        assert money.units_if_exact(Decimal("1" * 70), 6) is None  # more digits than EXACT holds
        with pytest.raises(InvalidInputError):
            money.to_minor_units(Decimal("1.0000005"), 6)
