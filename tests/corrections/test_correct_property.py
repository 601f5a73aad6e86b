"""A property: random events and random corrections (cancels, amends, repeats, reused ids)
against an independent model of what each correction must do and what the rows must be.

On SQLite (each example gets fresh shards); the same code runs on MariaDB in
``test_correct.py``.
"""

from __future__ import annotations

import tempfile
import types
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardbill import ShardMap
from shardbill.corrections import Corrector
from shardbill.pipeline import Pipeline
from shardbill.providers import PooledProvider
from shardbill.rules import UsageEvent, comms
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter
from tests.corrections.test_correct import event, oracle
from tests.support.backends import Backend
from tests.support.oracle import actual_rows

EVENTS = 6

steps = st.lists(
    st.tuples(
        st.sampled_from(["cancel", "amend", "redeliver"]),
        st.integers(0, EVENTS - 1),  # which event
        st.integers(0, 4),  # the correction id's number (small: ids repeat)
        st.integers(1, 6),  # the amend's characters, in hundreds
    ),
    max_size=10,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    accounts=st.lists(st.integers(1, 4), min_size=EVENTS, max_size=EVENTS),
    plan=steps,
)
def test_random_corrections_match_the_model(accounts: list[int], plan: list[Any]) -> None:
    """Each correction's outcome is the model's (applied, duplicate, refused), a replay of
    an original is always a duplicate, and after every step the rows equal the oracle over
    the events' current contents."""
    engine = comms.engine()
    with tempfile.TemporaryDirectory() as tmp:
        shards = ("s0", "s1", "s2")
        provider = PooledProvider.sqlite_directory(Path(tmp), shards)
        backend = Backend(
            kind="sqlite",
            shards=shards,
            provider=provider,
            locations={s: str(Path(tmp) / f"{s}.db") for s in shards},
            urls={},
        )
        writer = AggregationWriter(
            shard_map=ShardMap.create(list(shards), slots=32),
            provider=provider,
            tables=billing_tables(),
        )
        try:
            writer.ensure_schema()
            originals = [event(f"p{i}", a, chars=100 + 37 * i) for i, a in enumerate(accounts)]
            pipeline = Pipeline(engine=engine, writer=writer)
            assert pipeline.process(originals).ok
            corrector = Corrector(writer=writer, engine=engine, provider=provider)
            current: dict[str, UsageEvent | None] = {e.event_id: e for e in originals}
            ever: list[UsageEvent] = list(originals)
            done: dict[tuple[str, str], tuple[str, UsageEvent | None]] = {}
            for kind, index, number, hundreds in plan:
                original = originals[index]
                event_id, cid = original.event_id, f"k{number}"
                new = event(event_id, original.account, chars=100 * hundreds)
                if kind == "redeliver":  # the stream replays the original: never re-applied
                    replay = pipeline.process([original])
                    assert replay.write.duplicate_events == {event_id}
                    continue
                if kind == "cancel":
                    result = corrector.cancel(original, correction_id=cid, reason="p")
                    asked: UsageEvent | None = None
                else:
                    result = corrector.amend(new, correction_id=cid, reason="p", original=original)
                    asked = new
                earlier = done.get((event_id, cid))
                if earlier is not None:
                    want = "duplicate" if earlier == (kind, asked) else "refused"
                elif current[event_id] is None:
                    want = "refused"  # cancelled: nothing left to correct
                else:
                    want = "applied"
                assert result.state == want, result.reason
                if want == "applied":
                    done[(event_id, cid)] = (kind, asked)
                    current[event_id] = asked
                    if asked is not None:
                        ever.append(asked)
                found = actual_rows(types.SimpleNamespace(shards=shards, rows=backend.rows))
                live = [e for e in current.values() if e is not None]
                assert found == oracle(engine, live, ever)
            found = actual_rows(types.SimpleNamespace(shards=shards, rows=backend.rows))
            live = [e for e in current.values() if e is not None]
            assert found == oracle(engine, live, ever)  # after the last step (maybe a replay)
        finally:
            writer.close()
            provider.close()
