"""benchmarks/bench_worker.py still runs and reports what its docstring says (tiny size)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.support.kafka import KafkaBroker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_worker.py"


def test_bench_worker_reports_both_rates(
    kafka_broker: KafkaBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both commands apply every event; the report has the rates and their ratio."""
    spec = importlib.util.spec_from_file_location("bench_worker", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_worker"] = bench
    spec.loader.exec_module(bench)
    argv = ["--events", "400", "--batch", "50", "--bootstrap", kafka_broker.bootstrap, "--json"]
    assert bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["worker_applied"] == 400
    assert report["worker_batches"] >= 8
    assert report["ingest_events_per_s"] > 0
    assert set(report) >= {"worker_events_per_s", "worker_vs_ingest"}


SCALE = SCRIPT.with_name("bench_worker_scale.py")


@pytest.mark.mysql
def test_bench_worker_scale_reports_rates_and_cpu_per_event(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The scale-out benchmark (its own broker and MariaDB servers) drains every event for
    each configuration and reports events/s, CPU per event and the speedup over the first."""
    from tests.support.server_fixtures import require_binaries
    from tests.support.servers import ServerSettings

    require_binaries(ServerSettings())
    spec = importlib.util.spec_from_file_location("bench_worker_scale", SCALE)
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_worker_scale"] = bench
    spec.loader.exec_module(bench)
    argv = ["--events", "1500", "--batch", "100", "--workers", "1,2", "--servers", "1", "--json"]
    assert bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["rows"]
    assert [(r["workers"], r["servers"]) for r in rows] == [(1, 1), (2, 1)]
    assert rows[0]["speedup"] == 1.0
    for row in rows:
        assert row["events_per_s"] > 0
        assert row["worker_cpu_us_per_event"] > 0
        assert row["server_cpu_us_per_event"] > 0
