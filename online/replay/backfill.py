"""Backfill: produce replayed events to a Kafka topic, rate-limited, resumable without duplicates.

The target is the job's ``kafka:`` section, the same section the daemon reads (``bootstrap_servers``,
``topic``, ``client``, ``producer`` options); ``--topic``, ``--bootstrap-servers`` and ``--kafka-client``
override it. Records carry headers ``riverbeam-file`` and ``riverbeam-line`` and all go to ONE partition, in
replay order. The resume key is per file: on start, the partition's records say the last line produced
of every file (a file's lines go out in order, so every line up to it is there), and the backfill
produces every input line past its file's last one. So an interrupted backfill continues where it
stopped, a second file is appended after the first (whether it sorts before or after it, passed alone
or with the first), and a re-run produces nothing and says so (see `online.replay.engine` for the guarantee
and its limits).

Records are JSON, or with ``kafka.format: avro | json_schema | protobuf`` the schema-registry wire format
(`online.formats_write.event_serializer`: the schema in ``kafka.value_schema`` or derived from the
inputs); a line that does not fit that schema is a bad line, the others are produced.
"""

from __future__ import annotations

import logging
import time

import orjson

from online.config import KafkaConfig, ReplayJobConfig
from online.formats_write import RecordNotWritable
from online.replay.errors_file import ErrorLog, ReplayError
from online.readers import InputFile
from online.replay.engine import FILE_HEADER, LINE_HEADER, ReplayOptions, ReplayResult
from online.sources import FileSource, progress_bar
from core.errors import RiverbeamError, UsageError

log = logging.getLogger(__name__)


def backfill_kafka_config(job: ReplayJobConfig, options: ReplayOptions) -> KafkaConfig:
    """The Kafka settings of a backfill: the job's ``kafka:`` section (the daemon's), flags override.

    >>> from online.config import KafkaConfig, ReplayJobConfig
    >>> job = ReplayJobConfig.model_validate({"model": {"pipeline": [{"linear_model.LinearRegression": {}}]},
    ...                                       "kafka": {"bootstrap_servers": "k:9092", "topic": "events"}})
    >>> config = backfill_kafka_config(job, ReplayOptions(inputs=[], topic="other"))
    >>> config.bootstrap_servers, config.topic, config.client
    ('k:9092', 'other', 'kafka-python')
    """
    section = job.kafka.model_dump(exclude={"topics"}) if job.kafka is not None else {}
    flags = {"client": options.kafka_client, "bootstrap_servers": options.bootstrap_servers, "topic": options.topic}
    merged = {**section, **{k: v for k, v in flags.items() if v is not None}}
    if not merged.get("topic") or not merged.get("bootstrap_servers"):
        raise UsageError("backfill needs a target: kafka.topic and kafka.bootstrap_servers in the configuration, or --topic and --bootstrap-servers")
    if job.kafka is not None and job.kafka.topics is not None and options.topic is None:
        raise UsageError("backfill writes one topic: set kafka.topic (not kafka.topics) or pass --topic")
    return KafkaConfig.model_validate(merged, strict=False)  # kafka.format: how the records are written (`event_serializer`)


SCAN_TIMEOUT_S = 600.0  # reading the partition back to find what is in it


def _source_of(record) -> tuple[str, int] | None:
    headers = dict(record.headers or ())
    if FILE_HEADER not in headers or LINE_HEADER not in headers:
        return None
    return headers[FILE_HEADER].decode(), int(headers[LINE_HEADER])


def produced_lines(kafka: KafkaConfig, partition: int) -> dict[str, int]:
    """The last line produced of each file in the backfill's partition (``{file: line}``; empty: nothing yet).

    Reads the partition back once (its source headers). Raises `ReplayError` when its last record
    was not written by a backfill (no source headers): riverbeam does not append to a foreign stream.
    """
    from online.kafka_clients import create_topic, read_records, read_tail

    create_topic(kafka.bootstrap_servers, kafka.topic, partitions=1)
    tails = read_tail(kafka, kafka.topic, 1)
    if partition not in tails:
        raise UsageError(f"topic {kafka.topic} has no partition {partition} (it has {sorted(tails)})")
    if not tails[partition]:
        return {}
    if _source_of(tails[partition][-1]) is None:
        raise ReplayError(
            f"topic {kafka.topic} partition {partition} already holds records not written by a backfill "
            f"(no {FILE_HEADER}/{LINE_HEADER} headers): refusing to append; use an empty topic"
        )
    elsewhere = {p: 1 << 62 for p in tails if p != partition}  # only this partition is read
    done: dict[str, int] = {}
    for record in read_records(kafka, kafka.topic, {partition: 0, **elsewhere}, timeout_s=SCAN_TIMEOUT_S):
        source = _source_of(record) if record.partition == partition else None
        if source is not None and source[1] > done.get(source[0], 0):
            done[source[0]] = source[1]
    return done


def backfill(job: ReplayJobConfig, files: list[InputFile], options: ReplayOptions) -> ReplayResult:
    """Produce the events to the backfill's topic, rate-limited, continuing after the last record produced."""
    kafka = backfill_kafka_config(job, options)
    if options.rate is not None and options.rate <= 0:
        raise UsageError("--rate must be positive (events per second)")
    from online.formats_write import event_serializer
    from online.kafka_clients import make_producer

    started = time.monotonic()
    serialize = event_serializer(kafka, lambda: (r.event for batch in FileSource(files, job.events.time, job.events.categorical) for r in batch.records if r.event is not None))
    done = produced_lines(kafka, options.partition)  # the resume key, per file
    errors = ErrorLog(options.errors_path, options.max_errors)
    source = FileSource(files, job.events.time, job.events.categorical, max_events=256, progress=progress_bar(options.progress, files))
    already = [done.get(f.name, 0) for f in files]  # by file index: lines up to this one are in the topic
    skipped = 0
    producer = make_producer(kafka)
    sink = BackfillSink(producer, kafka.topic, options.partition, files, job.events.key, options.rate, serialize)
    try:
        for batch in source:
            for index, record in enumerate(batch.records):
                if record.line <= already[record.file_index]:
                    skipped += 1  # produced by an earlier run (a bad line there was reported then)
                elif record.event is None:
                    errors.dead_letter(batch, index, record.reason)
                else:
                    try:
                        sink.send(record)
                    except RecordNotWritable as error:  # does not fit kafka.value_schema: that line only
                        errors.dead_letter(batch, index, str(error))
            sink.flush_every(5000)
        producer.flush()
    finally:
        errors.close()
        try:
            producer.close()
        except RiverbeamError as error:
            log.warning("closing the producer: %s", error)
    produced = sink.produced
    if skipped:
        log.info("backfill: %d input lines were already in %s[%d], produced by an earlier run: skipped", skipped, kafka.topic, options.partition)
    if source.lines and not produced and skipped == source.lines:
        log.warning("backfill: nothing new to produce: every input line is already in %s[%d]", kafka.topic, options.partition)
    return ReplayResult("backfill", len(files), source.lines, source.good, errors.count, produced=produced, already_produced=skipped,
                        seconds=time.monotonic() - started, position=source.position()["replay"], first_errors=errors.first)


class BackfillSink:
    """The backfill's Kafka sink: one record per event (JSON, or `serialize`'s: ``kafka.format``), source headers,
    one partition, at most `rate` per second."""

    def __init__(self, producer, topic: str, partition: int, files: list[InputFile], key_field: str | None, rate: float | None, serialize=None):
        self.producer, self.topic, self.partition, self.key_field, self.rate = producer, topic, partition, key_field, rate
        self.serialize = serialize
        self.headers_of = {i: f.name.encode() for i, f in enumerate(files)}
        self.produced = 0
        self.flushed = 0
        self.began = time.monotonic()

    def send(self, record) -> None:
        event = record.event
        key = event.get(self.key_field) if self.key_field is not None else None
        value = orjson.dumps(event) if self.serialize is None else self.serialize(event, self.topic)
        self.producer.send(self.topic, value, key=None if key is None else str(key).encode(),
                           headers=[(FILE_HEADER, self.headers_of[record.file_index]), (LINE_HEADER, str(record.line).encode())],
                           partition=self.partition)
        self.produced += 1
        if self.rate is not None:
            ahead = self.began + self.produced / self.rate - time.monotonic()
            if ahead > 0.002:
                time.sleep(ahead)

    def flush_every(self, records: int) -> None:
        """Flush once `records` more were sent since the last flush."""
        if self.produced - self.flushed >= records:
            self.producer.flush()
            self.flushed = self.produced
