"""Deliberately broken variants of shardbill that the simulation must catch (ALL of them here).

Each mutation removes one safeguard by monkeypatching, the way a careless
refactoring would; ``tests/simulation/test_simulation.py`` runs the
simulation against each and fails if it is not caught within the CI budget.
They are the only part of the simulation that touches private names (the
safeguard is private by nature), so when the writer, reader or resharder is
rewritten, this file is the one to adapt: keep every mutation, aim it at the
new place of its safeguard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import pytest

import shardbill.writer.extraction
from shardbill import AggregateRow, AggregationWriter, Reader, WriterSettings
from shardbill.errors import FencedError
from shardbill.resharding import Resharder
from shardbill.rules import Charge
from shardbill.writer.planning import IdScope


@attrs.frozen
class Mutation:
    """A safeguard removed, and how."""

    name: str
    removes: str
    apply: Callable[[pytest.MonkeyPatch], None]


def _skip_fence_check(mp: pytest.MonkeyPatch) -> None:
    original = AggregationWriter._fence

    def no_fence(self: Any, cursor: Any, dialect: Any, shard: str, slots: Sequence[int]) -> Any:
        try:
            return original(self, cursor, dialect, shard, slots)
        except FencedError:
            return {}, {}, frozenset()  # write on, whoever owns the slot now

    mp.setattr(AggregationWriter, "_fence", no_fence)


def _skip_ledger_copy(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(Resharder, "_copy_ledger", lambda self, move, throttle: None)


def _skip_peer_check(mp: pytest.MonkeyPatch) -> None:
    original = AggregationWriter._peer_ledger

    def no_peer(self: Any, units: Any, incoming: Any) -> Any:
        return {}, {}, original(self, units, incoming)[2]  # the fence's states stay

    mp.setattr(AggregationWriter, "_peer_ledger", no_peer)


def _unchecked_read(mp: pytest.MonkeyPatch) -> None:
    """Reader.rows() without its re-check: a move step during the read goes unseen."""
    from shardbill import reader as module

    def rows(
        self: Any,
        table: str,
        account: Any,
        *,
        where: Mapping[str, Any] | None = None,
        replica: bool = False,
    ) -> list[AggregateRow]:
        spec = self._table(table)
        filters = {self._shard_key_column(spec): account, **(where or {})}
        self._check_filters(spec, filters)
        shard_map = self.shard_map
        slot = shard_map.slot_for(account)
        shard, state, peer, _ = self._locate(shard_map.owner(slot), slot, spec, replica)
        self._gap("rows:located")
        source_rows: dict[Any, list[int]] = {}
        if state == module.SlotState.INCOMING and peer:
            source_rows = self._raw_rows(peer, spec, filters, slots=(slot,), replica=replica)[slot]
        self._gap("rows:source")
        with self._snapshot(shard, replica=replica) as (cursor, dialect):
            progress = self._progress(cursor, dialect, spec.name, (slot,))
            own = self._raw_rows_in(cursor, dialect, spec, filters, slots=None)
        self._gap("rows:target")
        merged: dict[Any, list[int]] = {}
        for found in own.values():
            module._merge_into(merged, found, spec)
        module._merge_into(merged, module._unmerged(source_rows, progress.get(slot), spec), spec)
        return [
            AggregateRow(
                key=dict(zip(spec.key_names, key, strict=True)),
                measures=self._measures(spec, values),
            )
            for key, values in sorted(merged.items())
        ]

    mp.setattr(Reader, "rows", rows)


def _drop_overflow_check(mp: pytest.MonkeyPatch) -> None:
    """No range check in Python at all: of a charge, of an event's own sum, of a row's sum."""
    from shardbill.writer import aggregation as writer
    from shardbill.writer import planning as batching

    # The compiled fast path refuses out-of-range values and hands them to the
    # reference path, whose range check reads these module names.
    mp.setattr(shardbill.writer.extraction, "BIGINT_MAX", 2**80)
    mp.setattr(shardbill.writer.extraction, "BIGINT_MIN", -(2**80))
    mp.setattr(batching, "_own_overflow", lambda event_id, event, tables: None)
    mp.setattr(batching, "find_overflows", lambda units, current, tables: (list(units), {}))
    mp.setattr(writer, "find_overflows", lambda units, current, tables: (list(units), {}))


def _fold_nothing(mp: pytest.MonkeyPatch) -> None:
    """The writer takes every charge of a call as one more part of its event (no folding)."""
    from shardbill.writer import aggregation as module

    original = module.plan_batch

    def plan_batch(items: Iterable[Any], **kw: Any) -> Any:
        batch = list(items)
        by_event: dict[str, list[int]] = {}
        for i, item in enumerate(batch):
            if isinstance(item, Charge):
                by_event.setdefault(item.event_id, []).append(i)
        for indexes in by_event.values():
            for part, i in enumerate(indexes):
                batch[i] = attrs.evolve(batch[i], part=part, parts=len(indexes))
        return original(batch, **kw)

    mp.setattr(module, "plan_batch", plan_batch)


def _skip_identity_claim(mp: pytest.MonkeyPatch) -> None:
    """Every writer compares fingerprints per slot only (the old, per-account scope)."""
    original = AggregationWriter.__init__

    def init(self: Any, *args: Any, settings: WriterSettings | None = None, **kw: Any) -> None:
        settings = attrs.evolve(settings or WriterSettings(), id_scope=IdScope.PER_ACCOUNT)
        original(self, *args, settings=settings, **kw)

    mp.setattr(AggregationWriter, "__init__", init)


def _skip_records_move(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(Resharder, "_move_records", lambda self, moves, target: None)


def _skip_home_check(mp: pytest.MonkeyPatch) -> None:
    from shardbill.corrections import store

    mp.setattr(store, "check_home", lambda cursor, dialect, system, shard, slot: None)


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        name="skip-fence-check",
        removes="the writer's slot-ownership check inside each transaction",
        apply=_skip_fence_check,
    ),
    Mutation(
        name="skip-ledger-copy",
        removes="the resharder's copy of a moving slot's ledger to its target",
        apply=_skip_ledger_copy,
    ),
    Mutation(
        name="skip-peer-check",
        removes="the writer's look into the source's ledger for an incoming slot",
        apply=_skip_peer_check,
    ),
    Mutation(
        name="unchecked-read",
        removes="Reader.rows() re-checking slot states and merge progress after its reads",
        apply=_unchecked_read,
    ),
    Mutation(
        name="drop-overflow-check",
        removes="the BIGINT range checks of charges, of events and of row sums",
        apply=_drop_overflow_check,
    ),
    Mutation(
        name="fold-nothing",
        removes="the writer's folding of exact repeats inside one call",
        apply=_fold_nothing,
    ),
    Mutation(
        name="skip-records-move",
        removes="the resharder's move of correction records with their slots",
        apply=_skip_records_move,
    ),
    Mutation(
        name="skip-home-check",
        removes="a correction record write's check that its shard holds the home slot",
        apply=_skip_home_check,
    ),
    Mutation(
        name="skip-identity-claim",
        removes="the identity claim that makes an event id name one event across slots",
        apply=_skip_identity_claim,
    ),
)
