"""Backfill: produce replayed events to a Kafka topic, rate-limited, resumable without duplicates.

Records carry headers ``riverbeam-file`` and ``riverbeam-line`` and all go to ONE partition, in
replay order. On start, the partition's last record names the last line produced and the backfill
continues after it (see `online.replay` for the guarantee and its limits).
"""

from __future__ import annotations

import logging
import time

import orjson

from online.config import ReplayJobConfig
from online.readers import InputFile, ReplayPosition
from online.replay import FILE_HEADER, LINE_HEADER, ErrorLog, Pass, ReplayError, ReplayOptions, ReplayResult, _progress
from core.errors import RiverbeamError, UsageError

log = logging.getLogger(__name__)


def _kafka_config(options: ReplayOptions):
    from online.config import KafkaConfig

    return KafkaConfig(client=options.kafka_client, bootstrap_servers=options.bootstrap_servers, topic=options.topic)


def last_produced(options: ReplayOptions) -> tuple[str, int] | None:
    """``(file, line)`` of the last record in the backfill's partition, or None when it is empty.

    Raises `ReplayError` when that record was not written by a backfill (no source headers).
    """
    from online.kafka_clients import create_topic, read_tail

    create_topic(options.bootstrap_servers, options.topic, partitions=1)
    tails = read_tail(_kafka_config(options), options.topic, 1)
    if options.partition not in tails:
        raise UsageError(f"topic {options.topic} has no partition {options.partition} (it has {sorted(tails)})")
    tail = tails[options.partition]
    if not tail:
        return None
    headers = dict(tail[-1].headers or ())
    if FILE_HEADER not in headers or LINE_HEADER not in headers:
        raise ReplayError(
            f"topic {options.topic} partition {options.partition} already holds records not written by a backfill "
            f"(no {FILE_HEADER}/{LINE_HEADER} headers): refusing to append; use an empty topic"
        )
    return headers[FILE_HEADER].decode(), int(headers[LINE_HEADER])


def backfill(job: ReplayJobConfig, files: list[InputFile], options: ReplayOptions) -> ReplayResult:
    """Produce the events to `options.topic`, rate-limited, continuing after the last record produced."""
    if not options.topic or not options.bootstrap_servers:
        raise UsageError("backfill needs --topic and --bootstrap-servers")
    if options.rate is not None and options.rate <= 0:
        raise UsageError("--rate must be positive (events per second)")
    from online.kafka_clients import make_producer

    started = time.monotonic()
    last = last_produced(options)
    start, skip_until = None, None
    if last is not None:
        names = {f.name for f in files}
        if last[0] not in names:
            raise ReplayError(f"the topic's last record came from {last[0]}, which is not among the inputs: is this the same backfill?")
        if job.events.time is None:
            start = ReplayPosition(file=last[0], line=last[1])
        else:
            skip_until = last
    errors = ErrorLog(options.errors_path, options.max_errors)
    replay = Pass(files, errors, job.events.time, start, job.events.categorical, chunk=256, progress=_progress(options, files))
    producer = make_producer(_kafka_config(options))
    headers_of = {i: f.name.encode() for i, f in enumerate(files)}
    key_field = job.events.key
    topic, partition, rate = options.topic, options.partition, options.rate
    produced = 0
    dumps, clock, sleep = orjson.dumps, time.monotonic, time.sleep
    began = clock()
    try:
        for records in replay.chunks():
            for record in records:
                if skip_until is not None:
                    if (files[record.file_index].name, record.line) == skip_until:
                        skip_until = None
                    continue
                event = record.event
                key = event.get(key_field) if key_field is not None else None
                producer.send(topic, dumps(event), key=None if key is None else str(key).encode(),
                              headers=[(FILE_HEADER, headers_of[record.file_index]), (LINE_HEADER, str(record.line).encode())],
                              partition=partition)
                produced += 1
                if rate is not None:
                    ahead = began + produced / rate - clock()
                    if ahead > 0.002:
                        sleep(ahead)
            if produced and produced % 5000 < len(records):
                producer.flush()
        if skip_until is not None:
            raise ReplayError(f"the topic's last record ({skip_until[0]}: line {skip_until[1]}) was not met in the inputs: is this the same backfill?")
        producer.flush()
    finally:
        errors.close()
        try:
            producer.close()
        except RiverbeamError as error:
            log.warning("closing the producer: %s", error)
    return ReplayResult("backfill", len(files), replay.lines, replay.good, errors.count, produced=produced,
                        seconds=time.monotonic() - started, position=replay.position().to_json(), first_errors=errors.first)
