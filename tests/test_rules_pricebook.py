"""PriceBook: exact parsing of TOML and JSON, validation errors, statements."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import cast

import attrs
import pytest

from shardbill.errors import InvalidInputError, MoneyTypeError, PriceBookError
from shardbill.rules import (
    FreeAllowance,
    GraduatedTiers,
    MinimumCharge,
    Package,
    PerUnit,
    PriceBook,
    Share,
    Tier,
    VolumeTiers,
    comms,
)

D = Decimal

HEAD = '[price_book]\nname = "test"\nversion = "1"\ncurrency = "USD"\n'


def book(body: str, head: str = HEAD) -> PriceBook:
    return PriceBook.from_toml(head + body, source="test.toml")


def walk(value: object) -> Iterator[object]:
    """Every value reachable from an attrs object, mapping or sequence."""
    yield value
    if attrs.has(type(value)):
        for field in attrs.fields(cast("type[attrs.AttrsInstance]", type(value))):
            yield from walk(getattr(value, field.name))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from walk(key)
            yield from walk(item)
    elif isinstance(value, tuple | list):
        for item in value:
            yield from walk(item)


def test_toml_numbers_are_read_exactly() -> None:
    """rate = 0.1 in TOML is Decimal('0.1'), which the float 0.1 is not."""
    priced = book("[products.sms]\nrate = 0.1\n").product("sms")
    assert priced.model == PerUnit(rate=D("0.1"))
    assert isinstance(priced.model, PerUnit)
    assert priced.model.rate == D("0.1")
    assert priced.model.rate != D(0.1)  # the float's exact binary value


def test_prices_may_be_strings() -> None:
    """rate = "0.0075" is accepted and exact."""
    assert book('[products.sms]\nrate = "0.0075"\n').product("sms").model == PerUnit(
        rate=D("0.0075")
    )


def test_comms_price_book_holds_no_float() -> None:
    """Walking the whole example price book finds Decimals and ints, never a float."""
    values = list(walk(comms.price_book()))
    assert not [v for v in values if isinstance(v, float)]
    assert D("0.0079") in values  # the US SMS rate, exactly


def test_comms_price_book_contents() -> None:
    """The example book: USD at scale 6; voice per started minute; email 0.90/1000, 1000 free."""
    pb = comms.price_book()
    assert (pb.currency, pb.settings.scale, pb.settings.rounding) == ("USD", 6, "ROUND_HALF_EVEN")
    assert pb.product("voice").prices["inbound"] == Package(rate=D("0.0085"), size=60)
    email = pb.product("email")
    assert email.model == PerUnit(rate=D("0.90"), per=1000)
    assert email.period == FreeAllowance(free=1000, model=PerUnit(rate=D("0.90"), per=1000))
    assert pb.parents[900002] == 900000  # chain 900002 -> 900001 -> 900000 resolved
    assert pb.splits[900100] == (
        Share(account=900100, percent=D(70)),
        Share(account=900200, percent=D(30)),
    )


def test_json_price_book_is_read_exactly(tmp_path: Path) -> None:
    """JSON floats become Decimals (parse_float=Decimal); load() picks the parser by suffix."""
    document = {
        "price_book": {"name": "j", "currency": "EUR", "amount_scale": 7},
        "products": {"sms": {"rate": "PLACEHOLDER"}},
    }
    text = json.dumps(document).replace('"PLACEHOLDER"', "0.00755")
    path = tmp_path / "book.json"
    path.write_text(text, encoding="utf-8")
    pb = PriceBook.load(path)
    assert pb.product("sms").model == PerUnit(rate=D("0.00755"))
    assert (pb.currency, pb.settings.scale, pb.source) == ("EUR", 7, str(path))


def test_json_nan_is_refused() -> None:
    """NaN in JSON is not a price."""
    text = '{"price_book": {"name": "j", "currency": "EUR"}, "products": {"sms": {"rate": NaN}}}'
    with pytest.raises(PriceBookError, match="NaN is not a price"):
        PriceBook.from_json(text, source="b.json")


def test_python_float_in_a_mapping_is_a_money_type_error() -> None:
    """from_mapping with a real float raises MoneyTypeError naming source and key."""
    data = {"price_book": {"name": "m", "currency": "USD"}, "products": {"sms": {"rate": 0.0075}}}
    with pytest.raises(MoneyTypeError, match=r"code\.py: products\.sms\.rate: .*float 0\.0075"):
        PriceBook.from_mapping(data, source="code.py")


def test_load_toml_file(tmp_path: Path) -> None:
    """A .toml file loads with its path as the source."""
    path = tmp_path / "book.toml"
    path.write_text(HEAD + "[products.sms]\nrate = 0.01\n", encoding="utf-8")
    assert PriceBook.load(path).source == str(path)


def test_load_refuses_other_suffixes_and_missing_files(tmp_path: Path) -> None:
    """Only .toml and .json; a missing file is a PriceBookError naming it."""
    with pytest.raises(PriceBookError, match=r"book\.yaml: a price book must be a \.toml or"):
        PriceBook.load(tmp_path / "book.yaml")
    with pytest.raises(PriceBookError, match=r"missing\.toml: cannot read"):
        PriceBook.load(tmp_path / "missing.toml")


GRADUATED = """
[products.email]
rate = 0.001
[products.email.period]
model = "graduated"
tiers = [
  { up_to = 1000, rate = 0 },
  { up_to = 10000, rate = 0.0009 },
  { rate = 0.0007 },
]
minimum = 1.00
"""


def test_period_tiers_fill_in_starts() -> None:
    """Tiers given with up_to only start where the previous one ends."""
    period = book(GRADUATED).product("email").period
    expected = MinimumCharge(
        minimum=D("1.00"),
        model=GraduatedTiers(
            tiers=(
                Tier(start=0, up_to=1000, rate=D(0)),
                Tier(start=1000, up_to=10000, rate=D("0.0009")),
                Tier(start=10000, up_to=None, rate=D("0.0007")),
            )
        ),
    )
    assert period == expected


def test_volume_period_model() -> None:
    """model = "volume" builds VolumeTiers."""
    period = book(GRADUATED.replace('"graduated"', '"volume"')).product("email").period
    assert isinstance(period, MinimumCharge)
    assert isinstance(period.model, VolumeTiers)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '[products.email]\nrate = 1\n[products.email.period]\nmodel = "graduated"\n'
            "tiers = [{ up_to = 100, rate = 1 }, { start = 90, rate = 1 }]\n",
            r"test\.toml: products\.email\.period\.tiers: tiers overlap",
        ),
        (
            '[products.email]\nrate = 1\n[products.email.period]\nmodel = "graduated"\n'
            "tiers = [{ up_to = 100, rate = 1 }, { start = 110, rate = 1 }]\n",
            r"test\.toml: products\.email\.period\.tiers: gap between tiers",
        ),
        (
            "[products.sms]\nrate = -0.01\n",
            r"test\.toml: products\.sms\.rate: a price must be >= 0",
        ),
        (
            "[products.sms]\nprice_by = 'country'\n[products.sms.prices]\nUS = -1\n",
            r"products\.sms\.prices\.US: a price must be >= 0",
        ),
        (
            "[products.e]\nrate = 1\n[products.e.period]\nmodel = 'graduated'\n"
            "tiers = [{ rate = -1 }]\n",
            r"products\.e\.period\.tiers\[0\]\.rate: a price must be >= 0",
        ),
        (
            "[products.e]\nrate = 1\n[products.e.period]\nfree = -5\n",
            r"products\.e\.period\.free: must be >= 0",
        ),
        (
            "[products.e]\nrate = 1\n[products.e.period]\nmodel = 'stepped'\n",
            r"products\.e\.period\.model: unknown model 'stepped'",
        ),
        ("[products.sms]\nrte = 0.01\n", r"products\.sms\.rte: unknown key.*rate"),
        ("[products.sms]\nunit = 'x'\n", r"products\.sms\.rate: missing"),
        (
            "[products.sms]\nrate = 0.01\nmodel = 'graduated'\n",
            r"products\.sms\.model.*per period.*\[products\.sms\.period\]",
        ),
        ("[products.sms]\nrate = 0.6\nper = 60\n", r"products\.sms\.per: .*power of ten"),
        ("[products.voice]\nmodel = 'package'\nrate = 1\n", r"products\.voice\.size: missing"),
        ("[products.sms]\nrate = 'cheap'\n", r"products\.sms\.rate: .*decimal number.*'cheap'"),
        ("[products.sms]\nrate = true\n", r"products\.sms\.rate: must be a number, not bool"),
        ("[products.sms]\nrate = nan\n", r"products\.sms\.rate: must be a finite number"),
        ("[products.sms]\nrate = 1\nprices = { US = 1 }\n", r"products\.sms\.prices: needs"),
        ("[products.sms]\nrate = 1\ncorrections = 'yes'\n", r"corrections: must be true or"),
        ("[products.'bad name']\nrate = 1\n", r"products\.bad name: a product name must be"),
        (
            "[[routing.parents]]\naccount = 1\nparent = 2\n"
            "[[routing.parents]]\naccount = 2\nparent = 1\n",
            r"routing\.parents: parent accounts form a cycle: 1 -> 2 -> 1",
        ),
        (
            "[[routing.parents]]\naccount = 1\nparent = 1\n",
            r"routing\.parents\[0\]: account 1 cannot be its own parent",
        ),
        (
            "[[routing.splits]]\naccount = 1\n"
            "shares = [{ account = 1, percent = 60 }, { account = 2, percent = 30 }]\n",
            r"routing\.splits\[0\]\.shares: the percentages sum to 90, not 100",
        ),
        (
            "[[routing.splits]]\naccount = 1\n"
            "shares = [{ account = 2, percent = 50 }, { account = 2, percent = 50 }]\n",
            r"shares\[1\]\.account: 2 appears twice",
        ),
        (
            "[[routing.splits]]\naccount = 1\nshares = [{ account = 2, percent = 0 }]\n",
            r"shares\[0\]\.percent: must be > 0",
        ),
        ("[routing]\nparents = 'none'\n", r"routing\.parents: must be an array"),
        ("[extras]\nx = 1\n", r"test\.toml: extras: unknown key"),
    ],
)
def test_invalid_price_books_name_file_key_and_fix(body: str, message: str) -> None:
    """Every validation error names the source file and the key."""
    with pytest.raises(PriceBookError, match=message):
        book(body)


@pytest.mark.parametrize(
    ("head", "message"),
    [
        ('[price_book]\nname = "t"\ncurrency = "XXX"\n', r"price_book\.currency: unknown currency"),
        ('[price_book]\nname = "t"\n', r"price_book\.currency: missing"),
        (
            '[price_book]\nname = "t"\ncurrency = "KWD"\namount_scale = 2\n',
            r"amount_scale 2 is below the minor unit of KWD \(3 places\)",
        ),
        ('[price_book]\nname = "t"\ncurrency = "USD"\nrounding = "UP"\n', r"'rounding' must be"),
        ('[price_book]\nname = "t"\ncurrency = "USD"\namount_scale = 30\n', r"'scale' must be"),
        ("", r"price_book: missing"),
    ],
)
def test_invalid_headers(head: str, message: str) -> None:
    """Currency, scale and rounding are checked, with the key named."""
    with pytest.raises(PriceBookError, match=message):
        book("", head=head)


def test_invalid_toml_syntax_is_a_price_book_error() -> None:
    """A TOML syntax error is reported as a PriceBookError naming the file."""
    with pytest.raises(PriceBookError, match=r"test\.toml: not valid TOML"):
        book("[products.sms\n")


def test_price_book_errors_are_value_errors() -> None:
    """PriceBookError is a ConfigurationError, hence a ValueError."""
    with pytest.raises(ValueError, match="unknown key"):
        book("[extras]\n")


def test_model_for_selects_by_dimension_with_default() -> None:
    """price_by picks the listed rate, else the default; int values look up by their text."""
    sms = book(
        "[products.sms]\nrate = 0.05\nprice_by = 'country'\n"
        "[products.sms.prices]\nUS = 0.0079\n44 = 0.04\n"
    ).product("sms")
    assert sms.model_for({"country": "US"}) == PerUnit(rate=D("0.0079"))
    assert sms.model_for({"country": "ZZ"}) == PerUnit(rate=D("0.05"))
    assert sms.model_for({}) == PerUnit(rate=D("0.05"))
    assert sms.model_for({"country": 44}) == PerUnit(rate=D("0.04"))


def test_model_for_without_default_rejects_unlisted_values() -> None:
    """With no default rate, an unlisted value is an InvalidInputError (that event only)."""
    sms = book(
        "[products.sms]\nprice_by = 'country'\n[products.sms.prices]\nUS = 0.0079\n"
    ).product("sms")
    with pytest.raises(InvalidInputError, match=r"no price for product 'sms' with country='ZZ'"):
        sms.model_for({"country": "ZZ"})


def test_unknown_product_lists_known_ones() -> None:
    """Asking for a product the book does not price names the ones it does."""
    with pytest.raises(InvalidInputError, match=r"no product 'fax'; it prices email, sms, voice"):
        comms.price_book().product("fax")


def test_statement_amount_applies_the_period_model() -> None:
    """Email: 250000 in a month, 1000 free: 249000 * 0.0009 = 224.1 -> 224.10."""
    pb = comms.price_book()
    assert pb.statement_amount("email", quantity=D(250000), amount=D("225.000000")) == D("224.10")
    assert pb.statement_amount("email", quantity=D(999), amount=D("0.899100")) == D("0.00")


def test_statement_amount_rounds_summed_amounts_once() -> None:
    """Without a period model the summed amount is rounded once, half-even, to cents."""
    pb = comms.price_book()
    assert pb.statement_amount("sms", quantity=D(3), amount=D("1.234567")) == D("1.23")
    assert pb.statement_amount("voice", quantity=D(9), amount=D("0.125000")) == D("0.12")
    assert pb.statement_amount("fax", quantity=D(1), amount=D("0.135")) == D("0.14")


def test_price_book_tables_are_read_only() -> None:
    """Products, parents and splits cannot be changed after loading."""
    pb = comms.price_book()
    with pytest.raises(TypeError):
        pb.products["fax"] = pb.products["sms"]  # type: ignore[index]
    with pytest.raises(TypeError):
        pb.parents[1] = 2  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        pb.currency = "EUR"  # type: ignore[misc]
