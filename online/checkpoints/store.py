"""Checkpoints: the learner's state, its source positions and metrics, written atomically.

Layout below the checkpoint URI (a local path, ``file://``, ``gs://bucket/prefix`` or ``s3://bucket/prefix``)::

    checkpoints/<id>/state.bin      the learner state (pickle), written first
    checkpoints/<id>/manifest.json  id, counters, positions, metrics, model text, checksums
    parts/<sequence>-<token>.bin    keyed-state parts of incremental checkpoints (shared between them)
    LATEST                          {"id", "sequence", "history"}: moved last, by compare-and-swap

An *incremental* checkpoint (per-key models, `online.checkpoints.persistence.Checkpointer`) also lists in its
manifest the ``parts`` that make up its keyed state: parts written by earlier checkpoints and
the one holding what changed since the last, each with its size, SHA-256 and HMAC. A part is
immutable once written and verified like the state blob; a checkpoint with a part missing,
truncated or tampered is refused as a whole (the previous good one is used). Retention deletes
a part once no kept checkpoint names it (and it is older than the oldest kept checkpoint).

A reader never sees half a checkpoint: `LATEST` moves only after the blob and the manifest are
complete. `LATEST` is replaced only if its generation is still the one this writer last saw, so
of two concurrent writers only one can win; the other gets `FencingError` (never a silent
overwrite). The state blob's SHA-256 is verified on load. (Stores are built from configuration by
`online.checkpoints.persistence.open_checkpoint_store`.)

**Signing.** With a signing key (the environment variable named by ``checkpoint.signing_key_env``)
a writer signs, with HMAC-SHA256, the whole manifest but its ``signature`` (canonical JSON: every
position, output offset, topic id, part, counter, the configuration hash, its ``id`` and its
``sequence``), the state blob and each part, and the ``LATEST`` pointer. A reader with the key
refuses (`SignatureError`, one line, never a fall-back to an older checkpoint): an unsigned or
wrongly signed manifest, blob, part or pointer; a manifest whose id or sequence is not the one it
is stored under (an older checkpoint copied under a new id); a history out of sequence; a pointer
older than a checkpoint this store already saw, or than a signed checkpoint present two or more
sequence numbers past it (`LATEST` rolled back); and a checkpoint signed the old way (blob only),
which predates manifest signing. A reader *without* a key refuses a signed checkpoint or pointer
(the store is signed: it is never loaded unverified) and otherwise warns once per process that
checkpoints are not verified. Loading a pickle runs code: only load checkpoints from storage you
trust, and set a signing key where others can write to it. What signing cannot tell: a rollback of
``LATEST`` by one step to a reader that never saw the newer checkpoint (a writer killed before
moving ``LATEST`` leaves the same state), and a store emptied and rewritten from the start.

**What a checkpoint holds** (`REQUIRED_FIELDS`, `KAFKA_CONTEXT`, `missing_fields`): every manifest
holds the required fields (`save` writes them, `load` refuses a manifest without one as damaged); a
manifest with Kafka offsets among its positions also holds, in ``extra``, the topic ids of their
topics, the output offsets and the outputs written ahead. The daemon fills them; every other writer
carries them from the checkpoint it continues (`online.checkpoints.persistence.Checkpointer`); the daemon refuses
a checkpoint without them in one line (`online.checkpoints.persistence.kafka_context`).

Checkpoint ids are plain (``<sequence>-<time>-<token>``): a pointer or ``--id`` naming anything else
(``../outside/ck``) is refused.

A corrupt or missing checkpoint, or one that verifies but cannot be restored (`restore_latest`: an
unknown class, a module that cannot be imported), falls back to the previous good one in `history`,
with a warning naming both.

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
import re
import secrets
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from core import __version__
from core.errors import RiverbeamError
from core.storage import ABSENT, Generation, ObjectNotFound, ObjectStore, PreconditionFailed, StorageError, open_store

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 2  # 2: the manifest and LATEST are signed (1: the state blob only)
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
    """A checkpoint or pointer fails signing (unsigned with a key, wrongly signed, replayed, signed but no key): refused, no fall-back."""


class UnrestorableError(CheckpointError):
    """A checkpoint verifies but its state cannot be restored (an unknown class, a wrong type, a module missing)."""


T = TypeVar("T")

CHECKPOINT_ID = re.compile(r"[0-9]{12}-[0-9]{8}T[0-9]{6}-[0-9a-f]{6}")
PART_NAME = re.compile(r"parts/[0-9]{12}-[0-9a-f]{8}\.bin")

REQUIRED_FIELDS = ("format", "id", "sequence", "created_at", "events_seen", "events_learned", "positions", "metrics", "state", "extra")
"""What every manifest holds (`save` writes them all; `load` refuses a manifest without one as damaged)."""

KAFKA_CONTEXT = ("topic_ids", "outputs", "outputs_ahead")
"""What a manifest with Kafka offsets among its positions also holds in ``extra``: the ids of their
topics (a recreated topic gets a new one), the output topics' end offsets and what was written
ahead of the positions. The daemon writes them; other writers carry them with the positions they keep."""


def missing_fields(manifest: dict) -> list[str]:
    """The `REQUIRED_FIELDS` `manifest` lacks (the Kafka context is checked where it is read: `online.checkpoints.persistence.kafka_context`).

    >>> missing_fields({"positions": {"events/0": 5}, "extra": {}})
    ['format', 'id', 'sequence', 'created_at', 'events_seen', 'events_learned', 'metrics', 'state']
    """
    return [name for name in REQUIRED_FIELDS if name not in manifest]


def sequence_of(checkpoint_id: str) -> int:
    """The place in the sequence a plain checkpoint id names.

    >>> sequence_of("000000000012-20261206T040000-0a1b2c")
    12
    """
    return int(checkpoint_id.split("-", 1)[0])


def canonical_json(document: Any) -> bytes:
    """The bytes a signature covers: sorted keys, no spaces, ASCII (the same for every reader of the same JSON).

    >>> canonical_json({"b": 1, "a": [1.5, "x"]})
    b'{"a":[1.5,"x"],"b":1}'
    """
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


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
        self._seen_sequence = 0  # the newest sequence this store saw: LATEST never moves back from it

    # -- the pointer ------------------------------------------------------------------------

    def _read_pointer(self, verify: bool = True) -> dict | None:
        """`LATEST`, checked (`_check_pointer`); None when absent, or corrupt (then the checkpoints present are scanned).

        Without `verify` (listing, which loads nothing) only its ids are checked.
        """
        try:
            data, generation = self.store.read_with_generation(LATEST)
        except ObjectNotFound:
            self._pointer, self._generation = None, ABSENT
            return None
        self._generation = generation
        try:
            pointer = json.loads(data)
            if not isinstance(pointer, dict) or not isinstance(pointer.get("id"), str) or not isinstance(pointer.get("history", []), list):
                raise ValueError("no id")
        except ValueError:
            log.warning("checkpoint pointer %s is corrupt; scanning for checkpoints", self.store.join(LATEST))
            pointer = None
        if pointer is not None:
            try:
                self._check_pointer(pointer, verify)
            except CheckpointError as error:
                error.checkpoint_id = pointer["id"]  # what the refused pointer named, for the log
                raise
        self._pointer = pointer
        return pointer

    def _named_by_latest(self, checkpoint_id: str) -> bool:
        """Whether `LATEST` names `checkpoint_id` (as its id or in its history), as it stands now; True when it
        cannot be read. A lost compare-and-swap may still have been seen: a writer told it lost after others
        moved on from its pointer (`core.storage.local.LocalStore._claim`) must not delete what they restored."""
        try:
            pointer = json.loads(self.store.read(LATEST))
            return checkpoint_id == pointer.get("id") or checkpoint_id in pointer.get("history", [])
        except ObjectNotFound:
            return False
        except (StorageError, ValueError, AttributeError, TypeError):
            return True

    def _check_pointer(self, pointer: dict, verify: bool = True) -> None:
        """Plain ids, the signature (with a key; refused without one if signed), sequences in order, never backwards."""
        named = [pointer["id"], *pointer.get("history", [])]
        for checkpoint_id in named:
            self._check_id(checkpoint_id, "LATEST names")
        if not verify:
            return
        if self.signing_key is not None and not pointer.get("signature"):
            self._verified_manifest(pointer["id"])  # a store signed before manifest signing says so, an unsigned one too
        self._check_signature(pointer, "pointer", "the LATEST pointer")
        sequences = [sequence_of(i) for i in named[1:]] if pointer.get("history") else []
        try:
            sequence = int(pointer.get("sequence", sequence_of(pointer["id"])))
        except (TypeError, ValueError):
            sequence = -1
        if sequence != sequence_of(pointer["id"]) or any(a <= b for a, b in zip(sequences, sequences[1:])):
            self._refuse(f"{self.uri}: the LATEST pointer's sequence {pointer.get('sequence')!r} and history do not match its checkpoint ids")
        if sequence < self._seen_sequence:
            message = f"{self.uri}: LATEST moved back from sequence {self._seen_sequence} to {sequence} (rolled back, or the store was emptied)"
            if self.signing_key is not None:
                raise SignatureError(message + ": refusing it")
            log.warning("%s", message)
        self._seen_sequence = max(self._seen_sequence, sequence)

    def _check_not_rolled_back(self, pointer: dict) -> None:
        """With a key: refuse `pointer` if a signed checkpoint two or more sequence numbers past it is present.

        (One past it is what a writer killed between its manifest and `LATEST` leaves: not told apart.)
        """
        if self.signing_key is None:
            return
        sequence = sequence_of(pointer["id"])
        newer = [i for i in self.ids() if sequence_of(i) > sequence + 1]
        if not newer:
            return
        try:
            self._verified_manifest(newer[-1])
        except CheckpointError as error:  # not a good checkpoint: nothing LATEST was moved back from
            log.warning("ignoring a checkpoint past LATEST: %s", error)
            return
        raise SignatureError(
            f"{self.uri}: LATEST points at checkpoint {pointer['id']} but the store holds the signed checkpoint {newer[-1]}, "
            "newer by two or more: LATEST was rolled back; refusing it"
        )

    def latest_id(self) -> str | None:
        """The id `LATEST` points at, checked as for loading, without loading it (None: no readable pointer).

        A read-only reader's way to watch for new checkpoints (a writer's store would take the
        pointer's generation as its own: use `load_latest` there).
        """
        pointer = self._read_pointer()
        return pointer["id"] if pointer is not None else None

    # -- signatures and ids -----------------------------------------------------------------

    def _signature(self, data: bytes) -> str:
        """The one signing: HMAC-SHA256 with the store's key (checked by `_check_signature`)."""
        return hmac.new(self.signing_key, data, hashlib.sha256).hexdigest()

    def _descriptor(self, name: str, data: bytes) -> dict:
        """What a manifest says about its state blob or a part: file, size, SHA-256 and (with a key) its signature (`_verify`)."""
        return {"file": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "hmac_sha256": self._signature(data) if self.signing_key else None}

    def _document_bytes(self, kind: str, document: dict) -> bytes:
        """What a document's signature covers: its kind, then its canonical JSON without the signature."""
        return kind.encode() + b"\n" + canonical_json({k: v for k, v in document.items() if k != "signature"})

    def _check_signature(self, document: dict, kind: str, what: str) -> None:
        """The one signature check: of a manifest or the pointer (`kind`), or of a blob or part descriptor ("data").

        A blob or part passes its bytes as `document["data"]` beside the descriptor's ``hmac_sha256``.
        """
        if kind == "data":
            signature, data = document["descriptor"].get("hmac_sha256"), document["data"]
        else:
            signature, data = document.get("signature"), None
        if self.signing_key is None:
            if signature or (kind == "manifest" and (document.get("state") or {}).get("hmac_sha256")):
                raise SignatureError(
                    f"{self.uri}: {what} is signed but no signing key is set (set RIVERBEAM_CHECKPOINT_KEY or the variable named "
                    "by checkpoint.signing_key_env / --signing-key-env): refusing to load it unverified"
                )
            return
        if not signature:
            if kind == "manifest" and (document.get("state") or {}).get("hmac_sha256"):
                raise SignatureError(
                    f"{self.uri}: {what} predates manifest signing (only its state is signed, so its positions and counters could have "
                    "been changed): refusing it; write new checkpoints to a new checkpoint URI"
                )
            raise SignatureError(f"{self.uri}: {what} is not signed and a signing key is set: refusing to load it")
        expected = self._signature(data if data is not None else self._document_bytes(kind, document))
        if not isinstance(signature, str) or not hmac.compare_digest(signature, expected):
            raise SignatureError(f"{self.uri}: {what} has a wrong signature (tampered, or another key): refusing to load it")

    def _check_id(self, checkpoint_id: Any, what: str = "checkpoint id") -> None:
        if not isinstance(checkpoint_id, str) or not CHECKPOINT_ID.fullmatch(checkpoint_id):
            raise IntegrityError(f"{self.uri}: {what} {checkpoint_id!r}, which is not a checkpoint id (<sequence>-<time>-<token>): refusing it")

    def _refuse(self, message: str) -> None:
        """A checkpoint or pointer that does not hold together: a security failure with a key, damage without."""
        raise (SignatureError if self.signing_key is not None else IntegrityError)(message)

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
            "state": self._descriptor("state.bin", state),
            "extra": extra or {},
        }
        if parts is not None:
            manifest["parts"] = list(parts)
        manifest = json.loads(json.dumps(manifest, default=str))  # what readers parse, and what the signature covers
        if self.signing_key is not None:
            manifest["signature"] = self._signature(self._document_bytes("manifest", manifest))
        base = f"{PREFIX}{checkpoint_id}/"
        self.store.write(base + "state.bin", state)
        self.store.write(base + "manifest.json", json.dumps(manifest, indent=1, default=str).encode())
        history = [checkpoint_id] + [i for i in previous.get("history", []) if i != checkpoint_id][: self.keep - 1]
        pointer = {"id": checkpoint_id, "sequence": sequence, "history": history}
        if self.signing_key is not None:
            pointer["signature"] = self._signature(self._document_bytes("pointer", pointer))
        try:
            self._generation = self.store.write_if_generation(LATEST, json.dumps(pointer).encode(), self._generation)
        except PreconditionFailed:
            if not self._named_by_latest(checkpoint_id):
                self._delete_checkpoint(checkpoint_id)  # our orphan: nobody will ever point at it
            raise FencingError(
                f"{self.uri}: another writer moved the latest checkpoint since this one last read it; "
                "this instance is stale and stops (is a second daemon writing to the same checkpoint URI?)"
            ) from None
        self._pointer = pointer
        self._seen_sequence = max(self._seen_sequence, sequence)
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
        return {**self._descriptor(name, data), **fields}

    def unprotect(self, name: str) -> None:
        """A protected part will never be named: retention may delete it."""
        self._protected.discard(name)

    def read_part(self, part: dict, checkpoint_id: str = "?") -> bytes:
        """A part's bytes, verified against its descriptor (`IntegrityError`, `SignatureError`)."""
        if not isinstance(part.get("file"), str) or not PART_NAME.fullmatch(part["file"]):
            raise IntegrityError(f"{self.uri}: checkpoint {checkpoint_id} names a part {part.get('file')!r}, which is not a part file")
        try:
            data = self.store.read(part["file"])
        except ObjectNotFound:
            raise IntegrityError(f"{self.uri}: checkpoint {checkpoint_id} is missing its part {part['file']}") from None
        self._verify(data, part, f"checkpoint {checkpoint_id} part {part['file']}")
        return data

    def _verify(self, data: bytes, expected: dict, what: str) -> None:
        """A blob or part against its descriptor: size, SHA-256 and (with a key) its signature."""
        if len(data) != expected["size"]:
            raise IntegrityError(f"{self.uri}: {what} is truncated ({len(data)} of {expected['size']} bytes)")
        if hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise IntegrityError(f"{self.uri}: {what} is corrupt (SHA-256 mismatch)")
        if self.signing_key is not None:
            self._check_signature({"descriptor": expected, "data": data}, "data", what)

    def _delete_checkpoint(self, checkpoint_id: str) -> None:
        for suffix in ("manifest.json", "state.bin"):
            try:
                self.store.delete(f"{PREFIX}{checkpoint_id}/{suffix}")
            except StorageError as error:
                log.warning("could not delete old checkpoint %s: %s", checkpoint_id, error)

    # -- reading ----------------------------------------------------------------------------

    def ids(self) -> list[str]:
        """Ids of the checkpoints present, oldest first (names that are not checkpoint ids are not listed)."""
        names = {name[len(PREFIX) :].split("/", 1)[0] for name in self.store.list(PREFIX) if name.endswith("/manifest.json")}
        return sorted(name for name in names if CHECKPOINT_ID.fullmatch(name))

    def manifest(self, checkpoint_id: str) -> dict:
        """A checkpoint's manifest as stored (parsed, not verified: for listing; `load` verifies)."""
        self._check_id(checkpoint_id)
        try:
            manifest = json.loads(self.store.read(f"{PREFIX}{checkpoint_id}/manifest.json"))
        except ObjectNotFound:
            raise CheckpointError(f"{self.uri}: no checkpoint {checkpoint_id}") from None
        except ValueError:
            raise IntegrityError(f"{self.uri}: checkpoint {checkpoint_id} has a corrupt manifest") from None
        if not isinstance(manifest, dict):
            raise IntegrityError(f"{self.uri}: checkpoint {checkpoint_id} has a corrupt manifest")
        return manifest

    def _verified_manifest(self, checkpoint_id: str) -> dict:
        """The manifest, signed (with a key) and bound to its id and sequence, holding every required field."""
        manifest = self.manifest(checkpoint_id)
        what = f"checkpoint {checkpoint_id}"
        self._check_signature(manifest, "manifest", what)
        if manifest.get("id") != checkpoint_id:
            self._refuse(f"{self.uri}: {what} holds the manifest of checkpoint {manifest.get('id')!r} (copied under another id)")
        if manifest.get("sequence") != sequence_of(checkpoint_id):
            self._refuse(f"{self.uri}: {what} records sequence {manifest.get('sequence')!r}, not the one its id names")
        missing = missing_fields(manifest)
        if missing or not isinstance(manifest["state"], dict) or not {"file", "size", "sha256"} <= set(manifest["state"]):
            raise IntegrityError(f"{self.uri}: {what} has an incomplete manifest (no {', '.join(missing or ['state descriptor'])})")
        if self.signing_key is None:
            _warn_unverified(self.uri)
        self._seen_sequence = max(self._seen_sequence, manifest["sequence"])
        return manifest

    def load(self, checkpoint_id: str) -> Checkpoint:
        """Read and verify one checkpoint (raises `IntegrityError`, `SignatureError` or `CheckpointError`)."""
        manifest = self._verified_manifest(checkpoint_id)
        if manifest["state"]["file"] != "state.bin":
            raise IntegrityError(f"{self.uri}: checkpoint {checkpoint_id} names a state file {manifest['state']['file']!r}, not state.bin")
        try:
            state = self.store.read(f"{PREFIX}{checkpoint_id}/{manifest['state']['file']}")
        except ObjectNotFound:
            raise IntegrityError(f"{self.uri}: checkpoint {checkpoint_id} has no state blob") from None
        self._verify(state, manifest["state"], f"checkpoint {checkpoint_id}")
        return Checkpoint(manifest, state, Parts(self, checkpoint_id, manifest.get("parts") or ()))

    def restore(self, checkpoint_id: str, restore: Callable[[Checkpoint], T]) -> tuple[Checkpoint, T]:
        """Load one checkpoint and `restore` it; `UnrestorableError` (one line) if it verifies but cannot be restored.

        A `RiverbeamError` of `restore` (a configuration that differs, an unknown ``--model``) passes through.
        """
        checkpoint = self.load(checkpoint_id)
        return checkpoint, self._restored(checkpoint, restore)

    def _restored(self, checkpoint: Checkpoint, restore: Callable[[Checkpoint], T]) -> T:
        try:
            return restore(checkpoint)
        except RiverbeamError:
            raise
        except Exception as error:  # unpickling runs the checkpoint's code: an unknown class, a wrong type, a missing module
            reason = (str(error).strip().splitlines() or [""])[0][:300]
            raise UnrestorableError(f"{self.uri}: checkpoint {checkpoint.id} verifies but cannot be restored: {type(error).__name__}: {reason}") from None

    def load_latest(self) -> Checkpoint | None:
        """The newest good checkpoint, falling back (with a warning) past corrupt ones; None if there is none.

        Also records the pointer's generation, so this store's next `save` is fenced against it.
        """
        found = self.restore_latest()
        return found[0] if found is not None else None

    def restore_latest(self, restore: Callable[[Checkpoint], T] | None = None) -> tuple[Checkpoint, T | None] | None:
        """The newest checkpoint that verifies and (given `restore`) restores, and what `restore` made of it.

        A corrupt one, or one that cannot be restored (`UnrestorableError`), is skipped with a warning
        naming it and the one fallen back to; a `SignatureError` or a `RiverbeamError` of `restore`
        is raised (never a fall-back). None when the store holds no checkpoint.
        """
        pointer = self._read_pointer()
        if pointer is not None:
            candidates = pointer.get("history") or [pointer["id"]]
            self._check_not_rolled_back(pointer)
        else:
            candidates = list(reversed(self.ids()))
            if candidates:
                log.warning("%s: no readable LATEST pointer; trying the checkpoints present", self.uri)
        for checkpoint_id in candidates:
            try:
                checkpoint = self.load(checkpoint_id)
                restored = self._restored(checkpoint, restore) if restore is not None else None
            except SignatureError:
                raise  # a security failure, not damage: never fall back to an older checkpoint
            except CheckpointError as error:
                log.warning("skipping checkpoint: %s", error)
                continue
            if checkpoint_id != candidates[0]:
                log.warning("%s: fell back to checkpoint %s (the latest, %s, cannot be used)", self.uri, checkpoint_id, candidates[0])
            return checkpoint, restored
        if candidates:
            raise CheckpointError(f"{self.uri}: none of the checkpoints {candidates} can be read; refusing to start from scratch")
        return None

    def list(self) -> list[dict]:
        """Manifests of the checkpoints kept, newest first (as stored, unverified: listing loads nothing)."""
        pointer = self._read_pointer(verify=False)
        ids = pointer.get("history") or [pointer["id"]] if pointer else list(reversed(self.ids()))
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
