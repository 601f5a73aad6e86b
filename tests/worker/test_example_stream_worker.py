"""examples/stream_worker.py runs and its shards hold exactly the priced day."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from shardbill.rules import comms
from shardbill.workloads.synthetic import Traffic

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stream_worker.py"


def test_the_stream_worker_example_applies_every_event_once_and_commits_everything() -> None:
    """Every delivery is read, each event applied once, the bad record dead-lettered, every
    offset committed, and the billed total is the independently priced day's."""
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    stream = Traffic(model="skewed", events=3000, seed=42, duplicate_fraction=0.02)
    deliveries = sum(1 for _ in stream.deliveries())
    found = re.search(
        r"records (\d+), applied (\d+), duplicates (\d+), repeats (\d+), dead letters (\d+)", out
    )
    assert found, out
    records, applied, duplicates, repeats, dead = map(int, found.groups())
    assert (records, applied, dead) == (deliveries + 1, 3000, 1)
    assert duplicates + repeats == deliveries - 3000
    assert f"committed offsets {records} of {records}" in out
    charges = comms.engine().price_batch(list(stream.distinct())).charges
    total = sum(c.amount for c in charges)
    assert f"charged {total:.6f} USD in {len(charges)} charges" in out
