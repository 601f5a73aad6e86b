"""Prometheus metrics of a stream worker (the ``metrics`` extra), fed by its ``on_batch`` hook.

``pip install 'shardbill[metrics]'``; then::

    from shardbill.metrics import PrometheusObserver
    from shardbill.worker.prometheus import WorkerMetrics

    writer = AggregationWriter(..., observer=PrometheusObserver())   # per shard
    worker = Worker(..., on_batch=WorkerMetrics())                    # per worker
    prometheus_client.start_http_server(9108)

(``shardbill worker --metrics-port 9108`` does all three.)

===============================================  =========  ======
metric                                           type       labels
===============================================  =========  ======
``shardbill_worker_records_total``               counter
``shardbill_worker_events_applied_total``        counter
``shardbill_worker_events_duplicate_total``      counter
``shardbill_worker_events_free_total``           counter
``shardbill_worker_dead_letters_total``          counter    stage
``shardbill_worker_retries_total``               counter
``shardbill_worker_batches_total``               counter
``shardbill_worker_commits_total``               counter
``shardbill_worker_commit_failures_total``       counter
``shardbill_worker_rebalances_total``            counter
``shardbill_worker_uncommitted_records``         gauge
``shardbill_worker_held_records``                gauge
``shardbill_worker_paused_partitions``           gauge
===============================================  =========  ======

Labels are the four dead-letter stages only. Consumer lag is the broker's to
report (``kafka-consumer-groups``, or a lag exporter): committed offsets are
what the worker moves.
"""

from __future__ import annotations

from typing import Any

from shardbill.metrics import prometheus_client_for
from shardbill.worker.loop import WorkerSummary
from shardbill.worker.records import Stage

__all__ = ["WorkerMetrics"]

_COUNTERS = {
    "records": ("worker_records", "records received (redeliveries included)"),
    "applied": ("worker_events_applied", "events this worker applied"),
    "duplicates": ("worker_events_duplicate", "events delivered again: nothing added"),
    "free": ("worker_events_free", "events priced with no charge"),
    "retries": ("worker_retries", "batches processed again after a shard failed"),
    "batches": ("worker_batches", "batches processed"),
    "commits": ("worker_commits", "offset commits"),
    "commit_failures": ("worker_commit_failures", "offset commits the broker refused"),
    "rebalances": ("worker_rebalances", "partition assignments received"),
}


class WorkerMetrics:
    """An ``on_batch`` hook that turns a worker's running summary into Prometheus metrics.

    Args:
        registry: the ``prometheus_client`` registry (default: the global one).
        namespace: the metric name prefix.

    Raises:
        DriverNotInstalledError: ``prometheus-client`` is not installed.
    """

    def __init__(self, *, registry: Any = None, namespace: str = "shardbill") -> None:
        prom, where = prometheus_client_for("WorkerMetrics", registry=registry, namespace=namespace)
        self._counters = {
            field: prom.Counter(name, text, **where) for field, (name, text) in _COUNTERS.items()
        }
        self._dead = prom.Counter(
            "worker_dead_letters", "records sent to the dead letters", ["stage"], **where
        )
        for stage in Stage:
            self._dead.labels(stage.value)  # every stage shows, at 0
        self._uncommitted = prom.Gauge(
            "worker_uncommitted_records", "records received and not done yet", **where
        )
        self._held = prom.Gauge(
            "worker_held_records",
            "records held in memory (fetched, or waiting for a retry); at most max_held",
            **where,
        )
        self._paused = prom.Gauge(
            "worker_paused_partitions", "partitions paused: their records wait for a shard", **where
        )
        self._last = WorkerSummary()

    def __call__(self, summary: WorkerSummary) -> None:
        """Add what changed since the last summary (summaries only grow)."""
        last, self._last = self._last, summary
        for field, counter in self._counters.items():
            grown = getattr(summary, field) - getattr(last, field)
            if grown > 0:
                counter.inc(grown)
        for stage, count in summary.dead_letters.items():
            grown = count - last.dead_letters.get(stage, 0)
            if grown > 0:
                self._dead.labels(stage).inc(grown)
        self._uncommitted.set(summary.uncommitted)
        self._held.set(summary.held)
        self._paused.set(summary.paused_partitions)
