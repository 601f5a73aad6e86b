"""Hypothesis stateful test: random batches, duplicates and replays in random order.

The model is the set of events delivered so far; after every step, the shards
must hold exactly the oracle's totals for those events, however often and in
whatever order and batching they arrived.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from shardbill import ShardMap
from shardbill.providers import PooledProvider
from shardbill.rules import Charge
from shardbill.tables.catalog import billing_tables
from shardbill.writer import AggregationWriter
from tests.support.backends import Backend
from tests.support.mysql import configured_address
from tests.support.oracle import KEYS, actual_rows, expected_rows
from tests.test_writer import make_charges

POOL: dict[str, list[Charge]] = {}
for _charge in make_charges(31, 120, accounts=15):
    POOL.setdefault(_charge.event_id, []).append(_charge)
EVENT_IDS = sorted(POOL)
_SHARED: dict[str, dict[str, str]] = {}  # driver -> shard -> database, reused across examples


class WriterMachine(RuleBasedStateMachine):
    """Deliver random multisets of events in random batches; totals never drift."""

    kind = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        shards = ("a", "b", "c")
        self.root = Path(tempfile.mkdtemp(prefix="sb-hyp-"))
        if self.kind == "sqlite":
            self.provider = PooledProvider.sqlite_directory(self.root, shards)
            locations = {s: str(self.root / f"{s}.db") for s in shards}
            server = None
        else:
            server = configured_address()
            locations = _SHARED.get(self.kind, {})
            conn = server.connect()
            with conn.cursor() as cur:  # type: ignore[attr-defined]
                if not locations:
                    tag = secrets.token_hex(3)
                    locations = {s: f"sbh_{tag}_{s}" for s in shards}
                    for name in locations.values():
                        cur.execute(f"CREATE DATABASE `{name}`")
                    _SHARED[self.kind] = locations
                else:  # reuse the databases: empty the data, keep tables and ownership
                    for name in locations.values():
                        for table in (*KEYS, "shardbill_ledger"):
                            cur.execute(f"DELETE FROM `{name}`.`{table}`")
            conn.close()  # type: ignore[attr-defined]
            self.provider = PooledProvider.from_urls(
                {s: server.url(db, self.kind) for s, db in locations.items()}
            )
        self.server = server
        self.backend = Backend(
            kind=self.kind,
            shards=shards,
            provider=self.provider,
            locations=locations,
            urls={},
            server=server,
        )
        self.writer = AggregationWriter(
            shard_map=ShardMap.create(shards, slots=32),
            provider=self.provider,
            tables=billing_tables(),
        )
        self.writer.ensure_schema()
        self.delivered: set[str] = set()

    @rule(
        picks=st.lists(st.sampled_from(EVENT_IDS), min_size=1, max_size=25),
    )
    def deliver(self, picks: list[str]) -> None:
        """A batch of events, possibly repeating (a replay inside one batch is deduplicated
        upstream by the pipeline, so here each event appears once per call)."""
        unique = list(dict.fromkeys(picks))
        result = self.writer.write([c for e in unique for c in POOL[e]])
        assert result.ok
        fresh = set(unique) - self.delivered
        assert result.applied_events == fresh
        assert result.duplicate_events == set(unique) - fresh
        self.delivered |= set(unique)

    @rule(data=st.data())
    def replay_everything_so_far(self, data: st.DataObject) -> None:
        """Replay every delivered event, shuffled, in random batch sizes: nothing changes."""
        events = data.draw(st.permutations(sorted(self.delivered)))
        size = data.draw(st.integers(min_value=1, max_value=40))
        for start in range(0, len(events), size):
            batch = events[start : start + size]
            result = self.writer.write([c for e in batch for c in POOL[e]])
            assert result.ok
            assert result.applied_events == frozenset()

    @invariant()
    def totals_equal_the_oracle(self) -> None:
        """The shards hold exactly the delivered events' totals."""
        charges = [c for e in sorted(self.delivered) for c in POOL[e]]
        assert actual_rows(self.backend) == expected_rows(charges)

    def teardown(self) -> None:
        self.writer.close()
        self.provider.close()
        shutil.rmtree(self.root, ignore_errors=True)


class PyMySQLWriterMachine(WriterMachine):
    """The same machine on MariaDB through PyMySQL."""

    kind = "pymysql"


class MySQLdbWriterMachine(WriterMachine):
    """The same machine on MariaDB through mysqlclient."""

    kind = "mysqldb"


_SETTINGS = settings(
    max_examples=12,
    stateful_step_count=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestWriterMachine = pytest.mark.property(WriterMachine.TestCase)
TestWriterMachine.settings = _SETTINGS
TestPyMySQLWriterMachine = pytest.mark.slow(
    pytest.mark.mysql(pytest.mark.property(PyMySQLWriterMachine.TestCase))
)
TestPyMySQLWriterMachine.settings = settings(_SETTINGS, max_examples=6)
TestMySQLdbWriterMachine = pytest.mark.slow(
    pytest.mark.mysql(pytest.mark.property(MySQLdbWriterMachine.TestCase))
)
TestMySQLdbWriterMachine.settings = settings(_SETTINGS, max_examples=6)


@pytest.fixture(autouse=True)
def _mysql_available(request: pytest.FixtureRequest) -> None:
    """MySQL machines need the server: skip (or fail under CI) like every MySQL test."""
    if request.node.get_closest_marker("mysql") is not None:
        request.getfixturevalue("mysql_server")


@pytest.fixture(scope="module", autouse=True)
def _drop_shared_databases() -> Iterator[None]:
    """The MySQL machines share their databases across examples; drop them at the end."""
    yield
    if not _SHARED:
        return
    conn = configured_address().connect()
    with conn.cursor() as cur:  # type: ignore[attr-defined]
        for locations in _SHARED.values():
            for name in locations.values():
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()  # type: ignore[attr-defined]
    _SHARED.clear()
