"""``shardbill correct cancel|amend|list`` on a SQLite deployment, end to end, and the audit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from shardbill.workloads.synthetic import Traffic
from tests.support.clock import recent_start
from tests.test_cli import _config, one_json, run


def _line(e: object, **changes: object) -> str:
    data = {
        "event_id": e.event_id,  # type: ignore[attr-defined]
        "account": e.account,  # type: ignore[attr-defined]
        "time": e.time.isoformat(),  # type: ignore[attr-defined]
        "product": e.product,  # type: ignore[attr-defined]
        "quantity": str(e.quantity),  # type: ignore[attr-defined]
        "dimensions": dict(e.dimensions),  # type: ignore[attr-defined]
    }
    data.update(changes)
    return json.dumps(data)


def test_cancel_amend_list_and_audit_from_the_command_line(tmp_path: Path) -> None:
    """Ingest a day; cancel two events from a file, then again (duplicates, exit 0); amend
    one with --original; cancel one never ingested (refused, exit 1, reason named); list
    the records; cancel by filter (an account, a time range) over the day's file; the
    audit of the original file counts the corrections and is exact."""
    config = str(_config(tmp_path / "deploy"))
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0
    events = list(
        Traffic(model="uniform", events=60, seed=4, accounts=20, start=recent_start()).distinct()
    )
    day = tmp_path / "day.jsonl"
    day.write_text("\n".join(_line(e) for e in events) + "\n", encoding="utf-8")
    assert (
        one_json(run("ingest", str(day), "--config", config, "--json", cwd=tmp_path))["applied"]
        == 60
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_line(events[3]) + "\n" + _line(events[7]) + "\n", encoding="utf-8")
    args = ("--id", "fix-1", "--reason", "test traffic", "--by", "ana", "--config", config)
    first = run("correct", "cancel", str(bad), *args, "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    report = one_json(first)
    assert (report["applied"], report["refused"]) == (2, 0)
    again = one_json(run("correct", "cancel", str(bad), *args, "--json", cwd=tmp_path))
    assert (again["applied"], again["duplicate"]) == (0, 2)

    new = tmp_path / "new.jsonl"
    new.write_text(
        _line(events[10], quantity=str(events[10].quantity + 5)) + "\n", encoding="utf-8"
    )
    original = tmp_path / "original.jsonl"
    original.write_text(_line(events[10]) + "\n", encoding="utf-8")
    amended = run(
        "correct", "amend", str(new), "--original", str(original), "--id", "fix-2",
        "--reason", "re-rated", "--config", config, cwd=tmp_path,
    )  # fmt: skip
    assert amended.returncode == 0, amended.stdout + amended.stderr
    assert "applied (revision 1" in amended.stdout

    ghost = _line(events[0], event_id="never-ingested")
    refused = subprocess.run(
        [sys.executable, "-m", "shardbill", "correct", "cancel", "-", "--id", "g", "--reason",
         "r", "--config", config],
        input=ghost + "\n", capture_output=True, text=True, cwd=tmp_path, check=False,
        timeout=300,
    )  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert "'never-ingested' was never applied" in refused.stdout

    listed = one_json(run("correct", "list", "--config", config, "--json", cwd=tmp_path))
    records = listed["corrections"]
    assert isinstance(records, list)
    assert sorted((r["event_id"], r["correction_id"]) for r in records) == sorted(
        [
            (events[3].event_id, "fix-1"),
            (events[7].event_id, "fix-1"),
            (events[10].event_id, "fix-2"),
        ]
    )
    assert {r["corrected_by"] for r in records if r["correction_id"] == "fix-1"} == {"ana"}

    taken = {events[3].account, events[7].account, events[10].account}
    account = next(e.account for e in events if e.account not in taken)
    expected = sorted(e.event_id for e in events if e.account == account)
    by_filter = run(
        "correct", "cancel", str(day), "--account", str(account), "--from",
        events[0].time.isoformat(), "--to", "2099-01-01T00:00:00Z", "--id", "meter",
        "--reason", "meter fault", "--config", config, "--json", cwd=tmp_path,
    )  # fmt: skip
    assert by_filter.returncode == 0, by_filter.stdout + by_filter.stderr
    chosen = one_json(by_filter)["corrections"]
    assert isinstance(chosen, list)
    assert sorted(c["event_id"] for c in chosen) == [
        e for e in expected if next(x for x in events if x.event_id == e).time >= events[0].time
    ]
    assert chosen

    audited = run("audit", str(day), "--config", config, cwd=tmp_path)
    assert audited.returncode == 0, audited.stdout
    assert "audit: exact" in audited.stdout
