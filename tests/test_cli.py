"""The ``shardbill`` command line, run end to end in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardbill", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        timeout=300,
    )


def test_help_lists_the_commands(tmp_path: Path) -> None:
    """``--help`` exits 0 and names the demo command."""
    result = _run("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "demo" in result.stdout


def test_demo_reports_an_exact_audit_and_skips_replayed_duplicates(tmp_path: Path) -> None:
    """The demo writes to SQLite files, skips every replayed duplicate and audits exact."""
    result = _run("demo", "--dir", str(tmp_path / "d"), "--events", "3000", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["audit"] == "exact"
    assert report["applied"] == 3000
    assert report["duplicates_skipped"] == 300
    assert sorted(p.name for p in (tmp_path / "d").glob("*.db")) == [
        "shard-0.db",
        "shard-1.db",
        "shard-2.db",
        "shard-3.db",
    ]


def test_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    """An unknown command exits 2 with a usage message."""
    result = _run("nonsense", cwd=tmp_path)
    assert result.returncode == 2
    assert "usage" in result.stderr
