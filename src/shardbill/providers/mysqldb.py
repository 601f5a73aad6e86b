"""The mysqlclient driver (``mysql+mysqldb://`` URLs). ``MySQLdb`` is imported only when used.

Safe defaults: ``utf8mb4``, autocommit off, ``LOAD DATA LOCAL INFILE`` off,
``multi_statements=False`` (mysqlclient turns multi-statements on unless told
not to), strict SQL mode, TLS per ``ssl_mode``. With MariaDB Connector/C,
``ssl_mode=REQUIRED`` is not enforced by the library; shardbill checks the
connection is encrypted after connecting and refuses it otherwise.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, ClassVar

from shardbill.errors import DriverNotInstalledError
from shardbill.providers.mysql_common import MySQLFamilyDriver, init_command
from shardbill.providers.url import ConnectionURL, SSLMode

__all__ = ["MySQLdbDriver", "connect_kwargs"]


def _module() -> ModuleType:
    try:
        import MySQLdb
    except ImportError as exc:
        raise DriverNotInstalledError(
            "mysql+mysqldb URLs need mysqlclient (MySQLdb), which is not installed: "
            "pip install 'shardbill[mysqlclient]' (it builds against libmariadb-dev or "
            "libmysqlclient-dev and pkg-config)"
        ) from exc
    module: ModuleType = MySQLdb
    return module


def _seconds(value: float) -> int:
    # The C client takes whole seconds; round up so a timeout never shrinks.
    return max(1, math.ceil(value))


def connect_kwargs(url: ConnectionURL) -> dict[str, Any]:
    """The keyword arguments ``MySQLdb.connect`` gets for ``url`` (password included).

    Never log the result: it holds the password.
    """
    kwargs: dict[str, Any] = {
        "host": url.host or "localhost",
        "port": url.port,
        "user": url.user or "",
        "password": url.resolve_password(),
        "charset": url.charset,
        "autocommit": False,
        "local_infile": False,
        "multi_statements": False,
        "connect_timeout": _seconds(url.connect_timeout),
    }
    command = init_command(url)
    if command is not None:
        kwargs["init_command"] = command
    if url.database is not None:
        kwargs["database"] = url.database
    kwargs["read_timeout"] = _seconds(url.effective_read_timeout)
    kwargs["write_timeout"] = _seconds(url.effective_write_timeout)
    if url.unix_socket is not None:
        kwargs["unix_socket"] = url.unix_socket
        # The C client uses the socket only for host "localhost" (127.0.0.1 means TCP);
        # PyMySQL uses it whatever the host. The socket wins on both.
        kwargs["host"] = "localhost"
    mode = url.effective_ssl_mode
    kwargs["ssl_mode"] = mode.value
    files = {
        key: value
        for key, value in (("ca", url.ssl_ca), ("cert", url.ssl_cert), ("key", url.ssl_key))
        if value is not None
    }
    if mode is SSLMode.PREFERRED and not files:
        # MariaDB Connector/C starts TLS only when some TLS option is set; a cipher list
        # is the one that asks for TLS without asking for verification. A server
        # without TLS still gets a plain connection, as PREFERRED promises.
        files["cipher"] = "DEFAULT"
    if files and mode is not SSLMode.DISABLED:
        kwargs["ssl"] = files
    return kwargs


class MySQLdbDriver(MySQLFamilyDriver):
    """Connects with mysqlclient."""

    name: ClassVar[str] = "mysqldb"

    module = staticmethod(_module)
    connect_kwargs = staticmethod(connect_kwargs)

    def ping(self, raw: Any) -> None:
        """Ping (mysqlclient never reconnects unless told to)."""
        raw.ping()


DRIVER = MySQLdbDriver()
