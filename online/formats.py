"""Record formats on Kafka: JSON, or Avro / Protobuf / JSON Schema through a schema registry.

``kafka.format`` picks how a record's value becomes an event (`online.config.KafkaConfig`):

- ``json`` (the default): the value is a JSON object (`online.learning.loop.decode`, orjson).
- ``avro``, ``protobuf``, ``json_schema``: the value is in the schema-registry wire format (a
  zero magic byte, the schema id in 4 bytes, then the payload), as Confluent's serializers and
  those of most Kafka shops write it. `RegistryDecoder` decodes it with confluent-kafka's own
  deserializers (`confluent_kafka.schema_registry`; Avro through fastavro), talking to the
  registry at ``kafka.schema_registry.url`` with the keys confluent-kafka's
  ``SchemaRegistryClient`` takes. Each schema id is fetched once and cached by that client.

Every decoded record goes through `flatten`, one rule for every format: nested records become
features named by their path (``address.city``), Avro/Protobuf logical types become what River
learns from (timestamps -> epoch seconds, dates -> days since 1970-01-01, times -> seconds since
midnight, decimals -> float), enums are their symbol (a string: list the field in
``events.categorical``), and a null (an unset union-with-null, an absent optional field) is left
out of the event, so the model sees the features the record carries.

A record that cannot be decoded (not the wire format, a schema id the registry does not know, a
payload that does not match its schema) is a dead letter whose reason names the schema id and the
subject (``<topic>-value``, the topic name strategy); a registry that cannot be reached stops the
run in one line (`SchemaRegistryUnavailable`) rather than dead-lettering good records.

>>> import datetime, decimal
>>> flatten({"a": 1, "address": {"city": "Oslo", "zip": None},
...          "at": datetime.datetime(1970, 1, 1, 0, 1, tzinfo=datetime.timezone.utc),
...          "day": datetime.date(1970, 1, 3), "price": decimal.Decimal("12.5")})
{'a': 1, 'address.city': 'Oslo', 'at': 60.0, 'day': 2, 'price': 12.5}
"""

from __future__ import annotations

import datetime
import decimal
import io
from collections.abc import Callable
from typing import Any

from core.errors import ConfigError, RiverbeamError

FORMATS = ("json", "avro", "protobuf", "json_schema")
REGISTRY_FORMATS = ("avro", "protobuf", "json_schema")
_EPOCH_DAY = datetime.date(1970, 1, 1).toordinal()
_PLAIN = frozenset({float, int, bool, str})
REGISTRY_TIMEOUT_S = 30  # confluent-kafka's client waits forever by default: a registry that hangs must stop the job, not wedge it
READ_SUBJECTS = {"subject.name.strategy.type": "TOPIC"}  # a reader's subject by the topic, never the per-topic "associations" request
# (confluent-kafka 2.13+'s default): Apicurio 3.3 has no such route and at times leaves that request unanswered
_FLAT_AVRO_TYPES = frozenset({"double", "float", "long", "int", "boolean", "string"})  # decoded as float, int, bool, str


class SchemaRegistryUnavailable(RiverbeamError):
    """The schema registry could not be reached or answered with a server error: no record can be decoded."""


def registry_client(registry: dict[str, Any]):
    """confluent-kafka's `SchemaRegistryClient` for ``kafka.schema_registry`` (its own keys), with riverbeam's
    timeout unless one is given, and the registry's URL; a setting the client refuses is a `ConfigError`.

    >>> registry_client({"url": "http://127.0.0.1:9"})[1]
    'http://127.0.0.1:9'
    """
    from confluent_kafka.schema_registry import SchemaRegistryClient

    try:
        client = SchemaRegistryClient({"timeout": REGISTRY_TIMEOUT_S, **registry})
    except (ValueError, TypeError) as error:
        raise ConfigError("kafka.schema_registry", str(error)) from None
    return client, registry.get("url")


def flatten(record: dict, prefix: str = "", into: dict | None = None) -> dict:
    """A decoded record as one flat event: nested records joined by ``.``, logical types as numbers, nulls left out.

    >>> flatten({"user": {"address": {"city": "Oslo"}, "age": 7}, "tags": None})
    {'user.address.city': 'Oslo', 'user.age': 7}
    """
    if into is None and all(type(value) in _PLAIN for value in record.values()):
        return record  # nothing nested, null or logical: the record is the event
    out = {} if into is None else into
    for name, value in record.items():
        key = f"{prefix}{name}"
        kind = type(value)
        if kind is dict:
            flatten(value, f"{key}.", out)
        elif value is None:
            continue
        elif kind is datetime.datetime:
            out[key] = (value if value.tzinfo else value.replace(tzinfo=datetime.UTC)).timestamp()
        elif kind is datetime.date:
            out[key] = value.toordinal() - _EPOCH_DAY
        elif kind is datetime.time:
            out[key] = value.hour * 3600 + value.minute * 60 + value.second + value.microsecond / 1e6
        elif kind is decimal.Decimal:
            out[key] = float(value)
        else:
            out[key] = value
    return out


def flat_event(record: Any) -> Any:
    """A decoded record as an event (`flatten`); anything but a record is left for the decoder to refuse."""
    return flatten(record) if type(record) is dict else record


def wire_schema_id(value: bytes) -> int | None:
    """The schema id in a schema-registry wire-format value, or None if `value` is not in that format.

    >>> wire_schema_id(b"\\x00\\x00\\x00\\x00\\x07payload"), wire_schema_id(b'{"a": 1}')
    (7, None)
    """
    if type(value) is not bytes or len(value) < 5 or value[0] != 0:
        return None
    return int.from_bytes(value[1:5], "big")


class RegistryDecoder:
    """Decodes raw record values of one format through a schema registry; called by the learning loop per batch.

    ``decoder(values, topic)`` returns ``(events, reasons)`` as `online.learning.loop.decode` does:
    an event (a flat dict, see `flatten`) or None per value, and the reason for each None.

    >>> RegistryDecoder("avro", {"url": "http://127.0.0.1:1"}).subject("events")
    'events-value'
    """

    def __init__(self, fmt: str, registry: dict[str, Any]):
        if fmt not in REGISTRY_FORMATS:
            raise ConfigError(
                "kafka.format",
                f"{fmt!r} is not read through a schema registry (one of {', '.join(REGISTRY_FORMATS)})",
            )
        self.format = fmt
        self.client, self.url = registry_client(registry)
        self._deserialize = self._deserializer(fmt)
        self._contexts: dict[str, Any] = {}

    def _deserializer(self, fmt: str) -> Callable:
        if fmt == "avro":
            return AvroRecordDeserializer(self.client)
        if fmt == "json_schema":
            from confluent_kafka.schema_registry.json_schema import JSONDeserializer

            deserialize = JSONDeserializer(None, schema_registry_client=self.client, conf=READ_SUBJECTS)
            return lambda value, context: flat_event(deserialize(value, context))
        return ProtobufRecordDeserializer(self.client)

    @staticmethod
    def subject(topic: str) -> str:
        """The subject a record of `topic` is registered under (the topic name strategy)."""
        return f"{topic}-value"

    def __call__(self, values: list, topic: str) -> tuple[list, dict[int, str]]:
        from confluent_kafka.schema_registry.error import SchemaRegistryError
        from confluent_kafka.serialization import MessageField, SerializationContext

        context = self._contexts.get(topic)
        if context is None:
            context = self._contexts[topic] = SerializationContext(topic, MessageField.VALUE)
        deserialize = self._deserialize
        events: list = []
        reasons: dict[int, str] = {}
        for index, value in enumerate(values):
            if value is None:
                events.append(None)
                reasons[index] = "record has no value"
                continue
            schema_id = wire_schema_id(value)
            if schema_id is None:
                events.append(None)
                reasons[index] = f"not {self.format} in the schema-registry wire format (no magic byte 0 and schema id) for subject {self.subject(topic)}"
                continue
            try:
                record = deserialize(value, context)
            except SchemaRegistryError as error:
                if error.http_status_code in (404, 422):
                    events.append(None)
                    reasons[index] = f"schema id {schema_id} (subject {self.subject(topic)}) is not in the schema registry: {error.error_message}"
                    continue
                raise SchemaRegistryUnavailable(f"schema registry at {self.url} failed on schema id {schema_id}: {error}") from None
            except (OSError, ConnectionError) as error:
                raise SchemaRegistryUnavailable(f"schema registry at {self.url} cannot be reached: {error}") from None
            except Exception as error:  # the payload does not match its schema: this record only
                if is_transport_error(error):
                    raise SchemaRegistryUnavailable(f"schema registry at {self.url} cannot be reached: {error}") from None
                events.append(None)
                reasons[index] = f"cannot decode {self.format} with schema id {schema_id} (subject {self.subject(topic)}): {type(error).__name__}: {error}"
                continue
            if type(record) is not dict:
                events.append(None)
                reasons[index] = f"{self.format} record with schema id {schema_id} (subject {self.subject(topic)}) is not a record but {type(record).__name__}"
                continue
            events.append(record)
        return events, reasons


def is_transport_error(error: Exception) -> bool:
    """Whether `error` is the HTTP client's failure to reach the registry (httpx's or httpx2's TransportError:
    confluent-kafka uses whichever is installed), not a record's."""
    return any(kind.__name__ == "TransportError" and kind.__module__.startswith("httpx") for kind in type(error).__mro__)


class AvroRecordDeserializer:
    """Avro values as dicts: fastavro with the writer's schema, parsed once per schema id; confluent-kafka's otherwise.

    The fast path is what confluent-kafka's `AvroDeserializer` does at its core (fastavro's
    ``schemaless_reader`` with the writer's schema, logical types included) without its per-record
    subject, rule and cache look-ups (measured on 9 doubles and a boolean: ~7 us per event against ~55 us; orjson reads the same event as JSON in ~2.5 us). A
    schema with data-contract rules or references goes through `AvroDeserializer` itself.
    """

    def __init__(self, client):
        from fastavro import schemaless_reader

        self.client = client
        self._read = schemaless_reader
        self._parsed: dict[int, Any] = {}  # schema id -> fastavro's parsed schema, or None: the general path
        self._general = None

    def __call__(self, value: bytes, context) -> Any:
        schema_id = int.from_bytes(value[1:5], "big")
        try:
            parsed, flat = self._parsed[schema_id]
        except KeyError:
            parsed, flat = self._parsed[schema_id] = self._parse(schema_id)
        if parsed is None:
            if self._general is None:
                from confluent_kafka.schema_registry.avro import AvroDeserializer

                self._general = AvroDeserializer(self.client, conf=READ_SUBJECTS)
            return flat_event(self._general(value, context))
        record = self._read(io.BytesIO(value[5:]), parsed, None)
        return record if flat else flat_event(record)

    def _parse(self, schema_id: int) -> tuple[Any, bool]:
        """fastavro's parsed schema of `schema_id` (None: the general path) and whether its records are already flat events."""
        import json

        from fastavro import parse_schema

        schema = self.client.get_schema(schema_id)  # the registry's SchemaRegistryError (an unknown id) is the caller's
        if schema.rule_set or schema.references or (schema.schema_type or "AVRO") != "AVRO":
            return None, False
        written = json.loads(schema.schema_str)
        return parse_schema(written), flat_avro_record(written)


def flat_avro_record(schema: Any) -> bool:
    """Whether every record of an Avro `schema` is already a flat event (`flatten` would return it unchanged).

    True for a record whose fields are all non-null primitives without a logical type: nothing
    nested, null or logical to turn into features, so the decoder skips `flatten` per record.

    >>> flat_avro_record({"type": "record", "name": "E", "fields": [{"name": "x", "type": "double"}, {"name": "s", "type": "string"}]})
    True
    >>> flat_avro_record({"type": "record", "name": "E", "fields": [{"name": "x", "type": ["null", "double"]}]})
    False
    """
    return (
        isinstance(schema, dict)
        and schema.get("type") == "record"
        and all(isinstance(field.get("type"), str) and field["type"] in _FLAT_AVRO_TYPES for field in schema.get("fields", ()))
    )


class ProtobufRecordDeserializer:
    """Protobuf values as dicts, with no generated classes: the message type comes from the writer's schema in the registry.

    confluent-kafka's `ProtobufDeserializer` needs the reader's generated class; a learning job
    has none, so the writer's schema (fetched once per id, as a FileDescriptorProto) builds the
    message class, and the message becomes a dict by field name: nested messages as dicts, enums
    by name, ``google.protobuf.Timestamp`` as `datetime` (for `flatten`), the other well-known
    types by their JSON mapping (``json_format.MessageToDict``).

    A message of plain scalars only (numbers, booleans, strings; none repeated, none with presence)
    is already a flat event: its fields are read in one ``attrgetter`` call, with no walk over its
    descriptor per record (measured on 9 doubles and a boolean: ~1.7 us per event against ~9 us).
    The wire header's common case, the first message type (its message indexes written as one zero
    byte), is read in place; any other goes through confluent-kafka's `SchemaId`.
    """

    def __init__(self, client):
        from google.protobuf import json_format

        self.client = client
        self._json_format = json_format
        self._classes: dict[tuple[int, tuple[int, ...]], tuple] = {}  # (schema id, indexes) -> (message class, scalars getter or None)

    def __call__(self, value: bytes, context) -> dict:
        if len(value) > 5 and value[5] == 0:  # message indexes [0]: one zero byte after the magic byte and the schema id
            key, payload = (int.from_bytes(value[1:5], "big"), (0,)), value[6:]
        else:
            from confluent_kafka.schema_registry.common.protobuf import PROTOBUF_TYPE
            from confluent_kafka.schema_registry.common.serde import SchemaId

            schema_id = SchemaId(PROTOBUF_TYPE)
            payload = schema_id.from_bytes(io.BytesIO(value)).read()
            key = (schema_id.id, tuple(schema_id.message_indexes or [0]))
        found = self._classes.get(key)
        if found is None:
            message_class = self._message_class(*key)
            found = self._classes[key] = (message_class, _scalars_getter(message_class.DESCRIPTOR))
        message_class, scalars = found
        message = message_class.FromString(payload)
        if scalars is not None:
            return scalars(message)
        return flatten(_protobuf_dict(message, self._json_format))

    def _message_class(self, schema_id: int, indexes: tuple[int, ...]):
        import base64
        import binascii

        from google.protobuf import (  # noqa: F401  (well-known types in the default pool)
            any_pb2,
            descriptor_pb2,
            descriptor_pool,
            duration_pb2,
            empty_pb2,
            message,
            struct_pb2,
            timestamp_pb2,
            wrappers_pb2,
        )
        from google.protobuf.message_factory import GetMessageClass

        def parse(text: str | None):
            try:
                return descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(text or "", validate=True))
            except (binascii.Error, ValueError, message.DecodeError):
                return None

        # as confluent-kafka's serializer registers it (a FileDescriptorProto in base64), else the registry's
        # serialized form of .proto text (Confluent's registry answers it in base64; Apicurio 3.3 does not: see the README)
        file_proto = parse(self.client.get_schema(schema_id).schema_str) or parse(self.client.get_schema(schema_id, fmt="serialized").schema_str)
        if file_proto is None:
            raise ValueError("the registry's Protobuf schema is neither a base64 FileDescriptorProto nor served in that form")
        file_proto.name = f"schema-{schema_id}.proto"
        pool, default = descriptor_pool.DescriptorPool(), descriptor_pool.Default()
        for dependency in file_proto.dependency:  # the well-known types; other schema references are not supported
            known = descriptor_pb2.FileDescriptorProto()
            default.FindFileByName(dependency).CopyToProto(known)
            pool.Add(known)
        pool.Add(file_proto)
        descriptor = pool.FindFileByName(file_proto.name).message_types_by_name[file_proto.message_type[indexes[0]].name]
        for index in indexes[1:]:
            descriptor = descriptor.nested_types[index]
        return GetMessageClass(descriptor)


def _repeated(field) -> bool:
    """Whether a Protobuf field is repeated (``is_repeated`` in protobuf 6, where ``label`` is deprecated)."""
    repeated = getattr(field, "is_repeated", None)
    return repeated if isinstance(repeated, bool) else field.label == field.LABEL_REPEATED


def _scalars_getter(descriptor) -> Callable[[Any], dict] | None:
    """For a message of plain scalar fields only (no presence, none repeated), a function giving its event
    (what `_protobuf_dict` then `flatten` give, in one ``attrgetter`` call); None for any other message."""
    import operator

    from google.protobuf.descriptor import FieldDescriptor as F

    plain = {F.TYPE_DOUBLE, F.TYPE_FLOAT, F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_INT32, F.TYPE_FIXED64, F.TYPE_FIXED32, F.TYPE_BOOL,
             F.TYPE_STRING, F.TYPE_UINT32, F.TYPE_SFIXED32, F.TYPE_SFIXED64, F.TYPE_SINT32, F.TYPE_SINT64}  # not bytes, enums, messages
    fields = descriptor.fields
    if not fields or any(field.type not in plain or field.has_presence or _repeated(field) for field in fields):
        return None
    names = tuple(field.name for field in fields)
    if len(names) == 1:
        name = names[0]
        return lambda message: {name: getattr(message, name)}
    values = operator.attrgetter(*names)
    return lambda message: dict(zip(names, values(message)))


def _protobuf_dict(message, json_format) -> dict:
    """A message's fields by name: every field without presence (proto3 scalars, 0 included, as JSON would carry them),
    fields with presence only when set; nested messages as dicts, maps as dicts, enums by name (in lists too),
    Timestamp as datetime."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        repeated = _repeated(field)
        if not repeated and field.has_presence and not message.HasField(field.name):
            continue
        value = getattr(message, field.name)
        if repeated and field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name["value"]
            out[field.name] = {key: _protobuf_value(entry, item, json_format) for key, item in value.items()}
        elif repeated:
            out[field.name] = [_protobuf_value(field, item, json_format) for item in value]
        else:
            out[field.name] = _protobuf_value(field, value, json_format)
    return out


def _protobuf_value(field, value, json_format) -> Any:
    """One value of `field` (a list's item, a map's value) as `_protobuf_dict` gives it."""
    if field.message_type is not None:
        full_name = field.message_type.full_name
        if full_name == "google.protobuf.Timestamp":
            return value.ToDatetime(tzinfo=datetime.UTC)
        if full_name.startswith("google.protobuf."):  # wrappers, Struct, Duration: their JSON mapping
            return json_format.MessageToDict(value)
        return _protobuf_dict(value, json_format)
    if field.enum_type is not None:
        symbol = field.enum_type.values_by_number.get(value)
        return symbol.name if symbol is not None else value
    return value


def check_schema_registry(kafka, subjects: bool = False) -> None:
    """For a ``kafka.format`` (or an output format, `online.formats_write`) other than JSON: the registry at
    ``kafka.schema_registry.url`` answers, or a one-line `ConfigError`.

    With `subjects` (``riverbeam config check --online``), each source topic's subject
    (``<topic>-value``, `RegistryDecoder.subject`) must also hold a schema: a missing one is a
    `ConfigError` at ``kafka.topic`` (or ``kafka.topics``) naming the subject. What ``riverbeam
    config check`` runs; the daemon finds out at its first record (`SchemaRegistryUnavailable`).

    >>> from online.config import KafkaConfig
    >>> check_schema_registry(KafkaConfig(topic="events", format="avro", schema_registry={"url": "http://127.0.0.1:9"}))
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: kafka.schema_registry.url: the schema registry at http://127.0.0.1:9 does not answer (ConnectError: [Errno 111] Connection refused)
    """
    formats = {getattr(kafka, name, "json") for name in ("format", "predictions_format", "dead_letter_format")}
    if formats == {"json"}:
        return
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client, url = registry_client(kafka.schema_registry or {})
    try:
        registered = set(client.get_subjects())
    except SchemaRegistryError as error:
        raise ConfigError("kafka.schema_registry.url", f"the schema registry at {url} refused the request: {error}") from None
    except Exception as error:  # the HTTP client's own errors: no registry there
        raise ConfigError("kafka.schema_registry.url", f"the schema registry at {url} does not answer ({type(error).__name__}: {error})") from None
    reads = subjects and kafka.format != "json"
    missing = [RegistryDecoder.subject(topic) for topic in kafka.source_topics if RegistryDecoder.subject(topic) not in registered] if reads else []
    if missing:
        key = "kafka.topic" if kafka.topic is not None else "kafka.topics"
        raise ConfigError(key, f"no schema under subject {', '.join(missing)} in the schema registry at {url}: "
                          "its producers register one with their first record (topic name strategy)")


def record_decoder(kafka) -> Callable[[list, str], tuple[list, dict[int, str]]] | None:
    """The decoder for ``kafka.format`` (`online.config.KafkaConfig`): None for JSON (the learning loop's own), else a `RegistryDecoder`.

    >>> from online.config import KafkaConfig
    >>> record_decoder(KafkaConfig(topic="events")) is None
    True
    """
    fmt = getattr(kafka, "format", "json")
    if fmt == "json":
        return None
    return RegistryDecoder(fmt, kafka.schema_registry or {})
