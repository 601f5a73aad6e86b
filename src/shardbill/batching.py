"""Turning a batch of charges into per-shard work (pure, no I/O).

The writer's plan for one batch, in three steps:

1. **Units.** Charges are grouped by event id, then by the slot their shard
   key falls in. One event's charges on one slot form a *unit*: the
   idempotency grain. The ledger records ``(event_id, slot)``, so an event
   whose charges fall on several slots (or shards) is applied exactly once on
   each, independently, and a slot's ledger rows move with it when the slot
   is resharded.
2. **Fingerprints.** Each unit carries a fingerprint
   (:mod:`shardbill.fingerprints`: xxh3-64 of its row deltas in a canonical
   order). A replay with the same fingerprint is a duplicate; a different
   fingerprint under a known id is a *conflict*, reported, never silently
   skipped or applied.
3. **Coalescing.** The deltas of the units that turn out to be new are summed
   (or min/maxed) per aggregate row in memory and sorted by primary key, so a
   hot account's thousand events become one UPSERT row and two writers lock
   rows in the same order.

A charge that fails validation (a wrong key type, a missing dimension, float
money, a value out of range) rejects its whole event, on every shard, before
any SQL runs: an event is never half-applied. The row deltas themselves come
from :class:`shardbill.extraction.RowExtractor`.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import attrs

from shardbill.aggregates import AggregateTable, ChargeLike, KeyValue, Projection
from shardbill.dialects.base import MergeKind
from shardbill.errors import InvalidInputError, ShardbillError
from shardbill.extraction import RowDelta, RowExtractor
from shardbill.fingerprints import digest, fingerprint

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


@attrs.frozen(kw_only=True)
class Rejection:
    """An event refused before any SQL ran, with the reason (nothing of it was written)."""

    event_id: str
    reason: str
    error: str


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
    extract = extractor.extract
    single_key = shard_key[0] if len(shard_key) == 1 else None
    # event id -> its charges' (slot, shard, rows, canonical text); most events have one
    per_event: dict[str, list[tuple[int, str, list[RowDelta], str]]] = {}
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
            rows, text = extract(charge)
        except (ShardbillError, TypeError, ValueError) as exc:
            rejected[event_id] = Rejection(
                event_id=event_id, reason=str(exc), error=type(exc).__name__
            )
            per_event.pop(event_id, None)
            continue
        found = per_event.get(event_id)
        if found is None:
            per_event[event_id] = [(slot, shard, rows, text)]
        else:
            found.append((slot, shard, rows, text))

    by_shard: dict[str, list[Unit]] = defaultdict(list)
    for event_id in sorted(per_event):
        parts = per_event[event_id]
        if len(parts) == 1:
            ((slot, shard, rows, text),) = parts
            by_shard[shard].append(Unit(event_id, slot, digest(text), tuple(rows)))
            continue
        by_slot: dict[int, list[tuple[int, str, list[RowDelta], str]]] = defaultdict(list)
        for part in parts:
            by_slot[part[0]].append(part)
        for slot, same in sorted(by_slot.items()):
            if len(same) == 1:
                unit_rows, print_ = tuple(same[0][2]), digest(same[0][3])
            else:
                unit_rows = tuple(row for part in same for row in part[2])
                print_ = fingerprint(unit_rows, extractor.tables)
            by_shard[same[0][1]].append(Unit(event_id, slot, print_, unit_rows))
    work = {shard: ShardWork(shard=shard, units=tuple(units)) for shard, units in by_shard.items()}
    return work, list(rejected.values())


def coalesce(units: Iterable[Unit], tables: Sequence[AggregateTable]) -> list[list[CoalescedRow]]:
    """Merge the units' row deltas per aggregate row; one sorted list per table.

    Rows are sorted by primary key (dates and ints compare naturally; a key
    column always holds one type), so concurrent writers lock rows in the same
    order.
    """
    merged: list[dict[tuple[KeyValue, ...], tuple[int, tuple[int, ...]]]] = [{} for _ in tables]
    merges = [tuple(m.merge for m in t.measures) for t in tables]
    all_sum = [all(kind is MergeKind.SUM for kind in kinds) for kinds in merges]
    add = operator.add
    for unit in units:
        for t, key, deltas in unit.rows:
            table_rows = merged[t]
            current = table_rows.get(key)
            if current is None:
                table_rows[key] = (unit.slot, deltas)
            elif all_sum[t]:
                table_rows[key] = (current[0], tuple(map(add, current[1], deltas)))
            else:
                table_rows[key] = (current[0], _merge_mixed(merges[t], current[1], deltas))
    return [
        [CoalescedRow(key, slot, deltas) for key, (slot, deltas) in sorted(table_rows.items())]
        for table_rows in merged
    ]


def _merge_mixed(
    kinds: Sequence[MergeKind], current: Sequence[int], deltas: Sequence[int]
) -> tuple[int, ...]:
    out = []
    for kind, old, new in zip(kinds, current, deltas, strict=True):
        if kind is MergeKind.SUM:
            out.append(old + new)
        elif kind is MergeKind.MIN:
            out.append(min(old, new))
        else:
            out.append(max(old, new))
    return tuple(out)
