"""The package's public surface: names, version, typing marker, import hygiene."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

import shardbill


def test_all_is_sorted_and_complete() -> None:
    """``__all__`` is sorted and every name in it exists."""
    assert list(shardbill.__all__) == sorted(shardbill.__all__)
    missing = [name for name in shardbill.__all__ if not hasattr(shardbill, name)]
    assert missing == []


def test_public_classes_are_not_missing_from_all() -> None:
    """Every public class the package namespace holds is listed in ``__all__``."""
    public = {
        name
        for name, value in vars(shardbill).items()
        if not name.startswith("_") and isinstance(value, type)
    }
    assert public - set(shardbill.__all__) == set()


def test_version_is_a_pep440_string() -> None:
    """The version comes from one place and looks like a version."""
    parts = shardbill.__version__.split(".")
    assert len(parts) >= 3
    assert parts[0].isdigit()


def test_py_typed_marker_ships() -> None:
    """The package declares itself typed (PEP 561)."""
    assert resources.files("shardbill").joinpath("py.typed").is_file()


def test_import_does_not_import_a_mysql_driver() -> None:
    """``import shardbill`` must not import PyMySQL or mysqlclient (drivers load lazily)."""
    code = (
        "import sys, shardbill, shardbill.cli\n"
        "bad = [m for m in ('pymysql', 'MySQLdb') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""


def test_every_error_is_a_shardbill_error() -> None:
    """Each error class exported derives from ShardbillError."""
    for name in shardbill.errors.__all__:
        assert issubclass(getattr(shardbill.errors, name), shardbill.ShardbillError)


def test_configuration_errors_are_value_errors() -> None:
    """Configuration errors are also ValueErrors, so generic handlers catch them."""
    assert issubclass(shardbill.ConfigurationError, ValueError)
    assert issubclass(shardbill.ShardMapError, ValueError)
