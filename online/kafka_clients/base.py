"""What every Kafka client behind riverbeam shares: records, batches, errors and the two protocols.

A consumer hands out `Batch` objects: consecutive records of one partition. The records are
built lazily (`RecordSequence`): the daemon's hot loop reads `batch.values` and `batch.offsets`,
plain lists taken straight from the client's own message objects, and never pays for a
`Record` per event unless it asks for ``batch.records``.

>>> batch = Batch(("events", 0), RecordList([Record("events", 0, 7, None, b"{}", 0, ())]))
>>> batch.values, batch.first_offset, batch.next_offset
([b'{}'], 7, 8)
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Sequence
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Protocol

from core.errors import ConfigError, RiverbeamError

TopicPartition = tuple[str, int]
"""``(topic, partition)``."""

PartitionsCallback = Callable[[list[TopicPartition]], None]


class KafkaClientError(RiverbeamError):
    """A Kafka operation failed at run time: broker unreachable, delivery failed, commit rejected..."""


class ProducerFencedError(KafkaClientError):
    """A newer instance took over this producer's transactional id: this instance must stop writing."""


RETRY_SECONDS = 60.0  # how long a look-up, metadata call or commit is retried before it fails for good


def retry_call(call: Callable[[], Any], what: str, *, seconds: float = RETRY_SECONDS, permanent: tuple = (),
               first_backoff: float = 0.1, sleep: Callable[[float], None] = time.sleep) -> Any:
    """`call()`, retried with exponential backoff (0.1 s doubling to 5 s) while it raises, for at most `seconds`.

    Any exception but a `ConfigError`, `ProducerFencedError` or one of `permanent` is transient: kafka-python
    raises `KeyError` inside ``end_offsets`` when the broker answers a look-up partially, and
    ``KafkaTimeoutError`` when it answers late. When `call` still fails after `seconds`, one
    `KafkaClientError` naming `what` and the last error is raised: never a traceback.

    >>> answers = iter([KeyError("TopicPartition(topic='t', partition=0)"), {"t": 3}])
    >>> def flaky():
    ...     answer = next(answers)
    ...     if isinstance(answer, Exception):
    ...         raise answer
    ...     return answer
    >>> retry_call(flaky, "end offsets", sleep=lambda s: None)
    {'t': 3}
    >>> retry_call(lambda: {}[1], "end offsets", seconds=0, sleep=lambda s: None)
    Traceback (most recent call last):
    ...
    online.kafka_clients.base.KafkaClientError: end offsets failed after 1 attempt(s) in 0 s: KeyError: 1
    """
    deadline = time.monotonic() + seconds
    backoff, attempts = first_backoff, 0
    while True:
        attempts += 1
        try:
            return call()
        except (ConfigError, ProducerFencedError, *permanent):
            raise
        except Exception as error:
            last = error
        if time.monotonic() + backoff > deadline:
            break
        if attempts == 1:
            logging.getLogger(__name__).warning("%s failed (%s: %s); retrying for up to %g s", what, type(last).__name__, last, seconds)
        sleep(backoff)
        backoff = min(backoff * 2, 5.0)
    detail = str(last) if isinstance(last, KafkaClientError) else f"{type(last).__name__}: {last}"
    raise KafkaClientError(f"{what} failed after {attempts} attempt(s) in {seconds:g} s: {detail}") from None


class Record(NamedTuple):
    """One consumed record. `timestamp_ms` is the record's timestamp (create or log-append time)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]


class RecordSequence(Sequence):
    """Records of one partition, in offset order, kept as the client's own message objects.

    `values()` and `offsets()` are cheap list comprehensions over those objects; `Record`
    tuples are built once, on the first indexing or iteration, then cached. Subclasses say
    how to read one native message.
    """

    __slots__ = ("_native", "_records")

    def __init__(self, native: list):
        self._native = native
        self._records: list[Record] | None = None

    def __len__(self) -> int:
        return len(self._native)

    def _build(self) -> list[Record]:
        raise NotImplementedError

    def _materialised(self) -> list[Record]:
        if self._records is None:
            self._records = self._build()
        return self._records

    def __getitem__(self, index):
        return self._materialised()[index]

    def __iter__(self) -> Iterator[Record]:
        return iter(self._materialised())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._materialised()!r})"

    def values(self) -> list[bytes | None]:
        """The record values, in order."""
        raise NotImplementedError

    def offsets(self) -> list[int]:
        """The record offsets, in order (not always contiguous: compaction, transaction markers)."""
        raise NotImplementedError

    def first_offset(self) -> int:
        return self.offsets()[0]

    def last_offset(self) -> int:
        return self.offsets()[-1]


class RecordList(RecordSequence):
    """A `RecordSequence` over ready-made `Record` tuples (tests, helpers).

    >>> RecordList([Record("t", 0, 3, None, b"x", 0, ())]).offsets()
    [3]
    """

    __slots__ = ()

    def _build(self) -> list[Record]:
        return self._native

    def values(self) -> list[bytes | None]:
        return [record.value for record in self._native]

    def offsets(self) -> list[int]:
        return [record.offset for record in self._native]

    def first_offset(self) -> int:
        return self._native[0].offset

    def last_offset(self) -> int:
        return self._native[-1].offset


class Batch(NamedTuple):
    """Consecutive records of ONE partition, as returned by `EventConsumer.poll_batches`.

    ``batch.records`` is a read-only sequence of `Record` built on first access; the hot
    path uses ``batch.values`` (the raw values) and ``batch.offsets`` instead.
    """

    partition: TopicPartition
    records: RecordSequence

    @property
    def values(self) -> list[bytes | None]:
        """The raw record values, in offset order (cheap: no `Record` is built)."""
        return self.records.values()

    @property
    def offsets(self) -> list[int]:
        """The record offsets, in order."""
        return self.records.offsets()

    @property
    def first_offset(self) -> int:
        return self.records.first_offset()

    @property
    def next_offset(self) -> int:
        """The offset after the last record: what to commit or checkpoint once the batch is done."""
        return self.records.last_offset() + 1


class EventConsumer(Protocol):
    """A Kafka consumer with manual commits, as the daemon uses it (both clients behave the same).

    Rebalance callbacks (`subscribe`) run while `poll_batches` (or `close`, when partitions
    are held) blocks, and `on_revoke` runs before the partitions are given up. Inside a
    callback you may call `seek` (applied before fetching starts), `assignment`,
    `high_watermarks` and `commit` (synchronous: it raises `KafkaClientError` right there if
    the broker rejects it, e.g. Tansu refusing commits once a rebalance is under way).
    `committed`, `end_offsets`, `partitions_for` and `poll_batches` raise `KafkaClientError`
    inside a callback: do that work after the poll returns. When membership was lost (session
    expired), `on_revoke` is called for the lost partitions and a `commit` inside it is skipped
    with a warning. An exception raised by a callback comes out of the `poll_batches` or
    `close` call that ran it, unchanged. kafka-python runs callbacks on a worker thread (its IO
    thread refuses blocking calls), confluent-kafka on the polling thread.
    """

    def subscribe(self, topics: list[str], on_assign: PartitionsCallback, on_revoke: PartitionsCallback) -> None:
        """Join the consumer group for `topics`; `on_revoke` runs before partitions are given up."""

    def assign(self, partitions: list[TopicPartition]) -> None:
        """Read exactly these partitions, without group membership (no join wait)."""

    def partitions_for(self, topic: str, timeout_s: float = 10) -> list[int]:
        """The partition ids of `topic`, waiting up to `timeout_s` for it to appear."""

    def partitions_if_exists(self, topic: str, timeout_s: float = 30) -> list[int]:
        """The partition ids of `topic`, [] if the broker answers that it does not exist; raises when no answer comes."""

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Make `offset` the next offset read from `tp` (an assigned partition)."""

    def poll_batches(self, timeout_s: float, max_records: int) -> list[Batch]:
        """Up to `max_records` records, waiting up to `timeout_s` for the first."""

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit synchronously; each offset is the NEXT offset to read."""

    def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of `tp`, or None."""

    def end_offsets(self, tps: list[TopicPartition], timeout_s: float = RETRY_SECONDS) -> dict[TopicPartition, int]:
        """The end offset of each partition (see the implementations about Tansu), retried for up to `timeout_s`."""

    def high_watermarks(self) -> dict[TopicPartition, int]:
        """The high watermark of each assigned partition, as last seen in a fetch response."""

    def position(self, tp: TopicPartition) -> int | None:
        """The next offset this consumer will read from `tp` (past transaction markers, unlike the last record + 1), or None."""

    def assignment(self) -> list[TopicPartition]:
        """The partitions held now, sorted."""

    def close(self) -> None:
        """Leave the group (calling `on_revoke` first when partitions are held) and disconnect."""


class EventProducer(Protocol):
    """A Kafka producer (acks=all, idempotent) that never drops a record silently."""

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> None:
        """Queue one record; raises `KafkaClientError` when it cannot even be queued."""

    def flush(self, timeout_s: float = 30) -> None:
        """Wait for every queued record; raises `KafkaClientError` if any failed since the last flush."""

    def close(self) -> None:
        """Flush what can be flushed and disconnect."""

    def drop(self) -> None:
        """Discard every record not yet delivered and disconnect, without flushing (a fenced writer)."""

    def commit_transaction(self) -> None:
        """Transactional producers: commit the records sent since the last commit and begin the next transaction.

        Raises `ProducerFencedError` when a newer producer with the same transactional id took over.
        A producer without a transactional id just flushes.
        """

    max_record_bytes: int
    """The largest record value this producer sends (its request size limit, less headroom for key and headers)."""


class ConsumerState:
    """Bookkeeping both consumer implementations share: group mode, callback guard, callback errors."""

    client_name = ""

    def __init__(self, group: bool):
        self._group = group
        self._in_callback = False
        self._losing = False  # inside a callback for partitions lost to an expired membership: commits are skipped
        self._callback_error: BaseException | None = None
        self._on_assign: PartitionsCallback | None = None
        self._on_revoke: PartitionsCallback | None = None

    def partitions_for(self, topic: str, timeout_s: float = 10) -> list[int]:
        """The topic's partitions, waiting up to `timeout_s` for its metadata (`KafkaClientError` after)."""
        return self._look_up_partitions(topic, timeout_s, wait_for_topic=True)

    def partitions_if_exists(self, topic: str, timeout_s: float = 30) -> list[int]:
        """The topic's partitions, or [] when the broker answers that it has no such topic.

        Unlike `partitions_for`, which waits for a topic to appear, this tells a missing topic
        from a broker that does not answer: no answer within `timeout_s` raises
        `KafkaClientError` and never passes for "missing" (a restore that took a stalled broker
        for a missing output topic skipped its scan, and the records there were written twice).
        """
        return self._look_up_partitions(topic, timeout_s, wait_for_topic=False)

    def _look_up_partitions(self, topic: str, timeout_s: float, wait_for_topic: bool) -> list[int]:
        self._require_outside_callback("partitions_for")
        deadline = time.monotonic() + timeout_s
        while True:
            partitions = self._partitions_once(topic, max(0.1, min(5.0, deadline - time.monotonic())))
            if partitions or (partitions is not None and not wait_for_topic):
                return sorted(partitions)
            if time.monotonic() >= deadline:
                missing = f"topic {topic} does not exist" if partitions is not None else f"no metadata for topic {topic}"
                raise KafkaClientError(f"{missing} (waited {timeout_s:g} s)")
            time.sleep(0.1)

    def _partitions_once(self, topic: str, timeout_s: float) -> list[int] | None:
        """One metadata look-up: the partitions, [] when the broker answers that the topic does
        not exist, None when no answer came in time (or the topic is not ready yet)."""
        raise NotImplementedError

    def _may_commit(self, offsets: dict) -> bool:
        """Whether `commit` should go on: needs a group, something to commit and a membership not lost."""
        self._require_group("commit")
        if not offsets:
            return False
        if self._losing:
            logging.getLogger(__name__).warning("partitions lost before their offsets could be committed: %s", sorted(offsets))
            return False
        return True

    def _require_group(self, operation: str) -> None:
        if not self._group:
            raise KafkaClientError(f"{operation} needs a consumer group: make the consumer with group=True")

    def _require_outside_callback(self, operation: str) -> None:
        if self._in_callback:
            raise KafkaClientError(f"{operation} cannot run inside a rebalance callback: do it after poll_batches returns")

    def _run_callback(self, callback: PartitionsCallback | None, partitions: Iterable, revoking: bool = False) -> bool:
        """Run a user callback with sorted plain tuples; keep its exception for the caller of poll.

        Returns whether it succeeded. The client's own callback machinery never sees the
        exception: `poll_batches` or `close` re-raises it unchanged once the client returns.
        A revocation of nothing (kafka-python's first join) is not reported. Each rebalance is
        logged once the callback returns ("partitions revoked" / "partitions assigned", with the
        seconds the callback took), so a handover that is slow or never comes shows in the log.
        """
        partitions = list(partitions)
        if callback is None or (revoking and not partitions):
            return True
        if self._callback_error is not None:
            return False
        self._in_callback = True
        plain, started = sorted((tp[0], tp[1]) for tp in partitions), time.monotonic()
        try:
            callback(plain)
            return True
        except BaseException as error:
            self._callback_error = error
            return False
        finally:
            self._in_callback = False
            logging.getLogger(__name__).info(
                "partitions revoked" if revoking else "partitions assigned",
                extra={"fields": {"partitions": [f"{topic}/{partition}" for topic, partition in plain], "seconds": round(time.monotonic() - started, 3)}},
            )

    def _raise_callback_error(self) -> None:
        error, self._callback_error = self._callback_error, None
        if error is not None:
            raise error


def check_options(options: dict[str, Any], *, known: Iterable[str] | None, managed: dict[str, str], section: str, client: str) -> None:
    """Reject options riverbeam sets itself and, when `known` is given, options the client does not know.

    `managed` maps an option to the reason it may not be set. Raises `ConfigError` naming
    ``kafka.<section>.<key>``.

    >>> check_options({"session_timout_ms": 1}, known=["session_timeout_ms"], managed={}, section="consumer", client="kafka-python")
    Traceback (most recent call last):
    ...
    core.errors.ConfigError: kafka.consumer.session_timout_ms: unknown option for kafka-python (did you mean session_timeout_ms?)
    """
    known = None if known is None else set(known)
    for key in options:
        path = f"kafka.{section}.{key}"
        if key in managed:
            raise ConfigError(path, managed[key])
        if known is not None and key not in known:
            raise ConfigError(path, unknown_option_message(key, known, client))


def unknown_option_message(key: str, known: Iterable[str], client: str) -> str:
    """``unknown option for CLIENT``, with the closest known names (either spelling: dots or underscores)."""
    known = list(known)
    separator = "." if any("." in name for name in known) else "_"
    spelled = key.replace("_" if separator == "." else ".", separator)
    close = difflib.get_close_matches(spelled, known, n=2, cutoff=0.75)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"unknown option for {client}{hint}"
