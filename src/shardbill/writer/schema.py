"""Applying and checking the per-shard schema: aggregate tables, ledger, slot ownership.

:func:`apply_schema` creates what is missing (``CREATE TABLE IF NOT EXISTS``:
applying twice is a no-op), records the declaration in each shard's
declaration history (:mod:`shardbill.declarations`) and, on a shard whose
ownership table is empty, records the slots the shard map gives it.
:func:`check_schema` compares the live tables with the specs and raises
:class:`~shardbill.errors.SchemaError` with every difference it found, each
naming the shard, the table, the column and what to do. The writer refuses
to run against a schema that does not match.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from shardbill.declarations import Declaration
from shardbill.declarations.store import record
from shardbill.dialects.detect import dialect_for
from shardbill.dialects.translate import is_driver_error, translate
from shardbill.errors import SchemaError, ShardbillError
from shardbill.periods.store import ensure_gate
from shardbill.providers.base import ConnectionProvider, DBAPIConnection
from shardbill.retry import RetryPolicy, is_retryable
from shardbill.shardmap import ShardMap
from shardbill.tables import ColumnKind, SlotState, SystemTables, TableDef
from shardbill.tables.aggregates import SLOT_COLUMN, AggregateTable

__all__ = ["apply_schema", "check_schema", "schema_problems"]


def apply_schema(
    provider: ConnectionProvider,
    shard_map: ShardMap,
    tables: Sequence[AggregateTable],
    *,
    system_tables: SystemTables | None = None,
    shards: Sequence[str] | None = None,
    record_ownership: bool = True,
    retry: RetryPolicy | None = None,
) -> None:
    """Create missing tables on every shard and record slot ownership where none is recorded.

    Args:
        provider: lends connections to the shards.
        shard_map: the map whose slots each shard owns at first start.
        tables: the aggregate tables.
        system_tables: the ledger and ownership table names.
        shards: only these shards (default: every shard of the map).
        record_ownership: record the map's slots as owned on shards whose
            ownership table is empty (a reshard adds a shard without: its
            slots arrive through the move protocol).
        retry: the backoff for a transient failure of one shard's step (a
            lost connection, e.g. after a server restart): each step is run
            again (default: 4 tries).
    """
    system = system_tables or SystemTables()
    defs = system.all_defs(tables)
    declared = Declaration.of(tables)
    policy = retry or RetryPolicy(max_attempts=4)
    for shard in shards if shards is not None else sorted(shard_map.shards):

        def create(conn: DBAPIConnection, shard: str = shard) -> None:
            dialect = dialect_for(conn)
            refused = dialect.refusals(defs)
            if refused:  # before any table is created: a refusal changes nothing
                raise SchemaError(f"shard {shard!r}: {refused[0]}")
            cursor = conn.cursor()
            try:
                for table in defs:
                    for statement in dialect.create_statements(table):
                        cursor.execute(statement, ())
            finally:
                cursor.close()

        def gate(conn: DBAPIConnection) -> None:
            # The periods table's gate row, committed before any writer or close relies
            # on it; and the declaration the ledger will be written under.
            cursor = conn.cursor()
            try:
                ensure_gate(cursor, dialect_for(conn), system.periods)
                record(cursor, dialect_for(conn), system.declarations, declared)
            finally:
                cursor.close()

        def own(conn: DBAPIConnection, shard: str = shard) -> None:
            # DDL commits implicitly on MySQL; ownership goes in its own transaction.
            dialect = dialect_for(conn)
            cursor = conn.cursor()
            try:
                slots_table = dialect.quote(system.slots)
                cursor.execute(f"SELECT COUNT(*) FROM {slots_table}", ())
                row = cursor.fetchone()
                if row is not None and int(row[0]) == 0:
                    owned = shard_map.slots_of(shard)
                    group = "(" + ", ".join([dialect.placeholder] * 4) + ")"
                    for start in range(0, len(owned), 1000):
                        chunk = owned[start : start + 1000]
                        cursor.execute(
                            f"INSERT INTO {slots_table} ({SLOT_COLUMN}, state, epoch, peer) "
                            f"VALUES {', '.join([group] * len(chunk))}",
                            [
                                v
                                for slot in chunk
                                for v in (slot, SlotState.OWNED.value, shard_map.epoch, None)
                            ],
                        )
            finally:
                cursor.close()

        steps = (create, gate, own) if record_ownership else (create, gate)
        for step in steps:
            _retrying(provider, shard, step, policy)


def _retrying(
    provider: ConnectionProvider,
    shard: str,
    step: Callable[[DBAPIConnection], None],
    policy: RetryPolicy,
) -> None:
    """Run ``step`` in one transaction on ``shard``, again after a transient failure.

    Every step is idempotent (``IF NOT EXISTS``, a gate row inserted if absent, a
    declaration recorded once, ownership recorded only where none is): a lost COMMIT
    that did commit makes the retry a no-op.
    """
    delays = policy.delays()
    while True:
        try:
            with provider.connection(shard) as conn:
                step(conn)
            return
        except Exception as exc:
            error = exc if isinstance(exc, ShardbillError) else None
            if error is None and is_driver_error(exc):
                error = translate(exc, shard=shard)
            delay = next(delays, None) if error is not None and is_retryable(error) else None
            if delay is None:
                if error is None or error is exc:
                    raise
                raise error from exc
            time.sleep(delay)


def _compare(shard: str, want: TableDef, live_table: object) -> list[str]:
    from shardbill.tables.definitions import LiveTable

    assert isinstance(live_table, LiveTable)  # noqa: S101 - internal helper
    problems = []
    live = {c.name.lower(): c for c in live_table.columns}
    for column in want.columns:
        found = live.get(column.name.lower())
        where = f"shard {shard!r}: table {want.name!r} column {column.name!r}"
        if found is None:
            if column.exact_integer:  # a measure: added online, 0 in existing rows
                problems.append(
                    f"{where} is missing: the shard is not migrated to this declaration yet; "
                    "run `shardbill migrate` (shardbill.migrate.migrate()), which adds it "
                    "with 0 in existing rows"
                )
            elif column.name in want.primary_key:  # a key column: added online too
                problems.append(
                    f"{where} is missing: the shard is not migrated to this declaration yet; "
                    "run `shardbill migrate` (shardbill.migrate.migrate()), which adds the key "
                    "column with the value its existing= declares in the rows that exist"
                )
            else:
                problems.append(f"{where} is missing; add it or re-create the table")
            continue
        if column.kind not in found.kinds:
            problems.append(
                f"{where} is {found.declared}, the spec says {column.kind.value}"
                f"{f'({column.length})' if column.length else ''}; migrate the column or fix "
                "the spec"
            )
        elif (
            column.kind is ColumnKind.VARCHAR
            and found.length is not None
            and found.length < column.length
        ):
            problems.append(
                f"{where} holds {found.length} characters, the spec says {column.length}; "
                "widen the column or shorten the spec"
            )
        if found.nullable and not column.nullable:
            problems.append(f"{where} allows NULL; make it NOT NULL")
    have = tuple(c.lower() for c in live_table.primary_key)
    declared = tuple(c.lower() for c in want.primary_key)
    unmigrated = have == tuple(c for c in declared if c in live)  # only new key columns lack
    extra = [c for c in live_table.primary_key if c.lower() not in declared]
    if extra and tuple(c for c in have if c in declared) == declared:
        # The shard has key columns this declaration lacks: `shardbill migrate` added them.
        problems.append(
            f"shard {shard!r}: table {want.name!r} has key column(s) {extra} that this "
            "declaration lacks (added by `shardbill migrate`); declare them (with "
            "existing=...) before starting a writer: writers running since before the "
            "migration write on (MySQL/MariaDB), a new one must know the key"
        )
    elif have != declared and not unmigrated:
        problems.append(
            f"shard {shard!r}: table {want.name!r} has primary key "
            f"{list(live_table.primary_key)}, the spec says {list(want.primary_key)}; "
            "re-create the table (the UPSERT merges on this key)"
        )
    return problems


def schema_problems(
    provider: ConnectionProvider,
    shards: Sequence[str],
    tables: Sequence[AggregateTable],
    *,
    system_tables: SystemTables | None = None,
) -> list[str]:
    """Every difference between the live schema on ``shards`` and the specs (empty: all good)."""
    system = system_tables or SystemTables()
    defs = system.all_defs(tables)
    problems: list[str] = []
    for shard in shards:
        with provider.connection(shard, readonly=False) as conn:
            dialect = dialect_for(conn)
            refused = dialect.refusals(defs)
            if refused:
                problems.extend(f"shard {shard!r}: {e}" for e in refused)
                continue
            cursor = conn.cursor()
            try:
                for want in defs:
                    live = dialect.describe_table(cursor, want.name)
                    if live is None:
                        problems.append(
                            f"shard {shard!r}: table {want.name!r} does not exist; run "
                            "`shardbill init` (or AggregationWriter.ensure_schema())"
                        )
                        continue
                    problems.extend(_compare(shard, want, live))
            finally:
                cursor.close()
    return problems


def check_schema(
    provider: ConnectionProvider,
    shards: Sequence[str],
    tables: Sequence[AggregateTable],
    *,
    system_tables: SystemTables | None = None,
) -> None:
    """Raise :class:`~shardbill.errors.SchemaError` listing every difference, if any."""
    problems = schema_problems(provider, shards, tables, system_tables=system_tables)
    if problems:
        raise SchemaError("the live schema does not match the specs:\n  " + "\n  ".join(problems))
