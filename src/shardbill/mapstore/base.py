"""The :class:`MapStore` protocol, and the compare-and-set rule every implementation applies.

:class:`MapStore` is what a store offers writers
(:class:`~shardbill.mapstore.CachedMap`) and the resharder:
``load``, ``epoch`` and ``publish``, an atomic compare-and-set on the epoch.

The implementations (:mod:`shardbill.mapstore.memory`,
:mod:`shardbill.mapstore.file`, :mod:`shardbill.mapstore.sql`)
share the private helpers here, so that they check the same things and say
so in the same words:

* ``_check_arguments``: ``publish`` got a :class:`~shardbill.shardmap.ShardMap`
  and a valid ``expected_epoch``;
* ``_check_publish``: the compare-and-set rule, applied under the store's own
  lock (:class:`~shardbill.errors.EpochConflictError` when the store holds
  another epoch or the new map is not newer,
  :class:`~shardbill.errors.ShardMapError` when its slot count differs);
* ``_parse`` and ``_damaged``: a stored document becomes a
  :class:`~shardbill.shardmap.ShardMap`, or a
  :class:`~shardbill.errors.ShardMapError` naming the store and how to repair it.

This module imports no implementation; :mod:`shardbill.mapstore`
re-exports :class:`MapStore`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardbill.errors import (
    ClaimConflictError,
    EpochConflictError,
    ReshardClaimedError,
    ShardMapError,
)
from shardbill.protocols import ClaimStore, MapHistory, MapStore
from shardbill.shardmap import ShardMap

if TYPE_CHECKING:
    from shardbill.mapstore.claim import ReshardClaim

__all__ = ["ClaimStore", "MapHistory", "MapStore"]


def _check_claim_swap(
    store: str, stored: ReshardClaim | None, claim: ReshardClaim, expected_version: int | None
) -> None:
    """The claim's compare-and-set rule every store applies, under its own lock."""
    stored_version = None if stored is None else stored.version
    if stored_version != expected_version or (
        stored_version is not None and claim.version <= stored_version
    ):
        raise ClaimConflictError(
            f"{store}: the reshard claim is at version {stored_version}, not the expected "
            f"{expected_version} (or the new version {claim.version} is not newer): another "
            "resharder changed it; read it again (load_claim()) and decide again"
        )


def _check_claim_allows(store: str, claim: ReshardClaim | None, new_map: ShardMap) -> None:
    """A publish may not replace an unfinished reshard's plan: only its own target passes."""
    if claim is None or claim.state != "moving" or claim.target == new_map:
        return
    raise ReshardClaimedError(
        f"{store}: publishing epoch {new_map.epoch} refused: an unfinished reshard holds the "
        f"claim ({claim.describe()}) and this is not its target map; its fences point at its "
        "own targets: resume it (`shardbill reshard run`) or revert it (`shardbill reshard "
        "revert`) first",
        owner=claim.owner,
        source_epoch=claim.source.epoch,
        target_epoch=claim.target.epoch,
        expires_at=claim.expires_at,
    )


def _check_arguments(new_map: object, expected_epoch: object) -> None:
    if not isinstance(new_map, ShardMap):
        raise ShardMapError(
            f"publish needs a ShardMap, got {type(new_map).__name__}; "
            "build one with ShardMap.create() or ShardMap.from_json()"
        )
    if expected_epoch is not None and (
        not isinstance(expected_epoch, int)
        or isinstance(expected_epoch, bool)
        or expected_epoch < 1
    ):
        raise ShardMapError(
            f"'expected_epoch' must be None (first publish) or an int >= 1: {expected_epoch!r}; "
            "pass the epoch of the map you planned from"
        )


def _check_publish(
    store: str, stored: ShardMap | None, new_map: ShardMap, expected_epoch: int | None
) -> None:
    """The compare-and-set rule every store applies, under its own lock."""
    stored_epoch = None if stored is None else stored.epoch
    if stored_epoch != expected_epoch:
        if stored_epoch is None:
            message = (
                f"{store} holds no map yet, but the publish expected epoch {expected_epoch}; "
                "publish the first map with expected_epoch=None"
            )
        elif expected_epoch is None:
            message = (
                f"{store} already holds epoch {stored_epoch}, but the publish expected an "
                "empty store (expected_epoch=None): another publisher was first; load() the "
                f"map, re-plan from it and publish with expected_epoch={stored_epoch}"
            )
        else:
            message = (
                f"{store} holds epoch {stored_epoch}, not the expected {expected_epoch}: the "
                "map changed since you read it; load() it, re-plan from it and publish with "
                f"expected_epoch={stored_epoch}"
            )
        raise EpochConflictError(
            message,
            store=store,
            stored_epoch=stored_epoch,
            expected_epoch=expected_epoch,
            new_epoch=new_map.epoch,
        )
    if stored is None:
        return
    if new_map.epoch <= stored.epoch:
        raise EpochConflictError(
            f"{store} holds epoch {stored.epoch} and the new map has epoch {new_map.epoch}: "
            "epochs only grow; derive the new map from the stored one (add_shard, remove_shard "
            "and reweight raise the epoch) and publish it",
            store=store,
            stored_epoch=stored.epoch,
            expected_epoch=expected_epoch,
            new_epoch=new_map.epoch,
        )
    if new_map.slots != stored.slots:
        raise ShardMapError(
            f"{store} holds a map of {stored.slots} slots; the new map has {new_map.slots}: "
            "changing the slot count would move almost every key, which no plan can do "
            "online; derive the new map from the stored one"
        )


def _damaged(store: str, where: str, exc: ShardMapError, advice: str) -> ShardMapError:
    error = ShardMapError(f"{store}: the shard map in {where} is damaged: {exc}; {advice}")
    error.__cause__ = exc
    return error


def _parse(
    store: str, where: str, document: str | bytes, epoch: int | None, advice: str
) -> ShardMap:
    """Parse a stored document; any defect is a ShardMapError naming the store."""
    try:
        shard_map = ShardMap.from_json(document, require_balance=False)
    except ShardMapError as exc:
        raise _damaged(store, where, exc, advice) from exc
    if epoch is not None and shard_map.epoch != epoch:
        raise ShardMapError(
            f"{store}: the shard map in {where} is damaged: it is stored as epoch {epoch} but "
            f"its document says epoch {shard_map.epoch}; {advice}"
        )
    return shard_map
