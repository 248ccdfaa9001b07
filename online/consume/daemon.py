"""The streaming consumer daemon: Kafka JSON events into the learner core, with exactly-once model state.

``riverbeam consume --config consumer.yaml`` runs `run_daemon`. The daemon is a scheduler of
learning units (`online.learning.unit.LearningUnit`: a source and its positions, the learner(s), a
checkpointer and the sinks): it builds or restores them as partitions are assigned, polls the
consumer once and pushes each partition's batch into its unit's source, lets the unit step and
checkpoint, and checkpoints and drops units whose partitions are revoked. Checkpoint positions are the truth; Kafka's committed offsets follow them (for lag
monitoring only).

* **Global model** (no ``events.key``): one unit over every partition of the topics, at the
  checkpoint URI. One instance is active; it holds a lease in the checkpoint store
  (`online.checkpoints.lease`) and reads all partitions by manual assignment. Other instances wait as
  standby and take over from the last checkpoint when the lease expires. A single global model
  cannot be split across instances without changing what it learns, hence active/standby.
* **Keyed models** (``events.key``): one unit per source partition, at
  ``<uri>/units/partition=<topic>.<partition>`` (`online.checkpoints.units`: the keyed layout every
  job shares), holding the models of the keys seen on that partition (produce events with the
  model key as the Kafka message key); a key its unit does not hold yet starts from the other
  units' model of it (another partition's, a replay's, a stream-learn key's). Units move between instances
  with the consumer group: on revoke a unit is checkpointed and committed before its partition is
  given up; on assign it is restored. This scales out by partition.

Per batch (never per event): decode with orjson, predict / score / learn, send dead letters and
predictions (`online.consume.outputs`: exactly once across crashes), update counters. A checkpoint is due
every ``checkpoint.every_events`` events or ``every_seconds`` (each unit's
`online.checkpoints.persistence.Checkpointer`, the cadence every job shares), in the unit's numbered
steps (`LearningUnit.checkpoint`): the producer is flushed (`online.consume.outputs.KafkaSinks`) and
the learner serialised on the event loop, the upload runs on a background thread (one in flight:
back-pressure, waited for here with the lease checked), and the offsets are committed only once it
is durable. After a kill -9 at any
moment, a restart restores the last durable checkpoint and re-reads from its positions, so the
final model equals an uninterrupted run.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import signal
import threading
import time


from core.summary import Resumed
from core.errors import RiverbeamError
from core.storage import StorageError, StorageUnusable
from online.checkpoints.store import FencingError
from online.checkpoints.units import check_layout, partition_unit
from online.config import ConsumeJobConfig, model_names
from online.formats import record_decoder
from online.formats_write import OutputEncoders, output_encoders
from online.kafka_clients import TopicPartition, make_consumer, make_producer
from online.kafka_clients.base import ProducerFencedError
from online.learning.gc_tuning import restore_gc, steady_state_gc
from online.learning.model_set import ModelSet
from online.learning.unit import LearningUnit, Stepped
from online.sources import FedSource, KafkaBatch, KafkaSource, kafka_positions, position_key
from online.checkpoints.lease import Lease, LeaseKeeper, LeaseLost, instance_id, wait_for_lease
from online.observability import DaemonMetrics, HealthServer, LearningCurve, ProgressLine
from online.consume.outputs import KafkaSinks, OutputWriter, merge_restore_points
from online.consume.summary import daemon_job_summary  # noqa: F401  (its home; imported from here by callers)
from online.checkpoints.persistence import Cadence, LearnerSpec, ModelsSpec, kafka_context, open_checkpoint_store, resume_unit

log = logging.getLogger("riverbeam.daemon")


class DaemonError(RiverbeamError):
    """The daemon had to stop: it could not go on without losing or duplicating something."""


STORAGE_LOG_EVERY = 30.0  # seconds between log lines while a checkpoint upload keeps retrying
JOIN_LOG_EVERY = 30.0  # seconds between log lines while the consumer group has given this daemon no assignment yet
GROUP_WAIT_POLL_SECONDS = 0.05  # a worker caught up polls this briefly, so that the group's finish reaches it at once


def offset_gap(position: int, start: int, end: int, recorded_id: str | None = None, current_id: str | None = None) -> str | None:
    """Why the checkpointed `position` is not a place the broker can resume from, or None.

    `start`/`end` are the partition's log start and end offsets; the topic ids are the one the
    checkpoint recorded and the broker's current one.

    >>> offset_gap(500, 0, 1000) is None, offset_gap(1000, 0, 1000) is None
    (True, True)
    >>> offset_gap(500, 0, 1000, "a", "b")
    'the topic was recreated (its id changed)'
    >>> offset_gap(500, 700, 1000)
    'the checkpointed offset is below the log start (records deleted, e.g. by retention)'
    >>> offset_gap(500, 0, 300)
    'the checkpointed offset is past the end of the log (topic recreated or truncated)'
    """
    if recorded_id and current_id and recorded_id != current_id:
        return "the topic was recreated (its id changed)"
    if position < start:
        return "the checkpointed offset is below the log start (records deleted, e.g. by retention)"
    if position > end:
        return "the checkpointed offset is past the end of the log (topic recreated or truncated)"
    return None


class Daemon:
    """One daemon instance; `run` returns a summary when it stops."""

    def __init__(self, config: ConsumeJobConfig, until_caught_up: bool = False, progress: bool | None = None, allow_model_change: bool = False):
        self.config = config
        self.until_caught_up = until_caught_up
        self.keyed = config.events.key is not None
        self.lease_seconds = config.checkpoint.lease_seconds
        self.metrics = DaemonMetrics()
        self.curve = LearningCurve() if config.metrics.port is not None else None  # the dashboard's, by events learned
        self.progress = ProgressLine(progress)
        # model(s), events, features and the fitted transform: what a checkpoint must have been written with
        self.spec = ModelsSpec.of(config, allow_model_change) if config.models is not None else LearnerSpec.of(config)
        self.units: dict[str, LearningUnit] = {}
        self.unit_of: dict[TopicPartition, LearningUnit] = {}
        self.targets: dict[TopicPartition, int] = {}
        self.needs_targets: dict[TopicPartition, float] = {}  # partitions without a caught-up target yet -> when assigned
        self.stopping = threading.Event()
        self.uploader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="riverbeam-checkpoint")
        self.events_consumed = 0
        self.events_learned = 0
        self.events_rejected = 0
        self.processing_seconds = 0.0
        self.first_event_at: float | None = None
        self.last_event_at: float | None = None
        self._dropped_checkpoints = 0  # checkpoints written by units since dropped (revoked, lease lost)
        self._closing = False  # in `_close`: the consumer's close revokes the units, which are not checkpointed then
        self._dropped_failures = 0  # and their failed uploads
        self._dropped_units: dict[str, tuple[dict, int]] = {}  # their last reports and models' events learned, for the summary
        self._failures_counted = 0
        self.consumer = None
        self._source: KafkaSource | None = None
        self.model_name = model_names([config.model])[0] if config.model is not None else None  # its label in metrics
        self.producer = None
        self.outputs: OutputWriter | None = None
        self.lease: Lease | None = None
        self.health: HealthServer | None = None
        self.keeper: LeaseKeeper | None = None
        self.topic_ids: dict[str, str | None] = {}
        self._gap_checks: dict[TopicPartition, dict] = {}  # keyed units restored in a callback, not yet checked for offset gaps
        self._upload_started: dict[str, tuple] = {}  # unit -> (its upload in flight, when first seen)
        self._pending_logged = 0.0
        self.joined = False  # keyed: the group gave this daemon an assignment (an empty one too)
        self._join_logged = self._subscribed_at = 0.0
        self.final_summary: dict | None = None
        self.resumed: dict[str, Resumed] = {}  # unit -> the checkpoint it continued from
        self.decoder = record_decoder(config.kafka)  # kafka.format: None (JSON) or the schema registry's (online.formats)
        # A worker of `online.consume.workers`: joins the group with the other workers (`joining`), and its
        # supervisor decides "caught up" for the whole group (`caught_up`) so that all workers stop together.
        self.group = None
        self.encoders: OutputEncoders | None = None  # kafka.predictions_format, dead_letter_format: registered at the first _open_clients

    # -- set-up -----------------------------------------------------------------------------

    def _open_clients(self, transactional: bool = False) -> None:
        """The consumer and, with output topics, the producer and its `OutputWriter`.

        A global model's producer is transactional with an id derived from the checkpoint URI:
        opening it fences any older instance's producer at the broker, so records a stale
        instance sends after a takeover are refused (tested on Apache Kafka and on Tansu, both clients).
        """
        kafka = self.config.kafka
        if self.encoders is None:
            self.encoders = output_encoders(kafka)  # one line, before any client opens, if the registry cannot take the output schemas
        if self.consumer is None:
            self.consumer = make_consumer(kafka, group=True)
        if (kafka.dead_letter_topic or kafka.predictions_topic) and self.producer is None:
            if transactional:
                digest = hashlib.sha256(self.config.checkpoint.uri.rstrip("/").encode()).hexdigest()[:20]
                timeout = min(900.0, max(60.0, 3 * self.config.checkpoint.every_seconds))
                self.producer = make_producer(kafka, transactional_id=f"riverbeam-{digest}", transaction_timeout_s=timeout)
            else:
                self.producer = make_producer(kafka)
        self.outputs = OutputWriter(self.producer, kafka.dead_letter_topic, kafka.predictions_topic, scanner=lambda: make_consumer(kafka, group=False), encoders=self.encoders)

    @property
    def source(self) -> KafkaSource:
        """The consumer's partitions as an event source (`online.sources`)."""
        if self._source is None or self._source.consumer is not self.consumer:
            kafka = self.config.kafka
            self._source = KafkaSource(self.consumer, kafka.poll_timeout_ms / 1000, kafka.poll_max_records)
        return self._source

    def _check_vanished(self, checkpointed: dict[TopicPartition, int], partitions: list[TopicPartition]) -> None:
        """Partitions the checkpoint reads but the topic no longer has (recreated with fewer): said, never dropped silently.

        Under ``kafka.on_offset_gap: fail`` the daemon stops in one line; under ``skip`` each is logged
        and counted as an offset gap (``riverbeam_offset_gaps_total``), and the run goes on without it.
        """
        current = set(partitions)
        vanished = sorted(tp for tp in checkpointed if tp not in current and tp[0] in self.config.kafka.source_topics)
        if not vanished:
            return
        names = ", ".join(f"{topic}[{partition}] (checkpointed at offset {checkpointed[(topic, partition)]})" for topic, partition in vanished)
        if self.config.kafka.on_offset_gap == "fail":
            raise DaemonError(
                f"partitions vanished: {names}: the checkpoint reads them but the broker no longer has them (topic recreated with "
                f"fewer partitions?); set kafka.on_offset_gap: skip to go on without them"
            )
        for topic, partition in vanished:
            log.warning("partition vanished: going on without it", extra={"fields": {"topic": topic, "partition": partition, "checkpointed": checkpointed[(topic, partition)]}})
            self.metrics.offset_gaps.labels(topic, str(partition)).inc()

    def _restore_units(self, assigned: list[tuple[str, list[TopicPartition]]]) -> None:
        """Restore each ``(unit name, its partitions)`` from its latest checkpoint and seek the consumer there.

        The output topics are scanned once for all of them (`OutputWriter.restore` from the
        earliest output offsets any of their checkpoints recorded, `merge_restore_points`): a
        keyed daemon given many partitions at a rebalance reads its outputs once, not once per partition.
        """
        if not assigned:
            return
        restored, root = [], open_checkpoint_store(self.config.checkpoint)  # one root for all: a unit's store is below it
        for name, partitions in assigned:
            resumed = resume_unit(root, self.spec, None if name == "all" else partition_unit(*name.rsplit(".", 1)),
                                  Cadence.from_config(self.config.checkpoint), uploader=self.uploader)  # a cadence counts one unit's events: one each
            extra = kafka_context(resumed.checkpoint, resumed.store.uri)  # topic ids, output offsets, outputs ahead: one line if any is missing
            positions = kafka_positions(resumed.checkpoint.positions) if resumed.checkpoint is not None else {}
            self._check_vanished(positions, partitions)
            restored.append((name, partitions, resumed, extra, {tp: positions.get(tp, 0) for tp in partitions}))
        since, ahead = merge_restore_points([(extra.get("outputs"), extra.get("outputs_ahead")) for _, _, _, extra, _ in restored])
        self.outputs.restore([tp for _, partitions, *_ in restored for tp in partitions], since, ahead)
        for name, partitions, resumed, extra, positions in restored:
            self._start_unit(name, partitions, resumed, extra, positions)

    def _start_unit(self, name: str, partitions: list[TopicPartition], resumed, extra: dict, positions: dict[TopicPartition, int]) -> LearningUnit:
        """A restored unit's offset-gap checks, sinks and `LearningUnit`, sought to its `positions`."""
        learner, checkpoint, checkpointer = resumed.learner, resumed.checkpoint, resumed.checkpointer
        if checkpoint is not None:
            recorded_ids = extra.get("topic_ids") or {}
            if self.keyed:  # no broker look-ups inside a rebalance callback: checked after the poll returns
                self._gap_checks.update({tp: recorded_ids for tp in partitions})
            else:
                positions = self._resolve_offset_gaps(positions, recorded_ids)
        sinks = KafkaSinks(self.outputs, self.consumer, name, topic_ids=self.topic_ids, keeper=self.keeper,
                           instance=self.lease.owner if self.lease else None, metrics=self.metrics)
        unit = LearningUnit(
            name, FedSource(self.source), learner.items() if isinstance(learner, ModelSet) else [(self.model_name, learner)], sinks, checkpointer,
            learner=learner, predictions=bool(self.outputs.predictions_topic), retry_failed_checkpoints=True, wait_for_uploads=False, predictions_model=self.config.predictions_model,
            curve=self.curve, curve_unit=None if name == "all" else name, decoder=self.decoder,
        )  # fmt: skip
        self.units[name] = unit
        self._model_progress()  # the restored model's count and metrics, before any new event
        unit.seek(positions)  # the unit's source seeks the consumer
        for tp in partitions:
            self.unit_of[tp] = unit
            self.needs_targets[tp] = time.monotonic()
        if checkpoint is not None:
            self.resumed[name] = Resumed(checkpoint.id, learner.state.events_learned)
        log.info(
            "restored" if checkpoint else "starting fresh",
            extra={"fields": {"unit": name, "checkpoint": checkpoint.id if checkpoint else None, "events_seen": learner.state.events_seen,
                              "events_learned_before": learner.state.events_learned, "positions": {position_key(tp): o for tp, o in positions.items()}}},
        )
        return unit

    def _resolve_offset_gaps(self, positions: dict[TopicPartition, int], recorded_ids: dict[str, str]) -> dict[TopicPartition, int]:
        """Check each checkpointed position against the broker (topic id, log start, end); apply ``kafka.on_offset_gap``."""
        tps = sorted(positions)
        starts = self.consumer.beginning_offsets(tps)
        ends = self.consumer.end_offsets(tps)
        resolved = dict(positions)
        for tp in tps:
            position, start, end = positions[tp], starts.get(tp, 0), ends.get(tp, 0)
            exact = position > end
            if exact:
                end = self._exact_end(tp, end)  # Tansu's ListOffsets may fall short by one batch
            why = offset_gap(position, start, end, recorded_ids.get(tp[0]), self.topic_ids.get(tp[0]))
            if why is None:
                continue
            if not exact:
                end = self._exact_end(tp, end)  # the broker's true range, for the message
            recreated = "recreated (its id" in why
            target = start if recreated or position < start else end
            if self.config.kafka.on_offset_gap == "fail":
                raise DaemonError(
                    f"offset gap on {tp[0]}[{tp[1]}]: the checkpoint resumes at offset {position} but the broker holds [{start}, {end}): "
                    f"{why}; set kafka.on_offset_gap: skip to go on from offset {target}"
                )
            log.warning("offset gap skipped", extra={"fields": {"topic": tp[0], "partition": tp[1], "checkpointed": position, "log_start": start, "log_end": end, "reason": why, "resume_at": target}})
            self.metrics.offset_gaps.labels(tp[0], str(tp[1])).inc()
            if not recreated:
                self.metrics.offsets_skipped.labels(tp[0], str(tp[1])).inc(abs(target - position))
            resolved[tp] = target
            if target < position:  # recreated or truncated: source offsets already written mean other events now
                self.outputs.forget(tp)
        return resolved

    def _check_keyed_gaps(self, batches: list) -> list:
        """Offset-gap checks of keyed units restored during the last poll; batches of a partition moved by `skip` are dropped.

        All partitions restored together are checked in one look-up of log starts and ends (each
        look-up can wait behind a fetch the broker holds at the log end); a partition whose fetch
        high watermark equals its position, on a topic whose id did not change, is at the log's end
        and needs none.
        """
        pending, self._gap_checks = self._gap_checks, {}
        marks = self.consumer.high_watermarks()
        checks: dict[tuple, dict[TopicPartition, int]] = {}  # recorded topic ids -> positions to check against the broker
        for tp, recorded_ids in pending.items():
            unit = self.unit_of.get(tp)
            if unit is None:
                continue
            position, recorded = unit.positions[tp], recorded_ids.get(tp[0])
            if marks.get(tp) == position and (not recorded or recorded == self.topic_ids.get(tp[0])):
                continue
            checks.setdefault(tuple(sorted(recorded_ids.items())), {})[tp] = position
        moved = set()
        for recorded_ids, positions in checks.items():
            for tp, resolved in self._resolve_offset_gaps(positions, dict(recorded_ids)).items():
                if resolved != positions[tp]:
                    self.unit_of[tp].seek({tp: resolved})
                    moved.add(tp)
        return [batch for batch in batches if batch.partition not in moved] if moved else batches

    def _exact_end(self, tp: TopicPartition, listed: int) -> int:
        """The partition's true end: ListOffsets raised to the high watermark of a fetch near it."""
        scanner = make_consumer(self.config.kafka, group=False)
        try:
            scanner.assign([tp])
            scanner.seek(tp, max(0, listed - 1))
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                scanner.poll_batches(0.2, 1)
                mark = scanner.high_watermarks().get(tp)
                if mark is not None:
                    return max(listed, mark)
            return listed
        finally:
            scanner.close()

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        self.joined = True
        self._restore_units([(f"{tp[0]}.{tp[1]}", [tp]) for tp in partitions if tp not in self.unit_of])
        self.metrics.ready = True

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        if self._closing:  # the consumer's close revokes every unit: each was checkpointed at the stop, or an error stopped us and
            return  # the last durable checkpoint stands (the uploader is shut down by then; the rest is read again at the next start)
        for unit in {id(self.unit_of[tp]): self.unit_of[tp] for tp in partitions if tp in self.unit_of}.values():
            unit.drop()  # an incomplete chunk is read again by the next owner, from the checkpoint's positions
            self._checkpoint(unit, wait=True)
            owned = list(unit.positions)
            self.source.forget(owned)
            for tp in owned:
                self.metrics.lag.labels(tp[0], str(tp[1])).set(0)  # its next owner reports it (one /metrics for workers: summed)
                self.unit_of.pop(tp, None)
                self.targets.pop(tp, None)
                self.needs_targets.pop(tp, None)
            self._drop_unit(unit)
        self.metrics.ready = bool(self.units)

    def _check_storage(self) -> None:
        """Before consuming: a checkpoint location that waiting will not heal (permission denied, a
        read-only disk, no such bucket) stops the daemon in one line (exit 1), with or without
        ``--until-caught-up``; one that is only unreachable is left to the usual retries."""
        store = open_checkpoint_store(self.config.checkpoint).store
        probe = f".riverbeam-write-check-{instance_id()}"
        try:
            store.write(probe, b"")
            store.delete(probe)
            if self.keyed:
                check_layout(self.config.checkpoint.uri)  # keyed checkpoints in a layout before units: one line, never a fresh start
        except (PermissionError, StorageUnusable) as error:
            raise DaemonError(f"cannot write checkpoints at {self.config.checkpoint.uri}: {error}") from None
        except StorageError as error:
            log.warning("checkpoint storage unreachable at start; retrying as it goes", extra={"fields": {"error": str(error)}})

    def _wait_for_lease(self) -> bool:
        """Standby until this instance holds the lease (renewed from then on by a `LeaseKeeper`); False if stopped."""
        self.lease = Lease(open_checkpoint_store(self.config.checkpoint).store, instance_id(), ttl=self.lease_seconds)
        try:
            self.keeper = wait_for_lease(self.lease, self.stopping, "this global model")
        except (PermissionError, StorageUnusable) as error:  # permission denied, no such bucket: will not heal; one line, exit 1
            raise DaemonError(f"cannot write the lease at {self.config.checkpoint.uri}: {error}") from None
        return self.keeper is not None

    def _activate_global(self) -> None:
        self._open_clients(transactional=True)  # fences a stale instance's producer before the outputs are scanned
        partitions = [(topic, p) for topic in self.config.kafka.source_topics for p in self.consumer.partitions_for(topic)]
        self.topic_ids = {topic: self.consumer.topic_id(topic) for topic in self.config.kafka.source_topics}  # recorded in each checkpoint
        self.consumer.assign(partitions)
        self._restore_units([("all", partitions)])
        self._check_lease()
        self.metrics.ready = True

    def _check_lease(self) -> None:
        if self.keeper is not None:
            self.keeper.check()  # LeaseLost

    def _back_to_standby(self, error: BaseException) -> None:
        """Lost the lease: drop (never flush) what is not durable, forget the unit, wait as standby again."""
        log.warning("lost the lease on the global model: dropping what was not durable, back to standby", extra={"fields": {"reason": str(error)}})
        self.metrics.lease_lost.inc()
        self.metrics.ready = False
        if self.keeper is not None:
            self.keeper.stop()
            self.keeper = None
        for unit in list(self.units.values()):
            unit.abandon()  # the store fences a stale write itself; never committed (no sinks.commit)
            self._drop_unit(unit)
        if self.outputs is not None:
            self.outputs.drop()
            self.outputs.close()
        self.producer = None
        try:
            self.consumer.assign([])
        except Exception:
            pass
        self.units.clear()
        self.unit_of.clear()
        self.targets.clear()
        self.needs_targets.clear()

    def _run_global(self, started: float) -> None:
        while not self.stopping.is_set():
            if not self._wait_for_lease():
                return
            try:
                self._activate_global()
                self._loop()
                for unit in list(self.units.values()):
                    self._checkpoint(unit, wait=True)
                self._check_lease()
            except (LeaseLost, FencingError, ProducerFencedError) as error:
                self._back_to_standby(error)
                continue
            self.final_summary = self.summary(time.monotonic() - started)
            self.keeper.stop()
            self.keeper = None
            self.lease.release()
            return

    # -- checkpoints ------------------------------------------------------------------------

    def _checkpoint(self, unit: LearningUnit, wait: bool = False) -> None:
        """Checkpoint `unit` in its numbered steps (`LearningUnit.checkpoint`; skipped when nothing is new).

        The scheduler's part: while the unit's previous upload is in flight, wait for it
        (back-pressure) saying so out loud and checking the lease; the upload runs on the uploader
        thread unless `wait`.
        """
        pending = unit.upload_in_flight
        while pending is not None and not concurrent.futures.wait([pending], timeout=1.0).done:  # back-pressure, said out loud
            self._watch_uploads(time.monotonic())
            self._check_lease()
        unit.checkpoint(wait=wait)  # a failed upload is logged and retried; FencingError, LeaseLost, KafkaClientError raise

    def _drop_unit(self, unit: LearningUnit) -> None:
        """Forget `unit` (revoked, or the lease lost), keeping its counts for the summary and the metrics."""
        self._dropped_checkpoints += unit.checkpoints_written
        self._dropped_failures += unit.failed_checkpoints
        self._dropped_units[unit.name] = (self._unit_summary(unit), unit.learner.state.events_learned)  # in the summary still, as it left
        self.units.pop(unit.name, None)
        self._upload_started.pop(unit.name, None)

    @property
    def checkpoints_written(self) -> int:
        return self._dropped_checkpoints + sum(unit.checkpoints_written for unit in self.units.values())

    def _watch_uploads(self, now: float) -> None:
        """While a checkpoint upload keeps retrying (storage slow or down): a log line after 5 s, then every 30 s, and a gauge;
        failed uploads counted (``riverbeam_checkpoint_failures_total``)."""
        failed = self._dropped_failures + sum(unit.failed_checkpoints for unit in self.units.values())
        if failed > self._failures_counted:
            self.metrics.checkpoint_failures.inc(failed - self._failures_counted)
            self._failures_counted = failed
        started = []
        for unit in self.units.values():
            pending = unit.upload_in_flight
            if pending is None:
                continue
            since = self._upload_started.get(unit.name)
            if since is None or since[0] is not pending:  # an upload the unit started since the last look
                since = self._upload_started[unit.name] = (pending, now)
            started.append(since[1])
        if not started:
            self.metrics.storage_retrying.set(0)
            self._pending_logged = 0.0
            return
        waiting = now - min(started)
        self.metrics.storage_retrying.set(waiting)
        if waiting >= 5.0 and now - self._pending_logged >= STORAGE_LOG_EVERY:
            self._pending_logged = now
            log.warning("checkpoint upload still retrying (storage slow or unreachable)", extra={"fields": {"seconds": round(waiting, 1), "uri": self.config.checkpoint.uri}})

    # -- the loop ---------------------------------------------------------------------------

    def _process(self, batch: KafkaBatch) -> None:
        """Hand `batch` to the unit owning its partition and let the unit step (learn, outputs, positions, checkpoint when due)."""
        unit = self.unit_of.get(batch.partition)
        if unit is None:  # fetched before a revoke; the next owner reads it again
            return
        unit.source.push(batch)
        self._count(unit.step())

    def _flush(self) -> None:
        """Learn the incomplete chunk of every unit (mini-batch mode): the stream is stopping or caught up."""
        for unit in self.units.values():
            self._count(unit.flush())

    def _count(self, stepped: Stepped | None) -> None:
        if not stepped or not stepped.consumed:
            return
        count, learned, rejected = stepped
        self.events_consumed += count
        self.events_learned += learned
        self.events_rejected += rejected
        self.metrics.consumed.inc(count)
        self.metrics.learned.inc(learned)
        if rejected:
            self.metrics.dead_lettered.inc(rejected)

    def _caught_up(self) -> bool:
        """Every partition has reached the end offset seen at start (or at its assignment).

        On Tansu, ListOffsets(latest) can fall short by one producer batch; the high watermark of
        the first fetch is exact, so the target is the larger of the two (end offsets alone after
        3 s without a fetch answer for that partition).
        """
        if self.needs_targets:
            marks = self.consumer.high_watermarks()
            now = time.monotonic()
            ready = [tp for tp, since in self.needs_targets.items() if tp in marks or now - since > 3.0]
            if ready:  # a fetch's high watermark is exact: ListOffsets (which waits behind a held fetch) only where none answered
                unanswered = sorted(tp for tp in ready if tp not in marks)
                ends = self.consumer.end_offsets(unanswered) if unanswered else {}
                for tp in ready:
                    self.targets[tp] = max(ends.get(tp, 0), marks.get(tp, 0))
                    del self.needs_targets[tp]
            if self.needs_targets:
                return False
        if not self.units:
            return False
        return all(max(unit.read_positions.get(tp, 0), unit.positions.get(tp, 0)) >= self.targets.get(tp, 0) for tp, unit in self.unit_of.items())

    def _caught_up_here(self) -> bool:
        """`--until-caught-up`: this daemon's partitions (`_caught_up`), or, for a worker, the group's as its supervisor decides."""
        if self.group is None:
            return self._caught_up()
        mine = (self.joined and not self.units) or self._caught_up()  # not joined yet: not caught up
        configured = self.config.kafka.poll_timeout_ms / 1000  # waiting for the supervisor's word, a full poll would hold the finish back
        self.source.poll_timeout = min(GROUP_WAIT_POLL_SECONDS, configured) if mine else configured
        return self.group.caught_up(self, mine)

    def _model_progress(self) -> None:
        """The models' gauges (metrics, drifts, events learned in all) and a learning-curve point of each."""
        for unit in self.units.values():
            for model, learner in unit.models:  # every model of the unit, labelled by its name
                for name, value in learner.metric_values().items():
                    if value is not None:
                        self.metrics.model_metric.labels(unit.name, model, name).set(value)
            if unit.learner.state.drift_detector is not None:
                self.metrics.drifts.labels(unit.name).set(unit.learner.state.drifts_detected)
            unit.record_curve()
        self.metrics.model_events.set(sum(unit.learner.state.events_learned for unit in self.units.values()))

    def _watch_join(self, now: float) -> None:
        """Keyed: a line every `JOIN_LOG_EVERY` s while the consumer group has not given this daemon an assignment.

        A join waits for the group's other members (up to their ``max.poll.interval.ms``); on Tansu
        0.6 a group whose members all just left can hold new members for minutes (README, "Two
        brokers"). Without this line such a wait looks like a daemon that does nothing.
        """
        if not self.keyed or self.joined or now - self._join_logged < JOIN_LOG_EVERY:
            return
        self._join_logged = now
        log.warning("no partitions assigned yet: the consumer group has not answered this daemon's join",
                    extra={"fields": {"group_id": self.config.kafka.group_id, "topics": self.config.kafka.source_topics,
                                     "seconds": round(now - self._subscribed_at)}})

    def _report_progress(self, last: list) -> None:
        now = time.monotonic()
        if now - last[0] < 1.0:
            return
        rate = (self.events_consumed - last[1]) / (now - last[0])
        last[0], last[1] = now, self.events_consumed
        self.metrics.throughput.set(rate)
        marks = self.consumer.high_watermarks()
        for tp, unit in self.unit_of.items():
            if tp in marks:
                self.metrics.lag.labels(tp[0], str(tp[1])).set(max(0, marks[tp] - unit.positions[tp]))
        self._model_progress()
        headline = ""
        if self.units:
            unit = next(iter(self.units.values()))
            name, value = unit.learner.headline()
            headline = f" | {name} {value:.4f}" if isinstance(value, float) else ""
        self.progress.update(f"riverbeam: {self.events_consumed:,} events | {rate:,.0f}/s | learned {self.events_learned:,} | dead-lettered {self.events_rejected:,}{headline}")

    def run(self) -> dict:
        """Consume until stopped (signal, `until_caught_up`, or a fatal error); return a summary."""
        started = time.monotonic()
        port = self.config.metrics.port
        if port is not None:
            self.health = HealthServer(self.metrics, self.config.metrics.host, port, curve=self.curve)
        previous_gc = steady_state_gc()
        try:
            self._check_storage()
            if self.keyed:
                self._open_clients()
                self.topic_ids = {topic: self.consumer.topic_id(topic) for topic in self.config.kafka.source_topics}  # recorded in each checkpoint
                if self.group is not None:
                    self.group.joining(self)  # the workers subscribe together: one group generation at start, no rebalance
                self._subscribed_at = self._join_logged = time.monotonic()  # `_watch_join`
                self.consumer.subscribe(self.config.kafka.source_topics, self._on_assign, self._on_revoke)
                self._loop()
                for unit in list(self.units.values()):
                    self._checkpoint(unit, wait=True)
                summary = self.summary(time.monotonic() - started)  # before close() revokes the units
                if self.group is not None:
                    self.group.leaving(self, summary)  # every worker has committed before any leaves: no rebalance under a final commit
            else:
                self.consumer = make_consumer(self.config.kafka, group=True)  # the producer comes once the lease is held
                self._run_global(started)
                summary = self.final_summary or self.summary(time.monotonic() - started)
        except StorageUnusable as error:  # permission denied, no such bucket: retrying a checkpoint will not heal it
            raise DaemonError(f"cannot write checkpoints at {self.config.checkpoint.uri}: {error}") from None
        finally:
            restore_gc(previous_gc)
            self.progress.close()
            self._close()
        log.info("stopped", extra={"fields": summary})
        return summary

    def _loop(self) -> None:
        progress = [time.monotonic(), 0]
        clock = time.perf_counter
        while not self.stopping.is_set():
            batches = self.source.poll()
            if self._gap_checks:
                batches = self._check_keyed_gaps(batches)
            if batches:
                begin = clock()
                if self.first_event_at is None:
                    self.first_event_at = time.time()
                for batch in batches:
                    self._process(batch)
                self.processing_seconds += clock() - begin
                self.last_event_at = time.time()
            now = time.monotonic()
            for unit in list(self.units.values()):
                unit.collect()  # an upload that finished: its offsets are committed now
                if unit.checkpoint_due:
                    self._checkpoint(unit)
            self._check_lease()
            self._watch_uploads(now)
            self._report_progress(progress)
            self._watch_join(now)
            if self.until_caught_up and self._caught_up_here():
                self._flush()  # mini-batch mode: the last chunk, short
                break

    def _close(self) -> None:
        self._closing = True
        if self.keeper is not None:  # stopped by an error while active: a standby takes over when the lease expires
            self.keeper.stop()
        for closer in (
            lambda: self.uploader.shutdown(wait=True),
            lambda: self.outputs and self.outputs.close(),
            lambda: self.producer and self.producer.close(),
            lambda: self.consumer and self.consumer.close(),
            lambda: self.health and self.health.close(),
        ):
            try:
                closer()
            except Exception as error:  # closing must not hide the real outcome
                log.warning("error while closing", extra={"fields": {"error": str(error)}})

    @staticmethod
    def _unit_summary(unit: LearningUnit) -> dict:
        return {**unit.learner.report(), "positions": {position_key(tp): o for tp, o in unit.positions.items()}}

    def summary(self, seconds: float) -> dict:
        # every unit this instance learned: those it holds, and those revoked since (as they left; a worker's
        # units may be revoked as the group finishes, before its summary is taken)
        held = {name: (self._unit_summary(unit), unit.learner.state.events_learned) for name, unit in self.units.items()}
        every = {**self._dropped_units, **held}
        units = {name: report for name, (report, _) in every.items()}
        return {
            "events_seen": self.events_consumed,
            "events_learned": self.events_learned,
            "events_learned_total": sum(learned for _, learned in every.values()),
            "resumed_from": self._resumed_from(),
            "events_dead_lettered": self.events_rejected,
            "checkpoints_written": self.checkpoints_written,
            "outputs_skipped_as_already_written": self.outputs.skipped if self.outputs else 0,
            "processing_seconds": round(self.processing_seconds, 4),
            "first_event_at": self.first_event_at,
            "first_event_to_last_seconds": round(self.last_event_at - self.first_event_at, 4) if self.first_event_at else None,
            "seconds": round(seconds, 4),
            "events_per_second": round(self.events_consumed / self.processing_seconds) if self.processing_seconds else None,
            "checkpoint_uri": self.config.checkpoint.uri,
            "units": units,
        }

    def _resumed_from(self) -> dict | None:
        """The checkpoint(s) this run continued from, as `core.summary.Resumed` JSON (None: started fresh)."""
        resumed = [self.resumed[name] for name in self.units if name in self.resumed]
        if not resumed:
            return None
        return Resumed(resumed[0].checkpoint, sum(r.events_learned for r in resumed), checkpoints=len(resumed)).to_json()

    def request_stop(self, *_args) -> None:
        """Finish the current batch, write a final checkpoint, commit and return (SIGTERM, SIGINT)."""
        self.stopping.set()


def run_daemon(config: ConsumeJobConfig, until_caught_up: bool = False, progress: bool | None = None, stop: threading.Event | None = None,
               allow_model_change: bool = False) -> dict:
    """Run the daemon in this process with SIGTERM/SIGINT handled gracefully; return its summary.

    `stop` is an event the caller may already have wired to signals (set before the daemon
    starts, it makes the daemon stop right after restoring). `allow_model_change`: a model added
    to (removed from) ``models:`` since the checkpoint starts from scratch (is dropped) instead of
    stopping the daemon (`online.learning.model_set`).
    """
    daemon = Daemon(config, until_caught_up=until_caught_up, progress=progress, allow_model_change=allow_model_change)
    if stop is not None:
        daemon.stopping = stop
    previous = {sig: signal.signal(sig, daemon.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return daemon.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
