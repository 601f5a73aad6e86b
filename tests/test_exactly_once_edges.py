"""Exactly once at the edges: one event id, one application, whatever shape its deliveries take.

Each test is a regression test for a way issue 13 found to double-bill or
lose money *without any fault* (repeats inside a call, an id reused on another
account, split events, sums past BIGINT, the caller's decimal context, pruning,
results that hide what happened). They run on SQLite and on MariaDB through
both drivers, and read the shards directly (tests/support/backends.py), never
through the code under test.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from shardbill import ShardMap
from shardbill.errors import CannotConnectError, CommitOutcomeUnknownError
from shardbill.retry import RetryPolicy
from shardbill.rules import Charge
from shardbill.tables.aggregates import (
    BIGINT_MAX,
    Account,
    AggregateTable,
    Amount,
    Count,
    KeyColumn,
    Measure,
)
from shardbill.tables.aggregates import BigInt as BigIntColumn
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter, EventState, PricedEvent, WriterSettings
from tests.support.backends import Backend
from tests.support.oracle import actual_rows, expected_rows

NOW = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
DAY = 86_400


def charge(event_id: str, account: int, amount: str = "1.25", **kw: Any) -> Charge:
    """A valid charge at NOW (scale 6) for ``account``."""
    fields: dict[str, Any] = {
        "event_id": event_id,
        "account": account,
        "product": "sms",
        "quantity": 1,
        "amount": Decimal(amount),
        "currency": "USD",
        "time": NOW,
        "rule": "test",
        "rule_version": "1",
    }
    fields.update(kw)
    return Charge(**fields)


def make_writer(backend: Backend, shard_map: ShardMap, **kw: Any) -> AggregationWriter:
    """A writer over the billing tables whose clock is NOW, schema applied."""
    kw.setdefault("clock", NOW.timestamp)
    writer = AggregationWriter(
        shard_map=shard_map,
        provider=kw.pop("provider", backend.provider),
        tables=billing_tables(),
        **kw,
    )
    writer.ensure_schema()
    return writer


def balance(backend: Backend, shards: Any = None) -> dict[int, tuple[int, int]]:
    """account -> (amount in micro-units, charges) from account_balance on every shard."""
    out: dict[int, tuple[int, int]] = {}
    for shard in backend.shards if shards is None else shards:
        for account, amount, count in backend.rows(
            shard, "SELECT account_id, amount, charges FROM `account_balance`"
        ):
            assert account not in out
            out[int(account)] = (int(amount), int(count))
    return out


def other_shard_account(shard_map: ShardMap, account: int) -> int:
    """An account whose slot lives on another shard than ``account``'s."""
    home = shard_map.shard_for(account)
    for candidate in range(account + 1, account + 1000):
        if shard_map.shard_for(candidate) != home:
            return candidate
    raise AssertionError("no account on another shard")


# --------------------------------------------------------------------- 1. repeats inside a call


def test_an_exact_repeat_inside_one_call_is_applied_once(backend: Backend) -> None:
    """write([c, c]) stores c once, counts it once, and a later redelivery is a duplicate."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    c = charge("dup-1", 7)
    with make_writer(backend, shard_map) as writer:
        first = writer.write([c, c, c])
        again = writer.write([c])
    assert balance(backend) == {7: (1_250_000, 1)}
    assert first.applied_events == {"dup-1"}
    assert first.state_of("dup-1") is EventState.APPLIED
    assert again.duplicate_events == {"dup-1"}
    assert again.conflict_events == frozenset()


def test_two_different_charges_claiming_one_part_reject_their_event_alone(
    backend: Backend,
) -> None:
    """Two different charges both 'part 0 of 1' of one id are refused; the batch goes on."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    with make_writer(backend, shard_map) as writer:
        result = writer.write([charge("x-1", 7), charge("x-1", 7, "2.00"), charge("ok-1", 8)])
    assert result.rejected_events == {"x-1"}
    assert "part 0" in result.rejection("x-1").reason
    assert result.applied_events == {"ok-1"}
    assert balance(backend) == {8: (1_250_000, 1)}


# --------------------------------------------------------------------- 2. an id reused elsewhere


def test_the_same_id_billed_to_another_account_on_another_shard_is_a_conflict(
    backend: Backend,
) -> None:
    """inv-7 billed to account A, then redelivered billed to B on another shard: a Conflict."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    other = other_shard_account(shard_map, 10)
    with make_writer(backend, shard_map) as writer:
        first = writer.write([charge("inv-7", 10)])
        second = writer.write([charge("inv-7", other)])
    assert first.applied_events == {"inv-7"}
    assert second.conflict_events == {"inv-7"}
    assert not second.ok
    assert balance(backend) == {10: (1_250_000, 1)}


def test_the_same_id_billed_to_another_account_on_the_same_shard_is_a_conflict(
    backend: Backend,
) -> None:
    """The same, for two accounts whose slots differ but live on one shard."""
    shard_map = ShardMap.create(backend.shards[:1], slots=64)
    a = 10
    b = next(x for x in range(11, 999) if shard_map.slot_for(x) != shard_map.slot_for(a))
    with make_writer(backend, shard_map) as writer:
        writer.write([charge("inv-8", a)])
        second = writer.write([charge("inv-8", b)])
    assert second.conflict_events == {"inv-8"}
    assert balance(backend, shard_map.shards) == {a: (1_250_000, 1)}


def test_a_conflicting_id_in_one_writer_is_seen_by_another_writer(backend: Backend) -> None:
    """Identity holds across writers (processes): the claim lives on the shards, not in memory."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    other = other_shard_account(shard_map, 20)
    with make_writer(backend, shard_map) as one:
        one.write([charge("inv-9", 20)])
    with make_writer(backend, shard_map) as two:
        result = two.write([charge("inv-9", other, "3.00")])
    assert result.conflict_events == {"inv-9"}
    assert balance(backend) == {20: (1_250_000, 1)}


# --------------------------------------------------------------------- 3. split events


def test_an_event_split_over_two_calls_is_refused_not_half_applied(backend: Backend) -> None:
    """Part 0 of 2 alone is rejected as incomplete; nothing of it is written."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    parent = other_shard_account(shard_map, 30)
    part0 = charge("split-1", 30, part=0, parts=2)
    part1 = charge("split-1", parent, "0.50", part=1, parts=2)
    with make_writer(backend, shard_map) as writer:
        first = writer.write([part0])
        assert first.rejected_events == {"split-1"}
        assert "incomplete" in first.rejection("split-1").reason
        assert balance(backend) == {}
        both = writer.write([part1, part0])
        again = writer.write([part0, part1])
    assert both.applied_events == {"split-1"}
    assert again.duplicate_events == {"split-1"}
    assert balance(backend) == {30: (1_250_000, 1), parent: (500_000, 1)}


def test_a_priced_event_carries_all_its_charges(backend: Backend) -> None:
    """A PricedEvent is one unit of delivery: repeats fold, a changed repeat conflicts."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    parent = other_shard_account(shard_map, 40)
    event = PricedEvent(
        event_id="pe-1", time=NOW, charges=(charge("pe-1", 40), charge("pe-1", parent, "0.25"))
    )
    changed = PricedEvent(event_id="pe-1", time=NOW, charges=(charge("pe-1", 40),))
    with make_writer(backend, shard_map) as writer:
        first = writer.write([event, event])
        second = writer.write([changed])
        third = writer.write([event])
    assert first.applied_events == {"pe-1"}
    assert second.conflict_events == {"pe-1"}
    assert third.duplicate_events == {"pe-1"}
    assert balance(backend) == {40: (1_250_000, 1), parent: (250_000, 1)}


def test_identical_charges_of_one_event_are_kept_when_numbered(backend: Backend) -> None:
    """Two equal charges that are parts 0 and 1 of one event are both applied."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    with make_writer(backend, shard_map) as writer:
        result = writer.write(
            [charge("twice-1", 50, part=0, parts=2), charge("twice-1", 50, part=1, parts=2)]
        )
    assert result.applied_events == {"twice-1"}
    assert balance(backend) == {50: (2_500_000, 2)}


# --------------------------------------------------------------------- 4. sums past BIGINT


def _big_table() -> AggregateTable:
    return AggregateTable(
        name="big_totals",
        keys=(KeyColumn(name="account_id", type=BigIntColumn(), projection=Account()),),
        measures=(
            Measure(name="amount", value=Amount(scale=0)),
            Measure(name="charges", value=Count()),
        ),
    )


def _big_writer(backend: Backend, shard_map: ShardMap) -> AggregationWriter:
    writer = AggregationWriter(
        shard_map=shard_map, provider=backend.provider, tables=[_big_table()], clock=NOW.timestamp
    )
    writer.ensure_schema()
    return writer


def _big_rows(backend: Backend) -> dict[int, tuple[object, int]]:
    out: dict[int, tuple[object, int]] = {}
    for shard in backend.shards:
        for account, amount, count in backend.rows(
            shard, "SELECT account_id, amount, charges FROM `big_totals`"
        ):
            out[int(account)] = (amount, int(count))
    return out


HALF = BIGINT_MAX // 2 + 1  # two of these overflow a row


def test_a_charge_that_would_overflow_its_row_is_rejected_alone(backend: Backend) -> None:
    """The overflowing event is rejected with table, column and headroom; the rest applies."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    with _big_writer(backend, shard_map) as writer:
        assert writer.write([charge("big-1", 60, str(HALF))]).applied_events == {"big-1"}
        result = writer.write([charge("big-2", 60, str(HALF)), charge("small-1", 61, "5")])
    assert result.rejected_events == {"big-2"}
    reason = result.rejection("big-2").reason
    assert "big_totals.amount" in reason
    assert "headroom" in reason
    assert str(BIGINT_MAX - HALF) in reason
    assert result.applied_events == {"small-1"}
    assert _big_rows(backend) == {60: (HALF, 1), 61: (5, 1)}


def test_two_overflowing_charges_in_one_batch_apply_one_and_reject_the_other(
    backend: Backend,
) -> None:
    """No raw OverflowError escapes; one event fits, the other is refused alone."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    with _big_writer(backend, shard_map) as writer:
        result = writer.write(
            [charge("big-b", 70, str(HALF)), charge("big-a", 70, str(HALF)), charge("ok", 71, "1")]
        )
    assert len(result.applied_events - {"ok"}) == 1
    assert result.rejected_events | result.applied_events == {"big-a", "big-b", "ok"}
    assert _big_rows(backend) == {70: (HALF, 1), 71: (1, 1)}


def test_two_overflowing_charges_on_one_shard_keep_event_id_order(backend: Backend) -> None:
    """With one shard everything is one transaction: the first event by id fits."""
    shard_map = ShardMap.create(backend.shards[:1], slots=64)
    with _big_writer(backend, shard_map) as writer:
        result = writer.write([charge("big-b", 70, str(HALF)), charge("big-a", 70, str(HALF))])
    assert result.applied_events == {"big-a"}
    assert result.rejected_events == {"big-b"}


def test_deltas_that_cancel_inside_a_batch_are_not_an_overflow(backend: Backend) -> None:
    """A row that ends in range is applied even if the coalesced sum would pass through the edge."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    with _big_writer(backend, shard_map) as writer:
        writer.write([charge("edge-0", 80, str(BIGINT_MAX - 10))])
        result = writer.write([charge("edge-1", 80, "-20"), charge("edge-2", 80, "15")])
    assert result.applied_events == {"edge-1", "edge-2"}
    assert _big_rows(backend) == {80: (BIGINT_MAX - 15, 3)}


def test_sqlite_rows_stay_exact_integers(tmp_path: Any) -> None:
    """On SQLite an aggregate column never becomes REAL (the schema refuses it)."""
    import sqlite3

    from shardbill.providers import PooledProvider

    provider = PooledProvider.sqlite_directory(tmp_path, ["s0"])
    shard_map = ShardMap.create(["s0"], slots=16)
    try:
        with AggregationWriter(
            shard_map=shard_map, provider=provider, tables=[_big_table()], clock=NOW.timestamp
        ) as writer:
            writer.ensure_schema()
            writer.write([charge("r-1", 1, str(HALF))])
            writer.write([charge("r-2", 1, str(HALF))])
    finally:
        provider.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "s0.db")) as conn:
        kinds = conn.execute("SELECT typeof(amount), amount FROM big_totals").fetchall()
        assert kinds == [("integer", HALF)]
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE big_totals SET amount = amount + ?", (HALF,))


# --------------------------------------------------------------------- 5. the decimal context


@pytest.mark.parametrize(
    "context",
    [
        decimal.Context(prec=10),
        decimal.Context(prec=6, rounding=decimal.ROUND_DOWN, traps=[]),
        decimal.Context(prec=28, rounding=decimal.ROUND_CEILING),
    ],
    ids=["prec10", "prec6-down-no-traps", "ceiling"],
)
def test_money_never_depends_on_the_callers_decimal_context(
    backend: Backend, context: decimal.Context
) -> None:
    """A valid charge of 1234567.123456 is stored exactly whatever the thread's context."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    with make_writer(backend, shard_map) as writer:
        c = charge("ctx-1", 90, "1234567.123456", quantity=Decimal("98765432.654321"))
        with decimal.localcontext(context):
            result = writer.write([c])
    assert result.applied_events == {"ctx-1"}
    assert balance(backend) == {90: (1_234_567_123_456, 1)}
    assert actual_rows(backend) == expected_rows([c])


# --------------------------------------------------------------------- 6. the dedup horizon


def test_an_event_older_than_the_horizon_is_refused_as_too_late(backend: Backend) -> None:
    """An event 36 days old is rejected (a redelivery after pruning can never apply twice)."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    old = charge("old-1", 100, time=NOW - dt.timedelta(days=36))
    fresh = charge("new-1", 101, time=NOW - dt.timedelta(days=34))
    with make_writer(backend, shard_map) as writer:
        result = writer.write([old, fresh])
    assert result.rejected_events == {"old-1"}
    assert "horizon" in result.rejection("old-1").reason
    assert result.applied_events == {"new-1"}


def test_prune_keeps_what_the_horizon_still_accepts(backend: Backend) -> None:
    """Prune deletes by event time below the horizon only: a redelivery inside it is a duplicate."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    c = charge("keep-1", 110, time=NOW - dt.timedelta(days=1))
    with make_writer(backend, shard_map) as writer:
        writer.write([c])
    # The writer that prunes runs 30 days later: the event is 31 days old, inside 35.
    later = NOW.timestamp() + 30 * DAY
    with make_writer(backend, shard_map, clock=lambda: later) as writer:
        writer.prune()
        again = writer.write([c])
    assert again.duplicate_events == {"keep-1"}
    assert balance(backend) == {110: (1_250_000, 1)}


def test_a_writer_whose_clock_is_behind_cannot_reapply_pruned_events(backend: Backend) -> None:
    """After a prune on a correct clock, a writer days behind is refused by the watermark."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    c = charge("late-1", 120, time=NOW - dt.timedelta(days=10))
    with make_writer(backend, shard_map) as writer:
        writer.write([c])
    ahead = NOW.timestamp() + 30 * DAY  # the event is 40 days old here: pruned
    with make_writer(backend, shard_map, clock=lambda: ahead) as pruner:
        deleted = pruner.prune()
    assert sum(deleted.values()) >= 1
    with make_writer(backend, shard_map) as behind:  # its clock still says NOW
        result = behind.write([c])
    assert result.rejected_events == {"late-1"}
    assert "horizon" in result.rejection("late-1").reason
    assert balance(backend) == {120: (1_250_000, 1)}


def test_prune_uses_the_writers_clock_by_default(backend: Backend) -> None:
    """prune() takes 'now' from the writer's clock, not from the host's."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    c = charge("clock-1", 130, time=NOW - dt.timedelta(days=1))
    with make_writer(backend, shard_map) as writer:
        writer.write([c])
    # By this writer's clock the event is 41 days old; by the host's it is not.
    ahead = NOW.timestamp() + 40 * DAY
    with make_writer(backend, shard_map, clock=lambda: ahead) as writer:
        assert sum(writer.prune().values()) >= 1


# --------------------------------------------------------------------- 7. results


def test_every_event_is_in_exactly_one_state(backend: Backend) -> None:
    """applied, duplicate, conflict, rejected and failed partition the call's event ids."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    other = other_shard_account(shard_map, 140)
    with make_writer(backend, shard_map) as writer:
        writer.write([charge("st-dup", 140), charge("st-conf", 140)])
        result = writer.write(
            [
                charge("st-dup", 140),
                charge("st-conf", other),
                charge("st-new", 141),
                charge("st-bad", 142, time=NOW - dt.timedelta(days=90)),
            ]
        )
    states = {e: result.state_of(e) for e in ("st-dup", "st-conf", "st-new", "st-bad")}
    assert states == {
        "st-dup": EventState.DUPLICATE,
        "st-conf": EventState.CONFLICT,
        "st-new": EventState.APPLIED,
        "st-bad": EventState.REJECTED,
    }
    assert result.done == {"st-dup", "st-new"}
    assert result.retry == frozenset()
    assert not result.ok  # a conflict and a rejection need a look


class _LosesTheCommitThatApplies:
    """Wraps a provider: the block whose COMMIT writes ``event_id``'s ledger rows commits,
    then reports its COMMIT lost (as a connection dropped during COMMIT would)."""

    def __init__(self, backend: Backend, event_id: str) -> None:
        self.backend = backend
        self.inner = backend.provider
        self.event_id = event_id
        self.lost = 0

    def _ledger_rows(self, shard: str) -> int:
        sql = f"SELECT COUNT(*) FROM `shardbill_ledger` WHERE event_id = '{self.event_id}'"
        return int(self.backend.rows(shard, sql)[0][0])

    @contextlib.contextmanager
    def connection(self, shard: str, *, readonly: bool = False) -> Iterator[Any]:
        before = self._ledger_rows(shard)
        with self.inner.connection(shard, readonly=readonly) as conn:
            yield conn
        if self._ledger_rows(shard) > before:
            self.lost += 1
            raise CommitOutcomeUnknownError(
                "test: the COMMIT's answer was lost", errno=2013, shard=shard
            )

    def close(self) -> None:
        self.inner.close()


def test_a_lost_commit_that_landed_is_reported_applied(backend: Backend) -> None:
    """The only attempt's COMMIT lands but its answer is lost: the ledger resolves it as applied."""
    shard_map = ShardMap.create(backend.shards[:1], slots=64)
    with make_writer(backend, shard_map):
        pass  # the schema, through the plain provider
    lossy = _LosesTheCommitThatApplies(backend, "lost-1")
    settings = WriterSettings(retry=RetryPolicy(max_attempts=1))
    with AggregationWriter(
        shard_map=shard_map,
        provider=lossy,
        tables=billing_tables(),
        settings=settings,
        clock=NOW.timestamp,
    ) as writer:
        result = writer.write([charge("lost-1", 150)])
    assert lossy.lost == 1
    assert result.applied_events == {"lost-1"}
    assert result.done == {"lost-1"}
    assert balance(backend, shard_map.shards) == {150: (1_250_000, 1)}


class _DownFor:
    """Wraps a provider: connections are refused for the first ``seconds`` after creation."""

    def __init__(self, inner: Any, seconds: float) -> None:
        import time

        self.inner = inner
        self.until = time.monotonic() + seconds

    @contextlib.contextmanager
    def connection(self, shard: str, *, readonly: bool = False) -> Iterator[Any]:
        import time

        if time.monotonic() < self.until:
            raise CannotConnectError("test: the server is failing over", errno=2003, shard=shard)
        with self.inner.connection(shard, readonly=readonly) as conn:
            yield conn

    def close(self) -> None:
        self.inner.close()


def test_the_default_retry_budget_rides_through_a_short_failover(backend: Backend) -> None:
    """A 2-second outage is retried through by default (the budget is time, not attempts)."""
    shard_map = ShardMap.create(backend.shards[:1], slots=64)
    with make_writer(backend, shard_map) as writer:
        pass  # schema applied while the server is up
    down = _DownFor(backend.provider, seconds=2.0)
    with AggregationWriter(
        shard_map=shard_map, provider=down, tables=billing_tables(), clock=NOW.timestamp
    ) as writer:
        result = writer.write([charge("fo-1", 160)])
    assert result.applied_events == {"fo-1"}
    assert balance(backend, shard_map.shards) == {160: (1_250_000, 1)}


def test_default_retry_budget_covers_a_thirty_second_failover() -> None:
    """The default policy keeps retrying for at least 30 s of waits before giving up."""
    policy = RetryPolicy()
    assert policy.budget_seconds >= 30
    assert WriterSettings().retry.budget_seconds >= 30


def test_a_moved_slot_keeps_its_dedup_watermark_on_the_new_owner(backend: Backend) -> None:
    """Pruned on the old owner, then resharded: the new owner refuses the pruned event too,
    even from a writer whose clock is behind."""
    from shardbill.resharding import MemoryMapStore, Resharder

    old = ShardMap.create(backend.shards[:2], slots=64)
    target = old.add_shard(backend.shards[2])
    moved = {m.slot for m in old.plan_to(target).moves}
    account = next(a for a in range(1, 10_000) if old.slot_for(a) in moved)
    per_account = WriterSettings(id_scope="per-account")  # only the moving slot guards it
    c = charge("wm-1", account, time=NOW - dt.timedelta(days=10))
    with make_writer(backend, old, settings=per_account) as writer:
        assert writer.write([c]).applied_events == {"wm-1"}
    ahead = NOW.timestamp() + 30 * DAY  # the event is 40 days old here
    with make_writer(backend, old, settings=per_account, clock=lambda: ahead) as pruner:
        assert sum(pruner.prune().values()) == 1
    store = MemoryMapStore(old)
    Resharder(store=store, provider=backend.provider, tables=billing_tables()).run(target)
    with AggregationWriter(
        shard_map=store,
        provider=backend.provider,
        tables=billing_tables(),
        settings=per_account,
        clock=NOW.timestamp,  # behind: by its clock the event is inside the horizon
    ) as behind:
        result = behind.write([c])
    assert result.rejected_events == {"wm-1"}
    assert balance(backend) == {account: (1_250_000, 1)}


def test_an_event_that_overflows_on_one_shard_is_rejected_whole(backend: Backend) -> None:
    """A two-shard event whose part on one shard would overflow: rejected, never failed.

    Found by the simulation (seed 15): the event came back ``failed`` (retry it),
    which no retry can ever make true, and its redelivery was then a conflict.
    """
    shard_map = ShardMap.create(backend.shards, slots=64)
    other = other_shard_account(shard_map, 90)
    with _big_writer(backend, shard_map) as writer:
        assert writer.write([charge("fill", 90, str(HALF))]).applied_events == {"fill"}
        event = PricedEvent(
            event_id="wide",
            time=NOW,
            charges=(charge("wide", other, "7"), charge("wide", 90, str(HALF))),
        )
        first = writer.write([event])
        again = writer.write([event])
    for result in (first, again):
        assert result.rejected_events == {"wide"}, result
        assert "big_totals.amount" in result.rejection("wide").reason
        assert not result.retry
    assert _big_rows(backend) == {90: (HALF, 1)}


def _ids(shard_map: ShardMap, shard: str, *, on: bool, prefix: str) -> str:
    """The first id ``prefix-N`` whose identity claim is (``on``) or is not on ``shard``."""
    for n in range(10_000):
        event_id = f"{prefix}-{n}"
        if (shard_map.shard_for(event_id) == shard) is on:
            return event_id
    raise AssertionError("no such id")


@pytest.mark.parametrize("home_first", [True, False])
def test_a_spread_event_and_another_of_its_call_overflowing_a_row_together(
    backend: Backend, home_first: bool
) -> None:
    """Two events of one call fit a row alone and overflow it together; one of them is on
    two shards, its part on that row in the call's later round. It is rejected whole, or
    the other is; never half applied and then ``failed`` for ever (simulation seed 50137:
    the look-ahead judged the call's events in id order, the shards applied the other
    event's round first)."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    row = 90
    full = shard_map.shard_for(row)
    other = other_shard_account(shard_map, row)
    # The spread event's claim is not on the row's shard (its part there waits for the
    # second round); the other's is (it goes in the first). Either may sort first.
    spread_id = _ids(shard_map, full, on=False, prefix="a" if home_first else "b")
    single_id = _ids(shard_map, full, on=True, prefix="b" if home_first else "a")
    spread = PricedEvent(
        event_id=spread_id,
        time=NOW,
        charges=(charge(spread_id, other, "7"), charge(spread_id, row, str(HALF))),
    )
    with _big_writer(backend, shard_map) as writer:
        first = writer.write([spread, charge(single_id, row, str(HALF))])
        again = writer.write([spread])
    assert first.failed_events == set(), first
    assert again.failed_events == set(), again
    assert first.applied_events | first.rejected_events == {spread_id, single_id}
    assert len(first.applied_events) == 1
    rows = _big_rows(backend)
    if spread_id in first.applied_events:
        assert rows == {row: (HALF, 1), other: (7, 1)}
        assert again.duplicate_events == {spread_id}
    else:  # nothing of the spread event is in; alone, it is judged against the row
        assert rows == {row: (HALF, 1)}
        assert again.rejected_events == {spread_id}


def test_an_event_too_late_for_one_shards_watermark_is_rejected_whole(backend: Backend) -> None:
    """A two-shard event older than one slot's dedup watermark: nothing of it is applied."""
    shard_map = ShardMap.create(backend.shards, slots=64)
    other = other_shard_account(shard_map, 91)
    with make_writer(backend, shard_map) as writer:
        slot, shard = writer.locate(91)
        mark = int(NOW.timestamp()) + 60  # as a pruner whose clock is ahead would leave it
        backend.execute(
            shard, f"UPDATE shardbill_slots SET pruned_below = {mark} WHERE sb_slot = {slot}"
        )
        event = PricedEvent(
            event_id="late-spread",
            time=NOW,
            charges=(charge("late-spread", other), charge("late-spread", 91)),
        )
        result = writer.write([event, charge("fine", other)])
    assert result.rejected_events == {"late-spread"}
    assert "horizon" in result.rejection("late-spread").reason
    assert result.applied_events == {"fine"}
    assert balance(backend) == {other: (1_250_000, 1)}


def test_a_rejected_event_leaves_its_id_free(backend: Backend) -> None:
    """Refused by its row's shard after its identity claim was written elsewhere: the
    claim goes too, so the corrected event under the same id applies (not a conflict).

    Found by the simulation (seed 27 with split events).
    """
    shard_map = ShardMap.create(backend.shards, slots=64)
    with _big_writer(backend, shard_map) as writer:
        account = next(  # an account whose shard is not the one its event id's claim is on
            a
            for a in range(200, 400)
            if writer.locate(a)[1] != shard_map.owner(shard_map.slot_for(f"fix-{a}"))
        )
        event_id = f"fix-{account}"
        writer.write([charge("fill", account, str(HALF))])
        first = writer.write([charge(event_id, account, str(HALF))])
        fixed = writer.write([charge(event_id, account, "1")])
    assert first.rejected_events == {event_id}
    assert fixed.applied_events == {event_id}, fixed
    assert _big_rows(backend)[account] == (HALF + 1, 2)


# ------------------------------------------------- 4b. sums past BIGINT while a row is in motion
#
# Between a slot's fence and the end of its merge, a row lives in two parts: the old
# owner's frozen row and the new owner's deltas. Found by the simulation (seed 1066):
# the headroom check saw only the new owner's part, so an event that fit it but not the
# sum was acknowledged, and the merge then failed on every run ("reshards never finish").


def _mover(
    backend: Backend, hook: Any, **settings: Any
) -> tuple[Any, ShardMap, ShardMap, set[int]]:
    from shardbill.resharding import MemoryMapStore, Resharder, ReshardSettings

    old = ShardMap.create(backend.shards[:2], slots=64)
    target = old.add_shard(backend.shards[2])
    moved = {m.slot for m in old.plan_to(target).moves}
    store = MemoryMapStore(old)
    resharder = Resharder(
        store=store,
        provider=backend.provider,
        tables=[_big_table()],
        settings=ReshardSettings(**settings),
        before_step=hook,
    )
    return resharder, old, target, moved


def _sums(backend: Backend) -> dict[int, tuple[int, int]]:
    """account -> (amount, charges) summed over every shard (a row in motion has two parts)."""
    out: dict[int, tuple[int, int]] = {}
    for shard in backend.shards:
        for account, amount, count in backend.rows(
            shard, "SELECT account_id, amount, charges FROM `big_totals`"
        ):
            before = out.get(int(account), (0, 0))
            out[int(account)] = (before[0] + int(amount), before[1] + int(count))  # type: ignore[call-overload]
    return out


def test_a_row_in_motion_keeps_its_headroom_across_both_parts(backend: Backend) -> None:
    """Fenced, not merged: the old owner's HALF counts, so a second HALF is refused."""
    results: list[Any] = []

    def hook(step: str) -> None:
        if step == f"merge:{slot}:big_totals" and not results:
            with _big_writer(backend, target) as writer:
                results.append(
                    writer.write(
                        [charge("second", account, str(HALF)), charge("small", account, "5")]
                    )
                )

    resharder, old, target, moved = _mover(backend, hook)
    account = next(a for a in range(1, 10_000) if old.slot_for(a) in moved)
    slot = old.slot_for(account)
    with _big_writer(backend, old) as writer:
        assert writer.write([charge("first", account, str(HALF))]).applied_events == {"first"}
    resharder.run(target)  # finishes: the merge fits
    (result,) = results
    assert result.rejected_events == {"second"}, result
    assert "headroom" in result.rejection("second").reason
    assert result.applied_events == {"small"}
    assert _sums(backend) == {account: (HALF + 5, 2)}


def test_a_partly_merged_slot_counts_each_row_once(backend: Backend) -> None:
    """One row merged (still on the old owner until its delete), one not: the merged one
    is not counted twice (an exact fit is applied), the unmerged one is counted (refused)."""
    results: list[Any] = []

    def hook(step: str) -> None:
        if step == f"merge-delete:{slot}:big_totals" and not results:
            with _big_writer(backend, target) as writer:
                results.append(
                    writer.write(
                        [
                            charge("fits", low, str(BIGINT_MAX - HALF)),
                            charge("over", high, str(HALF)),
                        ]
                    )
                )

    resharder, old, target, moved = _mover(backend, hook, chunk_rows=1)
    slot = next(s for s in sorted(moved))
    low, high = [a for a in range(1, 100_000) if old.slot_for(a) == slot][:2]
    with _big_writer(backend, old) as writer:
        writer.write([charge("a", low, str(HALF)), charge("b", high, str(HALF))])
    resharder.run(target)
    (result,) = results
    assert result.applied_events == {"fits"}, result
    assert result.rejected_events == {"over"}
    assert _sums(backend) == {low: (BIGINT_MAX, 2), high: (HALF, 1)}


@pytest.mark.parametrize("home", ["in-motion", "other"])
def test_a_spread_event_over_a_row_in_motion_is_rejected_whole(backend: Backend, home: str) -> None:
    """The look-ahead counts the old owner's part too: nothing of the event is applied,
    whichever shard the event's id lives on (written first) and whichever second."""
    results: list[Any] = []

    def hook(step: str) -> None:
        if step == f"merge:{slot}:big_totals" and not results:
            want = target.shard_for(account if home == "in-motion" else other)
            event_id = next(
                f"wide-{n}" for n in range(10_000) if target.shard_for(f"wide-{n}") == want
            )
            event = PricedEvent(
                event_id=event_id,
                time=NOW,
                charges=(charge(event_id, other, "7"), charge(event_id, account, str(HALF))),
            )
            with _big_writer(backend, target) as writer:
                results.append(writer.write([event]))

    resharder, old, target, moved = _mover(backend, hook)
    account = next(a for a in range(1, 10_000) if old.slot_for(a) in moved)
    slot = old.slot_for(account)
    other = other_shard_account(target, account)
    with _big_writer(backend, old) as writer:
        assert writer.write([charge("first", account, str(HALF))]).applied_events == {"first"}
    resharder.run(target)
    (result,) = results
    assert len(result.rejected_events) == 1, result
    assert not result.applied_events
    assert _sums(backend) == {account: (HALF, 1)}


# ------------------------------------------ 4c. a writer whose map is older than the move
#
# Found by the simulation (seed 5066): a reshard fenced its slots and was killed before
# it published, so writers still routed by the old map. The look-ahead asked the old
# owner about a moved slot, was told "gone" and judged nothing: the event's other part
# committed, its moved part was then refused by the new owner (no headroom) and the
# event was left half applied, reported failed for ever.


def _stale_writer(backend: Backend, old: ShardMap, **kw: Any) -> AggregationWriter:
    return AggregationWriter(
        shard_map=old, provider=backend.provider, tables=[_big_table()], clock=NOW.timestamp, **kw
    )


def _event_homed_on(shard_map: ShardMap, shard: str, prefix: str) -> str:
    return next(
        f"{prefix}-{n}" for n in range(10_000) if shard_map.shard_for(f"{prefix}-{n}") == shard
    )


@pytest.mark.parametrize("step", ["merge", "publish"])
@pytest.mark.parametrize("shape", ["spread", "one-stale-shard"])
@pytest.mark.parametrize("home", ["moved", "other"])
def test_a_writer_with_the_old_map_rejects_a_moved_part_whole(
    backend: Backend, step: str, shape: str, home: str
) -> None:
    """Fenced and not published: the old map routes the moved slot to its old owner.
    The look-ahead follows the forwarding address (and judges again an event that a
    fence turns into a spread one), so the event is rejected whole, never half applied.

    ``spread``: the other part is on another shard by the old map too; ``one-stale-shard``:
    by the old map both parts are on the old owner (one transaction there, until the
    fence sends the moved part on)."""
    results: list[Any] = []

    def hook(name: str) -> None:
        if results or name != ("publish" if step == "publish" else f"merge:{slot}:big_totals"):
            return
        owner = old.owner(slot) if home == "moved" else old.shard_for(other)
        event_id = _event_homed_on(old, owner, "wide")
        event = PricedEvent(
            event_id=event_id,
            time=NOW,
            charges=(charge(event_id, other, "7"), charge(event_id, account, str(HALF))),
        )
        with _stale_writer(backend, old) as writer:
            results.append(writer.write([event]))
            results.append(writer.write([event]))  # its forwarding addresses known now

    resharder, old, target, moved = _mover(backend, hook)
    account = next(a for a in range(1, 10_000) if old.slot_for(a) in moved)
    slot = old.slot_for(account)
    source = old.owner(slot)
    other = next(
        a
        for a in range(1, 10_000)
        if old.slot_for(a) not in moved
        and (old.shard_for(a) == source) == (shape == "one-stale-shard")
    )
    with _big_writer(backend, old) as writer:
        assert writer.write([charge("first", account, str(HALF))]).applied_events == {"first"}
    resharder.run(target)
    assert len(results) == 2
    for result in results:
        assert len(result.rejected_events) == 1, result
        assert "headroom" in next(iter(result.rejected)).reason
        assert not result.applied_events, result
        assert not result.retry
    assert _sums(backend) == {account: (HALF, 1)}


def test_a_half_applied_event_whose_claim_moved_is_never_reported_rejected(
    backend: Backend,
) -> None:
    """Half applied (a race took its second part's headroom), then a reshard put its
    identity claim on the shard of the refused part. Delivered again, the refusal comes
    in the claim's own transaction, before the shard holding the applied part is asked:
    it must still say *failed* (money is in) and keep the claim, never *rejected* (which
    tells the caller nothing was applied, so that a fixed copy under a new id bills the
    applied part twice). Found with the simulation's seed 5066."""
    from shardbill.observe import Committed
    from shardbill.resharding import MemoryMapStore, Resharder

    old = ShardMap.create(backend.shards[:2], slots=64)
    target = old.add_shard(backend.shards[2])
    moved = {m.slot for m in old.plan_to(target).moves}
    a, b = backend.shards[:2]
    if not any(old.owner(s) == b for s in moved):
        a, b = b, a
    x = next(n for n in range(1, 10_000) if old.slot_for(n) not in moved and old.shard_for(n) == a)
    y = next(n for n in range(1, 10_000) if old.slot_for(n) in moved and old.shard_for(n) == b)
    event_id = next(
        f"half-{n}"
        for n in range(100_000)
        if old.slot_for(f"half-{n}") in moved and old.shard_for(f"half-{n}") == a
    )
    event = PricedEvent(
        event_id=event_id,
        time=NOW,
        charges=(charge(event_id, x, "7"), charge(event_id, y, str(HALF))),
    )
    raced: list[str] = []

    def race(seen: object) -> None:  # after the claim's round: another writer fills y's row
        if isinstance(seen, Committed) and seen.shard == a and not raced:
            raced.append(seen.shard)
            with _big_writer(backend, old) as other:
                assert other.write([charge("fill", y, str(HALF))]).applied_events == {"fill"}

    with _stale_writer(backend, old, observer=race) as writer:
        writer.ensure_schema()
        first = writer.write([event])
    assert raced
    assert first.events[event_id] is EventState.FAILED, first
    store = MemoryMapStore(old)
    Resharder(store=store, provider=backend.provider, tables=[_big_table()]).run(target)
    assert target.shard_for(event_id) == target.shard_for(y) != target.shard_for(x)
    with _big_writer(backend, target) as writer:
        again = [writer.write([event]) for _ in range(2)]
    for result in again:
        assert result.events[event_id] is EventState.FAILED, result
        assert not result.rejected_events
        assert result.retry
    claims = backend.rows(
        target.shard_for(event_id),
        f"SELECT event_id FROM shardbill_ledger WHERE event_id = '{event_id}'",
    )
    assert claims, "the identity claim of a half-applied event must stay"
    assert _sums(backend) == {x: (7, 1), y: (HALF, 1)}
