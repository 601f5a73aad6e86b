"""Shard backends for tests: N SQLite files, or N databases on the real MariaDB per driver.

A :class:`Backend` gives a :class:`~shardbill.providers.PooledProvider` over
its shards and a way to read rows back directly (for assertions that do not
trust the code under test).
"""

from __future__ import annotations

import datetime as dt
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs
import pytest

from shardbill.providers import PooledProvider
from tests.support.mysql import ServerAddress

KINDS = (
    pytest.param("sqlite", id="sqlite"),
    pytest.param("pymysql", id="pymysql", marks=pytest.mark.mysql),
    pytest.param("mysqldb", id="mysqldb", marks=pytest.mark.mysql),
)


@attrs.define
class Backend:
    """Shards of one kind, a provider over them, and direct row access."""

    kind: str
    shards: tuple[str, ...]
    provider: PooledProvider
    locations: dict[str, str]  # shard -> sqlite path or database name
    urls: dict[str, str]
    server: ServerAddress | None = None

    def rows(self, shard: str, sql: str) -> list[tuple[Any, ...]]:
        """Run a SELECT directly (not through shardbill) and return normalized rows."""
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.locations[shard])) as conn:
                found = conn.execute(sql.replace("`", '"')).fetchall()
        else:
            assert self.server is not None
            conn = self.server.connect(self.locations[shard])
            try:
                with conn.cursor() as cur:  # type: ignore[attr-defined]
                    cur.execute(sql)
                    found = list(cur.fetchall())
            finally:
                conn.close()  # type: ignore[attr-defined]
        return [tuple(_norm(v) for v in row) for row in found]

    def execute(self, shard: str, sql: str) -> None:
        """Run one statement directly and commit it."""
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.locations[shard])) as conn:
                conn.execute(sql.replace("`", '"'))
                conn.commit()
            return
        assert self.server is not None
        conn = self.server.connect(self.locations[shard])
        try:
            with conn.cursor() as cur:  # type: ignore[attr-defined]
                cur.execute(sql)
        finally:
            conn.close()  # type: ignore[attr-defined]


def _norm(value: object) -> object:
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def make_backend(
    kind: str, n: int, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Backend]:
    """Create ``n`` shards of ``kind``; yields the backend and drops everything after."""
    shards = tuple(f"s{i}" for i in range(n))
    if kind == "sqlite":
        provider = PooledProvider.sqlite_directory(tmp_path / "shards", shards)
        locations = {s: str(tmp_path / "shards" / f"{s}.db") for s in shards}
        urls = {s: f"sqlite:///{path}" for s, path in locations.items()}
        try:
            yield Backend(
                kind=kind, shards=shards, provider=provider, locations=locations, urls=urls
            )
        finally:
            provider.close()
        return
    server: ServerAddress = request.getfixturevalue("mysql_server")
    tag = secrets.token_hex(3)
    locations = {s: f"sbt_{tag}_{s}" for s in shards}
    admin = server.connect()
    try:
        with admin.cursor() as cur:  # type: ignore[attr-defined]
            for name in locations.values():
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        urls = {s: server.url(db, kind) for s, db in locations.items()}
        provider = PooledProvider.from_urls(urls)
        try:
            yield Backend(
                kind=kind,
                shards=shards,
                provider=provider,
                locations=locations,
                urls=urls,
                server=server,
            )
        finally:
            provider.close()
    finally:
        with admin.cursor() as cur:  # type: ignore[attr-defined]
            for name in locations.values():
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()  # type: ignore[attr-defined]


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Three shards on SQLite, or on MariaDB through PyMySQL or mysqlclient."""
    yield from make_backend(request.param, 3, tmp_path, request)
