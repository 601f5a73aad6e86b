"""A writer's copy of the live shard map: :class:`CachedMap`.

It loads the map from a :class:`~shardbill.mapstore.MapStore` on
first use and again, through :meth:`CachedMap.reload`, when a shard fences
the writer (:class:`~shardbill.errors.FencedError`); it works with any store.
"""

from __future__ import annotations

import threading

from shardbill.mapstore.base import MapStore
from shardbill.shardmap import ShardMap

__all__ = ["CachedMap"]


class CachedMap:
    """A writer's copy of the current shard map, reloaded from a :class:`MapStore` on demand.

    Thread-safe: :attr:`current` is a plain read; :meth:`reload` is serialized
    so that many threads fenced at once cause one load, not one each. The
    cached epoch never goes back: a store that shows an older map (a lagging
    replica) leaves the newer one in place.

    Example:
        A writer thread::

            maps = CachedMap(store)
            while True:
                shard_map = maps.current
                try:
                    write(batch, shard_map)
                    break
                except FencedError:
                    maps.reload(newer_than=shard_map.epoch)

    Args:
        store: where the map lives.
    """

    def __init__(self, store: MapStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._map: ShardMap | None = None

    def __repr__(self) -> str:
        shard_map = self._map
        epoch = "not loaded" if shard_map is None else f"epoch {shard_map.epoch}"
        return f"<CachedMap {epoch} from {self._store!r}>"

    @property
    def store(self) -> MapStore:
        """The store the map comes from."""
        return self._store

    @property
    def current(self) -> ShardMap:
        """The cached map (loaded from the store on first use).

        Raises:
            MapNotPublishedError: first use, and the store holds no map.
        """
        shard_map = self._map
        if shard_map is None:
            return self.reload()
        return shard_map

    def reload(self, *, newer_than: int | None = None) -> ShardMap:
        """Bring the cached map up to the store's, and return it.

        Asks the store for its epoch first and loads the whole map only when
        that is newer than the cached one.

        Args:
            newer_than: the epoch of the map the caller was fenced with: when
                the cached map is already newer (another thread reloaded
                meanwhile), return it without asking the store.

        Raises:
            MapNotPublishedError: the store holds no map (and none is cached).
            ShardMapError: the stored map is damaged.
        """
        with self._lock:
            cached = self._map
            if cached is not None:
                if newer_than is not None and cached.epoch > newer_than:
                    return cached
                stored_epoch = self._store.epoch()
                if stored_epoch is None or stored_epoch <= cached.epoch:
                    return cached
            loaded = self._store.load()
            if cached is None or loaded.epoch > cached.epoch:
                self._map = cached = loaded
            return cached
