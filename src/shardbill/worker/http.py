"""An optional HTTP endpoint for a worker: ``/metrics`` (Prometheus text) and ``/healthz``.

:class:`WorkerHttp` serves, from a daemon thread (stdlib :mod:`http.server`):

* ``GET /metrics``: the registry's metrics in the Prometheus text format
  (the worker's :class:`~shardbill.worker.prometheus.WorkerMetrics` and the
  writer's :class:`~shardbill.metrics.PrometheusObserver`; the ``metrics`` extra);
* ``GET /healthz``: ``200`` with ``{"ok": true, ...}`` when the health check
  passes, ``503`` with ``{"ok": false, "reason": "..."}`` otherwise.

:func:`worker_health` is the check ``shardbill worker --http`` uses. It is
healthy when

* the loop is alive: it polled within ``stale_after`` seconds;
* its shards are reachable: no batch waits for a failed shard or dead-letter sink;
* no partition is **stuck**: a partition is stuck when records of it have
  been received and not committed for more than ``stuck_after`` seconds
  (counted from when the first of them arrived, or from the last commit that
  moved its offset and left some behind). A failed shard, a dead-letter sink
  that refuses letters, or offset commits the broker refuses all make one.

Its JSON body always lists the assigned partitions (:meth:`Worker.partitions
<shardbill.worker.loop.Worker.partitions>`), each with ``topic``,
``partition``, ``paused``, ``held`` (records in memory), ``uncommitted``
(received, not done), ``position`` (one past the highest offset received),
``committed`` (the last offset committed, ``null`` before the first commit
since the assignment), ``last_commit_seconds_ago``, ``lag`` (the partition's
end minus ``committed``, where the source knows the end: Kafka's cached high
watermark, ``null`` otherwise), ``behind_seconds`` and ``stuck``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from shardbill.errors import ConfigurationError

if TYPE_CHECKING:
    from shardbill.worker.loop import Worker
    from shardbill.worker.records import PartitionState

__all__ = ["Health", "WorkerHttp", "worker_health"]

Health = Callable[[], tuple[bool, dict[str, object]]]
"""A health check: ``(healthy, details)``; details go into the ``/healthz`` JSON body."""


def _ago(now: float, then: float | None) -> float | None:
    return None if then is None else round(now - then, 3)


def _row(state: PartitionState, now: float, stuck_after: float) -> dict[str, object]:
    behind = _ago(now, state.behind_since)
    return {
        "topic": state.topic,
        "partition": state.partition,
        "paused": state.paused,
        "held": state.held,
        "uncommitted": state.open,
        "position": state.position,
        "committed": state.committed,
        "last_commit_seconds_ago": _ago(now, state.committed_at),
        "lag": state.lag,
        "behind_seconds": behind,
        "stuck": behind is not None and behind > stuck_after,
    }


def worker_health(
    worker: Worker,
    *,
    stale_after: float = 30.0,
    stuck_after: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> Health:
    """The health check of a running worker (see the module docstring).

    Args:
        worker: the worker (its clock must be ``clock``).
        stale_after: seconds without a poll after which the loop counts as stuck.
        stuck_after: seconds a partition's records may stay uncommitted before
            the partition counts as stuck (above the linger time and a few
            retry backoffs, so that a blip is not an alarm).
        clock: monotonic seconds.
    """

    def check() -> tuple[bool, dict[str, object]]:
        now = clock()
        rows = [_row(state, now, stuck_after) for state in worker.partitions()]
        last = worker.last_poll
        if last is None:
            return False, {"reason": "the worker has not polled its source yet", "partitions": rows}
        age = now - last
        reasons: list[str] = []
        if age > stale_after:
            reasons.append(f"the loop has not polled for {age:.1f} s (more than {stale_after:g} s)")
        stuck = [r for r in rows if r["stuck"]]
        if stuck:
            names = ", ".join(
                f"{r['topic']}[{r['partition']}] ({r['behind_seconds']:.0f} s)" for r in stuck
            )
            reasons.append(
                f"{len(stuck)} partition(s) stuck, records received and no commit for more than "
                f"{stuck_after:g} s: {names}"
            )
        if worker.waiting_for_retry:
            reasons.append("a batch waits for a failed shard or dead-letter sink (see the log)")
        if reasons:
            return False, {"reason": "; ".join(reasons), "partitions": rows}
        return True, {"last_poll_seconds_ago": round(age, 3), "partitions": rows}

    return check


class WorkerHttp:
    """Serves ``/metrics`` and ``/healthz`` on ``address:port`` (port 0: any free port).

    Args:
        address: the interface to listen on (``127.0.0.1``; ``0.0.0.0`` for every one).
        port: the TCP port.
        health: the ``/healthz`` check.
        registry: the Prometheus registry for ``/metrics`` (default: the global
            one; None and no ``prometheus-client``: ``/metrics`` answers 404).

    Raises:
        ConfigurationError: the address cannot be listened on (in use, not local).
    """

    def __init__(self, *, address: str, port: int, health: Health, registry: Any = None) -> None:
        self._health = health
        self._registry = registry
        handler = self._handler()
        try:
            self._server = ThreadingHTTPServer((address, port), handler)
        except OSError as exc:
            raise ConfigurationError(
                f"--http {address}:{port}: cannot listen there: {exc.strerror or exc}"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="shardbill-worker-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The port listened on."""
        return int(self._server.server_address[1])

    def start(self) -> WorkerHttp:
        """Start serving (returns self)."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WorkerHttp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _metrics(self) -> bytes | None:
        try:
            import prometheus_client
        except ImportError:
            return None
        registry = self._registry or prometheus_client.REGISTRY
        return bytes(prometheus_client.generate_latest(registry))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    try:
                        ok, details = outer._health()
                    except Exception as exc:
                        ok, details = False, {"reason": f"health check failed: {exc}"}
                    body = json.dumps({"ok": ok, **details}).encode()
                    self._send(200 if ok else 503, "application/json", body)
                elif path == "/metrics" and (text := outer._metrics()) is not None:
                    self._send(200, "text/plain; version=0.0.4; charset=utf-8", text)
                else:
                    self._send(404, "text/plain", b"not found: try /metrics or /healthz\n")

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would flood the worker's log

        return Handler
