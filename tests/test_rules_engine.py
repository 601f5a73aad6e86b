"""RulesEngine: the rule chain protocol, per-event rejection, rounding once, discovery."""

from __future__ import annotations

import decimal
import pickle
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardbill.errors import ConfigurationError, InvalidInputError, RuleError
from shardbill.rules import (
    Charge,
    FunctionRule,
    PriceBook,
    PriceBookRule,
    PricingSettings,
    Rule,
    RuleContext,
    RulesEngine,
    UsageEvent,
    comms,
    load_rule,
    rule,
)

D = Decimal
T = datetime(2026, 1, 5, tzinfo=UTC)
BOOK = PriceBook(name="test", version="1", currency="USD")


def make_event(event_id: str = "e-1", product: str = "sms", quantity: int = 1) -> UsageEvent:
    return UsageEvent(event_id=event_id, account=42, time=T, product=product, quantity=quantity)


def fixed(amount: str, name: str = "fixed") -> FunctionRule:
    """A rule that adds one charge of ``amount`` to every event."""

    @rule(name=name, version="1")
    def add(event: UsageEvent, context: RuleContext) -> Iterable[Charge]:
        return context.add(context.charge(event, amount=D(amount)))

    return add


# --- the chain protocol ----------------------------------------------------------------------


def test_charge_records_rule_name_and_version_and_event_fields() -> None:
    """context.charge fills in event id, time, account, product and the rule's name@version."""
    engine = RulesEngine(rules=[fixed("0.5", name="acme.flat")], price_book=BOOK)
    (c,) = engine.price(make_event()).charges
    assert (c.event_id, c.time, c.account, c.product) == ("e-1", T, 42, "sms")
    assert (c.rule, c.rule_version, c.currency, c.scale) == ("acme.flat", "1", "USD", 6)
    assert str(c.amount) == "0.500000"


def test_amount_is_rounded_once_with_the_configured_rounding() -> None:
    """0.0000125 is a tie at 6 places: half-even (default) gives 0.000012, half-up 0.000013."""
    event = make_event()
    even = RulesEngine(rules=[fixed("0.0000125")], price_book=BOOK)
    assert even.price(event).charges[0].amount == D("0.000012")
    up = RulesEngine(
        rules=[fixed("0.0000125")],
        price_book=BOOK,
        settings=PricingSettings(scale=6, rounding=decimal.ROUND_HALF_UP),
    )
    assert up.price(event).charges[0].amount == D("0.000013")
    coarse = RulesEngine(
        rules=[fixed("0.0000125")], price_book=BOOK, settings=PricingSettings(scale=4)
    )
    assert coarse.price(event).charges[0].amount == D("0.0000")
    assert coarse.price(event).charges[0].scale == 4


def test_rules_see_the_charges_of_earlier_rules() -> None:
    """A later rule receives the earlier rules' charges and may replace them."""
    seen: list[int] = []

    @rule(name="double", version="1")
    def double(event: UsageEvent, context: RuleContext) -> Iterable[Charge]:
        seen.append(len(context.charges))
        return [attrs.evolve(c, amount=c.amount * 2) for c in context.charges]

    engine = RulesEngine(rules=[fixed("0.25"), double], price_book=BOOK)
    assert [c.amount for c in engine.price(make_event()).charges] == [D("0.5")]
    assert seen == [1]


def test_none_passes_charges_on_and_empty_means_no_charges() -> None:
    """None leaves the list unchanged; an empty list drops it (accepted, with no charges)."""

    @rule(name="skip", version="1")
    def skip(event: UsageEvent, context: RuleContext) -> None:
        return None

    @rule(name="free", version="1")
    def free(event: UsageEvent, context: RuleContext) -> list[Charge]:
        return []

    passes = RulesEngine(rules=[fixed("1"), skip], price_book=BOOK).price(make_event())
    assert [c.amount for c in passes.charges] == [D(1)]
    dropped = RulesEngine(rules=[fixed("1"), free], price_book=BOOK).price(make_event())
    assert dropped.accepted
    assert dropped.charges == ()


def test_an_event_no_rule_applies_to_is_rejected_as_unpriced() -> None:
    """If every rule returns None the event is rejected by the engine (rule None)..."""

    @rule(name="skip", version="1")
    def skip(event: UsageEvent, context: RuleContext) -> None:
        return None

    result = RulesEngine(rules=[skip], price_book=BOOK).price(make_event(product="fax"))
    assert not result.accepted
    assert result.rejection is not None
    assert result.rejection.rule is None
    assert "no rule in the chain (skip) priced product 'fax'" in result.rejection.reason
    # ...unless the engine is told that unpriced events are free
    lenient = RulesEngine(rules=[skip], price_book=BOOK, reject_unpriced=False)
    assert lenient.price(make_event(product="fax")).accepted


@pytest.mark.property
@settings(max_examples=50, deadline=None)
@given(order=st.permutations(["a", "b", "c", "d"]))
def test_rule_order_is_honoured(order: list[str]) -> None:
    """Charges appear in chain order, whatever the order is."""
    engine = RulesEngine(rules=[fixed("1", name=name) for name in order], price_book=BOOK)
    assert [c.rule for c in engine.price(make_event()).charges] == order


def test_routing_before_pricing_sees_nothing() -> None:
    """Order matters: a re-routing rule placed before the pricer has no charges to move."""
    moved = RulesEngine(rules=[fixed("1"), _to_account_7], price_book=BOOK)
    not_moved = RulesEngine(rules=[_to_account_7, fixed("1")], price_book=BOOK)
    assert [c.account for c in moved.price(make_event()).charges] == [7]
    assert [c.account for c in not_moved.price(make_event()).charges] == [42]


@rule(name="to7", version="1")
def _to_account_7(event: UsageEvent, context: RuleContext) -> list[Charge] | None:
    if not context.charges:
        return None
    return [attrs.evolve(c, account=7) for c in context.charges]


# --- failures are per event ------------------------------------------------------------------


@rule(name="flaky", version="2.1")
def _fails_on_odd(event: UsageEvent, context: RuleContext) -> Iterable[Charge] | None:
    if int(event.event_id.rsplit("-", 1)[1]) % 2:
        raise KeyError("no tariff for this odd event")
    return None


def test_failing_rule_rejects_its_event_with_name_version_reason_and_type() -> None:
    """The rejection says which rule (name@version), why, and the exception type."""
    engine = RulesEngine(rules=[fixed("1"), _fails_on_odd], price_book=BOOK)
    result = engine.price(make_event("e-1"))
    assert result.charges == ()
    assert result.rejection is not None
    assert result.rejection.rule == "flaky@2.1"
    assert result.rejection.error_type is KeyError
    assert "no tariff for this odd event" in result.rejection.reason
    error = result.rejection.to_error()
    assert isinstance(error, RuleError)
    assert error.rule == "flaky@2.1"
    assert "event 'e-1' rejected by flaky@2.1: KeyError" in str(error)


@pytest.mark.property
@settings(max_examples=50, deadline=None)
@given(numbers=st.lists(st.integers(0, 10_000), unique=True, max_size=40))
def test_a_failing_rule_rejects_only_its_events(numbers: list[int]) -> None:
    """Odd events are rejected; every even event is priced exactly as without the flaky rule."""
    events = [make_event(f"e-{n}") for n in numbers]
    batch = RulesEngine(rules=[fixed("1"), _fails_on_odd], price_book=BOOK).price_batch(events)
    assert [r.event_id for r in batch.rejected] == [f"e-{n}" for n in numbers if n % 2]
    assert {r.rule for r in batch.rejected} <= {"flaky@2.1"}
    expected = RulesEngine(rules=[fixed("1")], price_book=BOOK).price_batch(
        [e for e, n in zip(events, numbers, strict=True) if n % 2 == 0]
    )
    assert batch.charges == expected.charges
    assert batch.events == len(numbers)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (lambda e, c: ["not a charge"], "must return Charge objects, not str"),
        (lambda e, c: 5, "not iterable"),
        (
            lambda e, c: [attrs.evolve(c.charge(e, amount=1), event_id="other")],
            "charge for event 'other' while pricing 'e-1'",
        ),
        (
            lambda e, c: [attrs.evolve(c.charge(e, amount=1), time=T + timedelta(seconds=1))],
            "a charge carries its event's time",
        ),
        (
            lambda e, c: [attrs.evolve(c.charge(e, amount=1), scale=4)],
            "scale 4, but the engine prices at scale 6",
        ),
        (lambda e, c: [c.charge(e, amount=0.5)], "'amount' must be a Decimal or an int, not float"),
    ],
)
def test_a_rule_returning_bad_charges_is_rejected(returned: object, message: str) -> None:
    """Garbage from a rule (non-charges, foreign ids, wrong time or scale, floats) rejects."""
    bad = FunctionRule(function=returned, name="bad", version="1")  # type: ignore[arg-type]
    result = RulesEngine(rules=[bad], price_book=BOOK).price(make_event())
    assert result.rejection is not None
    assert result.rejection.rule == "bad@1"
    assert message in result.rejection.reason


def test_correction_needs_a_product_that_accepts_them() -> None:
    """A correction is refused for a product whose price book entry does not allow them."""
    engine = comms.engine()
    credit = UsageEvent(
        event_id="c-1",
        account=7,
        time=T,
        product="sms",
        quantity=-1,
        correction=True,
        dimensions={"country": "US"},
    )
    rejection = engine.price(credit).rejection
    assert rejection is not None
    assert rejection.rule is None
    assert rejection.error_type is InvalidInputError
    assert "corrections = true under [products.sms]" in rejection.reason
    voice_credit = attrs.evolve(credit, product="voice", quantity=D(-61), dimensions={})
    # voice accepts corrections: -61 s is -2 started minutes at the default 0.0140
    assert [c.amount for c in engine.price(voice_credit).charges] == [D("-0.028000")]


def test_price_batch_refuses_items_that_are_not_events() -> None:
    """A dict in place of an event is a programming error, reported with its position."""
    with pytest.raises(InvalidInputError, match=r"item 1 is not a UsageEvent but dict"):
        RulesEngine(rules=[fixed("1")], price_book=BOOK).price_batch(
            [make_event(), {"event_id": "e-2"}]  # type: ignore[list-item]
        )


# --- building the chain ----------------------------------------------------------------------


def test_chain_refuses_duplicates_and_non_rules() -> None:
    """A name twice in the chain, or an object that is not a rule, is a configuration error."""
    with pytest.raises(ConfigurationError, match=r"rules\[1\].*'fixed' appears twice"):
        RulesEngine(rules=[fixed("1"), fixed("2")], price_book=BOOK)
    with pytest.raises(ConfigurationError, match=r"rules\[0\] is not a rule"):
        RulesEngine(rules=[lambda e, c: None], price_book=BOOK)  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="'price_book' must be a PriceBook"):
        RulesEngine(rules=[], price_book="comms.toml")  # type: ignore[arg-type]


def test_rule_decorator_validates_name_and_version() -> None:
    """Rule names are tokens and versions non-empty."""
    with pytest.raises(InvalidInputError, match="'name' must be a token"):
        rule(name="has space", version="1")(lambda e, c: None)
    with pytest.raises(InvalidInputError, match="'version' must not be empty"):
        rule(name="ok", version="")(lambda e, c: None)


def test_builtin_rules_satisfy_the_protocol() -> None:
    """Function rules, configured classes and routing rules are all Rules."""
    for item in comms.rules():
        assert isinstance(item, Rule)
    assert isinstance(PriceBookRule(), Rule)


def test_builtins_are_discovered_through_entry_points() -> None:
    """The built-in rules are published under shardbill.rules like any third-party rule."""
    assert load_rule("comms.sms") is comms.sms
    engine = RulesEngine.from_entry_points(names=comms.RULE_NAMES, price_book=comms.price_book())
    assert [r.name for r in engine.rules] == list(comms.RULE_NAMES)
    assert engine.rules == comms.engine().rules


def test_unknown_rule_name_lists_the_known_ones() -> None:
    """An unknown name is a configuration error listing what is installed."""
    with pytest.raises(ConfigurationError, match=r"unknown rule 'comms\.fax'.*comms\.sms"):
        RulesEngine.from_entry_points(names=["comms.fax"], price_book=BOOK)


def test_generic_price_book_rule_prices_listed_products_only() -> None:
    """shardbill.price_book prices what the book lists and does not apply to anything else."""
    engine = RulesEngine(rules=[load_rule("shardbill.price_book")], price_book=comms.price_book())
    email = make_event(product="email", quantity=250)
    # 250 * 0.90 / 1000 = 0.225
    assert [c.amount for c in engine.price(email).charges] == [D("0.225000")]
    assert engine.price(make_event(product="fax")).rejection is not None


def test_engine_survives_pickling() -> None:
    """An engine (rules, price book) can be sent to a worker process and prices the same."""
    engine = comms.engine()
    copy = pickle.loads(pickle.dumps(engine))  # noqa: S301 - bytes this test just made
    event = make_event(product="email", quantity=250)
    assert copy.price(event) == engine.price(event)
    assert copy.price_book == engine.price_book


def test_local_function_rules_refuse_pickling_with_the_fix() -> None:
    """A rule around a closure cannot cross processes; the error says to define it at top level."""
    with pytest.raises(pickle.PicklingError, match="define rule functions at module level"):
        pickle.dumps(fixed("1"))


def test_pricing_ignores_a_hostile_thread_context() -> None:
    """The engine prices in its own context: a caller's low precision cannot round a price."""
    from shardbill.rules import comms
    from shardbill.workloads.synthetic import Traffic

    events = list(Traffic(model="skewed", events=300, seed=3).distinct())
    engine = comms.engine()
    expected = engine.price_batch(events).charges
    with decimal.localcontext(decimal.Context(prec=3, rounding=decimal.ROUND_UP, traps=[])):
        assert engine.price_batch(events).charges == expected
        assert [engine.price(e).charges for e in events[:20]] == [
            tuple(c for c in expected if c.event_id == e.event_id) for e in events[:20]
        ]
