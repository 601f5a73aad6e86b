"""Charges in, aggregates updated exactly once: the writer and everything only it uses.

- :mod:`shardbill.writer.aggregation`: :class:`AggregationWriter` (``write``,
  ``write_stream``, retries, following fences, the look-ahead of spread events).
- :mod:`shardbill.writer.planning` (pure): a call's charges -> per-shard units,
  coalescing, the judgements made before and inside a transaction.
- :mod:`shardbill.writer.extraction` (pure): a charge's row deltas per table, compiled once.
- :mod:`shardbill.writer.fingerprints` (pure): unit fingerprints (the pinned encoding).
- :mod:`shardbill.writer.results` (pure): :class:`WriteResult` and how a call's
  units decide each event's state.
- :mod:`shardbill.writer.upserts`: multi-row UPSERT text, rendered once per shape.
- :mod:`shardbill.writer.motion`: reading a row that lives in two parts during a reshard.
- :mod:`shardbill.writer.schema`: creating and checking the per-shard tables.

What the writer reports goes through :mod:`shardbill.observe` (a vocabulary
the connection pools use too, so it sits below them); :mod:`shardbill.metrics`
turns it into Prometheus metrics.

Layers: this package sits above :mod:`shardbill.tables`, :mod:`shardbill.dialects`,
:mod:`shardbill.providers` and :mod:`shardbill.mapstore`, and below
:mod:`shardbill.pipeline`, :mod:`shardbill.resharding` and the programs
(``tests/test_layers.py``).
"""

from __future__ import annotations

from shardbill.writer.aggregation import (
    AggregationWriter,
    Conflict,
    EventState,
    IdScope,
    MapSource,
    PricedEvent,
    ShardResult,
    WriteResult,
    WriterSettings,
)

__all__ = [
    "AggregationWriter",
    "Conflict",
    "EventState",
    "IdScope",
    "MapSource",
    "PricedEvent",
    "ShardResult",
    "WriteResult",
    "WriterSettings",
]
