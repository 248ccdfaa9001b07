"""The ASGI application of ``riverbeam serve`` (Starlette; run by uvicorn).

Routes (every one but ``/healthz``, ``/readyz`` and the static dashboard page ``/`` needs
``Authorization: Bearer <token>`` when the variable named by ``serve.token_env`` is set):

* ``POST /v1/predict``: one event (a JSON object) or an array of events. Each answer is
  `online.serving.predict.prediction_record`, the record ``riverbeam predict`` prints. A bad event gets
  422 with the reason the daemon would dead-letter it with; in an array, a bad element gets
  ``{"error": reason}`` in its place and the others are answered.
* ``POST /v1/learn`` (``serve.learn: true`` only): events learned in order by the learner's own
  rules (`online.serving.writer`).
* ``GET /v1/model``, ``GET /metrics`` (Prometheus), ``GET /healthz``, ``GET /readyz``,
  ``GET /openapi.json``, ``GET /`` (live dashboard) and ``GET /dashboard/history`` (its data).

>>> import tempfile
>>> from starlette.testclient import TestClient
>>> from online.checkpoints.store import CheckpointStore
>>> from online.config import CheckpointConfig, EventsConfig, ModelConfig
>>> from online.learning.learner import Learner
>>> from online.checkpoints.persistence import save_learner
>>> from online.config import ServeJobConfig
>>> uri = tempfile.mkdtemp()
>>> learner = Learner(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y"))
>>> for i in range(50):
...     _ = learner.process({"x": float(i % 5), "y": 2.0 * (i % 5)})
>>> manifest = save_learner(CheckpointStore(uri), learner, positions={})
>>> with TestClient(build_app(ServeJobConfig(checkpoint=CheckpointConfig(uri=uri)), environ={})) as client:
...     print(client.post("/v1/predict", json={"x": 1.0}).json()["prediction"])
...     print(client.post("/v1/predict", json=[{"x": 1.0}, {"x": "a"}]).json()[1])
...     print(client.post("/v1/predict", json={"x": None}).status_code)
2.33287...
{'error': "feature 'x' is not a number: 'a'"}
422
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import os
import threading
import time
from typing import Any, Mapping

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from core import __version__
from core.errors import RiverbeamError
from online.events import EventError
from online.observability import MetricsHistory, dashboard_page, listen_socket
from online.checkpoints.persistence import LearnerSpec, open_checkpoint_store, restore_model
from online.serving.predict import prediction_record
from online.config import ServeJobConfig
from online.serving.metrics import ServeMetrics
from online.serving.reload import CheckpointWatcher, ModelSlot
from online.serving.writer import LearningWriter

log = logging.getLogger("riverbeam.serve")

PUBLIC = frozenset({"/healthz", "/readyz", "/"})
JSON = "application/json"

OPENAPI_BASE = {
    "openapi": "3.0.3",
    "info": {"title": "riverbeam serve", "version": __version__, "description": "Predictions (and optional learning) from riverbeam checkpoints."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Event": {"type": "object", "description": "One event: the fields the model reads (plus its label, key, id, time).",
                      "additionalProperties": {"nullable": True, "oneOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}]}},
            "Events": {"oneOf": [{"$ref": "#/components/schemas/Event"}, {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}]},
            "Record": {"type": "object", "description": "A prediction record (online.learning.learner.Prediction.record: as `riverbeam predict` prints it; "
                                                         "from /v1/learn also label and learned), or an error with its reason.",
                       "properties": {"prediction": {}, "probabilities": {"type": "object"}, "key": {}, "checkpoint": {"type": "string", "nullable": True},
                                      "label": {}, "learned": {"type": "boolean"}, "error": {"type": "string"}}},
            "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
        },
    },
    "security": [{"bearer": []}],
}  # fmt: skip


MAX_ERROR_CHARS = 300  # what an error answer may quote of the client's input


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type=JSON)


def capped(reason: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`reason` cut to `limit` characters: an error answer never echoes a large input back.

    >>> capped("feature 'x' is not a number: '" + "a" * 1000 + "'", limit=40)
    "feature 'x' is not a number: 'aaaaaaaaaa… (991 more characters)"
    """
    return reason if len(reason) <= limit else f"{reason[:limit]}… ({len(reason) - limit} more characters)"


def _error(reason: str, status: int) -> Response:
    return _json({"error": capped(reason)}, status)


class _BodyRefused(Exception):
    """The request body cannot be taken: the status to answer and why (or no answer: the client left)."""

    def __init__(self, status: int | None, reason: str = ""):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def bearer_token(header: bytes) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header; the scheme is case-insensitive (RFC 7235).

    >>> bearer_token(b"bearer abc"), bearer_token(b"BEARER  abc "), bearer_token(b"Basic abc"), bearer_token(b"Bearer")
    (b'abc', b'abc', None, None)
    """
    scheme, _, token = header.strip().partition(b" ")
    token = token.strip()
    return token if scheme.lower() == b"bearer" and token else None


class ServeMiddleware:
    """Bearer-token check, request-body bounds and per-route request metrics, as plain ASGI.

    A request body is read here, before any route runs: past `max_body_bytes` it is refused with
    413 (from ``Content-Length`` before reading, or while reading), one that has not arrived
    within `body_timeout` seconds gets 408, and a client that disconnects mid-body is counted
    with status 499 (nginx's "client closed request"), logged at INFO, never a 500.
    """

    def __init__(self, app, metrics: ServeMetrics, token: str | None, routes: set[str], max_body: int = 32 << 20, body_timeout: float = 30.0):
        self.app = app
        self.metrics = metrics
        self.token = token.encode() if token else None
        self.routes = routes
        self.max_body = max_body
        self.body_timeout = body_timeout
        self._children: dict = {}

    def _count(self, route: str, status: int, seconds: float) -> None:
        children = self._children.get((route, status))
        if children is None:
            children = self._children[(route, status)] = (self.metrics.requests.labels(route, str(status)), self.metrics.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def _authorized(self, scope) -> bool:
        given = bearer_token(next((v for k, v in scope["headers"] if k == b"authorization"), b""))
        return given is not None and hmac.compare_digest(given, self.token)

    async def _read_body(self, scope, receive) -> bytes:
        """The whole body, bounded in size and time (`_BodyRefused` otherwise)."""
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise _BodyRefused(413, f"the request body has {int(length)} bytes; at most serve.max_body_bytes = {self.max_body}")
        deadline = time.monotonic() + self.body_timeout
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise _BodyRefused(408, f"the request body did not arrive within serve.body_timeout_seconds = {self.body_timeout:g}") from None
            if message["type"] == "http.disconnect":
                raise _BodyRefused(None, "the client disconnected before its request body was complete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _BodyRefused(413, f"the request body has more than serve.max_body_bytes = {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _answer(self, send, status: int, body: bytes, headers: list | None = None) -> None:
        head = [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode()), *(headers or [])]
        if status in (408, 413):
            head.append((b"connection", b"close"))  # the rest of the body is not read
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope["path"]
        route = path if path in self.routes else "other"
        if self.token is not None and path not in PUBLIC and not self._authorized(scope):
            await self._answer(send, 401, b'{"error":"missing or wrong bearer token"}', [(b"www-authenticate", b"Bearer")])
            self._count(route, 401, time.perf_counter() - started)
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            try:
                body = await self._read_body(scope, receive)
            except _BodyRefused as refused:
                if refused.status is None:
                    log.info("request abandoned", extra={"fields": {"route": route, "reason": refused.reason}})
                    self._count(route, 499, time.perf_counter() - started)
                    return
                self.metrics.rejected.inc()
                await self._answer(send, refused.status, orjson.dumps({"error": refused.reason}))
                self._count(route, refused.status, time.perf_counter() - started)
                return
            receive = _replay(body, receive)
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._count(route, status[0], time.perf_counter() - started)


def _replay(body: bytes, receive):
    """An ASGI `receive` that gives the body already read, then waits on the client (for a disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class Server:
    """The state behind the routes: the served model, the watcher or the writer, metrics, history."""

    def __init__(self, config: ServeJobConfig, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        self.config = config
        self.metrics = ServeMetrics()
        self.history = MetricsHistory(self.metrics.registry, before=self.metrics.refresh)
        self.slot = ModelSlot()
        self.token = environ.get(config.serve.token_env) or None
        self.max_batch = config.serve.max_batch
        self.writer = LearningWriter(config, self.metrics, self.slot) if config.serve.learn else None
        self.watcher = None
        if self.writer is None:
            store = open_checkpoint_store(config.checkpoint)
            if config.model is not None and config.events is not None:
                spec = LearnerSpec.load(config.model, config.events, config.features)
                restore = spec.restore  # the configuration given must hash to the checkpoint's
            else:
                # the configuration the checkpoint recorded, as `riverbeam predict` (serve.model: one of several models)
                restore = functools.partial(restore_model, name=config.serve.model)
            self.watcher = CheckpointWatcher(store, self.slot, self.metrics, restore=restore, interval=config.serve.reload_seconds)
        self.stopping = asyncio.Event()
        self.stopping_thread = threading.Event()
        self.started = time.time()
        self.schemas = SchemaGenerator(OPENAPI_BASE)
        self._openapi: bytes | None = None

    @property
    def ready(self) -> bool:
        if self.writer is not None:
            return self.writer.active
        return self.slot.current is not None

    # -- life cycle --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        tasks = [asyncio.create_task(self._sample())]
        if self.writer is not None:
            tasks.append(asyncio.create_task(self._learn_loop()))
        else:
            try:
                await asyncio.to_thread(self.watcher.load_initial)
            except Exception as error:  # no good checkpoint yet: not ready, keep watching
                log.error("no checkpoint can be served yet", extra={"fields": {"error": str(error)}})
            tasks.append(asyncio.create_task(self.watcher.run(self.stopping)))
        try:
            yield
        finally:
            self.stopping.set()
            self.stopping_thread.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.writer is not None:
                self.writer.stop()

    async def _sample(self) -> None:
        while True:
            self.history.sample()
            await asyncio.sleep(1.0)

    async def _learn_loop(self) -> None:
        """Learn while this instance holds the lease; after losing it (or a failed checkpoint), standby until it is free again."""
        while True:
            try:
                started = await asyncio.to_thread(self.writer.start, self.stopping_thread)
            except Exception as error:  # storage refuses the lease, or the checkpoint cannot be restored (another configuration, an old layout)
                log.error("cannot start learning; this instance does not learn (it keeps answering predictions)",
                          extra={"fields": {"uri": self.config.checkpoint.uri, "error": f"{type(error).__name__}: {error}"}})
                return
            if not started:
                return
            while self.writer.active:
                await asyncio.sleep(1.0)
                self.writer.tick()
                self.writer.check_lease()  # renewed by its LeaseKeeper's thread: this only reads a flag
            log.info("standby: waiting to take the lease again", extra={"fields": {"uri": self.config.checkpoint.uri}})

    # -- routes ------------------------------------------------------------------------------

    async def _events(self, request: Request) -> tuple[Any, Response | None]:
        body = await request.body()
        try:
            return orjson.loads(body), None
        except orjson.JSONDecodeError as error:
            self.metrics.rejected.inc()
            return None, _error(f"not JSON: {error}", 422)

    def _predict_one(self, served, event) -> dict:
        try:
            return prediction_record(served.learner, event, served.checkpoint_id)
        except EventError as error:
            return {"error": capped(str(error))}
        except Exception as error:  # the model itself failed on this event: this event's failure only
            return {"error": capped(f"the model cannot predict this event: {error}")}

    async def predict(self, request: Request) -> Response:
        """
        summary: Predict one event or an array of events (no learning).
        requestBody:
          required: true
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Events'}
        responses:
          200:
            description: The prediction record (an object for one event, an array for an array; a bad element holds its error).
            content:
              application/json:
                schema: {oneOf: [{$ref: '#/components/schemas/Record'}, {type: array, items: {$ref: '#/components/schemas/Record'}}]}
          401: {description: Missing or wrong bearer token.}
          408: {description: The body did not arrive within serve.body_timeout_seconds.}
          413: {description: More events in one array than serve.max_batch, or a body past serve.max_body_bytes.}
          422:
            description: A bad event, with the reason the daemon would dead-letter it with.
            content: {application/json: {schema: {$ref: '#/components/schemas/Error'}}}
          503: {description: No checkpoint loaded yet.}
        """
        served = self.slot.current
        if served is None:
            return _error("no checkpoint loaded yet", 503)
        events, failed = await self._events(request)
        if failed is not None:
            return failed
        if type(events) is list:
            if len(events) > self.max_batch:
                return _error(f"{len(events)} events in one request; at most serve.max_batch = {self.max_batch}", 413)
            records = [self._predict_one(served, event) for event in events]
            bad = sum(1 for r in records if "error" in r)
            self.metrics.predictions.inc(len(records) - bad)
            if bad:
                self.metrics.rejected.inc(bad)
            return _json(records)
        record = self._predict_one(served, events)
        if "error" in record:
            self.metrics.rejected.inc()
            return _json(record, 422)
        self.metrics.predictions.inc()
        return _json(record)

    async def learn(self, request: Request) -> Response:
        """
        summary: Learn from events in order (labels joined to earlier predictions by events.id).
        requestBody:
          required: true
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Events'}
        responses:
          200:
            description: One record per event (prediction, label, learned), or its error.
            content:
              application/json:
                schema: {oneOf: [{$ref: '#/components/schemas/Record'}, {type: array, items: {$ref: '#/components/schemas/Record'}}]}
          401: {description: Missing or wrong bearer token.}
          408: {description: The body did not arrive within serve.body_timeout_seconds.}
          413: {description: More events in one array than serve.max_batch, or a body past serve.max_body_bytes.}
          422:
            description: A bad event, with the reason the daemon would dead-letter it with.
            content: {application/json: {schema: {$ref: '#/components/schemas/Error'}}}
          503: {description: Not learning (standby, or stopped after losing the lease or a failed checkpoint).}
        """
        if not self.writer.active:
            return _error("this instance is not learning (standby, or it lost the lease)", 503)
        events, failed = await self._events(request)
        if failed is not None:
            return failed
        single = type(events) is not list
        batch = [events] if single else events
        if len(batch) > self.max_batch:
            return _error(f"{len(batch)} events in one request; at most serve.max_batch = {self.max_batch}", 413)
        records = [{"error": capped(r["error"])} if "error" in r else r for r in self.writer.learn(batch)]
        bad = sum(1 for r in records if "error" in r)
        if bad:
            self.metrics.rejected.inc(bad)
        if single:
            return _json(records[0], 422 if bad else 200)
        return _json(records)

    async def model(self, request: Request) -> Response:
        """
        summary: The model served, its counters and metrics, and its checkpoint (id and age).
        responses:
          200: {description: The model description.}
          401: {description: Missing or wrong bearer token.}
          503: {description: No checkpoint loaded yet.}
        """
        served = self.slot.current
        if served is None:
            return _error("no checkpoint loaded yet", 503)
        self.metrics.refresh()
        manifest = served.manifest
        created = self.metrics.checkpoint_created
        return _json({
            "mode": "learn" if self.writer is not None else "read-only",
            "checkpoint": {
                "uri": self.config.checkpoint.uri, "id": served.checkpoint_id, "created_at": manifest.get("created_at"),
                "age_seconds": round(time.time() - created, 3) if created and served.checkpoint_id else None,
                "events_seen": manifest.get("events_seen"), "events_learned": manifest.get("events_learned"), "metrics": manifest.get("metrics"),
            },
            "model": served.learner.model_text(),
            "kind": served.learner.kind,
            "report": served.learner.report(),
            "learning": {"model": served.learner.model_config.model_dump(mode="json"), "events": served.learner.events_config.model_dump(mode="json")},
        })  # fmt: skip

    async def metrics_route(self, request: Request) -> Response:
        """
        summary: Prometheus metrics.
        responses:
          200: {description: Prometheus text exposition.}
          401: {description: Missing or wrong bearer token.}
        """
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, request: Request) -> Response:
        """
        summary: Liveness (the process answers).
        security: []
        responses:
          200: {description: Alive.}
        """
        return Response(b"ok\n", media_type="text/plain")

    async def readyz(self, request: Request) -> Response:
        """
        summary: Readiness (a model is loaded; a learning instance holds the lease).
        security: []
        responses:
          200: {description: Ready.}
          503: {description: Not ready.}
        """
        ready = self.ready
        self.metrics.ready_gauge.set(1 if ready else 0)
        return Response(b"ready\n" if ready else b"not ready\n", status_code=200 if ready else 503, media_type="text/plain")

    async def dashboard(self, request: Request) -> Response:
        """
        summary: The live dashboard page (static; its data comes from /dashboard/history).
        security: []
        responses:
          200: {description: HTML page.}
        """
        return Response(dashboard_page(), media_type="text/html; charset=utf-8")

    async def dashboard_history(self, request: Request) -> Response:
        """
        summary: Samples of this instance's Prometheus series since a time (the dashboard's data).
        parameters:
          - {name: since, in: query, required: false, schema: {type: number}}
        responses:
          200: {description: "{now, points: [{t, values}]}"}
          401: {description: Missing or wrong bearer token.}
        """
        return Response(self.history.json(request.url.query), media_type=JSON)

    async def openapi(self, request: Request) -> Response:
        """
        summary: This document.
        responses:
          200: {description: OpenAPI 3 document.}
          401: {description: Missing or wrong bearer token.}
        """
        if self._openapi is None:
            self._openapi = orjson.dumps(self.schemas.get_schema(routes=request.app.routes), option=orjson.OPT_NON_STR_KEYS)
        return Response(self._openapi, media_type=JSON)

    def routes(self) -> list[Route]:
        routes = [
            Route("/v1/predict", self.predict, methods=["POST"]),
            Route("/v1/model", self.model, methods=["GET"]),
            Route("/metrics", self.metrics_route, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"], include_in_schema=True),
            Route("/", self.dashboard, methods=["GET"]),
            Route("/dashboard/history", self.dashboard_history, methods=["GET"]),
        ]
        if self.writer is not None:
            routes.insert(1, Route("/v1/learn", self.learn, methods=["POST"]))
        return routes


def build_app(config: ServeJobConfig, environ: Mapping[str, str] | None = None) -> Starlette:
    """The ASGI application for `config` (the token is read from `environ`, default the process environment)."""
    server = Server(config, environ)
    routes = server.routes()
    app = Starlette(routes=routes, lifespan=server.lifespan)
    app.state.server = server
    return ServeMiddleware(
        app, server.metrics, server.token, {r.path for r in routes},
        max_body=config.serve.max_body_bytes, body_timeout=config.serve.body_timeout_seconds,
    )  # fmt: skip


def run_server(config: ServeJobConfig, host: str | None = None, port: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn), then write a final checkpoint when learning."""
    import signal

    import uvicorn

    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler it found: make
    # that one a no-op, so a graceful stop exits 0 (as the daemon does), not "killed by SIGTERM"
    signal.signal(signal.SIGTERM, lambda *_: None)
    host, port = host or config.serve.host, config.serve.port if port is None else port
    listener = listen_socket(host, port, "serve.port, --port")  # a taken port: one line, exit 1 (uvicorn would exit 3)
    server = uvicorn.Server(uvicorn.Config(
        build_app(config), host=host, port=port, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=30,
    ))  # fmt: skip
    server.run(sockets=[listener])
    if not server.started:  # the application failed to start (logged above): exit 1, as uvicorn.run would exit 3
        raise RiverbeamError("serve stopped before it started serving (see the log above)")
