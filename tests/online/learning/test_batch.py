"""Mini-batch learning (``model.batch``): exactly River's own mini-batch loop, in the learner, replay and the daemon."""

from __future__ import annotations

import copy
import itertools
import random
import time

import orjson
import pandas as pd
import pytest
from river import datasets, linear_model, metrics, optim, preprocessing

from core.configuration import parse_config
from core.errors import ConfigError
from online.checkpoints.store import CheckpointStore
from online.config import ConsumeJobConfig, EventsConfig, ModelConfig, ReplayJobConfig
from online.learning.learner import Learner
from online.learning.loop import LearningLoop
from online.replay.job import ReplayOptions, run_replay
from online.sources import KafkaBatch
from tests.online.consume.test_daemon import SOURCE_HEADER, job_config as daemon_config, produce, read_topic, run_daemon, start_daemon
from tests.online.test_readers import write_jsonl
from tests.online.replay.test_replay import kill_replay_after_checkpoints

PHISHING = [{**x, "label": y} for x, y in datasets.Phishing()]
TRUMP = [{**x, "y": y} for x, y in datasets.TrumpApproval()]
LOGREG = [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {"optimizer": {"optim.SGD": {"lr": 0.1}}}}]


def classifier_config(size: int, **changes) -> ModelConfig:
    return ModelConfig(pipeline=LOGREG, metrics=["Accuracy", "LogLoss"], batch={"size": size}, **changes)


def bare_minibatch(data: list[tuple[dict, object]], size: int, model, metric, proba: bool) -> dict:
    """River's own mini-batch loop: predict the chunk, score each event, learn the chunk."""
    for start in range(0, len(data), size):
        chunk = data[start:start + size]
        X, y = pd.DataFrame([x for x, _ in chunk]), pd.Series([y for _, y in chunk])
        y_pred = model.predict_proba_many(X).to_dict("records") if proba else model.predict_many(X).tolist()
        for y_true, prediction in zip(y, y_pred):
            metric.update(y_true, prediction)
        model.learn_many(X, y)
    return {type(m).__name__: m.get() for m in metric} if isinstance(metric, metrics.base.Metrics) else {type(metric).__name__: metric.get()}


def phishing_reference(size: int, events=PHISHING) -> dict:
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.1))
    data = [({k: v for k, v in e.items() if k != "label"}, e["label"]) for e in events]
    return bare_minibatch(data, size, model, metrics.Accuracy() + metrics.LogLoss(), proba=True)


@pytest.mark.parametrize("size", [1, 7, 100, 5000])
def test_classifier_equals_the_bare_river_minibatch_loop(size):
    learner = Learner(classifier_config(size), EventsConfig(target="label"))
    assert learner.process_many(copy.deepcopy(PHISHING)) == len(PHISHING)
    assert learner.metric_values() == phishing_reference(size)
    assert learner.state.events_seen == len(PHISHING)


@pytest.mark.parametrize("size", [20, 256])  # at 10, River's StandardScaler.learn_many fails on TrumpApproval (a complex variance)
def test_regressor_equals_the_bare_river_minibatch_loop(size):
    config = ModelConfig(pipeline=[{"preprocessing.StandardScaler": {}}, {"linear_model.LinearRegression": {}}], metrics=["MAE", "RMSE"], batch={"size": size})
    learner = Learner(config, EventsConfig(target="y"))
    learner.process_many(copy.deepcopy(TRUMP))
    data = [({k: v for k, v in e.items() if k != "y"}, e["y"]) for e in TRUMP]
    expected = bare_minibatch(data, size, preprocessing.StandardScaler() | linear_model.LinearRegression(), metrics.MAE() + metrics.RMSE(), proba=False)
    assert learner.metric_values() == expected
    per_event = Learner(config.model_copy(update={"batch": None}), EventsConfig(target="y"))
    per_event.process_many(copy.deepcopy(TRUMP))
    assert per_event.metric_values() != expected  # a different trade: mini-batches are not per-event learning


def test_a_step_without_learn_many_is_refused_naming_it_and_the_estimators_that_can():
    data = {"model": {"pipeline": [{"preprocessing.StandardScaler": {}}, {"tree.HoeffdingTreeClassifier": {}}], "batch": {"size": 100}},
            "events": {"target": "label"}, "kafka": {"topic": "t"}, "checkpoint": {"uri": "/tmp/x"}}
    job = parse_config(data, ConsumeJobConfig, environ={})
    with pytest.raises(ConfigError) as caught:
        job.check_semantics()
    message = str(caught.value)
    assert message.startswith("model.pipeline[1]: tree.HoeffdingTreeClassifier cannot learn a mini-batch (no learn_many)")
    assert "linear_model.LogisticRegression" in message and "naive_bayes.GaussianNB" in message
    with pytest.raises(ConfigError, match=r"models\[1\].pipeline\[0\]: tree.HoeffdingTreeClassifier"):
        parse_config({"models": [{"pipeline": LOGREG}, {"pipeline": [{"tree.HoeffdingTreeClassifier": {}}], "batch": {"size": 5}}],
                      "events": {"target": "label"}}, ReplayJobConfig, environ={}).check_semantics()
    with pytest.raises(ConfigError, match="delayed labels"):
        Learner(classifier_config(10), EventsConfig(target="label", id="id"))
    with pytest.raises(Exception, match="greater than 0"):
        ModelConfig(pipeline=LOGREG, batch={"size": 0})


def test_bad_events_are_rejected_and_the_rest_of_each_chunk_is_learned():
    events = copy.deepcopy(PHISHING[:300])
    bad = {5, 6, 150, 299}
    for i in bad:
        events[i] = {**events[i], "label": "maybe"} if i % 2 else {"label": True, **{k: "x" for k in events[i] if k != "label"}}
    learner = Learner(classifier_config(50), EventsConfig(target="label"))
    rejected = []
    learned = learner.process_many(events, on_error=lambda i, e: rejected.append(i))
    assert sorted(rejected) == sorted(bad) and learned == 300 - len(bad)
    # the reference: the same chunks of 50 records, each without its bad ones
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.1))
    metric = metrics.Accuracy() + metrics.LogLoss()
    for start in range(0, 300, 50):
        chunk = [({k: v for k, v in e.items() if k != "label"}, e["label"]) for i, e in enumerate(PHISHING[start:start + 50], start) if i not in bad]
        bare_minibatch(chunk, 50, model, metric, proba=True)
    assert learner.metric_values() == {type(m).__name__: m.get() for m in metric}


def test_keyed_models_each_learn_their_share_of_every_chunk():
    events = [{**e, "user": f"u{i % 3}"} for i, e in enumerate(PHISHING[:600])]
    learner = Learner(classifier_config(40), EventsConfig(target="label", key="user"))
    predictions: list = []
    learner.process_many(copy.deepcopy(events), predictions=predictions)
    models = {f"u{k}": preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.1)) for k in range(3)}
    metric = metrics.Accuracy() + metrics.LogLoss()
    expected_predictions = {}
    for start in range(0, 600, 40):
        chunk = events[start:start + 40]
        outcome = {}
        for user, model in models.items():
            rows = [(i, e) for i, e in enumerate(chunk, start) if e["user"] == user]
            X = pd.DataFrame([{k: v for k, v in e.items() if k not in ("label", "user")} for _, e in rows])
            outcome.update(zip([i for i, _ in rows], model.predict_proba_many(X).to_dict("records")))
            model.learn_many(X, pd.Series([e["label"] for _, e in rows]))
        for i in sorted(outcome):
            metric.update(events[i]["label"], outcome[i])
        expected_predictions.update(outcome)
    assert learner.metric_values() == {type(m).__name__: m.get() for m in metric}
    assert [i for i, _ in predictions] == list(range(600))
    assert all(p.y_pred == expected_predictions[i] and p.key == events[i]["user"] for i, p in predictions)


def test_the_loop_cuts_exact_chunks_across_batches_and_checkpoints_only_between_them():
    values = [orjson.dumps(e) for e in PHISHING]
    values[333] = b"{not json"
    learner = Learner(classifier_config(100), EventsConfig(target="label"))
    dead: list = []

    class Sink:
        def dead_letter(self, batch, index, reason, model=None):
            dead.append(batch.offsets[index])

    loop = LearningLoop([("m", learner)], dead_letters=Sink())
    rng = random.Random(3)
    offset, boundaries = 0, []
    while offset < len(values):
        size = rng.randint(1, 260)
        loop.feed(KafkaBatch(("t", 0), values[offset:offset + size], list(range(offset, min(offset + size, len(values))))))
        offset += size
        boundaries.append(loop.positions.get(("t", 0), 0))
        assert loop.positions.get(("t", 0), 0) % 100 == 0  # a checkpoint taken now would fall between chunks
        assert learner.state.events_seen + learner.state.events_rejected == loop.positions.get(("t", 0), 0)
    assert loop.read[("t", 0)] == len(values) and loop.positions[("t", 0)] == 1200  # the last 50 are held
    loop.flush()
    assert loop.positions[("t", 0)] == len(values) and dead == [333]
    clean = [e for i, e in enumerate(PHISHING) if i != 333]
    whole = Learner(classifier_config(100), EventsConfig(target="label"))
    events = copy.deepcopy(PHISHING)
    events[333] = None
    whole.process_many(events, on_error=lambda i, e: None)
    assert learner.metric_values() == whole.metric_values()
    assert len(clean) == learner.state.events_seen


def replay_job(tmp_path, size: int) -> str:
    import yaml

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"model": {"pipeline": LOGREG, "metrics": ["Accuracy", "LogLoss"], "batch": {"size": size}}, "events": {"target": "label"}}))
    return str(path)


def test_replay_learn_in_batch_mode_equals_the_bare_loop_and_resumes_after_kill_9(tmp_path):
    events = PHISHING * 16  # 20k events
    write_jsonl(tmp_path / "a.jsonl", events[:9_000])
    write_jsonl(tmp_path / "b.jsonl", events[9_000:])
    inputs = str(tmp_path / "*.jsonl")
    job = parse_config({"model": {"pipeline": LOGREG, "metrics": ["Accuracy", "LogLoss"], "batch": {"size": 300}}, "events": {"target": "label"}}, ReplayJobConfig, environ={})
    reference = run_replay(job, ReplayOptions([inputs], checkpoint_uri=str(tmp_path / "whole"), checkpoint_every=1000))
    assert reference.leaderboard[0]["metrics"] == phishing_reference(300, events)
    assert all(m["positions"]["replay"]["line"] % 300 in (0, 9_000 % 300) for m in CheckpointStore(str(tmp_path / "whole")).list()[1:])

    ckpt = tmp_path / "killed"
    interrupted = kill_replay_after_checkpoints(replay_job(tmp_path, 300), inputs, ckpt, every=1000, count=4)
    assert 0 < interrupted["events_seen"] < len(events) and interrupted["events_seen"] % 300 == 0  # at a chunk boundary
    resumed = run_replay(job, ReplayOptions([inputs], checkpoint_uri=str(ckpt), checkpoint_every=1000))
    keys = ("events_seen", "events_learned", "metrics", "positions")
    assert {k: resumed.checkpoint[k] for k in keys} == {k: reference.checkpoint[k] for k in keys}


DAEMON_MODEL = {"pipeline": LOGREG, "metrics": ["Accuracy", "LogLoss"], "batch": {"size": 100}}


def test_daemon_in_batch_mode_equals_the_bare_loop_across_kill_9_with_outputs_exactly_once(tmp_path, kafka_bootstrap, topic):
    events = list(itertools.islice(itertools.cycle(PHISHING), 8_000))
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in events])
    outputs = {"dead_letter_topic": f"{topic}.dlq", "predictions_topic": f"{topic}.pred", "poll_max_records": 333}
    config = daemon_config(tmp_path, kafka_bootstrap, topic, "kafka-python", kafka=outputs, model=DAEMON_MODEL, checkpoint={"every_events": 450})
    rng = random.Random(11)
    for _ in range(2):
        process = start_daemon(config)
        time.sleep(rng.uniform(2.5, 4.0))
        process.kill()
        process.wait()
    summary = run_daemon(config)
    unit = summary["units"]["all"]
    assert unit["events_seen"] == unit["events_learned"] == len(events)
    assert unit["metrics"] == phishing_reference(100, events)
    for manifest in CheckpointStore(str(tmp_path / "checkpoints")).list():
        assert manifest["positions"][f"{topic}/0"] % 100 == 0 or manifest["positions"][f"{topic}/0"] == len(events)
    predictions = read_topic(kafka_bootstrap, f"{topic}.pred")
    sources = [dict(r.headers)[SOURCE_HEADER] for r in predictions]
    assert len(sources) == len(set(sources)) == len(events)
    # the predictions are the chunk's predict_proba_many, made before the chunk was learned
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.1))
    X = pd.DataFrame([{k: v for k, v in e.items() if k != "label"} for e in events[:100]])
    first = model.predict_proba_many(X).to_dict("records")
    by_offset = {orjson.loads(r.value)["offset"]: orjson.loads(r.value) for r in predictions}
    lowered = lambda probabilities: {str(k).lower(): v for k, v in probabilities.items()}  # noqa: E731 (labels as text, case aside)
    assert [lowered(by_offset[i]["probabilities"]) for i in range(100)] == [lowered(p) for p in first]


def test_label_metrics_without_predictions_take_predict_many_with_the_same_result():
    config = ModelConfig(pipeline=LOGREG, metrics=["Accuracy", "F1"], batch={"size": 64})
    quiet = Learner(config, EventsConfig(target="label"))
    quiet.process_many(copy.deepcopy(PHISHING))
    asked = Learner(config, EventsConfig(target="label"))
    predictions: list = []
    asked.process_many(copy.deepcopy(PHISHING), predictions=predictions)
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.1))
    data = [({k: v for k, v in e.items() if k != "label"}, e["label"]) for e in PHISHING]
    expected = bare_minibatch(data, 64, model, metrics.Accuracy() + metrics.F1(), proba=False)
    assert quiet.metric_values() == asked.metric_values() == expected
    assert all(isinstance(p.y_pred, dict) and p.label() in (True, False) for _, p in predictions)  # asked: probabilities


# -- one event with other features than its chunk (issue 26, item 5) ----------------------------

UNEVEN = {200: "missing", 401: "extra"}  # Phishing, with one event missing a feature and one bringing one more


def uneven_events() -> list[dict]:
    events = copy.deepcopy(PHISHING)
    del events[200]["long_url"]
    events[401]["extra"] = 1.0
    return events


def reference_without(events: list[dict], bad, size: int):
    """River's own mini-batch loop over the same chunks of `size` records, each without its bad ones: (metrics, model)."""
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.1))
    metric = metrics.Accuracy() + metrics.LogLoss()
    for start in range(0, len(events), size):
        chunk = [({k: v for k, v in e.items() if k != "label"}, e["label"]) for i, e in enumerate(events[start:start + size], start) if i not in bad]
        bare_minibatch(chunk, size, model, metric, proba=True)
    return {type(m).__name__: m.get() for m in metric}, model


@pytest.mark.parametrize("size", [7, 100])
def test_an_event_missing_a_feature_or_bringing_one_more_is_a_dead_letter_and_the_model_stays_rivers(size):
    """Learned in a chunk, its NaN turned the weights to NaN for good (Accuracy 0.857 -> 0.604, LogLoss null)."""
    learner = Learner(classifier_config(size), EventsConfig(target="label"))
    rejected: list = []
    learned = learner.process_many(uneven_events(), on_error=lambda i, e: rejected.append((i, str(e))))
    assert learned == len(PHISHING) - 2 and [i for i, _ in rejected] == [200, 401]
    common = f"({size - 1} of {size} events have them)"
    assert rejected[0][1] == f"features differ from its mini-batch chunk's {common}: missing 'long_url' " \
                             "(model.batch learns a chunk as one table: every event of a chunk needs the same features)"
    assert rejected[1][1].startswith(f"features differ from its mini-batch chunk's {common}: extra 'extra' ")
    expected, model = reference_without(PHISHING, set(UNEVEN), size)
    assert learner.metric_values() == expected and expected["LogLoss"] is not None
    weights = learner.state.models[None]["LogisticRegression"].weights
    assert weights == model["LogisticRegression"].weights and all(w == w for w in weights.values())  # no NaN
    assert learner.state.events_rejected == 2


def test_a_keyed_models_share_of_a_chunk_is_one_table_too():
    events = [{**e, "user": f"u{i % 2}"} for i, e in enumerate(uneven_events()[:400])]
    learner = Learner(classifier_config(40), EventsConfig(target="label", key="user"))
    rejected: list = []
    learner.process_many(events, on_error=lambda i, e: rejected.append(i))
    assert rejected == [200]  # 401 is past the 400 events
    models = learner.state.models
    assert all(w == w for key in ("u0", "u1") for w in models[key]["LogisticRegression"].weights.values())


def test_replay_of_uneven_events_in_mini_batches_dead_letters_them_and_checkpoints_rivers_model(tmp_path):
    import json
    import os
    import subprocess
    import sys

    write_jsonl(tmp_path / "p.jsonl", uneven_events())
    errors, checkpoints = tmp_path / "errors.jsonl", tmp_path / "ckpt"
    argv = [sys.executable, "-m", "riverbeam.cli", "replay", "--config", replay_job(tmp_path, 100), "--input", str(tmp_path / "p.jsonl"),
            "--mode", "learn", "--errors", str(errors), "--checkpoint-uri", str(checkpoints)]
    result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "NO_GCE_CHECK": "true"}, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    records = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [(r["source"]["line"], r["reason"].split(": ")[1].split(" (")[0]) for r in records] == [(201, "missing 'long_url'"), (402, "extra 'extra'")]
    manifest = CheckpointStore(str(checkpoints)).list()[0]  # the newest
    assert manifest["events_learned"] == len(PHISHING) - 2
    assert manifest["metrics"] == reference_without(PHISHING, set(UNEVEN), 100)[0]  # what was checkpointed is River's model on the good events


# -- chunks split at once (issue 30, item 3: EventReader.split_chunk, the chunk's metrics in one pass) --------


def test_a_chunk_of_floats_integers_booleans_and_mixed_columns_learns_as_rivers_own_loop():
    """The whole-chunk path builds the table itself: it must be River's (pandas' dtypes), bit for bit."""
    events = []
    for i, e in enumerate(copy.deepcopy(PHISHING)):
        e["popup_window"] = e["popup_window"] > 0.25  # booleans
        e["https"] = int(e["https"] * 2)  # integers
        e["long_url"] = int(e["long_url"]) if i % 3 else e["long_url"]  # integers and floats in one column
        events.append(e)
    for size in (7, 100):
        learner = Learner(classifier_config(size), EventsConfig(target="label"))
        assert learner.process_many(copy.deepcopy(events)) == len(events)
        assert learner.metric_values() == phishing_reference(size, events)
        model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.1))
        bare_minibatch([({k: v for k, v in e.items() if k != "label"}, e["label"]) for e in events], size, model, metrics.Accuracy(), proba=False)
        assert learner.state.models[None]["LogisticRegression"].weights == model["LogisticRegression"].weights


def test_a_metric_refusing_events_of_a_whole_chunk_rejects_those_alone_with_exact_counts():
    """Per event as in the general scoring loop: the refused event is a dead letter, the others are scored and counted."""
    outcomes = {}
    for asked in (False, True):  # asking for predictions takes the general loop
        learner = Learner(classifier_config(100), EventsConfig(target="label"))
        calls = itertools.count()
        update = learner._metric_update  # Accuracy and LogLoss: probabilities in both loops

        def refusing(y, y_pred, update=update, calls=calls):
            if next(calls) in (3, 150, 151, 1249):
                raise ValueError("refused")
            update(y, y_pred)

        learner._label_update = learner._metric_update = refusing
        rejected: list = []
        learned = learner.process_many(copy.deepcopy(PHISHING), on_error=lambda i, e: rejected.append((i, str(e))), predictions=[] if asked else None)
        outcomes[asked] = (learned, rejected, learner.report())
    assert outcomes[False] == outcomes[True]
    learned, rejected, report = outcomes[False]
    assert [i for i, _ in rejected] == [3, 150, 151, 1249] and rejected[0][1] == "the model failed on this event: ValueError: refused"
    assert learned == report["events_learned"] == report["events_seen"] == len(PHISHING) - 4 and report["events_rejected"] == 4


def test_null_labels_in_a_chunk_are_predicted_and_not_learned_as_in_rivers_loop():
    events = copy.deepcopy(TRUMP)
    for i in range(0, len(events), 9):
        events[i]["y"] = None
    learner = Learner(ModelConfig(pipeline=[{"preprocessing.StandardScaler": {}}, {"linear_model.LinearRegression": {}}], metrics=["MAE"], batch={"size": 50}),
                      EventsConfig(target="y"))
    assert learner.process_many(copy.deepcopy(events)) == len(events) - len(range(0, len(events), 9))
    model, mae = preprocessing.StandardScaler() | linear_model.LinearRegression(), metrics.MAE()
    for start in range(0, len(events), 50):
        chunk = events[start:start + 50]
        X = pd.DataFrame([{k: v for k, v in e.items() if k != "y"} for e in chunk])
        labelled = [j for j, e in enumerate(chunk) if e["y"] is not None]
        for j, y_pred in zip(range(len(chunk)), model.predict_many(X).tolist()):
            if chunk[j]["y"] is not None:
                mae.update(chunk[j]["y"], y_pred)
        model.learn_many(X.iloc[labelled].reset_index(drop=True), pd.Series([chunk[j]["y"] for j in labelled]))
    assert learner.metric_values() == {"MAE": mae.get()}
    assert learner.report()["events_seen"] == len(events)


def test_a_label_of_another_type_in_a_later_chunk_is_still_tried_and_refused_alone():
    """A chunk is learned whole only once each of its labels was tried; a new one takes the event-by-event path."""
    events = [{**e, "label": "phish" if e["label"] else "legit"} for e in copy.deepcopy(PHISHING[:400])]
    events[230]["label"] = 7  # a number among text labels: River's naive Bayes would take it and answer it for good
    config = ModelConfig(pipeline=[{"naive_bayes.GaussianNB": {}}], metrics=["Accuracy"], batch={"size": 50})
    learner = Learner(config, EventsConfig(target="label"))
    rejected: list = []
    assert learner.process_many(events, on_error=lambda i, e: rejected.append((i, str(e)))) == 399
    assert [i for i, _ in rejected] == [230] and "7 is not text" in rejected[0][1]
    assert set(learner.state.models[None].class_counts) == {"phish", "legit"}


@pytest.mark.parametrize("estimator", ["naive_bayes.GaussianNB", "naive_bayes.BernoulliNB"])
def test_a_classifier_that_knows_no_class_yet_learns_its_first_chunk_as_rivers_own_loop(estimator):
    """River's predict_many answers an empty table before any class is known; with a labels-only metric every
    chunk was dead-lettered for it (AttributeError: 'DataFrame' object has no attribute 'tolist'), and nothing learned."""
    config = ModelConfig(pipeline=[{estimator: {}}], metrics=["Accuracy"], batch={"size": 100})
    learner = Learner(config, EventsConfig(target="label"))
    rejected: list = []
    assert learner.process_many(copy.deepcopy(PHISHING), on_error=lambda i, e: rejected.append(str(e))) == len(PHISHING)
    assert rejected == []
    model, accuracy = learner.prototype.clone(), metrics.Accuracy()
    data = [({k: v for k, v in e.items() if k != "label"}, e["label"]) for e in PHISHING]
    for start in range(0, len(data), 100):  # River's own loop: an empty table scores nothing
        X, y = pd.DataFrame([x for x, _ in data[start:start + 100]]), pd.Series([y for _, y in data[start:start + 100]])
        for y_true, y_pred in zip(y, model.predict_many(X)):
            accuracy.update(y_true, y_pred)
        model.learn_many(X, y)
    assert learner.metric_values() == {"Accuracy": accuracy.get()} and learner.state.events_seen == len(PHISHING)


def test_the_first_chunk_imports_nothing_a_mini_batch_learner_pays_its_imports_at_start_up():
    """The daemon's processing time held ~50 ms of lazy imports on its first chunk (narwhals' pandas backend,
    pyarrow.pandas_compat): ~1 µs/event over 50,000 events. A fresh interpreter shows what the first chunk imports."""
    import subprocess
    import sys

    code = (
        "import sys, copy\n"
        "from river import datasets\n"
        "from online.config import EventsConfig, ModelConfig\n"
        "from online.learning.learner import Learner\n"
        "events = [{**x, 'label': y} for x, y in datasets.Phishing()][:300]\n"
        "learner = Learner(ModelConfig(pipeline=[{'preprocessing.StandardScaler': {}}, {'linear_model.LogisticRegression': {}}],"
        " metrics=['Accuracy'], batch={'size': 100}), EventsConfig(target='label'))\n"
        "before = set(sys.modules)\n"
        "assert learner.process_many(events) == 300\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
