"""What may be committed: never past a record that is not done, as far as every done one allows."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shardbill.worker import OffsetTracker

P = ("usage", 0)


def test_a_record_waiting_for_a_retry_holds_the_commit_back() -> None:
    """Done records after an open one are not committed; when it is done the commit jumps."""
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.received(P, offset)
    for offset in (0, 1, 3, 4):
        tracker.done(P, offset)
    assert tracker.committable() == {P: 2}
    tracker.committed({P: 2})
    assert tracker.committable() == {}
    tracker.done(P, 2)
    assert tracker.committable() == {P: 5}


def test_gaps_in_offsets_do_not_hold_anything_back() -> None:
    """Offsets never delivered (compaction, transaction markers) are not waited for."""
    tracker = OffsetTracker()
    for offset in (10, 12, 15):
        tracker.received(P, offset)
        tracker.done(P, offset)
    assert tracker.committable() == {P: 16}


def test_a_forgotten_partition_is_never_committed() -> None:
    """After a revoke or a loss nothing more is committed for the partition."""
    tracker = OffsetTracker()
    tracker.received(P, 0)
    tracker.done(P, 0)
    tracker.forget([P])
    tracker.done(P, 0)
    assert tracker.committable() == {}
    assert tracker.open == 0


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 40), st.booleans()), max_size=120))
def test_the_commit_never_passes_an_open_record(steps: list[tuple[int, int, bool]]) -> None:
    """For any interleaving of deliveries and completions, every record below a committable
    offset is done, and the offset is one past a received record or the lowest open one."""
    tracker = OffsetTracker()
    received: dict[tuple[str, int], set[int]] = {}
    finished: dict[tuple[str, int], set[int]] = {}
    for number, offset, done in steps:
        partition = ("t", number)
        tracker.received(partition, offset)
        received.setdefault(partition, set()).add(offset)
        if done:
            tracker.done(partition, offset)
            finished.setdefault(partition, set()).add(offset)
        for where, target in tracker.committable().items():
            got = received[where]
            open_ = got - finished.get(where, set())
            assert all(o in finished.get(where, set()) for o in got if o < target)
            assert target == (min(open_) if open_ else max(got) + 1)
            tracker.committed({where: target})
