"""Statements of closed periods, on SQLite and MariaDB (issue 20).

Every expected statement is recomputed here, from the raw events and the
test's own copy of the price book's numbers, with plain arithmetic (the
rules engine prices nothing of the expectation, and neither the reader nor
shardbill's money code is used for it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardbill import ShardMap
from shardbill.corrections import Corrector
from shardbill.errors import InvalidInputError, PeriodNotClosedError
from shardbill.periods import Period, PeriodCloser
from shardbill.pipeline import Pipeline
from shardbill.resharding import MemoryMapStore, Resharder, ReshardSettings
from shardbill.rules import PriceBook, RulesEngine, UsageEvent
from shardbill.rules.pricebook import PriceBookRule
from shardbill.statements import StatementBuilder, UsageTotal, price_lines, verify_csv, verify_json
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter
from tests.support.backends import KINDS, Backend, make_backend
from tests.support.clock import fixed_clock

SLOTS = 64
NOV = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
EXPONENT = {"USD": 2, "JPY": 0, "BHD": 3}  # ISO 4217 minor units, written out for the oracle

# The numbers of the price book below, for the oracle.
RATE = {
    "api": Decimal("0.0003"),
    "storage": Decimal("0.02"),
    "email": Decimal("0.0009"),
    "sms": Decimal("0.0075"),
    "bulk": Decimal("0.01"),
}
API_TIERS = (
    (Decimal(0), Decimal(1000), Decimal("0.001")),
    (Decimal(1000), None, Decimal("0.0005")),
)
BULK_TIERS = ((Decimal(0), Decimal(500), Decimal("0.01")), (Decimal(500), None, Decimal("0.004")))
STORAGE_MINIMUM = Decimal("5")
EMAIL_FREE = Decimal(1000)


def book_toml(currency: str) -> str:
    return f"""
[price_book]
name = "statements-test"
version = "t1"
currency = "{currency}"
amount_scale = 6
rounding = "ROUND_HALF_EVEN"

[products.api]
unit = "call"
rate = "0.0003"
corrections = true
[products.api.period]
model = "graduated"
tiers = [{{start = 0, up_to = 1000, rate = "0.001"}}, {{start = 1000, rate = "0.0005"}}]

[products.bulk]
unit = "item"
rate = "0.01"
[products.bulk.period]
model = "volume"
tiers = [{{start = 0, up_to = 500, rate = "0.01"}}, {{start = 500, rate = "0.004"}}]

[products.storage]
unit = "gb"
rate = "0.02"
[products.storage.period]
minimum = "5"

[products.email]
unit = "email"
rate = "0.90"
per = 1000
[products.email.period]
free = 1000

[products.sms]
unit = "message"
rate = "0.0075"
"""


def make_engine(currency: str = "USD") -> RulesEngine:
    book = PriceBook.from_toml(book_toml(currency))
    return RulesEngine(rules=(PriceBookRule(name="test.book", version="1"),), price_book=book)


# ------------------------------------------------------------------ the oracle


def _graduated(q: Decimal, tiers: Any) -> Decimal:
    total = Decimal(0)
    for start, end, rate in tiers:
        if q > start:
            top = q if end is None or q < end else end
            total += (top - start) * rate
    return total


def _volume(q: Decimal, tiers: Any) -> Decimal:
    for _start, end, rate in tiers:
        if end is None or q <= end:
            return q * rate
    raise AssertionError


def oracle_amount(product: str, quantity: Decimal, summed: Decimal) -> Decimal:
    """What a line bills, before rounding: by hand, from the price book's numbers."""
    if product == "api":
        return _graduated(quantity, API_TIERS)
    if product == "bulk":
        return _volume(quantity, BULK_TIERS)
    if product == "storage":
        return max(quantity * RATE["storage"], STORAGE_MINIMUM)
    if product == "email":
        return max(quantity - EMAIL_FREE, Decimal(0)) * RATE["email"]
    return summed


def oracle(events: Iterable[UsageEvent], period: str, currency: str) -> dict[Any, Any]:
    """account -> {"lines": [(product, quantity, usage, charges, amount)], "totals": {...}}."""
    year, month = map(int, period.split("-"))
    sums: dict[Any, dict[str, list[Any]]] = {}
    for e in events:
        if (e.time.year, e.time.month) != (year, month):
            continue
        row = sums.setdefault(e.account, {}).setdefault(e.product, [Decimal(0), Decimal(0), 0])
        row[0] += e.quantity
        row[1] += e.quantity * RATE[e.product]
        row[2] += 1
    step = Decimal(1).scaleb(-EXPONENT[currency])
    out = {}
    for account, products in sums.items():
        lines = []
        totals: dict[str, Decimal] = {}
        for product in sorted(products):
            quantity, usage, charges = products[product]
            amount = oracle_amount(product, quantity, usage).quantize(step, ROUND_HALF_EVEN)
            lines.append((product, quantity, usage, charges, amount))
            totals[currency] = totals.get(currency, Decimal(0)) + amount
        out[account] = {"lines": lines, "totals": totals}
    return out


def as_oracle(statement_json: bytes) -> dict[str, Any]:
    """A statement's JSON, read back into the oracle's shape."""
    data = json.loads(statement_json)
    return {
        "lines": [
            (
                line["product"],
                Decimal(line["quantity"]),
                Decimal(line["usage_amount"]),
                line["charges"],
                Decimal(line["amount"]),
            )
            for line in data["lines"]
        ],
        "totals": {t["currency"]: Decimal(t["amount"]) for t in data["totals"]},
    }


# ------------------------------------------------------------------ deployment


class Deployment:
    """A writer, pipeline, corrector, closer and statement builder over 3 of 4 shards."""

    def __init__(self, backend: Backend, currency: str = "USD") -> None:
        self.backend = backend
        self.store = MemoryMapStore(ShardMap.create(list(backend.shards[:3]), slots=SLOTS))
        self.engine = make_engine(currency)
        self.currency = currency
        self.writer = AggregationWriter(
            shard_map=self.store, provider=backend.provider, tables=billing_tables()
        )
        self.writer.ensure_schema()
        self.pipeline = Pipeline(engine=self.engine, writer=self.writer)
        self.closer = PeriodCloser(
            provider=backend.provider,
            shard_map=self.store,
            clock=fixed_clock,
            sleep=lambda _s: None,
        )
        self.builder = StatementBuilder(
            provider=backend.provider,
            shard_map=self.store,
            tables=billing_tables(),
            price_book=self.engine.price_book,
        )

    def close(self, period: str = "2026-11") -> None:
        assert self.closer.close(period, reason="test", drain_seconds=0).state == "closed"


@pytest.fixture(params=KINDS[:2])
def shards(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Four shards on SQLite or on MariaDB (PyMySQL)."""
    yield from make_backend(request.param, 4, tmp_path, request)


def month_of_events(seed: int, n: int = 120, *, month: int = 11) -> list[UsageEvent]:
    """A seeded month of usage over 7 accounts and every product (and a few December ones)."""
    import random

    rng = random.Random(seed)
    products = ["api", "bulk", "storage", "email", "sms"]
    events = []
    for i in range(n):
        product = products[i % len(products)]
        quantity = (
            rng.choice([1, 7, 40, 333, 999]) if product != "storage" else rng.randrange(1, 90)
        )
        events.append(
            UsageEvent(
                event_id=f"{seed}-{i}",
                account=100 + rng.randrange(7),
                time=dt.datetime(
                    2026, month, 1 + rng.randrange(28), rng.randrange(24), tzinfo=dt.UTC
                ),
                product=product,
                quantity=quantity,
            )
        )
    return events


@pytest.fixture
def deploy(shards: Backend) -> Iterator[Deployment]:
    deployment = Deployment(shards)
    with deployment.writer:
        yield deployment


def test_statements_equal_an_independent_recomputation(deploy: Deployment) -> None:
    """Every account's statement of a closed November equals the oracle's, line by line
    (graduated and volume tiers, a minimum, an allowance, a per-event product), December's
    events are in none of them, and each JSON and CSV carries a checksum that verifies."""
    events = month_of_events(1) + month_of_events(2, 20, month=12)
    assert deploy.pipeline.process(events).ok
    deploy.close()
    statements = deploy.builder.statements("2026-11")
    expected = oracle(events, "2026-11", "USD")
    assert [s.account for s in statements] == sorted(expected)
    for statement in statements:
        data = statement.to_json()
        assert as_oracle(data) == expected[statement.account], statement.account
        assert verify_json(data)
        body = json.loads(data)
        claimed = body.pop("sha256")
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(canonical.encode()).hexdigest() == claimed == statement.checksum
        csv_bytes = statement.to_csv()
        assert verify_csv(csv_bytes)
        *rows, last = csv_bytes.decode().splitlines()
        assert last == "sha256," + hashlib.sha256(("\n".join(rows) + "\n").encode()).hexdigest()
        assert {r.split(",")[3] for r in rows[1:] if r.startswith("line,")} == {
            line[0] for line in expected[statement.account]["lines"]
        }


def test_an_open_or_closing_period_is_refused_with_the_reason(deploy: Deployment) -> None:
    """Before the close no statement is made: the error names the period, its state and the
    command that closes it; a period closing on one shard only is refused too."""
    assert deploy.pipeline.process(month_of_events(3, 20)).ok
    with pytest.raises(PeriodNotClosedError) as refused:
        deploy.builder.statements("2026-11")
    assert "period 2026-11 is open" in str(refused.value)
    assert "shardbill period close 2026-11" in str(refused.value)
    one_shard = PeriodCloser(
        provider=deploy.backend.provider,
        shard_map=ShardMap.create(["s1"], slots=SLOTS),
        clock=fixed_clock,
    )
    assert one_shard.close("2026-11", reason="half", drain_seconds=0).state == "closed"
    with pytest.raises(PeriodNotClosedError, match="closing"):
        deploy.builder.statement("2026-11", 100)


def test_two_runs_and_a_reshard_between_give_the_same_bytes(deploy: Deployment) -> None:
    """The statements are made twice, then a fourth shard is added (slots move) and they are
    made again, also in the middle of the move: the same bytes and checksums every time."""
    assert deploy.pipeline.process(month_of_events(4)).ok
    deploy.close()
    first = [(s.to_json(), s.to_csv()) for s in deploy.builder.statements("2026-11")]
    assert first == [(s.to_json(), s.to_csv()) for s in deploy.builder.statements("2026-11")]
    backend = deploy.backend
    target = deploy.store.load().add_shard(backend.shards[3])
    assert any(target.shard_for(a) == backend.shards[3] for a in range(100, 107))
    during: list[list[bytes]] = []

    def mid_move(name: str) -> None:
        if name.startswith("merge:") and not during:
            during.append([s.to_json() for s in deploy.builder.statements("2026-11")])

    Resharder(
        store=deploy.store,
        provider=backend.provider,
        tables=billing_tables(),
        before_step=mid_move,
        settings=ReshardSettings(chunk_rows=3, parallel_slots=1, lease_wait=0),
    ).run(target)
    assert during == [[j for j, _ in first]]
    after = [(s.to_json(), s.to_csv()) for s in deploy.builder.statements("2026-11")]
    assert after == first


def test_corrections_before_the_close_are_in_the_statement(deploy: Deployment) -> None:
    """A cancel and an amend applied before the close change the statement exactly as the
    oracle over the events' current contents says; a fully cancelled product has no line."""
    events = [
        UsageEvent(
            event_id=f"c{i}",
            account=500,
            time=NOV + dt.timedelta(days=i % 20),
            product="api",
            quantity=300,
        )
        for i in range(5)
    ] + [UsageEvent(event_id="only-sms", account=500, time=NOV, product="sms", quantity=4)]
    assert deploy.pipeline.process(events).ok
    corrector = Corrector(
        writer=deploy.writer,
        engine=deploy.engine,
        provider=deploy.backend.provider,
        clock=lambda: 1e9,
    )
    assert corrector.cancel(events[0], correction_id="x1", reason="t").state == "applied"
    assert corrector.cancel(events[5], correction_id="x2", reason="t").state == "applied"
    amended = UsageEvent(
        event_id="c1", account=500, time=events[1].time, product="api", quantity=1000
    )
    assert corrector.amend(amended, correction_id="x3", reason="t", original=events[1]).state == (
        "applied"
    )
    deploy.close()
    current = [amended, *events[2:5]]
    statement = deploy.builder.statement("2026-11", 500)
    assert as_oracle(statement.to_json()) == oracle(current, "2026-11", "USD")[500]
    assert [line.product for line in statement.lines] == ["api"]


def test_an_account_without_usage_gets_an_empty_statement(deploy: Deployment) -> None:
    """An account asked for by name with no usage in the period gets a statement with no
    lines and no totals (still checksummed); a statement of another period is refused."""
    assert deploy.pipeline.process(month_of_events(5, 10)).ok
    deploy.close()
    empty = deploy.builder.statement("2026-11", 99999)
    assert (empty.lines, empty.totals) == ((), {})
    assert verify_json(empty.to_json())
    with pytest.raises(PeriodNotClosedError):
        deploy.builder.statement("2026-10", 100)


@pytest.mark.parametrize("currency", ["USD", "JPY", "BHD"])
def test_minor_units_follow_the_currency(shards: Backend, currency: str) -> None:
    """The same usage priced in USD, JPY and BHD rounds each line once to 2, 0 and 3 places
    (half-even), and minor_units is the amount in those units."""
    deployment = Deployment(shards, currency)
    with deployment.writer:
        events = month_of_events(6, 60)
        assert deployment.pipeline.process(events).ok
        deployment.close()
        statements = deployment.builder.statements("2026-11")
    expected = oracle(events, "2026-11", currency)
    for statement in statements:
        assert as_oracle(statement.to_json()) == expected[statement.account]
        for line in json.loads(statement.to_json())["lines"]:
            places = len(line["amount"].partition(".")[2])
            assert places == EXPONENT[currency]
            assert line["minor_units"] == int(Decimal(line["amount"]).scaleb(EXPONENT[currency]))


# ------------------------------------------------------------------ pure: the line pricing


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["api", "bulk", "storage", "email", "sms"]),
            st.integers(min_value=0, max_value=5000),
        ),
        max_size=30,
    ),
    st.sampled_from(["USD", "JPY", "BHD"]),
)
def test_price_lines_match_the_oracle_for_any_usage(
    usage: list[tuple[str, int]], currency: str
) -> None:
    """For any period's usage of one account, the priced lines equal the oracle's (tiers on
    the period total, the minimum, the allowance, half-even rounding at the currency)."""
    engine = make_engine(currency)
    events = [
        UsageEvent(event_id=f"p{i}", account=1, time=NOV, product=p, quantity=q)
        for i, (p, q) in enumerate(usage)
    ]
    totals = {}
    for e in events:
        t = totals.setdefault(e.product, [Decimal(0), Decimal(0), 0])
        t[0] += e.quantity
        t[1] += e.quantity * RATE[e.product]
        t[2] += 1
    lines = price_lines(
        [
            UsageTotal(product=p, currency=currency, quantity=q, usage_amount=a, charges=n)
            for p, (q, a, n) in totals.items()
        ],
        price_book=engine.price_book,
        account=1,
        period=Period.parse("2026-11"),
    )
    want = oracle(events, "2026-11", currency).get(1, {"lines": []})["lines"]
    want = [w for w in want if not (w[1] == 0 and w[2] == 0 and w[3] == 0)]
    assert [(x.product, x.quantity, x.usage_amount, x.charges, x.amount) for x in lines] == want


def test_a_negative_period_total_names_the_account_and_product() -> None:
    """More corrections than usage leaves a period model nothing to price: the error names
    the statement, the account, the product and the total."""
    engine = make_engine()
    with pytest.raises(InvalidInputError, match=r"2026-11 account 7 product 'api'.*-5"):
        price_lines(
            [
                UsageTotal(
                    product="api",
                    currency="USD",
                    quantity=Decimal(-5),
                    usage_amount=Decimal("-0.0015"),
                    charges=0,
                )
            ],
            price_book=engine.price_book,
            account=7,
            period=Period.parse("2026-11"),
        )


# ------------------------------------------------------------------ configuration and names


def test_a_table_that_cannot_give_statements_is_refused(tmp_path: Path) -> None:
    """A table not in the set, one without month/product keys, and one keyed by a local
    month are refused when the builder is made, each saying what is missing and what to use."""
    import zoneinfo

    from shardbill.errors import ConfigurationError
    from shardbill.providers import PooledProvider
    from shardbill.tables.aggregates import Account as AccountKey
    from shardbill.tables.aggregates import (
        AggregateTable,
        Amount,
        BigInt,
        Date,
        KeyColumn,
        Measure,
        Month,
        Product,
        Quantity,
        VarChar,
    )

    provider = PooledProvider.sqlite_directory(tmp_path, ["s0"])
    common = {
        "provider": provider,
        "shard_map": ShardMap.create(["s0"]),
        "price_book": make_engine().price_book,
    }
    with pytest.raises(ConfigurationError, match="'nope' is not among the tables"):
        StatementBuilder(tables=billing_tables(), table="nope", **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="lacks a month key, a product key"):
        StatementBuilder(tables=billing_tables(), table="account_balance", **common)  # type: ignore[arg-type]
    local = AggregateTable(
        name="local_monthly",
        keys=(
            KeyColumn(name="account_id", type=BigInt(), projection=AccountKey()),
            KeyColumn(
                name="month",
                type=Date(),
                projection=Month(tz=zoneinfo.ZoneInfo("Europe/Berlin")),
            ),
            KeyColumn(name="product", type=VarChar(64), projection=Product()),
        ),
        measures=(
            Measure(name="quantity", value=Quantity(scale=6)),
            Measure(name="amount", value=Amount(scale=6)),
        ),
    )
    with pytest.raises(ConfigurationError, match=r"Europe/Berlin.*UTC month"):
        StatementBuilder(tables=[local], table="local_monthly", **common)  # type: ignore[arg-type]
    utc_zone = attrs.evolve(
        local,
        keys=(
            local.keys[0],
            attrs.evolve(local.keys[1], projection=Month(tz=zoneinfo.ZoneInfo("Etc/UTC"))),
            local.keys[2],
        ),
    )
    StatementBuilder(tables=[utc_zone], table="local_monthly", **common)  # type: ignore[arg-type]
    provider.close()


def test_string_accounts_sort_and_name_files_safely() -> None:
    """A statement of a string account keeps it as a JSON string; the CLI's file name
    percent-encodes it, so no account can name a path outside the directory."""
    from shardbill.cli.statement import file_name
    from shardbill.statements import Statement

    statement = Statement(
        period="2026-11",
        account="../acme corp/ü",
        price_book="b",
        price_book_version="1",
        rounding="ROUND_HALF_EVEN",
        table="usage_monthly",
        lines=(),
    )
    assert json.loads(statement.to_json())["account"] == "../acme corp/ü"
    assert verify_json(statement.to_json())
    assert file_name(statement, "csv") == "statement-2026-11-..%2Facme%20corp%2F%C3%BC.csv"
    assert "/" not in file_name(statement, "json")


def test_accounts_may_be_any_iterable_even_a_generator(deploy: Deployment) -> None:
    """``accounts=`` read once (a generator) gives the same statements as a list, in account
    order, each account once."""
    assert deploy.pipeline.process(month_of_events(7, 30)).ok
    deploy.close()
    wanted = [103, 101, 103]
    from_list = deploy.builder.statements("2026-11", accounts=wanted)
    from_generator = deploy.builder.statements("2026-11", accounts=(a for a in wanted))
    assert [s.account for s in from_list] == [101, 103]
    assert [s.to_json() for s in from_generator] == [s.to_json() for s in from_list]


def test_a_month_written_corrected_resharded_closed_then_stated_and_audited(
    deploy: Deployment,
) -> None:
    """The issue's whole month-end: half a month written, a fourth shard added while the
    rest is written and an event is cancelled mid-move, an amend after the move, the
    close; then `audit --period` is exact on every shard with the corrections, and every
    statement equals the oracle over the events' current contents."""
    from shardbill.audit import audit

    backend = deploy.backend
    events = month_of_events(8, 90)
    first, rest = events[:45], events[45:]
    assert deploy.pipeline.process(first).ok
    corrector = Corrector(
        writer=deploy.writer,
        engine=deploy.engine,
        provider=backend.provider,
        map_store=deploy.store,
        clock=lambda: 1e9,
    )
    api = [e for e in first if e.product == "api"]
    done: list[str] = []

    def mid_move(name: str) -> None:
        if name.startswith("merge:") and not done:
            done.append(corrector.cancel(api[0], correction_id="mid", reason="t").state)
            assert deploy.pipeline.process(rest).ok

    target = deploy.store.load().add_shard(backend.shards[3])
    Resharder(
        store=deploy.store,
        provider=backend.provider,
        tables=billing_tables(),
        before_step=mid_move,
        settings=ReshardSettings(chunk_rows=5, parallel_slots=1, lease_wait=0),
    ).run(target)
    assert done == ["applied"]
    amended = attrs.evolve(api[1], quantity=api[1].quantity + 1000)
    result = corrector.amend(amended, correction_id="after", reason="t", original=api[1])
    assert result.state == "applied"
    deploy.close()

    report = audit(
        events,
        engine=deploy.engine,
        tables=billing_tables(),
        provider=backend.provider,
        shard_map=deploy.store.load(),
        corrections=corrector.records(),
        period="2026-11",
    )
    assert report.exact, [d.describe() for d in report.differences[:5]]
    assert set(report.shards) == set(backend.shards)
    current = [e for e in events if e.event_id != api[0].event_id]
    current = [amended if e.event_id == amended.event_id else e for e in current]
    expected = oracle(current, "2026-11", "USD")
    statements = deploy.builder.statements("2026-11")
    assert {s.account: as_oracle(s.to_json()) for s in statements} == expected
