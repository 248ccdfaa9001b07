"""The archive pipeline on the DirectRunner: TestStream in place of Kafka, files read back as events."""

from __future__ import annotations

import json

import pytest

beam = pytest.importorskip("apache_beam")

from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.testing.test_stream import TestStream as RecordStream  # noqa: E402
from apache_beam.transforms.window import TimestampedValue  # noqa: E402

from pipelines.archive import ArchiveOptions, build_archive, read_archive, source_transform  # noqa: E402
from core.errors import UsageError  # noqa: E402

pytestmark = pytest.mark.beam

BASE = 1714568400  # 2024-05-01T13:00:00Z
EVENTS = [{"time": BASE + 1200 + 170 * i, "x": i, "label": i % 2 == 0, "name": f"e{i}"} for i in range(40)]
# records as Kafka delivers them: bytes with a record timestamp
BAD = [
    (b"not json", "not JSON: "),
    (b"[1, 2]", "event is not a JSON object but an array"),
    (b'{"x": 1}', "missing event time field 'time'"),
    (b'{"time": "yesterday", "x": 2}', "bad event time field 'time'"),
]


def event_stream() -> RecordStream:
    """Events over three hours (13h, 14h, 15h), with bad records and a late watermark step."""
    first, second = EVENTS[:20], EVENTS[20:]
    return (
        RecordStream()
        .add_elements([json.dumps(e).encode() for e in first] + [TimestampedValue(b, BASE + 1300) for b, _ in BAD])
        .advance_watermark_to(BASE + 4200)
        .add_elements([json.dumps(e).encode() for e in second])
        .advance_watermark_to_infinity()
    )


def run_archive(output: str, *flags: str) -> None:
    options = PipelineOptions(
        ["--runner=BundleBasedDirectRunner", "--streaming", f"--archive_output={output}", "--event_time_field=time", *flags]
    )
    with beam.Pipeline(options=options) as pipeline:
        build_archive(pipeline, options, source=event_stream())


def expected_partitions() -> set[str]:
    return {f"date=2024-05-01/hour={13 + (e['time'] - BASE) // 3600}" for e in EVENTS}


def check_dead_letters(output: str) -> None:
    dead = sorted(read_archive(f"{output}/dead_letter/date=2024-05-01/hour=13/*.jsonl"), key=lambda d: d["value"])
    expected = sorted(BAD, key=lambda b: b[0].decode())
    assert [d["value"] for d in dead] == [b.decode() for b, _ in expected] and all(d["version"] == 1 for d in dead)  # dead-letter schema v1
    for letter, (_, reason) in zip(dead, expected):
        assert letter["reason"].startswith(reason), letter


def test_jsonl_archive_on_gcs_emulator_reads_back_by_partition(beam_gcs, gcs_prefix, gcs_client):
    output = f"{gcs_prefix}/archive"
    run_archive(output)
    bucket, prefix = output[len("gs://"):].split("/", 1)
    names = sorted(b.name[len(prefix) + 1:] for b in gcs_client.list_blobs(bucket, prefix=prefix + "/") if "/.temp" not in b.name)
    partitions = {"/".join(name.split("/")[:2]) for name in names if name.startswith("date=")}
    assert partitions == expected_partitions() == {"date=2024-05-01/hour=13", "date=2024-05-01/hour=14", "date=2024-05-01/hour=15"}
    # one file set per 10-minute window: the 13h partition holds the windows from 13:20 on
    assert "date=2024-05-01/hour=13/part-20240501T132000Z-00000-of-00001.jsonl" in names
    for partition in partitions:  # each file holds only the events of its hour
        hour = int(partition[-2:])
        in_partition = list(read_archive(f"{output}/{partition}/*.jsonl"))
        assert in_partition and all(13 + (e["time"] - BASE) // 3600 == hour for e in in_partition)
    back = sorted(read_archive(f"{output}/date=*/hour=*/*.jsonl"), key=lambda e: e["x"])
    assert back == EVENTS
    check_dead_letters(output)


def test_parquet_archive_reads_back_as_the_same_events(tmp_path):
    output = str(tmp_path / "archive")
    run_archive(output, "--archive_format=parquet")
    files = sorted(p.relative_to(output).as_posix() for p in (tmp_path / "archive").rglob("*.parquet"))
    assert {"/".join(f.split("/")[:2]) for f in files} == expected_partitions()
    assert sorted(read_archive(f"{output}/date=*/hour=*/*.parquet"), key=lambda e: e["x"]) == EVENTS
    check_dead_letters(output)  # dead letters stay JSON lines


def test_parquet_archive_on_s3_reads_back_as_the_same_events(local_stack, s3_prefix):
    from core.storage import open_store

    output = f"{s3_prefix}/archive"
    run_archive(output, "--archive_format=parquet")  # Beam's S3 filesystem, at the local S3 server
    names = [n for n in open_store(output).list() if "/.temp" not in n and not n.startswith(".temp")]
    assert {"/".join(n.split("/")[:2]) for n in names if n.startswith("date=")} == expected_partitions()
    assert sorted(read_archive(f"{output}/date=*/hour=*/*.parquet"), key=lambda e: e["x"]) == EVENTS
    check_dead_letters(output)


def test_archive_window_must_divide_an_hour(tmp_path):
    with pytest.raises(UsageError, match="archive_window_seconds: 7000 must be a positive divisor of 3600"):
        run_archive(str(tmp_path), "--archive_window_seconds=7000")


def test_archive_output_is_required():
    options = PipelineOptions(["--event_time_field=time"])
    with pytest.raises(UsageError, match="missing required flag.*--archive_output"):
        build_archive(beam.Pipeline(options=options), options, source=event_stream())


def test_kafka_source_needs_servers_and_topics_and_a_json_config():
    view = PipelineOptions(["--kafka_topics=a, b"]).view_as(ArchiveOptions)
    with pytest.raises(UsageError, match="the kafka source needs bootstrap servers and topics"):
        source_transform(view)
    view = PipelineOptions(["--kafka_bootstrap_servers=k:9092", "--kafka_topics=a, b"]).view_as(ArchiveOptions)
    reader = source_transform(view)
    assert (reader.bootstrap_servers, reader.topics) == ("k:9092", ["a", "b"])
    view = PipelineOptions(["--kafka_bootstrap_servers=k:9092", "--kafka_topics=a", "--kafka_consumer_config=[1]"]).view_as(ArchiveOptions)
    with pytest.raises(UsageError, match="kafka_consumer_config: expected a JSON object"):
        source_transform(view)


def test_kafka_source_reads_the_daemons_kafka_section_and_flags_override(tmp_path, s3_prefix):
    """One way to configure Kafka everywhere: the daemon's kafka: section (here from a job file on s3://)."""
    from core import storage
    from core.errors import ConfigError

    uri = f"{s3_prefix}/consumer.yaml"
    storage.write_bytes(uri, b"kafka: {bootstrap_servers: 'k:9092', topics: [a, b], group_id: g, consumer: {auto.offset.reset: earliest}}\n"
                             b"model: {pipeline: [{linear_model.LogisticRegression: {}}]}\n")
    reader = source_transform(PipelineOptions([f"--archive_kafka_config={uri}"]).view_as(ArchiveOptions))
    assert (reader.bootstrap_servers, reader.topics) == ("k:9092", ["a", "b"])
    assert reader.consumer_config == {"group.id": "g", "auto.offset.reset": "earliest"}
    flags = [f"--archive_kafka_config={uri}", "--kafka_topics=c", "--kafka_consumer_config={\"group.id\": \"h\"}"]
    reader = source_transform(PipelineOptions(flags).view_as(ArchiveOptions))
    assert (reader.topics, reader.consumer_config["group.id"]) == (["c"], "h")
    storage.write_bytes(uri, b"kafka: {bootstrap_servers: 9092, topic: a}\n")
    with pytest.raises(ConfigError, match=f"{uri}: kafka.bootstrap_servers: expected a string, got 9092"):
        source_transform(PipelineOptions([f"--archive_kafka_config={uri}"]).view_as(ArchiveOptions))


def test_archive_is_the_input_of_replay(tmp_path):
    """The archive's partitioned files replay in event-time order through the same learner."""
    from online.config import EventsConfig, ModelConfig, ReplayJobConfig
    from online.learning.learner import Learner
    from online.replay.job import ReplayOptions, run_replay
    from core.configuration import parse_config

    output = str(tmp_path / "archive")
    run_archive(output)
    model = {"pipeline": [{"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy", "LogLoss"]}
    events = {"target": "label", "time": "time", "exclude": ["name"]}
    job = parse_config({"model": model, "events": events}, ReplayJobConfig, environ={})
    result = run_replay(job, ReplayOptions([f"{output}/date=*/hour=*/*.jsonl"], mode="evaluate"))
    direct = Learner(ModelConfig(**model), EventsConfig(**events))
    direct.process_many([dict(e) for e in sorted(EVENTS, key=lambda e: e["time"])])
    assert result.events == len(EVENTS)
    assert result.leaderboard[0]["metrics"] == direct.metric_values()
