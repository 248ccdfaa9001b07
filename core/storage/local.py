"""The local-disk backend: a directory; writes are atomic renames, compare-and-swap is lock-free.

An object written by `write_if_generation` (the lease, a ``LATEST`` pointer) is kept as numbered
versions in a hidden folder beside it (``.LEASE.v/1``, ``2``...): the highest number is the object,
and that number is its generation. A swap writes and fsyncs its bytes in a temporary file, then
claims the next number with one ``link``, which fails if another writer claimed it first; no lock
is ever held, so a writer frozen at any instant (SIGSTOP, a paused container, a slow disk) keeps
no one waiting. The object's own name is a symbolic link to its newest version for people and
tools that open the path; the store itself reads the versions. Old versions are removed as new
ones land (`KEEP_VERSIONS`). A plain file (written by `write`, or by a riverbeam before versions)
is read as it is and becomes version 1 at its first swap.

>>> import tempfile
>>> store = LocalStore(tempfile.mkdtemp())
>>> first = store.write_if_generation("LATEST", b"a", 0)
>>> store.read_with_generation("LATEST") == (b"a", first)
True
>>> store.write_if_generation("LATEST", b"b", 0)
Traceback (most recent call last):
...
core.storage.base.PreconditionFailed: LATEST: generation is 1, expected 0
>>> second = store.write_if_generation("LATEST", b"b", first)
>>> store.read("LATEST"), second, store.list()
(b'b', 2, ['LATEST'])
"""

from __future__ import annotations

import errno
import glob
import os
import secrets
import tempfile
from pathlib import Path
from typing import BinaryIO

from core.storage.base import ABSENT, Generation, ObjectInfo, ObjectNotFound, ObjectStore, PreconditionFailed, StorageError, StorageUnusable

# what waiting will not heal: no permission, a read-only file system, a file where a folder should be
_UNUSABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR})


def _storage_error(message: str, error: OSError) -> StorageError:
    """The `StorageError` for an `OSError`: `StorageUnusable` when it is permanent (see `_UNUSABLE`)."""
    return (StorageUnusable if error.errno in _UNUSABLE else StorageError)(f"{message}: {error.strerror}")


VERSION_LIMIT = 1 << 40  # version numbers stay below it; a plain file's generation (from its stat) is far above


class LocalStore(ObjectStore):
    """A directory; writes go to a temporary file renamed into place (atomic on POSIX)."""

    KEEP_VERSIONS = 3  # versions of a swapped object kept (a reader that listed one finds it for that many writes); few: keyed layouts hold one object per key

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / name

    @staticmethod
    def _generation(stat: os.stat_result) -> int:
        return (stat.st_mtime_ns << 16) ^ stat.st_ino or 1

    @staticmethod
    def _versions_of(path: Path) -> Path:
        """The hidden folder of `path`'s numbered versions (see the module's docstring)."""
        return path.parent / f".{path.name}.v"

    @staticmethod
    def _version_numbers(versions: Path) -> list[int]:
        """The version numbers present in `versions`, ascending ([] when it is absent or empty)."""
        try:
            return sorted(int(entry) for entry in os.listdir(versions) if entry.isdigit())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _current(self, path: Path) -> tuple[Path, Generation]:
        """The file holding `path`'s current bytes and its generation: the newest version, else the plain
        file (`ABSENT` when neither exists). A version removed between the listing and the caller's
        open shows as `FileNotFoundError` there: the caller looks again."""
        numbers = self._version_numbers(self._versions_of(path))
        if numbers:
            return self._versions_of(path) / str(numbers[-1]), numbers[-1]
        try:
            return path, self._generation(path.stat())
        except FileNotFoundError:
            return path, ABSENT

    def read_with_generation(self, name: str) -> tuple[bytes, Generation]:
        path = self._path(name)
        while True:
            try:
                current, generation = self._current(path)
                with open(current, "rb") as handle:
                    data = handle.read()
                    if current == path:  # a plain file: its generation is the one these bytes belong to
                        generation = self._generation(os.fstat(handle.fileno()))
                return data, generation
            except FileNotFoundError:
                if current == path:
                    raise ObjectNotFound(f"{self.join(name)} does not exist") from None
                # a newer writer removed the version listed (it keeps KEEP_VERSIONS): look again
            except OSError as error:
                raise _storage_error(f"cannot read {self.join(name)}", error) from None

    def write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        try:
            temporary = self._prepare(path, data)
            try:
                if self._version_numbers(self._versions_of(path)):  # a versioned object: a new version, never a plain file it would hide
                    while not self._claim(path, temporary, self._current(path)[1]):
                        pass
                    return
                os.replace(temporary, path)
            finally:
                Path(temporary).unlink(missing_ok=True)
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

    def write_if_generation(self, name: str, data: bytes, generation: Generation) -> Generation:
        path = self._path(name)
        try:
            temporary = self._prepare(path, data)
        except OSError as error:
            raise _storage_error(f"cannot write {self.join(name)}", error) from None
        try:
            current = self._current(path)[1]
            if current != generation:
                raise PreconditionFailed(f"{name}: generation is {current}, expected {generation}")
            claimed = self._claim(path, temporary, current)
            if not claimed:
                raise PreconditionFailed(f"{name}: generation is past {current}, expected {generation}")
            return claimed
        except OSError as error:
            raise _storage_error(f"cannot write {self.join(name)}", error) from None
        finally:
            Path(temporary).unlink(missing_ok=True)  # linked into place, or the write lost

    def _claim(self, path: Path, temporary: str, current: Generation) -> int:
        """Link the finished `temporary` as the version after `current` (1 after a plain file or none): that
        number, or 0 when another writer claimed it first.

        Also 0 when `KEEP_VERSIONS` newer versions exist by the time the link is done: the number may
        then be one cleaned up since this writer read `current` (it was frozen in between), linked
        again but never the newest. That verdict is exact for such a writer; the only other writer it
        catches is one frozen between its link and this look while others swapped `KEEP_VERSIONS`
        times, and such a writer lost the object as surely (a lease it held has expired; its LATEST
        was moved on by the next owner)."""
        versions = self._versions_of(path)
        number = current + 1 if isinstance(current, int) and 0 < current < VERSION_LIMIT else 1
        versions.mkdir(exist_ok=True)
        try:
            os.link(temporary, versions / str(number))
        except FileExistsError:
            return 0
        self._sync_folder(versions / str(number))
        numbers = self._version_numbers(versions)
        if numbers[-1] >= number + self.KEEP_VERSIONS:
            (versions / str(number)).unlink(missing_ok=True)  # no reader takes it: not the newest, and cleaned up below the newest
            return 0
        self._publish(path, numbers)
        return number

    def _publish(self, path: Path, numbers: list[int]) -> None:
        """Point `path` at the newest version (for people and tools that open it; the store reads the
        versions) and remove versions older than the last `KEEP_VERSIONS`."""
        newest = numbers[-1]
        link = path.parent / f".{path.name}.{secrets.token_hex(6)}.link"
        os.symlink(f"{self._versions_of(path).name}/{newest}", link)
        try:
            os.replace(link, path)
        except BaseException:
            link.unlink(missing_ok=True)
            raise
        for old in numbers:
            if old > newest - self.KEEP_VERSIONS:
                break
            (self._versions_of(path) / str(old)).unlink(missing_ok=True)

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        if not self.root.exists():
            return []
        found = {}
        # os.walk skips folders that vanish while it walks (another writer's retention or orphan
        # clean-up): a listing is a snapshot, never a crash
        for folder, folders, files in os.walk(self.root):
            hidden = [entry for entry in folders if entry.startswith(".")]
            folders[:] = [entry for entry in folders if not entry.startswith(".")]
            for file in files + [entry[1:-2] for entry in hidden if entry.endswith(".v")]:
                if file.startswith("."):
                    continue
                path = os.path.join(folder, file)
                name = os.path.relpath(path, self.root).replace(os.sep, "/")
                if not name.startswith(prefix) or name in found:
                    continue
                current, generation = self._current(Path(path))
                try:
                    if generation != ABSENT:
                        found[name] = ObjectInfo(name, os.stat(current).st_size)
                except FileNotFoundError:
                    continue  # deleted since it was listed
        return sorted(found.values())

    def delete(self, name: str) -> None:
        path = self._path(name)
        versions = self._versions_of(path)
        try:
            path.unlink(missing_ok=True)
            for number in self._version_numbers(versions):
                (versions / str(number)).unlink(missing_ok=True)
            if versions.is_dir():
                versions.rmdir()
            parent = path.parent
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        except OSError as error:
            raise _storage_error(f"cannot delete {self.join(name)}", error) from None

    def open_read(self, name: str) -> BinaryIO:
        path = self._path(name)
        while True:
            try:
                current, _ = self._current(path)
                return open(current, "rb")
            except FileNotFoundError:
                if current == path:
                    raise ObjectNotFound(f"{self.join(name)} does not exist") from None
                # a newer writer removed the version listed: look again
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
