"""Turning a batch of deliveries into per-shard work (pure, no I/O).

The writer's plan for one call, in four steps:

1. **Events.** Every item is a :class:`~shardbill.rules.PricedEvent` (an
   event id with all its charges) or a loose charge that says which part of
   its event it is (``part`` of ``parts``, default 0 of 1). Items are
   grouped by event id; an exact repeat of a part folds to one; a part
   repeated with other content, parts that disagree on their count, or an
   event missing parts is rejected alone with its reason, before any SQL,
   so an event is never split over calls or counted twice inside one. An
   event older than the dedup horizon is rejected as too late.
2. **Units.** One event's charges that fall on one slot form a *unit*, the
   grain of the ledger ``(slot, event_id)``. Each carries a fingerprint
   (:mod:`shardbill.writer.fingerprints`) of its row deltas.
3. **The identity claim.** Under the default :attr:`IdScope.GLOBAL`, every
   event also has a *home unit* on the slot its id hashes to: its ledger row
   holds the fingerprint of the whole event, so a redelivery of the id with
   other content (another account, so another slot and shard) finds it and
   is a conflict. When the event has charges on its home slot, those charges
   are the home unit's rows; otherwise the home unit has none. The writer
   commits an event's home unit before (or with) any other unit of it.
4. **Coalescing.** The deltas of the units that turn out to be new are summed
   (or min/maxed) per aggregate row in memory and sorted by primary key, so a
   hot account's thousand events become one UPSERT row and two writers lock
   rows in the same order.

A charge that fails validation (a wrong key type, a missing dimension, float
money, a value out of range) rejects its whole event, before any SQL runs;
the rest of the batch is written. The row deltas come from
:class:`shardbill.writer.extraction.RowExtractor`.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import itertools
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple, cast

import attrs

from shardbill.errors import InvalidInputError, ShardbillError
from shardbill.rules.events import MAX_PARTS, PricedEvent
from shardbill.tables.aggregates import (
    BIGINT_MAX,
    BIGINT_MIN,
    AggregateTable,
    ChargeLike,
    KeyValue,
    MergeKind,
    Projection,
)
from shardbill.writer.extraction import RowDelta, RowExtractor
from shardbill.writer.fingerprints import canonical_text, digest, fingerprint

__all__ = [
    "Classified",
    "CoalescedRow",
    "IdScope",
    "Plan",
    "Rejection",
    "RowExtractor",
    "ShardWork",
    "Unit",
    "by_event",
    "classify",
    "coalesce",
    "deltas_fit",
    "find_overflows",
    "fingerprint",
    "merge_values",
    "plan_batch",
    "plan_rows",
]


class IdScope(enum.StrEnum):
    """Where an event id must be unique: what a redelivery is compared with.

    ``GLOBAL`` (the default): an id names one event everywhere. Each event's
    identity is claimed on the slot its id hashes to, so the same id with
    other content is a conflict whatever account (slot, shard) it bills.
    It costs one more ledger row per event and, with several shards, a
    second transaction round per batch.

    ``PER_ACCOUNT``: an id is only compared on the slots its charges fall
    on. Faster (no claim rows, one round), but **reusing an id for an
    event billed to another account applies it again**: choose it only when
    ids are unique per account by construction (e.g. they embed the account).
    """

    GLOBAL = "global"
    PER_ACCOUNT = "per-account"


@attrs.frozen(kw_only=True)
class Rejection:
    """An event refused with the reason; nothing of it was written by this call.

    Attributes:
        event_id: the event.
        reason: what was wrong and what to do, in words.
        error: the name of the error class (``InvalidInputError``, ``RowOverflowError``...).
    """

    event_id: str
    reason: str
    error: str


class Unit(NamedTuple):
    """One event's contribution to one slot: the grain of the ledger.

    A named tuple rather than an attrs class: the writer builds one per event
    on its hot path, and tuples are the cheapest immutable records. ``slot``
    is the slot whose ledger row guards the unit; ``fingerprint`` is what it
    adds (for the home unit, the whole event's); ``rows`` its row deltas
    (none for a home unit on a slot the event does not bill); ``time`` the
    event's time in Unix seconds (for the horizon and pruning); ``home``
    whether its ledger row is the event's identity claim; ``whole``, for a
    home unit whose fingerprint covers rows on other slots too, every row
    delta of the event (None: the fingerprint covers ``rows``). Only a
    fingerprint mismatch reads it (:mod:`shardbill.declarations`)); ``booked``
    the period (``YYYY-MM``) its rows were moved to by the ``adjust``
    late-event policy (:mod:`shardbill.periods.gate`), None for an event in
    its own period (a moved unit keeps the rows its fingerprint covers in
    ``whole``).
    """

    event_id: str
    slot: int
    fingerprint: str
    rows: tuple[RowDelta, ...]
    time: int
    home: bool = False
    whole: tuple[RowDelta, ...] | None = None
    booked: str | None = None

    @property
    def signed(self) -> tuple[RowDelta, ...]:
        """The row deltas its fingerprint covers."""
        return self.rows if self.whole is None else self.whole


@attrs.frozen(kw_only=True)
class ShardWork:
    """Everything one transaction asks of one shard, units sorted by (event id, slot)."""

    shard: str
    units: tuple[Unit, ...]

    @property
    def slots(self) -> tuple[int, ...]:
        """The distinct slots this work touches, ascending."""
        return tuple(sorted({u.slot for u in self.units}))


@attrs.frozen(kw_only=True)
class Plan:
    """A call's events, validated and cut into units.

    Attributes:
        units: every unit of every accepted event, sorted by (event id, slot).
        rejected: the events refused before any SQL.
        events: every distinct event id of the call (accepted or not), sorted.
        folded: exact repeats folded into the first copy.
    """

    units: tuple[Unit, ...]
    rejected: tuple[Rejection, ...]
    events: tuple[str, ...]
    folded: int


#: ``_new(Unit, (...every field...))``: a named tuple without its ``__new__``, a Python
#: function that costs more than the tuple on the hot path (every field must be given).
_new = tuple.__new__


class CoalescedRow(NamedTuple):
    """One aggregate row's merged delta (a named tuple, for the same reason as Unit)."""

    key: tuple[KeyValue, ...]
    slot: int
    deltas: tuple[int, ...]


def _shard_key_of(charge: ChargeLike, shard_key: Sequence[Projection]) -> object:
    if len(shard_key) == 1:
        return shard_key[0](charge)
    return tuple(p(charge) for p in shard_key)


class _Part(NamedTuple):
    slot: int
    rows: list[RowDelta]
    text: str


class _Event:
    """The parts of one event seen so far in a call."""

    __slots__ = ("count", "parts", "time")

    def __init__(self, count: int, time: int) -> None:
        self.count = count
        self.time = time
        self.parts: dict[int, _Part] = {}


def _part_numbers(charge: ChargeLike) -> tuple[int, int]:
    part = getattr(charge, "part", 0)
    parts = getattr(charge, "parts", 1)
    if type(part) is not int or type(parts) is not int or not 0 <= part < parts <= MAX_PARTS:
        raise InvalidInputError(
            f"a charge of event {charge.event_id!r} says it is part {part!r} of {parts!r}; "
            f"'part' must be an int from 0 to parts - 1 and 'parts' an int from 1 to {MAX_PARTS}"
        )
    return part, parts


def _unix(moment: object, event_id: str) -> int:
    if not isinstance(moment, dt.datetime) or moment.utcoffset() is None:
        raise InvalidInputError(
            f"event {event_id!r}: 'time' must be a timezone-aware datetime, not {moment!r}"
        )
    return int(moment.timestamp() // 1)


def plan_batch(
    items: Iterable[ChargeLike | PricedEvent],
    *,
    tables: Sequence[AggregateTable] | RowExtractor,
    shard_key: Sequence[Projection],
    locate: Callable[[object], tuple[int, str]],
    home_slot: Callable[[str], int] | None = None,
    not_before: int | None = None,
) -> Plan:
    """Validate a call's deliveries and cut them into units; see the module docstring.

    Args:
        items: priced events and loose charges, in any order and mix.
        tables: the aggregate tables every charge updates (or a RowExtractor
            built from them once, to save rebuilding it per batch).
        shard_key: the projections whose values make the shard key.
        locate: shard key -> (slot, shard), usually from the shard map.
        home_slot: event id -> the slot of its identity claim
            (:attr:`IdScope.GLOBAL`); None for :attr:`IdScope.PER_ACCOUNT`.
        not_before: the dedup horizon in Unix seconds: an event whose time is
            earlier is rejected as too late (None: no horizon).

    Returns:
        The plan.

    Raises:
        InvalidInputError: an item has no usable event id (nothing to report it under).
    """
    extractor = tables if isinstance(tables, RowExtractor) else RowExtractor(tables)
    collector = _Collector(extractor, shard_key, locate)
    for item in items:
        if isinstance(item, PricedEvent):
            collector.add_priced(item)
        else:
            collector.add_charge(item)
    return collector.plan(home_slot, not_before)


def plan_rows(
    events: Iterable[tuple[str, int, Mapping[int, Sequence[RowDelta]]]],
    *,
    tables: Sequence[AggregateTable],
    home_slot: Callable[[str], int] | None = None,
    not_before: int | None = None,
) -> Plan:
    """Cut events given as row deltas per slot (not as charges) into units.

    For writes whose deltas no charge expresses (a correction's negated
    counts): each event is ``(event id, time in Unix seconds, slot -> its row
    deltas)``, already validated (the deltas come from the extractor of
    priced charges). Units, fingerprints, identity claims, the horizon and
    the event's own overflow are as in :func:`plan_batch`.
    """
    collector_events: dict[str, _Event] = {}
    for event_id, when, by_slot in events:
        event = _Event(len(by_slot), when)
        for number, (slot, rows) in enumerate(sorted(by_slot.items())):
            listed = list(rows)
            event.parts[number] = _Part(slot, listed, canonical_text(listed, tables))
        collector_events[event_id] = event
    collector = _Collector(RowExtractor(tables), (), lambda key: (0, ""))
    collector.events = collector_events
    return collector.plan(home_slot, not_before)


class _Collector:
    """A call's deliveries grouped by event id, folded and checked (see :func:`plan_batch`)."""

    def __init__(
        self,
        extractor: RowExtractor,
        shard_key: Sequence[Projection],
        locate: Callable[[object], tuple[int, str]],
    ) -> None:
        self.extractor = extractor
        self.shard_key = shard_key
        self.single_key = shard_key[0] if len(shard_key) == 1 else None
        self.locate = locate
        self.events: dict[str, _Event] = {}
        self.rejected: dict[str, Rejection] = {}
        self.folded = 0

    def reject(self, event_id: str, reason: str, error: str = "InvalidInputError") -> None:
        self.rejected[event_id] = Rejection(event_id=event_id, reason=reason, error=error)
        self.events.pop(event_id, None)

    def add_priced(self, item: PricedEvent) -> None:
        event_id = item.event_id
        if event_id in self.rejected:
            return
        n = len(item.charges)
        if n:
            for index, member in enumerate(item.charges):
                if event_id in self.rejected:
                    return
                self.add(event_id, member, index, n, item.time)
            return
        event = self.events.get(event_id)
        if event is None:
            try:
                self.events[event_id] = _Event(0, _unix(item.time, event_id))
            except InvalidInputError as exc:
                self.reject(event_id, str(exc))
        elif event.count != 0:
            self.reject(event_id, f"event {event_id!r} arrived both with and without charges")
        else:
            self.folded += 1

    def add_charge(self, item: ChargeLike) -> None:
        event_id = getattr(item, "event_id", None)
        if not isinstance(event_id, str) or not event_id:
            raise InvalidInputError(
                f"a charge has no usable event_id: {event_id!r}; every charge must carry its "
                "event's id (non-empty text)"
            )
        if event_id in self.rejected:
            return
        try:
            part, parts = _part_numbers(item)
        except InvalidInputError as exc:
            self.reject(event_id, str(exc))
            return
        self.add(event_id, item, part, parts, getattr(item, "time", None))

    def add(self, event_id: str, charge: ChargeLike, part: int, parts: int, time: object) -> None:
        try:
            key: object = (
                self.single_key(charge)
                if self.single_key is not None
                else _shard_key_of(charge, self.shard_key)
            )
            slot, _shard = self.locate(key)
            rows, text = self.extractor.extract(charge)
            when = _unix(time, event_id)
        except (ShardbillError, TypeError, ValueError) as exc:
            self.reject(event_id, str(exc), type(exc).__name__)
            return
        event = self.events.get(event_id)
        if event is None:
            event = self.events[event_id] = _Event(parts, when)
        elif event.count != parts:
            self.reject(
                event_id,
                f"event {event_id!r} arrived as {event.count} part(s) and as {parts} part(s) in "
                "one call; every charge of an event must give the same 'parts' (deliver it "
                "once, or as a PricedEvent holding all its charges)",
            )
            return
        seen = event.parts.get(part)
        if seen is None:
            event.parts[part] = _new(_Part, (slot, rows, text))
            event.time = min(event.time, when)
        elif seen.text == text and seen.slot == slot:
            self.folded += 1  # an exact repeat inside the call: the same delivery twice
        else:
            self.reject(
                event_id,
                f"event {event_id!r}: part {part} of {parts} was delivered twice in one call "
                "with different content; give each charge of a multi-charge event its own "
                "'part' number (the rules engine does), or write a PricedEvent",
            )

    def plan(self, home_slot: Callable[[str], int] | None, not_before: int | None) -> Plan:
        units: list[Unit] = []
        for event_id in sorted(self.events):
            event = self.events[event_id]
            if len(event.parts) != event.count:
                missing = sorted(set(range(event.count)) - set(event.parts))
                self.reject(
                    event_id,
                    f"event {event_id!r} is incomplete: {len(event.parts)} of its {event.count} "
                    f"parts arrived (missing part(s) {missing[:10]}); deliver every charge of "
                    "an event in the same call, or write it as a PricedEvent",
                )
                continue
            if not_before is not None and event.time < not_before:
                self.reject(
                    event_id,
                    f"event {event_id!r} happened at {_iso(event.time)}, before the dedup "
                    f"horizon ({_iso(not_before)}): a ledger that old may be pruned, so it "
                    "cannot be applied exactly once; book it as a correction in a current "
                    "period instead",
                )
                continue
            if event.count > 1:
                problem = _own_overflow(event_id, event, self.extractor.tables)
                if problem is not None:
                    self.reject(event_id, problem, "RowOverflowError")
                    continue
            units.extend(_units_of(event_id, event, self.extractor.tables, home_slot))
        rejected = self.rejected
        return Plan(
            units=tuple(units),
            rejected=tuple(rejected[e] for e in sorted(rejected)),
            events=tuple(sorted({*self.events, *rejected})),
            folded=self.folded,
        )


def _own_overflow(event_id: str, event: _Event, tables: Sequence[AggregateTable]) -> str | None:
    """Why an event's own charges, merged per row, leave a column's range (None: they fit).

    Each charge was range-checked alone; several charges of one event on one
    row can still sum past the edge, and no stored value can make that fit,
    so the event is refused when planned rather than by a shard that another
    shard's committed part cannot wait for.
    """
    merges = [tuple(m.merge for m in t.measures) for t in tables]
    own: dict[tuple[int, tuple[KeyValue, ...]], tuple[int, ...]] = {}
    for number in sorted(event.parts):
        for t, key, deltas in event.parts[number].rows:
            before = own.get((t, key))
            own[(t, key)] = deltas if before is None else merge_values(merges[t], before, deltas)
    for (t, key), deltas in own.items():
        for measure, value in zip(tables[t].measures, deltas, strict=True):
            if not measure.low <= value <= measure.high:
                return (
                    f"event {event_id!r}: its charges on row {key!r} add {value:+d} to "
                    f"{tables[t].name}.{measure.name}, past the {measure.column_type} "
                    f"{'maximum' if value > 0 else 'minimum'} whatever the row holds; split "
                    "it into several events, or give the measure a coarser scale"
                )
    return None


def _iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()


def _units_of(
    event_id: str,
    event: _Event,
    tables: Sequence[AggregateTable],
    home_slot: Callable[[str], int] | None,
) -> list[Unit]:
    parts = event.parts
    when = event.time
    if len(parts) == 1:  # the common event: its units built as plain tuples (see _new)
        ((slot, rows, text),) = parts.values()
        print_ = digest(text)
        signed = tuple(rows)
        if home_slot is None:
            return [_new(Unit, (event_id, slot, print_, signed, when, False, None, None))]
        home = home_slot(event_id)
        if home == slot:
            return [_new(Unit, (event_id, slot, print_, signed, when, True, None, None))]
        return [
            _new(Unit, (event_id, home, print_, (), when, True, signed, None)),
            _new(Unit, (event_id, slot, print_, signed, when, False, None, None)),
        ]
    by_slot: dict[int, list[_Part]] = defaultdict(list)
    for number in sorted(parts):
        by_slot[parts[number].slot].append(parts[number])
    out: list[Unit] = []
    home_of = home_slot(event_id) if home_slot is not None else None
    every: tuple[RowDelta, ...] = ()
    whole = ""
    if home_of is not None:
        every = tuple(row for part in parts.values() for row in part.rows)
        whole = fingerprint(every, tables)
    spans = len(by_slot) > 1 or home_of not in by_slot  # the claim signs rows elsewhere too
    for slot, same in sorted(by_slot.items()):
        if len(same) == 1:
            unit_rows, print_ = tuple(same[0].rows), digest(same[0].text)
        else:
            unit_rows = tuple(row for part in same for row in part.rows)
            print_ = fingerprint(unit_rows, tables)
        if slot == home_of:
            out.append(Unit(event_id, slot, whole, unit_rows, when, True, every if spans else None))
        else:
            out.append(Unit(event_id, slot, print_, unit_rows, when))
    if home_of is not None and home_of not in by_slot:
        # No charge on the home slot (or no charge at all): the claim has no rows.
        out.append(Unit(event_id, home_of, whole, (), when, True, every))
        out.sort(key=lambda u: u.slot)
    return out


def coalesce(units: Iterable[Unit], tables: Sequence[AggregateTable]) -> list[list[CoalescedRow]]:
    """Merge the units' row deltas per aggregate row; one sorted list per table.

    Rows are sorted by primary key (dates and ints compare naturally; a key
    column always holds one type), so concurrent writers lock rows in the same
    order. A merged delta may leave the BIGINT range; the writer checks.
    """
    merged: list[dict[tuple[KeyValue, ...], tuple[int, tuple[int, ...]]]] = [{} for _ in tables]
    merges = [_mergers(tuple(m.merge for m in t.measures)) for t in tables]
    add, call = operator.add, operator.call
    for unit in units:
        slot = unit.slot
        for t, key, deltas in unit.rows:
            table_rows = merged[t]
            current = table_rows.get(key)
            if current is None:
                table_rows[key] = (slot, deltas)
            elif (fns := merges[t]) is None:
                table_rows[key] = (current[0], tuple(map(add, current[1], deltas)))
            else:
                table_rows[key] = (current[0], tuple(map(call, fns, current[1], deltas)))
    return [
        [_new(CoalescedRow, (key, slot, deltas)) for key, (slot, deltas) in sorted(rows.items())]
        for rows in merged
    ]


_Merge = Callable[[int, int], int]
_MERGE_FUNCTIONS: dict[MergeKind, _Merge] = {
    MergeKind.SUM: operator.add,
    MergeKind.MIN: cast(_Merge, min),  # the builtins, in C
    MergeKind.MAX: cast(_Merge, max),
}


@functools.cache
def _mergers(kinds: tuple[MergeKind, ...]) -> tuple[Callable[[int, int], int], ...] | None:
    """Each measure's merge as a function of (current, delta); None when all are sums."""
    if all(kind is MergeKind.SUM for kind in kinds):
        return None
    return tuple(_MERGE_FUNCTIONS[kind] for kind in kinds)


def merge_values(
    kinds: Sequence[MergeKind], current: Sequence[int], deltas: Sequence[int]
) -> tuple[int, ...]:
    """One row's measures after merging ``deltas`` into ``current``, measure by measure."""
    out = []
    for kind, old, new in zip(kinds, current, deltas, strict=True):
        if kind is MergeKind.SUM:
            out.append(old + new)
        elif kind is MergeKind.MIN:
            out.append(min(old, new))
        else:
            out.append(max(old, new))
    return tuple(out)


@attrs.frozen(kw_only=True)
class Classified:
    """One shard transaction's units sorted by what the ledger says (see :func:`classify`).

    Attributes:
        new: units to apply now.
        duplicates: units applied before (same fingerprint).
        conflicts: ``(unit, stored fingerprint)`` of units applied before with other content.
        withheld: events not applied here, with the reason (too late for a slot's watermark).
        deferred: units whose event's identity claim is neither in this
            transaction nor confirmed yet: they wait for the next round.
        tokens: the writer token stored with each duplicate.
    """

    new: tuple[Unit, ...]
    duplicates: tuple[Unit, ...]
    conflicts: tuple[tuple[Unit, str], ...]
    withheld: dict[str, Rejection]
    deferred: tuple[Unit, ...]
    tokens: dict[Unit, str | None]


def by_event(units: Sequence[Unit]) -> Iterator[tuple[str, list[Unit]]]:
    """``units`` (sorted by event id) as (event id, that event's units) groups, in order."""
    for event_id, group in itertools.groupby(units, key=operator.attrgetter("event_id")):
        yield event_id, list(group)


def classify(
    units: Sequence[Unit],
    known: dict[tuple[str, int], tuple[str, str | None]],
    watermarks: dict[int, int],
    claimed: frozenset[str] | None,
    replayed: Callable[[Unit, str], bool] | None = None,
) -> Classified:
    """Sort one transaction's units into new, duplicate, conflict, withheld and deferred.

    An event is judged whole within the transaction: if any of its units
    here conflicts with the ledger, none of them is applied (a new identity
    claim included); if its time is before a slot's dedup watermark, none of
    them is applied. Under :attr:`IdScope.GLOBAL` (``claimed`` not None) a
    unit is applied only in the same transaction as its event's home unit or
    once that claim is confirmed (its event id in ``claimed``).

    Args:
        units: the transaction's units, sorted by (event id, slot).
        known: ``(event id, slot)`` -> (stored fingerprint, writer token) from the ledger.
        watermarks: slot -> its dedup watermark (``pruned_below``), Unix seconds.
        claimed: event ids whose identity claim committed already; None when
            there are no claims (:attr:`IdScope.PER_ACCOUNT`).
        replayed: asked only when a unit's stored fingerprint differs from its
            own: whether the stored one is this unit's under an older
            declaration (:class:`shardbill.declarations.ReplayJudge`); such a
            unit is a duplicate. None: every difference is a conflict.
    """
    new: list[Unit] = []
    duplicates: list[Unit] = []
    conflicts: list[tuple[Unit, str]] = []
    withheld: dict[str, Rejection] = {}
    deferred: list[Unit] = []
    tokens: dict[Unit, str | None] = {}
    for event_id, group in by_event(units):
        if claimed is not None and event_id not in claimed and not any(u.home for u in group):
            deferred.extend(group)
            continue
        late = _too_late(event_id, group, watermarks)
        if late is not None:
            withheld[event_id] = late
            continue
        clashes = []
        for unit in group:
            found = known.get((event_id, unit.slot))
            if (
                found is not None
                and found[0] != unit.fingerprint
                and (replayed is None or not replayed(unit, found[0]))
            ):
                clashes.append((unit, found[0]))
        if clashes:
            conflicts.extend(clashes)
            continue
        for unit in group:
            found = known.get((event_id, unit.slot))
            if found is None:
                new.append(unit)
            else:
                duplicates.append(unit)
                tokens[unit] = found[1]
    return Classified(
        new=tuple(new),
        duplicates=tuple(duplicates),
        conflicts=tuple(conflicts),
        withheld=withheld,
        deferred=tuple(deferred),
        tokens=tokens,
    )


def _too_late(
    event_id: str, group: Sequence[Unit], watermarks: Mapping[int, int]
) -> Rejection | None:
    """The refusal of an event older than a slot's dedup watermark, or None."""
    late = [u.slot for u in group if u.time < watermarks.get(u.slot, 0)]
    if not late:
        return None
    return Rejection(
        event_id=event_id,
        reason=(
            f"event {event_id!r} happened at {_iso(group[0].time)}, before the dedup "
            f"horizon of slot {late[0]} (pruned below {_iso(watermarks[late[0]])}): its "
            "ledger rows may be gone, so it cannot be applied exactly once; book it as "
            "a correction in a current period instead"
        ),
        error="InvalidInputError",
    )


def spread_events(units: Iterable[Unit], route: Callable[[int], str]) -> frozenset[str]:
    """The events whose money lands on more than one shard (their parts commit apart)."""
    # Most events bill one slot: only an event's second slot with money costs a route.
    first: dict[str, int] = {}
    spread: set[str] = set()
    for unit in units:
        if not unit.rows:
            continue
        slot = first.setdefault(unit.event_id, unit.slot)
        if slot != unit.slot and route(slot) != route(unit.slot):
            spread.add(unit.event_id)
    return frozenset(spread)


def split_by_claim(
    units: Iterable[Unit], route: Callable[[int], str]
) -> tuple[list[Unit], list[Unit]]:
    """``units`` (under :attr:`IdScope.GLOBAL`) as (first round, later round), in order.

    The first round holds every identity claim (home unit) and the units on
    their claim's shard (one transaction with it); the rest wait until their
    claim is confirmed. Each slot is routed once per call.
    """
    units = tuple(units)
    shard_of: dict[int, str] = {}
    shards: list[str] = []
    for u in units:
        found = shard_of.get(u.slot)
        if found is None:
            found = shard_of[u.slot] = route(u.slot)
        shards.append(found)
    home = {u.event_id: s for u, s in zip(units, shards, strict=True) if u.home}
    first: list[Unit] = []
    later: list[Unit] = []
    for u, s in zip(units, shards, strict=True):
        (first if u.home or s == home[u.event_id] else later).append(u)
    return first, later


def refusals_ahead(
    units: Sequence[Unit],
    spread: frozenset[str],
    *,
    known: Mapping[tuple[str, int], tuple[str, str | None]],
    owned: frozenset[int],
    watermarks: Mapping[int, int],
    stored: Sequence[dict[tuple[KeyValue, ...], tuple[int, ...]]],
    tables: Sequence[AggregateTable],
) -> tuple[frozenset[str], dict[str, Rejection]]:
    """What one shard would refuse of the ``spread`` events, judged before anything is written.

    A spread event's parts commit in separate transactions on separate shards;
    a refusal that depends on a shard's state (a row's headroom, a slot's dedup
    watermark) found in one of them after another committed would leave the
    event half applied. The writer asks every shard first, with this
    function over what it read there (pure), and rejects such an event whole.

    Args:
        units: this shard's units of the call, sorted by (event id, slot).
        spread: the events to judge.
        known: the ledger rows of ``units`` here, as :func:`classify` takes them.
        owned: the slots this shard writes now (owned, or incoming with the old
            owner's ledger, watermark and unmerged rows read too); gone ones are not.
        watermarks: slot -> dedup watermark.
        stored: per table, the stored measures of the rows the spread events touch.
        tables: the aggregate tables.

    Returns:
        The spread events this shard cannot judge (a unit in the ledger
        already, with any content, or on a slot it does not own: the normal
        path decides them), and the refusals of the others.
    """
    blocked: set[str] = set()
    refused: dict[str, Rejection] = {}
    fresh: list[Unit] = []
    for event_id, group in by_event(units):
        if any((event_id, u.slot) in known for u in group):
            if event_id in spread:
                blocked.add(event_id)
            continue  # applied before (or conflicting): adds nothing to the rows here
        if event_id not in spread:
            fresh.extend(group)
            continue
        if any(u.slot not in owned for u in group):
            blocked.add(event_id)
            continue
        late = _too_late(event_id, group, watermarks)
        if late is not None:
            refused[event_id] = late
            continue
        fresh.extend(group)
    _, overflowing = find_overflows(fresh, stored, tables)
    refused.update({e: r for e, r in overflowing.items() if e in spread})
    for event_id, rejection in _contested(fresh, spread, stored, tables).items():
        refused.setdefault(event_id, rejection)
    return frozenset(blocked), refused


def _contested(
    units: Sequence[Unit],
    spread: frozenset[str],
    stored: Sequence[dict[tuple[KeyValue, ...], tuple[int, ...]]],
    tables: Sequence[AggregateTable],
) -> dict[str, Rejection]:
    """The spread events that could overflow a row *in some order* of the call's events.

    :func:`find_overflows` judges events in event-id order, but the shards apply a
    call in rounds (identity claims and what shares their shard first): an event
    applied before a spread event's part, in an earlier round, can take the headroom
    that part needs, after the part on another shard committed (simulation seed
    50137). So a summed measure's headroom must hold whatever the order: the stored
    value plus every positive delta of the call's units on the row stays at most
    the column's maximum, plus every negative one at least its minimum. A spread
    event with a delta the wrong way on a row that fails this is refused whole
    (alone, in a later call, it is judged against what the row holds then).
    """
    ups, downs = _pressure(units)
    refused: dict[str, Rejection] = {}
    for event_id, group in by_event(units):
        if event_id not in spread:
            continue
        for t, key, deltas in (row for unit in group for row in unit.rows):
            problem = _pushed_past(
                event_id,
                tables[t],
                key,
                deltas,
                row=stored[t].get(key),
                ups=ups[(t, key)],
                downs=downs[(t, key)],
            )
            if problem is not None:
                refused[event_id] = Rejection(
                    event_id=event_id, reason=problem, error="RowOverflowError"
                )
                break
    return refused


_Row = tuple[int, tuple[KeyValue, ...]]


def _pressure(units: Sequence[Unit]) -> tuple[dict[_Row, list[int]], dict[_Row, list[int]]]:
    """Per row and measure, the sums of the units' positive deltas and of their negative ones."""
    ups: dict[_Row, list[int]] = {}
    downs: dict[_Row, list[int]] = {}
    for unit in units:
        for t, key, deltas in unit.rows:
            up = ups.setdefault((t, key), [0] * len(deltas))
            down = downs.setdefault((t, key), [0] * len(deltas))
            for m, delta in enumerate(deltas):
                if delta > 0:
                    up[m] += delta
                else:
                    down[m] += delta
    return ups, downs


def _pushed_past(
    event_id: str,
    table: AggregateTable,
    key: tuple[KeyValue, ...],
    deltas: tuple[int, ...],
    *,
    row: tuple[int, ...] | None,
    ups: list[int],
    downs: list[int],
) -> str | None:
    """Why the call's deltas on ``row`` could take a summed measure that ``deltas`` push
    out of range in some order (None: they cannot)."""
    for m, measure in enumerate(table.measures):
        if measure.merge is not MergeKind.SUM or not deltas[m]:
            continue
        base = 0 if row is None else row[m]
        pushed = ups[m] if deltas[m] > 0 else downs[m]
        if measure.low <= base + pushed <= measure.high:
            continue
        room = measure.high - base if deltas[m] > 0 else base - measure.low
        return (
            f"event {event_id!r} has charges on several shards, which commit apart, and "
            f"with the other events of this call on row {key!r} it could take "
            f"{table.name}.{measure.name} from {base} by {pushed:+d}, past the "
            f"{measure.column_type} {'maximum' if deltas[m] > 0 else 'minimum'} (headroom "
            f"{room}); nothing of it was written; deliver it again in a call of its own"
        )
    return None


def find_overflows(
    units: Sequence[Unit],
    current: Sequence[dict[tuple[KeyValue, ...], tuple[int, ...]]],
    tables: Sequence[AggregateTable],
) -> tuple[list[Unit], dict[str, Rejection]]:
    """Which events would take a row out of its column's range, given the rows' stored values.

    Events are taken in event-id order; each one's deltas (merged per row) are
    added to the running values, and an event that would take any value (or
    its own delta) out of the column's range (BIGINT, or DECIMAL(65,0) for a
    wide measure) is refused whole, with the table,
    the column, the value, the delta and the headroom left. The others keep
    their order.

    Args:
        units: the units to apply, sorted by (event id, slot).
        current: per table, key -> the stored measures (rows absent: not there).
        tables: the aggregate tables.

    Returns:
        The units that fit, and the refused events' rejections.
    """
    state = [dict(rows) for rows in current]
    merges = [tuple(m.merge for m in t.measures) for t in tables]
    kept: list[Unit] = []
    refused: dict[str, Rejection] = {}
    for event_id, group in by_event(units):
        own: dict[tuple[int, tuple[KeyValue, ...]], tuple[int, ...]] = {}
        for unit in group:
            for t, key, deltas in unit.rows:
                before = own.get((t, key))
                own[(t, key)] = (
                    deltas if before is None else merge_values(merges[t], before, deltas)
                )
        tentative: dict[tuple[int, tuple[KeyValue, ...]], tuple[int, ...]] = {}
        problem = None
        for (t, key), deltas in own.items():
            stored = state[t].get(key)
            after = deltas if stored is None else merge_values(merges[t], stored, deltas)
            for m, measure in enumerate(tables[t].measures):
                low, high = measure.low, measure.high
                if low <= after[m] <= high and low <= deltas[m] <= high:
                    continue
                base = 0 if stored is None else stored[m]
                room = high - base if deltas[m] > 0 else base - low
                fix = (
                    "split the row (e.g. by period)"
                    if measure.wide
                    else "give the measure a coarser scale, split the row (e.g. by period), "
                    "or declare it wide=True (DECIMAL(65,0), MySQL/MariaDB)"
                )
                problem = (
                    f"event {event_id!r} would take {tables[t].name}.{measure.name} of row "
                    f"{key!r} from {base} by {deltas[m]:+d}, past the {measure.column_type} "
                    f"{'maximum' if deltas[m] > 0 else 'minimum'} (headroom {room}); the rest "
                    f"of the batch was applied; {fix}"
                )
                break
            if problem is not None:
                break
            tentative[(t, key)] = after
        if problem is not None:
            refused[event_id] = Rejection(
                event_id=event_id, reason=problem, error="RowOverflowError"
            )
            continue
        for (t, key), after in tentative.items():
            state[t][key] = after
        kept.extend(group)
    return kept, refused


def deltas_fit(
    rows: Iterable[Sequence[CoalescedRow]], tables: Sequence[AggregateTable] | None = None
) -> bool:
    """True when every merged delta of ``rows`` fits its column.

    Without ``tables`` every column is taken as a BIGINT (the writer passes
    the tables only when one of them has a wide measure, so the common check
    stays one comparison per value).
    """
    if tables is None:
        return all(
            BIGINT_MIN <= d <= BIGINT_MAX for table in rows for row in table for d in row.deltas
        )
    for table_rows, table in zip(rows, tables, strict=True):
        ranges = [(m.low, m.high) for m in table.measures]
        for row in table_rows:
            for d, (low, high) in zip(row.deltas, ranges, strict=True):
                if not low <= d <= high:
                    return False
    return True
