"""A Prometheus adapter for the writer's observer hook (the ``metrics`` extra).

``pip install 'shardbill[metrics]'`` installs ``prometheus-client``; then::

    from shardbill.metrics import PrometheusObserver

    writer = AggregationWriter(..., observer=PrometheusObserver())

and expose the default registry as usual (``prometheus_client.start_http_server``).

=========================================  =========  ==============================
metric                                     type       labels
=========================================  =========  ==============================
``shardbill_commits_total``                counter    shard
``shardbill_commit_seconds``               histogram  shard
``shardbill_units_applied_total``          counter    shard
``shardbill_duplicates_skipped_total``     counter    shard
``shardbill_conflicts_total``              counter    shard
``shardbill_rows_upserted_total``          counter    shard
``shardbill_retries_total``                counter    shard, error
``shardbill_failures_total``               counter    shard, error
``shardbill_events_rejected_total``        counter
``shardbill_map_reloads_total``            counter    shard
``shardbill_replica_lag_seconds``          gauge      shard, server
``shardbill_replica_failures_total``       counter    shard, server, error
``shardbill_read_fallbacks_total``         counter    shard, reason
=========================================  =========  ==============================

The replica metrics come from the read path: give the same observer to the
provider, ``PooledProvider.from_urls(..., observer=observer)``. The lag gauge
is NaN while a replica's lag is unknown (a replication thread stopped), and
is updated whenever the provider measures it (each ``max_lag`` check, at most
once per ``lag_refresh`` seconds, and each ``provider.replicas(shard)``).

Labels are shard names, ``host:port`` of replicas and error class names
only: bounded, and never an event payload or a secret.
"""

from __future__ import annotations

from typing import Any

from shardbill.errors import DriverNotInstalledError
from shardbill.observe import (
    Committed,
    Failed,
    MapReloaded,
    ReadEvent,
    ReadFellBack,
    Rejected,
    ReplicaDown,
    ReplicaLag,
    Retried,
    WriteEvent,
)

__all__ = ["PrometheusObserver", "prometheus_client_for"]

# Commit latencies of interest run from about a millisecond to seconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def prometheus_client_for(
    who: str, *, registry: Any = None, namespace: str = "shardbill"
) -> tuple[Any, dict[str, Any]]:
    """``prometheus_client`` and the keyword arguments every metric of ``who`` takes.

    The one place shardbill's Prometheus adapters (this module's and
    :mod:`shardbill.worker.prometheus`) import the client and say which extra is missing.

    Raises:
        DriverNotInstalledError: ``prometheus-client`` is not installed.
    """
    try:
        import prometheus_client as prom
    except ImportError as exc:
        raise DriverNotInstalledError(
            f"{who} needs prometheus-client: pip install 'shardbill[metrics]'"
        ) from exc
    kw: dict[str, Any] = {"namespace": namespace}
    if registry is not None:
        kw["registry"] = registry
    return prom, kw


class PrometheusObserver:
    """Counts and times the writer's (and the read path's) events into Prometheus metrics.

    Args:
        registry: the ``prometheus_client`` registry (default: the global one).
        namespace: the metric name prefix.

    Raises:
        DriverNotInstalledError: ``prometheus-client`` is not installed.
    """

    def __init__(self, *, registry: Any = None, namespace: str = "shardbill") -> None:
        prom, kw = prometheus_client_for(
            "PrometheusObserver", registry=registry, namespace=namespace
        )
        self._commits = prom.Counter("commits", "Shard transactions committed", ["shard"], **kw)
        self._latency = prom.Histogram(
            "commit_seconds", "Shard transaction time", ["shard"], buckets=_BUCKETS, **kw
        )
        self._applied = prom.Counter(
            "units_applied", "(event, slot) units applied", ["shard"], **kw
        )
        self._duplicates = prom.Counter(
            "duplicates_skipped", "Units found in the ledger already", ["shard"], **kw
        )
        self._conflicts = prom.Counter(
            "conflicts", "Units whose id was applied with other content", ["shard"], **kw
        )
        self._rows = prom.Counter("rows_upserted", "Aggregate rows UPSERTed", ["shard"], **kw)
        self._retries = prom.Counter(
            "retries", "Transient failures retried", ["shard", "error"], **kw
        )
        self._failures = prom.Counter(
            "failures", "Shard transactions given up", ["shard", "error"], **kw
        )
        self._rejected = prom.Counter("events_rejected", "Events refused before SQL", **kw)
        self._reloads = prom.Counter(
            "map_reloads", "Shard map reloads after a fence", ["shard"], **kw
        )
        self._lag = prom.Gauge(
            "replica_lag_seconds",
            "Replica lag behind its primary (NaN: unknown)",
            ["shard", "server"],
            **kw,
        )
        self._replica_failures = prom.Counter(
            "replica_failures", "Replicas marked down", ["shard", "server", "error"], **kw
        )
        self._fallbacks = prom.Counter(
            "read_fallbacks", "Replica reads served by the primary", ["shard", "reason"], **kw
        )

    def __call__(self, event: WriteEvent | ReadEvent) -> None:
        """Record one writer or read-path event."""
        if isinstance(event, Committed):
            self._commits.labels(event.shard).inc()
            self._latency.labels(event.shard).observe(event.seconds)
            self._applied.labels(event.shard).inc(event.applied)
            self._duplicates.labels(event.shard).inc(event.duplicates)
            self._conflicts.labels(event.shard).inc(event.conflicts)
            self._rows.labels(event.shard).inc(event.rows)
        elif isinstance(event, Retried):
            self._retries.labels(event.shard, event.error).inc()
        elif isinstance(event, Failed):
            self._failures.labels(event.shard, event.error).inc()
        elif isinstance(event, Rejected):
            self._rejected.inc(event.count)
        elif isinstance(event, MapReloaded):
            self._reloads.labels(event.shard).inc()
        elif isinstance(event, ReplicaLag):
            lag = float("nan") if event.seconds is None else event.seconds
            self._lag.labels(event.shard, event.server).set(lag)
        elif isinstance(event, ReplicaDown):
            self._replica_failures.labels(event.shard, event.server, event.error).inc()
            self._lag.labels(event.shard, event.server).set(float("nan"))
        elif isinstance(event, ReadFellBack):
            self._fallbacks.labels(event.shard, event.reason).inc()
