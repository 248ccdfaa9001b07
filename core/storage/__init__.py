"""Object storage behind one small interface: local paths, ``file://``, ``gs://`` and ``s3://``.

The only place in riverbeam that parses a storage URI (`core.storage.uri`) and talks to a
storage backend. Callers use:

- `open_store(uri)`: an `ObjectStore` rooted at `uri` (checkpoints, leases): read, write, list,
  delete, and the compare-and-swap `ObjectStore.write_if_generation` (see `core.storage.base`
  for the generation contract: an opaque token, `ABSENT` for "must not exist").
- `read_bytes`, `write_bytes`, `open_binary`: one object by its full URI.
- `match(pattern)`: the objects matching a path, folder or glob pattern, with their sizes.

Backends, one per module: `core.storage.local`, `core.storage.gcs` (google-cloud-storage,
client in `core.gcs`), `core.storage.s3` (boto3, client in `core.s3`). Every failure is a
`StorageError` (one line for the user), a missing object `ObjectNotFound`, a lost
compare-and-swap `PreconditionFailed`; one that waiting will not heal (permission denied, no such
bucket) `StorageUnusable`.

>>> import os, tempfile
>>> root = tempfile.mkdtemp()
>>> store = open_store(root)
>>> first = store.write_if_generation("LATEST", b"a", ABSENT)
>>> store.read_with_generation("LATEST") == (b"a", first)
True
>>> store.write_if_generation("LATEST", b"b", ABSENT)
Traceback (most recent call last):
...
core.storage.base.PreconditionFailed: LATEST: generation is ..., expected 0
>>> write_bytes(f"file://{root}/in/a.jsonl", b"{}")
>>> [(os.path.basename(i.name), i.size) for i in match(f"{root}/in/*.jsonl")]
[('a.jsonl', 2)]
>>> read_bytes(f"{root}/in/a.jsonl")
b'{}'
"""

from __future__ import annotations

import posixpath
from typing import BinaryIO

from core.storage.base import (
    ABSENT,
    Generation,
    InvalidUri,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    StorageError,
    StorageUnusable,
    match_listing,
)
from core.storage.uri import StorageUri, is_local, parse_uri

__all__ = [
    "ABSENT", "Generation", "InvalidUri", "ObjectInfo", "ObjectNotFound", "ObjectStore", "PreconditionFailed", "StorageError",
    "StorageUnusable",
    "StorageUri", "is_local", "parse_uri", "open_store", "read_bytes", "write_bytes", "open_binary", "match",
]  # fmt: skip


def _store_at(location: StorageUri, prefix: str) -> ObjectStore:
    if location.scheme == "gs":
        from core.storage.gcs import GcsStore

        return GcsStore(location.bucket, prefix)
    if location.scheme == "s3":
        from core.storage.s3 import S3Store

        return S3Store(location.bucket, prefix)
    from core.storage.local import LocalStore

    return LocalStore(prefix)


def open_store(uri: str) -> ObjectStore:
    """The store rooted at `uri`: a local path, ``file:///path``, ``gs://bucket/prefix`` or ``s3://bucket/prefix``."""
    location = parse_uri(uri)
    return _store_at(location, location.key)


def _parent_and_name(uri: str) -> tuple[ObjectStore, str]:
    location = parse_uri(uri)
    parent, name = posixpath.split(location.key)
    if not name:
        raise InvalidUri(f"{uri}: names a folder, not an object")
    return _store_at(location, parent), name


def read_bytes(uri: str) -> bytes:
    """The bytes of the object (or local file) `uri`; `ObjectNotFound` if there is none."""
    store, name = _parent_and_name(uri)
    return store.read(name)


def write_bytes(uri: str, data: bytes) -> None:
    """Create or replace the object (or local file) `uri`, atomically."""
    store, name = _parent_and_name(uri)
    store.write(name, data)


def open_binary(uri: str) -> BinaryIO:
    """A buffered, seekable binary reader of `uri`; `ObjectNotFound` if there is none."""
    store, name = _parent_and_name(uri)
    return store.open_read(name)


def match(pattern: str) -> list[ObjectInfo]:
    """The objects matching `pattern`, sorted by name, with full URIs as names and their sizes.

    Locally: a glob (``**`` recursive), a directory's files (not hidden ``.``/``_`` ones) or one
    file, named by absolute paths. In a bucket: a glob on the whole key (``*`` also crosses
    ``/``), or a key naming one object or a "folder" (every object below it).
    """
    location = parse_uri(pattern)
    if location.is_local:
        from core.storage.local import match_local

        return match_local(location.path)
    prefix = location.glob_free_prefix
    bucket = _store_at(location, "")
    listing = match_listing(bucket.list_info(prefix), location.key, prefix)
    return [ObjectInfo(f"{location.scheme}://{location.bucket}/{info.name}", info.size) for info in listing]
