"""Prometheus metrics of one app (its own registry: no global state between apps or tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 2.0, 5.0, 10.0)


class ServiceMetrics:
    def __init__(self, stored_state: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "anamnesis_request_latency_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "anamnesis_requests_total",
            "HTTP requests by status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "anamnesis_errors_total",
            "Requests answered with a 5xx status or failed inside",
            ["route"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "anamnesis_batch_size",
            "Records per model batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "anamnesis_batch_seconds", "Model time per batch", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.predictions = Counter("anamnesis_predictions_total", "Records classified", registry=self.registry)
        self.pending_writes = Gauge(
            "anamnesis_predictions_pending_write", "Predictions answered but not yet stored", registry=self.registry
        )
        self.quarantined = Gauge(
            "anamnesis_predictions_quarantined",
            "Predictions the database refused (not for being away), set aside in a quarantine file by this process",
            registry=self.registry,
        )
        self.registry.register(_StoredStateCollector(stored_state))

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.predictions.inc(size)


class _StoredStateCollector(Collector):
    """Reads what other processes may have changed (model, drift, runs) at scrape time."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        state = self._read()
        version = GaugeMetricFamily("anamnesis_model_version", "Model version served by this process")
        version.add_metric([], state.get("served_version") or 0)
        yield version
        current = GaugeMetricFamily("anamnesis_production_version", "Model version in production (database)")
        current.add_metric([], state.get("production_version") or 0)
        yield current
        drift = GaugeMetricFamily("anamnesis_last_drift_score", "Scores of the latest drift check", labels=["score"])
        for name, value in state.get("drift_scores", {}).items():
            drift.add_metric([name], value)
        yield drift
        detected = GaugeMetricFamily("anamnesis_last_drift_detected", "Whether the latest drift check found drift")
        detected.add_metric([], 1.0 if state.get("drift_detected") else 0.0)
        yield detected
        runs = CounterMetricFamily("anamnesis_jobs", "Background jobs by kind and status", labels=["kind", "status"])
        for (kind, status), count in state.get("runs", {}).items():
            runs.add_metric([kind, status], count)
        yield runs
