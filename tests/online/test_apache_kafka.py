"""What only a real Apache Kafka broker can show (Tansu cannot): transactions of a killed writer are
aborted, and offsets vanish the real ways (DeleteRecords, retention).

riverbeam relies on Kafka's documented semantics here, nothing more: a transactional producer's
open transaction is aborted when a producer with the same transactional id initialises (or when
its timeout passes), ``read_committed`` readers never see aborted records, and a log start that
moved is reported by ListOffsets(earliest). The guarantees' own tests (kill -9, takeover, poison,
keyed units, recreated topics) run on both brokers through the ``both_brokers`` marker; this module
holds the cases Tansu cannot run (it commits a killed writer's transaction and panics on
DeleteRecords: ``shared/LOCAL-STACK.md``). Skipped, with the reason, where Java or Maven is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import orjson
import pytest

from online.config import KafkaConfig
from online.kafka_clients import create_topic, make_consumer, make_producer, read_records
from online.consume.outputs import SOURCE_HEADER, OutputWriter
from tests.online.consume.test_daemon import (  # noqa: F401  (no_daemon_left_behind is autouse: no daemon outlives a test)
    CLIENTS, PHISHING, job_config, no_daemon_left_behind, produce, run_daemon, start_daemon,
)  # fmt: skip
from tests.online.consume.test_restart_after_kill import DANGLING


@pytest.fixture(scope="module")
def bootstrap(apache_kafka) -> str:
    return f"127.0.0.1:{apache_kafka.port}"


def kill_inside_a_transaction(client: str, bootstrap: str, topic: str, txn: str, timeout_s: float | None = None) -> None:
    """A writer commits source offsets 0-4 to partition 1 of `topic`, sends 5-7 in a new transaction, and is killed (-9)."""
    script = DANGLING if timeout_s is None else DANGLING.replace("transactional_id=txn)", f"transactional_id=txn, transaction_timeout_s={timeout_s})")
    writer = subprocess.Popen([sys.executable, "-c", script, client, bootstrap, topic, txn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "sent"
    finally:
        writer.kill()
        writer.communicate()


def sources(records) -> list[str]:
    return [dict(r.headers)[SOURCE_HEADER].decode() for r in records]


def read_uncommitted(bootstrap: str, topic: str, partition: int) -> list[str]:
    """Every record in the log, aborted ones included (kafka-python, read_uncommitted)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted", enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        return [dict(r.headers)[SOURCE_HEADER].decode() for r in consumer]
    finally:
        consumer.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_killed_writers_open_transaction_is_aborted_by_its_successor_and_never_read(bootstrap, topic, client):
    """Kafka aborts a killed producer's open transaction when the next producer of its id starts
    (Tansu commits it). The restore scan then finds only the committed records, so the aborted
    ones are written again by the successor: once each, none lost."""
    out = f"{topic}.pred"
    create_topic(bootstrap, out, partitions=2)
    kafka = KafkaConfig(client=client, bootstrap_servers=bootstrap, topic=topic)
    txn = f"riverbeam-test-{topic}"
    kill_inside_a_transaction(client, bootstrap, out, txn)

    successor = make_producer(kafka, transactional_id=txn)  # as the daemon does: before its restore scan
    outputs = OutputWriter(successor, None, out, scanner=lambda: make_consumer(kafka, group=False))
    outputs.restore([("src", 0)], {f"{out}/0": 0, f"{out}/1": 0})
    assert outputs.written_through == {(out, ("src", 0)): 4}  # 5-7 were aborted: they are to be written again
    successor.send(out, b"{}", key=b"src/0", headers=[(SOURCE_HEADER, b"src/0/5")], partition=1)
    successor.commit_transaction()
    successor.close()
    outputs.close()

    assert sources(read_records(kafka, out)) == [f"src/0/{offset}" for offset in range(6)]  # read_committed
    # the aborted records are in the log all the same: what read_committed hides, not what was never sent
    assert read_uncommitted(bootstrap, out, 1) == [f"src/0/{offset}" for offset in (0, 1, 2, 3, 4, 5, 6, 7, 5)]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_killed_writers_open_transaction_is_aborted_at_its_timeout_without_a_successor(bootstrap, topic, client):
    """Nobody takes over: the broker aborts the transaction once its timeout passes, and a
    read_committed reader (a downstream consumer of the predictions) reads past it to the end."""
    out = f"{topic}.pred"
    create_topic(bootstrap, out, partitions=2)
    kafka = KafkaConfig(client=client, bootstrap_servers=bootstrap, topic=topic)
    kill_inside_a_transaction(client, bootstrap, out, f"riverbeam-test-{topic}", timeout_s=3)
    assert sources(read_records(kafka, out, timeout_s=60)) == [f"src/0/{offset}" for offset in range(5)]


def delete_records(bootstrap: str, topic: str, before: int) -> None:
    """Move partition 0's log start to `before` (the DeleteRecords API, as ``kafka-delete-records.sh``)."""
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_records({TopicPartition(topic, 0): before})
    finally:
        admin.close()


def log_start(bootstrap: str, topic: str) -> int:
    consumer = make_consumer(KafkaConfig(bootstrap_servers=bootstrap, topic=topic), group=False)
    try:
        return consumer.beginning_offsets([(topic, 0)])[(topic, 0)]
    finally:
        consumer.close()


def assert_gap_fails_then_skips(tmp_path, bootstrap: str, topic: str, client: str, checkpointed: int, start: int, end: int) -> None:
    """A restart fails in one line naming the gap; with ``on_offset_gap: skip`` it resumes at the log start, counted."""
    config = job_config(tmp_path, bootstrap, topic, client)
    process = start_daemon(config, "--until-caught-up")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        f"riverbeam: error: offset gap on {topic}[0]: the checkpoint resumes at offset {checkpointed} but the broker holds [{start}, {end}): "
        f"the checkpointed offset is below the log start (records deleted, e.g. by retention); set kafka.on_offset_gap: skip to go on from offset {start}"
    )
    skipping = job_config(tmp_path, bootstrap, topic, client, kafka={"on_offset_gap": "skip"})
    process = start_daemon(skipping, "--until-caught-up")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    gap = next(json.loads(line) for line in err.splitlines() if '"msg":"offset gap skipped"' in line)
    assert (gap["checkpointed"], gap["log_start"], gap["resume_at"]) == (checkpointed, start, start)
    unit = json.loads(out.strip().splitlines()[-1])["units"]["all"]
    assert unit["events_seen"] == checkpointed + (end - start)  # the events still there, from the log start on
    assert unit["positions"] == {f"{topic}/0": end}


@pytest.mark.parametrize("client", CLIENTS)
def test_delete_records_past_the_checkpoint_is_an_offset_gap(tmp_path, bootstrap, topic, client):
    produce(bootstrap, topic, [orjson.dumps(e) for e in PHISHING[:300]])
    assert run_daemon(job_config(tmp_path, bootstrap, topic, client))["units"]["all"]["events_seen"] == 300
    produce(bootstrap, topic, [orjson.dumps(e) for e in PHISHING[300:500]])
    delete_records(bootstrap, topic, 420)
    assert log_start(bootstrap, topic) == 420
    assert_gap_fails_then_skips(tmp_path, bootstrap, topic, client, checkpointed=300, start=420, end=500)


def test_retention_past_the_checkpoint_is_an_offset_gap(tmp_path, bootstrap, topic):
    """Short ``segment.ms`` rolls a segment per batch; a short ``retention.ms`` then deletes the
    expired segments, moving the log start past the checkpoint."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    create_topic(bootstrap, topic, partitions=1, config={"segment.ms": "200"})
    batches = [PHISHING[:300], PHISHING[300:400], PHISHING[400:500]]
    produce(bootstrap, topic, [orjson.dumps(e) for e in batches[0]])
    assert run_daemon(job_config(tmp_path, bootstrap, topic, "kafka-python"))["units"]["all"]["events_seen"] == 300
    for batch in batches[1:]:
        time.sleep(0.5)  # past segment.ms: the next append rolls a new segment
        produce(bootstrap, topic, [orjson.dumps(e) for e in batch])
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:  # AlterConfigs replaces the topic's whole set: name both
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"segment.ms": "200", "retention.ms": "100"})])
    finally:
        admin.close()
    deadline = time.monotonic() + 60  # the broker checks retention every second (local stack setting)
    while log_start(bootstrap, topic) < 400 and time.monotonic() < deadline:
        time.sleep(0.5)
    start = log_start(bootstrap, topic)
    assert 300 < start <= 500, start  # every expired segment went, the active one rolled and deleted too once expired
    assert_gap_fails_then_skips(tmp_path, bootstrap, topic, "kafka-python", checkpointed=300, start=start, end=500)
