"""Charge models: worked examples computed by hand, validation, and properties."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardbill.errors import InvalidInputError, MoneyTypeError, PriceBookError
from shardbill.rules import (
    ChargeModel,
    FreeAllowance,
    GraduatedTiers,
    MinimumCharge,
    Package,
    PerUnit,
    Tier,
    VolumeTiers,
)

D = Decimal

# 0-1000 at 0.01, 1000-10000 at 0.008, above at 0.005
THREE_TIERS = [
    Tier(start=0, up_to=1000, rate=D("0.01")),
    Tier(start=1000, up_to=10000, rate=D("0.008")),
    Tier(start=10000, up_to=None, rate=D("0.005")),
]


# --- per unit --------------------------------------------------------------------------------


def test_per_unit_worked_examples() -> None:
    """amount = quantity * rate / per, exact."""
    sms = PerUnit(rate=D("0.0075"))
    assert sms.price(D(3)) == D("0.0225")  # 3 * 0.0075
    email = PerUnit(rate=D("0.90"), per=1000)
    assert email.price(D(250)) == D("0.225")  # 250 * 0.90 / 1000
    assert email.unit_price == D("0.0009")  # 0.90 / 1000
    assert email.price(D(1)) == D("0.0009")
    assert sms.price(D(-3)) == D("-0.0225")  # a correction mirrors the charge


def test_per_unit_per_must_be_a_power_of_ten() -> None:
    """per=60 would make the unit price 1/60: refused, pointing at the package model."""
    with pytest.raises(PriceBookError, match=r"power of ten.*package"):
        PerUnit(rate=D("0.60"), per=60)
    assert PerUnit(rate=D(1), per=D("1E+2")).price(D(50)) == D("0.5")


def test_per_unit_refuses_negative_and_float_rates() -> None:
    """A negative rate is a price book error; a float rate is a MoneyTypeError."""
    with pytest.raises(PriceBookError, match="'rate' must be >= 0"):
        PerUnit(rate=D("-0.01"))
    with pytest.raises(MoneyTypeError, match=r"'rate'.*float"):
        PerUnit(rate=0.01)  # type: ignore[arg-type]


def test_models_refuse_float_quantities() -> None:
    """price(0.5) with a float is a MoneyTypeError, for every model."""
    models: list[ChargeModel] = [
        PerUnit(rate=D(1)),
        Package(rate=D(1), size=60),
        GraduatedTiers(tiers=THREE_TIERS),
        VolumeTiers(tiers=THREE_TIERS),
    ]
    for model in models:
        with pytest.raises(MoneyTypeError, match="'quantity'"):
            model.price(0.5)  # type: ignore[arg-type]


# --- package ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "blocks", "amount"),
    [
        (D(0), 0, D("0")),
        (D(1), 1, D("0.014")),
        (D(60), 1, D("0.014")),
        (D(61), 2, D("0.028")),
        (D("60.5"), 2, D("0.028")),
        (D(120), 2, D("0.028")),
        (D(121), 3, D("0.042")),
        (D(-61), -2, D("-0.028")),
    ],
)
def test_package_bills_started_blocks(seconds: Decimal, blocks: int, amount: Decimal) -> None:
    """Per started minute at 0.014: ceil(seconds / 60) * 0.014."""
    voice = Package(rate=D("0.014"), size=60)
    assert voice.blocks(seconds) == blocks
    assert voice.price(seconds) == amount


def test_package_size_must_be_positive() -> None:
    """A block of zero units is meaningless."""
    with pytest.raises(PriceBookError, match="'size' must be > 0"):
        Package(rate=D(1), size=0)


# --- graduated and volume tiers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "amount"),
    [
        (D(0), D(0)),
        (D(500), D("5.00")),  # 500 * 0.01
        (D(1000), D("10.00")),  # 1000 * 0.01
        (D(1500), D("14.000")),  # 10.00 + 500 * 0.008
        (D(12000), D("92.000")),  # 10.00 + 9000 * 0.008 (72) + 2000 * 0.005 (10)
        (D("1000.5"), D("10.004")),  # 10.00 + 0.5 * 0.008
    ],
)
def test_graduated_tiers_worked_examples(quantity: Decimal, amount: Decimal) -> None:
    """Each tier's units at that tier's rate."""
    assert GraduatedTiers(tiers=THREE_TIERS).price(quantity) == amount


@pytest.mark.parametrize(
    ("quantity", "amount"),
    [
        (D(0), D(0)),
        (D(500), D("5.00")),  # 500 * 0.01
        (D(1000), D("10.00")),  # on the boundary: still the first tier, 1000 * 0.01
        (D(1001), D("8.008")),  # all 1001 at 0.008
        (D(12000), D("60.000")),  # all 12000 at 0.005
    ],
)
def test_volume_tiers_worked_examples(quantity: Decimal, amount: Decimal) -> None:
    """All units at the rate of the tier the total falls in."""
    assert VolumeTiers(tiers=THREE_TIERS).price(quantity) == amount


def test_volume_pricing_is_not_monotonic() -> None:
    """One more unit can cost less in total: 1000 -> 10.00 but 1001 -> 8.008 (documented)."""
    volume = VolumeTiers(tiers=THREE_TIERS)
    assert volume.price(D(1001)) < volume.price(D(1000))


def test_tier_start_is_required_in_code() -> None:
    """In code a Tier needs its start (only the price book format fills it in from the last)."""
    with pytest.raises(TypeError):
        Tier(up_to=10, rate=D(1))  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ([], "must not be empty"),
        ([Tier(start=1, up_to=None, rate=D(1))], "tiers\\[0\\] must start at 0"),
        (
            [Tier(start=0, up_to=100, rate=D(1)), Tier(start=90, up_to=None, rate=D(1))],
            "tiers overlap: tiers\\[1\\] starts at 90 but tiers\\[0\\] ends at 100",
        ),
        (
            [Tier(start=0, up_to=100, rate=D(1)), Tier(start=110, up_to=None, rate=D(1))],
            "gap between tiers.*start it at 100",
        ),
        (
            [Tier(start=0, up_to=None, rate=D(1)), Tier(start=0, up_to=None, rate=D(1))],
            "only the last tier may omit up_to",
        ),
        ([Tier(start=0, up_to=100, rate=D(1))], "omit up_to on the last tier"),
    ],
)
def test_bad_tiers_are_refused(tiers: list[Tier], message: str) -> None:
    """Tiers start at 0, touch without gap or overlap, and end unbounded."""
    with pytest.raises(PriceBookError, match=message):
        GraduatedTiers(tiers=tiers)
    with pytest.raises(PriceBookError, match=message):
        VolumeTiers(tiers=tiers)


def test_tier_must_end_after_it_starts() -> None:
    """up_to <= start is refused."""
    with pytest.raises(PriceBookError, match="must end after it starts"):
        Tier(start=10, up_to=10, rate=D(1))


def test_period_models_refuse_negative_totals() -> None:
    """A negative period total (more credits than usage) needs a person, not a formula."""
    with pytest.raises(InvalidInputError, match="period total >= 0"):
        GraduatedTiers(tiers=THREE_TIERS).price(D(-1))


# --- allowance and minimum -------------------------------------------------------------------


def test_free_allowance_worked_examples() -> None:
    """First 1000 free, then 0.90 per thousand: 3500 -> 2500 * 0.0009 = 2.25."""
    allowance = FreeAllowance(free=1000, model=PerUnit(rate=D("0.90"), per=1000))
    assert allowance.price(D(800)) == 0
    assert allowance.price(D(1000)) == 0
    assert allowance.price(D(3500)) == D("2.25")


def test_minimum_charge_worked_examples() -> None:
    """At least 5.00: 120 * 0.01 = 1.20 -> 5.00; 0 -> 5.00; 1000 * 0.01 = 10.00 -> 10.00."""
    minimum = MinimumCharge(minimum=D("5.00"), model=PerUnit(rate=D("0.01")))
    assert minimum.price(D(120)) == D("5.00")
    assert minimum.price(D(0)) == D("5.00")
    assert minimum.price(D(1000)) == D("10.00")


def test_minimum_over_allowance_over_graduated() -> None:
    """Composition: 500 free, then graduated, at least 3.00.

    1700 units: 1200 billable; graduated 1000 * 0.01 + 200 * 0.008 = 11.60 > 3.00.
    600 units: 100 billable; 100 * 0.01 = 1.00 < 3.00 -> 3.00.
    """
    model = MinimumCharge(
        minimum=D("3.00"),
        model=FreeAllowance(free=500, model=GraduatedTiers(tiers=THREE_TIERS)),
    )
    assert model.price(D(1700)) == D("11.60")
    assert model.price(D(600)) == D("3.00")


def test_wrappers_need_a_model() -> None:
    """Allowance and minimum wrap a model with a price() method."""
    with pytest.raises(PriceBookError, match="'model' must be a charge model"):
        FreeAllowance(free=1, model="per_unit")  # type: ignore[arg-type]


# --- properties ------------------------------------------------------------------------------

quantities = st.decimals(min_value=0, max_value=10**7, places=3, allow_nan=False)
rates = st.decimals(min_value=0, max_value=10, places=5, allow_nan=False)


@st.composite
def tier_lists(draw: st.DrawFn) -> list[Tier]:
    bounds = sorted(
        draw(st.sets(st.integers(min_value=1, max_value=10**6), min_size=0, max_size=5))
    )
    starts = [0, *bounds]
    ends: list[int | None] = [*bounds, None]
    return [
        Tier(start=start, up_to=end, rate=draw(rates))
        for start, end in zip(starts, ends, strict=True)
    ]


@pytest.mark.property
@settings(max_examples=150, deadline=None)
@given(tiers=tier_lists(), a=quantities, b=quantities)
def test_graduated_price_is_monotonic(tiers: list[Tier], a: Decimal, b: Decimal) -> None:
    """With non-negative rates, more usage never costs less under graduated tiers."""
    low, high = sorted((a, b))
    model = GraduatedTiers(tiers=tiers)
    assert model.price(low) <= model.price(high)


@pytest.mark.property
@settings(max_examples=150, deadline=None)
@given(tiers=tier_lists(), quantity=quantities)
def test_graduated_equals_the_sum_of_its_tiers(tiers: list[Tier], quantity: Decimal) -> None:
    """Graduated price == sum over tiers of (units inside the tier) * tier rate."""
    expected = D(0)
    for tier in tiers:
        top = quantity if tier.up_to is None else min(quantity, tier.up_to)
        expected += max(top - tier.start, D(0)) * tier.rate
    assert GraduatedTiers(tiers=tiers).price(quantity) == expected


@pytest.mark.property
@settings(max_examples=150, deadline=None)
@given(tiers=tier_lists(), quantity=quantities)
def test_volume_uses_the_rate_of_the_tier_holding_the_total(
    tiers: list[Tier], quantity: Decimal
) -> None:
    """Volume price == total * rate of the first tier whose up_to is >= total."""
    holding = next(t for t in tiers if t.up_to is None or quantity <= t.up_to)
    assert VolumeTiers(tiers=tiers).price(quantity) == quantity * holding.rate


@pytest.mark.property
@settings(max_examples=150, deadline=None)
@given(rate=rates, per=st.sampled_from([1, 10, 1000]), a=quantities, b=quantities)
def test_per_unit_is_additive(rate: Decimal, per: int, a: Decimal, b: Decimal) -> None:
    """Pricing two events and adding equals pricing their sum: safe per event and per period."""
    model = PerUnit(rate=rate, per=per)
    assert model.price(a) + model.price(b) == model.price(a + b)


@pytest.mark.property
@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=3600),
    quantity=st.integers(min_value=0, max_value=10**6),
)
def test_package_blocks_cover_the_quantity_tightly(size: int, quantity: int) -> None:
    """blocks * size >= quantity > (blocks - 1) * size: the fewest blocks that cover it."""
    blocks = int(Package(rate=D(1), size=size).blocks(D(quantity)))
    assert blocks * size >= quantity
    if quantity:
        assert (blocks - 1) * size < quantity
