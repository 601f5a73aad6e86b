"""``shardbill demo``: the main job on embedded SQLite shard files.

This first version is deliberately small: it generates seeded usage events,
routes them to four SQLite shard files, writes each shard's batch in one
transaction (ledger of event ids + additive UPSERT), replays a slice of
duplicates to show they change nothing, and checks the totals against an
independent sum. Later versions run the full pipeline (rules, shard map,
aggregation writer, online resharding).
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import xxhash

_SHARDS = ("shard-0", "shard-1", "shard-2", "shard-3")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ledger (event_id TEXT PRIMARY KEY)",
    "CREATE TABLE IF NOT EXISTS usage_totals ("
    " account_id INTEGER PRIMARY KEY, events INTEGER NOT NULL, amount_minor INTEGER NOT NULL)",
)


def _shard_of(account_id: int) -> str:
    digest = xxhash.xxh3_64_intdigest(str(account_id).encode())
    return _SHARDS[digest % len(_SHARDS)]


def _write(conn: sqlite3.Connection, batch: list[tuple[str, int, int]]) -> tuple[int, int]:
    """Apply one shard batch in one transaction; returns (applied, duplicates)."""
    applied = 0
    with conn:
        for event_id, account_id, amount in batch:
            cur = conn.execute("INSERT OR IGNORE INTO ledger (event_id) VALUES (?)", (event_id,))
            if cur.rowcount == 0:
                continue
            applied += 1
            conn.execute(
                "INSERT INTO usage_totals (account_id, events, amount_minor) VALUES (?, 1, ?)"
                " ON CONFLICT (account_id) DO UPDATE SET events = events + 1,"
                " amount_minor = amount_minor + excluded.amount_minor",
                (account_id, amount),
            )
    return applied, len(batch) - applied


def run_demo(*, directory: str, events: int, seed: int, as_json: bool) -> int:
    """Run the demo and print its report; returns the exit code (0: audit exact)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    conns = {}
    for shard in _SHARDS:
        path = root / f"{shard}.db"
        path.unlink(missing_ok=True)
        conns[shard] = sqlite3.connect(path)
        for ddl in _SCHEMA:
            conns[shard].execute(ddl)

    rng = random.Random(seed)  # noqa: S311 - synthetic traffic, not secrets
    stream = [(f"evt-{i}", rng.randint(1, 500), rng.randint(1, 250)) for i in range(events)]
    expected: dict[int, int] = defaultdict(int)
    for _, account_id, amount in stream:
        expected[account_id] += amount

    started = time.perf_counter()
    applied = duplicates = 0
    replay = stream[: events // 10]
    for chunk in (stream, replay):
        by_shard: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
        for event in chunk:
            by_shard[_shard_of(event[1])].append(event)
        for shard, batch in by_shard.items():
            a, d = _write(conns[shard], batch)
            applied += a
            duplicates += d
    elapsed = time.perf_counter() - started

    actual: dict[int, int] = {}
    rows = {}
    for shard, conn in conns.items():
        found = conn.execute("SELECT account_id, amount_minor FROM usage_totals").fetchall()
        rows[shard] = len(found)
        actual.update(dict(found))
        conn.close()
    exact = actual == dict(expected)
    report = {
        "events": events,
        "applied": applied,
        "duplicates_skipped": duplicates,
        "events_per_second": round(applied / elapsed) if elapsed else None,
        "rows_per_shard": rows,
        "total": str(Decimal(sum(actual.values())) / 100),
        "audit": "exact" if exact else "DIFFERENT",
    }
    if as_json:
        print(json.dumps(report))
    else:
        print(f"shardbill demo: {events} events -> {len(_SHARDS)} SQLite shards in {root}/")
        for key, value in report.items():
            print(f"  {key:20} {value}")
    return 0 if exact else 1
