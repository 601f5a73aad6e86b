"""The resharder's named statements (shardbill.resharding.sql).

Every statement renders for both dialects with its identifiers quoted, one
placeholder per bound value, one command, and integers only from ints; and
each runs on a real SQLite database holding the tables it names.
"""

from __future__ import annotations

import inspect
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from shardbill.dialects import MySQLDialect, SQLiteDialect, dialect_for
from shardbill.dialects.base import Dialect
from shardbill.errors import ConfigurationError
from shardbill.resharding.sql import (
    MoveLedger,
    ReshardStatements,
    SlotRows,
    SlotTable,
    Statement,
)
from shardbill.tables import SystemTables
from shardbill.tables.catalog import billing_tables

MARIADB = MySQLDialect(flavor="mariadb", version=(10, 11, 19))
SQLITE = SQLiteDialect(version=(3, 40, 1), variable_limit=32766)
SYSTEM = SystemTables(prefix="sb_test")
DAILY = billing_tables()[0]  # usage_daily: account_id, day, product


def every_statement(sql: ReshardStatements) -> dict[str, Statement]:
    """Each named statement once, by ``group.method``, with sample arguments."""
    after = [7, "2026-11-03", "cpu"]
    ledger_columns = SYSTEM.ledger_columns()
    return {
        "slots.all_rows": sql.slots.all_rows(),
        "slots.rows": sql.slots.rows([1, 2, 3]),
        "slots.states": sql.slots.states([1, 2]),
        "slots.locked_row": sql.slots.locked_row(4),
        "slots.locked_rows": sql.slots.locked_rows([4, 5]),
        "slots.accept": sql.slots.accept(4, "s0", 2),
        "slots.accept_back": sql.slots.accept_back(4, "s0", 3),
        "slots.fence": sql.slots.fence([4, 5], "s1", 2),
        "slots.fence_receiving": sql.slots.fence([4, 5], "s1", 2, receiving=True),
        "slots.mark_owned": sql.slots.mark_owned([4], "s0", epoch=3),
        "slots.locked_epochs": sql.slots.locked_epochs([4, 5]),
        "slots.drop_incoming": sql.slots.drop_incoming([4, 5]),
        "slots.watermarks": sql.slots.watermarks([4]),
        "slots.raise_watermark": sql.slots.raise_watermark(4, 1_700_000_000),
        "moves.all_records": sql.moves.all_records(),
        "moves.forget": sql.moves.forget(4),
        "moves.slots_recorded": sql.moves.slots_recorded([4, 5], other_than=SYSTEM.corrections),
        "moves.unfinished": sql.moves.unfinished([4, 5]),
        "moves.drop_unfinished": sql.moves.drop_unfinished(4, DAILY.name),
        "moves.progress": sql.moves.progress(4, DAILY.name),
        "moves.start": sql.moves.start(4, DAILY.name, "s0", "{}", "{}"),
        "moves.advance": sql.moves.advance(
            4, DAILY.name, moved='{"rows": 1}', last_key="[1]", before="{}"
        ),
        "moves.tallies": sql.moves.tallies(4),
        "moves.finish": sql.moves.finish(4),
        "rows.distinct_slots": sql.rows.distinct_slots(DAILY.name),
        "rows.slots_among": sql.rows.slots_among(SYSTEM.ledger, [4, 5]),
        "rows.count": sql.rows.count(DAILY.name),
        "rows.left": sql.rows.left(4, [SYSTEM.ledger, DAILY.name]),
        "rows.ledger_chunk": sql.rows.ledger_chunk(4, ledger_columns, 100),
        "rows.delete_ledger_through": sql.rows.delete_ledger_through(4, "e-9"),
        "rows.aggregate_chunk_first": sql.rows.aggregate_chunk(DAILY, 4, None, 100),
        "rows.aggregate_chunk": sql.rows.aggregate_chunk(DAILY, 4, after, 100),
        "rows.delete_aggregates_through": sql.rows.delete_aggregates_through(DAILY, 4, after),
    }


def test_every_statement_of_the_module_is_checked() -> None:
    """A statement added to a group and not to every_statement() fails here."""
    sql = ReshardStatements.of(SQLITE, SYSTEM)
    checked = {name.split("_receiving")[0].split("_first")[0] for name in every_statement(sql)}
    declared = {
        f"{group}.{name}"
        for group, cls in (("slots", SlotTable), ("moves", MoveLedger), ("rows", SlotRows))
        for name, _ in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }
    assert checked == declared


@pytest.mark.parametrize("dialect", [MARIADB, SQLITE], ids=["mariadb", "sqlite"])
def test_statements_quote_bind_and_hold_one_command(dialect: Dialect) -> None:
    """Identifiers quoted, a placeholder per bound value, no ';', every docstring a line."""
    sql = ReshardStatements.of(dialect, SYSTEM)
    q = dialect.quote_char
    names = [SYSTEM.slots, SYSTEM.moves, SYSTEM.ledger, DAILY.name, "sb_slot", "state", "peer"]
    names += ["table_name", "pruned_below", "event_id", "account_id", "day", "product", "done"]
    for name, (text, params) in every_statement(sql).items():
        assert ";" not in text, name
        assert text.count(dialect.placeholder) == len(params), name
        for identifier in names:
            # Every use of a known identifier is quoted (never bare, never half quoted).
            bare = re.findall(rf"(?<![\w{re.escape(q)}]){identifier}(?![\w{re.escape(q)}])", text)
            assert not bare, (name, identifier, text)
    for cls in (SlotTable, MoveLedger, SlotRows, ReshardStatements):
        for member, function in inspect.getmembers(cls, inspect.isfunction):
            if not member.startswith("_"):
                assert function.__doc__, f"{cls.__name__}.{member} has no docstring"


def test_the_share_lock_comes_from_the_dialect() -> None:
    """The ownership row a step checks is share-locked on MariaDB; SQLite needs no suffix."""
    mariadb = ReshardStatements.of(MARIADB, SYSTEM).slots.locked_row(4)[0]
    sqlite = ReshardStatements.of(SQLITE, SYSTEM).slots.locked_row(4)[0]
    assert mariadb.endswith(" = 4 LOCK IN SHARE MODE")
    assert sqlite.endswith(" = 4")


@pytest.mark.parametrize(
    "render",
    [
        lambda sql: sql.slots.rows([1, "2) OR (1=1"]),
        lambda sql: sql.slots.accept("4; DROP TABLE x", "s0", 2),
        lambda sql: sql.moves.forget("4 OR 1=1"),
        lambda sql: sql.rows.ledger_chunk(4, ["event_id"], "10; DELETE"),
    ],
    ids=["in-list", "slot", "forget", "limit"],
)
def test_only_integers_are_rendered(render: Callable[[ReshardStatements], Statement]) -> None:
    """A value rendered into the text that is not an integer is refused before any SQL."""
    with pytest.raises(ValueError, match="invalid literal for int"):
        render(ReshardStatements.of(MARIADB, SYSTEM))


def test_a_table_name_that_is_no_identifier_is_refused() -> None:
    """Names are validated by the dialect's quote: the message names the value."""
    sql = ReshardStatements.of(MARIADB, SYSTEM)
    with pytest.raises(ConfigurationError, match="'usage daily'"):
        sql.rows.count("usage daily")


def test_every_statement_runs_on_sqlite(tmp_path: Path) -> None:
    """Each statement is valid SQL on the tables it names, and does what its docstring says."""
    conn = sqlite3.connect(tmp_path / "shard.db", isolation_level=None)
    dialect = dialect_for(conn)
    for table in SYSTEM.all_defs([DAILY]):
        for statement in dialect.create_statements(table):
            conn.execute(statement)
    sql = ReshardStatements.of(dialect, SYSTEM)
    cursor = conn.cursor()
    for text, params in every_statement(sql).values():  # in order: a syntax error raises
        cursor.execute(text, params)
        cursor.fetchall()
    # Accepted, accepted back, not fenced (never owned here), then marked owned.
    cursor.execute(*sql.slots.rows([4]))
    assert cursor.fetchall() == [(4, "owned", None)]
    cursor.execute(*sql.moves.tallies(4))
    assert cursor.fetchall() == [(DAILY.name, "{}", '{"rows": 1}')]  # advanced from "{}"
    cursor.execute(*sql.slots.accept(9, "s0", 2))
    cursor.execute(*sql.slots.mark_owned([9], "s0", epoch=2))
    cursor.execute(*sql.slots.fence([9], "s1", 3))
    cursor.execute(*sql.slots.rows([9]))
    assert cursor.fetchall() == [(9, "gone", "s1")]
    key = [7, "2026-11-03", "cpu"]
    cursor.execute(
        "INSERT INTO usage_daily (account_id, day, product, sb_slot, quantity, amount, charges) "
        "VALUES (7, '2026-11-03', 'cpu', 9, 1, 2, 1), (7, '2026-11-04', 'cpu', 9, 1, 2, 1)"
    )
    cursor.execute(*sql.rows.aggregate_chunk(DAILY, 9, key, 10))
    assert [row[1] for row in cursor.fetchall()] == ["2026-11-04"]
    cursor.execute(*sql.rows.delete_aggregates_through(DAILY, 9, key))
    cursor.execute(*sql.rows.left(9, [DAILY.name]))
    assert cursor.fetchall() == [(1,)]
