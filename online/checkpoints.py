"""Checkpoints: the learner's state, its source positions and metrics, written atomically.

Layout below the checkpoint URI (a local path, ``file://``, ``gs://bucket/prefix`` or ``s3://bucket/prefix``)::

    checkpoints/<id>/state.bin      the learner state (pickle), written first
    checkpoints/<id>/manifest.json  id, counters, positions, metrics, model text, checksums
    parts/<sequence>-<token>.bin    keyed-state parts of incremental checkpoints (shared between them)
    LATEST                          {"id", "sequence", "history"}: moved last, by compare-and-swap

An *incremental* checkpoint (per-key models, `online.persistence.Checkpointer`) also lists in its
manifest the ``parts`` that make up its keyed state: parts written by earlier checkpoints and
the one holding what changed since the last, each with its size, SHA-256 and HMAC. A part is
immutable once written and verified like the state blob; a checkpoint with a part missing,
truncated or tampered is refused as a whole (the previous good one is used). Retention deletes
a part once no kept checkpoint names it (and it is older than the oldest kept checkpoint).

A reader never sees half a checkpoint: `LATEST` moves only after the blob and the manifest are
complete. `LATEST` is replaced only if its generation is still the one this writer last saw, so
of two concurrent writers only one can win; the other gets `FencingError` (never a silent
overwrite). The state blob's SHA-256 is verified on load; with a signing key (the environment
variable named by ``checkpoint.signing_key_env``) the blob also carries an HMAC-SHA256, and an
unsigned or wrongly signed blob is refused outright (`SignatureError`, never a fall-back to an
older checkpoint). Loading a pickle runs code: only load checkpoints from storage you trust, and
set a signing key where others can write to it. Without a key, the first load in a process
warns that checkpoints are not verified. (Stores are built from configuration by
`online.persistence.open_checkpoint_store`.)

A corrupt or missing checkpoint falls back to the previous good one in `history`, with a warning.

>>> import tempfile
>>> store = CheckpointStore(tempfile.mkdtemp(), keep=2)
>>> for n in range(3):
...     _ = store.save(b"state %d" % n, events_seen=n, events_learned=n, positions={"events/0": n})
>>> [c["events_seen"] for c in store.list()]
[2, 1]
>>> store.load_latest().state
b'state 2'
"""

from __future__ import annotations

import collections.abc
import datetime
import hashlib
import hmac
import json
import logging
import os
import platform
import secrets
from dataclasses import dataclass
from typing import Any

from core import __version__
from core.errors import RiverbeamError
from core.storage import ABSENT, Generation, ObjectNotFound, ObjectStore, PreconditionFailed, StorageError, open_store

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
LATEST = "LATEST"
PREFIX = "checkpoints/"
PARTS = "parts/"
KEEP_PARTS_BYTES = 256 << 20  # parts kept in memory after verification; past that, read again when restored


class CheckpointError(RiverbeamError):
    """A checkpoint cannot be written or no usable checkpoint can be read."""


class FencingError(CheckpointError):
    """Another writer moved the latest checkpoint since this one last read it: this writer is stale."""


class IntegrityError(CheckpointError):
    """A checkpoint's blob does not match its manifest (truncated, corrupt, unsigned or tampered)."""


class SignatureError(IntegrityError):
    """A signing key is set and a checkpoint is unsigned or signed with another key: refused, no fall-back."""


_warned_unverified = False


def _warn_unverified(uri: str) -> None:
    global _warned_unverified
    if not _warned_unverified:
        _warned_unverified = True
        log.warning(
            "%s: checkpoints are not verified: no signing key is set (a checkpoint is a pickle and loading it runs code; "
            "set RIVERBEAM_CHECKPOINT_KEY, or the variable named by checkpoint.signing_key_env / --signing-key-env)",
            uri,
        )


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: its manifest (plain JSON) and the state bytes."""

    manifest: dict
    state: bytes
    parts: "Parts | tuple" = ()  # verified keyed-state parts of an incremental checkpoint, in order

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def positions(self) -> dict:
        return self.manifest.get("positions", {})


class Parts(collections.abc.Sequence):
    """The keyed-state parts of a checkpoint, in order: every one read and verified when the checkpoint is
    loaded (so a checkpoint with a part missing or tampered is refused as a whole); their bytes kept up
    to `KEEP_PARTS_BYTES` in all, the others read and verified again when used (restore memory stays bounded).
    """

    def __init__(self, store: "CheckpointStore", checkpoint_id: str, descriptors):
        self.store, self.checkpoint_id, self.descriptors = store, checkpoint_id, list(descriptors)
        self._kept: dict[int, bytes] = {}
        kept = 0
        for index, part in enumerate(self.descriptors):
            data = store.read_part(part, checkpoint_id)
            if kept + len(data) <= KEEP_PARTS_BYTES:
                self._kept[index] = data
                kept += len(data)

    def __len__(self) -> int:
        return len(self.descriptors)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if index in self._kept:
            return self._kept[index]
        return self.store.read_part(self.descriptors[index], self.checkpoint_id)


def config_hash(*sections: Any) -> str:
    """A stable hash of configuration objects (pydantic models or plain data).

    >>> config_hash({"a": 1}) == config_hash({"a": 1}) != config_hash({"a": 2})
    True
    """
    plain = [s.model_dump(mode="json") if hasattr(s, "model_dump") else s for s in sections]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def signing_key_from_env(name: str | None) -> bytes | None:
    value = os.environ.get(name) if name else None
    return value.encode() if value else None


class CheckpointStore:
    """Writes and reads checkpoints below `uri`, keeping the last `keep`.

    A writer remembers the generation of `LATEST` it last read or wrote; `save` replaces
    `LATEST` only if it is unchanged (see `FencingError`).
    """

    def __init__(self, uri: str | ObjectStore, keep: int = 10, signing_key: bytes | None = None, compact_parts: int = 8):
        self.store = uri if isinstance(uri, ObjectStore) else open_store(uri)
        self.uri = self.store.uri
        self.keep = keep
        self.signing_key = signing_key
        self.compact_parts = compact_parts  # incremental checkpoints: fold the parts once there are this many
        self._parts_of: dict[str, set] = {}  # checkpoint id -> the part files its manifest names
        self._protected: set = set()  # parts written but not named by a manifest yet (a compaction's): retention spares them
        self._pointer: dict | None = None
        self._generation: Generation | None = None  # None: not read yet; an opaque token from the store

    # -- the pointer ------------------------------------------------------------------------

    def _read_pointer(self) -> dict | None:
        try:
            data, generation = self.store.read_with_generation(LATEST)
        except ObjectNotFound:
            self._pointer, self._generation = None, ABSENT
            return None
        self._generation = generation
        try:
            pointer = json.loads(data)
            if not isinstance(pointer, dict) or not isinstance(pointer.get("id"), str):
                raise ValueError("no id")
        except ValueError:
            log.warning("checkpoint pointer %s is corrupt; scanning for checkpoints", self.store.join(LATEST))
            pointer = None
        self._pointer = pointer
        return pointer

    # -- writing ----------------------------------------------------------------------------

    def save(
        self,
        state: bytes,
        *,
        events_seen: int,
        events_learned: int,
        positions: dict,
        metrics: dict | None = None,
        model: str = "",
        config_hash: str = "",
        extra: dict | None = None,
        parts: list[dict] | None = None,
    ) -> dict:
        """Write one checkpoint and move `LATEST` to it; return its manifest.

        `parts` (incremental checkpoints) are descriptors from `write_part`, in order.

        Raises `FencingError` if another writer moved `LATEST` since this store last saw it.
        """
        if self._generation is None:
            self._read_pointer()
        previous = self._pointer or {}
        sequence = int(previous.get("sequence", 0)) + 1
        now = datetime.datetime.now(datetime.timezone.utc)
        checkpoint_id = f"{sequence:012d}-{now.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        digest = hashlib.sha256(state).hexdigest()
        manifest = {
            "format": MANIFEST_FORMAT,
            "id": checkpoint_id,
            "sequence": sequence,
            "created_at": now.isoformat(timespec="milliseconds"),
            "events_seen": events_seen,
            "events_learned": events_learned,
            "positions": positions,
            "metrics": metrics or {},
            "model": model,
            "config_hash": config_hash,
            "versions": {"riverbeam": __version__, "river": _river_version(), "python": platform.python_version()},
            "state": {
                "file": "state.bin",
                "size": len(state),
                "sha256": digest,
                "hmac_sha256": hmac.new(self.signing_key, state, hashlib.sha256).hexdigest() if self.signing_key else None,
            },
            "extra": extra or {},
        }
        if parts is not None:
            manifest["parts"] = list(parts)
        base = f"{PREFIX}{checkpoint_id}/"
        self.store.write(base + "state.bin", state)
        self.store.write(base + "manifest.json", json.dumps(manifest, indent=1, default=str).encode())
        history = [checkpoint_id] + [i for i in previous.get("history", []) if i != checkpoint_id][: self.keep - 1]
        pointer = {"id": checkpoint_id, "sequence": sequence, "history": history}
        try:
            self._generation = self.store.write_if_generation(LATEST, json.dumps(pointer).encode(), self._generation)
        except PreconditionFailed:
            self._delete_checkpoint(checkpoint_id)  # our orphan: nobody will ever point at it
            raise FencingError(
                f"{self.uri}: another writer moved the latest checkpoint since this one last read it; "
                "this instance is stale and stops (is a second daemon writing to the same checkpoint URI?)"
            ) from None
        self._pointer = pointer
        self._parts_of[checkpoint_id] = {part["file"] for part in parts or ()}
        self._protected -= self._parts_of[checkpoint_id]
        self._apply_retention(history)
        return manifest

    def _apply_retention(self, history: list[str]) -> None:
        keep = set(history)
        for checkpoint_id in self.ids():
            if checkpoint_id not in keep and checkpoint_id < history[-1]:
                self._delete_checkpoint(checkpoint_id)
        self._parts_of = {i: files for i, files in self._parts_of.items() if i in keep}
        try:
            present = self.store.list(PARTS)
        except StorageError as error:
            log.warning("could not list checkpoint parts: %s", error)
            return
        if not present:
            return
        referenced: set = set()
        for checkpoint_id in history:
            if checkpoint_id not in self._parts_of:
                try:
                    self._parts_of[checkpoint_id] = {p["file"] for p in self.manifest(checkpoint_id).get("parts") or ()}
                except CheckpointError as error:
                    log.warning("retention keeps every part: %s", error)
                    return
            referenced |= self._parts_of[checkpoint_id]
        oldest = int(history[-1].split("-", 1)[0])
        referenced |= self._protected
        for name in present:
            if name not in referenced and _part_sequence(name) < oldest:
                try:
                    self.store.delete(name)
                except StorageError as error:
                    log.warning("could not delete old checkpoint part %s: %s", name, error)

    # -- parts of incremental checkpoints ----------------------------------------------------

    def next_sequence(self) -> int:
        """The sequence number the next checkpoint written through this store will have."""
        if self._generation is None:
            self._read_pointer()
        return int((self._pointer or {}).get("sequence", 0)) + 1

    def write_part(self, data: bytes, sequence: int | None = None, *, protect: bool = False, **fields) -> dict:
        """Write one immutable part (named by `sequence`, by default the next checkpoint's); its descriptor for `save`.

        A `protect`-ed part is spared by retention until a checkpoint saved here names it (or `unprotect`).
        """
        sequence = self.next_sequence() if sequence is None else sequence
        name = f"{PARTS}{sequence:012d}-{secrets.token_hex(4)}.bin"
        if protect:
            self._protected.add(name)
        self.store.write(name, data)
        return {
            "file": name,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "hmac_sha256": hmac.new(self.signing_key, data, hashlib.sha256).hexdigest() if self.signing_key else None,
            **fields,
        }

    def unprotect(self, name: str) -> None:
        """A protected part will never be named: retention may delete it."""
        self._protected.discard(name)

    def read_part(self, part: dict, checkpoint_id: str = "?") -> bytes:
        """A part's bytes, verified against its descriptor (`IntegrityError`, `SignatureError`)."""
        try:
            data = self.store.read(part["file"])
        except ObjectNotFound:
            raise IntegrityError(f"{self.uri}: checkpoint {checkpoint_id} is missing its part {part['file']}") from None
        self._verify(data, part, f"checkpoint {checkpoint_id} part {part['file']}")
        return data

    def _verify(self, data: bytes, expected: dict, what: str) -> None:
        if len(data) != expected["size"]:
            raise IntegrityError(f"{self.uri}: {what} is truncated ({len(data)} of {expected['size']} bytes)")
        if hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise IntegrityError(f"{self.uri}: {what} is corrupt (SHA-256 mismatch)")
        if self.signing_key is not None:
            signature = expected.get("hmac_sha256")
            if not signature:
                raise SignatureError(f"{self.uri}: {what} is not signed and a signing key is set: refusing to load it")
            if not hmac.compare_digest(signature, hmac.new(self.signing_key, data, hashlib.sha256).hexdigest()):
                raise SignatureError(f"{self.uri}: {what} has a wrong signature (tampered, or another key): refusing to load it")

    def _delete_checkpoint(self, checkpoint_id: str) -> None:
        for suffix in ("manifest.json", "state.bin"):
            try:
                self.store.delete(f"{PREFIX}{checkpoint_id}/{suffix}")
            except StorageError as error:
                log.warning("could not delete old checkpoint %s: %s", checkpoint_id, error)

    # -- reading ----------------------------------------------------------------------------

    def ids(self) -> list[str]:
        """Ids of the checkpoints present, oldest first."""
        return sorted({name[len(PREFIX) :].split("/", 1)[0] for name in self.store.list(PREFIX) if name.endswith("/manifest.json")})

    def manifest(self, checkpoint_id: str) -> dict:
        try:
            manifest = json.loads(self.store.read(f"{PREFIX}{checkpoint_id}/manifest.json"))
        except ObjectNotFound:
            raise CheckpointError(f"{self.uri}: no checkpoint {checkpoint_id}") from None
        except ValueError:
            raise IntegrityError(f"{self.uri}: checkpoint {checkpoint_id} has a corrupt manifest") from None
        if not isinstance(manifest, dict) or manifest.get("id") != checkpoint_id:
            raise IntegrityError(f"{self.uri}: checkpoint {checkpoint_id} has a manifest of another checkpoint")
        return manifest

    def load(self, checkpoint_id: str) -> Checkpoint:
        """Read and verify one checkpoint (raises `IntegrityError` or `CheckpointError`)."""
        manifest = self.manifest(checkpoint_id)
        try:
            state = self.store.read(f"{PREFIX}{checkpoint_id}/{manifest['state']['file']}")
        except ObjectNotFound:
            raise IntegrityError(f"{self.uri}: checkpoint {checkpoint_id} has no state blob") from None
        expected = manifest["state"]
        if len(state) != expected["size"]:
            raise IntegrityError(f"{self.uri}: checkpoint {checkpoint_id} is truncated ({len(state)} of {expected['size']} bytes)")
        if hashlib.sha256(state).hexdigest() != expected["sha256"]:
            raise IntegrityError(f"{self.uri}: checkpoint {checkpoint_id} is corrupt (SHA-256 mismatch)")
        if self.signing_key is None:
            _warn_unverified(self.uri)
        else:
            signature = expected.get("hmac_sha256")
            if not signature:
                raise SignatureError(f"{self.uri}: checkpoint {checkpoint_id} is not signed and a signing key is set: refusing to load it")
            if not hmac.compare_digest(signature, hmac.new(self.signing_key, state, hashlib.sha256).hexdigest()):
                raise SignatureError(f"{self.uri}: checkpoint {checkpoint_id} has a wrong signature (tampered, or another key): refusing to load it")
        return Checkpoint(manifest, state, Parts(self, checkpoint_id, manifest.get("parts") or ()))

    def load_latest(self) -> Checkpoint | None:
        """The newest good checkpoint, falling back (with a warning) past corrupt ones; None if there is none.

        Also records the pointer's generation, so this store's next `save` is fenced against it.
        """
        pointer = self._read_pointer()
        if pointer is not None:
            candidates = pointer.get("history") or [pointer["id"]]
        else:
            candidates = list(reversed(self.ids()))
            if candidates:
                log.warning("%s: no readable LATEST pointer; trying the checkpoints present", self.uri)
        for checkpoint_id in candidates:
            try:
                checkpoint = self.load(checkpoint_id)
            except SignatureError:
                raise  # a security failure, not damage: never fall back to an older checkpoint
            except CheckpointError as error:
                log.warning("skipping checkpoint: %s", error)
                continue
            if checkpoint_id != candidates[0]:
                log.warning("%s: fell back to checkpoint %s", self.uri, checkpoint_id)
            return checkpoint
        if candidates:
            raise CheckpointError(f"{self.uri}: none of the checkpoints {candidates} can be read; refusing to start from scratch")
        return None

    def list(self) -> list[dict]:
        """Manifests of the checkpoints kept, newest first."""
        pointer = self._read_pointer()
        ids = pointer.get("history", [pointer["id"]]) if pointer else list(reversed(self.ids()))
        manifests = []
        for checkpoint_id in ids:
            try:
                manifests.append(self.manifest(checkpoint_id))
            except CheckpointError as error:
                log.warning("%s", error)
        return manifests


def _part_sequence(name: str) -> int:
    """The sequence number a part file was written for.

    >>> _part_sequence("parts/000000000012-0a1b2c3d.bin")
    12
    """
    try:
        return int(name[len(PARTS) :].split("-", 1)[0])
    except ValueError:
        return 1 << 62  # not ours: never deleted


def _river_version() -> str:
    import river

    return river.__version__
