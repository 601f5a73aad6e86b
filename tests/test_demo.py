"""The demo as a function: its steps, its report, and its fallback without a resharder."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from shardbill import resharding
from shardbill.errors import ConfigurationError
from shardbill.providers.url import ConnectionURL
from shardbill.rules import comms
from shardbill.tables.aggregates import (
    Account,
    AggregateTable,
    BigInt,
    Count,
    KeyColumn,
    Measure,
    Product,
)
from shardbill.tables.aggregates import VarChar as Text
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.demo import DEMO_SHARDS, _write_demo_config, run_demo
from shardbill.workloads.synthetic import Traffic
from tests.support.mysql import ServerAddress


def _rows(path: Path, table: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(f'SELECT * FROM "{table}"').fetchall()


def test_the_demo_writes_replays_reshards_and_audits(tmp_path: Path) -> None:
    """A small demo: every event applied once, the replay applies nothing, the audit is exact."""
    said: list[str] = []
    report = run_demo(
        directory=tmp_path, events=1500, seed=2, batch_size=250, slots=512, say=said.append
    )
    assert report.exact
    assert report.applied == 1500
    assert report.replayed == 150
    assert report.replay_applied == 0
    assert report.duplicates_skipped == report.deliveries - report.applied
    assert report.commits > 0
    assert report.events_per_second > 0
    assert sum(report.rows_per_shard.values()) == report.audit_rows
    assert sum(report.slots_per_shard.values()) == 512
    assert report.written_while_resharding > 0
    assert report.wall_seconds >= report.seconds
    if report.resharding.status == "done":
        assert report.map_epoch == 2
        assert report.resharding.slots_moved == 512 // 5
        assert report.rows_per_shard["shard-4"] > 0
    text = report.render()
    assert "audit       exact" in text
    assert "150 replayed" in text
    assert (tmp_path / "shardbill.toml").is_file()
    assert report.to_dict()["events_per_second"] == round(report.events_per_second)


def test_without_a_resharder_the_demo_says_so_and_still_writes_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older shardbill without Resharder: the step is skipped with a message, nothing lost."""
    monkeypatch.delattr(resharding, "Resharder", raising=False)
    said: list[str] = []
    report = run_demo(directory=tmp_path, events=1000, seed=3, batch_size=200, say=said.append)
    assert said == ["resharding: not available yet"]
    assert report.resharding.status == "not available yet"
    assert (report.map_epoch, report.resharding.slots_moved) == (1, 0)
    assert report.exact
    assert report.applied == 1000
    assert sorted(report.rows_per_shard) == list(DEMO_SHARDS[:4])


def test_a_second_run_starts_from_empty_files(tmp_path: Path) -> None:
    """The SQLite demo replaces its own files: the second run applies everything again."""
    first = run_demo(
        directory=tmp_path, events=400, seed=4, batch_size=100, slots=256, say=lambda _: None
    )
    second = run_demo(
        directory=tmp_path, events=400, seed=4, batch_size=100, slots=256, say=lambda _: None
    )
    assert first.applied == second.applied == 400
    assert second.rows_per_shard == first.rows_per_shard
    assert second.exact


def test_the_demo_takes_other_tables_and_rules(tmp_path: Path) -> None:
    """Custom tables and an engine (as from a configuration file) are written and audited."""
    per_product = AggregateTable(
        name="per_product",
        keys=(
            KeyColumn(name="account_id", type=BigInt(), projection=Account()),
            KeyColumn(name="product", type=Text(16), projection=Product()),
        ),
        measures=(Measure(name="charges", value=Count()),),
    )
    urls = {
        name: ConnectionURL.parse(f"sqlite:///{tmp_path / name}.db") for name in ("a", "b", "c")
    }
    report = run_demo(
        directory=tmp_path / "work",
        urls=urls,
        tables=[*billing_tables(), per_product],
        engine=comms.engine(),
        events=800,
        seed=5,
        batch_size=200,
        slots=256,
        say=lambda _: None,
    )
    assert report.exact
    stored = sum(len(_rows(tmp_path / f"{s}.db", "per_product")) for s in report.rows_per_shard)
    accounts_products = {
        (c.account, c.product)
        for c in comms.engine().price_batch(Traffic(model="skewed", events=800, seed=5)).charges
    }
    assert stored == len(accounts_products)


@pytest.fixture
def own_database(mysql_server: ServerAddress) -> Iterator[str]:
    """A database name of this test's own (the demo creates it); dropped afterwards."""
    name = f"sbdemo_{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        conn = mysql_server.connect()
        try:
            with conn.cursor() as cur:  # type: ignore[attr-defined]
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()  # type: ignore[attr-defined]


def test_servers_with_data_need_reset(
    mysql_server: ServerAddress, own_database: str, tmp_path: Path
) -> None:
    """On servers the demo refuses tables that hold rows, naming them and --reset."""
    url = ConnectionURL.parse(mysql_server.url(own_database))
    urls = {"only": url}
    first = run_demo(
        directory=tmp_path, urls=urls, events=200, seed=6, batch_size=100, say=lambda _: None
    )
    assert first.exact
    assert first.resharding.status == "skipped (no spare shard)"
    with pytest.raises(ConfigurationError, match=r"only\.usage_daily .*--reset"):
        run_demo(directory=tmp_path, urls=urls, events=200, seed=6, say=lambda _: None)
    again = run_demo(
        directory=tmp_path, urls=urls, events=200, seed=6, reset=True, say=lambda _: None
    )
    assert again.exact
    assert again.applied == 200


def test_the_reshard_step_shows_slots_once_the_writes_are_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14, case 10: when the writes finish before the reshard, the writing bar gives
    way to a bar of the slots finished, instead of sitting at 100 % while the move works."""
    import io

    from shardbill.providers import PooledProvider
    from shardbill.resharding import JsonFileMapStore
    from shardbill.shardmap import ShardMap
    from shardbill.tables import SystemTables
    from shardbill.workloads.demo import _reshard_online
    from shardbill.workloads.progress import Progress
    from shardbill.writer import AggregationWriter
    from tests.test_writer import make_charges

    store = JsonFileMapStore(tmp_path / "shardmap.json")
    store.publish(ShardMap.create(["s0", "s1"], slots=64), expected_epoch=None)
    with PooledProvider.sqlite_directory(tmp_path / "shards", ["s0", "s1", "s2"]) as provider:
        with AggregationWriter(
            shard_map=store, provider=provider, tables=billing_tables()
        ) as writer:
            writer.ensure_schema()
            assert writer.write(make_charges(51, 200, accounts=40)).ok
        stream = io.StringIO()
        bar = Progress("writing", total=10, unit="events", enabled=True, stream=stream)
        bar.update(10)
        outcome = _reshard_online(
            store=store,
            provider=provider,
            tables=billing_tables(),
            system_tables=SystemTables(),
            new_shard="s2",
            write_rest=lambda: None,
            say=lambda _text: None,
            bar=bar,
        )
    assert outcome.status == "done"
    assert stream.getvalue().endswith("\r\x1b[2K")  # the writing bar was erased
    drawn = capsys.readouterr().err
    assert "resharding [" in drawn
    assert f"{outcome.slots_moved}/{outcome.slots_moved} slots" in drawn


def test_demo_config_never_holds_an_inline_password(tmp_path: Path) -> None:
    """A URL's inline password is left out of the demo's shardbill.toml, with a note saying so."""
    urls = {
        "shard-0": ConnectionURL.parse("mysql+pymysql://app:hunter2@db0:3306/billing"),
        "shard-1": ConnectionURL.parse("mysql+pymysql://app@db1:3306/billing?password_env=PW"),
    }
    notes: list[str] = []
    text = _write_demo_config(tmp_path, urls, notes.append).read_text(encoding="utf-8")
    assert "hunter2" not in text
    assert '"shard-0" = "mysql+pymysql://app@db0:3306/billing"' in text
    assert '"shard-1" = "mysql+pymysql://app@db1:3306/billing?password_env=PW"' in text
    assert notes == [
        f"{tmp_path / 'shardbill.toml'}: the password of shard shard-0 is not written there; "
        "add ?password_env=VARIABLE to its URL to use the file"
    ]
