"""Corrections under cut COMMITs and cut record statements (issue 20): each applies once.

A correction writes a pending record, then its deltas through the writer,
then marks the record applied: three transactions, any of which the proxy
cuts (COMMIT dropped before the server sees it, or run and its answer lost;
the record's INSERT or UPDATE cut the same ways). The corrector runs the
correction again by itself after such a failure, so each reports applied; the aggregates
must then equal an independent recomputation from the events' current
contents, every correction's record must be there once and applied, and a
repeat of any correction must be a duplicate.
"""

from __future__ import annotations

import random
import types
from collections import Counter
from collections.abc import Callable

from shardbill.corrections import CorrectionResult, Corrector, RecordState
from shardbill.pipeline import Pipeline
from shardbill.rules import UsageEvent, comms
from tests.corrections.test_correct import event, oracle
from tests.faults.cluster import default_retry
from tests.faults.conftest import ClusterFactory
from tests.faults.report import note
from tests.faults.scale import iterations, seed_for
from tests.support.oracle import actual_rows
from tests.support.proxy import FaultProxy, is_commit


def _record_insert(sql: str) -> bool:
    return sql.startswith("INSERT INTO `shardbill_corrections`")


def _record_update(sql: str) -> bool:
    return sql.startswith("UPDATE `shardbill_corrections`")


# (name, predicate, before): what one attempt cuts.
CUTS: tuple[tuple[str, Callable[[str], bool], bool], ...] = (
    ("commit_before", is_commit, True),
    ("commit_after", is_commit, False),
    ("record_insert_before", _record_insert, True),
    ("record_insert_after", _record_insert, False),
    ("record_update_before", _record_update, True),
    ("record_update_after", _record_update, False),
)


def _arm(proxy: FaultProxy, rng: random.Random) -> str:
    name, predicate, before = rng.choice(CUTS)
    proxy.clear_cuts()
    proxy.cut_when(predicate, before=before, count=1, label=name)
    return name


def test_corrections_under_cut_commits_apply_exactly_once(
    make_cluster: ClusterFactory, driver: str
) -> None:
    """Cancels and amends, each with one cut armed: each reports applied, the rows equal
    the oracle, each correction is recorded once and applied, and a
    repeat of each is a duplicate."""
    seed = seed_for(f"correction-cuts-{driver}")
    rng = random.Random(seed)
    cluster = make_cluster(servers=1, shards=3)
    proxy = cluster.proxies[0]
    engine = comms.engine()
    provider = cluster.provider()
    writer = cluster.writer(provider=provider, retry=default_retry(seed))
    events = [event(f"cx{i}", 1 + i % 17, chars=40 + 7 * i) for i in range(200)]
    assert Pipeline(engine=engine, writer=writer).process(events).ok  # no fault yet
    corrector = Corrector(writer=writer, engine=engine, provider=provider, clock=lambda: 1e9)
    current: dict[str, UsageEvent] = {e.event_id: e for e in events}
    ever: list[UsageEvent] = list(events)
    injected: Counter[str] = Counter()
    done: list[tuple[str, Callable[[], CorrectionResult]]] = []
    for n, original in enumerate(rng.sample(events, iterations(16, 200))):
        correction_id = f"k{n}"  # each event is corrected once: sample() draws distinct ones
        new = None if n % 2 else event(original.event_id, original.account, chars=500 + n)

        def run(
            new: UsageEvent | None = new, given: UsageEvent = original, cid: str = correction_id
        ) -> CorrectionResult:
            if new is None:
                return corrector.cancel(given, correction_id=cid, reason="fault suite")
            return corrector.amend(new, correction_id=cid, reason="fault suite", original=given)

        injected[_arm(proxy, rng)] += 1
        result = run()  # the cut is absorbed: the correction runs again by itself
        assert proxy.pending_cuts == 0, f"{correction_id}: the armed cut never fired"
        assert result.state == "applied", (correction_id, result)
        if new is None:
            del current[original.event_id]
        else:
            current[original.event_id] = new
            ever.append(new)
        done.append((correction_id, run))
    rows = actual_rows(types.SimpleNamespace(shards=cluster.shards, rows=cluster.rows))
    assert rows == oracle(engine, current.values(), ever)
    records = corrector.records()
    assert Counter(r.correction_id for r in records) == Counter(cid for cid, _ in done)
    assert {r.state for r in records} == {RecordState.APPLIED}
    for correction_id, run in done:
        assert run().state == "duplicate", correction_id
    assert actual_rows(types.SimpleNamespace(shards=cluster.shards, rows=cluster.rows)) == rows
    note(
        "corrections under cut COMMITs and record statements",
        driver,
        seed=seed,
        injected=dict(injected),
        extra={"corrections": len(done)},
    )
