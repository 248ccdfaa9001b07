"""Several models on one stream (``models:``): each equals progressive validation alone; named predictions; restore rules."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import os

import orjson
import pytest
from river import datasets, evaluate, linear_model, metrics, naive_bayes, optim, preprocessing

from core.configuration import parse_config
from online.config import ConsumeJobConfig, EventsConfig, ModelConfig
from online.learning.learner import Learner
from online.learning.loop import LearningLoop
from online.sources import KafkaBatch
from tests.online.consume.test_daemon import job_config, produce, read_topic, run_daemon, start_daemon

PHISHING = [{**x, "label": y} for x, y in datasets.Phishing()]
MODELS = [
    {"name": "fast", "pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {"optimizer": {"optim.SGD": {"lr": 0.1}}}}], "metrics": ["Accuracy", "LogLoss"]},
    {"name": "slow", "pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {"optimizer": {"optim.SGD": {"lr": 0.01}}}}], "metrics": ["Accuracy", "LogLoss"]},
    {"name": "nb", "pipeline": [{"naive_bayes.GaussianNB": {}}], "metrics": ["Accuracy", "LogLoss"]},
]
RIVER_MODELS = {
    "fast": lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.1)),
    "slow": lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.01)),
    "nb": lambda: naive_bayes.GaussianNB(),
}


def alone(name: str, events=PHISHING) -> dict:
    data = [({k: v for k, v in e.items() if k != "label"}, e["label"]) for e in events]
    result = evaluate.progressive_val_score(data, RIVER_MODELS[name](), metrics.Accuracy() + metrics.LogLoss())
    return {type(m).__name__: m.get() for m in result}


def test_the_loop_gives_every_model_every_event_and_each_equals_itself_alone():
    batch_model = ModelConfig(**{**MODELS[0], "name": "batched", "batch": {"size": 50}})
    models = [("fast", ModelConfig(**MODELS[0])), ("batched", batch_model), ("nb", ModelConfig(**MODELS[2]))]
    learners = [(name, Learner(model, EventsConfig(target="label"))) for name, model in models]
    values = [orjson.dumps(e) for e in PHISHING]
    values[10] = b"[1, 2]"
    dead = []

    class Sinks:
        def dead_letter(self, batch, index, reason, model=None):
            dead.append((batch.offsets[index], model))

        def predictions(self, batch, outcomes):
            predicted.extend((batch.offsets[i], p) for i, p in outcomes)

    predicted: list = []
    loop = LearningLoop(learners, dead_letters=Sinks(), predictions=Sinks(), predictions_model="nb")
    assert loop.chunk == 50
    for start in range(0, len(values), 333):
        loop.feed(KafkaBatch(("t", 0), values[start:start + 333], list(range(start, min(start + 333, len(values))))))
    loop.flush()
    assert dead == [(10, None)]  # rejected by every model: one dead letter, not one per model
    events = [copy.deepcopy(e) if i != 10 else None for i, e in enumerate(PHISHING)]
    for name, model in models:
        reference = Learner(model, EventsConfig(target="label"))
        reference.process_many(copy.deepcopy(events), on_error=lambda i, e: None)
        assert dict(learners)[name].metric_values() == reference.metric_values(), name
    clean = [e for i, e in enumerate(PHISHING) if i != 10]
    assert dict(learners)["fast"].metric_values() == alone("fast", clean)
    assert dict(learners)["nb"].metric_values() == alone("nb", clean)
    nb = Learner(ModelConfig(**MODELS[2]), EventsConfig(target="label"))
    expected: list = []
    nb.process_many(copy.deepcopy(events), on_error=lambda i, e: None, predictions=expected)
    assert [(o, p.y_pred) for o, p in predicted] == [(i, p.y_pred) for i, p in expected]


def test_models_configuration_is_checked():
    base = {"events": {"target": "label"}, "kafka": {"topic": "t"}, "checkpoint": {"uri": "/tmp/x"}}
    job = parse_config({**base, "models": MODELS, "predictions_model": "slow"}, ConsumeJobConfig, environ={})
    assert list(job.named_models) == ["fast", "slow", "nb"]
    with pytest.raises(Exception, match="predictions_model: 'other' is not among the models"):
        parse_config({**base, "models": MODELS, "predictions_model": "other"}, ConsumeJobConfig, environ={})
    with pytest.raises(Exception, match="exactly one of model and models"):
        parse_config({**base, "models": MODELS, "model": MODELS[0]}, ConsumeJobConfig, environ={})


def lowered(probabilities: dict) -> dict:
    """Class labels as text, case aside (predict writes str(label), serve JSON's true/false)."""
    return {str(k).lower(): v for k, v in probabilities.items()}


def cli(*args: str) -> tuple[int, str, str]:
    env = dict(os.environ, NO_GCE_CHECK="true")
    process = subprocess.run([sys.executable, "-m", "riverbeam.cli", *args], capture_output=True, text=True, env=env, timeout=120)
    return process.returncode, process.stdout, process.stderr


def test_three_models_in_the_daemon_each_equal_progressive_validation_alone(tmp_path, kafka_bootstrap, topic):
    values = [orjson.dumps(e) for e in PHISHING]
    for position in (100, 700):
        values.insert(position, b"{broken")
    produce(kafka_bootstrap, topic, values)
    outputs = {"dead_letter_topic": f"{topic}.dlq", "predictions_topic": f"{topic}.pred"}
    config = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", kafka=outputs, model=None, models=MODELS, predictions_model="slow",
                        checkpoint={"every_events": 400})
    summary = run_daemon(config)
    reports = summary["units"]["all"]["by_model"]
    assert list(reports) == ["fast", "slow", "nb"]
    for name in reports:
        assert reports[name]["metrics"] == alone(name), name
        assert reports[name]["events_seen"] == len(PHISHING)
    assert len(read_topic(kafka_bootstrap, f"{topic}.dlq")) == 2
    slow = Learner(ModelConfig(**MODELS[1]), EventsConfig(target="label"))
    expected: list = []
    slow.process_many(copy.deepcopy(PHISHING), predictions=expected)
    records = sorted((orjson.loads(r.value) for r in read_topic(kafka_bootstrap, f"{topic}.pred")), key=lambda r: r["offset"])
    assert [lowered(r["probabilities"]) for r in records] == [lowered(p.y_pred) for _, p in expected]

    uri = str(tmp_path / "checkpoints")
    code, out, err = cli("checkpoints", "show", uri)
    assert code == 0, err
    board = out[out.index("leaderboard:"):].splitlines()[1:4]
    ranked = sorted(reports, key=lambda n: -reports[n]["metrics"]["Accuracy"])
    assert [line.split(".", 1)[1].split(":")[0].strip() for line in board] == ranked
    assert json.loads(cli("checkpoints", "show", uri, "--json")[1])["leaderboard"][0]["model"] == ranked[0]

    lines = tmp_path / "x.jsonl"
    lines.write_text("\n".join(json.dumps({k: v for k, v in e.items() if k != "label"}) for e in PHISHING[:3]) + "\n")
    code, out, err = cli("predict", "--checkpoint", uri, "--model", "nb", "--input", str(lines))
    assert code == 0, err
    nb = Learner(ModelConfig(**MODELS[2]), EventsConfig(target="label"))
    nb.process_many(copy.deepcopy(PHISHING))
    model = nb.state.models[None]
    got = [lowered(json.loads(line)["probabilities"]) for line in out.splitlines()]
    assert got == [lowered(model.predict_proba_one({k: v for k, v in e.items() if k != "label"})) for e in PHISHING[:3]]
    code, out, err = cli("predict", "--checkpoint", uri, "--model", "svm", "--input", str(lines))
    assert code == 2 and "Traceback" not in err  # one line (after the unsigned-checkpoint warning)
    assert err.strip().splitlines()[-1].endswith("has no model 'svm' (it holds fast, slow, nb)")

    # removing a model is refused, in one line, unless --allow-model-change
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in PHISHING[:200]])
    changed = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", kafka=outputs, model=None,
                         models=[MODELS[0], MODELS[1], {**MODELS[0], "name": "newcomer"}], checkpoint={"every_events": 400})
    process = start_daemon(changed, "--until-caught-up")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2, err[-2000:]
    assert "adds newcomer; removes nb" in err and "--allow-model-change" in err and "Traceback" not in err
    process = start_daemon(changed, "--until-caught-up", "--allow-model-change")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    after = json.loads(out.strip().splitlines()[-1])["units"]["all"]["by_model"]
    assert list(after) == ["fast", "slow", "newcomer"]
    assert after["newcomer"]["events_seen"] == 200 and after["fast"]["events_seen"] == len(PHISHING) + 200
    assert after["fast"]["metrics"] == alone("fast", PHISHING + PHISHING[:200])
    # a model whose own configuration changed is refused even with the flag
    renamed = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", kafka=outputs, model=None,
                         models=[{**MODELS[1], "name": "fast"}, MODELS[1], {**MODELS[0], "name": "newcomer"}])
    process = start_daemon(renamed, "--until-caught-up", "--allow-model-change")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2 and "the configuration of model fast differs" in err


def test_several_models_with_per_key_models_in_the_daemon(tmp_path, kafka_bootstrap, topic):
    events = [{**e, "user": f"u{i % 10}"} for i, e in enumerate(PHISHING[:800])]
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in events], partitions=2, keys=[e["user"].encode() for e in events])
    config = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", model=None, models=[MODELS[0], MODELS[2]],
                        events={"target": "label", "key": "user", "exclude": ["user"]}, checkpoint={"every_events": 150})
    summary = run_daemon(config)
    records = sorted(read_topic(kafka_bootstrap, topic), key=lambda r: (r.partition, r.offset))
    by_partition = {p: [orjson.loads(r.value) for r in records if r.partition == p] for p in (0, 1)}
    assert sum(map(len, by_partition.values())) == len(events)
    for partition, mine in by_partition.items():
        if not mine:  # every key hashed to the other partition
            continue
        unit = summary["units"][f"{topic}.{partition}"]
        for name, spec in (("fast", MODELS[0]), ("nb", MODELS[2])):
            alone = Learner(ModelConfig(**spec), EventsConfig(target="label", key="user", exclude=["user"]))
            alone.process_many(copy.deepcopy(mine))
            assert unit["by_model"][name]["events_seen"] == len(mine)
            assert unit["by_model"][name]["metrics"] == alone.metric_values(), (partition, name)


def test_serve_and_predict_answer_with_the_named_model_of_a_set(tmp_path):
    import httpx

    from online.checkpoints.persistence import ModelsSpec
    from online.checkpoints.persistence import Cadence, Checkpointer, checkpoint_store, resume
    from tests.online.serving_support import Processes, free_port, wait_until, get_ok

    spec = ModelsSpec({m["name"]: ModelConfig(**m) for m in MODELS}, EventsConfig(target="label"))
    store = checkpoint_store(str(tmp_path / "ck"))
    learners, _ = resume(store, spec)
    for event in PHISHING[:400]:
        learners.process(dict(event))
    Checkpointer(store, learners, spec, Cadence(every_events=1)).checkpoint({"replay": {"line": 400}}, wait=True)
    probe = {k: v for k, v in PHISHING[500].items() if k != "label"}
    expected = {name: {str(k): v for k, v in learner.state.models[None].predict_proba_one(dict(probe)).items()} for name, learner in learners.learners.items()}
    assert expected["nb"] != expected["fast"]
    processes = Processes()
    try:
        port = free_port()
        server = processes.start(["serve", "--checkpoint", str(tmp_path / "ck"), "--model", "nb", "--host", "127.0.0.1", "--port", str(port)], tmp_path / "serve.log")
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: server.poll() is None and get_ok(base + "/readyz") or server.poll() is not None, timeout=60, what="serve")
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
        answer = httpx.post(base + "/v1/predict", json=probe, timeout=5).json()["probabilities"]
        assert lowered(answer) == lowered(expected["nb"])
    finally:
        processes.close()
    lines = tmp_path / "x.jsonl"
    lines.write_text(json.dumps(probe) + "\n")
    for name in (None, "slow"):
        code, out, err = cli("predict", "--checkpoint", str(tmp_path / "ck"), "--input", str(lines), *(["--model", name] if name else []))
        assert code == 0, err
        assert lowered(json.loads(out)["probabilities"]) == lowered(expected[name or "fast"])  # the first model by default


def test_prometheus_carries_each_models_metrics(tmp_path, kafka_bootstrap, topic):
    import signal
    import time
    import urllib.request

    from riverbeam.local_stack import free_port

    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in PHISHING[:300]])
    port = free_port()
    config = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", model=None, models=MODELS, metrics={"port": port, "host": "127.0.0.1"})
    process = start_daemon(config)
    wanted = {m["name"]: f'riverbeam_model_metric{{metric="Accuracy",model="{m["name"]}",unit="all"}} ' for m in MODELS}
    expected = {name: alone(name, PHISHING[:300])["Accuracy"] for name in wanted}

    def scraped() -> dict:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
        except OSError:
            return {}
        return {name: float(line.rsplit(" ", 1)[1]) for name, series in wanted.items() for line in body.splitlines() if line.startswith(series)}

    values: dict = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and values != pytest.approx(expected):
            values = scraped()
            time.sleep(0.3)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert values == pytest.approx(expected)  # one series per model, each its own progressive score
