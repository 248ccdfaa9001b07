"""stream-learn on Kafka topics in the schema-registry formats (Avro, Protobuf, JSON Schema): decoded as the daemon
decodes them (`online.formats.RegistryDecoder`, built on the worker), learned into the same model as the JSON events."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

pytestmark = pytest.mark.beam

beam = pytest.importorskip("apache_beam")

from apache_beam.testing import test_stream  # noqa: E402
from apache_beam.testing.util import assert_that, equal_to  # noqa: E402

from core.configuration import parse_config  # noqa: E402
from online.config import ConsumeJobConfig  # noqa: E402
from online.learning.learner import Learner  # noqa: E402
from pipelines.stream_learn import build_stream_learn, checkpoint_uri  # noqa: E402
from tests.pipelines.test_archive_formats import serializer  # noqa: E402
from tests.pipelines.test_stream_learn import MODEL, daemon_predictions, decoded, latest_learner, phishing, settings, streaming_pipeline  # noqa: E402


@pytest.mark.parametrize("fmt", ["avro", "protobuf", "json_schema"])
def test_stream_learn_learns_registry_records_into_the_model_of_the_json_events(tmp_path, schema_registry, topic, fmt):
    events = phishing(300, key=lambda i: f"u{i % 3}")
    uri = str(tmp_path / "ckpt")
    config = parse_config({"model": MODEL, "events": {"target": "label", "key": "user"}, "checkpoint": {"uri": uri},
                           "kafka": {"topic": topic, "format": fmt, "schema_registry": {"url": schema_registry.url}}},
                          ConsumeJobConfig, environ={})  # fmt: skip
    reference = Learner(config.model, config.events)
    expected = daemon_predictions(reference, events)
    serialize = serializer(fmt, schema_registry.url, events)
    not_in_the_wire_format = orjson.dumps(events[0])
    records = [(f"{topic}/{i % 2}", i // 2 + 1, serialize(event, topic)) for i, event in enumerate(events)]  # as ReadEvents hands them on
    stream = (
        test_stream.TestStream()
        .advance_watermark_to(0)
        .add_elements(records + [(f"{topic}/0", 151, not_in_the_wire_format)])
        .advance_watermark_to_infinity()
    )
    with streaming_pipeline() as pipeline:
        outputs = build_stream_learn(pipeline, config, settings(), stream)
        assert_that(decoded(outputs["predictions"], "Decode"), equal_to(expected), label="Predictions")
        reasons = outputs["dead_letters"] | beam.Map(lambda record: record["reason"])
        assert_that(reasons, equal_to([f"not {fmt} in the schema-registry wire format (no magic byte 0 and schema id) for subject {topic}-value"]),
                    label="DeadLetters")  # fmt: skip
    merged = {}
    for user in ("u0", "u1", "u2"):
        learner = latest_learner(checkpoint_uri(uri, user), config)
        merged.update(learner.state.models.items())
    assert sorted(merged) == sorted(reference.state.models)
    probe = {k: v for k, v in events[-1].items() if k not in ("label", "user")}
    for user, model in merged.items():
        assert model.predict_proba_one(probe) == reference.state.models[user].predict_proba_one(probe)


def test_the_stream_learn_module_does_not_import_the_schema_registry_client():
    """Beam workers unpickle stream-learn's DoFns: the registry's client is imported in their setup, not with the module."""
    code = "import sys, pipelines.stream_learn; print(sorted(m for m in ('confluent_kafka', 'online.formats') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
