"""``shardbill status``: the fleet in one view, as text, one JSON object, or refreshed."""

from __future__ import annotations

import http.server
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from shardbill import cli
from shardbill.cli import status as cli_status
from shardbill.metrics import PrometheusObserver
from shardbill.observe import Committed, Failed, Rejected, Retried
from shardbill.status import parse_metrics
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


@pytest.fixture
def writer_endpoint() -> Iterator[tuple[str, PrometheusObserver]]:
    """A writer's Prometheus endpoint (a real PrometheusObserver's exposition over HTTP)."""
    import prometheus_client

    registry = prometheus_client.CollectorRegistry()
    observer = PrometheusObserver(registry=registry)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = prometheus_client.generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", prometheus_client.CONTENT_TYPE_LATEST)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics", observer
    finally:
        server.shutdown()
        server.server_close()


def _commit(shard: str, applied: int) -> Committed:
    return Committed(
        shard=shard, seconds=0.01, applied=applied, duplicates=0, conflicts=0, rows=applied,
        statements=2, attempt=1,
    )  # fmt: skip


def test_status_shows_a_writers_throughput_and_failures(
    tmp_path: Path, writer_endpoint: tuple[str, PrometheusObserver]
) -> None:
    """--metrics: units applied and commits per shard, failures by shard and error, in --json."""
    url, observer = writer_endpoint
    config = _deployed(tmp_path)
    for event in (
        _commit("s0", 40),
        _commit("s1", 2),
        _commit("s0", 1),
        Failed(shard="s2", error="OperationalError", attempts=5),
        Retried(shard="s2", error="OperationalError", attempt=1, delay=0.1),
        Rejected(count=3),
    ):
        observer(event)
    result = run("status", "--config", config, "--json", "--metrics", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (writer,) = one_json(result)["writers"]  # type: ignore[misc]
    assert writer == {
        "source": url,
        "error": None,
        "applied": {"s0": 41, "s1": 2},
        "commits": {"s0": 2, "s1": 1},
        "failures": {"s2/OperationalError": 1},
        "retries": {"s2/OperationalError": 1},
        "rejected": 3,
        "dead_letters": {},
    }
    text = run("status", "--config", config, "--metrics", url, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert f"{url}: 1 failed on s2 (OperationalError)" in text.stdout.splitlines()
    (line,) = [li for li in text.stdout.splitlines() if li.startswith(url + " ")]
    assert line.split()[1:] == ["43", "3", "1", "1", "3", "0"]


def test_status_watch_shows_units_applied_per_second(
    tmp_path: Path, writer_endpoint: tuple[str, PrometheusObserver]
) -> None:
    """With --watch the writer gets an applied/s column (from the second view on)."""
    url, observer = writer_endpoint
    config = _deployed(tmp_path)
    observer(_commit("s0", 5))
    args = ("status", "--config", config, "--metrics", url, "--watch", "--interval", "0.2")
    result = run(*args, "--count", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    headers = [li for li in result.stdout.splitlines() if li.startswith("writer ")]
    assert len(headers) == 2
    assert "applied/s" not in headers[0]
    assert headers[1].split()[-1] == "applied/s"


def test_status_unreachable_endpoint_is_down_and_exits_1(tmp_path: Path) -> None:
    """An endpoint that does not answer is shown DOWN with the reason; the exit code is 1."""
    config = _deployed(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/metrics"
    result = run("status", "--config", config, "--metrics", url, cwd=tmp_path)
    assert result.returncode == 1
    assert any(li.startswith(url) and "DOWN" in li for li in result.stdout.splitlines())
    assert f"{url}: URLError" in result.stdout


def test_status_refuses_a_metrics_value_that_is_not_an_http_url(tmp_path: Path) -> None:
    """A --metrics value that is no http(s) URL is a usage error naming the fix, no secret shown."""
    config = _deployed(tmp_path)
    result = run("status", "--config", config, "--metrics", "ftp://u:hunter2@host/m", cwd=tmp_path)
    assert result.returncode == 2
    assert "http://worker-1:9108/metrics" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_metrics_rate_is_none_after_a_restart() -> None:
    """A counter that went down (the writer restarted) gives no rate, not a negative one."""
    text = 'shardbill_units_applied_total{shard="s0"} 100.0\n'
    first = parse_metrics(text, source="w", at=10.0)
    later = parse_metrics(text.replace("100.0", "160.0"), source="w", at=12.0)
    restarted = parse_metrics(text.replace("100.0", "7.0"), source="w", at=14.0)
    assert later.applied_per_second(first) == 30.0
    assert restarted.applied_per_second(later) is None
