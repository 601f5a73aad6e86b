"""Online resharding: where the live shard map lives, and how slots move.

* :mod:`shardbill.resharding.mapstore`: :class:`MapStore` and its
  implementations (:class:`JsonFileMapStore`, :class:`SqlMapStore`,
  :class:`MemoryMapStore`), compare-and-set publishing on the map's epoch,
  and :class:`CachedMap` for writers.
* :mod:`shardbill.resharding.resharder`: :class:`Resharder` moves slots
  online (fence, switch, copy the ledger, merge the aggregates, verify),
  resumably.
"""

from shardbill.resharding.mapstore import (
    CachedMap,
    JsonFileMapStore,
    MapStore,
    MemoryMapStore,
    SqlMapStore,
)
from shardbill.resharding.resharder import (
    Resharder,
    ReshardProgress,
    ReshardSettings,
    SlotStatus,
)

__all__ = [
    "CachedMap",
    "JsonFileMapStore",
    "MapStore",
    "MemoryMapStore",
    "ReshardProgress",
    "ReshardSettings",
    "Resharder",
    "SlotStatus",
    "SqlMapStore",
]
