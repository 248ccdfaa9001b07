"""Several models on one stream (``models:``): each event predicted and learned by every one.

A `ModelSet` holds one `online.learning.learner.Learner` per named model; the learning loop
(`online.learning.loop.LearningLoop`) hands every event to each of them in turn, so each model's
metrics equal `river.evaluate.progressive_val_score` for that model alone. Its `online.checkpoints.persistence.ModelsSpec` is the
`online.checkpoints.persistence.LearnerSpec` of a set: the checkpoint bridge saves and restores a `ModelSet`
through it like a single learner (one state holding every model, one configuration hash, the
recorded configuration of each model), so the cadence, signing, fencing and positions are the
ones every job shares.

On restore, the configured models must be the checkpoint's: a model added to or removed from
the configuration stops the job with one line naming them, unless `allow_model_change`
(``--allow-model-change``) says to start the added ones from scratch and drop the removed ones.
A model whose own configuration changed is always refused (use a new name for a new model).

>>> import tempfile
>>> from online.config import EventsConfig, ModelConfig
>>> from online.checkpoints.persistence import ModelsSpec, checkpoint_store, resume
>>> models = {"lr": ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]),
...           "mean": ModelConfig(pipeline=[{"dummy.StatisticRegressor": {"statistic": {"stats.Mean": {}}}}], metrics=["MAE"])}
>>> spec = ModelsSpec(models, EventsConfig(target="y"))
>>> store = checkpoint_store(tempfile.mkdtemp())
>>> learners, _ = resume(store, spec)
>>> for i in range(20):
...     _ = learners.process({"x": float(i), "y": 2.0 * i + 1})
>>> _ = store.save(learners.snapshot(), events_seen=20, events_learned=20, metrics={}, model="", positions={}, config_hash=spec.hash,
...                extra={"learning": spec.recorded()})
>>> again, checkpoint = resume(store, spec)
>>> [row["model"] for row in again.leaderboard()], again.report()["by_model"]["mean"]["metrics"] == learners.report()["by_model"]["mean"]["metrics"]
(['lr', 'mean'], True)
>>> resume(store, ModelsSpec({"lr": models["lr"]}, EventsConfig(target="y")))
Traceback (most recent call last):
...
core.errors.ConfigError: models: checkpoint ... holds the models lr, mean; the configuration removes mean: restore them, use a new checkpoint URI, or pass --allow-model-change to start added models from scratch and drop removed ones
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from typing import Any

from online.learning.leaderboard import leaderboard
from online.learning.learner import Learner, LearnerState

log = logging.getLogger(__name__)

SET_FORMAT = 1

__all__ = ["ModelSet", "ModelSetState"]


@dataclass
class ModelSetState:
    """What a checkpoint of several models holds: each model's `LearnerState`, by name, in order."""

    states: dict[str, LearnerState] = field(default_factory=dict)
    format: int = SET_FORMAT


class ModelSet:
    """Named learners fed the same events; the first is the primary (its counters are the unit's)."""

    keyed = False  # per-key models with several models are refused (online.config)

    def __init__(self, learners: dict[str, Learner]):
        self.learners = dict(learners)

    @property
    def primary(self) -> Learner:
        return next(iter(self.learners.values()))

    @property
    def state(self) -> LearnerState:
        return self.primary.state

    def items(self) -> list[tuple[str, Learner]]:
        return list(self.learners.items())

    def process(self, event: dict):
        """One event through every model (each on its own copy); the primary's `Prediction`."""
        outcomes = [learner.process(dict(event)) for learner in self.learners.values()]
        return outcomes[0]

    def trim_models(self) -> int:
        return 0

    def metric_values(self) -> dict:
        return self.primary.metric_values()

    def headline(self) -> tuple[str, Any]:
        return self.primary.headline()

    def report(self) -> dict:
        """The primary model's report, and every model's under ``by_model``."""
        return {**self.primary.report(), "by_model": {name: learner.report() for name, learner in self.learners.items()}}

    def leaderboard(self) -> list[dict]:
        """The models ranked by the primary's first metric (`online.learning.leaderboard`), best first."""
        return leaderboard(self.report()["by_model"], self.primary.state.metrics[0])

    def model_text(self) -> str:
        return "\n".join(f"[{name}] {learner.model_text()}" for name, learner in self.learners.items())

    def snapshot(self) -> bytes:
        """Every model's state as bytes (pickle: load only trusted, verified blobs)."""
        return pickle.dumps(ModelSetState({name: learner.state for name, learner in self.learners.items()}), protocol=pickle.HIGHEST_PROTOCOL)
