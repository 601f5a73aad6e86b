"""``shardbill period close`` and ``period status`` on a SQLite deployment, end to end."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

from shardbill.periods import period_of
from tests.test_cli import _config, _ledger_rows, one_json, run


def _last_month_events(path: Path, *, prefix: str, count: int, seed: int) -> list[str]:
    """Events on the last day of last month, by the real clock (within the 35-day horizon
    a subprocess writer measures from now); returns their ids."""
    today = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    last_day = today.replace(day=1) - dt.timedelta(days=1)
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        when = last_day + dt.timedelta(minutes=rng.randrange(0, 11 * 60))
        lines.append(
            json.dumps(
                {
                    "event_id": f"{prefix}-{i}",
                    "account": rng.randrange(1, 40),
                    "time": when.isoformat(),
                    "product": "sms",
                    "quantity": "1",
                    "dimensions": {"country": "DE"},
                }
            )
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [f"{prefix}-{i}" for i in range(count)]


def test_close_then_status_then_late_events_are_refused_and_nothing_changes(
    tmp_path: Path,
) -> None:
    """status is empty before; closing last month reports every shard closed; a re-delivered
    file is all duplicates; new events of that month are rejected lines (exit 1) and add no
    ledger row; a second close changes nothing and says so."""
    config = str(_config(tmp_path / "deploy"))
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0
    assert one_json(run("period", "status", "--config", config, "--json", cwd=tmp_path)) == {
        "periods": []
    }
    events = tmp_path / "last-month.jsonl"
    _last_month_events(events, prefix="old", count=40, seed=1)
    first = one_json(run("ingest", str(events), "--config", config, "--json", cwd=tmp_path))
    assert first["applied"] == 40
    ledger = _ledger_rows(tmp_path / "deploy")
    this_month = dt.datetime.now(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month = str(period_of(int(this_month.timestamp()) - 1))

    closed = run(
        "period", "close", month, "--drain", "0", "--config", config, "--json", cwd=tmp_path
    )
    assert closed.returncode == 0, closed.stderr
    report = json.loads(closed.stdout)
    assert report["periods"] == [
        {"period": month, "state": "closed", "shards": dict.fromkeys(["s0", "s1", "s2"], "closed")}
    ]

    again = one_json(run("ingest", str(events), "--config", config, "--json", cwd=tmp_path))
    assert (again["applied"], again["duplicates"], again["rejected"]) == (0, 40, 0)
    more = tmp_path / "late.jsonl"
    _last_month_events(more, prefix="late", count=30, seed=2)
    late = run("ingest", str(more), "--config", config, "--json", cwd=tmp_path)
    assert late.returncode == 1
    summary = json.loads(late.stdout)
    assert (summary["applied"], summary["rejected"]) == (0, 30)
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


def test_a_period_not_ended_yet_is_refused_unless_early(tmp_path: Path) -> None:
    """Closing this month (by the real clock) exits 2 naming its end and --early, changing
    nothing; with --early it closes."""
    config = str(_config(tmp_path / "deploy"))
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0
    month = str(period_of(int(dt.datetime.now(dt.UTC).timestamp())))
    refused = run("period", "close", month, "--drain", "0", "--config", config, cwd=tmp_path)
    assert refused.returncode == 2
    assert "has not ended yet" in refused.stderr
    assert "--early" in refused.stderr
    status = one_json(run("period", "status", month, "--config", config, "--json", cwd=tmp_path))
    assert status["periods"][0]["state"] == "open"  # type: ignore[index]
    early = run(
        "period", "close", month, "--drain", "0", "--early", "--config", config, cwd=tmp_path
    )
    assert early.returncode == 0, early.stderr
    assert f"period {month}: closed" in early.stdout


def test_with_late_events_adjust_a_late_file_is_booked_and_the_audit_is_exact(
    tmp_path: Path,
) -> None:
    """[writer] late_events = "adjust": after the close, a late file is applied (exit 0), each
    event recorded in shardbill_adjustments on the shards; its redelivery is all duplicates;
    `shardbill audit` of both files is exact (it reads the adjustments)."""
    import sqlite3

    config_path = _config(tmp_path / "deploy")
    config_path.write_text(
        config_path.read_text(encoding="utf-8").replace(
            "[writer]\n", '[writer]\nlate_events = "adjust"\n'
        ),
        encoding="utf-8",
    )
    config = str(config_path)
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0
    events = tmp_path / "last-month.jsonl"
    _last_month_events(events, prefix="old", count=30, seed=3)
    assert (
        one_json(run("ingest", str(events), "--config", config, "--json", cwd=tmp_path))["applied"]
        == 30
    )
    this_month = dt.datetime.now(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month = str(period_of(int(this_month.timestamp()) - 1))
    closed = run("period", "close", month, "--drain", "0", "--config", config, cwd=tmp_path)
    assert closed.returncode == 0, closed.stderr

    late = tmp_path / "late.jsonl"
    ids = _last_month_events(late, prefix="late", count=20, seed=4)
    booked = run("ingest", str(late), "--config", config, "--json", cwd=tmp_path)
    assert booked.returncode == 0, booked.stderr
    assert json.loads(booked.stdout)["applied"] == 20
    recorded = set()
    for shard in ("s0", "s1", "s2"):
        with sqlite3.connect(tmp_path / "deploy" / f"{shard}.db") as db:
            recorded |= set(db.execute("SELECT event_id, belongs_to FROM shardbill_adjustments"))
    assert {e for e, _ in recorded} == set(ids)
    assert {p for _, p in recorded} == {month}
    again = one_json(run("ingest", str(late), "--config", config, "--json", cwd=tmp_path))
    assert (again["applied"], again["duplicates"]) == (0, 20)

    audited = run("audit", str(events), str(late), "--config", config, cwd=tmp_path)
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "audit: exact" in audited.stdout
