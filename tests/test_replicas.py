"""Reads on real binlog replicas (issue 17): failover, one server per call, lag, read-your-writes.

Every test runs private MariaDB servers: a primary with GTID replicas
(``tests/support/replication.py``), read as a SELECT-only ``reader`` user.
Failures are real: a replica SIGSTOPped (frozen: it accepts TCP and says
nothing), SIGKILLed (refused, 2003) or killed between two queries of a call
(dropped, 2013/2006); lag is a stopped SQL thread.
"""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from shardbill import Reader, ShardMap
from shardbill.errors import (
    ConfigurationError,
    InvalidInputError,
    NoReplicaAvailableError,
    RetryableError,
)
from shardbill.observe import ReadEvent, ReadFellBack, ReplicaDown
from shardbill.providers import PooledProvider
from shardbill.rules import Charge
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter, WriteResult, WriterSettings
from tests.support.oracle import expected_rows
from tests.support.replication import Topology, start_replication
from tests.support.server_fixtures import ServerFactory
from tests.test_writer import make_charges

SLOTS = 64
DRIVERS = ["pymysql", "mysqldb"]
FAST = {"connect_timeout": 1, "read_timeout": 1}  # a failed replica costs a test 1 s, not 10


def _grand(charges: list[Charge]) -> Decimal:
    balance = expected_rows(charges)["account_balance"]
    return Decimal(sum(v[0] for v in balance.values())).scaleb(-6)


@pytest.fixture
def topology(private_servers: ServerFactory) -> Topology:
    """A primary and two GTID replicas, replicating database ``billing``."""
    return start_replication(private_servers, replicas=2)


def _write(topology: Topology, charges: list[Charge], driver: str = "pymysql") -> None:
    """Write ``charges`` to the primary (shard s0) and wait until both replicas have them."""
    with (
        PooledProvider.from_urls({"s0": topology.url(topology.primary, driver)}) as provider,
        AggregationWriter(
            shard_map=ShardMap.create(["s0"], slots=SLOTS),
            provider=provider,
            tables=billing_tables(),
        ) as writer,
    ):
        writer.ensure_schema()
        assert writer.write(charges).ok
    topology.sync()


def _provider(topology: Topology, driver: str = "pymysql", **kw: Any) -> PooledProvider:
    return PooledProvider.from_urls(
        {"s0": topology.url(topology.primary, driver)},
        replicas={"s0": topology.replica_urls(driver, **FAST)},
        **kw,
    )


def _reader(provider: PooledProvider, **kw: Any) -> Reader:
    return Reader(
        shard_map=ShardMap.create(["s0"], slots=SLOTS),
        provider=provider,
        tables=billing_tables(),
        **kw,
    )


def _total(reader: Reader, **kw: Any) -> Decimal:
    found = reader.totals("account_balance", group_by=[], replica=True, **kw)[()]["amount"]
    assert isinstance(found, Decimal)
    return found


def _loans(provider: PooledProvider) -> list[int]:
    """Loans served so far by the primary, then by each replica."""
    return [provider.stats("s0").loans] + [provider.stats("s0", replica=i).loans for i in range(2)]


def test_replica_reads_are_served_by_the_replicas(topology: Topology) -> None:
    """The harness replicates: replica totals equal the oracle, the heavy queries all go to
    replicas, and the primary serves only the one light move-state check per call."""
    charges = make_charges(171, 120)
    _write(topology, charges)
    with _provider(topology) as provider:
        reader = _reader(provider)
        for _ in range(4):
            assert _total(reader) == _grand(charges)
        primary, *replicas = _loans(provider)
    assert primary == 4
    assert min(replicas) > 0


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("failure", ["frozen", "killed"])
def test_a_failed_replica_is_skipped_and_every_read_succeeds(
    topology: Topology, driver: str, failure: str
) -> None:
    """Findings 1 and 3: a frozen replica (accepts TCP, never answers: a read timeout) or a
    killed one (refused, 2003) fails the read that meets it over to the other replica; the
    first read after the failure succeeds too, and the failed one is skipped from then on."""
    charges = make_charges(172, 120)
    _write(topology, charges, driver)
    events: list[ReadEvent] = []
    with _provider(topology, driver, observer=events.append) as provider:
        reader = _reader(provider)
        assert _total(reader) == _grand(charges)  # both replicas have a pooled connection now
        assert _total(reader) == _grand(charges)
        broken = topology.replicas[0]
        if failure == "frozen":
            broken.pause()
        else:
            broken.kill()
        try:
            for _ in range(4):
                assert _total(reader) == _grand(charges)
        finally:
            if failure == "frozen":
                broken.resume()
    downs = [e for e in events if isinstance(e, ReplicaDown)]
    assert [e.server for e in downs] == [f"{broken.host}:{broken.port}"]  # once, then skipped


def test_a_replica_that_dies_between_two_queries_of_a_call_fails_over(
    topology: Topology,
) -> None:
    """Finding 1 (2013 mid-call): the replica serving a call is killed after the call read
    its move state; the call restarts on the other replica and returns the exact total."""
    charges = make_charges(173, 120)
    _write(topology, charges)
    with _provider(topology) as provider:
        killed: list[int] = []

        def kill_the_serving_replica(gap: str) -> None:
            if gap == "totals:views" and not killed:
                serving = [i for i in range(2) if provider.stats("s0", replica=i).loans]
                killed.append(serving[0])
                topology.replicas[serving[0]].kill()

        reader = _reader(provider, at_gap=kill_the_serving_replica)
        assert _total(reader) == _grand(charges)
        assert killed
        other = 1 - killed[0]
        assert provider.stats("s0", replica=other).loans > 0


def test_every_replica_down_falls_back_to_the_primary(topology: Topology) -> None:
    """Finding 3: with every replica of a shard down, the read goes to the primary (the
    documented default), and the observer hears why."""
    charges = make_charges(174, 120)
    _write(topology, charges)
    for replica in topology.replicas:
        replica.kill()
    events: list[ReadEvent] = []
    with _provider(topology, observer=events.append) as provider:
        assert _total(_reader(provider)) == _grand(charges)
    assert sorted(type(e).__name__ for e in events) == [
        "ReadFellBack",
        "ReplicaDown",
        "ReplicaDown",
    ]
    assert [e.reason for e in events if isinstance(e, ReadFellBack)] == ["down"]


def test_every_replica_down_without_fallback_raises_a_retryable_error(
    topology: Topology,
) -> None:
    """With ``fallback_to_primary=False`` a shard with no healthy replica raises a retryable
    error that names each replica and what is wrong with it."""
    _write(topology, make_charges(175, 40))
    for replica in topology.replicas:
        replica.kill()
    with _provider(topology, fallback_to_primary=False) as provider:
        reader = _reader(provider)
        with pytest.raises(NoReplicaAvailableError) as caught:
            _total(reader)
    assert isinstance(caught.value, RetryableError)
    for replica in topology.replicas:
        assert f"{replica.host}:{replica.port}" in str(caught.value)
    assert "fallback_to_primary" in str(caught.value)


def test_each_call_reads_a_shard_from_one_replica_and_calls_take_turns(
    topology: Topology,
) -> None:
    """Finding 4: every query of one call goes to the same replica (one snapshot source),
    and successive calls alternate between the two replicas, so load spreads evenly."""
    _write(topology, make_charges(176, 60))
    with _provider(topology) as provider:
        reader = _reader(provider)
        served: list[int] = []
        for _ in range(6):
            before = _loans(provider)
            _total(reader)
            after = _loans(provider)
            changed = [i for i in (1, 2) if after[i] != before[i]]
            assert len(changed) == 1, (before, after)
            served.append(changed[0])
        assert served in ([1, 2] * 3, [2, 1] * 3)


def test_point_reads_fail_over_too(topology: Topology) -> None:
    """``rows(replica=True)`` of one account survives a killed replica like ``totals``,
    also when the pool holds a connection to it from an earlier read."""
    charges = make_charges(177, 120)
    _write(topology, charges)
    account = charges[0].account
    with _provider(topology) as provider:
        reader = _reader(provider)
        expected = reader.rows("account_balance", account)
        for _ in range(2):  # both replicas now have a pooled connection
            assert reader.rows("account_balance", account, replica=True) == expected
        topology.replicas[0].kill()
        for _ in range(3):
            assert reader.rows("account_balance", account, replica=True) == expected


def _gauge(registry: Any, name: str, **labels: str) -> float | None:
    value = registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def _lagging(topology: Topology) -> tuple[list[Charge], list[Charge]]:
    """Replica 0 stops applying; a second batch reaches the primary and replica 1 only."""
    first, second = make_charges(181, 80), make_charges(182, 80)
    _write(topology, first)
    topology.stop_applier(0)
    with (
        PooledProvider.from_urls({"s0": topology.url(topology.primary)}) as provider,
        AggregationWriter(
            shard_map=ShardMap.create(["s0"], slots=SLOTS),
            provider=provider,
            tables=billing_tables(),
        ) as writer,
    ):
        assert writer.write(second).ok
    topology.sync([1])
    return first, second


def test_without_max_lag_a_stopped_replica_serves_stale_totals(topology: Topology) -> None:
    """Finding 5, as documented: with no ``max_lag`` a healthy but stopped replica is read
    (turns alternate), so one of two calls is stale. This is what ``max_lag`` is for."""
    first, second = _lagging(topology)
    with _provider(topology) as provider:
        reader = _reader(provider)
        found = {_total(reader), _total(reader)}
    assert found == {_grand(first), _grand(first + second)}


def test_max_lag_skips_a_replica_whose_lag_is_unknown(topology: Topology) -> None:
    """Finding 5: a replica with a stopped SQL thread reports Seconds_Behind_Master NULL;
    ``max_lag`` takes that as unknown, not zero, and skips it: every read is current."""
    first, second = _lagging(topology)
    with _provider(topology) as provider:
        reader = _reader(provider, max_lag=30)
        for _ in range(4):
            assert _total(reader) == _grand(first + second)
        assert provider.stats("s0", replica=1).loans > provider.stats("s0", replica=0).loans


def test_max_lag_with_every_replica_behind_reads_the_primary(topology: Topology) -> None:
    """With every replica's applier stopped, a ``max_lag`` read falls back to the primary
    (reason ``lag``) and is current."""
    first, second = _lagging(topology)
    topology.stop_applier(1)
    events: list[ReadEvent] = []
    with _provider(topology, observer=events.append) as provider:
        assert _total(_reader(provider, max_lag=30)) == _grand(first + second)
    assert [e.reason for e in events if isinstance(e, ReadFellBack)] == ["lag"]


def test_the_lag_gauge_shows_each_replica_and_unknown_as_nan(topology: Topology) -> None:
    """The operator reads each replica's health and lag from ``provider.replicas(shard)``
    and from the Prometheus gauge ``shardbill_replica_lag_seconds`` (NaN when unknown)."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from shardbill.metrics import PrometheusObserver

    _lagging(topology)
    registry = prometheus_client.CollectorRegistry()
    observer = PrometheusObserver(registry=registry)
    with _provider(topology, observer=observer) as provider:
        statuses = provider.replicas("s0")
    labels = [f"{r.host}:{r.port}" for r in topology.replicas]
    assert [s.server for s in statuses] == labels
    assert [s.healthy for s in statuses] == [True, True]
    assert statuses[0].lag is None
    assert statuses[1].lag is not None
    assert statuses[1].lag >= 0
    stopped = _gauge(registry, "shardbill_replica_lag_seconds", shard="s0", server=labels[0])
    running = _gauge(registry, "shardbill_replica_lag_seconds", shard="s0", server=labels[1])
    assert stopped is not None
    assert math.isnan(stopped)
    assert running == statuses[1].lag


def test_a_replica_user_without_replica_monitor_gets_a_message_naming_the_grant(
    topology: Topology,
) -> None:
    """``max_lag`` needs SHOW REPLICA STATUS; a SELECT-only user gets an error that names
    the grant to add, not a silent fallback."""
    from shardbill.errors import FatalDatabaseError

    _write(topology, make_charges(183, 20))
    topology.primary.execute("CREATE USER 'plain'@'%' IDENTIFIED BY 'plain-pw'")
    topology.primary.execute(f"GRANT SELECT ON `{topology.database}`.* TO 'plain'@'%'")
    topology.sync()
    replica = topology.replicas[0]
    url = replica.url(topology.database, user="plain", password="plain-pw")
    with (
        PooledProvider.from_urls(
            {"s0": topology.url(topology.primary)}, replicas={"s0": [url]}
        ) as provider,
        pytest.raises(FatalDatabaseError, match="GRANT REPLICA MONITOR"),
    ):
        _total(_reader(provider, max_lag=30))


def _tracked_write(
    topology: Topology, charges: list[Charge], driver: str = "pymysql"
) -> WriteResult:
    with (
        PooledProvider.from_urls({"s0": topology.url(topology.primary, driver)}) as provider,
        AggregationWriter(
            shard_map=ShardMap.create(["s0"], slots=SLOTS),
            provider=provider,
            tables=billing_tables(),
            settings=WriterSettings(track_positions=True),
        ) as writer,
    ):
        result = writer.write(charges)
    assert result.ok
    return result


def test_a_tracked_write_reports_the_gtid_a_replica_must_reach(topology: Topology) -> None:
    """With ``track_positions`` a write's result holds, per shard, the primary's GTID of its
    commit (``@@last_gtid``); a write of duplicates only holds the binlog position, which
    covers the earlier commit of those events whoever made it."""
    _write(topology, make_charges(191, 20))
    charges = make_charges(192, 30)
    first = _tracked_write(topology, charges)
    assert first.positions == {"s0": topology.position()}
    again = _tracked_write(topology, charges)
    assert again.duplicate_events == first.applied_events
    assert again.positions == {"s0": topology.position()}


@pytest.mark.parametrize("driver", DRIVERS)
def test_read_your_writes_waits_for_a_replica_that_has_the_write(
    topology: Topology, driver: str
) -> None:
    """Read-your-writes: with replica 0 stopped, ``after=result`` reads only from a replica
    that applied the write (replica 1) or the primary: every read shows the write, and the
    replica that has it serves some of them."""
    first = make_charges(193, 60)
    _write(topology, first, driver)
    topology.stop_applier(0)
    second = make_charges(194, 60)
    result = _tracked_write(topology, second, driver)
    assert result.positions == {"s0": topology.position()}
    with _provider(topology, driver) as provider:
        reader = _reader(provider, wait_for_position=2)
        for _ in range(4):
            assert _total(reader, after=result) == _grand(first + second)
        assert provider.stats("s0", replica=1).loans > 0
        account = second[0].account
        expected = reader.rows("account_balance", account)
        assert reader.rows("account_balance", account, replica=True, after=result) == expected


def test_read_your_writes_with_no_replica_at_the_write_reads_the_primary(
    topology: Topology,
) -> None:
    """When no replica reaches the write within ``wait_for_position``, the read goes to the
    primary (reason ``position``) and shows the write."""
    first = make_charges(195, 40)
    _write(topology, first)
    topology.stop_applier(0)
    topology.stop_applier(1)
    second = make_charges(196, 40)
    result = _tracked_write(topology, second)
    events: list[ReadEvent] = []
    with _provider(topology, observer=events.append) as provider:
        reader = _reader(provider, wait_for_position=0.5)
        assert _total(reader, after=result) == _grand(first + second)
    assert [e.reason for e in events if isinstance(e, ReadFellBack)] == ["position"]


def test_after_a_write_without_tracked_positions_is_refused(topology: Topology) -> None:
    """Passing the result of a writer that does not track positions is an error that says
    how to turn tracking on, never a silent read without the guarantee."""
    charges = make_charges(197, 10)
    with (
        PooledProvider.from_urls({"s0": topology.url(topology.primary)}) as provider,
        AggregationWriter(
            shard_map=ShardMap.create(["s0"], slots=SLOTS),
            provider=provider,
            tables=billing_tables(),
        ) as writer,
    ):
        writer.ensure_schema()
        result = writer.write(charges)
        reader = _reader(provider)
        with pytest.raises(InvalidInputError, match="track_positions=True"):
            reader.totals("account_balance", group_by=[], replica=True, after=result)


@pytest.mark.parametrize("driver", DRIVERS)
def test_replica_reads_stay_exact_when_a_replica_is_behind_a_reshard(
    private_servers: ServerFactory, driver: str
) -> None:
    """Reads on replicas during a reshard: slots move from s0 to a new shard s2 while s2's
    replica applies nothing (its primary is ahead); s0's replica is current, so it shows the
    slots handed over and their rows deleted. The replica views differ from the primaries',
    so the reader reads that call from the primaries: totals and point reads stay exact
    (on the replicas alone the moved rows would be missing)."""
    from shardbill.resharding import MemoryMapStore, Resharder, ReshardSettings
    from shardbill.writer.schema import apply_schema
    from tests.support.replication import READER_PASSWORD

    first = start_replication(private_servers, replicas=1)
    second = start_replication(private_servers, replicas=1)
    second.primary.execute("CREATE DATABASE billing2 CHARACTER SET utf8mb4")
    second.primary.execute("GRANT SELECT ON billing2.* TO 'reader'@'%'")
    primaries = {
        "s0": first.url(first.primary, driver),
        "s1": second.url(second.primary, driver),
        "s2": second.primary.url("billing2", driver),
    }
    (r0,), (r1,) = first.replicas, second.replicas
    r1_billing2 = r1.url("billing2", driver, user="reader", password=READER_PASSWORD)
    replicas = {
        "s0": [first.url(r0, driver, **FAST)],
        "s1": [second.url(r1, driver, **FAST)],
        "s2": [r1_billing2 + "?read_timeout=1"],
    }
    charges = make_charges(201, 160, accounts=40)
    store = MemoryMapStore(ShardMap.create(["s0", "s1"], slots=SLOTS))
    with PooledProvider.from_urls(primaries) as writing:
        with AggregationWriter(
            shard_map=store, provider=writing, tables=billing_tables()
        ) as writer:
            writer.ensure_schema()
            apply_schema(
                writing, store.load(), billing_tables(), shards=["s2"], record_ownership=False
            )
            assert writer.write(charges).ok
        first.sync()
        second.sync()
        second.stop_applier(0)  # s1 and s2's replica stays before the reshard
        target = store.load().add_shard("s2")
        Resharder(
            store=store,
            provider=writing,
            tables=billing_tables(),
            settings=ReshardSettings(chunk_rows=5, parallel_slots=1, lease_wait=0),
        ).run(target)
    first.sync()  # s0's replica shows the handed-over slots, their rows deleted
    moved = [m.slot for m in ShardMap.create(["s0", "s1"], slots=SLOTS).plan_to(target).moves]
    account = next(c.account for c in charges if target.slot_for(c.account) in moved)
    events: list[ReadEvent] = []
    with PooledProvider.from_urls(primaries, replicas=replicas, observer=events.append) as provider:
        reader = Reader(shard_map=store, provider=provider, tables=billing_tables())
        assert _total(reader) == _grand(charges)
        expected = reader.rows("account_balance", account)
        assert expected
        assert reader.rows("account_balance", account, replica=True) == expected
    fallbacks = {(e.shard, e.reason) for e in events if isinstance(e, ReadFellBack)}
    assert ("s2", "moving") in fallbacks


def test_the_replicas_howto_runs(topology: Topology) -> None:
    """The Python blocks of docs/howto/read-replicas.md run against a primary with two
    replicas, and what they read is the oracle's number."""
    import re
    from pathlib import Path

    howto = Path(__file__).parent.parent / "docs" / "howto" / "read-replicas.md"
    blocks = re.findall(r"```python\n(.*?)```", howto.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) == 3
    first, charges = make_charges(211, 60), make_charges(212, 60)
    _write(topology, first)
    shard_map = ShardMap.create(["s0"], slots=SLOTS)
    namespace: dict[str, object] = {
        "primary_url": topology.url(topology.primary),
        "replica_urls": topology.replica_urls(),
        "shard_map": shard_map,
        "charges": charges,
    }
    for block in blocks:
        exec(compile(block, str(howto), "exec"), namespace)  # noqa: S102 - our own docs
    provider = namespace["provider"]
    assert isinstance(provider, PooledProvider)
    provider.close()
    assert namespace["fresh"] == {(): expected_totals(first + charges)}
    assert namespace["balances"] == {("USD",): expected_totals(first)}


def expected_totals(charges: list[Charge]) -> dict[str, object]:
    """The oracle's grand account_balance measures, as the reader returns them."""
    balance = expected_rows(charges)["account_balance"].values()
    return {
        "amount": Decimal(sum(v[0] for v in balance)).scaleb(-6),
        "charges": sum(v[1] for v in balance),
        "largest_charge": Decimal(max(v[2] for v in balance)).scaleb(-6),
    }


def test_a_shard_with_no_server_left_raises_a_retryable_error(topology: Topology) -> None:
    """With every replica and the primary down, a replica read raises a retryable
    ``CannotConnectError`` (after falling back), never hangs or returns a partial answer."""
    from shardbill.errors import CannotConnectError

    _write(topology, make_charges(221, 20))
    for server in (*topology.replicas, topology.primary):
        server.kill()
    with _provider(topology) as provider:
        reader = _reader(provider)
        with pytest.raises(CannotConnectError) as caught:
            _total(reader)
    assert isinstance(caught.value, RetryableError)
    assert caught.value.shard == "s0"


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_replica_connection_cut_during_the_heavy_query_fails_over(
    topology: Topology, driver: str
) -> None:
    """Finding 1 (2013 mid-query): a proxy in front of replica 0 lets the grouped query run
    there and drops its answer; the call restarts on replica 1 and is exact, and replica 0
    is skipped from then on."""
    from tests.support.proxy import FaultProxy
    from tests.support.replication import READER_PASSWORD

    charges = make_charges(231, 120)
    _write(topology, charges, driver)
    r0 = topology.replicas[0]
    with FaultProxy(r0.host, r0.port) as proxy:
        proxied = (
            f"mysql+{driver}://reader:{READER_PASSWORD}@{proxy.host}:{proxy.port}/"
            f"{topology.database}?read_timeout=5"
        )
        events: list[ReadEvent] = []
        with PooledProvider.from_urls(
            {"s0": topology.url(topology.primary, driver)},
            replicas={"s0": [proxied, topology.url(topology.replicas[1], driver, **FAST)]},
            observer=events.append,
        ) as provider:
            reader = _reader(provider)
            proxy.cut_when(lambda sql: "SUM(" in sql, before=False)
            for _ in range(4):
                assert _total(reader) == _grand(charges)
            assert proxy.pending_cuts == 0  # the cut fired: a heavy query was dropped
    downs = [e for e in events if isinstance(e, ReplicaDown)]
    assert [(e.server, e.error) for e in downs] == [
        (f"{proxy.host}:{proxy.port}", "ConnectionLostError")
    ]


def _sqlite_provider(tmp_path: Path, **kw: Any) -> PooledProvider:
    """A SQLite shard with a SQLite "replica" file (a stand-in: nothing replicates)."""
    return PooledProvider.from_urls(
        {"s0": f"sqlite:///{tmp_path / 's0.db'}"},
        replicas={"s0": [f"sqlite:///{tmp_path / 's0-copy.db'}"]},
        **kw,
    )


def test_bad_replica_options_are_refused_naming_the_option(tmp_path: Path) -> None:
    """max_lag, wait_for_position, replica_backoff and lag_refresh must be seconds >= 0;
    ``after`` must be a WriteResult or its positions: each error names the option."""
    with pytest.raises(ConfigurationError, match="'replica_backoff' must be a number"):
        _sqlite_provider(tmp_path, replica_backoff=-1)
    with pytest.raises(ConfigurationError, match="'lag_refresh' must be a number"):
        _sqlite_provider(tmp_path, lag_refresh="1")
    with _sqlite_provider(tmp_path) as provider:
        with pytest.raises(ConfigurationError, match="'max_lag' must be a number"):
            _reader(provider, max_lag=-0.5)
        with pytest.raises(ConfigurationError, match="'wait_for_position' must be a number"):
            _reader(provider, wait_for_position=True)
        reader = _reader(provider)
        with pytest.raises(InvalidInputError, match="'after' must be a WriteResult"):
            reader.totals("account_balance", group_by=[], replica=True, after=["0-1-2"])  # type: ignore[arg-type]


def test_max_lag_with_a_replica_of_unknown_lag_reads_the_primary(tmp_path: Path) -> None:
    """A replica whose lag cannot be known (here a SQLite copy) is skipped under max_lag:
    the read goes to the primary and says so (reason ``lag``)."""
    charges = make_charges(241, 40)
    events: list[ReadEvent] = []
    with _sqlite_provider(tmp_path, observer=events.append) as provider:
        with AggregationWriter(
            shard_map=ShardMap.create(["s0"], slots=SLOTS),
            provider=provider,
            tables=billing_tables(),
        ) as writer:
            writer.ensure_schema()
            assert writer.write(charges).ok
        assert _total(_reader(provider, max_lag=5)) == _grand(charges)
        assert provider.stats("s0", replica=0).loans == 1  # the one lag check, no read
    assert [e.reason for e in events if isinstance(e, ReadFellBack)] == ["lag"]


def test_replicas_that_keep_failing_leave_the_call_to_the_primary(topology: Topology) -> None:
    """With no back-off (``replica_backoff=0``) dead replicas are offered again and again;
    after a bounded number of restarts the call reads the primary instead of failing."""
    charges = make_charges(251, 40)
    _write(topology, charges)
    for replica in topology.replicas:
        replica.kill()
    events: list[ReadEvent] = []
    with _provider(topology, replica_backoff=0, observer=events.append) as provider:
        assert _total(_reader(provider)) == _grand(charges)
    assert len([e for e in events if isinstance(e, ReplicaDown)]) >= 4
    assert [e.reason for e in events if isinstance(e, ReadFellBack)] == ["down"]
