"""``shardbill status``: the fleet in one view, as text, one JSON object, or refreshed."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from shardbill import cli, cli_status
from tests.test_cli import _config, _events_file, one_json, run

TABLES = ("usage_daily", "usage_monthly", "usage_by_country", "account_balance")


def _count(path: Path, table: str) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])


def _deployed(tmp_path: Path) -> str:
    config = str(_config(tmp_path / "deploy"))
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0
    _events_file(tmp_path / "day.jsonl")
    assert (
        run("ingest", str(tmp_path / "day.jsonl"), "--config", config, cwd=tmp_path).returncode == 1
    )
    return config


def test_status_json_counts_what_each_shard_holds(tmp_path: Path) -> None:
    """Per shard: reachable, slots by state, rows per table, ledger rows; the map; no move."""
    config = _deployed(tmp_path)
    result = run("status", "--config", config, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    status = one_json(result)
    assert status["map"]["epoch"] == 1  # type: ignore[index]
    shards = status["shards"]
    assert isinstance(shards, dict)
    assert sorted(shards) == ["s0", "s1", "s2"]
    shown = one_json(run("map", "show", "--config", config, "--json", cwd=tmp_path))
    for name, shard in shards.items():
        path = tmp_path / "deploy" / f"{name}.db"
        assert shard["reachable"] is True
        assert shard["rows"] == {t: _count(path, t) for t in TABLES}
        assert shard["ledger_rows"] == _count(path, "shardbill_ledger")
        assert shard["slots"] == {"owned": shown["shards"][name]["slots"]}  # type: ignore[index]
    assert sum(s["ledger_rows"] for s in shards.values()) > 0
    assert status["reshard"] == {"in_progress": False, "moving_slots": 0, "claim": None}
    assert status["ok"] is True


def test_status_text_shows_every_shard_and_the_map(tmp_path: Path) -> None:
    """The text view: one line per shard with its counts, the map epoch, no move in progress."""
    config = _deployed(tmp_path)
    result = run("status", "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("shard map epoch 1: 16384 slots over 3 shards")
    for name in ("s0", "s1", "s2"):
        (line,) = [x for x in lines if x.startswith(name + " ")]
        assert " ok " in line
    assert any(x.startswith("reshard: none in progress") for x in lines)


def test_watch_refreshes_and_shows_the_write_rate(tmp_path: Path) -> None:
    """--watch redraws every --interval; off a terminal each view is printed in turn."""
    config = _deployed(tmp_path)
    result = run("status", "--config", config, "--watch", "--interval", "0.2", "--count", "2",
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("shard map epoch 1") == 2
    assert "ledger rows/s" in result.stdout.split("shard map epoch 1")[2]  # the second view


def test_an_unreachable_shard_is_shown_and_exits_1(tmp_path: Path) -> None:
    """A shard that cannot be read is named with the error; the others are still shown."""
    config = Path(_deployed(tmp_path))
    text = config.read_text(encoding="utf-8").replace(
        'sqlite:///s2.db"', 'sqlite:///no-such-dir/s2.db"'
    )
    config.write_text(text, encoding="utf-8")
    result = run("status", "--config", str(config), "--json", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    status = one_json(result)
    assert status["ok"] is False
    shards = status["shards"]
    assert shards["s2"]["reachable"] is False  # type: ignore[index]
    assert "s2" in shards["s2"]["error"] or shards["s2"]["error"]  # type: ignore[index]
    assert shards["s0"]["reachable"] is True  # type: ignore[index]


def test_watch_and_json_do_not_mix(tmp_path: Path) -> None:
    """--json is one object; --watch with it is a usage error naming both."""
    config = _deployed(tmp_path)
    result = run("status", "--config", config, "--json", "--watch", cwd=tmp_path)
    assert result.returncode == 2
    assert "--watch" in result.stderr
    assert "--json" in result.stderr


def test_after_a_reshard_status_shows_the_new_epoch_and_no_move(tmp_path: Path) -> None:
    """Once a reshard finished: the map's new epoch, the new shard's slots, nothing in progress."""
    config = Path(_deployed(tmp_path))
    config.write_text(
        config.read_text(encoding="utf-8").replace(
            's2 = "sqlite:///s2.db"', 's2 = "sqlite:///s2.db"\ns3 = "sqlite:///s3.db"'
        ),
        encoding="utf-8",
    )
    target = str(tmp_path / "target.json")
    plan = ("reshard", "plan", "--add", "s3", "--out", target, "--config", str(config))
    assert run(*plan, cwd=tmp_path).returncode == 0
    done = run("reshard", "run", "--target", target, "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    status = one_json(run("status", "--config", str(config), "--json", cwd=tmp_path))
    assert status["map"]["epoch"] == 2  # type: ignore[index]
    assert status["shards"]["s3"]["slots"] == {"owned": 4096}  # type: ignore[index]
    assert status["reshard"]["in_progress"] is False  # type: ignore[index]
    assert status["reshard"]["finished"] == 4096  # type: ignore[index]
    text = run("status", "--config", str(config), cwd=tmp_path).stdout
    assert "reshard: none in progress (the last one: 4,096 finished)" in text


def test_watch_on_a_terminal_clears_and_redraws_each_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a terminal each view starts by clearing the screen; it sleeps --interval between."""
    config = _deployed(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_status, "interactive", lambda stream: True)
    slept: list[float] = []
    monkeypatch.setattr(cli_status.time, "sleep", slept.append)
    assert (
        cli.main(["status", "--config", config, "--watch", "--interval", "7", "--count", "3"]) == 0
    )
    out = capsys.readouterr().out
    views = out.split("\x1b[H\x1b[2J")
    assert views[0] == ""  # the screen is cleared before the first view
    assert len(views) == 4
    assert all("shard map epoch 1" in v and "(every 7 s; Ctrl-C to stop)" in v for v in views[1:])
    assert "ledger rows/s" not in views[1]  # no rate before a second reading
    assert all("ledger rows/s" in v for v in views[2:])
    assert slept == [7.0, 7.0]  # between views, not after the last
