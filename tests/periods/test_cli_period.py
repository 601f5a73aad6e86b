"""``shardbill period close`` and ``period status`` on a SQLite deployment, end to end."""

from __future__ import annotations

import json
from pathlib import Path

from shardbill.periods import period_of
from shardbill.workloads.synthetic import Traffic
from tests.support.clock import recent_start
from tests.test_cli import _config, _events_file, _ledger_rows, one_json, run


def _more_events(path: Path) -> int:
    """Other events of the same day (new ids); returns how many."""
    events = list(
        Traffic(model="uniform", events=30, seed=99, accounts=40, start=recent_start()).distinct()
    )
    path.write_text(
        "".join(
            json.dumps(
                {
                    "event_id": f"more-{e.event_id}",
                    "account": e.account,
                    "time": e.time.isoformat(),
                    "product": e.product,
                    "quantity": str(e.quantity),
                    "dimensions": dict(e.dimensions),
                }
            )
            + "\n"
            for e in events
        ),
        encoding="utf-8",
    )
    return len(events)


def test_close_then_status_then_late_events_are_refused_and_nothing_changes(
    tmp_path: Path,
) -> None:
    """status is empty before; close reports every shard closed; a re-delivered file is all
    duplicates; new events of the period are rejected lines (exit 1) and add no ledger row;
    a second close changes nothing and says so."""
    config = str(_config(tmp_path / "deploy"))
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0
    assert one_json(run("period", "status", "--config", config, "--json", cwd=tmp_path)) == {
        "periods": []
    }
    events = tmp_path / "day.jsonl"
    _events_file(events)
    assert run("ingest", str(events), "--config", config, cwd=tmp_path).returncode == 1
    ledger = _ledger_rows(tmp_path / "deploy")
    month = str(period_of(int(recent_start().timestamp())))

    closed = run(
        "period", "close", month, "--drain", "0", "--config", config, "--json", cwd=tmp_path
    )
    assert closed.returncode == 0, closed.stderr
    report = json.loads(closed.stdout)
    assert report["periods"] == [
        {"period": month, "state": "closed", "shards": dict.fromkeys(["s0", "s1", "s2"], "closed")}
    ]

    again = one_json(run("ingest", str(events), "--config", config, "--json", cwd=tmp_path))
    assert again["applied"] == 0
    assert again["rejected"] == 2  # the file's own two bad lines, nothing more
    more = tmp_path / "more.jsonl"
    count = _more_events(more)
    late = run("ingest", str(more), "--config", config, "--json", cwd=tmp_path)
    assert late.returncode == 1
    summary = json.loads(late.stdout)
    assert (summary["applied"], summary["rejected"]) == (0, count)
    rejects = Path(str(summary["rejects_path"])).read_text(encoding="utf-8")
    assert month in rejects
    assert "refuse" in rejects
    assert _ledger_rows(tmp_path / "deploy") == ledger

    text = run("period", "status", month, "--config", config, cwd=tmp_path)
    assert f"period {month}: closed" in text.stdout
    second = run("period", "close", month, "--drain", "0", "--config", config, cwd=tmp_path)
    assert second.returncode == 0
    assert second.stdout.count("(already)") == 6  # three shards, two phases


def test_a_bad_period_or_drain_exits_2_naming_the_value(tmp_path: Path) -> None:
    """A period that is not YYYY-MM, or a negative drain, is a usage error quoting it."""
    config = str(_config(tmp_path / "deploy"))
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0
    bad = run("period", "close", "2026-13", "--config", config, cwd=tmp_path)
    assert bad.returncode == 2
    assert "'2026-13'" in bad.stderr
    drain = run("period", "close", "2026-11", "--drain", "-1", "--config", config, cwd=tmp_path)
    assert drain.returncode == 2
    assert "'-1'" in drain.stderr
