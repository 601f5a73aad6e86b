"""A fault-injecting TCP proxy for MySQL/MariaDB connections (test support).

:class:`FaultProxy` listens on ``127.0.0.1:<free port>`` and forwards every
connection to an upstream server. It reads the client->server byte stream
packet by packet (see :class:`CommandFramer`) so it can act on individual
``COM_QUERY`` commands, above all ``COMMIT``:

- :meth:`FaultProxy.cut_before_commit`: the COMMIT never reaches the server;
  the client connection is reset. The transaction did not commit.
- :meth:`FaultProxy.cut_after_commit`: the COMMIT reaches the server, the
  proxy waits for the server's reply, drops it and resets the client
  connection. The transaction did commit, but the client cannot know
  (the "unknown outcome" case).
- :meth:`FaultProxy.cut_when`: the same two cuts for any SQL a predicate picks.
- :meth:`FaultProxy.latency`, :meth:`FaultProxy.blackhole`,
  :meth:`FaultProxy.refuse`, :meth:`FaultProxy.reset_all`: network faults.

All sockets are served by one selector thread, so a fault is one atomic step
between two reads: every setter hands its change to that thread and returns
only once it is in force.

Example::

    with FaultProxy("127.0.0.1", 3306) as proxy:
        conn = pymysql.connect(host=proxy.host, port=proxy.port, user="root")
        proxy.cut_after_commit()
        ...  # conn.commit() raises OperationalError 2013; the row is committed
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import errno
import functools
import re
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self, TypeVar

__all__ = [
    "CommandFramer",
    "Direction",
    "FaultEvent",
    "FaultKind",
    "FaultProxy",
    "Piece",
    "ProxyStats",
    "is_commit",
]

MAX_PAYLOAD = 0xFFFFFF
"""A packet payload of exactly this length continues in the next packet."""

COM_QUERY = 0x03
CLIENT_COMPRESS = 0x0000_0020
CLIENT_SSL = 0x0000_0800
CLIENT_QUERY_ATTRIBUTES = 0x0800_0000

_RECV_SIZE = 256 * 1024
# Stop reading from one side while this much of its data waits to be written
# to the other, so a stalled peer cannot make the proxy buffer without bound.
_HIGH_WATER = 4 * 1024 * 1024
_CALL_TIMEOUT = 10.0
_LINGER_RESET = struct.pack("ii", 1, 0)

_COMMIT = re.compile(
    r"\s*COMMIT(?:\s+WORK)?(?:\s+AND\s+(?:NO\s+)?CHAIN)?(?:\s+(?:NO\s+)?RELEASE)?\s*;?\s*",
    re.IGNORECASE,
)

_T = TypeVar("_T")


def is_commit(sql: str) -> bool:
    """True when ``sql`` is a plain COMMIT statement (``COMMIT``, ``commit work;``, ...).

    ``XA COMMIT`` and multi-statement text such as ``INSERT ...; COMMIT`` are not.
    """
    return _COMMIT.fullmatch(sql) is not None


# ---------------------------------------------------------------------------
# The client->server stream, packet by packet


@dataclasses.dataclass(frozen=True)
class Piece:
    """Client bytes ready to forward; ``sql`` is set when they are one whole COM_QUERY."""

    data: bytes
    sql: str | None = None


class CommandFramer:
    """Splits the client->server byte stream into pass-through bytes and whole COM_QUERYs.

    A MySQL packet is a 3-byte little-endian payload length, a 1-byte sequence
    id and the payload; a payload of exactly ``0xFFFFFF`` bytes continues in
    the next packet. The rule for "this packet is a command" is its sequence
    id: the server speaks first in the handshake (greeting = packet 0), so
    every client packet of the handshake and authentication exchange has a
    sequence id >= 1, while every command after it restarts at 0. A packet
    is therefore inspected only when its sequence id is 0 *and* it is not the
    client's first packet (the handshake response). Data that is not a
    command (auth switch answers, ``LOAD DATA LOCAL`` file contents, the
    continuation of long packets) never has sequence id 0 before 256 packets.

    The handshake response's capability flags are read once: if the client
    asked for TLS (``CLIENT_SSL``) or compression (``CLIENT_COMPRESS``), the
    rest of the stream is not plain packets and the framer turns *opaque*: it
    passes everything through uninspected. With ``CLIENT_QUERY_ATTRIBUTES``
    (MySQL 8 clients) the attribute header before the SQL is skipped.

    COM_QUERY packets are held back until the whole command (all its packets)
    has arrived, then returned as one :class:`Piece` with its SQL decoded as
    UTF-8 (undecodable bytes replaced); everything else is passed on as soon
    as it arrives. The concatenation of all pieces' data is always exactly the
    input.

    Example:
        >>> framer = CommandFramer()
        >>> framer.feed(b"\\x01\\x00\\x00\\x01\\x00")  # the handshake response
        [Piece(data=b'\\x01\\x00\\x00\\x01\\x00', sql=None)]
        >>> framer.feed(b"\\x07\\x00\\x00\\x00\\x03COMM")
        []
        >>> framer.feed(b"IT")
        [Piece(data=b'\\x07\\x00\\x00\\x00\\x03COMMIT', sql='COMMIT')]
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0  # bytes of the current uninspected packet still to pass through
        self._assembling = False  # inside a COM_QUERY whose packets are being collected
        self._raw = bytearray()  # those packets, headers included
        self._payload = bytearray()  # their payloads joined
        self._handshake_seen = False
        self._query_attributes = False
        self.opaque = False

    def feed(self, data: bytes) -> list[Piece]:
        """Take the next bytes read from the client; return what may be forwarded now, in order."""
        if self.opaque:
            return [Piece(bytes(data))] if data else []
        buf = self._buf
        buf += data
        pieces: list[Piece] = []
        while buf:
            if self._skip:
                n = min(self._skip, len(buf))
                pieces.append(Piece(bytes(buf[:n])))
                del buf[:n]
                self._skip -= n
                continue
            if len(buf) < 4:
                break
            length = int.from_bytes(buf[:3], "little")
            sequence = buf[3]
            if self._assembling:
                if len(buf) < 4 + length:
                    break
                self._raw += buf[: 4 + length]
                self._payload += buf[4 : 4 + length]
                del buf[: 4 + length]
                if length < MAX_PAYLOAD:
                    pieces.append(self._finish_query())
                continue
            if not self._handshake_seen:
                if not self._take_handshake_response(length, pieces):
                    break
                continue
            if sequence == 0 and length > 0:
                if len(buf) < 5:
                    break
                if buf[4] == COM_QUERY:
                    self._assembling = True
                    continue
            self._skip = 4 + length
        return pieces

    def _take_handshake_response(self, length: int, pieces: list[Piece]) -> bool:
        """Read the client's capability flags; False while they have not arrived."""
        buf = self._buf
        if len(buf) < 4 + min(length, 4):
            return False
        self._handshake_seen = True
        flags = int.from_bytes(buf[4:8], "little") if length >= 4 else 0
        if flags & (CLIENT_SSL | CLIENT_COMPRESS):
            self.opaque = True
            pieces.append(Piece(bytes(buf)))
            buf.clear()
            return True
        self._query_attributes = bool(flags & CLIENT_QUERY_ATTRIBUTES)
        self._skip = 4 + length
        return True

    def _finish_query(self) -> Piece:
        raw, payload = bytes(self._raw), bytes(self._payload)
        self._raw.clear()
        self._payload.clear()
        self._assembling = False
        return Piece(raw, self._sql(payload))

    def _sql(self, payload: bytes) -> str | None:
        at = 1  # after the command byte
        if self._query_attributes:
            count, at = _lenenc(payload, at)
            _sets, at = _lenenc(payload, at)
            if count != 0:
                return None  # bound attributes precede the SQL; not needed by any test
        return payload[at:].decode("utf-8", errors="replace")


def _lenenc(data: bytes, at: int) -> tuple[int, int]:
    """A length-encoded integer at ``data[at]``: (value, offset after it)."""
    first = data[at] if at < len(data) else 0
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first, 0)
    if not width:
        return first, at + 1
    return int.from_bytes(data[at + 1 : at + 1 + width], "little"), at + 1 + width


# ---------------------------------------------------------------------------
# Public values


class Direction(enum.Enum):
    """Which way a :meth:`FaultProxy.latency` applies."""

    TO_SERVER = "to_server"
    TO_CLIENT = "to_client"
    BOTH = "both"


class FaultKind(enum.Enum):
    """What a :class:`FaultEvent` records."""

    LATENCY = "latency"  # setting changed
    BLACKHOLE = "blackhole"  # setting changed
    REFUSE = "refuse"  # setting changed
    REFUSED = "refused"  # one new connection refused
    RESET = "reset"  # one connection reset by reset_all()
    CUT_BEFORE = "cut_before"  # a command dropped, connection reset
    CUT_AFTER = "cut_after"  # a command's reply dropped, connection reset


@dataclasses.dataclass(frozen=True)
class FaultEvent:
    """One fault the proxy injected (or a fault setting it changed)."""

    kind: FaultKind
    connection: int | None  # the proxy's connection number (1, 2, ...); None: proxy-wide
    detail: str
    at: float  # time.monotonic()


@dataclasses.dataclass(frozen=True)
class ProxyStats:
    """Counters since the proxy was created (a snapshot).

    ``resets`` counts client connections the proxy aborted on purpose with a
    TCP RST (``reset_all`` and cuts); refused connections are counted in
    ``connections_refused`` only. ``connections_uninspected`` counts
    connections that negotiated TLS or compression (faults on commands do
    not apply to them).
    """

    connections_accepted: int = 0
    connections_refused: int = 0
    connections_open: int = 0
    connections_uninspected: int = 0
    queries_seen: int = 0
    commits_seen: int = 0
    cuts_before: int = 0
    cuts_after: int = 0
    commits_cut_before: int = 0
    commits_cut_after: int = 0
    resets: int = 0


# ---------------------------------------------------------------------------
# Internals of the selector loop


@dataclasses.dataclass
class _Rule:
    predicate: Callable[[str], bool]
    before: bool
    remaining: int
    label: str


@dataclasses.dataclass(frozen=True)
class _Cut:
    """Queued behind the bytes before it: fires once they are handed to the kernel."""

    rule: _Rule
    sql: str


class _Pipe:
    """One direction of a link: bytes wait here (delayed by latency) until written."""

    def __init__(self) -> None:
        self.queue: collections.deque[tuple[float, bytes | _Cut]] = collections.deque()
        self.out = bytearray()
        self.queued = 0  # bytes in queue and out
        self.last_due = 0.0
        self.eof = False  # the reading side sent FIN
        self.shut = False  # that FIN was passed on


class _Link:
    def __init__(self, number: int, client: socket.socket, upstream: socket.socket) -> None:
        self.number = number
        self.client = client
        self.upstream = upstream
        self.connecting = True
        self.to_server = _Pipe()
        self.to_client = _Pipe()
        self.framer = CommandFramer()
        self.counted_opaque = False
        self.awaiting: _Cut | None = None  # a cut-after waiting for the server's reply
        self.reply = bytearray()
        self.masks = {"client": 0, "upstream": 0}
        self.closed = False


class _Call:
    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None


def _shorten(sql: str, limit: int = 80) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class FaultProxy:
    """A TCP proxy in front of one MySQL/MariaDB server that injects faults on demand.

    Args:
        upstream_host: the server's address (an IP or a name resolved at ``start()``).
        upstream_port: the server's TCP port.
        listen_host: where the proxy listens; the port is picked free at ``start()``.

    Connect drivers to ``proxy.host``/``proxy.port`` over TCP (PyMySQL,
    mysqlclient with ``host="127.0.0.1"``). Faults can be set before or after
    ``start()`` and at any time from any thread; each setter returns once the
    fault is in force for every existing and new connection (except where a
    method says otherwise). ``stop()`` closes every socket and joins the
    proxy's one thread; it raises ``RuntimeError`` if that thread failed.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, listen_host: str = "127.0.0.1"
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listen_host = listen_host
        self._lock = threading.Lock()
        self._calls: list[_Call] = []
        self._counts: collections.Counter[str] = collections.Counter()
        self._events: list[FaultEvent] = []
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._port: int | None = None
        self._stopped = False
        # Owned by the loop thread once started:
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._upstream_addr: tuple[int, tuple[str, int]] | None = None
        self._links: dict[int, _Link] = {}
        self._next_number = 1
        self._delay = {Direction.TO_SERVER: 0.0, Direction.TO_CLIENT: 0.0}
        self._blackholed = False
        self._refusing = False
        self._rules: list[_Rule] = []
        self._listener_mask = 0
        self._stopping = False

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Self:
        """Bind a free port on ``listen_host``, start the proxy thread; returns ``self``."""
        if self._thread is not None or self._stopped:
            raise RuntimeError("a FaultProxy can be started once; create a new one")
        family, _, _, _, sockaddr = socket.getaddrinfo(
            self._upstream[0], self._upstream[1], type=socket.SOCK_STREAM
        )[0]
        self._upstream_addr = (family, (str(sockaddr[0]), int(sockaddr[1])))
        selector = selectors.DefaultSelector()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        wake_r, wake_w = socket.socketpair()
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._listen_host, 0))
            listener.listen(128)
            for sock in (listener, wake_r, wake_w):
                sock.setblocking(False)
            selector.register(wake_r, selectors.EVENT_READ, self._on_wake)
        except BaseException:
            for sock in (listener, wake_r, wake_w):
                sock.close()
            selector.close()
            raise
        self._selector, self._listener = selector, listener
        self._wake_r, self._wake_w = wake_r, wake_w
        self._port = int(listener.getsockname()[1])
        self._thread = threading.Thread(target=self._run, name=f"FaultProxy:{self._port}")
        self._thread.daemon = True  # a crashed test must not hang the interpreter
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every connection and the listener, join the thread. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        thread = self._thread
        if thread is not None:
            if thread.is_alive():
                with self._lock:
                    self._stopping = True
                self._wake()
                thread.join(_CALL_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError(f"FaultProxy thread did not stop within {_CALL_TIMEOUT}s")
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        if self._selector is not None:
            self._selector.close()
        if self._failure is not None:
            raise RuntimeError("the FaultProxy thread failed") from self._failure

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """The address clients connect to."""
        return self._listen_host

    @property
    def port(self) -> int:
        """The port clients connect to (picked at ``start()``)."""
        if self._port is None:
            raise RuntimeError("the proxy has no port before start()")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` clients connect to."""
        return (self.host, self.port)

    @property
    def upstream(self) -> tuple[str, int]:
        """``(host, port)`` of the server the proxy forwards to."""
        return self._upstream

    # -- faults -------------------------------------------------------------

    def latency(self, seconds: float, *, direction: Direction = Direction.BOTH) -> None:
        """Delay every chunk of data by ``seconds`` after the proxy reads it.

        The delay is one-way: with ``Direction.BOTH`` a query's round trip
        grows by ``2 * seconds``. It applies to data read from now on, on
        existing and new connections (also to the handshake); order is
        always kept. ``latency(0)`` removes it.
        """
        if seconds < 0:
            raise ValueError(f"'seconds' must be >= 0: {seconds}")

        def apply() -> None:
            for each in (Direction.TO_SERVER, Direction.TO_CLIENT):
                if direction in (each, Direction.BOTH):
                    self._delay[each] = seconds
            self._event(FaultKind.LATENCY, None, f"{direction.value}={seconds}s")

        self._call(apply)

    def blackhole(self, on: bool = True) -> None:
        """Stop (``on``) or resume forwarding, in both directions, without closing anything.

        While on, the proxy neither reads nor writes any connection and
        accepts no new one (the kernel still completes new TCP handshakes, so
        a client's connect succeeds and then waits for the greeting): clients
        see their read timeouts. Nothing is dropped: ``blackhole(False)``
        delivers what was held, like a healed partition, even to clients that
        have given up. To discard the stalled connections instead, call
        ``reset_all()`` before ``blackhole(False)``.
        """

        def apply() -> None:
            self._blackholed = on
            self._event(FaultKind.BLACKHOLE, None, "on" if on else "off")

        self._call(apply)

    def refuse(self, on: bool = True) -> None:
        """Refuse (``on``) or accept new connections; existing ones are not touched.

        A refused connection is accepted by the kernel and reset at once by
        the proxy (SO_LINGER 0), before the server's greeting: drivers report
        a failed connect (PyMySQL 2003, mysqlclient 2002: "Can't connect").
        """

        def apply() -> None:
            self._refusing = on
            self._event(FaultKind.REFUSE, None, "on" if on else "off")

        self._call(apply)

    def reset_all(self) -> int:
        """Abort every current connection: TCP RST to the client, upstream closed.

        Returns the number of connections reset. New connections are not
        affected.
        """

        def apply() -> int:
            links = list(self._links.values())
            for link in links:
                self._event(FaultKind.RESET, link.number, "reset_all")
                self._abort(link, reset_client=True, count_reset=True)
            return len(links)

        return self._call(apply)

    def cut_before_commit(self, count: int = 1) -> None:
        """The next ``count`` COMMITs (on any connection) never reach the server.

        Instead the client connection is reset and the upstream connection
        closed, so the server rolls the transaction back; the driver reports a
        lost connection during ``commit()``.
        """
        self.cut_when(is_commit, before=True, count=count, label="commit")

    def cut_after_commit(self, count: int = 1) -> None:
        """The next ``count`` COMMITs run on the server, but their replies are dropped.

        The proxy forwards the COMMIT, waits for the server's reply packet,
        drops it and resets the client connection: the transaction committed,
        the driver reports a lost connection during ``commit()``.
        """
        self.cut_when(is_commit, before=False, count=count, label="commit")

    def cut_when(
        self,
        predicate: Callable[[str], bool],
        *,
        before: bool = True,
        count: int = 1,
        label: str = "custom",
    ) -> None:
        """Cut the next ``count`` COM_QUERY commands whose SQL text ``predicate`` accepts.

        ``before=True`` drops the command and resets the connection (the
        server never runs it); ``before=False`` forwards it, drops the server's
        first reply packet and resets the connection (the server ran it). The
        predicate sees the whole SQL text and runs on the proxy thread; it
        must not call the proxy, and an exception in it stops the proxy
        (``stop()`` re-raises it). Rules are tried in the order they were
        armed; a command is cut by at most one rule.
        """
        if count < 1:
            raise ValueError(f"'count' must be >= 1: {count}")
        rule = _Rule(predicate=predicate, before=before, remaining=count, label=label)
        self._call(lambda: self._rules.append(rule))

    def clear_cuts(self) -> int:
        """Disarm every cut that has not fired yet; returns how many cuts were pending."""

        def apply() -> int:
            pending = sum(rule.remaining for rule in self._rules)
            self._rules.clear()
            return pending

        return self._call(apply)

    def heal(self) -> None:
        """Remove every fault setting: no latency, no blackhole, no refusal, no pending cut."""
        self.clear_cuts()
        self.latency(0.0)
        self.blackhole(False)
        self.refuse(False)

    # -- observation --------------------------------------------------------

    @property
    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        with self._lock:
            return ProxyStats(
                **{field.name: self._counts[field.name] for field in dataclasses.fields(ProxyStats)}
            )

    @property
    def events(self) -> tuple[FaultEvent, ...]:
        """Every fault injected and every fault setting changed, oldest first."""
        with self._lock:
            return tuple(self._events)

    @property
    def pending_cuts(self) -> int:
        """How many armed cuts have not fired yet."""
        return self._call(lambda: sum(rule.remaining for rule in self._rules))

    # -- the bridge between callers and the loop ----------------------------

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the loop thread (inline when there is none) and return its result."""
        thread = self._thread
        if thread is None or not thread.is_alive() or threading.current_thread() is thread:
            if self._failure is not None:
                raise RuntimeError("the FaultProxy thread failed") from self._failure
            return fn()
        call = _Call(fn)
        with self._lock:
            self._calls.append(call)
        self._wake()
        deadline = time.monotonic() + _CALL_TIMEOUT
        while not call.done.wait(0.05):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the FaultProxy thread is not answering") from self._failure
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]  # fn's own result

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                self._wake_w.send(b"\0")

    def _on_wake(self, _mask: int) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def _run_calls(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for call in calls:
            try:
                call.result = call.fn()
            except Exception as exc:  # handed to the caller
                call.error = exc
            call.done.set()

    def _count(self, name: str, delta: int = 1) -> None:
        with self._lock:
            self._counts[name] += delta

    def _event(self, kind: FaultKind, connection: int | None, detail: str) -> None:
        with self._lock:
            self._events.append(FaultEvent(kind, connection, detail, time.monotonic()))

    # -- the loop -----------------------------------------------------------

    def _run(self) -> None:
        assert self._selector is not None
        try:
            while True:
                self._run_calls()
                with self._lock:
                    if self._stopping:
                        break
                self._update_interest()
                for key, mask in self._selector.select(self._timeout()):
                    handler: Callable[[int], None] = key.data
                    handler(mask)
                now = time.monotonic()
                for link in list(self._links.values()):
                    self._service(link, now)
        except BaseException as exc:
            self._failure = exc
        finally:
            for link in list(self._links.values()):
                self._close(link, reset_client=False)
            with self._lock:
                calls, self._calls = self._calls, []
            for call in calls:
                call.error = RuntimeError("the FaultProxy stopped")
                call.done.set()

    def _timeout(self) -> float | None:
        if self._blackholed:
            return None
        now = time.monotonic()
        soonest: float | None = None
        for link in self._links.values():
            for pipe in (link.to_server, link.to_client):
                if pipe.queue and pipe.queue[0][0] > now:
                    due = pipe.queue[0][0]
                    soonest = due if soonest is None else min(soonest, due)
        return None if soonest is None else max(0.0, soonest - now)

    def _update_interest(self) -> None:
        assert self._selector is not None
        assert self._listener is not None
        listener_mask = 0 if self._blackholed else selectors.EVENT_READ
        if listener_mask != self._listener_mask:
            if self._listener_mask:
                self._selector.unregister(self._listener)
            if listener_mask:
                self._selector.register(self._listener, listener_mask, self._on_accept)
            self._listener_mask = listener_mask
        for link in self._links.values():
            client = upstream = 0
            if not self._blackholed:
                if not link.to_server.eof and link.to_server.queued < _HIGH_WATER:
                    client |= selectors.EVENT_READ
                if link.to_client.out:
                    client |= selectors.EVENT_WRITE
                if link.connecting:
                    upstream |= selectors.EVENT_WRITE
                else:
                    if not link.to_client.eof and link.to_client.queued < _HIGH_WATER:
                        upstream |= selectors.EVENT_READ
                    if link.to_server.out:
                        upstream |= selectors.EVENT_WRITE
            self._set_mask(link, "client", client)
            self._set_mask(link, "upstream", upstream)

    def _set_mask(self, link: _Link, side: str, mask: int) -> None:
        assert self._selector is not None
        current = link.masks[side]
        if mask == current:
            return
        if side == "client":
            sock, handler = link.client, functools.partial(self._on_client, link)
        else:
            sock, handler = link.upstream, functools.partial(self._on_upstream, link)
        if not current:
            self._selector.register(sock, mask, handler)
        elif not mask:
            self._selector.unregister(sock)
        else:
            self._selector.modify(sock, mask, handler)
        link.masks[side] = mask

    def _on_accept(self, _mask: int) -> None:
        assert self._listener is not None
        assert self._upstream_addr is not None
        for _ in range(64):
            try:
                client, _peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            if self._refusing:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                client.close()
                self._count("connections_refused")
                self._event(FaultKind.REFUSED, None, "new connection reset before the greeting")
                continue
            family, sockaddr = self._upstream_addr
            upstream = socket.socket(family, socket.SOCK_STREAM)
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self._next_number, client, upstream)
            self._next_number += 1
            self._links[link.number] = link
            self._count("connections_accepted")
            self._count("connections_open")
            result = upstream.connect_ex(sockaddr)
            if result not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                self._abort(link, reset_client=True)

    def _on_client(self, link: _Link, mask: int) -> None:
        if link.closed:
            return
        if mask & selectors.EVENT_READ:
            try:
                data = link.client.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._close(link, reset_client=False)  # the client is gone
                return
            if data == b"":
                link.to_server.eof = True
            elif data:
                for piece in link.framer.feed(data):
                    self._from_client(link, piece)
                if link.framer.opaque and not link.counted_opaque:
                    link.counted_opaque = True
                    self._count("connections_uninspected")
        if mask & selectors.EVENT_WRITE and self._alive(link):
            self._service(link, time.monotonic())

    def _on_upstream(self, link: _Link, mask: int) -> None:
        if link.closed:
            return
        if link.connecting:
            if mask & selectors.EVENT_WRITE:
                if link.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self._abort(link, reset_client=True)  # as if the server were down
                else:
                    link.connecting = False
            return
        if mask & selectors.EVENT_READ:
            self._read_upstream(link)
        if mask & selectors.EVENT_WRITE and self._alive(link):
            self._service(link, time.monotonic())

    def _read_upstream(self, link: _Link) -> None:
        try:
            data = link.upstream.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            if link.awaiting is None:
                self._abort(link, reset_client=True)  # pass the server's abort on
                return
            data = b""
        if link.awaiting is not None:
            self._reply_for_cut(link, data)
        elif not data:
            link.to_client.eof = True
        else:
            self._enqueue(link.to_client, data, self._delay[Direction.TO_CLIENT])

    def _alive(self, link: _Link) -> bool:
        """False once ``link`` is closed (a call, so mypy does not keep an old narrowing)."""
        return not link.closed

    def _from_client(self, link: _Link, piece: Piece) -> None:
        delay = self._delay[Direction.TO_SERVER]
        if piece.sql is None:
            self._enqueue(link.to_server, piece.data, delay)
            return
        commit = is_commit(piece.sql)
        self._count("queries_seen")
        if commit:
            self._count("commits_seen")
        rule = next((r for r in self._rules if r.remaining and r.predicate(piece.sql)), None)
        if rule is None:
            self._enqueue(link.to_server, piece.data, delay)
            return
        rule.remaining -= 1
        if not rule.remaining:
            self._rules.remove(rule)
        if not rule.before:
            self._enqueue(link.to_server, piece.data, delay)
        self._enqueue(link.to_server, _Cut(rule, piece.sql), delay)

    def _enqueue(self, pipe: _Pipe, item: bytes | _Cut, delay: float) -> None:
        due = max(time.monotonic() + delay, pipe.last_due)
        pipe.last_due = due
        pipe.queue.append((due, item))
        if isinstance(item, bytes):
            pipe.queued += len(item)

    def _service(self, link: _Link, now: float) -> None:
        """Move due data to the output buffers, fire due cuts, write what the sockets take."""
        if self._blackholed or link.closed:
            return
        for pipe, dst in ((link.to_server, link.upstream), (link.to_client, link.client)):
            if not self._drain(link, pipe, dst, now):
                return
            if pipe.eof and not pipe.shut and not pipe.queue and not pipe.out:
                pipe.shut = True
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    self._close(link, reset_client=False)
                    return
        if link.to_server.shut and link.to_client.shut:
            self._close(link, reset_client=False)

    def _drain(self, link: _Link, pipe: _Pipe, dst: socket.socket, now: float) -> bool:
        """Write ``pipe``'s due bytes to ``dst`` and fire its due cuts; False if ``link`` closed."""
        while True:
            while pipe.queue and pipe.queue[0][0] <= now:
                item = pipe.queue[0][1]
                if not isinstance(item, bytes):
                    break  # a cut waits until the bytes before it are written
                pipe.out += item
                pipe.queue.popleft()
            if pipe.out and not (dst is link.upstream and link.connecting):
                try:
                    sent = dst.send(pipe.out)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    self._abort(link, reset_client=dst is link.upstream)
                    return False
                del pipe.out[:sent]
                pipe.queued -= sent
            if pipe.out or not pipe.queue or pipe.queue[0][0] > now:
                return True
            # The head is a due cut and everything before it is in the kernel:
            # fire it now, before any reply to those bytes can be read.
            cut = pipe.queue.popleft()[1]
            assert isinstance(cut, _Cut)
            self._fire(link, cut)
            if not self._alive(link):
                return False

    def _fire(self, link: _Link, cut: _Cut) -> None:
        if cut.rule.before:
            self._count("cuts_before")
            if is_commit(cut.sql):
                self._count("commits_cut_before")
            self._event(FaultKind.CUT_BEFORE, link.number, f"{cut.rule.label}: {_shorten(cut.sql)}")
            self._abort(link, reset_client=True, count_reset=True)
        else:
            link.awaiting = cut  # the command itself has just been written upstream

    def _reply_for_cut(self, link: _Link, data: bytes) -> None:
        cut = link.awaiting
        assert cut is not None
        reply = link.reply
        if data:
            reply += data
            if len(reply) < 4 or len(reply) < 4 + int.from_bytes(reply[:3], "little"):
                return  # wait for the whole first reply packet
            marker = reply[4] if len(reply) > 4 else -1
            outcome = {0x00: "OK", 0xFF: "ERR", 0xFE: "EOF"}.get(marker, f"0x{marker:02x}")
            outcome = f"server replied {outcome}, reply dropped"
        else:
            outcome = "server closed before replying"
        self._count("cuts_after")
        if is_commit(cut.sql):
            self._count("commits_cut_after")
        self._event(
            FaultKind.CUT_AFTER, link.number, f"{cut.rule.label}: {_shorten(cut.sql)}; {outcome}"
        )
        self._abort(link, reset_client=True, count_reset=True)

    def _abort(self, link: _Link, *, reset_client: bool, count_reset: bool = False) -> None:
        if link.closed:
            return
        if count_reset:
            self._count("resets")
        self._close(link, reset_client=reset_client)

    def _close(self, link: _Link, *, reset_client: bool) -> None:
        """Close both sockets; with ``reset_client`` the client gets a RST instead of a FIN."""
        if link.closed:
            return
        link.closed = True
        if self._selector is not None:
            for side, sock in (("client", link.client), ("upstream", link.upstream)):
                if link.masks[side]:
                    self._selector.unregister(sock)
                    link.masks[side] = 0
        if reset_client:
            with contextlib.suppress(OSError):
                link.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        link.client.close()
        link.upstream.close()
        del self._links[link.number]
        self._count("connections_open", -1)
