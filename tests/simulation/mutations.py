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

import shardbill.extraction
from shardbill import AggregateRow, AggregationWriter, Pipeline, PipelineResult, Reader
from shardbill.errors import FencedError
from shardbill.resharding import Resharder
from shardbill.rules import UsageEvent


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
            return {}  # write on, whoever owns the slot now

    mp.setattr(AggregationWriter, "_fence", no_fence)


def _skip_ledger_copy(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(Resharder, "_copy_ledger", lambda self, move, throttle: None)


def _skip_peer_check(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(AggregationWriter, "_peer_ledger", lambda self, units, incoming: {})


def _source_after_target(mp: pytest.MonkeyPatch) -> None:
    """Reader.rows() with its two reads swapped: the target's snapshot, then the source."""
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
        slot = self.shard_map.slot_for(account)
        shard = self.shard_map.owner(slot)
        for _ in range(4):
            state, peer = self._slot_state(shard, slot, replica=replica)
            if state == module.SlotState.GONE and peer:
                shard = peer
                continue
            break
        with self._snapshot(shard, replica=replica) as (cursor, dialect):
            progress = self._progress(cursor, dialect, spec.name, (slot,))
            own = self._raw_rows_in(cursor, dialect, spec, filters, slots=None)
        source_rows: dict[Any, list[int]] = {}
        if state == module.SlotState.INCOMING and peer:
            source_rows = self._raw_rows(peer, spec, filters, slots=(slot,), replica=replica)[slot]
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
    # The compiled fast path refuses out-of-range values and hands them to the
    # reference path, whose range check reads these module names.
    mp.setattr(shardbill.extraction, "BIGINT_MAX", 2**80)
    mp.setattr(shardbill.extraction, "BIGINT_MIN", -(2**80))


def _fold_nothing(mp: pytest.MonkeyPatch) -> None:
    def process(self: Any, events: Iterable[UsageEvent]) -> PipelineResult:
        batch = list(events)
        pricing = self._engine.price_batch(batch)
        return PipelineResult(
            events=len(batch),
            repeats=0,
            conflicting_repeats=(),
            pricing_rejected=pricing.rejected,
            write=self._writer.write(pricing.charges),
        )

    mp.setattr(Pipeline, "process", process)


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
        name="source-after-target",
        removes="Reader.rows() reading a moving slot's source before the target's snapshot",
        apply=_source_after_target,
    ),
    Mutation(
        name="drop-overflow-check",
        removes="the BIGINT range check of every charge's measures",
        apply=_drop_overflow_check,
    ),
    Mutation(
        name="fold-nothing",
        removes="the pipeline's folding of repeats inside one batch",
        apply=_fold_nothing,
    ),
)
