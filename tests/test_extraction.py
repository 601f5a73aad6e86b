"""The compiled row extractor gives exactly what the declared tables say, or their error (pure).

The oracle is independent of the extractor: each table's own ``key_of`` and
``deltas_of`` for the rows, :func:`shardbill.writer.fingerprints.canonical_text` for
the fingerprint text. Charges are drawn valid and invalid (wrong types, float
money, naive or foreign-zone times, non-ASCII and over-long text, values out
of range), so both the compiled path and its fall-back are exercised.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from zoneinfo import ZoneInfo

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardbill.dialects.base import MergeKind
from shardbill.errors import InvalidInputError, MoneyTypeError
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
    Product,
    Quantity,
    VarChar,
)
from shardbill.tables.catalog import billing_tables
from shardbill.writer.extraction import RowExtractor
from shardbill.writer.fingerprints import canonical_text


@attrs.frozen
class FreeCharge:
    """A ChargeLike that holds anything (shardbill's Charge would refuse bad values)."""

    event_id: str
    account: object
    product: object
    dimensions: Mapping[str, object]
    quantity: object
    amount: object
    currency: object
    time: object


@attrs.frozen
class Channel:
    """A projection shardbill does not know: the compiled path must call it."""

    name: str = attrs.field(default="channel", init=False)

    def __call__(self, charge: FreeCharge, /) -> object:
        if charge.product == "boom":
            raise InvalidInputError(f"charge {charge.event_id!r}: no channel for 'boom'")
        return charge.dimensions.get("channel", "web")


BERLIN = ZoneInfo("Europe/Berlin")
TOKYO = ZoneInfo("Asia/Tokyo")

CUSTOM = (
    AggregateTable(
        name="by_channel",
        keys=(
            KeyColumn(name="account_id", type=VarChar(12), projection=Account()),
            KeyColumn(name="day", type=Date(), projection=Day(tz=BERLIN)),
            KeyColumn(name="channel", type=VarChar(6), projection=Channel()),
        ),
        measures=(
            Measure(name="smallest", value=Amount(scale=2), merge=MergeKind.MIN),
            Measure(name="n", value=Count()),
        ),
    ),
    AggregateTable(
        name="a_month",  # sorts first: the canonical order is by name, not declaration
        keys=(
            KeyColumn(name="account_id", type=VarChar(12), projection=Account()),
            KeyColumn(name="month", type=Date(), projection=Month(tz=TOKYO)),
            KeyColumn(name="tier", type=BigInt(), projection=Dimension("tier", default=0)),
            KeyColumn(name="product", type=VarChar(4), projection=Product()),
        ),
        measures=(Measure(name="units", value=Quantity(scale=0)),),
    ),
)

TABLE_SETS = {"billing": billing_tables(), "custom": CUSTOM}

_text = st.one_of(
    st.sampled_from(["sms", "voice", "USD", "EUR", "DE", "web", "app", "boom", "", "acct-7"]),
    st.text(max_size=14),  # non-ASCII, lone surrogates, over-long
    st.integers(-5, 5),
    st.none(),
)
_decimal = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-10**6,
                max_value=10**6),
    st.sampled_from([Decimal("1E+30"), Decimal("0.0000001"), Decimal("NaN"), Decimal("-Infinity"),
                     Decimal("-0")]),
    st.floats(allow_nan=False, width=32),
    st.integers(-3, 3),
)  # fmt: skip
_time = st.one_of(
    st.datetimes(timezones=st.sampled_from([dt.UTC, BERLIN, TOKYO])),
    st.datetimes(),  # naive
    st.just("2026-11-27"),
)
charges = st.builds(
    FreeCharge,
    event_id=st.just("e-1"),
    account=st.one_of(st.integers(-(2**64), 2**64), _text, st.just(True), st.floats(width=16)),
    product=_text,
    dimensions=st.dictionaries(st.sampled_from(["country", "channel", "tier"]), _text, max_size=3),
    quantity=_decimal,
    amount=_decimal,
    currency=_text,
    time=_time,
)


_ERRORS = (InvalidInputError, MoneyTypeError, TypeError, ValueError, AttributeError)


def _expected(tables: tuple[AggregateTable, ...], charge: FreeCharge) -> object:
    """The rows, or every error some column or measure of some table raises for ``charge``."""
    errors: set[tuple[type, str]] = set()
    for t in tables:
        for column in t.keys:
            try:
                column.type.check(column.projection(charge), column=column.name)  # type: ignore[arg-type]
            except _ERRORS as exc:
                errors.add((type(exc), str(exc)))
        try:
            t.deltas_of(charge)  # type: ignore[arg-type]
        except _ERRORS as exc:
            errors.add((type(exc), str(exc)))
    if errors:
        return errors
    return [(i, t.key_of(charge), t.deltas_of(charge)) for i, t in enumerate(tables)]  # type: ignore[arg-type]


def _extracted(extractor: RowExtractor, charge: FreeCharge) -> object:
    try:
        rows, text = extractor.extract(charge)  # type: ignore[arg-type]
    except _ERRORS as exc:
        return (type(exc), str(exc))
    assert text == canonical_text(rows, extractor.tables)
    return rows


@pytest.mark.parametrize("name", sorted(TABLE_SETS))
@settings(max_examples=400, deadline=None)
@given(charge=charges)
def test_extract_matches_the_tables_own_answer(name: str, charge: FreeCharge) -> None:
    """Rows and fingerprint text equal the tables' own; an error is one the tables raise."""
    tables = TABLE_SETS[name]
    got = _extracted(RowExtractor(tables), charge)
    expected = _expected(tables, charge)
    if isinstance(expected, set):
        assert got in expected
    else:
        assert got == expected


@pytest.mark.parametrize("name", sorted(TABLE_SETS))
@settings(max_examples=200, deadline=None)
@given(
    account=st.integers(0, 10**10),
    amount=st.decimals(places=2, min_value=-1000, max_value=1000),
    moment=st.datetimes(min_value=dt.datetime(2000, 1, 1), timezones=st.just(dt.UTC)),
)
def test_valid_charges_take_the_compiled_path(
    name: str, account: int, amount: Decimal, moment: dt.datetime
) -> None:
    """A valid charge never falls back: the compiled function answers it alone."""
    tables = TABLE_SETS[name]
    extractor = RowExtractor(tables)
    charge = FreeCharge(
        event_id="e-1",
        account=account if name == "billing" else f"a{account}",
        product="sms",
        dimensions={"country": "DE", "tier": 2},
        quantity=Decimal(3),
        amount=amount,
        currency="USD",
        time=moment,
    )
    compiled = extractor._compiled(charge)  # the fast path itself is under test
    assert compiled is not None
    assert compiled[0] == _expected(tables, charge)


def test_the_generated_source_holds_no_configured_text() -> None:
    """Table, column and dimension names reach the generated code only as namespace names."""
    source = RowExtractor(CUSTOM).source
    for text in ("by_channel", "a_month", "tier", "channel", "Europe/Berlin"):
        assert text not in source


def test_duplicate_table_names_are_refused() -> None:
    """Two tables with one name would make the canonical order ambiguous."""
    with pytest.raises(ValueError, match="distinct"):
        RowExtractor((CUSTOM[0], CUSTOM[0]))
