"""The map store: compare-and-set publishing on the epoch, in memory, a JSON file and SQL."""

from __future__ import annotations

import contextlib
import doctest
import fcntl
import itertools
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import shardbill.mapstore
import shardbill.resharding
from shardbill import ShardMap
from shardbill.errors import (
    ClaimConflictError,
    ConfigurationError,
    DuplicateKeyError,
    EpochConflictError,
    MapNotPublishedError,
    ReshardClaimedError,
    ReshardError,
    SchemaError,
    ShardMapError,
)
from shardbill.mapstore.claim import ReshardClaim
from shardbill.providers import PooledProvider, transaction
from shardbill.resharding import (
    CachedMap,
    JsonFileMapStore,
    MapStore,
    MemoryMapStore,
    SqlMapStore,
)

BASE = ShardMap.create(["a", "b", "c"], slots=256)
_TABLES = itertools.count()


@dataclass
class Harness:
    """A store under test, how to corrupt what it stores, and its provider (SQL stores)."""

    store: MemoryMapStore | JsonFileMapStore | SqlMapStore
    damage: Callable[[str], None] | None = None
    provider: PooledProvider | None = None


def _sql(provider: PooledProvider, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement on the control shard; ``%s`` placeholders, rewritten for SQLite."""
    with provider.connection("control") as conn:
        if conn.dialect.paramstyle == "qmark":
            sql = sql.replace("%s", "?")
        cursor = conn.cursor()
        cursor.execute(sql, params) if params else cursor.execute(sql)
        rows = list(cursor.fetchall()) if cursor.description else []
        cursor.close()
    return rows


def _sql_harness(provider: PooledProvider) -> Harness:
    store = SqlMapStore(provider, table=f"map_{next(_TABLES)}")
    store.ensure_schema()

    def damage(document: str) -> None:
        _sql(
            provider,
            f"UPDATE {store.table} SET document = %s WHERE epoch = %s",
            (document, store.epoch()),
        )

    return Harness(store, damage, provider)


_SQL_KINDS = [
    "sqlite",
    pytest.param("mysql-pymysql", marks=pytest.mark.mysql),
    pytest.param("mysql-mysqldb", marks=pytest.mark.mysql),
]


@contextlib.contextmanager
def _build(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if kind == "memory":
        yield Harness(MemoryMapStore())
    elif kind == "file":
        store = JsonFileMapStore(tmp_path / "shardmap.json")

        def damage(document: str) -> None:
            store.path.write_text(document)

        yield Harness(store, damage)
    else:
        if kind == "sqlite":
            url = f"sqlite:///{tmp_path / 'control.db'}"
        else:
            server = request.getfixturevalue("mysql_server")
            database = request.getfixturevalue("mysql_database")
            url = server.url(database, driver=kind.removeprefix("mysql-"))
        with PooledProvider.from_urls({"control": url}) as provider:
            yield _sql_harness(provider)


@pytest.fixture(params=["memory", "file", *_SQL_KINDS])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Each store kind, empty."""
    with _build(request.param, request, tmp_path) as built:
        yield built


@pytest.fixture(params=["file", *_SQL_KINDS])
def doc_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Each store kind that keeps documents (all but the in-memory one), empty."""
    with _build(request.param, request, tmp_path) as built:
        yield built


@pytest.fixture(params=_SQL_KINDS)
def sql_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Each SQL store kind, its table created and empty."""
    with _build(request.param, request, tmp_path) as built:
        yield built


def _race(
    store: MapStore, maps: list[ShardMap], expected_epoch: int | None
) -> tuple[list[ShardMap], list[EpochConflictError]]:
    """Publish every map from its own thread, all released together; return winners, losers."""
    barrier = threading.Barrier(len(maps))
    won: list[ShardMap] = []
    lost: list[EpochConflictError] = []
    other: list[BaseException] = []

    def publish(new_map: ShardMap) -> None:
        barrier.wait()
        try:
            store.publish(new_map, expected_epoch=expected_epoch)
        except EpochConflictError as exc:
            lost.append(exc)
        except BaseException as exc:  # reported below, with the test's own assertion
            other.append(exc)
        else:
            won.append(new_map)

    threads = [threading.Thread(target=publish, args=(m,)) for m in maps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert other == []
    return won, lost


# ---------------------------------------------------------------- every store


def test_load_from_an_empty_store_says_how_to_publish(harness: Harness) -> None:
    """An empty store has no epoch, and load() raises an error that says how to publish."""
    assert harness.store.epoch() is None
    with pytest.raises(MapNotPublishedError, match=r"expected_epoch=None") as info:
        harness.store.load()
    assert info.value.store == repr(harness.store)
    assert isinstance(info.value, ConfigurationError)


def test_load_after_publish_returns_an_equal_map(harness: Harness) -> None:
    """Each published map is what load() returns next, and epoch() follows it."""
    store = harness.store
    store.publish(BASE, expected_epoch=None)
    assert store.load() == BASE
    assert store.epoch() == 1
    second = BASE.add_shard("d")
    store.publish(second, expected_epoch=1)
    assert store.load() == second
    assert store.load().to_json() == second.to_json()
    assert store.epoch() == 2


def test_an_unbalanced_hand_placed_map_round_trips(harness: Harness) -> None:
    """A map loaded with require_balance=False is stored and loaded back unchanged."""
    document = BASE.to_json().replace('[0, 86, "a"]', '[0, 80, "a"]')
    document = document.replace('[86, 171, "b"]', '[80, 171, "b"]')
    hand_placed = ShardMap.from_json(document, require_balance=False)
    assert not hand_placed.is_balanced()
    harness.store.publish(hand_placed, expected_epoch=None)
    assert harness.store.load() == hand_placed


def test_history_lists_every_published_epoch(harness: Harness) -> None:
    """history() lists the published epochs oldest first; load_epoch() returns each map."""
    store = harness.store
    maps = [BASE, BASE.add_shard("d"), BASE.add_shard("d").remove_shard("a").with_epoch(5)]
    expected: int | None = None
    for new_map in maps:
        store.publish(new_map, expected_epoch=expected)
        expected = new_map.epoch
    assert store.history() == (1, 2, 5)
    assert [store.load_epoch(epoch) for epoch in (1, 2, 5)] == maps
    with pytest.raises(MapNotPublishedError, match="history"):
        store.load_epoch(3)


def test_a_stale_expected_epoch_is_refused(harness: Harness) -> None:
    """A publish planned from an older epoch fails, names both epochs, and changes nothing."""
    store = harness.store
    store.publish(BASE, expected_epoch=None)
    store.publish(BASE.add_shard("d"), expected_epoch=1)
    with pytest.raises(EpochConflictError, match=r"holds epoch 2, not the expected 1") as info:
        store.publish(BASE.add_shard("e"), expected_epoch=1)
    assert (info.value.stored_epoch, info.value.expected_epoch, info.value.new_epoch) == (2, 1, 2)
    assert "load()" in str(info.value)
    assert "expected_epoch=2" in str(info.value)
    assert isinstance(info.value, ReshardError)
    assert store.load() == BASE.add_shard("d")


def test_the_first_publish_must_expect_an_empty_store(harness: Harness) -> None:
    """expected_epoch=None succeeds only on an empty store, and an int only on a filled one."""
    store = harness.store
    with pytest.raises(EpochConflictError, match="holds no map yet") as info:
        store.publish(BASE, expected_epoch=1)
    assert info.value.stored_epoch is None
    store.publish(BASE, expected_epoch=None)
    with pytest.raises(EpochConflictError, match="expected an empty store") as info:
        store.publish(BASE.add_shard("d"), expected_epoch=None)
    assert info.value.stored_epoch == 1
    assert store.epoch() == 1


@pytest.mark.parametrize("epoch", [1, 2])
def test_epochs_only_grow(harness: Harness, epoch: int) -> None:
    """A map whose epoch is not above the stored one is refused even with the right expectation."""
    store = harness.store
    store.publish(BASE.with_epoch(2), expected_epoch=None)
    with pytest.raises(EpochConflictError, match="epochs only grow"):
        store.publish(BASE.add_shard("d").with_epoch(epoch), expected_epoch=2)
    assert store.load() == BASE.with_epoch(2)


def test_the_slot_count_cannot_change(harness: Harness) -> None:
    """A new map with another slot count is refused: it would move almost every key."""
    harness.store.publish(BASE, expected_epoch=None)
    other = ShardMap.create(["a", "b", "c"], slots=512).with_epoch(2)
    with pytest.raises(ShardMapError, match="256 slots; the new map has 512"):
        harness.store.publish(other, expected_epoch=1)
    assert harness.store.epoch() == 1


@pytest.mark.parametrize("expected", [0, -1, True, "1", 1.0])
def test_an_invalid_expected_epoch_is_refused(harness: Harness, expected: Any) -> None:
    """expected_epoch must be None or an int >= 1 (not a bool, str or float)."""
    with pytest.raises(ShardMapError, match="'expected_epoch' must be None"):
        harness.store.publish(BASE, expected_epoch=expected)
    assert harness.store.epoch() is None


def test_only_a_shard_map_can_be_published(harness: Harness) -> None:
    """Publishing anything but a ShardMap (here its JSON text) is refused."""
    with pytest.raises(ShardMapError, match="publish needs a ShardMap, got str"):
        harness.store.publish(BASE.to_json(), expected_epoch=None)  # type: ignore[arg-type]


def test_racing_threads_from_the_same_epoch_exactly_one_wins(harness: Harness) -> None:
    """Eight threads publish different maps (different epochs) from epoch 1: one wins."""
    store = harness.store
    store.publish(BASE, expected_epoch=None)
    maps = [BASE.add_shard(f"n{i}").with_epoch(2 + i) for i in range(8)]
    won, lost = _race(store, maps, expected_epoch=1)
    assert len(won) == 1
    assert len(lost) == 7
    assert store.load() == won[0]
    assert {exc.stored_epoch for exc in lost} == {won[0].epoch}
    assert store.history() == (1, won[0].epoch)


def test_racing_first_publishes_exactly_one_wins(harness: Harness) -> None:
    """Eight threads publish the first map of an empty store at once: one wins."""
    store = harness.store
    maps = [ShardMap.create([f"s{i}", "t"], slots=256) for i in range(8)]
    won, lost = _race(store, maps, expected_epoch=None)
    assert len(won) == 1
    assert len(lost) == 7
    assert store.load() == won[0]
    assert store.history() == (1,)


def test_a_damaged_document_names_the_store(doc_harness: Harness) -> None:
    """A stored document that is not a valid map raises ShardMapError naming the store."""
    store, damage = doc_harness.store, doc_harness.damage
    assert damage is not None
    store.publish(BASE, expected_epoch=None)
    damage('{"epoch": 1, "format": "shardbill-shard-map"')
    with pytest.raises(ShardMapError, match="is damaged") as info:
        store.load()
    assert repr(store) in str(info.value)
    with pytest.raises(ShardMapError, match="is damaged"):
        store.publish(BASE.add_shard("d"), expected_epoch=1)


def test_a_document_of_another_epoch_is_damage(sql_harness: Harness) -> None:
    """A document whose epoch differs from the one it is stored under is reported damaged."""
    store, damage = sql_harness.store, sql_harness.damage
    assert damage is not None
    store.publish(BASE.with_epoch(3), expected_epoch=None)
    damage(BASE.with_epoch(4).to_json())
    with pytest.raises(ShardMapError, match="stored as epoch 3 but its document says epoch 4"):
        store.load()


def test_the_table_refuses_a_second_successor_of_an_epoch(sql_harness: Harness) -> None:
    """previous_epoch is UNIQUE: a row claiming to replace an already replaced epoch is refused."""
    store, provider = sql_harness.store, sql_harness.provider
    assert isinstance(store, SqlMapStore)
    assert provider is not None
    store.publish(BASE, expected_epoch=None)
    store.publish(BASE.add_shard("d"), expected_epoch=1)
    with pytest.raises(DuplicateKeyError):
        _sql(
            provider,
            f"INSERT INTO {store.table} (epoch, previous_epoch, document, published_at) "
            "VALUES (%s, %s, %s, %s)",
            (9, 1, BASE.with_epoch(9).to_json(), 0),
        )
    assert store.history() == (1, 2)


class _HookedCursor:
    """Delegates to a lent cursor; runs its connection's hook once before the first INSERT."""

    def __init__(self, inner: Any, conn: _HookedConnection) -> None:
        self._inner = inner
        self._conn = conn

    def execute(self, sql: str, params: Any = None, /) -> None:
        hook, self._conn.hook = self._conn.hook, None
        if hook is not None and sql.startswith("INSERT"):
            hook()
        else:
            self._conn.hook = hook
        self._inner.execute(sql, params)

    def fetchone(self) -> Any:
        return self._inner.fetchone()

    def fetchall(self) -> Any:
        return self._inner.fetchall()

    def close(self) -> None:
        self._inner.close()


class _HookedConnection:
    def __init__(self, inner: Any, hook: Callable[[], None] | None) -> None:
        self._inner = inner
        self.hook = hook

    def cursor(self) -> _HookedCursor:
        return _HookedCursor(self._inner.cursor(), self)

    def commit(self) -> None:
        self._inner.commit()

    def rollback(self) -> None:
        self._inner.rollback()

    def close(self) -> None:
        self._inner.close()


class _HookedProvider:
    """A custom provider over a PooledProvider: the next write block runs ``hook`` before INSERT.

    SQLite connections are lent as they are (a wrapper would hide their
    dialect), the hook riding on sqlite3's statement trace callback.
    """

    def __init__(self, inner: PooledProvider, hook: Callable[[], None]) -> None:
        self._inner = inner
        self._hook: Callable[[], None] | None = hook

    @contextlib.contextmanager
    def connection(self, shard: str, *, readonly: bool = False) -> Iterator[Any]:
        with self._inner.connection(shard, readonly=readonly) as conn:
            hook = None
            if not readonly:
                hook, self._hook = self._hook, None
            if hook is None:
                yield conn
            elif isinstance(conn.raw, sqlite3.Connection):
                pending = [hook]

                def trace(sql: str) -> None:
                    if pending and sql.startswith("INSERT"):
                        pending.pop()()

                conn.raw.set_trace_callback(trace)
                try:
                    yield conn
                finally:
                    conn.raw.set_trace_callback(None)
            else:
                yield _HookedConnection(conn, hook)

    def close(self) -> None:
        """The inner provider is closed by its owner."""


def test_a_publish_in_progress_locks_out_rival_publishers_but_not_readers(
    sql_harness: Harness, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Between its read and its insert, a publish holds the lock a rival's locking read needs.

    MySQL/MariaDB: the rival's ``SELECT ... FOR UPDATE NOWAIT`` of the newest
    row fails at once (lock wait timeout), while a plain read still sees epoch
    1. SQLite: the rival's ``BEGIN IMMEDIATE`` finds the database locked,
    while a plain read still sees epoch 1.
    """
    store, provider = sql_harness.store, sql_harness.provider
    assert isinstance(store, SqlMapStore)
    assert provider is not None
    store.publish(BASE, expected_epoch=None)
    outcome: dict[str, object] = {}
    sqlite = provider.dialect("control").name == "sqlite"

    def rival() -> None:
        newest = f"SELECT MAX(epoch) FROM {store.table}"
        if sqlite:
            conn = sqlite3.connect(tmp_path / "control.db", timeout=0, isolation_level=None)
            try:
                outcome["read"] = conn.execute(newest).fetchone()[0]
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    conn.execute("BEGIN IMMEDIATE")
                outcome["locked"] = True
            finally:
                conn.close()
            return
        server = request.getfixturevalue("mysql_server")
        conn = server.connect(request.getfixturevalue("mysql_database"))
        try:
            cursor = conn.cursor()
            cursor.execute(newest)
            outcome["read"] = cursor.fetchone()[0]
            with pytest.raises(Exception) as info:  # noqa: PT011 - the driver's class, checked by errno
                cursor.execute(
                    f"SELECT epoch FROM {store.table} ORDER BY epoch DESC LIMIT 1 FOR UPDATE NOWAIT"
                )
            outcome["locked"] = info.value.args[0] in (1205, 3572)
        finally:
            conn.close()

    hooked = SqlMapStore(_HookedProvider(provider, rival), table=store.table)
    hooked.publish(BASE.add_shard("d"), expected_epoch=1)
    assert outcome == {"read": 1, "locked": True}
    assert store.load() == BASE.add_shard("d")


# ---------------------------------------------------------------- the JSON file store


def test_file_store_writes_the_map_json_and_archives_the_one_it_replaces(tmp_path: Path) -> None:
    """The file holds exactly ShardMap.to_json(); a replaced map is kept as STEM.epoch-N.json."""
    store = JsonFileMapStore(tmp_path / "shardmap.json")
    store.publish(BASE, expected_epoch=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shardmap.json", "shardmap.json.lock"]
    store.publish(BASE.add_shard("d"), expected_epoch=1)
    assert (tmp_path / "shardmap.json").read_text() == BASE.add_shard("d").to_json()
    assert (tmp_path / "shardmap.epoch-1.json").read_text() == BASE.to_json()
    assert store.history_path(2) == tmp_path / "shardmap.epoch-2.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "shardmap.epoch-1.json",
        "shardmap.json",
        "shardmap.json.lock",
    ]


def test_file_store_without_history_keeps_only_the_current_map(tmp_path: Path) -> None:
    """keep_history=False writes no archives; history() then holds the current epoch only."""
    store = JsonFileMapStore(tmp_path / "m.json", keep_history=False)
    store.publish(BASE, expected_epoch=None)
    store.publish(BASE.add_shard("d"), expected_epoch=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.json.lock"]
    assert store.history() == (2,)
    with pytest.raises(MapNotPublishedError, match="keeps no map of epoch 1"):
        store.load_epoch(1)


def test_file_publish_holds_the_lock_while_it_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every rename of a publish happens while the sidecar lock file is exclusively locked."""
    store = JsonFileMapStore(tmp_path / "shardmap.json")
    seen: list[str] = []
    real_replace = os.replace

    def checking_replace(source: Any, target: Any) -> None:
        fd = os.open(store.lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            seen.append("locked")
        else:
            seen.append("free")
        finally:
            os.close(fd)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", checking_replace)
    store.publish(BASE, expected_epoch=None)
    store.publish(BASE.add_shard("d"), expected_epoch=1)
    assert seen == ["locked", "locked", "locked"]  # map 1; archive of 1, map 2


def test_a_failed_file_publish_leaves_the_old_map_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish that fails before its rename changes nothing visible and cleans up."""
    store = JsonFileMapStore(tmp_path / "shardmap.json")
    store.publish(BASE, expected_epoch=None)
    real_replace = os.replace

    def failing_replace(source: Any, target: Any) -> None:
        if Path(target) == store.path:
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        store.publish(BASE.add_shard("d"), expected_epoch=1)
    monkeypatch.undo()
    assert store.load() == BASE
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not store.history_path(2).exists()  # only maps that were current are archived
    assert store.history() == (1,)
    store.publish(BASE.add_shard("e"), expected_epoch=1)
    assert store.history() == (1, 2)
    assert store.load_epoch(1) == BASE
    assert store.load_epoch(2) == BASE.add_shard("e")


_CHILD = r"""
import sys
from shardbill.errors import EpochConflictError
from shardbill.resharding import JsonFileMapStore

store = JsonFileMapStore(sys.argv[1])
index = int(sys.argv[2])
base = store.load()
new_map = base.add_shard(f"p{index}").with_epoch(base.epoch + 1 + index)
print("ready", flush=True)
sys.stdin.readline()
try:
    store.publish(new_map, expected_epoch=base.epoch)
except EpochConflictError as exc:
    print(f"lost {exc.stored_epoch}", flush=True)
else:
    print(f"won {new_map.epoch}", flush=True)
"""


def test_racing_processes_from_the_same_epoch_exactly_one_wins(tmp_path: Path) -> None:
    """Six processes publish different maps from epoch 1, released together: one wins."""
    store = JsonFileMapStore(tmp_path / "shardmap.json")
    store.publish(BASE, expected_epoch=None)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(store.path), str(index)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(6)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = [child.communicate(timeout=60) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [child.returncode for child in children] == [0] * 6, [err for _, err in results]
    lines = [out.strip() for out, _ in results]
    winners = [index for index, line in enumerate(lines) if line.startswith("won ")]
    assert len(winners) == 1, lines
    winner = winners[0]
    assert sorted(lines) == sorted([f"won {2 + winner}"] + [f"lost {2 + winner}"] * 5)
    assert store.load() == BASE.add_shard(f"p{winner}").with_epoch(2 + winner)


def test_file_store_reports_a_file_that_is_not_json(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 JSON make epoch() and load() raise ShardMapError."""
    store = JsonFileMapStore(tmp_path / "shardmap.json")
    store.path.write_bytes(b"\xff\xfe not json")
    with pytest.raises(ShardMapError, match=r"JsonFileMapStore\(.*\): the shard map in .* damaged"):
        store.epoch()
    with pytest.raises(ShardMapError, match=r"epoch-N\.json"):
        store.load()


def test_file_store_needs_a_file_path_and_an_existing_directory(tmp_path: Path) -> None:
    """A directory-like path is refused; publishing into a missing directory says so."""
    with pytest.raises(ConfigurationError, match="needs a file path"):
        JsonFileMapStore(tmp_path / "..")
    store = JsonFileMapStore(tmp_path / "missing" / "shardmap.json")
    with pytest.raises(ConfigurationError, match="does not exist; create it"):
        store.publish(BASE, expected_epoch=None)


# ---------------------------------------------------------------- the SQL store


@pytest.fixture
def sqlite_provider(tmp_path: Path) -> Iterator[PooledProvider]:
    """A provider whose control shard is an SQLite file."""
    with PooledProvider.from_urls({"control": f"sqlite:///{tmp_path / 'control.db'}"}) as p:
        yield p


def test_sql_store_rows_chain_each_epoch_to_the_one_it_replaced(
    sqlite_provider: PooledProvider,
) -> None:
    """Each row records the epoch it replaced (0 for the first) and a publish time."""
    store = _sql_harness(sqlite_provider).store
    assert isinstance(store, SqlMapStore)
    store.publish(BASE, expected_epoch=None)
    store.publish(BASE.add_shard("d").with_epoch(7), expected_epoch=1)
    rows = _sql(
        sqlite_provider,
        f"SELECT epoch, previous_epoch, published_at FROM {store.table} ORDER BY epoch",
    )
    assert [(row[0], row[1]) for row in rows] == [(1, 0), (7, 1)]
    assert all(isinstance(row[2], int) and row[2] > 1_600_000_000_000 for row in rows)
    assert rows[0][2] <= rows[1][2]


def test_sql_store_without_its_table_says_to_ensure_the_schema(sql_harness: Harness) -> None:
    """Before ensure_schema(), load, epoch and publish say how to create the table."""
    assert sql_harness.provider is not None
    store = SqlMapStore(sql_harness.provider, table=f"never_created_{next(_TABLES)}")
    for call in (store.load, store.epoch, lambda: store.publish(BASE, expected_epoch=None)):
        with pytest.raises(MapNotPublishedError, match=r"store\.ensure_schema\(\)"):
            call()


def test_sql_store_ensure_schema_is_idempotent_and_checks_the_columns(
    sql_harness: Harness,
) -> None:
    """ensure_schema() twice keeps the data; a foreign table of that name is a SchemaError."""
    store, provider = sql_harness.store, sql_harness.provider
    assert isinstance(store, SqlMapStore)
    assert provider is not None
    store.publish(BASE, expected_epoch=None)
    store.ensure_schema()
    assert store.load() == BASE
    other = f"other_thing_{next(_TABLES)}"
    _sql(provider, f"CREATE TABLE {other} (id INTEGER PRIMARY KEY)")
    with pytest.raises(SchemaError, match="cannot be read as a map store table"):
        SqlMapStore(provider, table=other).ensure_schema()


@pytest.mark.parametrize("table", ["map; DROP TABLE x", "1map", "", "m" * 65, "ma`p"])
def test_sql_store_refuses_an_unsafe_table_name(
    sqlite_provider: PooledProvider, table: str
) -> None:
    """Table names must match ^[A-Za-z_][A-Za-z0-9_]{0,63}$ before any SQL is built."""
    with pytest.raises(ConfigurationError, match="not a valid SQL identifier"):
        SqlMapStore(sqlite_provider, table=table)


def test_sql_store_refuses_an_empty_shard_name(sqlite_provider: PooledProvider) -> None:
    """The control shard must be named."""
    with pytest.raises(ConfigurationError, match="non-empty shard name"):
        SqlMapStore(sqlite_provider, shard="")


class _RivalCursor(sqlite3.Cursor):
    """Runs the connection's rival hook once, just before the store's INSERT."""

    def execute(self, sql: str, parameters: Any = (), /) -> _RivalCursor:
        hook = getattr(self.connection, "before_insert", None)
        if hook is not None and sql.startswith("INSERT"):
            self.connection.before_insert = None  # type: ignore[attr-defined]
            hook()
        super().execute(sql, parameters)
        return self


class _RivalConnection(sqlite3.Connection):
    before_insert: Callable[[], None] | None = None

    def cursor(self, factory: Any = _RivalCursor) -> Any:
        return super().cursor(factory)


class _DeferredProvider:
    """A custom provider over plain sqlite3 in its default deferred mode: reads take no lock.

    So nothing serializes the store's read and insert; ``before_insert`` runs
    a rival publish exactly between them.
    """

    def __init__(self, path: Path, before_insert: Callable[[], None]) -> None:
        self._path = path
        self._before_insert: Callable[[], None] | None = before_insert

    @contextlib.contextmanager
    def connection(self, shard: str, *, readonly: bool = False) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self._path, factory=_RivalConnection)
        conn.before_insert, self._before_insert = self._before_insert, None
        try:
            with transaction(conn):
                yield conn
        finally:
            conn.close()

    def close(self) -> None:
        """Nothing pooled."""


def test_the_unique_predecessor_guard_stops_a_racer_the_read_did_not_see(
    tmp_path: Path, sqlite_provider: PooledProvider
) -> None:
    """A rival that publishes epoch 9 from epoch 1 between our read and our insert of epoch 2.

    The primary key alone would let both in (different epochs); the UNIQUE
    previous_epoch refuses ours, and the driver's error becomes an
    EpochConflictError reporting the rival's epoch.
    """
    rival = _sql_harness(sqlite_provider).store
    assert isinstance(rival, SqlMapStore)
    rival.publish(BASE, expected_epoch=None)
    rival_map = BASE.add_shard("r").with_epoch(9)
    provider = _DeferredProvider(
        tmp_path / "control.db", lambda: rival.publish(rival_map, expected_epoch=1)
    )
    ours = SqlMapStore(provider, table=rival.table)
    with pytest.raises(EpochConflictError, match="racing publisher") as info:
        ours.publish(BASE.add_shard("d"), expected_epoch=1)
    assert info.value.stored_epoch == 9
    assert rival.load() == rival_map
    assert rival.history() == (1, 9)


# ---------------------------------------------------------------- CachedMap


class _CountingStore:
    """Wraps a store and counts the calls a CachedMap makes."""

    def __init__(self, inner: MapStore) -> None:
        self.inner = inner
        self.loads = 0
        self.epochs = 0

    def load(self) -> ShardMap:
        self.loads += 1
        return self.inner.load()

    def epoch(self) -> int | None:
        self.epochs += 1
        return self.inner.epoch()

    def publish(self, new_map: ShardMap, *, expected_epoch: int | None) -> None:
        self.inner.publish(new_map, expected_epoch=expected_epoch)


def test_cached_map_loads_on_first_use_and_then_holds_it() -> None:
    """current loads once; later reads do not touch the store."""
    store = _CountingStore(MemoryMapStore(BASE))
    cached = CachedMap(store)
    assert store.loads == 0
    assert cached.current == BASE
    assert cached.current == BASE
    assert (store.loads, store.epochs) == (1, 0)
    assert "epoch 1" in repr(cached)


def test_cached_map_on_an_empty_store_raises_not_published() -> None:
    """Without any published map, current raises MapNotPublishedError."""
    with pytest.raises(MapNotPublishedError):
        _ = CachedMap(MemoryMapStore()).current


def test_cached_map_reload_fetches_a_newer_map_only_when_there_is_one() -> None:
    """reload() asks the epoch first and loads the map only when the store's is newer."""
    store = _CountingStore(MemoryMapStore(BASE))
    cached = CachedMap(store)
    assert cached.current == BASE
    assert cached.reload() == BASE
    assert (store.loads, store.epochs) == (1, 1)
    store.publish(BASE.add_shard("d"), expected_epoch=1)
    assert cached.reload() == BASE.add_shard("d")
    assert cached.current == BASE.add_shard("d")
    assert (store.loads, store.epochs) == (2, 2)


def test_cached_map_reload_newer_than_skips_the_store_when_already_newer() -> None:
    """A thread fenced with epoch 1 that finds epoch 2 cached does not ask the store."""
    store = _CountingStore(MemoryMapStore(BASE))
    cached = CachedMap(store)
    store.publish(BASE.add_shard("d"), expected_epoch=1)
    assert cached.current.epoch == 2
    assert cached.reload(newer_than=1).epoch == 2
    assert (store.loads, store.epochs) == (1, 0)


def test_cached_map_never_goes_back_to_an_older_epoch() -> None:
    """A store that shows an older map (a lagging replica) leaves the newer one cached."""
    store = _CountingStore(MemoryMapStore(BASE.add_shard("d")))
    cached = CachedMap(store)
    assert cached.current.epoch == 2
    store.inner = MemoryMapStore(BASE)  # the same store, now read through a lagging replica
    assert cached.reload().epoch == 2
    assert cached.current == BASE.add_shard("d")


def test_cached_map_many_fenced_threads_cause_one_load() -> None:
    """Eight threads reloading at once after a publish load the new map once between them."""
    store = _CountingStore(MemoryMapStore(BASE))
    cached = CachedMap(store)
    assert cached.current.epoch == 1
    store.publish(BASE.add_shard("d"), expected_epoch=1)
    barrier = threading.Barrier(8)
    seen: list[int] = []

    def reload() -> None:
        barrier.wait()
        seen.append(cached.reload().epoch)

    threads = [threading.Thread(target=reload) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [2] * 8
    assert store.loads == 2


# ---------------------------------------------------------------- the package


def test_resharding_reexports_the_map_store_names() -> None:
    """shardbill.resharding re-exports the map store's and the resharder's names, sorted."""
    names = shardbill.resharding.__all__
    assert list(names) == sorted(names)
    assert set(names) == set(shardbill.mapstore.__all__) | set(
        shardbill.resharding.resharder.__all__
    )
    assert all(hasattr(shardbill.resharding, name) for name in names)


def test_mapstore_examples_run() -> None:
    """The module docstring's example runs as written."""
    result = doctest.testmod(shardbill.mapstore)
    assert result.attempted > 0
    assert result.failed == 0


# ---------------------------------------------------------------- the reshard claim


def _claim(version: int, owner: str = "a", state: str = "moving") -> ReshardClaim:
    return ReshardClaim(
        source=BASE,
        target=BASE.add_shard("d"),
        owner=owner,
        expires_at=1_000.5,
        state=state,  # type: ignore[arg-type]
        version=version,
    )


def test_a_claim_is_stored_by_compare_and_set_on_its_version(harness: Harness) -> None:
    """An empty store has no claim; a swap from None stores it whole; the next swap must
    name the stored version, and a stale one is refused without changing anything."""
    store = harness.store
    assert store.load_claim() is None
    store.swap_claim(_claim(1), expected_version=None)
    assert store.load_claim() == _claim(1)
    with pytest.raises(ClaimConflictError, match="version 1, not the expected None"):
        store.swap_claim(_claim(2, owner="b"), expected_version=None)
    store.swap_claim(_claim(2, owner="b", state="finished"), expected_version=1)
    with pytest.raises(ClaimConflictError):
        store.swap_claim(_claim(3, owner="c"), expected_version=1)
    with pytest.raises(ClaimConflictError):  # versions only grow
        store.swap_claim(_claim(2, owner="c"), expected_version=2)
    assert store.load_claim() == _claim(2, owner="b", state="finished")


def test_racing_claims_from_the_same_version_exactly_one_wins(harness: Harness) -> None:
    """Six threads swap different claims from the same version at once: exactly one wins."""
    store = harness.store
    store.swap_claim(_claim(1), expected_version=None)
    barrier = threading.Barrier(6)
    won: list[str] = []
    lost: list[ClaimConflictError] = []

    def swap(owner: str) -> None:
        barrier.wait()
        try:
            store.swap_claim(_claim(2, owner=owner), expected_version=1)
        except ClaimConflictError as exc:
            lost.append(exc)
        else:
            won.append(owner)

    threads = [threading.Thread(target=swap, args=(f"o{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert len(lost) == 5
    claim = store.load_claim()
    assert claim is not None
    assert claim.owner == won[0]


def test_a_damaged_claim_names_where_it_is(doc_harness: Harness, tmp_path: Path) -> None:
    """A claim document that cannot be parsed is a ShardMapError naming its place."""
    store = doc_harness.store
    store.swap_claim(_claim(1), expected_version=None)
    if isinstance(store, JsonFileMapStore):
        store.claim_path.write_text("{not json")
        where = str(store.claim_path)
    else:
        assert isinstance(store, SqlMapStore)
        assert doc_harness.provider is not None
        _sql(doc_harness.provider, f"UPDATE {store.table}_claim SET document = %s", ("{}",))
        where = f"{store.table}_claim"
    with pytest.raises(ShardMapError, match="reshard claim") as caught:
        store.load_claim()
    assert where in str(caught.value)


def test_a_publish_cannot_replace_an_unfinished_reshards_plan(harness: Harness) -> None:
    """While a claim is moving, only its target map may be published (what the resharder
    does); any other map is refused with ReshardClaimedError naming the holder, and nothing
    changes; once the claim is finished, publishing is free again."""
    store = harness.store
    store.publish(BASE, expected_epoch=None)
    claim = _claim(1)
    store.swap_claim(claim, expected_version=None)
    with pytest.raises(ReshardClaimedError, match="refused") as caught:
        store.publish(BASE.add_shard("e"), expected_epoch=1)
    assert caught.value.owner == "a"
    assert store.load() == BASE
    store.publish(claim.target, expected_epoch=1)
    store.swap_claim(_claim(2, state="finished"), expected_version=1)
    store.publish(claim.target.add_shard("e"), expected_epoch=2)
    assert store.epoch() == 3
