"""Online resharding: where the live shard map lives, and (later) how slots move.

* :mod:`shardbill.resharding.mapstore`: :class:`MapStore` and its
  implementations (:class:`JsonFileMapStore`, :class:`SqlMapStore`,
  :class:`MemoryMapStore`), compare-and-set publishing on the map's epoch,
  and :class:`CachedMap` for writers.
"""

from shardbill.resharding.mapstore import (
    CachedMap,
    JsonFileMapStore,
    MapStore,
    MemoryMapStore,
    SqlMapStore,
)

__all__ = [
    "CachedMap",
    "JsonFileMapStore",
    "MapStore",
    "MemoryMapStore",
    "SqlMapStore",
]
