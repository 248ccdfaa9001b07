"""The Python API: River objects wherever a model spec goes, replay rows, the daemon embedded in a thread."""

from __future__ import annotations

import threading
import uuid

import orjson
import pytest
from river import compose, datasets, ensemble, evaluate, linear_model, metrics, optim, preprocessing, tree

import riverbeam
from core.errors import ConfigError
from tests.online.consume.test_daemon import SHORT_GROUP_TIMEOUTS, produce

PHISHING = [{**x, "label": y} for x, y in datasets.Phishing()]


@pytest.mark.parametrize("model", [
    preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.05)),
    tree.HoeffdingTreeClassifier(grace_period=50),
    preprocessing.StandardScaler() | ensemble.BaggingClassifier(linear_model.LogisticRegression(), n_models=3, seed=4),
])
def test_a_river_object_learns_exactly_like_river(model):
    learner = riverbeam.learner(model, metrics=["Accuracy", "LogLoss"], target="label")
    learner.process_many([dict(e) for e in PHISHING])
    expected = evaluate.progressive_val_score(datasets.Phishing(), model.clone(), metrics.Accuracy() + metrics.LogLoss())
    assert learner.metric_values() == {type(m).__name__: m.get() for m in expected}


def test_a_river_object_is_recorded_in_checkpoints_and_restored_without_it(tmp_path):
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(l2=0.01)
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in PHISHING[:600]))
    summary = riverbeam.replay(model, [str(path)], mode="learn", target="label", checkpoint_uri=str(tmp_path / "ckpt"))
    assert summary.counts == {"events_seen": 600, "events_dead_lettered": 0, "events_learned": 600, "events_learned_total": 600}
    restored = riverbeam.restore_learner(riverbeam.checkpoint_store(str(tmp_path / "ckpt")).load_latest())
    assert restored.model_config.pipeline[1] == {"linear_model.LogisticRegression": {**restored.model_config.pipeline[1]["linear_model.LogisticRegression"], "l2": 0.01}}
    direct = riverbeam.learner(model, target="label")
    direct.process_many([dict(e) for e in PHISHING[:600]])
    probe = {k: v for k, v in PHISHING[700].items() if k != "label"}
    assert restored.process(dict(probe)).y_pred == direct.process(dict(probe)).y_pred


def test_iter_replay_yields_river_like_rows(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in PHISHING))
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    rows = list(riverbeam.iter_replay(model, [str(path)], target="label", every=250, metrics=["Accuracy"]))
    expected = [(e["Step"], e["Accuracy"].get())  # River yields its live metric: read it as it goes
                for e in evaluate.iter_progressive_val_score(datasets.Phishing(), model.clone(), metrics.Accuracy(), step=250)]
    assert [(r["events"], r["Accuracy"]) for r in rows] == expected
    assert all(r["elapsed"] >= 0 for r in rows)


def test_what_a_spec_cannot_hold_is_named():
    model = compose.FuncTransformer(lambda x: x) | linear_model.LogisticRegression()
    with pytest.raises(ConfigError, match=r"pipeline\[0\]\.func: a function cannot be written in a model spec"):
        riverbeam.model_config(model)


def test_consume_runs_embedded_in_a_thread(tmp_path, kafka_bootstrap, topic):
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in PHISHING[:800]])
    config = {
        "kafka": {"bootstrap_servers": kafka_bootstrap, "topic": topic, "group_id": f"g-{uuid.uuid4().hex[:8]}",
                  "consumer": SHORT_GROUP_TIMEOUTS["kafka-python"]},
        "model": riverbeam.model_config(preprocessing.StandardScaler() | linear_model.LogisticRegression(), ["Accuracy"]).model_dump(exclude_defaults=True),
        "events": {"target": "label"},
        "checkpoint": {"uri": str(tmp_path / "ckpt"), "every_events": 200},
        "metrics": {"port": None},
    }
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(riverbeam.consume(config, until_caught_up=True)))
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert result["events_learned"] == 800
    direct = riverbeam.learner(preprocessing.StandardScaler() | linear_model.LogisticRegression(), target="label")
    direct.process_many([dict(e) for e in PHISHING[:800]])
    assert result["units"]["all"]["metrics"] == direct.metric_values()


def test_the_users_own_object_is_the_one_that_learns():
    """As with River's learn_one: riverbeam.learner(model) learns `model` itself (it used to learn a copy,
    leaving the user's weights {}), and ends equal to River learning a clone directly."""
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    twin = model.clone()
    learner = riverbeam.learner(model, target="label")
    for x, y in datasets.Phishing():
        learner.process({**x, "label": y})
        twin.learn_one(x, y)
    assert learner.model is model
    assert model["LogisticRegression"].weights == twin["LogisticRegression"].weights != {}


def test_no_call_changes_the_callers_event_and_predict_learns_nothing():
    learner = riverbeam.learner(linear_model.LogisticRegression(), target="label")
    event = {"x": 1.0, "label": True}
    learner.process(event)
    assert event == {"x": 1.0, "label": True}  # the target used to be popped from the caller's dict
    query = {"x": 1.0, "label": False}
    before = learner.report()
    prediction = learner.predict(query)
    assert query == {"x": 1.0, "label": False} and learner.report() == before  # nothing learned, nothing scored
    assert prediction.learned is False and set(prediction.y_pred) == {False, True}


def test_metrics_come_back_as_plain_python_floats():
    learner = riverbeam.learner(linear_model.LogisticRegression(), metrics=["Accuracy", "ROCAUC"], target="label")
    for x, y in list(datasets.Phishing())[:50]:
        learner.process({**x, "label": y})
    assert {name: type(value) for name, value in learner.metric_values().items()} == {"Accuracy": float, "ROCAUC": float}


def test_load_config_and_config_check_take_a_job_kind_to_the_same_class(tmp_path, capsys):
    """The job kinds live below the CLI (online.config): the API and ``riverbeam config check`` share them."""
    from online.config import ServeJobConfig, job_config_class
    from riverbeam.cli import main

    path = tmp_path / "serve.yaml"
    path.write_text(f"checkpoint: {{uri: {tmp_path / 'ck'}}}\nserve: {{port: 9000}}\n")
    config = riverbeam.load_config(str(path), "serve")
    assert type(config) is job_config_class("serve") is ServeJobConfig and config.serve.port == 9000
    assert main(["config", "check", str(path), "--job", "serve"]) == 0 and "valid serve configuration" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="unknown job kind 'serving': one of consume, replay, preprocess, serve"):
        riverbeam.load_config(str(path), "serving")
    assert main(["config", "check", str(path), "--job", "serving"]) == 2
    assert capsys.readouterr().err.strip() == "riverbeam: error: unknown job kind 'serving': one of consume, replay, preprocess, serve"
