"""The Prometheus series of ``riverbeam serve``, in their own registry.

Series that mean the same as the daemon's keep the daemon's names (``riverbeam_model_metric``,
``riverbeam_checkpoint_age_seconds``, ``riverbeam_events_learned_total``,
``riverbeam_drifts_detected``, ``riverbeam_ready``), so one dashboard and one set of alert rules
cover both; the rest are ``riverbeam_serve_*``.

>>> from prometheus_client import generate_latest
>>> metrics = ServeMetrics()
>>> metrics.requests.labels("/v1/predict", "200").inc()
>>> b'riverbeam_serve_requests_total{route="/v1/predict",status="200"} 1.0' in generate_latest(metrics.registry)
True
"""

from __future__ import annotations

import datetime
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class ServeMetrics:
    """Counters and gauges of one serving instance."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("riverbeam_serve_requests", "HTTP requests answered", ["route", "status"], registry=registry)
        self.latency = Histogram("riverbeam_serve_request_duration_seconds", "Time to answer a request", ["route"], registry=registry, buckets=LATENCY_BUCKETS)
        self.predictions = Counter("riverbeam_serve_predictions", "Events answered with a prediction", registry=registry)
        self.rejected = Counter("riverbeam_serve_events_rejected", "Events answered with 422 and a reason", registry=registry)
        self.learned = Counter("riverbeam_events_learned", "Events the model learned from", registry=registry)
        self.reloads = Counter("riverbeam_serve_reloads", "Checkpoints swapped in", registry=registry)
        self.reload_failures = Counter("riverbeam_serve_reload_failures", "Checkpoints refused (failed verification or restore)", registry=registry)
        self.reload_seconds = Gauge("riverbeam_serve_reload_seconds", "Load, verify and restore time of the last checkpoint swapped in", registry=registry)
        self.checkpoints_written = Counter("riverbeam_serve_checkpoints_written", "Checkpoints written by this (learning) instance", registry=registry)
        self.checkpoint_age = Gauge("riverbeam_checkpoint_age_seconds", "Age of the checkpoint served (read-only) or last written (learning)", registry=registry)
        self.model_metric = Gauge("riverbeam_model_metric", "Progressive validation metric of the model", ["unit", "metric"], registry=registry)
        self.model_events = Gauge("riverbeam_model_events_learned", "Events the served model has learned from", registry=registry)
        self.drifts = Gauge("riverbeam_drifts_detected", "Concept drifts detected by the model's drift detector", ["unit"], registry=registry)
        self.ready_gauge = Gauge("riverbeam_ready", "1 when this instance is ready (a model is loaded; a learning instance holds the lease), else 0", registry=registry)
        self.ready_gauge.set(0)
        self.checkpoint_created: float | None = None  # epoch seconds of the checkpoint served / last written

    def checkpoint_is(self, manifest: dict) -> None:
        """Note the checkpoint now served or just written (its age is measured from its creation)."""
        created = manifest.get("created_at")
        try:
            self.checkpoint_created = datetime.datetime.fromisoformat(created).timestamp() if created else time.time()
        except ValueError:
            self.checkpoint_created = time.time()

    def model_is(self, report: dict) -> None:
        """Set the model's gauges from a learner report (``Learner.report()``)."""
        self.model_events.set(report.get("events_learned", 0))
        for name, value in report.get("metrics", {}).items():
            if value is not None:
                self.model_metric.labels("serve", name).set(value)
        if "drifts_detected" in report:
            self.drifts.labels("serve").set(report["drifts_detected"])

    def refresh(self) -> None:
        if self.checkpoint_created is not None:
            self.checkpoint_age.set(max(0.0, time.time() - self.checkpoint_created))

    def exposition(self) -> bytes:
        self.refresh()
        return generate_latest(self.registry)
