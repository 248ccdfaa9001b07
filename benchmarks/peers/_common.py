"""What every peer contender shares: its flags, the model, the per-event step and the JSON report.

Each contender is a separate process started by ``benchmarks/daemon_vs_peers.py``. Some run in
riverbeam's environment, Bytewax and Quix Streams in the peers' own virtual environment, so this
module imports nothing of riverbeam's: River, orjson and the standard library only.

The per-event step is the same everywhere (River's progressive validation order, as
`online.learning.learner.Learner` does it): ``predict_proba_one``, the most probable class into
``Accuracy``, then ``learn_one``.

>>> scorer = Scorer()
>>> for x, y in [({"a": 1.0}, True), ({"a": -1.0}, False), ({"a": 2.0}, True)]:
...     scorer.process({**x, "label": y})
>>> scorer.events, round(scorer.metric.get(), 4)
(3, 0.3333)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

from river import linear_model, metrics, preprocessing

TARGET = "label"


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The flags every peer understands; a peer uses those it needs.

    >>> args = parse_args("demo", ["--end-offset", "10", "--topic", "events"])
    >>> args.end_offset, args.topic, args.session_timeout_ms
    (10, 'events', 2000)
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="events")
    parser.add_argument("--group-id", default="bench")
    parser.add_argument("--end-offset", type=int, required=True, help="stop once the record at end-offset - 1 is processed (1 partition)")
    parser.add_argument("--events-file", help="JSON lines, for the bare loop")
    parser.add_argument("--state-dir", help="a fresh directory for the contender's own state (recovery, RocksDB)")
    parser.add_argument("--session-timeout-ms", type=int, default=2000, help="short, for Tansu's group join (half of it)")
    parser.add_argument("--heartbeat-interval-ms", type=int, default=500)
    parser.add_argument("--max-poll-interval-ms", type=int, default=5000, help="kafka-python's rebalance timeout")
    parser.add_argument("--snapshot-seconds", type=float, default=5.0, help="Bytewax recovery: epoch length")
    parser.add_argument("--key-field", help="keyed contenders: the event field naming the model's key (also the Kafka message key)")
    parser.add_argument("--checkpoint-every", type=int, default=10_000, help="keyed Quix: commit (and flush its state) every N events")
    return parser.parse_args(argv)


def librdkafka_group_options(args: argparse.Namespace) -> dict:
    """Short group timeouts under librdkafka's names (Tansu joins after half the session timeout)."""
    return {"session.timeout.ms": args.session_timeout_ms, "heartbeat.interval.ms": args.heartbeat_interval_ms}


def build_model():
    """``StandardScaler | LogisticRegression`` with River's default parameters."""
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


class Scorer:
    """The model, its Accuracy and the clock of the processing phase (first event in, last out).

    `process` takes one decoded event (a dict of features plus ``label``) and consumes it.
    """

    def __init__(self):
        self.model = build_model()
        self.metric = metrics.Accuracy()
        self.events = 0
        self.first_event_at: float | None = None  # time.time() when the first event arrived
        self.first_event_clock = 0.0  # time.perf_counter() then
        self.first_event_cpu = 0.0  # time.process_time() then (all threads of the process)
        self.last_event_clock = 0.0  # time.perf_counter() after the last event was learned
        self.last_event_cpu = 0.0

    def process(self, event: dict) -> None:
        """Predict, score and learn one event (the label is popped from `event`)."""
        if self.first_event_at is None:
            self.start_clock()
        y = event.pop(TARGET)
        model = self.model
        proba = model.predict_proba_one(event)
        if proba:
            self.metric.update(y, max(proba, key=proba.get))
        model.learn_one(event, y)
        self.events += 1

    def start_clock(self) -> None:
        """Mark the arrival of the first event (call it before the first `process` when batching)."""
        if self.first_event_at is None:
            self.first_event_at = time.time()
            self.first_event_clock = time.perf_counter()
            self.first_event_cpu = time.process_time()

    def stop_clock(self) -> None:
        """Mark the end of the last event's processing."""
        self.last_event_clock = time.perf_counter()
        self.last_event_cpu = time.process_time()

    def report(self, **extra) -> dict:
        """The JSON line the harness reads: events, metric, the processing phase and a model digest."""
        if self.last_event_clock == 0.0:
            self.stop_clock()
        started = self.first_event_at is not None
        seconds = self.last_event_clock - self.first_event_clock if started else 0.0
        return {
            "events": self.events,
            "metric": self.metric.get(),
            "processing_seconds": seconds,
            "first_event_to_last_seconds": seconds,
            "processing_cpu_seconds": self.last_event_cpu - self.first_event_cpu if started else 0.0,
            "first_event_at": self.first_event_at,
            "model_digest": model_digest(self.model),
            **extra,
        }


def model_digest(model) -> str:
    """A SHA-256 of the fitted scaler statistics and logistic weights, exact to the last bit.

    >>> model = build_model()
    >>> model.learn_one({"a": 1.0}, True)
    >>> model_digest(model) == model_digest(model.clone()), len(model_digest(model))
    (False, 16)
    """
    scaler, logistic = model["StandardScaler"], model["LogisticRegression"]
    parts = {
        "mean": sorted((k, float(v).hex()) for k, v in scaler.means.items()),
        "var": sorted((k, float(v).hex()) for k, v in scaler.vars.items()),
        "weights": sorted((k, float(v).hex()) for k, v in logistic.weights.items()),
        "intercept": float(logistic.intercept).hex(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class KeyedScorer(Scorer):
    """A model per key (`models`: key -> model, a new one at a key's first event), one Accuracy over all events.

    `process_keyed` takes the key's model (None for a new key) and the decoded event without its key
    field, and returns the model, so it fits state stores that hand the state in and take it back.

    >>> scorer = KeyedScorer()
    >>> a = scorer.process_keyed(None, {"x": 1.0, "label": True})
    >>> b = scorer.process_keyed(None, {"x": -1.0, "label": False})
    >>> a = scorer.process_keyed(a, {"x": 2.0, "label": True})
    >>> scorer.events, round(scorer.metric.get(), 4), a is not b
    (3, 0.6667, True)
    """

    def process_keyed(self, model, event: dict):
        """Predict, score and learn one event with its key's model; return the model."""
        if self.first_event_at is None:
            self.start_clock()
        if model is None:
            model = build_model()
        y = event.pop(TARGET)
        proba = model.predict_proba_one(event)
        if proba:
            self.metric.update(y, max(proba, key=proba.get))
        model.learn_one(event, y)
        self.events += 1
        return model

    def report(self, models=None, **extra) -> dict:
        """The JSON report; `models` (key -> model pairs) gives the digest over every key's model."""
        report = super().report(**extra)
        report["model_digest"] = keyed_digest(models) if models is not None else None
        report["keys"] = None
        if models is not None:
            report["keys"] = len(models) if hasattr(models, "__len__") else None
        return report


def keyed_digest(models) -> str:
    """A SHA-256 over every key's `model_digest` (a mapping or (key, model) pairs), in key order.

    >>> model = build_model()
    >>> model.learn_one({"a": 1.0}, True)
    >>> keyed_digest({"u1": model}) == keyed_digest([("u1", model)]) != keyed_digest({"u2": model})
    True
    """
    pairs = models.items() if hasattr(models, "items") else models
    digests = sorted((str(key), model_digest(model)) for key, model in pairs)
    return hashlib.sha256(json.dumps(digests).encode()).hexdigest()[:16]


def emit(report: dict) -> None:
    """Print the report as the last line on stdout."""
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
