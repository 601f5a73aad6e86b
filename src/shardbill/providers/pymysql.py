"""The PyMySQL driver (``mysql+pymysql://`` URLs). PyMySQL is imported only when used.

Safe defaults: ``utf8mb4``, autocommit off, ``LOAD DATA LOCAL INFILE`` off,
one statement per ``execute`` (no ``CLIENT.MULTI_STATEMENTS``), strict SQL
mode, TLS per ``ssl_mode`` (verified after connecting when required).
"""

from __future__ import annotations

import ssl
from types import ModuleType
from typing import Any, ClassVar

from shardbill.errors import DriverNotInstalledError, InvalidURLError
from shardbill.providers.mysql_common import MySQLFamilyDriver, init_command
from shardbill.providers.url import ConnectionURL, SSLMode

__all__ = ["PyMySQLDriver", "connect_kwargs"]


def _module() -> ModuleType:
    try:
        import pymysql
    except ImportError as exc:
        raise DriverNotInstalledError(
            "mysql+pymysql URLs need PyMySQL, which is not installed: "
            "pip install 'shardbill[pymysql]'"
        ) from exc
    return pymysql


def _ssl_context(url: ConnectionURL, mode: SSLMode) -> ssl.SSLContext:
    """The context for ``mode``; a file that cannot be loaded is named in an InvalidURLError."""
    try:
        context = ssl.create_default_context(cafile=url.ssl_ca)
    except (OSError, ssl.SSLError) as exc:
        raise _file_error("ssl_ca", url.ssl_ca, exc, url) from exc
    if mode is SSLMode.REQUIRED:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = mode is SSLMode.VERIFY_IDENTITY
        context.verify_mode = ssl.CERT_REQUIRED
    if url.ssl_cert is not None:
        try:
            context.load_cert_chain(url.ssl_cert, keyfile=url.ssl_key)
        except (OSError, ssl.SSLError) as exc:
            files = f"{url.ssl_cert}, {url.ssl_key}"
            raise _file_error("ssl_cert/ssl_key", files, exc, url) from exc
    return context


def _file_error(
    option: str, path: str | None, exc: Exception, url: ConnectionURL
) -> InvalidURLError:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
    return InvalidURLError(
        f"connection URL option {option} names {path!r}, which could not be loaded ({reason}); "
        f"give PEM files (a certificate, or a key without a passphrase) (for {url})"
    )


def connect_kwargs(url: ConnectionURL) -> dict[str, Any]:
    """The keyword arguments :func:`pymysql.connect` gets for ``url`` (password included).

    Never log the result: it holds the password.
    """
    kwargs: dict[str, Any] = {
        "host": url.host or "localhost",
        "port": url.port,
        "user": url.user or "",
        "password": url.resolve_password(),
        "database": url.database,
        "charset": url.charset,
        "autocommit": False,
        "local_infile": False,
        "client_flag": 0,  # PyMySQL never adds MULTI_STATEMENTS itself
        "connect_timeout": url.connect_timeout,
        "read_timeout": url.effective_read_timeout,
        "write_timeout": url.effective_write_timeout,
        "init_command": init_command(url),
    }
    if url.unix_socket is not None:
        kwargs["unix_socket"] = url.unix_socket
    mode = url.effective_ssl_mode
    if mode is SSLMode.DISABLED:
        kwargs["ssl_disabled"] = True
    elif mode.encrypted:
        kwargs["ssl"] = _ssl_context(url, mode)
    # PREFERRED: no TLS arguments is PyMySQL's own PREFERRED (since 1.2.0): TLS when the
    # server offers it, unverified, plain otherwise. An SSL context would make TLS required.
    return kwargs


class PyMySQLDriver(MySQLFamilyDriver):
    """Connects with PyMySQL."""

    name: ClassVar[str] = "pymysql"

    module = staticmethod(_module)
    connect_kwargs = staticmethod(connect_kwargs)

    def ping(self, raw: Any) -> None:
        """Ping without reconnecting (a reconnect would lose the session silently)."""
        raw.ping(reconnect=False)


DRIVER = PyMySQLDriver()
