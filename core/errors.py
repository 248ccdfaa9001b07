"""Typed errors shared by every layer.

The CLI turns a `UsageError` (configuration, arguments) into one line and exit code 2,
and any other `RiverbeamError` into one line and exit code 1.
"""

from __future__ import annotations


class RiverbeamError(Exception):
    """Base class of the errors riverbeam reports to users as one line."""


class UsageError(RiverbeamError):
    """The user asked for something that cannot be done as written (exit code 2)."""


class ConfigError(UsageError):
    """A configuration value is wrong.

    `source` names the file (or other origin), `path` the key path inside it.

    >>> str(ConfigError("kafka.bootstrap_servers", "expected a string, got 9092", source="job.yaml"))
    'job.yaml: kafka.bootstrap_servers: expected a string, got 9092'
    """

    def __init__(self, path: str, message: str, source: str | None = None):
        self.path = path
        self.message = message
        self.source = source
        parts = [p for p in (source, path, message) if p]
        super().__init__(": ".join(parts))
