"""The confluent-kafka (librdkafka, extra ``fast``) implementation of `EventConsumer` and `EventProducer`.

Messages come from ``Consumer.consume`` in bulk and are grouped into per-partition runs with
`itertools.groupby`; a `Record` is only built if the caller reads ``batch.records``.
librdkafka runs rebalance callbacks on the thread calling ``consume``: a `seek` inside
``on_assign`` is applied by assigning the partitions at that offset, a `commit` inside
``on_revoke`` is an ordinary synchronous commit.

The producer asks librdkafka for delivery reports of failed records only, so a healthy
stream costs no Python call per record; `flush` raises if any record failed.
"""

from __future__ import annotations

import logging
import re
from itertools import groupby
from typing import Any, Callable

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as ConfluentTopicPartition

from online.kafka_clients.base import (
    RETRY_SECONDS,
    Batch,
    ConsumerState,
    KafkaClientError,
    PartitionsCallback,
    ProducerFencedError,
    Record,
    RecordSequence,
    TopicPartition,
    check_options,
    retry_call,
)
from core.errors import ConfigError

log = logging.getLogger(__name__)
# librdkafka's own log lines ("Connect to ... failed") go through Python logging, so the daemon's
# JSON log stays one format; they are handed over when the client is polled, never written raw.
librdkafka_log = logging.getLogger(f"{__name__}.librdkafka")

CLIENT = "confluent-kafka"
CONSUMER_MANAGED = {
    "bootstrap.servers": "set kafka.bootstrap_servers instead",
    "group.id": "set kafka.group_id instead",
    "enable.auto.commit": "riverbeam commits offsets itself, after each durable checkpoint: auto commit is always off",
    "on_commit": "riverbeam commits synchronously",
}
CONSUMER_DEFAULTS = {"auto.offset.reset": "earliest"}
PRODUCER_MANAGED = {
    "bootstrap.servers": "set kafka.bootstrap_servers instead",
    "acks": "riverbeam always produces with acks=all",
    "request.required.acks": "riverbeam always produces with acks=all",
    "enable.idempotence": "riverbeam always produces idempotently",
    "transactional.id": "riverbeam sets it for a global model's outputs (fencing a stale instance)",
    "delivery.report.only.error": "riverbeam checks every delivery itself",
    "on_delivery": "riverbeam checks every delivery itself",
    "error_cb": "riverbeam reports client errors itself",
}
LOOKUP_TIMEOUT_S = 30.0
# Consumer errors that the client will not recover from by itself: they fail the poll.
# Everything else librdkafka reports (a broker connection dropped, a leader moving) it retries.
_FATAL_CONSUMER_ERRORS = frozenset({
    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION,
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED,
})  # fmt: skip
_PROPERTY = re.compile(r'property:? "([^"]+)"|`([^`]+)`')


def _topic_partition(message) -> TopicPartition:
    return (message.topic(), message.partition())


def _error_of(message):
    return message.error()


def _ctp(tp: TopicPartition, offset: int = OFFSET_INVALID) -> ConfluentTopicPartition:
    return ConfluentTopicPartition(tp[0], tp[1], offset)


def build_client(kind: Callable, options: dict[str, Any], user_options: dict[str, Any], section: str):
    """Construct a librdkafka client, turning a rejected property into a `ConfigError` naming it.

    librdkafka checks names and values at construction ("No such configuration property").
    """
    try:
        return kind({"logger": librdkafka_log, **options})
    except KafkaException as error:
        text = error.args[0].str() if error.args and isinstance(error.args[0], KafkaError) else str(error)
        names = [a or b for a, b in _PROPERTY.findall(text)]
        key = next((name for name in names if name in user_options), None)
        if key is None:
            raise ConfigError(f"kafka.{section}", f"confluent-kafka rejects the options: {text}") from None
        if "No such configuration property" in text:
            hint = f" (librdkafka names use dots: {key.replace('_', '.')}?)" if "_" in key and "." not in key else ""
            raise ConfigError(f"kafka.{section}.{key}", f"unknown option for confluent-kafka{hint}") from None
        raise ConfigError(f"kafka.{section}.{key}", f"confluent-kafka rejects it: {text}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"kafka.{section}", f"confluent-kafka rejects the options: {error}") from None


class ConfluentRecords(RecordSequence):
    """Records of one partition held as confluent-kafka ``Message`` objects."""

    __slots__ = ()

    def _build(self) -> list[Record]:
        records = []
        for m in self._native:
            headers = m.headers()
            records.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1], tuple(headers) if headers else ()))
        return records

    def values(self) -> list[bytes | None]:
        return [m.value() for m in self._native]

    def offsets(self) -> list[int]:
        return [m.offset() for m in self._native]

    def first_offset(self) -> int:
        return self._native[0].offset()

    def last_offset(self) -> int:
        return self._native[-1].offset()


class ConfluentConsumer(ConsumerState):
    """`EventConsumer` over ``confluent_kafka.Consumer``; `options` are librdkafka properties."""

    client_name = CLIENT

    def __init__(self, options: dict[str, Any], group: bool = True, user_options: dict[str, Any] | None = None):
        super().__init__(group)
        self._pending_seek: dict[TopicPartition, int] = {}
        self._cooperative = "cooperative" in str(options.get("partition.assignment.strategy", ""))
        self._bootstrap = options.get("bootstrap.servers")
        self._consumer = build_client(Consumer, options, user_options or {}, "consumer")

    # -- group membership ------------------------------------------------------------------
    def subscribe(self, topics: list[str], on_assign: PartitionsCallback, on_revoke: PartitionsCallback) -> None:
        self._require_group("subscribe")
        self._on_assign, self._on_revoke = on_assign, on_revoke
        try:
            self._consumer.subscribe(list(topics), on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost)
        except KafkaException as error:
            raise KafkaClientError(f"confluent-kafka: subscribe failed: {error}") from None

    def _assigned(self, consumer, partitions) -> None:
        self._pending_seek = {}
        self._run_callback(self._on_assign, [(p.topic, p.partition) for p in partitions])
        seeks, self._pending_seek = self._pending_seek, {}
        positioned = [ConfluentTopicPartition(p.topic, p.partition, seeks.get((p.topic, p.partition), OFFSET_INVALID)) for p in partitions]
        if self._cooperative:
            consumer.incremental_assign(positioned)
        else:
            consumer.assign(positioned)

    def _revoked(self, consumer, partitions) -> None:
        self._run_callback(self._on_revoke, [(p.topic, p.partition) for p in partitions], revoking=True)

    def _lost(self, consumer, partitions) -> None:
        self._losing = True
        try:
            self._run_callback(self._on_revoke, [(p.topic, p.partition) for p in partitions], revoking=True)
        finally:
            self._losing = False

    def assign(self, partitions: list[TopicPartition]) -> None:
        self._consumer.assign([_ctp(tp) for tp in partitions])

    def assignment(self) -> list[TopicPartition]:
        return sorted((p.topic, p.partition) for p in self._consumer.assignment())

    # -- reading ----------------------------------------------------------------------------
    def _partitions_once(self, topic: str, timeout_s: float) -> list[int] | None:
        try:
            found = self._consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except KafkaException:
            return None  # no answer in time
        if found is None or (found.error is not None and found.error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC)):
            return []  # the broker answered: no such topic
        return list(found.partitions) if found.error is None else None

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self._in_callback:
            self._pending_seek[tp] = offset  # applied by the assignment that follows the callback
            return
        try:
            self._consumer.seek(_ctp(tp, offset))
            return
        except KafkaException as error:
            if error.args[0].code() not in (KafkaError._STATE, KafkaError._OUTDATED):
                raise KafkaClientError(f"confluent-kafka: cannot seek {tp[0]}[{tp[1]}] to {offset}: {error}") from None
        # librdkafka refuses to seek a partition still looking up its start offset (just assigned),
        # or drops the seek as outdated when the assignment's own fetch start overtakes it (seen
        # under load): re-assign that one partition at the offset instead.
        try:
            self._consumer.incremental_unassign([_ctp(tp)])
            self._consumer.incremental_assign([_ctp(tp, offset)])
        except KafkaException as error:
            raise KafkaClientError(f"confluent-kafka: cannot seek {tp[0]}[{tp[1]}] to {offset}: {error}") from None

    def poll_batches(self, timeout_s: float, max_records: int) -> list[Batch]:
        self._require_outside_callback("poll_batches")
        try:
            messages = self._consumer.consume(num_messages=max_records, timeout=timeout_s)
        except Exception as error:
            self._raise_callback_error()
            if isinstance(error, KafkaException):
                raise KafkaClientError(f"confluent-kafka: poll failed: {error}") from None
            raise
        self._raise_callback_error()
        if not messages:
            return []
        if any(map(_error_of, messages)):
            messages = self._without_errors(messages)
            if not messages:
                return []
        first, last = messages[0], messages[-1]
        if first.partition() == last.partition() and len(self._consumer.assignment()) == 1:
            return [Batch((first.topic(), first.partition()), ConfluentRecords(messages))]  # one partition held: no grouping
        return [Batch(tp, ConfluentRecords(list(run))) for tp, run in groupby(messages, _topic_partition)]

    @staticmethod
    def _without_errors(messages: list) -> list:
        kept = []
        for message in messages:
            error = message.error()
            if error is None:
                kept.append(message)
            elif error.fatal() or error.code() in _FATAL_CONSUMER_ERRORS:
                raise KafkaClientError(f"confluent-kafka: {error.str()}")
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("confluent-kafka consumer: %s (retrying)", error.str())
        return kept

    def position(self, tp: TopicPartition) -> int | None:
        try:
            (found,) = self._consumer.position([_ctp(tp)])
        except (KafkaException, ValueError):
            return None
        return found.offset if found.offset >= 0 else None

    def high_watermarks(self) -> dict[TopicPartition, int]:
        marks = {}
        for p in self._consumer.assignment():
            _, high = self._consumer.get_watermark_offsets(p, cached=True) or (None, -1)
            if high is not None and high >= 0:
                marks[(p.topic, p.partition)] = high
        return marks

    def end_offsets(self, tps: list[TopicPartition], timeout_s: float = RETRY_SECONDS) -> dict[TopicPartition, int]:
        """ListOffsets(latest), raised to the fetch high watermark where one was seen; each
        partition's look-up retried for up to `timeout_s`.

        On Tansu, ListOffsets may fall short by up to one producer batch; a fetch high
        watermark is exact. Before the first fetch of a partition only ListOffsets is known.
        """
        self._require_outside_callback("end_offsets")
        marks = self.high_watermarks()
        ends = {}
        for tp in tps:
            _, high = self._watermarks(tp, "end offset", timeout_s)
            ends[tuple(tp)] = max(high, marks.get(tuple(tp), high))
        return ends

    def _watermarks(self, tp: TopicPartition, what: str, timeout_s: float = RETRY_SECONDS) -> tuple[int, int]:
        def look_up():
            low, high = self._consumer.get_watermark_offsets(_ctp(tp), timeout=max(0.1, min(timeout_s, LOOKUP_TIMEOUT_S / 3)), cached=False)
            if low is None or high is None or high < 0:
                raise KafkaClientError(f"no {what} answered")
            return low, high

        return retry_call(look_up, f"confluent-kafka: {what} of {tp[0]}[{tp[1]}]", seconds=timeout_s, permanent=())

    def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The log start offset of each partition, retried like `end_offsets`."""
        self._require_outside_callback("beginning_offsets")
        return {tuple(tp): self._watermarks(tp, "log start offset")[0] for tp in tps}

    def topic_id(self, topic: str) -> str | None:
        """The topic's id as a UUID string (a recreated topic gets a new one), or None if the broker has none."""
        import uuid

        from confluent_kafka import TopicCollection
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self._bootstrap, "logger": librdkafka_log})

        def describe():
            return admin.describe_topics(TopicCollection([topic]))[topic].result(timeout=LOOKUP_TIMEOUT_S / 3)

        found = retry_call(describe, f"confluent-kafka: describing topic {topic}")
        topic_id = getattr(found, "topic_id", None)
        if topic_id is None:
            return None
        bits = (topic_id.get_most_significant_bits() << 64) | (topic_id.get_least_significant_bits() & (2**64 - 1))
        return str(uuid.UUID(int=bits & (2**128 - 1))) if bits else None

    # -- commits ----------------------------------------------------------------------------
    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not self._may_commit(offsets):
            return
        def commit():
            try:
                return self._consumer.commit(offsets=[_ctp(tp, offset) for tp, offset in offsets.items()], asynchronous=False)
            except KafkaException as error:
                if error.args and isinstance(error.args[0], KafkaError) and error.args[0].retriable():
                    raise
                raise KafkaClientError(f"confluent-kafka: commit failed: {error}") from None

        results = retry_call(commit, "confluent-kafka: commit", seconds=10, permanent=(KafkaClientError,))
        failed = [p for p in results or [] if p.error is not None]
        if failed:
            raise KafkaClientError(f"confluent-kafka: commit failed for {failed[0].topic}[{failed[0].partition}]: {failed[0].error}")

    def committed(self, tp: TopicPartition) -> int | None:
        self._require_group("committed")
        self._require_outside_callback("committed")
        (result,) = retry_call(lambda: self._consumer.committed([_ctp(tp)], timeout=LOOKUP_TIMEOUT_S / 3), f"confluent-kafka: committed offset of {tp[0]}[{tp[1]}]")
        if result.error is not None:
            raise KafkaClientError(f"confluent-kafka: reading the committed offset failed: {result.error}")
        return result.offset if result.offset >= 0 else None

    def close(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as error:
            self._raise_callback_error()
            raise KafkaClientError(f"confluent-kafka: close failed: {error}") from None
        self._raise_callback_error()


class ConfluentProducer:
    """`EventProducer` over ``confluent_kafka.Producer``; `options` are librdkafka properties.

    With ``transactional.id`` in `options` the producer fences any older producer of that id
    (``init_transactions``) and keeps a transaction open between `commit_transaction` calls.
    """

    def __init__(self, options: dict[str, Any], user_options: dict[str, Any] | None = None):
        self._failures: list[KafkaError] = []
        self.max_record_bytes = int(options.get("message.max.bytes", 1_000_000)) - 16_384
        self.transactional = bool(options.get("transactional.id"))
        options = {**options, "delivery.report.only.error": True, "on_delivery": self._delivered, "error_cb": self._client_error}
        self._producer = build_client(Producer, options, user_options or {}, "producer")
        if self.transactional:
            self._transaction_call(lambda: self._producer.init_transactions(LOOKUP_TIMEOUT_S), "init_transactions")
            self._transaction_call(self._producer.begin_transaction, "begin_transaction")

    @staticmethod
    def _fenced(error: KafkaError | None) -> bool:
        return error is not None and error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)

    def _transaction_call(self, call, what: str):
        try:
            return call()
        except KafkaException as exception:
            error = exception.args[0] if exception.args and isinstance(exception.args[0], KafkaError) else None
            if self._fenced(error) or (error is not None and error.fatal()):
                raise ProducerFencedError(f"confluent-kafka: producer fenced by a newer instance ({what}): {error.str()}") from None
            raise KafkaClientError(f"confluent-kafka: {what} failed: {error.str() if error else exception}") from None

    def _delivered(self, error, message) -> None:
        if error is not None:
            self._failures.append(error)

    def _client_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._failures.append(error)
        else:
            log.warning("confluent-kafka producer: %s", error.str())

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> None:
        extra = {} if partition is None else {"partition": partition}
        if headers:
            extra["headers"] = headers
        while True:
            try:
                self._producer.produce(topic, value, key, **extra)
                return
            except BufferError:  # the local queue is full: serve delivery reports, then retry
                self._producer.poll(0.05)
            except KafkaException as error:
                cause = error.args[0] if error.args and isinstance(error.args[0], KafkaError) else None
                # once fenced, librdkafka refuses every send with a bare "Local: Fatal error": as in flush,
                # a transactional producer in a fatal state is treated as fenced (back to standby)
                if self._fenced(cause) or (self.transactional and cause is not None and (cause.fatal() or cause.code() == KafkaError._FATAL)):
                    raise ProducerFencedError(f"confluent-kafka: producer fenced by a newer instance: {cause.str()}") from None
                raise KafkaClientError(f"confluent-kafka: cannot send to {topic}: {error.args[0].str() if error.args else error}") from None

    def flush(self, timeout_s: float = 30) -> None:
        try:
            remaining = self._producer.flush(timeout_s)
        except (KafkaException, SystemError) as error:  # a fatal error surfaces here (SystemError: raised inside a callback)
            failures, self._failures = self._failures, []
            causes = [error, error.__cause__, error.__context__]
            codes = [c.args[0] for c in causes if isinstance(c, KafkaException) and c.args and isinstance(c.args[0], KafkaError)]
            if self.transactional or any(self._fenced(f) or f.fatal() for f in failures + codes):
                # librdkafka's fatal fencing error reaches Python inconsistently (SystemError, NULL result):
                # a transactional producer that fails to flush is unusable, treated as fenced (back to standby).
                raise ProducerFencedError(f"confluent-kafka: producer fenced by a newer instance: {error}") from None
            raise KafkaClientError(f"confluent-kafka: flush failed: {error}") from None
        failures, self._failures = self._failures, []
        if any(self._fenced(f) or f.fatal() for f in failures):
            raise ProducerFencedError(f"confluent-kafka: producer fenced by a newer instance; its records were refused: {failures[0].str()}")
        if failures:
            raise KafkaClientError(f"confluent-kafka: {len(failures)} record(s) failed delivery; first: {failures[0].str()}")
        if remaining:
            raise KafkaClientError(f"confluent-kafka: {remaining} record(s) not delivered within {timeout_s:g} s")

    def commit_transaction(self) -> None:
        self.flush()
        if self.transactional:
            self._transaction_call(lambda: self._producer.commit_transaction(LOOKUP_TIMEOUT_S), "commit_transaction")
            self._transaction_call(self._producer.begin_transaction, "begin_transaction")

    def drop(self) -> None:
        try:
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            self._producer.flush(0)
        except (KafkaException, RuntimeError) as error:  # dropping must not fail
            log.warning("confluent-kafka: dropping the producer's records: %s", error)

    def close(self) -> None:
        try:
            self.commit_transaction()
        finally:
            self._producer.close() if hasattr(self._producer, "close") else None


def make_consumer(config, group: bool = True) -> ConfluentConsumer:
    """A consumer for `config` (an `online.config.KafkaConfig`); `config.consumer` holds librdkafka properties."""
    user = dict(config.consumer)
    check_options(user, known=None, managed=CONSUMER_MANAGED, section="consumer", client=CLIENT)
    options = {
        **CONSUMER_DEFAULTS,
        **user,
        "bootstrap.servers": config.bootstrap_servers,
        "group.id": config.group_id,  # librdkafka wants one even without group membership
        "enable.auto.commit": False,
    }
    return ConfluentConsumer(options, group, user)


def make_producer(config, transactional_id: str | None = None, transaction_timeout_s: float = 60) -> ConfluentProducer:
    """A producer for `config`; `config.producer` holds librdkafka properties (acks=all, idempotent).

    With `transactional_id`, older producers of that id are fenced (see `ConfluentProducer`).
    """
    user = dict(config.producer)
    check_options(user, known=None, managed=PRODUCER_MANAGED, section="producer", client=CLIENT)
    options = {**user, "bootstrap.servers": config.bootstrap_servers, "acks": "all", "enable.idempotence": True}
    if transactional_id:
        options.update({"transactional.id": transactional_id, "transaction.timeout.ms": int(transaction_timeout_s * 1000)})
    return ConfluentProducer(options, user)
