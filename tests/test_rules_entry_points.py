"""Entry-point discovery, for real: a third-party rule package found through a dist-info.

The example package in examples/rule_package is "installed" by writing a
``*.dist-info`` directory (METADATA + entry_points.txt generated from the
example's own pyproject.toml) into a temporary directory on ``sys.path``,
exactly what pip would leave behind (the fixtures ``site`` and
``installed_example`` of tests/support/rule_package.py). importlib.metadata
then finds it.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from shardbill.errors import ConfigurationError
from shardbill.rules import RulesEngine, UsageEvent, available_rules, comms, load_rule
from tests.support.rule_package import MODULE, write_dist


def test_example_is_not_installed_by_default() -> None:
    """Without the dist-info the third-party rule is unknown (the tests below prove discovery)."""
    assert "example.carrier_fee" not in available_rules()
    with pytest.raises(ConfigurationError, match=r"unknown rule 'example\.carrier_fee'"):
        load_rule("example.carrier_fee")


@pytest.mark.usefixtures("installed_example")
def test_third_party_rule_is_discovered_by_name() -> None:
    """The rule declared in the example's pyproject.toml is found and loaded."""
    assert available_rules()["example.carrier_fee"] == f"{MODULE}:carrier_fee"
    loaded = load_rule("example.carrier_fee")
    assert (loaded.name, loaded.version) == ("example.carrier_fee", "1")
    assert sys.modules[MODULE].carrier_fee is loaded


@pytest.mark.usefixtures("installed_example")
def test_third_party_rule_runs_in_a_discovered_chain() -> None:
    """Built-ins and the third-party rule, all by name: fees follow the SMS to the parent."""
    engine = RulesEngine.from_entry_points(
        names=["comms.sms", "example.carrier_fee", "shardbill.parent_account"],
        price_book=comms.price_book(),
    )
    event = UsageEvent(
        event_id="e-1",
        account=7,
        time=datetime(2026, 1, 5, tzinfo=UTC),
        product="sms",
        quantity=1,
        dimensions={"country": "US", "characters": 200, "parent_account": 1000},
    )
    charges = engine.price(event).charges
    # 200 GSM-7 characters = 2 segments: 2 * 0.0079 = 0.0158 and a fee of 2 * 0.0030 = 0.0060
    assert [(c.product, c.account, c.amount, c.rule) for c in charges] == [
        ("sms", 1000, Decimal("0.015800"), "comms.sms"),
        ("sms_carrier_fee", 1000, Decimal("0.006000"), "example.carrier_fee"),
    ]


def test_entry_point_name_must_match_the_rule_name(site: Path) -> None:
    """Publishing a rule under another name is refused with both names."""
    write_dist(site, "misnamed", {"shardbill.rules": {"example.fee": f"{MODULE}:carrier_fee"}})
    with pytest.raises(ConfigurationError, match=r"'example\.fee'.*named 'example\.carrier_fee'"):
        load_rule("example.fee")


def test_entry_point_that_is_not_a_rule(site: Path) -> None:
    """An entry point loading a non-rule (a Decimal constant) is a configuration error."""
    write_dist(site, "constant", {"shardbill.rules": {"example.fee": f"{MODULE}:FEE_PER_SEGMENT"}})
    with pytest.raises(ConfigurationError, match=r"entry point 'example\.fee'.* is not a rule"):
        load_rule("example.fee")


def test_entry_point_that_fails_to_import(site: Path) -> None:
    """A broken entry point names the rule, its target and the import error."""
    write_dist(site, "broken", {"shardbill.rules": {"example.gone": "no_such_module:rule"}})
    with pytest.raises(
        ConfigurationError, match=r"'example\.gone' \(no_such_module:rule\).*Module"
    ):
        load_rule("example.gone")


def test_conflicting_publishers_are_refused(site: Path) -> None:
    """Two distributions publishing one name with different targets is an error naming both."""
    write_dist(site, "one", {"shardbill.rules": {"comms.sms": "elsewhere:sms"}})
    with pytest.raises(ConfigurationError, match=r"two installed distributions publish.*comms"):
        available_rules()
