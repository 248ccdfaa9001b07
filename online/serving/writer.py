"""The learning serving instance: it holds the checkpoint store's lease, learns, and checkpoints like the daemon.

A ``riverbeam serve`` with ``serve.learn: true`` is a writer. Before it answers it takes the
lease in the checkpoint store (`online.checkpoints.lease`: the daemon's active/standby rule and its
`LeaseKeeper`, which renews the lease from the moment it is taken, so it never
learns beside a daemon or another learning server on the same model), restores the latest
checkpoint through the checkpoint bridge (`online.checkpoints.persistence.resume`) and learns each event of
``POST /v1/learn`` with the learner's own semantics (`Learner.process`: predict, score, learn;
with ``events.id``, an unlabelled event's prediction is kept until its label arrives). It
checkpoints on the daemon's cadence (`online.checkpoints.persistence.Checkpointer`: every
``checkpoint.every_events`` events or ``every_seconds``, one upload in flight, on a worker thread)
and once more when it stops. It learns on the event loop only, so requests never see a model
half-learned.

>>> import tempfile
>>> from core.configuration import parse_config
>>> from online.config import ServeJobConfig
>>> from online.serving.metrics import ServeMetrics
>>> from online.serving.reload import ModelSlot
>>> config = parse_config({"checkpoint": {"uri": tempfile.mkdtemp(), "every_events": 2}, "serve": {"learn": True},
...     "model": {"pipeline": [{"linear_model.LinearRegression": {}}], "metrics": ["MAE"]}, "events": {"target": "y"}}, ServeJobConfig, environ={})
>>> slot = ModelSlot()
>>> writer = LearningWriter(config, ServeMetrics(), slot)
>>> writer.start()
True
>>> [sorted(r) for r in writer.learn([{"x": 1.0, "y": 2.0}, {"x": "a", "y": 1.0}, {"x": 2.0, "y": 4.0}])]
[['checkpoint', 'label', 'learned', 'prediction'], ['error'], ['checkpoint', 'label', 'learned', 'prediction']]
>>> writer.stop()
>>> writer.store.load_latest().manifest["events_learned"]
2
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading

from online.events import EventError
from online.checkpoints.lease import Lease, LeaseKeeper, instance_id
from online.checkpoints.persistence import Cadence, Checkpointer, Durable, LearnerSpec, open_checkpoint_store, resume
from online.checkpoints.units import SERVE_UNIT, OtherUnits, unit_store
from online.config import ServeJobConfig
from online.serving.metrics import ServeMetrics
from online.serving.reload import ModelSlot, ServedModel

log = logging.getLogger("riverbeam.serve")


class LearningWriter:
    """Lease, learner and checkpointer of a learning serving instance (see the module)."""

    def __init__(self, config: ServeJobConfig, metrics: ServeMetrics, slot: ModelSlot):
        self.config = config
        self.metrics = metrics
        self.slot = slot
        self.spec = LearnerSpec.load(config.model, config.events, config.features)
        self.store = open_checkpoint_store(config.checkpoint)
        self.lease = Lease(self.store.store, instance_id(), ttl=config.checkpoint.lease_seconds)
        self.uploader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="riverbeam-checkpoint")
        self.learner = None
        self.checkpointer: Checkpointer | None = None
        self.active = False
        self.checkpoint_id: str | None = None
        self.keeper: LeaseKeeper | None = None  # renews the lease from the moment it is taken (the daemon's one lease loop)

    # -- life cycle (start and stop run on a worker thread or at shutdown) -----------------

    def start(self, stopping: threading.Event | None = None) -> bool:
        """Wait for the lease (standby while another writer holds it), then restore; False if stopped first.

        Called again after this instance stopped learning (lease lost, checkpoint fenced or failed):
        what was not durable is dropped, the lease is waited for under a new instance id (as the
        daemon's standby does: a lease this instance may still hold runs out first), and the latest
        checkpoint is restored.
        """
        if self.checkpointer is not None:  # back from a failure: finish (or fail) the upload in flight, then wait as standby
            try:
                self.checkpointer.collect(wait=True)  # the store fences a stale write itself
            except Exception:
                pass
            self.checkpointer = None
            self._stop_keeper()
            self.lease = Lease(self.store.store, instance_id(), ttl=self.config.checkpoint.lease_seconds)
        waited = False
        while not self._try_acquire():
            if not waited:
                log.info("standby: another instance holds the lease for this model", extra={"fields": {"uri": self.store.uri}})
                waited = True
            if stopping is None or stopping.wait(min(2.0, self.lease.ttl / 3)):
                return False
        self.keeper = LeaseKeeper(self.lease).start()  # renewed from now on, while restoring too
        store = self.store if self.spec.events.key is None else unit_store(self.store, SERVE_UNIT)  # keyed: serve's unit (online.checkpoints.units)
        learner, restored = resume(store, self.spec)
        if store is not self.store:
            OtherUnits(self.store, self.spec.restore, own=SERVE_UNIT).attach(learner)  # keys the unit does not hold: the other units' models
        self.checkpointer = Checkpointer(
            store, learner, self.spec, Cadence.from_config(self.config.checkpoint),
            uploader=self.uploader, on_durable=self._durable, restored=restored,
        )  # fmt: skip
        self.learner = learner
        self.checkpoint_id = restored.id if restored is not None else None
        if restored is not None:
            self.metrics.checkpoint_is(restored.manifest)
        self.slot.current = ServedModel(learner, self.checkpoint_id, restored.manifest if restored is not None else {})
        self.metrics.model_is(learner.report())
        self.active = True
        self.metrics.ready_gauge.set(1)
        log.info("learning", extra={"fields": {"uri": self.store.uri, "checkpoint": self.checkpoint_id, "events_learned": learner.state.events_learned}})
        return True

    def _try_acquire(self) -> bool:
        try:
            return self.lease.try_acquire()
        except Exception as error:  # storage down: stay standby, try again
            log.warning("standby: cannot read the lease", extra={"fields": {"error": f"{type(error).__name__}: {error}"}})
            return False

    def stop(self) -> None:
        """Final checkpoint (if anything changed), release the lease, stop the uploader."""
        try:
            if self.active and self.checkpointer is not None:
                self.checkpointer.checkpoint({}, wait=True)
        finally:
            self._deactivate()
            self._stop_keeper()
            self.lease.release()
            self.uploader.shutdown(wait=True)

    def _deactivate(self) -> None:
        self.active = False
        self.metrics.ready_gauge.set(0)

    def _durable(self, durable: Durable) -> None:
        self.checkpoint_id = durable.manifest["id"]
        self.slot.current = ServedModel(self.learner, self.checkpoint_id, durable.manifest)
        self.metrics.checkpoint_is(durable.manifest)
        self.metrics.checkpoints_written.inc()
        log.info("checkpoint", extra={"fields": {"id": self.checkpoint_id, "events_learned": durable.manifest["events_learned"], "seconds": round(durable.seconds, 4)}})

    # -- on the event loop -----------------------------------------------------------------

    def learn(self, events: list) -> list[dict]:
        """Process `events` in order with the learner; one record (or ``{"error": reason}``) each."""
        learner, records, processed = self.learner, [], 0
        for event in events:
            try:
                prediction = learner.process(event)
            except EventError as error:
                records.append({"error": str(error)})
                continue
            except Exception as error:  # River failed on this event: this event's failure only, never a 500
                log.warning("the model failed on an event", extra={"fields": {"error": repr(error)}})
                records.append({"error": f"the model cannot learn this event: {error}"})
                continue
            processed += 1
            records.append(prediction.record(checkpoint=self.checkpoint_id))  # a learning job's record (online.learning.learner.Prediction.record)
            if prediction.learned:
                self.metrics.learned.inc()
        self.checkpointer.add(processed)
        self.metrics.model_is(learner.report())
        if self.checkpointer.due():
            self.checkpoint()
        return records

    def checkpoint(self) -> None:
        """Snapshot now, upload on the worker thread (after the one in flight, if any)."""
        try:
            self.checkpointer.checkpoint({})
        except Exception as error:  # fenced by another writer, or storage down: stop learning, keep answering
            self._fail("checkpoint failed; this instance stops learning", error)

    def tick(self) -> None:
        """Called about once a second on the event loop: finish a done upload, checkpoint when due by time."""
        if not self.active:
            return
        try:
            self.checkpointer.collect()
        except Exception as error:
            self._fail("checkpoint failed; this instance stops learning", error)
            return
        if self.checkpointer.due():
            self.checkpoint()

    def check_lease(self) -> None:
        """Stop learning once the lease is not ours any more (its `LeaseKeeper` renews it on its own thread: no I/O here)."""
        if self.active and self.keeper is not None and not self.keeper.valid():
            self._fail("lost the lease (another instance took it, or it expired while storage was unreachable); this instance stops learning", None)

    def _stop_keeper(self) -> None:
        if self.keeper is not None:
            self.keeper.stop()
            self.keeper = None

    def _fail(self, message: str, error: Exception | None) -> None:
        self._deactivate()
        log.error(message, extra={"fields": {"uri": self.store.uri, "error": str(error) if error else None}})
