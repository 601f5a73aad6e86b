"""Online schema changes on live shards: measures, key columns, tables (``shardbill migrate``).

When the declared aggregate tables grow (a measure or a key column added to
a table, a new table), :func:`plan_migration` compares every shard's live
tables with the declaration and lists what each shard lacks; :func:`migrate`
applies it, shard by shard, one step at a time:

* a **new measure** becomes ``ALTER TABLE t ADD COLUMN m BIGINT NOT NULL
  DEFAULT 0``: existing rows hold 0 (nothing of the new measure was counted
  before the change), and writers that do not know the column yet keep
  writing (their UPSERTs leave it at its default and add nothing to it);
* a **new key column** needs a stated rule for the rows that exist: the
  value they get, declared as ``KeyColumn(..., existing=VALUE)`` (e.g.
  ``existing="--"`` for a dimension nobody recorded before). Without it the
  migration is refused, naming shard, table, column and ``existing=``. The
  column joins the primary key. On MySQL/MariaDB this is one ``ALTER TABLE
  t ADD COLUMN c ... NOT NULL DEFAULT <existing>, DROP PRIMARY KEY, ADD
  PRIMARY KEY (...), ALGORITHM=INPLACE, LOCK=NONE``: InnoDB rebuilds the
  table in place while writes go on, and writers with the old declaration
  keep writing during and after (their UPSERTs leave the column at its
  DEFAULT, so their deltas add to the ``existing`` rows). On SQLite the table
  is rebuilt (create the new one, copy, drop the old, rename) inside one
  ``BEGIN IMMEDIATE`` transaction: writers wait for it (``busy_timeout``),
  and a writer with the old declaration fails afterwards (SQLite's UPSERT
  names its conflict key, which no longer matches the primary key) without
  changing anything: restart SQLite writers with the new declaration. No
  rows are merged: the rows that exist were unique under the old key and
  all get the same value in the new column, so they are unique under the
  new key, and every measure is copied as it is (the sums are unchanged);
* a **new table** (aggregate or shardbill's own) is created empty, as
  :meth:`~shardbill.AggregationWriter.ensure_schema` would. It counts the
  events written from then on: the ledger already holds the ids of the
  events written before, so re-ingesting them does not fill it.

Each shard's declaration history (:mod:`shardbill.declarations`) gets the
new declaration once the shard's steps are done; a shard that had no
history yet first gets the declaration its ledger was written under (the
new one less what the migration adds), recorded before any of its tables
change. So a replay of an event applied before the migration is a
duplicate, not a conflict.

Every step is planned from the live schema and is atomic (one statement, or
one SQLite transaction), so a migration stopped at any point (Ctrl-C, a
crash, a shard down) is resumed by running it again: a shard, column or
table already done is not touched twice. A writer built with the new
declaration refuses a shard that is not migrated yet
(:class:`~shardbill.errors.SchemaError` naming the column and ``shardbill
migrate``); writers with the old declaration run on, before, during and
after (on SQLite, until a key column is added: see above). Roll out the
migration first, the new writers second.

Changes that would rewrite values (a changed type or primary key order, a
column the declaration no longer has in a SQLite rebuild) are refused with
what they are; they need a new table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import attrs

from shardbill.declarations import Declaration, Recorded
from shardbill.declarations.store import history_of, record_on
from shardbill.dialects.base import Dialect
from shardbill.dialects.detect import dialect_for
from shardbill.dialects.sqlite import temporary_table_name
from shardbill.errors import SchemaError
from shardbill.periods.store import ensure_gate
from shardbill.providers.base import ConnectionProvider, DBAPICursor
from shardbill.tables import Column, ColumnKind, SystemTables, TableDef
from shardbill.tables.aggregates import AggregateTable, KeyColumn, KeyValue
from shardbill.tables.definitions import LiveTable
from shardbill.writer.schema import schema_problems

__all__ = ["MigrationStep", "migrate", "plan_migration"]


StepKind = Literal["table", "measure", "key"]


@attrs.frozen(kw_only=True)
class MigrationStep:
    """One change to one shard.

    Attributes:
        shard: the shard.
        table: the table.
        column: the measure or key column to add (None: create the table).
        kind: ``"table"`` (create it), ``"measure"`` or ``"key"`` (add the column).
        existing: for a key column, the value the rows that exist get.
    """

    shard: str
    table: str
    column: str | None = None
    kind: StepKind = "table"
    existing: KeyValue | None = None

    def describe(self) -> str:
        """One line for people."""
        if self.column is None:
            return f"{self.shard}: create table {self.table}"
        if self.kind == "key":
            return (
                f"{self.shard}: add key column {self.table}.{self.column} "
                f"({_shown(self.existing)} in existing rows; the primary key grows)"
            )
        return f"{self.shard}: add measure {self.table}.{self.column} (0 in existing rows)"

    def to_dict(self) -> dict[str, object]:
        """``shard``, ``table``, ``column`` (None for a new table), ``kind``,
        ``existing`` (a key column's value for the rows that exist, dates as
        ISO text; None otherwise) and ``text``."""
        return {
            "shard": self.shard,
            "table": self.table,
            "column": self.column,
            "kind": self.kind,
            "existing": _bound(self.existing) if self.existing is not None else None,
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
            column declared without ``existing=``, a type, a primary key),
            each named with its shard, table and column; nothing is changed.
    """
    system = system_tables or SystemTables()
    declared = {t.name: t for t in tables}
    steps: list[MigrationStep] = []
    refused: list[str] = []
    for shard in shards:
        with provider.connection(shard) as conn:
            dialect = dialect_for(conn)
            cursor = conn.cursor()
            try:
                for want in system.all_defs(tables):
                    found, problems = _plan_table(cursor, dialect, shard, want, declared)
                    steps.extend(found)
                    refused.extend(problems)
            finally:
                cursor.close()
    if refused:
        raise SchemaError("cannot migrate online (nothing was changed):\n  " + "\n  ".join(refused))
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
    own = {d.name for d in system.all_defs(())}
    declared = Declaration.of(tables)
    for shard in dict.fromkeys(shards):
        mine = [s for s in steps if s.shard == shard]
        for step in (s for s in mine if s.table in own):  # the history table among them
            _apply(provider, step, defs[step.table])
            if on_step is not None:
                on_step(step)
        # Before the shard's tables change: a crash after this leaves the history right.
        _record_before(provider, shard, declared, [s for s in mine if s.table not in own], system)
        for step in (s for s in mine if s.table not in own):
            _apply(provider, step, defs[step.table])
            if on_step is not None:
                on_step(step)
        record_on(provider, [shard], declared, system_tables=system)
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


def _record_before(
    provider: ConnectionProvider,
    shard: str,
    declared: Declaration,
    steps: Sequence[MigrationStep],
    system: SystemTables,
) -> None:
    """On a shard with no declaration history yet, record the one its ledger was written under.

    Shards made before the history existed have none: the declaration of
    their ledger rows is taken to be the new one less what this migration
    adds (the tables it creates, the measures and key columns it adds), in
    the new one's column order.
    """
    if history_of(provider, shard, system_tables=system):
        return
    before = declared.without(
        tables=[s.table for s in steps if s.column is None],
        columns=[(s.table, s.column) for s in steps if s.column is not None],
    )
    if before.version != declared.version:
        derived = Recorded(declaration=before, recorded_at=int(time.time()), origin="derived")
        record_on(provider, [shard], [derived], system_tables=system)


def _apply(provider: ConnectionProvider, step: MigrationStep, want: TableDef) -> None:
    """Apply one step, unless a run that stopped before reporting it did already."""
    with provider.connection(step.shard) as conn:  # one statement per block: DDL commits
        dialect = dialect_for(conn)
        cursor = conn.cursor()
        try:
            if step.column is None:
                for statement in dialect.create_statements(want):
                    cursor.execute(statement, ())
                return
            live = dialect.describe_table(cursor, step.table)
            column = next(c for c in want.columns if c.name == step.column)
            if live is None or column not in _missing(want, live):
                return  # done already (by a run that stopped before reporting it)
            if step.kind == "key":
                assert step.existing is not None  # noqa: S101 - planned with one
                for statement, params in dialect.add_key_column_statements(
                    want, live, column, _bound(step.existing)
                ):
                    cursor.execute(statement, params)
            else:
                cursor.execute(dialect.add_measure_statement(step.table, column), ())
        finally:
            cursor.close()


def _missing(want: TableDef, live: LiveTable) -> list[Column]:
    have = {c.name.lower() for c in live.columns}
    return [c for c in want.columns if c.name.lower() not in have]


def _plan_table(
    cursor: DBAPICursor,
    dialect: Dialect,
    shard: str,
    want: TableDef,
    declared: Mapping[str, AggregateTable],
) -> tuple[list[MigrationStep], list[str]]:
    """The steps one table of one shard needs (key columns first), and the refusals."""
    live = dialect.describe_table(cursor, want.name)
    if live is None:
        return [MigrationStep(shard=shard, table=want.name)], []
    steps: list[MigrationStep] = []
    refused: list[str] = []
    missing = _missing(want, live)
    keys = {k.name: k for k in declared[want.name].keys} if want.name in declared else {}
    for column in missing:
        key = keys.get(column.name)
        if key is None:
            continue
        problem = _key_refusal(shard, want, live, key, dialect)
        if problem is None and dialect.embedded:  # SQLite adds a key column by a rebuild
            temporary = temporary_table_name(want.name)
            if dialect.describe_table(cursor, temporary) is not None:
                problem = (
                    f"shard {shard!r}: table {want.name!r}: adding key column {key.name!r} "
                    f"rebuilds the table through {temporary!r}, which exists already; "
                    "rename or drop that table first"
                )
        if problem is not None:
            refused.append(problem)
            continue
        steps.append(
            MigrationStep(
                shard=shard, table=want.name, column=column.name, kind="key", existing=key.existing
            )
        )
    for column in missing:
        if column.name in keys:
            continue
        if _is_measure(column):
            steps.append(
                MigrationStep(shard=shard, table=want.name, column=column.name, kind="measure")
            )
        else:
            refused.append(
                f"shard {shard!r}: table {want.name!r} lacks column {column.name!r}, which no "
                "online migration adds; re-create the table"
            )
    return steps, refused


def _key_refusal(
    shard: str, want: TableDef, live: LiveTable, key: KeyColumn, dialect: Dialect
) -> str | None:
    """Why key column ``key`` cannot be added to ``live`` online (None: it can)."""
    where = f"shard {shard!r}: table {want.name!r} lacks key column {key.name!r}"
    if key.existing is None:
        return (
            f"{where}: adding it changes every row's key, and the rows that exist need a "
            f"value in it; declare the rule for them with existing= (KeyColumn(name="
            f"{key.name!r}, ..., existing=VALUE), or existing = VALUE in the configuration's "
            "key column), then run `shardbill migrate` again"
        )
    have = [c.lower() for c in live.primary_key]
    kept = [c.lower() for c in want.primary_key if c.lower() in {n.lower() for n in have}]
    if have != kept:
        return (
            f"{where}, and its primary key {list(live.primary_key)} is not the declared one "
            f"{list(want.primary_key)} without the new columns; re-create the table"
        )
    if dialect.embedded:  # the rebuild copies the declared columns only
        declared = {c.name.lower() for c in want.columns}
        extra = [c.name for c in live.columns if c.name.lower() not in declared]
        if extra:
            return (
                f"{where}: on SQLite adding it rebuilds the table, which would lose the "
                f"undeclared column(s) {extra}; declare them again (or drop them) first"
            )
    return None


def _bound(value: KeyValue) -> int | str:
    """A key value as bound to SQL: dates as ISO text."""
    return value if isinstance(value, int | str) else value.isoformat()


def _shown(value: KeyValue | None) -> str:
    return repr(_bound(value)) if value is not None else "None"


def _is_measure(column: Column) -> bool:
    return column.exact_integer and column.kind is ColumnKind.BIGINT
