"""Writing records in the schema-registry formats: predictions and dead letters as Avro, JSON Schema or Protobuf.

The reading side is `online.formats`; this is its writing side, kept apart so that a job that only
reads imports no serializer. ``kafka.predictions_format`` and ``kafka.dead_letter_format``
(`online.config.KafkaConfig`) pick ``json`` (the default: the records as they always were),
``avro``, ``json_schema`` or ``protobuf``. Each output record has one shape, so each has ONE schema per format here:

- a prediction (`online.learning.learner.Prediction.record`): `PREDICTION_AVRO` / `PREDICTION_JSON_SCHEMA` /
  `PREDICTION_PROTOBUF` (the fields of the ``riverbeam.Prediction`` message, built by `protobuf_record_class`);
- a dead letter (`online.dead_letters.DeadLetterRecord`): `DEAD_LETTER_AVRO` / `DEAD_LETTER_JSON_SCHEMA` /
  `DEAD_LETTER_PROTOBUF` (``riverbeam.DeadLetter``).

The records are serialized by confluent-kafka's own `AvroSerializer` / `JSONSerializer` /
`ProtobufSerializer` (the wire format, the schema's registration, the subject), under the subject naming strategy of
``kafka.subject_name_strategy`` (``topic``: ``<topic>-value``, ``record``: the record's full name,
``riverbeam.Prediction``, ``topic_record``: ``<topic>-riverbeam.Prediction``), registering the
schema unless ``kafka.auto_register_schemas`` is false (then it must be registered already).

In Avro, a field the JSON record leaves out (``key`` of a global model, ``probabilities`` of a
regressor, ``label`` and ``learned`` of a job that only predicts) is null; scalar values (``key``,
``prediction``, ``label``, ``id``) are a union of null, boolean, long, double and string, so a
decoded record holds the same Python values as the JSON one. A value of another type is written
as its text, as the JSON records write it.

In Protobuf (proto3, messages built from descriptors by `protobuf_message_class`, the one builder
that also derives backfill messages), each of those union fields is a ``oneof`` named after the
field with one member per type: ``oneof key { bool key_bool = 1; int64 key_int64 = 2; double
key_double = 3; string key_string = 4; }``, none set for null. Not ``google.protobuf.Value``: its
one number type is a double, so an integer key, label or class would come back as a float (and
lose digits past 2**53), where Avro's union and JSON keep ``17`` and ``17.0`` apart; a ``oneof``
keeps all four types, needs no import of the well-known types in the registered schema, and any
consumer with the registry's schema decodes it (``WhichOneof("key")``). The other nullable fields
are proto3 ``optional`` (unset for null); ``probabilities`` is a ``map<string, double>`` (Protobuf
cannot tell an empty map from none: `protobuf_record` reads both as null); a dead letter's
``source`` is a nested message ``Source`` with optional ``topic``, ``partition``, ``offset``,
``file`` and ``line``. Field numbers follow the order of `PREDICTION_PROTOBUF` /
`DEAD_LETTER_PROTOBUF`: a new field goes at the end, so that written records stay readable.
`protobuf_record` reads a message back into the dict the Avro record decodes to.

>>> to_avro_prediction({"prediction": True, "probabilities": {"true": 0.75, "false": 0.25}, "label": None, "learned": True,
...                     "topic": "events", "partition": 0, "offset": 41})["key"] is None
True
>>> sorted(field["name"] for field in DEAD_LETTER_AVRO["fields"])[:4]
['encoding', 'model', 'reason', 'sha256']
>>> [name for name, _ in PREDICTION_PROTOBUF] == list(PREDICTION_FIELDS)
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from core.errors import ConfigError, RiverbeamError
from online.dead_letters import DEFAULT_MAX_BYTES, DeadLetterRecord
from online.formats import (
    SchemaRegistryUnavailable,
    is_transport_error,
    registry_client,
)

WRITE_FORMATS = ("json", "avro", "json_schema", "protobuf")
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

_UNION = ("bool", "int64", "double", "string")  # Avro's scalar union as a Protobuf oneof: one member per type, none set for null

PREDICTION_PROTOBUF: list = [  # (field, kind) of the riverbeam.Prediction message, in field-number order (`protobuf_message_class`)
    ("key", _UNION), ("prediction", _UNION), ("probabilities", "map<string, double>"), ("label", _UNION),
    ("learned", "optional bool"), ("topic", "optional string"), ("partition", "optional int32"), ("offset", "optional int64"),
    ("checkpoint", "optional string"), ("id", _UNION),
]  # fmt: skip

DEAD_LETTER_PROTOBUF: list = [  # riverbeam.DeadLetter; source: {topic, partition, offset}, {file, line} or {}
    ("version", "int32"),
    ("source", [("topic", "optional string"), ("partition", "optional int32"), ("offset", "optional int64"),
                ("file", "optional string"), ("line", "optional int64")]),
    ("reason", "string"), ("value", "optional string"), ("encoding", "optional string"), ("size", "optional int64"),
    ("sha256", "optional string"), ("truncated", "bool"), ("time", "string"), ("stage", "optional string"), ("model", "optional string"),
]  # fmt: skip

PROTOBUF_MESSAGES = {"prediction": ("Prediction", PREDICTION_PROTOBUF), "dead letter": ("DeadLetter", DEAD_LETTER_PROTOBUF)}

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
    """A prediction record (`Prediction.record`) with every field of `PREDICTION_AVRO`: the absent ones null; an
    integer beyond Avro's long as its text, as Protobuf writes it (fastavro would pick the union's double, losing digits).

    >>> to_avro_prediction({"key": "u7", "prediction": 2.5, "checkpoint": "ck-1"})["prediction"]
    2.5
    >>> to_avro_prediction({"key": 2**64 + 1, "prediction": 1})["key"]
    '18446744073709551617'
    """
    out = {name: record.get(name) for name in PREDICTION_FIELDS}
    for name in ("key", "prediction", "label", "id"):
        value = _scalar(out[name])
        out[name] = str(value) if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX else value
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
        if schema is None and (kind, fmt) not in SCHEMAS and not (fmt == "protobuf" and kind in PROTOBUF_MESSAGES):
            raise ConfigError(setting, f"{fmt!r} is not a format {kind} records are written in (one of {', '.join(WRITE_FORMATS)})")
        if strategy not in STRATEGIES:
            raise ConfigError("kafka.subject_name_strategy", f"{strategy!r} is not a subject name strategy (one of {', '.join(STRATEGIES)})")
        self.kind, self.format, self.strategy, self.auto_register, self.setting = kind, fmt, strategy, auto_register, setting
        self.client, self.url = registry_client(registry)
        if schema is None:
            schema = protobuf_record_class(kind) if fmt == "protobuf" else SCHEMAS[(kind, fmt)]
        self.schema = schema
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
        else:  # protobuf: `schema` is the message class (`protobuf_record_class`, `derive_protobuf_class`)
            from confluent_kafka.schema_registry.protobuf import ProtobufSerializer

            serialize = ProtobufSerializer(self.schema, self.client, {"use.deprecated.format": False, **conf})
            shape = protobuf_shaper(self.schema)
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
    """A proto3 message class that every one of `events` fits (`protobuf_message_class`).

    Fields in the order first seen: ``bool``, ``int64``, ``double`` (an integer field that is a float
    elsewhere) or ``string``; a field some event lacks (or holds null) is ``optional``, so the
    decoder leaves it out of those events, as JSON does.

    >>> message = derive_protobuf_class([{"x": 1, "s": "a"}, {"x": 2.5}])
    >>> [(f.name, f.type == f.TYPE_DOUBLE, f.has_presence) for f in message.DESCRIPTOR.fields]
    [('x', True, False), ('s', False, True)]
    """
    kinds, _ = _field_kinds(events)
    table = {bool: "bool", int: "int64", float: "double", str: "string"}
    fields = []
    for field, kind in kinds.items():
        types, nullable = _field_type(field, kind, table, setting)
        if types:  # null in every event: nothing to carry
            fields.append((field, f"optional {types[0]}" if nullable else types[0]))
    return protobuf_message_class(name, fields, setting)


_PROTOBUF_TYPES = {"bool": "TYPE_BOOL", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "double": "TYPE_DOUBLE", "string": "TYPE_STRING"}


def protobuf_message_class(name: str, fields: Sequence[tuple[str, Any]], setting: str = "kafka.format"):
    """A proto3 message class ``riverbeam.<name>`` built from descriptors as protoc would generate it: the one
    builder behind the output records' messages (`protobuf_record_class`) and `derive_protobuf_class`.

    `fields` are ``(name, kind)`` pairs, numbered from 1 in their order. A kind is a scalar type
    (``"bool"``, ``"int32"``, ``"int64"``, ``"double"``, ``"string"``); ``"optional <scalar>"`` (proto3
    presence: unset is absent); ``"map<string, double>"`` (any two scalars); a tuple of scalar types, a
    union: a ``oneof`` named after the field with a member ``<field>_<type>`` per type (none set: null);
    or a list of fields, a nested message named after the field (capitalized) with those fields.
    A field name Protobuf refuses is a `ConfigError` at `setting`.

    >>> message = protobuf_message_class("Point", [("x", "double"), ("tag", ("int64", "string")), ("note", "optional string")])
    >>> message(x=1.5, tag_string="a").WhichOneof("tag"), [f.name for f in message.DESCRIPTOR.fields]
    ('tag_string', ['x', 'tag_int64', 'tag_string', 'note'])
    """
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.message_factory import GetMessageClass

    file_proto = descriptor_pb2.FileDescriptorProto(name=f"{NAMESPACE}_{name.lower()}.proto", package=NAMESPACE, syntax="proto3")
    _add_protobuf_fields(file_proto.message_type.add(name=name), fields, f"{NAMESPACE}.{name}", descriptor_pb2.FieldDescriptorProto)
    pool = descriptor_pool.DescriptorPool()
    try:
        pool.Add(file_proto)
    except TypeError as error:  # a field name Protobuf refuses (e.g. with a dot or a dash)
        raise ConfigError(setting, f"cannot derive a Protobuf message from these events: {error}") from None
    return GetMessageClass(pool.FindMessageTypeByName(f"{NAMESPACE}.{name}"))


def _add_protobuf_fields(message, fields: Sequence[tuple[str, Any]], full_name: str, F) -> None:
    """`fields` (`protobuf_message_class`) into the DescriptorProto `message` named `full_name`."""
    unions = [name for name, kind in fields if isinstance(kind, tuple)]
    optional: list[str] = []  # proto3's synthetic oneofs, which must follow every real one
    number = 0

    def add(name: str, kind: str, **spec):
        nonlocal number
        number += 1
        if kind in _PROTOBUF_TYPES:
            spec["type"] = getattr(F, _PROTOBUF_TYPES[kind])
        return message.field.add(name=name, number=number, label=spec.pop("label", F.LABEL_OPTIONAL), **spec)

    for name, kind in fields:
        if isinstance(kind, tuple):
            for member in kind:
                add(f"{name}_{member}", member, oneof_index=unions.index(name))
        elif isinstance(kind, list):
            nested = message.nested_type.add(name=name[:1].upper() + name[1:])
            _add_protobuf_fields(nested, kind, f"{full_name}.{nested.name}", F)
            add(name, "", type=F.TYPE_MESSAGE, type_name=f".{full_name}.{nested.name}")
        elif kind.startswith("map<"):
            key, value = (part.strip() for part in kind[4:-1].split(","))
            entry = message.nested_type.add(name=name.title().replace("_", "") + "Entry")  # as protoc names it
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=getattr(F, _PROTOBUF_TYPES[key]), label=F.LABEL_OPTIONAL)
            entry.field.add(name="value", number=2, type=getattr(F, _PROTOBUF_TYPES[value]), label=F.LABEL_OPTIONAL)
            add(name, "", type=F.TYPE_MESSAGE, type_name=f".{full_name}.{entry.name}", label=F.LABEL_REPEATED)
        elif kind.startswith("optional "):
            add(name, kind.removeprefix("optional "), proto3_optional=True, oneof_index=len(unions) + len(optional))
            optional.append(name)
        else:
            add(name, kind)
    for name in unions + [f"_{name}" for name in optional]:
        message.oneof_decl.add(name=name)


@functools.cache
def protobuf_record_class(kind: str):
    """The message class of riverbeam's ``"prediction"`` or ``"dead letter"`` records (`PREDICTION_PROTOBUF`, `DEAD_LETTER_PROTOBUF`):
    the class a consumer application reads them with (confluent-kafka's ``ProtobufDeserializer``).

    >>> protobuf_record_class("prediction").DESCRIPTOR.full_name, protobuf_record_class("dead letter").DESCRIPTOR.full_name
    ('riverbeam.Prediction', 'riverbeam.DeadLetter')
    """
    name, fields = PROTOBUF_MESSAGES[kind]
    return protobuf_message_class(name, fields)


_MEMBER_OF = {bool: "bool", int: "int64", float: "double", str: "string"}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _unions(message_class) -> frozenset[str]:
    """The union fields of a message (`protobuf_message_class`): its oneofs of more than one member
    (proto3's ``optional`` is a oneof of one)."""
    return frozenset(oneof.name for oneof in message_class.DESCRIPTOR.oneofs if len(oneof.fields) > 1)


def protobuf_shaper(message_class) -> Callable[[dict], Any]:
    """How a record (a dict) becomes a `message_class` message: a null is left unset, a union field's value
    goes to the member of its type (another type, or an integer beyond int64, as its text: never a record
    that cannot be written).

    >>> shape = protobuf_shaper(protobuf_record_class("prediction"))
    >>> message = shape({"key": 17, "prediction": 2.5, "label": None, "learned": True})
    >>> message.WhichOneof("key"), message.key_int64, message.WhichOneof("prediction"), message.HasField("learned")
    ('key_int64', 17, 'prediction_double', True)
    >>> shape({"key": 2**64 - 1}).key_string
    '18446744073709551615'
    """
    unions = _unions(message_class)

    def shape(record: dict):
        fields = {}
        for name, value in record.items():
            if value is None:
                continue
            if name in unions:
                member = _MEMBER_OF.get(type(value))
                if member is None or member == "int64" and not _INT64_MIN <= value <= _INT64_MAX:
                    value, member = str(value), "string"
                name = f"{name}_{member}"
            fields[name] = value
        return message_class(**fields)

    return shape


def protobuf_record(message) -> dict:
    """A riverbeam Protobuf record read back as a dict, as its Avro record decodes: every field, an unset
    one None; a union field as its set member's value; a map as a dict (empty: None); a nested message
    (a dead letter's ``source``) as the dict of its set fields.

    >>> message = protobuf_shaper(protobuf_record_class("prediction"))({"key": "u7", "prediction": 2.5, "checkpoint": "ck-1"})
    >>> {name: value for name, value in protobuf_record(message).items() if value is not None}
    {'key': 'u7', 'prediction': 2.5, 'checkpoint': 'ck-1'}
    """
    unions = _unions(type(message))
    out: dict = {}
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.name in unions:
            if oneof.name not in out:
                member = message.WhichOneof(oneof.name)
                out[oneof.name] = None if member is None else getattr(message, member)
            continue
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[field.name] = dict(value) or None
        elif field.has_presence and not message.HasField(field.name):
            out[field.name] = None
        elif field.message_type is not None:
            out[field.name] = {name: inner for name, inner in protobuf_record(value).items() if inner is not None}
        else:
            out[field.name] = value
    return out
