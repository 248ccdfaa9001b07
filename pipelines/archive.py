"""The event archive: Kafka (or Pub/Sub) into windowed JSON-lines or Parquet files for replay.

::

    ReadKafkaEvents | ParseEvents --(events)--> WindowEvents | PartitionByWindow --+
                                 --(dead letters, with the reason)--> WindowEvents --+--> WriteArchive

Files land under ``<archive_output>/date=YYYY-MM-DD/hour=HH/`` (dead letters under
``<archive_output>/dead_letter/date=.../hour=.../``), one set of shards per event-time window:
``part-<window start>-<shard>-of-<shards>.jsonl`` (or ``.parquet``).

A topic in a schema-registry format (``kafka.format: avro | protobuf | json_schema`` in the job
YAML of ``--archive_kafka_config``) is decoded as the daemon decodes it (`online.formats`: nested
records flattened, logical types as numbers) and archived as those events, so replay reads them
back; a record that cannot be decoded is a dead letter naming the schema id and subject.

Run on Dataflow or Flink (``ReadFromKafka`` is a cross-language transform: the runner needs the
Java expansion service). ``riverbeam archive --runner=FlinkRunner`` with no ``--flink_master`` runs
it on an embedded Flink with riverbeam's own Beam Java parts (`pipelines.java_services`), reading
Kafka unbounded until stopped, and waits for it::

    python -m pipelines.archive --runner=DataflowRunner --streaming \\
        --kafka_bootstrap_servers=broker:9092 --kafka_topics=events \\
        --archive_output=gs://bucket/archive --event_time_field=time ...

Tests build the same graph with `build_archive` and a ``TestStream`` in place of the reader.

>>> event, reason = parse_event(b'{"time": "2024-05-01T13:45:00Z", "x": 1}', "time")
>>> event, reason
({'time': '2024-05-01T13:45:00Z', 'x': 1}, None)
>>> parse_event(b'{"x": 1}', "time")[1]
"missing event time field 'time'"
>>> partition_of(1714571100.0)
'date=2024-05-01/hour=13'
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from typing import Any, Iterable

import apache_beam as beam
import orjson
from apache_beam.io import fileio
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, StandardOptions
from apache_beam.options.value_provider import StaticValueProvider, ValueProvider
from apache_beam.transforms import window

from pipelines.java_services import java_consumer_key
from pipelines.options import add_required_argument, check_required, waits_for_result
from pipelines.parsing import RecordParseFn, dead_letter
from online.events import record_event
from core.configuration import parse_config, read_yaml
from core.errors import ConfigError, UsageError, run_main
from core import storage
from core.eventtime import event_time
from pipelines.filesystems import configure_filesystems

DEAD_LETTER = "dead_letter"
DEAD_LETTER_PREFIX = f"{DEAD_LETTER}/"
FORMATS = {"jsonl": ".jsonl", "parquet": ".parquet"}


class ArchiveOptions(PipelineOptions):
    """Archive raw events from Kafka (or Pub/Sub) as date/hour-partitioned JSON-lines or Parquet files.

    Flags are global across Beam pipelines in one process, hence the ``kafka_``/``archive_``
    prefixes. In a classic template only ``archive_output`` can be set at launch (a value
    provider); the source and the windowing are fixed when the template is created.
    """

    # Dataflow template parameter types of the text flags (choices and numbers are inferred). kafka_topics
    # stays TEXT: KAFKA_READ_TOPIC values are "servers;topic" or a Managed Kafka name, not topic names.
    TEMPLATE_PARAM_TYPES = {"pubsub_subscription": "PUBSUB_SUBSCRIPTION", "archive_output": "GCS_WRITE_FOLDER",
                            "archive_kafka_config": "GCS_READ_FILE"}

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--event_source", default="kafka", choices=["kafka", "pubsub"],
            help="Where events come from: kafka (ReadFromKafka) or pubsub (ReadFromPubSub). Default: %(default)s.",
        )
        parser.add_argument(
            "--archive_kafka_config", default=None,
            help="A job YAML (local, gs:// or s3://) whose kafka: section, the daemon's (bootstrap_servers, topic or topics, "
                 "group_id, consumer properties), names the source; the kafka_* flags override it.",
        )
        parser.add_argument(
            "--kafka_bootstrap_servers", default=None,
            help="Kafka bootstrap servers, host:port[,host:port] (needed when event_source is kafka, unless archive_kafka_config names them).",
        )
        parser.add_argument(
            "--kafka_topics", default=None,
            help="Comma-separated Kafka topics to archive (needed when event_source is kafka).",
        )
        parser.add_argument(
            "--kafka_consumer_config", default="{}",
            help="Extra Kafka consumer properties as a JSON object, e.g. {\"group.id\": \"archive\", \"auto.offset.reset\": \"earliest\"}.",
        )
        parser.add_argument(
            "--pubsub_subscription", default=None,
            help="Pub/Sub subscription, projects/P/subscriptions/S (needed when event_source is pubsub).",
        )
        add_required_argument(
            parser, "--archive_output", value_provider=True,
            help="Directory the archive is written to, e.g. gs://bucket/archive; files go under date=YYYY-MM-DD/hour=HH/.",
        )
        parser.add_argument(
            "--archive_format", default="jsonl", choices=sorted(FORMATS),
            help="File format: jsonl (one JSON event a line) or parquet. Default: %(default)s.",
        )
        parser.add_argument(
            "--archive_window_seconds", type=int, default=600,
            help="Event-time window of each set of files, in seconds; must divide 3600. Default: %(default)s.",
        )
        parser.add_argument(
            "--archive_shards", type=int, default=0,
            help="Files per window for records spilled past the writers of one bundle (0: Beam's default).",
        )
        parser.add_argument(
            "--event_time_field", default=None,
            help="Event field holding the event time (ISO 8601 or seconds since the epoch); unset: the Kafka record time.",
        )


# ---------------------------------------------------------------------------------------------
# Parsing and validation
# ---------------------------------------------------------------------------------------------


def parse_event(payload: bytes | str, time_field: str | None, decode=None, topic: str = "") -> tuple[dict | None, str | None]:
    """Decode one record into an event, or return the reason it is rejected.

    JSON, or with `decode` (an `online.formats.RegistryDecoder`: ``kafka.format`` avro, protobuf or
    json_schema) the schema-registry wire format, decoded and flattened as the daemon does; `topic`
    names the subject in its reasons.
    """
    event, reason = record_event(payload, decode, topic)
    if reason is not None:
        return None, reason
    if time_field:
        if time_field not in event:
            return None, f"missing event time field {time_field!r}"
        try:
            event_time(event[time_field])
        except (ValueError, TypeError, OverflowError) as error:
            return None, f"bad event time field {time_field!r}: {error}"
    return event, None


class ParseEventFn(RecordParseFn):
    """Emit valid events (timestamped by `time_field` when set) and tag the rest as dead letters.

    With `registry` (``(kafka.format, kafka.schema_registry, topic)``) records are decoded through
    the schema registry (`pipelines.parsing.RecordParseFn`: its client is made on the worker).
    """

    def __init__(self, time_field: str | None, registry: tuple[str, dict, str] | None = None):
        super().__init__(registry)
        self.time_field = time_field

    def process(self, payload):
        event, reason = parse_event(payload, self.time_field, self.decoder, self.subject_topic(None))
        if reason is not None:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(payload, reason, "parse"))  # schema v1
        elif self.time_field:
            yield window.TimestampedValue(event, event_time(event[self.time_field]))
        else:
            yield event


class ParseEvents(beam.PTransform):
    """Bytes into events (main output) and dead letters (`online.dead_letters` schema v1, output ``dead_letter``).

    `registry`: ``(kafka.format, kafka.schema_registry, topic)`` for records in the schema-registry
    wire format (`registry_decoding`); None for JSON.
    """

    def __init__(self, time_field: str | None = None, registry: tuple[str, dict, str] | None = None):
        super().__init__()
        self.time_field = time_field
        self.registry = registry

    def expand(self, payloads):
        return payloads | "Parse" >> beam.ParDo(ParseEventFn(self.time_field, self.registry)).with_outputs(DEAD_LETTER, main="events")


def registry_decoding(options: "ArchiveOptions") -> tuple[str, dict, str] | None:
    """``(kafka.format, kafka.schema_registry, topic)`` of the Kafka source's job YAML when its records are
    not JSON (``--archive_kafka_config``), else None. `topic` (the topics, joined by ``,``) names the
    subject in dead letters' reasons."""
    if options.event_source != "kafka" or not options.archive_kafka_config:
        return None
    kafka = kafka_section(options.archive_kafka_config)
    if kafka.format == "json":
        return None
    topics = [topic.strip() for topic in (options.kafka_topics or "").split(",") if topic.strip()] or kafka.source_topics
    return kafka.format, dict(kafka.schema_registry or {}), ",".join(topics)


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


class ReadKafkaEvents(beam.PTransform):
    """Record values from Kafka topics, timestamped with the record's create time.

    ``ReadFromKafka`` is cross-language: it needs Dataflow, Flink or another portable runner with
    the Java expansion service (`pipelines.java_services.read_from_kafka`: riverbeam's own on an
    embedded Flink). It cannot run on the DirectRunner offline.
    """

    def __init__(self, bootstrap_servers: str, topics: list[str], consumer_config: dict[str, str] | None = None):
        super().__init__()
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.consumer_config = dict(consumer_config or {})

    def expand(self, pbegin):
        from apache_beam.io.kafka import ReadFromKafka

        from pipelines.java_services import read_from_kafka

        config = {**self.consumer_config, "bootstrap.servers": self.bootstrap_servers}
        reader = read_from_kafka(pbegin.pipeline.options, consumer_config=config, topics=self.topics,
                                 timestamp_policy=ReadFromKafka.create_time_policy)
        return pbegin | "ReadFromKafka" >> reader | "RecordValues" >> beam.Values()


class ReadPubSubEvents(beam.PTransform):
    """Message payloads from a Pub/Sub subscription, timestamped with the publish time."""

    def __init__(self, subscription: str):
        super().__init__()
        self.subscription = subscription

    def expand(self, pbegin):
        from apache_beam.io.gcp.pubsub import ReadFromPubSub

        return pbegin | "ReadFromPubSub" >> ReadFromPubSub(subscription=self.subscription)


def source_transform(options: ArchiveOptions) -> beam.PTransform:
    """The configured reader; `UsageError` when its flags are missing or malformed."""
    if options.event_source == "pubsub":
        if not options.pubsub_subscription:
            raise UsageError("--pubsub_subscription is required when --event_source=pubsub")
        return ReadPubSubEvents(options.pubsub_subscription)
    kafka = kafka_section(options.archive_kafka_config) if options.archive_kafka_config else None
    topics = [topic.strip() for topic in (options.kafka_topics or "").split(",") if topic.strip()] or (kafka.source_topics if kafka else [])
    servers = options.kafka_bootstrap_servers or (kafka.bootstrap_servers if kafka else None)
    if not servers or not topics:
        raise UsageError("the kafka source needs bootstrap servers and topics: --archive_kafka_config (a kafka: section) "
                         "or --kafka_bootstrap_servers and --kafka_topics")
    try:
        extra = json.loads(options.kafka_consumer_config or "{}")
    except json.JSONDecodeError as error:
        raise UsageError(f"--kafka_consumer_config: invalid JSON: {error}") from None
    if not isinstance(extra, dict):
        raise UsageError("--kafka_consumer_config: expected a JSON object")
    consumer = {"group.id": kafka.group_id, **{java_consumer_key(str(k), kafka.client): v for k, v in kafka.consumer.items()}} if kafka else {}
    return ReadKafkaEvents(servers, topics, {str(k): str(v) for k, v in {**consumer, **extra}.items()})


def kafka_section(uri: str):
    """The ``kafka:`` section of the job YAML at `uri`, validated as the daemon validates it (`KafkaConfig`)."""
    from online.config import KafkaConfig

    data = read_yaml(uri)
    if not isinstance(data, dict) or not isinstance(data.get("kafka"), dict):
        raise ConfigError("kafka", "required section is missing (archive reads its source from it)", source=uri)
    try:
        kafka = parse_config(data["kafka"], KafkaConfig, source=uri, environ=None)
    except ConfigError as error:
        raise error.at(prefix="kafka") from None
    return kafka  # any kafka.format: records in a registry format are decoded by ParseEventFn


# ---------------------------------------------------------------------------------------------
# Windows, partitions and files
# ---------------------------------------------------------------------------------------------


UNKNOWN_PARTITION = "date=unknown/hour=unknown"


def partition_of(timestamp: float) -> str:
    """The ``date=YYYY-MM-DD/hour=HH`` partition (UTC) of a time in seconds.

    A record without a usable time (e.g. Beam's minimum timestamp) goes to ``date=unknown/hour=unknown``.

    >>> partition_of(-2**62)
    'date=unknown/hour=unknown'
    """
    try:
        moment = dt.datetime.fromtimestamp(float(timestamp), tz=dt.timezone.utc)
    except (ValueError, OverflowError, OSError):
        return UNKNOWN_PARTITION
    return moment.strftime("date=%Y-%m-%d/hour=%H")


class WindowEvents(beam.PTransform):
    """Fixed event-time windows of `seconds` (a divisor of 3600, so no window spans two hours)."""

    def __init__(self, seconds: int):
        super().__init__()
        if seconds <= 0 or 3600 % seconds:
            raise UsageError(f"--archive_window_seconds: {seconds} must be a positive divisor of 3600")
        self.seconds = seconds

    def expand(self, events):
        return events | "FixedWindows" >> beam.WindowInto(window.FixedWindows(self.seconds))


class PartitionByWindowFn(beam.DoFn):
    """Key each record by ``<prefix>date=.../hour=...`` of its window: the WriteToFiles destination."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix

    def process(self, record, win=beam.DoFn.WindowParam):
        yield self.prefix + partition_of(float(win.start)), record


class JsonLinesSink(fileio.FileSink):
    """Writes the record of each ``(destination, record)`` pair as one JSON line."""

    def open(self, fh):
        self._fh = fh

    def write(self, keyed_record):
        self._fh.write(orjson.dumps(keyed_record[1]) + b"\n")

    def flush(self):
        self._fh.flush()


def events_table(records: list[dict]):
    """A pyarrow table of events: one column per key seen (missing values are null).

    A column whose values pyarrow cannot type together (e.g. numbers and strings) is stored as
    JSON text, so no event is lost.

    >>> events_table([{"a": 1, "b": "x"}, {"a": 2.5, "c": True}, {"b": 3}]).to_pylist()
    [{'a': 1.0, 'b': '"x"', 'c': None}, {'a': 2.5, 'b': None, 'c': True}, {'a': None, 'b': '3', 'c': None}]
    """
    import pyarrow as pa

    keys = list(dict.fromkeys(key for record in records for key in record))
    columns = {}
    for key in keys:
        values = [record.get(key) for record in records]
        try:
            columns[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[key] = pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())
    return pa.table(columns) if columns else pa.table({"_empty": pa.array([None] * len(records), type=pa.null())})


class ParquetSink(fileio.FileSink):
    """Buffers the records of one file and writes them as one Parquet table when flushed."""

    def open(self, fh):
        self._fh = fh
        self._records: list[dict] = []

    def write(self, keyed_record):
        self._records.append(keyed_record[1])

    def flush(self):
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(events_table(self._records), buffer)
        self._fh.write(buffer.getvalue())
        self._fh.flush()
        self._records = []


def archive_file_naming(path, suffix: str):
    """File names ``<destination>/part-<window start>-<shard>-of-<shards><suffix>`` (dead letters: ``.jsonl``).

    Local file systems need the partition directory before Beam renames a file into it (Beam
    logs and drops a failed rename), so the directory is created here; on gs:// it is a no-op.
    """

    def name(win, pane, shard_index, total_shards, compression, destination):
        from apache_beam.io.filesystems import FileSystems

        try:
            FileSystems.mkdirs(FileSystems.join(path.get(), destination))
        except IOError:
            pass  # exists already
        try:
            start = dt.datetime.fromtimestamp(float(win.start), tz=dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        except (ValueError, OverflowError, OSError):
            start = "unknown"
        extension = FORMATS["jsonl"] if destination.startswith(DEAD_LETTER_PREFIX) else suffix
        return f"{destination}/part-{start}-{int(shard_index):05d}-of-{int(total_shards):05d}{extension}"

    return name


class WriteArchive(beam.PTransform):
    """Write ``(destination, record)`` pairs with ``fileio.WriteToFiles``: one directory per destination and window.

    Events use `file_format`; destinations under ``dead_letter/`` are always JSON lines.
    `path` may be a value provider (set when a classic template is launched).
    """

    def __init__(self, path, file_format: str = "jsonl", shards: int = 0):
        super().__init__()
        if file_format not in FORMATS:
            raise UsageError(f"--archive_format: {file_format!r} is not one of {sorted(FORMATS)}")
        if shards < 0:
            raise UsageError(f"--archive_shards: {shards} must be 0 or more")
        self.path = path if isinstance(path, ValueProvider) else StaticValueProvider(str, path)
        self.file_format = file_format
        self.shards = shards

    def expand(self, keyed_records):
        event_sink = ParquetSink if self.file_format == "parquet" else JsonLinesSink

        def sink_for(destination: str) -> fileio.FileSink:
            return JsonLinesSink() if destination.startswith(DEAD_LETTER_PREFIX) else event_sink()

        return keyed_records | "WriteToFiles" >> fileio.WriteToFiles(
            path=self.path,
            file_naming=archive_file_naming(self.path, FORMATS[self.file_format]),
            destination=lambda keyed_record: keyed_record[0],
            sink=sink_for,
            shards=self.shards or None,
        )


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


def build_archive(pipeline: beam.Pipeline, options: ArchiveOptions, source: beam.PTransform | None = None) -> dict[str, Any]:
    """Add the archive graph to `pipeline`; `source` replaces the configured reader (tests pass a TestStream).

    Returns the ``events``, ``dead_letters`` and written ``files`` (FileResult) collections.
    """
    view = options.view_as(ArchiveOptions)
    check_required(options, ArchiveOptions)
    configure_filesystems(options)  # s3:// output through Beam's S3 filesystem, at the configured endpoint
    windowing = WindowEvents(view.archive_window_seconds)
    writer = WriteArchive(view.archive_output, view.archive_format, view.archive_shards)
    payloads = pipeline | "ReadEvents" >> (source if source is not None else source_transform(view))
    parsed = payloads | "ParseEvents" >> ParseEvents(view.event_time_field, registry_decoding(view))
    events = parsed.events | "WindowEvents" >> windowing
    dead_letters = parsed[DEAD_LETTER] | "WindowDeadLetters" >> WindowEvents(view.archive_window_seconds)
    keyed_events = events | "PartitionEvents" >> beam.ParDo(PartitionByWindowFn())
    keyed_dead = dead_letters | "PartitionDeadLetters" >> beam.ParDo(PartitionByWindowFn(DEAD_LETTER_PREFIX))
    files = (keyed_events, keyed_dead) | "Together" >> beam.Flatten() | "WriteArchive" >> writer
    return {"events": events, "dead_letters": dead_letters, "files": files}


def run(argv: list[str] | None = None):
    """Build and run the archive pipeline from command-line flags; returns the PipelineResult."""
    options = PipelineOptions(argv)
    options.view_as(StandardOptions).streaming = True  # both sources are unbounded
    if options.view_as(StandardOptions).runner in (None, "DirectRunner"):
        raise UsageError("the archive reads Kafka or Pub/Sub: pass --runner=DataflowRunner or --runner=FlinkRunner")
    pipeline = beam.Pipeline(options=options)
    build_archive(pipeline, options)
    result = pipeline.run()
    if waits_for_result(options.view_as(StandardOptions).runner, options.view_as(PortableOptions).environment_type):
        result.wait_until_finish()  # an embedded Flink: the job lives in this process and ends with it
    return result


def read_archive(pattern: str) -> Iterable[dict]:
    """Events of archived files matching `pattern` (JSON lines or Parquet; local, gs:// or s3://).

    >>> list(read_archive("/nonexistent/*.jsonl"))
    []
    """
    for match in storage.match(pattern):
        data = storage.read_bytes(match.name)
        if match.name.endswith(".parquet"):
            import pyarrow.parquet as pq

            yield from pq.read_table(io.BytesIO(data)).to_pylist()
        else:
            yield from (orjson.loads(line) for line in data.splitlines() if line.strip())


if __name__ == "__main__":
    import sys

    logging.getLogger().setLevel(logging.INFO)
    sys.exit(run_main(run, prog="pipelines.archive"))
