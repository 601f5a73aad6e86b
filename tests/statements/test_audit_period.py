"""``audit(period=...)``: Σ events + Σ corrections = Σ aggregates for one period, on SQLite
and MariaDB. The rows are changed behind shardbill's back (plain SQL) to show that the
period audit sees a change in its period and only there."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardbill import ShardMap
from shardbill.audit import AuditReport, audit, in_period, period_columns
from shardbill.corrections import Corrector
from shardbill.errors import ConfigurationError
from shardbill.pipeline import Pipeline
from shardbill.resharding import MemoryMapStore
from shardbill.rules import UsageEvent, comms
from shardbill.tables.aggregates import Account, AggregateTable, Amount, BigInt, KeyColumn, Measure
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter
from tests.support.backends import KINDS, Backend, make_backend


@pytest.fixture(params=KINDS[:2])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Three shards on SQLite or on MariaDB (PyMySQL)."""
    yield from make_backend(request.param, 3, tmp_path, request)


def sms(event_id: str, account: int, month: int, day: int = 10) -> UsageEvent:
    return UsageEvent(
        event_id=event_id,
        account=account,
        time=dt.datetime(2026, month, day, 9, tzinfo=dt.UTC),
        product="sms",
        quantity=1,
        dimensions={"country": "GB", "characters": 100},
    )


class Setup:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.engine = comms.engine()
        self.writer = AggregationWriter(
            shard_map=MemoryMapStore(ShardMap.create(list(backend.shards), slots=32)),
            provider=backend.provider,
            tables=billing_tables(),
        )
        self.writer.ensure_schema()
        self.pipeline = Pipeline(engine=self.engine, writer=self.writer)
        self.nov = [sms(f"n{i}", 10 + i % 5, 11, 1 + i % 28) for i in range(30)]
        self.dec = [sms(f"d{i}", 10 + i % 5, 12, 1 + i % 2) for i in range(10)]
        assert self.pipeline.process(self.nov + self.dec).ok

    def audit(self, events: list[UsageEvent], period: str | None, **kw: Any) -> AuditReport:
        return audit(
            events,
            engine=self.engine,
            tables=billing_tables(),
            provider=self.backend.provider,
            shard_map=self.writer.shard_map,
            period=period,
            **kw,
        )

    def bump(self, table: str, month: int) -> None:
        """Add one unit to every row of ``table`` in ``month``, by hand, on every shard."""
        column = "day" if table == "usage_daily" else "month"
        for shard in self.backend.shards:
            self.backend.execute(
                shard,
                f"UPDATE `{table}` SET `charges` = `charges` + 1 WHERE `{column}` >= "
                f"'2026-{month:02d}-01' AND `{column}` < '{2026 + month // 12}-"
                f"{month % 12 + 1:02d}-01'",
            )


@pytest.fixture
def setup(backend: Backend) -> Iterator[Setup]:
    s = Setup(backend)
    with s.writer:
        yield s


def test_the_period_audit_compares_only_that_periods_rows(setup: Setup) -> None:
    """November's events alone audit exact for 2026-11 (December's rows are not compared),
    but not for all time; account_balance (no period key) is skipped with the reason."""
    report = setup.audit(setup.nov, "2026-11")
    assert report.exact, [d.describe() for d in report.differences[:3]]
    assert report.period == "2026-11"
    assert report.tables == ("usage_daily", "usage_monthly", "usage_by_country")
    assert "no day or month key" in report.skipped["account_balance"]
    assert report.to_dict()["skipped"] == report.skipped
    assert not setup.audit(setup.nov, None).exact
    december = setup.audit(setup.nov + setup.dec, "2026-12")
    assert december.exact
    assert december.found_rows == december.expected_rows > 0


def test_a_change_in_the_period_is_found_and_one_outside_it_is_not(setup: Setup) -> None:
    """A December row changed by hand is a difference for 2026-12, not for 2026-11; a
    November usage_daily row changed is one for 2026-11, reported per account and table."""
    setup.bump("usage_monthly", 12)
    assert setup.audit(setup.nov, "2026-11").exact
    december = setup.audit(setup.dec, "2026-12")
    assert {(d.table, d.kind) for d in december.differences} == {("usage_monthly", "value")}
    setup.bump("usage_daily", 11)
    november = setup.audit(setup.nov, "2026-11")
    found = {(d.table, d.account, d.measure) for d in november.differences}
    assert found == {("usage_daily", a, "charges") for a in range(10, 15)}


def test_corrections_count_in_their_period(setup: Setup) -> None:
    """A cancelled November event: the period audit is exact with the correction records
    and shows the difference without them."""
    corrector = Corrector(writer=setup.writer, engine=setup.engine, provider=setup.backend.provider)
    assert corrector.cancel(setup.nov[0], correction_id="c1", reason="t").state == "applied"
    records = corrector.records()
    assert setup.audit(setup.nov, "2026-11", corrections=records).exact
    assert not setup.audit(setup.nov, "2026-11").exact
    assert setup.audit(setup.dec, "2026-12", corrections=records).exact


def test_period_columns_and_a_table_set_without_one() -> None:
    """The period column is the first day or month key; a table set with none refuses a
    period audit, saying why; a date is in a period by its year and month."""
    columns, skipped = period_columns(billing_tables())
    assert columns == {"usage_daily": 1, "usage_monthly": 1, "usage_by_country": 1}
    assert set(skipped) == {"account_balance"}
    assert in_period(dt.date(2026, 11, 30), "2026-11")
    assert not in_period(dt.date(2026, 12, 1), "2026-11")
    balance = AggregateTable(
        name="t",
        keys=(KeyColumn(name="account_id", type=BigInt(), projection=Account()),),
        measures=(Measure(name="amount", value=Amount(scale=6)),),
    )
    with pytest.raises(ConfigurationError, match="no table has a day or month key"):
        audit(
            [],
            engine=comms.engine(),
            tables=[balance],
            provider=None,  # type: ignore[arg-type]
            shard_map=ShardMap.create(["s0"]),
            period="2026-11",
        )
