"""The checkpoint bridge: the one place where a `Learner` becomes a checkpoint and back.

Every job that writes or reads checkpoints goes through here: the daemon, replay (learn,
evaluate, ``--checkpoint-uri``), the Beam stream-learn pipeline, ``riverbeam predict``,
``riverbeam checkpoints`` and ``riverbeam serve``. So a checkpoint written by any of them
resumes in any other. The bridge owns three things.

**What a checkpoint says about its learner** (`LearnerSpec`). The manifest records the
learning configuration (``model``, ``events``, ``features`` and the fitted transform's digest)
and one configuration hash over what changes the model: the ``model`` and ``events`` sections
and, when ``features.transform_output`` is set, the SHA-256 of the fitted transform document
(its content, not its location: moving the output keeps the hash, re-fitting it changes it).
Only settings that differ from their defaults are hashed, so a setting added to riverbeam later
does not invalidate existing checkpoints; checkpoints written before this scheme (a hash over
the full ``model`` and ``events`` sections, or stream-learn's over ``model``, ``events`` and
``features``) are still accepted. A job restarted with another configuration is stopped instead of silently
mixing two models; `riverbeam predict` rebuilds the exact learner, transform included, from the
checkpoint alone.

**Which store, with which key** (`open_checkpoint_store`, `checkpoint_store`). A job with a
``checkpoint:`` section signs and verifies with the key in the environment variable named by
``checkpoint.signing_key_env``; commands without one (``riverbeam checkpoints``, ``predict``,
``replay --checkpoint-uri``) take the variable's name by ``--signing-key-env`` and default to
``RIVERBEAM_CHECKPOINT_KEY``. With a key every reader refuses an unsigned, wrongly signed,
copied or rolled-back checkpoint (the signature covers the whole manifest and ``LATEST``: see
`online.checkpoints.store`); without one, a signed store is refused and an unsigned one read with a
warning, once, that checkpoints are not verified (a checkpoint is a pickle: loading it runs code).

**When, and in what order** (`Cadence`, `Checkpointer`). One `Checkpointer` per learning unit
(the daemon's unit, a replay, a Beam key) decides when a checkpoint is due (every N events or
T seconds), snapshots the learner on the caller's thread, uploads it (on a background thread
when given one: one upload in flight, the next waits), and only once the checkpoint is durable
reports it (`Durable`) so that the caller may commit source offsets. Positions written by other
jobs (a replay position in a daemon's checkpoint, Kafka offsets in a replay's) are kept. Per-key
models (`online.learning.keyed_state`) are checkpointed incrementally: only what changed since the last
checkpoint, pickled after its instant while the stream goes on (see `Checkpointer`).

>>> import tempfile
>>> from online.config import EventsConfig, ModelConfig
>>> spec = LearnerSpec(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y"))
>>> store = checkpoint_store(tempfile.mkdtemp())
>>> learner, restored = resume(store, spec)
>>> checkpointer = Checkpointer(store, learner, spec, Cadence(every_events=2), restored=restored)
>>> for i in range(3):
...     _ = learner.process({"x": float(i), "y": 2.0 * i})
...     checkpointer.add(1)
...     if checkpointer.due():
...         _ = checkpointer.checkpoint({"events/0": i + 1})
>>> _ = checkpointer.checkpoint({"events/0": 3}, wait=True)
>>> [m["events_seen"] for m in store.list()], store.list()[0]["positions"]
([3, 2], {'events/0': 3})
>>> again, restored = resume(checkpoint_store(store.uri), spec)
>>> again.report() == learner.report()
True
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

from core.errors import ConfigError
from core.storage import StorageUnusable
from online.checkpoints.store import KAFKA_CONTEXT, Checkpoint, CheckpointError, CheckpointStore, FencingError, config_hash, signing_key_from_env
from online.config import CheckpointConfig, EventsConfig, FeaturesConfig, ModelConfig, user_modules
from online.events import load_feature_transform
from online.learning.keyed_state import encode_part, merge_parts, pending_delta
from online.learning.learner import Learner
from online.learning.model_set import ModelSet
from online.sources import kafka_positions

log = logging.getLogger(__name__)

DEFAULT_SIGNING_KEY_ENV = "RIVERBEAM_CHECKPOINT_KEY"

__all__ = [
    "DEFAULT_SIGNING_KEY_ENV", "LearnerSpec", "Cadence", "Checkpointer", "Durable",
    "open_checkpoint_store", "checkpoint_store", "resume", "resume_unit", "ResumedUnit", "restore_learner", "save_learner",
"transform_digest", "checkpoint_fields", "learning_extra", "kafka_context", "position_context",
    "ModelsSpec", "restore_model",
]  # fmt: skip


# -- stores ------------------------------------------------------------------------------------


def open_checkpoint_store(config: CheckpointConfig, uri: str | None = None) -> CheckpointStore:
    """The store of a job's ``checkpoint:`` section (at `uri` instead of ``checkpoint.uri`` when given).

    It keeps ``checkpoint.keep`` checkpoints and signs/verifies with the key in the environment
    variable named by ``checkpoint.signing_key_env`` (none when that variable is unset or empty).

    >>> import tempfile
    >>> store = open_checkpoint_store(CheckpointConfig(uri=tempfile.mkdtemp(), keep=3, signing_key_env="NO_SUCH_VARIABLE"))
    >>> store.keep, store.signing_key
    (3, None)
    """
    return CheckpointStore(uri or config.uri, keep=config.keep, signing_key=signing_key_from_env(config.signing_key_env), compact_parts=config.compact_parts)


def checkpoint_store(uri: str, signing_key_env: str | None = None, keep: int = 10) -> CheckpointStore:
    """The store at `uri` for a command without a ``checkpoint:`` section.

    The signing key is read from the environment variable `signing_key_env` (the
    ``--signing-key-env`` flag), by default ``RIVERBEAM_CHECKPOINT_KEY``: the same rule as a
    configured job with its default ``checkpoint.signing_key_env``.

    >>> import os, tempfile
    >>> os.environ["MY_TEST_KEY"] = "s3cret"
    >>> checkpoint_store(tempfile.mkdtemp(), "MY_TEST_KEY").signing_key
    b's3cret'
    """
    return CheckpointStore(uri, keep=keep, signing_key=signing_key_from_env(signing_key_env or DEFAULT_SIGNING_KEY_ENV))


# -- what a checkpoint says about its learner --------------------------------------------------


def transform_digest(transform: Callable | None) -> str | None:
    """The SHA-256 (16 hex digits) of a fitted transform's document, None without a transform.

    `transform` is what `online.events.load_feature_transform` returns (a fitted transform's
    ``apply``); any other callable is identified by its qualified name.

    >>> transform_digest(None) is None
    True
    """
    if transform is None:
        return None
    document = getattr(getattr(transform, "__self__", None), "document", None)
    text = json.dumps(document, sort_keys=True, default=str) if document is not None else getattr(transform, "__qualname__", repr(transform))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _hash(model: ModelConfig, events: EventsConfig, digest: str | None) -> str:
    """Over the settings that differ from their defaults: a setting added later (with a default) keeps old hashes."""
    sections = [model.model_dump(mode="json", exclude_defaults=True), events.model_dump(mode="json", exclude_defaults=True, exclude={"key_cache_size", "max_dead_letter_fraction"})]
    return config_hash(*sections, *([{"transform_sha256": digest}] if digest is not None else []))


@dataclass
class LearnerSpec:
    """What defines a learner: its model, events and features sections and the fitted transform.

    `LearnerSpec.load` reads the fitted transform of ``features.transform_output`` once; `hash`
    is the configuration hash a checkpoint of this learner carries; `recorded` is the
    configuration written into the manifest; `from_checkpoint` rebuilds the spec a checkpoint
    recorded (for readers without a configuration: ``predict``, ``serve``).

    >>> spec = LearnerSpec(ModelConfig(pipeline=[{"linear_model.LogisticRegression": {}}]), EventsConfig(target="label"))
    >>> spec.hash == LearnerSpec(spec.model, spec.events, FeaturesConfig()).hash
    True
    >>> spec.new_learner().report()["events_seen"]
    0
    """

    model: ModelConfig
    events: EventsConfig
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    transform: Callable[[dict], dict] | None = None

    @classmethod
    def load(cls, model: ModelConfig, events: EventsConfig, features: FeaturesConfig | None = None) -> "LearnerSpec":
        """The spec with its fitted transform loaded from ``features.transform_output`` (if set)."""
        features = features or FeaturesConfig()
        return cls(model, events, features, load_feature_transform(features, model.custom_modules))

    @classmethod
    def of(cls, config) -> "LearnerSpec":
        """From a job configuration with ``model``, ``events`` and ``features`` (`online.config.LearningConfig`)."""
        return cls.load(config.model, config.events, config.features)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> "LearnerSpec":
        """The spec recorded in `checkpoint` (`ConfigError` if it records none), transform loaded."""
        recorded = checkpoint.manifest.get("extra", {}).get("learning")
        if not recorded:
            raise ConfigError("checkpoint", f"checkpoint {checkpoint.id} does not record its model configuration")
        model = ModelConfig.model_validate(recorded["model"], strict=False)
        events = EventsConfig.model_validate(recorded["events"], strict=False)
        features = FeaturesConfig.model_validate(recorded.get("features") or {}, strict=False)
        return cls.load(model, events, features)

    @classmethod
    def of_learner(cls, learner: Learner, features: FeaturesConfig | None = None) -> "LearnerSpec":
        """The spec of a live learner (its transform is the one it applies)."""
        return cls(learner.model_config, learner.events_config, features or FeaturesConfig(), learner.reader.transform)

    @functools.cached_property
    def transform_digest(self) -> str | None:
        return transform_digest(self.transform)

    @functools.cached_property
    def hash(self) -> str:
        """The configuration hash: model and events, plus the fitted transform's digest when there is one."""
        return _hash(self.model, self.events, self.transform_digest)

    def recorded(self) -> dict:
        """The configuration written into a manifest (``extra.learning``).

        Settings left at their defaults are not written, so a checkpoint stays readable by a
        riverbeam that does not know a setting added later (and vice versa).
        """
        return {
            "model": self.model.model_dump(mode="json", exclude_defaults=True),
            "events": self.events.model_dump(mode="json", exclude_defaults=True),
            "features": self.features.model_dump(mode="json", exclude_defaults=True),
            "transform_sha256": self.transform_digest,
        }

    def new_learner(self) -> Learner:
        return Learner(self.model, self.events, transform=self.transform)

    def accepts(self, checkpoint: Checkpoint) -> bool:
        """Whether `checkpoint` was written with this configuration (a checkpoint without a hash is accepted)."""
        written = checkpoint.manifest.get("config_hash")
        if not written or written == self.hash:
            return True
        if self.transform is not None:
            return False
        # written before this scheme: the daemon and replay hashed the full sections, stream-learn with features
        return written in (config_hash(self.model, self.events), config_hash(self.model, self.events, self.features))

    def restore(self, checkpoint: Checkpoint) -> Learner:
        """A learner continuing from `checkpoint`; `ConfigError` if it was written with another configuration."""
        if not self.accepts(checkpoint):
            recorded = checkpoint.manifest.get("extra", {}).get("learning") or {}
            what = "the fitted feature transform" if _same_sections(recorded, self) else "the configuration"
            raise ConfigError(
                "model",
                f"{what} differs from the one checkpoint {checkpoint.id} was written with; "
                "use a new checkpoint URI for a new model (or restore the old model, events and features sections)",
            )
        return Learner.restore(checkpoint.state, self.model, self.events, transform=self.transform, parts=checkpoint.parts)


def _same_sections(recorded: dict, spec: LearnerSpec) -> bool:
    def plain(section, cls) -> dict | None:
        try:
            return cls.model_validate(section or {}, strict=False).model_dump(mode="json", exclude_defaults=True)
        except ValueError:  # pydantic's ValidationError: a section this version cannot read
            return None

    return (plain(recorded.get("model"), ModelConfig) == spec.model.model_dump(mode="json", exclude_defaults=True)
            and plain(recorded.get("events"), EventsConfig) == spec.events.model_dump(mode="json", exclude_defaults=True))


def checkpoint_fields(learner: Learner, spec: LearnerSpec | None = None, report: dict | None = None) -> dict:
    """The manifest fields describing a learner: counters, metrics, model text, configuration hash.

    `report` is the learner's `report()` when the caller has just taken it (computed once per checkpoint).
    """
    report = learner.report() if report is None else report
    return {
        "events_seen": report["events_seen"],
        "events_learned": report["events_learned"],
        "metrics": report["metrics"],
        "model": learner.model_text(),
        "config_hash": (spec or LearnerSpec.of_learner(learner)).hash,
    }


def learning_extra(learner: Learner, features: FeaturesConfig | None = None, spec: LearnerSpec | None = None, report: dict | None = None) -> dict:
    """The manifest's ``extra`` about a learner: its recorded configuration and its report (`report`, when just taken)."""
    return {"learning": (spec or LearnerSpec.of_learner(learner, features)).recorded(), "report": learner.report() if report is None else report}


def save_learner(store: CheckpointStore, learner: Learner, positions: dict, extra: dict | None = None, features: FeaturesConfig | None = None) -> dict:
    """Write the learner's state, counters, metrics and configuration as one checkpoint; return the manifest."""
    return store.save(
        learner.snapshot(),
        **checkpoint_fields(learner),
        positions=positions,
        extra={**(extra or {}), **learning_extra(learner, features)},
    )


def restore_learner(
    checkpoint: Checkpoint,
    model: ModelConfig | None = None,
    events: EventsConfig | None = None,
    transform=None,
    features: FeaturesConfig | None = None,
) -> Learner:
    """A learner continuing from `checkpoint`.

    Without `model`/`events`, the configuration recorded in the checkpoint is used (its fitted
    transform loaded from the recorded ``features.transform_output``). With them, they (and the
    `transform`, or the one `features` names) must hash to what the checkpoint was written with,
    else `ConfigError`.
    """
    if model is None or events is None:
        spec = LearnerSpec.from_checkpoint(checkpoint)
        spec = LearnerSpec(model or spec.model, events or spec.events, spec.features, spec.transform)
    elif transform is None and features is not None:
        spec = LearnerSpec.load(model, events, features)
    else:
        spec = LearnerSpec(model, events, features or FeaturesConfig(), transform)
    return spec.restore(checkpoint)


def resume(store: CheckpointStore, spec: LearnerSpec) -> tuple[Learner, Checkpoint | None]:
    """The learner continuing from `store`'s latest checkpoint (and that checkpoint), or a new one (and None).

    A latest checkpoint that verifies but cannot be restored (an unknown class, a module that
    cannot be imported) is skipped for the previous good one with a warning, as a corrupt one is;
    one written with another configuration is refused (`ConfigError`). Also records the store's
    pointer generation, so the next save through `store` is fenced.
    """
    found = store.restore_latest(spec.restore)
    if found is None:
        return spec.new_learner(), None
    checkpoint, learner = found
    return learner, checkpoint


@dataclass
class ResumedUnit:
    """A learning unit's checkpoint side, resumed by `resume_unit`: its store, learner, the checkpoint it continues, its checkpointer."""

    store: CheckpointStore
    learner: Learner
    checkpoint: Checkpoint | None
    checkpointer: "Checkpointer"


def resume_unit(root: CheckpointStore, spec: LearnerSpec, unit: str | None = None, cadence: "Cadence | None" = None,
                uploader: concurrent.futures.Executor | None = None) -> ResumedUnit:
    """How every job resumes a learning unit (the daemon's, replay's, serve's): its learner from its latest checkpoint
    (`resume`), and the `Checkpointer` that goes on from there, keeping other jobs' positions.

    Without `unit`, `root` itself holds the unit (one model for the whole stream). With one (per-key
    models), the unit's store is `unit` below `root` (`online.checkpoints.units.unit_store`) and a
    key the unit does not hold starts from the other units' model of it (`OtherUnits`). Checking
    the layout (`online.checkpoints.units.check_layout`) is each job's, once at its start.

    >>> import tempfile
    >>> from online.config import EventsConfig, ModelConfig
    >>> spec = LearnerSpec(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y", key="user"))
    >>> root = checkpoint_store(tempfile.mkdtemp())
    >>> daemon = resume_unit(root, spec, "partition=events.0")
    >>> _ = daemon.learner.process({"user": "a", "x": 1.0, "y": 2.0})
    >>> _ = daemon.checkpointer.checkpoint({"events/0": 1}, wait=True)
    >>> replay = resume_unit(root, spec, "replay")  # another unit: user "a" comes from the daemon's
    >>> replay.checkpoint is None, replay.learner.predict({"user": "a", "x": 1.0}).y_pred == daemon.learner.predict({"user": "a", "x": 1.0}).y_pred
    (True, True)
    >>> resume_unit(root, spec, "partition=events.0").checkpoint.positions
    {'events/0': 1}
    """
    from online.checkpoints.units import OtherUnits, unit_store

    store = root if unit is None else unit_store(root, unit)
    learner, checkpoint = resume(store, spec)  # refuses a checkpoint of another configuration, or unsigned with a key
    if unit is not None:
        OtherUnits(root, spec.restore, own=unit).attach(learner)
    checkpointer = Checkpointer(store, learner, spec, cadence, uploader=uploader, restored=checkpoint)
    return ResumedUnit(store, learner, checkpoint, checkpointer)


def position_context(manifest: dict) -> dict:
    """What `manifest` recorded about its Kafka offsets (`online.checkpoints.store.KAFKA_CONTEXT`), as a writer carries it on.

    >>> position_context({"extra": {"topic_ids": {"events": "Aq"}, "report": {}}})
    {'topic_ids': {'events': 'Aq'}}
    """
    extra = manifest.get("extra") or {}
    return {name: extra[name] for name in KAFKA_CONTEXT if name in extra}


def kafka_context(checkpoint: Checkpoint | None, uri: str = "") -> dict:
    """What a checkpoint with Kafka offsets recorded about them (`online.checkpoints.store.KAFKA_CONTEXT`): topic ids,
    output offsets, outputs written ahead. Empty without a checkpoint or Kafka offsets.

    Raises `CheckpointError` (one line) for a checkpoint with Kafka offsets that lacks any of them
    (written by a riverbeam that did not carry them): without the topic ids a recreated topic
    cannot be told, without the outputs ahead outputs would be written twice.

    >>> kafka_context(Checkpoint({"id": "ck", "positions": {"replay": {}}, "extra": {}}, b""))
    {}
    >>> kafka_context(Checkpoint({"id": "ck", "positions": {"events/0": 7}, "extra": {"source": "replay"}}, b""), "ckpt/")
    Traceback (most recent call last):
    ...
    online.checkpoints.store.CheckpointError: ckpt/: checkpoint ck (written by replay) holds Kafka offsets but not extra.topic_ids (of topic events), extra.outputs, extra.outputs_ahead: ...
    """
    if checkpoint is None:
        return {}
    extra = checkpoint.manifest.get("extra") or {}
    topics = sorted({tp[0] for tp in kafka_positions(checkpoint.positions)})
    missing = []
    if topics:
        lacking = [topic for topic in topics if topic not in (extra.get("topic_ids") or {})]
        missing += [f"extra.topic_ids (of topic {', '.join(lacking)})"] if lacking else []
        missing += [f"extra.{name}" for name in KAFKA_CONTEXT if name != "topic_ids" and not isinstance(extra.get(name), dict)]
    if missing:
        writer = extra.get("source") or extra.get("pipeline") or "another job"
        raise CheckpointError(
            f"{uri}: checkpoint {checkpoint.id} (written by {writer}) holds Kafka offsets but not {', '.join(missing)}: "
            "a recreated topic or outputs already written cannot be told; resume from a checkpoint that records them, or start a new checkpoint URI"
        )
    return position_context(checkpoint.manifest)


# -- when, and in what order -------------------------------------------------------------------


class Cadence:
    """When a checkpoint is due: `every_events` events, or `every_seconds` with at least one event.

    >>> now = [0.0]
    >>> cadence = Cadence(every_events=3, every_seconds=10, clock=lambda: now[0])
    >>> cadence.add(2); cadence.due()
    False
    >>> now[0] = 10.0; cadence.due()
    True
    >>> cadence.reset(); cadence.add(3); cadence.due()
    True
    """

    def __init__(self, every_events: int = 10_000, every_seconds: float = math.inf, clock: Callable[[], float] = time.monotonic, since: int = 0):
        if every_events <= 0 or every_seconds <= 0:
            raise ValueError("checkpoint cadence must be positive")
        self.every_events = every_events
        self.every_seconds = every_seconds
        self.clock = clock
        self.since = since
        self.last = clock()

    @classmethod
    def from_config(cls, config: CheckpointConfig | None, every_events: int | None = None, every_seconds: float | None = None, **kwargs) -> "Cadence":
        """From a ``checkpoint:`` section (defaults without one), overridden by flags when given."""
        events = every_events or (config.every_events if config else CheckpointConfig.model_fields["every_events"].default)
        seconds = every_seconds or (config.every_seconds if config else CheckpointConfig.model_fields["every_seconds"].default)
        return cls(events, seconds, **kwargs)

    def add(self, events: int) -> None:
        """Count `events` more events processed since the last checkpoint."""
        self.since += events

    def due(self) -> bool:
        return self.since >= self.every_events or (self.since > 0 and self.clock() - self.last >= self.every_seconds)

    def reset(self) -> None:
        """A checkpoint was just taken."""
        self.since = 0
        self.last = self.clock()


@dataclass(frozen=True)
class Durable:
    """A checkpoint now in storage: its manifest, the positions its writer gave, and how long it took."""

    manifest: dict
    positions: dict
    seconds: float


class Checkpointer:
    """The checkpoints of one learning unit: when they are due, one upload in flight, durable in order.

    Quix Streams' ``Checkpoint``, for a learner: `add` counts events, `due` says when a checkpoint
    is needed, `checkpoint` writes one in numbered steps — (1) finish the upload in flight,
    (2) skip if nothing changed since the last checkpoint written or restored, (3) snapshot the
    learner on this thread, (4) upload (on `uploader`, a one-thread executor, or inline), and
    (5) once the upload returned, record it as `last_durable`. `collect` finishes an upload that is
    done (or waits with ``wait=True``) and re-raises its error (`online.checkpoints.store.FencingError`, storage errors; `fatal` are those a retry
    will not heal). The learning unit (`online.learning.unit.LearningUnit.checkpoint`) drives it:
    it flushes its sinks before and commits source offsets once `last_durable` moved, never before.

    **Per-key models** (a learner whose models are a `online.learning.keyed_state.KeyedModels`) are
    checkpointed *incrementally*: step (4) only freezes what changed since the last checkpoint
    (and pickles the small rest of the state); the changed models are pickled in slices of at
    most `slice_seconds` at each later `add` (copy-on-write keeps them as they were at the
    checkpoint), then one part holding them (and the delayed-label entries added or removed) is
    written and the manifest names every part of the full state. When a checkpoint is made of
    ``store.compact_parts`` parts, or its deltas outweigh its base, the parts are folded into one
    in the background (on a thread of its own, so a long compaction never holds an upload back),
    and later checkpoints name the folded part instead. Without an `uploader`, keyed uploads run on
    a thread of the checkpointer's own too (`close` stops both). `add` is also the learner's safe point to spill
    and expire models.
    A caller passing `state` (a full snapshot: Beam's per-key state) gets a full checkpoint.

    `positions` given to `checkpoint` are the writer's own (Kafka offsets, a replay position,
    files); positions recorded by other jobs in the restored checkpoint are kept, and so is what
    that checkpoint recorded about its Kafka offsets (`online.checkpoints.store.KAFKA_CONTEXT`: topic
    ids, output offsets, outputs ahead) unless the writer records its own (the daemon's sinks).
    A caller giving `base_positions` instead of `restored` gives their `base_context` too
    (`position_context` of the checkpoint they came from).
    """

    slice_seconds = 0.02
    fatal = (FencingError, StorageUnusable)  # errors a retry will not heal: another writer took over, storage refuses us

    def __init__(
        self,
        store: CheckpointStore,
        learner: Learner,
        spec: LearnerSpec | None = None,
        cadence: Cadence | None = None,
        *,
        uploader: concurrent.futures.Executor | None = None,
        restored: Checkpoint | None = None,
        base_positions: dict | None = None,
        base_context: dict | None = None,
    ):
        self.store = store
        self.learner = learner
        self.spec = spec or LearnerSpec.of_learner(learner)
        self.cadence = cadence or Cadence()
        self.uploader = uploader
        self.base_positions = dict(restored.positions if restored is not None else base_positions or {})
        self.last_positions: dict | None = dict(self.base_positions) if restored is not None else None
        # what the positions kept say about themselves (topic ids, outputs): carried with them (online.checkpoints.store.KAFKA_CONTEXT)
        self.base_context = position_context(restored.manifest) if restored is not None else dict(base_context or {})
        self.pending: concurrent.futures.Future | None = None
        self.written = 0
        self.last_durable: Durable | None = None  # the latest checkpoint made durable here
        self.last_manifest: dict | None = restored.manifest if restored is not None else None
        # incremental checkpoints of keyed models
        self.parts: list[dict] = list(restored.manifest.get("parts") or []) if restored is not None else []
        self._pending_base = learner.pending_labels() if self.parts else None  # delayed labels as of the last part
        self._building: dict | None = None  # a checkpoint whose changed models are being pickled in slices
        self._carry: list = []  # model records of a delta that failed to upload: written with the next one
        self._compaction: concurrent.futures.Future | None = None
        self._compactor: concurrent.futures.Executor | None = None
        self._own_uploader: concurrent.futures.Executor | None = None
        self.keyed = learner.keyed  # per-key models (of one learner or of a model set): incremental checkpoints

    def add(self, events: int) -> None:
        """Count `events` more events; a safe point: spill and expire keyed models, pickle a slice of a checkpoint."""
        self.cadence.add(events)
        self.learner.trim_models()
        if self.keyed:
            if self._building is not None:
                self._advance(self.slice_seconds)
            elif self.uploader is None and self.pending is not None and self.pending.done():
                self.collect()  # our own thread's upload (a caller with an uploader collects it itself)

    def due(self) -> bool:
        return self.cadence.due()

    def has_news(self, positions: dict) -> bool:
        """Whether a checkpoint at `positions` would differ from the last one written or restored."""
        return self.cadence.since > 0 or self.last_positions != {**self.base_positions, **positions}

    def checkpoint(self, positions: dict, extra: dict | None = None, *, wait: bool = False, state: bytes | None = None) -> Durable | None:
        """Write a checkpoint at `positions` (see the class for the steps); the `Durable` when it finished here.

        `state` is the learner's `snapshot()` when the caller has just taken it (not taken twice).
        """
        done = self.collect(wait=True)
        if not self.has_news(positions):
            return done if wait else None
        extra = extra or {}
        started = time.perf_counter()
        report = self.learner.report()  # once: the manifest's fields and its extra both hold it
        fields = checkpoint_fields(self.learner, self.spec, report)
        all_positions = {**self.base_positions, **positions}
        manifest_extra = {**self.base_context, **extra, **learning_extra(self.learner, spec=self.spec, report=report)}
        store = self.store
        self.last_positions = all_positions
        self.cadence.reset()
        if state is None and self.keyed:
            self._take_compaction()
            core, pending = self.learner.core_snapshot()
            self.learner.keyed_models.freeze()
            self._building = {"core": core, "pending": pending, "fields": fields, "positions": all_positions,
                              "own": dict(positions), "extra": manifest_extra, "started": started}
            self._advance(None if wait else self.slice_seconds)
            return self.collect(wait=True) if wait else None
        state = self.learner.snapshot() if state is None else state

        def upload() -> Durable:
            manifest = store.save(state, positions=all_positions, extra=manifest_extra, **fields)
            return Durable(manifest, dict(positions), time.perf_counter() - started)

        if self.uploader is None:
            return self._finish(self._result(upload))
        self.pending = self.uploader.submit(upload)
        return self.collect(wait=True) if wait else None

    def collect(self, wait: bool = False) -> Durable | None:
        """Finish the upload in flight if it is done (or `wait`): report it durable and return it.

        With `wait`, a checkpoint still pickling its changed models finishes first.
        """
        if self._building is not None:
            self._advance(None if wait else self.slice_seconds)
        if self.pending is None or not (wait or self.pending.done()):
            return None
        future, self.pending = self.pending, None
        return self._finish(self._result(future.result))

    def _result(self, outcome: Callable[[], Durable]) -> Durable:
        try:
            return outcome()
        except BaseException:
            self.last_positions = None  # not written: the next checkpoint is due even without new events
            raise

    def _finish(self, durable: Durable) -> Durable:
        self.written += 1
        self.last_durable = durable
        self.last_manifest = durable.manifest
        if "parts" in durable.manifest:
            self.parts = list(durable.manifest["parts"])
            self._maybe_compact()
        return durable

    # -- incremental checkpoints ------------------------------------------------------------

    def _advance(self, budget: float | None) -> None:
        """Pickle a slice of the changed models (all with `budget` None); once all are, start the upload."""
        building = self._building
        models = self.learner.keyed_models
        if not models.serialize(budget):
            return
        self._building = None
        records = self._carry + models.delta_records()
        self._carry = []
        base_parts, pending_base = list(self.parts), self._pending_base
        store, started = self.store, building["started"]

        def upload() -> Durable:
            try:
                all_records = records + pending_delta(pending_base, building["pending"])
                parts = base_parts
                if all_records:
                    parts = base_parts + [store.write_part(encode_part(all_records), records=len(all_records))]
                manifest = store.save(building["core"], positions=building["positions"], extra=building["extra"], parts=parts, **building["fields"])
            except BaseException:
                self._carry = records + self._carry  # nothing of this delta is lost: the next one writes it
                raise
            self._pending_base = building["pending"]
            return Durable(manifest, building["own"], time.perf_counter() - started)

        self.pending = self._background().submit(upload)  # collected by the next `collect` / `checkpoint`

    def _maybe_compact(self) -> None:
        """Fold the parts into one in the background when there are many, or the deltas outweigh the base."""
        parts = self.parts
        if self._compaction is not None or len(parts) < 2:
            return
        deltas = sum(part["size"] for part in parts[1:])
        if len(parts) < self.store.compact_parts and deltas <= 2 * parts[0]["size"] + (1 << 20):
            return
        store, folded, sequence = self.store, list(parts), self.store.next_sequence()

        def compact() -> tuple[list[dict], dict]:
            checkpoint_id = self.last_manifest.get("id", "?") if self.last_manifest else "?"
            data = merge_parts(store.read_part(part, checkpoint_id) for part in folded)
            return folded, store.write_part(data, sequence, protect=True, records=None, compacted=len(folded))

        if self._compactor is None:  # its own thread: a long compaction never holds an upload back
            self._compactor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="riverbeam-compaction")
        self._compaction = self._compactor.submit(compact)

    def _background(self) -> concurrent.futures.Executor:
        """The uploader, or (without one) a thread of this checkpointer's own for keyed uploads."""
        if self.uploader is not None:
            return self.uploader
        if self._own_uploader is None:
            self._own_uploader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="riverbeam-checkpoint")
        return self._own_uploader

    def _take_compaction(self, wait: bool = False) -> None:
        """Use a finished compaction: later checkpoints name the folded part instead of the parts it folded."""
        future = self._compaction
        if future is None or not (wait or future.done()):
            return
        self._compaction = None
        try:
            folded, part = future.result()
        except Exception as error:  # the parts stay as they were: correct, only slower to restore
            log.warning("compaction of checkpoint parts failed: %s: %s", type(error).__name__, error)
            return
        if self.parts[: len(folded)] == folded:
            self.parts = [part] + self.parts[len(folded) :]  # protected from retention until a manifest names it
        else:
            self.store.unprotect(part["file"])

    def close(self) -> None:
        """Wait for a background compaction and stop this checkpointer's own thread (the uploader is the caller's).

        An upload still in flight is waited for, not collected: call `collect` first to see it durable.
        """
        if self.pending is not None:
            concurrent.futures.wait([self.pending])
        self._take_compaction(wait=True)
        for executor in (self._compactor, self._own_uploader):
            if executor is not None:
                executor.shutdown(wait=True)
        self._compactor = self._own_uploader = None


@dataclass
class ModelsSpec:
    """The `LearnerSpec` of several named models sharing events, features and the fitted transform."""

    models: dict[str, ModelConfig]
    events: EventsConfig
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    transform: Callable[[dict], dict] | None = None
    allow_model_change: bool = False

    @classmethod
    def of(cls, config, allow_model_change: bool = False) -> "ModelsSpec":
        """From a job configuration with ``models`` (`online.config.ConsumeJobConfig`)."""
        return cls(config.named_models, config.events, config.features, load_feature_transform(config.features, user_modules(config.candidates)), allow_model_change)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> "ModelsSpec":
        recorded = checkpoint.manifest.get("extra", {}).get("learning") or {}
        if "models" not in recorded:
            raise ConfigError("checkpoint", f"checkpoint {checkpoint.id} does not record several models")
        models = {name: ModelConfig.model_validate(model, strict=False) for name, model in recorded["models"].items()}
        events = EventsConfig.model_validate(recorded["events"], strict=False)
        features = FeaturesConfig.model_validate(recorded.get("features") or {}, strict=False)
        return cls(models, events, features, load_feature_transform(features, user_modules(list(models.values()))))

    @functools.cached_property
    def specs(self) -> dict[str, LearnerSpec]:
        return {name: LearnerSpec(model, self.events, self.features, self.transform) for name, model in self.models.items()}

    @functools.cached_property
    def hash(self) -> str:
        return config_hash({name: spec.hash for name, spec in self.specs.items()})

    def recorded(self) -> dict:
        one = next(iter(self.specs.values())).recorded()
        return {
            "models": {name: model.model_dump(mode="json", exclude_defaults=True) for name, model in self.models.items()},
            "model_hashes": {name: spec.hash for name, spec in self.specs.items()},
            "events": one["events"], "features": one["features"], "transform_sha256": one["transform_sha256"],
        }  # fmt: skip

    def new_learner(self) -> ModelSet:
        return ModelSet({name: spec.new_learner() for name, spec in self.specs.items()})

    def restore(self, checkpoint: Checkpoint) -> ModelSet:
        """The models continuing from `checkpoint` (`ConfigError` if the set or a model's configuration differs)."""
        recorded = checkpoint.manifest.get("extra", {}).get("learning") or {}
        hashes = recorded.get("model_hashes")
        if hashes is None:
            raise ConfigError("models", f"checkpoint {checkpoint.id} holds one model (model:), not several (models:): use a new checkpoint URI")
        for name, spec in self.specs.items():
            if name in hashes and hashes[name] != spec.hash:
                raise ConfigError(f"models.{name}", f"the configuration of model {name} differs from the one checkpoint {checkpoint.id} was written with; "
                                  "give a changed model a new name (or restore its configuration)")
        added = [name for name in self.specs if name not in hashes]
        removed = [name for name in hashes if name not in self.specs]
        if (added or removed) and not self.allow_model_change:
            change = "; ".join(part for part in (f"adds {', '.join(added)}" if added else "", f"removes {', '.join(removed)}" if removed else "") if part)
            raise ConfigError("models", f"checkpoint {checkpoint.id} holds the models {', '.join(hashes)}; the configuration {change}: restore them, "
                              "use a new checkpoint URI, or pass --allow-model-change to start added models from scratch and drop removed ones")
        models = ModelSet.restore(checkpoint.state, self.models, self.events, self.transform, parts=checkpoint.parts)
        for name in added:
            log.warning("model added: it starts from scratch", extra={"fields": {"model": name, "checkpoint": checkpoint.id}})
        for name in removed:
            log.warning("model removed: its state is dropped", extra={"fields": {"model": name, "checkpoint": checkpoint.id}})
        return models


def restore_model(checkpoint: Checkpoint, name: str | None = None) -> Learner:
    """One model of a checkpoint: the named one of several (`ConfigError` listing them), or its only one.

    For `riverbeam predict --model` and `riverbeam serve --model`.
    """
    recorded = checkpoint.manifest.get("extra", {}).get("learning") or {}
    if "models" not in recorded:
        from online.config import model_names

        learner = restore_learner(checkpoint)
        only = model_names([learner.model_config])[0]  # its name, else its pipeline's classes (as listed everywhere)
        if name is not None and name != only:
            raise ConfigError("--model", f"checkpoint {checkpoint.id} holds one model ({only}), not {name!r}")
        return learner
    spec = ModelsSpec.from_checkpoint(checkpoint)
    names = list(spec.models)
    if name is not None and name not in names:
        raise ConfigError("--model", f"checkpoint {checkpoint.id} has no model {name!r} (it holds {', '.join(names)})")
    # the manifest's configuration hash covers every model: restore the set, then take one
    return spec.restore(checkpoint).learners[name or names[0]]
