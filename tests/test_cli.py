"""The ``shardbill`` command line, every command end to end in a subprocess, on SQLite files."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from shardbill import resharding
from shardbill.cli import EXIT_BROKEN_PIPE
from shardbill.rules import comms
from shardbill.workloads.synthetic import Traffic
from tests.support.clock import recent_start
from tests.support.oracle import KEYS

TABLES = tuple(KEYS)


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m shardbill ARGS`` in ``cwd``; never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", "shardbill", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def one_json(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The one JSON object ``--json`` printed: stdout must hold nothing else."""
    value = json.loads(result.stdout)
    assert isinstance(value, dict)
    assert result.stdout.strip().count("\n") == 0
    return value


def _ledger_rows(directory: Path) -> int:
    total = 0
    for i in range(3):
        with closing(sqlite3.connect(directory / f"s{i}.db")) as conn:
            total += conn.execute("SELECT COUNT(*) FROM shardbill_ledger").fetchone()[0]
    return int(total)


def _sqlite_rows(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return sum(conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in TABLES)


HELP = [
    (),
    ("demo",),
    ("init",),
    ("ingest",),
    ("audit",),
    ("map",),
    ("map", "show"),
    ("map", "plan"),
    ("bench",),
    ("prune",),
    ("reshard",),
    ("worker",),
    ("status",),
    ("migrate",),
    ("period",),
    ("period", "close"),
    ("period", "status"),
    ("correct",),
    ("correct", "cancel"),
    ("correct", "amend"),
    ("correct", "list"),
    ("statement",),
]


@pytest.mark.parametrize("command", HELP, ids=lambda c: " ".join(c) or "shardbill")
def test_every_command_has_help_with_examples(tmp_path: Path, command: tuple[str, ...]) -> None:
    """``--help`` exits 0 and shows examples, on the top level and on every command."""
    result = run(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "examples:" in result.stdout
    assert f"shardbill {' '.join(command)}".strip() in result.stdout


def test_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    """An unknown command exits 2 with a usage message."""
    result = run("nonsense", cwd=tmp_path)
    assert result.returncode == 2
    assert "usage" in result.stderr


def test_demo_json_report_is_exact_and_consistent(tmp_path: Path) -> None:
    """The demo's JSON report adds up, its rows are on disk, and the audit is exact."""
    result = run(
        "demo", "--dir", "d", "--events", "3000", "--seed", "3", "--slots", "1024", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = one_json(result)
    assert report["audit"] == "exact"
    assert report["audit_differences"] == 0
    assert report["events"] == report["applied"] == 3000
    assert report["replayed"] == 300
    assert report["replay_applied"] == 0
    assert report["duplicates_skipped"] == report["deliveries"] - 3000
    assert report["failed"] == report["rejected"] == 0
    assert isinstance(report["commit_p50_ms"], float)
    assert report["commit_p50_ms"] <= report["commit_p99_ms"]  # type: ignore[operator]
    rows = report["rows_per_shard"]
    assert isinstance(rows, dict)
    on_disk = {s: _sqlite_rows(tmp_path / "d" / f"{s}.db") for s in rows}
    assert rows == on_disk
    assert sum(on_disk.values()) == report["audit_rows"]
    if hasattr(resharding, "Resharder"):
        assert report["resharding"] == "done"
        assert report["map_epoch"] == 2
        assert report["slots_moved"] == 1024 // 5
        assert report["slots_per_shard"] == {f"shard-{i}": 205 for i in range(4)} | {"shard-4": 204}
    else:
        assert report["resharding"] == "not available yet"
        assert (report["map_epoch"], report["slots_moved"]) == (1, 0)
        assert "resharding: not available yet" in result.stderr
        assert sorted(rows) == ["shard-0", "shard-1", "shard-2", "shard-3"]


def test_demo_text_then_audit_then_a_corrupted_row(tmp_path: Path) -> None:
    """The demo leaves a config behind: audit finds it exact, then names a row changed by hand."""
    result = run("demo", "--dir", "d", "--events", "2000", "--slots", "512", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "audit       exact" in result.stdout
    assert "0 applied twice" in result.stdout
    config = str(tmp_path / "d" / "shardbill.toml")
    audited = run("audit", "--config", config, "--events", "2000", cwd=tmp_path)
    assert audited.returncode == 0, audited.stderr
    assert audited.stdout.rstrip().endswith("audit: exact")

    shard = tmp_path / "d" / "shard-2.db"
    with closing(sqlite3.connect(shard)) as conn:
        account = conn.execute(
            'SELECT "account_id" FROM "usage_monthly" ORDER BY "account_id" LIMIT 1'
        ).fetchone()[0]
        conn.execute(
            'UPDATE "usage_monthly" SET "charges" = "charges" + 1 WHERE "account_id" = ?',
            (account,),
        )
        conn.commit()
    damaged = run("audit", "--config", config, "--events", "2000", "--json", cwd=tmp_path)
    assert damaged.returncode == 1, damaged.stderr
    report = one_json(damaged)
    assert report["audit"] == "different"
    named = {(d["table"], d["account"], d["measure"]) for d in report["differences"]}  # type: ignore[attr-defined, index]
    assert ("usage_monthly", account, "charges") in named
    text = run("audit", "--config", config, "--events", "2000", cwd=tmp_path)
    assert text.returncode == 1
    assert f"usage_monthly account {account}" in text.stdout
    assert "on shard-2 slot " in text.stdout  # where the damaged row is
    assert "repair: on shard-2, add -1 to charges (-1 stored units)" in text.stdout


def _config(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "shardbill.toml"
    path.write_text(
        '[shards]\ns0 = "sqlite:///s0.db"\ns1 = "sqlite:///s1.db"\ns2 = "sqlite:///s2.db"\n'
        "[writer]\nbatch_size = 40\n",
        encoding="utf-8",
    )
    return path


def _events_file(path: Path) -> tuple[list[str], list[object]]:
    """A day of good events with bad lines and duplicates mixed in; returns lines, good events."""
    good = list(
        Traffic(model="skewed", events=200, seed=8, accounts=40, start=recent_start()).distinct()
    )
    lines = [
        json.dumps(
            {
                "event_id": e.event_id,
                "account": e.account,
                "time": e.time.isoformat(),
                "product": e.product,
                "quantity": str(e.quantity),
                "dimensions": dict(e.dimensions),
            }
        )
        for e in good
    ]
    lines.insert(5, "{broken")  # line 6
    lines.insert(9, lines[2])  # line 10: a duplicate of line 3
    unknown = lines[0].replace('"product": "', '"product": "x')
    lines.insert(50, unknown.replace('"event_id": "', '"event_id": "x'))  # line 51: no rule
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines, list(good)


def test_init_ingest_audit_map_on_sqlite(tmp_path: Path) -> None:
    """The whole operator flow on SQLite shard files, from an empty directory to a clean audit."""
    config = str(_config(tmp_path / "deploy"))
    init = run("init", "--config", config, cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert "published epoch 1" in init.stdout
    again = one_json(run("init", "--config", config, "--json", cwd=tmp_path))
    assert again["published"] is False
    assert again["shards"] == ["s0", "s1", "s2"]

    events = tmp_path / "day.jsonl"
    _events_file(events)
    first = run("ingest", str(events), "--config", config, "--json", cwd=tmp_path)
    assert first.returncode == 1, first.stderr  # some lines were rejected
    summary = one_json(first)
    assert (summary["applied"], summary["repeats"], summary["rejected"]) == (200, 1, 2)
    rejects = [
        json.loads(line) for line in (tmp_path / "day.jsonl.rejects.jsonl").read_text().splitlines()
    ]
    assert [(r["line"], r["stage"]) for r in rejects] == [(6, "parse"), (51, "rules")]

    rerun = one_json(run("ingest", str(events), "--config", config, "--json", cwd=tmp_path))
    assert (rerun["applied"], rerun["duplicates"], rerun["rejected"]) == (0, 200, 2)

    audited = run("audit", str(events), "--config", config, cwd=tmp_path)
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "audit: exact" in audited.stdout

    shown = one_json(run("map", "show", "--config", config, "--json", cwd=tmp_path))
    assert shown["epoch"] == 1
    assert shown["balanced"] is True
    assert {s: v["slots"] for s, v in shown["shards"].items()} == {  # type: ignore[attr-defined]
        "s0": 5462,
        "s1": 5461,
        "s2": 5461,
    }
    text = run("map", "show", "--config", config, cwd=tmp_path)
    assert "shard map epoch 1: 16384 slots over 3 shards" in text.stdout


def test_prune_counts_deletes_and_then_refuses_what_it_pruned(tmp_path: Path) -> None:
    """prune --dry-run changes nothing; prune past the horizon deletes the ledger rows and
    raises the watermark, so ingesting the same file again applies nothing twice."""
    config = str(_config(tmp_path / "deploy"))
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0
    events = tmp_path / "day.jsonl"
    _events_file(events)
    assert run("ingest", str(events), "--config", config, cwd=tmp_path).returncode == 1
    ledger = _ledger_rows(tmp_path / "deploy")

    now_report = one_json(run("prune", "--config", config, "--dry-run", "--json", cwd=tmp_path))
    assert now_report["rows"] == 0  # a day old: inside the 35-day horizon
    later = (recent_start() + dt.timedelta(days=60)).isoformat()
    dry = one_json(
        run("prune", "--config", config, "--now", later, "--dry-run", "--json", cwd=tmp_path)
    )
    assert dry["rows"] > 0
    assert _ledger_rows(tmp_path / "deploy") == ledger
    done = one_json(run("prune", "--config", config, "--now", later, "--json", cwd=tmp_path))
    assert done["rows"] == dry["rows"]
    assert done["shards"] == dry["shards"]
    assert _ledger_rows(tmp_path / "deploy") == ledger - done["rows"]  # type: ignore[operator]

    again = one_json(run("ingest", str(events), "--config", config, "--json", cwd=tmp_path))
    assert again["applied"] == 0
    audited = run("audit", str(events), "--config", config, cwd=tmp_path)
    assert "audit: exact" in audited.stdout, audited.stdout


def test_ingest_text_output_and_exit_code_zero_for_a_clean_file(tmp_path: Path) -> None:
    """A file with only good lines exits 0 and says where the (empty) rejects file is."""
    config = str(_config(tmp_path / "deploy"))
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0
    path = tmp_path / "ok.csv"
    path.write_text(
        "event_id,account,time,product,quantity,dimensions.country\n"
        "k1,1,2026-11-01T00:00:00Z,email,3,FR\n",
        encoding="utf-8",
    )
    result = run("ingest", str(path), "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "applied     1" in result.stdout
    assert "ok.csv.rejects.jsonl" in result.stdout


@pytest.mark.parametrize(
    ("change", "moved", "target"),
    [
        (("--add", "s3"), 16384 // 4, {"s3": 4096}),
        (("--add", "s3:3"), 8192, {"s3": 8192}),
        (("--remove", "s0"), 5462, {"s0": 0}),
        (("--reweight", "s0=2"), 8192 - 5462, {"s0": 8192}),
    ],
)
def test_map_plan_prints_what_would_move(
    tmp_path: Path, change: tuple[str, ...], moved: int, target: dict[str, int]
) -> None:
    """A plan names the slots that move and publishes nothing."""
    config = str(_config(tmp_path / "deploy"))
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0
    plan = one_json(run("map", "plan", *change, "--config", config, "--json", cwd=tmp_path))
    assert plan["moved_slots"] == moved
    assert (plan["source_epoch"], plan["target_epoch"]) == (1, 2)
    after = {c["shard"]: c["after"] for c in plan["changes"]}  # type: ignore[attr-defined]
    assert {s: after[s] for s in target} == target
    text = run("map", "plan", *change, "--config", config, cwd=tmp_path)
    assert f"{moved} of 16384 slots move" in text.stdout
    assert one_json(run("map", "show", "--config", config, "--json", cwd=tmp_path))["epoch"] == 1


def test_map_plan_notes_a_shard_without_url(tmp_path: Path) -> None:
    """Adding a shard the config has no URL for says so."""
    config = str(_config(tmp_path / "deploy"))
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0
    result = run("map", "plan", "--add", "s9", "--config", config, cwd=tmp_path)
    assert result.returncode == 0
    assert "add a URL to [shards] for s9" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("map", "plan", "--reweight", "s0=zero"),
        ("map", "plan", "--remove", "nope"),
        ("map", "plan", "--add", "s9:x"),
        ("ingest", "missing.jsonl"),
        ("ingest", "events.txt"),
        ("audit", "missing.jsonl"),
        ("bench", "--models", "uniform,warm"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Wrong arguments exit 2 and say what was wrong on stderr, nothing on stdout."""
    config = str(_config(tmp_path / "deploy"))
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0
    (tmp_path / "events.txt").write_text("", encoding="utf-8")
    result = run(*args, "--config", config, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("shardbill: error: ")
    assert result.stdout == ""


def test_commands_before_init_say_to_run_init(tmp_path: Path) -> None:
    """Without a published map, ingest exits 2 and says how to publish one."""
    config = str(_config(tmp_path / "deploy"))
    path = tmp_path / "e.jsonl"
    path.write_text("", encoding="utf-8")
    result = run("ingest", str(path), "--config", config, cwd=tmp_path)
    assert result.returncode == 2
    assert "publish" in result.stderr


def test_no_configuration_file_exits_2(tmp_path: Path) -> None:
    """Without --config, SHARDBILL_CONFIG or ./shardbill.toml the error says how to give one."""
    env = {k: v for k, v in os.environ.items() if k != "SHARDBILL_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "shardbill", "map", "show"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2
    assert "--config" in result.stderr


def test_a_password_is_never_printed(tmp_path: Path) -> None:
    """An unreachable server with password_env: exit 3, and the password appears nowhere."""
    secret = "s3cret-never-shown"
    path = tmp_path / "shardbill.toml"
    path.write_text(
        '[shards]\na = "mysql+pymysql://app@127.0.0.1:1/db?password_env=SB_TEST_SECRET'
        '&connect_timeout=2"\n',
        encoding="utf-8",
    )
    result = run("init", "--config", str(path), cwd=tmp_path, env={"SB_TEST_SECRET": secret})
    assert result.returncode == 3, result.stderr
    assert "CannotConnectError" in result.stderr
    assert secret not in result.stdout + result.stderr


def test_bench_json_is_one_object_with_every_model(tmp_path: Path) -> None:
    """``bench --json`` prints exactly one JSON object with events/s and latency per model."""
    result = run("bench", "--events", "600", "--batch-size", "200", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = one_json(result)
    models = report["models"]
    assert isinstance(models, dict)
    assert list(models) == ["uniform", "skewed", "hot"]
    for model in models.values():
        assert model["events"] == 600
        assert model["events_per_s"] > 0
        assert model["commits"] >= 3  # three batches, at least one transaction each
        assert model["commit_p50_ms"] <= model["commit_p99_ms"]
    # one account: its rows on one shard; the identity claims spread over all of them
    assert models["hot"]["rows"] < models["uniform"]["rows"]  # everything coalesces


def test_bench_prints_a_table(tmp_path: Path) -> None:
    """Without --json the bench prints a table, one line per model."""
    result = run("bench", "--events", "300", "--models", "skewed,hot", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split()[:3] == ["model", "events/s", "commits/s"]
    assert [line.split()[0] for line in lines[2:]] == ["skewed", "hot"]


def test_bench_plot_without_matplotlib_names_the_extra(tmp_path: Path) -> None:
    """--plot without matplotlib exits 2 before benchmarking and names shardbill[plot]."""
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from shardbill.cli import main\n"
        "sys.exit(main(['bench', '--events', '10', '--plot', 'x.png']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "shardbill[plot]" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_bench_plot_draws_a_png(tmp_path: Path) -> None:
    """With the plot extra installed, --plot writes a PNG image."""
    pytest.importorskip("matplotlib")
    result = run("bench", "--events", "200", "--plot", "bench.png", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert one_json(result)["plot"] == "bench.png"
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comms_prices_the_synthetic_day_completely() -> None:
    """The demo's traffic is fully priced by the example rules (no rejected events)."""
    priced = comms.engine().price_batch(Traffic(model="skewed", events=500, seed=7).distinct())
    assert priced.rejected == ()


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``shardbill map plan ... | head -3``: a reader that went away is no error message.

    The read end of the pipe is closed before the command writes, so its first
    write fails with EPIPE every time (the race of a real ``head`` made certain).
    """
    config = str(_config(tmp_path / "deploy"))
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "shardbill", "map", "plan", "--add", "s3", "--config", config],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            check=False,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == EXIT_BROKEN_PIPE


@pytest.mark.parametrize("command", [("map", "plan"), ("reshard", "plan")])
def test_adding_a_shard_already_in_the_map_names_the_option(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """``--add s0`` when s0 is in the map: the fix named is ``--reweight s0=W``, not an API."""
    config = str(_config(tmp_path / "deploy"))
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0
    result = run(*command, "--add", "s0", "--config", config, cwd=tmp_path)
    assert result.returncode == 2
    assert "--reweight s0=" in result.stderr
    assert "reweight()" not in result.stderr


def test_bench_config_honours_the_writer_batch_size(tmp_path: Path) -> None:
    """bench --config takes [writer] batch_size (as demo --config does); --batch-size overrides."""
    config = str(_config(tmp_path / "deploy"))  # [writer] batch_size = 40
    args = ("bench", "--config", config, "--events", "200", "--models", "uniform", "--json")
    configured = one_json(run(*args, cwd=tmp_path))
    assert configured["batch_size"] == 40
    assert configured["models"]["uniform"]["commits"] >= 5  # type: ignore[index]
    overridden = one_json(run(*args, "--batch-size", "100", cwd=tmp_path))
    assert overridden["batch_size"] == 100


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_ingest_logs_every_batch(tmp_path: Path, where: str) -> None:
    """-v (before or after the command) logs each batch's lines and counts on stderr."""
    config = str(_config(tmp_path / "deploy"))  # batches of 40
    assert run("init", "--config", config, cwd=tmp_path).returncode == 0
    _events_file(tmp_path / "day.jsonl")  # 203 lines
    command = ("ingest", str(tmp_path / "day.jsonl"), "--config", config)
    args = ("-v", *command) if where == "before" else (*command, "-v")
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # the file has bad lines
    logged = [line for line in result.stderr.splitlines() if "shardbill.ingest" in line]
    assert len(logged) == 6  # 200 distinct good events (and 1 unpriced) in batches of 40
    assert "day.jsonl lines 1-" in logged[0]
    assert "40 events, 40 applied, 0 already applied" in logged[0]
    assert logged[-1].split("day.jsonl lines ")[1].split(":")[0].endswith("-203")
    quiet = run(*command, cwd=tmp_path)
    assert "shardbill.ingest" not in quiet.stderr
