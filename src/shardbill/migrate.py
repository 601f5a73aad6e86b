"""Online schema changes on live shards: new measures and new tables (``shardbill migrate``).

When the declared aggregate tables grow (a measure added to a table, a new
table), :func:`plan_migration` compares every shard's live tables with the
declaration and lists what each shard lacks; :func:`migrate` applies it,
shard by shard, one statement at a time:

* a **new measure** becomes ``ALTER TABLE t ADD COLUMN m BIGINT NOT NULL
  DEFAULT 0``: existing rows hold 0 (nothing of the new measure was counted
  before the change), and writers that do not know the column yet keep
  writing (their UPSERTs leave it at its default and add nothing to it);
* a **new table** (aggregate or shardbill's own) is created empty, as
  :meth:`~shardbill.AggregationWriter.ensure_schema` would. It counts the
  events written from then on: the ledger already holds the ids of the
  events written before, so re-ingesting them does not fill it.

Every statement is planned from the live schema, so a migration stopped at
any point (Ctrl-C, a crash, a shard down) is resumed by running it again: a
shard or column already done is not touched twice. A writer built with the
new declaration refuses a shard that is not migrated yet
(:class:`~shardbill.errors.SchemaError` naming the column and
``shardbill migrate``); writers with the old declaration run on, before,
during and after. Roll out the migration first, the new writers second.

Changes that would rewrite rows (a new key column, a changed type or
primary key) are refused with what they are; they need a new table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from shardbill.aggregates import AggregateTable
from shardbill.dialects.base import Dialect
from shardbill.dialects.ddl import LiveTable, create_statements, describe_table
from shardbill.dialects.detect import dialect_for
from shardbill.dialects.mysql import MySQLDialect
from shardbill.errors import SchemaError
from shardbill.periods.store import ensure_gate
from shardbill.providers.base import ConnectionProvider
from shardbill.schema import schema_problems
from shardbill.tables import Column, ColumnKind, SystemTables, TableDef

__all__ = ["MigrationStep", "migrate", "plan_migration"]


@attrs.frozen(kw_only=True)
class MigrationStep:
    """One change to one shard.

    Attributes:
        shard: the shard.
        table: the table.
        column: the measure to add (None: create the table).
    """

    shard: str
    table: str
    column: str | None = None

    def describe(self) -> str:
        """One line for people."""
        if self.column is None:
            return f"{self.shard}: create table {self.table}"
        return f"{self.shard}: add measure {self.table}.{self.column} (0 in existing rows)"

    def to_dict(self) -> dict[str, object]:
        """``shard``, ``table``, ``column`` (None for a new table) and ``text``."""
        return {
            "shard": self.shard,
            "table": self.table,
            "column": self.column,
            "text": self.describe(),
        }


def plan_migration(
    provider: ConnectionProvider,
    shards: Sequence[str],
    tables: Sequence[AggregateTable],
    *,
    system_tables: SystemTables | None = None,
) -> list[MigrationStep]:
    """What each shard lacks of the declared tables (empty: nothing to do).

    Args:
        provider: lends connections to the shards.
        shards: the shards to migrate.
        tables: the declared aggregate tables (the new declaration).
        system_tables: the names of shardbill's own tables.

    Returns:
        The steps, shard by shard.

    Raises:
        SchemaError: a difference a migration cannot make online (a key
            column, a type, a primary key), each named with its shard,
            table and column.
    """
    system = system_tables or SystemTables()
    steps: list[MigrationStep] = []
    refused: list[str] = []
    for shard in shards:
        with provider.connection(shard) as conn:
            dialect = dialect_for(conn)
            cursor = conn.cursor()
            try:
                for want in system.all_defs(tables):
                    live = describe_table(cursor, dialect, want.name)
                    if live is None:
                        steps.append(MigrationStep(shard=shard, table=want.name))
                        continue
                    for column in _missing(want, live):
                        if _is_measure(column):
                            steps.append(
                                MigrationStep(shard=shard, table=want.name, column=column.name)
                            )
                        else:
                            refused.append(
                                f"shard {shard!r}: table {want.name!r} lacks key column "
                                f"{column.name!r}: a key column changes every row's key, which "
                                "no online migration does; declare a new table with it instead"
                            )
            finally:
                cursor.close()
    if refused:
        raise SchemaError("cannot migrate online:\n  " + "\n  ".join(refused))
    return steps


def migrate(
    provider: ConnectionProvider,
    shards: Sequence[str],
    tables: Sequence[AggregateTable],
    *,
    system_tables: SystemTables | None = None,
    on_step: Callable[[MigrationStep], None] | None = None,
) -> list[MigrationStep]:
    """Apply :func:`plan_migration`'s steps, shard by shard, and check the result.

    Args:
        provider: lends connections to the shards.
        shards: the shards to migrate.
        tables: the declared aggregate tables (the new declaration).
        system_tables: the names of shardbill's own tables.
        on_step: called after each step is applied (for progress).

    Returns:
        The steps applied (empty: every shard was migrated already).

    Raises:
        SchemaError: a difference no online migration makes (nothing was
            changed), or one left after migrating (as ``check_schema``).
    """
    system = system_tables or SystemTables()
    steps = plan_migration(provider, shards, tables, system_tables=system)
    defs = {d.name: d for d in system.all_defs(tables)}
    for step in steps:
        with provider.connection(step.shard) as conn:  # one statement per block: DDL commits
            dialect = dialect_for(conn)
            cursor = conn.cursor()
            try:
                want = defs[step.table]
                if step.column is None:
                    for statement in create_statements(dialect, want):
                        cursor.execute(statement, ())
                else:
                    live = describe_table(cursor, dialect, step.table)
                    column = next(c for c in want.columns if c.name == step.column)
                    if live is not None and column in _missing(want, live):
                        cursor.execute(_add_measure(dialect, step.table, column), ())
            finally:
                cursor.close()
        if on_step is not None:
            on_step(step)
    for shard in shards:  # the periods table's gate row (also after a crash right after it)
        with provider.connection(shard) as conn:
            cursor = conn.cursor()
            try:
                ensure_gate(cursor, dialect_for(conn), system.periods)
            finally:
                cursor.close()
    problems = schema_problems(provider, shards, tables, system_tables=system)
    if problems:
        raise SchemaError("after migrating, the schema still differs:\n  " + "\n  ".join(problems))
    return steps


def _missing(want: TableDef, live: LiveTable) -> list[Column]:
    have = {c.name.lower() for c in live.columns}
    return [c for c in want.columns if c.name.lower() not in have]


def _is_measure(column: Column) -> bool:
    return column.exact_integer and column.kind is ColumnKind.BIGINT


def _add_measure(dialect: Dialect, table: str, column: Column) -> str:
    q = dialect.quote
    if isinstance(dialect, MySQLDialect):
        return f"ALTER TABLE {q(table)} ADD COLUMN {q(column.name)} BIGINT NOT NULL DEFAULT 0"
    # SQLite: the same CHECK as a created table, so sums stay exact integers.
    return (
        f"ALTER TABLE {q(table)} ADD COLUMN {q(column.name)} INTEGER NOT NULL DEFAULT 0 "
        f"CHECK (typeof({q(column.name)}) = 'integer')"
    )
