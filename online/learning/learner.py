"""The learner core: predict, score, then learn — River's progressive validation order.

One implementation shared by the Kafka daemon, replay and the Beam streaming pipeline. For each
event in order the model predicts (probabilities for classifiers when a metric needs them), the
metrics are updated, then the model learns. The metrics therefore equal
`river.evaluate.progressive_val_score` on the same data and model, exactly.

>>> from river import datasets, evaluate, linear_model, metrics, preprocessing
>>> from online.config import EventsConfig, ModelConfig, check_drift_detector
>>> config = ModelConfig(pipeline=[{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}],
...                      metrics=["Accuracy", "LogLoss"])
>>> learner = Learner(config, EventsConfig(target="label"))
>>> for x, y in datasets.Phishing():
...     _ = learner.process({**x, "label": y})
>>> learner.metric_values()
{'Accuracy': 0.8928, 'LogLoss': 0.33011204643883...}
>>> evaluate.progressive_val_score(datasets.Phishing(), preprocessing.StandardScaler() | linear_model.LogisticRegression(),
...                                metrics.Accuracy() + metrics.LogLoss())
Accuracy: 89.28%
LogLoss: 0.33011204643883...

Per-key models (``events.key``): each distinct key value gets its own copy of the model; the
metrics are computed over all events together.

Delayed labels (``events.id``): an event with an id and no label is predicted and its prediction
kept (at most ``events.delayed_labels.max_pending``, for ``ttl_seconds``). When an event with the
same id and a label arrives, the metrics are updated with the *kept* prediction and the model
learns from the *kept* features and the new label — River's `delay` semantics in
`evaluate.progressive_val_score` / `stream.simulate_qa`. A labelled event whose id is not pending
is predicted and learned at once. Pending predictions that expire or overflow are dropped and
counted (``labels_expired``). Time is the event's ``events.time`` field (epoch seconds) when
set, else the processing clock.
"""

from __future__ import annotations

import collections
import contextlib
import copyreg
import functools
import io
import itertools
import json
import math
import pickle
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from river import base, compose

from core.errors import ConfigError
from online.config import EventsConfig, ModelConfig, check_batch, check_drift_detector, check_labels, label_family
from online.events import EventError, EventReader
from online.learning.interface import OnlineLearner
from online.learning.keyed_state import KeyedModels
from online.models import build_metrics, build_pipeline, metric_name
from core.eventtime import event_time

STATE_FORMAT = 1


@dataclass
class LearnerState:
    """Everything a checkpoint must hold to continue exactly where the learner stopped."""

    models: dict = field(default_factory=dict)  # model key (None when global) -> River estimator
    metrics: Any = None  # river.metrics.base.Metrics
    drift_detector: Any = None
    drifts_detected: int = 0
    last_drift_at: int | None = None  # events_seen when the last drift was detected
    pending: collections.OrderedDict = field(default_factory=collections.OrderedDict)  # id -> (x, y_pred, key, expires)
    events_seen: int = 0
    events_learned: int = 0
    events_rejected: int = 0
    labels_joined: int = 0
    labels_expired: int = 0
    models_expired: int = 0  # per-key models dropped by events.key_ttl_seconds
    label_family: str | None = None  # a classifier's labels, once one was learned: "text" or "number" (online.config.label_family)
    format: int = STATE_FORMAT


@dataclass(frozen=True)
class Prediction:
    """What the learner said about one event: the key, the prediction and, for classifiers, probabilities."""

    key: Any
    y_pred: Any
    y_true: Any
    learned: bool

    def label(self) -> Any:
        """The predicted label (the most probable class when `y_pred` holds probabilities)."""
        if isinstance(self.y_pred, dict):
            return max(self.y_pred, key=self.y_pred.get) if self.y_pred else None
        return self.y_pred

    def record(self, *, learning: bool = True, **where: Any) -> dict:
        """The record every job writes for this prediction: one shape, the same field names everywhere.

        * ``key``: the model key, for per-key models only (``events.key``);
        * ``prediction``: the predicted value (a classifier's most probable class);
        * ``probabilities``: a classifier's class probabilities keyed by `label_text`, when it gives them;
        * ``label`` (null when the event had none) and ``learned`` (whether the model learned from it):
          in the records of a job that learns (the daemon's ``predictions_topic``, stream-learn,
          serve's ``POST /v1/learn``); a job that only predicts (``riverbeam predict``, serve's
          ``POST /v1/predict``: ``learning=False``) writes neither;
        * then `where` the prediction was made, by job: ``checkpoint`` (predict and serve: the id of
          the checkpoint the model came from), ``topic``, ``partition`` and ``offset`` (the daemon:
          the event's source position), ``id`` (stream-learn, with ``events.id``).

        >>> Prediction(None, {True: 0.75, False: 0.25}, True, True).record(topic="events", partition=0, offset=41)
        {'prediction': True, 'probabilities': {'true': 0.75, 'false': 0.25}, 'label': True, 'learned': True, 'topic': 'events', 'partition': 0, 'offset': 41}
        >>> Prediction("u7", 2.5, None, False).record(learning=False, checkpoint="ck-1")
        {'key': 'u7', 'prediction': 2.5, 'checkpoint': 'ck-1'}
        """
        record: dict = {} if self.key is None else {"key": self.key}
        y_pred = self.y_pred
        if isinstance(y_pred, dict):
            record["prediction"] = max(y_pred, key=y_pred.get) if y_pred else None
            record["probabilities"] = probabilities_record(y_pred)
        else:
            record["prediction"] = y_pred
        if learning:
            record["label"] = self.y_true
            record["learned"] = self.learned
        record.update(where)
        return record


def label_text(label: Any) -> str:
    """A class label as a JSON object key, the same in every output: text stays text, anything
    else is written as JSON (``True`` -> ``"true"``, ``1`` -> ``"1"``), so a bool label reads
    ``true`` in the prediction and ``"true"`` among the probabilities, in predict, serve, the
    predictions topic and stream-learn alike.

    >>> label_text(True), label_text(0), label_text("spam"), label_text(None)
    ('true', '0', 'spam', 'null')
    """
    if isinstance(label, str):
        return label
    if isinstance(label, bool) or label is None:
        return "true" if label is True else "false" if label is False else "null"
    return str(label)


def probabilities_record(y_pred: dict) -> dict[str, float]:
    """Class probabilities keyed by `label_text`.

    >>> probabilities_record({True: 0.75, False: 0.25})
    {'true': 0.75, 'false': 0.25}
    """
    return {label_text(k): v for k, v in y_pred.items()}


def label_kind(model: base.Estimator) -> str | None:
    """What labels `model` takes, for `online.events.EventReader`: ``"binary"`` (binary classifiers:
    true/false, 1/0), ``"class"`` (multiclass), ``"number"`` (regressors) or None.

    >>> from river import linear_model, tree
    >>> label_kind(linear_model.LogisticRegression()), label_kind(tree.HoeffdingTreeClassifier()), label_kind(linear_model.LinearRegression())
    ('binary', 'class', 'number')
    """
    kind = model_kind(model)
    if kind == "class" and not model._multiclass:
        return "binary"
    return kind


def score_function(metrics: list, probabilities: bool) -> Callable[[Any, Any], None]:
    """One call that updates every metric as `river.metrics.base.Metrics.update` would, without its per-event overhead.

    With `probabilities`, metrics that need labels get the most probable class and the others
    the probabilities (what `Metrics.update` does); otherwise every metric gets the prediction.

    >>> from river import metrics
    >>> accuracy, log_loss = metrics.Accuracy(), metrics.LogLoss()
    >>> score = score_function([accuracy, log_loss], probabilities=True)
    >>> score(True, {True: 0.8, False: 0.2})
    >>> accuracy.get(), round(log_loss.get(), 4)
    (1.0, 0.2231)
    """
    label_updates = [m.update for m in metrics if probabilities and m.requires_labels]
    value_updates = [m.update for m in metrics if not (probabilities and m.requires_labels)]
    if not label_updates and len(value_updates) == 1:
        return value_updates[0]
    if not value_updates and len(label_updates) == 1:
        update = label_updates[0]
        return lambda y, y_pred: update(y, max(y_pred, key=y_pred.get))

    def score(y, y_pred) -> None:
        if label_updates:
            label = max(y_pred, key=y_pred.get)
            for update in label_updates:
                update(y, label)
        for update in value_updates:
            update(y, y_pred)

    return score


def model_kind(model: base.Estimator) -> str | None:
    """``"class"`` for classifiers, ``"number"`` for regressors, else None."""
    if isinstance(model, base.Classifier):
        return "class"
    if isinstance(model, base.Regressor):
        return "number"
    return None


class Learner(OnlineLearner):
    """Predict-then-learn over events (dicts), with per-key models, delayed labels and drift detection.

    `transform` is applied to each event's features first (see `online.events.EventReader`).
    """

    def __init__(self, model: ModelConfig, events: EventsConfig, transform: Callable[[dict], dict] | None = None, state: LearnerState | None = None):
        self.model_config = model
        self.events_config = events
        self.prototype = build_pipeline(model.pipeline, modules=model.custom_modules)
        self.kind = model_kind(self.prototype)
        self.reader = EventReader(events, label_kind=label_kind(self.prototype), transform=transform)
        self._labels_tried: set = set()  # classifier labels the model is known to take (tried once on a copy)
        self._try_labels = self.kind == "class"
        self._declared_labels = self._check_declared_labels(events)
        self.delayed = events.id is not None
        self.max_pending = events.delayed_labels.max_pending
        self.ttl = events.delayed_labels.ttl_seconds
        self.time_field = events.time
        self.batch_size = model.batch.size if model.batch is not None else None
        if self.batch_size is not None:
            check_batch(model, estimator=self.prototype)
            if self.delayed:
                raise ConfigError("model.batch", "mini-batch learning does not join delayed labels (events.id): unset one of them")
            warm_up_chunks(self.prototype)  # pandas and the lazy imports of the first chunk, at start-up
        if state is None:
            state = LearnerState(metrics=build_metrics(model.metrics, self.prototype))
            if events.key is None:
                state.models[None] = self.prototype.clone()
            if model.drift is not None:
                state.drift_detector = check_drift_detector(model)
        self._new_model = fresh_model_factory(self.prototype)
        if events.key is not None and not isinstance(state.models, KeyedModels):
            restored = bool(state.models)
            state.models = KeyedModels(state.models, cache_size=events.key_cache_size, ttl=events.key_ttl_seconds)
            if not restored:
                state.models.dirty.clear()
        self.state = state
        self._bind()

    def _bind(self) -> None:
        metric = self.state.metrics
        # Classifiers predict probabilities when a metric needs them, and also when the model's
        # predict_one is River's default (the most probable class): the same label, one call less.
        final = self.prototype._last_step if isinstance(self.prototype, compose.Pipeline) else self.prototype
        default_label = type(final).predict_one is base.Classifier.predict_one
        probabilities = self.kind == "class" and (not metric.requires_labels or default_label)
        self._predict_name = "predict_proba_one" if probabilities else "predict_one"
        self._metric_update = score_function(list(metric), probabilities)
        # mini-batches: labels suffice when every metric takes labels and nobody asked for probabilities
        self._labels_suffice = self.batch_size is not None and probabilities and metric.requires_labels
        self._label_update = score_function(list(metric), False) if self._labels_suffice else None
        self._supervised = self.prototype._supervised

    def _model_for(self, key):
        model = self.state.models.get(key)
        if model is None:
            model = self.state.models[key] = self._new_model()
        return model

    # -- the hot path -----------------------------------------------------------------------

    @property
    def model(self) -> base.Estimator:
        """The model that learns (the global one; with ``events.key``, one per key: see `models`)."""
        if self.events_config.key is not None:
            raise AttributeError("a keyed learner has one model per key: learner.state.models[key]")
        return self.state.models[None]

    def predict(self, event: dict) -> Prediction:
        """Predict one event without learning from it or scoring it (counters unchanged; `event` unchanged).

        A classifier answers with its class probabilities when it has them (whatever its metrics
        need), so ``riverbeam predict`` and ``serve`` show them (`Prediction.record`). Raises
        `EventError` for a bad event, or for a key no model has learned yet.

        >>> from online.config import EventsConfig, ModelConfig
        >>> learner = Learner(ModelConfig(pipeline=[{"linear_model.LogisticRegression": {}}]), EventsConfig(target="y"))
        >>> learner.predict({"x": 1.0}).label(), learner.report()["events_seen"]
        (False, 0)
        """
        x, _, key = self.reader.split(dict(event) if type(event) is dict else event)
        model = self.state.models.get(key)
        if model is None:
            raise EventError(f"no model for key {key!r} yet")
        return Prediction(key, getattr(model, self._answer_name)(x), None, False)

    @functools.cached_property
    def _answer_name(self) -> str:
        """`predict`'s method: ``predict_proba_one`` for a classifier that has it (River's base class raises), else ``predict_one``."""
        final = self.prototype._last_step if isinstance(self.prototype, compose.Pipeline) else self.prototype
        probabilities = self.kind == "class" and type(final).predict_proba_one is not base.Classifier.predict_proba_one
        return "predict_proba_one" if probabilities else "predict_one"

    def process(self, event: dict) -> Prediction:
        """Predict, score and learn one event; raise `EventError` (nothing learned, nothing scored) for a bad one.

        The caller's `event` is not changed (as River's ``learn_one`` leaves its ``x``); `process_many`,
        the jobs' hot path, consumes the dicts it is given.
        """
        outcomes: list = []
        failures: list = []
        self.process_many([dict(event) if type(event) is dict else event], on_error=lambda i, error: failures.append(error), predictions=outcomes)
        if failures:
            raise failures[0]
        return outcomes[0][1]

    def process_many(self, events: Iterable[dict], on_error: Callable[[int, EventError], None] | None = None, predictions: list | None = None) -> int:
        """Process events in order; bad ones go to `on_error(index, error)`; returns how many were learned.

        With `predictions` (a list), each good event's `Prediction` is appended to it with its index.
        The one learn path of every mode, written once as River's `progressive_val_score` writes
        its loop: `_learned` routes each record (split, its key's model, a new label tried) and its
        mode's learn step predicts and learns it (per event; `_join` for delayed labels; in
        mini-batches, `_learn_chunks`); what was learned is scored here (metrics, drift, counters,
        predictions). A record the model fails on is that record's failure (`model_failure`), in
        every mode. No per-event work beyond split, predict, score and learn: a chunk without drift
        detection or predictions asked, labelled and predicted throughout, has its metrics updated in
        one pass, as River's own mini-batch loop does.
        """
        state = self.state
        labels_only = self._labels_suffice and predictions is None  # mini-batches: predict_many gives the same labels
        metric_update = self._label_update if labels_only else self._metric_update
        drift = state.drift_detector
        rejected = 0

        def fail(index: int, error: EventError, cause: BaseException | None = None) -> None:
            nonlocal rejected
            rejected += 1
            if on_error is None:
                raise error from cause
            on_error(index, error)

        learned = seen = 0
        # per event, one stream of outcomes (index, key, y_pred, y); in mini-batches, each chunk's (each key's share's) columns
        blocks = (self._learned(events, fail),) if self.batch_size is None else self._learn_chunks(events, fail, labels_only)
        plain = drift is None and predictions is None  # a chunk then needs only its metrics updated, as River's own loop does
        try:
            for outcomes in blocks:
                if type(outcomes) is tuple:  # a chunk's columns: (indices, keys, y_preds, ys), in event order
                    indices, keys, y_preds, ys = outcomes
                    if plain and None not in ys and None not in y_preds and {} not in y_preds:
                        total, counted, pairs = len(ys), 0, zip(indices, ys, y_preds)
                        while True:
                            try:
                                for index, y, y_pred in pairs:
                                    metric_update(y, y_pred)
                            except Exception as error:  # River's metric refused this event: the others go on
                                at = indices.index(index)
                                learned, seen, counted = learned + at - counted, seen + at - counted, at + 1
                                fail(index, model_failure(error), error)
                                continue
                            learned, seen = learned + total - counted, seen + total - counted
                            break
                        continue
                    outcomes = zip(indices, keys, y_preds, ys)
                for index, key, y_pred, y in outcomes:
                    try:  # free in Python 3.11 unless something raises
                        if y is not None:
                            if y_pred is not None and y_pred != {}:
                                metric_update(y, y_pred)
                            if drift is not None:
                                self._update_drift(y, y_pred, at=state.events_seen + seen + 1)
                            learned += 1
                    except Exception as error:  # River's metric or detector refused this event
                        fail(index, model_failure(error), error)
                        continue
                    seen += 1
                    if predictions is not None:
                        predictions.append((index, Prediction(key, y_pred, y, y is not None)))
        finally:  # counters are kept per call, not per event
            state.events_rejected += rejected
            state.events_seen += seen
            state.events_learned += learned
        return learned

    def _learned(self, events: Iterable, fail: Callable, start: int = 0, groups: dict | None = None):
        """The learn path's loop: each record routed, then learned by its mode's step; yields
        ``(index, key, y_pred, y)`` of each record predicted (and learned, when labelled).

        Routing: split (`online.events.EventReader`; with delayed labels the event's id and time are
        read first: `_meta`), its key's model (a new one for a new key), a label seen for the first
        time tried on a clone first (`_try_label`); `fail` gets the `EventError` of a record that
        cannot be routed, and the `model_failure` of one the model refuses. The learn step: per event
        (the fast path) the model predicts, then learns a labelled event, here; with delayed labels
        `_join` does; in mini-batches the routed record joins its key's group of the chunk in `groups`
        (``key -> (model, indices, features, labels)``), learned with the chunk (`_learn_chunks`).
        """
        split, models, model_for = self.reader.split, self.state.models, self._model_for
        try_labels, tried, try_label = self._try_labels, self._labels_tried, self._try_label
        delayed, meta, join = self.delayed, self._meta, self._join
        predict_name, supervised = self._predict_name, self._supervised
        last_model = predict = learn = when = None
        for index, event in enumerate(events, start):
            try:
                if delayed:
                    when = meta(event)
                x, y, key = split(event)
                model = models.get(key)
                if model is None:
                    model = model_for(key)
                if try_labels and y is not None and y not in tried:
                    try_label(model, x, y)
            except EventError as error:
                fail(index, error)
                continue
            if groups is not None:  # mini-batches: learned with its chunk
                group = groups.get(key)
                if group is None:
                    group = groups[key] = (model, [], [], [])
                group[1].append(index)
                group[2].append(x)
                group[3].append(y)
                continue
            try:  # free in Python 3.11 unless something raises
                if delayed:
                    key, y_pred = join(when, x, y, key, model)
                else:
                    if model is not last_model:  # bind once per model, not once per event
                        last_model, predict, learn = model, getattr(model, predict_name), model.learn_one
                    y_pred = predict(x)
                    if y is not None:  # learn before scoring: a failure leaves the metrics untouched
                        learn(x, y) if supervised else learn(x)
            except Exception as error:  # River refused this event: its own failure, nothing else's
                fail(index, model_failure(error), error)
                continue
            yield index, key, y_pred, y

    def _join(self, when: tuple, x: dict, y, key, model) -> tuple:
        """The delayed-label learn step (``events.id``); ``(key, y_pred)`` to score.

        A label whose id has a kept prediction is scored against it and learned with the kept
        features (and key); any other event is predicted, and learned when labelled; an unlabelled
        event with an id keeps its prediction (at most ``max_pending``, for ``ttl_seconds``)."""
        state = self.state
        event_id, now = when
        self._expire(now)
        pending = state.pending
        kept = pending.pop(event_id, None) if event_id is not None else None
        if kept is not None and y is not None:  # the label of a kept prediction
            x, y_pred, key, _ = kept
            state.labels_joined += 1
            model = self._model_for(key)
        else:
            y_pred = getattr(model, self._predict_name)(x)
        if y is not None:
            model.learn_one(x, y) if self._supervised else model.learn_one(x)
        elif event_id is not None:
            pending[event_id] = (x, y_pred, key, now + self.ttl)
            if len(pending) > self.max_pending:
                pending.popitem(last=False)
                state.labels_expired += 1
        return key, y_pred

    def _learn_chunks(self, events: Iterable, fail: Callable, labels_only: bool = False):
        """The mini-batch learn step (``model.batch.size``): the events in order, cut into chunks of that size.

        For each chunk, the good events (and, with ``events.key``, each key's share of them) become
        one `pandas.DataFrame`; the model predicts all of them (``predict_proba_many`` /
        ``predict_many``), every metric is updated per event with those predictions in the events'
        order, then the model learns the labelled ones (``learn_many``). This equals, bit for bit,
        River's own mini-batch loop over the same chunks. A chunk on which River fails is rejected
        as a whole (each of its events gets the failure); a chunk's failures are reported after it,
        in the events' order. Yields each chunk's columns ``(indices, keys, y_preds, ys)`` in event order.

        The fast path: a chunk the reader takes whole (`online.events.EventReader.split_chunk`: plain
        events, the same fields, finite numbers and booleans, labels the model takes) whose labels
        were all tried already is learned as that table, without routing its events one by one; any
        other chunk takes the general path (`_learned` groups each routed record), which names each
        bad event. Both give the same table, the same predictions and the same model.

        >>> from river import datasets, linear_model, metrics, preprocessing
        >>> import pandas as pd
        >>> from online.config import BatchConfig, EventsConfig, ModelConfig
        >>> config = ModelConfig(pipeline=[{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}],
        ...                      metrics=["Accuracy"], batch=BatchConfig(size=100))
        >>> learner = Learner(config, EventsConfig(target="label"))
        >>> learner.process_many([{**x, "label": y} for x, y in datasets.Phishing()])
        1250
        >>> model, accuracy, data = preprocessing.StandardScaler() | linear_model.LogisticRegression(), metrics.Accuracy(), list(datasets.Phishing())
        >>> for start in range(0, len(data), 100):
        ...     X, y = pd.DataFrame([x for x, _ in data[start:start + 100]]), pd.Series([y for _, y in data[start:start + 100]])
        ...     for y_true, y_pred in zip(y, model.predict_many(X)):
        ...         accuracy.update(y_true, y_pred)
        ...     model.learn_many(X, y)
        >>> learner.metric_values()["Accuracy"] == accuracy.get()
        True
        """
        events = events if isinstance(events, list) else list(events)
        size, split_chunk = self.batch_size, self.reader.split_chunk
        tried = self._labels_tried if self._try_labels else None
        for start in range(0, len(events), size):
            chunk = events[start:start + size]
            failures: list = []  # (index, error, cause), reported once the chunk is learned
            table = split_chunk(chunk)  # the fast path: a chunk the reader takes whole, as one table
            if table is not None and (tried is None or tried.issuperset(table[1])):
                frame, ys = table
                block = self._learn_table(None, self._model_for(None), range(start, start + len(chunk)), ys, failures, labels_only, frame=frame)
            else:
                groups: dict = {}  # model key -> (model, indices, features, labels), in event order
                for _ in self._learned(chunk, lambda *failure: failures.append(failure), start, groups):
                    pass  # every routed record joins its group: nothing is yielded
                block = self._learn_chunk(groups, failures, labels_only)
            if block is not None:
                yield block
            failures.sort(key=lambda failure: failure[0])
            for failure in failures:
                fail(*failure)

    def _learn_chunk(self, groups: dict, failures: list, labels_only: bool) -> tuple | None:
        """One chunk's groups predicted and learned (``learn_many``): the columns ``(indices, keys, y_preds, ys)`` in event order."""
        blocks = [block for key, (model, indices, xs, ys) in groups.items()
                  if (block := self._learn_table(key, model, indices, ys, failures, labels_only, xs=xs)) is not None]
        if len(blocks) < 2:
            return blocks[0] if blocks else None
        outcomes = sorted(itertools.chain.from_iterable(zip(*block) for block in blocks), key=lambda outcome: outcome[0])
        return tuple(zip(*outcomes))

    def _learn_table(self, key, model, indices, ys: list, failures: list, labels_only: bool, xs: list | None = None, frame=None) -> tuple | None:
        """One key's share of a chunk, its features as `frame` (`online.events.EventReader.split_chunk`) or as
        dicts `xs`, predicted then learned (``learn_many``): the columns ``(indices, keys, y_preds, ys)``, None when River refused it."""
        import pandas as pd

        probabilities = self._predict_name == "predict_proba_one" and not labels_only
        try:
            if frame is None:
                frame = pd.DataFrame(xs)  # as River's own mini-batch loop builds it
                if len(frame.columns) * len(xs) != sum(map(len, xs)):  # an event lacks a column: its NaN would poison the model
                    refused = uneven_features(xs)
                    failures.extend((indices[i], EventError(reason), None) for i, reason in refused.items())
                    indices, xs, ys = ([item for i, item in enumerate(items) if i not in refused] for items in (indices, xs, ys))
                    frame = pd.DataFrame(xs)
            if probabilities:  # one dict per row, as to_dict("records") builds them, without its per-row overhead
                proba = model.predict_proba_many(frame)
                classes = list(proba.columns)
                y_preds = [dict(zip(classes, row)) for row in proba.to_numpy().tolist()]
            else:
                predicted = model.predict_many(frame)
                # a classifier that knows no class yet (its first chunk) answers River's empty table: no predictions
                y_preds = [None] * len(frame) if isinstance(predicted, pd.DataFrame) and predicted.empty else predicted.tolist()
            labelled = None if None not in ys else [j for j, y in enumerate(ys) if y is not None]
            if labelled is None:
                model.learn_many(frame, pd.Series(ys)) if self._supervised else model.learn_many(frame)
            elif labelled:
                part = frame.iloc[labelled].reset_index(drop=True)
                model.learn_many(part, pd.Series([ys[j] for j in labelled])) if self._supervised else model.learn_many(part)
        except Exception as error:  # River refused this chunk: its events fail, nothing else
            failure = model_failure(error)
            failures.extend((index, failure, error) for index in indices)
            return None
        return indices, [key] * len(ys), y_preds, ys

    def _check_declared_labels(self, events: EventsConfig) -> frozenset | None:
        """``events.labels`` as a set, checked against the model (`ConfigError` naming the key)."""
        if events.labels is None:
            return None
        check_labels(events.labels, self.prototype)
        return frozenset(events.labels)

    def _check_label(self, y) -> None:
        """A new label must be one of ``events.labels``, or else of the type family of the labels
        learned so far (`online.config.label_family`): River's trees compare labels, and one
        ``"maybe"`` among booleans breaks every later event (or freezes the model). Raises `EventError`."""
        if self._declared_labels is not None:
            if y not in self._declared_labels:
                raise EventError(f"label '{self.events_config.target}' cannot be learned by this model: {_json(y)} is not one of events.labels {_json(self.events_config.labels)}")
            return
        family, known = label_family(y), self.state.label_family
        if known is not None and family != known:
            expected = "text" if known == "text" else "booleans or integers"
            raise EventError(
                f"label '{self.events_config.target}' cannot be learned by this model: {_json(y)} is "
                f"{'text' if family == 'text' else 'not text'}, and its labels are {expected} "
                "(a classifier's labels must all be of one type; events.labels declares them)"
            )

    def _try_label(self, model, x: dict, y) -> None:
        """Learn `y` once on a fresh clone of the model and copies of the metrics first (each label's first time only).

        River's own rules on labels differ by model (a binary model fails inside ``learn_one`` on a
        string): the clone finds out without touching the model or the metrics. A fresh clone, not
        a copy of `model`: copying a River object makes CPython drop its fast attribute layout
        (measured: the learner's throughput fell 12%). What a clone cannot see (a label of another
        type than the model's, which trees accept once and then fail on, or freeze) is checked
        first (`_check_label`). Raises `EventError`.
        """
        self._check_label(y)
        try:
            trial, metrics = self.prototype.clone(), build_metrics(self.model_config.metrics, self.prototype)
            y_pred = getattr(trial, self._predict_name)(x)
            trial.learn_one(x, y) if self._supervised else trial.learn_one(x)
            if y_pred is not None and y_pred != {}:
                score_function(list(metrics), self._predict_name == "predict_proba_one")(y, y_pred)
            getattr(trial, self._predict_name)(x)
        except Exception as error:
            raise EventError(f"label '{self.events_config.target}' cannot be learned by this model: {y!r} ({type(error).__name__}: {error})") from None
        self._labels_tried.add(y)
        if self.state.label_family is None:
            self.state.label_family = label_family(y)

    def _update_drift(self, y, y_pred, at: int) -> None:
        """Feed the drift detector this event's error; `at` is the event's number (its `events_seen` once counted)."""
        if self.kind == "class":
            label = max(y_pred, key=y_pred.get) if isinstance(y_pred, dict) and y_pred else y_pred
            error = float(label != y)
        else:
            error = abs(y - y_pred) if y_pred is not None else 0.0
        detector = self.state.drift_detector
        detector.update(error)
        if detector.drift_detected:
            self.state.drifts_detected += 1
            self.state.last_drift_at = at

    # -- delayed labels ---------------------------------------------------------------------

    def _meta(self, event) -> tuple[Any, float]:
        """The event's id and time, read before the reader consumes the event."""
        if type(event) is not dict:
            return None, time.time()
        moment = event.get(self.time_field) if self.time_field is not None else None
        if moment is None:
            return event.get(self.events_config.id), time.time()
        try:
            moment = event_time(moment)
        except ValueError as error:
            raise EventError(f"time field '{self.time_field}': {error}") from None
        return event.get(self.events_config.id), moment

    def _expire(self, now: float) -> None:
        pending = self.state.pending
        while pending:
            first = next(iter(pending.values()))
            if first[3] > now:
                break
            pending.popitem(last=False)
            self.state.labels_expired += 1

    # -- reporting and state ----------------------------------------------------------------

    def metric_values(self) -> dict[str, float]:
        """The current value of each metric, by name (`online.models.metric_name`); the first is the headline."""
        return {metric_name(metric): _plain(metric.get()) for metric in self.state.metrics}

    def headline(self) -> tuple[str, float]:
        name, value = next(iter(self.metric_values().items()))
        return name, value

    def report(self) -> dict:
        """Counters, metrics and drift, as plain JSON-able values."""
        state = self.state
        report = {
            "events_seen": state.events_seen,
            "events_learned": state.events_learned,
            "events_rejected": state.events_rejected,
            "models": len(state.models),
            "metrics": self.metric_values(),
        }
        if self.delayed:
            report.update(pending_labels=len(state.pending), labels_joined=state.labels_joined, labels_expired=state.labels_expired)
        if state.drift_detector is not None:
            report.update(drifts_detected=state.drifts_detected, last_drift_at=state.last_drift_at)
        if self.events_config.key_ttl_seconds is not None:
            report.update(models_expired=state.models_expired)
        return report

    def model_text(self) -> str:
        """A readable description of the model(s)."""
        if self.events_config.key is None:
            return repr(self.state.models[None])
        return f"{len(self.state.models)} keyed copies of:\n{self.prototype!r}"

    def snapshot(self) -> bytes:
        """The learner's whole state as bytes (pickle: loading it runs code, so only load trusted, verified blobs).

        Pickling moves the live model's attributes out of CPython's compact layout (measured: River
        then learns ~10% slower, for good); the global model continues as a `compact_copy` instead.
        """
        blob = pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)
        self.continue_compact()
        return blob

    def continue_compact(self) -> None:
        """After the state was pickled (`snapshot`, a model set's): what learns per event continues as a `compact_copy`.

        That is the global model, the metrics and the drift detector (`_compact_state`). Pickling
        an object slows it down for good: River's ``Accuracy.update`` took 0.42 µs per event after
        one checkpoint against 0.25 µs before (measured). The metric updates are bound again to the copies.
        """
        _compact_state(self.state)
        self._bind()

    # -- per-key models: incremental snapshots (online.learning.keyed_state, online.checkpoints.persistence) -----------

    @property
    def keyed(self) -> bool:
        """Whether models are kept per key in a `KeyedModels` store (``events.key`` set)."""
        return isinstance(self.state.models, KeyedModels)

    def learners_by_name(self) -> dict:
        """``{None: self}``: one unnamed learner (a `online.learning.model_set.ModelSet` names several)."""
        return {None: self}

    @property
    def keyed_models(self) -> KeyedModels | None:
        """The per-key models' store (None without ``events.key``): what an incremental checkpoint freezes and serialises."""
        return self.state.models if self.keyed else None

    def pending_labels(self) -> collections.OrderedDict:
        """A copy of the pending delayed labels (id -> (x, y_pred, key, expires)), in order."""
        return self.state.pending.copy()

    def trim_models(self) -> int:
        """At a safe point between batches: drop idle keyed models (TTL) and spill past the cache size; how many were dropped."""
        if not self.keyed:
            return 0
        dropped = self.state.models.trim()
        self.state.models_expired += dropped
        return dropped

    def core_snapshot(self) -> tuple[bytes, collections.OrderedDict]:
        """The state without its keyed models and pending labels (pickled now), and a copy of the pending labels.

        The models go into an incremental checkpoint's parts (`KeyedModels.freeze`); the pending
        labels' copy is compared with the previous one off the processing loop (`keyed_state.pending_delta`).
        """
        with self.core_state() as state:
            core = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        self.continue_compact()  # the metrics and the drift detector were pickled too
        return core, self.pending_labels()

    @contextlib.contextmanager
    def core_state(self):
        """The state with its keyed models and pending labels set aside while the block runs (to pickle the rest)."""
        state = self.state
        models, pending = state.models, state.pending
        state.models, state.pending = {}, collections.OrderedDict()
        try:
            yield state
        finally:
            state.models, state.pending = models, pending

    @classmethod
    def restore(cls, blob: bytes, model: ModelConfig, events: EventsConfig, transform=None, parts: Iterable[bytes] = ()) -> "Learner":
        """A learner continuing from `snapshot()` bytes (verify them first: see `online.checkpoints.store`).

        `parts` are an incremental checkpoint's keyed-state parts (`online.learning.keyed_state`), applied in order.
        """
        return cls.from_state(load_state(blob), model, events, transform, parts)

    @classmethod
    def from_state(cls, state: Any, model: ModelConfig, events: EventsConfig, transform=None, parts: Iterable[bytes] = ()) -> "Learner":
        """A learner continuing from an unpickled `LearnerState` (`restore`; each model of a `online.learning.model_set.ModelSet`):
        what it updates per event (the global model, the metrics, the drift detector) continues as a `compact_copy`
        (`_compact_state`), and `parts` are applied."""
        if not isinstance(state, LearnerState) or state.format != STATE_FORMAT:
            raise ValueError("checkpoint state is not a riverbeam learner state of this format")
        _compact_state(state)  # unpickled: learn in the compact layout
        learner = cls(model, events, transform=transform, state=state)
        if parts:
            from online.learning.keyed_state import apply_parts

            apply_parts(learner.state, parts)
        return learner


# Modules of riverbeam that moved (online/ split into wings): checkpoints written before still restore.
MOVED_MODULES = {
    "online.learner": "online.learning.learner", "online.model_set": "online.learning.model_set",
    "online.keyed_state": "online.learning.keyed_state", "online.learning_loop": "online.learning.loop",
}


class _StateUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        return super().find_class(MOVED_MODULES.get(module, module), name)


def load_state(blob: bytes) -> Any:
    r"""Unpickle a checkpoint's learner state, also one written before riverbeam's modules moved.

    >>> written_before = pickle.dumps(LearnerState(events_seen=3), protocol=2).replace(b"online.learning.learner\n", b"online.learner\n")
    >>> b"online.learner\n" in written_before, load_state(written_before).events_seen
    (True, 3)
    """
    return _StateUnpickler(io.BytesIO(blob)).load()


# CPython 3.11's compact attribute layout (Py_TPFLAGS_MANAGED_DICT): an instance keeps its attributes
# inline until its __dict__ is asked for, then in that dict for good. `compact_copy` relies on it;
# measured and tested on CPython 3.11 only: on any other interpreter it is pickle's plain copy.
COMPACT_LAYOUT = sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11)
_MANAGED_DICT = 1 << 4
_PLAIN_CLASSES: dict[type, bool] = {}  # class -> whether its instances pickle as (class, attribute dict)


def _plain_class(cls: type) -> bool:
    """Instances reduce the standard way (object's reduce, no slots, object's ``__setattr__``): state is an attribute dict."""
    plain = _PLAIN_CLASSES.get(cls)
    if plain is None:
        plain = _PLAIN_CLASSES[cls] = bool(
            cls.__flags__ & _MANAGED_DICT and not issubclass(cls, type) and cls not in copyreg.dispatch_table
            and cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__
            and cls.__setattr__ is object.__setattr__ and not any(getattr(k, "__slots__", ()) for k in cls.__mro__)
        )
    return plain


def _plain_names(cls: type, state: dict) -> bool:
    """Every name is a string that no data descriptor (a property) of the class intercepts."""
    return all(type(name) is str and not hasattr(type(getattr(cls, name, None)), "__set__") for name in state)


def _set_attributes(obj: Any, state: dict) -> None:
    """Pickle's state setter for a plain object: attribute by attribute, never through ``__dict__``."""
    for name, value in state.items():
        setattr(obj, name, value)


def _set_state_compactly(obj: Any, state: dict) -> None:
    """Pickle's state setter for a class with its own ``__setstate__``: run it on a scratch instance,
    then move the attributes it set onto `obj` one by one. When that ``__setstate__`` kept a
    reference to the scratch instance (a bound method, ``self`` in a registry or a weak reference:
    the scratch's reference counts grew), or set anything unusual, `obj` gets its own
    ``__setstate__`` instead (its attributes in a ``__dict__``: correct, only slower)."""
    cls = type(obj)
    try:
        scratch = cls.__new__(cls)
        held = sys.getrefcount(scratch)
        scratch.__setstate__(dict(state))
        captured = sys.getrefcount(scratch) != held or weakref.getweakrefcount(scratch) > 0
        attributes = None if captured else scratch.__dict__
    except Exception:  # anything unusual: the class's own way below
        attributes = None
    if attributes is None or not _plain_names(cls, attributes):
        obj.__setstate__(state)
        return
    _set_attributes(obj, attributes)


class _CompactPickler(pickle.Pickler):
    """A pickler whose plain objects unpickle in the compact layout, through pickle's public
    ``reducer_override`` and reduce ``state_setter`` (Python 3.8+): the standard reduce of each
    plain object, with a state setter that sets attributes instead of updating ``__dict__``.
    Only for copies in this process (`compact_copy`): the setters are named by reference, so a
    checkpoint is never pickled this way."""

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if not _plain_class(cls):
            return NotImplemented
        reduced = obj.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        if type(reduced) is not tuple or len(reduced) < 3 or type(reduced[2]) is not dict or not _plain_names(cls, reduced[2]):
            return NotImplemented
        setter = _set_attributes if getattr(cls, "__setstate__", None) is None else _set_state_compactly
        return (*reduced, *(None,) * (5 - len(reduced)), setter)


def compact_copy(obj: Any) -> Any:
    """An exact copy of `obj` (through pickle) whose objects keep CPython's compact attribute layout.

    In CPython 3.11 pickling an object, or unpickling one, moves its attributes from the compact
    inline layout into a ``__dict__`` for good, and every attribute access then costs more: River
    learns ~10% slower on a model that was checkpointed or restored (measured: StandardScaler |
    LogisticRegression, 9.6 against 8.7 µs/event). The copy is pickled with `_CompactPickler`
    (public pickle APIs) and unpickled by pickle's own C unpickler (~0.1 ms for that model). A
    class's own ``__setstate__`` runs on a scratch instance first; one that keeps a reference to
    its object (a bound method of itself) runs on the copy instead. Off CPython 3.11 (`COMPACT_LAYOUT`)
    this is pickle's plain copy; `obj` itself is returned when it cannot be copied.

    >>> from river import linear_model, preprocessing
    >>> model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    >>> model.learn_one({"a": 1.0, "b": 2.0}, True)
    >>> copy = compact_copy(model)
    >>> copy is not model, copy.predict_proba_one({"a": 2.0, "b": 1.0}) == model.predict_proba_one({"a": 2.0, "b": 1.0})
    (True, True)
    """
    try:
        if not COMPACT_LAYOUT:
            return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        buffer = io.BytesIO()
        _CompactPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return pickle.loads(buffer.getbuffer())
    except Exception:
        return obj


def _compact_state(state: LearnerState) -> None:
    """Replace what a learner updates per event (the global model, the metrics, the drift detector) by its `compact_copy`.

    Per-key models are not copied: a checkpoint pickles only the changed ones, and a restore
    unpickles each on first use (`online.learning.keyed_state`).
    """
    models = state.models
    if type(models) is dict and len(models) == 1 and None in models:
        models[None] = compact_copy(models[None])
    state.metrics = compact_copy(state.metrics)
    if state.drift_detector is not None:
        state.drift_detector = compact_copy(state.drift_detector)


FRESH_BATCH = 64  # fresh models unpickled at once (new keys)


def fresh_model_factory(prototype: base.Estimator) -> Callable[[], base.Estimator]:
    """A function making a fresh copy of `prototype`: its pickle kept as bytes and unpickled each time
    (several times faster than River's ``clone()``, and the same model: tested), or ``clone`` when it
    does not pickle (an unpicklable user-defined step).

    >>> from river import linear_model
    >>> proto = linear_model.LogisticRegression()
    >>> fresh = fresh_model_factory(proto)
    >>> fresh() is not fresh(), type(fresh()) is type(proto), fresh()._get_params() == proto.clone()._get_params()
    (True, True, True)
    """
    fresh = prototype.clone()
    if isinstance(fresh, compose.Pipeline):
        # River builds a pipeline's execution plan (signature introspection, ~150 µs) on first use;
        # built once here, every copy is born with it (pointing at its own steps: one pickle, one memo).
        fresh._plan = fresh._build_plan()
        _ = fresh._last_step
    try:
        pickle.loads(pickle.dumps(fresh, protocol=pickle.HIGHEST_PROTOCOL))
        batch = pickle.dumps([pickle.loads(pickle.dumps(fresh)) for _ in range(FRESH_BATCH)], protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return prototype.clone
    loads, pool = pickle.loads, []

    def new_model():  # unpickled FRESH_BATCH at a time: 2x cheaper per model than one by one (independent copies: tested)
        if not pool:
            pool.extend(loads(batch))
        return pool.pop()

    return new_model



class HeldChunk:
    """The records of one mini-batch chunk (``model.batch.size`` of them), held in order until it is complete.

    The one chunk holder of every job: the learning loop of every learning unit holds parts of
    source batches in it (`online.learning.loop.LearningLoop`; stream-learn's units one event at a
    time, each with its Beam log entry). `hold` takes a part of `count` records (at most `room`) and
    answers the complete chunk's parts, in order, once it holds `size` records (the next chunk then
    starts empty), else None; `release` answers the parts of an incomplete chunk (the inputs ended).
    `Learner.process_many` cuts the same chunks when given them, so a checkpoint between chunks and
    a restart that holds the logged remainder again equal one uninterrupted run.

    >>> chunk = HeldChunk(3)
    >>> chunk.hold("a"), chunk.hold("bc", count=2), chunk.hold("d")
    (None, ['a', 'bc'], None)
    >>> chunk.parts, chunk.count, chunk.room, chunk.release(), chunk.count
    (['d'], 1, 2, ['d'], 0)
    """

    def __init__(self, size: int):
        self.size = size
        self.parts: list = []
        self.count = 0  # records held

    @property
    def room(self) -> int:
        """How many records the chunk still needs."""
        return self.size - self.count

    def hold(self, part: Any, count: int = 1) -> list | None:
        if count > self.room:
            raise ValueError(f"a part of {count} records does not fit in the {self.room} left of a chunk of {self.size}")
        self.parts.append(part)
        self.count += count
        return self.release() if self.count == self.size else None

    def release(self) -> list:
        parts, self.parts, self.count = self.parts, [], 0
        return parts


def warm_up_chunks(prototype: base.Estimator) -> None:
    """Pay at start-up what the first mini-batch chunk would: importing pandas (~0.2 s) and the modules
    pandas and River import lazily on a first table (~50 ms measured in the daemon: narwhals' pandas
    backend, ``pyarrow.pandas_compat``), which a job of 50,000 events otherwise spends inside its
    processing (~1 µs/event). A fresh clone of the model predicts a one-row table (an unlearned
    model's answer is thrown away; a model that cannot answer yet is fine as well).

    >>> from river import linear_model
    >>> warm_up_chunks(linear_model.LogisticRegression())
    """
    import pandas as pd

    table = pd.DataFrame({"x": [0.0]}, copy=False)
    try:
        trial = prototype.clone()
        trial.predict_proba_many(table) if hasattr(trial, "predict_proba_many") else trial.predict_many(table)
    except Exception:  # an unlearned model that refuses to answer: the imports happened, or happen at the first chunk
        pass


def uneven_features(xs: list[dict]) -> dict[int, str]:
    """The events of one mini-batch whose features are not the chunk's, each with its reason.

    A chunk is learned as one table (`pandas.DataFrame`): an event missing a column, or bringing
    one the others lack, would fill it with NaN, and River's ``learn_many`` turns a model's weights
    to NaN on it, for good. The chunk's features are its most common feature set (the earliest of
    equals); the events that differ are refused.

    >>> uneven_features([{"a": 1, "b": 2}, {"a": 3}, {"a": 5, "b": 6}, {"a": 1, "b": 2, "c": 3}])
    {1: "features differ from its mini-batch chunk's (2 of 4 events have them): missing 'b' (model.batch learns a chunk as one table: every event of a chunk needs the same features)", 3: "features differ from its mini-batch chunk's (2 of 4 events have them): extra 'c' (model.batch learns a chunk as one table: every event of a chunk needs the same features)"}
    """
    sets = [frozenset(x) for x in xs]
    counts = collections.Counter(sets)
    common = max(counts, key=counts.__getitem__)  # the first of the most common, in event order
    refused = {}
    for i, names in enumerate(sets):
        if names != common:
            parts = [f"{label} {_names(found)}" for label, found in (("missing", common - names), ("extra", names - common)) if found]
            refused[i] = (
                f"features differ from its mini-batch chunk's ({counts[common]} of {len(xs)} events have them): {'; '.join(parts)} "
                "(model.batch learns a chunk as one table: every event of a chunk needs the same features)"
            )
    return refused


def _names(names, shown: int = 5) -> str:
    ordered = sorted(names)
    text = ", ".join(repr(name) for name in ordered[:shown])
    return text + (f" and {len(ordered) - shown} more" if len(ordered) > shown else "")


def model_failure(error: BaseException) -> EventError:
    """An exception River raised for one event, as that event's `EventError` (its dead-letter reason).

    >>> model_failure(ValueError("invalid literal for int() with base 10: 'maybe'"))
    EventError("the model failed on this event: ValueError: invalid literal for int() with base 10: 'maybe'")
    """
    return EventError(f"the model failed on this event: {type(error).__name__}: {error}")


def _json(value: Any) -> str:
    """A label (or a list of them) as JSON text, as the user wrote it: ``true``, ``"spam"``."""
    return json.dumps(value, default=repr)


def _plain(value: Any) -> Any:
    """A metric's value as plain JSON: a Python float (River may answer a numpy one), None for NaN/inf.

    >>> import numpy
    >>> type(_plain(numpy.float64(-0.0))), _plain(float("nan")), _plain(3)
    (<class 'float'>, None, 3)
    """
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return value


__all__ = ["Learner", "LearnerState", "Prediction", "EventError", "HeldChunk", "model_kind", "score_function", "compact_copy"]
