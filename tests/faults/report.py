"""What a scenario injected and what the invariants found, appended to a JSON-lines file.

Set ``SHARDBILL_FAULTS_REPORT=/path/report.jsonl`` and every scenario adds one
line: its name, the driver, the seed, how often each fault was injected, and
the checker's counts. ``docs/explanation/fault-injection.md`` is built from
such a file after a full run. Without the variable nothing is written.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping

from tests.faults.invariants import Verdict
from tests.faults.scale import FULL

__all__ = ["by_error", "note"]

_lock = threading.Lock()


def by_error(counts: Mapping[tuple[str, str], int]) -> dict[str, int]:
    """Stats' (shard, error) counters summed per error class."""
    out: dict[str, int] = {}
    for (_, error), n in counts.items():
        out[error] = out.get(error, 0) + n
    return out


def note(
    scenario: str,
    driver: str,
    *,
    seed: int,
    injected: Mapping[str, int],
    verdict: Verdict | None = None,
    extra: Mapping[str, object] | None = None,
) -> None:
    """Append one scenario's line to ``$SHARDBILL_FAULTS_REPORT`` (when set)."""
    path = os.environ.get("SHARDBILL_FAULTS_REPORT")
    if not path:
        return
    line = {
        "scenario": scenario,
        "driver": driver,
        "seed": seed,
        "full": FULL,
        "injected": dict(injected),
        "violations": None if verdict is None else len(verdict.violations),
        "counts": None if verdict is None else dict(verdict.counts),
        **dict(extra or {}),
    }
    with _lock, open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line, sort_keys=True) + "\n")
