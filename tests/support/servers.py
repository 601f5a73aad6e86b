"""Private ``mariadbd`` servers for tests: start, stop, SIGKILL, restart, pause.

Each :class:`MariaDBServer` lives in its own directory (``data/``, ``tmp/``,
``sock``, ``pid``, ``error.log``) and listens on its own TCP port on
127.0.0.1. The port is chosen once and kept for the life of the object, so URLs
stay valid across :meth:`~MariaDBServer.kill` and :meth:`~MariaDBServer.restart`.

How the hard parts are handled:

- **Ports.** A port is picked below the kernel's ephemeral range (so no client
  socket takes it while a server is down) and held by a bound, never-listening
  ``SO_REUSEADDR`` placeholder socket for the life of the object. ``mariadbd``
  binds with ``SO_REUSEADDR`` too, so it can listen beside the placeholder,
  while every other port picker (which binds without ``SO_REUSEADDR``) sees the
  port as taken, even while the server is down. If a foreign listener still
  wins the race before the first start, the start is retried on a new port.
- **Datadirs.** ``mariadb-install-db`` runs once per process and settings key
  into a template datadir; each server gets a copy (``template=False`` runs the
  installer per server instead). Every installer run has its own ``--tmpdir``:
  parallel runs sharing one fail now and then with error 1051.
- **Lifetime.** Servers are spawned from one long-lived thread through
  ``setpriv --pdeathsig KILL``, so the kernel kills them if the test process
  dies, even by SIGKILL; an ``atexit`` hook and the fixtures' finalizers kill
  and remove them on a normal exit.
- **Durability.** ``innodb_flush_log_at_trx_commit=1`` by default: a committed
  transaction survives :meth:`~MariaDBServer.kill` (SIGKILL) and the restart
  runs InnoDB crash recovery.

Example::

    servers = start_servers(3, "/tmp/sb-x", innodb_lock_wait_timeout=5)
    try:
        servers[0].execute("CREATE DATABASE billing")
        servers[0].kill()
        servers[0].restart()
    finally:
        for server in servers:
            server.cleanup()
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict, Unpack
from urllib.parse import quote

import attrs
import pymysql
import pymysql.connections

__all__ = [
    "INSTALL_HINT",
    "MariaDBServer",
    "MissingBinaryError",
    "ServerError",
    "ServerSettings",
    "ServerStartError",
    "SettingsKwargs",
    "check_binaries",
    "short_tempdir",
    "start_servers",
]

INSTALL_HINT = (
    "install the MariaDB server binaries (`apt-get install mariadb-server` on Debian/Ubuntu), "
    "or point SHARDBILL_MARIADBD and SHARDBILL_MARIADB_INSTALL_DB at them"
)

HOST = "127.0.0.1"
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL
_PORT_ATTEMPTS = 5
_POLL_INTERVAL = 0.02
_PROBE_TIMEOUT = 1
_LOG_TAIL_LINES = 25


class ServerError(RuntimeError):
    """Something went wrong driving a private test server."""


class MissingBinaryError(ServerError):
    """``mariadbd`` or ``mariadb-install-db`` is not installed (or not where configured)."""


class ServerStartError(ServerError):
    """A server did not become ready; the message carries the tail of its error log."""


class _PortInUseError(ServerStartError):
    """The server could not bind its port (another process won the race)."""


def _default_binary(env: str, *names: str) -> str:
    configured = os.environ.get(env)
    if configured:
        return configured
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for directory in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"):
            candidate = os.path.join(directory, name)
            if os.access(candidate, os.X_OK):
                return candidate
    return os.path.join("/usr/sbin" if names[0] == "mariadbd" else "/usr/bin", names[0])


def _default_mariadbd() -> str:
    return _default_binary("SHARDBILL_MARIADBD", "mariadbd", "mysqld")


def _default_install_db() -> str:
    return _default_binary("SHARDBILL_MARIADB_INSTALL_DB", "mariadb-install-db", "mysql_install_db")


def _size(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    digits = value[:-1] if value[-1:].upper() in ("K", "M", "G") else value
    if not digits.isdigit():
        raise ValueError(f"{attribute.name!r} must be a size like '32M': {value!r}")


@attrs.frozen(kw_only=True)
class ServerSettings:
    """How a private server is created and run; every field has a test-friendly default.

    Attributes:
        innodb_buffer_pool_size: ``--innodb-buffer-pool-size`` (small: many servers share RAM).
        innodb_log_file_size: ``--innodb-log-file-size`` (small: less to create and copy).
        innodb_flush_log_at_trx_commit: 1 (default) makes every commit durable, also
            across SIGKILL and power loss; 2 survives SIGKILL (not an OS crash) and
            is faster; 0 may lose the last second of commits on SIGKILL.
        innodb_lock_wait_timeout: seconds a row-lock wait lasts before error 1205.
        max_connections: ``--max-connections``.
        log_bin: write a binary log (``mysql-bin``, ROW format) for replica tests.
        sync_binlog: ``--sync-binlog`` when ``log_bin`` is on.
        init_args: options the datadir is created with and every start repeats
            (``--innodb-page-size=4k``, ``--lower-case-table-names=1``); part of the
            template key.
        extra_args: more ``mariadbd`` options, passed last.
        template: copy a datadir installed once per process instead of running
            ``mariadb-install-db`` for each server.
        start_timeout: seconds ``start()`` waits for the server to accept connections.
        stop_timeout: seconds ``stop()`` waits for a clean shutdown.
        mariadbd: path of the server binary.
        install_db: path of ``mariadb-install-db``.
    """

    innodb_buffer_pool_size: str = attrs.field(default="32M", validator=_size)
    innodb_log_file_size: str = attrs.field(default="8M", validator=_size)
    innodb_flush_log_at_trx_commit: int = attrs.field(
        default=1, validator=attrs.validators.in_((0, 1, 2))
    )
    innodb_lock_wait_timeout: int = attrs.field(default=50, validator=attrs.validators.ge(1))
    max_connections: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    log_bin: bool = False
    sync_binlog: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    init_args: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    extra_args: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    template: bool = True
    start_timeout: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    stop_timeout: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    mariadbd: str = attrs.field(factory=_default_mariadbd)
    install_db: str = attrs.field(factory=_default_install_db)


class SettingsKwargs(TypedDict, total=False):
    """The fields of :class:`ServerSettings` as keyword arguments (for ``**settings``)."""

    innodb_buffer_pool_size: str
    innodb_log_file_size: str
    innodb_flush_log_at_trx_commit: int
    innodb_lock_wait_timeout: int
    max_connections: int
    log_bin: bool
    sync_binlog: int
    init_args: Sequence[str]
    extra_args: Sequence[str]
    template: bool
    start_timeout: float
    stop_timeout: float
    mariadbd: str
    install_db: str


def check_binaries(settings: ServerSettings) -> None:
    """Raise :class:`MissingBinaryError` (saying what to install) unless both binaries run."""
    for label, path in (
        ("mariadbd", settings.mariadbd),
        ("mariadb-install-db", settings.install_db),
    ):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise MissingBinaryError(
                f"{label} not found at {path!r}, needed to start private test servers: "
                f"{INSTALL_HINT}"
            )


def short_tempdir(prefix: str = "sb-") -> Path:
    """A new empty directory with a short path (unix socket paths must stay under 108 bytes)."""
    parent = "/tmp" if os.path.isdir("/tmp") else None  # noqa: S108 - short on purpose
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


# --- process lifetime -------------------------------------------------------------

_SETPRIV = shutil.which("setpriv")
_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()
_live_servers: set[MariaDBServer] = set()
_live_lock = threading.Lock()


def _popen(args: list[str], stderr_path: Path) -> subprocess.Popen[bytes]:
    """Start ``args`` from the one long-lived spawner thread.

    The kernel's parent-death signal fires when the *thread* that forked the
    child exits, so servers must not be forked from short-lived worker threads.
    """
    global _spawner  # noqa: PLW0603 - one spawner per process, created on first use
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sb-mariadbd-spawner")
        spawner = _spawner
    prefix = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []

    def spawn() -> subprocess.Popen[bytes]:
        with stderr_path.open("ab") as stderr:
            return subprocess.Popen(
                [*prefix, *args], stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
            )

    future: Future[subprocess.Popen[bytes]] = spawner.submit(spawn)
    return future.result()


@atexit.register
def _cleanup_at_exit() -> None:
    with _live_lock:
        servers = list(_live_servers)
    for server in servers:
        server.cleanup()
    for path in _templates.values():
        shutil.rmtree(path.parent, ignore_errors=True)


def _ephemeral_range() -> tuple[int, int]:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = (int(part) for part in text.split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def _reserve_port() -> tuple[int, socket.socket]:
    """A free port on 127.0.0.1 and the placeholder socket that keeps it ours."""
    low, high = _ephemeral_range()
    ranges = [(r0, r1) for r0, r1 in ((15000, low - 1), (high + 1, 65535)) if r1 - r0 > 500]
    # Ports are infrastructure, not test data: an unseeded system RNG spreads
    # concurrent pickers (xdist workers, other sessions) across the range.
    rng = random.SystemRandom()
    for _ in range(200):
        if ranges:
            first, last = rng.choice(ranges)
            port = rng.randint(first, last)
        else:
            port = 0
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind((HOST, port))  # without SO_REUSEADDR: fails on any use of the port
            port = probe.getsockname()[1]
        except OSError:
            continue
        finally:
            probe.close()
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind((HOST, port))
        except OSError:
            holder.close()
            continue
        return port, holder
    raise ServerError("no free TCP port found on 127.0.0.1 after 200 attempts")


# --- datadirs ---------------------------------------------------------------------

_templates: dict[tuple[str, str, str, tuple[str, ...]], Path] = {}
_template_lock = threading.Lock()


def _user_args() -> list[str]:
    # mariadbd refuses to run as root unless told to; as any other user it runs as itself.
    return ["--user=root"] if os.geteuid() == 0 else []


def _install_datadir(datadir: Path, tmpdir: Path, log: Path, settings: ServerSettings) -> None:
    """Run ``mariadb-install-db`` into ``datadir`` (root with an empty password, TCP login)."""
    tmpdir.mkdir(parents=True, exist_ok=True)
    args = [
        settings.install_db,
        "--no-defaults",
        f"--datadir={datadir}",
        f"--tmpdir={tmpdir}",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        "--skip-name-resolve",
        f"--innodb-buffer-pool-size={settings.innodb_buffer_pool_size}",
        f"--innodb-log-file-size={settings.innodb_log_file_size}",
        *_user_args(),
        *settings.init_args,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
        try:
            status = process.wait(timeout=settings.start_timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the installer and its bootstrap server
            process.wait()
            raise
    if status != 0:
        raise ServerStartError(
            f"mariadb-install-db exited with status {status} creating {datadir}; "
            f"last lines of {log}:\n{_tail(log)}"
        )


def _template_datadir(settings: ServerSettings) -> Path:
    """The datadir installed once per process for these settings (built on first use)."""
    key = (
        settings.install_db,
        settings.mariadbd,
        settings.innodb_log_file_size,
        settings.init_args,
    )
    with _template_lock:
        if key not in _templates:
            root = short_tempdir("sb-tpl-")
            try:
                _install_datadir(root / "data", root / "tmp", root / "install.log", settings)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
            _templates[key] = root / "data"
        return _templates[key]


def _tail(path: Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"({path} unreadable: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


# --- the server -------------------------------------------------------------------


class MariaDBServer:
    """One private ``mariadbd`` in ``directory`` on a fixed free port of 127.0.0.1.

    Log in as ``root`` with an empty password (grants are on: tests may create
    users with passwords and limited privileges). Used as a context manager it
    starts on entry (unless running) and is cleaned up on exit.

    Args:
        directory: where the server keeps everything; created if missing. Keep
            it short: ``directory/sock`` must fit in 107 bytes.
        settings: how to create and run it.
        server_id: ``--server-id`` (distinct per server for replication).
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        settings: ServerSettings | None = None,
        server_id: int = 1,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.settings = settings if settings is not None else ServerSettings()
        self.server_id = server_id
        self.host = HOST
        if len(os.fsencode(self.socket_path)) > _SUN_PATH_MAX:
            raise ValueError(
                f"unix socket path too long ({len(os.fsencode(self.socket_path))} > "
                f"{_SUN_PATH_MAX} bytes): {self.socket_path}; use a shorter directory "
                "such as short_tempdir()"
            )
        self._process: subprocess.Popen[bytes] | None = None
        self._returncode: int | None = None
        self._paused = False
        self._started_once = False
        self._port, self._port_holder = _reserve_port()
        self._closed = False
        with _live_lock:
            _live_servers.add(self)

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<MariaDBServer {self.host}:{self.port} {state} {self.directory}>"

    # paths and addresses

    @property
    def port(self) -> int:
        """The TCP port; fixed once ``start()`` has succeeded, kept across restarts."""
        return self._port

    @property
    def datadir(self) -> Path:
        """The data directory."""
        return self.directory / "data"

    @property
    def tmpdir(self) -> Path:
        """This server's own ``--tmpdir``."""
        return self.directory / "tmp"

    @property
    def socket_path(self) -> Path:
        """The unix socket."""
        return self.directory / "sock"

    @property
    def pid_file(self) -> Path:
        """The pid file."""
        return self.directory / "pid"

    @property
    def error_log(self) -> Path:
        """The error log (appended to by every start)."""
        return self.directory / "error.log"

    @property
    def is_running(self) -> bool:
        """True while the process is alive (also while paused)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return self._process.pid if self.is_running and self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """How the last process ended: 0 after ``stop()``, ``-SIGKILL`` after ``kill()``."""
        if self._process is not None and self._process.poll() is not None:
            return self._process.returncode
        return self._returncode

    def url(
        self,
        database: str,
        driver: str = "pymysql",
        *,
        user: str = "root",
        password: str = "",
    ) -> str:
        """A shardbill URL, e.g. ``mysql+pymysql://root@127.0.0.1:PORT/db``."""
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        return f"mysql+{driver}://{auth}@{self.host}:{self.port}/{database}"

    # lifecycle

    def start(self) -> None:
        """Start and wait until it accepts connections (creating the datadir on first start).

        Raises:
            MissingBinaryError: a binary is missing (the message says what to install).
            ServerStartError: it did not become ready within ``start_timeout``;
                the message has the tail of the error log.
        """
        if self._closed:
            raise ServerError(f"{self!r} was cleaned up; create a new server")
        if self.is_running:
            raise ServerError(f"{self!r} is already running")
        check_binaries(self.settings)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tmpdir.mkdir(exist_ok=True)
        if not (self.datadir / "mysql").is_dir():
            self._create_datadir()
        attempts = 1 if self._started_once else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                self._launch_and_wait()
            except _PortInUseError:
                if attempt == attempts:
                    raise
                self._port_holder.close()
                self._port, self._port_holder = _reserve_port()
                continue
            self._started_once = True
            return

    def stop(self) -> None:
        """Shut down cleanly (SIGTERM) and wait; kills it and raises after ``stop_timeout``."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            if self._paused:
                process.send_signal(signal.SIGCONT)  # a stopped process never sees SIGTERM
            try:
                process.wait(timeout=self.settings.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                self._forget_process()
                raise ServerError(
                    f"{self!r} did not shut down within {self.settings.stop_timeout}s and was "
                    f"killed; last lines of {self.error_log}:\n{_tail(self.error_log)}"
                ) from None
        self._forget_process()

    def kill(self) -> None:
        """SIGKILL the server (a crash: no shutdown, no flush) and wait until it is gone."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        self._forget_process()

    def restart(self) -> None:
        """Stop it if running, then start again on the same datadir and port.

        After :meth:`kill` this runs InnoDB crash recovery: committed
        transactions are there, uncommitted ones are rolled back.
        """
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        process = self._require_running()
        process.send_signal(signal.SIGSTOP)
        self._paused = True
        self._wait_all_threads_stopped(process.pid)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        process = self._require_running()
        process.send_signal(signal.SIGCONT)
        self._paused = False

    def cleanup(self, *, keep_logs: bool = False) -> None:
        """Kill the server if running and remove its directory (all but the logs if asked)."""
        self.kill()
        self._port_holder.close()
        self._closed = True
        with _live_lock:
            _live_servers.discard(self)
        if keep_logs:
            for path in (self.datadir, self.tmpdir):
                shutil.rmtree(path, ignore_errors=True)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> MariaDBServer:
        if not self.is_running:
            try:
                self.start()
            except BaseException:
                self.cleanup()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # SQL

    def connect(
        self,
        database: str | None = None,
        *,
        user: str = "root",
        password: str = "",
        **kwargs: Any,  # passed straight to pymysql.connect (read_timeout, ...)
    ) -> pymysql.connections.Connection[Any]:
        """A PyMySQL connection over TCP with autocommit on; close it when done."""
        kwargs.setdefault("connect_timeout", 10)
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=user,
            password=password,
            database=database,
            autocommit=True,
            charset="utf8mb4",
            **kwargs,
        )

    def execute(
        self,
        sql: str,
        params: Sequence[object] | None = None,
        *,
        database: str | None = None,
    ) -> tuple[tuple[Any, ...], ...]:
        """Run one statement on a fresh connection (autocommit) and return all its rows."""
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return tuple(cur.fetchall())
        finally:
            conn.close()

    # internals

    def _create_datadir(self) -> None:
        if self.settings.template:
            template = _template_datadir(self.settings)
            partial = self.directory / "data.partial"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(template, partial, symlinks=True)
            partial.rename(self.datadir)
        else:
            shutil.rmtree(self.datadir, ignore_errors=True)
            _install_datadir(
                self.datadir, self.tmpdir, self.directory / "install.log", self.settings
            )

    def _command(self) -> list[str]:
        s = self.settings
        args = [
            s.mariadbd,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.error_log}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            *_user_args(),
            f"--server-id={self.server_id}",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            f"--innodb-buffer-pool-size={s.innodb_buffer_pool_size}",
            f"--innodb-log-file-size={s.innodb_log_file_size}",
            f"--innodb-flush-log-at-trx-commit={s.innodb_flush_log_at_trx_commit}",
            f"--innodb-lock-wait-timeout={s.innodb_lock_wait_timeout}",
            f"--max-connections={s.max_connections}",
        ]
        if s.log_bin:
            args += ["--log-bin=mysql-bin", "--binlog-format=ROW", f"--sync-binlog={s.sync_binlog}"]
        return [*args, *s.init_args, *s.extra_args]

    def _launch_and_wait(self) -> None:
        offset = self.error_log.stat().st_size if self.error_log.exists() else 0
        process = _popen(self._command(), self.error_log)
        self._process = process
        self._paused = False
        try:
            self._wait_ready(process, offset)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, process: subprocess.Popen[bytes], offset: int) -> None:
        deadline = time.monotonic() + self.settings.start_timeout
        while True:
            status = process.poll()
            if status is not None:
                tail = _tail(self.error_log, offset)
                if "Address already in use" in tail:
                    raise _PortInUseError(
                        f"port {self.port} on {self.host} is taken by another process; "
                        f"last lines of {self.error_log}:\n{tail}"
                    )
                raise ServerStartError(
                    f"mariadbd exited with status {status} while starting in "
                    f"{self.directory}; last lines of {self.error_log}:\n{tail}"
                )
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"mariadbd in {self.directory} did not accept connections on port "
                    f"{self.port} within {self.settings.start_timeout}s; last lines of "
                    f"{self.error_log}:\n{_tail(self.error_log, offset)}"
                )
            time.sleep(_POLL_INTERVAL)

    def _answers(self) -> bool:
        """True when *our* server answers on the port (not some other listener)."""
        try:
            conn = self.connect(connect_timeout=_PROBE_TIMEOUT, read_timeout=_PROBE_TIMEOUT)
        except pymysql.err.MySQLError:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@datadir")
                row = cur.fetchone()
        except pymysql.err.MySQLError:
            return False
        finally:
            conn.close()
        return row is not None and Path(row[0]).resolve() == self.datadir.resolve()

    def _forget_process(self) -> None:
        if self._process is not None:
            self._returncode = self._process.returncode
        self._process = None
        self._paused = False

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            raise ServerError(f"{self!r} is not running")
        return self._process

    @staticmethod
    def _wait_all_threads_stopped(pid: int, timeout: float = 5.0) -> None:
        """Return once every thread of ``pid`` is in the stopped state (SIGSTOP is async)."""
        deadline = time.monotonic() + timeout
        task_dir = Path(f"/proc/{pid}/task")
        while time.monotonic() < deadline:
            try:
                states = [
                    (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    for task in task_dir.iterdir()
                ]
            except (OSError, IndexError):
                return  # no procfs (or the process is gone): nothing more to wait for
            if all(state in ("T", "t") for state in states):
                return
            time.sleep(0.005)
        raise ServerError(f"mariadbd {pid} did not stop within {timeout}s of SIGSTOP")


def start_servers(
    n: int,
    base_dir: Path | str,
    *,
    first_server_id: int = 1,
    **settings: Unpack[SettingsKwargs],
) -> list[MariaDBServer]:
    """Create and start ``n`` servers in parallel under ``base_dir`` (``s0``, ``s1``, ...).

    Returns them running, with server ids ``first_server_id`` upwards. If any
    fails to start, all are cleaned up and the first error is raised (the
    others are attached as notes).
    """
    if n < 1:
        raise ValueError(f"'n' must be >= 1: {n}")
    config = ServerSettings(**settings)  # type: ignore[arg-type]  # Sequence -> tuple converter
    check_binaries(config)
    servers: list[MariaDBServer] = []
    try:
        for i in range(n):
            servers.append(
                MariaDBServer(
                    Path(base_dir) / f"s{i}", settings=config, server_id=first_server_id + i
                )
            )
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="sb-start") as pool:
            futures = [pool.submit(server.start) for server in servers]
            errors = [exc for exc in (f.exception() for f in futures) if exc is not None]
        if errors:
            first = errors[0]
            for other in errors[1:]:
                first.add_note(f"also failed: {type(other).__name__}: {other}")
            raise first
    except BaseException:
        for server in servers:
            server.cleanup()
        raise
    return servers
