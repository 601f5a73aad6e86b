"""Corrections as data (pure): a correction's record, event content as text, ledger ids, deltas.

A correction of event ``e`` creates its revision ``n`` (1 corrects the
event as ingested, 2 the first correction's result, ...). Its deltas are
written under the ledger id :func:`ledger_id` ``(e, n)``: ``e``, a unit
separator (``\\x1f``, which no :class:`~shardbill.rules.UsageEvent` id can
hold, so no ingested event can collide with it) and ``r<n>``. Two
different corrections of the same revision therefore claim the same ledger
id, and the ledger lets only one of them in.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

import attrs

from shardbill.errors import InvalidInputError
from shardbill.rules import UsageEvent
from shardbill.tables import CONTENT_LENGTH, EVENT_ID_LENGTH
from shardbill.tables.aggregates import AggregateTable, KeyValue, MergeKind
from shardbill.writer.extraction import RowDelta
from shardbill.writer.planning import Unit

__all__ = [
    "SEPARATOR",
    "CorrectionKind",
    "CorrectionRecord",
    "EventFilter",
    "RecordState",
    "event_from_text",
    "event_to_text",
    "irreversible",
    "ledger_id",
    "row_deltas",
]

#: Between an event id and its revision in a correction's ledger id (not printable).
SEPARATOR = "\x1f"


class CorrectionKind(enum.StrEnum):
    """What a correction does to its event."""

    CANCEL = "cancel"
    """Its charges are reversed: the event counts for nothing from then on."""
    AMEND = "amend"
    """New content replaces the old: the difference is applied."""


class RecordState(enum.StrEnum):
    """A correction record's state in ``shardbill_corrections``."""

    PENDING = "pending"
    """Recorded, its deltas not known to be applied yet (run the correction again)."""
    APPLIED = "applied"
    """Its deltas are in the aggregates, exactly once."""


@attrs.frozen(kw_only=True)
class CorrectionRecord:
    """One correction as ``shardbill_corrections`` holds it.

    Attributes:
        event_id: the corrected event.
        revision: the revision this correction creates (1: of the event as ingested).
        correction_id: the caller's id of the correction.
        kind: cancel or amend.
        state: pending or applied.
        ledger_id: the id its deltas are in the ledger under.
        event_time: the event's time (Unix seconds): its period is the correction's.
        before: the event's content it corrected.
        after: the content it gave the event (None for a cancel).
        corrected_by: who.
        reason: why.
        corrected_at: when (Unix seconds).
        shard: the shard holding the record.
    """

    event_id: str
    revision: int
    correction_id: str
    kind: CorrectionKind
    state: RecordState
    ledger_id: str
    event_time: int
    before: UsageEvent
    after: UsageEvent | None
    corrected_by: str
    reason: str
    corrected_at: int
    shard: str

    def to_dict(self) -> dict[str, object]:
        """The record as JSON-ready data (contents as event objects, as ingest reads them)."""
        return {
            "event_id": self.event_id,
            "revision": self.revision,
            "correction_id": self.correction_id,
            "kind": self.kind.value,
            "state": self.state.value,
            "ledger_id": shown_id(self.ledger_id),
            "event_time": self.event_time,
            "before": event_to_dict(self.before),
            "after": None if self.after is None else event_to_dict(self.after),
            "corrected_by": self.corrected_by,
            "reason": self.reason,
            "corrected_at": self.corrected_at,
            "shard": self.shard,
        }


def _aware(instance: object, attribute: attrs.Attribute[dt.datetime | None], value: object) -> None:
    if value is not None and (not isinstance(value, dt.datetime) or value.utcoffset() is None):
        raise InvalidInputError(
            f"{attribute.name!r} must be a timezone-aware datetime or None: {value!r}; give "
            "an ISO 8601 time with its offset (e.g. 2026-11-01T00:00:00Z)"
        )


@attrs.frozen(kw_only=True)
class EventFilter:
    """Which events of a supplied file a correction by filter takes (every field optional).

    Attributes:
        account: only this account (compared as text, so ``42`` and ``"42"`` match).
        product: only this product.
        start: only events at or after this time (timezone-aware).
        end: only events before this time (timezone-aware).
    """

    account: str | int | None = None
    product: str | None = None
    start: dt.datetime | None = attrs.field(default=None, validator=_aware)
    end: dt.datetime | None = attrs.field(default=None, validator=_aware)

    def __attrs_post_init__(self) -> None:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise InvalidInputError(
                f"'end' {self.end.isoformat()} must be after 'start' {self.start.isoformat()}"
            )

    def matches(self, event: UsageEvent) -> bool:
        """Whether ``event`` is one the filter takes."""
        return (
            (self.account is None or str(event.account) == str(self.account))
            and (self.product is None or event.product == self.product)
            and (self.start is None or event.time >= self.start)
            and (self.end is None or event.time < self.end)
        )

    def select(self, events: Iterable[UsageEvent]) -> list[UsageEvent]:
        """The events the filter takes, in order, each id once (its first occurrence)."""
        seen: set[str] = set()
        out = []
        for event in events:
            if event.event_id not in seen and self.matches(event):
                seen.add(event.event_id)
                out.append(event)
        return out


def shown_id(ledger: str) -> str:
    """A ledger id for people: the separator shown as ``~``."""
    return ledger.replace(SEPARATOR, "~")


def ledger_id(event_id: str, revision: int) -> str:
    """The ledger id of the correction creating ``revision`` of ``event_id``.

    Raises:
        InvalidInputError: the id would not fit the ledger's event id column.
    """
    derived = f"{event_id}{SEPARATOR}r{revision}"
    if len(derived) > EVENT_ID_LENGTH:
        raise InvalidInputError(
            f"event {event_id!r}: its correction's ledger id needs {len(derived)} characters "
            f"({len(event_id)} of the id, {len(derived) - len(event_id)} for revision "
            f"{revision}), more than the ledger's {EVENT_ID_LENGTH}; events with ids longer "
            f"than {EVENT_ID_LENGTH - 4} characters cannot be corrected: cancel them with a "
            "credit event (correction=true) instead"
        )
    return derived


def event_to_dict(event: UsageEvent) -> dict[str, object]:
    """An event as JSON-ready data that :meth:`UsageEvent.from_dict` reads back equal."""
    data: dict[str, object] = {
        "event_id": event.event_id,
        "account": event.account,
        "time": event.time.isoformat(),
        "product": event.product,
        "quantity": _plain(event.quantity),
        "dimensions": dict(event.dimensions.pairs),
    }
    if event.correction:
        data["correction"] = True
    return data


def _plain(value: Decimal) -> str:
    return "0" if value == 0 else format(value, "f")


def event_to_text(event: UsageEvent) -> str:
    """An event's content as the compact JSON a correction record stores.

    Raises:
        InvalidInputError: the content is longer than the column holds.
    """
    text = json.dumps(event_to_dict(event), sort_keys=True, separators=(",", ":"))
    if len(text) > CONTENT_LENGTH:
        raise InvalidInputError(
            f"event {event.event_id!r}: its content is {len(text)} characters as JSON, more "
            f"than a correction record keeps ({CONTENT_LENGTH}); give it fewer or shorter "
            "dimensions"
        )
    return text


def event_from_text(text: str) -> UsageEvent:
    """The event :func:`event_to_text` stored."""
    return UsageEvent.from_dict(json.loads(text, parse_float=Decimal))


def row_deltas(
    before: Iterable[Unit], after: Iterable[Unit], tables: Sequence[AggregateTable]
) -> dict[int, list[RowDelta]]:
    """Slot -> the row deltas that take the aggregates from ``before``'s units to ``after``'s.

    Per (slot, table, key), measure by measure: a sum gets every row of
    ``after`` minus every row of ``before`` (exact integers); a min or max
    cannot be taken back, so it gets ``after``'s value merged, or the value
    that leaves it unchanged (the column's top for a min, its bottom for a
    max) where ``after`` has none. Rows with no sum changed and no value of
    ``after`` are left out, and so are slots with no row left.
    """
    kinds = [tuple(m.merge for m in t.measures) for t in tables]
    neutral = [
        tuple(m.high if m.merge is MergeKind.MIN else m.low for m in t.measures) for t in tables
    ]
    merged: dict[tuple[int, int, tuple[KeyValue, ...]], list[int | None]] = {}
    for sign, units in ((-1, before), (1, after)):
        for unit in units:
            for t, key, values in unit.rows:
                found = merged.setdefault(
                    (unit.slot, t, key),
                    [0 if k is MergeKind.SUM else None for k in kinds[t]],
                )
                for i, (kind, value) in enumerate(zip(kinds[t], values, strict=True)):
                    current = found[i]
                    if kind is MergeKind.SUM:
                        assert current is not None  # noqa: S101 - sums start at 0
                        found[i] = current + sign * value
                    elif sign > 0:
                        pick = min if kind is MergeKind.MIN else max
                        found[i] = value if current is None else pick(current, value)
    out: dict[int, list[RowDelta]] = defaultdict(list)
    for (slot, t, key), found in sorted(merged.items(), key=_order):
        if not any(found):  # every sum 0 (None: no value of after)
            continue
        out[slot].append(
            (t, key, tuple(neutral[t][i] if v is None else v for i, v in enumerate(found)))
        )
    return dict(out)


def _order(
    item: tuple[tuple[int, int, tuple[KeyValue, ...]], list[int | None]],
) -> tuple[int, int, str]:
    (slot, t, key), _ = item
    return slot, t, repr(key)


def irreversible(
    deltas: Mapping[int, Sequence[RowDelta]], tables: Sequence[AggregateTable]
) -> str | None:
    """Why these deltas cannot be applied as a correction (None: they can).

    A replace measure keeps the last value written, so a correction can
    neither take it back nor know what to put back: one that touches such a
    table is refused.
    """
    for rows in deltas.values():
        for t, _key, _values in rows:
            table = tables[t]
            for measure in table.measures:
                if measure.merge is MergeKind.REPLACE:
                    return (
                        f"measure {table.name}.{measure.name} merges by replace (last value "
                        "wins), so a correction cannot take it back; correct tables of sums, "
                        "mins and maxes only (or rebuild the row from the events)"
                    )
    return None
