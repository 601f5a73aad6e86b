"""``shardbill reshard``: plan, run, status, verify and abort through the command line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from shardbill.workloads.synthetic import Traffic
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
    shown = json.loads(status.stdout)
    assert shown["claim"]["state"] == "finished"
    del shown["claim"]
    assert shown == {"slots": planned["moves"], "finished": planned["moves"]}
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


def _ingested(tmp_path: Path, events: int = 400) -> tuple[Path, Path]:
    """A config with s0..s2 initialised and ``events`` skewed events ingested; s3 listed."""
    config = tmp_path / "shardbill.toml"
    _config(config, ["s0", "s1", "s2"])
    events_file = tmp_path / "events.jsonl"
    traffic = Traffic(model="skewed", events=events, seed=32, accounts=80)
    events_file.write_text("\n".join(_as_line(e) for e in traffic.distinct()) + "\n")
    assert _run("init", "--config", str(config), cwd=tmp_path).returncode == 0
    ingest = _run("ingest", str(events_file), "--config", str(config), cwd=tmp_path)
    assert ingest.returncode == 0, ingest.stderr
    _config(config, ["s0", "s1", "s2", "s3"])
    return config, events_file


def test_status_works_before_run_and_progress_comes_as_json_events(tmp_path: Path) -> None:
    """Before any reshard, status says none is in progress; with --target, before `run`
    (the new shard has no tables yet), every slot is pending; `run --json` prints one JSON
    object on stdout and progress events (slots, rows, rate, ETA) on stderr."""
    config, _ = _ingested(tmp_path)
    none = _run("reshard", "status", "--config", str(config), cwd=tmp_path)
    assert none.returncode == 0, none.stderr
    assert "no reshard in progress" in none.stdout
    plan = _run("reshard", "plan", "--add", "s3", "--config", str(config), "--json", cwd=tmp_path)
    moves = json.loads(plan.stdout)["moves"]
    status = _run(
        "reshard", "status", "--target", "reshard-target.json", "--config", str(config),
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {"slots": moves, "pending": moves}
    run = _run(
        "reshard", "run", "--target", "reshard-target.json", "--config", str(config), "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["slots_finished"] == moves
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert events
    assert {"slots_done", "slots_total", "rows_moved", "rows_per_second", "eta_seconds"} <= set(
        events[-1]
    )
    assert events[-1]["slots_done"] == events[-1]["slots_total"] == moves
    after = _run("reshard", "status", "--config", str(config), "--json", cwd=tmp_path)
    report = json.loads(after.stdout)
    assert report["finished"] == moves
    assert report["claim"]["state"] == "finished"


def test_ctrl_c_stops_run_at_a_safe_point_and_run_resumes(tmp_path: Path) -> None:
    """SIGINT during a throttled `reshard run` stops it at the next safe point: exit 130,
    a message with the state it left and the command to resume; `run` resumes it, verify
    and the audit are exact."""
    config, events_file = _ingested(tmp_path, events=600)
    assert (
        _run("reshard", "plan", "--add", "s3", "--config", str(config), cwd=tmp_path).returncode
        == 0
    )
    child = subprocess.Popen(
        [sys.executable, "-m", "shardbill", "reshard", "run", "--target", "reshard-target.json",
         "--config", str(config), "--json", "--rows-per-second", "20", "--parallel", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert child.stderr is not None
    first = child.stderr.readline()  # the first progress event: the move is under way
    assert '"event": "progress"' in first
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    stopped = json.loads(out)
    assert stopped["stopped"] is True
    assert stopped["resume"] == "shardbill reshard run"
    assert stopped.get("finished", 0) < stopped["slots"]
    assert stopped["claim"]["state"] == "moving"
    resumed = _run("reshard", "run", "--config", str(config), "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert _run("reshard", "verify", "--config", str(config), cwd=tmp_path).returncode == 0
    audit = _run("audit", str(events_file), "--config", str(config), cwd=tmp_path)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_revert_from_the_command_line_restores_the_map_exactly(tmp_path: Path) -> None:
    """`reshard revert` after a finished reshard moves every slot back under a new epoch;
    verify and the audit are exact, and status shows the finished revert's claim."""
    config, events_file = _ingested(tmp_path)
    assert (
        _run("reshard", "plan", "--add", "s3", "--config", str(config), cwd=tmp_path).returncode
        == 0
    )
    run = _run(
        "reshard", "run", "--target", "reshard-target.json", "--config", str(config), cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    revert = _run("reshard", "revert", "--config", str(config), "--json", cwd=tmp_path)
    assert revert.returncode == 0, revert.stderr
    report = json.loads(revert.stdout)
    assert report["reverted"] is True
    assert report["epoch"] == 3
    shown = json.loads(_run("map", "show", "--config", str(config), "--json", cwd=tmp_path).stdout)
    assert "s3" not in json.dumps(shown.get("shards", shown))
    assert _run("reshard", "verify", "--config", str(config), cwd=tmp_path).returncode == 0
    audit = _run("audit", str(events_file), "--config", str(config), cwd=tmp_path)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    status = json.loads(
        _run("reshard", "status", "--config", str(config), "--json", cwd=tmp_path).stdout
    )
    assert status["claim"]["reverts"] == 2


def test_every_reshard_action_has_help_with_a_description_and_defaults(tmp_path: Path) -> None:
    """Each `reshard ACTION --help` describes the action and shows its options' defaults."""
    for action in ("plan", "prepare", "run", "status", "verify", "abort", "revert"):
        shown = _run("reshard", action, "--help", cwd=tmp_path)
        assert shown.returncode == 0, (action, shown.stderr)
        assert "--config" in shown.stdout
        assert len(shown.stdout.split("\n\n")[1]) > 40, action  # a description paragraph
    run_help = _run("reshard", "run", "--help", cwd=tmp_path).stdout
    assert "(default: 1000)" in run_help
    assert "(default: 4)" in run_help
