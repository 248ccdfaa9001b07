"""stream-learn reads JSON only: a ``kafka.format`` of the schema registry is refused in one line, never read as JSON
(the archive decodes them: tests/pipelines/test_archive_formats.py)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.beam

pytest.importorskip("apache_beam")

from core.errors import ConfigError  # noqa: E402
from pipelines import stream_learn  # noqa: E402

AVRO_KAFKA = "kafka: {topic: events, format: avro, schema_registry: {url: 'http://127.0.0.1:8081/apis/ccompat/v7'}}\n"
MESSAGE = "kafka.format: {job} reads JSON only (kafka.format: json), not avro: riverbeam consume, archive and replay --mode backfill take avro"


def test_stream_learn_refuses_a_kafka_source_of_avro_records(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("model: {pipeline: [{linear_model.LogisticRegression: {}}]}\n" + AVRO_KAFKA + "checkpoint: {uri: /tmp/x}\n")
    config = stream_learn.read_job_config(str(path))

    with pytest.raises(ConfigError) as refused:
        stream_learn.ReadEvents(config, "kafka")

    assert str(refused.value) == MESSAGE.format(job="stream-learn")
    stream_learn.ReadEvents(config, "files", pattern=str(tmp_path / "*.jsonl"))  # a file source does not read the topic

