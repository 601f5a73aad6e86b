"""Unit fingerprints: what an event contributed to a slot, as 16 hex digits (pure).

A unit's fingerprint is stored in the ledger with its ``(slot, event_id)``.
A later delivery of the same id with the same fingerprint is a duplicate;
with a different one it is a *conflict*, reported and never applied (the way
payment APIs treat a reused idempotency key).

The fingerprint is xxh3-64, under a pinned seed, of the unit's *canonical
text*: the ``repr`` of the sorted list of its ``(table name, key, deltas)``
tuples, whose values are only ``int``, ``str`` and ``datetime.date`` (reprs
that are stable across Python versions). The ledger keeps fingerprints for
the retention window, so this encoding is pinned by a golden test: changing
it would make replays of events applied before the change look like
conflicts. The writer's fast path renders the same text from a template
(:class:`shardbill.writer.extraction.RowExtractor`); a property test holds the two
equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import xxhash

from shardbill.tables.aggregates import AggregateTable, KeyValue
from shardbill.writer.extraction import RowDelta

__all__ = ["canonical_text", "digest", "fingerprint", "named_text"]

_SEED = 0x5B1D_F1D6


def canonical_text(rows: Sequence[RowDelta], tables: Sequence[AggregateTable]) -> str:
    """The canonical text of a unit's row deltas (see the module docstring)."""
    return named_text([(tables[t].name, key, deltas) for t, key, deltas in rows])


def named_text(rows: list[tuple[str, tuple[KeyValue, ...], tuple[int, ...]]]) -> str:
    """The canonical text of ``(table name, key, deltas)`` rows (sorts ``rows`` in place)."""
    rows.sort()
    return repr(rows)


def digest(text: str) -> str:
    """The fingerprint of a canonical text: xxh3-64 under the pinned seed, 16 hex digits."""
    return xxhash.xxh3_64_hexdigest(text.encode(), seed=_SEED)


def fingerprint(rows: Sequence[RowDelta], tables: Sequence[AggregateTable]) -> str:
    """The fingerprint of a unit's row deltas: ``digest(canonical_text(rows, tables))``."""
    return digest(canonical_text(rows, tables))
