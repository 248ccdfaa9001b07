"""The local-disk backend: a directory; writes are atomic renames, compare-and-swap under a file lock.

>>> import tempfile
>>> store = LocalStore(tempfile.mkdtemp())
>>> first = store.write_if_generation("LATEST", b"a", 0)
>>> store.read_with_generation("LATEST") == (b"a", first)
True
>>> store.write_if_generation("LATEST", b"b", 0)
Traceback (most recent call last):
...
core.storage.base.PreconditionFailed: LATEST: generation is ..., expected 0
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from core.storage.base import ABSENT, Generation, ObjectInfo, ObjectNotFound, ObjectStore, PreconditionFailed, StorageError, StorageUnusable

# what waiting will not heal: no permission, a read-only file system, a file where a folder should be
_UNUSABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR})


def _storage_error(message: str, error: OSError) -> StorageError:
    """The `StorageError` for an `OSError`: `StorageUnusable` when it is permanent (see `_UNUSABLE`)."""
    return (StorageUnusable if error.errno in _UNUSABLE else StorageError)(f"{message}: {error.strerror}")


class LocalStore(ObjectStore):
    """A directory; writes go to a temporary file renamed into place (atomic on POSIX)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / name

    @staticmethod
    def _generation(stat: os.stat_result) -> int:
        return (stat.st_mtime_ns << 16) ^ stat.st_ino or 1

    def read_with_generation(self, name: str) -> tuple[bytes, Generation]:
        path = self._path(name)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
                stat = os.fstat(handle.fileno())
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.join(name)} does not exist") from None
        except OSError as error:
            raise _storage_error(f"cannot read {self.join(name)}", error) from None
        return data, self._generation(stat)

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
            raise _storage_error(f"cannot write {self.join(name)}", error) from None

    def write_if_generation(self, name: str, data: bytes, generation: Generation) -> Generation:
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(path.parent / f".{path.name}.lock", "a")
        except OSError as error:
            raise _storage_error(f"cannot write {self.join(name)}", error) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = self._generation(path.stat()) if path.exists() else ABSENT
                if current != generation:
                    raise PreconditionFailed(f"{name}: generation is {current}, expected {generation}")
                self.write(name, data)
                return self._generation(path.stat())
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        if not self.root.exists():
            return []
        found = []
        # os.walk skips folders that vanish while it walks (another writer's retention or orphan
        # clean-up): a listing is a snapshot, never a crash
        for folder, folders, files in os.walk(self.root):
            for file in files:
                if file.startswith("."):
                    continue
                path = os.path.join(folder, file)
                name = os.path.relpath(path, self.root).replace(os.sep, "/")
                if not name.startswith(prefix):
                    continue
                try:
                    found.append(ObjectInfo(name, os.stat(path).st_size))
                except FileNotFoundError:
                    continue  # deleted since it was listed
        return sorted(found)

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink(missing_ok=True)
            parent = path.parent
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        except OSError as error:
            raise _storage_error(f"cannot delete {self.join(name)}", error) from None

    def open_read(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.join(name)} does not exist") from None
        except OSError as error:
            raise _storage_error(f"cannot open {self.join(name)}", error) from None


def match_local(pattern: str) -> list[ObjectInfo]:
    """Local files matching `pattern`: a glob (``**`` recursive), a directory (its files, not
    hidden ``.``/``_`` ones) or one file; names are absolute paths.

    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.jsonl").write_text("{}\\n"); _ = (folder / "_SUCCESS").write_text("")
    >>> [(pathlib.Path(i.name).name, i.size) for i in match_local(str(folder))]
    [('a.jsonl', 3)]
    """
    if any(c in pattern for c in "*?["):
        paths = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    elif os.path.isdir(pattern):
        paths = [os.path.join(pattern, p) for p in os.listdir(pattern) if not p.startswith((".", "_")) and os.path.isfile(os.path.join(pattern, p))]
    elif os.path.isfile(pattern):
        paths = [pattern]
    else:
        paths = []
    return sorted(ObjectInfo(os.path.abspath(p), os.path.getsize(p)) for p in paths)
