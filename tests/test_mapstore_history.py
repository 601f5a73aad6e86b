"""The map stores declare their history through the MapHistory protocol (issue 18)."""

from __future__ import annotations

from pathlib import Path

from shardbill import ShardMap
from shardbill.mapstore import CachedMap, JsonFileMapStore, MemoryMapStore
from shardbill.mapstore.base import MapHistory


def test_the_stores_with_history_satisfy_map_history(tmp_path: Path) -> None:
    """The memory and file stores keep every epoch and say so by the protocol."""
    first = ShardMap.create(["a", "b"], slots=64)
    for store in (MemoryMapStore(), JsonFileMapStore(tmp_path / "map.json")):
        store.publish(first, expected_epoch=None)
        store.publish(first.add_shard("c"), expected_epoch=first.epoch)
        assert isinstance(store, MapHistory)
        assert store.history() == (first.epoch, first.epoch + 1)
        assert store.load_epoch(first.epoch) == first


def test_a_map_without_history_does_not_satisfy_it() -> None:
    """A plain map source (the writer's cached map) is not taken for a history."""
    store = MemoryMapStore()
    store.publish(ShardMap.create(["a"], slots=16), expected_epoch=None)
    assert not isinstance(CachedMap(store), MapHistory)
