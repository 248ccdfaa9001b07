"""What every learner offers a job: one model (`online.learning.learner.Learner`) or several
(`online.learning.model_set.ModelSet`) behind the same methods, so no caller asks which one it holds.

The learning loop feeds it (`process_many`), the checkpoint bridge (`online.checkpoints.persistence`)
snapshots it whole (`snapshot`) or, with per-key models, incrementally (`keyed`, `core_snapshot`,
`pending_labels`, `keyed_models`), and every job reports from it (`report`, `metric_values`,
`headline`, `model_text`). Restoring is each class's own ``restore`` (a set restores each of its
models through `Learner`'s, so both get the compact copy and the incremental parts).

>>> from online.config import EventsConfig, ModelConfig
>>> from online.learning.learner import Learner
>>> from online.learning.model_set import ModelSet
>>> one = Learner(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y"))
>>> isinstance(one, OnlineLearner), isinstance(ModelSet({"lr": one}), OnlineLearner)
(True, True)
"""

from __future__ import annotations

import abc
import collections
from typing import Any, Callable, Iterable

__all__ = ["OnlineLearner"]


class OnlineLearner(abc.ABC):
    """The learner interface: predict-score-learn, report, and snapshot for checkpoints.

    ``state`` is the (primary) `online.learning.learner.LearnerState`: its counters are the unit's.
    """

    state: Any

    @abc.abstractmethod
    def process(self, event: dict) -> Any:
        """Predict, score and learn one event; its `online.learning.learner.Prediction` (`EventError` for a bad one)."""

    @abc.abstractmethod
    def process_many(self, events: Iterable[dict], on_error: Callable[[int, Exception], None] | None = None, predictions: list | None = None) -> int:
        """Process `events` in order (consuming the dicts); bad ones to `on_error(index, error)`; how many were learned."""

    @abc.abstractmethod
    def metric_values(self) -> dict[str, Any]:
        """The current value of each metric, by name; the first is the headline."""

    @abc.abstractmethod
    def headline(self) -> tuple[str, Any]:
        """The first metric's name and value."""

    @abc.abstractmethod
    def report(self) -> dict:
        """Counters and metrics as plain JSON-able values."""

    @abc.abstractmethod
    def model_text(self) -> str:
        """A readable description of the model(s)."""

    @abc.abstractmethod
    def snapshot(self) -> bytes:
        """The whole state as bytes (a pickle: load only trusted, verified blobs)."""

    @abc.abstractmethod
    def learners_by_name(self) -> dict:
        """Its learners by model name: a model set's, or ``{None: the learner}``."""

    @abc.abstractmethod
    def trim_models(self) -> int:
        """At a safe point between batches: drop idle per-key models and spill past the cache; how many were dropped."""

    @property
    @abc.abstractmethod
    def keyed(self) -> bool:
        """Whether models are kept per key, in `keyed_models` (then checkpointed incrementally)."""

    @property
    @abc.abstractmethod
    def keyed_models(self) -> Any:
        """The per-key models' store (`online.learning.keyed_state.KeyedModels`, or a set's view over its models' stores):
        ``freeze``, ``serialize``, ``delta_records``, ``thaw`` for an incremental checkpoint. None when not `keyed`."""

    @abc.abstractmethod
    def core_snapshot(self) -> tuple[bytes, collections.OrderedDict]:
        """The state without its per-key models and pending labels (pickled now), and a copy of the pending labels."""

    @abc.abstractmethod
    def pending_labels(self) -> collections.OrderedDict:
        """A copy of the pending delayed labels, in order (the keys of an incremental checkpoint's pending records)."""
