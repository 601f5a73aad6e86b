"""Reading and writing one shard's ``shardbill_periods`` rows, inside the caller's transaction.

Every function takes the cursor of a transaction the caller holds open on
one shard. :func:`read_states` is what a writer runs (shared lock on the
gate row on MySQL/MariaDB; SQLite write transactions serialise already) and
what a close runs first (exclusive lock). :func:`advance` moves one period
forward on the shard (``closing``, then ``closed``; never back), and
:func:`copy_closures` gives a shard a reshard adds the closures the fleet
holds, before it takes any write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from shardbill.dialects.base import Dialect
from shardbill.dialects.detect import dialect_for
from shardbill.errors import SchemaError
from shardbill.periods.tables import GATE_ROW, RANK, PeriodState
from shardbill.providers.base import ConnectionProvider, DBAPICursor
from shardbill.tables import SystemTables

__all__ = [
    "advance",
    "copy_closures",
    "ensure_gate",
    "has_table",
    "read_adjustments",
    "read_states",
    "split_states",
]


def ensure_gate(cursor: DBAPICursor, dialect: Dialect, table: str) -> None:
    """Insert the gate row if it is missing (idempotent; commit it before relying on its lock)."""
    p = dialect.placeholder
    cursor.execute(
        f"{dialect.insert_ignore_verb} INTO {dialect.quote(table)} "
        f"(period, state, generation) VALUES ({p}, {p}, 0)",
        (GATE_ROW, PeriodState.GATE.value),
    )


def read_states(
    cursor: DBAPICursor, dialect: Dialect, table: str, *, shard: str, exclusive: bool = False
) -> tuple[int, dict[str, PeriodState]]:
    """The gate's generation and every period's state on this shard, the gate row locked.

    Shared (a writer) or ``exclusive`` (a close). The table is one row per
    closed period, so it is read whole.

    Raises:
        SchemaError: the gate row is missing: without it a close could not
            exclude the writers (run ``shardbill init`` or ``shardbill migrate``).
    """
    q = dialect.quote
    lock = dialect.exclusive_lock_suffix if exclusive else dialect.share_lock_suffix
    cursor.execute(f"SELECT period, state, generation FROM {q(table)}{lock}", ())
    generation: int | None = None
    states: dict[str, PeriodState] = {}
    for period, state, gen in cursor.fetchall():
        if str(period) == GATE_ROW:
            generation = int(gen)
        else:
            states[str(period)] = PeriodState(str(state))
    if generation is None:
        raise SchemaError(
            f"shard {shard!r}: table {table!r} has no gate row (period {GATE_ROW!r}); run "
            "`shardbill migrate` or `shardbill init` (AggregationWriter.ensure_schema()), "
            "which add it"
        )
    return generation, states


def split_states(states: Mapping[str, PeriodState]) -> tuple[frozenset[str], frozenset[str]]:
    """(closed periods, closing periods) of a shard's states."""
    closed = frozenset(p for p, s in states.items() if s is PeriodState.CLOSED)
    closing = frozenset(p for p, s in states.items() if s is PeriodState.CLOSING)
    return closed, closing


def advance(
    cursor: DBAPICursor,
    dialect: Dialect,
    table: str,
    *,
    shard: str,
    period: str,
    state: PeriodState,
    closed_at: int,
    closed_by: str,
    reason: str,
) -> bool:
    """Move ``period`` to ``state`` on this shard unless it is there or further already.

    Takes the gate row exclusively first: every writer transaction that read
    the states before has committed, every later one sees the new state.

    Returns:
        Whether anything changed (False: a no-op, the shard was that far already).
    """
    generation, states = read_states(cursor, dialect, table, shard=shard, exclusive=True)
    current = states.get(period)
    if current is not None and RANK[current] >= RANK[state]:
        return False
    q = dialect.quote
    p = dialect.placeholder
    if current is None:
        cursor.execute(
            f"INSERT INTO {q(table)} (period, state, generation, closed_at, closed_by, reason) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p})",
            (period, state.value, generation + 1, closed_at, closed_by[:64], reason[:255]),
        )
    else:
        cursor.execute(
            f"UPDATE {q(table)} SET state = {p}, generation = {p}, closed_at = {p}, "
            f"closed_by = {p}, reason = {p} WHERE period = {p}",
            (state.value, generation + 1, closed_at, closed_by[:64], reason[:255], period),
        )
    cursor.execute(
        f"UPDATE {q(table)} SET generation = {p} WHERE period = {p}", (generation + 1, GATE_ROW)
    )
    return True


def _rows(
    cursor: DBAPICursor, dialect: Dialect, table: str
) -> list[tuple[str, PeriodState, int | None, str | None, str | None]]:
    cursor.execute(
        f"SELECT period, state, closed_at, closed_by, reason FROM {dialect.quote(table)}", ()
    )
    return [
        (
            str(period),
            PeriodState(str(state)),
            None if at is None else int(at),
            None if by is None else str(by),
            None if why is None else str(why),
        )
        for period, state, at, by, why in cursor.fetchall()
        if str(period) != GATE_ROW
    ]


def copy_closures(
    provider: ConnectionProvider,
    sources: Iterable[str],
    targets: Sequence[str],
    *,
    system_tables: SystemTables | None = None,
) -> dict[str, list[str]]:
    """Give ``targets`` (shards a reshard adds) every closure the ``sources`` hold.

    Each period goes to the furthest state any source has it in; a target
    never moves backwards. Run after the reshard's claim is in the map store
    and before the targets take writes: a close lists claimed targets, so a
    close either reaches a target itself or had reached the sources before
    this read (see the period-close explanation in ``docs/howto/month-end.md``).

    Returns:
        Per target, the periods it was given (empty: it had them all).
    """
    system = system_tables or SystemTables()
    table = system.periods
    best: dict[str, tuple[PeriodState, int | None, str | None, str | None]] = {}
    for source in sources:
        with provider.connection(source) as conn:
            dialect = dialect_for(conn)
            cursor = conn.cursor()
            try:
                for period, state, at, by, why in _rows(cursor, dialect, table):
                    found = best.get(period)
                    if found is None or RANK[state] > RANK[found[0]]:
                        best[period] = (state, at, by, why)
            finally:
                cursor.close()
    given: dict[str, list[str]] = {}
    for target in targets:
        with provider.connection(target) as conn:
            dialect = dialect_for(conn)
            cursor = conn.cursor()
            try:
                ensure_gate(cursor, dialect, table)
            finally:
                cursor.close()
        changed: list[str] = []
        with provider.connection(target) as conn:
            dialect = dialect_for(conn)
            cursor = conn.cursor()
            try:
                for period, (state, at, by, why) in sorted(best.items()):
                    for step in (PeriodState.CLOSING, PeriodState.CLOSED):
                        if RANK[step] > RANK[state]:
                            break
                        if advance(
                            cursor,
                            dialect,
                            table,
                            shard=target,
                            period=period,
                            state=step,
                            closed_at=at or 0,
                            closed_by=by or "",
                            reason=why or "copied from the shards it moves from",
                        ):
                            changed.append(period)
            finally:
                cursor.close()
        given[target] = sorted(set(changed))
    return given


def has_table(
    cursor: DBAPICursor, dialect: Dialect, shard: str, system: SystemTables, table: str
) -> bool:
    """Whether ``shard`` has ``table``; ``False`` for a shard with none of shardbill's tables.

    A shard without the ledger never took a write, so it holds nothing to read: a
    new shard whose tables a reshard has not made yet (it stopped before, its
    server down), which the month-end's readers reach through the reshard's claim.

    Raises:
        SchemaError: the shard has the ledger but not ``table`` (an older schema).
    """
    if dialect.describe_table(cursor, table) is not None:
        return True
    if dialect.describe_table(cursor, system.ledger) is None:
        return False
    raise SchemaError(
        f"shard {shard!r} has no table {table!r}; run `shardbill migrate` (or `shardbill "
        "init`), which adds it"
    )


def read_adjustments(
    provider: ConnectionProvider,
    shards: Iterable[str],
    system_tables: SystemTables | None = None,
    *,
    event_ids: Sequence[str] | None = None,
) -> dict[str, str]:
    """Event id -> the period the ``adjust`` late-event policy booked it in, from every shard.

    Each shard holds the ``shardbill_adjustments`` rows of the units it
    applied; a reshard moves them with their slots (its ``records`` step), so
    give the shards of the map and of an unfinished reshard
    (:func:`shardbill.periods.close.fleet_shards`). An event is booked in
    one period (its parts follow its identity claim's booking). With
    ``event_ids``, only those events' records are read.

    Raises:
        SchemaError: a shard has the ledger but no adjustments table (run
            ``shardbill migrate``); a shard with none of shardbill's tables is
            skipped (:func:`has_table`).
    """
    system = system_tables or SystemTables()
    found: dict[str, str] = {}
    for shard in shards:
        with provider.connection(shard, readonly=True) as conn:
            dialect = dialect_for(conn)
            if not has_table(conn.cursor(), dialect, shard, system, system.adjustments):
                continue
            cursor = conn.cursor()
            sql = f"SELECT event_id, booked_in FROM {dialect.quote(system.adjustments)}"
            try:
                if event_ids is None:
                    cursor.execute(sql, ())
                    rows = list(cursor.fetchall())
                else:
                    rows = []
                    ids = list(event_ids)
                    for start in range(0, len(ids), 500):
                        chunk = ids[start : start + 500]
                        marks = ", ".join([dialect.placeholder] * len(chunk))
                        cursor.execute(f"{sql} WHERE event_id IN ({marks})", tuple(chunk))
                        rows.extend(cursor.fetchall())
                for event_id, booked in rows:
                    found[str(event_id)] = str(booked)
            finally:
                cursor.close()
    return found
