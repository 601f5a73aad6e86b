"""The comms example rule set: worked examples, determinism, an independent oracle, no floats."""

from __future__ import annotations

import math
import random
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from importlib import resources

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardbill.rules import Charge, RulesEngine, UsageEvent, comms

D = Decimal
T = datetime(2026, 1, 5, tzinfo=UTC)


def sms(chars: int | None = None, encoding: str | None = None, **dims: str | int) -> UsageEvent:
    dimensions: dict[str, str | int] = dict(dims)
    if chars is not None:
        dimensions["characters"] = chars
    if encoding is not None:
        dimensions["encoding"] = encoding
    return UsageEvent(
        event_id="e-1", account=7, time=T, product="sms", quantity=1, dimensions=dimensions
    )


def amounts(event: UsageEvent) -> list[Decimal]:
    result = comms.engine().price(event)
    assert result.rejection is None, result.rejection
    return [c.amount for c in result.charges]


@pytest.mark.parametrize(
    ("characters", "encoding", "expected"),
    [
        (0, "gsm7", 1),
        (160, "gsm7", 1),
        (161, "gsm7", 2),  # 161 / 153 -> 2
        (306, "gsm7", 2),  # 2 * 153
        (307, "gsm7", 3),
        (70, "ucs2", 1),
        (71, "ucs2", 2),  # 71 / 67 -> 2
        (135, "ucs2", 3),  # 2 * 67 = 134 < 135
    ],
)
def test_segments_worked_examples(characters: int, encoding: str, expected: int) -> None:
    """GSM-7: 160 in one segment, 153 per segment beyond; UCS-2: 70, then 67."""
    assert comms.segments(characters, encoding) == expected


def test_sms_prices_per_segment_by_country() -> None:
    """200 GSM characters to GB: 2 segments * 0.0463 = 0.0926; charge keeps only the country."""
    (c,) = comms.engine().price(sms(200, country="GB")).charges
    assert (c.quantity, c.amount) == (D(2), D("0.092600"))
    assert dict(c.dimensions) == {"country": "GB"}
    assert c.rule == "comms.sms"


def test_sms_ucs2_unknown_country_and_no_length() -> None:
    """UCS-2 71 chars to US is 2 * 0.0079; ZZ pays the 0.05 default; no length is 1 segment."""
    assert amounts(sms(71, "ucs2", country="US")) == [D("0.015800")]
    assert amounts(sms(country="ZZ")) == [D("0.050000")]
    assert amounts(sms(chars=100)) == [D("0.050000")]  # no country: the default rate


def test_sms_csv_style_string_length_is_accepted() -> None:
    """characters="200" (from a CSV row) counts like the int 200."""
    assert amounts(sms(country="GB", characters="200")) == [D("0.092600")]


def test_sms_bad_encoding_rejects_the_event() -> None:
    """An unknown encoding rejects that event with the comms.sms rule named."""
    rejection = comms.engine().price(sms(10, "ascii", country="US")).rejection
    assert rejection is not None
    assert rejection.rule == "comms.sms@1"
    assert "'encoding' must be one of gsm7, ucs2" in rejection.reason


def test_voice_per_started_minute_by_direction() -> None:
    """61 s outbound: 2 minutes * 0.0140 = 0.028; 59 s inbound: 1 * 0.0085."""
    call = UsageEvent(
        event_id="v-1",
        account=7,
        time=T,
        product="voice",
        quantity=61,
        dimensions={"direction": "outbound", "country": "US", "carrier": "x"},
    )
    (c,) = comms.engine().price(call).charges
    assert (c.amount, c.quantity) == (D("0.028000"), D(61))
    assert dict(c.dimensions) == {"direction": "outbound", "country": "US"}
    inbound = attrs.evolve(call, quantity=D(59), dimensions={"direction": "inbound"})
    assert amounts(inbound) == [D("0.008500")]


def test_email_pro_rata_per_thousand() -> None:
    """250 emails at 0.90 per thousand: 250 * 0.0009 = 0.225, charged with no dimensions."""
    send = UsageEvent(
        event_id="m-1",
        account=7,
        time=T,
        product="email",
        quantity=250,
        dimensions={"campaign": "jan"},
    )
    (c,) = comms.engine().price(send).charges
    assert c.amount == D("0.225000")
    assert dict(c.dimensions) == {}


def test_subaccount_bills_to_parent() -> None:
    """parent_account on the event sends the charge to the parent, recording the subaccount."""
    (c,) = comms.engine().price(sms(country="US", parent_account=1000)).charges
    assert (c.account, c.dimensions.get("subaccount")) == (1000, 7)


def test_unknown_product_is_rejected_as_unpriced() -> None:
    """A product no rule prices (fax) is rejected, not billed as free."""
    fax = UsageEvent(event_id="f-1", account=7, time=T, product="fax", quantity=1)
    rejection = comms.engine().price(fax).rejection
    assert rejection is not None
    assert "priced product 'fax'" in rejection.reason


# --- a seeded synthetic stream ---------------------------------------------------------------

COUNTRIES = ("US", "CA", "GB", "DE", "FR", "IN", "BR", "JP", "ZZ")


def synthetic_events(seed: int, count: int) -> Iterator[UsageEvent]:
    """A small seeded mix of SMS, voice (with corrections) and email, incl. routed accounts."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for index in range(count):
        account = rng.choice([rng.randrange(1, 200), 900001, 900002, 900100])
        time = start + timedelta(seconds=index * 7)
        dims: dict[str, str | int] = {"country": rng.choice(COUNTRIES)}
        if rng.random() < 0.1:
            dims["parent_account"] = str(rng.randrange(500, 510))
        kind = rng.random()
        if kind < 0.6:
            dims["characters"] = rng.randrange(0, 500)
            dims["encoding"] = rng.choice(("gsm7", "gsm7", "ucs2"))
            product, quantity, correction = "sms", D(rng.randrange(1, 4)), False
        elif kind < 0.85:
            dims["direction"] = rng.choice(("inbound", "outbound"))
            correction = rng.random() < 0.05
            seconds = rng.randrange(1, 3600)
            product, quantity = "voice", D(-seconds if correction else seconds)
        else:
            product, quantity, correction = "email", D(rng.randrange(1, 5000)), False
        yield UsageEvent(
            event_id=f"s{seed}-{index}",
            account=account,
            time=time,
            product=product,
            quantity=quantity,
            dimensions=dims,
            correction=correction,
        )


def test_seeded_stream_prices_identically_across_runs() -> None:
    """Two engines pricing the same seeded stream produce identical charges."""
    first = comms.engine().price_batch(synthetic_events(seed=11, count=3000))
    second = comms.engine().price_batch(synthetic_events(seed=11, count=3000))
    assert first.charges == second.charges
    assert first.rejected == second.rejected == ()
    assert len(first.charges) >= 3000  # the reseller's charges are split in two


def test_entry_point_engine_matches_the_code_engine() -> None:
    """The chain discovered by entry-point names prices exactly like comms.engine()."""
    events = list(synthetic_events(seed=5, count=500))
    discovered = RulesEngine.from_entry_points(
        names=comms.RULE_NAMES, price_book=comms.price_book()
    )
    assert discovered.price_batch(events) == comms.engine().price_batch(events)


def _oracle_totals(events: list[UsageEvent]) -> dict[int | str, Decimal]:
    """Independent re-computation from the raw TOML with plain Decimal arithmetic."""
    text = resources.files("shardbill.rules").joinpath("data", "comms.toml").read_text()
    book = tomllib.loads(text, parse_float=Decimal)
    products = book["products"]
    parents = {p["account"]: p["parent"] for p in book["routing"]["parents"]}
    splits = {s["account"]: s["shares"] for s in book["routing"]["splits"]}
    micro = D("0.000001")
    totals: dict[int | str, Decimal] = defaultdict(Decimal)
    for e in events:
        dims = e.dimensions
        if e.product == "sms":
            chars = int(dims.get("characters", 0))
            single, multi = (160, 153) if dims.get("encoding", "gsm7") == "gsm7" else (70, 67)
            segs = 1 if chars <= single else math.ceil(chars / multi)
            rate = products["sms"]["prices"].get(dims.get("country"), products["sms"]["rate"])
            exact = e.quantity * segs * rate
        elif e.product == "voice":
            rate = products["voice"]["prices"][dims["direction"]]
            minutes = math.ceil(abs(e.quantity) / 60)
            exact = (minutes if e.quantity >= 0 else -minutes) * rate
        else:
            exact = e.quantity * products["email"]["rate"] / 1000
        amount = exact.quantize(micro, rounding=ROUND_HALF_EVEN)
        payer: int | str = e.account
        if "parent_account" in dims:
            payer = int(dims["parent_account"])
        while payer in parents:
            payer = parents[payer]
        if payer in splits:
            units = int(amount / micro)
            shares = splits[payer]
            percents = [s["percent"] for s in shares]
            parts = [units * p // 100 for p in percents]
            left = units - sum(parts)  # two shares: 0 or 1 unit left over
            if left:
                remainders = [(units * p) % 100 for p in percents]
                parts[0 if remainders[0] >= remainders[1] else 1] += left
            for share, part in zip(shares, parts, strict=True):
                totals[share["account"]] += D(part) * micro
        else:
            totals[payer] += amount
    return dict(totals)


def test_comms_totals_match_an_independent_oracle() -> None:
    """Per-account totals of a seeded stream equal a from-scratch computation over the TOML."""
    events = list(synthetic_events(seed=23, count=2000))
    batch = comms.engine().price_batch(events)
    totals: dict[int | str, Decimal] = defaultdict(Decimal)
    for c in batch.charges:
        totals[c.account] += c.amount
    assert dict(totals) == _oracle_totals(events)


def _walk_floats(charge: Charge) -> list[str]:
    found = []
    for field in attrs.fields(Charge):
        value = getattr(charge, field.name)
        values = [value, *charge.dimensions.keys(), *charge.dimensions.values()]
        found += [field.name for v in values if isinstance(v, float)]
    return found


@pytest.mark.property
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_no_float_appears_in_any_charge_field(seed: int) -> None:
    """Walk every field of every charge (and its dimensions): never a float."""
    batch = comms.engine().price_batch(synthetic_events(seed=seed, count=40))
    for c in batch.charges:
        assert _walk_floats(c) == []
        assert type(c.amount) is Decimal
        assert type(c.quantity) is Decimal
        assert c.amount == c.amount.quantize(D("0.000001"))


def test_email_allowance_on_the_statement() -> None:
    """A month of 3 sends (400 + 500 + 2100 = 3000 emails): per-event 2.70; statement 1.80.

    Per event: 3000 * 0.0009 = 2.70 in the aggregates. Statement: 1000 free,
    2000 * 0.0009 = 1.80.
    """
    engine = comms.engine()
    sends = [
        UsageEvent(event_id=f"m-{n}", account=7, time=T, product="email", quantity=n)
        for n in (400, 500, 2100)
    ]
    batch = engine.price_batch(sends)
    quantity = sum((c.quantity for c in batch.charges), D(0))
    amount = sum((c.amount for c in batch.charges), D(0))
    assert (quantity, amount) == (D(3000), D("2.700000"))
    book = comms.price_book()
    assert book.statement_amount("email", quantity=quantity, amount=amount) == D("1.80")
