"""A model-based property test: any shape of deliveries leaves exactly the model's totals.

Hypothesis drives a writer over three shards (SQLite files, or MariaDB
databases through PyMySQL and through mysqlclient) with calls made of
priced events and loose numbered charges, repeated inside and across calls,
in any order, with an id's content changed (another amount, another account
on another shard, more parts), events split over calls, parts mixed up inside
a call, sums that would pass the BIGINT edge, events that age past the dedup
horizon as the clock moves, and prunes in between. A plain-Python model says
what each event's state must be and what every account's balance must hold;
after every step the shards (read directly) and every reported state must
agree with it.

The shards are created once per backend and emptied between examples (every
table's rows deleted, slot ownership recorded again), so an example starts
from nothing without the cost of creating databases. MariaDB runs fewer
examples than SQLite (``SHARDBILL_MODEL_EXAMPLES_MYSQL``, default 25; SQLite
``SHARDBILL_MODEL_EXAMPLES``, default 60); the long run is, e.g.::

    SHARDBILL_MODEL_EXAMPLES_MYSQL=300 .venv/bin/python -m pytest \\
        tests/test_exactly_once_model.py -k mysqldb
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from shardbill import ShardMap
from shardbill.rules import Charge, PricedEvent
from shardbill.tables.aggregates import BIGINT_MAX, WIDE_MAX, AggregateTable, Amount
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter, EventState
from tests.support.backends import KINDS, Backend, make_backend

SHARDS = ("s0", "s1", "s2")  # the names make_backend gives three shards
MAP = ShardMap.create(SHARDS, slots=64)
START = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
DAY = 86_400
WHALE = 777
WHALE_AMOUNT = Decimal(3_000_000_000_000)  # 3e18 micro-units: three fit a BIGINT row, four do not


def _other_shard(account: int) -> int:
    home = MAP.shard_for(account)
    return next(a for a in range(account + 1, account + 999) if MAP.shard_for(a) != home)


def _charge(event_id: str, account: int, amount: Decimal, when: dt.datetime, **kw: Any) -> Charge:
    return Charge(
        event_id=event_id,
        account=account,
        product="sms",
        quantity=1,
        amount=amount,
        currency="USD",
        time=when,
        rule="model",
        rule_version="1",
        **kw,
    )


def _variants(n: int) -> dict[str, tuple[Charge, ...]]:
    """Three contents for ``e{n}``: one charge, the same on another shard, two parts."""
    event_id = f"e{n}"
    when = START - dt.timedelta(days=30 if n >= 6 else 1)  # e6, e7 age out first
    account = 10 + n
    amount = Decimal(n + 1)
    return {
        "one": (_charge(event_id, account, amount, when),),
        "moved": (_charge(event_id, _other_shard(account), amount, when),),
        "split": (
            _charge(event_id, account, amount, when, part=0, parts=2),
            _charge(event_id, 900 + n, Decimal("0.5"), when, part=1, parts=2),
        ),
    }


CATALOGUE = {f"e{n}": _variants(n) for n in range(8)}
WHALES = {
    f"w{n}": {"one": (_charge(f"w{n}", WHALE, WHALE_AMOUNT, START - dt.timedelta(days=1)),)}
    for n in range(5)
}
EVERYTHING = {**CATALOGUE, **WHALES}

# One delivery item: (event id, variant, shape); shapes: priced, flat, first part only.
item = st.one_of(
    st.tuples(
        st.sampled_from(sorted(CATALOGUE)),
        st.sampled_from(["one", "moved", "split"]),
        st.sampled_from(["priced", "flat", "partial"]),
    ),
    st.tuples(st.sampled_from(sorted(WHALES)), st.just("one"), st.just("flat")),
)


def _items_of(event_id: str, variant: str, shape: str) -> list[Charge | PricedEvent]:
    charges = EVERYTHING[event_id][variant]
    if shape == "priced":
        return [PricedEvent(event_id=event_id, time=charges[0].time, charges=charges)]
    if shape == "partial":
        return [charges[0]]
    return list(charges)


class ExactlyOnceModel(RuleBasedStateMachine):
    """Deliveries of every shape against a model of what must be applied."""

    def __init__(self, backend: Backend, direct: _Direct, *, wide: bool = False) -> None:
        super().__init__()
        self.direct = direct
        direct.empty()
        self.now = START.timestamp()
        self.wide = wide
        self.limit = WIDE_MAX if wide else BIGINT_MAX
        self.writer = AggregationWriter(
            shard_map=MAP, provider=backend.provider, tables=_tables(wide=wide), clock=self._clock
        )
        self.writer.ensure_schema()
        self.accepted: dict[str, str] = {}  # event id -> the variant applied
        self.last: dict[str, EventState] = {}
        self.expected: dict[str, EventState] = {}

    def _clock(self) -> float:
        return self.now

    def teardown(self) -> None:
        self.writer.close()

    # -- the model -----------------------------------------------------------------

    def _whales_fit(self, extra: int) -> bool:
        held = sum(1 for e in self.accepted if e in WHALES)
        return (held + extra) * WHALE_AMOUNT * 10**6 <= self.limit

    def _refused(self, event_id: str, delivered: set[tuple[str, str]]) -> bool:
        variants = {v for v, _ in delivered}
        if len(variants) > 1:
            return True  # two contents for one id inside a call
        (variant,) = variants
        if variant == "split" and {s for _, s in delivered} == {"partial"}:
            return True  # only part 0 of 2 arrived
        when = EVERYTHING[event_id][variant][0].time.timestamp()
        return when < self.now - 35 * DAY  # older than the dedup horizon

    def _expect(self, event_id: str, delivered: set[tuple[str, str]]) -> EventState:
        if self._refused(event_id, delivered):
            return EventState.REJECTED
        (variant,) = {v for v, _ in delivered}
        if event_id in WHALES:
            if event_id in self.accepted:
                return EventState.DUPLICATE
            return EventState.APPLIED if self._whales_fit(1) else EventState.REJECTED
        if event_id not in self.accepted:
            return EventState.APPLIED
        return EventState.DUPLICATE if self.accepted[event_id] == variant else EventState.CONFLICT

    # -- the rules -----------------------------------------------------------------

    @rule(
        picks=st.lists(item, min_size=1, max_size=8),
        repeat=st.integers(min_value=1, max_value=2),
        reverse=st.booleans(),
    )
    def deliver(self, picks: list[tuple[str, str, str]], repeat: int, reverse: bool) -> None:
        """One call: the picked items, maybe twice, maybe reversed (at most one new whale)."""
        new_whale = None
        kept = []
        for pick in picks:  # two new whales in one call could go in either order: keep one
            if pick[0] in WHALES and pick[0] not in self.accepted:
                if new_whale is not None and pick[0] != new_whale:
                    continue
                new_whale = pick[0]
            kept.append(pick)
        delivered: dict[str, set[tuple[str, str]]] = defaultdict(set)
        items: list[Charge | PricedEvent] = []
        for event_id, variant, shape in kept * repeat:
            delivered[event_id].add((variant, shape))
            items.extend(_items_of(event_id, variant, shape))
        if reverse:
            items.reverse()
        self.expected = {e: self._expect(e, d) for e, d in delivered.items()}
        result = self.writer.write(items)
        self.last = dict(result.events)
        for event_id, state in self.expected.items():
            if state is EventState.APPLIED:
                (variant,) = {v for v, _ in delivered[event_id]}
                self.accepted[event_id] = variant

    @precondition(lambda self: self.now < START.timestamp() + 60 * DAY)
    @rule(days=st.integers(min_value=1, max_value=10), prune=st.booleans())
    def time_passes(self, days: int, prune: bool) -> None:
        """The clock moves on; maybe the ledger is pruned below the new horizon."""
        self.now += days * DAY
        self.expected = {}
        self.last = {}
        if prune:
            self.writer.prune()

    # -- the checks ----------------------------------------------------------------

    @invariant()
    def states_match_the_model(self) -> None:
        """Every event of the last call is in the state the model says."""
        assert self.last == self.expected

    @invariant()
    def balances_match_the_model(self) -> None:
        """Every account's balance (read directly) is the sum of its accepted charges."""
        want: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for event_id, variant in self.accepted.items():
            for c in EVERYTHING[event_id][variant]:
                want[int(c.account)][0] += int(c.amount * 10**6)
                want[int(c.account)][1] += 1
        got: dict[int, list[int]] = {}
        for shard in SHARDS:
            for account, amount, count in self.direct.rows(
                shard, "SELECT account_id, amount, charges FROM account_balance"
            ):
                assert account not in got
                assert type(count) is int
                if self.wide:  # DECIMAL(65,0) comes back as a Decimal: an integral one
                    assert type(amount) is Decimal
                    assert amount == int(amount)
                    got[account] = [int(amount), count]
                else:
                    assert type(amount) is int
                    got[account] = [amount, count]
        assert got == dict(want)


class _Direct:
    """One plain connection per shard (autocommit), not through shardbill, kept open:
    a new MySQL connection per check would cost more than the whole example."""

    def __init__(self, backend: Backend) -> None:
        self.kind = backend.kind
        self.conns: dict[str, Any] = {}
        for shard in backend.shards:
            if backend.kind == "sqlite":
                self.conns[shard] = sqlite3.connect(backend.locations[shard], isolation_level=None)
            else:
                assert backend.server is not None
                self.conns[shard] = backend.server.connect(backend.locations[shard])

    def rows(self, shard: str, sql: str) -> list[tuple[Any, ...]]:
        """Run one statement on ``shard`` and return its rows."""
        if self.kind == "sqlite":
            return list(self.conns[shard].execute(sql.replace("`", '"')).fetchall())
        with self.conns[shard].cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())

    def empty(self) -> None:
        """Delete every row of every table on every shard (the schema stays)."""
        listing = (
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            if self.kind == "sqlite"
            else "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
        )
        for shard in self.conns:
            for (table,) in self.rows(shard, listing):
                self.rows(shard, f"DELETE FROM `{table}`")

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


def _tables(*, wide: bool) -> tuple[AggregateTable, ...]:
    """The billing tables; with ``wide``, every amount measure a DECIMAL(65,0)."""
    tables = billing_tables()
    if not wide:
        return tables
    return tuple(
        attrs.evolve(
            t,
            measures=[
                attrs.evolve(m, wide=True) if isinstance(m.value, Amount) else m for m in t.measures
            ],
        )
        for t in tables
    )


@pytest.fixture(params=KINDS)
def shards(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Three shards (s0..s2) on SQLite, or on MariaDB through PyMySQL or mysqlclient."""
    yield from make_backend(request.param, 3, tmp_path, request)


def test_deliveries_of_any_shape_leave_the_models_totals(shards: Backend) -> None:
    """Any sequence of deliveries leaves exactly the model's balances and reported states."""
    on_sqlite = shards.kind == "sqlite"
    examples = int(
        os.environ.get("SHARDBILL_MODEL_EXAMPLES", "60")
        if on_sqlite
        else os.environ.get("SHARDBILL_MODEL_EXAMPLES_MYSQL", "25")
    )
    with closing(_Direct(shards)) as direct:
        run_state_machine_as_test(
            lambda: ExactlyOnceModel(shards, direct),
            settings=settings(
                max_examples=examples,
                stateful_step_count=12,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
            ),
        )


@pytest.fixture(params=[k for k in KINDS if k.id != "sqlite"])
def mysql_shards(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Three shards on MariaDB through PyMySQL or mysqlclient (wide measures need them)."""
    yield from make_backend(request.param, 3, tmp_path, request)


def test_wide_amounts_leave_the_models_totals_past_2_63(mysql_shards: Backend) -> None:
    """The same model with every amount wide: the whales all fit, sums pass 2**63 exactly."""
    examples = int(os.environ.get("SHARDBILL_MODEL_EXAMPLES_MYSQL", "25")) // 2 or 1
    with closing(_Direct(mysql_shards)) as direct:
        run_state_machine_as_test(
            lambda: ExactlyOnceModel(mysql_shards, direct, wide=True),
            settings=settings(
                max_examples=examples,
                stateful_step_count=12,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
            ),
        )
