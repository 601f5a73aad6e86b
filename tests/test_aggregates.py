"""Aggregate table specs, projections and measure values (pure)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from shardbill.dialects.base import MergeKind
from shardbill.errors import ConfigurationError, InvalidInputError, MoneyTypeError
from shardbill.rules import Charge
from shardbill.tables.aggregates import (
    Account,
    AggregateTable,
    Amount,
    BigInt,
    Count,
    Date,
    Day,
    Dimension,
    KeyColumn,
    Measure,
    Month,
    Quantity,
    VarChar,
)


def charge(**overrides: object) -> Charge:
    """A valid charge, with fields replaced by ``overrides``."""
    fields: dict[str, object] = {
        "event_id": "e-1",
        "account": 42,
        "product": "sms",
        "quantity": Decimal("3"),
        "amount": Decimal("0.0225"),
        "currency": "USD",
        "time": dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.UTC),
        "rule": "test",
        "rule_version": "1",
        "dimensions": {"country": "DE"},
    }
    fields.update(overrides)
    return Charge(**fields)  # type: ignore[arg-type]


def table(**overrides: object) -> AggregateTable:
    """A small valid table spec."""
    fields: dict[str, object] = {
        "name": "t",
        "keys": (KeyColumn(name="account_id", type=BigInt(), projection=Account()),),
        "measures": (Measure(name="amount", value=Amount(scale=6)),),
    }
    fields.update(overrides)
    return AggregateTable(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "t; DROP TABLE x", "a" * 65, "tab`le"])
def test_unsafe_table_names_are_refused(name: str) -> None:
    """A table name that is not a plain identifier is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match="table name"):
        table(name=name)


def test_reserved_and_duplicate_columns_are_refused() -> None:
    """The slot column name is reserved, and a column may be declared once only."""
    with pytest.raises(ConfigurationError, match="reserved"):
        KeyColumn(name="sb_slot", type=BigInt(), projection=Account())
    with pytest.raises(ConfigurationError, match="declared twice"):
        table(measures=(Measure(name="account_id", value=Count()),))


def test_a_non_commutative_merge_is_refused() -> None:
    """REPLACE would make totals depend on delivery order, so measures refuse it."""
    with pytest.raises(ConfigurationError, match="commutative"):
        Measure(name="x", value=Count(), merge=MergeKind.REPLACE)


def test_day_and_month_buckets_follow_the_configured_zone() -> None:
    """23:30 UTC on 30 November is 1 December in Berlin: the buckets follow the zone."""
    c = charge()
    assert Day()(c) == dt.date(2026, 11, 30)
    assert Month()(c) == dt.date(2026, 11, 1)
    berlin = ZoneInfo("Europe/Berlin")
    assert Day(tz=berlin)(c) == dt.date(2026, 12, 1)
    assert Month(tz=berlin)(c) == dt.date(2026, 12, 1)


def test_amounts_and_quantities_become_exact_integer_units() -> None:
    """0.0225 at scale 6 is 22500 units; more decimals than the scale is an error."""
    assert Amount(scale=6)(charge()) == 22_500
    assert Quantity(scale=0)(charge()) == 3
    with pytest.raises(InvalidInputError, match="more than 2 decimal places"):
        Amount(scale=2)(charge())


def test_a_missing_dimension_without_default_rejects_with_the_fix() -> None:
    """A charge lacking a dimension column's value is refused, saying how to fix it."""
    c = charge(dimensions={})
    with pytest.raises(InvalidInputError, match="default"):
        Dimension("country")(c)
    assert Dimension("country", default="--")(c) == "--"


def test_key_values_are_checked_against_column_types() -> None:
    """Wrong types, too-long text and out-of-range integers are refused by name."""
    with pytest.raises(InvalidInputError, match="'account_id'"):
        BigInt().check("42", column="account_id")
    with pytest.raises(InvalidInputError, match="outside"):
        BigInt().check(2**63, column="account_id")
    with pytest.raises(InvalidInputError, match="bool"):
        BigInt().check(True, column="flag")
    with pytest.raises(InvalidInputError, match="3 characters"):
        VarChar(2).check("abc", column="c")
    with pytest.raises(InvalidInputError, match=r"datetime\.date"):
        Date().check(dt.datetime(2026, 1, 1, tzinfo=dt.UTC), column="day")


def test_a_float_amount_is_a_money_type_error() -> None:
    """A float that slipped past the charge type is still refused at the measure."""

    class Leaky:
        event_id = "e-f"
        amount = 0.1

    with pytest.raises(MoneyTypeError, match="float"):
        Amount()(Leaky())  # type: ignore[arg-type]


def test_table_key_and_deltas_of_a_charge() -> None:
    """key_of and deltas_of read the declared projections and measures, in order."""
    t = table(
        keys=(
            KeyColumn(name="account_id", type=BigInt(), projection=Account()),
            KeyColumn(name="month", type=Date(), projection=Month()),
        ),
        measures=(
            Measure(name="amount", value=Amount(scale=6)),
            Measure(name="n", value=Count()),
            Measure(name="peak", value=Amount(scale=6), merge="max"),
        ),
    )
    assert t.key_of(charge()) == (42, dt.date(2026, 11, 1))
    assert t.deltas_of(charge()) == (22_500, 1, 22_500)
    assert t.columns == ("account_id", "month", "sb_slot", "amount", "n", "peak")
