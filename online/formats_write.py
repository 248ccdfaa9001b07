"""Writing records in the schema-registry formats: predictions and dead letters as Avro or JSON Schema.

The reading side is `online.formats`; this is its writing side, kept apart so that a job that only
reads imports no serializer. ``kafka.predictions_format`` and ``kafka.dead_letter_format``
(`online.config.KafkaConfig`) pick ``json`` (the default: the records as they always were),
``avro`` or ``json_schema``. Each output record has one shape, so each has ONE schema here:

- a prediction (`online.learning.learner.Prediction.record`): `PREDICTION_AVRO` / `PREDICTION_JSON_SCHEMA`;
- a dead letter (`online.dead_letters.DeadLetterRecord`): `DEAD_LETTER_AVRO` / `DEAD_LETTER_JSON_SCHEMA`.

The records are serialized by confluent-kafka's own `AvroSerializer` / `JSONSerializer` (the
wire format, the schema's registration, the subject), under the subject naming strategy of
``kafka.subject_name_strategy`` (``topic``: ``<topic>-value``, ``record``: the record's full name,
``riverbeam.Prediction``, ``topic_record``: ``<topic>-riverbeam.Prediction``), registering the
schema unless ``kafka.auto_register_schemas`` is false (then it must be registered already).

In Avro, a field the JSON record leaves out (``key`` of a global model, ``probabilities`` of a
regressor, ``label`` and ``learned`` of a job that only predicts) is null; scalar values (``key``,
``prediction``, ``label``, ``id``) are a union of null, boolean, long, double and string, so a
decoded record holds the same Python values as the JSON one. A value of another type is written
as its text, as the JSON records write it.

>>> to_avro_prediction({"prediction": True, "probabilities": {"true": 0.75, "false": 0.25}, "label": None, "learned": True,
...                     "topic": "events", "partition": 0, "offset": 41})["key"] is None
True
>>> sorted(field["name"] for field in DEAD_LETTER_AVRO["fields"])[:4]
['encoding', 'model', 'reason', 'sha256']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson

from core.errors import ConfigError, RiverbeamError
from online.dead_letters import DEFAULT_MAX_BYTES, DeadLetterRecord
from online.formats import (
    SchemaRegistryUnavailable,
    is_transport_error,
    registry_client,
)

WRITE_FORMATS = ("json", "avro", "json_schema")
STRATEGIES = {"topic": "TOPIC", "record": "RECORD", "topic_record": "TOPIC_RECORD"}  # confluent-kafka's subject.name.strategy.type
NAMESPACE = "riverbeam"
_SCALAR = ["null", "boolean", "long", "double", "string"]  # JSON's scalars, as Avro's union: a decoded value keeps its Python type
_SCALAR_JSON = {"type": ["null", "boolean", "integer", "number", "string"]}
_ENCODING_HEADROOM = 256  # bytes: the wire format's 5 and JSONSerializer's separators, over the dead letter's JSON size


def _optional(avro_type: Any, name: str, doc: str) -> dict:
    return {"name": name, "type": ["null", avro_type], "default": None, "doc": doc}


PREDICTION_AVRO: dict = {
    "type": "record",
    "name": "Prediction",
    "namespace": NAMESPACE,
    "doc": "One prediction of a riverbeam job (online.learning.learner.Prediction.record); fields a job does not write are null.",
    "fields": [
        {"name": "key", "type": _SCALAR, "default": None, "doc": "the model key (events.key), per-key models only"},
        {"name": "prediction", "type": _SCALAR, "default": None, "doc": "the predicted value (a classifier's most probable class)"},
        _optional({"type": "map", "values": "double"}, "probabilities", "a classifier's class probabilities keyed by the label as JSON text"),
        {"name": "label", "type": _SCALAR, "default": None, "doc": "the event's label (null when it had none or the job only predicts)"},
        _optional("boolean", "learned", "whether the model learned from the event (null when the job only predicts)"),
        _optional("string", "topic", "the event's source topic (the daemon)"),
        _optional("int", "partition", "the event's source partition (the daemon)"),
        _optional("long", "offset", "the event's source offset (the daemon)"),
        _optional("string", "checkpoint", "the checkpoint the model came from (predict, serve)"),
        {"name": "id", "type": _SCALAR, "default": None, "doc": "the event's id (stream-learn with events.id)"},
    ],
}
PREDICTION_FIELDS = tuple(field["name"] for field in PREDICTION_AVRO["fields"])

PREDICTION_JSON_SCHEMA: dict = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "riverbeam.Prediction",
    "description": PREDICTION_AVRO["doc"],
    "type": "object",
    "properties": {
        "key": _SCALAR_JSON,
        "prediction": _SCALAR_JSON,
        "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
        "label": _SCALAR_JSON,
        "learned": {"type": "boolean"},
        "topic": {"type": "string"},
        "partition": {"type": "integer"},
        "offset": {"type": "integer"},
        "checkpoint": {"type": "string"},
        "id": _SCALAR_JSON,
    },
    "required": ["prediction"],
}

DEAD_LETTER_AVRO: dict = {
    "type": "record",
    "name": "DeadLetter",
    "namespace": NAMESPACE,
    "doc": "One refused event (online.dead_letters.DeadLetterRecord, schema version 1).",
    "fields": [
        {"name": "version", "type": "int"},
        {"name": "source", "type": {"type": "map", "values": ["long", "string"]}, "doc": "{topic, partition, offset}, {file, line} or {}"},
        {"name": "reason", "type": "string"},
        _optional("string", "value", "the original bytes: UTF-8 text, or base64 (see encoding)"),
        _optional("string", "encoding", "utf-8 or base64"),
        _optional("long", "size", "length of the original bytes"),
        _optional("string", "sha256", "hex digest of the original bytes"),
        {"name": "truncated", "type": "boolean"},
        {"name": "time", "type": "string", "doc": "when the record was written, ISO 8601 UTC"},
        _optional("string", "stage", "parse or learn"),
        _optional("string", "model", "the candidate model that refused it"),
    ],
}

DEAD_LETTER_JSON_SCHEMA: dict = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "riverbeam.DeadLetter",
    "description": DEAD_LETTER_AVRO["doc"],
    "type": "object",
    "properties": {
        "version": {"type": "integer"},
        "source": {"type": "object", "additionalProperties": {"type": ["integer", "string"]}},
        "reason": {"type": "string"},
        "value": {"type": ["string", "null"]},
        "encoding": {"type": ["string", "null"]},
        "size": {"type": ["integer", "null"]},
        "sha256": {"type": ["string", "null"]},
        "truncated": {"type": "boolean"},
        "time": {"type": "string"},
        "stage": {"type": "string"},
        "model": {"type": "string"},
    },
    "required": ["version", "source", "reason", "value", "truncated", "time"],
}

SCHEMAS = {
    ("prediction", "avro"): PREDICTION_AVRO,
    ("prediction", "json_schema"): PREDICTION_JSON_SCHEMA,
    ("dead letter", "avro"): DEAD_LETTER_AVRO,
    ("dead letter", "json_schema"): DEAD_LETTER_JSON_SCHEMA,
}


def subject_name(strategy: str, topic: str, record: str) -> str:
    """The subject of `record` (a schema's full name) written to `topic` under ``kafka.subject_name_strategy``.

    >>> subject_name("topic", "events.predictions", "riverbeam.Prediction"), subject_name("topic_record", "p", "riverbeam.Prediction")
    ('events.predictions-value', 'p-riverbeam.Prediction')
    """
    return {"topic": f"{topic}-value", "record": record, "topic_record": f"{topic}-{record}"}[strategy]


def check_output_subjects(kafka) -> None:
    """With ``kafka.auto_register_schemas: false``, each output written in a registry format must find its schema's
    subject in the registry (``riverbeam config check --online``), or a one-line `ConfigError` naming the subject.

    >>> from online.config import KafkaConfig
    >>> check_output_subjects(KafkaConfig(topic="events", predictions_topic="p"))  # JSON outputs: nothing to ask
    """
    outputs = [(topic, fmt, name) for topic, fmt, name in (
        (kafka.predictions_topic, kafka.predictions_format, f"{NAMESPACE}.Prediction"),
        (kafka.dead_letter_topic, kafka.dead_letter_format, f"{NAMESPACE}.DeadLetter"),
    ) if topic and fmt != "json"]  # fmt: skip
    if kafka.auto_register_schemas or not outputs:
        return
    client, url = registry_client(kafka.schema_registry or {})
    try:
        registered = set(client.get_subjects())
    except Exception as error:  # the HTTP client's own errors or the registry's: one line
        raise ConfigError("kafka.schema_registry.url", f"the schema registry at {url} does not answer ({type(error).__name__}: {error})") from None
    missing = [subject_name(kafka.subject_name_strategy, topic, name) for topic, _, name in outputs]
    missing = [subject for subject in missing if subject not in registered]
    if missing:
        raise ConfigError("kafka.auto_register_schemas", f"no schema under subject {', '.join(missing)} in the schema registry at {url}: "
                          "register riverbeam's output schemas (online/formats_write.py), or set kafka.auto_register_schemas: true")


class RecordNotWritable(RiverbeamError):
    """A record does not fit the schema it is written with (`RecordSerializer`): that record only."""


def _scalar(value: Any) -> Any:
    """A JSON scalar as it is; anything else as its text (as ``orjson.dumps(..., default=str)`` writes it)."""
    return value if value is None or type(value) in (bool, int, float, str) else str(value)


def to_avro_prediction(record: dict) -> dict:
    """A prediction record (`Prediction.record`) with every field of `PREDICTION_AVRO`: the absent ones null.

    >>> to_avro_prediction({"key": "u7", "prediction": 2.5, "checkpoint": "ck-1"})["prediction"]
    2.5
    """
    out = {name: record.get(name) for name in PREDICTION_FIELDS}
    for name in ("key", "prediction", "label", "id"):
        out[name] = _scalar(out[name])
    return out


def to_json_schema_prediction(record: dict) -> dict:
    """A prediction record whose scalar fields fit `PREDICTION_JSON_SCHEMA` (another type as its text); absent fields stay absent.

    >>> to_json_schema_prediction({"prediction": ("a", 1), "label": None})
    {'prediction': "('a', 1)", 'label': None}
    """
    out = dict(record)
    for name in ("key", "prediction", "label", "id"):
        if name in out:
            out[name] = _scalar(out[name])
    return out


class RecordSerializer:
    """Serializes one kind of output record (``"prediction"`` or ``"dead letter"``) in ``avro`` or ``json_schema``.

    ``serializer(record, topic)`` returns the value bytes in the schema-registry wire format,
    through confluent-kafka's `AvroSerializer` / `JSONSerializer` with the kind's one schema.
    `check` registers (or, with ``auto_register`` off, finds) the schema under its subject now,
    so a registry that cannot be reached or a subject without it is one line before any record.
    `setting` is the configuration key that chose the format (named in those lines).

    >>> RecordSerializer("prediction", "avro", {"url": "http://127.0.0.1:9"}, "record").subject("events.predictions")
    'riverbeam.Prediction'
    """

    def __init__(self, kind: str, fmt: str, registry: dict[str, Any], strategy: str = "topic", auto_register: bool = True,
                 setting: str = "kafka.predictions_format", schema: Any = None):  # fmt: skip
        if schema is None and (kind, fmt) not in SCHEMAS:
            raise ConfigError(setting, f"{fmt!r} is not a format {kind} records are written in (one of {', '.join(WRITE_FORMATS)})")
        if strategy not in STRATEGIES:
            raise ConfigError("kafka.subject_name_strategy", f"{strategy!r} is not a subject name strategy (one of {', '.join(STRATEGIES)})")
        self.kind, self.format, self.strategy, self.auto_register, self.setting = kind, fmt, strategy, auto_register, setting
        self.client, self.url = registry_client(registry)
        self.schema = schema if schema is not None else SCHEMAS[(kind, fmt)]
        conf = {"subject.name.strategy.type": STRATEGIES[strategy], "auto.register.schemas": auto_register}
        if fmt == "avro":
            from confluent_kafka.schema_registry.avro import AvroSerializer

            serialize = AvroSerializer(self.client, orjson.dumps(self.schema).decode(), conf=conf)
            shape = to_avro_prediction if kind == "prediction" else None
        elif fmt == "json_schema":
            from confluent_kafka.schema_registry.json_schema import JSONSerializer

            # riverbeam's own records are built to their schema (shaped here): validating each costs ~100 us; a user's events are validated
            own = kind in ("prediction", "dead letter")
            serialize = JSONSerializer(orjson.dumps(self.schema).decode(), self.client, conf={**conf, "validate": not own})
            shape = to_json_schema_prediction if kind == "prediction" else None
        else:  # protobuf: `schema` is the message class (`derive_protobuf_class`)
            from confluent_kafka.schema_registry.protobuf import ProtobufSerializer

            message_class = self.schema
            serialize = ProtobufSerializer(message_class, self.client, {"use.deprecated.format": False, **conf})
            shape = lambda record: message_class(**{name: value for name, value in record.items() if value is not None})  # noqa: E731  (unset: absent)
        self._serialize = serialize
        self._shape = shape
        self._contexts: dict[str, Any] = {}

    def subject(self, topic: str) -> str:
        """The subject the schema is registered under for `topic`, by ``kafka.subject_name_strategy``."""
        schema = self.schema
        if not isinstance(schema, dict):  # a Protobuf message class
            name = schema.DESCRIPTOR.full_name
        else:
            name = schema.get("title") or ".".join(part for part in (schema.get("namespace"), schema.get("name")) if part)
        return subject_name(self.strategy, topic, name)

    def __call__(self, record: dict, topic: str) -> bytes:
        from confluent_kafka.schema_registry.error import SchemaRegistryError
        from confluent_kafka.serialization import MessageField, SerializationContext

        context = self._contexts.get(topic)
        if context is None:
            context = self._contexts[topic] = SerializationContext(topic, MessageField.VALUE)
        try:
            return self._serialize(self._shape(record) if self._shape is not None else record, context)
        except SchemaRegistryError as error:
            raise self._registry_error(error, topic) from None
        except (OSError, ConnectionError) as error:
            raise self._unreachable(error, topic) from None
        except Exception as error:
            if is_transport_error(error):
                raise self._unreachable(error, topic) from None
            raise RecordNotWritable(f"cannot write the {self.kind} record as {self.format} ({self.setting}) to {topic}: {type(error).__name__}: {error}") from None

    def check(self, topic: str, sample: dict) -> None:
        """Register (or find) the schema under `topic`'s subject by serializing `sample`; raise one line if that fails."""
        self(sample, topic)

    def _unreachable(self, error: Exception, topic: str) -> SchemaRegistryUnavailable:
        return SchemaRegistryUnavailable(
            f"kafka.schema_registry.url: the schema registry at {self.url} cannot be reached to write {self.kind} records as "
            f"{self.format} ({self.setting}, subject {self.subject(topic)}): {type(error).__name__}: {error}"
        )

    def _registry_error(self, error, topic: str) -> RiverbeamError:
        subject = self.subject(topic)
        status = getattr(error, "http_status_code", None)
        if status == 404 and not self.auto_register:
            return ConfigError("kafka.auto_register_schemas", f"subject {subject} in the schema registry at {self.url} does not hold riverbeam's "
                               f"{self.kind} {self.format} schema: register it, or set kafka.auto_register_schemas: true")  # fmt: skip
        if status in (409, 422):
            return ConfigError(self.setting, f"the schema registry at {self.url} refuses riverbeam's {self.kind} {self.format} schema "
                               f"under subject {subject}: {error}")  # fmt: skip
        if status is not None and status < 500:
            return ConfigError("kafka.schema_registry", f"the schema registry at {self.url} refused the request for subject {subject}: {error}")
        return self._unreachable(error, topic)


SAMPLE_PREDICTION = {"prediction": None, "label": None, "learned": False}


class OutputEncoders:
    """How the daemon encodes its output values: a prediction record and a dead letter, each as
    ``kafka.predictions_format`` / ``kafka.dead_letter_format`` say (`output_encoders`).

    >>> encoders = OutputEncoders()
    >>> encoders.prediction({"prediction": 1.5, "label": 2.0, "learned": True}, "p")
    b'{"prediction":1.5,"label":2.0,"learned":true}'
    """

    def __init__(self, prediction: RecordSerializer | None = None, dead_letter: RecordSerializer | None = None):
        self._prediction = prediction
        self._dead_letter = dead_letter

    def prediction(self, record: dict, topic: str) -> bytes:
        """The value of a prediction record (`online.learning.learner.Prediction.record`) on `topic`."""
        if self._prediction is None:
            return orjson.dumps(record, default=str)
        return self._prediction(record, topic)

    def dead_letter(self, record: DeadLetterRecord, topic: str, max_bytes: int | None = DEFAULT_MAX_BYTES) -> bytes:
        """The value of a dead-letter record on `topic`, at most `max_bytes` long (its value truncated to fit, as in JSON)."""
        if self._dead_letter is None:
            return record.to_json(max_bytes)
        limit = None if max_bytes is None else max(0, max_bytes - _ENCODING_HEADROOM)
        return self._dead_letter(orjson.loads(record.to_json(limit)), topic)  # the one record, its one size rule


def output_encoders(kafka) -> OutputEncoders:
    """The daemon's output encoders for its ``kafka:`` section, their schemas registered (or found) now.

    JSON outputs need nothing; a registry format checks its subject at once, so a registry that
    cannot be reached or a refused schema stops the daemon in one line naming the key, before any
    event is read.

    >>> from online.config import KafkaConfig
    >>> output_encoders(KafkaConfig(topic="events", predictions_topic="p")).prediction({"prediction": 1}, "p")
    b'{"prediction":1}'
    """
    registry = kafka.schema_registry or {}
    strategy, auto = kafka.subject_name_strategy, kafka.auto_register_schemas
    prediction = dead_letter = None
    if kafka.predictions_topic and kafka.predictions_format != "json":
        prediction = RecordSerializer("prediction", kafka.predictions_format, registry, strategy, auto, "kafka.predictions_format")
        prediction.check(kafka.predictions_topic, SAMPLE_PREDICTION)
    if kafka.dead_letter_topic and kafka.dead_letter_format != "json":
        dead_letter = RecordSerializer("dead letter", kafka.dead_letter_format, registry, strategy, auto, "kafka.dead_letter_format")
        dead_letter.check(kafka.dead_letter_topic, orjson.loads(DeadLetterRecord("schema check", None).to_json()))
    return OutputEncoders(prediction, dead_letter)


_AVRO_OF = {bool: "boolean", int: "long", float: "double", str: "string"}
_JSON_OF = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _field_kinds(events: Iterable[dict]) -> tuple[dict[str, set], int]:
    kinds: dict[str, set] = {}
    seen: dict[str, int] = {}
    count = 0
    for event in events:
        count += 1
        for name, value in event.items():
            kinds.setdefault(name, set()).add(type(value))
            seen[name] = seen.get(name, 0) + 1
    return {name: kind | ({type(None)} if seen[name] < count else set()) for name, kind in kinds.items()}, count


def _field_type(name: str, kind: set, table: dict, setting: str) -> tuple[list, bool]:
    """The types of a field seen with Python types `kind` (an int among floats is a double), and whether it may be null."""
    nullable = type(None) in kind
    kind = kind - {type(None)}
    if kind == {int, float}:
        kind = {float}
    unknown = sorted(k.__name__ for k in kind if k not in table)
    if unknown or len(kind) > 1 or not kind and not nullable:
        what = ", ".join(unknown) if unknown else " and ".join(sorted(k.__name__ for k in kind))
        raise ConfigError(setting, f"cannot derive a schema for field {name!r}: its values are {what}; give one (kafka.value_schema)")
    return [table[k] for k in kind], nullable


def derive_avro_schema(events: Iterable[dict], name: str = "Event", setting: str = "kafka.value_schema") -> dict:
    """A flat Avro record schema that every one of `events` fits: a field missing somewhere (or null) is a union with null.

    An integer field that is a float elsewhere is a double; a field with values of two other types
    (or a nested object or list) cannot be derived: a `ConfigError` naming it.

    >>> derive_avro_schema([{"x": 1, "s": "a"}, {"x": 2.5, "y": True}])["fields"]
    [{'name': 'x', 'type': 'double'}, {'name': 's', 'type': ['null', 'string'], 'default': None}, {'name': 'y', 'type': ['null', 'boolean'], 'default': None}]
    """
    kinds, _ = _field_kinds(events)
    fields = []
    for field, kind in kinds.items():
        types, nullable = _field_type(field, kind, _AVRO_OF, setting)
        fields.append({"name": field, "type": ["null", *types], "default": None} if nullable else {"name": field, "type": types[0]})
    return {"type": "record", "name": name, "namespace": NAMESPACE, "fields": fields}


def derive_json_schema(events: Iterable[dict], name: str = "Event", setting: str = "kafka.value_schema") -> dict:
    """A JSON Schema that every one of `events` fits (the fields, their types; those in every event required).

    >>> derive_json_schema([{"x": 1, "s": "a"}, {"x": 2.5}])["properties"]
    {'x': {'type': ['number']}, 's': {'type': ['string', 'null']}}
    """
    kinds, _ = _field_kinds(events)
    properties, required = {}, []
    for field, kind in kinds.items():
        types, nullable = _field_type(field, kind, _JSON_OF, setting)
        properties[field] = {"type": types + (["null"] if nullable else [])}
        if not nullable:
            required.append(field)
    return {"$schema": "http://json-schema.org/draft-07/schema#", "title": f"{NAMESPACE}.{name}", "type": "object",
            "properties": properties, "required": required}  # fmt: skip


def event_serializer(kafka, events: Callable[[], Iterable[dict]]) -> RecordSerializer | None:
    """How ``replay --mode backfill`` writes events into a topic of ``kafka.format``: None for JSON, else a
    `RecordSerializer` with the schema in ``kafka.value_schema`` (an ``.avsc`` file, or a JSON Schema),
    or one derived from `events()` (`derive_avro_schema`, `derive_json_schema`) when it names none;
    Protobuf always derives its message (`derive_protobuf_class`).

    >>> from online.config import KafkaConfig
    >>> event_serializer(KafkaConfig(topic="events"), list) is None
    True
    """
    fmt = kafka.format
    if fmt == "json":
        return None
    if fmt == "protobuf" and kafka.value_schema:
        raise ConfigError("kafka.value_schema", "a Protobuf backfill derives its message from the events: leave kafka.value_schema out "
                          "(a .proto file would need compiling; write the topic with your producer's generated classes instead)")
    if fmt == "protobuf":
        schema = derive_protobuf_class(events())
    elif kafka.value_schema:
        from core.storage import StorageError, read_bytes

        try:
            schema = orjson.loads(read_bytes(kafka.value_schema))
        except orjson.JSONDecodeError as error:
            raise ConfigError("kafka.value_schema", f"{kafka.value_schema} is not a JSON schema file: {error}") from None
        except (OSError, StorageError) as error:
            raise ConfigError("kafka.value_schema", f"cannot read {kafka.value_schema}: {error}") from None
        if not isinstance(schema, dict):
            raise ConfigError("kafka.value_schema", f"{kafka.value_schema} holds no schema object")
    else:
        schema = (derive_avro_schema if fmt == "avro" else derive_json_schema)(events())
    try:
        return RecordSerializer("event", fmt, kafka.schema_registry or {}, kafka.subject_name_strategy, kafka.auto_register_schemas,
                                "kafka.value_schema" if kafka.value_schema else "kafka.format", schema=schema)  # fmt: skip
    except (ConfigError, SchemaRegistryUnavailable):
        raise
    except Exception as error:  # the serializer refused the schema itself (fastavro's SchemaParseException, ...)
        if kafka.value_schema:
            raise ConfigError("kafka.value_schema", f"not a valid {fmt} schema: {type(error).__name__}: {error}") from None
        raise ConfigError("kafka.format", f"the {fmt} schema derived from the events is not valid ({type(error).__name__}: {error}): "
                          "give one in kafka.value_schema") from None


def derive_protobuf_class(events: Iterable[dict], name: str = "Event", setting: str = "kafka.format"):
    """A proto3 message class that every one of `events` fits, built from descriptors as protoc would generate it.

    Fields in the order first seen: ``bool``, ``int64``, ``double`` (an integer field that is a float
    elsewhere) or ``string``; a field some event lacks (or holds null) is ``optional``, so the
    decoder leaves it out of those events, as JSON does.

    >>> message = derive_protobuf_class([{"x": 1, "s": "a"}, {"x": 2.5}])
    >>> [(f.name, f.type == f.TYPE_DOUBLE, f.has_presence) for f in message.DESCRIPTOR.fields]
    [('x', True, False), ('s', False, True)]
    """
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.message_factory import GetMessageClass

    kinds, _ = _field_kinds(events)
    F = descriptor_pb2.FieldDescriptorProto
    table = {bool: F.TYPE_BOOL, int: F.TYPE_INT64, float: F.TYPE_DOUBLE, str: F.TYPE_STRING}
    file_proto = descriptor_pb2.FileDescriptorProto(name=f"{NAMESPACE}_{name.lower()}.proto", package=NAMESPACE, syntax="proto3")
    message = file_proto.message_type.add(name=name)
    for number, (field, kind) in enumerate(kinds.items(), start=1):
        types, nullable = _field_type(field, kind, table, setting)
        if not types:
            continue  # null in every event: nothing to carry
        spec = message.field.add(name=field, number=number, type=types[0], label=F.LABEL_OPTIONAL)
        if nullable:
            spec.proto3_optional = True
            spec.oneof_index = len(message.oneof_decl)
            message.oneof_decl.add(name=f"_{field}")
    pool = descriptor_pool.DescriptorPool()
    try:
        pool.Add(file_proto)
    except TypeError as error:  # a field name Protobuf refuses (e.g. with a dot or a dash)
        raise ConfigError(setting, f"cannot derive a Protobuf message from these events: {error}") from None
    return GetMessageClass(pool.FindMessageTypeByName(f"{NAMESPACE}.{name}"))
