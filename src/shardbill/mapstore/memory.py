"""The map store in memory: :class:`MemoryMapStore`, for tests and single-process tools.

It keeps every published map, so :meth:`MemoryMapStore.history` and
:meth:`MemoryMapStore.load_epoch` work as on the other stores; a lock makes
:meth:`MemoryMapStore.publish` the compare-and-set of
:class:`~shardbill.mapstore.MapStore` across threads.
"""

from __future__ import annotations

import threading

from shardbill.errors import MapNotPublishedError
from shardbill.mapstore.base import (
    _check_arguments,
    _check_claim_allows,
    _check_claim_swap,
    _check_publish,
)
from shardbill.mapstore.claim import ReshardClaim
from shardbill.shardmap import ShardMap

__all__ = ["MemoryMapStore"]


class MemoryMapStore:
    """A :class:`MapStore` in memory: for tests and single-process tools. Thread-safe.

    Keeps every published map (:meth:`history`, :meth:`load_epoch`).

    Args:
        initial: a map to publish at once (as with ``expected_epoch=None``).
    """

    def __init__(self, initial: ShardMap | None = None) -> None:
        self._lock = threading.Lock()
        self._maps: dict[int, ShardMap] = {}
        self._current: ShardMap | None = None
        self._claim: ReshardClaim | None = None
        if initial is not None:
            self.publish(initial, expected_epoch=None)

    def __repr__(self) -> str:
        return "MemoryMapStore()"

    def load(self) -> ShardMap:
        """The current map.

        Raises:
            MapNotPublishedError: nothing was published yet.
        """
        current = self._current
        if current is None:
            raise MapNotPublishedError(
                f"{self!r} holds no shard map yet; publish the first one with "
                "store.publish(ShardMap.create([...]), expected_epoch=None)",
                store=repr(self),
            )
        return current

    def epoch(self) -> int | None:
        """The current epoch, or ``None`` when empty."""
        current = self._current
        return None if current is None else current.epoch

    def publish(self, new_map: ShardMap, *, expected_epoch: int | None) -> None:
        """Compare-and-set (see :meth:`MapStore.publish`)."""
        _check_arguments(new_map, expected_epoch)
        with self._lock:
            _check_publish(repr(self), self._current, new_map, expected_epoch)
            _check_claim_allows(repr(self), self._claim, new_map)
            self._maps[new_map.epoch] = new_map
            self._current = new_map

    def history(self) -> tuple[int, ...]:
        """Every published epoch, oldest first."""
        with self._lock:
            return tuple(sorted(self._maps))

    def load_epoch(self, epoch: int) -> ShardMap:
        """The map published as ``epoch``.

        Raises:
            MapNotPublishedError: no map was published with that epoch.
        """
        with self._lock:
            found = self._maps.get(epoch)
        if found is None:
            raise MapNotPublishedError(
                f"{self!r} has no map of epoch {epoch!r}; history() lists the epochs it has",
                store=repr(self),
            )
        return found

    def load_claim(self) -> ReshardClaim | None:
        """The reshard claim (see :class:`~shardbill.resharding.ClaimStore`)."""
        return self._claim

    def swap_claim(self, claim: ReshardClaim, *, expected_version: int | None) -> None:
        """Compare-and-set of the reshard claim on its version.

        Raises:
            ClaimConflictError: the stored claim is not at ``expected_version``.
        """
        with self._lock:
            _check_claim_swap(repr(self), self._claim, claim, expected_version)
            self._claim = claim
