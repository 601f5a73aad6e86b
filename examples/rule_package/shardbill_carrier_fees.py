"""A third-party shardbill rule: a pass-through carrier fee on SMS sent to the US.

US carriers charge senders a fee per message segment; a platform passes it
on as its own line. This rule runs after the SMS pricing rule in the chain:
for each SMS charge so far whose destination is the US, it adds a
``sms_carrier_fee`` charge for the same account, segments and dimensions.

It is published under the ``shardbill.rules`` entry-point group (see
``pyproject.toml`` next to this file), so an installed copy is found by name::

    RulesEngine.from_entry_points(names=[..., "example.carrier_fee"], price_book=...)
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from shardbill import money
from shardbill.rules import Charge, RuleContext, UsageEvent, rule

FEE_PER_SEGMENT = Decimal("0.0030")
"""The carrier fee per US SMS segment, in the price book's currency."""


@rule(name="example.carrier_fee", version="1")
def carrier_fee(event: UsageEvent, context: RuleContext) -> Iterable[Charge] | None:
    """Add a carrier fee per segment for every US SMS charge made before this rule."""
    fees = [
        context.charge(
            event,
            product="sms_carrier_fee",
            account=charge.account,
            quantity=charge.quantity,
            dimensions=charge.dimensions,
            amount=money.EXACT.multiply(charge.quantity, FEE_PER_SEGMENT),
        )
        for charge in context.charges
        if charge.product == "sms" and charge.dimensions.get("country") == "US"
    ]
    if not fees:
        return None  # nothing to add: the charges so far pass on unchanged
    return context.add(*fees)
