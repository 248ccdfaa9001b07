"""The ``s3://`` backend through boto3 (client from `core.s3`).

Generations are ETags. `write_if_generation` is a conditional PutObject, as S3 documents it
since 2024: ``If-None-Match: *`` to create (`ABSENT`), ``If-Match: <etag>`` to replace. A stale
writer gets ``412 PreconditionFailed`` (or ``404`` when the object vanished), both mapped to
`PreconditionFailed`. S3 answers ``409 ConditionalRequestConflict`` while a concurrent
conditional write is in flight: the put is retried a few times and then decided by 412 or success.

An ETag of a single-part upload is the MD5 of its bytes, so a compare-and-swap compares
contents: writers must put something unique in the object (riverbeam's pointer and lease hold a
fresh id or an expiry time), or a write of identical bytes would not be seen as a change.

Reads are ranged GETs of one version (its ETag) behind a buffered, seekable reader (Parquet seeks).
"""

from __future__ import annotations

import time
from typing import BinaryIO

from core.s3 import s3_client
from core.storage.base import ABSENT, Generation, ObjectInfo, ObjectNotFound, ObjectStore, PreconditionFailed, StorageError, StorageUnusable, open_ranged

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_CONFLICT_RETRIES = 5
_UNUSABLE = {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidBucketName", "AccountProblem"}


def _error_code(error) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Store(ObjectStore):
    """``s3://bucket/prefix`` with the standard AWS configuration (environment, profiles, ``AWS_ENDPOINT_URL``)."""

    def __init__(self, bucket: str, prefix: str, client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = client or s3_client()

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, name: str, operation):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return operation()
        except ClientError as error:
            code = _error_code(error)
            if code in _NOT_FOUND:
                raise ObjectNotFound(f"{self.join(name)} does not exist") from None
            if code == "PreconditionFailed":
                raise PreconditionFailed(f"{name}: its ETag changed (precondition failed)") from None
            if code == "NoSuchBucket":
                raise StorageUnusable(f"cannot {what} {self.join(name)}: bucket {self.bucket!r} does not exist") from None
            if code in _UNUSABLE:
                raise StorageUnusable(f"cannot {what} {self.join(name)}: {code}") from None
            raise StorageError(f"cannot {what} {self.join(name)}: {code or error}") from None
        except BotoCoreError as error:  # unreachable endpoint, no credentials, timeouts
            raise StorageError(f"cannot {what} {self.join(name)}: S3 unreachable: {error}") from None

    def read_with_generation(self, name: str) -> tuple[bytes, Generation]:
        def read():
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
            return response["Body"].read(), response["ETag"]

        return self._call("read", name, read)

    def write(self, name: str, data: bytes) -> None:
        self._call("write", name, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data))

    def write_if_generation(self, name: str, data: bytes, generation: Generation) -> Generation:
        condition = {"IfNoneMatch": "*"} if generation == ABSENT else {"IfMatch": str(generation)}

        def write():
            return self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data, **condition)["ETag"]

        for attempt in range(_CONFLICT_RETRIES):
            try:
                return self._call("write", name, write)
            except ObjectNotFound:  # If-Match on an object that is gone
                raise PreconditionFailed(f"{name}: it no longer exists (precondition failed)") from None
            except StorageError as error:
                if "ConditionalRequestConflict" not in str(error) or attempt == _CONFLICT_RETRIES - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        start = len(self.prefix) + 1 if self.prefix else 0

        def listing():
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            return [ObjectInfo(item["Key"][start:], item["Size"]) for page in pages for item in page.get("Contents", ())]

        return sorted(self._call("list", prefix, listing))

    def delete(self, name: str) -> None:
        self._call("delete", name, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(name)))

    def open_read(self, name: str) -> BinaryIO:
        head = self._call("open", name, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(name)))
        key, etag = self._key(name), head["ETag"]

        def fetch(start: int, end: int) -> bytes:  # this version only: a replaced object fails the read
            get = lambda: self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end}", IfMatch=etag)["Body"].read()  # noqa: E731
            return self._call("read", name, get)

        return open_ranged(fetch, int(head["ContentLength"]))
