"""Finding the MySQL/MariaDB server the tests use, and what to do when there is none.

The server comes from ``SHARDBILL_TEST_MYSQL_URL`` (default
``mysql://root@127.0.0.1:3306``). Outside CI a missing server skips the MySQL
tests with a reason that says what to install or set; under ``CI=true`` (or
``SHARDBILL_REQUIRE_MYSQL=1``) it fails them: CI must never pass by skipping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_URL = "mysql://root@127.0.0.1:3306"

SKIP_REASON = (
    "no MySQL/MariaDB server reachable at {where} ({error}). Run `./run test` (it installs "
    "and starts MariaDB on Debian), or start one yourself (`apt-get install mariadb-server "
    "&& start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd`), or set "
    "SHARDBILL_TEST_MYSQL_URL=mysql://user:password@host:port"
)


@dataclass(frozen=True)
class ServerAddress:
    """Where a test MySQL server listens and how to log in (the password is never printed)."""

    host: str
    port: int
    user: str
    password: str = ""

    def __repr__(self) -> str:
        return f"ServerAddress(host={self.host!r}, port={self.port}, user={self.user!r})"

    def url(self, database: str, driver: str = "pymysql") -> str:
        """A shardbill connection URL for ``database`` on this server."""
        auth = self.user if not self.password else f"{self.user}:{self.password}"
        return f"mysql+{driver}://{auth}@{self.host}:{self.port}/{database}"

    def connect(self, database: str | None = None, **kwargs: Any) -> object:
        """A plain PyMySQL connection (autocommit on) for fixtures and assertions."""
        import pymysql

        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database,
            autocommit=True,
            charset="utf8mb4",
            **kwargs,
        )


def configured_address() -> ServerAddress:
    """The server named by ``SHARDBILL_TEST_MYSQL_URL`` (or the local default)."""
    parts = urlsplit(os.environ.get("SHARDBILL_TEST_MYSQL_URL", DEFAULT_URL))
    return ServerAddress(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
    )


def mysql_required() -> bool:
    """True when a missing server must fail the run (CI), not skip it."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get(
        "SHARDBILL_REQUIRE_MYSQL", ""
    ) not in ("", "0")
