"""What the two MySQL drivers share: the session set-up and the TLS check."""

from __future__ import annotations

import contextlib
from typing import Any

from shardbill.errors import FatalDatabaseError
from shardbill.providers.url import ConnectionURL

__all__ = ["init_command", "require_tls"]

_STRICT = (
    "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES')"
)


def init_command(url: ConnectionURL) -> str | None:
    """The statement run once per new connection: strict SQL mode unless turned off.

    Strict mode turns an out-of-range or truncated value (an amount too large
    for its DECIMAL column) into an error instead of a silently clamped value.
    """
    return _STRICT if url.strict_mode else None


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
