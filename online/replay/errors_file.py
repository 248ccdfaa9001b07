"""Replay's errors file: rejected lines as dead-letter records, in step with the checkpoints.

The file side of `online.learning.loop.DeadLetterSink` (the daemon's is its Kafka dead-letter
topic): one JSON line per rejected line or row, the one dead-letter schema
(`online.dead_letters.DeadLetterRecord`, source ``{file, line}``).

>>> import tempfile, os, json
>>> path = os.path.join(tempfile.mkdtemp(), "errors.jsonl")
>>> errors = ErrorLog(path, max_errors=None)
>>> errors.add("a.jsonl", 3, "not JSON")
>>> errors.close()
>>> record = json.loads(open(path).read()); record["source"], record["reason"]
({'file': 'a.jsonl', 'line': 3}, 'not JSON')
"""

from __future__ import annotations

import os

from core.errors import RiverbeamError
from online.dead_letters import DeadLetterRecord

__all__ = ["ErrorLog", "ReplayError"]


class ReplayError(RiverbeamError):
    """The replay stopped: too many bad lines, a topic it must not append to, ..."""


class ErrorLog:
    """Bad lines: appended to a JSON-lines file of dead-letter records (`online.dead_letters`:
    source ``{file, line}``, `reason`, and `model` when a single candidate rejected the event),
    counted, and fatal past `max_errors`.

    A fresh run starts the file empty (`start_fresh`). In learn mode the file follows the
    checkpoints: `flush` makes it durable and returns its size, which the checkpoint records; a
    resumed replay first cuts the file back to that size (`resume_at`), so the bad lines it meets
    again after a crash are written once.
    """

    def __init__(self, path: str | None, max_errors: int | None, keep_first: int = 5, follow_checkpoints: bool = False):
        self.path = path
        self.max_errors = max_errors
        self.follow_checkpoints = follow_checkpoints  # held in memory until `flush` (each checkpoint): a crash writes nothing twice
        self._held: list[bytes] = []
        self.count = 0
        self.first: list[dict] = []
        self.keep_first = keep_first
        self._handle = None

    def add(self, file: str, line: int, reason: str, model: str | None = None) -> None:
        record = {"file": file, "line": line, "reason": reason}
        if model is not None:
            record["model"] = model
        dead_letter = DeadLetterRecord.from_file(file, line, None, reason, model=model)
        self.count += 1
        if len(self.first) < self.keep_first:
            self.first.append(record)
        if self.path is not None:
            if self._handle is None:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                self._handle = open(self.path, "ab")
            if self.follow_checkpoints:
                self._held.append(dead_letter.to_json(max_bytes=None) + b"\n")
            else:
                self._handle.write(dead_letter.to_json(max_bytes=None) + b"\n")
        if self.max_errors is not None and self.count > self.max_errors:
            self.close()
            where = f"; all are in {self.path}" if self.path else ""
            raise ReplayError(
                f"stopped: {self.count} bad lines, more than --max-errors {self.max_errors} "
                f"(last: {file}: line {line}: {reason}){where}"
            )

    def flush(self) -> int | None:
        """Make every record written so far durable; the file's size (None without a file)."""
        if self.path is None:
            return None
        if self._handle is not None:
            self._handle.write(b"".join(self._held))
            self._held = []
            self._handle.flush()
            os.fsync(self._handle.fileno())
            return self._handle.tell()
        return os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def start_fresh(self) -> None:
        """Empty the file (created if missing): a fresh run's errors file holds that run's bad lines only."""
        if self.path is None:
            return
        self.close()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "wb"):
            pass

    def resume_at(self, size: int | None) -> None:
        """Cut the file back to `size` bytes (what the checkpoint resumed from had made durable)."""
        if self.path is None or size is None or not os.path.exists(self.path) or os.path.getsize(self.path) <= size:
            return
        self.close()
        with open(self.path, "r+b") as handle:
            handle.truncate(size)

    def close(self) -> None:
        """Close the errors file (it reopens in append mode on the next bad line)."""
        if self._handle is not None:
            self._handle.write(b"".join(self._held))
            self._held = []
            self._handle.close()
            self._handle = None

    def dead_letter(self, batch, index: int, reason: str, model: str | None = None) -> None:
        """The learning loop's dead-letter sink: record `index` of a file batch (`online.sources.FileBatch`)."""
        file, line = batch.source(index)
        self.add(file, line, reason, model)
