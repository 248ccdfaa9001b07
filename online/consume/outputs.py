"""Dead-letter and prediction records, written exactly once across crashes.

Every output record carries its source position in the header ``riverbeam-source``
(``topic/partition/offset``) and is keyed by its source partition, so the outputs of one source
partition stay in order in one output partition. A checkpoint records the output topics' end
offsets after the producer was flushed, and what is already written for events past its
positions (by an instance killed after writing them). On restore, `OutputWriter.restore` starts
from that record, reads the output topics from those offsets to their end and finds, per source
partition, the highest source offset already written; re-processing the events after the
checkpoint then skips emitting up to it. Result: after any crash and restart, each expected
dead-letter and prediction record is in its topic exactly once, and none is missing.

Limits: the guarantee holds for one writer per source partition (the daemon's own fencing and
group protocol give that) and needs the producer's idempotence (on by default) so that retries
do not duplicate or reorder records; records written by anything other than riverbeam into the
output topics are ignored by the scan.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

from online.checkpoints.lease import LeaseKeeper
from online.dead_letters import DEFAULT_MAX_BYTES, DeadLetterRecord
from online.formats_write import OutputEncoders
from online.kafka_clients import EventConsumer, EventProducer, KafkaClientError, TopicPartition
from online.kafka_clients.base import RETRY_SECONDS, retry_call
from online.sources import KafkaBatch, kafka_positions, parse_position_key, position_key

log = logging.getLogger(__name__)
daemon_log = logging.getLogger("riverbeam.daemon")  # the daemon's checkpoint lines, as before the sinks moved here

SOURCE_HEADER = "riverbeam-source"
SCAN_IDLE_SECONDS = 30.0  # the restore scan fails when a partition makes no progress for this long
LOOKUP_SECONDS = 30.0  # how long an output topic's metadata may take to come before a restore or checkpoint fails
ATTEMPT_SECONDS = 10.0  # one end-offset look-up through one scanner client; a failed one is retried through a new client
T = TypeVar("T")


def source_header(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}/{partition}/{offset}".encode()


def parse_source_header(value: bytes) -> tuple[TopicPartition, int] | None:
    """``b"events/0/42"`` → ``(("events", 0), 42)``; None if it is not one of ours.

    >>> parse_source_header(b"events/0/42")
    (('events', 0), 42)
    """
    try:
        topic, partition, offset = value.decode().rsplit("/", 2)
        return (topic, int(partition)), int(offset)
    except (ValueError, UnicodeDecodeError):
        return None


def merge_restore_points(points: list[tuple[dict[str, int] | None, dict[str, dict[str, int]] | None]]) -> tuple[dict[str, int] | None, dict[str, dict[str, int]]]:
    """One restore scan for several units: the earliest output offsets and every written-ahead record of their checkpoints.

    `points` holds each unit's ``(outputs, outputs_ahead)`` as its checkpoint recorded them (None:
    no checkpoint, scan from the start). An output partition is scanned from the lowest offset any
    unit needs (from 0 where one recorded none): a wider scan only finds more of what was written,
    and a record found for a source offset a unit has already passed is never skipped again.

    >>> merge_restore_points([({"out/0": 40, "out/1": 7}, {"out": {"src/0": 12}}), ({"out/0": 25}, {"out": {"src/1": 3}})])
    ({'out/0': 25}, {'out': {'src/0': 12, 'src/1': 3}})
    >>> merge_restore_points([({"out/0": 40}, None), (None, None)])
    (None, {})
    """
    recorded = [since for since, _ in points]
    if not recorded or any(since is None for since in recorded):
        since = None
    else:
        keys = set.intersection(*(set(s) for s in recorded))
        since = {key: min(s[key] for s in recorded) for key in sorted(keys)}
    ahead: dict[str, dict[str, int]] = {}
    for _, unit_ahead in points:
        for topic, sources in (unit_ahead or {}).items():
            ahead.setdefault(topic, {}).update(sources)
    return since, ahead


class OutputWriter:
    """Writes dead letters and predictions for the daemon, skipping what an earlier run already wrote.

    `encoders` encode their values (``kafka.predictions_format``, ``kafka.dead_letter_format``:
    `online.formats_write.output_encoders`); JSON by default.
    """

    def __init__(self, producer: EventProducer | None, dead_letter_topic: str | None, predictions_topic: str | None, scanner: Callable[[], EventConsumer],
                 encoders: OutputEncoders | None = None):  # fmt: skip
        self.producer = producer
        self.encoders = encoders or OutputEncoders()
        self.dead_letter_topic = dead_letter_topic
        self.predictions_topic = predictions_topic
        self.topics = [t for t in (dead_letter_topic, predictions_topic) if t]
        self._scanner_factory = scanner
        self._scanner: EventConsumer | None = None
        self.written_through: dict[tuple[str, TopicPartition], int] = {}  # (output topic, source tp) -> source offset
        self.skipped = 0
        self._partitions_of: dict[str, list[TopicPartition]] = {}  # output topics known to exist
        self._sent: set[str] = set()  # output topics written by this process

    @property
    def scanner(self) -> EventConsumer:
        if self._scanner is None:
            self._scanner = self._scanner_factory()
        return self._scanner

    # -- writing ----------------------------------------------------------------------------

    def _already_written(self, topic: str, tp: TopicPartition, offset: int) -> bool:
        through = self.written_through.get((topic, tp))
        if through is not None and offset <= through:
            self.skipped += 1
            return True
        return False

    def dead_letter(self, tp: TopicPartition, offset: int, value: bytes | None, reason: str) -> None:
        if self.dead_letter_topic is None:
            log.warning("rejected event (no dead_letter_topic set)", extra={"fields": {"topic": tp[0], "partition": tp[1], "offset": offset, "reason": reason}})
            return
        if self._already_written(self.dead_letter_topic, tp, offset):
            return
        self._sent.add(self.dead_letter_topic)
        limit = getattr(self.producer, "max_record_bytes", DEFAULT_MAX_BYTES)
        self.producer.send(
            self.dead_letter_topic, self.encoders.dead_letter(DeadLetterRecord.from_kafka(tp, offset, value, reason), self.dead_letter_topic, limit),
            key=position_key(tp).encode(), headers=[(SOURCE_HEADER, source_header(tp[0], tp[1], offset))],
        )  # fmt: skip

    def predictions(self, tp: TopicPartition, offsets: list[int], outcomes: list) -> None:
        """Write one prediction record per ``(index, Prediction)`` in `outcomes`; `offsets[index]` is its source offset."""
        topic = self.predictions_topic
        if topic is None:
            return
        key = position_key(tp).encode()
        send = self.producer.send
        encode = self.encoders.prediction
        through = self.written_through.get((topic, tp), -1)
        self._sent.add(topic)
        for index, outcome in outcomes:
            offset = offsets[index]
            if offset <= through:
                self.skipped += 1
                continue
            record = outcome.record(topic=tp[0], partition=tp[1], offset=offset)  # online.learning.learner.Prediction.record
            send(topic, encode(record, topic), key=key, headers=[(SOURCE_HEADER, source_header(tp[0], tp[1], offset))])

    def flush(self) -> None:
        """Make every record sent so far durable (a transactional producer commits), or raise `KafkaClientError`.

        `online.kafka_clients.ProducerFencedError` means a newer instance took over: call `drop`.
        """
        if self.producer is not None:
            self.producer.commit_transaction()

    def drop(self) -> None:
        """Discard what was sent but is not durable yet (a fenced instance): never flush it."""
        if self.producer is not None:
            self.producer.drop()
            self.producer = None

    # -- exactly-once bookkeeping -----------------------------------------------------------

    def _partitions(self, topic: str) -> list[TopicPartition]:
        """The topic's partitions, cached once known; [] when the broker says it does not exist.

        A broker that does not answer raises `KafkaClientError`: taken for a missing topic, it
        made a restore skip an output topic (or a checkpoint leave it out), and what was already
        written there was written again.
        """
        known = self._partitions_of.get(topic)
        if known:
            return known
        known = [(topic, p) for p in self.scanner.partitions_if_exists(topic, timeout_s=LOOKUP_SECONDS)]
        self._partitions_of[topic] = known
        return known

    def end_offsets(self) -> dict[str, int]:
        """``{"topic/partition": end offset}`` of the output topics (recorded in each checkpoint).

        Each attempt asks one scanner client for at most `ATTEMPT_SECONDS`; a failed attempt is
        retried through a new client (`_with_fresh_scanner`), for up to `RETRY_SECONDS` in all.
        """
        tps = [tp for topic in self.topics if topic in self._sent or self._partitions_of.get(topic) for tp in self._partitions(topic)]
        if not tps:
            return {}
        ends = self._with_fresh_scanner(f"end offsets of the output topics {sorted(tps)}", lambda scanner, seconds: scanner.end_offsets(tps, timeout_s=seconds))
        return {position_key(tp): offset for tp, offset in ends.items()}

    def _with_fresh_scanner(self, what: str, look_up: Callable[[EventConsumer, float], T], seconds: float = RETRY_SECONDS) -> T:
        """``look_up(scanner, attempt_seconds)``, retried (`retry_call`) for up to `seconds`, each retry through a new scanner.

        A client's cached metadata can go on naming a partition's old leader after a broker
        fault: confluent-kafka's scanner, which holds no assignment, kept asking from it
        (``Broker handle destroyed``, then ``Unknown partition``) until the 60 s bound ran out and
        the daemon stopped. A new client reads the cluster's metadata afresh. Still failing after
        `seconds`: one `KafkaClientError`, never a made-up answer.
        """
        deadline = time.monotonic() + seconds

        def attempt() -> T:
            try:
                return look_up(self.scanner, max(0.1, min(ATTEMPT_SECONDS, deadline - time.monotonic())))
            except KafkaClientError:
                self._drop_scanner()  # its cached metadata may be what fails
                raise

        return retry_call(attempt, f"{what} (each retry through a new scanner client)", seconds=seconds, first_backoff=0.25)

    def _drop_scanner(self) -> None:
        """Close the scanner (a failure to close is only logged: it is replaced anyway)."""
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            try:
                scanner.close()
            except KafkaClientError as error:
                log.warning("closing the output scanner: %s", error)

    def written_ahead(self, positions: dict[TopicPartition, int]) -> dict[str, dict[str, int]]:
        """What this writer still skips at `positions`, for a checkpoint taken there to record.

        ``{output topic: {"topic/partition": source offset}}``: for each source partition, the
        highest source offset already written whose event lies at or past its position. Those
        records were written by an earlier, killed instance before this checkpoint's output end
        offsets, where a restore's scan does not look: without this record a second restart
        wrote them again.

        >>> writer = OutputWriter(None, "dlq", None, scanner=lambda: None)
        >>> writer.written_through = {("dlq", ("events", 0)): 6709, ("dlq", ("events", 1)): 90}
        >>> writer.written_ahead({("events", 0): 6000, ("events", 1): 100})
        {'dlq': {'events/0': 6709}}
        """
        ahead: dict[str, dict[str, int]] = {}
        for (topic, tp), offset in self.written_through.items():
            if tp in positions and offset >= positions[tp]:
                ahead.setdefault(topic, {})[position_key(tp)] = offset
        return ahead

    def forget(self, tp: TopicPartition) -> None:
        """Skip nothing for source partition `tp` any more (its topic was recreated: old offsets mean nothing)."""
        for key in [k for k in self.written_through if k[1] == tp]:
            del self.written_through[key]

    def restore(self, sources: list[TopicPartition], since: dict[str, int] | None, ahead: dict[str, dict[str, int]] | None = None) -> None:
        """Find what was already written for `sources`: what the checkpoint recorded as written
        `ahead` of its positions (`written_ahead`), and what the output topics hold from the
        output offsets `since` (None: from the start) to their end, all output topics in one scan."""
        since = since or {}
        wanted = set(sources)
        for key in [k for k in self.written_through if k[1] in wanted]:
            del self.written_through[key]
        tps: list[TopicPartition] = []
        for topic in self.topics:
            partitions = self._partitions(topic)  # or KafkaClientError: an output topic is never skipped for want of an answer
            if not partitions:
                if any(parse_position_key(key)[0] == topic for key in since):
                    log.warning("an output topic the checkpoint recorded does not exist any more: nothing written there can be written twice", extra={"fields": {"topic": topic}})
                continue  # and nothing recorded as written ahead there is skipped: it is gone
            tps.extend(partitions)
            for source, offset in (ahead or {}).get(topic, {}).items():
                if parse_position_key(source) in wanted:
                    self.written_through[(topic, parse_position_key(source))] = offset
        if tps and wanted:
            try:
                found = self._scan(tps, {tp: since.get(position_key(tp), 0) for tp in tps}, wanted)
            finally:
                self.close()  # a fresh scanner next time: a client's cached high watermarks would be stale
            for key, offset in found.items():
                self.written_through[key] = max(offset, self.written_through.get(key, -1))
        if self.written_through:
            log.info("outputs already written before the restart will be skipped", extra={"fields": {"through": {f"{o}:{position_key(tp)}": v for (o, tp), v in self.written_through.items()}}})

    def _scan(self, tps: list[TopicPartition], start: dict[TopicPartition, int], wanted: set[TopicPartition]) -> dict[tuple[str, TopicPartition], int]:
        """``{(output topic, source partition): highest source offset}`` of `wanted` in the records of `tps` from `start` to their end.

        Every partition is read to the high watermark its fetch responses carry (exact, and past
        a transaction still open), never to a ListOffsets answer. Tansu-specific, correct on both
        brokers: the scanner reads read_committed, so ListOffsets answers the last stable offset,
        which Tansu reports as 0 while a transaction is open in the partition; and Tansu keeps a
        killed instance's transaction open until its successor starts, then commits it. A
        partition holding such a dangling transaction looked empty, was not read, and its records
        were written again once the transaction was resolved (a dead letter twice, 1 run in 5).
        On Apache Kafka the successor's producer (opened before the restore) has aborted that
        transaction already, so the last stable offset is the high watermark and the aborted
        records are invisible and written again, once (tests/online/test_apache_kafka.py). Raises
        `KafkaClientError` when a partition makes no progress for `SCAN_IDLE_SECONDS`.
        """
        scanner = self.scanner
        scanner.assign(sorted(tps))
        for tp in tps:
            scanner.seek(tp, start[tp])
        found: dict[tuple[str, TopicPartition], int] = {}
        position = dict(start)
        remaining = set(tps)
        marks: dict[TopicPartition, int] = {}
        idle_deadline = time.monotonic() + SCAN_IDLE_SECONDS
        while remaining and time.monotonic() < idle_deadline:
            batches = scanner.poll_batches(0.5, 5000)
            for batch in batches:
                idle_deadline = time.monotonic() + SCAN_IDLE_SECONDS
                output_topic = batch.partition[0]
                for record in batch.records:
                    for name, value in record.headers:
                        if name == SOURCE_HEADER:
                            parsed = parse_source_header(value)
                            if parsed is not None and parsed[0] in wanted and parsed[1] > found.get((output_topic, parsed[0]), -1):
                                found[(output_topic, parsed[0])] = parsed[1]
                position[batch.partition] = max(position[batch.partition], batch.next_offset)
            for tp in remaining:  # past transaction markers, which take offsets but hold no record
                at = scanner.position(tp)
                if at is not None and at > position[tp]:
                    position[tp] = at
                    idle_deadline = time.monotonic() + SCAN_IDLE_SECONDS
            marks = scanner.high_watermarks()  # every fetch answer carries one, for an empty partition too (~0.6 s)
            remaining = {tp for tp in remaining if tp not in marks or position[tp] < marks[tp]}
        if remaining:
            raise KafkaClientError(f"could not read the output topics to their end ({sorted(remaining)}); refusing to risk duplicate outputs")
        return found

    def close(self) -> None:
        if self._scanner is not None:
            self._scanner.close()
            self._scanner = None


class KafkaSinks:
    """A daemon learning unit's sinks (`online.learning.unit.Sinks`): its dead letters and
    predictions through the daemon's `OutputWriter`, flushed before each checkpoint, and the
    consumer's offsets committed once the checkpoint is durable (for lag monitoring: the
    checkpoint's positions are the truth).

    `flush` checks the global model's lease (`keeper`) before and after the producer commits, so
    an instance that lost it raises `online.checkpoints.lease.LeaseLost` instead of checkpointing;
    it returns what the manifest records about the Kafka side: the output topics' end offsets,
    what is written ahead of the positions (`OutputWriter.written_ahead`), the instance and the
    source topics' ids. `metrics` (`online.observability.DaemonMetrics`) times each durable checkpoint.
    """

    def __init__(self, writer: OutputWriter, consumer: EventConsumer, unit: str, *, topic_ids: dict[str, str | None],
                 keeper: LeaseKeeper | None = None, instance: str | None = None, metrics=None):
        self.writer = writer
        self.consumer = consumer
        self.unit = unit
        self.topic_ids = topic_ids
        self.keeper = keeper
        self.instance = instance
        self.metrics = metrics

    def dead_letter(self, batch: KafkaBatch, index: int, reason: str, model: str | None = None) -> None:
        self.writer.dead_letter(batch.partition, batch.offsets[index], batch.values[index], reason)

    def predictions(self, batch: KafkaBatch, outcomes: list) -> None:
        self.writer.predictions(batch.partition, batch.offsets, outcomes)

    def flush(self, positions: dict[TopicPartition, int]) -> dict:
        """Commit what was sent (a transactional producer's transaction); the manifest's Kafka fields at `positions`."""
        if self.keeper is not None:
            self.keeper.check()
        self.writer.flush()  # ProducerFencedError if another instance took over
        if self.keeper is not None:
            self.keeper.check()
        return {
            "outputs": self.writer.end_offsets() if self.writer.topics else {},
            "outputs_ahead": self.writer.written_ahead(positions),
            "instance": self.instance,
            "topic_ids": dict(self.topic_ids),
        }

    def commit(self, durable) -> None:
        """A checkpoint is durable: only now commit its source offsets."""
        if self.metrics is not None:
            self.metrics.checkpoint_done(durable.seconds)
        try:
            self.consumer.commit(kafka_positions(durable.positions))
        except KafkaClientError as error:  # the checkpoint is the truth; a failed commit only delays lag figures
            daemon_log.warning("commit after checkpoint failed", extra={"fields": {"error": str(error)}})
        manifest = durable.manifest
        daemon_log.info("checkpoint", extra={"fields": {"unit": self.unit, "id": manifest["id"], "events_seen": manifest["events_seen"], "seconds": round(durable.seconds, 4)}})
