"""Billing periods: parsing, bounds and the period of an event time (pure)."""

from __future__ import annotations

import calendar
import datetime as dt
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardbill.errors import ConfigurationError
from shardbill.periods import GATE_ROW, Period, PeriodState, period_of, periods_table_def

TIMES = st.integers(min_value=0, max_value=calendar.timegm((9999, 11, 30, 0, 0, 0)))


@given(TIMES)
def test_an_event_time_falls_in_the_utc_month_of_its_period(moment: int) -> None:
    """The period of a time is its UTC calendar month, and contains it."""
    when = dt.datetime.fromtimestamp(moment, tz=dt.UTC)
    period = period_of(moment)
    assert (period.year, period.month) == (when.year, when.month)
    assert period.contains(moment)
    assert period.start <= moment < period.end


@given(TIMES)
def test_periods_tile_time_without_gaps(moment: int) -> None:
    """Each period ends where the next begins, and text round-trips."""
    period = period_of(moment)
    assert period.end == period.next().start
    assert period_of(period.end) == period.next()
    if period.start > 0:
        assert period_of(period.start - 1) < period
    assert Period.parse(str(period)) == period


@pytest.mark.parametrize(
    "text", ["2026-13", "2026-00", "2026-1", "26-11", "2026/11", "", None, 202611]
)
def test_a_bad_period_is_refused_naming_the_value(text: object) -> None:
    """A period that is not YYYY-MM is a ConfigurationError (a ValueError) quoting it."""
    with pytest.raises(ConfigurationError, match=re.escape(repr(text))) as info:
        Period.parse(text)
    assert isinstance(info.value, ValueError)


def test_a_time_before_the_epoch_has_no_period() -> None:
    """A negative event time is refused with the value."""
    with pytest.raises(ConfigurationError, match="-1"):
        period_of(-1)


def test_the_periods_table_has_the_gate_row_key_and_closure_columns() -> None:
    """The table is keyed by period (the gate row '*' among them) and records who, when, why."""
    table = periods_table_def("billing")
    assert table.name == "billing_periods"
    assert table.primary_key == ("period",)
    names = {c.name for c in table.columns}
    assert {"state", "generation", "closed_at", "closed_by", "reason"} <= names
    assert len(GATE_ROW) <= table.column("period").length
    assert {s.value for s in PeriodState} == {"gate", "closing", "closed"}


def test_a_utc_calendar_is_one_whose_offset_is_always_zero() -> None:
    """UTC under any of its names has UTC's days; a zone with summer time does not."""
    import datetime as dt
    import zoneinfo

    from shardbill.periods.months import is_utc_calendar

    assert is_utc_calendar(dt.UTC)
    assert is_utc_calendar(zoneinfo.ZoneInfo("Etc/UTC"))
    assert is_utc_calendar(dt.timezone(dt.timedelta(0)))
    assert not is_utc_calendar(zoneinfo.ZoneInfo("Europe/London"))
    assert not is_utc_calendar(dt.timezone(dt.timedelta(hours=-5)))
