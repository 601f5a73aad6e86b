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


def _billed(event_id: str, slot: int, moment: int, *, home: bool = False) -> Unit:
    """A unit with one usage_monthly row (table 1 of billing_tables), keyed on NOV's month."""
    import datetime as dt

    row = (1, (7, dt.date(2026, 11, 1), "sms", "USD"), (1, 1, 1))
    return Unit(event_id, slot, "f" * 16, (row,), moment, home)


def test_adjust_moves_a_late_event_whole_into_the_first_open_period() -> None:
    """Under adjust, a late event's units keep their fingerprint and time, their month key
    becomes the booking period's first day, and they carry the booking period."""
    import datetime as dt

    from shardbill.periods.gate import Rebooker, judge_late
    from shardbill.tables.catalog import billing_tables

    rebooker = Rebooker(billing_tables())
    units = [_billed("a", 1, NOV.start, home=True), _billed("a", 2, NOV.start)]
    kept, refused = judge_late(units, {"2026-11"}, {"2026-12"}, rebooker=rebooker)
    assert refused == {}
    assert [u.booked for u in kept] == ["2027-01", "2027-01"]
    assert [u.fingerprint for u in kept] == [u.fingerprint for u in units]
    assert [u.time for u in kept] == [NOV.start, NOV.start]
    assert kept[0].rows[0][1] == (7, dt.date(2027, 1, 1), "sms", "USD")


def test_adjust_refuses_what_it_must_not_move() -> None:
    """The rest of an event begun in its period, a correction, and a part whose booking
    period is closed too are refused with the reason; the refuse policy is untouched."""
    from shardbill.corrections.records import SEPARATOR
    from shardbill.periods import gate
    from shardbill.tables.catalog import billing_tables

    assert gate._CORRECTION_SEPARATOR == SEPARATOR
    rebooker = gate.Rebooker(billing_tables())
    rest = _billed("began", 2, NOV.start)
    correction = _billed(f"x{SEPARATOR}r1", 3, NOV.start, home=True)
    booked = _billed("moved", 4, NOV.start)._replace(booked="2026-12")
    kept, refused = gate.judge_late(
        [rest, correction, booked], {"2026-11", "2026-12"}, rebooker=rebooker
    )
    assert kept == []
    assert "remaining parts cannot be moved" in refused["began"].reason
    assert "correction is never moved" in refused[f"x{SEPARATOR}r1"].reason
    assert "booked into period 2026-12" in refused["moved"].reason
    closing_rest = _billed("began", 2, NOV.start)
    assert gate.judge_late([closing_rest], set(), {"2026-11"}, rebooker=rebooker) == (
        [closing_rest],
        {},
    )
    assert gate.judge_late([rest], {"2026-11"}) == gate.withhold_closed([rest], {"2026-11"})


def test_a_moved_unit_still_signs_the_rows_its_fingerprint_covers() -> None:
    """A replay judged under an older declaration recomputes the fingerprint from
    Unit.signed: after a move it must still be the delivered rows, not the booked ones."""
    from shardbill.periods.gate import Rebooker
    from shardbill.tables.catalog import billing_tables

    unit = _billed("a", 2, NOV.start)
    moved = Rebooker(billing_tables()).rebook(unit, DEC)
    assert moved.rows != unit.rows
    assert moved.signed == unit.signed
    home = _billed("h", 1, NOV.start, home=True)._replace(whole=unit.rows + unit.rows)
    assert Rebooker(billing_tables()).rebook(home, DEC).signed == home.signed
