"""The archive of a topic in a schema-registry format (Avro, Protobuf, JSON Schema): decoded records as Parquet that replay reads back (FnApiRunner)."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

beam = pytest.importorskip("apache_beam")

from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from confluent_kafka.schema_registry.avro import AvroSerializer  # noqa: E402
from confluent_kafka.serialization import MessageField, SerializationContext  # noqa: E402
from river import datasets  # noqa: E402

from online.formats import registry_client  # noqa: E402
from online.formats_write import RecordSerializer, derive_avro_schema, derive_json_schema, derive_protobuf_class  # noqa: E402
from online.replay.job import ReplayOptions, run_replay  # noqa: E402
from pipelines.archive import build_archive, read_archive  # noqa: E402
from tests.online.replay.test_replay import job_config as replay_job  # noqa: E402

pytestmark = pytest.mark.beam

BASE = 1714568400  # 2024-05-01T13:00:00Z
EVENTS = [{"time": BASE + 7 * i, **x, "label": y} for i, (x, y) in enumerate(datasets.Phishing())]  # 1250 events over ~2.4 hours
MODEL = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy", "LogLoss"]}


def archive(tmp_path, name: str, payloads: list[bytes], kafka: str | None = None) -> str:
    """Archive `payloads` (as Kafka would deliver them) as Parquet under ``tmp_path/name``, on the FnApiRunner."""
    output = str(tmp_path / name)
    flags = ["--runner=FnApiRunner", f"--archive_output={output}", "--event_time_field=time", "--archive_format=parquet"]
    if kafka is not None:
        (tmp_path / f"{name}.yaml").write_text(kafka)
        flags.append(f"--archive_kafka_config={tmp_path / f'{name}.yaml'}")
    options = PipelineOptions(flags)
    with beam.Pipeline(options=options) as pipeline:
        build_archive(pipeline, options, source=beam.Create(payloads))
    return output


def serializer(fmt: str, url: str, events: list[dict] = EVENTS):
    """How a producer application writes `events` as `fmt`: confluent-kafka's serializer of that format, the topic name strategy."""
    if fmt == "avro":
        serialize = AvroSerializer(registry_client({"url": url})[0], orjson.dumps(derive_avro_schema(events)).decode(),
                                   conf={"subject.name.strategy.type": "TOPIC"})  # fmt: skip
        return lambda event, topic: serialize(event, SerializationContext(topic, MessageField.VALUE))
    schema = derive_protobuf_class(events) if fmt == "protobuf" else derive_json_schema(events)
    return RecordSerializer("event", fmt, {"url": url}, schema=schema)  # ProtobufSerializer / JSONSerializer underneath


@pytest.mark.parametrize("fmt", ["avro", "protobuf", "json_schema"])
def test_a_registry_topic_is_archived_as_parquet_that_replay_reads_as_the_json_events(tmp_path, schema_registry, topic, fmt):
    serialize = serializer(fmt, schema_registry.url)
    not_avro = b'{"time": 1714568400, "x": 1}'
    avro_kafka = f"kafka: {{topic: {topic}, format: {fmt}, schema_registry: {{url: '{schema_registry.url}'}}}}\n"

    from_avro = archive(tmp_path, "avro", [serialize(e, topic) for e in EVENTS] + [not_avro], avro_kafka)
    from_json = archive(tmp_path, "json", [orjson.dumps(e) for e in EVENTS])

    by_time = sorted(read_archive(f"{from_avro}/date=*/hour=*/*.parquet"), key=lambda e: e["time"])
    assert by_time == sorted(read_archive(f"{from_json}/date=*/hour=*/*.parquet"), key=lambda e: e["time"]) == EVENTS
    dead = list(read_archive(f"{from_avro}/dead_letter/date=*/hour=*/*.jsonl"))
    assert [d["value"] for d in dead] == [not_avro.decode()]
    assert dead[0]["reason"] == f"not {fmt} in the schema-registry wire format (no magic byte 0 and schema id) for subject {topic}-value"
    job = replay_job(model=MODEL, events={"target": "label", "time": "time"})
    replayed = [run_replay(job, ReplayOptions([f"{output}/date=*/hour=*/*.parquet"], mode="evaluate")) for output in (from_avro, from_json)]
    assert replayed[0].events == replayed[1].events == len(EVENTS)
    assert replayed[0].leaderboard[0]["metrics"] == replayed[1].leaderboard[0]["metrics"]


def test_the_archive_module_does_not_import_the_schema_registry_client():
    """Beam workers unpickle the archive's DoFns: the registry's client is imported in their setup, not with the module."""
    code = "import sys, pipelines.archive; print(sorted(m for m in sys.modules if m.startswith(('confluent_kafka', 'online.formats'))))"

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)

    assert result.stdout.strip() == "[]"
