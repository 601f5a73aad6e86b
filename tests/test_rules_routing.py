"""Routing rules: billing a parent account, splitting a charge by percentage."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardbill.rules import (
    Charge,
    ParentBilling,
    PercentageSplit,
    PriceBook,
    RuleContext,
    RulesEngine,
    Share,
    UsageEvent,
    comms,
    rule,
    split_charge,
)

D = Decimal
T = datetime(2026, 1, 5, tzinfo=UTC)
BOOK = PriceBook(
    name="routing",
    version="1",
    currency="USD",
    parents={11: 10, 12: 10},
    splits={20: (Share(account=20, percent=D(70)), Share(account=21, percent=D(30)))},
)


@rule(name="flat", version="1")
def flat(event: UsageEvent, context: RuleContext) -> Iterable[Charge]:
    """0.0926 per event (two GB SMS segments at 0.0463)."""
    return context.add(context.charge(event, amount=D("0.0926"), quantity=2))


def price(account: int | str, routing: object, **dimensions: str | int) -> tuple[Charge, ...]:
    event = UsageEvent(
        event_id="e-1", account=account, time=T, product="sms", quantity=1, dimensions=dimensions
    )
    engine = RulesEngine(rules=[flat, routing], price_book=BOOK)  # type: ignore[list-item]
    result = engine.price(event)
    assert result.rejection is None, result.rejection
    return result.charges


def test_parent_from_dimension_is_billed_and_subaccount_recorded() -> None:
    """parent_account="1000" on an int account bills int 1000 and records subaccount 7."""
    (c,) = price(7, ParentBilling(), parent_account="1000", country="GB")
    assert c.account == 1000
    assert dict(c.dimensions) == {"country": "GB", "parent_account": "1000", "subaccount": 7}
    assert (c.amount, c.rule) == (D("0.092600"), "flat")  # amount and pricer unchanged


def test_parent_from_price_book_mapping() -> None:
    """Without a dimension, the price book's parents table names the payer."""
    (c,) = price(11, ParentBilling())
    assert (c.account, c.dimensions.get("subaccount")) == (10, 11)


def test_parent_dimension_then_mapping_resolves_to_the_root() -> None:
    """A dimension naming a listed subaccount bills that subaccount's root payer."""
    (c,) = price(99, ParentBilling(), parent_account=12)
    assert c.account == 10


def test_account_without_parent_is_left_alone() -> None:
    """No dimension and no mapping: the rule does not apply (the charge is unchanged)."""
    (c,) = price(5, ParentBilling())
    assert c.account == 5
    assert "subaccount" not in c.dimensions


def test_parent_billing_options() -> None:
    """The dimension name, the recording dimension and the mapping are configurable."""
    routing = ParentBilling(dimension="billed_to", record_as=None, parents={"x": "y"})
    (c,) = price("a", routing, billed_to="x")
    assert c.account == "y"
    assert dict(c.dimensions) == {"billed_to": "x"}


def test_non_numeric_parent_for_an_int_account_is_rejected() -> None:
    """An int account cannot have the parent "acme": that event is rejected, saying why."""
    event = UsageEvent(
        event_id="e-1",
        account=7,
        time=T,
        product="sms",
        quantity=1,
        dimensions={"parent_account": "acme"},
    )
    result = RulesEngine(rules=[flat, ParentBilling()], price_book=BOOK).price(event)
    assert result.rejection is not None
    assert result.rejection.rule == "shardbill.parent_account@1"
    assert "must name an integer account" in result.rejection.reason


def test_percentage_split_worked_example() -> None:
    """0.092600 split 70/30: 92600 micro-dollars * 0.7 = 64820, * 0.3 = 27780; quantity 1.4/0.6."""
    first, second = price(20, PercentageSplit())
    assert (first.account, first.amount, first.quantity) == (20, D("0.064820"), D("1.4"))
    assert (second.account, second.amount, second.quantity) == (21, D("0.027780"), D("0.6"))
    assert first.amount + second.amount == D("0.092600")


def test_split_charge_gives_leftover_units_by_largest_remainder() -> None:
    """1 micro-unit in three equal shares: 1, 0, 0 (the tie goes to the first share)."""
    c = Charge(
        event_id="e",
        account=1,
        product="sms",
        quantity=1,
        amount=D("0.000001"),
        currency="USD",
        time=T,
        rule="r",
        rule_version="1",
    )
    third = D(100) / 3
    shares = [Share(account=a, percent=third.quantize(D("0.01"))) for a in (1, 2, 3)]
    parts = split_charge(c, shares)
    assert [p.amount for p in parts] == [D("0.000001"), D(0), D(0)]
    assert [p.account for p in parts] == [1, 2, 3]


def test_split_leaves_other_accounts_alone() -> None:
    """Charges of accounts without a split pass through (the rule returns None)."""
    (c,) = price(5, PercentageSplit())
    assert (c.account, c.amount) == (5, D("0.092600"))


def test_comms_reseller_split_and_parent_chain() -> None:
    """In the comms chain, 900100's SMS is split 70/30 and 900002 bills to 900000."""
    engine = comms.engine()
    sms = UsageEvent(
        event_id="e-r",
        account=900100,
        time=T,
        product="sms",
        quantity=1,
        dimensions={"country": "US"},
    )
    # one US segment at 0.0079 = 7900 micro-dollars: 70% 5530, 30% 2370
    assert [(c.account, c.amount) for c in engine.price(sms).charges] == [
        (900100, D("0.005530")),
        (900200, D("0.002370")),
    ]
    child = UsageEvent(
        event_id="e-c",
        account=900002,
        time=T,
        product="sms",
        quantity=1,
        dimensions={"country": "US"},
    )
    assert [c.account for c in engine.price(child).charges] == [900000]


amounts = st.integers(min_value=-(10**12), max_value=10**12).map(lambda u: D(u).scaleb(-6))
share_lists = st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=6).map(
    lambda ws: [Share(account=i, percent=D(w) * 100 / sum(ws)) for i, w in enumerate(ws)]
)


@pytest.mark.property
@settings(max_examples=150, deadline=None)
@given(
    amount=amounts,
    quantity=st.integers(0, 10**6),
    shares=share_lists,
)
def test_split_parts_always_sum_to_the_whole(
    amount: Decimal, quantity: int, shares: list[Share]
) -> None:
    """Amount and quantity parts sum exactly to the charge's; each amount within 1 unit."""
    c = Charge(
        event_id="e",
        account=0,
        product="sms",
        quantity=quantity,
        amount=amount,
        currency="USD",
        time=T,
        rule="r",
        rule_version="1",
    )
    parts = split_charge(c, shares)
    assert sum((p.amount for p in parts), D(0)) == amount
    assert sum((p.quantity for p in parts), D(0)) == quantity
    total = sum((s.percent for s in shares), D(0))
    unit = D("0.000001")
    for part, share in zip(parts, shares, strict=True):
        assert abs(part.amount - amount * share.percent / total) < unit
        assert part.amount_minor == part.amount.scaleb(6)
