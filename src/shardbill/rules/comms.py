"""The example rule set: a communications platform billing SMS, voice and email.

The price book is ``shardbill/rules/data/comms.toml`` (:func:`price_book`);
:func:`engine` returns a ready :class:`~shardbill.rules.RulesEngine`. The
chain, in order (:data:`RULE_NAMES`):

1. ``comms.sms``: SMS per *segment*, by destination country (``country``
   dimension, a default rate for countries not listed). The event quantity
   is the number of messages; each message's segments come from its
   ``characters`` and ``encoding`` dimensions (:func:`segments`). The charge's
   quantity is the segments billed.
2. ``comms.voice``: voice per started minute (a package of 60 seconds), by
   ``direction``; one event is one call, its quantity the call's seconds.
3. ``comms.email``: email at 0.90 per thousand, pro rata per email (exactly
   0.0009 each at the pricing scale, rather than per started thousand, so
   that splitting a send into several events never changes the price). The
   monthly allowance (the first 1000 emails free) is a period model, applied
   from the month's aggregates by :meth:`~shardbill.rules.PriceBook.statement_amount`.
4. ``shardbill.parent_account``: a subaccount's charges go to the account in
   its ``parent_account`` dimension (or the price book's parents table).
5. ``shardbill.percentage_split``: a reseller's charges are split 70/30.

Every rule is published under the ``shardbill.rules`` entry points, so
``RulesEngine.from_entry_points(names=RULE_NAMES, price_book=price_book())``
builds the same engine.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from decimal import Decimal
from importlib import resources
from typing import Final

from shardbill import money
from shardbill.errors import InvalidInputError
from shardbill.rules.engine import Rule, RuleContext, RulesEngine, rule
from shardbill.rules.events import Charge, DimensionValue, UsageEvent
from shardbill.rules.pricebook import PriceBook, PriceBookRule
from shardbill.rules.routing import parent_account, percentage_split

__all__ = [
    "RULE_NAMES",
    "email",
    "engine",
    "price_book",
    "rules",
    "segments",
    "sms",
    "voice",
]

RULE_NAMES: Final = (
    "comms.sms",
    "comms.voice",
    "comms.email",
    "shardbill.parent_account",
    "shardbill.percentage_split",
)
"""The names of the example chain's rules, in order."""

# (characters in a single-segment message, characters per segment when concatenated)
_SEGMENT_SIZES: Final = {"gsm7": (160, 153), "ucs2": (70, 67)}


def segments(characters: int, encoding: str = "gsm7") -> int:
    """How many SMS segments a message of ``characters`` characters takes.

    GSM-7 fits 160 characters in one segment; a longer message is sent as
    concatenated segments of 153 (7 characters go to the concatenation
    header). UCS-2 (any character outside GSM-7, e.g. emoji) fits 70, then 67
    per segment. An empty message still takes one segment.

    Args:
        characters: the message length, >= 0.
        encoding: ``"gsm7"`` or ``"ucs2"``.

    Returns:
        The number of segments, >= 1.

    Raises:
        InvalidInputError: for an unknown encoding or a negative length.

    Example:
        >>> segments(160), segments(161), segments(306), segments(307)
        (1, 2, 2, 3)
        >>> segments(71, "ucs2")
        2
    """
    sizes = _SEGMENT_SIZES.get(encoding)
    if sizes is None:
        raise InvalidInputError(
            f"dimension 'encoding' must be one of {', '.join(sorted(_SEGMENT_SIZES))}: {encoding!r}"
        )
    if characters < 0:
        raise InvalidInputError(f"dimension 'characters' must be >= 0: {characters}")
    single, concatenated = sizes
    if characters <= single:
        return 1
    return -(-characters // concatenated)


def _int_dimension(name: str, value: DimensionValue) -> int:
    if type(value) is int:
        return value
    try:
        return int(value, 10)  # type: ignore[arg-type]  # a str (CSV) dimension
    except (TypeError, ValueError):
        raise InvalidInputError(f"dimension {name!r} must be an integer: {value!r}") from None


@rule(name="comms.sms", version="1")
def sms(event: UsageEvent, context: RuleContext) -> Iterable[Charge] | None:
    """Price an SMS event per segment by destination country (``comms.sms``)."""
    if event.product != "sms":
        return None
    priced = context.price_book.product("sms")
    dimensions = event.dimensions
    characters = dimensions.get("characters")
    per_message = 1
    if characters is not None:
        encoding = dimensions.get("encoding", "gsm7")
        per_message = segments(_int_dimension("characters", characters), str(encoding))
    billed = money.EXACT.multiply(event.quantity, Decimal(per_message))
    model = priced.model_for(dimensions)
    return context.add(
        context.charge(
            event,
            amount=model.price(billed),
            quantity=billed,
            dimensions=priced.charge_dimensions(dimensions),
        )
    )


voice = PriceBookRule(name="comms.voice", version="1", products=frozenset({"voice"}))
"""The ``comms.voice`` rule, voice per started minute by direction (a package model)."""

email = PriceBookRule(name="comms.email", version="1", products=frozenset({"email"}))
"""The ``comms.email`` rule, email per thousand, pro rata per email (a per-unit model)."""


@functools.cache
def price_book() -> PriceBook:
    """The example price book, loaded once from ``shardbill/rules/data/comms.toml``.

    Returns:
        The validated price book.
    """
    source = resources.files("shardbill.rules").joinpath("data", "comms.toml")
    return PriceBook.from_toml(
        source.read_text(encoding="utf-8"), source="shardbill/rules/data/comms.toml"
    )


def rules() -> tuple[Rule, ...]:
    """The example chain, in order (the rules named in :data:`RULE_NAMES`).

    Returns:
        The rules.
    """
    return (sms, voice, email, parent_account, percentage_split)


def engine(*, book: PriceBook | None = None) -> RulesEngine:
    """A rules engine for the example: the chain of :func:`rules` over the comms price book.

    Args:
        book: another price book with the same products (default :func:`price_book`).

    Returns:
        The engine.

    Example:
        >>> from datetime import datetime, UTC
        >>> event = UsageEvent(event_id="e-1", account=7, time=datetime(2026, 1, 5, tzinfo=UTC),
        ...     product="sms", quantity=1, dimensions={"country": "GB", "characters": 200})
        >>> charge, = engine().price(event).charges
        >>> charge.quantity, charge.amount  # 2 segments at 0.0463
        (Decimal('2'), Decimal('0.092600'))
    """
    return RulesEngine(rules=rules(), price_book=price_book() if book is None else book)
