"""A model set is a learner: checkpointed like one (incrementally with per-key models), restored through the learner's one path."""

from __future__ import annotations

import copy
import gc
import itertools
import sys
import time

import pytest

from online.checkpoints.persistence import Cadence, Checkpointer, ModelsSpec, checkpoint_store, resume
from online.config import EventsConfig, ModelConfig
from online.learning.interface import OnlineLearner
from online.learning.learner import Learner
from online.learning.model_set import ModelSet

MODELS = {
    "lr": ModelConfig(pipeline=[{"preprocessing.StandardScaler": {}}, {"linear_model.LinearRegression": {}}], metrics=["MAE"]),
    "mean": ModelConfig(pipeline=[{"dummy.StatisticRegressor": {"statistic": {"stats.Mean": {}}}}], metrics=["MAE"]),
}
SHOPS = "abcdef"


def shop_events(start: int, stop: int) -> list[dict]:
    """Per-shop linear data; every fifth event comes without its label, which arrives three events later (delayed labels)."""
    events = []
    for i in range(start, stop):
        shop = SHOPS[i % len(SHOPS)]
        y = (SHOPS.index(shop) + 1) * float(i % 7) + 1.0
        if i % 5 == 0:
            events.append({"id": f"e{i}", "shop": shop, "x": float(i % 7)})
        elif i % 5 == 3:
            events.append({"id": f"e{i - 3}", "shop": SHOPS[(i - 3) % len(SHOPS)], "x": float((i - 3) % 7),
                           "y": (SHOPS.index(SHOPS[(i - 3) % len(SHOPS)]) + 1) * float((i - 3) % 7) + 1.0})
        else:
            events.append({"id": f"e{i}", "shop": shop, "x": float(i % 7), "y": y})
    return events


def test_a_model_set_and_a_learner_are_both_online_learners():
    learner = Learner(MODELS["lr"], EventsConfig(target="y"))
    models = ModelSet({"lr": learner})
    assert isinstance(learner, OnlineLearner) and isinstance(models, OnlineLearner)
    assert learner.learners_by_name() == {None: learner} and models.learners_by_name() == {"lr": learner}


def test_a_keyed_model_set_is_checkpointed_incrementally_and_restores_equal(tmp_path):
    """Per-key models in several models: each checkpoint writes only what changed (parts), and the set restores equal."""
    events = EventsConfig(target="y", key="shop", id="id")
    spec = ModelsSpec(MODELS, events)
    store = checkpoint_store(str(tmp_path))
    models, restored = resume(store, spec)
    assert models.keyed
    checkpointer = Checkpointer(store, models, spec, Cadence(every_events=40), restored=restored)
    data = shop_events(0, 301)  # the last event's label is still to come
    for start in range(0, len(data), 20):
        batch = data[start:start + 20]
        models.process_many(copy.deepcopy(batch), on_error=lambda i, error: pytest.fail(str(error)))
        checkpointer.add(len(batch))
        if checkpointer.due():
            checkpointer.checkpoint({"events/0": start + len(batch)})
    checkpointer.checkpoint({"events/0": len(data)}, wait=True)
    checkpointer.close()
    manifest = store.list()[0]
    assert manifest["events_seen"] == len(data)
    assert len(manifest.get("parts") or []) >= 2  # incremental: a base and deltas, not the whole set each time
    assert models.pending_labels()  # delayed labels pending at the checkpoint travel in the parts too

    again, checkpoint = resume(checkpoint_store(store.uri), spec)
    assert checkpoint.id == manifest["id"]
    assert again.report() == models.report()
    assert list(again.pending_labels()) == list(models.pending_labels())
    for name in MODELS:
        mine, theirs = again.learners[name].state.models, models.learners[name].state.models
        assert sorted(mine) == sorted(theirs) == sorted(SHOPS)
        for shop in SHOPS:
            assert mine[shop].predict_one({"x": 3.0}) == theirs[shop].predict_one({"x": 3.0})
    more = shop_events(301, 420)
    again.process_many(copy.deepcopy(more))
    models.process_many(copy.deepcopy(more))
    assert again.report() == models.report()


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="CPython 3.11's attribute layout")
def test_a_model_set_continues_and_restores_in_the_compact_layout(tmp_path):
    """As a single learner does: after a snapshot each global model continues as a compact copy, and a restore starts from one."""
    spec = ModelsSpec(MODELS, EventsConfig(target="y"))
    store = checkpoint_store(str(tmp_path))
    models, _ = resume(store, spec)
    models.process_many([{"x": float(i), "y": 2.0 * i} for i in range(20)])

    def scaler_attributes_in_a_dict(model_set) -> bool:  # a materialized __dict__ is the only plain dict a StandardScaler refers to
        return any(type(r) is dict for r in gc.get_referents(model_set.learners["lr"].state.models[None]["StandardScaler"]))

    blob = models.snapshot()
    assert not scaler_attributes_in_a_dict(models)
    store.save(blob, events_seen=20, events_learned=20, metrics={}, model="", positions={}, config_hash=spec.hash, extra={"learning": spec.recorded()})
    again, _ = resume(store, spec)
    assert not scaler_attributes_in_a_dict(again)
    assert again.report() == models.report()


def test_a_keyed_model_set_drops_idle_models_at_its_safe_point():
    """The checkpointer's safe point trims every model of a set (`ModelSet.trim_models`), not only a single learner's."""
    models = ModelSet({name: Learner(model, EventsConfig(target="y", key="shop", key_ttl_seconds=10)) for name, model in MODELS.items()})
    models.process_many([{"shop": shop, "x": 1.0, "y": 2.0} for shop in SHOPS])
    later = time.time() + 100  # every model idle for longer than its time to live
    for learner in models.learners.values():
        learner.state.models.clock = lambda: later
    assert models.trim_models() == 2 * len(SHOPS)
    assert [len(learner.state.models) for learner in models.learners.values()] == [0, 0]
    assert [learner.report()["models_expired"] for learner in models.learners.values()] == [len(SHOPS)] * 2


def test_every_model_of_a_set_sees_every_event_and_a_rejection_is_reported_once():
    models = ModelSet({name: Learner(model, EventsConfig(target="y")) for name, model in MODELS.items()})
    rejected: list = []
    data = [{"x": float(i), "y": 2.0 * i} for i in range(30)]
    data[7] = {"x": "seven", "y": 1.0}
    learned = models.process_many(copy.deepcopy(data), on_error=lambda i, error: rejected.append(i))
    assert learned == 29 and rejected == [7]
    for name, model in MODELS.items():
        alone = Learner(model, EventsConfig(target="y"))
        alone.process_many(copy.deepcopy([e for i, e in enumerate(data) if i != 7]))
        assert models.learners[name].metric_values() == alone.metric_values()
    assert list(itertools.chain(*[[r["model"]] for r in models.leaderboard()])) == sorted(MODELS, key=lambda n: models.learners[n].metric_values()["MAE"])
