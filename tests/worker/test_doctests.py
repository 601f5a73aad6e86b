"""The examples in the worker's docstrings are true."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["shardbill.worker.decoding", "shardbill.worker.memory"])
def test_docstring_examples_hold(name: str) -> None:
    """Every ``>>>`` example of the module gives the output it shows (and there is one)."""
    result = doctest.testmod(importlib.import_module(name), verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
