"""Predictions and dead letters written as Avro / JSON Schema / Protobuf through a real schema registry (`online.formats_write`).

The daemon writes them; a consumer application reads them back with confluent-kafka's own
deserializers, and they must hold what the JSON outputs of the same events hold.
"""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from online.config import KafkaConfig
from online.formats import READ_SUBJECTS, registry_client
from online.formats_write import PREDICTION_FIELDS, RecordSerializer
from tests.online.consume.test_daemon import (
    PHISHING,
    job_config,
    produce,
    read_topic,
    run_daemon,
    start_daemon,
)

BROKEN = {57, 211}  # offsets of lines that are not JSON: dead letters


def produce_phishing_with_broken_lines(bootstrap: str, topic: str, count: int = 400) -> None:
    values = [orjson.dumps(event) for event in PHISHING[:count]]
    for offset in sorted(BROKEN):
        values.insert(offset, b"{broken")
    produce(bootstrap, topic, values)


def outputs_of(tmp_path, bootstrap, topic, name, registry_url=None, **kafka) -> dict:
    """Run the daemon on `topic` with predictions and dead letters in topics named after `name`; its summary."""
    (tmp_path / name).mkdir()
    section = {"predictions_topic": f"{topic}.{name}.predictions", "dead_letter_topic": f"{topic}.{name}.dlq", **kafka}
    if registry_url is not None:
        section["schema_registry"] = {"url": registry_url}
    return run_daemon(job_config(tmp_path / name, bootstrap, topic, "confluent-kafka", kafka=section))


def decoded(bootstrap: str, topic: str, deserialize=None) -> list[dict]:
    """Every record of `topic`, decoded (`deserialize`, or JSON), in source order."""
    context = SerializationContext(topic, MessageField.VALUE)
    records = [deserialize(r.value, context) if deserialize else orjson.loads(r.value) for r in read_topic(bootstrap, topic, "confluent-kafka")]
    return sorted(records, key=lambda record: record["offset"] if "offset" in record else record["source"]["offset"])


def without_time(dead_letters: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "time"} for record in dead_letters]


def test_the_daemon_writes_avro_predictions_and_dead_letters_that_hold_its_json_outputs(tmp_path, kafka_bootstrap, schema_registry, topic):
    produce_phishing_with_broken_lines(kafka_bootstrap, topic)

    as_avro = outputs_of(tmp_path, kafka_bootstrap, topic, "avro", schema_registry.url, predictions_format="avro", dead_letter_format="avro")
    as_json = outputs_of(tmp_path, kafka_bootstrap, topic, "json")

    client = registry_client({"url": schema_registry.url})[0]
    avro_predictions = decoded(kafka_bootstrap, f"{topic}.avro.predictions", AvroDeserializer(client, conf=READ_SUBJECTS))
    json_predictions = decoded(kafka_bootstrap, f"{topic}.json.predictions")
    assert as_avro["units"]["all"]["metrics"] == as_json["units"]["all"]["metrics"]
    assert len(avro_predictions) == 400 + len(BROKEN) - len(BROKEN)
    assert avro_predictions == [{**dict.fromkeys(PREDICTION_FIELDS), **record} for record in json_predictions]  # fields JSON leaves out are null
    assert isinstance(avro_predictions[0]["prediction"], bool) and set(avro_predictions[0]["probabilities"]) == {"true", "false"}
    avro_dead = decoded(kafka_bootstrap, f"{topic}.avro.dlq", AvroDeserializer(client, conf=READ_SUBJECTS))
    json_dead = decoded(kafka_bootstrap, f"{topic}.json.dlq")
    assert [record["source"]["offset"] for record in avro_dead] == sorted(BROKEN)
    assert without_time(avro_dead) == [{"stage": None, "model": None, **record} for record in without_time(json_dead)]
    assert client.get_latest_version(f"{topic}.avro.predictions-value").schema.schema_type == "AVRO"  # the topic name strategy



def test_json_schema_predictions_under_the_record_name_strategy(tmp_path, kafka_bootstrap, schema_registry, topic):
    produce_phishing_with_broken_lines(kafka_bootstrap, topic, count=200)

    outputs_of(tmp_path, kafka_bootstrap, topic, "registry", schema_registry.url, predictions_format="json_schema", subject_name_strategy="record")
    outputs_of(tmp_path, kafka_bootstrap, topic, "json")

    client = registry_client({"url": schema_registry.url})[0]
    predictions = decoded(kafka_bootstrap, f"{topic}.registry.predictions", JSONDeserializer(None, schema_registry_client=client, conf=READ_SUBJECTS))
    assert len(predictions) == 200
    assert predictions == decoded(kafka_bootstrap, f"{topic}.json.predictions")
    assert client.get_latest_version("riverbeam.Prediction").schema.schema_type == "JSON"
    assert all(r.value[0] == 0 for r in read_topic(kafka_bootstrap, f"{topic}.registry.predictions", "confluent-kafka"))  # the wire format


def test_an_avro_prediction_of_a_regressor_with_a_key_keeps_its_types(schema_registry, topic):
    serialize = RecordSerializer("prediction", "avro", {"url": schema_registry.url}, "topic_record")
    record = {"key": 17, "prediction": 2.5, "label": 3, "learned": True, "topic": "events", "partition": 1, "offset": 9}

    value = serialize(record, topic)

    client = registry_client({"url": schema_registry.url})[0]
    back = AvroDeserializer(client, conf=READ_SUBJECTS)(value, SerializationContext(topic, MessageField.VALUE))
    assert back == {**dict.fromkeys(PREDICTION_FIELDS), **record}
    assert f"{topic}-riverbeam.Prediction" in client.get_subjects()


def test_an_avro_prediction_keeps_every_digit_of_an_integer_beyond_a_long(schema_registry, topic):
    """fastavro writes an integer beyond Avro's long into the union's double branch (2**64 + 1 comes back as
    1.8446744073709552e19): riverbeam writes it as its text, as in JSON Schema's and Protobuf's outputs."""
    serialize = RecordSerializer("prediction", "avro", {"url": schema_registry.url}, "topic")
    record = {"key": 2**64 + 1, "prediction": -(2**70), "label": 2**63 - 1, "learned": True}

    back = AvroDeserializer(registry_client({"url": schema_registry.url})[0], conf=READ_SUBJECTS)(serialize(record, topic), SerializationContext(topic, MessageField.VALUE))

    assert (back["key"], back["prediction"], back["label"]) == (str(2**64 + 1), str(-(2**70)), 2**63 - 1)  # a long stays a long


# -- Protobuf outputs ----------------------------------------------------------------------------------


def protobuf_messages(kind: str):
    """confluent-kafka's `ProtobufDeserializer` with riverbeam's generated class for `kind`, as a consumer application reads.

    Without a registry client: with one it asks the registry for the writer's schema in the
    ``serialized`` form, which Apicurio 3.3 fails to serve for a schema registered as a
    FileDescriptorProto (a 500, "Syntax error in Prediction.proto"); Confluent's registry serves it.
    `assert_registered_as_written` checks the registry's copy instead.
    """
    from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer

    from online.formats_write import protobuf_record_class

    return ProtobufDeserializer(protobuf_record_class(kind), {"use.deprecated.format": False, **READ_SUBJECTS})


def protobuf_reader(kind: str):
    """`protobuf_messages`, each message read back as a dict (`online.formats_write.protobuf_record`)."""
    from online.formats_write import protobuf_record

    deserialize = protobuf_messages(kind)
    return lambda value, context: protobuf_record(deserialize(value, context))


def assert_registered_as_written(registry_url: str, subject: str, kind: str) -> None:
    """The registry holds, under `subject`, a Protobuf schema that is the generated class's file descriptor itself:
    what a consumer with the registry builds its class from (as `online.formats.ProtobufRecordDeserializer` does)."""
    import base64

    from google.protobuf import descriptor_pb2

    from online.formats_write import protobuf_record_class

    registered = registry_client({"url": registry_url})[0].get_latest_version(subject).schema
    written = descriptor_pb2.FileDescriptorProto()
    protobuf_record_class(kind).DESCRIPTOR.file.CopyToProto(written)
    assert registered.schema_type == "PROTOBUF"
    assert descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(registered.schema_str)) == written


def test_the_daemon_writes_protobuf_predictions_and_dead_letters_that_hold_its_json_outputs(tmp_path, kafka_bootstrap, schema_registry, topic):
    produce_phishing_with_broken_lines(kafka_bootstrap, topic)

    as_protobuf = outputs_of(tmp_path, kafka_bootstrap, topic, "protobuf", schema_registry.url, predictions_format="protobuf",
                             dead_letter_format="protobuf")  # fmt: skip
    as_json = outputs_of(tmp_path, kafka_bootstrap, topic, "json")

    protobuf_predictions = decoded(kafka_bootstrap, f"{topic}.protobuf.predictions", protobuf_reader("prediction"))
    json_predictions = decoded(kafka_bootstrap, f"{topic}.json.predictions")
    assert as_protobuf["units"]["all"]["metrics"] == as_json["units"]["all"]["metrics"]
    assert len(protobuf_predictions) == 400
    assert protobuf_predictions == [{**dict.fromkeys(PREDICTION_FIELDS), **record} for record in json_predictions]  # fields JSON leaves out are null
    assert isinstance(protobuf_predictions[0]["prediction"], bool) and set(protobuf_predictions[0]["probabilities"]) == {"true", "false"}
    protobuf_dead = decoded(kafka_bootstrap, f"{topic}.protobuf.dlq", protobuf_reader("dead letter"))
    json_dead = decoded(kafka_bootstrap, f"{topic}.json.dlq")
    assert [record["source"]["offset"] for record in protobuf_dead] == sorted(BROKEN)
    assert without_time(protobuf_dead) == [{"stage": None, "model": None, **record} for record in without_time(json_dead)]
    assert_registered_as_written(schema_registry.url, f"{topic}.protobuf.predictions-value", "prediction")  # the topic name strategy
    assert_registered_as_written(schema_registry.url, f"{topic}.protobuf.dlq-value", "dead letter")
    first = read_topic(kafka_bootstrap, f"{topic}.protobuf.predictions", "confluent-kafka")[0]
    message = protobuf_messages("prediction")(first.value, SerializationContext(f"{topic}.protobuf.predictions", MessageField.VALUE))
    assert message.WhichOneof("prediction") == "prediction_bool" and message.WhichOneof("key") is None  # a oneof member per type, none for null


def registry_reader(fmt: str, registry_url: str, kind: str):
    """Records of `kind` ("prediction", "dead letter") written in `fmt` read back as dicts: confluent-kafka's
    `AvroDeserializer`, or `protobuf_reader` (the generated class)."""
    if fmt == "avro":
        return AvroDeserializer(registry_client({"url": registry_url})[0], conf=READ_SUBJECTS)
    return protobuf_reader(kind)


@pytest.mark.parametrize("fmt, count, kills, seed", [("avro", 12_000, 3, 7), ("protobuf", 8_000, 2, 5)])
def test_kill_9_repeatedly_writes_each_registry_prediction_and_dead_letter_once(tmp_path, kafka_bootstrap, schema_registry, topic, fmt, count, kills, seed):
    from online.consume.outputs import SOURCE_HEADER
    from tests.online.consume.test_daemon import expected_phishing_metrics, kill_9_after_checkpoints, produce_with_broken_lines

    events, bad_positions = produce_with_broken_lines(kafka_bootstrap, topic, count, first=150, every=997)
    outputs = {"dead_letter_topic": f"{topic}.dlq", "predictions_topic": f"{topic}.pred", "poll_max_records": 200, "predictions_format": fmt,
               "dead_letter_format": fmt, "schema_registry": {"url": schema_registry.url}}  # fmt: skip
    config = job_config(tmp_path, kafka_bootstrap, topic, "confluent-kafka", kafka=outputs, checkpoint={"every_events": 700, "every_seconds": 1})
    kill_9_after_checkpoints(config, times=kills, seed=seed)
    written_before = len(read_topic(kafka_bootstrap, f"{topic}.pred", "confluent-kafka"))

    summary = run_daemon(config)

    assert 0 < written_before < len(events)  # the killed runs wrote some of the predictions, not all
    unit = summary["units"]["all"]
    assert unit["events_seen"] == unit["events_learned"] == len(events)
    assert unit["metrics"] == expected_phishing_metrics(events)
    dead = decoded(kafka_bootstrap, f"{topic}.dlq", registry_reader(fmt, schema_registry.url, "dead letter"))
    assert [d["source"]["offset"] for d in dead] == sorted(bad_positions)  # each exactly once
    predictions = read_topic(kafka_bootstrap, f"{topic}.pred", "confluent-kafka")
    sources = [dict(r.headers)[SOURCE_HEADER] for r in predictions]
    assert len(sources) == len(set(sources)) == len(events)  # no prediction missing or doubled
    deserialize, context = registry_reader(fmt, schema_registry.url, "prediction"), SerializationContext(f"{topic}.pred", MessageField.VALUE)
    assert all(deserialize(r.value, context)["offset"] == int(dict(r.headers)[SOURCE_HEADER].rsplit(b"/", 1)[1]) for r in predictions)


@pytest.mark.parametrize("record", [
    {"key": 17, "prediction": 2.5, "label": 3, "learned": True, "topic": "events", "partition": 1, "offset": 9},  # a regressor, an integer key
    {"key": "u7", "prediction": 1, "probabilities": {"0": 0.25, "1": 0.75}, "label": 0, "learned": False, "checkpoint": "ck-3", "id": 12.0},  # integer classes
])  # fmt: skip
def test_a_protobuf_prediction_of_a_classifier_and_a_regressor_with_a_key_keeps_its_types(schema_registry, topic, record):
    from online.formats_write import protobuf_record

    serialize = RecordSerializer("prediction", "protobuf", {"url": schema_registry.url}, "topic_record")

    value = serialize(record, topic)

    message = protobuf_messages("prediction")(value, SerializationContext(topic, MessageField.VALUE))
    back = protobuf_record(message)
    assert back == {**dict.fromkeys(PREDICTION_FIELDS), **record}
    assert {name: type(back[name]) for name in ("key", "prediction", "label")} == {name: type(record[name]) for name in ("key", "prediction", "label")}
    assert message.WhichOneof("key") == ("key_int64" if isinstance(record["key"], int) else "key_string")  # the member of the value's type
    assert_registered_as_written(schema_registry.url, f"{topic}-riverbeam.Prediction", "prediction")  # the topic_record strategy


def test_protobuf_outputs_stop_in_one_line_when_the_registry_is_down_or_lacks_the_subject(schema_registry, topic):
    from core.errors import ConfigError
    from online.formats import SchemaRegistryUnavailable

    down = RecordSerializer("prediction", "protobuf", {"url": "http://127.0.0.1:9"}, setting="kafka.predictions_format")
    unregistered = RecordSerializer("dead letter", "protobuf", {"url": schema_registry.url}, "topic", auto_register=False, setting="kafka.dead_letter_format")

    with pytest.raises(SchemaRegistryUnavailable) as unreachable:
        down.check(f"{topic}.p", {"prediction": None})
    with pytest.raises(ConfigError) as missing:
        unregistered.check(f"{topic}.dlq", {"version": 1, "source": {}, "reason": "schema check", "truncated": False, "time": "t"})

    assert str(unreachable.value).startswith("kafka.schema_registry.url: the schema registry at http://127.0.0.1:9 cannot be reached to write "
                                             f"prediction records as protobuf (kafka.predictions_format, subject {topic}.p-value)")  # fmt: skip
    assert str(missing.value).startswith(f"kafka.auto_register_schemas: subject {topic}.dlq-value in the schema registry at {schema_registry.url} "
                                         "does not hold riverbeam's dead letter protobuf schema")  # fmt: skip


def config_check(tmp_path, kafka: str) -> subprocess.CompletedProcess:
    path = tmp_path / "job.yaml"
    path.write_text("model: {pipeline: [{linear_model.LogisticRegression: {}}]}\nevents: {target: label}\ncheckpoint: {uri: ./checkpoints}\n"
                    f"kafka: {{topic: events, predictions_topic: p, {kafka}}}\n")  # fmt: skip
    command = [sys.executable, "-m", "riverbeam.cli", "config", "check", str(path)]
    return subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, NO_GCE_CHECK="true"), timeout=120)


def test_an_unknown_subject_name_strategy_or_a_format_without_a_registry_is_one_line_naming_the_key(tmp_path):
    strategy = config_check(tmp_path, "predictions_format: avro, schema_registry: {url: 'http://127.0.0.1:9'}, subject_name_strategy: associated")
    no_registry = config_check(tmp_path, "dead_letter_format: json_schema")
    unreachable = config_check(tmp_path, "predictions_format: avro, schema_registry: {url: 'http://127.0.0.1:9'}")

    for result in (strategy, no_registry, unreachable):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "kafka.subject_name_strategy" in strategy.stderr and "topic_record" in strategy.stderr
    assert "kafka.dead_letter_format json_schema needs kafka.schema_registry.url" in no_registry.stderr
    assert "kafka.schema_registry.url: the schema registry at http://127.0.0.1:9 does not answer" in unreachable.stderr


def test_the_daemon_stops_in_one_line_naming_the_key_when_the_registry_cannot_take_its_schema(tmp_path, kafka_bootstrap, schema_registry, topic):
    produce(kafka_bootstrap, topic, [orjson.dumps(PHISHING[0])])
    down = job_config(tmp_path, kafka_bootstrap, topic, "confluent-kafka",
                      kafka={"predictions_topic": f"{topic}.p", "predictions_format": "avro", "schema_registry": {"url": "http://127.0.0.1:9"}})  # fmt: skip
    unregistered = job_config(tmp_path, kafka_bootstrap, topic, "confluent-kafka",
                              kafka={"dead_letter_topic": f"{topic}.dlq", "dead_letter_format": "avro", "auto_register_schemas": False,
                                     "schema_registry": {"url": schema_registry.url}})  # fmt: skip

    results = [start_daemon(config, "--until-caught-up") for config in (down, unregistered)]
    (_, down_err), (_, unregistered_err) = (process.communicate(timeout=120) for process in results)

    assert [process.returncode for process in results] == [1, 2], down_err[-2000:] + unregistered_err[-2000:]
    assert "Traceback" not in down_err + unregistered_err
    assert "kafka.schema_registry.url: the schema registry at http://127.0.0.1:9 cannot be reached to write prediction records as avro" in down_err.strip().splitlines()[-1]
    assert f"kafka.auto_register_schemas: subject {topic}.dlq-value in the schema registry at {schema_registry.url} does not hold" in unregistered_err.strip().splitlines()[-1]


def test_config_check_online_names_the_output_subject_that_must_be_registered_when_the_daemon_does_not(tmp_path, schema_registry, topic):
    kafka = (f"predictions_format: avro, dead_letter_topic: {topic}.dlq, subject_name_strategy: topic_record, auto_register_schemas: false, "
             f"schema_registry: {{url: '{schema_registry.url}'}}")  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text("model: {pipeline: [{linear_model.LogisticRegression: {}}]}\nevents: {target: label}\ncheckpoint: {uri: ./checkpoints}\n"
                    f"kafka: {{topic: events, predictions_topic: {topic}.p, {kafka}}}\n")  # fmt: skip

    def check(*flags: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "riverbeam.cli", "config", "check", str(path), *flags]
        return subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, NO_GCE_CHECK="true"), timeout=120)

    missing, offline = check("--online"), check()
    RecordSerializer("prediction", "avro", {"url": schema_registry.url}, "topic_record").check(f"{topic}.p", {"prediction": None})  # registered
    registered = check("--online")

    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr[-2000:]
    assert (f"kafka.auto_register_schemas: no schema under subject {topic}.p-riverbeam.Prediction in the schema registry at {schema_registry.url}"
            in missing.stderr)  # fmt: skip
    assert offline.returncode == 0, offline.stderr[-2000:]  # without --online only the registry's URL is checked
    assert registered.returncode == 0, registered.stderr[-2000:]  # dead letters stay JSON: only the predictions' subject is needed


def test_a_registry_format_for_outputs_needs_the_registry_url():
    with pytest.raises(ValueError, match="kafka.predictions_format avro needs kafka.schema_registry.url"):
        KafkaConfig(topic="events", predictions_format="avro")


# -- replay --mode backfill into a registry topic ---------------------------------------------------


def backfill_then_consume(tmp_path, bootstrap, topic, registry_url, events, target, model, fmt, **kafka) -> tuple[dict, object]:
    """Backfill `events` (a JSON-lines file) into `topic` as `fmt`; the daemon's summary reading it back, and the backfill's result."""
    from online.replay.job import ReplayOptions, run_replay
    from tests.online.test_readers import write_jsonl
    from tests.online.replay.test_replay import job_config as replay_job

    source = tmp_path / f"{topic}.jsonl"
    write_jsonl(source, events)
    section = {"bootstrap_servers": bootstrap, "topic": topic, "format": fmt, **kafka}
    if fmt != "json":
        section["schema_registry"] = {"url": registry_url}
    job = replay_job(model=model, events={"target": target}, kafka=section)
    result = run_replay(job, ReplayOptions([str(source)], mode="backfill", errors_path=str(tmp_path / f"{topic}.errors.jsonl")))
    (tmp_path / topic).mkdir()
    reading = {"format": fmt, **({"schema_registry": {"url": registry_url}} if fmt != "json" else {})}
    summary = run_daemon(job_config(tmp_path / topic, bootstrap, topic, "confluent-kafka", model=model, events={"target": target}, kafka=reading))
    return summary, result


@pytest.mark.parametrize(("dataset", "target", "model"), [
    ("phishing", "label", {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy", "LogLoss"]}),
    ("trump_approval", "approval", {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LinearRegression": {}}], "metrics": ["MAE", "RMSE"]}),
])  # fmt: skip
@pytest.mark.parametrize("fmt", ["avro", "json_schema", "protobuf"])
def test_a_backfill_in_a_registry_format_teaches_the_daemon_what_a_json_backfill_does(tmp_path, kafka_bootstrap, schema_registry, topic, fmt, dataset, target, model):
    from river import datasets

    data = datasets.Phishing() if dataset == "phishing" else datasets.TrumpApproval()
    events = [{**x, target: y} for x, y in data]

    from_registry, written = backfill_then_consume(tmp_path, kafka_bootstrap, topic, schema_registry.url, events, target, model, fmt)
    from_json, _ = backfill_then_consume(tmp_path, kafka_bootstrap, f"{topic}-json", schema_registry.url, events, target, model, "json")

    assert written.produced == len(events)
    assert all(r.value[0] == 0 for r in read_topic(kafka_bootstrap, topic, "confluent-kafka")[:5])  # the wire format, not JSON
    assert from_registry["events_dead_lettered"] == 0
    assert from_registry["units"]["all"]["events_learned"] == len(events) == from_json["units"]["all"]["events_learned"]
    assert from_registry["units"]["all"]["metrics"] == from_json["units"]["all"]["metrics"]


def test_a_backfill_with_a_given_avro_schema_dead_letters_the_lines_that_do_not_fit_it(tmp_path, kafka_bootstrap, schema_registry, topic):
    schema = {"type": "record", "name": "Reading", "namespace": "plant", "fields": [
        {"name": "x", "type": "double"}, {"name": "z", "type": ["null", "double"], "default": None}, {"name": "y", "type": "double"}]}  # fmt: skip
    (tmp_path / "reading.avsc").write_text(orjson.dumps(schema).decode())
    events = [{"x": i / 10, "y": i / 5, **({"z": i / 7} if i % 3 == 0 else {})} for i in range(300)]
    events[40] = {"x": "not a number", "y": 1.0}
    model = {"pipeline": [{"linear_model.LinearRegression": {}}], "metrics": ["MAE"]}

    summary, written = backfill_then_consume(tmp_path, kafka_bootstrap, topic, schema_registry.url, events, "y", model, "avro",
                                             value_schema=str(tmp_path / "reading.avsc"))  # fmt: skip

    assert written.produced == 299 and written.bad_lines == 1
    errors = [orjson.loads(line) for line in (tmp_path / f"{topic}.errors.jsonl").read_bytes().splitlines()]
    assert [e["source"]["line"] for e in errors] == [41]
    assert errors[0]["reason"].startswith(f"cannot write the event record as avro (kafka.value_schema) to {topic}: ")
    assert summary["units"]["all"]["events_learned"] == 299
    from online.config import EventsConfig, ModelConfig
    from online.learning.learner import Learner

    expected = Learner(ModelConfig(**model), EventsConfig(target="y"))
    expected.process_many([dict(e) for i, e in enumerate(events) if i != 40])
    assert summary["units"]["all"]["metrics"] == expected.metric_values()
    assert registry_client({"url": schema_registry.url})[0].get_latest_version(f"{topic}-value").schema.schema_str.find("plant") >= 0


def test_a_backfill_stops_in_one_line_when_the_registry_cannot_be_reached_and_produces_nothing(tmp_path, kafka_bootstrap, topic):
    (tmp_path / "events.jsonl").write_text('{"x": 1.0, "y": 2.0}\n{"x": 2.0, "y": 3.0}\n')
    config = tmp_path / "job.yaml"
    config.write_text(
        "model: {pipeline: [{linear_model.LinearRegression: {}}], metrics: [MAE]}\nevents: {target: y}\n"
        f"kafka: {{bootstrap_servers: '{kafka_bootstrap}', topic: {topic}, format: avro, schema_registry: {{url: 'http://127.0.0.1:9'}}}}\n"
    )
    command = [sys.executable, "-m", "riverbeam.cli", "replay", "--config", str(config), "--input", str(tmp_path / "events.jsonl"), "--mode", "backfill"]

    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, NO_GCE_CHECK="true"), timeout=120)

    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert ("kafka.schema_registry.url: the schema registry at http://127.0.0.1:9 cannot be reached to write event records as avro "
            f"(kafka.format, subject {topic}-value)") in result.stderr.strip().splitlines()[-1]  # fmt: skip
    assert read_topic(kafka_bootstrap, topic, "confluent-kafka") == []  # nothing half-written: a rerun starts from the first line


def test_a_backfill_whose_events_fit_no_derived_schema_is_one_line_naming_the_key(tmp_path):
    (tmp_path / "events.jsonl").write_text('{"x": 1.0, "y": 2.0}\n{"x": "one", "y": 3.0}\n')
    config = tmp_path / "job.yaml"
    config.write_text(
        "model: {pipeline: [{linear_model.LinearRegression: {}}], metrics: [MAE]}\nevents: {target: y}\n"
        "kafka: {bootstrap_servers: '127.0.0.1:9', topic: events, format: protobuf, schema_registry: {url: 'http://127.0.0.1:9'}}\n"
    )
    command = [sys.executable, "-m", "riverbeam.cli", "replay", "--config", str(config), "--input", str(tmp_path / "events.jsonl"), "--mode", "backfill"]

    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, NO_GCE_CHECK="true"), timeout=120)

    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "kafka.format: cannot derive a schema for field 'x': its values are float and str; give one (kafka.value_schema)" in result.stderr
