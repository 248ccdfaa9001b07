"""Both Kafka clients behind one interface, on the real local broker (Tansu)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from online.config import KafkaConfig
from online.kafka_clients import (
    Batch,
    KafkaClientError,
    Record,
    RecordList,
    create_topic,
    make_consumer,
    make_producer,
    read_records,
    read_tail,
)
from core.errors import ConfigError

pytestmark = pytest.mark.both_brokers  # every test that takes a broker runs on Tansu and on Apache Kafka
CLIENTS = ["kafka-python", "confluent-kafka"]
# Tansu finishes a group join after half the session timeout: keep it short here.
SHORT_GROUP_TIMEOUTS = {
    "kafka-python": {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300, "max_poll_interval_ms": 2000},
    "confluent-kafka": {"session.timeout.ms": 2000, "heartbeat.interval.ms": 300, "max.poll.interval.ms": 2000},
}


def kafka_config(client: str, bootstrap: str, topic: str, group: str | None = None, **options) -> KafkaConfig:
    return KafkaConfig(
        client=client,
        bootstrap_servers=bootstrap,
        topic=topic,
        group_id=group or f"g-{topic}",
        consumer={**SHORT_GROUP_TIMEOUTS[client], **options},
    )


def produce(config: KafkaConfig, topic: str, values: list[bytes], partition: int | None = 0, **kwargs) -> None:
    producer = make_producer(config)
    for value in values:
        producer.send(topic, value, partition=partition, **kwargs)
    producer.flush()
    producer.close()


def poll_until(consumer, count: int, timeout_s: float = 15.0, max_records: int = 1000) -> list[Batch]:
    batches, seen, deadline = [], 0, time.monotonic() + timeout_s
    while seen < count and time.monotonic() < deadline:
        for batch in consumer.poll_batches(0.2, max_records):
            batches.append(batch)
            seen += len(batch.records)
    return batches


@pytest.fixture(params=CLIENTS)
def client(request) -> str:
    return request.param


def test_batch_exposes_values_and_offsets_without_building_records():
    records = RecordList([Record("t", 0, offset, None, b"v%d" % offset, 0, ()) for offset in (4, 5, 7)])
    batch = Batch(("t", 0), records)
    assert (batch.values, batch.offsets, batch.first_offset, batch.next_offset) == ([b"v4", b"v5", b"v7"], [4, 5, 7], 4, 8)
    assert batch.records == list(records) and len(batch.records) == 3


def test_kafka_python_checks_crcs_with_the_c_extension():
    from online.kafka_clients.kafka_python import native_crc32c

    assert native_crc32c()


def test_manual_assignment_seek_and_headers_round_trip(client, kafka_broker, kafka_bootstrap, topic, request):
    if (client, kafka_broker.kind) == ("confluent-kafka", "apache"):  # runs, and says so in the summary when it fails
        request.node.add_marker(pytest.mark.xfail(reason="open: on Apache Kafka, 2 runs in 3 under load, confluent-kafka read nothing of partition 1 within 15 s after a seek on partition 0 re-assigned it", strict=False))
    create_topic(kafka_bootstrap, topic, partitions=2)
    config = kafka_config(client, kafka_bootstrap, topic)
    produce(config, topic, [b"a%d" % i for i in range(10)], partition=0, key=b"k", headers=[("source", b"s0"), ("n", b"1")])
    produce(config, topic, [b"b%d" % i for i in range(3)], partition=1)
    consumer = make_consumer(config, group=False)
    try:
        assert consumer.partitions_for(topic) == [0, 1]
        consumer.assign([(topic, 0), (topic, 1)])
        consumer.seek((topic, 0), 6)
        assert consumer.assignment() == [(topic, 0), (topic, 1)]
        batches = poll_until(consumer, 7)
        by_partition = {}
        for batch in batches:
            assert {r.partition for r in batch.records} == {batch.partition[1]}
            by_partition.setdefault(batch.partition, []).extend(batch.records)
        assert [r.value for r in by_partition[(topic, 0)]] == [b"a6", b"a7", b"a8", b"a9"]
        assert [r.offset for r in by_partition[(topic, 0)]] == [6, 7, 8, 9]
        assert [r.value for r in by_partition[(topic, 1)]] == [b"b0", b"b1", b"b2"]
        first = by_partition[(topic, 0)][0]
        assert (first.topic, first.key, first.headers) == (topic, b"k", (("source", b"s0"), ("n", b"1")))
        assert abs(first.timestamp_ms / 1000 - time.time()) < 60
        assert by_partition[(topic, 1)][0].headers == ()
        assert consumer.high_watermarks() == {(topic, 0): 10, (topic, 1): 3}
        with pytest.raises(KafkaClientError, match="consumer group"):
            consumer.commit({(topic, 0): 10})
    finally:
        consumer.close()


def test_partitions_for_a_missing_topic_is_an_error(client, kafka_bootstrap, topic):
    consumer = make_consumer(kafka_config(client, kafka_bootstrap, topic), group=False)
    try:
        with pytest.raises(KafkaClientError, match=f"topic {topic} does not exist"):
            consumer.partitions_for(topic, timeout_s=0.5)
    finally:
        consumer.close()


def test_group_seek_in_on_assign_commit_and_commit_in_on_revoke_at_close(client, kafka_bootstrap, topic):
    create_topic(kafka_bootstrap, topic, partitions=1)
    config = kafka_config(client, kafka_bootstrap, topic)
    produce(config, topic, [b"%d" % i for i in range(20)])
    tp = (topic, 0)
    consumer = make_consumer(config)
    calls = []

    def on_assign(partitions):
        calls.append(("assign", partitions))
        for partition in partitions:
            consumer.seek(partition, 5)
        with pytest.raises(KafkaClientError, match="inside a rebalance callback"):
            consumer.end_offsets(partitions)

    def on_revoke(partitions):
        calls.append(("revoke", partitions))
        consumer.commit({partition: 12 for partition in partitions})

    consumer.subscribe([topic], on_assign, on_revoke)
    batches = poll_until(consumer, 15)
    # Apache Kafka joins at once: kafka-python may lead the group before its metadata names the topic, assign nothing, then rejoin
    assert [call for call in calls if call[1]] == [("assign", [tp])]
    assert batches[0].first_offset == 5 and sum(len(b.records) for b in batches) == 15
    assert batches[-1].next_offset == 20
    assert consumer.committed(tp) is None
    consumer.commit({tp: 9})
    assert consumer.committed(tp) == 9
    assert consumer.assignment() == [tp]
    consumer.close()
    assert calls[-1] == ("revoke", [tp])

    # The commit made inside on_revoke (during close) is what the group holds now.
    reader = make_consumer(config)
    try:
        assert reader.committed(tp) == 12
    finally:
        reader.close()


def test_an_exception_in_a_callback_comes_out_of_poll_unchanged(client, kafka_bootstrap, topic):
    create_topic(kafka_bootstrap, topic, partitions=1)
    consumer = make_consumer(kafka_config(client, kafka_bootstrap, topic))

    def on_assign(partitions):
        raise ValueError(f"cannot restore {partitions}")

    consumer.subscribe([topic], on_assign, lambda partitions: None)
    try:
        with pytest.raises(ValueError, match="cannot restore"):
            poll_until(consumer, 1, timeout_s=10)
    finally:
        consumer.close()


class PollingMember(threading.Thread):
    """One group member polling in its own thread, as separate daemon processes would."""

    def __init__(self, name: str, config: KafkaConfig, topic: str, events: list):
        super().__init__(daemon=True)
        self.name_, self.events, self.stop = name, events, threading.Event()
        self.consumer = make_consumer(config)
        self.held: list = []
        self.error: BaseException | None = None
        self.consumer.subscribe([topic], self.on_assign, self.on_revoke)

    def on_assign(self, partitions):
        self.events.append((time.monotonic(), self.name_, "assign", partitions))

    def on_revoke(self, partitions):
        self.events.append((time.monotonic(), self.name_, "revoke", partitions))
        if self.stop.is_set():  # what the daemon does at close: nothing (a commit there can meet a rebalance in progress)
            return
        # what the daemon does: checkpoint, then commit, before the partitions are given up
        self.consumer.commit({tp: 5 for tp in partitions})

    def run(self):
        try:
            while not self.stop.is_set():
                self.consumer.poll_batches(0.1, 100)
                self.held = self.consumer.assignment()
        except BaseException as error:
            self.error = error
        finally:
            self.consumer.close()


def test_two_members_split_partitions_and_revoke_comes_before_reassign(client, kafka_bootstrap, topic):
    create_topic(kafka_bootstrap, topic, partitions=4)
    config = kafka_config(client, kafka_bootstrap, topic)
    for partition in range(4):
        produce(config, topic, [b"p%d-%d" % (partition, i) for i in range(5)], partition=partition)
    events: list = []
    everything = [(topic, p) for p in range(4)]
    first = PollingMember("first", config, topic, events)
    first.start()
    second = None
    try:
        deadline = time.monotonic() + 10
        while first.held != everything and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.held == everything
        second = PollingMember("second", config, topic, events)
        second.start()
        deadline = time.monotonic() + 15
        while not (len(first.held) == 2 and len(second.held) == 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(first.held + second.held) == everything and len(first.held) == 2
    finally:
        for member in (first, second):
            if member is not None:
                member.stop.set()
                member.join(10)
    assert first.error is None and second.error is None
    events = [event for event in events if event[3]]  # an empty first assignment: see the test above
    calls = [(name, kind, partitions) for _, name, kind, partitions in events]
    assert calls[0] == ("first", "assign", everything)
    assert ("first", "revoke", everything) in calls
    revoked_at = next(at for at, name, kind, _ in events if (name, kind) == ("first", "revoke"))
    second_assigned_at = next(at for at, name, kind, _ in events if (name, kind) == ("second", "assign"))
    assert revoked_at < second_assigned_at
    reader = make_consumer(config)
    try:
        assert [reader.committed(tp) for tp in everything] == [5, 5, 5, 5]  # committed inside on_revoke
    finally:
        reader.close()


def test_end_offsets_reach_the_true_end_despite_the_tansu_short_fall(client, kafka_bootstrap, topic):
    create_topic(kafka_bootstrap, topic, partitions=1)
    config = kafka_config(client, kafka_bootstrap, topic)
    for batch in range(3):  # one producer batch per flush
        produce(config, topic, [b"%d-%d" % (batch, i) for i in range(10)])
    tp = (topic, 0)
    consumer = make_consumer(config, group=False)
    try:
        listed = consumer.end_offsets([tp])[tp]
        assert 21 <= listed <= 30  # Tansu: base offset of the last batch + 1; real Kafka: 30
        consumer.assign([tp])
        consumer.seek(tp, 0)
        assert sum(len(b.records) for b in poll_until(consumer, 30)) == 30
        assert consumer.high_watermarks() == {tp: 30}
        assert consumer.end_offsets([tp]) == {tp: 30}
    finally:
        consumer.close()
    assert [r.offset for r in read_records(config, topic)] == list(range(30))
    assert [r.value for r in read_records(config, topic, {0: 28})] == [b"2-8", b"2-9"]
    assert [r.offset for r in read_tail(config, topic, 4)[0]] == [26, 27, 28, 29]


def test_read_tail_of_an_empty_topic(client, kafka_bootstrap, topic):
    create_topic(kafka_bootstrap, topic, partitions=2)
    assert read_tail(kafka_config(client, kafka_bootstrap, topic), topic, 3) == {0: [], 1: []}


def test_a_record_too_large_is_never_dropped_silently(client, kafka_bootstrap, topic):
    create_topic(kafka_bootstrap, topic, partitions=1)
    limit = {"kafka-python": {"max_request_size": 1000}, "confluent-kafka": {"message.max.bytes": 1000}}[client]
    config = KafkaConfig(client=client, bootstrap_servers=kafka_bootstrap, topic=topic, producer=limit)
    producer = make_producer(config)
    with pytest.raises(KafkaClientError, match="(?i)too large|size"):
        producer.send(topic, b"x" * 5000)
        producer.flush(5)
    producer.send(topic, b"small")
    producer.flush(10)  # the producer goes on after the failure was reported


def test_an_unreachable_broker_fails_the_flush(client, topic):
    from riverbeam.local_stack import free_port

    options = {
        "kafka-python": {"bootstrap_timeout_ms": 1000, "max_block_ms": 500, "request_timeout_ms": 500, "delivery_timeout_ms": 1000},
        "confluent-kafka": {"message.timeout.ms": 500},
    }[client]
    config = KafkaConfig(client=client, bootstrap_servers=f"127.0.0.1:{free_port()}", topic=topic, producer=options)
    producer = None
    with pytest.raises(KafkaClientError):
        producer = make_producer(config)
        producer.send(topic, b"lost?", partition=0)
        producer.flush(5)
    if producer is not None:  # or librdkafka goes on logging "Connection refused" to the end of the session
        producer.drop()
        del producer


def test_librdkafka_log_lines_go_through_python_logging(topic, capfd, caplog):
    """A broker that refuses connections: librdkafka's complaint is a log record, never a raw stderr line."""
    from riverbeam.local_stack import free_port

    config = KafkaConfig(client="confluent-kafka", bootstrap_servers=f"127.0.0.1:{free_port()}", topic=topic, producer={"message.timeout.ms": 500})
    producer = make_producer(config)
    with caplog.at_level("DEBUG", logger="online.kafka_clients.confluent.librdkafka"), pytest.raises(KafkaClientError):
        producer.send(topic, b"lost?", partition=0)
        producer.flush(5)
    producer.drop()
    del producer
    assert any("Connection refused" in record.getMessage() for record in caplog.records)
    # On stderr, only a handler's records (JSON lines, when an earlier test in this process configured riverbeam's
    # logging), never librdkafka's own lines ("%3|<time>|FAIL|rdkafka#producer-1| ...").
    printed = [line for line in capfd.readouterr().err.splitlines() if "Connection refused" in line]
    assert not [line for line in printed if not line.startswith("{") or not json.loads(line)["logger"].startswith("online.")], printed


@pytest.mark.parametrize(
    "client, section, key, message",
    [
        ("kafka-python", "consumer", "session.timeout.ms", "unknown option for kafka-python (did you mean session_timeout_ms?)"),
        ("kafka-python", "producer", "lingr_ms", "unknown option for kafka-python (did you mean linger_ms?)"),
        ("kafka-python", "consumer", "enable_auto_commit", "auto commit is always off"),
        ("confluent-kafka", "consumer", "no.such.option", "unknown option for confluent-kafka"),
        ("confluent-kafka", "consumer", "session_timeout_ms", "librdkafka names use dots: session.timeout.ms?"),
        ("confluent-kafka", "producer", "acks", "acks=all"),
    ],
)
def test_an_option_the_client_does_not_take_is_a_config_error_naming_it(client, section, key, message, kafka_bootstrap):
    config = KafkaConfig(client=client, bootstrap_servers=kafka_bootstrap, topic="t", **{section: {key: 1}})
    with pytest.raises(ConfigError) as error:
        (make_consumer if section == "consumer" else make_producer)(config)
    assert error.value.path == f"kafka.{section}.{key}"
    assert message in error.value.message


def test_a_bad_librdkafka_value_is_a_config_error_naming_it(kafka_bootstrap):
    config = KafkaConfig(client="confluent-kafka", bootstrap_servers=kafka_bootstrap, topic="t", consumer={"session.timeout.ms": "soon"})
    with pytest.raises(ConfigError) as error:
        make_consumer(config)
    assert error.value.path == "kafka.consumer.session.timeout.ms"


def test_end_offsets_retry_kafka_pythons_partial_answer_then_fail_in_one_line(kafka_bootstrap, topic, monkeypatch):
    """kafka-python raises KeyError inside end_offsets when the broker answers a look-up partially: retried, never a traceback."""
    import kafka

    from online.kafka_clients import base

    config = kafka_config("kafka-python", kafka_bootstrap, topic)
    create_topic(kafka_bootstrap, topic)
    produce(config, topic, [b"a", b"b", b"c"])
    consumer = make_consumer(config, group=False)
    real = kafka.KafkaConsumer.end_offsets
    answer = consumer.end_offsets([(topic, 0)])  # what the broker answers (Tansu: up to one batch short)
    assert answer[(topic, 0)] > 0
    calls = []

    def partial_then_real(self, partitions, timeout_ms=None):
        calls.append(1)
        if len(calls) <= 2:
            raise KeyError(f"TopicPartition(topic='{topic}', partition=0)")
        return real(self, partitions, timeout_ms)

    monkeypatch.setattr(kafka.KafkaConsumer, "end_offsets", partial_then_real)
    try:
        assert consumer.end_offsets([(topic, 0)]) == answer  # after two partial answers
        assert len(calls) == 3
        monkeypatch.setattr(base, "RETRY_SECONDS", 0.5)
        monkeypatch.setattr(kafka.KafkaConsumer, "end_offsets", lambda self, partitions, timeout_ms=None: {}[partitions[0]])
        with pytest.raises(KafkaClientError, match=r"kafka-python: end offsets of .* failed after \d+ attempt\(s\) in .*KeyError"):
            base.retry_call(lambda: consumer._consumer.end_offsets([kafka.TopicPartition(topic, 0)]), f"kafka-python: end offsets of {[(topic, 0)]}", seconds=0.5)
    finally:
        consumer.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_newer_transactional_producer_fences_the_older_one(kafka_bootstrap, topic, client):
    """What the outputs' fencing rests on, measured on the broker: records of a fenced producer are refused."""
    from online.kafka_clients import ProducerFencedError

    config = kafka_config(client, kafka_bootstrap, topic)
    create_topic(kafka_bootstrap, topic)
    old = make_producer(config, transactional_id=f"tx-{topic}")
    old.send(topic, b"before", partition=0)
    old.commit_transaction()
    new = make_producer(config, transactional_id=f"tx-{topic}")  # the takeover
    with pytest.raises(ProducerFencedError):
        old.send(topic, b"stale", partition=0)
        old.commit_transaction()
    old.drop()
    new.send(topic, b"after", partition=0)
    new.close()
    values = [r.value for r in read_records(config, topic)]
    assert values == [b"before", b"after"]


def test_position_passes_transaction_markers(kafka_bootstrap, topic, client):
    config = kafka_config(client, kafka_bootstrap, topic)
    create_topic(kafka_bootstrap, topic)
    producer = make_producer(config, transactional_id=f"tx-{topic}")
    producer.send(topic, b"a", partition=0)
    producer.commit_transaction()
    producer.close()
    assert [r.value for r in read_records(config, topic, timeout_s=10)] == [b"a"]  # ends although the marker holds no record


@pytest.mark.parametrize("client", CLIENTS)
def test_a_fenced_producer_sending_on_gets_producer_fenced_and_nothing_else(kafka_bootstrap, topic, client):
    """A stale instance keeps sending after a newer one fenced it. On Apache Kafka kafka-python first
    tries to bump its epoch (refused: fenced), and a send during that bump raised IllegalStateError
    ("Cannot call send in state BUMPING_PRODUCER_EPOCH"): the daemon exited instead of going back to
    standby. Every send or commit must end in ProducerFencedError."""
    from online.kafka_clients import ProducerFencedError

    config = kafka_config(client, kafka_bootstrap, topic)
    create_topic(kafka_bootstrap, topic)
    old = make_producer(config, transactional_id=f"tx-{topic}")
    old.send(topic, b"before", partition=0)
    old.commit_transaction()
    new = make_producer(config, transactional_id=f"tx-{topic}")
    with pytest.raises(ProducerFencedError):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            old.send(topic, b"stale", partition=0)
            time.sleep(0.001)
        old.commit_transaction()
    old.drop()
    new.close()
    assert [r.value for r in read_records(config, topic)] == [b"before"]


def test_kafka_python_send_during_an_epoch_bump_waits_for_its_outcome():
    """The race the test above cannot force: a send while kafka-python bumps its epoch (seen in the
    SIGSTOP takeover test on Apache Kafka) waits for the bump and ends fenced, or goes through."""
    from kafka.errors import IllegalStateError
    from kafka.errors import KafkaError as KafkaPythonError
    from kafka.errors import ProducerFencedError as KafkaPythonFenced

    from online.kafka_clients import ProducerFencedError
    from online.kafka_clients.kafka_python import KafkaPythonProducer

    class Bumping:
        def __init__(self, outcome):
            self.answers = [IllegalStateError("Cannot call send in state BUMPING_PRODUCER_EPOCH")] * 3 + [outcome]
            self.calls = 0

        def send(self, topic, **kwargs):
            answer = self.answers[min(self.calls, len(self.answers) - 1)]
            self.calls += 1
            if isinstance(answer, Exception):
                raise answer
            return answer

    fenced = KafkaPythonError("Cannot perform send because at least one previous transactional or idempotent request has failed with errors.", KafkaPythonFenced())
    producer = object.__new__(KafkaPythonProducer)  # no broker: the race is in the client's state machine
    producer._failures = []
    producer._producer = Bumping(fenced)
    with pytest.raises(ProducerFencedError):
        producer.send("t", b"stale", partition=0)
    assert producer._producer.calls == 4

    class Sent:
        def add_errback(self, callback):
            self.errback = callback

    producer._producer = Bumping(Sent())
    producer.send("t", b"fine again", partition=0)  # the bump succeeded (a timed-out transaction): the send goes through
    assert producer._producer.calls == 4
