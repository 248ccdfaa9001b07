"""One small Kafka consumer/producer interface over two clients: kafka-python and confluent-kafka.

``kafka.client`` picks the implementation; ``kafka.consumer`` / ``kafka.producer`` go to that
client under its own option names (kafka-python keywords such as ``session_timeout_ms``,
librdkafka properties such as ``session.timeout.ms``); a name the client does not know is a
`ConfigError` naming ``kafka.consumer.<key>``. Auto commit is always off, consumers start
from the earliest offset unless told otherwise, producers use acks=all and idempotence.

Which client: kafka-python (default) is pure Python and always installed; it spends ~7 µs
per record parsing in Python. confluent-kafka (extra ``fast``) parses in librdkafka for
~1 µs per record: pick it when throughput matters.

>>> from online.config import KafkaConfig
>>> make_consumer(KafkaConfig(topic="events", consumer={"session.timeout.ms": 6000}))
Traceback (most recent call last):
...
core.errors.ConfigError: kafka.consumer.session.timeout.ms: unknown option for kafka-python (did you mean session_timeout_ms?)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator

from online.kafka_clients.base import (
    Batch,
    EventConsumer,
    EventProducer,
    KafkaClientError,
    ProducerFencedError,
    Record,
    RecordList,
    RecordSequence,
    TopicPartition,
)
from core.errors import ConfigError

if TYPE_CHECKING:
    from online.config import KafkaConfig

__all__ = [
    "Batch", "EventConsumer", "EventProducer", "KafkaClientError", "ProducerFencedError", "Record", "RecordList", "RecordSequence",
    "TopicPartition", "create_topic", "make_consumer", "make_producer", "read_records", "read_tail",
]  # fmt: skip


def _implementation(config: "KafkaConfig"):
    if config.client == "confluent-kafka":
        try:
            from online.kafka_clients import confluent
        except ImportError:
            raise ConfigError("kafka.client", "confluent-kafka is not installed: pip install 'riverbeam[fast]'") from None
        return confluent
    from online.kafka_clients import kafka_python

    return kafka_python


def make_consumer(config: "KafkaConfig", *, group: bool = True) -> EventConsumer:
    """A consumer of the client `config.client` names.

    With ``group=False`` the consumer has no group membership: `assign` only, and `commit`,
    `committed` and `subscribe` raise `KafkaClientError`.
    """
    return _implementation(config).make_consumer(config, group)


def make_producer(config: "KafkaConfig", transactional_id: str | None = None, transaction_timeout_s: float = 60) -> EventProducer:
    """A producer of the client `config.client` names (acks=all, idempotence).

    With `transactional_id`, opening it fences every older producer of that id at the broker
    (their later records are refused: `ProducerFencedError`); `EventProducer.commit_transaction`
    then commits at each checkpoint.
    """
    return _implementation(config).make_producer(config, transactional_id, transaction_timeout_s)


def create_topic(
    bootstrap: str, topic: str, partitions: int = 1, config: dict[str, str] | None = None, timeout_s: float = 30, replication_factor: int = 1,
) -> None:  # fmt: skip
    """Create `topic` with `partitions` partitions (`replication_factor` copies each) unless it exists; for tests and the demo.

    On Tansu, DescribeConfigs later returns only the `config` given here.
    """
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    except KafkaError as error:
        raise KafkaClientError(f"cannot reach {bootstrap} to create topic {topic}: {error}") from None
    try:
        spec = {"num_partitions": partitions, "replication_factor": replication_factor, "configs": {k: str(v) for k, v in (config or {}).items()}}
        admin.create_topics({topic: spec}, timeout_ms=int(timeout_s * 1000), wait_for_metadata=True)
    except TopicAlreadyExistsError:
        pass
    except KafkaError as error:
        raise KafkaClientError(f"creating topic {topic} failed: {error}") from None
    finally:
        admin.close()


def read_records(
    config: "KafkaConfig",
    topic: str,
    from_offsets: dict[int, int] | None = None,
    *,
    timeout_s: float = 30,
    max_records: int = 5000,
) -> Iterator[Record]:
    """Every record of `topic` from `from_offsets` (partition -> first offset; default: the beginning) to the end.

    The end of each partition is its high watermark as of the first fetch, so records produced
    while reading may or may not be included. Reads with manual assignment (no group, no
    commits). On Tansu, ListOffsets can fall short by one producer batch, so each partition is
    read from at least its last listed record, which makes the broker report the exact end.
    Raises `KafkaClientError` if the end is not reached within `timeout_s`.
    """
    consumer = make_consumer(config, group=False)
    try:
        tps = [(topic, p) for p in consumer.partitions_for(topic, timeout_s)]
        listed = consumer.end_offsets(tps)
        starts = {tp: max(0, (from_offsets or {}).get(tp[1], 0)) for tp in tps}
        pending = [tp for tp in tps if listed[tp] > 0]
        if not pending:
            return
        consumer.assign(pending)
        for tp in pending:
            consumer.seek(tp, min(starts[tp], listed[tp] - 1))
        positions = dict(starts)
        ends: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + timeout_s
        while pending:
            for batch in consumer.poll_batches(0.2, max_records):
                tp, start = batch.partition, starts[batch.partition]
                if batch.first_offset >= start:
                    yield from batch.records
                else:
                    yield from (record for record in batch.records if record.offset >= start)
                positions[tp] = max(positions[tp], batch.next_offset)
            marks = consumer.high_watermarks()
            for tp in pending:
                if tp not in ends and tp in marks:
                    ends[tp] = marks[tp]
                at = consumer.position(tp)  # past transaction markers, which take offsets but hold no record
                if at is not None and at > positions[tp]:
                    positions[tp] = at
            pending = [tp for tp in pending if tp not in ends or positions[tp] < ends[tp]]
            if pending and time.monotonic() > deadline:
                raise KafkaClientError(f"reading {topic}: partitions {[p for _, p in pending]} did not reach their end within {timeout_s:g} s")
    finally:
        consumer.close()


def read_tail(config: "KafkaConfig", topic: str, last: int, *, timeout_s: float = 30) -> dict[int, list[Record]]:
    """The last `last` records of each partition of `topic` (fewer where a partition holds fewer).

    Used to find the highest source offset already written to an output topic.
    """
    consumer = make_consumer(config, group=False)
    try:
        tps = [(topic, p) for p in consumer.partitions_for(topic, timeout_s)]
        listed = consumer.end_offsets(tps)
    finally:
        consumer.close()
    # ListOffsets may fall short by one producer batch (Tansu): read from `last` before it, keep the last `last`.
    tails: dict[int, list[Record]] = {p: [] for _, p in tps}
    for record in read_records(config, topic, {p: listed[(topic, p)] - last for _, p in tps}, timeout_s=timeout_s):
        tails[record.partition].append(record)
    return {p: records[-last:] if last > 0 else [] for p, records in tails.items()}
