"""examples/custom_provider.py: a dozen-line user provider works against a real server."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from shardbill.dialects import dialect_for
from shardbill.errors import DeadlockError
from shardbill.rules import comms
from shardbill.workloads.synthetic import Traffic
from tests.support.mysql import ServerAddress

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_provider.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("custom_provider_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _credentials(server: ServerAddress, database: str) -> dict[str, Any]:
    return {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password": server.password,
        "database": database,
    }


def test_example_script_runs_and_prints_totals(
    mysql_server: ServerAddress, mysql_database: str
) -> None:
    """Run as a script, the example delivers its batch twice and the ledger counts it once."""
    env = dict(os.environ)
    env.update(
        SHARD_0_HOST=mysql_server.host,
        SHARD_0_PORT=str(mysql_server.port),
        SHARD_0_USER=mysql_server.user,
        SHARD_0_PASSWORD=mysql_server.password,
        SHARD_0_DATABASE=mysql_database,
    )
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    charges = (
        comms.engine()
        .price_batch(Traffic(model="uniform", events=200, seed=1, accounts=20).distinct())
        .charges
    )
    total = sum((c.amount for c in charges), Decimal(0))
    assert result.stdout.splitlines() == [
        "first delivery: 200 events applied, 0 skipped as duplicates",
        "redelivery: 0 events applied, 200 skipped as duplicates",
        f"total {total:.6f} USD over {len(charges)} charges",
    ]


def test_example_provider_commits_and_rolls_back(
    mysql_server: ServerAddress, mysql_database: str
) -> None:
    """The example provider commits a normal block and rolls back one that raises."""
    module = _load()
    provider = module.SecretsProvider(lambda shard: _credentials(mysql_server, mysql_database))
    with provider.connection("shard-0") as conn:
        conn.cursor().execute("CREATE TABLE IF NOT EXISTS example_rb (k INT PRIMARY KEY)")
    with provider.connection("shard-0") as conn:
        conn.cursor().execute("INSERT INTO example_rb VALUES (1)")

    def fail_after_writing() -> None:
        with provider.connection("shard-0") as conn:
            conn.cursor().execute("INSERT INTO example_rb VALUES (2)")
            raise DeadlockError("simulated retryable failure", errno=1213)

    with pytest.raises(DeadlockError):
        fail_after_writing()
    with provider.connection("shard-0", readonly=True) as conn:
        cur = conn.cursor()
        cur.execute("SELECT k FROM example_rb ORDER BY k")
        assert [row[0] for row in cur.fetchall()] == [1]
        assert dialect_for(conn).name in ("mariadb", "mysql")
    provider.close()
