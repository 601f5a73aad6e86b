"""Closing a billing period on every shard, in two phases, idempotently (``period close``).

A close moves the period, shard by shard, through two states recorded in
each shard's ``shardbill_periods`` table, each change made under the
exclusive lock of that shard's gate row, which every write transaction with
new units reads under a shared lock (:mod:`shardbill.periods.store`). So on
one shard a write either committed before the change or is judged by it.

1. **closing**, on every shard (the map's, and an unfinished reshard's
   sources and targets, listed again until no new shard appears): from then
   on no event of the period *begins* anywhere (a new identity claim is
   refused), but the remaining parts of events that began (a writer's second
   round on other shards, or a redelivery completing one) still land;
2. a **drain** (``drain_seconds``): writers that began an event before
   phase 1 finish its parts (a write call is bounded by its retry budget);
3. **closed**, on every shard (listed again the same way): nothing new of
   the period is applied; duplicates are still recognised.

Because every shard is closing before any shard is closed, an event spread
over several shards is never refused on one shard after it began on
another, unless its writer stopped between its rounds for longer than the
drain and the event is redelivered after the close (then the rest is
refused with the reason, and the caller is told).

Idempotent and resumable: a shard already in a state is left alone, so a
close stopped half-way (a crash, Ctrl-C, a shard down) is finished by
running it again. A shard a reshard adds copies the closures of the shards
it takes slots from before it takes writes
(:func:`shardbill.periods.store.copy_closures`).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, TypeVar

import attrs

from shardbill.dialects.base import Dialect
from shardbill.dialects.detect import dialect_for
from shardbill.dialects.translate import is_driver_error, translate
from shardbill.errors import ConfigurationError, ShardbillError
from shardbill.mapstore.base import ClaimStore, MapStore
from shardbill.mapstore.claim import MOVING
from shardbill.periods.months import Period
from shardbill.periods.store import advance, ensure_gate
from shardbill.periods.tables import PeriodState
from shardbill.providers.base import ConnectionProvider, DBAPICursor
from shardbill.retry import RetryPolicy, is_retryable
from shardbill.shardmap import ShardMap
from shardbill.tables import SystemTables

__all__ = [
    "CLOSE_RETRY_BUDGET_SECONDS",
    "DEFAULT_DRAIN_SECONDS",
    "PeriodCloser",
    "PeriodStatus",
    "ShardState",
    "fleet_shards",
]

#: The default wait between the two phases: two rounds of a write within the default retry budget.
DEFAULT_DRAIN_SECONDS = 2 * RetryPolicy().budget_seconds

#: The default retry budget of one shard's step of a close: a step waits for the gate row's
#: lock behind the writers; one lock wait may last InnoDB's ``innodb_lock_wait_timeout``
#: (50 s by default) and end in a retryable error, so the budget covers two such waits and
#: their backoff (the writer's 45 s would give up after the first).
CLOSE_RETRY_BUDGET_SECONDS = 120.0

ShardState = Literal["open", "closing", "closed"]
"""One shard's view of a period."""

_T = TypeVar("_T")


@attrs.frozen(kw_only=True)
class PeriodStatus:
    """Where a period stands on the fleet.

    Attributes:
        period: the period, ``YYYY-MM``.
        state: ``open`` (no shard has begun closing it), ``closed`` (every
            shard closed it) or ``closing`` (anything between: a close in
            progress, or stopped half-way: run it again).
        shards: each shard's state.
    """

    period: str
    state: ShardState
    shards: Mapping[str, ShardState]

    def to_dict(self) -> dict[str, object]:
        """The status as JSON-ready data."""
        return {"period": self.period, "state": self.state, "shards": dict(self.shards)}


def _overall(states: Iterable[ShardState]) -> ShardState:
    found = set(states)
    if not found or found == {"open"}:
        return "open"
    if found == {"closed"}:
        return "closed"
    return "closing"


def fleet_shards(source: ShardMap | MapStore) -> tuple[str, ...]:
    """Every shard a close must reach: the map's, and an unfinished reshard's on both sides."""
    if isinstance(source, ShardMap):
        return tuple(sorted(source.shards))
    names = set(source.load().shards)
    if isinstance(source, ClaimStore):
        claim = source.load_claim()
        if claim is not None and claim.state == MOVING:
            names.update(claim.source.shards)
            names.update(claim.target.shards)
    return tuple(sorted(names))


class PeriodCloser:
    """Closes billing periods on every shard and reports where they stand.

    Args:
        provider: lends connections to the shards.
        shard_map: the map, or the map store (then an unfinished reshard's
            shards are reached too, and the list is read again between steps).
        system_tables: the names of shardbill's own tables.
        retry: the backoff for transient failures of one shard's step
            (default: :data:`CLOSE_RETRY_BUDGET_SECONDS`, 120 s, two lock
            waits at InnoDB's default ``innodb_lock_wait_timeout``).
        closed_by: recorded with each closure (who closed it).
        clock: Unix time, recorded as the closure's time.
        sleep: waits the drain (tests pass a no-op).

    Example:
        >>> closer = PeriodCloser(provider=p, shard_map=store)  # doctest: +SKIP
        >>> closer.close("2026-11", reason="November invoices").state  # doctest: +SKIP
        'closed'
    """

    def __init__(
        self,
        *,
        provider: ConnectionProvider,
        shard_map: ShardMap | MapStore,
        system_tables: SystemTables | None = None,
        retry: RetryPolicy | None = None,
        closed_by: str = "shardbill",
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._provider = provider
        self._source = shard_map
        self._system = system_tables or SystemTables()
        self._retry = retry or RetryPolicy(budget_seconds=CLOSE_RETRY_BUDGET_SECONDS)
        self._closed_by = closed_by
        self._clock = clock
        self._sleep = sleep

    def shards(self) -> tuple[str, ...]:
        """The shards a close reaches now (see :func:`fleet_shards`)."""
        return fleet_shards(self._source)

    def close(
        self,
        period: Period | str,
        *,
        reason: str = "",
        drain_seconds: float = DEFAULT_DRAIN_SECONDS,
        early: bool = False,
        on_shard: Callable[[str, PeriodState, bool], None] | None = None,
    ) -> PeriodStatus:
        """Close ``period`` on every shard (see the module docstring); safe to run again.

        Args:
            period: the period (``YYYY-MM`` or a :class:`Period`).
            reason: recorded with the closure (e.g. the invoice run it is for).
            drain_seconds: the wait between the two phases (0 only when no
                writer runs, or in tests).
            early: close a period that has not ended yet by the closer's clock
                (its events are still arriving: refused from now on).
            on_shard: called after each shard's step with (shard, state,
                whether it changed anything).

        Returns:
            The period's status after the close (``closed``).

        Raises:
            ConfigurationError: a bad period or drain, or a period that has not
                ended yet (without ``early``); nothing was changed.
            ShardbillError: a shard failed past the retry budget; the shards
                done stay done: run the close again.
        """
        parsed = period if isinstance(period, Period) else Period.parse(period)
        name = str(parsed)
        if drain_seconds < 0:
            raise ConfigurationError(f"'drain_seconds' must be >= 0: {drain_seconds}")
        if not early and self._clock() < parsed.end:
            ends = dt.datetime.fromtimestamp(parsed.end, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise ConfigurationError(
                f"period {name} has not ended yet by this host's clock (it ends at {ends}): its "
                "events are still arriving; close it after it ends, or pass early=True "
                "(`--early`) to close it now"
            )
        # Closed on every shard already: nothing can still be draining (the run that
        # closed them drained), so a second close walks the shards without the wait.
        drained = self.status(name)[0].state == PeriodState.CLOSED.value
        for state in (PeriodState.CLOSING, PeriodState.CLOSED):
            self._everywhere(name, state, reason, on_shard)
            if state is PeriodState.CLOSING and drain_seconds and not drained:
                self._sleep(drain_seconds)
        return self.status(name)[0]

    def _everywhere(
        self,
        period: str,
        state: PeriodState,
        reason: str,
        on_shard: Callable[[str, PeriodState, bool], None] | None,
    ) -> None:
        """Move ``period`` to ``state`` on every shard, listing them again until none is new."""
        done: set[str] = set()
        while True:
            todo = [s for s in self.shards() if s not in done]
            if not todo:
                return
            for shard in todo:
                changed = self._advance(shard, period, state, reason)
                done.add(shard)
                if on_shard is not None:
                    on_shard(shard, state, changed)

    def _advance(self, shard: str, period: str, state: PeriodState, reason: str) -> bool:
        table = self._system.periods

        def gate(cursor: DBAPICursor, dialect: Dialect) -> bool:
            # A reshard's target may be listed before the resharder created its tables.
            # Only then: DDL on the live table would queue behind every writer's metadata lock.
            if dialect.describe_table(cursor, table) is None:
                for statement in dialect.create_statements(self._system.periods_def()):
                    cursor.execute(statement, ())
            ensure_gate(cursor, dialect, table)
            return False

        def step(cursor: DBAPICursor, dialect: Dialect) -> bool:
            changed = False
            if state is PeriodState.CLOSED:  # a shard a close missed in phase 1 gets it first
                changed = advance(
                    cursor,
                    dialect,
                    table,
                    shard=shard,
                    period=period,
                    state=PeriodState.CLOSING,
                    closed_at=int(self._clock()),
                    closed_by=self._closed_by,
                    reason=reason,
                )
            return (
                advance(
                    cursor,
                    dialect,
                    table,
                    shard=shard,
                    period=period,
                    state=state,
                    closed_at=int(self._clock()),
                    closed_by=self._closed_by,
                    reason=reason,
                )
                or changed
            )

        self._retrying(shard, gate)  # committed first: the lock below must have a row to take
        return self._retrying(shard, step)

    def status(self, period: Period | str | None = None) -> list[PeriodStatus]:
        """Where ``period`` stands (or every period some shard has begun closing), per shard.

        Returns:
            One status per period, oldest first (for a named period, exactly one).
        """
        wanted = None
        if period is not None:
            wanted = str(period if isinstance(period, Period) else Period.parse(period))
        table = self._system.periods
        per_shard: dict[str, dict[str, PeriodState]] = {}
        for shard in self.shards():

            def read(
                cursor: DBAPICursor, dialect: Dialect, shard: str = shard
            ) -> dict[str, PeriodState]:
                if dialect.describe_table(cursor, table) is None:
                    # A reshard's new shard before the resharder made its tables (a
                    # resharder that died there): nothing is closed on it yet; a close
                    # creates the table (see _advance).
                    return {}
                cursor.execute(f"SELECT period, state FROM {dialect.quote(table)}", ())
                return {
                    str(p): PeriodState(str(s))
                    for p, s in cursor.fetchall()
                    if str(s) != PeriodState.GATE.value
                }

            per_shard[shard] = self._retrying(shard, read)
        periods = sorted({p for states in per_shard.values() for p in states})
        if wanted is not None:
            periods = [wanted]
        out = []
        for name in periods:
            shards: dict[str, ShardState] = {
                shard: _shard_state(states.get(name)) for shard, states in per_shard.items()
            }
            out.append(PeriodStatus(period=name, state=_overall(shards.values()), shards=shards))
        return out

    def _retrying(self, shard: str, step: Callable[[DBAPICursor, Dialect], _T]) -> _T:
        """Run ``step`` in one transaction on ``shard``, retrying transient failures."""
        delays = self._retry.delays()
        while True:
            try:
                with self._provider.connection(shard) as conn:
                    dialect = dialect_for(conn)
                    cursor = conn.cursor()
                    try:
                        return step(cursor, dialect)
                    finally:
                        cursor.close()
            except Exception as exc:
                error = exc if isinstance(exc, ShardbillError) else None
                if error is None and is_driver_error(exc):
                    error = translate(exc, shard=shard)
                if error is None:
                    raise
                delay = next(delays, None) if is_retryable(error) else None
                if delay is None:
                    if error is exc:
                        raise
                    raise error from exc
                self._sleep(delay)


def _shard_state(state: PeriodState | None) -> ShardState:
    if state is PeriodState.CLOSED:
        return "closed"
    if state is PeriodState.CLOSING:
        return "closing"
    return "open"
