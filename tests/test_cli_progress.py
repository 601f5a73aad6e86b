"""Progress bars only for people, and Ctrl-C leaves whole batches only."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import pty
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path

import pytest

from shardbill.audit import expected_rows
from shardbill.rules import comms
from shardbill.tables.catalog import billing_tables
from shardbill.workloads.progress import Progress
from shardbill.workloads.synthetic import Traffic
from tests.support.clock import recent_start
from tests.test_cli import run


def test_an_enabled_bar_draws_and_erases_itself() -> None:
    """Drawn: label, bar, share, counts, rate; closing erases the line."""
    out = io.StringIO()
    with Progress("writing", total=200, unit="events", enabled=True, stream=out) as bar:
        bar.advance(200)
    text = out.getvalue()
    assert "writing [" + "#" * 28 + "] 100% 200/200 events" in text
    assert text.endswith("\r\x1b[2K")


def test_a_bar_without_a_total_counts() -> None:
    """An unknown total shows a counter instead of a bar."""
    out = io.StringIO()
    bar = Progress("reading", total=None, unit="bytes", enabled=True, stream=out)
    bar.update(12_345)
    bar.close()
    bar.close()  # idempotent
    assert "reading 12k bytes" in out.getvalue()
    assert "[#" not in out.getvalue()
    assert "[-" not in out.getvalue()


def test_nothing_is_drawn_when_output_is_not_a_terminal() -> None:
    """By default the bar checks for terminals; a StringIO is not one."""
    out = io.StringIO()
    with Progress("writing", total=10, stream=out) as bar:
        bar.advance(10)
    assert not bar.enabled
    assert out.getvalue() == ""


def test_the_demo_draws_progress_on_a_terminal_only(tmp_path: Path) -> None:
    """On a pseudo-terminal stderr carries the bar; piped (as in test_cli) it does not."""
    controller, terminal = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:  # the terminal closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    process = subprocess.run(
        [sys.executable, "-m", "shardbill", "demo", "--dir", "d", "--events", "4000",
         "--slots", "256"],
        stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, cwd=tmp_path, check=False,
        timeout=300,
    )  # fmt: skip
    os.close(terminal)
    reader.join(timeout=10)
    os.close(controller)
    seen = b"".join(chunks).decode("utf-8", "replace")
    assert process.returncode == 0, seen
    assert "writing [" in seen
    assert "audit       exact" in seen

    piped = run("demo", "--dir", "d2", "--events", "500", "--slots", "256", cwd=tmp_path)
    assert "\r" not in piped.stdout + piped.stderr


#: ``python -m shardbill`` with SIGINT's default action, as a terminal gives it. A test
#: run started in the background (``cmd &`` in a script, some CI runners) inherits SIGINT
#: *ignored*, and Python keeps an ignored SIGINT ignored: the child would never see the
#: test's Ctrl-C and would run to its end.
_INTERRUPTIBLE = (
    sys.executable,
    "-c",
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "from shardbill.cli import main; raise SystemExit(main(sys.argv[1:]))",
)


def _never_interrupted(what: str) -> str:
    """The failure message when the child ran to its end, with this process's SIGINT state."""
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return (
        f"the {what} ran to its end: the interrupt never arrived (this process: SIGINT "
        f"handler {signal.getsignal(signal.SIGINT)!r}, blocked {blocked})"
    )


def _ledger_ids(paths: list[Path]) -> set[str]:
    ids: set[str] = set()
    for path in paths:
        with closing(sqlite3.connect(path)) as conn:
            ids.update(r[0] for r in conn.execute("SELECT event_id FROM shardbill_ledger"))
    return ids


def _rows(paths: list[Path]) -> dict[str, dict[tuple[object, ...], list[int]]]:
    out: dict[str, dict[tuple[object, ...], list[int]]] = {}
    for table in billing_tables():
        rows: dict[tuple[object, ...], list[int]] = {}
        n = len(table.keys)
        columns = ", ".join(f'"{c}"' for c in (*table.key_names, *table.measure_names))
        for path in paths:
            with closing(sqlite3.connect(path)) as conn:
                for row in conn.execute(f'SELECT {columns} FROM "{table.name}"'):
                    rows[tuple(row[:n])] = list(row[n:])
        out[table.name] = rows
    return out


def _as_text(rows: Mapping[str, Mapping[tuple[object, ...], list[int]]]) -> dict[str, object]:
    """Dates as ISO text, as SQLite stores them."""
    return {
        table: {
            tuple(v.isoformat() if isinstance(v, dt.date) else v for v in key): values
            for key, values in table_rows.items()
        }
        for table, table_rows in rows.items()
    }


@pytest.mark.slow
def test_ctrl_c_leaves_whole_batches_and_a_rerun_completes_exactly(tmp_path: Path) -> None:
    """SIGINT mid-ingest: exit 130; what is in the ledger is exactly applied; a rerun finishes."""
    config = tmp_path / "shardbill.toml"
    config.write_text(
        '[shards]\ns0 = "sqlite:///s0.db"\ns1 = "sqlite:///s1.db"\n[writer]\nbatch_size = 500\n',
        encoding="utf-8",
    )
    assert run("init", "--config", str(config), cwd=tmp_path).returncode == 0
    traffic = Traffic(model="uniform", events=60_000, seed=9, start=recent_start())
    events = list(traffic.distinct())
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for e in events:
            out.write(json.dumps({"event_id": e.event_id, "account": e.account,
                                  "time": e.time.isoformat(), "product": e.product,
                                  "quantity": str(e.quantity),
                                  "dimensions": dict(e.dimensions)}) + "\n")  # fmt: skip
    shards = [tmp_path / "s0.db", tmp_path / "s1.db"]
    process = subprocess.Popen(
        [*_INTERRUPTIBLE, "ingest", str(path), "--config", str(config)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if len(_ledger_ids(shards)) >= 2000:
                break
        except sqlite3.Error:
            pass  # a shard busy mid-commit; look again
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0, _never_interrupted("ingest")
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert "was handled through line" in stderr  # what was written ...
    assert "run the same command again" in stderr  # ... and how to resume
    applied = _ledger_ids(shards)
    assert 0 < len(applied) < len(events)
    # Exactly the events in the ledger are in the aggregates: no batch is half-written.
    partial = expected_rows(
        [e for e in events if e.event_id in applied], engine=comms.engine(), tables=billing_tables()
    )
    assert _rows(shards) == _as_text(partial.rows)

    rerun = run("ingest", str(path), "--config", str(config), "--json", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["applied"] + summary["duplicates"] == len(events)
    assert summary["duplicates"] == len(applied)
    audited = run("audit", str(path), "--config", str(config), cwd=tmp_path)
    assert audited.returncode == 0, audited.stdout


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bar_can_count_events_while_measuring_bytes_and_shows_an_eta() -> None:
    """Share from bytes, rate in events/s, and the time left at that pace."""
    out = io.StringIO()
    clock = _Clock()
    bar = Progress("ingesting day.jsonl", total=1_000_000, unit="bytes", rate_unit="events",
                   enabled=True, stream=out, clock=clock)  # fmt: skip
    clock.now += 20.0
    bar.count(5_000)
    bar.update(250_000)  # a quarter in 20 s: 60 s to go
    line = out.getvalue().rsplit("\r\x1b[2K", 1)[1]
    assert line == (
        "ingesting day.jsonl [#######---------------------]  25% 250k/1.0M bytes, "
        "250 events/s, ETA 1m00s"
    )
    bar.close()


def test_eta_is_left_out_until_something_is_done_and_once_all_is() -> None:
    """No division by nothing at the start, and no ETA on a finished bar."""
    out = io.StringIO()
    clock = _Clock()
    bar = Progress("writing", total=10, unit="events", enabled=True, stream=out, clock=clock)
    bar.update(0)
    clock.now += 3.0
    bar.update(10)
    drawn = out.getvalue()
    assert "ETA" not in drawn
    assert "writing [" + "#" * 28 + "] 100% 10/10 events, 3 events/s" in drawn


@pytest.mark.slow
def test_ctrl_c_in_the_demo_says_a_rerun_starts_over(tmp_path: Path) -> None:
    """SIGINT mid-demo: exit 130, and the message is true for the demo: a re-run starts over."""
    process = subprocess.Popen(
        [*_INTERRUPTIBLE, "demo", "--dir", "d", "--events", "60000",
         "--slots", "256"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    shards = [tmp_path / "d" / f"shard-{i}.db" for i in range(4)]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if all(p.exists() for p in shards) and len(_ledger_ids(shards)) >= 1000:
                break
        except sqlite3.Error:
            pass  # not created yet, or busy mid-commit; look again
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0, _never_interrupted("demo")
    assert process.returncode == 130, stderr
    assert "starts over" in stderr
    assert "run the same command again to finish" not in stderr


@pytest.mark.slow
def test_ctrl_c_during_the_demo_reshard_stops_the_writing_too(tmp_path: Path) -> None:
    """SIGINT once the fifth shard appears: the rest of the day is not written to its end first."""
    events = 60_000
    process = subprocess.Popen(
        [*_INTERRUPTIBLE, "demo", "--dir", "d", "--events", str(events),
         "--slots", "4096", "--batch-size", "500"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    fifth = tmp_path / "d" / "shard-4.db"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None and not fifth.exists():
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode != 0, _never_interrupted("demo")
    assert process.returncode == 130, stderr
    written = _ledger_ids([tmp_path / "d" / f"shard-{i}.db" for i in range(4)])
    # Interrupted before the resharder created its tables there, the fifth shard holds nothing.
    with contextlib.suppress(sqlite3.OperationalError):
        written |= _ledger_ids([fifth])
    assert len(written) < events, "the writing thread ran to the end of the day after Ctrl-C"
