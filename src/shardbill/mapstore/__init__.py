"""Where the live shard map lives: one store every writer reads and operators publish to.

A :class:`MapStore` holds the current :class:`~shardbill.shardmap.ShardMap`
and changes it only by compare-and-set on the epoch:
``publish(new_map, expected_epoch=E)`` succeeds only when the store still
holds epoch ``E`` (``None``: the store is empty) and ``new_map.epoch > E``.
Two operators racing to publish from the same map therefore cannot both
succeed: exactly one wins, the other gets :class:`EpochConflictError`,
reloads and re-plans. Epochs only grow.

Implementations, each in its own module:

* :class:`JsonFileMapStore` (:mod:`shardbill.mapstore.file`): the
  map as a JSON file (``ShardMap.to_json()``), replaced atomically under an
  exclusive ``flock`` on a sidecar lock file; every published epoch is also
  archived next to it. For one host (or a shared filesystem with working
  ``flock``); POSIX only.
* :class:`SqlMapStore` (:mod:`shardbill.mapstore.sql`): a table in
  a control database reached through a
  :class:`~shardbill.providers.ConnectionProvider`; one row per published
  epoch (the history is the audit trail). MySQL, MariaDB and SQLite.
* :class:`MemoryMapStore` (:mod:`shardbill.mapstore.memory`): in
  memory, for tests and single-process tools.

They all apply the compare-and-set rule kept next to :class:`MapStore` in
:mod:`shardbill.mapstore.base`, and all keep a reshard's
claim (:class:`ClaimStore`, :class:`ReshardClaim`), changed only by
compare-and-set on its version.

Writers hold the map in a :class:`CachedMap`
(:mod:`shardbill.mapstore.cached`) and call
:meth:`CachedMap.reload` when a shard fences them
(:class:`~shardbill.errors.FencedError`).

This module defines nothing itself: it re-exports those names, and the
errors :class:`EpochConflictError` and :class:`MapNotPublishedError` (from
:mod:`shardbill.errors`), so that ``from shardbill.mapstore import``
works for each of them.

Example:
    >>> store = MemoryMapStore()
    >>> m1 = ShardMap.create(["a", "b"], slots=64)
    >>> store.publish(m1, expected_epoch=None)
    >>> store.publish(m1.add_shard("c"), expected_epoch=1)
    >>> try:  # a second operator who also planned from epoch 1 loses
    ...     store.publish(m1.add_shard("d"), expected_epoch=1)
    ... except EpochConflictError as exc:
    ...     print(exc.stored_epoch, exc.expected_epoch)
    2 1
    >>> CachedMap(store).current.epoch
    2

Level: above the providers and the dialects, below the periods and the writer
(``tests/test_layers.py``).
"""

from __future__ import annotations

# EpochConflictError, MapNotPublishedError and ShardMap stay out of __all__ (which
# shardbill.resharding re-exports exactly) but importable from here, as before the
# split: the example above and docs/reference/map-store.md use them.
from shardbill.errors import EpochConflictError, MapNotPublishedError  # noqa: F401
from shardbill.mapstore.base import ClaimStore, MapStore
from shardbill.mapstore.cached import CachedMap
from shardbill.mapstore.claim import ReshardClaim
from shardbill.mapstore.file import JsonFileMapStore
from shardbill.mapstore.memory import MemoryMapStore
from shardbill.mapstore.sql import SqlMapStore
from shardbill.shardmap import ShardMap  # noqa: F401

__all__ = [
    "CachedMap",
    "ClaimStore",
    "JsonFileMapStore",
    "MapStore",
    "MemoryMapStore",
    "ReshardClaim",
    "SqlMapStore",
]
