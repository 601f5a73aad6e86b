"""The example rule package (examples/rule_package), "installed" for a test as pip would.

A ``*.dist-info`` directory (METADATA + entry_points.txt generated from the
example's own pyproject.toml) is written into a temporary directory on
``sys.path``; importlib.metadata then finds the package's entry points.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "examples" / "rule_package"
MODULE = "shardbill_carrier_fees"


def write_dist(site: Path, name: str, entry_points: Mapping[str, Mapping[str, str]]) -> None:
    """Write the metadata pip would install for distribution ``name`` into ``site``."""
    dist = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n", encoding="utf-8"
    )
    lines = []
    for group, entries in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in entries.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary site directory on sys.path, with the example module importable."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(MODULE, None)


@pytest.fixture
def installed_example(site: Path) -> Path:
    """The example package installed from its own pyproject.toml declaration."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    write_dist(site, project["name"], project["entry-points"])
    return site
