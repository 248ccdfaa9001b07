"""What the Beam pipelines share to turn raw records into events: one base `DoFn` holding the decoder of a
schema-registry format (`online.formats.RegistryDecoder`, its client made in `setup` on the worker, never at module
import; None for JSON), and the dead-letter record as a dict (`online.dead_letters`, schema version 1). Each record
is decoded by `online.events.record_event`, as the daemon decodes it.

`pipelines.archive.ParseEventFn` (events timestamped by a time field) and `pipelines.stream_learn.ParseEventFn`
(events keyed by a model key) add their own checks on top.

>>> fn = RecordParseFn(("avro", {"url": "http://127.0.0.1:9"}, "events"))
>>> fn.decoder is None, fn.subject_topic(None), fn.subject_topic("clicks")
(True, 'events', 'clicks')
>>> record = dead_letter(b"{oops", "not JSON", "parse")
>>> record["version"], record["value"], record["reason"], record["stage"]
(1, '{oops', 'not JSON', 'parse')
"""

from __future__ import annotations

import apache_beam as beam

from online.dead_letters import DeadLetterRecord


class RecordParseFn(beam.DoFn):
    """A DoFn that decodes raw records with `decoder` (None: JSON), made in `setup` on the worker.

    `registry`: ``(kafka.format, kafka.schema_registry, default topic)`` for records in the
    schema-registry wire format, None for JSON. The topic names the subject in the reasons of
    records that cannot be read (a Kafka record's own topic when the caller knows it: `subject_topic`).
    """

    def __init__(self, registry: tuple[str, dict, str] | None = None):
        self.registry = registry
        self.decoder = None

    def setup(self):
        if self.registry is not None:
            from online.formats import RegistryDecoder  # the registry's client: on the worker only

            fmt, conf, _ = self.registry
            self.decoder = RegistryDecoder(fmt, conf)

    def subject_topic(self, topic: str | None) -> str:
        """The topic naming a record's subject: its own when known, else the default; empty for JSON."""
        return "" if self.registry is None else topic or self.registry[2]


def dead_letter(payload: bytes | str, reason: str, stage: str) -> dict:
    """A dead-letter record (`online.dead_letters`, schema version 1) as a dict: the original bytes, the reason and the stage that refused it."""
    value = payload if isinstance(payload, bytes) else str(payload).encode("utf-8")
    return DeadLetterRecord(reason, value, stage=stage).as_dict()
