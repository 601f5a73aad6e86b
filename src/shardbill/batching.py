"""Turning a batch of charges into per-shard work (pure, no I/O).

The writer's plan for one batch, in three steps:

1. **Units.** Charges are grouped by event id, then by the slot their shard
   key falls in. One event's charges on one slot form a *unit*: the
   idempotency grain. The ledger records ``(event_id, slot)``, so an event
   whose charges fall on several slots (or shards) is applied exactly once on
   each, independently, and a slot's ledger rows move with it when the slot
   is resharded.
2. **Fingerprints.** Each unit carries a fingerprint (xxh3-64 of its row
   deltas in a canonical order). A replay with the same fingerprint is a
   duplicate; a different fingerprint under a known id is a *conflict*,
   reported, never silently skipped or applied.
3. **Coalescing.** The deltas of the units that turn out to be new are summed
   (or min/maxed) per aggregate row in memory and sorted by primary key, so a
   hot account's thousand events become one UPSERT row and two writers lock
   rows in the same order.

A charge that fails validation (a wrong key type, a missing dimension, float
money, a value out of range) rejects its whole event, on every shard, before
any SQL runs: an event is never half-applied.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import attrs
import xxhash

from shardbill.aggregates import (
    BIGINT_MAX,
    BIGINT_MIN,
    AggregateTable,
    ChargeLike,
    KeyValue,
    Projection,
)
from shardbill.dialects.base import MergeKind
from shardbill.errors import InvalidInputError, ShardbillError

__all__ = [
    "CoalescedRow",
    "Rejection",
    "RowExtractor",
    "ShardWork",
    "Unit",
    "coalesce",
    "fingerprint",
    "plan_batch",
]

_FINGERPRINT_SEED = 0x5B1D_F1D6


@attrs.frozen(kw_only=True)
class Rejection:
    """An event refused before any SQL ran, with the reason (nothing of it was written)."""

    event_id: str
    reason: str
    error: str


RowDelta = tuple[int, tuple[KeyValue, ...], tuple[int, ...]]  # (table index, key, deltas)


class Unit(NamedTuple):
    """One event's contribution to one slot: the grain of the ledger.

    A named tuple rather than an attrs class: the writer builds one per event
    on its hot path, and tuples are the cheapest immutable records.
    """

    event_id: str
    slot: int
    fingerprint: str
    rows: tuple[RowDelta, ...]


@attrs.frozen(kw_only=True)
class ShardWork:
    """Everything a batch asks of one shard, units sorted by (event id, slot)."""

    shard: str
    units: tuple[Unit, ...]

    @property
    def slots(self) -> tuple[int, ...]:
        """The distinct slots this work touches, ascending."""
        return tuple(sorted({u.slot for u in self.units}))


class CoalescedRow(NamedTuple):
    """One aggregate row's merged delta (a named tuple, for the same reason as Unit)."""

    key: tuple[KeyValue, ...]
    slot: int
    deltas: tuple[int, ...]


def fingerprint(rows: Sequence[RowDelta], tables: Sequence[AggregateTable]) -> str:
    """The fingerprint of a unit's row deltas: xxh3-64 (hex) of a canonical text.

    The text is the ``repr`` of the sorted list of ``(table name, key,
    deltas)`` tuples, whose values are only ``int``, ``str`` and
    ``datetime.date`` (reprs that are stable across Python versions). The
    ledger keeps fingerprints for the retention window, so this encoding is
    pinned by a golden test: changing it would make replays of events applied
    before the change look like conflicts.
    """
    canonical = repr(sorted([(tables[t].name, key, deltas) for t, key, deltas in rows]))
    return xxhash.xxh3_64_hexdigest(canonical.encode(), seed=_FINGERPRINT_SEED)


def _picker(indexes: Sequence[int]) -> Callable[[list[Any]], tuple[Any, ...]]:
    """A C-speed ``lambda xs: tuple(xs[i] for i in indexes)``."""
    if len(indexes) == 1:
        (only,) = indexes
        return lambda xs: (xs[only],)
    return operator.itemgetter(*indexes)


class RowExtractor:
    """Computes the row deltas of a charge for every table, each distinct part once.

    Tables share key parts (the account, the month) and measures (the amount):
    each distinct (projection, column type) and measure value is computed and
    validated once per charge, then placed into every table's row.
    """

    def __init__(self, tables: Sequence[AggregateTable]) -> None:
        self.tables = tuple(tables)
        parts: dict[tuple[object, object], int] = {}
        names: list[str] = []
        values: dict[object, int] = {}
        self._key_parts: list[tuple[object, object]] = []
        self._value_parts: list[object] = []
        self._layout: list[tuple[Callable[[list[Any]], tuple[Any, ...]], ...]] = []
        for table in self.tables:
            key_idx = []
            for column in table.keys:
                ident = (column.projection, column.type)
                if ident not in parts:
                    parts[ident] = len(self._key_parts)
                    self._key_parts.append(ident)
                    names.append(column.name)
                key_idx.append(parts[ident])
            value_idx = []
            for measure in table.measures:
                if measure.value not in values:
                    values[measure.value] = len(self._value_parts)
                    self._value_parts.append(measure.value)
                value_idx.append(values[measure.value])
            self._layout.append((_picker(key_idx), _picker(value_idx)))
        self._names = names
        self._measure_names: dict[object, tuple[str, str]] = {
            measure.value: (table.name, measure.name)
            for table in self.tables
            for measure in table.measures
        }

    def rows(self, charge: ChargeLike) -> list[RowDelta]:
        """One row delta per table: ``(table index, key, deltas)``, validated.

        Raises:
            InvalidInputError: a key value or delta does not fit its column.
            MoneyTypeError: a float quantity or amount.
        """
        keys = [
            column_type.check(projection(charge), column=name)  # type: ignore[attr-defined, operator]
            for (projection, column_type), name in zip(self._key_parts, self._names, strict=True)
        ]
        deltas = []
        for value in self._value_parts:
            delta = value(charge)  # type: ignore[operator]
            if not BIGINT_MIN <= delta <= BIGINT_MAX:
                table, measure = self._measure_names[value]
                raise InvalidInputError(
                    f"charge {charge.event_id!r}: measure {measure!r} of table {table!r} is "
                    f"{delta}, outside the BIGINT range"
                )
            deltas.append(delta)
        return [
            (i, pick_keys(keys), pick_values(deltas))
            for i, (pick_keys, pick_values) in enumerate(self._layout)
        ]


def _shard_key_of(charge: ChargeLike, shard_key: Sequence[Projection]) -> object:
    if len(shard_key) == 1:
        return shard_key[0](charge)
    return tuple(p(charge) for p in shard_key)


def plan_batch(
    charges: Iterable[ChargeLike],
    *,
    tables: Sequence[AggregateTable] | RowExtractor,
    shard_key: Sequence[Projection],
    locate: Callable[[object], tuple[int, str]],
) -> tuple[dict[str, ShardWork], list[Rejection]]:
    """Split ``charges`` into per-shard units; reject events with an invalid charge.

    Args:
        charges: the batch. All charges of one event must be in the same batch:
            the ledger marks an (event, slot) as done at its first write.
        tables: the aggregate tables every charge updates (or a RowExtractor
            built from them once, to save rebuilding it per batch).
        shard_key: the projections whose values make the shard key.
        locate: shard key -> (slot, shard), usually from the shard map.

    Returns:
        The work per shard and the rejected events.
    """
    extractor = tables if isinstance(tables, RowExtractor) else RowExtractor(tables)
    extract = extractor.rows
    single_key = shard_key[0] if len(shard_key) == 1 else None
    per_event: dict[str, dict[int, list[RowDelta]]] = {}
    shard_of_slot: dict[int, str] = {}
    rejected: dict[str, Rejection] = {}
    for charge in charges:
        event_id = getattr(charge, "event_id", None)
        if not isinstance(event_id, str) or not event_id:
            raise InvalidInputError(f"a charge has no usable event_id: {event_id!r}")
        if event_id in rejected:
            continue
        try:
            key = single_key(charge) if single_key is not None else _shard_key_of(charge, shard_key)
            slot, shard = locate(key)
            rows = extract(charge)
        except (ShardbillError, TypeError, ValueError) as exc:
            rejected[event_id] = Rejection(
                event_id=event_id, reason=str(exc), error=type(exc).__name__
            )
            per_event.pop(event_id, None)
            continue
        shard_of_slot[slot] = shard
        per_event.setdefault(event_id, {}).setdefault(slot, []).extend(rows)

    by_shard: dict[str, list[Unit]] = defaultdict(list)
    for event_id in sorted(per_event):
        for slot, rows in sorted(per_event[event_id].items()):
            by_shard[shard_of_slot[slot]].append(
                Unit(event_id, slot, fingerprint(rows, extractor.tables), tuple(rows))
            )
    work = {shard: ShardWork(shard=shard, units=tuple(units)) for shard, units in by_shard.items()}
    return work, list(rejected.values())


def coalesce(units: Iterable[Unit], tables: Sequence[AggregateTable]) -> list[list[CoalescedRow]]:
    """Merge the units' row deltas per aggregate row; one sorted list per table.

    Rows are sorted by primary key (dates and ints compare naturally; a key
    column always holds one type), so concurrent writers lock rows in the same
    order.
    """
    merged: list[dict[tuple[KeyValue, ...], list[int]]] = [{} for _ in tables]
    slots: list[dict[tuple[KeyValue, ...], int]] = [{} for _ in tables]
    merges = [tuple(m.merge for m in t.measures) for t in tables]
    all_sum = [all(kind is MergeKind.SUM for kind in kinds) for kinds in merges]
    for unit in units:
        for t, key, deltas in unit.rows:
            current = merged[t].get(key)
            if current is None:
                merged[t][key] = list(deltas)
                slots[t][key] = unit.slot
                continue
            if all_sum[t]:
                merged[t][key] = [a + b for a, b in zip(current, deltas, strict=True)]
                continue
            for i, (kind, delta) in enumerate(zip(merges[t], deltas, strict=True)):
                if kind is MergeKind.SUM:
                    current[i] += delta
                elif kind is MergeKind.MIN:
                    current[i] = min(current[i], delta)
                else:
                    current[i] = max(current[i], delta)
    return [
        [
            CoalescedRow(key, slots[t][key], tuple(values))
            for key, values in sorted(table_rows.items())
        ]
        for t, table_rows in enumerate(merged)
    ]
