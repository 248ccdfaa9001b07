"""Keyed checkpoints: one layout of *units* that every job reads and writes.

With ``events.key`` a learner holds one model per key (`online.learning.keyed_state.KeyedModels`).
The keys are split across *units*, each a checkpoint store of its own (the `CheckpointStore`
layout: ``LATEST``, ``checkpoints/…``) holding the keyed learner of one writer::

    <uri>/units/partition=<topic>.<partition>   the daemon: the keys seen on that Kafka partition
    <uri>/units/key=<quoted key>                stream-learn: one Beam key (its one model key)
    <uri>/units/replay                          replay --mode learn: every key of its files
    <uri>/units/serve                           a learning serve: every key it was sent

A global model (no ``events.key``) stays at ``<uri>`` itself: it is not split.

**The rule.** Any job finds every unit by listing ``<uri>/units/`` (`units_of`), and:

* a *writer* (daemon, replay, stream-learn, a learning serve) restores its own unit first; a key
  its unit does not hold yet is taken, the first time the key comes, from the other units (the
  unit whose latest checkpoint is newest among those holding it: `OtherUnits`). From then on the
  key's model is the unit's own and goes into its checkpoints. So a keyed checkpoint resumes in
  any job: a stream-learn key continues the model the daemon learned on its partition, a daemon
  partition continues the models of a replay, and so on.
* a *reader* (``predict``, ``serve``, ``replay --mode evaluate``) merges every unit (`read_units`):
  per key, the model of the unit whose latest checkpoint is newest; the counters are summed.

What the rule does not cover: a key's delayed-label entries and a unit's metrics stay with the
unit that wrote them (a key moving to another unit starts its pending labels and the unit's
metrics from that unit's own); a key learned in two units at once (events of one key spread over
several partitions: produce with the model key as the Kafka message key) is two models, and
readers take the newest; a writer that still holds a key in its own unit keeps its own model
even when another job continued that key since (do not run two kinds of writer over the same
keys of one URI in turns).

**Layouts before this one** (``<uri>/partitions/<topic>.<partition>``, the daemon's, and
``<uri>/key=<key>``, stream-learn's) are never read silently as empty: every keyed job stops
with one line naming the layout and the move to make (`check_layout`).

>>> import tempfile
>>> from online.config import EventsConfig, ModelConfig
>>> from online.checkpoints.persistence import LearnerSpec, checkpoint_store, save_learner
>>> spec = LearnerSpec(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y", key="user"))
>>> root = checkpoint_store(tempfile.mkdtemp())
>>> for unit, user in ((partition_unit("events", 0), "a"), (partition_unit("events", 1), "b")):
...     learner = spec.new_learner()
...     _ = learner.process({"user": user, "x": 1.0, "y": 2.0})
...     _ = save_learner(unit_store(root, unit), learner, {})
>>> units_of(root.uri)
['partition=events.0', 'partition=events.1']
>>> checkpoint, merged = read_units(root, spec.restore)
>>> sorted(merged.state.models), merged.state.events_seen
(['a', 'b'], 2)
"""

from __future__ import annotations

import logging
import pickle
import urllib.parse
from typing import Any, Callable

from core.storage import open_store
from online.checkpoints.store import Checkpoint, CheckpointError, CheckpointStore

log = logging.getLogger(__name__)

UNITS = "units"
REPLAY_UNIT = "replay"  # replay --mode learn: every key of its files
SERVE_UNIT = "serve"  # a learning serve: every key it was sent
COUNTERS = ("events_seen", "events_learned", "events_rejected", "labels_joined", "labels_expired", "models_expired")

__all__ = ["REPLAY_UNIT", "SERVE_UNIT", "unit_uri", "unit_store", "units_of", "partition_unit", "key_unit", "check_layout", "OtherUnits", "read_units", "restore_any"]


def partition_unit(topic: str, partition: int) -> str:
    """The daemon's unit of a Kafka partition.

    >>> partition_unit("events", 3)
    'partition=events.3'
    """
    return f"partition={urllib.parse.quote(f'{topic}.{partition}', safe='.')}"


def key_unit(key: Any) -> str:
    """Stream-learn's unit of one model key (URL-quoted).

    >>> key_unit("user/7"), key_unit(42)
    ('key=user%2F7', 'key=42')
    """
    return f"key={urllib.parse.quote(str(key), safe='')}"


def unit_uri(uri: str, unit: str) -> str:
    """Where one unit's checkpoints live below a keyed checkpoint URI.

    >>> unit_uri("gs://bucket/ckpt/", partition_unit("events", 0))
    'gs://bucket/ckpt/units/partition=events.0'
    """
    return f"{uri.rstrip('/')}/{UNITS}/{unit}"


def unit_store(root: CheckpointStore, unit: str) -> CheckpointStore:
    """The store of `unit` below `root`, with `root`'s signing key, retention and compaction."""
    return CheckpointStore(unit_uri(root.uri, unit), keep=root.keep, signing_key=root.signing_key, compact_parts=root.compact_parts)


def check_layout(uri: str) -> None:
    """Stop in one line (`CheckpointError`) if `uri` holds keyed checkpoints in a layout before units."""
    store = open_store(uri)
    old = [name.rsplit("/", 1)[0] for name in store.list("partitions/") if name.count("/") == 2 and name.endswith("/LATEST")]
    old += [name.rsplit("/", 1)[0] for name in store.list("key=") if name.count("/") == 1 and name.endswith("/LATEST")]
    if old:
        raise CheckpointError(
            f"{uri}: keyed checkpoints in the layout before units ({', '.join(old[:3])}{', …' if len(old) > 3 else ''}): move "
            f"partitions/<topic>.<partition> to units/partition=<topic>.<partition> and key=<key> to units/key=<key> "
            "below the checkpoint URI, or start a new checkpoint URI"
        )


def units_of(uri: str) -> list[str]:
    """The units of the keyed checkpoint at `uri` (those with a ``LATEST`` pointer), sorted; `check_layout` first."""
    check_layout(uri)
    prefix = f"{UNITS}/"
    return sorted({name[len(prefix) : -len("/LATEST")] for name in open_store(uri).list(prefix) if name.count("/") == 2 and name.endswith("/LATEST")})


def _learners(learner) -> dict:
    """The learners of a restored unit by model name: a model set's, or {None: the learner}."""
    return learner.learners_by_name()


KEY_UNIT = "key="


def _latest_of(root: CheckpointStore, units: list[str], restore: Callable[[Checkpoint], Any]) -> list[tuple[str, Checkpoint, Any]]:
    """``(written at, checkpoint, learner)`` of each unit's latest checkpoint that restores (`restore`), oldest first."""
    found = []
    for unit in units:
        restored = unit_store(root, unit).restore_latest(restore)
        if restored is not None:
            found.append((restored[0].manifest.get("created_at", ""), unit, restored))
    return [(created, *restored) for created, _, restored in sorted(found, key=lambda item: item[:2])]


class OtherUnits:
    """The models of the units other than `own`, for a writer's keys its own unit does not hold.

    Per key, the unit whose latest checkpoint is newest among those holding it wins. The units
    are listed and read on the first key asked for (a writer whose keys are all its own never
    reads them), except stream-learn's ``key=<key>`` units: each holds its one key, so only the
    key's own unit is read, when that key is asked for. `attach` hands the lookup to a learner's
    per-key models, which call it on a miss (`online.learning.keyed_state.KeyedModels.fallback`).
    """

    def __init__(self, root: CheckpointStore, restore: Callable[[Checkpoint], Any], own: str | None = None):
        self.root = root
        self.restore = restore
        self.own = own
        self._newest_first: list | None = None
        self._key_units = False  # whether any key=<key> unit exists

    def _units(self) -> list:
        if self._newest_first is None:
            units = [unit for unit in units_of(self.root.uri) if unit != self.own]
            self._key_units = any(unit.startswith(KEY_UNIT) for unit in units)
            found = _latest_of(self.root, [unit for unit in units if not unit.startswith(KEY_UNIT)], self.restore)
            self._newest_first = [(created, learner) for created, _, learner in reversed(found)]
        return self._newest_first

    def model(self, key: Any, name: str | None = None) -> Any:
        """A copy of `key`'s model (of model `name` in a set) from the newest other unit holding it, or None."""
        candidates = [(created, learner) for created, learner in self._units()]
        if self._key_units and key_unit(key) != self.own:
            candidates = sorted(candidates + [(created, learner) for created, _, learner in _latest_of(self.root, [key_unit(key)], self.restore)],
                                key=lambda item: item[0], reverse=True)
        for _, learner in candidates:
            models = _learners(learner).get(name)
            model = models.state.models.get(key) if models is not None else None
            if model is not None:
                return pickle.loads(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
        return None

    def model_of_beam_key(self, beam_key: str, name: str | None = None) -> tuple[Any, Any] | None:
        """``(model key, model)`` for a Beam key (the model key as text: an integer key is tried as an integer too)."""
        candidates: list[Any] = [beam_key]
        if beam_key.lstrip("-").isdigit() and str(int(beam_key)) == beam_key:
            candidates.insert(0, int(beam_key))
        for key in candidates:
            model = self.model(key, name)
            if model is not None:
                return key, model
        return None

    def attach(self, learner) -> None:
        """Let `learner`'s per-key models (each of a model set's) take a key they miss from these units."""
        for name, one in _learners(learner).items():
            models = one.state.models
            if hasattr(models, "fallback"):
                models.fallback = (lambda key, name=name: self.model(key, name))


def restore_any(root: CheckpointStore, restore: Callable[[Checkpoint], Any]) -> tuple[Checkpoint, Any] | None:
    """What a reader (predict, serve, ``replay --mode evaluate``) finds at a checkpoint URI: its latest
    checkpoint that restores (past one that does not), or, without one, every unit of the keyed layout
    merged (`read_units`); None when there is neither."""
    return root.restore_latest(restore) or read_units(root, restore)


def read_units(root: CheckpointStore, restore: Callable[[Checkpoint], Any]) -> tuple[Checkpoint, Any] | None:
    """Every unit below `root` merged into one learner, with the newest unit's checkpoint; None without units.

    Per key, the model of the unit whose latest checkpoint is newest; the counters are summed;
    the metrics are the newest unit's (River metrics do not add up across units).
    """
    restored = _latest_of(root, units_of(root.uri), restore)
    if not restored:
        return None
    _, checkpoint, merged = restored[-1]
    targets = _learners(merged)
    for _, _, learner in reversed(restored[:-1]):  # newer units first: a key already merged is not replaced
        for name, one in _learners(learner).items():
            target = targets.get(name)
            if target is None:
                continue
            for key, model in one.state.models.items():
                if key not in target.state.models:
                    target.state.models[key] = model
            for counter in COUNTERS:
                setattr(target.state, counter, getattr(target.state, counter) + getattr(one.state, counter))
    return checkpoint, merged
