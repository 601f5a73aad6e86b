"""UsageEvent and Charge: validation, UTC times, immutable dimensions, ingest from dicts."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import attrs
import pytest

from shardbill.errors import InvalidInputError, MoneyTypeError
from shardbill.rules import Charge, Dimensions, UsageEvent

D = Decimal
T = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def event(**changes: object) -> UsageEvent:
    fields: dict[str, object] = {
        "event_id": "e-1",
        "account": 42,
        "time": T,
        "product": "sms",
        "quantity": 1,
        "dimensions": {"country": "US"},
    }
    fields.update(changes)
    return UsageEvent(**fields)  # type: ignore[arg-type]


def charge(**changes: object) -> Charge:
    fields: dict[str, object] = {
        "event_id": "e-1",
        "account": 42,
        "product": "sms",
        "quantity": 3,
        "amount": D("0.0225"),
        "currency": "USD",
        "time": T,
        "rule": "comms.sms",
        "rule_version": "1",
    }
    fields.update(changes)
    return Charge(**fields)  # type: ignore[arg-type]


# --- UsageEvent ------------------------------------------------------------------------------


def test_event_is_frozen_and_hashable() -> None:
    """Events are immutable values: equal events hash alike; fields cannot be set."""
    assert event() == event()
    assert hash(event()) == hash(event())
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event().quantity = D(2)  # type: ignore[misc]


def test_event_requires_keyword_arguments() -> None:
    """Fields are keyword-only (no positional mix-ups between account and quantity)."""
    with pytest.raises(TypeError):
        UsageEvent("e-1", 42, T, "sms", 1)  # type: ignore[call-arg]


def test_naive_time_is_refused_with_the_fix() -> None:
    """A naive datetime is an error naming the field and how to attach a zone."""
    with pytest.raises(InvalidInputError, match=r"'time' must be timezone-aware.*tzinfo"):
        event(time=datetime(2026, 1, 5, 10, 0))


def test_a_time_outside_the_calendar_in_utc_is_refused_with_the_fix() -> None:
    """Year 1 at 00:30 at +02:00 would be year 0 in UTC: an InvalidInputError, not OverflowError."""
    plus_two = timezone(timedelta(hours=2))
    with pytest.raises(InvalidInputError, match=r"'time' is out of range in UTC"):
        event(time=datetime(1, 1, 1, 0, 30, tzinfo=plus_two))


def test_aware_time_is_normalised_to_utc() -> None:
    """12:00 at +02:00 is stored as 10:00 UTC."""
    plus_two = timezone(timedelta(hours=2))
    e = event(time=datetime(2026, 1, 5, 12, 0, tzinfo=plus_two))
    assert e.time == T
    assert e.time.tzinfo is UTC


@pytest.mark.parametrize(
    ("event_id", "message"),
    [
        ("", "must not be empty"),
        ("x" * 192, "at most 191 characters"),
        ("a\nb", "printable"),
        ("a\x00b", "printable"),
        (17, "must be a str"),
    ],
)
def test_bad_event_ids_are_refused(event_id: object, message: str) -> None:
    """The id must be printable text of 1..191 characters (it is an indexed VARCHAR key)."""
    with pytest.raises(InvalidInputError, match=message):
        event(event_id=event_id)


def test_event_id_of_191_characters_is_accepted() -> None:
    """191 characters is the limit, inclusive (4-byte utf8mb4 included)."""
    assert len(event(event_id="é" * 191).event_id) == 191


@pytest.mark.parametrize("account", [True, 1.0, None, "", 2**63, -(2**63) - 1])
def test_bad_accounts_are_refused(account: object) -> None:
    """An account is an int in BIGINT range (not bool) or a non-empty string."""
    with pytest.raises(InvalidInputError, match="'account'"):
        event(account=account)


def test_string_and_int_accounts_are_accepted() -> None:
    """Both forms are valid ids (and stay different keys)."""
    assert event(account="acme-1").account == "acme-1"
    assert event(account=2**63 - 1).account == 2**63 - 1


def test_quantity_int_is_converted_and_float_refused() -> None:
    """An int quantity becomes a Decimal; a float raises MoneyTypeError naming the field."""
    assert event(quantity=3).quantity == D(3)
    assert type(event(quantity=3).quantity) is Decimal
    with pytest.raises(MoneyTypeError, match=r"'quantity'.*float"):
        event(quantity=1.5)


def test_non_finite_quantity_is_refused() -> None:
    """NaN and infinity are not quantities."""
    with pytest.raises(InvalidInputError, match="'quantity' must be a finite"):
        event(quantity=D("NaN"))
    with pytest.raises(InvalidInputError, match="'quantity' must be a finite"):
        event(quantity=D("Infinity"))


def test_negative_quantity_needs_a_correction() -> None:
    """A negative quantity is refused unless the event is marked as a correction."""
    with pytest.raises(InvalidInputError, match=r"'quantity' must be >= 0.*correction=True"):
        event(quantity=-1)
    assert event(quantity=-1, correction=True).quantity == D(-1)


def test_correction_flag_must_be_bool() -> None:
    """A truthy non-bool is not accepted as the correction flag."""
    with pytest.raises(InvalidInputError, match="'correction' must be a bool"):
        event(correction="yes")


@pytest.mark.parametrize("product", ["", "SMS!", "-sms", "x" * 65, "with space"])
def test_bad_product_tokens_are_refused(product: str) -> None:
    """The product is a short token: letters, digits, '_', '.', ':', '-'."""
    with pytest.raises(InvalidInputError, match="'product' must be a token"):
        event(product=product)


# --- Dimensions ------------------------------------------------------------------------------


def test_dimensions_are_sorted_immutable_and_hashable() -> None:
    """Dimensions keep sorted pairs, compare by content and refuse assignment."""
    a = Dimensions({"country": "US", "channel": "api"})
    b = Dimensions([("channel", "api"), ("country", "US")])
    assert a == b
    assert hash(a) == hash(b)
    assert list(a) == ["channel", "country"]
    assert a == {"country": "US", "channel": "api"}
    with pytest.raises(AttributeError, match="immutable"):
        a._items = ()
    with pytest.raises(TypeError):
        a["country"] = "GB"  # type: ignore[index]


def test_event_dimensions_are_copied_not_shared() -> None:
    """Mutating the dict an event was built from does not change the event."""
    source: dict[str, str | int] = {"country": "US"}
    e = event(dimensions=source)
    source["country"] = "GB"
    assert e.dimensions["country"] == "US"
    assert isinstance(e.dimensions, Dimensions)


@pytest.mark.parametrize(
    ("dimensions", "message"),
    [
        ({"country": True}, "must be a str or an int"),
        ({"country": 1.5}, "must be a str or an int"),
        ({"country": {"nested": 1}}, "must be a str or an int"),
        ({"bad key": "x"}, "must be a token"),
        ({"note": "a\nb"}, "printable"),
        ({"region": 2**63}, "signed 64-bit"),
        ("country=US", "'dimensions' must be a mapping"),
    ],
)
def test_bad_dimensions_are_refused(dimensions: object, message: str) -> None:
    """Dimension names are tokens and values are printable strings or ints."""
    with pytest.raises(InvalidInputError, match=message):
        event(dimensions=dimensions)


def round_trip(value: object) -> object:
    return pickle.loads(pickle.dumps(value))  # noqa: S301 - bytes this test just made


def test_events_charges_and_dimensions_survive_pickling() -> None:
    """Values cross process boundaries (multiprocessing workers) unchanged."""
    e = event(dimensions={"country": "US", "segments": 2})
    assert round_trip(e) == e
    assert round_trip(charge()) == charge()
    d = round_trip(e.dimensions)
    assert isinstance(d, Dimensions)
    assert (d, hash(d)) == (e.dimensions, hash(e.dimensions))


def test_dimensions_with_values_and_only() -> None:
    """with_values sets or removes names; only keeps a subset; both return new objects."""
    d = Dimensions({"country": "US", "parent_account": 7})
    assert d.with_values(subaccount=42, parent_account=None) == {"country": "US", "subaccount": 42}
    assert d.only(["country"]) == {"country": "US"}
    assert d.only(["country", "parent_account", "other"]) is d
    assert d == {"country": "US", "parent_account": 7}


# --- from_dict -------------------------------------------------------------------------------


def test_from_dict_parses_a_json_line() -> None:
    """A JSON Lines object read with parse_float=Decimal becomes an event, time in UTC."""
    line = (
        '{"event_id": "e-9", "account": 42, "time": "2026-01-05T12:00:00+02:00", '
        '"product": "voice", "quantity": 61.5, "dimensions": {"direction": "outbound"}}'
    )
    e = UsageEvent.from_dict(json.loads(line, parse_float=Decimal))
    assert e == UsageEvent(
        event_id="e-9",
        account=42,
        time=T,
        product="voice",
        quantity=D("61.5"),
        dimensions={"direction": "outbound"},
    )


def test_from_dict_parses_a_csv_row() -> None:
    """A CSV row (all strings, flat dimensions.NAME columns, Z time) becomes an event."""
    row = {
        "event_id": "e-10",
        "account": "42",
        "time": "2026-01-05T10:00:00Z",
        "product": "sms",
        "quantity": "2",
        "dimensions.country": "GB",
        "correction": "false",
    }
    e = UsageEvent.from_dict(row, account_as_int=True)
    assert (e.account, e.time, e.quantity, dict(e.dimensions)) == (42, T, D(2), {"country": "GB"})
    assert e.correction is False
    assert UsageEvent.from_dict(row).account == "42"  # without account_as_int, text stays text


def test_from_dict_correction_row() -> None:
    """A correction row with a negative quantity is accepted when flagged true."""
    row = {
        "event_id": "e-11",
        "account": 1,
        "time": "2026-01-05T10:00:00Z",
        "product": "voice",
        "quantity": "-30",
        "correction": "true",
    }
    e = UsageEvent.from_dict(row)
    assert (e.quantity, e.correction) == (D(-30), True)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"quantity": "1,5"}, InvalidInputError, r"'quantity'.*'1,5'"),
        ({"quantity": 1.5}, MoneyTypeError, r"'quantity'.*float"),
        ({"time": "yesterday"}, InvalidInputError, r"'time'.*'yesterday'"),
        ({"time": "2026-01-05T10:00:00"}, InvalidInputError, r"'time' must be timezone-aware"),
        ({"time": 1767607200}, InvalidInputError, r"'time'.*int"),
        ({"colour": "red"}, InvalidInputError, r"unknown event field 'colour'"),
        ({"correction": "maybe"}, InvalidInputError, r"'correction'.*'maybe'"),
        ({"dimensions": ["country"]}, InvalidInputError, r"'dimensions' must be a mapping"),
    ],
)
def test_from_dict_errors_name_field_and_value(
    changes: dict[str, object], error: type[Exception], message: str
) -> None:
    """Ingest errors say which field and which value could not be used."""
    row: dict[str, object] = {
        "event_id": "e-12",
        "account": 1,
        "time": "2026-01-05T10:00:00Z",
        "product": "sms",
        "quantity": "1",
    }
    row.update(changes)
    with pytest.raises(error, match=message):
        UsageEvent.from_dict(row)


def test_from_dict_lists_missing_fields() -> None:
    """Missing required fields are named together."""
    with pytest.raises(InvalidInputError, match=r"lacks required field.*product, quantity"):
        UsageEvent.from_dict({"event_id": "e", "account": 1, "time": "2026-01-05T10:00:00Z"})


def test_from_dict_account_as_int_refuses_non_integers() -> None:
    """account_as_int with a non-numeric id is an error naming the value."""
    row = {
        "event_id": "e",
        "account": "acme",
        "time": "2026-01-05T10:00:00Z",
        "product": "sms",
        "quantity": "1",
    }
    with pytest.raises(InvalidInputError, match=r"'account' must be an integer .*: 'acme'"):
        UsageEvent.from_dict(row, account_as_int=True)


# --- Charge ----------------------------------------------------------------------------------


def test_charge_amount_minor_is_integer_units_of_its_scale() -> None:
    """0.0225 at the default scale 6 is 22500 micro-units; at scale 4 it is 225."""
    assert charge().amount_minor == 22500
    assert charge(scale=4).amount_minor == 225


def test_charge_refuses_an_amount_finer_than_its_scale() -> None:
    """A charge never rounds silently: 7 places at scale 6 is an error pointing at quantize."""
    with pytest.raises(InvalidInputError, match=r"more than scale=6.*quantize"):
        charge(amount=D("0.0000001"))


def test_charge_refuses_floats_and_unknown_currency() -> None:
    """Float amounts and quantities are type errors; the currency must be supported."""
    with pytest.raises(MoneyTypeError, match="'amount'"):
        charge(amount=0.0225)
    with pytest.raises(MoneyTypeError, match="'quantity'"):
        charge(quantity=3.0)
    with pytest.raises(InvalidInputError, match=r"'currency'.*'XYZ'"):
        charge(currency="XYZ")


def test_charge_validates_like_the_event() -> None:
    """Charges check ids, times, rule names and scale the same way events do."""
    with pytest.raises(InvalidInputError, match="'event_id'"):
        charge(event_id="")
    with pytest.raises(InvalidInputError, match="'time' must be timezone-aware"):
        charge(time=datetime(2026, 1, 5))
    with pytest.raises(InvalidInputError, match="'rule' must be a token"):
        charge(rule="no spaces allowed")
    with pytest.raises(InvalidInputError, match="'scale'"):
        charge(scale=19)
    with pytest.raises(InvalidInputError, match="'rule_version' must not be empty"):
        charge(rule_version="")


def test_charge_negative_amount_is_a_credit() -> None:
    """A negative amount (a correction's credit) is valid."""
    assert charge(amount=D("-0.0225")).amount_minor == -22500
