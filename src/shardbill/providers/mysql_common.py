"""What the two MySQL drivers share: the session set-up, the TLS check, the driver class."""

from __future__ import annotations

import abc
import contextlib
import os
from types import ModuleType
from typing import Any

from shardbill.errors import FatalDatabaseError, InvalidURLError
from shardbill.providers.pool import Driver
from shardbill.providers.url import ConnectionURL

__all__ = ["MySQLFamilyDriver", "check_tls_files", "init_command", "require_tls"]

_STRICT = (
    "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES')"
)


def init_command(url: ConnectionURL) -> str | None:
    """The statement run once per new connection: strict SQL mode unless turned off.

    Strict mode turns an out-of-range or truncated value (an amount too large
    for its DECIMAL column) into an error instead of a silently clamped value.
    """
    return _STRICT if url.strict_mode else None


def check_tls_files(url: ConnectionURL) -> None:
    """Raise unless every TLS file ``url`` names is a readable file.

    Checked before each connect, in the same words for both drivers (left to
    them, one says "No such file or directory" naming nothing, the other
    "certificate verify failed").

    Raises:
        InvalidURLError: naming the option and the path.
    """
    for option in ("ssl_ca", "ssl_cert", "ssl_key"):
        path = getattr(url, option)
        if path is None:
            continue
        if not os.path.isfile(path):
            problem = "does not exist" if not os.path.exists(path) else "is not a file"
        elif not os.access(path, os.R_OK):
            problem = "is not readable by this process"
        else:
            continue
        raise InvalidURLError(
            f"connection URL option {option} names {path!r}, which {problem}; fix the path "
            f"(an absolute path is safest) or the file's permissions (for {url})"
        )


def require_tls(conn: Any, url: ConnectionURL) -> None:
    """Close ``conn`` and raise when ``url`` requires TLS but the session is not encrypted.

    Asks the server (``Ssl_cipher``), so it holds whatever the client library
    did with the TLS options.

    Raises:
        FatalDatabaseError: errno 2026; the connection is closed.
    """
    if not url.effective_ssl_mode.encrypted:
        return
    cursor = conn.cursor()
    try:
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        row = cursor.fetchone()
        conn.commit()
    finally:
        cursor.close()
    if row and row[1]:
        return
    with contextlib.suppress(Exception):
        conn.close()
    raise FatalDatabaseError(
        f"ssl_mode={url.effective_ssl_mode} requires TLS, but the connection to {url} is not "
        "encrypted (the server has no TLS, or the client library ignored the option); "
        "configure TLS on the server (ssl_cert/ssl_key) or change ssl_mode",
        errno=2026,
    )


class MySQLFamilyDriver(Driver):
    """A MySQL driver: its module imported on first use, connected with its keyword arguments.

    Subclasses say how to import the module (naming the extra to install when
    it is missing) and which keyword arguments its ``connect`` takes; every
    connection is checked for TLS when the URL requires it.
    """

    @abc.abstractmethod
    def module(self) -> ModuleType:
        """The DB-API module (raises DriverNotInstalledError naming the extra)."""

    @abc.abstractmethod
    def connect_kwargs(self, url: ConnectionURL) -> dict[str, Any]:
        """The module's ``connect`` arguments for ``url`` (the password included: never log)."""

    def load(self) -> None:
        """Import the driver module now."""
        self.module()

    def connect(self, url: ConnectionURL) -> Any:
        """A new connection for ``url``, refused when TLS is required but not in use."""
        check_tls_files(url)
        conn = self.module().connect(**self.connect_kwargs(url))
        require_tls(conn, url)
        return conn
