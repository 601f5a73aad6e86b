"""The examples in the docstrings of shardbill.money and shardbill.rules are true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "shardbill.money",
    "shardbill.rules.events",
    "shardbill.rules.engine",
    "shardbill.rules.models",
    "shardbill.rules.pricebook",
    "shardbill.rules.routing",
    "shardbill.rules.comms",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name: str) -> None:
    """Every ``>>>`` example in the module's docstrings gives the output it shows."""
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0


def test_money_module_has_examples() -> None:
    """The money helpers document themselves with examples (so the test above checks some)."""
    module = importlib.import_module("shardbill.money")
    tests = doctest.DocTestFinder().find(module)
    assert sum(len(t.examples) for t in tests) >= 15
