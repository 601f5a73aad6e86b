"""Billing periods (pure): a calendar month in UTC, and the period an event time falls in.

There is one notion of time in shardbill: an event's own time, in Unix
seconds, as the ledger stores it (``event_time``) and as the dedup horizon
measures it. A period is the UTC calendar month that time falls in, so an
event's period never depends on a host's time zone or clock.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import time

import attrs

from shardbill.errors import ConfigurationError

__all__ = ["Period", "is_utc_calendar", "period_of"]

_TEXT = re.compile(r"^(\d{4})-(\d{2})$")


def _check_month(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= 12:
        raise ConfigurationError(f"'month' must be 1..12: {value!r}; write the period as YYYY-MM")


def _check_year(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1970 <= value <= 9999:
        raise ConfigurationError(
            f"'year' must be 1970..9999: {value!r}; periods start at the Unix epoch"
        )


@attrs.frozen(kw_only=True, order=True)
class Period:
    """One billing period: a UTC calendar month.

    Example:
        >>> p = Period.parse("2026-11")
        >>> str(p), p.start, p.end == Period.parse("2026-12").start
        ('2026-11', 1793491200, True)
    """

    year: int = attrs.field(validator=_check_year)
    month: int = attrs.field(validator=_check_month)

    @classmethod
    def parse(cls, text: object) -> Period:
        """A period from its ``YYYY-MM`` text.

        Raises:
            ConfigurationError: (also a ``ValueError``) the text is not a valid ``YYYY-MM``.
        """
        match = _TEXT.match(text) if isinstance(text, str) else None
        if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
            raise ConfigurationError(
                f"'period' must be a month from 1970-01 on, written YYYY-MM (for example "
                f"2026-11): {text!r}"
            )
        return cls(year=int(match.group(1)), month=int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start(self) -> int:
        """The first second of the period, Unix seconds (inclusive)."""
        return calendar.timegm((self.year, self.month, 1, 0, 0, 0))

    @property
    def end(self) -> int:
        """The first second after the period, Unix seconds (exclusive)."""
        return self.next().start

    def next(self) -> Period:
        """The period after this one."""
        if self.month == 12:
            return Period(year=self.year + 1, month=1)
        return Period(year=self.year, month=self.month + 1)

    def contains(self, moment: int) -> bool:
        """Whether the Unix time ``moment`` falls in this period."""
        return self.start <= moment < self.end


def period_of(moment: int) -> Period:
    """The period an event time (Unix seconds, UTC) falls in.

    Raises:
        ConfigurationError: the time is before the Unix epoch.
    """
    if moment < 0:
        raise ConfigurationError(
            f"'time' must be >= 0 Unix seconds: {moment!r}; event times start at the Unix epoch"
        )
    tm = time.gmtime(moment)
    return Period(year=tm.tm_year, month=tm.tm_mon)


_PROBES = tuple(
    dt.datetime(year, month, 1, tzinfo=dt.UTC) for year in (1970, 2000, 2026) for month in (1, 7)
)


def is_utc_calendar(tz: dt.tzinfo) -> bool:
    """Whether days and months in ``tz`` are UTC's (its offset is 0 in winter and summer).

    ``dt.UTC``, ``zoneinfo.ZoneInfo("UTC")`` and ``"Etc/UTC"`` are; ``Europe/London``
    (UTC+1 in summer) is not.
    """
    return tz is dt.UTC or all(
        moment.astimezone(tz).utcoffset() == dt.timedelta(0) for moment in _PROBES
    )
