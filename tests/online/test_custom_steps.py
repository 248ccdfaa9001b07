"""User-defined steps and feature functions, from modules the configuration lists explicitly."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess

import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing

from core.errors import ConfigError
from online.config import ConsumeJobConfig, EventsConfig, FeaturesConfig, ModelConfig, ReplayJobConfig
from online.events import load_feature_transform
from online.learning.learner import Learner
from online.checkpoints.persistence import checkpoint_store, restore_learner, save_learner
from tests.online.custom_steps import Clip, derive

MODULE = "tests.online.custom_steps"
PIPELINE = [{f"{MODULE}.Clip": {"limit": 2.0}}, {"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}]


def phishing(n=600):
    return [{**x, "label": y} for x, y in itertools.islice(datasets.Phishing(), n)]


def test_a_listed_modules_step_and_function_learn_exactly_like_river():
    model = ModelConfig(custom_modules=[MODULE], pipeline=PIPELINE, metrics=["Accuracy", "LogLoss"])
    features = FeaturesConfig(function=f"{MODULE}:derive")
    learner = Learner(model, EventsConfig(target="label"), transform=load_feature_transform(features, [MODULE]))
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
    (f"{MODULE}:derived", "features.function: tests.online.custom_steps has no function derived (did you mean derive?)"),
    (f"{MODULE}:NOT_A_STEP", "has no function NOT_A_STEP"),
    (f"{MODULE}:Clip", "has no function Clip"),
    ("tests.online.no_such_module:f", "cannot import tests.online.no_such_module"),
])
def test_wrong_feature_functions_are_one_line_errors(function, message):
    job = ReplayJobConfig(model=ModelConfig(custom_modules=["tests.online"], pipeline=PIPELINE), features=FeaturesConfig(function=function))
    with pytest.raises(ConfigError) as error:
        job.check_semantics()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_function_failing_on_one_event_fails_that_event_only():
    model = ModelConfig(custom_modules=[MODULE], pipeline=PIPELINE, metrics=["Accuracy"])
    learner = Learner(model, EventsConfig(target="label"), transform=load_feature_transform(FeaturesConfig(function=f"{MODULE}:derive"), [MODULE]))
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


# features.function: only functions defined in a module listed in model.custom_modules (issue 26 item 10)

REFUSED_FUNCTIONS = [
    ("subprocess:run", "features.function: subprocess is not listed in model.custom_modules"),
    ("os:system", "features.function: os is not listed in model.custom_modules"),
    (f"{MODULE}:run_command", f"features.function: {MODULE}:run_command is subprocess.run, imported into {MODULE}"),
]


def job_yaml(tmp_path, function, kind="replay"):
    path = tmp_path / f"{kind}.yaml"
    kafka = "kafka: {topic: events}\ncheckpoint: {uri: %s}\n" % (tmp_path / "ckpt") if kind == "consume" else ""
    path.write_text(
        f"{kafka}model:\n  custom_modules: [{MODULE}]\n  pipeline: [{{linear_model.LogisticRegression: {{}}}}]\n"
        f"events: {{target: label}}\nfeatures: {{function: '{function}'}}\n"
    )
    return str(path)


@pytest.mark.parametrize("kind", ["replay", "consume"])
@pytest.mark.parametrize(("function", "message"), REFUSED_FUNCTIONS)
def test_config_check_refuses_a_function_outside_the_listed_modules(tmp_path, capsys, kind, function, message):
    from riverbeam.cli import main

    assert main(["config", "check", job_yaml(tmp_path, function, kind)]) != 0
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


@pytest.mark.parametrize(("function", "message"), REFUSED_FUNCTIONS)
def test_every_start_refuses_a_function_outside_the_listed_modules(tmp_path, function, message):
    """Daemon, replay, serve and restores load the transform through these, config check or not."""
    from online.checkpoints.persistence import ModelsSpec
    from online.checkpoints.persistence import LearnerSpec
    from online.replay.engine import load_transform

    model = ModelConfig(custom_modules=[MODULE], pipeline=[{"linear_model.LogisticRegression": {}}])
    features = FeaturesConfig(function=function)
    consume = ConsumeJobConfig(models=[model], kafka={"topic": "t"}, checkpoint={"uri": str(tmp_path)}, features=features)
    starts = [
        lambda: LearnerSpec.load(model, EventsConfig(target="label"), features),
        lambda: ModelsSpec.of(consume),
        lambda: load_transform(ReplayJobConfig(model=model, features=features)),
    ]
    for start in starts:
        with pytest.raises(ConfigError, match=re.escape(message)):
            start()


def test_a_listed_function_is_allowed_for_every_model_of_a_job(tmp_path):
    """With several models, the features section is shared: a module any of them lists allows the function."""
    plain = ModelConfig(name="plain", pipeline=[{"linear_model.LogisticRegression": {}}])
    custom = ModelConfig(name="custom", custom_modules=[MODULE], pipeline=PIPELINE)
    job = ConsumeJobConfig(models=[plain, custom], kafka={"topic": "t"}, checkpoint={"uri": str(tmp_path)},
                           features=FeaturesConfig(function=f"{MODULE}:derive"))
    job.check_semantics()
    from online.checkpoints.persistence import ModelsSpec

    assert ModelsSpec.of(job).transform.function is derive


# model.custom_modules from the working directory, as `python -m` would find them (issue 25 item 6)

USER_MODULE = '''
from river import base


class Double(base.Transformer):
    def transform_one(self, x):
        return {k: 2 * v for k, v in x.items()}


def keep_two(x):
    return {"a": x["a"], "b": x["b"]}
'''


def test_custom_modules_import_from_the_working_directory(tmp_path):
    (tmp_path / "myfeatures.py").write_text(USER_MODULE)
    (tmp_path / "job.yaml").write_text(
        "model:\n  custom_modules: [myfeatures]\n"
        "  pipeline: [{myfeatures.Double: {}}, {compose.FuncTransformer: {func: 'myfeatures:keep_two'}}, {linear_model.LinearRegression: {}}]\n"
        "  metrics: [MAE]\nevents: {target: y}\nfeatures: {function: 'myfeatures:keep_two'}\n"
    )
    (tmp_path / "events.jsonl").write_text("".join(f'{{"a": {i % 7}, "b": {i % 3}, "c": 1, "y": {i % 5}}}\n' for i in range(50)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    riverbeam = shutil.which("riverbeam")
    checked = subprocess.run([riverbeam, "config", "check", "job.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert "valid replay configuration" in checked.stdout
    replayed = subprocess.run([riverbeam, "replay", "--config", "job.yaml", "--input", "events.jsonl", "--mode", "evaluate", "--json"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["events_learned"] == 50
