"""The ``gs://`` backend through google-cloud-storage (client from `core.gcs`).

Generations are GCS object generations; `write_if_generation` is an ``ifGenerationMatch``
precondition on a simple upload (honoured by GCS, and by fake-gcs-server on simple uploads).
"""

from __future__ import annotations

from typing import BinaryIO

from core.gcs import gcs_client
from core.storage.base import Generation, ObjectInfo, ObjectNotFound, ObjectStore, PreconditionFailed, StorageError, StorageUnusable, open_ranged


class GcsStore(ObjectStore):
    """``gs://bucket/prefix``: application-default credentials; anonymous on the emulator named by
    ``STORAGE_EMULATOR_HOST``."""

    def __init__(self, bucket: str, prefix: str, client=None):
        from google.api_core import exceptions

        self._exceptions = exceptions
        self.prefix = prefix.strip("/")
        self.uri = f"gs://{bucket}/{self.prefix}".rstrip("/")
        self.bucket = (client or gcs_client()).bucket(bucket)

    def _name(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, name: str, operation):
        try:
            return operation()
        except self._exceptions.NotFound:
            if what in ("write", "list"):  # only the bucket can be missing
                raise StorageUnusable(f"cannot {what} {self.join(name)}: bucket {self.bucket.name!r} does not exist") from None
            raise ObjectNotFound(f"{self.join(name)} does not exist") from None
        except self._exceptions.PreconditionFailed:
            raise PreconditionFailed(f"{name}: its generation changed (precondition failed)") from None
        except (self._exceptions.Forbidden, self._exceptions.Unauthorized) as error:
            raise StorageUnusable(f"cannot {what} {self.join(name)}: {error}") from None
        except self._exceptions.GoogleAPIError as error:
            raise StorageError(f"cannot {what} {self.join(name)}: {error}") from None
        except (OSError, ValueError) as error:  # requests' connection errors are OSErrors; auth errors
            raise StorageError(f"cannot {what} {self.join(name)}: GCS unreachable: {error}") from None

    def read_with_generation(self, name: str) -> tuple[bytes, Generation]:
        def read():
            blob = self.bucket.blob(self._name(name))
            data = blob.download_as_bytes()
            return data, int(blob.generation)

        return self._call("read", name, read)

    def write(self, name: str, data: bytes) -> None:
        self._call("write", name, lambda: self.bucket.blob(self._name(name)).upload_from_string(data))

    def write_if_generation(self, name: str, data: bytes, generation: Generation) -> Generation:
        def write():
            blob = self.bucket.blob(self._name(name))
            blob.upload_from_string(data, if_generation_match=int(generation))
            return int(blob.generation)

        return self._call("write", name, write)

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        start = len(self.prefix) + 1 if self.prefix else 0
        blobs = self._call("list", prefix, lambda: list(self.bucket.list_blobs(prefix=self._name(prefix))))
        return sorted(ObjectInfo(blob.name[start:], blob.size or 0) for blob in blobs)

    def delete(self, name: str) -> None:
        try:
            self._call("delete", name, lambda: self.bucket.blob(self._name(name)).delete())
        except ObjectNotFound:
            pass

    def open_read(self, name: str) -> BinaryIO:
        blob = self._call("open", name, lambda: self.bucket.get_blob(self._name(name)))
        if blob is None:
            raise ObjectNotFound(f"{self.join(name)} does not exist")
        generation = blob.generation

        def fetch(start: int, end: int) -> bytes:  # this generation only: a replaced object fails the read
            return self._call("read", name, lambda: blob.download_as_bytes(start=start, end=end, if_generation_match=generation))

        return open_ranged(fetch, int(blob.size or 0))
