"""A reshard's claim in the map store: its plan, its owner and a lease.

Before a :class:`~shardbill.resharding.Resharder` touches any shard it
records a :class:`ReshardClaim` in the map store (the same store every
writer reads the map from): the source map, the target map, an owner id and
a lease that the owner renews while it works. Stores keep one claim and
change it only by compare-and-set on its ``version``
(``swap_claim(new, expected_version=...)``), so of several resharders at
most one holds it.

The rules a resharder applies to the claim it finds (:func:`decide`) are
kept here, in one place, for every store:

* no claim, or a ``finished`` one: a new plan may start, if it starts from
  the map that claim finished at (the current one);
* an unfinished claim of a **different** plan: refused
  (:class:`~shardbill.errors.ReshardClaimedError` naming the holder), even
  when its lease expired: a crashed reshard is resumed or reverted, never
  replaced, because its fences point at its own targets;
* an unfinished claim of the **same** plan: taken over only when its lease
  expired (or it is this owner's own); a live lease of another owner is
  waited for or refused.

``state`` is ``moving`` while a reshard (forward, or a revert: a revert is a
reshard whose target is the previous assignment at a new epoch) is
unfinished, ``finished`` once every slot verified, and ``aborted`` when it
was undone before any fence (or refused before it changed a shard): then any
plan from the current map may start.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from typing import Final, Literal

import attrs

from shardbill.errors import ReshardClaimedError, ReshardError, ShardMapError
from shardbill.shardmap import ShardMap

__all__ = ["ClaimState", "ReshardClaim", "decide", "new_owner_id"]

ClaimState = Literal["moving", "finished", "aborted"]

MOVING: Final = "moving"
FINISHED: Final = "finished"
ABORTED: Final = "aborted"


def new_owner_id() -> str:
    """An owner id that names the process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@attrs.frozen(kw_only=True)
class ReshardClaim:
    """One reshard's claim: what it moves (``source`` -> ``target``), who runs it, until when.

    Attributes:
        source: the map the reshard moves from.
        target: the map it moves to (``source.epoch < target.epoch``).
        owner: the owner id of the resharder holding the lease.
        expires_at: when the lease expires (Unix time, seconds) unless renewed.
        state: ``moving`` (unfinished), ``finished`` or ``aborted``.
        version: bumped by every change; the stores' compare-and-set compares it.
        reverts: for a revert, the target epoch of the reshard it undoes (else 0).
    """

    source: ShardMap
    target: ShardMap
    owner: str
    expires_at: float
    state: ClaimState = MOVING
    version: int = 1
    reverts: int = 0

    def same_plan(self, source: ShardMap, target: ShardMap) -> bool:
        """Whether this claim moves ``source`` to ``target`` (equal maps, epochs included)."""
        return self.source == source and self.target == target

    def expired(self, now: float | None = None) -> bool:
        """Whether the lease has expired at ``now`` (default: the current time)."""
        return (time.time() if now is None else now) >= self.expires_at

    def describe(self) -> str:
        """A short description for messages: plan, owner and lease."""
        left = self.expires_at - time.time()
        lease = f"lease expires in {left:.0f} s" if left > 0 else f"lease expired {-left:.0f} s ago"
        kind = f"revert of the reshard to epoch {self.reverts}" if self.reverts else "reshard"
        return (
            f"{kind}, epoch {self.source.epoch} -> {self.target.epoch} "
            f"({self.state}), owner {self.owner!r}, {lease}"
        )

    def to_json(self) -> str:
        """The stored document (maps as their own JSON)."""
        return json.dumps(
            {
                "source": json.loads(self.source.to_json()),
                "target": json.loads(self.target.to_json()),
                "owner": self.owner,
                "expires_at": self.expires_at,
                "state": self.state,
                "version": self.version,
                "reverts": self.reverts,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str) -> ReshardClaim:
        """Parse a stored claim.

        Raises:
            ShardMapError: the document is damaged; the message names ``where``.
        """
        try:
            data = json.loads(text)
            state = data["state"]
            if state not in (MOVING, FINISHED, ABORTED):
                raise ValueError(f"'state' must be 'moving', 'finished' or 'aborted': {state!r}")
            return cls(
                source=ShardMap.from_json(json.dumps(data["source"]), require_balance=False),
                target=ShardMap.from_json(json.dumps(data["target"]), require_balance=False),
                owner=str(data["owner"]),
                expires_at=float(data["expires_at"]),
                state=state,
                version=int(data["version"]),
                reverts=int(data.get("reverts", 0)),
            )
        except (ValueError, KeyError, TypeError, ShardMapError) as exc:
            raise ShardMapError(
                f"the reshard claim in {where} is damaged: {exc}; restore it from a backup, "
                "or, if no reshard is unfinished (`shardbill reshard verify` is exact), "
                "delete it"
            ) from exc


def decide(
    stored: ReshardClaim | None,
    *,
    source: ShardMap,
    target: ShardMap,
    owner: str,
    lease_seconds: float,
    now: float,
) -> ReshardClaim:
    """The claim to store for ``owner`` to run ``source`` -> ``target``, given ``stored``.

    Returns:
        The new claim (version ``stored.version + 1``, or 1).

    Raises:
        ReshardClaimedError: another reshard holds the claim (a different
            unfinished plan, or a live lease on the same plan).
        ReshardError: the plan does not start where the last finished
            reshard ended.
    """
    expires = now + lease_seconds
    if stored is None or stored.state == ABORTED:
        return ReshardClaim(
            source=source,
            target=target,
            owner=owner,
            expires_at=expires,
            version=1 if stored is None else stored.version + 1,
        )
    mine = attrs.evolve(stored, owner=owner, expires_at=expires, version=stored.version + 1)
    if stored.same_plan(source, target):
        if stored.state == FINISHED or stored.owner == owner or stored.expired(now):
            return attrs.evolve(mine, state=MOVING) if stored.state == FINISHED else mine
        raise _claimed(
            stored,
            f"the same reshard is running under owner {stored.owner!r}; wait for it (or for "
            "its lease to expire, then run again to take over)",
        )
    if stored.state == MOVING:
        raise _claimed(
            stored,
            "a different plan cannot start before it is finished or reverted, even after "
            "its lease expires (its fences point at its own targets): resume it with "
            "`shardbill reshard run` (no --target) or Resharder.run(), or undo it with "
            "`shardbill reshard revert` (Resharder.revert()); then plan again from the "
            "current map",
        )
    if stored.target.epoch != source.epoch or stored.target.assignment != source.assignment:
        raise ReshardError(
            f"the last reshard finished at epoch {stored.target.epoch}, but this plan starts "
            f"from epoch {source.epoch}; plan again from the current map (shardbill map show)"
        )
    return ReshardClaim(
        source=source,
        target=target,
        owner=owner,
        expires_at=expires,
        version=stored.version + 1,
    )


def _claimed(stored: ReshardClaim, advice: str) -> ReshardClaimedError:
    return ReshardClaimedError(
        f"the map store's reshard claim is held: {stored.describe()}; {advice}",
        owner=stored.owner,
        source_epoch=stored.source.epoch,
        target_epoch=stored.target.epoch,
        expires_at=stored.expires_at,
    )
