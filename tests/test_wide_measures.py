"""Wide measures: row sums past 2**63 - 1, exact on MySQL/MariaDB, refused on SQLite (issue 13).

A measure declared ``wide=True`` is a ``DECIMAL(65,0)`` column. Its row sums
pass the BIGINT edge exactly (the server adds decimals exactly), come back
from the reader, the resharder and the audit as exact ints and Decimals, and
an event that would pass ``10**65 - 1`` is refused alone, like a BIGINT
overflow. SQLite refuses such a table set before it creates anything. A
narrow measure refuses a sum past 2**63 - 1 as before.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
import textwrap
from collections.abc import Iterator
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import pytest

from shardbill import Reader, ShardMap
from shardbill.audit import audit
from shardbill.cli import main
from shardbill.config import Config
from shardbill.dialects.mysql import MySQLDialect
from shardbill.errors import ConfigurationError, InvalidInputError, SchemaError
from shardbill.providers import PooledProvider
from shardbill.resharding import MemoryMapStore, Resharder, ReshardSettings
from shardbill.rules import Charge, UsageEvent, comms
from shardbill.tables import aggregate_table_def
from shardbill.tables.aggregates import (
    WIDE_MAX,
    Account,
    AggregateTable,
    Amount,
    BigInt,
    Count,
    KeyColumn,
    Measure,
    Product,
    Quantity,
    VarChar,
)
from shardbill.writer import AggregationWriter, EventState
from shardbill.writer.extraction import RowExtractor
from shardbill.writer.planning import CoalescedRow, deltas_fit
from tests.support.backends import KINDS, Backend, make_backend

MYSQL_KINDS = [k for k in KINDS if k.id != "sqlite"]
WHEN = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
BIG = Decimal(3_000_000_000_000)  # 3e18 units at scale 6: three fit a BIGINT row, four do not
SLOTS = 64


def tables(*, wide: bool) -> tuple[AggregateTable, ...]:
    """One table per (account, product): a quantity sum and max (wide or not), amount, count."""
    return (
        AggregateTable(
            name="usage_total",
            keys=(
                KeyColumn(name="account_id", type=BigInt(), projection=Account()),
                KeyColumn(name="product", type=VarChar(32), projection=Product()),
            ),
            measures=(
                Measure(name="quantity", value=Quantity(scale=6), wide=wide),
                Measure(name="biggest", value=Quantity(scale=6), merge="max", wide=wide),
                Measure(name="amount", value=Amount(scale=6)),
                Measure(name="events", value=Count()),
            ),
        ),
    )


def charge(event_id: str, account: int, quantity: Decimal) -> Charge:
    return Charge(
        event_id=event_id,
        account=account,
        product="sms",
        quantity=quantity,
        amount=Decimal("1.5"),
        currency="USD",
        time=WHEN,
        rule="wide",
        rule_version="1",
    )


@pytest.fixture(params=MYSQL_KINDS)
def mysql3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Three MariaDB databases, through PyMySQL or mysqlclient."""
    yield from make_backend(request.param, 3, tmp_path, request)


@pytest.fixture(params=MYSQL_KINDS)
def mysql4(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Four MariaDB databases (s0..s3), through PyMySQL or mysqlclient."""
    yield from make_backend(request.param, 4, tmp_path, request)


def _stored(backend: Backend, account: int) -> list[tuple[object, ...]]:
    found = []
    for shard in backend.shards:
        found += backend.rows(
            shard,
            "SELECT quantity, biggest, amount, events FROM usage_total "
            f"WHERE account_id = {int(account)}",
        )
    return found


# --------------------------------------------------------------------------- without a server


def test_a_wide_measure_is_a_decimal_65_column_on_mysql() -> None:
    """The DDL gives a wide measure DECIMAL(65,0) and a narrow one BIGINT."""
    (sql,) = (MySQLDialect(flavor="mariadb", version=(10, 11, 19))).create_statements(
        aggregate_table_def(tables(wide=True)[0])
    )
    assert "`quantity` DECIMAL(65,0) NOT NULL" in sql
    assert "`biggest` DECIMAL(65,0) NOT NULL" in sql
    assert "`amount` BIGINT NOT NULL" in sql


def test_the_range_check_takes_the_wide_bound_on_both_paths() -> None:
    """A charge of 1e19 units: a wide measure takes it (compiled and reference path alike)."""
    extractor = RowExtractor(tables(wide=True))
    big = charge("e1", 7, Decimal(10_000_000_000_000))  # 1e19 units: past 2**63 - 1
    rows, _ = extractor.extract(big)
    assert rows == [(0, (7, "sms"), (10**19, 10**19, 1_500_000, 1))]
    assert extractor.reference_rows(big) == rows
    assert extractor._compiled(big) is not None  # the fast path accepted it, no fallback
    huge = charge("e2", 7, Decimal(10) ** 53)  # 59 digits of units: still exact and in range
    assert extractor.rows(huge)[0][2][0] == 10**59 < WIDE_MAX


def test_a_narrow_measure_refuses_a_charge_past_bigint_and_names_the_wide_option() -> None:
    """The narrow range is unchanged; the message says how to get a wider column."""
    big = charge("e1", 7, Decimal(10_000_000_000_000))
    for extract in (RowExtractor(tables(wide=False)).rows, tables(wide=False)[0].deltas_of):
        with pytest.raises(InvalidInputError, match=r"outside the BIGINT range.*wide=True"):
            extract(big)


def test_a_value_stored_wide_in_one_table_and_narrow_in_another_takes_the_narrow_bound() -> None:
    """The same quantity in a wide and a narrow column: a charge must fit both."""
    mixed = (
        *tables(wide=True),
        AggregateTable(
            name="narrow_total",
            keys=(KeyColumn(name="account_id", type=BigInt(), projection=Account()),),
            measures=(Measure(name="quantity", value=Quantity(scale=6)),),
        ),
    )
    extractor = RowExtractor(mixed)
    with pytest.raises(InvalidInputError, match=r"'narrow_total'.*outside the BIGINT range"):
        extractor.rows(charge("e1", 7, Decimal(10_000_000_000_000)))
    assert len(extractor.rows(charge("e2", 7, BIG))) == 2


def test_merged_deltas_are_checked_against_each_columns_range() -> None:
    """A merged delta of 2**63 fits a wide column, not a narrow one; past 10**65 - 1 neither."""
    row = CoalescedRow(key=(7, "sms"), slot=0, deltas=(2**63, 2**63, 1, 1))
    assert deltas_fit([[row]], tables(wide=True))
    assert not deltas_fit([[row]], tables(wide=False))
    assert not deltas_fit([[row]])  # without tables: every column a BIGINT
    past = row._replace(deltas=(WIDE_MAX + 1, 1, 1, 1))
    assert not deltas_fit([[past]], tables(wide=True))


def test_sqlite_refuses_a_wide_measure_before_creating_anything(tmp_path: Path) -> None:
    """ensure_schema on SQLite names the table, the measure and the fixes; no table is made."""
    provider = PooledProvider.sqlite_directory(tmp_path, ["s0"])
    writer = AggregationWriter(
        shard_map=ShardMap.create(["s0"], slots=SLOTS), provider=provider, tables=tables(wide=True)
    )
    with writer, closing(provider):
        with pytest.raises(SchemaError) as caught:
            writer.ensure_schema()
        message = str(caught.value)
        for part in ("'usage_total'", "'quantity'", "MySQL/MariaDB", "wide=True"):
            assert part in message
        with closing(sqlite3.connect(tmp_path / "s0.db")) as conn:
            assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
        with pytest.raises(SchemaError, match="declared wide"):  # a write refuses it too
            writer.write([charge("e1", 7, BIG)])


def test_the_configuration_file_declares_a_wide_measure(tmp_path: Path) -> None:
    """``wide = true`` in a custom table's measure; anything but a boolean is refused."""
    text = """
    [shards]
    a = "mysql+pymysql://app@db0:3306/billing"
    [aggregates]
    tables = "none"
    [[aggregates.custom]]
    name = "t"
    keys = [{ name = "acct", projection = "account" }]
    measures = [{ name = "bytes", value = "quantity", wide = %s }]
    """
    path = tmp_path / "shardbill.toml"
    path.write_text(textwrap.dedent(text % "true"), encoding="utf-8")
    assert Config.load(path).tables[0].measures[0].wide is True
    path.write_text(textwrap.dedent(text % "'yes'"), encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"aggregates\.custom\[0\]\.measures\[0\]\.wide"):
        Config.load(path)


def test_the_configuration_file_refuses_a_wide_measure_on_a_sqlite_shard(tmp_path: Path) -> None:
    """With a SQLite shard, ``wide = true`` is refused when the file is loaded, by its key."""
    path = tmp_path / "shardbill.toml"
    path.write_text(
        '[shards]\na = "mysql+pymysql://app@db0:3306/billing"\nb = "sqlite:///b.db"\n'
        '[aggregates]\ntables = "none"\n[[aggregates.custom]]\nname = "t"\n'
        'keys = [{ name = "acct", projection = "account" }]\n'
        'measures = [{ name = "n", value = "count" }, '
        '{ name = "bytes", value = "quantity", wide = true }]\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigurationError) as caught:
        Config.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: aggregates.custom[0].measures[1].wide: ")
    for part in ("'bytes'", "'t'", "SQLite shard 'b'", "MySQL/MariaDB"):
        assert part in message


# --------------------------------------------------------------------------- on the servers


def test_a_wide_row_sums_past_2_63_exactly(mysql3: Backend) -> None:
    """Four charges of 3e18 units: the row holds 1.2e19 exactly; the reader gives it back."""
    shard_map = ShardMap.create(mysql3.shards, slots=SLOTS)
    with AggregationWriter(
        shard_map=shard_map, provider=mysql3.provider, tables=tables(wide=True)
    ) as writer:
        writer.ensure_schema()
        first = writer.write([charge("w0", 7, BIG), charge("w1", 7, BIG)])
        second = writer.write([charge("w2", 7, BIG), charge("w3", 7, BIG + 1)])
    assert first.ok
    assert second.ok
    assert first.applied_events | second.applied_events == {"w0", "w1", "w2", "w3"}
    total = 4 * 3 * 10**18 + 10**6
    ((quantity, biggest, amount, events),) = _stored(mysql3, 7)
    assert (int(quantity), int(biggest), amount, events) == (
        total,
        3 * 10**18 + 10**6,
        6 * 10**6,
        4,
    )
    assert total > 2**63 - 1
    reader = Reader(shard_map=shard_map, provider=mysql3.provider, tables=tables(wide=True))
    (row,) = reader.rows("usage_total", 7)
    assert row.measures["quantity"] == Decimal("12000000000001.000000")
    assert type(row.measures["quantity"]) is Decimal
    totals = reader.totals("usage_total", group_by=["product"])
    assert totals[("sms",)]["quantity"] == Decimal("12000000000001.000000")
    assert totals[("sms",)]["biggest"] == Decimal("3000000000001.000000")


def test_a_narrow_row_still_refuses_the_event_that_would_pass_2_63(backend: Backend) -> None:
    """Narrow measures are unchanged: the fourth 3e18 is rejected alone, the others apply."""
    shard_map = ShardMap.create(backend.shards, slots=SLOTS)
    with AggregationWriter(
        shard_map=shard_map, provider=backend.provider, tables=tables(wide=False)
    ) as writer:
        writer.ensure_schema()
        result = writer.write([charge(f"n{i}", 7, BIG) for i in range(4)] + [charge("x", 8, BIG)])
    (rejection,) = result.rejected  # whichever of the four came last
    assert rejection.event_id in {"n0", "n1", "n2", "n3"}
    assert "past the BIGINT maximum" in rejection.reason
    assert "wide=True" in rejection.reason
    assert len(result.applied_events) == 4
    assert "x" in result.applied_events
    ((quantity, _, _, events),) = _stored(backend, 7)
    assert (quantity, events) == (9 * 10**18, 3)


def test_a_wide_row_past_decimal_65_refuses_only_that_event(mysql3: Backend) -> None:
    """A row 10 units under 10**65 - 1: the event that passes it is rejected, the rest applies."""
    shard_map = ShardMap.create(mysql3.shards, slots=SLOTS)
    with AggregationWriter(
        shard_map=shard_map, provider=mysql3.provider, tables=tables(wide=True)
    ) as writer:
        writer.ensure_schema()
        assert writer.write([charge("seed", 7, Decimal(1))]).ok
        shard = shard_map.shard_for(7)
        mysql3.execute(
            shard, f"UPDATE usage_total SET quantity = {WIDE_MAX - 10} WHERE account_id = 7"
        )
        result = writer.write([charge("over", 7, Decimal(1)), charge("fine", 8, Decimal(1))])
    assert result.events == {"over": EventState.REJECTED, "fine": EventState.APPLIED}
    (rejection,) = result.rejected
    reason = rejection.reason
    assert "DECIMAL(65,0) maximum" in reason
    assert "headroom 10" in reason
    ((quantity, _, _, events),) = _stored(mysql3, 7)
    assert (int(quantity), events) == (WIDE_MAX - 10, 1)  # nothing of "over" was applied


def _events(accounts: range, per_account: int) -> list[UsageEvent]:
    return [
        UsageEvent(
            event_id=f"big-{a}-{i}",
            account=a,
            time=WHEN,
            product="sms",
            quantity=BIG + i,
            dimensions={"country": "US"},
        )
        for a in accounts
        for i in range(per_account)
    ]


def test_wide_rows_move_exactly_in_a_reshard_and_audit_exact(mysql4: Backend) -> None:
    """3 -> 4 shards with rows past 2**63: copy, merge and verify exact; the audit agrees."""
    wide = tables(wide=True)
    store = MemoryMapStore(ShardMap.create(["s0", "s1", "s2"], slots=SLOTS))
    events = _events(range(1, 25), 4)
    engine = comms.engine()
    charges = engine.price_batch(events).charges
    with AggregationWriter(shard_map=store, provider=mysql4.provider, tables=wide) as writer:
        writer.ensure_schema()
        half = len(charges) // 2
        assert writer.write(charges[:half]).ok  # rows on the moving slots before the move
        target = store.load().add_shard("s3")
        resharder = Resharder(
            store=store,
            provider=mysql4.provider,
            tables=wide,
            settings=ReshardSettings(chunk_rows=3),
        )
        resharder.run(target)
        assert writer.write(charges[half:]).ok
    assert resharder.verify() == []
    moved = {s for s in range(SLOTS) if store.load().owner(s) == "s3"}
    assert moved
    reader = Reader(shard_map=store, provider=mysql4.provider, tables=wide)
    for account in range(1, 25):
        (row,) = reader.rows("usage_total", account)
        assert row.measures["quantity"] == Decimal(4 * 3_000_000_000_000 + 6).quantize(
            Decimal("0.000001")
        )
    assert any(store.load().shard_for(a) == "s3" for a in range(1, 25))
    report = audit(events, engine=engine, tables=wide, provider=mysql4.provider, shard_map=target)
    assert report.exact, [d.describe() for d in report.differences]
    # One unit off in a 20-digit sum is a difference (no float anywhere would see it).
    shard = target.shard_for(1)
    mysql4.execute(shard, "UPDATE usage_total SET quantity = quantity + 1 WHERE account_id = 1")
    report = audit(events, engine=engine, tables=wide, provider=mysql4.provider, shard_map=target)
    assert len(report.differences) == 1


def test_the_how_to_examples_run(tmp_path: Path) -> None:
    """The how-to's Python block runs and its TOML block loads as a wide custom table."""
    page = Path(__file__).parents[1] / "docs" / "howto" / "store-wide-measures.md"
    blocks = re.findall(r"```(python|toml)\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    kinds = [kind for kind, _ in blocks]
    assert kinds == ["python", "toml"]
    exec(compile(blocks[0][1], str(page), "exec"), {})  # noqa: S102 - the page's own example
    path = tmp_path / "shardbill.toml"
    path.write_text(
        '[shards]\na = "mysql+pymysql://app@db0:3306/billing"\n[aggregates]\ntables = "none"\n'
        + blocks[1][1],
        encoding="utf-8",
    )
    (table,) = Config.load(path).tables
    assert [m.wide for m in table.measures] == [True, False]


def test_the_command_line_ingests_and_audits_wide_rows_exactly(
    mysql3: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """init, ingest and audit from a configuration file with a wide measure: exact past 2**63."""
    config = tmp_path / "shardbill.toml"
    shards = "\n".join(f'{name} = "{url}"' for name, url in mysql3.urls.items())
    config.write_text(
        f"slots = {SLOTS}\n[shards]\n{shards}\n[map_store]\npath = 'map.json'\n"
        "[aggregates]\ntables = 'none'\n[[aggregates.custom]]\nname = 'traffic_total'\n"
        "keys = [{ name = 'account_id', projection = 'account' }]\n"
        "measures = [{ name = 'units', value = 'quantity', wide = true },"
        " { name = 'events', value = 'count' }]\n",
        encoding="utf-8",
    )
    events = tmp_path / "day.jsonl"
    lines = [
        json.dumps(
            {
                "event_id": f"big-{i}",
                "account": 7,
                "time": WHEN.isoformat(),
                "product": "sms",
                "quantity": str(BIG + i),
                "dimensions": {"country": "US"},
            }
        )
        for i in range(4)
    ]
    events.write_text("\n".join(lines) + "\n", encoding="utf-8")
    flags = ["--config", str(config)]
    assert main(["init", *flags]) == 0
    assert main(["ingest", str(events), *flags]) == 0
    capsys.readouterr()
    assert main(["audit", str(events), "--json", *flags]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["audit"] == "exact"
    ((units, count),) = [
        row
        for shard in mysql3.shards
        for row in mysql3.rows(shard, "SELECT units, events FROM traffic_total")
    ]
    assert (int(units), count) == (4 * 3 * 10**18 + 6 * 10**6, 4)
