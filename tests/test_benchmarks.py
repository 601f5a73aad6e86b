"""The benchmark scripts still run and report what their docs say (tiny sizes; no timing checked).

Speed is measured by running the scripts by hand (docs/explanation/performance.md);
these tests only keep them working.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.mysql import ServerAddress

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_planning_reports_every_step(capsys: pytest.CaptureFixture[str]) -> None:
    """Per model: the reference and compiled extraction, planning and coalescing, positive."""
    bench = _load("bench_planning")
    assert bench.main(["--events", "300", "--repeat", "1", "--models", "skewed,hot", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report) == ["hot", "skewed"]
    for result in report.values():
        assert result["charges"] > 0
        for key in (
            "reference_us", "extract_us", "plan_us", "coalesce_us", "extract_speedup",
            "split_reference_us", "split_us", "split_speedup",
        ):  # fmt: skip
            assert result[key] > 0


@pytest.mark.mysql
def test_bench_writer_repeats_and_prefills(
    mysql_server: ServerAddress, capsys: pytest.CaptureFixture[str]
) -> None:
    """--repeat gives one run per repeat and medians; --prefill-ledger loads the ledgers first."""
    bench = _load("bench_writer")
    argv = [
        "--host", mysql_server.host, "--port", str(mysql_server.port),
        "--user", mysql_server.user, "--password", mysql_server.password,
        "--events", "120", "--baseline-events", "10", "--batch", "40", "--slots", "64",
        "--models", "skewed", "--repeat", "2", "--prefill-ledger", "200", "--json",
    ]  # fmt: skip
    assert bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    skewed = report["skewed"]
    assert len(skewed["runs"]) == 2
    for way in ("writer", "writer_per_account", "writer_wide", "per_event", "floor"):
        assert skewed[way]["events_per_s"] > 0
    assert skewed["writer_vs_per_account"] > 0
    assert skewed["writer_vs_wide"] > 0
    ratios = sorted(run["writer_vs_per_event"] for run in skewed["runs"])
    assert ratios[0] <= skewed["writer_vs_per_event"] <= ratios[1]
    assert "password" not in report["config"]


def test_bench_sqlite_reports_writer_replay_and_baseline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The embedded-default benchmark runs with no server and reports its three rates."""
    bench = _load("bench_sqlite")
    argv = ["--events", "200", "--baseline-events", "20", "--batch", "50", "--json"]
    assert bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("writer_events_per_s", "replay_events_per_s", "per_event_events_per_s"):
        assert report[key] > 0
    assert report["writer_vs_per_event"] == pytest.approx(
        report["writer_events_per_s"] / report["per_event_events_per_s"]
    )


@pytest.mark.mysql
def test_bench_baseline_reports_speed_and_cpu_per_way(
    mysql_server: ServerAddress, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per model and shard count: every way's events/s and CPU per event, the ratios, one total."""
    bench = _load("bench_baseline")
    argv = [
        "--host", mysql_server.host, "--port", str(mysql_server.port),
        "--user", mysql_server.user, "--password", mysql_server.password,
        "--events", "120", "--batch", "40", "--slots", "64", "--shards", "1,2",
        "--models", "skewed,hot", "--repeat", "2", "--per-account", "--json",
    ]  # fmt: skip
    assert bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert "password" not in report["config"]
    for model in ("skewed", "hot"):
        assert sorted(report[model]) == ["1", "2"]
        for result in report[model].values():
            assert len(result["runs"]) == 2
            ways = ("loop", "loop_no_ledger", "writer", "writer_per_account")
            assert len({result[way]["grand_total"] for way in ways}) == 1
            for way in ways:
                assert result[way]["events_per_s"] > 0
                assert result[way]["client_cpu_us_per_event"] > 0
                assert "server_cpu_us_per_event" in result[way]
            for ratio in (
                "speed_writer_vs_loop",
                "client_cpu_writer_vs_loop",
                "speed_writer_per_account_vs_loop",
            ):
                each = sorted(run[ratio] for run in result["runs"])
                assert each[0] <= result[ratio] <= each[1]


def test_server_cpu_reads_proc_stat_of_a_process() -> None:
    """The server-CPU probe reads this process's own utime+stime; unknown pids give 0.0."""
    bench = _load("bench_baseline")
    spent = time.process_time()
    while time.process_time() - spent < 0.05:
        pass
    assert bench.server_cpu(os.getpid()) > 0
    assert bench.server_cpu(None) == 0.0
    assert bench.server_cpu(2**22 + 12345) == 0.0
