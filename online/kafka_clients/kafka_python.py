"""The kafka-python (pure Python, the default) implementation of `EventConsumer` and `EventProducer`.

kafka-python 3 runs rebalance listeners on its IO thread and refuses blocking calls there
(a commit, an offset look-up). The listener below is asynchronous: it runs the caller's
callback on a short-lived worker thread and awaits it, so the IO loop stays free and a
synchronous `commit` inside ``on_revoke`` goes out and is confirmed before the partitions are
given up, exactly as with confluent-kafka. The thread that called `poll_batches` (or `close`)
is blocked meanwhile, so the callback never races the caller's own code.

Record parsing is pure Python; CRC checks use the ``crc32c`` C extension when it is
installed (`native_crc32c`), about four times faster than kafka-python's fallback.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import CommitFailedError, IllegalStateError, KafkaConfigurationError, KafkaConnectionError, KafkaError, ProducerFencedError as KafkaProducerFenced, RebalanceInProgressError, UnknownBrokerIdError
from kafka.future import Future
from kafka.structs import MemberState, OffsetAndMetadata

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

CLIENT = "kafka-python"
CONSUMER_MANAGED = {
    "bootstrap_servers": "set kafka.bootstrap_servers instead",
    "group_id": "set kafka.group_id instead",
    "enable_auto_commit": "riverbeam commits offsets itself, after each durable checkpoint: auto commit is always off",
    "key_deserializer": "riverbeam reads raw bytes",
    "value_deserializer": "riverbeam reads raw bytes",
}
# read_committed (confluent-kafka's default too): records of a transaction aborted by a takeover are never
# learned from nor mistaken for outputs already written (on Tansu, which does not filter them, it changes nothing).
# kafka-python backs off reconnecting to a node up to 30 s (the Java client: 1 s): a broker back after a
# restart was left unused that long, and offset look-ups and commits waiting on it timed out (seen on a
# three-broker cluster). riverbeam's kafka-python consumers and producers take the Java client's bound
# unless the job sets its own (librdkafka's reconnect.backoff.max.ms is 10 s).
RECONNECT_DEFAULTS = {"reconnect_backoff_max_ms": 1000}
CONSUMER_DEFAULTS = {"auto_offset_reset": "earliest", "allow_auto_create_topics": False, "isolation_level": "read_committed", **RECONNECT_DEFAULTS}
PRODUCER_MANAGED = {
    "bootstrap_servers": "set kafka.bootstrap_servers instead",
    "acks": "riverbeam always produces with acks=all",
    "enable_idempotence": "riverbeam always produces idempotently",
    "transactional_id": "riverbeam sets it for a global model's outputs (fencing a stale instance)",
    "key_serializer": "riverbeam sends raw bytes",
    "value_serializer": "riverbeam sends raw bytes",
}


def native_crc32c() -> bool:
    """Whether kafka-python checks record CRCs with the ``crc32c`` C extension (else pure Python).

    kafka-python binds the implementation when `kafka.record.util` is imported: ``crc32c``
    must be installed before the process starts.
    """
    from kafka.record import util

    return util.calc_crc32c.__defaults__[0] is not util.crc32c_py


def _ktp(tp: TopicPartition) -> KafkaTopicPartition:
    return KafkaTopicPartition(tp[0], tp[1])


def _build_client(options: dict[str, Any], section: str, build):
    try:
        return build()
    except (KafkaConfigurationError, AssertionError, TypeError, ValueError) as error:
        raise ConfigError(f"kafka.{section}", f"kafka-python rejects the options: {error}") from None
    except KafkaError as error:
        raise KafkaClientError(f"kafka-python: cannot connect to {options.get('bootstrap_servers')}: {error!r}") from None


class KafkaPythonRecords(RecordSequence):
    """Records of one partition held as kafka-python ``ConsumerRecord`` tuples."""

    __slots__ = ()

    def _build(self) -> list[Record]:
        return [
            Record(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp, tuple(r.headers) if r.headers else ())
            for r in self._native
        ]

    def values(self) -> list[bytes | None]:
        return [r.value for r in self._native]

    def offsets(self) -> list[int]:
        return [r.offset for r in self._native]

    def first_offset(self) -> int:
        return self._native[0].offset

    def last_offset(self) -> int:
        return self._native[-1].offset


class _RebalanceListener(AsyncConsumerRebalanceListener):
    """Runs the caller's callbacks on a worker thread while kafka-python's IO loop keeps going."""

    def __init__(self, owner: "KafkaPythonConsumer"):
        self._owner = owner

    async def on_partitions_revoked(self, revoked):
        await self._owner._callback_off_loop(self._owner._on_revoke, revoked, revoking=True)

    async def on_partitions_assigned(self, assigned):
        await self._owner._callback_off_loop(self._owner._on_assign, assigned)

    async def on_partitions_lost(self, lost):
        # Membership is already gone: the caller still hears about it, but commits are skipped.
        await self._owner._callback_off_loop(self._owner._on_revoke, lost, revoking=True, lost=True)


class KafkaPythonConsumer(ConsumerState):
    """`EventConsumer` over ``kafka.KafkaConsumer``; `options` are KafkaConsumer keyword arguments."""

    client_name = CLIENT

    def __init__(self, options: dict[str, Any], group: bool = True):
        super().__init__(group)
        self._consumer = _build_client(options, "consumer", lambda: KafkaConsumer(**options))
        config = self._consumer.config
        self._rebalance_budget_ms = config["max_poll_interval_ms"] + config["session_timeout_ms"]

    # -- group membership ------------------------------------------------------------------
    def subscribe(self, topics: list[str], on_assign: PartitionsCallback, on_revoke: PartitionsCallback) -> None:
        self._require_group("subscribe")
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._consumer.subscribe(topics=list(topics), listener=_RebalanceListener(self))

    async def _callback_off_loop(self, callback, partitions, revoking: bool = False, lost: bool = False) -> None:
        """Run `callback` on a worker thread and await it on the IO loop (which stays free for its commits)."""
        if callback is None or (revoking and not partitions):
            return
        done = Future()
        loop = self._consumer._net  # kafka-python's IO loop: wake it from the worker thread when done

        async def resolve():
            done.success(None)

        def work():
            self._losing = lost
            try:
                self._run_callback(callback, partitions, revoking)
            finally:
                self._losing = False
                loop.call_soon_threadsafe(resolve)

        threading.Thread(target=work, name="riverbeam-rebalance-callback", daemon=True).start()
        await done

    def assign(self, partitions: list[TopicPartition]) -> None:
        self._consumer.assign([_ktp(tp) for tp in partitions])

    def assignment(self) -> list[TopicPartition]:
        return sorted((tp.topic, tp.partition) for tp in self._consumer.assignment())

    # -- reading ----------------------------------------------------------------------------
    def _partitions_once(self, topic: str, timeout_s: float) -> list[int] | None:
        try:  # blocks until the broker answers (bounded by request_timeout_ms); an empty set: no such topic
            return list(self._consumer.partitions_for_topic(topic))
        except KafkaError as error:
            raise KafkaClientError(f"kafka-python: metadata for topic {topic} failed: {error}") from error

    def seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(_ktp(tp), offset)
        except (KafkaError, AssertionError) as error:
            raise KafkaClientError(f"kafka-python: cannot seek {tp[0]}[{tp[1]}] to {offset}: {error}") from None

    def _finish_rebalance(self) -> None:
        """Block through a group (re)join instead of leaving it to short polls.

        kafka-python 3.0 keeps a join in flight across polls, but a SyncGroup answer that
        arrives between two polls is dropped and the member joins again; on Tansu (which holds
        SyncGroup until the leader syncs) short polls can then loop for ever. So once a
        rebalance is due, wait for it here, bounded by the rebalance timeout.
        """
        coordinator = getattr(self._consumer, "_coordinator", None)
        if self._on_assign is None or coordinator is None:
            return
        if coordinator.need_rejoin() or self._consumer.group_metadata().state is not MemberState.STABLE:
            coordinator.ensure_active_group(timeout_ms=self._rebalance_budget_ms)

    def poll_batches(self, timeout_s: float, max_records: int) -> list[Batch]:
        self._require_outside_callback("poll_batches")
        try:
            self._finish_rebalance()
            polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except Exception as error:
            self._raise_callback_error()
            if isinstance(error, KafkaError):
                raise KafkaClientError(f"kafka-python: poll failed: {error}") from error
            raise
        self._raise_callback_error()
        return [Batch((tp.topic, tp.partition), KafkaPythonRecords(records)) for tp, records in polled.items() if records]

    def position(self, tp: TopicPartition) -> int | None:
        try:
            return self._consumer._subscription.assignment[_ktp(tp)].position.offset
        except (KeyError, AttributeError, TypeError):
            return None

    def high_watermarks(self) -> dict[TopicPartition, int]:
        marks = {}
        for tp in self._consumer.assignment():
            mark = self._consumer.highwater(tp)
            if mark is not None:
                marks[(tp.topic, tp.partition)] = mark
        return marks

    def end_offsets(self, tps: list[TopicPartition], timeout_s: float = RETRY_SECONDS) -> dict[TopicPartition, int]:
        """ListOffsets(latest), raised to the fetch high watermark where one was seen.

        On Tansu, ListOffsets may fall short by up to one producer batch; a fetch high
        watermark is exact. Before the first fetch of a partition only ListOffsets is known.
        A look-up the broker answers partially or late (kafka-python then raises `KeyError` or a
        timeout) is retried with backoff (`retry_call`) for up to `timeout_s`.
        """
        self._require_outside_callback("end_offsets")
        wanted = [_ktp(tp) for tp in tps]
        each_ms = int(max(0.1, min(timeout_s, self._consumer.config["request_timeout_ms"] / 1000)) * 1000)
        listed = retry_call(lambda: self._consumer.end_offsets(wanted, timeout_ms=each_ms), f"kafka-python: end offsets of {sorted(tps)}", seconds=timeout_s)
        marks = self.high_watermarks()
        return {(tp.topic, tp.partition): max(offset, marks.get((tp.topic, tp.partition), offset)) for tp, offset in listed.items()}

    def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The log start offset of each partition (ListOffsets(earliest)), retried like `end_offsets`."""
        self._require_outside_callback("beginning_offsets")
        wanted = [_ktp(tp) for tp in tps]
        listed = retry_call(lambda: self._consumer.beginning_offsets(wanted), f"kafka-python: log start offsets of {sorted(tps)}")
        return {(tp.topic, tp.partition): offset for tp, offset in listed.items()}

    def topic_id(self, topic: str) -> str | None:
        """The topic's id (a UUID string; a recreated topic gets a new one), or None if the broker has none."""
        self.partitions_for(topic)
        topic_id = self._consumer._client.cluster.topic_id(topic)
        return str(topic_id) if topic_id else None

    # -- commits ----------------------------------------------------------------------------
    @staticmethod
    def _kafka_offsets(offsets: dict[TopicPartition, int]) -> dict:
        return {_ktp(tp): OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not self._may_commit(offsets):
            return
        kafka_offsets = self._kafka_offsets(offsets)
        try:
            # a rebalance in progress ends only in a later poll: retrying here (up to 10 s) only delayed that poll, and under a short
            # max_poll_interval_ms the member was dropped from the group; the next checkpoint commits again
            retry_call(lambda: self._consumer.commit(kafka_offsets), "kafka-python: commit", seconds=10, permanent=(CommitFailedError, KafkaClientError, RebalanceInProgressError))
        except (CommitFailedError, RebalanceInProgressError) as error:
            raise KafkaClientError(f"kafka-python: commit failed: {error}") from None

    def committed(self, tp: TopicPartition) -> int | None:
        self._require_group("committed")
        self._require_outside_callback("committed")
        return retry_call(lambda: self._consumer.committed(_ktp(tp)), f"kafka-python: committed offset of {tp[0]}[{tp[1]}]")

    def close(self) -> None:
        try:
            self._consumer.close(autocommit=False)
        except KafkaError as error:
            self._raise_callback_error()
            raise KafkaClientError(f"kafka-python: close failed: {error}") from error
        self._raise_callback_error()


def _bumping_epoch(error: BaseException) -> bool:
    """kafka-python refusing a send while it bumps the producer's epoch after its transaction was aborted."""
    return isinstance(error, IllegalStateError) and "BUMPING_PRODUCER_EPOCH" in str(error)


def _fenced(error: BaseException) -> bool:
    """A producer-fenced error, bare or wrapped (kafka-python re-raises it inside a `KafkaError` on the next send)."""
    return isinstance(error, KafkaProducerFenced) or any(isinstance(arg, KafkaProducerFenced) for arg in getattr(error, "args", ()))


try:  # kafka-python 3.0's network layer; setup.py allows any 3.x, whose internals may move
    from kafka.net.compat import KafkaNetClient
except ImportError:  # pragma: no cover - then the producer keeps kafka-python's own client
    KafkaNetClient = None


class _ProducerNetClient(KafkaNetClient or object):
    """kafka-python's network client, whose `await_ready` answers False for a node not ready instead of raising.

    kafka-python 3.0.12's sender sends a transactional request (AddPartitionsToTxn, EndTxn) only
    once ``await_ready(coordinator)`` is true, and on False looks the coordinator up again and
    re-queues the request. ``KafkaNetClient.await_ready`` raises instead when the node is not
    ready (its transaction coordinator killed), and the sender's ``except`` for that looks the
    coordinator up but drops the request: a lost AddPartitionsToTxn left its partition never added
    (its records never sent: the flush timed out after 30 s), a lost EndTxn left
    ``commit_transaction`` waiting for ever. Seen on a three-broker Apache Kafka cluster: 38-44 s
    without a commit and a daemon restart per kill -9 of the coordinator; with this, 8-14 s (the
    brokers' own fail-over). Only the producer's transactional requests call `await_ready`.
    """

    def await_ready(self, node_id, timeout_ms=30000):
        try:
            return super().await_ready(node_id, timeout_ms=timeout_ms)
        except (KafkaConnectionError, UnknownBrokerIdError):  # not ready: the sender looks the coordinator up again
            return False


class KafkaPythonProducer:
    """`EventProducer` over ``kafka.KafkaProducer``; `options` are KafkaProducer keyword arguments.

    With ``transactional_id`` in `options` the producer fences any older producer of that id
    (``init_transactions``) and keeps a transaction open between `commit_transaction` calls.
    """

    commit_timeout_s = 30.0  # kafka-python's own commit_transaction waits without bound (confluent-kafka's is given 30 s too)

    def __init__(self, options: dict[str, Any]):
        self._failures: list[BaseException] = []
        self._wedged = False  # a commit that never came back: the producer is dropped, never committed again
        self._producer = _build_client(options, "producer", lambda: KafkaProducer(**options))
        self.max_record_bytes = self._producer.config["max_request_size"] - 16_384
        self.transactional = bool(options.get("transactional_id"))
        if self.transactional:
            self._fenced_call(self._producer.init_transactions, "init_transactions")
            self._fenced_call(self._producer.begin_transaction, "begin_transaction")

    def _fenced_call(self, call, what: str):
        try:
            return call()
        except KafkaError as error:
            if _fenced(error):
                raise ProducerFencedError(f"kafka-python: producer fenced by a newer instance ({what}): {error}") from None
            raise KafkaClientError(f"kafka-python: {what} failed: {error}") from None

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> None:
        try:
            future = self._producer.send(topic, value=value, key=key, headers=headers, partition=partition)
        except KafkaError as error:
            future = self._send_after(error, lambda: self._producer.send(topic, value=value, key=key, headers=headers, partition=partition), topic)
        future.add_errback(self._failures.append)

    def _send_after(self, error: KafkaError, send, topic: str):
        """A send refused with `error`: `ProducerFencedError`, a retry while kafka-python bumps its epoch, or `KafkaClientError`.

        When the broker aborted this producer's transaction (Apache Kafka, after a newer instance
        fenced it), kafka-python tries to bump its epoch and refuses sends meanwhile with
        IllegalStateError ("Cannot call send in state BUMPING_PRODUCER_EPOCH"); the bump ends
        fenced (or ready again). Taken for a send failure, it stopped a stale daemon instead of
        sending it back to standby.
        """
        def once():
            try:
                return send()
            except KafkaError as again:
                if _fenced(again):
                    raise ProducerFencedError(f"kafka-python: producer fenced by a newer instance: {again}") from None
                if _bumping_epoch(again):
                    raise
                raise KafkaClientError(f"kafka-python: cannot send to {topic}: {again}") from again

        if _bumping_epoch(error):
            return retry_call(once, f"kafka-python: send to {topic} while the producer's epoch is bumped", seconds=30, permanent=(KafkaClientError,))
        if _fenced(error):
            raise ProducerFencedError(f"kafka-python: producer fenced by a newer instance: {error}") from None
        raise KafkaClientError(f"kafka-python: cannot send to {topic}: {error}") from error

    def flush(self, timeout_s: float = 30) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as error:
            if _fenced(error):
                raise ProducerFencedError(f"kafka-python: producer fenced by a newer instance: {error}") from None
            raise KafkaClientError(f"kafka-python: records not delivered within {timeout_s:g} s: {error}") from error
        finally:
            failures, self._failures = self._failures, []
        if any(_fenced(f) for f in failures):
            raise ProducerFencedError("kafka-python: producer fenced by a newer instance; its records were refused")
        if failures:
            raise KafkaClientError(f"kafka-python: {len(failures)} record(s) failed delivery; first: {failures[0]!r}")

    def commit_transaction(self) -> None:
        if not self.transactional:
            self.flush()
            return
        self.flush()
        self._fenced_call(self._bounded_commit, "commit_transaction")
        self._fenced_call(self._producer.begin_transaction, "begin_transaction")

    def _bounded_commit(self) -> None:
        """``KafkaProducer.commit_transaction``, waited for at most `commit_timeout_s`.

        kafka-python 3.0.12 can lose a transaction's EndTxn request when the transaction
        coordinator moves (its node killed; seen on a three-broker Apache Kafka cluster): its
        ``commit_transaction`` then waits forever, and so did the daemon. After the bound the
        transaction's outcome is unknown: `KafkaClientError`; the producer is wedged and only
        dropped from then on. The next producer of the transactional id resolves the transaction
        (aborts it, or completes a commit under way), and the daemon's restore scan sees which.
        """
        if self._wedged:
            raise KafkaClientError("kafka-python: this transactional producer is wedged by an earlier commit that never completed")
        done = threading.Event()
        outcome: list[BaseException] = []

        def commit() -> None:
            try:
                self._producer.commit_transaction()
            except BaseException as error:  # handed to the caller
                outcome.append(error)
            finally:
                done.set()

        threading.Thread(target=commit, name="kafka-python-commit-transaction", daemon=True).start()
        if not done.wait(self.commit_timeout_s):
            self._wedged = True
            raise KafkaClientError(
                f"kafka-python: commit_transaction did not complete within {self.commit_timeout_s:g} s "
                "(its transaction coordinator moved or is unreachable); the transaction's outcome is left to the next producer"
            )
        if outcome:
            raise outcome[0]

    def drop(self) -> None:
        try:
            self._producer.close(timeout=0)  # a forced close aborts the batches not yet sent
        except Exception as error:  # dropping must not fail
            log.warning("kafka-python: closing a dropped producer: %s", error)
            # kafka-python 3.0.12's close() flushes before it force-closes, even with timeout 0: with
            # records still pending it raises and leaves the producer open, and its __del__ then flushes
            # again and printed a traceback after the daemon's one line. Force-close its sender and mark
            # it closed (private attributes, gated: without them the warning above is all there is).
            sender = getattr(self._producer, "_sender", None)
            if sender is not None and hasattr(sender, "force_close"):
                sender.force_close()
            if hasattr(self._producer, "_closed"):
                self._producer._closed = True

    def close(self) -> None:
        if self._wedged:  # committing again would wait out the bound again: what is open is left to the next producer
            self.drop()
            return
        try:
            self.commit_transaction()
        finally:
            try:
                self._producer.close(timeout=5)
            except KafkaError as error:
                # Not delivered: nothing of it is durable. A producer left open is flushed again by
                # kafka-python's own exit hook, which printed a traceback after the daemon's one line.
                self.drop()
                raise KafkaClientError(f"kafka-python: closing the producer: records not delivered within 5 s: {error}") from None


def make_consumer(config, group: bool = True) -> KafkaPythonConsumer:
    """A consumer for `config` (an `online.config.KafkaConfig`); `config.consumer` holds KafkaConsumer keywords."""
    user = dict(config.consumer)
    check_options(user, known=KafkaConsumer.DEFAULT_CONFIG, managed=CONSUMER_MANAGED, section="consumer", client=CLIENT)
    if not native_crc32c():
        log.warning("kafka-python checks CRCs in pure Python (slow): install the crc32c package")
    options = {
        **CONSUMER_DEFAULTS,
        **user,
        "bootstrap_servers": config.bootstrap_servers,
        "group_id": config.group_id if group else None,
        "enable_auto_commit": False,
    }
    return KafkaPythonConsumer(options, group)


def make_producer(config, transactional_id: str | None = None, transaction_timeout_s: float = 60) -> KafkaPythonProducer:
    """A producer for `config`; `config.producer` holds KafkaProducer keywords (acks=all, idempotent).

    With `transactional_id`, older producers of that id are fenced (see `KafkaPythonProducer`).
    """
    user = dict(config.producer)
    check_options(user, known=KafkaProducer.DEFAULT_CONFIG, managed=PRODUCER_MANAGED, section="producer", client=CLIENT)
    fixed_client = {"kafka_client": _ProducerNetClient} if KafkaNetClient is not None else {}
    options = {**RECONNECT_DEFAULTS, **fixed_client, **user, "bootstrap_servers": config.bootstrap_servers, "acks": "all", "enable_idempotence": True}
    if transactional_id:
        options.update(transactional_id=transactional_id, transaction_timeout_ms=int(transaction_timeout_s * 1000))
    return KafkaPythonProducer(options)
