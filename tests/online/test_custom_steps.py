"""User-defined steps and feature functions, from modules the configuration lists explicitly."""

from __future__ import annotations

import itertools

import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing

from core.errors import ConfigError
from online.config import EventsConfig, FeaturesConfig, ModelConfig
from online.events import load_feature_transform
from online.learner import Learner
from online.persistence import checkpoint_store, restore_learner, save_learner
from tests.online.custom_steps import Clip, derive

MODULE = "tests.online.custom_steps"
PIPELINE = [{f"{MODULE}.Clip": {"limit": 2.0}}, {"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}]


def phishing(n=600):
    return [{**x, "label": y} for x, y in itertools.islice(datasets.Phishing(), n)]


def test_a_listed_modules_step_and_function_learn_exactly_like_river():
    model = ModelConfig(custom_modules=[MODULE], pipeline=PIPELINE, metrics=["Accuracy", "LogLoss"])
    features = FeaturesConfig(function=f"{MODULE}:derive")
    learner = Learner(model, EventsConfig(target="label"), transform=load_feature_transform(features))
    events = phishing()
    learner.process_many([dict(e) for e in events])
    river_model = Clip(limit=2.0) | preprocessing.StandardScaler() | linear_model.LogisticRegression()
    stream = ((derive({k: v for k, v in e.items() if k != "label"}), e["label"]) for e in events)
    expected = evaluate.progressive_val_score(stream, river_model, metrics.Accuracy() + metrics.LogLoss())
    assert learner.metric_values() == {type(m).__name__: m.get() for m in expected}


def test_a_step_from_a_module_not_listed_is_refused():
    with pytest.raises(ConfigError, match=r"pipeline\[0\]: river has no module tests.online.custom_steps .*model.custom_modules"):
        ModelConfig(pipeline=PIPELINE, metrics=["Accuracy"]).check_semantics()
    config = ModelConfig(custom_modules=["tests.online.other"], pipeline=PIPELINE, metrics=["Accuracy"])
    with pytest.raises(ConfigError, match="river has no module"):
        config.check_semantics()


@pytest.mark.parametrize(("step", "message"), [
    (f"{MODULE}.Clipp", f"{MODULE} has no Clipp (did you mean Clip?)"),
    (f"{MODULE}.NOT_A_STEP", "is not a River object"),
    ("tests.online.no_such_module.Step", "cannot import tests.online.no_such_module"),
])
def test_wrong_custom_steps_are_one_line_errors(step, message):
    config = ModelConfig(custom_modules=["tests.online"], pipeline=[{step: {}}], metrics=["Accuracy"])
    with pytest.raises(ConfigError) as error:
        config.check_semantics()
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("function", "message"), [
    (f"{MODULE}:derived", "has no function derived"),
    (f"{MODULE}:NOT_A_STEP", "has no function NOT_A_STEP"),
    ("tests.online.no_such_module:f", "cannot import tests.online.no_such_module"),
])
def test_wrong_feature_functions_are_one_line_errors(function, message):
    with pytest.raises(ConfigError, match=message):
        FeaturesConfig(function=function).check_semantics()


def test_the_function_failing_on_one_event_fails_that_event_only():
    model = ModelConfig(custom_modules=[MODULE], pipeline=PIPELINE, metrics=["Accuracy"])
    learner = Learner(model, EventsConfig(target="label"), transform=load_feature_transform(FeaturesConfig(function=f"{MODULE}:derive")))
    events = phishing(50)
    events[10]["poison"] = True
    rejected = []
    learned = learner.process_many(events, on_error=lambda i, e: rejected.append((i, str(e))))
    assert learned == 49 and [i for i, _ in rejected] == [10]
    assert "poison event" in rejected[0][1]


def test_custom_steps_checkpoint_and_restore(tmp_path):
    model = ModelConfig(custom_modules=[MODULE], pipeline=PIPELINE, metrics=["Accuracy"])
    events_config = EventsConfig(target="label")
    learner = Learner(model, events_config)
    events = phishing(400)
    learner.process_many([dict(e) for e in events[:200]])
    store = checkpoint_store(str(tmp_path / "ckpt"))
    save_learner(store, learner, positions={"replay": 200})
    restored = restore_learner(store.load_latest())
    learner.process_many([dict(e) for e in events[200:]])
    restored.process_many([dict(e) for e in events[200:]])
    assert restored.metric_values() == learner.metric_values()
