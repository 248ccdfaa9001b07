"""The learning serving instance: it holds the checkpoint store's lease, learns, and checkpoints like the daemon.

A ``riverbeam serve`` with ``serve.learn: true`` is a writer. Before it answers it takes the
lease in the checkpoint store (`online.checkpoints.lease`: the daemon's active/standby rule and its
`LeaseKeeper`, which renews the lease from the moment it is taken, so it never
learns beside a daemon or another learning server on the same model), restores the latest
checkpoint through the checkpoint bridge (`online.checkpoints.persistence.resume`) and learns
through a learning unit, as every job does (`online.learning.unit.LearningUnit`): each
``POST /v1/learn`` request's events are pushed into the unit's source (`online.sources.FedSource`
of `online.sources.EventBatch`) and `LearningUnit.step` learns them with the learner's own
semantics (predict, score, learn; with ``events.id``, an unlabelled event's prediction is kept
until its label arrives; in mini-batch mode a request's events are one chunk). The unit's sinks
(`ResponseSinks`) are the request's answers: one record per event, its prediction or its error.
The unit checkpoints on the daemon's cadence (`online.checkpoints.persistence.Checkpointer`:
every ``checkpoint.every_events`` events or ``every_seconds``, one upload in flight, on a worker
thread) and once more when the server stops; a checkpoint made durable becomes the served model
(`ResponseSinks.commit`). It learns on the event loop only, so requests never see a model
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

from online.checkpoints.lease import Lease, LeaseKeeper, instance_id, wait_for_lease
from online.checkpoints.persistence import Cadence, Durable, LearnerSpec, open_checkpoint_store, resume_unit
from online.checkpoints.units import SERVE_UNIT, check_layout
from online.config import ServeJobConfig
from online.learning.unit import LearningUnit
from online.serving.metrics import ServeMetrics
from online.serving.reload import ModelSlot, ServedModel
from online.sources import EventBatch, FedSource

log = logging.getLogger("riverbeam.serve")


class ResponseSinks:
    """The sinks of serve's learning unit (`online.learning.unit.Sinks`): a request's answers, and the served model.

    `open` starts a request of `count` events; each event's answer is its prediction record (a
    learning job's record, `online.learning.learner.Prediction.record`, stamped with the checkpoint
    it was learned on top of) or ``{"error": reason}``, at its place in the request (`answers`).
    Nothing is flushed anywhere: the answers are the response. A checkpoint made durable
    (`commit`) becomes the served model and the checkpoint stamped on the next records.
    """

    def __init__(self, metrics: ServeMetrics, slot: ModelSlot, learner, checkpoint_id: str | None):
        self.metrics = metrics
        self.slot = slot
        self.learner = learner
        self.checkpoint_id = checkpoint_id
        self.answers: list = []
        self._first = 0  # the position of the request's first event

    def open(self, first: int, count: int) -> None:
        self._first, self.answers = first, [None] * count

    def dead_letter(self, batch: EventBatch, index: int, reason: str, model: str | None = None) -> None:
        self.answers[batch.before - self._first + index] = {"error": reason}

    def predictions(self, batch: EventBatch, outcomes: list) -> None:
        at, checkpoint = batch.before - self._first, self.checkpoint_id
        for index, prediction in outcomes:
            self.answers[at + index] = prediction.record(checkpoint=checkpoint)
            if prediction.learned:
                self.metrics.learned.inc()

    def flush(self, positions: dict) -> dict:
        return {}

    def commit(self, durable: Durable) -> None:
        self.checkpoint_id = durable.manifest["id"]
        self.slot.current = ServedModel(self.learner, self.checkpoint_id, durable.manifest)
        self.metrics.checkpoint_is(durable.manifest)
        self.metrics.checkpoints_written.inc()
        log.info("checkpoint", extra={"fields": {"id": self.checkpoint_id, "events_learned": durable.manifest["events_learned"], "seconds": round(durable.seconds, 4)}})


class LearningWriter:
    """Lease, learning unit and checkpointer of a learning serving instance (see the module)."""

    def __init__(self, config: ServeJobConfig, metrics: ServeMetrics, slot: ModelSlot):
        self.config = config
        self.metrics = metrics
        self.slot = slot
        self.spec = LearnerSpec.load(config.model, config.events, config.features)
        self.store = open_checkpoint_store(config.checkpoint)
        self.lease = Lease(self.store.store, instance_id(), ttl=config.checkpoint.lease_seconds)
        self.uploader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="riverbeam-checkpoint")
        self.unit: LearningUnit | None = None
        self.source = FedSource()
        self.received = 0  # events pushed into the unit (its source's position)
        self.active = False
        self.keeper: LeaseKeeper | None = None  # renews the lease from the moment it is taken (the daemon's one lease loop)

    @property
    def learner(self):
        return self.unit.learner if self.unit is not None else None

    @property
    def checkpoint_id(self) -> str | None:
        """The checkpoint the model learns on top of: the restored one, then each made durable."""
        return self.unit.sinks.checkpoint_id if self.unit is not None else None

    # -- life cycle (start and stop run on a worker thread or at shutdown) -----------------

    def start(self, stopping: threading.Event | None = None) -> bool:
        """Wait for the lease (standby while another writer holds it), then restore; False if stopped first.

        Called again after this instance stopped learning (lease lost, checkpoint fenced or failed):
        what was not durable is dropped, the lease is waited for under a new instance id (as the
        daemon's standby does: a lease this instance may still hold runs out first), and the latest
        checkpoint is restored.
        """
        if self.unit is not None:  # back from a failure: finish (or fail) the upload in flight, then wait as standby
            self.unit.abandon()  # the store fences a stale write itself
            self.unit = None
            self._stop_keeper()
            self.lease = Lease(self.store.store, instance_id(), ttl=self.config.checkpoint.lease_seconds)
        if stopping is None:  # one try
            stopping = threading.Event()
            stopping.set()
        self.keeper = wait_for_lease(self.lease, stopping, "this model")  # renewed from now on, while restoring too
        if self.keeper is None:
            return False
        try:
            if self.spec.events.key is not None:
                check_layout(self.store.uri)  # keyed checkpoints in a layout before units: found now, not in a request
            resumed = resume_unit(self.store, self.spec, None if self.spec.events.key is None else SERVE_UNIT,  # keyed: serve's unit (online.checkpoints.units)
                                  Cadence.from_config(self.config.checkpoint), uploader=self.uploader)
        except Exception:
            self._stop_keeper()
            self.lease.release()
            raise
        learner, restored, checkpointer = resumed.learner, resumed.checkpoint, resumed.checkpointer
        checkpoint_id = restored.id if restored is not None else None
        sinks = ResponseSinks(self.metrics, self.slot, learner, checkpoint_id)
        self.source = FedSource()
        # a checkpoint due while one is in flight waits for it (the unit's back-pressure): the cadence holds
        self.unit = LearningUnit(SERVE_UNIT, self.source, [("model", learner)], sinks, checkpointer, predictions=True)
        received = restored.positions.get(SERVE_UNIT) if restored is not None else None
        self.received = received if type(received) is int else 0  # events learned here by every serving writer so far
        self.unit.seek({SERVE_UNIT: self.received})
        if restored is not None:
            self.metrics.checkpoint_is(restored.manifest)
        self.slot.current = ServedModel(learner, checkpoint_id, restored.manifest if restored is not None else {})
        self.metrics.model_is(learner.report())
        self.active = True
        self.metrics.ready_gauge.set(1)
        log.info("learning", extra={"fields": {"uri": self.store.uri, "checkpoint": checkpoint_id, "events_learned": learner.state.events_learned}})
        return True

    def stop(self) -> None:
        """Final checkpoint (if anything changed), release the lease, stop the uploader."""
        try:
            if self.active and self.unit is not None:
                self.unit.checkpoint(wait=True)
        finally:
            self._deactivate()
            self._stop_keeper()
            self.lease.release()
            self.uploader.shutdown(wait=True)

    def _deactivate(self) -> None:
        self.active = False
        self.metrics.ready_gauge.set(0)

    # -- on the event loop -----------------------------------------------------------------

    def learn(self, events: list) -> list[dict]:
        """Learn `events` in order through the unit; one record (or ``{"error": reason}``) each."""
        unit = self.unit
        unit.sinks.open(self.received, len(events))
        self.source.push(EventBatch(SERVE_UNIT, list(events), before=self.received))
        self.received += len(events)
        try:
            unit.step()  # learn, count; checkpoint when due
            unit.flush()  # mini-batch mode: the request's events are one chunk, answered now
        except Exception as error:  # fenced by another writer, or storage down: stop learning, keep answering
            self._fail("checkpoint failed; this instance stops learning", error)
        self.metrics.model_is(unit.learner.report())
        answers = unit.sinks.answers  # an event the unit did not reach (it failed first) is not learned, and says so
        return [answer if answer is not None else {"error": "not learned: this instance stopped learning (see its log)"} for answer in answers]

    def tick(self) -> None:
        """Called about once a second on the event loop: finish a done upload, checkpoint when due by time."""
        if not self.active:
            return
        unit = self.unit
        try:
            unit.collect()
            if unit.checkpoint_due:
                unit.checkpoint()
        except Exception as error:
            self._fail("checkpoint failed; this instance stops learning", error)

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
