"""Auditing the shards: recompute the expected aggregates independently and compare, row by row.

The audit trusts none of the write path. :func:`expected_rows` prices the
events with the rules engine and then aggregates the charges in plain
Python, with its own reading of each table spec (what each key column's
projection means, how a measure becomes integer units, how sum, min and max
merge), not with :mod:`shardbill.writer.planning` or the writer. :func:`read_rows`
reads what every shard holds with one plain ``SELECT`` per table.
:func:`compare` then reports every difference:

``missing``
    a row the events imply is on no shard;
``unexpected``
    a shard holds a row the events do not imply;
``value``
    a measure differs (expected and found, in the table's units);
``misplaced``
    a row is on a shard that does not own its slot under the current map,
    or on two shards;
``slot``
    a row's stored slot is not the slot of its account.

An event is expected exactly when the writer would apply it: the rules
accept it, and every charge fits every table (a key value of the declared
type, a missing dimension only where the column has a default, amounts exact
at the measure's scale, values within BIGINT, or DECIMAL(65,0) for a wide
measure). The audit assumes the shards
hold exactly the audited events: anything else shows up as differences.

With ``period="YYYY-MM"`` (``shardbill audit --period``) only the rows of
that billing period are compared, on both sides: the rows whose day or month
key column (the table's first ``Day`` or ``Month`` key) falls in the month.
So Σ events + Σ corrections = Σ aggregates is proved for that period per
account and table, whatever other periods the events files hold. A table
with no day or month key (the standard ``account_balance``: all time) holds
no per-period rows and cannot be audited per period: it is left out and
named, with the reason, in :attr:`AuditReport.skipped`. A day or month
projection in a time zone other than UTC keys its rows by that zone's
calendar, so "the period" of such a table is its local month (a billing
period is the UTC month): the report's note says so.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal

import attrs

from shardbill.corrections.records import CorrectionRecord, RecordState
from shardbill.dialects.detect import dialect_for
from shardbill.errors import ConfigurationError
from shardbill.periods.months import Period, is_utc_calendar
from shardbill.providers.base import ConnectionProvider
from shardbill.rules import Charge, RulesEngine, UsageEvent
from shardbill.shardmap import ShardMap
from shardbill.tables.aggregates import (
    SLOT_COLUMN,
    Account,
    AggregateTable,
    Amount,
    BigInt,
    Count,
    Currency,
    Date,
    Day,
    Dimension,
    KeyValue,
    MergeKind,
    Month,
    Product,
    Quantity,
    VarChar,
)

__all__ = [
    "AuditReport",
    "Difference",
    "Expected",
    "Found",
    "audit",
    "compare",
    "events_on_slots",
    "expected_rows",
    "in_period",
    "period_columns",
    "read_rows",
]

Rows = dict[str, dict[tuple[KeyValue, ...], list[int]]]
"""Table name -> row key -> measures in integer units."""

_BIGINT = range(-(2**63), 2**63)
_WIDE = range(-(10**65) + 1, 10**65)  # DECIMAL(65,0): a wide measure's column


class _Unwritable(Exception):  # noqa: N818 - a control-flow signal, never raised to callers
    """A charge does not fit a table: the writer would reject its whole event."""


@attrs.frozen(kw_only=True)
class Expected:
    """What the events imply.

    Attributes:
        rows: table -> key -> measures (integer units).
        events: distinct events read.
        rejected: events the rules reject (nothing expected of them).
        unwritable: events priced but refused by the tables (nothing expected either).
    """

    rows: Rows
    events: int
    rejected: int
    unwritable: int


Getter = Callable[[Charge], object]


def _key_getter(projection: object) -> Getter:
    """How the audit reads one key value from a charge (its own reading of each projection)."""
    if isinstance(projection, Account):
        return lambda c: c.account
    if isinstance(projection, Product):
        return lambda c: c.product
    if isinstance(projection, Currency):
        return lambda c: c.currency
    if isinstance(projection, Day):
        tz = projection.tz
        return lambda c: c.time.astimezone(tz).date()
    if isinstance(projection, Month):
        tz = projection.tz
        return lambda c: c.time.astimezone(tz).date().replace(day=1)
    if isinstance(projection, Dimension):
        name, default = projection.key, projection.default

        def dimension(c: Charge) -> object:
            value = c.dimensions.get(name, default)
            if value is None:
                raise _Unwritable
            return value

        return dimension
    raise ConfigurationError(
        f"the audit cannot recompute key projection {projection!r}; it knows account, "
        "product, currency, day, month and dimension:NAME"
    )


def _fits(column_type: object) -> Callable[[object], bool]:
    if isinstance(column_type, BigInt):
        return lambda v: type(v) is int and v in _BIGINT
    if isinstance(column_type, VarChar):
        length = column_type.length
        return lambda v: type(v) is str and len(v) <= length
    if isinstance(column_type, Date):
        return lambda v: type(v) is dt.date
    raise ConfigurationError(f"the audit does not know column type {column_type!r}")


# The audit's own exact context (it is an independent oracle: it shares no money
# code with the writer), so the caller's thread context cannot round it either.
_EXACT = decimal.Context(prec=80, Emin=-999_999, Emax=999_999, traps=[decimal.Inexact])


def _units(value: Decimal, scale: int, column: range) -> int:
    try:
        scaled = value.scaleb(scale, _EXACT)
    except decimal.Inexact:
        raise _Unwritable from None
    units = int(scaled)
    if units != scaled or units not in column:
        raise _Unwritable
    return units


def _measure_getter(measure_value: object, *, wide: bool = False) -> Getter:
    if isinstance(measure_value, Count):
        return lambda c: 1
    if isinstance(measure_value, Quantity | Amount):
        scale = measure_value.scale
        column = _WIDE if wide else _BIGINT
        if isinstance(measure_value, Quantity):
            return lambda c: _units(c.quantity, scale, column)
        return lambda c: _units(c.amount, scale, column)
    raise ConfigurationError(
        f"the audit cannot recompute measure {measure_value!r}; it knows quantity, amount and count"
    )


class _Recipe:
    """Each distinct key part and measure value is read once per charge, then placed per table."""

    def __init__(self, tables: Sequence[AggregateTable]) -> None:
        self.parts: list[tuple[Getter, Callable[[object], bool]]] = []
        self.timed: set[int] = set()  # the parts a Day or Month key reads: an adjustment moves them
        self.values: list[Getter] = []
        self.tables: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
        part_index: dict[tuple[object, object], int] = {}
        value_index: dict[tuple[object, bool], int] = {}
        for table in tables:
            keys = []
            for column in table.keys:
                ident = (column.projection, column.type)
                if ident not in part_index:
                    part_index[ident] = len(self.parts)
                    if isinstance(column.projection, Day | Month):
                        self.timed.add(len(self.parts))
                    self.parts.append((_key_getter(column.projection), _fits(column.type)))
                keys.append(part_index[ident])
            measures = []
            for measure in table.measures:
                ident_v = (measure.value, measure.wide)
                if ident_v not in value_index:
                    value_index[ident_v] = len(self.values)
                    self.values.append(_measure_getter(measure.value, wide=measure.wide))
                measures.append(value_index[ident_v])
            self.tables.append((table.name, tuple(keys), tuple(measures)))

    def rows(
        self, charge: Charge, booked: dt.date | None = None
    ) -> list[tuple[str, tuple[KeyValue, ...], list[int]]]:
        parts = []
        for i, (read, fits) in enumerate(self.parts):
            value = read(charge)
            if not fits(value):
                raise _Unwritable
            parts.append(booked if booked is not None and i in self.timed else value)
        values = [read(charge) for read in self.values]
        return [
            (name, tuple(parts[i] for i in keys), [values[i] for i in measures])  # type: ignore[misc]
            for name, keys, measures in self.tables
        ]


def _merge_into(
    row: list[int] | None, values: Sequence[int], merges: Sequence[MergeKind]
) -> list[int]:
    if row is None:
        return list(values)
    for i, (kind, value) in enumerate(zip(merges, values, strict=True)):
        if kind is MergeKind.SUM:
            row[i] += value
        elif kind is MergeKind.MIN:
            row[i] = min(row[i], value)
        else:
            row[i] = max(row[i], value)
    return row


def _distinct_chunks(
    events: Iterable[UsageEvent], seen: set[str], size: int = 2000
) -> Iterator[list[UsageEvent]]:
    chunk: list[UsageEvent] = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            chunk.append(event)
            if len(chunk) >= size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def expected_rows(
    events: Iterable[UsageEvent],
    *,
    engine: RulesEngine,
    tables: Sequence[AggregateTable],
    corrections: Iterable[CorrectionRecord] = (),
    adjustments: Mapping[str, str] | None = None,
) -> Expected:
    """Price ``events`` and aggregate their charges in plain Python, table by table.

    Every event counts once: give distinct events (a repeated id is priced once).
    Then each applied correction counts once: its ``before`` content's sums
    are taken away and its ``after`` content (an amend's) is added, so the
    rows are Σ events + Σ corrections (a min or max is not taken back by a
    correction, only merged with the amended value: as the writer does).

    Args:
        events: the events the shards should hold.
        engine: the rules engine that priced them.
        tables: the aggregate tables.
        corrections: the correction records (pending ones are left out).
        adjustments: event id -> the period (``YYYY-MM``) the ``adjust``
            late-event policy booked it in (:func:`shardbill.periods.read_adjustments`):
            its day and month keys are that period's first day, as the writer put them.

    Returns:
        The expected rows and the event counts.
    """
    rows: Rows = {t.name: {} for t in tables}
    merges = {t.name: [m.merge for m in t.measures] for t in tables}
    recipe = _Recipe(tables)
    moved = adjustments or {}
    seen: set[str] = set()
    rejected = unwritable = 0
    for chunk in _distinct_chunks(events, seen):
        priced = engine.price_batch(chunk)
        rejected += len(priced.rejected)
        by_event: dict[str, list[Charge]] = {}
        for charge in priced.charges:
            by_event.setdefault(charge.event_id, []).append(charge)
        for event_id, charges in by_event.items():
            booked = _first_day(moved.get(event_id))
            try:
                deltas = [row for charge in charges for row in recipe.rows(charge, booked)]
            except _Unwritable:
                unwritable += 1
                continue
            for name, key, values in deltas:
                table_rows = rows[name]
                table_rows[key] = _merge_into(table_rows.get(key), values, merges[name])
    for record in corrections:
        if record.state is not RecordState.APPLIED:
            continue
        _correct_into(
            rows, merges=merges, recipe=recipe, engine=engine, event=record.before, sign=-1
        )
        if record.after is not None:
            _correct_into(
                rows, merges=merges, recipe=recipe, engine=engine, event=record.after, sign=1
            )
    return Expected(rows=rows, events=len(seen), rejected=rejected, unwritable=unwritable)


def _first_day(period: str | None) -> dt.date | None:
    if period is None:
        return None
    found = Period.parse(period)
    return dt.date(found.year, found.month, 1)


def _correct_into(
    rows: Rows,
    *,
    merges: Mapping[str, Sequence[MergeKind]],
    recipe: _Recipe,
    engine: RulesEngine,
    event: UsageEvent,
    sign: int,
) -> None:
    """Add (``sign`` 1) or take away (-1: sums only) one corrected content's rows."""
    try:
        deltas = [row for c in engine.price(event).charges for row in recipe.rows(c)]
    except _Unwritable:
        return
    for name, key, values in deltas:
        table_rows = rows[name]
        if sign > 0:
            table_rows[key] = _merge_into(table_rows.get(key), values, merges[name])
            continue
        row = table_rows.get(key)
        if row is None:  # the corrected content's rows should be there: a difference shows it
            row = table_rows[key] = [
                0 if kind is MergeKind.SUM else value
                for kind, value in zip(merges[name], values, strict=True)
            ]
        for i, kind in enumerate(merges[name]):
            if kind is MergeKind.SUM:
                row[i] -= values[i]


def events_on_slots(
    events: Iterable[UsageEvent],
    *,
    engine: RulesEngine,
    tables: Sequence[AggregateTable],
    shard_map: ShardMap,
    slots: Iterable[int],
) -> dict[int, set[str]]:
    """The ids of the events the writer would apply with a charge on each of ``slots``.

    As :func:`expected_rows` decides it (rejected and unwritable events are on
    no slot); a charge is on the slot of its account.

    Args:
        events: the audited events (distinct ids).
        engine: the rules engine.
        tables: the aggregate tables.
        shard_map: the map that gives an account its slot.
        slots: the slots of interest.

    Returns:
        Slot -> event ids (every slot of ``slots`` is a key).
    """
    out: dict[int, set[str]] = {slot: set() for slot in slots}
    recipe = _Recipe(tables)
    for chunk in _distinct_chunks(events, set()):
        by_event: dict[str, list[Charge]] = {}
        for charge in engine.price_batch(chunk).charges:
            by_event.setdefault(charge.event_id, []).append(charge)
        for event_id, charges in by_event.items():
            try:
                for charge in charges:
                    recipe.rows(charge)
            except _Unwritable:
                continue
            for charge in charges:
                slot = shard_map.slot_for(charge.account)
                if slot in out:
                    out[slot].add(event_id)
    return out


@attrs.frozen(kw_only=True)
class Found:
    """What the shards hold.

    Attributes:
        rows: table -> key -> measures, merged over shards (sum, min or max).
        places: table -> key -> ``(shard, stored slot)`` of every copy.
        rows_per_shard: aggregate rows per shard, all tables.
    """

    rows: Rows
    places: dict[str, dict[tuple[KeyValue, ...], list[tuple[str, int]]]]
    rows_per_shard: dict[str, int]


def _normalize(column_type: object, value: object) -> KeyValue:
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8")
    if isinstance(column_type, Date):
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        return dt.date.fromisoformat(str(value))
    if isinstance(column_type, BigInt):
        return int(value)  # type: ignore[call-overload, no-any-return]
    return str(value)


def read_rows(
    provider: ConnectionProvider, shards: Sequence[str], tables: Sequence[AggregateTable]
) -> Found:
    """Read every row of every table on ``shards`` with plain SQL (from the primaries).

    Args:
        provider: lends connections to the shards.
        shards: the shards to read.
        tables: the aggregate tables.

    Returns:
        The rows, where each copy is, and the row count per shard.
    """
    rows: Rows = {t.name: {} for t in tables}
    places: dict[str, dict[tuple[KeyValue, ...], list[tuple[str, int]]]] = {
        t.name: {} for t in tables
    }
    per_shard: dict[str, int] = {}
    for shard in shards:
        per_shard[shard] = 0
        # The primary: a replica that lags would show differences that are not there.
        with provider.connection(shard) as conn:
            q = dialect_for(conn).quote
            cursor = conn.cursor()
            try:
                for table in tables:
                    columns = (*table.key_names, SLOT_COLUMN, *table.measure_names)
                    cursor.execute(
                        f"SELECT {', '.join(q(c) for c in columns)} FROM {q(table.name)}", ()
                    )
                    fetched = cursor.fetchall()
                    per_shard[shard] += len(fetched)
                    merges = [m.merge for m in table.measures]
                    n = len(table.keys)
                    for raw in fetched:
                        key = tuple(
                            _normalize(c.type, v) for c, v in zip(table.keys, raw[:n], strict=True)
                        )
                        values = [int(v) for v in raw[n + 1 :]]
                        table_rows = rows[table.name]
                        table_rows[key] = _merge_into(table_rows.get(key), values, merges)
                        places[table.name].setdefault(key, []).append((shard, int(raw[n])))
            finally:
                cursor.close()
    return Found(rows=rows, places=places, rows_per_shard=per_shard)


@attrs.frozen(kw_only=True)
class Difference:
    """One way the shards differ from what the events imply.

    Attributes:
        kind: ``missing``, ``unexpected``, ``value``, ``misplaced`` or ``slot``.
        table: the table.
        account: the row's account (its shard key).
        key: the row's key columns, name -> value.
        measure: the measure that differs (``value`` only).
        expected: the expected value, in the measure's units (``value``).
        found: the value found (``value``).
        scale: the measure's decimal scale (to show units as decimals).
        detail: where the row is and where it belongs (``misplaced``, ``slot``).
        account_column: the name of the account's key column.
        shard: the shard holding the row (``value``, ``unexpected``, ``slot``,
            ``misplaced``: the first holder), or the one that should
            (``missing``: the owner of its slot); None without a map.
        slot: the account's slot (None without a map).
        merge: how the measure merges (``sum``, ``min``, ``max``, ``replace``;
            ``value`` only), which decides the repair.
    """

    kind: str
    table: str
    account: KeyValue | None
    key: Mapping[str, KeyValue]
    account_column: str | None = None
    measure: str | None = None
    expected: int | None = None
    found: int | None = None
    scale: int = 0
    detail: str = ""
    shard: str | None = None
    slot: int | None = None
    merge: str | None = None

    def describe(self) -> str:
        """One line for people, such as::

            usage_daily account 42 (day=2026-11-01, product=sms): amount expected 1, found 2

        Returns:
            The line.
        """
        rest = ", ".join(f"{k}={_show(v)}" for k, v in self.key.items() if k != self.account_column)
        head = f"{self.table} account {_show(self.account)}" + (f" ({rest})" if rest else "")
        if self.shard is not None:
            head += f" on {self.shard} slot {self.slot}"
        if self.kind == "value":
            return (
                f"{head}: {self.measure} expected {_decimal(self.expected, self.scale)}, "
                f"found {_decimal(self.found, self.scale)}"
            )
        if self.kind == "missing":
            return f"{head}: missing (no shard holds this row)"
        if self.kind == "unexpected":
            return f"{head}: unexpected row (no audited event makes it)"
        return f"{head}: {self.detail}"

    def repair(self) -> str:
        """How to repair this difference, for a person (one line).

        The events are the truth the audit recomputes from, and their ids are
        in the ledger, so re-ingesting them changes nothing for a row that
        was changed by hand: such a row is corrected on its shard, by the
        difference for a summed measure (additive, so writers may keep
        writing), to the expected value otherwise.

        Returns:
            The repair (see ``docs/reference/cli.md``, "Repairing a difference").
        """
        where = self.shard or "the shard the map gives its slot to"
        if self.kind == "value" and self.expected is not None and self.found is not None:
            units = self.expected - self.found
            if self.merge in (None, "sum"):
                return (
                    f"on {where}, add {_decimal(units, self.scale)} to {self.measure} "
                    f"({units:+d} stored units) of this row in one transaction; additive, "
                    "so writers may keep writing"
                )
            return (
                f"on {where}, set {self.measure} of this row to "
                f"{_decimal(self.expected, self.scale)} ({self.expected} stored units)"
            )
        if self.kind == "missing":
            return (
                f"if its events were never written, re-ingest their file (the ledger applies "
                f"only what is missing, exactly once); if the row was deleted by hand, insert "
                f"it on {where} (slot {self.slot}) with the expected values"
            )
        if self.kind == "unexpected":
            return (
                "audit every events file that fed these shards (an event missing from the "
                f"audit makes rows look unexpected); a row made by hand: delete it on {where}"
            )
        return (
            "a reshard left it: `shardbill reshard status` shows a move in progress, "
            "`shardbill reshard run` finishes it, `shardbill reshard verify` checks placement"
        )

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (keys and values as text where JSON has no type for them).

        Returns:
            ``kind``, ``table``, ``account``, ``key``, ``measure``, ``expected``,
            ``found`` (decimals as strings), ``detail``, ``shard``, ``slot``,
            ``text`` and ``repair``.
        """
        return {
            "kind": self.kind,
            "table": self.table,
            "account": _json_value(self.account),
            "key": {k: _json_value(v) for k, v in self.key.items()},
            "measure": self.measure,
            "expected": _decimal(self.expected, self.scale) if self.expected is not None else None,
            "found": _decimal(self.found, self.scale) if self.found is not None else None,
            "detail": self.detail,
            "shard": self.shard,
            "slot": self.slot,
            "text": self.describe(),
            "repair": self.repair(),
        }


def _show(value: object) -> str:
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def _json_value(value: object) -> object:
    return value.isoformat() if isinstance(value, dt.date) else value


def _decimal(units: int | None, scale: int) -> str:
    if units is None:
        return "none"
    return str(Decimal(units).scaleb(-scale, _EXACT)) if scale else str(units)


@attrs.frozen(kw_only=True)
class AuditReport:
    """The outcome of an audit.

    Attributes:
        tables: the tables compared.
        shards: the shards read.
        events: distinct events audited.
        rejected: events the rules or the tables refuse (nothing expected of them).
        expected_rows: rows the events imply.
        found_rows: rows the shards hold (copies counted).
        rows_per_shard: rows per shard, all tables.
        differences: every difference, by table, then account.
        period: the billing period audited (``YYYY-MM``), or None for all rows.
        skipped: with a period, the tables left out, each with the reason
            (no day or month key), and notes on tables keyed by a non-UTC
            calendar (``table -> text``).
    """

    tables: tuple[str, ...]
    shards: tuple[str, ...]
    events: int
    rejected: int
    expected_rows: int
    found_rows: int
    rows_per_shard: Mapping[str, int]
    differences: tuple[Difference, ...]
    period: str | None = None
    skipped: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def exact(self) -> bool:
        """True when the shards hold exactly what the events imply."""
        return not self.differences

    def to_dict(self, *, limit: int | None = None) -> dict[str, object]:
        """A JSON-ready dict.

        Args:
            limit: list at most this many differences (all are counted).

        Returns:
            The report; ``audit`` is ``"exact"`` or ``"different"``.
        """
        shown = self.differences if limit is None else self.differences[:limit]
        return {
            "audit": "exact" if self.exact else "different",
            "tables": list(self.tables),
            "shards": list(self.shards),
            "events": self.events,
            "rejected_events": self.rejected,
            "expected_rows": self.expected_rows,
            "found_rows": self.found_rows,
            "rows_per_shard": dict(self.rows_per_shard),
            "difference_count": len(self.differences),
            "differences": [d.to_dict() for d in shown],
            **(
                {"period": self.period, "skipped": dict(sorted(self.skipped.items()))}
                if self.period is not None
                else {}
            ),
        }


def _sort_key(key: tuple[KeyValue, ...]) -> tuple[str, ...]:
    return tuple(f"{type(v).__name__}:{_show(v)}" for v in key)


def compare(
    expected: Expected,
    found: Found,
    *,
    tables: Sequence[AggregateTable],
    shard_map: ShardMap | None = None,
) -> AuditReport:
    """Compare expected and found rows; with a map, also check where each row is.

    Args:
        expected: from :func:`expected_rows`.
        found: from :func:`read_rows`.
        tables: the aggregate tables.
        shard_map: the current map (rows must be on the owner of their slot,
            and their stored slot must be their account's); None skips it.

    Returns:
        The report.
    """
    differences: list[Difference] = []
    for table in tables:
        want, have = expected.rows[table.name], found.rows[table.name]
        account_at = next(
            (i for i, c in enumerate(table.keys) if isinstance(c.projection, Account)), None
        )
        for key in sorted(want.keys() | have.keys(), key=_sort_key):
            named = dict(zip(table.key_names, key, strict=True))
            account = key[account_at] if account_at is not None else None
            places = found.places[table.name].get(key, ())
            slot = shard = None
            if shard_map is not None and account is not None:
                slot = shard_map.slot_for(account)  # type: ignore[arg-type]
                shard = places[0][0] if places else shard_map.owner(slot)
            elif places:
                shard = places[0][0]
            row = Difference(
                kind="missing",
                table=table.name,
                account=account,
                key=named,
                account_column=table.key_names[account_at] if account_at is not None else None,
                shard=shard,
                slot=slot,
            )
            if key not in have:
                differences.append(row)
                continue
            if key not in want:
                differences.append(attrs.evolve(row, kind="unexpected"))
            else:
                differences.extend(
                    attrs.evolve(
                        row,
                        kind="value",
                        measure=measure.name,
                        expected=w,
                        found=h,
                        scale=measure.value.scale,
                        merge=str(measure.merge),
                    )
                    for measure, w, h in zip(table.measures, want[key], have[key], strict=True)
                    if w != h
                )
            if shard_map is not None and account is not None:
                differences.extend(
                    attrs.evolve(row, kind=kind, detail=detail)
                    for kind, detail in _placement(
                        account, found.places[table.name][key], shard_map
                    )
                )
    return AuditReport(
        tables=tuple(t.name for t in tables),
        shards=tuple(found.rows_per_shard),
        events=expected.events,
        rejected=expected.rejected + expected.unwritable,
        expected_rows=sum(len(r) for r in expected.rows.values()),
        found_rows=sum(found.rows_per_shard.values()),
        rows_per_shard=dict(found.rows_per_shard),
        differences=tuple(differences),
    )


def _placement(
    account: KeyValue, places: Sequence[tuple[str, int]], shard_map: ShardMap
) -> list[tuple[str, str]]:
    """(kind, detail) for each way a row's copies are not where the map puts them."""
    out = []
    slot = shard_map.slot_for(account)  # type: ignore[arg-type]
    owner = shard_map.owner(slot)
    if len(places) > 1:
        where = ", ".join(s for s, _ in places)
        out.append(
            ("misplaced", f"on {len(places)} shards ({where}); slot {slot} belongs to {owner}")
        )
    for shard, stored in places:
        if stored != slot:
            out.append(("slot", f"stored slot {stored} on {shard}, the account's slot is {slot}"))
        elif shard != owner and len(places) == 1:
            out.append(
                (
                    "misplaced",
                    f"on {shard}, but slot {slot} belongs to {owner} (map epoch {shard_map.epoch})",
                )
            )
    return out


def audit(
    events: Iterable[UsageEvent],
    *,
    engine: RulesEngine,
    tables: Sequence[AggregateTable],
    provider: ConnectionProvider,
    shard_map: ShardMap,
    extra_shards: Sequence[str] = (),
    corrections: Iterable[CorrectionRecord] = (),
    period: Period | str | None = None,
    adjustments: Mapping[str, str] | None = None,
) -> AuditReport:
    """Recompute, read and compare (:func:`expected_rows`, :func:`read_rows`, :func:`compare`).

    Args:
        events: the events the shards should hold (distinct ids).
        engine: the rules engine.
        tables: the aggregate tables.
        provider: lends connections to the shards.
        shard_map: the current map: its shards are read, and placement is checked.
        extra_shards: more shards to read (e.g. ones a reshard emptied).
        corrections: the applied corrections (see :func:`expected_rows`).
        period: compare only the rows of this billing period (``YYYY-MM``);
            tables without a day or month key are skipped, with the reason
            in the report (see the module docstring).
        adjustments: the events booked in another period (see :func:`expected_rows`).

    Returns:
        The report.

    Raises:
        ConfigurationError: ``period`` is not a ``YYYY-MM`` month, or no table
            has a day or month key.
    """
    wanted = None if period is None else _period(period)
    columns, skipped = period_columns(tables)
    if wanted is not None and not columns:
        raise ConfigurationError(
            f"audit --period {wanted}: no table has a day or month key, so none holds rows "
            f"of one period ({'; '.join(f'{t}: {r}' for t, r in skipped.items())}); "
            "audit all time (without --period) instead"
        )
    expected = expected_rows(
        events, engine=engine, tables=tables, corrections=corrections, adjustments=adjustments
    )
    shards = [*sorted(shard_map.shards), *(s for s in extra_shards if s not in shard_map.shards)]
    found = read_rows(provider, shards, tables)
    if wanted is None:
        return compare(expected, found, tables=tables, shard_map=shard_map)
    audited = [t for t in tables if t.name in columns]
    expected, found = _only_period(expected, found, columns, wanted)
    report = compare(expected, found, tables=audited, shard_map=shard_map)
    notes = dict(skipped)
    for table in audited:
        tz = table.keys[columns[table.name]].projection.tz  # type: ignore[attr-defined]
        if not is_utc_calendar(tz):
            notes[table.name] = (
                f"audited; its {table.keys[columns[table.name]].name!r} key is in time zone "
                f"{tz}, so its rows of {wanted} are those of that zone's calendar month, not "
                "of the UTC month a billing period is"
            )
    return attrs.evolve(report, period=str(wanted), skipped=notes)


def _period(period: Period | str) -> Period:
    return period if isinstance(period, Period) else Period.parse(period)


def period_columns(tables: Sequence[AggregateTable]) -> tuple[dict[str, int], dict[str, str]]:
    """Which key column of each table says the period of its rows, and the tables without one.

    A table's period column is its first key column whose projection is a
    ``Day`` or a ``Month``.

    Args:
        tables: the aggregate tables.

    Returns:
        ``table -> position of the period column among its keys``, and
        ``table -> why it cannot be audited per period``.
    """
    columns: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for table in tables:
        at = next(
            (i for i, c in enumerate(table.keys) if isinstance(c.projection, Day | Month)), None
        )
        if at is None:
            skipped[table.name] = (
                "skipped: no day or month key column (its rows add up all time, not per "
                "period), so it cannot be audited per period; audit it without --period"
            )
        else:
            columns[table.name] = at
    return columns, skipped


def in_period(value: KeyValue, period: Period | str) -> bool:
    """Whether a day or month key value (a date) falls in ``period``.

    Args:
        value: the row's day or month key (a :class:`datetime.date`).
        period: the billing period.

    Returns:
        True when the date is in the period's month.
    """
    wanted = _period(period)
    return isinstance(value, dt.date) and (value.year, value.month) == (wanted.year, wanted.month)


def _only_period(
    expected: Expected, found: Found, columns: Mapping[str, int], period: Period
) -> tuple[Expected, Found]:
    """The expected and found rows of the tables in ``columns``, of ``period`` only."""
    rows: Rows = {}
    found_rows: Rows = {}
    places: dict[str, dict[tuple[KeyValue, ...], list[tuple[str, int]]]] = {}
    per_shard = dict.fromkeys(found.rows_per_shard, 0)
    for name, at in columns.items():
        rows[name] = {k: v for k, v in expected.rows[name].items() if in_period(k[at], period)}
        found_rows[name] = {k: v for k, v in found.rows[name].items() if in_period(k[at], period)}
        places[name] = {k: found.places[name][k] for k in found_rows[name]}
        for copies in places[name].values():
            for shard, _ in copies:
                per_shard[shard] += 1
    return (
        attrs.evolve(expected, rows=rows),
        Found(rows=found_rows, places=places, rows_per_shard=per_shard),
    )
