"""Avro, Protobuf and JSON Schema records through a real schema registry (Apicurio Registry, `schema_registry` fixture).

Producers here are written as a producer application would be: confluent-kafka's Producer with
the schema registry's serializers. The daemon must learn from them exactly what it learns from
the same events as JSON, through schema changes, and dead-letter what cannot be read with a
reason naming the schema id and subject.
"""

from __future__ import annotations

import datetime
import decimal
import json
import os
import struct
import subprocess
import sys

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry.avro import AvroSerializer as ConfluentAvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from river import datasets

from online.config import KafkaConfig
from online.formats import (
    RegistryDecoder,
    SchemaRegistryUnavailable,
    flatten,
    record_decoder,
    registry_client,
)
from online.kafka_clients import create_topic
from online.checkpoints.store import CheckpointStore
from tests.online.consume.test_daemon import job_config, kill_9_after_checkpoints, produce, read_topic, run_daemon, start_daemon

PHISHING = [{**x, "label": y} for x, y in datasets.Phishing()]
TRUMP = [{**x, "approval": y} for x, y in datasets.TrumpApproval()]
REGRESSION = {
    "pipeline": [
        {"preprocessing.StandardScaler": {}},
        {"linear_model.LinearRegression": {}},
    ],
    "metrics": ["MAE", "RMSE"],
}
AVRO_TYPES = {bool: "boolean", int: "long", float: "double", str: "string"}
# The producers here use the topic name strategy, the subjects riverbeam reads (<topic>-value).
# confluent-kafka 2.13's default (ASSOCIATED) first asks the registry for the topic's subject
# associations, a request Apicurio 3.3 left unanswered for 300 s in two of the last full CI runs.
TOPIC_STRATEGY = {"subject.name.strategy.type": "TOPIC"}


def AvroSerializer(client, schema, conf=None):  # noqa: N802  (confluent-kafka's serializer, topic name strategy)
    return ConfluentAvroSerializer(client, schema, conf={**TOPIC_STRATEGY, **(conf or {})})


def field_kinds(events: list[dict]) -> dict[str, set]:
    """Each field of `events` (in first-seen order) with the Python types its values have."""
    kinds: dict[str, set] = {}
    for event in events:
        for key, value in event.items():
            kinds.setdefault(key, set()).add(type(value))
    return kinds


def avro_schema(name: str, events: list[dict]) -> str:
    """A flat Avro record schema for `events` (a field that is an integer somewhere and a float elsewhere is a double)."""
    kinds = field_kinds(events)
    fields = [
        {
            "name": key,
            "type": "double" if kind == {int, float} else AVRO_TYPES[next(iter(kind))],
        }
        for key, kind in kinds.items()
    ]
    return json.dumps({"type": "record", "name": name, "fields": fields})


def produce_with_registry(
    bootstrap: str,
    topic: str,
    serializer,
    records: list,
    raw: dict[int, bytes] | None = None,
) -> None:
    """Produce `records` through `serializer` (one partition, in order); `raw` values go in as they are at their positions."""
    create_topic(bootstrap, topic, partitions=1)
    producer = Producer({"bootstrap.servers": bootstrap})
    context = SerializationContext(topic, MessageField.VALUE)
    values = [serializer(record, context) for record in records]
    for position, value in sorted((raw or {}).items()):
        values.insert(position, value)
    for value in values:
        producer.produce(topic, value, partition=0)
    assert producer.flush(30) == 0


def registry_job(tmp_path, bootstrap, topic, registry, fmt="avro", **overrides) -> str:
    kafka = {"format": fmt, "schema_registry": {"url": registry.url}, **overrides.pop("kafka", {})}
    return job_config(tmp_path, bootstrap, topic, "confluent-kafka", kafka=kafka, **overrides)


def learned_from_registry_and_json(tmp_path, bootstrap, topic, registry, fmt, serializer, records, **overrides) -> tuple[dict, dict]:
    """The daemon's summaries on `records` produced through the registry's `serializer`, and produced as JSON."""
    produce_with_registry(bootstrap, topic, serializer, records)
    produce(bootstrap, f"{topic}-json", [orjson.dumps(e) for e in records])
    (tmp_path / fmt).mkdir()
    (tmp_path / "json").mkdir()
    from_registry = run_daemon(registry_job(tmp_path / fmt, bootstrap, topic, registry, fmt, **overrides))
    from_json = run_daemon(job_config(tmp_path / "json", bootstrap, f"{topic}-json", "confluent-kafka", **overrides))
    assert from_registry["events_dead_lettered"] == 0
    assert from_registry["units"]["all"]["events_learned"] == len(records) == from_json["units"]["all"]["events_learned"]
    return from_registry, from_json


def test_flatten_names_nested_fields_by_path_and_makes_logical_types_numbers():
    event = flatten({
        "user": {"address": {"city": "Oslo", "zip": 150}, "nickname": None},
        "at": datetime.datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=datetime.UTC),
        "naive": datetime.datetime(1970, 1, 1, 0, 0, 2),
        "day": datetime.date(2024, 1, 2),
        "clock": datetime.time(1, 2, 3),
        "price": decimal.Decimal("12.34"),
    })  # fmt: skip
    assert event == {
        "user.address.city": "Oslo",
        "user.address.zip": 150,
        "at": 1704164645.5,
        "naive": 2.0,
        "day": 19724,
        "clock": 3723.0,
        "price": 12.34,
    }


def test_avro_logical_types_unions_enums_and_nested_records_through_the_registry(schema_registry, topic):
    client = registry_client({"url": schema_registry.url})[0]
    schema = json.dumps({"type": "record", "name": "Order", "fields": [
        {"name": "amount", "type": "double"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
        {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["WEB", "STORE"]}},
        {"name": "coupon", "type": ["null", "double"], "default": None},
        {"name": "address", "type": {"type": "record", "name": "Address", "fields": [{"name": "city", "type": "string"}, {"name": "zip", "type": "int"}]}},
    ]})  # fmt: skip
    serialize = AvroSerializer(client, schema)
    context = SerializationContext(topic, MessageField.VALUE)
    order = {
        "amount": 1.5,
        "at": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "day": datetime.date(2024, 1, 2),
        "price": decimal.Decimal("12.34"),
        "channel": "STORE",
        "address": {"city": "Oslo", "zip": 150},
    }
    values = [
        serialize({**order, "coupon": None}, context),
        serialize({**order, "coupon": 0.25}, context),
    ]

    decoder = record_decoder(KafkaConfig(topic=topic, format="avro", schema_registry={"url": schema_registry.url}))
    events, reasons = decoder(values, topic)

    expected = {
        "amount": 1.5,
        "at": 1704164645.0,
        "day": 19724,
        "price": 12.34,
        "channel": "STORE",
        "address.city": "Oslo",
        "address.zip": 150,
    }
    assert reasons == {}
    assert events == [expected, {**expected, "coupon": 0.25}]


def test_an_avro_schema_referencing_another_subject_is_read_with_its_reference(schema_registry, topic):
    from confluent_kafka.schema_registry import Schema, SchemaReference

    client = registry_client({"url": schema_registry.url})[0]
    address = json.dumps({"type": "record", "name": "Address", "namespace": "shop", "fields": [{"name": "city", "type": "string"}]})
    client.register_schema(f"{topic}-address", Schema(address, "AVRO"))
    order = json.dumps({"type": "record", "name": "Order", "namespace": "shop", "fields": [{"name": "amount", "type": "double"}, {"name": "address", "type": "shop.Address"}]})
    reference = SchemaReference("shop.Address", f"{topic}-address", client.get_latest_version(f"{topic}-address").version)
    value = AvroSerializer(client, Schema(order, "AVRO", [reference]))({"amount": 2.0, "address": {"city": "Oslo"}}, SerializationContext(topic, MessageField.VALUE))

    assert RegistryDecoder("avro", {"url": schema_registry.url})([value], topic) == ([{"amount": 2.0, "address.city": "Oslo"}], {})


def test_records_that_cannot_be_read_are_reasons_naming_the_schema_id_and_subject(schema_registry, topic):
    client = registry_client({"url": schema_registry.url})[0]
    serialize = AvroSerializer(
        client,
        json.dumps({"type": "record", "name": "E", "fields": [{"name": "a", "type": "double"}]}),
    )
    good = serialize({"a": 2.0}, SerializationContext(topic, MessageField.VALUE))
    schema_id = struct.unpack(">I", good[1:5])[0]
    unknown = b"\x00" + struct.pack(">I", 987654) + good[5:]
    decoder = RegistryDecoder("avro", {"url": schema_registry.url})

    events, reasons = decoder([good, unknown, b'{"a": 1}', good[:6], None], topic)

    assert events == [{"a": 2.0}, None, None, None, None]
    assert reasons[1].startswith(f"schema id 987654 (subject {topic}-value) is not in the schema registry")
    assert reasons[2] == f"not avro in the schema-registry wire format (no magic byte 0 and schema id) for subject {topic}-value"
    assert reasons[3].startswith(f"cannot decode avro with schema id {schema_id} (subject {topic}-value): ")
    assert reasons[4] == "record has no value"


def test_a_registry_that_cannot_be_reached_stops_instead_of_dead_lettering(topic):
    decoder = RegistryDecoder("avro", {"url": "http://127.0.0.1:9"})  # discard port: nothing listens
    with pytest.raises(SchemaRegistryUnavailable, match="schema registry at http://127.0.0.1:9"):
        decoder([b"\x00\x00\x00\x00\x01\x02"], topic)


def test_a_registry_that_accepts_and_never_answers_stops_the_decoder_instead_of_wedging_it(topic, monkeypatch):
    """confluent-kafka's registry client has no timeout by default: a hung registry would stall a job unseen."""
    import socket

    import online.formats

    monkeypatch.setattr(online.formats, "REGISTRY_TIMEOUT_S", 1)  # riverbeam's default (30 s), shortened
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections (the kernel's backlog), never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        decoder = RegistryDecoder("avro", {"url": url})  # no timeout given: riverbeam's default applies
        with pytest.raises(SchemaRegistryUnavailable, match=f"schema registry at {url}"):
            decoder([b"\x00\x00\x00\x00\x01\x02"], topic)
    finally:
        silent.close()


@pytest.mark.parametrize(
    ("dataset", "target", "model"),
    [(PHISHING, "label", None), (TRUMP, "approval", REGRESSION)],
    ids=["phishing", "trump_approval"],
)
def test_the_daemon_learns_from_avro_exactly_what_it_learns_from_json(tmp_path, kafka_bootstrap, schema_registry, topic, dataset, target, model):
    serializer = AvroSerializer(registry_client({"url": schema_registry.url})[0], avro_schema("Event", dataset))
    overrides = {"events": {"target": target}, **({"model": model} if model else {})}

    from_avro, from_json = learned_from_registry_and_json(tmp_path, kafka_bootstrap, topic, schema_registry, "avro", serializer, dataset, **overrides)

    assert from_avro["units"]["all"]["metrics"] == from_json["units"]["all"]["metrics"]


def protobuf_class(
    package: str,
    name: str,
    fields: list[tuple],
    nested: list[tuple] = (),
    enums: list[tuple] = (),
    imports: list[str] = (),
):
    """A generated-like Protobuf message class built from descriptors (what protoc would generate), in a pool of its own.

    `fields` are ``(name, type, type_name or None, proto3_optional)``; `nested` ``(name, fields)``; `enums` ``(name, symbols)``.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2
    from google.protobuf.message_factory import GetMessageClass

    def add_fields(message, specs):
        for number, (field_name, kind, type_name, optional) in enumerate(specs, start=1):
            field = message.field.add(
                name=field_name,
                number=number,
                type=kind,
                label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
            )
            if type_name:
                field.type_name = type_name
            if optional:
                field.proto3_optional = True
                field.oneof_index = len(message.oneof_decl)
                message.oneof_decl.add(name=f"_{field_name}")

    pool = descriptor_pool.DescriptorPool()
    for dependency in imports:
        known = descriptor_pb2.FileDescriptorProto()
        descriptor_pool.Default().FindFileByName(dependency).CopyToProto(known)
        pool.Add(known)
    file_proto = descriptor_pb2.FileDescriptorProto(
        name=f"{package}.proto",
        package=package,
        syntax="proto3",
        dependency=list(imports),
    )
    message = file_proto.message_type.add(name=name)
    for nested_name, nested_fields in nested:
        add_fields(message.nested_type.add(name=nested_name), nested_fields)
    for enum_name, symbols in enums:
        enum = message.enum_type.add(name=enum_name)
        for number, symbol in enumerate(symbols):
            enum.value.add(name=symbol, number=number)
    add_fields(message, fields)
    pool.Add(file_proto)
    assert timestamp_pb2  # the well-known types' module is loaded
    return GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))


def test_protobuf_nested_messages_enums_timestamps_and_unset_optionals_through_the_registry(schema_registry, topic):
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from google.protobuf import descriptor_pb2

    F = descriptor_pb2.FieldDescriptorProto
    Order = protobuf_class(
        f"shop{topic[2:]}", "Order",
        [("amount", F.TYPE_DOUBLE, None, False), ("count", F.TYPE_INT64, None, False), ("at", F.TYPE_MESSAGE, ".google.protobuf.Timestamp", False),
         ("channel", F.TYPE_ENUM, "Channel", False), ("coupon", F.TYPE_DOUBLE, None, True), ("address", F.TYPE_MESSAGE, "Address", False)],
        nested=[("Address", [("city", F.TYPE_STRING, None, False), ("zip", F.TYPE_INT32, None, False)])],
        enums=[("Channel", ["WEB", "STORE"])], imports=["google/protobuf/timestamp.proto"],
    )  # fmt: skip
    serialize = ProtobufSerializer(
        Order,
        registry_client({"url": schema_registry.url})[0],
        {"use.deprecated.format": False, **TOPIC_STRATEGY},
    )
    context = SerializationContext(topic, MessageField.VALUE)
    order = Order(amount=1.5, count=0, channel=1, address={"city": "Oslo", "zip": 150})
    order.at.FromSeconds(1704164645)
    with_coupon = Order()
    with_coupon.CopyFrom(order)
    with_coupon.coupon = 0.25

    events, reasons = RegistryDecoder("protobuf", {"url": schema_registry.url})([serialize(order, context), serialize(with_coupon, context)], topic)

    expected = {
        "amount": 1.5,
        "count": 0,
        "at": 1704164645.0,
        "channel": "STORE",
        "address.city": "Oslo",
        "address.zip": 150,
    }
    assert reasons == {}
    assert events == [expected, {**expected, "coupon": 0.25}]


@pytest.mark.parametrize("header", [b"\x00", b"\x02\x00"], ids=["indexes-shortcut", "indexes-list"])
def test_a_protobuf_message_of_plain_scalars_reads_as_the_descriptor_walk_reads_it(topic, header):
    """The scalars-only fast path (one attrgetter call) gives what the general path gives, zeros, an empty string and big
    integers included; a message with presence (a proto3 optional) takes the general path. The first message type's indexes,
    as the one-zero-byte shortcut or as a list ([0]: count 1 zigzagged, then 0), read the same."""
    from google.protobuf import descriptor_pb2, json_format

    from online.formats import ProtobufRecordDeserializer, _protobuf_dict, flatten

    F = descriptor_pb2.FieldDescriptorProto
    scalars = [("d", F.TYPE_DOUBLE), ("f", F.TYPE_FLOAT), ("i", F.TYPE_INT64), ("u", F.TYPE_UINT32), ("s", F.TYPE_SINT64),
               ("b", F.TYPE_BOOL), ("t", F.TYPE_STRING)]  # fmt: skip
    Plain = protobuf_class(f"plain{topic[2:]}", "Plain", [(name, kind, None, False) for name, kind in scalars])
    Optional = protobuf_class(f"optional{topic[2:]}", "Optional", [("d", F.TYPE_DOUBLE, None, False), ("o", F.TYPE_DOUBLE, None, True)])
    messages = [Plain(d=1.5, f=0.1, i=2**60 + 1, u=7, s=-3, b=True, t="x"), Plain(), Optional(d=2.0), Optional(o=0.0)]
    decoder = ProtobufRecordDeserializer(None)
    decoder._message_class = lambda schema_id, indexes: {(1, (0,)): Plain, (2, (0,)): Optional}[(schema_id, indexes)]

    decoded = [decoder(b"\x00" + (1 if isinstance(m, Plain) else 2).to_bytes(4, "big") + header + m.SerializeToString(), None) for m in messages]

    assert decoded == [flatten(_protobuf_dict(m, json_format)) for m in messages]
    assert decoded[0]["i"] == 2**60 + 1 and decoded[1] == {"d": 0.0, "f": 0.0, "i": 0, "u": 0, "s": 0, "b": False, "t": ""}
    assert decoded[2:] == [{"d": 2.0}, {"d": 0.0, "o": 0.0}]  # an unset optional left out, a set one kept at 0
    assert [found[1] is not None for found in decoder._classes.values()] == [True, False]  # the fast path, then the general one


def test_a_protobuf_map_reaches_the_learner_as_its_entries_never_as_the_list_of_its_keys(schema_registry, topic):
    """riverbeam's own Protobuf prediction record (``probabilities`` is a map<string, double>) read back as events: the
    map's entries are features by the flattening rule (``probabilities.<key>``); before, the map became its keys."""
    from online.formats_write import RecordSerializer

    serialize = RecordSerializer("prediction", "protobuf", {"url": schema_registry.url}, "topic")
    record = {"key": "u7", "prediction": 1, "probabilities": {"0": 0.25, "1": 0.75}, "label": 0, "learned": True, "topic": "events", "partition": 1, "offset": 9}

    events, reasons = RegistryDecoder("protobuf", {"url": schema_registry.url})([serialize(record, topic)], topic)

    assert reasons == {}
    assert (events[0]["probabilities.0"], events[0]["probabilities.1"], events[0]["offset"]) == (0.25, 0.75, 9)
    assert "probabilities" not in events[0]


@pytest.mark.parametrize(
    ("dataset", "target", "model"),
    [(PHISHING, "label", None), (TRUMP, "approval", REGRESSION)],
    ids=["phishing", "trump_approval"],
)
def test_the_daemon_learns_from_protobuf_exactly_what_it_learns_from_json(tmp_path, kafka_bootstrap, schema_registry, topic, dataset, target, model):
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from google.protobuf import descriptor_pb2

    F = descriptor_pb2.FieldDescriptorProto
    kinds = field_kinds(dataset)
    types = {bool: F.TYPE_BOOL, int: F.TYPE_INT64, float: F.TYPE_DOUBLE}  # integers mixed with floats: a double, as in `avro_schema`
    fields = [(key, F.TYPE_DOUBLE if len(kind) > 1 else types[next(iter(kind))], None, False) for key, kind in kinds.items()]
    Event = protobuf_class(f"{target}{topic[2:]}", "Event", fields)
    serializer = ProtobufSerializer(Event, registry_client({"url": schema_registry.url})[0], {"use.deprecated.format": False, **TOPIC_STRATEGY})
    overrides = {"events": {"target": target}, **({"model": model} if model else {})}

    from_protobuf, from_json = learned_from_registry_and_json(
        tmp_path, kafka_bootstrap, topic, schema_registry, "protobuf", lambda event, ctx: serializer(Event(**event), ctx), dataset, **overrides
    )

    assert from_protobuf["events_learned"] == len(dataset)
    assert from_protobuf["units"]["all"]["metrics"] == from_json["units"]["all"]["metrics"]


def test_the_daemon_learns_from_json_schema_records_as_from_json(tmp_path, kafka_bootstrap, schema_registry, topic):
    events = PHISHING[:300]
    schema = json.dumps(
        {
            "type": "object",
            "properties": {key: {"type": "boolean" if type(value) is bool else "number"} for key, value in events[0].items()},
        }
    )
    serializer = JSONSerializer(schema, registry_client({"url": schema_registry.url})[0], conf=TOPIC_STRATEGY)

    from_registry, from_json = learned_from_registry_and_json(tmp_path, kafka_bootstrap, topic, schema_registry, "json_schema", serializer, events)

    assert from_registry["units"]["all"]["metrics"] == from_json["units"]["all"]["metrics"]


def test_writers_moving_from_v1_to_v2_keep_the_daemon_learning_and_unreadable_records_are_dead_letters(tmp_path, kafka_bootstrap, schema_registry, topic):
    """v2 adds a field with a default, removes one and widens int to long; each record is learned with the features it carries."""
    client = registry_client({"url": schema_registry.url})[0]
    v1 = AvroSerializer(client, json.dumps({"type": "record", "name": "E", "fields": [
        {"name": "x", "type": "double"}, {"name": "old", "type": "double"}, {"name": "n", "type": "int"}, {"name": "y", "type": "double"}]}))  # fmt: skip
    v2 = AvroSerializer(client, json.dumps({"type": "record", "name": "E", "fields": [
        {"name": "x", "type": "double"}, {"name": "n", "type": "long"}, {"name": "new", "type": "double", "default": 0.0}, {"name": "y", "type": "double"}]}))  # fmt: skip
    context = SerializationContext(topic, MessageField.VALUE)
    first = [{"x": float(i), "old": i / 10, "n": i % 7, "y": 2.0 * i} for i in range(150)]
    second = [{"x": float(i), "n": 2**40 + i, "new": i / 3, "y": 2.0 * i + 1} for i in range(150, 300)]
    values = [v1(e, context) for e in first] + [v2(e, context) for e in second]
    v1_id, v2_id = (struct.unpack(">I", values[i][1:5])[0] for i in (0, -1))
    assert v1_id != v2_id
    bad = {
        10: b"\x00" + struct.pack(">I", 987654) + values[0][5:],
        200: b'{"x": 1.0, "y": 2.0}',
        250: values[-1][:7],
    }
    produce_with_registry(kafka_bootstrap, topic, lambda value, ctx: value, values, raw=bad)

    summary = run_daemon(registry_job(tmp_path, kafka_bootstrap, topic, schema_registry, model=REGRESSION, events={"target": "y"},
                                      kafka={"dead_letter_topic": f"{topic}.dlq"}))  # fmt: skip

    from online.config import EventsConfig, ModelConfig
    from online.learning.learner import Learner

    expected = Learner(ModelConfig(**REGRESSION), EventsConfig(target="y"))
    expected.process_many([dict(e) for e in first + second])
    unit = summary["units"]["all"]
    assert unit["events_learned"] == 300 and summary["events_dead_lettered"] == 3
    assert unit["metrics"] == expected.metric_values()
    dead = {orjson.loads(r.value)["source"]["offset"]: orjson.loads(r.value)["reason"] for r in read_topic(kafka_bootstrap, f"{topic}.dlq", "confluent-kafka")}
    assert sorted(dead) == [10, 200, 250]
    assert dead[10].startswith(f"schema id 987654 (subject {topic}-value) is not in the schema registry")
    assert dead[200].startswith("not avro in the schema-registry wire format")
    assert dead[250].startswith(f"cannot decode avro with schema id {v2_id} (subject {topic}-value)")


def test_a_format_without_a_registry_url_is_a_configuration_error():
    with pytest.raises(ValueError, match="kafka.format avro needs kafka.schema_registry.url"):
        KafkaConfig(topic="events", format="avro")


def test_the_daemon_stops_in_one_line_when_the_registry_cannot_be_reached_and_keeps_the_record(tmp_path, kafka_bootstrap, topic):
    produce(kafka_bootstrap, topic, [b"\x00\x00\x00\x00\x01\x02"])
    config = job_config(tmp_path, kafka_bootstrap, topic, "confluent-kafka", kafka={"format": "avro", "schema_registry": {"url": "http://127.0.0.1:9"}})

    process = start_daemon(config, "--until-caught-up")
    out, err = process.communicate(timeout=120)

    assert process.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    assert "schema registry at http://127.0.0.1:9 cannot be reached" in err.strip().splitlines()[-1]
    latest = CheckpointStore(str(tmp_path / "checkpoints")).load_latest()
    assert latest is None or latest.manifest["positions"].get(f"{topic}/0", 0) == 0  # the record is read again on the next start


def test_kill_9_during_a_schema_change_equals_an_uninterrupted_run_with_dead_letters_once(tmp_path, kafka_bootstrap, schema_registry, topic):
    client = registry_client({"url": schema_registry.url})[0]
    v1 = AvroSerializer(client, json.dumps({"type": "record", "name": "E", "fields": [{"name": "x", "type": "double"}, {"name": "old", "type": "double"}, {"name": "y", "type": "double"}]}))
    v2 = AvroSerializer(client, json.dumps({"type": "record", "name": "E", "fields": [{"name": "x", "type": "double"}, {"name": "new", "type": "double", "default": 0.0}, {"name": "y", "type": "double"}]}))
    context = SerializationContext(topic, MessageField.VALUE)
    events = [{"x": i % 13 / 13, "old": i % 7 / 7, "y": i % 13 / 6.5} if i < 4000 else {"x": i % 13 / 13, "new": i % 5 / 5, "y": i % 13 / 6.5 + 1} for i in range(8000)]
    values = [(v1 if i < 4000 else v2)(event, context) for i, event in enumerate(events)]
    bad = {position: b"\x00" + struct.pack(">I", 987654) + b"\x02" for position in range(150, 8000, 997)}
    produce_with_registry(kafka_bootstrap, topic, lambda value, ctx: value, values, raw=bad)
    kafka = {"dead_letter_topic": f"{topic}.dlq", "poll_max_records": 500}
    config = registry_job(tmp_path, kafka_bootstrap, topic, schema_registry, model=REGRESSION, events={"target": "y"}, kafka=kafka, checkpoint={"every_events": 700})
    kill_9_after_checkpoints(config)

    summary = run_daemon(config)
    assert summary["resumed_from"] is not None  # the killed runs had learned and checkpointed part of the stream

    from online.config import EventsConfig, ModelConfig
    from online.learning.learner import Learner

    expected = Learner(ModelConfig(**REGRESSION), EventsConfig(target="y"))
    expected.process_many([dict(e) for e in events])
    unit = summary["units"]["all"]
    assert unit["events_learned"] == unit["events_seen"] == len(events)
    assert unit["metrics"] == expected.metric_values()
    dead = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, f"{topic}.dlq", "confluent-kafka")]
    assert sorted(d["source"]["offset"] for d in dead) == sorted(bad)  # each exactly once
    assert all(d["reason"].startswith(f"schema id 987654 (subject {topic}-value)") for d in dead)


def test_config_check_asks_the_schema_registry_and_names_its_url_when_it_does_not_answer(tmp_path, schema_registry):
    def check(url: str) -> subprocess.CompletedProcess:
        path = tmp_path / "job.yaml"
        path.write_text(
            "model: {pipeline: [{linear_model.LogisticRegression: {}}]}\nevents: {target: label}\ncheckpoint: {uri: ./checkpoints}\n"
            f"kafka: {{topic: events, format: avro, schema_registry: {{url: '{url}'}}}}\n"
        )
        command = [sys.executable, "-m", "riverbeam.cli", "config", "check", str(path)]
        return subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, NO_GCE_CHECK="true"), timeout=120)

    answered, silent = check(schema_registry.url), check("http://127.0.0.1:9")

    assert answered.returncode == 0, answered.stderr[-2000:]
    assert silent.returncode == 2 and "Traceback" not in silent.stderr
    assert f"{tmp_path / 'job.yaml'}: kafka.schema_registry.url: the schema registry at http://127.0.0.1:9 does not answer" in silent.stderr


def test_config_check_online_names_the_subject_no_producer_has_registered(tmp_path, schema_registry, topic):
    client = registry_client({"url": schema_registry.url})[0]
    AvroSerializer(client, json.dumps({"type": "record", "name": "E", "fields": [{"name": "x", "type": "double"}]}))(
        {"x": 1.0}, SerializationContext(topic, MessageField.VALUE))  # registers <topic>-value, as a producer's first record does

    def check(topics: str, *flags: str) -> subprocess.CompletedProcess:
        path = tmp_path / "job.yaml"
        path.write_text(
            "model: {pipeline: [{linear_model.LogisticRegression: {}}]}\nevents: {target: label}\ncheckpoint: {uri: ./checkpoints}\n"
            f"kafka: {{topics: [{topics}], format: avro, schema_registry: {{url: '{schema_registry.url}'}}}}\n"
        )
        command = [sys.executable, "-m", "riverbeam.cli", "config", "check", str(path), *flags]
        return subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, NO_GCE_CHECK="true"), timeout=120)

    registered, unregistered, offline = check(topic, "--online"), check(f"{topic}, {topic}-new", "--online"), check(f"{topic}-new")

    assert registered.returncode == 0, registered.stderr[-2000:]
    assert unregistered.returncode == 2 and "Traceback" not in unregistered.stderr
    assert f"kafka.topics: no schema under subject {topic}-new-value in the schema registry at {schema_registry.url}" in unregistered.stderr
    assert offline.returncode == 0, offline.stderr[-2000:]  # without --online only the registry's URL is checked
