"""The model a serving instance answers with, and the watcher that swaps in each new checkpoint.

A read-only instance polls the checkpoint store's ``LATEST`` pointer every
``serve.reload_seconds`` (read and checked by the store, `CheckpointStore.latest_id`: with a key, a
pointer that is unsigned, forged or moved back is refused). A new id is loaded, verified (SHA-256;
with a signing key, the signatures of its manifest and state) and
restored through `online.checkpoints.persistence` on a worker thread while the current model keeps answering;
then one reference is swapped, so no request fails or waits during the swap. A checkpoint that
fails verification or restoring is refused (logged, ``riverbeam_serve_reload_failures_total``)
and the model already served stays; the watcher tries again only when ``LATEST`` moves again.
At start, a latest checkpoint that verifies but cannot be restored falls back to the previous good
one with a warning, as `riverbeam predict` and the learning jobs do (`CheckpointStore.restore_latest`).

>>> import tempfile
>>> from online.checkpoints.store import CheckpointStore
>>> from online.config import EventsConfig, ModelConfig
>>> from online.learning.learner import Learner
>>> from online.checkpoints.persistence import save_learner
>>> from online.serving.metrics import ServeMetrics
>>> store = CheckpointStore(tempfile.mkdtemp(), signing_key=b"the key")
>>> learner = Learner(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y"))
>>> first = save_learner(store, learner, positions={})
>>> slot = ModelSlot()
>>> watcher = CheckpointWatcher(CheckpointStore(store.uri, signing_key=b"the key"), slot, ServeMetrics())
>>> watcher.poll() == first["id"] == slot.current.checkpoint_id
True
>>> _ = store.save(b"not a learner", events_seen=0, events_learned=0, positions={})  # verifies, cannot be restored
>>> watcher.poll() is None and slot.current.checkpoint_id == first["id"]
True
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from online.checkpoints.store import Checkpoint, CheckpointError, CheckpointStore
from online.learning.learner import Learner
from online.checkpoints.persistence import restore_learner
from online.checkpoints.units import read_units, unit_store, units_of
from online.serving.metrics import ServeMetrics
from core.storage import StorageError

log = logging.getLogger("riverbeam.serve")


@dataclass(frozen=True)
class ServedModel:
    """A learner and the checkpoint it came from (None: a learning instance that has not checkpointed yet)."""

    learner: Learner
    checkpoint_id: str | None
    manifest: dict


class ModelSlot:
    """Holds the model answering requests; replaced whole, never changed in place (read-only instances)."""

    def __init__(self, current: ServedModel | None = None):
        self.current = current


class CheckpointWatcher:
    """Swap each new verified checkpoint into `slot`; refuse (and count) the ones that fail."""

    def __init__(self, store: CheckpointStore, slot: ModelSlot, metrics: ServeMetrics, restore: Callable[[Checkpoint], Learner] = restore_learner, interval: float = 2.0):
        self.store = store
        self.slot = slot
        self.metrics = metrics
        self.restore = restore
        self.interval = interval
        self.refused: str | None = None
        self.refused_pointer: str | None = None
        self.units_seen: tuple = ()  # keyed layout: the units' latest ids the served models were merged from

    def _swap(self, checkpoint: Checkpoint, learner: Learner, started: float) -> str:
        self.slot.current = ServedModel(learner, checkpoint.id, checkpoint.manifest)
        self.metrics.checkpoint_is(checkpoint.manifest)
        self.metrics.model_is(learner.report())
        self.metrics.reloads.inc()
        self.metrics.reload_seconds.set(time.perf_counter() - started)
        self.metrics.ready_gauge.set(1)
        log.info("serving checkpoint", extra={"fields": {"id": checkpoint.id, "events_learned": checkpoint.manifest.get("events_learned"), "seconds": round(time.perf_counter() - started, 4)}})
        return checkpoint.id

    def load_initial(self) -> str | None:
        """Serve the newest good checkpoint (falling back past corrupt ones, as `riverbeam predict` does)."""
        started = time.perf_counter()
        found = self.store.restore_latest(self.restore)
        if found is None:  # per-key models: every unit of the keyed layout, merged (online.checkpoints.units)
            self.units_seen = self._units_version()
            found = read_units(self.store, self.restore) if self.units_seen else None
        return self._swap(*found, started) if found is not None else None

    def _units_version(self) -> tuple:
        """The latest checkpoint id of each unit below the store (empty without units; as last seen when unreachable)."""
        try:
            return tuple((unit, unit_store(self.store, unit).latest_id()) for unit in units_of(self.store.uri))
        except StorageError as error:
            log.warning("cannot list the checkpoint units", extra={"fields": {"uri": self.store.uri, "error": str(error)}})
            return self.units_seen

    def poll(self) -> str | None:
        """Look once: the id swapped in, or None (nothing new, or refused)."""
        current = self.slot.current.checkpoint_id if self.slot.current else None
        try:
            newest = self.store.latest_id()  # the store's one LATEST reader: a pointer it refuses raises CheckpointError
        except StorageError as error:
            log.warning("cannot read the checkpoint pointer", extra={"fields": {"uri": self.store.uri, "error": str(error)}})
            return None
        except CheckpointError as error:  # a pointer refused (forged, moved back, not plain ids): the current model stays
            if str(error) != self.refused_pointer:
                self.refused_pointer = str(error)
                self.metrics.reload_failures.inc()
                log.error("refused checkpoint; the current model keeps serving",
                          extra={"fields": {"id": getattr(error, "checkpoint_id", None), "serving": current, "error": str(error)}})
            return None
        if newest is None:
            if current is not None and self.units_seen and self._units_version() != self.units_seen:
                return self.load_initial()  # a unit checkpointed since: the merged models again
            return self.load_initial() if current is None else None
        if newest in (current, self.refused):
            return None
        started = time.perf_counter()
        try:
            return self._swap(*self.store.restore(newest, self.restore), started)
        except Exception as error:  # any failure to verify or restore: refuse it, never stop serving
            self.refused = newest
            self.metrics.reload_failures.inc()
            log.error("refused checkpoint; the current model keeps serving", extra={"fields": {"id": newest, "serving": current, "error": str(error)}})
            return None

    async def run(self, stopping: asyncio.Event) -> None:
        """Poll every `interval` seconds (on a worker thread) until `stopping` is set."""
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            if not stopping.is_set():
                await asyncio.to_thread(self.poll)
