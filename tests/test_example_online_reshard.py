"""examples/online_reshard.py: run as a script, it adds a shard while writing and ends exact."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mysql import ServerAddress

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "online_reshard.py"


def _run(*urls: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLE), *urls],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def _rows(line: str, prefix: str) -> dict[str, int]:
    assert line.startswith(prefix), line
    return {shard: int(n) for shard, n in re.findall(r"(s\d) (\d+) rows", line)}


def _check(lines: list[str]) -> None:
    assert len(lines) == 6, lines
    before = _rows(lines[0], "before: ")
    assert sorted(before) == ["s0", "s1", "s2"]
    assert all(n > 0 for n in before.values())
    assert lines[1] == "reshard plan: epoch 1 -> 2, 256 of 1024 slots move (25.00%)"
    assert re.fullmatch(
        r"moved 256 slots \(\d+ aggregate rows, \d+ ledger rows\) in [\d.]+ s; "
        r"the writer routes with epoch 2 now",
        lines[2],
    ), lines[2]
    after = _rows(lines[3], "after: ")
    assert sorted(after) == ["s0", "s1", "s2", "s3"]
    assert all(n > 0 for n in after.values())
    assert re.fullmatch(r"total \d+\.\d{6} USD over 6000 charges", lines[4]), lines[4]
    assert lines[5] == "exact"


def test_example_adds_a_shard_on_sqlite_while_writing_and_ends_exact() -> None:
    """On SQLite files the script moves a quarter of the slots to s3 and prints "exact"."""
    _check(_run())


@pytest.fixture
def four_databases(mysql_server: ServerAddress) -> Iterator[list[str]]:
    """Four fresh databases on the local server (dropped after), as pymysql URLs."""
    names = [f"sbex_{secrets.token_hex(3)}_{i}" for i in range(4)]
    admin: Any = mysql_server.connect()
    try:
        with admin.cursor() as cur:
            for name in names:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        yield [mysql_server.url(name) for name in names]
    finally:
        with admin.cursor() as cur:
            for name in names:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def test_example_adds_a_shard_on_mariadb_while_writing_and_ends_exact(
    four_databases: list[str],
) -> None:
    """Given four database URLs on the real server, the script ends "exact" the same way."""
    _check(_run(*four_databases))
