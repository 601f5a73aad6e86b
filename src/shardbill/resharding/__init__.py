"""Online resharding: where the live shard map lives, and how slots move.

* :mod:`shardbill.mapstore`: :class:`MapStore` and its
  implementations (:class:`JsonFileMapStore`, :class:`SqlMapStore`,
  :class:`MemoryMapStore`), compare-and-set publishing on the map's epoch,
  :class:`CachedMap` for writers, and the reshard claim
  (:class:`ReshardClaim`, :mod:`shardbill.mapstore.claim`).
* :mod:`shardbill.resharding.resharder`: :class:`Resharder` moves slots
  online (fence, switch, copy the ledger, merge the aggregates, verify),
  resumably.
* :mod:`shardbill.resharding.records`: its step that moves the slots'
  correction records and ``adjust`` bookings with them.

Level: above the writer and the reader, below the operator's tools and the
programs (``tests/test_layers.py``).
"""

from shardbill.mapstore import (
    CachedMap,
    ClaimStore,
    JsonFileMapStore,
    MapStore,
    MemoryMapStore,
    ReshardClaim,
    SqlMapStore,
)
from shardbill.resharding.resharder import (
    Resharder,
    ReshardProgress,
    ReshardReport,
    ReshardSettings,
    SlotStatus,
)

__all__ = [
    "CachedMap",
    "ClaimStore",
    "JsonFileMapStore",
    "MapStore",
    "MemoryMapStore",
    "ReshardClaim",
    "ReshardProgress",
    "ReshardReport",
    "ReshardSettings",
    "Resharder",
    "SlotStatus",
    "SqlMapStore",
]
