"""The object-store contract every backend implements, its errors, and glob matching over listings.

An `ObjectStore` holds named objects below a root: read, write, list (with sizes), delete, open
for streaming reads, and one compare-and-swap, `write_if_generation`. A *generation* is an
opaque token naming one version of an object: an integer on a local disk and on GCS (the object
generation), the ETag on S3. `ABSENT` (0) means "the object must not exist". A caller only ever
passes back a token the same store gave it (or `ABSENT`); it never computes one.
"""

from __future__ import annotations

import fnmatch
import io
from typing import BinaryIO, Callable, NamedTuple, Union

from core.errors import RiverbeamError, UsageError

Generation = Union[int, str]
ABSENT: Generation = 0
READ_BUFFER = 8 << 20


class StorageError(RiverbeamError):
    """Object storage failed (unreachable, permission denied, bad URI...)."""


class StorageUnusable(StorageError):
    """A storage failure that waiting will not heal: permission denied, a read-only location, no such
    bucket, refused credentials. A job stops on it with one line instead of retrying forever; any
    other `StorageError` (timeouts, 5xx, a connection refused) may heal and is retried.
    """


class InvalidUri(StorageError, UsageError):
    """A storage URI cannot be used as written (unknown scheme, no bucket): a usage error, exit code 2."""


class ObjectNotFound(StorageError):
    """The object does not exist."""


class PreconditionFailed(StorageError):
    """A compare-and-swap lost: the object's generation changed since it was read."""


class ObjectInfo(NamedTuple):
    """One listed object: its name (relative to the store's root) and its size in bytes."""

    name: str
    size: int


class ObjectStore:
    """Named objects below a root URI (``uri``)."""

    uri: str

    def read(self, name: str) -> bytes:
        """The object's bytes (`ObjectNotFound` if it does not exist)."""
        return self.read_with_generation(name)[0]

    def read_with_generation(self, name: str) -> tuple[bytes, Generation]:
        """The object's bytes and the generation they belong to."""
        raise NotImplementedError

    def write(self, name: str, data: bytes) -> None:
        """Create or replace the object, atomically (a reader sees the old or the new bytes)."""
        raise NotImplementedError

    def write_if_generation(self, name: str, data: bytes, generation: Generation) -> Generation:
        """Write only if the object is at `generation` (`ABSENT`: it must not exist); return the new one.

        Raises `PreconditionFailed` when the object moved on (or appeared, or vanished).
        """
        raise NotImplementedError

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        """The objects whose names start with `prefix`, sorted by name, with their sizes."""
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """Names (relative to the root) of the objects starting with `prefix`, sorted."""
        return [info.name for info in self.list_info(prefix)]

    def delete(self, name: str) -> None:
        """Remove the object; no error if it does not exist."""
        raise NotImplementedError

    def open_read(self, name: str) -> BinaryIO:
        """A buffered, seekable binary reader of the object (`ObjectNotFound` if it does not exist)."""
        raise NotImplementedError

    def join(self, name: str) -> str:
        """The URI of `name` in this store."""
        return f"{self.uri.rstrip('/')}/{name}"


def match_listing(listing: list[ObjectInfo], key: str, prefix: str) -> list[ObjectInfo]:
    """Filter a bucket listing (taken below `prefix`) by `key`, a name or glob pattern.

    A pattern is matched with `fnmatch` on the whole name (``*`` also crosses ``/``); a name
    without glob characters matches the object itself and every object below it as a "folder".

    >>> names = [ObjectInfo(n, 1) for n in ("ev/a.jsonl", "ev/b.csv", "ev/sub/c.jsonl", "evx")]
    >>> [i.name for i in match_listing(names, "ev/*.jsonl", "ev/")]
    ['ev/a.jsonl', 'ev/sub/c.jsonl']
    >>> [i.name for i in match_listing(names, "ev", "ev")]
    ['ev/a.jsonl', 'ev/b.csv', 'ev/sub/c.jsonl']
    >>> len(match_listing(names, "", ""))
    4
    """
    if key != prefix:
        wanted = [info for info in listing if fnmatch.fnmatchcase(info.name, key)]
    elif not key:  # the bucket itself
        wanted = list(listing)
    else:
        folder = key.rstrip("/") + "/"
        wanted = [info for info in listing if info.name == key or info.name.startswith(folder)]
    return [info for info in wanted if not info.name.endswith("/")]


class RangeReader(io.RawIOBase):
    """A seekable raw reader of one object version through ranged reads: ``fetch(start, end)``
    returns bytes ``start..end`` inclusive. `open_ranged` wraps it in a buffer (Parquet seeks).

    >>> data = bytes(range(100))
    >>> reader = open_ranged(lambda start, end: data[start:end + 1], len(data), buffer_size=16)
    >>> reader.read(3), reader.seek(-2, io.SEEK_END), reader.read()
    (b'\\x00\\x01\\x02', 98, b'bc')
    """

    def __init__(self, fetch: Callable[[int, int], bytes], size: int):
        super().__init__()
        self.fetch, self.size, self.position = fetch, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        if self.position >= self.size or len(buffer) == 0:
            return 0
        data = self.fetch(self.position, min(self.size, self.position + len(buffer)) - 1)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def open_ranged(fetch: Callable[[int, int], bytes], size: int, buffer_size: int = READ_BUFFER) -> BinaryIO:
    """A buffered, seekable reader over `fetch` (see `RangeReader`)."""
    return io.BufferedReader(RangeReader(fetch, size), buffer_size=buffer_size)
