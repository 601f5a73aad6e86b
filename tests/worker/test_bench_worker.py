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
