"""Storage URIs: the one place that parses them.

A storage URI is a plain local path, ``file:///path``, ``gs://bucket/key`` or ``s3://bucket/key``.
`parse_uri` splits it into a `StorageUri` (scheme, bucket, key); everything else in riverbeam
asks this module instead of looking at prefixes itself.

>>> parse_uri("s3://data/events/2024-*.jsonl")
StorageUri(scheme='s3', bucket='data', key='events/2024-*.jsonl')
>>> parse_uri("file:///tmp/x").path, parse_uri("relative/dir").is_local
('/tmp/x', True)
>>> parse_uri("gs://b/a/").child("LATEST").uri
'gs://b/a/LATEST'
>>> parse_uri("hdfs://n/x")
Traceback (most recent call last):
...
core.storage.base.InvalidUri: hdfs://n/x: unsupported scheme 'hdfs' (use a local path, file://, gs:// or s3://)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.storage.base import InvalidUri

SCHEMES = ("gs", "s3")
GLOB_CHARS = "*?["
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class StorageUri:
    """A parsed storage URI: ``scheme`` is ``file``, ``gs`` or ``s3``; ``key`` has no leading slash
    for object stores; for ``file`` the bucket is empty and ``key`` is the local path."""

    scheme: str
    bucket: str
    key: str

    @property
    def is_local(self) -> bool:
        """True for a local path or ``file://``."""
        return self.scheme == "file"

    @property
    def path(self) -> str:
        """The local path (``file`` only)."""
        return self.key

    @property
    def uri(self) -> str:
        """The URI as text: a plain path for local files, ``scheme://bucket/key`` otherwise."""
        if self.is_local:
            return self.key
        return f"{self.scheme}://{self.bucket}/{self.key}" if self.key else f"{self.scheme}://{self.bucket}"

    def child(self, name: str) -> "StorageUri":
        """The URI of `name` below this one (``/``-joined)."""
        base = self.key.rstrip("/")
        return StorageUri(self.scheme, self.bucket, f"{base}/{name}" if base else name)

    @property
    def glob_free_prefix(self) -> str:
        """The key up to its first glob character (the whole key when it has none)."""
        for i, char in enumerate(self.key):
            if char in GLOB_CHARS:
                return self.key[:i]
        return self.key

    @property
    def has_glob(self) -> bool:
        return any(char in self.key for char in GLOB_CHARS)


def parse_uri(uri: str) -> StorageUri:
    """Split `uri` into a `StorageUri`; an unknown scheme or a missing bucket is a `StorageError`."""
    found = _SCHEME.match(uri)
    if found is None:
        return StorageUri("file", "", uri)
    scheme = found.group(1).lower()
    rest = uri[found.end() :]
    if scheme == "file":
        return StorageUri("file", "", rest)
    if scheme not in SCHEMES:
        raise InvalidUri(f"{uri}: unsupported scheme {scheme!r} (use a local path, file://, gs:// or s3://)")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise InvalidUri(f"{uri}: no bucket in the URI (expected {scheme}://bucket/path)")
    return StorageUri(scheme, bucket, key.lstrip("/"))


def is_local(uri: str) -> bool:
    """Whether `uri` names a local file (plain path or ``file://``).

    >>> is_local("data/x.csv"), is_local("s3://b/x.csv")
    (True, False)
    """
    return parse_uri(uri).is_local
