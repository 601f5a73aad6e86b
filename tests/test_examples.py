"""Every example runs, on SQLite and on MariaDB, and prints what the shards really hold."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from shardbill.rules import comms
from shardbill.workloads.synthetic import Traffic
from tests.support.mysql import ServerAddress

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RUN_HERE = ("minimal_service.py", "read_balances.py")
OWN_TESTS = {
    "custom_provider.py": "tests/test_examples_custom_provider.py",
    "online_reshard.py": "tests/test_example_online_reshard.py",
    "stream_worker.py": "tests/worker/test_example_stream_worker.py",
}


def test_every_example_is_run_by_a_test() -> None:
    """A new example file must be added here (or get a test of its own)."""
    found = {p.name for p in EXAMPLES.glob("*.py")}
    assert found == set(RUN_HERE) | set(OWN_TESTS)
    for test in OWN_TESTS.values():
        assert (EXAMPLES.parent / test).is_file()


def _run(name: str, *urls: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *urls],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _check_minimal_service(out: str) -> None:
    stream = Traffic(model="skewed", events=5000, seed=42, duplicate_fraction=0.02)
    charges = comms.engine().price_batch(stream.distinct()).charges
    total = sum((c.amount for c in charges), Decimal(0))
    delivered = sum(1 for _ in stream.deliveries())
    assert f"applied 5000 events, skipped {delivered - 5000} duplicates, rejected 0" in out
    assert f"charged {total:.6f} USD in {len(charges)} charges" in out


def _check_read_balances(out: str) -> None:
    traffic = Traffic(
        model="skewed",
        events=3000,
        seed=5,
        accounts=200,
        start=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
        span=dt.timedelta(days=29),
    )
    charges = comms.engine().price_batch(traffic.distinct()).charges
    busiest, count = Counter(c.account for c in charges).most_common(1)[0]
    mine = [c.amount for c in charges if c.account == busiest]
    assert (
        f"account {busiest} balance: {sum(mine, Decimal(0)):.6f} USD over {count} charges "
        f"(largest {max(mine):.6f})"
    ) in out
    for product in ("sms", "voice", "email"):
        amount = sum((c.amount for c in charges if c.product == product), Decimal(0))
        assert re.search(rf"2026-11 {product}\s+quantity\s+\S+ amount\s+{amount:.6f}\n", out)
    total = sum((c.amount for c in charges), Decimal(0))
    assert f"total {total:.6f} USD over {len(charges)} charges" in out


CHECKS = {"minimal_service.py": _check_minimal_service, "read_balances.py": _check_read_balances}


@pytest.mark.parametrize("name", RUN_HERE)
def test_example_on_sqlite(name: str, tmp_path: Path) -> None:
    """Run with no arguments: SQLite shard files in a temporary directory."""
    CHECKS[name](_run(name, cwd=tmp_path))


@pytest.fixture
def two_databases(mysql_server: ServerAddress) -> Iterator[list[str]]:
    """Two fresh databases on the server, dropped afterwards."""
    names = [f"sbex_{secrets.token_hex(3)}_{i}" for i in range(2)]
    conn = mysql_server.connect()
    try:
        with conn.cursor() as cur:  # type: ignore[attr-defined]
            for name in names:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        yield names
    finally:
        with conn.cursor() as cur:  # type: ignore[attr-defined]
            for name in names:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", RUN_HERE)
def test_example_on_mariadb(
    name: str, mysql_server: ServerAddress, two_databases: list[str], tmp_path: Path
) -> None:
    """Run with one URL per shard (one driver each): the same output from real servers."""
    urls = [
        mysql_server.url(two_databases[0], "pymysql"),
        mysql_server.url(two_databases[1], "mysqldb"),
    ]
    CHECKS[name](_run(name, *urls, cwd=tmp_path))
