"""``shardbill audit FILE --repair``: a row changed by hand is corrected; the audit is exact."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from tests.test_cli import _config, _events_file, one_json, run


def test_audit_repair_corrects_a_row_changed_by_hand_once(tmp_path: Path) -> None:
    """--repair prints the correction and audits exact; a second --repair corrects nothing."""
    config = _config(tmp_path / "deploy")
    assert run("init", "--config", str(config), cwd=tmp_path).returncode == 0
    events = tmp_path / "day.jsonl"
    _events_file(events)
    ingest = run("ingest", str(events), "--config", str(config), cwd=tmp_path)
    assert ingest.returncode == 1, ingest.stderr  # the file has bad lines; the rest lands
    audit = ("audit", str(events), "--config", str(config))
    assert run(*audit, cwd=tmp_path).returncode == 0

    with closing(sqlite3.connect(tmp_path / "deploy" / "s1.db")) as conn:
        account, slot = conn.execute(
            'SELECT "account_id", "sb_slot" FROM "account_balance" ORDER BY "account_id" LIMIT 1'
        ).fetchone()
        conn.execute(
            'UPDATE "account_balance" SET "amount" = "amount" + 7 WHERE "account_id" = ?',
            (account,),
        )
        conn.commit()
    assert run(*audit, cwd=tmp_path).returncode == 1

    repaired = run(*audit, "--repair", cwd=tmp_path)
    assert repaired.returncode == 0, repaired.stderr
    assert "1 difference(s) found, 1 row(s) corrected, 0 left alone" in repaired.stdout
    assert f"corrected: s1 slot {slot}: update account_balance (account_id={account}" in (
        repaired.stdout
    )
    assert repaired.stdout.rstrip().endswith("audit: exact")
    again = one_json(run(*audit, "--repair", "--json", cwd=tmp_path))
    assert again["repair"] == {"actions": [], "refused": []}
    assert again["audit"] == "exact"
