"""Fixtures that start private ``mariadbd`` servers (see ``tests/support/servers.py``).

``private_servers(n, **settings)`` starts ``n`` servers in parallel and returns
them running; everything a test started is killed and removed after it (the
error logs stay in pytest's temporary directory for post-mortems). Without the
MariaDB binaries the test skips, saying what to install; under CI it fails.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, Unpack

import pytest

from tests.support.mysql import mysql_required
from tests.support.servers import (
    MariaDBServer,
    MissingBinaryError,
    ServerSettings,
    SettingsKwargs,
    check_binaries,
    short_tempdir,
    start_servers,
)

# The longest path below a server's base directory: "s<index>/sock".
_SOCKET_SUFFIX_BYTES = len("/s99/sock")
_SUN_PATH_MAX = 107


class ServerFactory(Protocol):
    """What the ``private_servers`` fixture returns."""

    def __call__(self, n: int = 1, **settings: Unpack[SettingsKwargs]) -> list[MariaDBServer]:
        """Start ``n`` private servers in parallel with ``settings`` and return them running."""
        ...


def require_binaries(settings: ServerSettings) -> None:
    """Skip the test (or fail it under CI) unless the MariaDB binaries are installed."""
    try:
        check_binaries(settings)
    except MissingBinaryError as exc:
        if mysql_required():
            pytest.fail(f"private MariaDB servers are mandatory here (CI): {exc}", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture
def private_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """A factory ``private_servers(n, **settings) -> list[MariaDBServer]``; all cleaned up after.

    Server ids run on across calls within one test (1, 2, 3, ...), so servers
    from separate calls can replicate from each other.
    """
    started: list[MariaDBServer] = []
    scratch: list[Path] = []
    next_server_id = 1

    def factory(n: int = 1, **settings: Unpack[SettingsKwargs]) -> list[MariaDBServer]:
        nonlocal next_server_id
        require_binaries(ServerSettings(**settings))  # type: ignore[arg-type]  # tuple converters
        base = tmp_path_factory.mktemp("sb", numbered=True)
        if len(str(base).encode()) + _SOCKET_SUFFIX_BYTES > _SUN_PATH_MAX:
            base.rmdir()
            base = short_tempdir()  # a long --basetemp would overflow the socket path
            scratch.append(base)
        servers = start_servers(n, base, first_server_id=next_server_id, **settings)
        started.extend(servers)
        next_server_id += n
        return servers

    yield factory

    for server in started:
        server.cleanup(keep_logs=True)
    for path in scratch:
        shutil.rmtree(path, ignore_errors=True)
