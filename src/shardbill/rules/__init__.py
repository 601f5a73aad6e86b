"""Billing rules: usage events in, charges out, exact money (pure, no I/O).

The public names are re-exported here; each lives in one submodule:

* :mod:`shardbill.rules.events`: :class:`UsageEvent`, :class:`Charge`, :class:`Dimensions`.
* :mod:`shardbill.rules.engine`: the :class:`Rule` protocol, :func:`rule`,
  :class:`RuleContext`, :class:`RulesEngine`, :class:`PricingResult`,
  :class:`BatchPricing`, :class:`PricingRejection`, entry-point discovery.
* :mod:`shardbill.rules.models`: the charge models (per unit, package,
  graduated and volume tiers, free allowance, minimum charge).
* :mod:`shardbill.rules.pricebook`: :class:`PriceBook` (TOML or JSON) and the
  ``shardbill.price_book`` rule.
* :mod:`shardbill.rules.routing`: parent billing and percentage splits.
* :mod:`shardbill.rules.comms`: the example rule set (SMS, voice, email).

Money helpers are in :mod:`shardbill.money`.

Level: the pure core (``tests/test_layers.py``): imports only the pure core
and the bottom level (errors, protocols), never anything that does I/O.
"""

from shardbill.rules.engine import (
    ENTRY_POINT_GROUP,
    BatchPricing,
    FunctionRule,
    PricingRejection,
    PricingResult,
    Rule,
    RuleContext,
    RulesEngine,
    available_rules,
    load_rule,
    rule,
)
from shardbill.rules.events import Charge, Dimensions, PricedEvent, UsageEvent
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
from shardbill.rules.pricebook import (
    PriceBook,
    PriceBookRule,
    PricingSettings,
    ProductPrice,
    Share,
)
from shardbill.rules.routing import ParentBilling, PercentageSplit, split_charge

__all__ = [
    "ENTRY_POINT_GROUP",
    "BatchPricing",
    "Charge",
    "ChargeModel",
    "Dimensions",
    "FreeAllowance",
    "FunctionRule",
    "GraduatedTiers",
    "MinimumCharge",
    "Package",
    "ParentBilling",
    "PerUnit",
    "PercentageSplit",
    "PriceBook",
    "PriceBookRule",
    "PricedEvent",
    "PricingRejection",
    "PricingResult",
    "PricingSettings",
    "ProductPrice",
    "Rule",
    "RuleContext",
    "RulesEngine",
    "Share",
    "Tier",
    "UsageEvent",
    "VolumeTiers",
    "available_rules",
    "load_rule",
    "rule",
    "split_charge",
]
