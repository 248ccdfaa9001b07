"""What the daemon tells operators: Prometheus metrics, health endpoints, JSON logs, a progress line.

`DaemonMetrics` holds the Prometheus series (updated once per batch, never per event).
`HealthServer` serves ``/metrics``, ``/healthz`` (the process is alive) and ``/readyz`` (partitions
are assigned and restored) on one port.
"""

from __future__ import annotations

import http.server
import logging
import sys
import threading
import time

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class DaemonMetrics:
    """The daemon's Prometheus series, in their own registry."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.consumed = Counter("riverbeam_events_consumed", "Events read from Kafka", registry=registry)
        self.learned = Counter("riverbeam_events_learned", "Events the model learned from", registry=registry)
        self.dead_lettered = Counter("riverbeam_events_dead_lettered", "Events rejected with a reason", registry=registry)
        self.lag = Gauge("riverbeam_partition_lag", "End offset minus next offset to read", ["topic", "partition"], registry=registry)
        self.checkpoint_age = Gauge("riverbeam_checkpoint_age_seconds", "Seconds since the last durable checkpoint", registry=registry)
        self.checkpoint_duration = Histogram(
            "riverbeam_checkpoint_duration_seconds", "Serialise + upload time of a checkpoint", registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.model_metric = Gauge("riverbeam_model_metric", "Progressive validation metric of the model", ["unit", "metric"], registry=registry)
        self.throughput = Gauge("riverbeam_events_per_second", "Events per second over the last interval", registry=registry)
        self.ready = False
        self._last_checkpoint = time.monotonic()

    def checkpoint_done(self, seconds: float) -> None:
        self.checkpoint_duration.observe(seconds)
        self._last_checkpoint = time.monotonic()

    def refresh_checkpoint_age(self) -> None:
        self.checkpoint_age.set(time.monotonic() - self._last_checkpoint)

    def exposition(self) -> bytes:
        self.refresh_checkpoint_age()
        return generate_latest(self.registry)


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on a background thread (port 0 picks a free one)."""

    def __init__(self, metrics: DaemonMetrics, host: str, port: int):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                if self.path == "/metrics":
                    body, ctype, status = metrics.exposition(), CONTENT_TYPE_LATEST, 200
                elif self.path == "/healthz":
                    body, ctype, status = b"ok\n", "text/plain", 200
                elif self.path == "/readyz":
                    ready = metrics.ready
                    body, ctype, status = (b"ready\n" if ready else b"not ready\n"), "text/plain", 200 if ready else 503
                else:
                    body, ctype, status = b"not found\n", "text/plain", 404
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep scrapes out of the logs
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="riverbeam-health", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg and any ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": round(record.created, 3), "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_json_logging(level: int = logging.INFO) -> None:
    """Send riverbeam's logs to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("kafka", "urllib3", "google"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class ProgressLine:
    """A one-line live display on a terminal (nothing when stderr is not a TTY)."""

    def __init__(self, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last = 0.0

    def update(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.enabled and (force or now - self._last >= 0.5):
            self._last = now
            self.stream.write("\r\033[K" + text)
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
