"""What the daemon tells operators: Prometheus metrics, health endpoints, JSON logs, a progress line.

`DaemonMetrics` holds the Prometheus series (updated once per batch, never per event).
`HealthServer` serves ``/metrics``, ``/healthz`` (the process is alive), ``/readyz`` (partitions
are assigned and restored) and the live dashboard (``/``, fed by ``/dashboard/history``) on one port.
`MetricsHistory` keeps the samples the dashboard draws (the same for ``riverbeam serve``).
"""

from __future__ import annotations

import collections
import errno
import http.server
import logging
import socket
import sys
import threading
import time
import urllib.parse
from importlib import resources

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from core.errors import RiverbeamError


class PortError(RiverbeamError):
    """A port that cannot be listened on (taken, not allowed): one line naming it and the key that sets it (exit 1)."""


def port_error(host: str, port: int, key: str, error: OSError) -> PortError:
    """The one-line error for an `OSError` met while binding `host`:`port`, which `key` configures.

    >>> print(port_error("127.0.0.1", 9108, "metrics.port", OSError(errno.EADDRINUSE, "Address already in use")))
    cannot listen on 127.0.0.1:9108 (metrics.port): the port is already in use; stop what listens there or choose another port (0: any free one)
    """
    if error.errno == errno.EADDRINUSE:
        why = "the port is already in use; stop what listens there or choose another port (0: any free one)"
    else:
        why = (error.strerror or str(error)).rstrip(".").lower()
    return PortError(f"cannot listen on {host}:{port} ({key}): {why}")


def listen_socket(host: str, port: int, key: str) -> socket.socket:
    """A TCP socket listening on `host`:`port` (port 0: a free one), or a `PortError` naming `key`.

    >>> first = listen_socket("127.0.0.1", 0, "serve.port")
    >>> listen_socket("127.0.0.1", first.getsockname()[1], "serve.port")
    Traceback (most recent call last):
    ...
    online.observability.PortError: cannot listen on 127.0.0.1:... (serve.port): the port is already in use; ...
    >>> first.close()
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise port_error(host, port, key, error) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server and uvicorn do
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise port_error(host, port, key, error) from None
    return sock


class DaemonMetrics:
    """The daemon's Prometheus series, in their own registry.

    Under ``consume --workers`` each worker's series go to prometheus-client's multiprocess files
    and the supervisor serves them merged (`online.consume.workers`): counters and histograms are
    summed over the workers (the dead ones' included), and each gauge says how it merges
    (``multiprocess_mode``: a sum or a maximum over the live workers, or the latest value set).
    One process ignores the modes.
    """

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.consumed = Counter("riverbeam_events_consumed", "Events read from Kafka", registry=registry)
        self.learned = Counter("riverbeam_events_learned", "Events the model learned from", registry=registry)
        self.model_events = Gauge("riverbeam_model_events_learned", "Events the model(s) have learned from in all, runs before a restored checkpoint included (serve's name)",
                                  registry=registry, multiprocess_mode="livesum")
        self.dead_lettered = Counter("riverbeam_events_dead_lettered", "Events rejected with a reason", registry=registry)
        self.lag = Gauge("riverbeam_partition_lag", "End offset minus next offset to read", ["topic", "partition"], registry=registry, multiprocess_mode="livesum")
        self.checkpoint_age = Gauge("riverbeam_checkpoint_age_seconds", "Seconds since the last durable checkpoint", registry=registry, multiprocess_mode="livemax")
        self.checkpoint_duration = Histogram(
            "riverbeam_checkpoint_duration_seconds", "Serialise + upload time of a checkpoint", registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.model_metric = Gauge("riverbeam_model_metric", "Progressive validation metric of each model (label model: its name)", ["unit", "model", "metric"], registry=registry,
                                  multiprocess_mode="livemostrecent")
        self.throughput = Gauge("riverbeam_events_per_second", "Events per second over the last interval", registry=registry, multiprocess_mode="livesum")
        self.drifts = Gauge("riverbeam_drifts_detected", "Concept drifts detected by the model's drift detector", ["unit"], registry=registry, multiprocess_mode="livemostrecent")
        self.ready_gauge = Gauge("riverbeam_ready", "1 when this instance is ready (restored, active), else 0", registry=registry, multiprocess_mode="livemax")
        self.offset_gaps = Counter("riverbeam_offset_gaps", "Checkpointed offsets the broker no longer had, skipped (kafka.on_offset_gap: skip)", ["topic", "partition"], registry=registry)
        self.offsets_skipped = Counter("riverbeam_offsets_skipped", "Offsets jumped over by skipped offset gaps", ["topic", "partition"], registry=registry)
        self.storage_retrying = Gauge("riverbeam_checkpoint_pending_seconds", "Seconds the checkpoint upload in flight has been retrying (0: none)", registry=registry,
                                      multiprocess_mode="livemax")
        self.checkpoint_failures = Counter("riverbeam_checkpoint_failures", "Checkpoint uploads that failed (storage down); retried at the next due checkpoint", registry=registry)
        self.lease_lost = Counter("riverbeam_lease_lost", "Times this instance lost the global model's lease and went back to standby", registry=registry)
        self.ready = False
        self._last_checkpoint = time.monotonic()

    @property
    def ready(self) -> bool:
        return self._ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = bool(value)
        self.ready_gauge.set(1 if value else 0)

    def checkpoint_done(self, seconds: float) -> None:
        self.checkpoint_duration.observe(seconds)
        self._last_checkpoint = time.monotonic()

    def refresh_checkpoint_age(self) -> None:
        self.checkpoint_age.set(time.monotonic() - self._last_checkpoint)

    def exposition(self) -> bytes:
        self.refresh_checkpoint_age()
        return generate_latest(self.registry)


class MetricsHistory:
    """Timed samples of a Prometheus registry, kept in a bounded ring for the live dashboard.

    Each point is ``{"t": epoch seconds, "values": {"name{label=\"v\"}": value}}`` with every
    sample of the registry except histogram buckets and ``_created`` stamps.

    >>> registry = CollectorRegistry()
    >>> counter = Counter("demo_events", "Events", registry=registry)
    >>> history = MetricsHistory(registry, size=2)
    >>> counter.inc(3); _ = history.sample(now=1.0); counter.inc(); _ = history.sample(now=2.0)
    >>> [(p["t"], p["values"]["demo_events_total"]) for p in history.since(1.0)]
    [(2.0, 4.0)]
    """

    def __init__(self, registry: CollectorRegistry, size: int = 3600, before=None, consumer: bool = False,
                 curve: "LearningCurve | None" = None):
        self.registry = registry
        self.before = before
        self.consumer = consumer  # the process reads Kafka (the daemon): the dashboard shows consumer lag
        self.curve = curve
        self._points: collections.deque = collections.deque(maxlen=size)
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def sample(self, now: float | None = None) -> dict:
        """Record one point now (after calling `before`, e.g. to refresh an age gauge) and return it."""
        if self.before is not None:
            self.before()
        values = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith(("_bucket", "_created")):
                    continue
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        point = {"t": round(time.time() if now is None else now, 3), "values": values}
        with self._lock:
            self._points.append(point)
        return point

    def since(self, t: float = 0.0) -> list[dict]:
        """The points recorded after `t` (epoch seconds), oldest first."""
        with self._lock:
            return [p for p in self._points if p["t"] > t]

    def json(self, query: str = "") -> bytes:
        """The ``/dashboard/history`` answer for a query string (``since=<t>``): the timed samples after
        `since`, whether this process has a consumer, and the learning curve when one is recorded."""
        try:
            since = float(urllib.parse.parse_qs(query).get("since", ["0"])[0])
        except ValueError:
            since = 0.0
        return orjson.dumps({"now": round(time.time(), 3), "points": self.since(since), "consumer": self.consumer,
                             "curve": self.curve.json() if self.curve is not None else None})

    def start(self, interval: float = 1.0) -> "MetricsHistory":
        """Sample every `interval` seconds on a daemon thread until `stop`."""

        def run():
            while not self._stop.wait(interval):
                try:
                    self.sample()
                except Exception as error:  # a failed sample must not stop the dashboard
                    logging.getLogger(__name__).warning("dashboard sample failed", extra={"fields": {"error": str(error)}})

        self.sample()
        threading.Thread(target=run, name="riverbeam-history", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()


class LearningCurve:
    """The learning curve by events learned: each model's metrics every `every` events, whatever the speed.

    The learning loop (`online.learning.loop.LearningLoop`) hands its learners events in slices of
    `every` and records a point after each; sampling by time instead gave a fast job two points.
    Past `size` points in a series, every other point is dropped and `every` doubles, so the curve
    spans the whole run in bounded memory (like River's ``print_every``, adaptively).

    >>> curve = LearningCurve(every=2, size=4)
    >>> for n in range(2, 12, 2):
    ...     curve.record("lr", n, {"MAE": 1.0 / n})
    >>> curve.every, [x for x, _ in curve.json()["lr"]]
    (4, [2, 6, 10])
    """

    def __init__(self, every: int = 10, size: int = 600):
        self.every = every
        self.size = size
        self._series: dict[str, list] = {}
        self._lock = threading.Lock()

    def record(self, series: str, events_learned: int, values: dict) -> None:
        """A point of `series` (a model's name) at `events_learned` with its metric `values` (none before
        the first event learned: River's metrics read 0 then, which is no score)."""
        if events_learned <= 0:
            return
        point = (events_learned, {name: value for name, value in values.items() if value is not None})
        with self._lock:
            points = self._series.setdefault(series, [])
            if points and points[-1][0] == events_learned:
                points[-1] = point
                return
            points.append(point)
            if len(points) > self.size:
                for name, kept in self._series.items():
                    self._series[name] = kept[::2]  # the first and the newest stay (size + 1 points: odd when size is even)
                self.every *= 2

    def json(self) -> dict:
        """``{series: [[events_learned, {metric: value}], ...]}``, oldest first."""
        with self._lock:
            return {name: [list(point) for point in points] for name, points in self._series.items()}


def dashboard_page() -> bytes:
    """The live dashboard (one self-contained HTML page, shipped with the package)."""
    return resources.files("online.serving").joinpath("dashboard.html").read_bytes()


class HealthServer:
    """``/metrics``, ``/healthz``, ``/readyz`` and the dashboard on a background thread (port 0 picks a free one)."""

    def __init__(self, metrics: DaemonMetrics, host: str, port: int, curve: LearningCurve | None = None):
        history = MetricsHistory(metrics.registry, before=metrics.refresh_checkpoint_age, consumer=True, curve=curve)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                path, _, query = self.path.partition("?")
                if path == "/metrics":
                    body, ctype, status = metrics.exposition(), CONTENT_TYPE_LATEST, 200
                elif path == "/":
                    body, ctype, status = dashboard_page(), "text/html; charset=utf-8", 200
                elif path == "/dashboard/history":
                    body, ctype, status = history.json(query), "application/json", 200
                elif path == "/healthz":
                    body, ctype, status = b"ok\n", "text/plain", 200
                elif path == "/readyz":
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

        try:
            self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        except OSError as error:  # a taken port: one line naming it and the key, never a traceback
            raise port_error(host, port, "metrics.port", error) from None
        self.history = history.start()
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="riverbeam-health", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.history.stop()
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
    handler = ProgressAwareHandler()  # follows sys.stderr: never a stream closed since (a caller's capture, a redirected stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("kafka", "urllib3", "google"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class ProgressLine:
    """A one-line live display on a terminal (nothing when stderr is not a TTY).

    Log lines never mix with it: `ProgressAwareHandler` clears the line, writes the log record
    and draws the line again below it.
    """

    active: "ProgressLine | None" = None  # the line on screen now, if any

    def __init__(self, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last = 0.0
        self.text = ""

    def update(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.enabled and (force or now - self._last >= 0.5):
            self._last = now
            self.text = text
            ProgressLine.active = self
            self.stream.write("\r\033[K" + text)
            self.stream.flush()

    def close(self) -> None:
        if ProgressLine.active is self:
            ProgressLine.active = None
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


class ProgressAwareHandler(logging.StreamHandler):
    r"""A stream handler that keeps log lines and the live progress line apart on a terminal.

    >>> import io
    >>> stream = io.StringIO()
    >>> line = ProgressLine(enabled=True, stream=stream)
    >>> handler = ProgressAwareHandler(stream)
    >>> line.update("riverbeam: 10 events", force=True)
    >>> handler.emit(logging.makeLogRecord({"msg": "checkpoint"}))
    >>> stream.getvalue().split("\r\033[K")
    ['', 'riverbeam: 10 events', 'checkpoint\n', 'riverbeam: 10 events']
    >>> line.close()
    """

    def __init__(self, stream=None):
        super().__init__(stream)
        self._follow_stderr = stream is None  # whatever sys.stderr is when a record comes (as logging.lastResort does)

    @property
    def stream(self):
        return sys.stderr if getattr(self, "_follow_stderr", False) else self._stream

    @stream.setter
    def stream(self, value) -> None:
        self._stream = value

    def emit(self, record: logging.LogRecord) -> None:
        line = ProgressLine.active
        if line is None or line.stream is not self.stream:
            super().emit(record)
            return
        self.stream.write("\r\033[K")
        super().emit(record)
        self.stream.write("\r\033[K" + line.text)
        self.stream.flush()
