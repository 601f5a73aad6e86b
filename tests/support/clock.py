"""The suite's fixed 'now': its data is dated around November 2026 and must never age.

Writers refuse events older than their dedup horizon (35 days by default) by
their own clock. The suite's synthetic traffic has fixed dates, so every
writer the tests build (in process, through the autouse fixture in
``tests/conftest.py``, and in worker processes, explicitly) reads this clock.
"""

from __future__ import annotations

import datetime as dt

TEST_NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
"""The instant every test writer takes for 'now'."""


def fixed_clock() -> float:
    """TEST_NOW as Unix seconds: pass it as ``AggregationWriter(clock=fixed_clock)``."""
    return TEST_NOW.timestamp()


def recent_start() -> dt.datetime:
    """Midnight UTC two days ago, by the real clock: where the data for a *subprocess*
    writer (``shardbill ingest``, a worker) must start, since it reads the real clock."""
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - dt.timedelta(days=2)
