"""Routing rules: change who pays for the charges earlier rules made.

Both rules go *after* the pricing rules in the chain: they read
``context.charges`` and return them re-routed (or ``None`` when nothing
changes). Neither changes the total amount of an event: re-routing moves a
charge whole, and a split divides it with exact largest-remainder rounding
at the charge's scale, so the parts always sum to the whole.

* :class:`ParentBilling` (``shardbill.parent_account``): a subaccount's usage
  is billed to its parent, named by the event's ``parent_account`` dimension
  or by the price book's ``[[routing.parents]]`` table.
* :class:`PercentageSplit` (``shardbill.percentage_split``): an account's
  charges are split between accounts by the percentages in the price book's
  ``[[routing.splits]]`` table.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from shardbill import money
from shardbill.errors import InvalidInputError
from shardbill.rules.events import (
    Account,
    Charge,
    DimensionValue,
    UsageEvent,
    _check_account,
    _replace_charge,
)
from shardbill.rules.pricebook import Share

if TYPE_CHECKING:
    from shardbill.rules.engine import RuleContext

__all__ = [
    "ParentBilling",
    "PercentageSplit",
    "parent_account",
    "percentage_split",
    "split_charge",
]


def _coerce_account(value: DimensionValue, like: Account, dimension: str) -> Account:
    """A parent named in a dimension takes the type of the child's account id."""
    if type(like) is int and type(value) is str:
        try:
            return int(value, 10)
        except ValueError:
            raise InvalidInputError(
                f"dimension {dimension!r} must name an integer account (the account "
                f"{like!r} is an int): {value!r}"
            ) from None
    if type(like) is str and type(value) is int:
        return str(value)
    return value


@attrs.frozen(kw_only=True)
class ParentBilling:
    """Bill a subaccount's charges to its parent account.

    For each charge so far, the payer becomes:

    1. for a charge on the event's own account, the account named by the
       event's ``dimension`` (default ``parent_account``), if present; an id
       given as text is read as an int when the account ids are ints;
    2. then, or otherwise, the root payer from ``parents`` (the price book's
       ``[[routing.parents]]`` when not given), if listed.

    A re-routed charge keeps its amount and the rule name and version of the
    rule that priced it; ``record_as`` (default ``subaccount``) names a
    dimension set to the original account, so a parent's statement can still
    itemize by subaccount (None: do not record it). Charges that do not move
    are returned as they are; if none moves, the rule returns None.

    Attributes:
        name: the rule name (default ``"shardbill.parent_account"``).
        version: the rule version.
        dimension: the event dimension that names the parent.
        record_as: the charge dimension that records the original account, or None.
        parents: child -> payer; None to use the price book's.
    """

    name: str = "shardbill.parent_account"
    version: str = "1"
    dimension: str = "parent_account"
    record_as: str | None = "subaccount"
    parents: Mapping[Account, Account] | None = None

    def payer(
        self, charge: Charge, event: UsageEvent, parents: Mapping[Account, Account]
    ) -> Account:
        """The account that pays for ``charge``.

        Args:
            charge: a charge for ``event``.
            event: the event.
            parents: child -> root payer.

        Returns:
            The paying account (the charge's own account when it has no parent).
        """
        account = charge.account
        if account == event.account and type(account) is type(event.account):
            named = event.dimensions.get(self.dimension)
            if named is not None:
                account = _coerce_account(named, account, self.dimension)
        return parents.get(account, account) if parents else account

    def __call__(self, event: UsageEvent, context: RuleContext, /) -> Iterable[Charge] | None:
        """Re-route the charges so far to their payers; None if none moves."""
        charges = context.charges
        if not charges:
            return None
        parents = context.price_book.parents if self.parents is None else self.parents
        if not parents and self.dimension not in event.dimensions:
            return None
        routed: list[Charge] = []
        moved = False
        for charge in charges:
            payer = self.payer(charge, event, parents)
            if payer == charge.account and type(payer) is type(charge.account):
                routed.append(charge)
                continue
            moved = True
            dimensions = charge.dimensions
            if self.record_as is not None:
                dimensions = dimensions.with_values(**{self.record_as: charge.account})
            account = _check_account("account", payer)
            routed.append(_replace_charge(charge, account=account, dimensions=dimensions))
        return routed if moved else None


@functools.lru_cache(maxsize=4096)
def _weights(shares: tuple[Share, ...]) -> tuple[int, ...]:
    """The shares' percentages as exact integer weights (cached: splits repeat per event)."""
    return tuple(money.integer_weights([share.percent for share in shares]))


def split_charge(charge: Charge, shares: Sequence[Share]) -> list[Charge]:
    """Split one charge between accounts by percentage; the parts sum exactly to the charge.

    The amount is split at the charge's scale, and the quantity at the same
    scale (or finer, if the quantity has more places), each with the
    largest-remainder method of :func:`shardbill.money.split`: every part is
    within one unit of its exact share and ties go to the earlier share.

    Args:
        charge: the charge.
        shares: the accounts and their percentages (summing to 100).

    Returns:
        One charge per share, in share order (zero-amount parts included).

    Example:
        >>> from datetime import datetime, UTC
        >>> from decimal import Decimal
        >>> c = Charge(event_id="e", account=1, product="sms", quantity=1,
        ...            amount=Decimal("0.000010"), currency="USD",
        ...            time=datetime(2026, 1, 1, tzinfo=UTC), rule="r", rule_version="1")
        >>> [p.amount for p in split_charge(c, [Share(account=1, percent=Decimal(50)),
        ...                                     Share(account=2, percent=Decimal(25)),
        ...                                     Share(account=3, percent=Decimal(25))])]
        [Decimal('0.000005'), Decimal('0.000003'), Decimal('0.000002')]
    """
    weights = _weights(tuple(shares))
    amounts = money.split(charge.amount, weights, charge.scale)
    exponent = charge.quantity.as_tuple().exponent
    places = max(charge.scale, -exponent if isinstance(exponent, int) else 0)
    quantities = money.split(charge.quantity, weights, min(places, money.MAX_SCALE))
    return [
        _replace_charge(
            charge,
            account=_check_account("account", share.account),
            amount=amount,
            quantity=quantity,
        )
        for share, amount, quantity in zip(shares, amounts, quantities, strict=True)
    ]


@attrs.frozen(kw_only=True)
class PercentageSplit:
    """Split the charges of some accounts between several payers by percentage.

    Each charge so far whose account has a split (in ``splits``, default the
    price book's ``[[routing.splits]]``) is replaced by one charge per share
    (:func:`split_charge`); other charges pass unchanged. Returns None if no
    charge is split.

    Attributes:
        name: the rule name (default ``"shardbill.percentage_split"``).
        version: the rule version.
        splits: account -> shares; None to use the price book's.
    """

    name: str = "shardbill.percentage_split"
    version: str = "1"
    splits: Mapping[Account, Sequence[Share]] | None = None

    def __call__(self, event: UsageEvent, context: RuleContext, /) -> Iterable[Charge] | None:
        """Split the charges so far that belong to accounts with a split; None if none do."""
        splits = context.price_book.splits if self.splits is None else self.splits
        if not splits:
            return None
        result: list[Charge] = []
        changed = False
        for charge in context.charges:
            shares = splits.get(charge.account)
            if shares is None:
                result.append(charge)
            else:
                changed = True
                result.extend(split_charge(charge, shares))
        return result if changed else None


parent_account = ParentBilling()
"""The ``shardbill.parent_account`` rule, with the default settings."""

percentage_split = PercentageSplit()
"""The ``shardbill.percentage_split`` rule, with the default settings."""
