"""The shard map: key -> slot -> shard, and the plans that change it.

A key is hashed into one of ``slots`` slots (:mod:`shardbill.keys`), and a
versioned table (:class:`ShardMap`) says which shard owns each slot. The map
is a frozen value: :meth:`ShardMap.add_shard`, :meth:`ShardMap.remove_shard`
and :meth:`ShardMap.reweight` return a new map whose epoch is one higher, and
:meth:`ShardMap.plan_to` lists the slots that change owner between two maps
(:class:`ReshardPlan`).

The assignment rules, all deterministic (same operations, same map):

* **Balance.** Every shard owns ``floor`` or ``ceil`` of its weighted share
  ``slots * weight / total_weight`` (largest-remainder apportionment, computed
  with exact integers; ties go to the shard whose name sorts first). Every
  shard owns at least one slot.
* **Creation.** :meth:`ShardMap.create` gives shards contiguous blocks of slots
  in name order. Keys are already spread uniformly over slots by the hash, so
  contiguity costs nothing in balance and keeps the JSON document tiny.
* **Minimal movement.** A change moves exactly ``sum(max(0, new_quota -
  old_count))`` slots, the least any balanced result allows: only shards above
  their new quota give slots, only shards below it receive, and a shard that
  keeps its count neither gives nor receives. Where a share is fractional and
  the ``ceil`` could go to several shards, it goes first to shards that already
  hold more than the ``floor`` (each such choice saves one move), then by
  largest remainder, then by name.
* **Which slots move.** Each slot has a fixed pseudo-random priority
  (xxh3-64 of the slot number under :data:`MOVE_ORDER_SEED`); a donor gives
  up the slots it holds in priority order, and receivers (in name order) take
  consecutive runs of the donated slots in that same order. So the moved slots
  are scattered over the slot range instead of being one block per donor.
  Moves are executed in slot order, so scattering keeps every donor and every
  receiver busy through the whole execution (copy load is shared, and a
  half-done resharding has taken a proportional bite from every donor)
  instead of draining one donor after another; each receiver also gets a
  proportional mix of every donor's slots.

Example:
    >>> m1 = ShardMap.create(["a", "b", "c"], slots=12)
    >>> m1.slot_counts
    mappingproxy({'a': 4, 'b': 4, 'c': 4})
    >>> m2 = m1.add_shard("d")
    >>> (m2.epoch, dict(m2.slot_counts))
    (2, {'a': 3, 'b': 3, 'c': 3, 'd': 3})
    >>> len(m1.plan_to(m2).moves)
    3
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence, Sized
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final

import attrs
from xxhash import xxh3_64_intdigest

from shardbill._parsing import json_loads
from shardbill.errors import InvalidInputError, ShardMapError
from shardbill.keys import (
    FAST_INT_LIMIT,
    INT_PREFIXES,
    KEY_HASH_SEED,
    KEY_SCHEME,
    MAX_SLOTS,
    STR_TAG,
    Key,
    encode_key,
)

__all__ = [
    "DEFAULT_SLOTS",
    "JSON_FORMAT",
    "JSON_VERSION",
    "MOVE_ORDER_SEED",
    "ReshardPlan",
    "ShardChange",
    "ShardMap",
    "SlotMove",
]

DEFAULT_SLOTS: Final[int] = 16384
"""Default slot count, fine-grained resharding (1% of a shard at 160 shards), 128 KiB table."""

MOVE_ORDER_SEED: Final[int] = 0x5348_4152_444D_4F56
"""Seed of the per-slot priority that decides which slots a donor gives up. Pinned."""

JSON_FORMAT: Final[str] = "shardbill-shard-map"
"""The ``format`` field of a shard map document."""

JSON_VERSION: Final[int] = 1
"""The ``version`` field of a shard map document this module writes and reads."""

MAX_JSON_CHARS: Final[int] = 64 * 1024 * 1024
"""The longest shard map document :meth:`ShardMap.from_json` reads (64 Mi characters)."""

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NAME_RULE: Final = (
    "1 to 64 characters: a letter or digit, then letters, digits, '_', '.' or '-' "
    "(names end up in file names and SQL values)"
)
_JSON_FIELDS: Final = frozenset(
    {"epoch", "format", "key_scheme", "runs", "shards", "slots", "version"}
)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_name(name: object, field: str) -> str:
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise ShardMapError(f"{field} must be {_NAME_RULE}: {name!r}; rename the shard")
    return name


def _int_at_least(value: object, low: int, high: int | None = None) -> int | None:
    """``int(value)`` when it is an int (not bool) in ``[low, high]``, else None."""
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= low
        and (high is None or value <= high)
    ):
        return int(value)
    return None


def _check_weight(weight: object, field: str) -> int:
    checked = _int_at_least(weight, 1)
    if checked is None:
        raise ShardMapError(
            f"{field} must be a positive int (not bool or float): {weight!r}; "
            "use 1 for a standard shard, 2 for one twice as big"
        )
    return checked


def _check_slots(slots: object, field: str = "'slots'") -> int:
    checked = _int_at_least(slots, 1, MAX_SLOTS)
    if checked is None:
        raise ShardMapError(
            f"{field} must be an int in [1, {MAX_SLOTS}]: {slots!r}; 16384 is the default"
        )
    return checked


def _check_epoch(epoch: object, field: str = "'epoch'") -> int:
    checked = _int_at_least(epoch, 1)
    if checked is None:
        raise ShardMapError(f"{field} must be an int >= 1: {epoch!r}; epochs start at 1")
    return checked


def _normalize_weights(shards: object, field: str) -> dict[str, int]:
    """Validate a list of names or a name -> weight mapping; return it sorted by name."""
    if isinstance(shards, Mapping):
        pairs = list(shards.items())
    elif isinstance(shards, str | bytes) or not isinstance(shards, Iterable):
        raise ShardMapError(
            f"{field} must be a list of shard names or a mapping name -> weight: {shards!r}; "
            "e.g. ['s1', 's2'] or {'s1': 1, 's2': 2}"
        )
    else:
        pairs = [(name, 1) for name in shards]
    if not pairs:
        raise ShardMapError(f"{field} is empty; a shard map needs at least one shard")
    weights: dict[str, int] = {}
    for name, weight in pairs:
        _check_name(name, f"shard name in {field}")
        if name in weights:
            raise ShardMapError(f"{field} names shard {name!r} twice; list each shard once")
        weights[name] = _check_weight(weight, f"weight of shard {name!r}")
    return dict(sorted(weights.items()))


def _quotas(
    weights: Mapping[str, int], slots: int, current: Mapping[str, int] | None
) -> dict[str, int]:
    """Apportion ``slots`` by weight: each quota is floor or ceil of the exact share.

    The ``ceil`` values go first to shards that currently hold more than their
    floor (each such choice saves a move), then by largest remainder, then by name.
    """
    if len(weights) > slots:
        raise ShardMapError(
            f"'slots' ({slots}) is smaller than the number of shards ({len(weights)}); "
            "every shard needs at least one slot: raise 'slots' (16384 is the default)"
        )
    total = sum(weights.values())
    quotas = {name: slots * weight // total for name, weight in weights.items()}
    remainders = {name: slots * weight % total for name, weight in weights.items()}
    extra = slots - sum(quotas.values())
    held = current or {}

    def preference(name: str) -> tuple[int, int, str]:
        keeps_extra = 0 if held.get(name, 0) > quotas[name] else 1
        return (keeps_extra, -remainders[name], name)

    candidates = sorted((name for name in weights if remainders[name]), key=preference)
    for name in candidates[:extra]:
        quotas[name] += 1
    empty = [name for name, quota in quotas.items() if quota == 0]
    if empty:
        name = empty[0]
        raise ShardMapError(
            f"shard {name!r} (weight {weights[name]} of total {total}) would own no slot "
            f"out of {slots}: raise 'slots' or its weight"
        )
    return quotas


@lru_cache(maxsize=4)
def _move_order(slots: int) -> tuple[int, ...]:
    """Every slot, in the fixed pseudo-random order in which donors give slots up."""
    return tuple(
        sorted(
            range(slots),
            key=lambda slot: (xxh3_64_intdigest(slot.to_bytes(4, "big"), MOVE_ORDER_SEED), slot),
        )
    )


def _runs(assignment: Sequence[str]) -> list[tuple[int, int, str]]:
    """Collapse a slot -> shard sequence into ``(start, end_exclusive, shard)`` runs."""
    runs: list[tuple[int, int, str]] = []
    start = 0
    for slot in range(1, len(assignment) + 1):
        if slot == len(assignment) or assignment[slot] != assignment[start]:
            runs.append((start, slot, assignment[start]))
            start = slot
    return runs


@attrs.frozen(kw_only=True)
class SlotMove:
    """One slot changing owner in a :class:`ReshardPlan`.

    Attributes:
        slot: the slot number.
        source: the shard that owns the slot in the source map.
        target: the shard that owns it in the target map.
    """

    slot: int
    source: str
    target: str


@attrs.frozen(kw_only=True)
class ShardChange:
    """One shard's slot count before and after a :class:`ReshardPlan`.

    Attributes:
        shard: the shard name.
        before: slots owned in the source map (0 for a new shard).
        after: slots owned in the target map (0 for a removed shard).
    """

    shard: str
    before: int
    after: int

    @property
    def gives(self) -> int:
        """Slots this shard gives up (``max(0, before - after)``)."""
        return max(0, self.before - self.after)

    @property
    def receives(self) -> int:
        """Slots this shard receives (``max(0, after - before)``)."""
        return max(0, self.after - self.before)


def _check_moves(instance: ReshardPlan, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(m, SlotMove) for m in value):
        raise ShardMapError(f"'moves' must be a tuple of SlotMove: {value!r}")
    previous = -1
    for move in value:
        if not previous < move.slot < instance.slots:
            raise ShardMapError(
                f"'moves' must be sorted by slot, each slot once, within [0, {instance.slots}):"
                f" {move!r}; build plans with ShardMap.plan_to"
            )
        if move.source == move.target:
            raise ShardMapError(f"'moves' holds a move to the same shard: {move!r}")
        previous = move.slot


@attrs.frozen(kw_only=True)
class ReshardPlan:
    """The slots that change owner from one shard map to the next (build with ``plan_to``).

    A plan only goes forward: its target epoch is greater than its source epoch
    (:meth:`ShardMap.plan_to` refuses anything else), because shards fence
    writers by epoch and an epoch that went back would let stale writers in.

    Attributes:
        slots: the slot count of both maps.
        source_epoch: the epoch of the map the plan starts from.
        target_epoch: the epoch of the map the plan leads to.
        moves: one :class:`SlotMove` per slot that changes owner, sorted by slot.
        changes: per-shard slot counts before and after, sorted by shard name,
            for every shard in either map.

    Example:
        >>> old = ShardMap.create(["a", "b"], slots=8)
        >>> plan = old.plan_to(old.add_shard("c"))
        >>> [(m.slot, m.source, m.target) for m in plan.moves]
        [(2, 'a', 'c'), (5, 'b', 'c')]
        >>> plan.moved_fraction
        0.25
    """

    slots: int = attrs.field(validator=lambda _i, _a, v: _check_slots(v))
    source_epoch: int = attrs.field(validator=lambda _i, _a, v: _check_epoch(v, "'source_epoch'"))
    target_epoch: int = attrs.field(validator=lambda _i, _a, v: _check_epoch(v, "'target_epoch'"))
    moves: tuple[SlotMove, ...] = attrs.field(validator=_check_moves)
    changes: tuple[ShardChange, ...]

    @property
    def moved_fraction(self) -> float:
        """Moved slots / all slots, in ``[0, 1]`` (roughly the fraction of rows that move)."""
        return len(self.moves) / self.slots

    @property
    def before(self) -> Mapping[str, int]:
        """Slot count per shard in the source map (0 for shards the plan adds)."""
        return MappingProxyType({c.shard: c.before for c in self.changes})

    @property
    def after(self) -> Mapping[str, int]:
        """Slot count per shard in the target map (0 for shards the plan removes)."""
        return MappingProxyType({c.shard: c.after for c in self.changes})

    @property
    def flows(self) -> Mapping[tuple[str, str], int]:
        """Number of moved slots per ``(source, target)`` pair, sorted by pair."""
        counts = Counter((m.source, m.target) for m in self.moves)
        return MappingProxyType(dict(sorted(counts.items())))

    def summary(self) -> str:
        """Return a small readable table of the plan.

        Returns:
            Text like::

                reshard plan: epoch 1 -> 2, 528 of 16384 slots move (3.22%)
                shard  before  after  gives  receives
                s00       547    529     18         0
                ...
        """
        head = (
            f"reshard plan: epoch {self.source_epoch} -> {self.target_epoch}, "
            f"{len(self.moves)} of {self.slots} slots move ({self.moved_fraction:.2%})"
        )
        rows = [("shard", "before", "after", "gives", "receives")]
        rows += [
            (c.shard, str(c.before), str(c.after), str(c.gives), str(c.receives))
            for c in self.changes
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = [head]
        for row in rows:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)


def _convert_weights(value: object) -> tuple[tuple[str, int], ...]:
    """Accept a mapping or a sequence of (name, weight) pairs; return sorted pairs."""
    if isinstance(value, tuple | list) and all(
        isinstance(pair, tuple) and len(pair) == 2 for pair in value
    ):
        names = [pair[0] for pair in value]
        for name in names:
            if names.count(name) > 1:
                raise ShardMapError(f"'weights' names shard {name!r} twice; list each once")
        value = dict(value)
    if not isinstance(value, Mapping):
        raise ShardMapError(
            f"'weights' must be a mapping shard name -> weight: {value!r}; "
            "build maps with ShardMap.create"
        )
    return tuple(_normalize_weights(value, "'weights'").items())


@attrs.frozen(kw_only=True, repr=False, cache_hash=True)
class ShardMap:
    """Which shard owns each slot: a frozen, hashable value with an epoch.

    Build one with :meth:`create` or :meth:`from_json`, change it with
    :meth:`add_shard`, :meth:`remove_shard` and :meth:`reweight` (each returns
    a new map, epoch + 1), compare two with :meth:`plan_to`. Two maps are equal
    when slot count, epoch, weights and assignment are equal.

    The constructor (``ShardMap(slots=..., epoch=..., weights=..., assignment=...)``)
    checks that every slot has a known owner and that every shard owns a slot,
    but not balance: maps from :meth:`create` and the operations are balanced
    by construction, and :meth:`is_balanced` tells.

    Attributes:
        slots: the number of slots.
        epoch: the version of the map, 1 for a new map; it only grows.

    Example:
        >>> m = ShardMap.create({"a": 1, "b": 3}, slots=16)
        >>> dict(m.slot_counts)
        {'a': 4, 'b': 12}
        >>> m.shard_for(42) in m.shards
        True
    """

    slots: int = attrs.field(validator=lambda _i, _a, v: _check_slots(v))
    epoch: int = attrs.field(validator=lambda _i, _a, v: _check_epoch(v))
    _weights: tuple[tuple[str, int], ...] = attrs.field(alias="weights", converter=_convert_weights)
    _assignment: tuple[str, ...] = attrs.field(alias="assignment")
    _shards_view: Mapping[str, int] = attrs.field(
        init=False, eq=False, hash=False, repr=False, alias="_shards_view"
    )
    _counts: Mapping[str, int] = attrs.field(
        init=False, eq=False, hash=False, repr=False, alias="_counts"
    )

    def __attrs_post_init__(self) -> None:
        weights = dict(self._weights)
        assignment = self._assignment
        if not isinstance(assignment, tuple) or len(assignment) != self.slots:
            size = len(assignment) if isinstance(assignment, Sized) else "?"
            raise ShardMapError(
                f"'assignment' must be a tuple of {self.slots} shard names (one per slot), "
                f"got {type(assignment).__name__} of length {size}"
            )
        counts = Counter(assignment)
        unknown = sorted(str(name) for name in counts if name not in weights)
        if unknown:
            raise ShardMapError(
                f"'assignment' names shards that have no weight: {unknown}; "
                "add them to 'weights' or give their slots to a known shard"
            )
        idle = [name for name in weights if name not in counts]
        if idle:
            raise ShardMapError(
                f"shards {idle} have a weight but own no slot; give each shard at least one "
                "slot or remove it from 'weights'"
            )
        # Share one str object per shard name across the tuple (memory, identity compares).
        canonical = {name: name for name in weights}
        object.__setattr__(self, "_assignment", tuple(canonical[n] for n in assignment))
        object.__setattr__(self, "_shards_view", MappingProxyType(weights))
        object.__setattr__(
            self, "_counts", MappingProxyType({name: counts[name] for name in weights})
        )

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickle the four defining fields; the views are rebuilt (and re-checked) on load.
        return (_restore_map, (self.slots, self.epoch, self._weights, self._assignment))

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def create(
        cls, shards: Sequence[str] | Mapping[str, int], *, slots: int = DEFAULT_SLOTS
    ) -> ShardMap:
        """Build a balanced map at epoch 1.

        Args:
            shards: a list of shard names (weight 1 each) or a mapping name -> positive
                int weight. Names are 1 to 64 characters: a letter or digit, then letters,
                digits, ``_``, ``.`` or ``-``.
            slots: the slot count, at least the number of shards, at most 2**20.

        Returns:
            A map where each shard owns a contiguous block of slots (in name order)
            whose size is floor or ceil of ``slots * weight / total_weight``.

        Raises:
            ShardMapError: a name, weight or the slot count is invalid, a name repeats,
                or a shard would own no slot.
        """
        slots = _check_slots(slots)
        weights = _normalize_weights(shards, "'shards'")
        quotas = _quotas(weights, slots, None)
        assignment: list[str] = []
        for name, quota in quotas.items():
            assignment.extend([name] * quota)
        return cls(slots=slots, epoch=1, weights=weights, assignment=tuple(assignment))

    # -- lookups (hot path: no attrs machinery, one hash and one tuple index) ------------

    def slot_for(self, key: Key) -> int:
        """Return the slot of ``key`` (see :mod:`shardbill.keys`).

        Raises:
            KeyTypeError: the key has no canonical encoding.
        """
        if type(key) is int and 0 <= key < FAST_INT_LIMIT:
            size = (key.bit_length() >> 3) + 1
            data = INT_PREFIXES[size] + key.to_bytes(size, "big")
        elif type(key) is str and key.isascii() and len(key) < 2**32:  # encode_key's bytes
            data = STR_TAG + len(key).to_bytes(4, "big") + key.encode("ascii")
        else:
            data = encode_key(key)
        return (xxh3_64_intdigest(data, KEY_HASH_SEED) * self.slots) >> 64

    def shard_for(self, key: Key) -> str:
        """Return the name of the shard that owns ``key``.

        Raises:
            KeyTypeError: the key has no canonical encoding.
        """
        if type(key) is int and 0 <= key < FAST_INT_LIMIT:
            size = (key.bit_length() >> 3) + 1
            data = INT_PREFIXES[size] + key.to_bytes(size, "big")
        else:
            data = encode_key(key)
        return self._assignment[(xxh3_64_intdigest(data, KEY_HASH_SEED) * self.slots) >> 64]

    def owner(self, slot: int) -> str:
        """Return the shard that owns ``slot``.

        Raises:
            ShardMapError: ``slot`` is not an int in ``[0, slots)``.
        """
        # The exact-int test first: it is the hot path's case, and cheaper than _is_int.
        if (type(slot) is not int and not _is_int(slot)) or not 0 <= slot < self.slots:
            raise ShardMapError(f"'slot' must be an int in [0, {self.slots}): {slot!r}")
        return self._assignment[slot]

    # -- views ----------------------------------------------------------------------------

    @property
    def shards(self) -> Mapping[str, int]:
        """Shard name -> weight, sorted by name (a read-only view)."""
        return self._shards_view

    @property
    def assignment(self) -> tuple[str, ...]:
        """Owner of every slot, as a tuple of shard names indexed by slot number."""
        return self._assignment

    @property
    def slot_counts(self) -> Mapping[str, int]:
        """Shard name -> number of slots it owns, sorted by name (a read-only view)."""
        return self._counts

    def slots_of(self, shard: str) -> tuple[int, ...]:
        """Return the slots ``shard`` owns, ascending.

        Raises:
            ShardMapError: the shard is not in the map.
        """
        self._require(shard)
        return tuple(slot for slot, owner in enumerate(self._assignment) if owner == shard)

    def quotas(self) -> Mapping[str, tuple[int, int]]:
        """Shard name -> ``(floor, ceil)`` of its exact weighted share of the slots."""
        total = sum(self._shards_view.values())
        result = {}
        for name, weight in self._shards_view.items():
            low, rest = divmod(self.slots * weight, total)
            result[name] = (low, low + (1 if rest else 0))
        return MappingProxyType(result)

    def is_balanced(self) -> bool:
        """True when every shard owns floor or ceil of its weighted share of the slots."""
        return all(low <= self._counts[name] <= high for name, (low, high) in self.quotas().items())

    def __repr__(self) -> str:
        return (
            f"ShardMap(epoch={self.epoch}, slots={self.slots}, shards={dict(self._shards_view)!r})"
        )

    # -- changes --------------------------------------------------------------------------

    def add_shard(self, name: str, weight: int = 1) -> ShardMap:
        """Return a new map (epoch + 1) with shard ``name`` added, moving the fewest slots.

        The new shard receives its quota from the shards now above theirs.

        Raises:
            ShardMapError: the name is invalid or already in the map, the weight is not a
                positive int, or a shard would own no slot.
        """
        _check_name(name, "'name'")
        if name in self._shards_view:
            raise ShardMapError(
                f"shard {name!r} is already in the map; use reweight() to change its weight"
            )
        weights = dict(self._shards_view)
        weights[name] = _check_weight(weight, "'weight'")
        return self._rebalanced(weights)

    def remove_shard(self, name: str) -> ShardMap:
        """Return a new map (epoch + 1) without shard ``name`` (any shard, not only the last).

        Its slots go to the shards now below their quota; no other slot moves.

        Raises:
            ShardMapError: the shard is not in the map, or it is the only one.
        """
        self._require(name)
        if len(self._shards_view) == 1:
            raise ShardMapError(
                f"cannot remove {name!r}: it is the only shard; add another shard first"
            )
        weights = {n: w for n, w in self._shards_view.items() if n != name}
        return self._rebalanced(weights)

    def reweight(self, weights: Mapping[str, int]) -> ShardMap:
        """Return a new map (epoch + 1) with new weights for some shards, moving the fewest slots.

        Args:
            weights: shard name -> new positive int weight; shards not named keep theirs.

        Raises:
            ShardMapError: the mapping is empty, names a shard not in the map (use
                :meth:`add_shard`), a weight is invalid, or a shard would own no slot.
        """
        if not isinstance(weights, Mapping) or not weights:
            raise ShardMapError(
                f"'weights' must be a non-empty mapping shard name -> weight: {weights!r}"
            )
        new = dict(self._shards_view)
        for name, weight in weights.items():
            self._require(name)
            new[name] = _check_weight(weight, f"weight of shard {name!r}")
        return self._rebalanced(new)

    def with_epoch(self, epoch: int) -> ShardMap:
        """Return this assignment under another epoch (e.g. to roll a resharding back).

        Rolling back is going forward to the old assignment:
        ``old.with_epoch(new.epoch + 1)``.
        """
        return attrs.evolve(self, epoch=_check_epoch(epoch))

    def _require(self, name: object) -> None:
        if name not in self._shards_view:
            raise ShardMapError(
                f"shard {name!r} is not in the map (shards: {sorted(self._shards_view)})"
            )

    def _rebalanced(self, weights: Mapping[str, int]) -> ShardMap:
        weights = dict(sorted(weights.items()))
        counts = self._counts
        quotas = _quotas(weights, self.slots, counts)
        surplus = {n: c - quotas.get(n, 0) for n, c in counts.items() if c > quotas.get(n, 0)}
        donated: list[int] = []
        assignment = self._assignment
        for slot in _move_order(self.slots):
            owner = assignment[slot]
            left = surplus.get(owner, 0)
            if left:
                donated.append(slot)
                surplus[owner] = left - 1
        new = list(assignment)
        taken = 0
        for name, quota in quotas.items():
            need = quota - counts.get(name, 0)
            for slot in donated[taken : taken + max(need, 0)]:
                new[slot] = name
            taken += max(need, 0)
        return ShardMap(
            slots=self.slots, epoch=self.epoch + 1, weights=weights, assignment=tuple(new)
        )

    # -- plans ----------------------------------------------------------------------------

    def plan_to(self, other: ShardMap) -> ReshardPlan:
        """Return the plan that turns this map into ``other``.

        Args:
            other: the target map: same slot count, higher epoch.

        Returns:
            A :class:`ReshardPlan` listing every slot whose owner differs.

        Raises:
            ShardMapError: ``other`` is not a ShardMap, has another slot count (keys would
                land in other slots: that is a rehash of every row, not a plan), or has an
                epoch not greater than this one (epochs only grow; to undo a change, plan
                to ``old.with_epoch(new.epoch + 1)``).
        """
        if not isinstance(other, ShardMap):
            raise ShardMapError(f"plan_to needs a ShardMap, got {type(other).__name__}")
        if other.slots != self.slots:
            raise ShardMapError(
                f"cannot plan from {self.slots} slots to {other.slots} slots: a key's slot "
                "depends on the slot count, so every row would move; keep the slot count "
                "and add, remove or reweight shards instead"
            )
        if other.epoch <= self.epoch:
            raise ShardMapError(
                f"target epoch {other.epoch} is not greater than source epoch {self.epoch}: "
                "epochs only grow (writers are fenced by epoch); build the target with "
                "add_shard/remove_shard/reweight, or with_epoch(...) to roll back"
            )
        moves = tuple(
            SlotMove(slot=slot, source=a, target=b)
            for slot, (a, b) in enumerate(zip(self._assignment, other._assignment, strict=True))
            if a != b
        )
        names = sorted(set(self._counts) | set(other._counts))
        changes = tuple(
            ShardChange(shard=n, before=self._counts.get(n, 0), after=other._counts.get(n, 0))
            for n in names
        )
        return ReshardPlan(
            slots=self.slots,
            source_epoch=self.epoch,
            target_epoch=other.epoch,
            moves=moves,
            changes=changes,
        )

    # -- JSON -----------------------------------------------------------------------------

    def to_json(self) -> str:
        """Return the map as a JSON document; equal maps give byte-equal documents.

        Keys are sorted, separators fixed, one run of slots per line::

            {
             "epoch": 1,
             "format": "shardbill-shard-map",
             "key_scheme": "shardbill-key-v1:xxh3_64:0x534841524442494c:lemire",
             "runs": [
              [0, 5462, "a"],
              [5462, 10923, "b"],
              [10923, 16384, "c"]
             ],
             "shards": {"a": 1, "b": 1, "c": 1},
             "slots": 16384,
             "version": 1
            }

        ``runs`` are ``[start, end_exclusive, shard]``, ascending, covering every slot once.
        """
        runs = ",\n".join(
            "  " + json.dumps([start, end, name]) for start, end, name in _runs(self._assignment)
        )
        shards = json.dumps(dict(self._shards_view), sort_keys=True)
        return (
            "{\n"
            f' "epoch": {self.epoch},\n'
            f' "format": {json.dumps(JSON_FORMAT)},\n'
            f' "key_scheme": {json.dumps(KEY_SCHEME)},\n'
            f' "runs": [\n{runs}\n ],\n'
            f' "shards": {shards},\n'
            f' "slots": {self.slots},\n'
            f' "version": {JSON_VERSION}\n'
            "}\n"
        )

    @classmethod
    def from_json(cls, text: str | bytes, *, require_balance: bool = True) -> ShardMap:
        """Read a map written by :meth:`to_json` (or edited by hand), checking everything.

        Args:
            text: the JSON document.
            require_balance: refuse a map in which a shard owns more than the ceil or
                less than the floor of its weighted share (True by default). Pass False
                to load a hand-placed map (e.g. a hot slot parked on its own shard);
                every slot must still be owned exactly once by a known shard, and the
                next add/remove/reweight rebalances it with the fewest moves.

        Returns:
            The map; ``ShardMap.from_json(m.to_json()) == m``.

        Raises:
            ShardMapError: the text is not JSON, the format, version or key scheme is
                not this one, a field is missing, unknown or has a bad value, runs
                overlap or leave slots unowned, a run names an unknown shard, a shard
                owns no slot, or (with ``require_balance``) the map is unbalanced.
        """
        try:
            # Bounded size and depth; a key twice in one object is refused.
            doc = json_loads(text, max_chars=MAX_JSON_CHARS, parse_float=float)
        except InvalidInputError as exc:
            raise ShardMapError(f"shard map document cannot be read: {exc}") from None
        except ValueError as exc:
            raise ShardMapError(f"shard map document is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ShardMapError(
                f"shard map document must be a JSON object, got {type(doc).__name__}"
            )
        missing = sorted(_JSON_FIELDS - doc.keys())
        if missing:
            raise ShardMapError(f"shard map document lacks field(s) {missing}")
        extra = sorted(doc.keys() - _JSON_FIELDS)
        if extra:
            raise ShardMapError(
                f"shard map document has unknown field(s) {extra}; remove them "
                f"(known: {sorted(_JSON_FIELDS)})"
            )
        if doc["format"] != JSON_FORMAT:
            raise ShardMapError(f"'format' must be {JSON_FORMAT!r}: {doc['format']!r}")
        if doc["version"] != JSON_VERSION or not _is_int(doc["version"]):
            raise ShardMapError(
                f"'version' {doc['version']!r} is not supported (this shardbill reads version "
                f"{JSON_VERSION}); upgrade shardbill or rewrite the map"
            )
        if doc["key_scheme"] != KEY_SCHEME:
            raise ShardMapError(
                f"'key_scheme' {doc['key_scheme']!r} differs from this shardbill's "
                f"{KEY_SCHEME!r}: keys would land in other slots; use the shardbill that "
                "wrote the map"
            )
        slots = _check_slots(doc["slots"], "'slots' in the shard map document")
        epoch = _check_epoch(doc["epoch"], "'epoch' in the shard map document")
        if not isinstance(doc["shards"], dict):
            raise ShardMapError(f"'shards' must be an object name -> weight: {doc['shards']!r}")
        weights = _normalize_weights(doc["shards"], "'shards' in the shard map document")
        assignment = _assignment_from_runs(doc["runs"], slots, weights)
        shard_map = cls(slots=slots, epoch=epoch, weights=weights, assignment=assignment)
        if require_balance and not shard_map.is_balanced():
            bad = [
                f"{name} owns {shard_map._counts[name]}, share {low}..{high}"
                for name, (low, high) in shard_map.quotas().items()
                if not low <= shard_map._counts[name] <= high
            ]
            raise ShardMapError(
                f"shard map is unbalanced ({'; '.join(bad)}); fix the runs, or load it with "
                "require_balance=False if the placement is deliberate"
            )
        return shard_map


def _restore_map(
    slots: int, epoch: int, weights: tuple[tuple[str, int], ...], assignment: tuple[str, ...]
) -> ShardMap:
    return ShardMap(slots=slots, epoch=epoch, weights=weights, assignment=assignment)


def _assignment_from_runs(runs: object, slots: int, weights: Mapping[str, int]) -> tuple[str, ...]:
    if not isinstance(runs, list) or not runs:
        raise ShardMapError(f"'runs' must be a non-empty list of [start, end, shard]: {runs!r}")
    parsed: list[tuple[int, int, str]] = []
    for run in runs:
        if (
            not isinstance(run, list)
            or len(run) != 3
            or not _is_int(run[0])
            or not _is_int(run[1])
            or not isinstance(run[2], str)
        ):
            raise ShardMapError(
                f"each run must be [start, end_exclusive, shard] with int bounds: {run!r}"
            )
        start, end, name = run
        if not 0 <= start < end <= slots:
            raise ShardMapError(
                f"run {run!r} is out of range: need 0 <= start < end <= slots ({slots})"
            )
        if name not in weights:
            raise ShardMapError(
                f"run {run!r} names shard {name!r}, which is not in 'shards' "
                f"({sorted(weights)}); add it there with a weight or fix the name"
            )
        parsed.append((start, end, name))
    parsed.sort()
    owners: list[str] = []
    expected = 0
    for index, (start, end, name) in enumerate(parsed):
        if start < expected:
            prev = list(parsed[index - 1])
            raise ShardMapError(
                f"slots {start}..{min(end, expected) - 1} are owned twice (runs {prev} and "
                f"{[start, end, name]}); each slot needs exactly one owner"
            )
        if start > expected:
            raise ShardMapError(
                f"slots {expected}..{start - 1} are owned by no run; each slot needs exactly "
                "one owner"
            )
        owners.extend([name] * (end - start))
        expected = end
    if expected != slots:
        raise ShardMapError(
            f"slots {expected}..{slots - 1} are owned by no run; each slot needs exactly one owner"
        )
    return tuple(owners)
