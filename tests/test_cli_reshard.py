"""``shardbill reshard``: plan, run, status, verify and abort through the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from shardbill.synthetic import Traffic
from tests.support.clock import recent_start
from tests.test_ingest import _as_line


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardbill", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        timeout=300,
    )


def _config(path: Path, shards: list[str]) -> None:
    lines = ["slots = 256", "", "[shards]"]
    lines += [f'{s} = "sqlite:///{s}.db"' for s in shards]
    lines += ["", "[map_store]", 'kind = "json"', 'path = "shardmap.json"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_adding_a_shard_from_the_command_line_keeps_the_audit_exact(tmp_path: Path) -> None:
    """init, ingest, add s3 to the config, plan, run, verify, status: audit stays exact."""
    config = tmp_path / "shardbill.toml"
    _config(config, ["s0", "s1", "s2"])
    events = tmp_path / "events.jsonl"
    traffic = Traffic(model="skewed", events=400, seed=31, accounts=60, start=recent_start())
    events.write_text("\n".join(_as_line(e) for e in traffic.distinct()) + "\n")
    assert _run("init", "--config", str(config), cwd=tmp_path).returncode == 0
    ingest = _run("ingest", str(events), "--config", str(config), cwd=tmp_path)
    assert ingest.returncode == 0, ingest.stderr

    _config(config, ["s0", "s1", "s2", "s3"])
    plan = _run("reshard", "plan", "--add", "s3", "--config", str(config), "--json", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    planned = json.loads(plan.stdout)
    assert planned["to_epoch"] == planned["from_epoch"] + 1
    assert planned["moves"] > 0
    run = _run(
        "reshard", "run", "--target", planned["target"], "--config", str(config), "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["slots_finished"] == planned["moves"]
    assert 0 < report["slots_empty"] < report["slots_finished"]  # a few events, many slots
    assert report["attempts"] == 1
    status = _run("reshard", "status", "--config", str(config), "--json", cwd=tmp_path)
    assert json.loads(status.stdout) == {"slots": planned["moves"], "finished": planned["moves"]}
    verify = _run("reshard", "verify", "--config", str(config), cwd=tmp_path)
    assert verify.returncode == 0
    assert "exact" in verify.stdout
    audit = _run("audit", str(events), "--config", str(config), cwd=tmp_path)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_planning_a_shard_without_a_url_says_what_to_add(tmp_path: Path) -> None:
    """A shard that is not under [shards] cannot be planned in; the error names the fix."""
    config = tmp_path / "shardbill.toml"
    _config(config, ["s0", "s1"])
    assert _run("init", "--config", str(config), cwd=tmp_path).returncode == 0
    plan = _run("reshard", "plan", "--add", "s9", "--config", str(config), cwd=tmp_path)
    assert plan.returncode == 2
    assert "[shards]" in plan.stderr
