"""Predictions from a checkpoint, without learning: one record per event.

`prediction_record` is the one place that turns an event into what riverbeam answers for it
(``riverbeam predict`` prints it as a JSON line, ``riverbeam serve`` returns it over HTTP):
`Learner.predict`, written as every job writes a prediction (`online.learning.learner.Prediction.record`): the
model key (per-key models), the prediction, the class probabilities (classifiers) and the id of
the checkpoint the model came from. A line that cannot be predicted gets an error record
(``{"line": n, "error": reason}``), never a crash.

>>> import tempfile
>>> from online.checkpoints.store import CheckpointStore
>>> from online.config import EventsConfig, ModelConfig
>>> from online.learning.learner import Learner
>>> from online.checkpoints.persistence import save_learner
>>> learner = Learner(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y"))
>>> for i in range(50):
...     _ = learner.process({"x": float(i % 5), "y": 2.0 * (i % 5)})
>>> store = CheckpointStore(tempfile.mkdtemp()); _ = save_learner(store, learner, positions={})
>>> for line in predict_lines(store.load_latest(), ['{"x": 1.0}', 'oops']):
...     print(line)
{"line":1,"prediction":2.33287...,"checkpoint":"000000000001-..."}
{"line":2,"error":"not JSON: ..."}
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Iterator

import orjson

from online.checkpoints.store import Checkpoint, CheckpointStore
from online.events import EventError
from online.learning.learner import Learner
from online.checkpoints.persistence import restore_model
from online.checkpoints.units import restore_any


def prediction_record(learner: Learner, event: Any, checkpoint_id: str | None) -> dict:
    """What riverbeam answers for one decoded event: `Learner.predict`, written as `Prediction.record`
    (a predicting job's record: no label, no learned flag) with the checkpoint's id. Raises `EventError`
    (the daemon's reason) for a bad one; nothing is learned and the learner's counters do not move.

    >>> from online.config import EventsConfig, ModelConfig
    >>> learner = Learner(ModelConfig(pipeline=[{"linear_model.LogisticRegression": {}}]), EventsConfig(target="y"))
    >>> for i in range(20):
    ...     _ = learner.process({"x": float(i % 2), "y": i % 2 == 1})
    >>> prediction_record(learner, {"x": 1.0}, "ck-1")
    {'prediction': True, 'probabilities': {'false': 0.48..., 'true': 0.51...}, 'checkpoint': 'ck-1'}
    >>> prediction_record(learner, {"x": "a"}, "ck-1")
    Traceback (most recent call last):
    ...
    online.events.EventError: feature 'x' is not a number: 'a'
    """
    return learner.predict(event).record(learning=False, checkpoint=checkpoint_id)


def predict_lines(checkpoint: Checkpoint, lines: Iterable[str | bytes], model: str | None = None, learner: Learner | None = None) -> Iterator[str]:
    """Yield one JSON line per input line: ``{"line": n, **prediction_record(...)}``, or an error.

    `n` is the line's number in the input: blank lines are skipped but counted. Lines may be
    bytes: one that is not UTF-8 is one error record. `model` names one model of a checkpoint of
    several (``models:``; default the first); `learner` is that model when the caller restored it
    already (`latest_model`).
    """
    learner = learner if learner is not None else restore_model(checkpoint, model)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                raise EventError(f"not JSON: {error}") from None
            record = {"line": number, **prediction_record(learner, event, checkpoint.id)}
        except EventError as error:
            record = {"line": number, "error": str(error)}
        yield orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def latest_model(store: CheckpointStore, checkpoint_id: str | None = None, model: str | None = None) -> tuple[Checkpoint, Learner] | None:
    """The checkpoint to predict with and its model (`model` of several); None when the store holds none.

    Without `checkpoint_id`, the latest that verifies and restores: one that verifies but cannot
    be restored (an unknown class, a module that cannot be imported) is skipped for the previous
    good one with a warning. With it, that one or a one-line error (`online.checkpoints.store.UnrestorableError`).
    Per-key models checkpointed in units (`online.checkpoints.units`) are merged, with the newest unit's checkpoint.
    An unknown `model` is a one-line `ConfigError`.
    """
    restore = functools.partial(restore_model, name=model)
    if checkpoint_id:
        return store.restore(checkpoint_id, restore)
    return restore_any(store, restore)  # per-key models: every unit of the keyed layout, merged
