"""The in-transaction refusal of new units in closed periods (pure)."""

from __future__ import annotations

from shardbill.periods import Period
from shardbill.periods.gate import withhold_closed
from shardbill.writer.planning import Unit

NOV = Period.parse("2026-11")
DEC = NOV.next()


def _unit(event_id: str, slot: int, moment: int) -> Unit:
    return Unit(event_id=event_id, slot=slot, fingerprint="0" * 16, rows=(), time=moment)


def test_no_closed_period_keeps_every_unit() -> None:
    """With nothing closed, every new unit is kept."""
    units = [_unit("a", 1, NOV.start), _unit("b", 2, DEC.start)]
    assert withhold_closed(units, frozenset()) == (units, {})


def test_an_event_in_a_closed_period_is_refused_whole_with_its_period() -> None:
    """All new units of an event in a closed period go; the others stay; the reason names it."""
    units = [
        _unit("a", 1, NOV.end - 1),
        _unit("a", 7, NOV.end - 1),
        _unit("b", 2, DEC.start),
    ]
    kept, refused = withhold_closed(units, {"2026-11"})
    assert kept == [units[2]]
    assert set(refused) == {"a"}
    assert "2026-11" in refused["a"].reason
    assert "'a'" in refused["a"].reason
    assert refused["a"].error == "PeriodClosedError"


def test_the_first_second_of_the_next_period_is_open() -> None:
    """The period boundary is exact: end is exclusive."""
    kept, refused = withhold_closed([_unit("c", 3, NOV.end)], {"2026-11"})
    assert [u.event_id for u in kept] == ["c"]
    assert not refused
