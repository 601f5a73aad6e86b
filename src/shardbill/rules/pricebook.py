"""The price book: prices per product, period models and account routing, from TOML or JSON.

A price book is data, validated once when loaded: every problem raises
:class:`~shardbill.errors.PriceBookError` naming the file, the key, the value
and the fix. Numbers are read exactly: TOML with ``tomllib.loads(...,
parse_float=Decimal)`` and JSON with ``json.loads(..., parse_float=Decimal)``,
so ``rate = 0.0075`` is the Decimal ``0.0075``, never a float. A price may
also be written as a string (``rate = "0.0075"``). A Python ``float`` given to
:meth:`PriceBook.from_mapping` raises :class:`~shardbill.errors.MoneyTypeError`.

The format (TOML shown; JSON has the same structure)::

    [price_book]
    name = "comms"
    version = "2026-01"
    currency = "USD"             # ISO 4217, see shardbill.money.CURRENCIES
    amount_scale = 6             # pricing scale of charge amounts (default 6)
    rounding = "ROUND_HALF_EVEN" # used at the pricing scale and on statements

    [products.sms]
    unit = "segment"
    model = "per_unit"           # per event: "per_unit" or "package"
    rate = 0.0079                # default rate (omit to require a listed value)
    price_by = "country"         # optional: a dimension that selects the rate
    keep_dimensions = ["country"]  # dimensions copied onto charges (default: all)
    corrections = false          # accept correction events (negative quantities)
    [products.sms.prices]        # rate per value of the price_by dimension
    GB = 0.0400

    [products.voice]
    model = "package"
    size = 60                    # per started block of 60 units
    rate = 0.0140                # per block

    [products.email]
    model = "per_unit"
    rate = 0.95
    per = 1000                   # 0.95 per 1000, i.e. 0.00095 per email
    [products.email.period]      # per-period pricing, applied on statements
    free = 1000                  # first 1000 per period free; then the product's model
    # model = "graduated" / "volume" with tiers = [{start=0, up_to=1000, rate=0}, {rate=...}]
    # minimum = 5.00             # at least this per period

    [[routing.parents]]          # this account's usage is billed to its parent
    account = 1001
    parent = 1000

    [[routing.splits]]           # this account's charges are split by percentage
    account = 2001
    shares = [{ account = 2001, percent = 60 }, { account = 3001, percent = 40 }]
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias, TypeVar

import attrs

from shardbill import money
from shardbill._parsing import json_loads, toml_loads
from shardbill.errors import InvalidInputError, MoneyTypeError, PriceBookError
from shardbill.rules.events import Account, Dimensions, DimensionValue, _check_token

if TYPE_CHECKING:
    from shardbill.rules.engine import RuleContext
    from shardbill.rules.events import Charge, UsageEvent

from shardbill.rules.models import (
    ChargeModel,
    FreeAllowance,
    GraduatedTiers,
    MinimumCharge,
    Package,
    PerUnit,
    Tier,
    VolumeTiers,
)

MAX_PRICE_BOOK_CHARS = 16 * 1024 * 1024
"""The longest price book document read (16 Mi characters); nesting is bounded too."""

__all__ = [
    "PerEventModel",
    "PriceBook",
    "PriceBookRule",
    "PricingSettings",
    "ProductPrice",
    "Share",
    "price_book_rule",
]

PerEventModel: TypeAlias = PerUnit | Package
"""The models a product may use per event."""


def _scale(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    try:
        money.check_scale(value, attribute.name)
    except InvalidInputError as exc:
        raise PriceBookError(str(exc)) from None


def _rounding(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):  # check_rounding's set lookup would raise TypeError
        raise PriceBookError(
            f"{attribute.name!r} must be a rounding mode name such as 'ROUND_HALF_EVEN', not "
            f"{type(value).__name__}: {value!r:.60}"
        )
    try:
        money.check_rounding(value, attribute.name)
    except InvalidInputError as exc:
        raise PriceBookError(str(exc)) from None


@attrs.frozen(kw_only=True)
class PricingSettings:
    """How charge amounts are rounded: once, to ``scale`` places, with ``rounding``.

    Attributes:
        scale: the pricing scale, decimal places of charge amounts (default 6).
        rounding: a :mod:`decimal` rounding mode (default ``ROUND_HALF_EVEN``),
            used at the pricing scale and on statements.
    """

    scale: int = attrs.field(default=money.DEFAULT_SCALE, validator=_scale)
    rounding: str = attrs.field(default=money.DEFAULT_ROUNDING, validator=_rounding)


_K = TypeVar("_K")
_V = TypeVar("_V")


class _Frozen(Mapping[_K, _V]):
    """A read-only mapping over a private dict copy (unlike MappingProxyType, picklable)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[_K, _V]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: _K) -> _V:
        return self._data[key]

    def __iter__(self) -> Iterator[_K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: _K, default: Any = None) -> Any:  # the attribute types say Mapping
        """The value for ``key``, or ``default``."""
        return self._data.get(key, default)

    def __repr__(self) -> str:
        return repr(self._data)

    def __reduce__(self) -> tuple[type[_Frozen[_K, _V]], tuple[dict[_K, _V]]]:
        return (type(self), (self._data,))


def _frozen_mapping(value: Mapping[str, PerEventModel]) -> Mapping[str, PerEventModel]:
    return _Frozen(value)


@attrs.frozen(kw_only=True)
class ProductPrice:
    """How one product is priced: per event, optionally by a dimension, and per period.

    Attributes:
        product: the product token.
        unit: what one unit of quantity is (``"segment"``, ``"second"``), for people.
        model: the default per-event model, or None if every event must match
            a value in ``prices``.
        price_by: the dimension whose value selects a model from ``prices``.
        prices: per-event models by dimension value (int values are looked up
            by their decimal string).
        period: the per-period model for statements, or None to bill the sum
            of the per-event amounts.
        corrections: whether correction events (negative quantities) are accepted.
        keep_dimensions: the event dimensions copied onto charges; None keeps all.
    """

    product: str
    unit: str = "unit"
    model: PerEventModel | None = None
    price_by: str | None = None
    prices: Mapping[str, PerEventModel] = attrs.field(factory=dict, converter=_frozen_mapping)
    period: ChargeModel | None = None
    corrections: bool = False
    keep_dimensions: tuple[str, ...] | None = None
    _keep: frozenset[str] | None = attrs.field(init=False, repr=False, eq=False)

    @_keep.default
    def _keep_default(self) -> frozenset[str] | None:
        return None if self.keep_dimensions is None else frozenset(self.keep_dimensions)

    def __attrs_post_init__(self) -> None:
        if self.model is None and not self.prices:
            raise PriceBookError(
                f"product {self.product!r} has no price: set a rate, or price_by and prices"
            )
        if self.prices and self.price_by is None:
            raise PriceBookError(
                f"product {self.product!r} has prices but no price_by: name the dimension "
                "whose value selects the price"
            )

    def model_for(self, dimensions: Mapping[str, DimensionValue]) -> PerEventModel:
        """The per-event model for an event with these dimensions.

        Args:
            dimensions: the event's dimensions.

        Returns:
            The model for the ``price_by`` value, else the default model.

        Raises:
            InvalidInputError: if neither exists (the event is rejected alone).
        """
        if self.price_by is not None:
            value = dimensions.get(self.price_by)
            if value is not None:
                found = self.prices.get(value if type(value) is str else str(value))
                if found is not None:
                    return found
            if self.model is None:
                raise InvalidInputError(
                    f"no price for product {self.product!r} with {self.price_by}={value!r} "
                    f"and no default rate; add it to [products.{self.product}.prices] or set "
                    f"a default rate"
                )
        if self.model is None:  # pragma: no cover - excluded by __attrs_post_init__
            raise InvalidInputError(f"product {self.product!r} has no default rate")
        return self.model

    def charge_dimensions(self, dimensions: Dimensions) -> Dimensions:
        """The dimensions a charge for this product keeps from its event.

        Args:
            dimensions: the event's dimensions.

        Returns:
            Those named in ``keep_dimensions`` (all when it is None).
        """
        if self._keep is None:
            return dimensions
        return dimensions.only(self._keep)


@attrs.frozen(kw_only=True)
class Share:
    """One part of a percentage split.

    Attributes:
        account: the account that pays this part.
        percent: its share, > 0; the shares of one split sum to exactly 100.
    """

    account: Account
    percent: Decimal


def _products(value: Mapping[str, ProductPrice]) -> Mapping[str, ProductPrice]:
    return _Frozen(value)


def _parents(value: Mapping[Account, Account]) -> Mapping[Account, Account]:
    return _Frozen(value)


def _splits(value: Mapping[Account, Sequence[Share]]) -> Mapping[Account, tuple[Share, ...]]:
    return _Frozen({account: tuple(shares) for account, shares in value.items()})


@attrs.frozen(kw_only=True)
class PriceBook:
    """A validated price book: currency, pricing settings, products and routing.

    Build one with :meth:`load` (a ``.toml`` or ``.json`` file),
    :meth:`from_toml`, :meth:`from_json` or :meth:`from_mapping`.

    Attributes:
        name: the price book's name.
        version: its version; change it whenever a price changes.
        currency: the ISO 4217 code of every amount in it.
        settings: the pricing scale and rounding.
        products: pricing by product token.
        parents: child account -> the account that pays for it (chains resolved
            to the paying root).
        splits: account -> the shares its charges are split into.
        source: where it was loaded from, for error messages.
    """

    name: str
    version: str
    currency: str
    settings: PricingSettings = attrs.field(factory=PricingSettings)
    products: Mapping[str, ProductPrice] = attrs.field(factory=dict, converter=_products)
    parents: Mapping[Account, Account] = attrs.field(factory=dict, converter=_parents)
    splits: Mapping[Account, tuple[Share, ...]] = attrs.field(factory=dict, converter=_splits)
    source: str = attrs.field(default="<code>", eq=False)

    def __attrs_post_init__(self) -> None:
        exponent = money.Currency.of(self.currency).exponent
        if self.settings.scale < exponent:
            raise PriceBookError(
                f"{self.source}: amount_scale {self.settings.scale} is below the minor unit "
                f"of {self.currency} ({exponent} places); use at least {exponent}"
            )

    def product(self, product: str) -> ProductPrice:
        """The pricing of one product.

        Args:
            product: the product token.

        Returns:
            Its :class:`ProductPrice`.

        Raises:
            InvalidInputError: if the price book does not price it.
        """
        found = self.products.get(product)
        if found is None:
            raise InvalidInputError(
                f"price book {self.name!r} ({self.source}) has no product {product!r}; "
                f"it prices {', '.join(sorted(self.products)) or 'nothing'}"
            )
        return found

    def statement_amount(self, product: str, *, quantity: Decimal, amount: Decimal) -> Decimal:
        """Price one statement line (one account, product and period) from its aggregates.

        If the product has a period model, the line is that model's price of
        the period's total ``quantity`` (so allowances, tiers and minimums
        apply to the whole period); otherwise it is the period's summed
        per-event ``amount``. Either way the result is rounded once, to the
        currency's minor unit, with the price book's rounding: this is the
        statement-time rounding point.

        Args:
            product: the product token.
            quantity: the period's total quantity (from the aggregates).
            amount: the period's summed charge amounts (from the aggregates).

        Returns:
            The amount to invoice, in the currency's minor-unit precision.
        """
        priced = self.products.get(product)
        exact = money.require_decimal(amount, "amount")
        if priced is not None and priced.period is not None:
            exact = priced.period.price(money.require_decimal(quantity, "quantity"))
        return money.round_to_currency(exact, self.currency, self.settings.rounding)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PriceBook:
        """Load a price book file: ``.toml`` or ``.json`` by its suffix.

        Args:
            path: the file.

        Returns:
            The validated price book.

        Raises:
            PriceBookError: if the file cannot be read or parsed, or is invalid.
        """
        file = Path(path)
        suffix = file.suffix.lower()
        if suffix not in {".toml", ".json"}:
            raise PriceBookError(
                f"{file}: a price book must be a .toml or .json file; rename it or use "
                "PriceBook.from_toml / from_json"
            )
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise PriceBookError(
                f"{file}: cannot read the price book ({exc.strerror or exc}); check the path"
            ) from exc
        if suffix == ".toml":
            return cls.from_toml(text, source=str(file))
        return cls.from_json(text, source=str(file))

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<toml>") -> PriceBook:
        """Parse a TOML price book; floats are read exactly as Decimals.

        Args:
            text: the TOML document.
            source: a name for error messages (a file name).

        Returns:
            The validated price book.

        Raises:
            PriceBookError: if it is not valid TOML or not a valid price book.
        """
        try:
            data = toml_loads(text, max_chars=MAX_PRICE_BOOK_CHARS, parse_float=Decimal)
        except InvalidInputError as exc:
            raise PriceBookError(f"{source}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise PriceBookError(f"{source}: not valid TOML: {exc}") from exc
        return cls.from_mapping(data, source=source)

    @classmethod
    def from_json(cls, text: str, *, source: str = "<json>") -> PriceBook:
        """Parse a JSON price book; numbers with a fraction are read exactly as Decimals.

        Args:
            text: the JSON document.
            source: a name for error messages (a file name).

        Returns:
            The validated price book.

        Raises:
            PriceBookError: if it is not valid JSON or not a valid price book.
        """

        def refuse(constant: str) -> NoReturn:
            raise PriceBookError(f"{source}: {constant} is not a price; use a finite number")

        try:
            data = json_loads(
                text, max_chars=MAX_PRICE_BOOK_CHARS, parse_float=Decimal, parse_constant=refuse
            )
        except InvalidInputError as exc:
            raise PriceBookError(f"{source}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise PriceBookError(f"{source}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise PriceBookError(f"{source}: the document must be a JSON object")
        return cls.from_mapping(data, source=source)

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], *, source: str = "<mapping>") -> PriceBook:
        """Build a price book from parsed data (the structure of the TOML format).

        Args:
            data: the parsed document.
            source: a name for error messages.

        Returns:
            The validated price book.

        Raises:
            PriceBookError: naming the source, the key and the fix.
            MoneyTypeError: for a Python float where a number belongs.
        """
        return _Parser(source).price_book(data)


def _product_set(value: Iterable[str] | None) -> frozenset[str] | None:
    return None if value is None else frozenset(value)


@attrs.frozen(kw_only=True)
class PriceBookRule:
    """The built-in rule that prices events with their product's per-event model.

    For an event whose product the price book prices (and, if ``products``
    is set, is one of them) it adds one charge: the model for the event's
    dimensions (``price_by``) applied to the event's quantity, with the
    product's ``keep_dimensions``. Other events: ``None`` (does not apply).
    Published as ``shardbill.price_book``; configured copies with other names
    price a subset of products (the comms example's ``comms.voice``).

    Attributes:
        name: the rule name (default ``"shardbill.price_book"``).
        version: the rule version.
        products: the products it prices; None for every product in the price book.
    """

    name: str = "shardbill.price_book"
    version: str = "1"
    products: frozenset[str] | None = attrs.field(default=None, converter=_product_set)

    def __call__(self, event: UsageEvent, context: RuleContext, /) -> Iterable[Charge] | None:
        """Add the price book's charge for the event, or return None if it does not apply."""
        product = event.product
        if self.products is not None and product not in self.products:
            return None
        priced = context.price_book.products.get(product)
        if priced is None:
            return None
        model = priced.model_for(event.dimensions)
        return context.add(
            context.charge(
                event,
                amount=model.price(event.quantity),
                dimensions=priced.charge_dimensions(event.dimensions),
            )
        )


price_book_rule = PriceBookRule()
"""The ``shardbill.price_book`` rule, which prices every product the price book lists."""


_PRODUCT_KEYS = frozenset(
    {
        "unit",
        "model",
        "rate",
        "per",
        "size",
        "price_by",
        "prices",
        "period",
        "corrections",
        "keep_dimensions",
    }
)
_PERIOD_KEYS = frozenset({"model", "rate", "per", "size", "tiers", "free", "minimum"})


class _Parser:
    """Reads a parsed document into a PriceBook, naming source and key in each error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> NoReturn:
        raise PriceBookError(f"{self.source}: {key}: {problem}")

    def table(self, value: object, key: str, allowed: frozenset[str]) -> Mapping[str, object]:
        if not isinstance(value, Mapping):
            self.fail(key, f"must be a table, not {type(value).__name__}: {value!r}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            self.fail(
                f"{key}.{unknown[0]}" if key else unknown[0],
                f"unknown key; the keys here are {', '.join(sorted(allowed))}",
            )
        return value

    def text(self, value: object, key: str) -> str:
        if type(value) is not str or not value:
            self.fail(key, f"must be a non-empty string: {value!r}")
        return value

    def number(self, value: object, key: str) -> Decimal:
        if isinstance(value, float):
            raise MoneyTypeError(
                f"{self.source}: {key}: must be exact, not the float {value!r}; write it as "
                f"a string ({str(value)!r}) or load the file with PriceBook.load, which reads "
                "numbers exactly"
            )
        if type(value) is str:
            try:
                parsed = Decimal(value.strip())
            except InvalidOperation:
                self.fail(key, f'must be a decimal number such as "0.0075": {value!r}')
            value = parsed
        if isinstance(value, bool) or not isinstance(value, Decimal | int):
            self.fail(key, f"must be a number, not {type(value).__name__}: {value!r}")
        result = Decimal(value)
        if not result.is_finite():
            self.fail(key, f"must be a finite number: {value!r}")
        return result

    def price(self, value: object, key: str) -> Decimal:
        result = self.number(value, key)
        if result < 0:
            self.fail(
                key,
                f"a price must be >= 0: {result}; express a credit as a correction event, "
                "a discount as a lower rate",
            )
        return result

    def account(self, value: object, key: str) -> Account:
        if not (type(value) is int or (type(value) is str and value)):
            self.fail(key, f"must be an account id (an int or a non-empty string): {value!r}")
        return value

    def price_book(self, data: Mapping[str, object]) -> PriceBook:
        root = self.table(data, "", frozenset({"price_book", "products", "routing"}))
        if "price_book" not in root:
            self.fail("price_book", "missing: add a [price_book] table with name and currency")
        head = self.table(
            root["price_book"],
            "price_book",
            frozenset({"name", "version", "currency", "amount_scale", "rounding"}),
        )
        for required in ("name", "currency"):
            if required not in head:
                self.fail(f"price_book.{required}", "missing")
        currency = self.text(head["currency"], "price_book.currency")
        if currency not in money.CURRENCIES:
            self.fail(
                "price_book.currency",
                f"unknown currency {currency!r}; use an ISO 4217 code from "
                f"{', '.join(sorted(money.CURRENCIES))}",
            )
        try:
            settings = PricingSettings(
                scale=head.get("amount_scale", money.DEFAULT_SCALE),  # type: ignore[arg-type]
                rounding=head.get("rounding", money.DEFAULT_ROUNDING),  # type: ignore[arg-type]
            )
        except PriceBookError as exc:
            self.fail("price_book", str(exc))
        products_table = root.get("products", {})
        if not isinstance(products_table, Mapping):
            self.fail("products", "must be a table of products")
        products = {
            name: self.product(name, value, f"products.{name}")
            for name, value in products_table.items()
        }
        routing = self.table(root.get("routing", {}), "routing", frozenset({"parents", "splits"}))
        try:
            return PriceBook(
                name=self.text(head["name"], "price_book.name"),
                version=self.text(head.get("version", "0"), "price_book.version"),
                currency=currency,
                settings=settings,
                products=products,
                parents=self.parents(routing.get("parents", [])),
                splits=self.splits(routing.get("splits", [])),
                source=self.source,
            )
        except PriceBookError:
            raise
        except InvalidInputError as exc:  # pragma: no cover - all checked above
            self.fail("price_book", str(exc))

    def product(self, name: str, value: object, key: str) -> ProductPrice:
        try:
            _check_token("product", name)
        except InvalidInputError:
            self.fail(key, "a product name must be a token of letters, digits, '_', '.', ':', '-'")
        spec = self.table(value, key, _PRODUCT_KEYS)
        kind = spec.get("model", "per_unit")
        if not isinstance(kind, str) or kind not in {"per_unit", "package"}:
            self.fail(
                f"{key}.model",
                f'must be "per_unit" or "package" per event: {kind!r}; tiers, allowances '
                f"and minimums are per period: put them under [{key}.period]",
            )
        model = None
        if "rate" in spec:
            model = self.per_event(kind, spec, key, spec["rate"], f"{key}.rate")
        price_by, prices = self.prices(spec, key, kind)
        if model is None and not prices:
            self.fail(f"{key}.rate", "missing: give a rate (or price_by and prices)")
        corrections = spec.get("corrections", False)
        if type(corrections) is not bool:
            self.fail(f"{key}.corrections", f"must be true or false: {corrections!r}")
        keep = spec.get("keep_dimensions")
        if keep is not None and (
            not isinstance(keep, list) or not all(type(k) is str for k in keep)
        ):
            self.fail(f"{key}.keep_dimensions", f"must be a list of names: {keep!r}")
        period = self.period(spec["period"], f"{key}.period", model) if "period" in spec else None
        return ProductPrice(
            product=name,
            unit=self.text(spec.get("unit", "unit"), f"{key}.unit"),
            model=model,
            price_by=price_by,
            prices=prices,
            period=period,
            corrections=corrections,
            keep_dimensions=None if keep is None else tuple(keep),
        )

    def prices(
        self, spec: Mapping[str, object], key: str, kind: str
    ) -> tuple[str | None, dict[str, PerEventModel]]:
        price_by = spec.get("price_by")
        if price_by is None:
            if "prices" in spec:
                self.fail(f"{key}.prices", "needs price_by: the dimension whose value picks it")
            return None, {}
        dimension = self.text(price_by, f"{key}.price_by")
        table = spec.get("prices", {})
        if not isinstance(table, Mapping):
            self.fail(f"{key}.prices", "must be a table of dimension value = rate")
        prices = {
            str(value): self.per_event(kind, spec, key, rate, f"{key}.prices.{value}")
            for value, rate in table.items()
        }
        return dimension, prices

    def per_event(
        self, kind: str, spec: Mapping[str, object], key: str, rate: object, rate_key: str
    ) -> PerEventModel:
        """A per-unit or package model: ``spec`` (at ``key``) holds per or size."""
        if rate is None:
            self.fail(rate_key, "missing: the price")
        value = self.price(rate, rate_key)
        if kind == "package":
            if "size" not in spec:
                self.fail(f"{key}.size", "missing: the block size of the package model")
            size = self.number(spec["size"], f"{key}.size")
            if size <= 0:
                self.fail(f"{key}.size", f"must be > 0: {size}")
            return Package(rate=value, size=size)
        if "size" in spec:
            self.fail(f"{key}.size", "only the package model has a size")
        per = self.number(spec.get("per", 1), f"{key}.per")
        try:
            return PerUnit(rate=value, per=per)
        except PriceBookError as exc:
            self.fail(f"{key}.per", str(exc))

    def period(self, value: object, key: str, base: PerEventModel | None) -> ChargeModel:
        spec = self.table(value, key, _PERIOD_KEYS)
        kind = spec.get("model")
        model: ChargeModel
        if kind is None:
            if "rate" in spec or "tiers" in spec:
                self.fail(f"{key}.model", "missing: say which model the rate or tiers are for")
            if base is None:
                self.fail(
                    f"{key}.model",
                    "missing: the product has no default rate, so say how the period is priced",
                )
            model = base
        elif kind in {"per_unit", "package"}:
            model = self.per_event(str(kind), spec, key, spec.get("rate"), f"{key}.rate")
        elif kind in {"graduated", "volume"}:
            tiers = self.tiers(spec.get("tiers"), f"{key}.tiers")
            try:
                model = (
                    GraduatedTiers(tiers=tiers) if kind == "graduated" else VolumeTiers(tiers=tiers)
                )
            except PriceBookError as exc:
                self.fail(f"{key}.tiers", str(exc))
        else:
            self.fail(
                f"{key}.model",
                f"unknown model {kind!r}; use per_unit, package, graduated or volume",
            )
        if "free" in spec:
            free = self.number(spec["free"], f"{key}.free")
            if free < 0:
                self.fail(f"{key}.free", f"must be >= 0: {free}")
            model = FreeAllowance(free=free, model=model)
        if "minimum" in spec:
            minimum = self.price(spec["minimum"], f"{key}.minimum")
            model = MinimumCharge(minimum=minimum, model=model)
        return model

    def tiers(self, value: object, key: str) -> list[Tier]:
        if not isinstance(value, list) or not value:
            self.fail(key, "must be a non-empty list of {start, up_to, rate} tables")
        tiers: list[Tier] = []
        previous_end: Decimal | None = Decimal(0)
        for index, item in enumerate(value):
            where = f"{key}[{index}]"
            spec = self.table(item, where, frozenset({"start", "up_to", "rate"}))
            if "rate" not in spec:
                self.fail(f"{where}.rate", "missing: the price per unit in this tier")
            if "start" in spec:
                start = self.number(spec["start"], f"{where}.start")
            elif previous_end is None:
                self.fail(where, "follows an unbounded tier; only the last tier may omit up_to")
            else:
                start = previous_end
            up_to = spec.get("up_to")
            end = None if up_to is None else self.number(up_to, f"{where}.up_to")
            rate = self.price(spec["rate"], f"{where}.rate")
            if start < 0:
                self.fail(f"{where}.start", f"must be >= 0: {start}")
            try:
                tiers.append(Tier(start=start, up_to=end, rate=rate))
            except PriceBookError as exc:
                self.fail(where, str(exc))
            previous_end = end
        return tiers

    def parents(self, value: object) -> dict[Account, Account]:
        key = "routing.parents"
        if not isinstance(value, list):
            self.fail(
                key, "must be an array of tables: [[routing.parents]] account=..., parent=..."
            )
        direct: dict[Account, Account] = {}
        for index, item in enumerate(value):
            where = f"{key}[{index}]"
            spec = self.table(item, where, frozenset({"account", "parent"}))
            if "account" not in spec or "parent" not in spec:
                self.fail(where, "needs both account and parent")
            child = self.account(spec["account"], f"{where}.account")
            parent = self.account(spec["parent"], f"{where}.parent")
            if child == parent and type(child) is type(parent):
                self.fail(where, f"account {child!r} cannot be its own parent")
            if child in direct:
                self.fail(where, f"account {child!r} already has parent {direct[child]!r}")
            direct[child] = parent
        resolved: dict[Account, Account] = {}
        for child, parent in direct.items():
            seen = [child]
            payer = parent
            while payer in direct:
                if payer in seen:
                    chain = " -> ".join(repr(a) for a in [*seen, payer])
                    self.fail(key, f"parent accounts form a cycle: {chain}; break it")
                seen.append(payer)
                payer = direct[payer]
            resolved[child] = payer
        return resolved

    def splits(self, value: object) -> dict[Account, tuple[Share, ...]]:
        key = "routing.splits"
        if not isinstance(value, list):
            self.fail(
                key, "must be an array of tables: [[routing.splits]] account=..., shares=[...]"
            )
        splits: dict[Account, tuple[Share, ...]] = {}
        for index, item in enumerate(value):
            where = f"{key}[{index}]"
            spec = self.table(item, where, frozenset({"account", "shares"}))
            if "account" not in spec or "shares" not in spec:
                self.fail(where, "needs both account and shares")
            account = self.account(spec["account"], f"{where}.account")
            if account in splits:
                self.fail(where, f"account {account!r} already has a split")
            items = spec["shares"]
            if not isinstance(items, Sequence) or isinstance(items, str) or not items:
                self.fail(f"{where}.shares", "must be a non-empty list of {account, percent}")
            shares: list[Share] = []
            for position, share in enumerate(items):
                at = f"{where}.shares[{position}]"
                share_spec = self.table(share, at, frozenset({"account", "percent"}))
                if "account" not in share_spec or "percent" not in share_spec:
                    self.fail(at, "needs both account and percent")
                percent = self.number(share_spec["percent"], f"{at}.percent")
                if percent <= 0:
                    self.fail(f"{at}.percent", f"must be > 0: {percent}; drop the share instead")
                payer = self.account(share_spec["account"], f"{at}.account")
                if any(s.account == payer and type(s.account) is type(payer) for s in shares):
                    self.fail(f"{at}.account", f"{payer!r} appears twice; merge its shares")
                shares.append(Share(account=payer, percent=percent))
            total = sum((s.percent for s in shares), Decimal(0))
            if total != 100:
                self.fail(
                    f"{where}.shares",
                    f"the percentages sum to {total}, not 100; make them add up to exactly 100",
                )
            splits[account] = tuple(shares)
        return splits
