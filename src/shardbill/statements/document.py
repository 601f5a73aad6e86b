"""A statement as data, its line pricing and its canonical bytes (no I/O).

A :class:`Statement` is one account's bill for one closed period: one
:class:`StatementLine` per product and currency, and one total per
currency. :func:`price_lines` makes the lines from the period's aggregated
totals and the price book; :meth:`Statement.to_json` and
:meth:`Statement.to_csv` give its canonical bytes, each with a sha256 checksum
inside, so the same aggregates and price book give the same bytes on every
run and on every machine.

**The money.** A line's ``usage_amount`` is the period's sum of the charge
amounts, exact at the pricing scale (the aggregates store integer units).
Its ``amount`` is rounded exactly once, to the currency's minor unit, with the
price book's rounding mode (``ROUND_HALF_EVEN`` unless the book says
otherwise): the product's period model (tiers, allowance, minimum) prices the
period's total quantity when it has one, otherwise the line bills the
``usage_amount``. A currency's total is the exact sum of its lines' rounded
amounts: no second rounding. The minor-unit exponent of a currency (USD 2,
JPY 0, BHD 3) is ISO 4217's, from :data:`shardbill.money.CURRENCIES`.

**The canonical form.** JSON: keys sorted, no spaces
(``separators=(",", ":")``), UTF-8 without escapes, one line ending in
``\\n``; every decimal a string in fixed-point notation with its scale's
places (the table's scale for quantities and usage, the currency's exponent
for amounts), every count an integer. The ``sha256`` key is the hex digest
of the canonical JSON of the statement *without* that key. CSV: a header,
one row per line, one ``total`` row per currency, ``\\n`` line endings, and a
last row ``sha256,<hex>``, the digest of every byte before that row. Lines
are ordered by product, then currency; totals by currency. No time stamps:
the only times are the period's bounds.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal

import attrs

from shardbill import money
from shardbill.errors import InvalidInputError
from shardbill.periods.months import Period
from shardbill.rules.events import Account
from shardbill.rules.pricebook import PriceBook

__all__ = [
    "CSV_COLUMNS",
    "FORMAT",
    "Statement",
    "StatementLine",
    "UsageTotal",
    "price_lines",
    "verify_csv",
    "verify_json",
]

FORMAT = "shardbill-statement/1"
"""The statement format's name and version, written into every statement."""

CSV_COLUMNS = (
    "record",
    "period",
    "account",
    "product",
    "unit",
    "currency",
    "quantity",
    "usage_amount",
    "charges",
    "pricing",
    "amount",
    "minor_units",
)
"""The columns of a statement's CSV, in order."""


def _fixed(value: Decimal) -> str:
    """A decimal in fixed-point notation with exactly its own places (never an exponent)."""
    return format(value, "f")


@attrs.frozen(kw_only=True)
class UsageTotal:
    """One account's aggregated usage of one product in one currency over a period.

    Attributes:
        product: the product token.
        currency: the ISO 4217 code of the amounts.
        quantity: the period's total quantity (exact, at the table's scale).
        usage_amount: the period's summed charge amounts (exact, at the pricing scale).
        charges: the number of charges (None when the table counts none).
    """

    product: str
    currency: str
    quantity: Decimal
    usage_amount: Decimal
    charges: int | None = None


@attrs.frozen(kw_only=True)
class StatementLine:
    """One line of a statement: a product in a currency.

    Attributes:
        product: the product token.
        unit: what one unit of quantity is (from the price book).
        currency: the ISO 4217 code.
        quantity: the period's total quantity.
        usage_amount: the period's summed per-event charge amounts, exact.
        charges: the number of charges (None when the table counts none).
        pricing: ``"period"`` when the product's period model priced the
            quantity, ``"per_event"`` when the line bills ``usage_amount``.
        amount: what the line bills, rounded once to the currency's minor unit.
    """

    product: str
    unit: str
    currency: str
    quantity: Decimal
    usage_amount: Decimal
    charges: int | None
    pricing: str
    amount: Decimal

    @property
    def minor_units(self) -> int:
        """The amount in the currency's minor units (cents, yen, fils)."""
        return money.to_minor_units(self.amount, money.Currency.of(self.currency).exponent)

    def to_dict(self) -> dict[str, object]:
        """The line as canonical JSON-ready data (decimals as fixed-point strings)."""
        return {
            "product": self.product,
            "unit": self.unit,
            "currency": self.currency,
            "quantity": _fixed(self.quantity),
            "usage_amount": _fixed(self.usage_amount),
            "charges": self.charges,
            "pricing": self.pricing,
            "amount": _fixed(self.amount),
            "minor_units": self.minor_units,
        }


def price_lines(
    totals: Sequence[UsageTotal], *, price_book: PriceBook, account: Account, period: Period
) -> tuple[StatementLine, ...]:
    """Price one account's period totals into statement lines, in canonical order.

    A product with a period model gets that model's price of the period's
    quantity; any other product bills its summed usage amount. Either is
    rounded once, to the currency's minor unit, with the price book's
    rounding mode. A line of no usage left (quantity, amount and charges all
    zero: everything cancelled by corrections) is left out.

    Args:
        totals: the account's usage totals for the period.
        price_book: the price book (units, period models, rounding).
        account: the account (for error messages).
        period: the period (for error messages).

    Returns:
        The lines, ordered by product, then currency.

    Raises:
        InvalidInputError: a period model cannot price a line (a negative
            period total, or a currency other than the price book's), naming
            the account, product, period and value.
    """
    rounding = price_book.settings.rounding
    lines = []
    for total in sorted(totals, key=lambda t: (t.product, t.currency)):
        if total.quantity == 0 and total.usage_amount == 0 and not total.charges:
            continue
        priced = price_book.products.get(total.product)
        where = f"statement {period} account {account!r} product {total.product!r}"
        pricing = "per_event"
        if priced is not None and priced.period is not None:
            if total.currency != price_book.currency:
                raise InvalidInputError(
                    f"{where}: its usage is in {total.currency}, but the period model of price "
                    f"book {price_book.name!r} prices in {price_book.currency}; price the "
                    "product in one currency per price book"
                )
            pricing = "period"
        if total.currency == price_book.currency:
            try:  # the price book's one statement-time rounding point
                amount = price_book.statement_amount(
                    total.product, quantity=total.quantity, amount=total.usage_amount
                )
            except InvalidInputError as exc:
                raise InvalidInputError(f"{where}: {exc}") from None
        else:  # per-event usage in another currency: its own minor unit, the same rounding
            amount = money.round_to_currency(total.usage_amount, total.currency, rounding)
        lines.append(
            StatementLine(
                product=total.product,
                unit=priced.unit if priced is not None else "unit",
                currency=total.currency,
                quantity=total.quantity,
                usage_amount=total.usage_amount,
                charges=total.charges,
                pricing=pricing,
                amount=amount,
            )
        )
    return tuple(lines)


def _canonical(data: Mapping[str, object]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@attrs.frozen(kw_only=True)
class Statement:
    """One account's statement for one closed period.

    Attributes:
        period: the billing period, ``YYYY-MM``.
        account: the account billed.
        price_book: the price book's name.
        price_book_version: its version.
        rounding: the rounding mode of the statement's one rounding point.
        table: the aggregate table the usage was read from.
        lines: the lines, by product, then currency.
    """

    period: str
    account: Account
    price_book: str
    price_book_version: str
    rounding: str
    table: str
    lines: tuple[StatementLine, ...]

    @property
    def totals(self) -> dict[str, Decimal]:
        """Per currency, the exact sum of the lines' rounded amounts (sorted by currency)."""
        out: dict[str, Decimal] = {}
        for line in self.lines:
            out[line.currency] = money.EXACT.add(out.get(line.currency, Decimal(0)), line.amount)
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, object]:
        """The statement without its checksum, as JSON-ready data."""
        period = Period.parse(self.period)
        return {
            "format": FORMAT,
            "period": self.period,
            "period_start": f"{self.period}-01T00:00:00Z",
            "period_end": f"{period.next()}-01T00:00:00Z",
            "account": self.account,
            "price_book": {"name": self.price_book, "version": self.price_book_version},
            "rounding": self.rounding,
            "table": self.table,
            "lines": [line.to_dict() for line in self.lines],
            "totals": [
                {
                    "currency": currency,
                    "amount": _fixed(amount),
                    "minor_units": money.to_minor_units(
                        amount, money.Currency.of(currency).exponent
                    ),
                }
                for currency, amount in self.totals.items()
            ],
        }

    @property
    def checksum(self) -> str:
        """The sha256 hex digest of the canonical JSON without the checksum (see the module)."""
        return hashlib.sha256(_canonical(self.to_dict())).hexdigest()

    def to_json(self) -> bytes:
        """The canonical JSON bytes, with ``sha256`` inside, ending in a newline."""
        return _canonical({**self.to_dict(), "sha256": self.checksum}) + b"\n"

    def to_csv(self) -> bytes:
        """The canonical CSV bytes, ending with the ``sha256,<hex>`` row of the bytes above it."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        account = str(self.account)
        for line in self.lines:
            row = line.to_dict()
            writer.writerow(
                [
                    "line",
                    self.period,
                    account,
                    *("" if row[c] is None else str(row[c]) for c in CSV_COLUMNS[3:]),
                ]
            )
        for currency, amount in self.totals.items():
            exponent = money.Currency.of(currency).exponent
            units = money.to_minor_units(amount, exponent)
            writer.writerow(
                [
                    "total",
                    self.period,
                    account,
                    "",
                    "",
                    currency,
                    "",
                    "",
                    "",
                    "",
                    _fixed(amount),
                    str(units),
                ]
            )
        body = out.getvalue().encode()
        return body + f"sha256,{hashlib.sha256(body).hexdigest()}\n".encode()


def verify_json(data: bytes) -> bool:
    """Whether a statement's JSON bytes are canonical and match their ``sha256``.

    Args:
        data: the bytes of one statement (:meth:`Statement.to_json`).

    Returns:
        True when re-serialising the statement without ``sha256`` gives the
        checksum it carries, and the bytes are exactly the canonical form.
    """
    try:
        parsed = json.loads(data)
    except ValueError:
        return False
    if not isinstance(parsed, dict) or not isinstance(parsed.get("sha256"), str):
        return False
    claimed = parsed.pop("sha256")
    body = _canonical(parsed)
    return (
        hashlib.sha256(body).hexdigest() == claimed
        and _canonical({**parsed, "sha256": claimed}) + b"\n" == data
    )


def verify_csv(data: bytes) -> bool:
    """Whether a statement's CSV bytes match the checksum of their last row.

    Args:
        data: the bytes of one statement (:meth:`Statement.to_csv`).

    Returns:
        True when the last row is ``sha256,<hex>`` of every byte before it.
    """
    body, sep, last = data.rstrip(b"\n").rpartition(b"\n")
    if not sep or not last.startswith(b"sha256,"):
        return False
    return hashlib.sha256(body + b"\n").hexdigest() == last[len(b"sha256,") :].decode()
