"""Helpers of the worker fault tests: a deployment, worker processes, bounded waits, the oracle.

A :class:`Fleet` is one deployment (a configuration file over some shards)
with a topic and a consumer group of its own; it starts ``shardbill worker``
processes on them and reads, directly from the shards (not through
shardbill), how many distinct events the ledgers hold and what the
aggregate tables say, for :func:`tests.support.oracle.actual_rows`.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs

from shardbill.rules import UsageEvent
from shardbill.workloads.synthetic import Traffic
from tests.support.clock import recent_start

SESSION_TIMEOUT_MS = "6000"
"""The consumer session timeout of the tests (Tansu's first join takes ~25 s at the default)."""


def events(n: int, seed: int, accounts: int = 40) -> list[UsageEvent]:
    """``n`` distinct seeded events dated two days ago (within a subprocess writer's horizon)."""
    return list(
        Traffic(
            model="skewed", events=n, seed=seed, accounts=accounts, start=recent_start()
        ).distinct()
    )


def message(event: UsageEvent) -> tuple[bytes, bytes]:
    """The event as a Kafka message keyed by its account."""
    value = {
        "event_id": event.event_id,
        "account": event.account,
        "time": event.time.isoformat(),
        "product": event.product,
        "quantity": str(event.quantity),
        "dimensions": dict(event.dimensions),
    }
    return str(event.account).encode(), json.dumps(value).encode()


def wait_until(what: str, check: Callable[[], bool], *, timeout: float, every: float = 0.1) -> None:
    """Return once ``check()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class SqliteShards:
    """SQLite shard files, read directly."""

    def __init__(self, directory: Path, shards: tuple[str, ...]) -> None:
        self.directory = directory
        self.shards = shards

    def urls(self) -> dict[str, str]:
        """Shard -> URL for the configuration file."""
        return {s: f"sqlite:///{self.directory / f'{s}.db'}" for s in self.shards}

    def rows(self, shard: str, sql: str) -> list[tuple[Any, ...]]:
        """Run a SELECT on one shard file."""
        with closing(sqlite3.connect(self.directory / f"{shard}.db")) as conn:
            return list(conn.execute(sql.replace("`", '"')).fetchall())


@attrs.define
class Fleet:
    """A deployment, a topic and a group, and the worker processes started on them."""

    directory: Path
    config: str
    shards: Any  # has .shards and .rows(shard, sql)
    bootstrap: str
    topic: str = attrs.field(factory=lambda: f"usage-{uuid.uuid4().hex[:8]}")
    group: str = attrs.field(factory=lambda: f"billing-{uuid.uuid4().hex[:8]}")
    processes: list[subprocess.Popen[str]] = attrs.field(factory=list)

    @classmethod
    def deploy(
        cls,
        directory: Path,
        shards: Any,
        urls: Mapping[str, str],
        bootstrap: str,
        writer: str = "",
    ) -> Fleet:
        """Write the configuration over ``urls`` and run ``shardbill init`` on it."""
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "shardbill.toml"
        lines = "".join(f'{name} = "{url}"\n' for name, url in urls.items())
        config.write_text(f"[shards]\n{lines}[writer]\n{writer}", encoding="utf-8")
        init = subprocess.run(
            [sys.executable, "-m", "shardbill", "init", "--config", str(config)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert init.returncode == 0, init.stdout + init.stderr
        return cls(directory=directory, config=str(config), shards=shards, bootstrap=bootstrap)

    def command(self, *extra: str) -> list[str]:
        """``shardbill worker`` on the fleet's topic and group, dead letters to a file."""
        return [
            sys.executable, "-m", "shardbill", "worker", "--topic", self.topic,
            "--group", self.group, "--bootstrap-servers", self.bootstrap,
            "--config", self.config, "--dead-letters", str(self.directory / "dead.jsonl"),
            "--kafka-option", f"session.timeout.ms={SESSION_TIMEOUT_MS}", "--json", *extra,
        ]  # fmt: skip

    def start(self, name: str, *extra: str) -> subprocess.Popen[str]:
        """Start a worker; its standard error goes to ``NAME.err`` in the directory."""
        err = open(self.directory / f"{name}.err", "w")  # noqa: SIM115 - the child holds it
        process = subprocess.Popen(
            self.command(*extra), stdout=subprocess.PIPE, stderr=err, text=True, cwd=self.directory
        )
        err.close()
        self.processes.append(process)
        return process

    def finish(self, process: subprocess.Popen[str], name: str, timeout: float) -> dict[str, Any]:
        """Wait for a worker to exit by itself; its summary (it must exit 0)."""
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            errors = (self.directory / f"{name}.err").read_text(errors="replace")[-2000:]
            raise AssertionError(
                f"worker {name} did not exit within {timeout:.0f} s; its stderr ends:\n{errors}"
            ) from None
        errors = (self.directory / f"{name}.err").read_text(errors="replace")
        assert process.returncode == 0, f"worker {name} exited {process.returncode}:\n{errors}"
        summary: dict[str, Any] = json.loads(out)
        return summary

    def kill_all(self) -> None:
        """SIGKILL every worker still running (the test's cleanup)."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate()

    def ledger(self) -> int:
        """Distinct event ids in the ledgers (an event has a row per slot it touched)."""
        ids = set()
        for shard in self.shards.shards:
            ids.update(
                r[0] for r in self.shards.rows(shard, "SELECT event_id FROM shardbill_ledger")
            )
        return len(ids)
