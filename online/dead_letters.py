"""The one dead-letter record every riverbeam job writes: where an event came from, why it was refused, its bytes.

The daemon (dead-letter topic), ``riverbeam replay --errors FILE``, stream-learn and archive all
build their records with `DeadLetterRecord`, so one consumer reads them all. Schema version 1,
one JSON object:

=================  ==========================================================================
``version``        ``1``
``source``         ``{"topic", "partition", "offset"}`` (Kafka) or ``{"file", "line"}`` (files),
                   or ``{}`` when the job does not know it (a Beam stage after a shuffle)
``reason``         why the event was refused; at most `MAX_REASON_CHARS` characters
``value``          the original bytes once: UTF-8 text, or base64 (see ``encoding``); null if unknown
``encoding``       ``"utf-8"`` or ``"base64"``
``size``           length of the original bytes
``sha256``         hex digest of the original bytes
``truncated``      true when ``value`` holds only the first bytes, so the record fits the sink's limit
``time``           when the record was written, ISO 8601 UTC
``stage``          optional: ``parse`` or ``learn``
``model``          optional: the candidate model that refused it (replay with several models)
=================  ==========================================================================

A record never exceeds the limit it is written under (`DeadLetterRecord.to_json`): a large
event is kept truncated, with its size and digest, and flagged.

>>> record = DeadLetterRecord.from_kafka(("events", 0), 17, b"not json", "not JSON: unexpected character")
>>> data = orjson.loads(record.to_json())
>>> data["source"], data["value"], data["encoding"], data["size"], data["truncated"]
({'topic': 'events', 'partition': 0, 'offset': 17}, 'not json', 'utf-8', 8, False)
>>> big = DeadLetterRecord.from_kafka(("events", 0), 18, b"x" * 5000, "r" * 5000)
>>> encoded = big.to_json(max_bytes=1000)
>>> len(encoded) <= 1000, orjson.loads(encoded)["truncated"], len(orjson.loads(encoded)["reason"]) <= MAX_REASON_CHARS
(True, True, True)
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

SCHEMA_VERSION = 1
MAX_REASON_CHARS = 500
DEFAULT_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes and Kafka's broker default, less headroom below


def cap_reason(reason: str, limit: int = MAX_REASON_CHARS) -> str:
    """`reason` cut to `limit` characters (marked with ``…``).

    >>> cap_reason("abcdef", 4)
    'abc…'
    """
    reason = str(reason)
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


@dataclass
class DeadLetterRecord:
    """One refused event: its source, the reason, its original bytes (once) and when.

    Build it with `from_kafka`, `from_file` or directly; `to_json` encodes it within a size limit.
    """

    reason: str
    value: bytes | None
    source: dict[str, Any] = field(default_factory=dict)
    stage: str | None = None
    model: str | None = None
    time: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"))

    @classmethod
    def from_kafka(cls, tp: tuple[str, int], offset: int, value: bytes | None, reason: str, **extra) -> "DeadLetterRecord":
        """A record for the event at `offset` of topic partition `tp`."""
        return cls(reason, value, {"topic": tp[0], "partition": tp[1], "offset": offset}, **extra)

    @classmethod
    def from_file(cls, file: str, line: int, value: bytes | None, reason: str, **extra) -> "DeadLetterRecord":
        """A record for line `line` (1-based) of `file`."""
        return cls(reason, value, {"file": file, "line": line}, **extra)

    def as_dict(self, keep: int | None = None) -> dict[str, Any]:
        """The record as a JSON-able dict; `keep` bytes of the value at most (None: all)."""
        value = self.value
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        record: dict[str, Any] = {"version": SCHEMA_VERSION, "source": self.source, "reason": cap_reason(self.reason)}
        if value is None:
            record.update(value=None, encoding=None, size=None, sha256=None, truncated=False)
        else:
            kept = value if keep is None or keep >= len(value) else value[:keep]
            try:
                text, encoding = kept.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                text, encoding = base64.b64encode(kept).decode(), "base64"
            record.update(value=text, encoding=encoding, size=len(value), sha256=hashlib.sha256(value).hexdigest(), truncated=len(kept) < len(value))
        record["time"] = self.time
        if self.stage is not None:
            record["stage"] = self.stage
        if self.model is not None:
            record["model"] = self.model
        return record

    def to_json(self, max_bytes: int | None = DEFAULT_MAX_BYTES) -> bytes:
        """The record as JSON bytes, never longer than `max_bytes`: the value is truncated (and flagged) to fit."""
        encoded = orjson.dumps(self.as_dict())
        if max_bytes is None or len(encoded) <= max_bytes:
            return encoded
        size = len(self.value) if self.value is not None else 0
        keep = size
        for _ in range(8):  # shrink in proportion; JSON escapes and base64 make the ratio uneven
            keep = max(0, int(keep * max_bytes / len(encoded) * 0.9) - 64)
            encoded = orjson.dumps(self.as_dict(keep))
            if len(encoded) <= max_bytes:
                return encoded
        return orjson.dumps(self.as_dict(0))


def read_dead_letter(data: bytes) -> dict[str, Any]:
    """Decode a record written by `DeadLetterRecord.to_json`; ``original`` holds the (kept) bytes.

    >>> read_dead_letter(DeadLetterRecord.from_file("a.jsonl", 3, b"\\xff{", "not UTF-8").to_json())["original"]
    b'\\xff{'
    """
    record = orjson.loads(data)
    value = record.get("value")
    if value is None:
        record["original"] = None
    elif record.get("encoding") == "base64":
        record["original"] = base64.b64decode(value)
    else:
        record["original"] = value.encode("utf-8")
    return record
