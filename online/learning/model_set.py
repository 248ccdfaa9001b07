"""Several models on one stream (``models:``): each event predicted and learned by every one.

A `ModelSet` holds one `online.learning.learner.Learner` per named model; the learning loop
(`online.learning.loop.LearningLoop`) hands every event to each of them in turn, so each model's
metrics equal `river.evaluate.progressive_val_score` for that model alone. Its `online.checkpoints.persistence.ModelsSpec` is the
`online.checkpoints.persistence.LearnerSpec` of a set: the checkpoint bridge saves and restores a `ModelSet`
through it like a single learner (one state holding every model, one configuration hash, the
recorded configuration of each model), so the cadence, signing, fencing and positions are the
ones every job shares.

A `ModelSet` is a learner (`online.learning.interface.OnlineLearner`), as a `Learner` is: it
processes, reports and snapshots through the same methods, and with per-key models (``events.key``)
it is checkpointed incrementally like one learner, its models' keys named ``(model, key)`` in the
parts. `ModelSet.restore` restores each model through `Learner.from_state` (the one restore path):
each gets the compact copy and its incremental parts.

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

import collections
import contextlib
import logging
import pickle
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from online.config import EventsConfig, ModelConfig
from online.learning.interface import OnlineLearner
from online.learning.keyed_state import KeyedModels, encode_part, iter_part, merge_parts
from online.learning.leaderboard import leaderboard
from online.learning.learner import Learner, LearnerState, load_state

log = logging.getLogger(__name__)

SET_FORMAT = 1

__all__ = ["ModelSet", "ModelSetState", "KeyedModelSet"]


@dataclass
class ModelSetState:
    """What a checkpoint of several models holds: each model's `LearnerState`, by name, in order."""

    states: dict[str, LearnerState] = field(default_factory=dict)
    format: int = SET_FORMAT


class ModelSet(OnlineLearner):
    """Named learners fed the same events; the first is the primary (its counters are the unit's)."""

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

    def learners_by_name(self) -> dict[str, Learner]:
        return self.learners

    def process(self, event: dict):
        """One event through every model (each on its own copy); the primary's `Prediction`."""
        outcomes = [learner.process(dict(event)) for learner in self.learners.values()]
        return outcomes[0]

    def process_many(self, events: Iterable[dict], on_error: Callable[[int, Exception], None] | None = None, predictions: list | None = None) -> int:
        """`events` through every model in turn (each but the last on copies); the primary's learned count and predictions.

        An event any model rejects goes to `on_error` once, with the first model's reason (without
        `on_error`, the first rejection raises, as `Learner.process_many` does).

        >>> from online.config import EventsConfig, ModelConfig
        >>> config = ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"])
        >>> models = ModelSet({"a": Learner(config, EventsConfig(target="y")), "b": Learner(config, EventsConfig(target="y"))})
        >>> models.process_many([{"x": 1.0, "y": 2.0}, {"x": "?", "y": 1.0}], on_error=lambda i, error: print(i, error))
        1 feature 'x' is not a number: '?'
        1
        >>> models.report()["by_model"]["b"]["events_learned"]
        1
        """
        events = events if isinstance(events, list) else list(events)
        failures: dict[int, Exception] = {}
        record = None if on_error is None else failures.setdefault
        learners = list(self.learners.values())
        learned = 0
        for position, learner in enumerate(learners):
            batch = events if position == len(learners) - 1 else [dict(e) if type(e) is dict else e for e in events]
            count = learner.process_many(batch, record, predictions if position == 0 else None)
            learned = count if position == 0 else learned
        for index in sorted(failures):
            on_error(index, failures[index])
        return learned

    def trim_models(self) -> int:
        """Every model's safe point (`Learner.trim_models`); how many per-key models were dropped in all."""
        return sum(learner.trim_models() for learner in self.learners.values())

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
        """Every model's state as bytes (pickle: load only trusted, verified blobs); each global model continues as a compact copy."""
        blob = pickle.dumps(ModelSetState({name: learner.state for name, learner in self.learners.items()}), protocol=pickle.HIGHEST_PROTOCOL)
        for learner in self.learners.values():
            learner.continue_compact()
        return blob

    # -- per-key models: incremental snapshots, keys named (model, key) -----------------------------

    @property
    def keyed(self) -> bool:
        """Whether the models are kept per key (they share ``events``: all of them or none)."""
        return all(learner.keyed for learner in self.learners.values())

    @property
    def keyed_models(self) -> "KeyedModelSet | None":
        return KeyedModelSet({name: learner.keyed_models for name, learner in self.learners.items()}) if self.keyed else None

    def pending_labels(self) -> collections.OrderedDict:
        """Every model's pending delayed labels, keyed ``(model, id)``."""
        return collections.OrderedDict(((name, key), value) for name, learner in self.learners.items() for key, value in learner.state.pending.items())

    def core_snapshot(self) -> tuple[bytes, collections.OrderedDict]:
        """Every model's state without its per-key models and pending labels (one `ModelSetState`, pickled now), and `pending_labels`."""
        with contextlib.ExitStack() as stack:
            states = {name: stack.enter_context(learner.core_state()) for name, learner in self.learners.items()}
            core = pickle.dumps(ModelSetState(states), protocol=pickle.HIGHEST_PROTOCOL)
        for learner in self.learners.values():
            learner.continue_compact()  # the metrics and the drift detectors were pickled too
        return core, self.pending_labels()

    @classmethod
    def restore(cls, blob: bytes, models: dict[str, ModelConfig], events: EventsConfig, transform=None, parts: Iterable[bytes] = ()) -> "ModelSet":
        """The models continuing from `snapshot()` (or `core_snapshot()` and `parts`) bytes: each through `Learner.from_state`.

        A configured model the state does not hold starts from scratch (the configuration check is
        `online.checkpoints.persistence.ModelsSpec.restore`'s); models the state holds and `models` does not are dropped.
        """
        state = load_state(blob)
        if not isinstance(state, ModelSetState) or state.format != SET_FORMAT:
            raise ValueError("checkpoint state is not a riverbeam model set of this format")
        own_parts = _parts_by_model(parts)
        return cls({
            name: Learner.from_state(state.states[name], model, events, transform, own_parts.get(name, ())) if name in state.states
            else Learner(model, events, transform=transform)
            for name, model in models.items()
        })  # fmt: skip


class KeyedModelSet:
    """The per-key models of a set's models as one store for an incremental checkpoint
    (`online.checkpoints.persistence.Checkpointer`): each model's `KeyedModels`, records keyed ``(model, key)``."""

    def __init__(self, stores: dict[str, KeyedModels]):
        self.stores = stores

    def freeze(self) -> int:
        return sum(store.freeze() for store in self.stores.values())

    def serialize(self, budget: float | None = None) -> bool:
        """Pickle frozen models for at most `budget` seconds in all (every one with None); True once all are done."""
        deadline = None if budget is None else time.perf_counter() + budget
        for store in self.stores.values():
            if not store.serialize(None if deadline is None else max(0.0, deadline - time.perf_counter())):
                return False
        return True

    def delta_records(self) -> list:
        return [(kind, (name, key), value) for name, store in self.stores.items() for kind, key, value in store.delta_records()]

    def thaw(self) -> None:
        for store in self.stores.values():
            store.thaw()


def _parts_by_model(parts: Iterable[bytes]) -> dict[str, list[bytes]]:
    """A set's incremental parts (records keyed ``(model, key)``) as one part per model (records keyed ``key``), in order.

    >>> from online.learning.keyed_state import MODEL, PENDING, decode_part
    >>> split = _parts_by_model([encode_part([(MODEL, ("a", 1), b"x"), (PENDING, ("b", 7), b"p")]), encode_part([(MODEL, ("a", 2), b"y")])])
    >>> {name: decode_part(part) for name, [part] in split.items()}
    {'a': [(0, 1, b'x'), (0, 2, b'y')], 'b': [(1, 7, b'p')]}
    """
    parts = list(parts)
    if not parts:
        return {}
    records: dict[str, list] = collections.defaultdict(list)
    for kind, (name, key), value in iter_part(merge_parts(parts)):
        records[name].append((kind, key, value))
    return {name: [encode_part(own)] for name, own in records.items()}
