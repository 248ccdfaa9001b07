"""Predictions from a checkpoint, one JSON line per input line, without learning.

A line that cannot be predicted gets an error record (``{"line": n, "error": reason}``), never
a crash.

>>> import tempfile
>>> from online.checkpoints import CheckpointStore
>>> from online.config import EventsConfig, ModelConfig
>>> from online.learner import Learner
>>> from online.persistence import save_learner
>>> learner = Learner(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y"))
>>> for i in range(50):
...     _ = learner.process({"x": float(i % 5), "y": 2.0 * (i % 5)})
>>> store = CheckpointStore(tempfile.mkdtemp()); _ = save_learner(store, learner, positions={})
>>> for line in predict_lines(store.load_latest(), ['{"x": 1.0}', 'oops']):
...     print(line)
{"line":1,"prediction":2.33287...}
{"line":2,"error":"not JSON: ..."}
"""

from __future__ import annotations

from typing import Iterable, Iterator

import orjson

from online.checkpoints import Checkpoint
from online.events import EventError
from online.persistence import restore_learner


def predict_lines(checkpoint: Checkpoint, lines: Iterable[str | bytes]) -> Iterator[str]:
    """Yield one JSON line per input line: the prediction (and class probabilities), or an error."""
    learner = restore_learner(checkpoint)
    models = learner.state.models
    split = learner.reader.split
    classifier = learner.kind == "class"
    for number, line in enumerate(lines, start=1):
        record: dict = {"line": number}
        try:
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                raise EventError(f"not JSON: {error}") from None
            x, _, key = split(event)
            model = models.get(key)
            if model is None:
                raise EventError(f"no model for key {key!r} in this checkpoint")
            if key is not None:
                record["key"] = key
            if classifier:
                probabilities = model.predict_proba_one(x)
                record["prediction"] = max(probabilities, key=probabilities.get) if probabilities else None
                record["probabilities"] = {str(k): v for k, v in probabilities.items()}
            else:
                record["prediction"] = model.predict_one(x)
        except EventError as error:
            record["error"] = str(error)
        yield orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY).decode()
