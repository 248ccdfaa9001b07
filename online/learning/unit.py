"""The learning unit: a source and where it stands, the learner(s), a checkpointer and the sinks, in one object.

Bytewax's source partition owns its resume position, Quix Streams' ``Checkpoint`` commits in
numbered steps; a `LearningUnit` is both for riverbeam. `LearningUnit.step` processes one batch
of its source (read, learn, count, checkpoint when due) and `LearningUnit.checkpoint` is the only
place that decides how a checkpoint is taken. The daemon schedules units (one per Kafka partition
with ``events.key``, one global unit otherwise); ``riverbeam replay --mode learn/evaluate`` runs
one unit over its files; a learning ``riverbeam serve`` one fed by its requests; Beam's
stream-learn one per Beam key (`pipelines.stream_learn`). Nothing calls back up into the job that
runs a unit: the unit owns its sinks, and learns that a checkpoint is durable from its checkpointer.

This wing may not import checkpoints or Kafka outputs (`tests/test_layering.py`): the unit
takes them as the protocols below (dependency inversion), `Checkpoints` implemented by
`online.checkpoints.persistence.Checkpointer`, `Sinks` by `online.consume.outputs.KafkaSinks`
(the daemon), `online.replay.engine.ReplaySinks` (the errors file) and
`online.serving.writer.ResponseSinks` (a learning request's answers).

Map for a newcomer: one event and one checkpoint, from the command line (each arrow one hop).

* ``riverbeam consume`` -> `riverbeam.commands.consume` -> `online.consume.daemon.run_daemon` ->
  ``Daemon._loop`` (the scheduler: one poll, each partition's batch pushed to its unit's
  `online.sources.FedSource`) -> `LearningUnit.step` -> `online.learning.loop.LearningLoop.feed`
  (decode, dead letters, predictions, positions) -> `online.learning.learner.Learner.process_many`.
* ``riverbeam replay`` -> `riverbeam.commands.replay` -> `online.replay.job.run_replay` ->
  `online.replay.engine.learn` (or ``Evaluation``) -> `LearningUnit.step` over an
  `online.sources.FileSource` -> as above.
* ``riverbeam serve`` (``serve.learn``) -> `online.serving.app` (``POST /v1/learn``) ->
  `online.serving.writer.LearningWriter.learn` (the request pushed as an `online.sources.EventBatch`)
  -> `LearningUnit.step` -> as above; the answers are its `online.serving.writer.ResponseSinks`.
* `LearningUnit.checkpoint` -> `Sinks.flush` (Kafka outputs committed, their end offsets) ->
  `Checkpoints.checkpoint` (snapshot, upload: `online.checkpoints.persistence.Checkpointer` ->
  `online.checkpoints.store.CheckpointStore.save`) -> once durable, `Sinks.commit` (consumer
  offsets; `online.consume.outputs.KafkaSinks.commit`).
* Restore: the job restores the learner (`online.checkpoints.persistence.resume`), builds the
  unit and calls `LearningUnit.seek` with the checkpoint's positions.

>>> from online.config import EventsConfig, ModelConfig
>>> from online.learning.learner import Learner
>>> from online.sources import FedSource, KafkaBatch
>>> learner = Learner(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y"))
>>> class Printed:
...     def dead_letter(self, batch, index, reason, model=None): print("dead letter", batch.offsets[index], reason)
...     def predictions(self, batch, outcomes): pass
...     def flush(self, positions): return {}
...     def commit(self, durable): pass
>>> source = FedSource()
>>> unit = LearningUnit("events.0", source, [("lr", learner)], Printed())
>>> source.push(KafkaBatch(("events", 0), [b'{"x": 1, "y": 2}', b'[]', b'{"x": 2, "y": 4}'], [10, 11, 12]))
>>> unit.step()
dead letter 11 event is not a JSON object but an array
Stepped(consumed=3, learned=2, rejected=1)
>>> unit.step() is None, unit.checkpoint_positions()
(True, {'events/0': 13})
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, Protocol

from online.learning.learner import Learner
from online.learning.loop import DeadLetterSink, LearningLoop, PredictionSink
from online.sources import EventSource

log = logging.getLogger("riverbeam.unit")

__all__ = ["LearningUnit", "Checkpoints", "Sinks", "Stepped"]


class Checkpoints(Protocol):
    """What a unit needs of its checkpointer (`online.checkpoints.persistence.Checkpointer`)."""

    pending: Any  # the upload in flight (a future), or None
    written: int  # checkpoints durable so far
    last_durable: Any  # the latest `Durable` (manifest, the writer's positions, seconds), or None
    fatal: tuple  # errors a retry will not heal (fenced by another writer, storage unusable)

    def add(self, events: int) -> None: ...

    def due(self) -> bool: ...

    def has_news(self, positions: dict) -> bool: ...

    def checkpoint(self, positions: dict, extra: dict | None = None, *, wait: bool = False, state: bytes | None = None) -> Any: ...

    def collect(self, wait: bool = False) -> Any: ...

    def close(self) -> None: ...


class Sinks(DeadLetterSink, PredictionSink, Protocol):
    """Where a unit's rejected records and predictions go, and how they become durable with a checkpoint."""

    def flush(self, positions: dict) -> dict:
        """Make everything sent so far durable; the manifest fields saying where the sinks stand at the
        checkpoint `positions` (Kafka: output end offsets, outputs written ahead; files: bytes written)."""
        ...

    def commit(self, durable: Any) -> None:
        """A checkpoint is durable (`durable.positions`, `durable.manifest`): commit what follows it (Kafka offsets)."""
        ...


class Stepped(NamedTuple):
    """What one `LearningUnit.step` did: records consumed, learned, rejected."""

    consumed: int
    learned: int
    rejected: int


class LearningUnit:
    """One source, its learners, its checkpointer and its sinks; `step` and `checkpoint`.

    `models` are ``(name, Learner)`` pairs (`online.learning.loop.LearningLoop`: the first is the
    primary); `learner` is what is checkpointed and reported when it is more than the primary (a
    `online.learning.model_set.ModelSet` of the models); `loop_options` go to the loop (predictions
    model, curve, decoder, ...).
    `checkpointer` None: nothing is checkpointed (evaluation). `retry_failed_checkpoints`: a
    failed upload is logged and counted (`failed_checkpoints`) and the next due checkpoint holds
    the whole state again (the daemon: storage down is survived); otherwise the error is raised.
    `wait_for_uploads`: see `step`. `checkpoint_when_due` False: `step` learns and counts but never
    checkpoints; the caller calls `checkpoint` when ``checkpointer.due()`` (Beam's stream-learn,
    which keeps each checkpoint's snapshot in Beam state too: `checkpoint`'s `state`).
    """

    def __init__(self, name: str, source: EventSource, models: list[tuple[str, Learner]], sinks: Sinks | None,
                 checkpointer: Checkpoints | None = None, *, learner: Learner | None = None, predictions: bool = False,
                 retry_failed_checkpoints: bool = False, wait_for_uploads: bool = True, checkpoint_when_due: bool = True,
                 **loop_options):
        self.name = name
        self.source = source
        self.sinks = sinks
        self.checkpointer = checkpointer
        self.retry_failed_checkpoints = retry_failed_checkpoints
        self.wait_for_uploads = wait_for_uploads
        self.checkpoint_when_due = checkpoint_when_due
        self.loop = LearningLoop(models, dead_letters=sinks, predictions=sinks if predictions else None, checkpointer=checkpointer, **loop_options)
        self._learner = learner
        self.failed_checkpoints = 0
        self.checkpoints_written = 0
        self._settled = checkpointer.written if checkpointer is not None else 0

    @property
    def learner(self) -> Learner:
        """The unit's learner: the primary model's, or the `online.learning.model_set.ModelSet` of several models."""
        return self._learner if self._learner is not None else self.loop.learner

    @property
    def positions(self) -> dict:
        """Where each partition stands after the last record processed (held records of a chunk not included)."""
        return self.loop.positions

    def checkpoint_positions(self) -> dict:
        return self.loop.checkpoint_positions()

    @property
    def models(self) -> list[tuple[str, Learner]]:
        """The unit's ``(name, Learner)`` pairs, the primary first."""
        return self.loop.models

    @property
    def read_positions(self) -> dict:
        """Where each partition stands after the last record fed (an incomplete chunk's held records included)."""
        return self.loop.read

    def record_curve(self) -> None:
        """A learning-curve point of every model now (`online.learning.loop.LearningLoop.record_curve`)."""
        self.loop.record_curve()

    @property
    def checkpoint_due(self) -> bool:
        """Whether the cadence (``checkpoint.every_events`` / ``every_seconds``) calls for a checkpoint now."""
        return self.checkpointer is not None and self.checkpointer.due()

    @property
    def upload_in_flight(self):
        """The checkpoint upload still running (a future), or None."""
        return self.checkpointer.pending if self.checkpointer is not None else None

    def abandon(self) -> None:
        """Finish the upload in flight without committing anything (the lease was lost: the store fences a stale write itself)."""
        if self.checkpointer is not None:
            try:
                self.checkpointer.collect(wait=True)
            except Exception:
                pass

    def seek(self, positions: dict) -> None:
        """Continue from `positions` (partition -> position, as the loop keeps them): the loop and the source both."""
        self.loop.positions.update(positions)
        self.loop.read.update(positions)
        self.source.seek(dict(positions))

    # -- one batch --------------------------------------------------------------------------

    def step(self) -> Stepped | None:
        """Process the source's next batch (read, learn, count), then checkpoint when due; None without a batch.

        A checkpoint due while the previous upload is still in flight waits for that upload first
        (back-pressure, as `checkpoint` step 1 says): a slow store slows learning down rather than
        letting the checkpoints fall behind the configured cadence unseen. Without
        `wait_for_uploads` (the daemon, which watches its uploads itself: it checks its lease and
        reports a slow store meanwhile) it waits for the next step instead.
        """
        batch = self.source.next_batch()
        if batch is None:
            return None
        loop = self.loop
        consumed, learned, rejected = loop.consumed, loop.learned, loop.rejected
        loop.feed(batch)
        if self.checkpointer is not None and self.checkpoint_when_due:
            self.collect()  # an upload that finished (committed now), per-key models pickled a slice further
            if self.checkpoint_due and (self.wait_for_uploads or self.upload_in_flight is None):
                self.checkpoint()  # an upload still in flight is waited for first: back-pressure keeps the cadence
        return Stepped(loop.consumed - consumed, loop.learned - learned, loop.rejected - rejected)

    def flush(self) -> Stepped:
        """Learn the held records of an incomplete chunk (mini-batch mode): the inputs ended, or the job stops."""
        loop = self.loop
        consumed, learned, rejected = loop.consumed, loop.learned, loop.rejected
        loop.flush()
        return Stepped(loop.consumed - consumed, loop.learned - learned, loop.rejected - rejected)

    def drop(self) -> None:
        """Forget held records (partitions given up): the next owner reads them again from `positions`."""
        self.loop.drop()

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint(self, wait: bool = False, state: bytes | None = None) -> None:
        """Checkpoint the unit, in numbered steps (skipped when nothing changed since the last one):

        1. finish the upload in flight (waiting for it: back-pressure) and commit it if durable (step 5);
        2. take the processed positions (a chunk boundary in mini-batch mode);
        3. flush the sinks, so that their end positions are known (`Sinks.flush`: a transactional
           producer commits, output end offsets; the errors file's bytes);
        4. snapshot the learner with the positions and the sinks' positions, and upload it
           (`Checkpoints.checkpoint`: on the uploader thread unless `wait`);
        5. once durable: commit the sinks and source offsets (`Sinks.commit`), never before.

        A failed upload: see `retry_failed_checkpoints`. `state`: the learner's snapshot, when the caller
        has just taken it (stream-learn writes the same bytes into Beam state): step 4 uploads exactly
        those bytes (a full checkpoint) rather than taking another.
        """
        checkpointer = self.checkpointer
        if checkpointer is None:
            return
        self.collect(wait=True)  # 1
        positions = self.checkpoint_positions()  # 2
        if not checkpointer.has_news(positions):
            return
        extra = self.sinks.flush(self.positions) if self.sinks is not None else {}  # 3: the sinks' errors are the caller's
        try:
            checkpointer.checkpoint(positions, extra, wait=wait, state=state)  # 4
        except Exception as error:
            self._failed(error)
        self._settle()  # 5 (an upload that finished here)

    def collect(self, wait: bool = False) -> None:
        """Finish the upload in flight if it is done (or `wait`); commit what became durable."""
        if self.checkpointer is None:
            return
        try:
            self.checkpointer.collect(wait=wait)
        except Exception as error:
            self._failed(error)
        self._settle()

    def close(self) -> None:
        """Stop the checkpointer's own threads (an upload in flight is waited for: `collect` it first)."""
        if self.checkpointer is not None:
            self.checkpointer.close()

    def _settle(self) -> None:
        """Step 5: a checkpoint became durable since the last look: commit the sinks to it."""
        written = self.checkpointer.written
        if written == self._settled:
            return
        self.checkpoints_written += written - self._settled
        self._settled = written
        if self.sinks is not None:
            self.sinks.commit(self.checkpointer.last_durable)

    def _failed(self, error: Exception) -> None:
        if not self.retry_failed_checkpoints or isinstance(error, self.checkpointer.fatal):
            raise error
        # nothing is lost: the offsets stay uncommitted and the next checkpoint holds the whole state
        self.failed_checkpoints += 1
        log.error("checkpoint upload failed; retrying at the next due checkpoint", extra={"fields": {"unit": self.name, "error": f"{type(error).__name__}: {error}"}})
