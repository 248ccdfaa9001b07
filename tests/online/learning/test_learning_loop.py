"""The learning loop with a learning curve: slicing batches to record points changes nothing else."""

from __future__ import annotations

import orjson
import pytest
from river import datasets

from online.config import EventsConfig, ModelConfig
from online.learning.learner import Learner
from online.learning.loop import LearningLoop
from online.observability import LearningCurve
from online.sources import KafkaBatch

PIPELINE = [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}]


class Collected:
    """Dead letters and predictions as the loop hands them out (offset, reason / offset, prediction)."""

    def __init__(self):
        self.dead, self.predicted = [], []

    def dead_letter(self, batch, index, reason, model=None):
        self.dead.append((batch.offsets[index], reason, model))

    def predictions(self, batch, outcomes):
        self.predicted += [(batch.offsets[index], outcome.y_pred) for index, outcome in outcomes]


def _values() -> list[bytes]:
    values = [orjson.dumps({**x, "label": y}) for x, y in datasets.Phishing()][:600]
    values[13], values[250] = b"{broken", orjson.dumps({"long_url": "long", "label": True})  # rejected, at known offsets
    values[40] = orjson.dumps({k: v for k, v in orjson.loads(values[40]).items() if k != "label"})  # no label: predicted, not learned
    return values


def _run(batch_size: int | None, curve: LearningCurve | None):
    model = {"pipeline": PIPELINE, "metrics": ["Accuracy", "LogLoss"], **({"batch": {"size": batch_size}} if batch_size else {})}
    learners = [("a", Learner(ModelConfig(**model), EventsConfig(target="label"))),
                ("b", Learner(ModelConfig(**{**model, "pipeline": PIPELINE[1:]}), EventsConfig(target="label")))]
    sinks = Collected()
    loop = LearningLoop(learners, dead_letters=sinks, predictions=sinks, curve=curve)
    values = _values()
    for start in range(0, len(values), 137):  # batches that do not line up with the curve's step
        loop.feed(KafkaBatch(("events", 0), values[start : start + 137], list(range(start, start + 137))[: len(values[start : start + 137])]))
    loop.flush()
    return [learner.metric_values() for _, learner in learners], [learner.state.events_learned for _, learner in learners], sinks


@pytest.mark.parametrize("batch_size", [None, 4])
def test_recording_a_curve_leaves_learning_dead_letters_and_predictions_as_they_were(batch_size):
    curve = LearningCurve(every=7, size=40)
    with_curve = _run(batch_size, curve)
    without = _run(batch_size, None)
    assert with_curve[0] == without[0] and with_curve[1] == without[1] == [597, 597]
    assert with_curve[2].dead == without[2].dead and {offset for offset, _, _ in without[2].dead} == {13, 250}
    assert with_curve[2].predicted == without[2].predicted and len(without[2].predicted) == 598
    points = curve.json()
    assert set(points) == {"a", "b"} and curve.every > 7  # thinned past 40 points: the step doubled
    xs = [x for x, _ in points["a"]]
    assert xs == sorted(xs) and len(xs) <= 41 and xs[-1] <= 597 and set(points["a"][-1][1]) == {"Accuracy", "LogLoss"}
