"""Configuration validated up front: ``shardbill init`` refuses what ``ingest`` would trip on.

* Two shards naming the same database are refused when the file is loaded
  (every event of their slots would be counted by both).
* ``init`` builds the rules engine: an unknown rule, an import that is not a
  rules engine, a missing price book fail ``init`` (exit 2), not ``ingest``.
* ``init`` on a database whose slot table was written for another map (a
  demo, another deployment) says so and what to do, instead of succeeding
  and leaving every ingest to fail with FencedError.
* A SQLite shard in a directory that does not exist names the directory
  (exit 2), not "server unreachable" (exit 3).
* Access denied is a configuration problem (exit 2), not an unreachable
  server (exit 3).
* Price book ``rounding = {}`` is a PriceBookError; a Decimal overflow inside
  a rule is a readable rejection; ``unix_socket`` wins over the host on both
  drivers.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from shardbill.cli import main
from shardbill.config import Config
from shardbill.errors import ConfigurationError, PriceBookError
from shardbill.providers import ConnectionURL, PooledProvider
from shardbill.rules import PriceBook, UsageEvent, comms
from tests.support.server_fixtures import ServerFactory

ONE_SHARD = '[shards]\ns0 = "sqlite:///s0.db"\n'


def _write(directory: Path, text: str, name: str = "shardbill.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "shards",
    [
        's0 = "sqlite:///a.db"\ns1 = "sqlite:///./a.db"',
        's0 = "sqlite:///a.db"\ns1 = "sqlite:///sub/../a.db"',
        's0 = "mysql+pymysql://app@db:3306/billing"\n'
        's1 = "mysql+mysqldb://other@DB/billing?pool_size=2"',
    ],
)
def test_two_shards_naming_one_database_are_refused(tmp_path: Path, shards: str) -> None:
    """Same file, or same host, port and database (any user or driver): refused, naming both."""
    file = _write(tmp_path, f"[shards]\n{shards}\n")
    with pytest.raises(ConfigurationError) as caught:
        Config.load(file)
    message = str(caught.value)
    assert "'s0'" in message
    assert "'s1'" in message
    assert "same" in message


def test_shards_on_one_server_in_different_databases_are_accepted(tmp_path: Path) -> None:
    """Different databases (or different ports) on one host are different shards."""
    file = _write(
        tmp_path,
        '[shards]\ns0 = "mysql+pymysql://app@db/b0"\ns1 = "mysql+pymysql://app@db/b1"\n'
        's2 = "mysql+pymysql://app@db:3307/b0"\n',
    )
    assert list(Config.load(file).shards) == ["s0", "s1", "s2"]


@pytest.mark.parametrize(
    ("rules", "needle"),
    [
        ('names = ["comms.sms", "comms.nosuch"]', "comms.nosuch"),
        ('import = "os:getcwd"', "not a RulesEngine"),
        ('import = "os:system"', "os:system"),  # called without its argument: TypeError
        ('import = "shardbill.nosuchmodule:engine"', "cannot import"),
        ('price_book = "missing-prices.toml"', "missing-prices.toml"),
    ],
)
def test_init_builds_the_rules_engine(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    rules: str,
    needle: str,
) -> None:
    """A rules section ingest could not use fails init with exit 2, naming the problem."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, f"{ONE_SHARD}[rules]\n{rules}\n")
    assert main(["init"]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "s0.db").exists()  # refused before touching a shard


def test_init_on_a_database_written_for_another_map_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A shard whose slot table does not give it the map's slots: init exit 2, not ingest."""
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "first"
    first.mkdir()
    _write(first, '[shards]\ns0 = "sqlite:///../s0.db"\ns1 = "sqlite:///../s1.db"\n')
    assert main(["init", "--config", str(first / "shardbill.toml")]) == 0
    second = tmp_path / "second"
    second.mkdir()
    _write(second, '[shards]\ns0 = "sqlite:///../s0.db"\n')  # a new map: s0 owns every slot
    capsys.readouterr()
    assert main(["init", "--config", str(second / "shardbill.toml")]) == 2
    err = capsys.readouterr().err
    assert "'s0'" in err
    assert "slot" in err
    assert "another shard map" in err
    assert "empty database" in err
    assert not (second / "shardmap.json").exists()  # nothing published for a refused setup


def test_init_twice_on_the_same_deployment_still_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slot check passes for the deployment that wrote the slot tables (init is idempotent)."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, '[shards]\ns0 = "sqlite:///s0.db"\ns1 = "sqlite:///s1.db"\n')
    assert main(["init"]) == 0
    assert main(["init"]) == 0


def test_a_sqlite_shard_in_a_missing_directory_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """sqlite:///no/such/dir/s0.db: exit 2 and the directory named, not 'unreachable'."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, '[shards]\ns0 = "sqlite:///no/such/dir/s0.db"\n')
    assert main(["init", "--json"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "no" / "such" / "dir") in err
    assert "unreachable" not in err


def test_access_denied_is_exit_2_not_unreachable(
    private_servers: ServerFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A wrong password: exit 2 (fix the configuration), with 'denied' in the message."""
    (server,) = private_servers(1)
    url = f"mysql+pymysql://root:wrong-pw@{server.host}:{server.port}/mysql"
    code = main(["demo", "--mysql", url, "--events", "10", "--dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "denied" in err
    assert "wrong-pw" not in err


def test_an_empty_rounding_table_is_a_price_book_error() -> None:
    """rounding = {} in a price book: PriceBookError naming the field, not TypeError."""
    with pytest.raises(PriceBookError, match="rounding"):
        PriceBook.from_toml(
            '[price_book]\nname = "p"\nversion = "1"\ncurrency = "USD"\nrounding = {}\n'
        )


def test_a_decimal_overflow_in_a_rule_is_a_readable_rejection() -> None:
    """A quantity whose amount needs more digits than Decimal carries: a clear reason."""
    engine = comms.engine()
    event = UsageEvent.from_dict(
        {
            "event_id": "huge",
            "account": 1,
            "time": "2026-01-05T10:00:00Z",
            "product": "sms",
            "quantity": Decimal("1E+100"),  # what JSON's 1e100 reads as
            "dimensions.country": "GB",
        }
    )
    pricing = engine.price_batch([event])
    (rejection,) = pricing.rejected
    assert "<class" not in rejection.reason
    assert "digits" in rejection.reason
    assert "quantity 1E+100" in rejection.reason


@pytest.mark.parametrize("driver", ["pymysql", "mysqldb"])
def test_unix_socket_wins_over_the_host_on_both_drivers(
    private_servers: ServerFactory, driver: str
) -> None:
    """unix_socket with host 127.0.0.1 and a closed port: both drivers use the socket."""
    (server,) = private_servers(1)
    socket = server.socket_path
    url = ConnectionURL.parse(f"mysql+{driver}://root@127.0.0.1:9/mysql?unix_socket={socket}")
    provider = PooledProvider({"s": url})
    try:
        with provider.connection("s") as conn:
            cursor = conn.cursor()
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
            cursor.close()
    finally:
        provider.close()


def test_json_output_of_init_is_unchanged_on_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """init --json still prints one object with the documented keys."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, ONE_SHARD)
    assert main(["init", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"shards", "tables", "map_epoch", "slots", "published", "map_store"}


def test_ingest_refused_by_the_server_exits_2_and_says_to_fix_it(
    private_servers: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Access denied while ingesting: exit 2, lines 'failed' with 'fix the cause', not exit 3."""
    (server,) = private_servers(1)
    server.execute("CREATE DATABASE b0")
    monkeypatch.chdir(tmp_path)
    url = f"mysql+pymysql://root@{server.host}:{server.port}/b0?password_env=SB_TEST_PW"
    _write(tmp_path, f'[shards]\ns0 = "{url}"\n')
    monkeypatch.setenv("SB_TEST_PW", "")
    assert main(["init"]) == 0
    event = {"event_id": "a", "account": 1, "time": "2026-11-01T10:00:00Z", "product": "sms",
             "quantity": 1, "dimensions": {"country": "GB"}}  # fmt: skip
    (tmp_path / "e.jsonl").write_text(json.dumps(event) + "\n")
    monkeypatch.setenv("SB_TEST_PW", "wrong")
    capsys.readouterr()
    assert main(["ingest", "e.jsonl", "--json"]) == 2
    summary = json.loads(capsys.readouterr().out)
    assert (summary["failed"], summary["refused"], summary["exit_code"]) == (1, 1, 2)
    (reject,) = map(json.loads, (tmp_path / "e.jsonl.rejects.jsonl").read_text().splitlines())
    assert reject["stage"] == "failed"
    assert "denied" in reject["reason"]
    assert "fix the cause" in reject["reason"]
