"""Child-process entry points for the resharding crash tests (module-level so ``spawn`` can
import them).

* :func:`reshard` runs a :class:`~shardbill.resharding.Resharder` against shards
  named by URL and a :class:`~shardbill.resharding.JsonFileMapStore`, and
  SIGKILLs its own process before the ``kill_at``-th step: a crash with no
  cleanup, no ``finally``, no rollback sent to the servers.
* :func:`stale_writer` is a writer process created before a reshard and never
  told about it: it builds its writer on the old map (given as JSON, or loaded
  from the map store), writes, waits for the parent, writes again, and reports
  what happened.

Both are started with ``multiprocessing.get_context("spawn").Process``.
"""

from __future__ import annotations

import os
import signal
import threading
from multiprocessing.connection import Connection
from pathlib import Path

from shardbill import ShardMap
from shardbill.observe import Stats
from shardbill.providers import PooledProvider
from shardbill.resharding import JsonFileMapStore, Resharder, ReshardSettings
from shardbill.rules import Charge
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter, WriteResult
from tests.support.clock import fixed_clock


def reshard(  # noqa: PLR0917 - a process target, called with positional args
    urls: dict[str, str],
    store_path: str,
    target_json: str,
    kill_at: int | None,
    chunk_rows: int,
    parallel_slots: int,
    step_log: str,
) -> None:
    """Run the reshard to ``target_json``; SIGKILL this process before step ``kill_at``.

    Every step name is appended to ``step_log`` (one ``write`` on an
    ``O_APPEND`` descriptor, so the last line survives the SIGKILL) before the
    step runs: the parent reads where the process died.
    """
    provider = PooledProvider.from_urls(urls)
    count = 0
    lock = threading.Lock()
    log_fd = os.open(step_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def before_step(name: str) -> None:
        nonlocal count
        with lock:  # steps run on several threads with parallel_slots > 1
            count += 1
            os.write(log_fd, f"{count} {name}\n".encode())
            if kill_at is not None and count >= kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    resharder = Resharder(
        store=JsonFileMapStore(store_path),
        provider=provider,
        tables=billing_tables(),
        # A short lease: the parent's next run takes over soon after the SIGKILL.
        settings=ReshardSettings(
            chunk_rows=chunk_rows, parallel_slots=parallel_slots, lease_seconds=1.0
        ),
        before_step=before_step,
    )
    resharder.run(ShardMap.from_json(target_json))
    os.write(log_fd, b"done\n")
    os.close(log_fd)
    provider.close()


def _write_until_ok(writer: AggregationWriter, batch: list[Charge]) -> WriteResult:
    result = writer.write(batch)
    for _ in range(20):
        if result.ok:
            return result
        result = writer.write([c for c in batch if c.event_id in result.failed_events])
    return result


def stale_writer(
    urls: dict[str, str],
    map_json: str | None,
    store_path: str | None,
    batches: list[list[Charge]],
    conn: Connection,
) -> None:
    """A writer built before a reshard and never told about it.

    It routes with the map ``map_json`` (and can only follow forwarding
    addresses), or with the map it loads from the JSON map store at
    ``store_path`` (and reloads it when fenced). It writes ``batches[0]``,
    sends ``"ready"``, waits for ``"go"``, writes the other batches, and sends
    back a report: the epoch it routes with, the event ids applied, how often
    a shard fenced it, and whether every write ended ok.
    """
    provider = PooledProvider.from_urls(urls)
    stats = Stats()
    source = ShardMap.from_json(map_json) if map_json else JsonFileMapStore(str(store_path))
    writer = AggregationWriter(
        shard_map=source,
        provider=provider,
        tables=billing_tables(),
        observer=stats,
        clock=fixed_clock,
    )
    applied: set[str] = set()
    ok = True
    with writer:
        first = _write_until_ok(writer, batches[0])
        ok &= first.ok
        applied |= first.applied_events
        conn.send("ready")
        if conn.recv() != "go":
            raise RuntimeError("the parent did not say go")
        for batch in batches[1:]:
            result = _write_until_ok(writer, batch)
            ok &= result.ok
            applied |= result.applied_events
    provider.close()
    conn.send(
        {
            "epoch": writer.shard_map.epoch,
            "applied": sorted(applied),
            "fenced": sum(n for (_, error), n in stats.failures.items() if error == "FencedError"),
            "ok": ok,
        }
    )
    conn.close()


def last_step(step_log: str) -> str:
    """The last step the child logged ("" when none): where a SIGKILL hit."""
    path = Path(step_log)
    if not path.exists():
        return ""
    lines = path.read_text().splitlines()
    return lines[-1].split(" ", 1)[-1] if lines else ""


def steps_taken(step_log: str) -> int:
    """How many steps the child began (the lines it logged, "done" aside)."""
    path = Path(step_log)
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line != "done")
