"""The local-disk backend: a directory; writes are atomic renames, compare-and-swap under a file lock.

The lock is held only to compare the generation and rename the new file into place: the data is
written and fsynced before it is taken, so a writer stopped while it writes (SIGSTOP, a frozen
container, a slow disk) never keeps the others waiting. A lock still held past `LOCK_WAIT_SECONDS`
(its holder stopped inside that short step) is a retryable `StorageError` naming it, never a
silent wait.

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
import time
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

    LOCK_WAIT_SECONDS = 10.0  # a compare-and-swap lock held longer than this: its holder stopped inside it

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
            temporary = self._prepare(path, data)
            try:
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            self._sync_folder(path)
        except OSError as error:
            raise _storage_error(f"cannot write {self.join(name)}", error) from None

    @staticmethod
    def _prepare(path: Path, data: bytes) -> str:
        """`data` in a durable temporary file next to `path`, ready to be renamed into place."""
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return temporary

    @staticmethod
    def _sync_folder(path: Path) -> None:
        """Make a rename in `path`'s folder durable."""
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _lock(self, lock: BinaryIO, name: str) -> None:
        """Take `lock` exclusively, waiting at most `LOCK_WAIT_SECONDS` (``flock`` itself waits without bound)."""
        deadline = time.monotonic() + self.LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StorageError(
                        f"cannot write {self.join(name)}: another process has held its lock for {self.LOCK_WAIT_SECONDS:g} s "
                        f"(stopped while it wrote?)"
                    ) from None
                time.sleep(0.01)

    def write_if_generation(self, name: str, data: bytes, generation: Generation) -> Generation:
        path = self._path(name)
        try:
            temporary = self._prepare(path, data)  # before the lock: only the compare and the rename hold it
        except OSError as error:
            raise _storage_error(f"cannot write {self.join(name)}", error) from None
        try:
            with open(path.parent / f".{path.name}.lock", "a") as lock:
                self._lock(lock, name)
                try:
                    current = self._generation(path.stat()) if path.exists() else ABSENT
                    if current != generation:
                        raise PreconditionFailed(f"{name}: generation is {current}, expected {generation}")
                    os.replace(temporary, path)
                    written = self._generation(path.stat())
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
            self._sync_folder(path)
            return written
        except OSError as error:
            raise _storage_error(f"cannot write {self.join(name)}", error) from None
        finally:
            Path(temporary).unlink(missing_ok=True)  # renamed into place, or the write lost

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
