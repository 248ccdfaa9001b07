"""One prediction record (`online.learning.learner.Prediction.record`) for every job: the daemon's
predictions topic and serve's ``POST /v1/learn`` write the same fields and values for the same
events (but where each was made), and a predicting job's answer (``riverbeam predict``, serve's
``POST /v1/predict``) is that record's predicting part."""

from __future__ import annotations

import itertools

import orjson
from river import datasets

from core.configuration import parse_config
from online.config import ServeJobConfig
from online.serving.metrics import ServeMetrics
from online.serving.predict import prediction_record
from online.serving.reload import ModelSlot
from online.serving.writer import LearningWriter
from tests.online.consume.test_daemon import MODEL, job_config, produce, read_topic, run_daemon

EVENTS = [{**x, "label": y} for x, y in itertools.islice(datasets.Phishing(), 300)]
WHERE = {"daemon": ("topic", "partition", "offset"), "serve": ("checkpoint",)}


def test_the_daemon_and_a_learning_server_write_one_record_and_predict_writes_its_predicting_part(tmp_path, kafka_bootstrap, topic):
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in EVENTS])
    run_daemon(job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", kafka={"predictions_topic": f"{topic}.pred"}))
    daemon = sorted((orjson.loads(r.value) for r in read_topic(kafka_bootstrap, f"{topic}.pred")), key=lambda r: r["offset"])
    assert [(r["topic"], r["partition"], r["offset"]) for r in daemon] == [(topic, 0, i) for i in range(len(EVENTS))]

    config = parse_config({"checkpoint": {"uri": str(tmp_path / "serve"), "every_events": 1000}, "serve": {"learn": True},
                           "model": MODEL, "events": {"target": "label"}}, ServeJobConfig, environ={})
    writer = LearningWriter(config, ServeMetrics(), ModelSlot())
    assert writer.start()
    try:
        served = [orjson.loads(orjson.dumps(r)) for r in writer.learn([dict(e) for e in EVENTS])]
        answer = prediction_record(writer.learner, {k: v for k, v in EVENTS[0].items() if k != "label"}, writer.checkpoint_id)
    finally:
        writer.stop()

    def what(record: dict, job: str) -> dict:
        return {k: v for k, v in record.items() if k not in WHERE[job]}

    assert [what(r, "daemon") for r in daemon] == [what(r, "serve") for r in served]
    assert list(daemon[0]) == ["prediction", "probabilities", "label", "learned", "topic", "partition", "offset"]
    assert daemon[0]["label"] is EVENTS[0]["label"] and daemon[0]["learned"] is True
    assert list(served[0]) == ["prediction", "probabilities", "label", "learned", "checkpoint"]
    assert list(answer) == ["prediction", "probabilities", "checkpoint"]  # a predicting job: no label, no learned flag
    assert answer["prediction"] is (answer["probabilities"]["true"] > answer["probabilities"]["false"])
