"""Private mariadbd servers: parallel start, SIGKILL and restart, stop/start, pause/resume."""

from __future__ import annotations

import signal
import socket

import attrs
import pymysql
import pytest

from tests.support.server_fixtures import ServerFactory, require_binaries
from tests.support.servers import (
    MariaDBServer,
    MissingBinaryError,
    ServerSettings,
    SettingsKwargs,
    short_tempdir,
)

ROWS_PER_SERVER = 20


def _fill(server: MariaDBServer, index: int) -> list[tuple[int, str]]:
    """Create ``billing.charges`` on ``server`` and commit rows only this server holds."""
    rows = [(index * 1000 + k, f"server-{index}-row-{k}") for k in range(ROWS_PER_SERVER)]
    server.execute("CREATE DATABASE billing CHARACTER SET utf8mb4")
    server.execute("CREATE TABLE billing.charges (id INT PRIMARY KEY, label VARCHAR(64) NOT NULL)")
    conn = server.connect("billing")
    try:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO charges (id, label) VALUES (%s, %s)", rows)
    finally:
        conn.close()
    return rows


def _rows(server: MariaDBServer) -> list[tuple[int, str]]:
    return [
        (int(i), str(label))
        for i, label in server.execute("SELECT id, label FROM billing.charges ORDER BY id")
    ]


def test_sigkilled_server_restarts_on_same_port_with_committed_rows(
    private_servers: ServerFactory,
) -> None:
    """Of three servers, a SIGKILLed one leaves the others answering and restarts on its
    datadir and port with every committed row (and without the uncommitted one)."""
    servers = private_servers(3)
    expected = [_fill(server, index) for index, server in enumerate(servers)]
    victim = servers[1]
    port, url = victim.port, victim.url("billing")

    open_txn = victim.connect("billing")
    with open_txn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO charges (id, label) VALUES (%s, %s)", (99999, "uncommitted"))
    victim.kill()
    open_txn.close()

    assert not victim.is_running
    assert victim.returncode == -signal.SIGKILL
    for survivor in (servers[0], servers[2]):
        assert survivor.execute("SELECT COUNT(*) FROM billing.charges") == ((ROWS_PER_SERVER,),)

    victim.restart()

    assert (victim.port, victim.url("billing")) == (port, url)
    assert [_rows(server) for server in servers] == expected


def test_clean_stop_and_start_keeps_data_on_a_cold_installed_server(
    private_servers: ServerFactory,
) -> None:
    """A server created by mariadb-install-db (no template) stops cleanly and starts
    again on the same port with its data."""
    (server,) = private_servers(1, template=False)
    rows = _fill(server, 7)
    port = server.port

    server.stop()
    assert not server.is_running
    assert server.returncode == 0

    server.start()
    assert server.port == port
    assert _rows(server) == rows


def test_paused_server_times_out_queries_and_answers_after_resume(
    private_servers: ServerFactory,
) -> None:
    """While paused a query times out on the client; after resume the server answers again."""
    (server,) = private_servers(1)
    server.execute("CREATE DATABASE billing")
    conn = server.connect(read_timeout=1)
    try:
        server.pause()
        try:
            with pytest.raises(pymysql.err.OperationalError), conn.cursor() as cur:
                cur.execute("SELECT 1")
            assert server.is_running
        finally:
            server.resume()
    finally:
        conn.close()

    assert server.execute("SHOW DATABASES LIKE 'billing'") == (("billing",),)


def test_two_servers_have_distinct_ports_datadirs_and_data(
    private_servers: ServerFactory,
) -> None:
    """Two servers listen on different ports, own different datadirs and share no tables."""
    first, second = private_servers(2)
    first.execute("CREATE DATABASE only_on_first")

    assert first.port != second.port
    assert first.datadir != second.datadir
    assert first.execute("SELECT @@datadir, @@port") == ((f"{first.datadir}/", first.port),)
    assert second.execute("SELECT @@datadir, @@port") == ((f"{second.datadir}/", second.port),)
    assert second.execute("SHOW DATABASES LIKE 'only_on_first'") == ()


def test_first_start_moves_to_another_port_when_its_port_was_taken(
    private_servers: ServerFactory,
) -> None:
    """A listener that grabs the picked port before the first start makes the server
    start on another free port instead of failing."""
    (reference,) = private_servers(1)  # skips without binaries; builds the template
    server = MariaDBServer(
        reference.directory.parent / "late", settings=reference.settings, server_id=9
    )
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR lets the blocker bind beside the harness's non-listening
        # placeholder; once it listens, mariadbd's bind fails with EADDRINUSE.
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind((server.host, server.port))
        blocker.listen()
        taken = server.port
        with server:
            assert server.port != taken
            assert server.execute("SELECT @@port") == ((server.port,),)
    finally:
        blocker.close()


def test_missing_binary_error_says_what_to_install() -> None:
    """Pointing a server at a nonexistent mariadbd raises an error naming the package."""
    directory = short_tempdir()
    server = MariaDBServer(directory, settings=ServerSettings(mariadbd="/nonexistent/mariadbd"))
    try:
        with pytest.raises(MissingBinaryError, match="apt-get install mariadb-server") as info:
            server.start()
    finally:
        server.cleanup()
    assert "/nonexistent/mariadbd" in str(info.value)
    assert not directory.exists()


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_missing_binaries_skip_locally_and_fail_under_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    """Missing binaries skip a test outside CI and fail it under CI, with the install hint."""
    monkeypatch.setenv("CI", ci)
    monkeypatch.delenv("SHARDBILL_REQUIRE_MYSQL", raising=False)
    settings = ServerSettings(install_db="/nonexistent/mariadb-install-db")
    with pytest.raises(outcome, match="apt-get install mariadb-server"):
        require_binaries(settings)


def test_settings_keywords_match_the_settings_fields() -> None:
    """Every ServerSettings field can be passed as a keyword to the factory, and nothing else."""
    assert set(SettingsKwargs.__annotations__) == {f.name for f in attrs.fields(ServerSettings)}


def test_settings_reject_bad_values_naming_the_field() -> None:
    """Invalid settings fail at construction with the field name and the value."""
    with pytest.raises(ValueError, match="innodb_flush_log_at_trx_commit"):
        ServerSettings(innodb_flush_log_at_trx_commit=3)
    with pytest.raises(
        ValueError, match="'innodb_buffer_pool_size' must be a size like '32M': 'lots'"
    ):
        ServerSettings(innodb_buffer_pool_size="lots")
