"""The ``shardbill`` command line end to end against the real MariaDB server."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardbill.workloads.synthetic import Traffic
from tests.support.clock import recent_start
from tests.support.mysql import ServerAddress
from tests.test_cli import one_json, run


@pytest.fixture
def databases(mysql_server: ServerAddress) -> Iterator[list[str]]:
    """Five database names nobody uses yet; whatever exists of them is dropped afterwards."""
    tag = secrets.token_hex(3)
    names = [f"sbcli_{tag}_{i}" for i in range(5)]
    try:
        yield names
    finally:
        conn = mysql_server.connect()
        try:
            with conn.cursor() as cur:  # type: ignore[attr-defined]
                for name in names:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()  # type: ignore[attr-defined]


def _query(server: ServerAddress, database: str, sql: str) -> list[tuple[object, ...]]:
    conn = server.connect(database)
    try:
        with conn.cursor() as cur:  # type: ignore[attr-defined]
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()  # type: ignore[attr-defined]


def test_demo_on_mariadb_creates_databases_and_audits_exact(
    mysql_server: ServerAddress, databases: list[str], tmp_path: Path
) -> None:
    """--mysql: missing databases are created, the audit is exact, a rerun needs --reset."""
    drivers = ["pymysql", "mysqldb", "pymysql", "mysqldb", "pymysql"]
    urls = [mysql_server.url(db, d) for db, d in zip(databases, drivers, strict=True)]
    args = ("demo", "--mysql", *urls, "--events", "3000", "--slots", "1024", "--dir", "d")
    result = run(*args, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = one_json(result)
    assert report["audit"] == "exact"
    assert report["applied"] == 3000
    assert report["backend"] == "MySQL/MariaDB"
    for name in databases:
        assert f"created database `{name}`" in result.stderr
    rows = report["rows_per_shard"]
    assert isinstance(rows, dict)
    for shard, count in rows.items():
        database = databases[int(shard.rsplit("-", 1)[1])]
        counted = sum(
            int(_query(mysql_server, database, f"SELECT COUNT(*) FROM `{t}`")[0][0])  # type: ignore[call-overload]
            for t in ("usage_daily", "usage_monthly", "usage_by_country", "account_balance")
        )
        assert counted == count

    again = run(*args, cwd=tmp_path)
    assert again.returncode == 2
    assert "--reset" in again.stderr
    reset = run(*args, "--reset", "--json", cwd=tmp_path)
    assert reset.returncode == 0, reset.stderr
    assert one_json(reset)["audit"] == "exact"
    assert "created database" not in reset.stderr


def test_demo_on_mariadb_writes_a_config_the_other_commands_follow(
    mysql_server: ServerAddress, databases: list[str], tmp_path: Path
) -> None:
    """demo --mysql leaves DIR/shardbill.toml: map show and audit then read the same shards."""
    urls = [mysql_server.url(db) for db in databases[:2]]
    demo = run("demo", "--mysql", *urls, "--events", "2000", "--slots", "64", "--dir", "d",
               cwd=tmp_path)  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    config = tmp_path / "d" / "shardbill.toml"
    assert config.is_file(), sorted(p.name for p in (tmp_path / "d").iterdir())
    shown = one_json(run("map", "show", "--config", str(config), "--json", cwd=tmp_path))
    assert shown["epoch"] == 2
    assert sorted(shown["shards"]) == ["shard-0", "shard-1"]  # type: ignore[arg-type]
    audit = run("audit", "--config", str(config), "--events", "2000", "--json", cwd=tmp_path)
    assert audit.returncode == 0, audit.stderr
    assert one_json(audit)["audit"] == "exact"


def _config(tmp_path: Path, server: ServerAddress, databases: list[str], store: str) -> str:
    shards = "\n".join(
        f's{i} = "{server.url(db, "mysqldb" if i % 2 else "pymysql")}"'
        for i, db in enumerate(databases[:3])
    )
    path = tmp_path / "prod.toml"
    path.write_text(f"[shards]\n{shards}\n{store}\n[writer]\nbatch_size = 50\n", encoding="utf-8")
    return str(path)


def _create(server: ServerAddress, names: list[str]) -> None:
    conn = server.connect()
    try:
        with conn.cursor() as cur:  # type: ignore[attr-defined]
            for name in names:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()  # type: ignore[attr-defined]


def _events(path: Path) -> None:
    lines = [
        json.dumps(
            {
                "event_id": e.event_id,
                "account": str(e.account),  # text accounts: parsed as BIGINT ids
                "time": e.time.isoformat(),
                "product": e.product,
                "quantity": str(e.quantity),
                "dimensions": dict(e.dimensions),
            }
        )
        for e in Traffic(
            model="skewed", events=300, seed=4, accounts=50, start=recent_start()
        ).distinct()
    ]
    lines.insert(7, lines[7])  # line 8: a repeat
    lines.insert(20, '{"event_id": "bad", "account": 1}')  # line 21: fields missing
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    "store", ['[map_store]\nkind = "json"', '[map_store]\nkind = "sql"\nshard = "s0"']
)
def test_operator_flow_on_mariadb(
    mysql_server: ServerAddress, databases: list[str], tmp_path: Path, store: str
) -> None:
    """init, ingest (twice), audit, a corrupted row found, map show and plan, on MariaDB."""
    _create(mysql_server, databases[:3])
    config = _config(tmp_path, mysql_server, databases, store)
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0

    events = tmp_path / "day.jsonl"
    _events(events)
    first = run("ingest", str(events), "--config", config, "--json", cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    summary = one_json(first)
    assert (summary["applied"], summary["repeats"], summary["rejected"]) == (300, 1, 1)
    (reject,) = [json.loads(x) for x in Path(f"{events}.rejects.jsonl").read_text().splitlines()]
    assert (reject["line"], reject["stage"], reject["event_id"]) == (21, "event", "bad")
    assert "lacks required field" in reject["reason"]
    rerun = one_json(run("ingest", str(events), "--config", config, "--json", cwd=tmp_path))
    assert (rerun["applied"], rerun["duplicates"]) == (0, 300)

    audited = run("audit", str(events), "--config", config, cwd=tmp_path)
    assert audited.returncode == 0, audited.stdout + audited.stderr

    ((account, currency),) = _query(
        mysql_server,
        databases[1],
        "SELECT account_id, currency FROM account_balance ORDER BY account_id LIMIT 1",
    )
    _query(
        mysql_server,
        databases[1],
        f"UPDATE account_balance SET amount = amount - 1 WHERE account_id = {account}",
    )
    damaged = run("audit", str(events), "--config", config, cwd=tmp_path)
    assert damaged.returncode == 1
    assert re.search(
        rf"account_balance account {account} \(currency={currency}\) on s1 slot \d+: amount",
        damaged.stdout,
    ), damaged.stdout
    assert "repair: on s1, add 0.000001 to amount (+1 stored units)" in damaged.stdout
    assert "audit: 1 difference(s)" in damaged.stdout

    shown = one_json(run("map", "show", "--config", config, "--json", cwd=tmp_path))
    assert sorted(shown["shards"]) == ["s0", "s1", "s2"]  # type: ignore[arg-type]
    status = one_json(run("status", "--config", config, "--json", cwd=tmp_path))
    assert status["ok"] is True
    for name, shard in status["shards"].items():  # type: ignore[attr-defined]
        database = databases[int(name[1:])]
        (ledger,) = _query(mysql_server, database, "SELECT COUNT(*) FROM shardbill_ledger")[0]
        assert shard["ledger_rows"] == ledger
        assert shard["slots"] == {"owned": shown["shards"][name]["slots"]}  # type: ignore[index]
    plan = one_json(run("map", "plan", "--add", "s3", "--config", config, "--json", cwd=tmp_path))
    assert plan["moved_slots"] == 4096
    assert plan["shards_without_url"] == ["s3"]


def test_bench_on_mariadb_is_one_json_object(
    mysql_server: ServerAddress, databases: list[str], tmp_path: Path
) -> None:
    """bench --mysql writes its own tables, drops them, and prints one JSON object."""
    urls = [mysql_server.url(db) for db in databases[:2]]
    result = run(
        "bench", "--mysql", *urls, "--events", "400", "--models", "skewed", "--json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    report = one_json(result)
    assert list(report["models"]) == ["skewed"]  # type: ignore[call-overload]
    assert report["models"]["skewed"]["events"] == 400  # type: ignore[index]
    assert _query(mysql_server, databases[0], "SHOW TABLES LIKE 'bench%'") == []
