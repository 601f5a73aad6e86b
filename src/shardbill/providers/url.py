"""Connection URLs: one string per shard server, parsed into a frozen :class:`ConnectionURL`.

Forms::

    mysql+pymysql://USER:PASSWORD@HOST:PORT/DATABASE?OPTION=VALUE&...
    mysql+mysqldb://USER@HOST/DATABASE?password_env=SHARD0_PASSWORD
    sqlite:///relative/path/shard-0.db      (three slashes: relative to the working directory)
    sqlite:////absolute/path/shard-0.db     (four slashes: absolute)

Special characters in the user, password or database name must be
percent-encoded (``@`` as ``%40``, ``?`` as ``%3F``, ``/`` as ``%2F``...).
Relative SQLite paths are resolved against the working directory when the URL
is parsed, so a later ``chdir`` never makes a pool open a different file.

The password is held in a :class:`Secret`; it never appears in ``repr``,
``str``, a log line or an error message (errors show ``user:***@``).
"""

from __future__ import annotations

import enum
import math
import os
import re
from collections.abc import Callable
from typing import Any, ClassVar, Final, Literal
from urllib.parse import parse_qsl, quote, unquote

import attrs

from shardbill.errors import InvalidURLError

__all__ = ["ConnectionURL", "SSLMode", "Secret"]

DriverName = Literal["pymysql", "mysqldb", "sqlite"]
"""The name of a driver, as a URL's scheme picks it.

The driver itself is a :class:`~shardbill.providers.pool.Driver`.
"""

MAX_URL_LENGTH: Final = 4096
"""The longest connection URL :meth:`ConnectionURL.parse` reads."""

_SCHEMES: Final[dict[str, DriverName]] = {
    "mysql+pymysql": "pymysql",
    "mysql+mysqldb": "mysqldb",
    "sqlite": "sqlite",
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OPTION_WORD = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])$")


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or ``attrs.asdict``.

    Deliberately not an attrs class: ``attrs.asdict(url)`` keeps a ``Secret``
    as it is (showing ``***``) instead of turning it into a dict holding the
    value.

    Example:
        >>> Secret("hunter2")
        Secret('***')
        >>> Secret("hunter2").reveal()
        'hunter2'
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that needs it (the driver's ``connect``)."""
        return self._value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self._value == other._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))


class SSLMode(enum.StrEnum):
    """How a MySQL connection uses TLS (the names of MySQL's ``--ssl-mode``).

    ``REQUIRED`` and stronger are checked after connecting: a connection that
    is not encrypted is closed and refused, whatever the driver did.
    """

    DISABLED = "DISABLED"
    """Plain TCP."""
    PREFERRED = "PREFERRED"
    """TLS when the server offers it, unverified; plain otherwise (the default without files)."""
    REQUIRED = "REQUIRED"
    """TLS or no connection; the server certificate is not verified (no ``ssl_ca`` allowed)."""
    VERIFY_CA = "VERIFY_CA"
    """TLS with the certificate verified against ``ssl_ca`` (or the system store), not the name.

    mysqlclient built on MariaDB Connector/C checks the host name here too.
    """
    VERIFY_IDENTITY = "VERIFY_IDENTITY"
    """``VERIFY_CA`` plus the certificate's host name must match the URL's host."""

    @property
    def encrypted(self) -> bool:
        """True when this mode refuses an unencrypted connection."""
        return self in (SSLMode.REQUIRED, SSLMode.VERIFY_CA, SSLMode.VERIFY_IDENTITY)


DEFAULT_READ_TIMEOUT = 60.0
"""Seconds a MySQL connection waits for an answer when its URL sets no ``read_timeout``.

Longer than InnoDB's default ``innodb_lock_wait_timeout`` (50 s), so a write
waiting for a row lock gets the server's lock-wait error, not a client timeout."""
DEFAULT_WRITE_TIMEOUT = 60.0
"""Seconds a MySQL connection may take to send a statement when its URL sets none."""


def _url_error(field: str, value: object, fix: str) -> InvalidURLError:
    """The error for a bad option value: a number is shown, text never.

    Text may be a secret pasted into the wrong option; the option's name and
    what it takes are enough to fix it.
    """
    shown = (
        f": {value!r}"
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        else " (the value is not shown: it may be a misplaced secret)"
    )
    return InvalidURLError(f"connection URL option {field!r} is invalid{shown}; {fix}")


def _validate_positive(_: object, field: attrs.Attribute[Any], value: float | None) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value <= 0:
        raise _url_error(field.name, value, "give a positive number of seconds")


def _validate_non_negative(_: object, field: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise _url_error(field.name, value, "give 0 or a positive number of seconds")


def _validate_pool_size(_: object, field: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise _url_error(field.name, value, "give an integer from 1 to 10000")


def _validate_port(_: object, field: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _url_error(field.name, value, "give a TCP port from 1 to 65535")


def _validate_charset(_: object, field: attrs.Attribute[Any], value: str) -> None:
    if value != "utf8mb4":
        raise _url_error(
            field.name,
            value,
            "only utf8mb4 is supported (utf8/utf8mb3 cannot store every character, and a "
            "client charset that differs from the data's corrupts it silently)",
        )


def _validate_env_name(_: object, field: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not _ENV_NAME.fullmatch(value):
        raise _url_error(field.name, value, "give an environment variable name like DB_PASSWORD")


def _validate_synchronous(_: object, field: attrs.Attribute[Any], value: str) -> None:
    if value not in ("full", "normal"):
        raise _url_error(
            field.name, value, "give 'full' (the default: a commit survives power loss) or 'normal'"
        )


def _as_secret(value: Secret | str | None) -> Secret | None:
    if value is None or isinstance(value, Secret):
        return value
    return Secret(value)


def _as_ssl_mode(value: SSLMode | str | None) -> SSLMode | None:
    if value is None or isinstance(value, SSLMode):
        return value
    # A lookup, not SSLMode(value): its ValueError would carry the value as __context__.
    mode = SSLMode.__members__.get(value.upper()) if isinstance(value, str) else None
    if mode is None:
        valid = ", ".join(mode.value for mode in SSLMode)
        raise _url_error("ssl_mode", value, f"give one of {valid}")
    return mode


@attrs.frozen(kw_only=True, repr=False)
class ConnectionURL:
    """Where one shard server is and how to connect to it. Build it with :meth:`parse`.

    MySQL options (``mysql+pymysql`` and ``mysql+mysqldb``):

    ``connect_timeout``, ``read_timeout``, ``write_timeout``
        Seconds. ``connect_timeout`` (default 10) bounds opening the TCP
        connection; ``read_timeout`` bounds each wait for the server's answer,
        from the handshake on (default 60 on a primary, 10 on a replica of a
        :class:`~shardbill.providers.PooledProvider`); ``write_timeout`` bounds
        each send of a statement (default 60). A timed-out read is a lost
        connection (2013): the writer retries it through its ledger, a replica
        read moves to another server. mysqlclient rounds them up to whole seconds.
    ``ssl_mode``
        One of :class:`SSLMode` (default ``PREFERRED``; ``VERIFY_IDENTITY``
        when ``ssl_ca`` is given, ``REQUIRED`` when only a client certificate
        is). ``ssl_ca`` with ``DISABLED``, ``PREFERRED`` or ``REQUIRED`` is
        refused: those modes would ignore it.
    ``ssl_ca``, ``ssl_cert``, ``ssl_key``
        PEM file paths: the CA to verify the server with, the client
        certificate and its key.
    ``charset``
        Only ``utf8mb4`` (the default) is accepted.
    ``password_env``
        The name of an environment variable holding the password, read at
        each connect (so configuration files never hold one).
    ``unix_socket``
        A socket path to connect through instead of TCP.
    ``strict_mode``
        ``true`` (default) adds ``STRICT_ALL_TABLES`` to the session's
        ``sql_mode``, so an out-of-range amount is an error, never a clamp.

    SQLite options: ``busy_timeout`` (seconds a writer waits for the file
    lock, default 5) and ``synchronous`` (``full``, the default, or ``normal``).

    Pool options (every scheme): ``pool_size`` (most connections open to
    this server, default 8), ``pool_timeout`` (seconds to wait for a free
    connection, default 10), ``ping_after`` (a connection idle longer than
    this many seconds is pinged before it is lent, default 30; 0 pings every
    time).

    Example:
        >>> url = ConnectionURL.parse("mysql+pymysql://app:s3cret@db1:3306/billing?pool_size=4")
        >>> url
        ConnectionURL('mysql+pymysql://app:***@db1:3306/billing?pool_size=4')
        >>> (url.host, url.port, url.database, url.pool_size)
        ('db1', 3306, 'billing', 4)
    """

    MYSQL_OPTIONS: ClassVar[tuple[str, ...]] = (
        "charset",
        "connect_timeout",
        "password_env",
        "ping_after",
        "pool_size",
        "pool_timeout",
        "read_timeout",
        "ssl_ca",
        "ssl_cert",
        "ssl_key",
        "ssl_mode",
        "strict_mode",
        "unix_socket",
        "write_timeout",
    )
    """The query options a ``mysql+...`` URL accepts."""
    SQLITE_OPTIONS: ClassVar[tuple[str, ...]] = (
        "busy_timeout",
        "ping_after",
        "pool_size",
        "pool_timeout",
        "synchronous",
    )
    """The query options a ``sqlite`` URL accepts."""

    driver: DriverName = attrs.field(
        validator=attrs.validators.in_(("pymysql", "mysqldb", "sqlite"))
    )
    """``"pymysql"``, ``"mysqldb"`` or ``"sqlite"`` (from the scheme)."""
    host: str | None = None
    """MySQL server host name or address (IPv6 in brackets)."""
    port: int = attrs.field(default=3306, validator=_validate_port)
    """MySQL server TCP port."""
    user: str | None = None
    """MySQL user name."""
    password: Secret | None = attrs.field(default=None, converter=_as_secret)
    """The password, when the URL holds one (never shown)."""
    database: str | None = None
    """MySQL database (schema) the shard's tables live in."""
    path: str | None = None
    """SQLite: the absolute path of the shard file."""
    unix_socket: str | None = None
    connect_timeout: float = attrs.field(default=10.0, validator=_validate_positive)
    read_timeout: float | None = attrs.field(default=None, validator=_validate_positive)
    write_timeout: float | None = attrs.field(default=None, validator=_validate_positive)
    ssl_mode: SSLMode | None = attrs.field(default=None, converter=_as_ssl_mode)
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    charset: str = attrs.field(default="utf8mb4", validator=_validate_charset)
    password_env: str | None = attrs.field(default=None, validator=_validate_env_name)
    strict_mode: bool = True
    busy_timeout: float = attrs.field(default=5.0, validator=_validate_positive)
    synchronous: str = attrs.field(default="full", validator=_validate_synchronous)
    pool_size: int = attrs.field(default=8, validator=_validate_pool_size)
    pool_timeout: float = attrs.field(default=10.0, validator=_validate_positive)
    ping_after: float = attrs.field(default=30.0, validator=_validate_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.driver == "sqlite":
            self._check_sqlite()
        else:
            self._check_mysql()

    def _check_sqlite(self) -> None:
        if self.path is None or not os.path.isabs(self.path):
            raise InvalidURLError(
                f"a sqlite URL needs an absolute file path, got {self.path!r}; "
                "ConnectionURL.parse resolves relative paths for you"
            )
        defaults = attrs.fields(ConnectionURL)
        for name in (*ConnectionURL.MYSQL_OPTIONS, "host", "port", "user", "database"):
            if name in ConnectionURL.SQLITE_OPTIONS:
                continue
            field = getattr(defaults, name)
            if getattr(self, name) != field.default:
                raise InvalidURLError(
                    f"connection URL option {name!r} does not apply to sqlite URLs; "
                    f"valid options: {', '.join(ConnectionURL.SQLITE_OPTIONS)}"
                )
        if self.password is not None:
            raise InvalidURLError("a sqlite URL has no password; remove it")

    def _check_mysql(self) -> None:
        if self.path is not None:
            raise InvalidURLError(f"a {self.scheme} URL has no file path; use a sqlite URL")
        if not self.host and not self.unix_socket:
            raise InvalidURLError(
                f"a {self.scheme} URL needs a host (mysql+...://user@HOST:3306/db) "
                "or the unix_socket option"
            )
        if self.password is not None and self.password_env is not None:
            raise InvalidURLError(
                "connection URL has both a password and password_env; keep one "
                "(password_env keeps the password out of configuration files)"
            )
        mode = self.ssl_mode
        if self.ssl_ca and mode in (SSLMode.DISABLED, SSLMode.PREFERRED, SSLMode.REQUIRED):
            raise InvalidURLError(
                f"connection URL has ssl_mode={mode} and ssl_ca, but {mode} never verifies the "
                "server with that CA (a CA that looks configured but is ignored); use "
                "ssl_mode=VERIFY_IDENTITY (the default with ssl_ca), VERIFY_CA to skip the "
                "host-name check, or remove ssl_ca"
            )
        has_client_cert = bool(self.ssl_cert or self.ssl_key)
        if has_client_cert and mode in (SSLMode.DISABLED, SSLMode.PREFERRED):
            raise InvalidURLError(
                f"connection URL has ssl_mode={mode} and a client certificate (ssl_cert/ssl_key), "
                "which that mode may never send; use ssl_mode=VERIFY_IDENTITY (with ssl_ca) or "
                "REQUIRED, or remove the certificate"
            )
        if (self.ssl_cert is None) != (self.ssl_key is None):
            raise InvalidURLError(
                "connection URL has only one of ssl_cert and ssl_key; a client certificate "
                "needs both"
            )

    @property
    def effective_read_timeout(self) -> float:
        """``read_timeout``, or the default for a primary (60 s) when the URL gives none."""
        return DEFAULT_READ_TIMEOUT if self.read_timeout is None else self.read_timeout

    @property
    def effective_write_timeout(self) -> float:
        """``write_timeout``, or the default (60 s) when the URL gives none."""
        return DEFAULT_WRITE_TIMEOUT if self.write_timeout is None else self.write_timeout

    @property
    def scheme(self) -> str:
        """The URL scheme: ``mysql+pymysql``, ``mysql+mysqldb`` or ``sqlite``."""
        return "sqlite" if self.driver == "sqlite" else f"mysql+{self.driver}"

    @property
    def family(self) -> Literal["mysql", "sqlite"]:
        """``"mysql"`` (MySQL or MariaDB, either driver) or ``"sqlite"``."""
        return "sqlite" if self.driver == "sqlite" else "mysql"

    @property
    def effective_ssl_mode(self) -> SSLMode:
        """``ssl_mode``, or its default: VERIFY_IDENTITY with ``ssl_ca``, REQUIRED with a cert.

        Without either, the default is PREFERRED. A CA given means the server's
        identity is verified; only an explicit ``ssl_mode=VERIFY_CA`` skips the
        host-name check.
        """
        if self.ssl_mode is not None:
            return self.ssl_mode
        if self.ssl_ca:
            return SSLMode.VERIFY_IDENTITY
        return SSLMode.REQUIRED if self.ssl_cert else SSLMode.PREFERRED

    @property
    def target(self) -> tuple[str, ...]:
        """What database this URL names, whoever connects how: equal targets are one database.

        SQLite: the file's real path (symlinks resolved). MySQL: the socket or
        the host (case-folded) and port, and the database; user, driver and
        options do not count. Two shards with one target would share their
        tables, so every event of their slots would count twice.
        """
        if self.driver == "sqlite":
            return ("sqlite", os.path.realpath(self.path or ""))
        where = (
            (self.unix_socket,) if self.unix_socket else ((self.host or "").lower(), str(self.port))
        )
        return ("mysql", *where, self.database or "")

    def resolve_password(self) -> str:
        """The password to connect with: the URL's, the ``password_env`` variable's, or ``""``.

        Raises:
            InvalidURLError: ``password_env`` names a variable that is not set
                (the message names the variable, never a value).
        """
        if self.password is not None:
            return self.password.reveal()
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise InvalidURLError(
                    f"connection URL option password_env names {self.password_env!r}, but that "
                    f"environment variable is not set for {self}; export it before starting"
                )
            return value
        return ""

    @classmethod
    def parse(cls, text: str) -> ConnectionURL:
        """Parse a connection URL (see the module docstring for the forms).

        Raises:
            InvalidURLError: the URL cannot be used; the message says which
                part, and shows the URL with its password replaced by ``***``.
        """
        if not isinstance(text, str):
            raise InvalidURLError(
                f"a connection URL must be a str, not a {type(text).__name__}; "
                "write it like mysql+pymysql://user@host:3306/db"
            )
        if len(text) > MAX_URL_LENGTH:
            raise InvalidURLError(
                f"a connection URL is at most {MAX_URL_LENGTH} characters; this one has "
                f"{len(text)} (is it the value you meant?)"
            )
        scheme, sep, rest = text.partition("://")
        driver = _SCHEMES.get(scheme.lower())
        if not sep or driver is None:
            raise InvalidURLError(
                f"connection URL {_describe(text)} has an unsupported scheme "
                f"{scheme.lower() if sep else ''!r}; valid schemes: {', '.join(_SCHEMES)}"
            )
        head, qmark, query = rest.partition("?")
        if "#" in query or (qmark and "@" in query):
            raise InvalidURLError(
                f"connection URL {_describe(text)} has '#' or '@' after '?'; percent-encode "
                "special characters in the password and options (? as %3F, @ as %40, # as %23)"
            )
        options = _parse_options(query, driver, text)
        if driver == "sqlite":
            options["path"] = _sqlite_path(head, text)
        else:
            options.update(_mysql_parts(head, text))
        try:
            return cls(driver=driver, **options)
        except InvalidURLError as exc:
            raise InvalidURLError(f"{exc} (in {_describe(text)})") from None

    def __str__(self) -> str:
        if self.driver == "sqlite":
            base = f"sqlite:///{self.path}"
        else:
            auth = ""
            if self.user is not None:
                auth = quote(self.user, safe="")
                if self.password is not None:
                    auth += ":***"
                auth += "@"
            host = ""
            if self.host is not None:
                bracketed = f"[{self.host}]" if ":" in self.host else self.host
                host = f"{bracketed}:{self.port}"
            base = f"{self.scheme}://{auth}{host}/{quote(self.database or '', safe='')}"
        changed = [
            f"{name}={_render_option(getattr(self, name))}"
            for name in sorted(self._option_names())
            if getattr(self, name) != getattr(attrs.fields(ConnectionURL), name).default
        ]
        return base + ("?" + "&".join(changed) if changed else "")

    def __repr__(self) -> str:
        return f"ConnectionURL({str(self)!r})"

    def _option_names(self) -> tuple[str, ...]:
        return self.SQLITE_OPTIONS if self.driver == "sqlite" else self.MYSQL_OPTIONS


def _render_option(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return quote(str(value), safe="/")


def _describe(text: str) -> str:
    """The URL for an error message: password replaced by ``***``, query string dropped.

    The user information ends at the last ``@`` of the whole URL (not only of
    the part before ``?``), so a password holding an unencoded ``?`` is still
    masked whole. Without any ``@``, a non-numeric "port" is masked too: in
    ``mysql+pymysql://app:PASSWORD/db`` it is the password.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        return "'<not a URL>'"
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        rest = f"{user}{':***' if colon else ''}@{rest[at + 1 :]}"
    else:
        authority = rest.partition("?")[0].partition("/")[0]
        host, colon, port = authority.partition(":")
        if colon and not authority.startswith("[") and not port.isdigit():
            rest = f"{host}:***"  # the rest too: an unencoded '/' may sit inside the password
    return repr(f"{scheme}://{rest.partition('?')[0]}")


def _mysql_parts(head: str, text: str) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    at = head.rfind("@")
    if at >= 0:
        user, colon, password = head[:at].partition(":")
        parts["user"] = unquote(user) or None
        if colon:
            parts["password"] = unquote(password)
        head = head[at + 1 :]
    hostport, _, database = head.partition("/")
    host, port = hostport, None
    if hostport.startswith("["):
        close = hostport.find("]")
        host, rest = hostport[: close + 1], hostport[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise InvalidURLError(f"connection URL {_describe(text)} has a malformed host")
            port = rest[1:]
    elif ":" in hostport:
        host, port = hostport.split(":", 1)
    if host and not _HOST.fullmatch(host):
        raise InvalidURLError(
            f"connection URL {_describe(text)} has an invalid host {host!r}; "
            "give a host name, an IPv4 address or a bracketed IPv6 address"
        )
    parts["host"] = host.strip("[]") or None
    if port is not None:
        if not (port.isascii() and port.isdigit()):
            if at < 0:
                # No '@': "user:secret/db" reads as host "user", port "secret".
                raise InvalidURLError(
                    f"connection URL {_describe(text)} has a non-numeric port (not shown: "
                    "without '@HOST' a password reads as a port); write "
                    "USER:PASSWORD@HOST:PORT/DATABASE, or better USER@HOST/DATABASE with "
                    "password_env=NAME"
                )
            raise InvalidURLError(
                f"connection URL {_describe(text)} has a non-numeric port {port!r}; "
                "give a TCP port from 1 to 65535"
            )
        parts["port"] = int(port)
    # After the port: without '@', "app:pass/word/db" must be reported as that, not as a '/'.
    if "/" in database:
        raise InvalidURLError(
            f"connection URL {_describe(text)} has a database name with '/'; "
            "give one database after the host (percent-encode a '/' in its name as %2F)"
        )
    parts["database"] = unquote(database) or None
    return parts


def _sqlite_path(head: str, text: str) -> str:
    if not head.startswith("/") or head == "/":
        raise InvalidURLError(
            f"connection URL {_describe(text)} is not a sqlite file URL (a sqlite URL has no "
            "host); write sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = unquote(head[1:])
    if path in (":memory:", "") or path.startswith("file:"):
        raise InvalidURLError(
            f"connection URL {_describe(text)} is not a file: an in-memory database would be a "
            "different, empty database for every pooled connection; use a file (a temporary "
            "directory works for tests)"
        )
    return os.path.abspath(path)


_SECONDS = re.compile(r"^[0-9]{1,9}(?:\.[0-9]{1,9})?$")
_COUNT = re.compile(r"^[0-9]{1,9}$")


def _seconds(raw: str) -> float:
    # Strict: ASCII digits and one '.'; "1_0", " 5", "+5", "inf", "nan" and
    # non-ASCII digits (which float() accepts) are refused.
    if not _SECONDS.fullmatch(raw):
        raise ValueError("not plain seconds")
    return float(raw)


def _count(raw: str) -> int:
    if not _COUNT.fullmatch(raw):
        raise ValueError("not plain digits")
    return int(raw)


_CONVERTERS: Final[dict[str, Callable[[str], object]]] = {
    "connect_timeout": _seconds,
    "read_timeout": _seconds,
    "write_timeout": _seconds,
    "busy_timeout": _seconds,
    "pool_timeout": _seconds,
    "ping_after": _seconds,
    "pool_size": _count,
}
_BOOLEANS: Final[dict[str, bool]] = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def _parse_options(query: str, driver: DriverName, text: str) -> dict[str, Any]:
    valid = ConnectionURL.SQLITE_OPTIONS if driver == "sqlite" else ConnectionURL.MYSQL_OPTIONS
    options: dict[str, Any] = {}
    if not query:
        return options
    pairs: list[tuple[str, str]] | None
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:  # its text holds the query: raised below, outside this handler
        pairs = None
    if pairs is None:
        raise InvalidURLError(
            f"connection URL {_describe(text)} has a malformed query string; "
            "write options as ?name=value&name=value"
        )
    for name, raw in pairs:
        if name not in valid:
            # Name the option but not its value: someone may have put a password there.
            # Not even the name when it is no option-like word (a pasted secret).
            shown = repr(name) if _OPTION_WORD.fullmatch(name) else "(not shown: not a word)"
            raise InvalidURLError(
                f"connection URL {_describe(text)} has an unknown option {shown}; "
                f"valid options for {driver}: {', '.join(valid)}"
            )
        if name in options:
            raise InvalidURLError(
                f"connection URL {_describe(text)} gives option {name!r} twice; keep one"
            )
        options[name] = _convert(name, raw)
    return options


def _convert(name: str, raw: str) -> object:
    if name == "strict_mode":
        if raw.lower() not in _BOOLEANS:
            raise _url_error(name, raw, "give true or false")
        return _BOOLEANS[raw.lower()]
    converter = _CONVERTERS.get(name)
    if converter is None:
        return raw
    try:
        return converter(raw)
    except ValueError:  # its text holds the value: raised below, outside this handler
        pass
    kind = "an integer (ASCII digits)" if converter is _count else "a number of seconds (like 2.5)"
    raise _url_error(name, raw, f"give {kind}")
