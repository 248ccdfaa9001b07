"""Object storage behind one small interface: a local directory or ``gs://bucket/prefix``.

`ObjectStore` reads, writes, lists and deletes named objects below a root, and offers one
compare-and-swap: `write_if_generation`, which fails with `PreconditionFailed` when the object's
generation is not the one expected (0 = must not exist). On GCS that is the object generation
with an ``ifGenerationMatch`` precondition (honoured by GCS, and by fake-gcs-server on simple
uploads); on a local disk it is checked under an exclusive file lock.

>>> import tempfile
>>> store = open_store(tempfile.mkdtemp())
>>> first = store.write_if_generation("LATEST", b"a", 0)
>>> store.read_with_generation("LATEST") == (b"a", first)
True
>>> store.write_if_generation("LATEST", b"b", 0)
Traceback (most recent call last):
...
core.storage.PreconditionFailed: LATEST: generation is ..., expected 0
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from core.errors import RiverbeamError
from core.gcs import gcs_client


class StorageError(RiverbeamError):
    """Object storage failed (unreachable, permission denied, ...)."""


class ObjectNotFound(StorageError):
    """The object does not exist."""


class PreconditionFailed(StorageError):
    """A compare-and-swap lost: the object's generation changed since it was read."""


class ObjectStore:
    """Named objects below a root URI."""

    uri: str

    def read(self, name: str) -> bytes:
        return self.read_with_generation(name)[0]

    def read_with_generation(self, name: str) -> tuple[bytes, int]:
        raise NotImplementedError

    def write(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def write_if_generation(self, name: str, data: bytes, generation: int) -> int:
        """Write only if the object's generation is `generation` (0: it must not exist); return the new one."""
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """Names (relative to the root) of the objects starting with `prefix`, sorted."""
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def join(self, name: str) -> str:
        return f"{self.uri.rstrip('/')}/{name}"


class LocalStore(ObjectStore):
    """A directory; writes go to a temporary file renamed into place (atomic on POSIX)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / name

    @staticmethod
    def _generation(path: Path) -> int:
        stat = path.stat()
        return (stat.st_mtime_ns << 16) ^ stat.st_ino or 1

    def read_with_generation(self, name: str) -> tuple[bytes, int]:
        path = self._path(name)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
                stat = os.fstat(handle.fileno())
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.join(name)} does not exist") from None
        except OSError as error:
            raise StorageError(f"cannot read {self.join(name)}: {error.strerror}") from None
        return data, (stat.st_mtime_ns << 16) ^ stat.st_ino or 1

    def write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as error:
            raise StorageError(f"cannot write {self.join(name)}: {error.strerror}") from None

    def write_if_generation(self, name: str, data: bytes, generation: int) -> int:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = self._generation(path) if path.exists() else 0
                if current != generation:
                    raise PreconditionFailed(f"{name}: generation is {current}, expected {generation}")
                self.write(name, data)
                return self._generation(path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.exists():
            return []
        names = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                name = path.relative_to(self.root).as_posix()
                if name.startswith(prefix):
                    names.append(name)
        return sorted(names)

    def delete(self, name: str) -> None:
        path = self._path(name)
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


class GcsStore(ObjectStore):
    """``gs://bucket/prefix`` through google-cloud-storage (application-default credentials;
    anonymous on the emulator named by ``STORAGE_EMULATOR_HOST``)."""

    def __init__(self, uri: str, client=None):
        from google.api_core import exceptions

        self._exceptions = exceptions
        bucket, _, prefix = uri[len("gs://") :].partition("/")
        if not bucket:
            raise StorageError(f"{uri}: no bucket in the URI (expected gs://bucket/prefix)")
        self.uri = uri.rstrip("/")
        self.prefix = prefix.strip("/")
        self.bucket = (client or gcs_client()).bucket(bucket)

    def _name(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, name: str, operation):
        try:
            return operation()
        except self._exceptions.NotFound:
            raise ObjectNotFound(f"{self.join(name)} does not exist") from None
        except self._exceptions.PreconditionFailed:
            raise PreconditionFailed(f"{name}: its generation changed (precondition failed)") from None
        except self._exceptions.GoogleAPIError as error:
            raise StorageError(f"cannot {what} {self.join(name)}: {error}") from None

    def read_with_generation(self, name: str) -> tuple[bytes, int]:
        def read():
            blob = self.bucket.blob(self._name(name))
            data = blob.download_as_bytes()
            return data, int(blob.generation)

        return self._call("read", name, read)

    def write(self, name: str, data: bytes) -> None:
        self._call("write", name, lambda: self.bucket.blob(self._name(name)).upload_from_string(data))

    def write_if_generation(self, name: str, data: bytes, generation: int) -> int:
        def write():
            blob = self.bucket.blob(self._name(name))
            blob.upload_from_string(data, if_generation_match=generation)
            return int(blob.generation)

        return self._call("write", name, write)

    def list(self, prefix: str = "") -> list[str]:
        start = len(self.prefix) + 1 if self.prefix else 0
        return self._call(
            "list", prefix, lambda: sorted(blob.name[start:] for blob in self.bucket.list_blobs(prefix=self._name(prefix)))
        )

    def delete(self, name: str) -> None:
        try:
            self._call("delete", name, lambda: self.bucket.blob(self._name(name)).delete())
        except ObjectNotFound:
            pass


def open_store(uri: str) -> ObjectStore:
    """The store for `uri`: ``gs://bucket/prefix``, ``file:///path`` or a plain local path."""
    if uri.startswith("gs://"):
        return GcsStore(uri)
    if uri.startswith("file://"):
        return LocalStore(uri[len("file://") :])
    if "://" in uri:
        raise StorageError(f"{uri}: unsupported scheme (use a local path, file:// or gs://)")
    return LocalStore(uri)
