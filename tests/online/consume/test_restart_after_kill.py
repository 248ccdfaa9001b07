"""Issue 13, item 3: a global model with dead letters and predictions restarts cleanly after kill -9, every time.

The daemon is killed several times, at random moments and right after a new checkpoint appears
(the moment its transactional producer has just begun a fresh transaction and sent into it: the
killed instance leaves that transaction open at the broker). The next ``consume
--until-caught-up`` must exit 0, its model must equal an uninterrupted learner over the same
events, and every dead letter and prediction must be in its topic exactly once.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from online.checkpoints.store import LATEST, CheckpointStore
from online.config import KafkaConfig
from online.kafka_clients import create_topic, make_consumer, make_producer
from online.consume.outputs import SOURCE_HEADER, OutputWriter, source_header
from tests.online.consume.test_daemon import (
    CLIENTS,
    PHISHING,
    assert_outputs_exactly_once,
    expected_phishing_metrics,
    job_config,
    no_daemon_left_behind,  # noqa: F401  (autouse: no daemon outlives a test)
    produce,
    produce_with_broken_lines,
    read_topic,
    recreate_topic,
    run_daemon,
    start_daemon,
    wait_for_log,
)

EVENTS = 12_000
pytestmark = pytest.mark.both_brokers  # the exactly-once guarantees: on Tansu and on Apache Kafka


def pointer(checkpoints: Path) -> bytes | None:
    """The bytes of the checkpoint store's LATEST pointer (it moves only once a checkpoint is complete)."""
    try:
        return (checkpoints / LATEST).read_bytes()
    except FileNotFoundError:
        return None


def kill_right_after_a_new_checkpoint(process, checkpoints: Path, delay: float, timeout: float = 60) -> tuple[bool, str]:
    """kill -9 `process` `delay` seconds after LATEST moves: (whether it was still running, its stderr)."""
    before = pointer(checkpoints)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if pointer(checkpoints) != before:
            time.sleep(delay)
            break
        time.sleep(0.005)
    alive = process.poll() is None
    process.kill()
    _, err = process.communicate()
    return alive, err


SKIPPING = "outputs already written before the restart will be skipped"
LEASE_LOST = "lost the lease"


@pytest.mark.slow
@pytest.mark.both_brokers(tansu_clients=["kafka-python"])  # Apache Kafka with both clients
def test_kill_9_after_checkpoints_restarts_cleanly_with_outputs_exactly_once(tmp_path, kafka_bootstrap, topic, client):
    events, bad = produce_with_broken_lines(kafka_bootstrap, topic, EVENTS, first=120, every=599)
    outputs = {"dead_letter_topic": f"{topic}.dlq", "predictions_topic": f"{topic}.pred", "poll_max_records": 200}
    config = job_config(tmp_path, kafka_bootstrap, topic, client, kafka=outputs, checkpoint={"every_events": 1000, "every_seconds": 1, "lease_seconds": 3})
    checkpoints = tmp_path / "checkpoints"
    rng = random.Random(13)
    kills = 0
    logs = []
    for round_ in range(4):
        process = start_daemon(config)
        started = wait_for_log(process, '"msg":"restored"', '"msg":"starting fresh"', timeout=90)
        # right after a checkpoint (the new transaction just opened), or a little later (records in it)
        delay = 0.0 if round_ % 2 == 0 else rng.uniform(0.05, 0.5)
        alive, rest = kill_right_after_a_new_checkpoint(process, checkpoints, delay)
        kills += alive
        logs.append(started + rest)
    assert kills >= 3, "the stream ended before the daemon could be killed mid-stream"

    process = start_daemon(config, "--until-caught-up")
    out, err = process.communicate(timeout=180)
    logs.append(err)
    # what the stress runs count: restores that found outputs to skip, leases lost under load
    print(f"restores skipping outputs already written: {sum(log.count(SKIPPING) for log in logs)}; leases lost: {sum(log.count(LEASE_LOST) for log in logs)}")
    assert process.returncode == 0, err[-3000:]
    assert '"msg":"restored"' in err
    unit = json.loads(out.strip().splitlines()[-1])["units"]["all"]
    assert unit["events_seen"] == unit["events_learned"] == len(events)  # every good event learned once
    assert unit["metrics"] == expected_phishing_metrics(events)  # the model equals an uninterrupted run

    # a failure's post-mortem: every daemon's log and every output record (offset, source) stay in tmp_path
    for number, log in enumerate(logs):
        (tmp_path / f"daemon-{number}.log").write_text(log)
    dead = read_topic(kafka_bootstrap, f"{topic}.dlq", client)
    predicted = read_topic(kafka_bootstrap, f"{topic}.pred", client)
    for name, records in (("dlq", dead), ("pred", predicted)):
        (tmp_path / f"{name}.txt").write_text("".join(f"{r.partition} {r.offset} {dict(r.headers)[SOURCE_HEADER].decode()}\n" for r in records))
    assert sorted(orjson.loads(r.value)["source"]["offset"] for r in dead) == sorted(bad), tmp_path  # each dead letter exactly once
    sources = [dict(r.headers)[SOURCE_HEADER] for r in predicted]
    restores = [line for log in logs for line in log.splitlines() if SKIPPING in line or LEASE_LOST in line]
    doubled = sorted(int(source.rsplit(b"/", 1)[1]) for source, n in collections.Counter(sources).items() if n > 1)
    found = {"doubled": len(doubled), "range": doubled[:1] + doubled[-1:], "missing": len(events) - len(set(sources)), "restores": restores, "post-mortem": str(tmp_path)}
    assert len(sources) == len(set(sources)) == len(events), found  # no prediction missing or doubled


def roll_back(checkpoints: Path, sequence: int) -> None:
    """Make checkpoint number `sequence` the latest, as if its writer had been killed right after
    it became durable: the newer ones never were (their outputs, committed first, stay)."""
    pointer = json.loads((checkpoints / LATEST).read_text())
    for path in (checkpoints / "checkpoints").iterdir():
        if int(path.name[:12]) > sequence:
            shutil.rmtree(path)
    history = [name for name in pointer["history"] if int(name[:12]) <= sequence]
    (checkpoints / LATEST).write_text(json.dumps({"id": history[0], "sequence": sequence, "history": history}))


@pytest.mark.both_brokers(tansu_clients=["kafka-python"])  # Apache Kafka with both clients
def test_a_checkpoint_behind_outputs_already_written_still_skips_them(tmp_path, kafka_bootstrap, topic, client):
    """Outputs written ahead of a checkpoint must stay once through two restarts.

    Instance A commits outputs for events past its last durable checkpoint (killed between a
    checkpoint's commit of the outputs and its upload). Instance B restores the older
    checkpoint, skips those outputs, writes a checkpoint behind them and is killed right after.
    B's checkpoint records output end offsets past A's records, where a restore's scan does not
    look: instance C, restoring it, wrote A's outputs again (a dead letter or a poll's worth of
    predictions twice, about 1 kill -9 run in 8 under load). The checkpoint now also records
    what is written ahead of its positions.
    """
    events, bad = produce_with_broken_lines(kafka_bootstrap, topic, 3000, first=150, every=299)
    outputs = {"dead_letter_topic": f"{topic}.dlq", "predictions_topic": f"{topic}.pred", "poll_max_records": 100}
    config = job_config(tmp_path, kafka_bootstrap, topic, client, kafka=outputs, checkpoint={"every_events": 1000, "every_seconds": 600})
    checkpoints = tmp_path / "checkpoints"

    run_daemon(config)  # A: every output, checkpoints 1, 2 and 3 (about 1000 events apart)
    roll_back(checkpoints, 1)  # A's checkpoints past its first one never became durable
    run_daemon(config)  # B: skips A's outputs; its checkpoint 2 lies behind the last of them
    roll_back(checkpoints, 2)  # B killed right after it
    summary = run_daemon(config)  # C

    assert summary["units"]["all"]["metrics"] == expected_phishing_metrics(events)
    assert_outputs_exactly_once(kafka_bootstrap, topic, len(events), bad)


DANGLING = """
import sys
from online.config import KafkaConfig
from online.kafka_clients import make_producer
client, bootstrap, topic, txn = sys.argv[1:]
producer = make_producer(KafkaConfig(client=client, bootstrap_servers=bootstrap, topic=topic), transactional_id=txn)
def send(offset):
    producer.send(topic, b"{}", key=b"src/0", headers=[("riverbeam-source", f"src/0/{offset}".encode())], partition=1)
for offset in range(5):
    send(offset)
producer.commit_transaction()  # durable: source offsets 0-4
for offset in range(5, 8):
    send(offset)  # in the open transaction when the process dies
producer._producer.flush()
print("sent", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("client", CLIENTS)
def test_restore_scan_waits_for_a_killed_writers_open_transaction(kafka_bootstrap, topic, client):
    """A writer killed inside a transaction; the restore scan starts before the new writer resolves it.

    On Tansu a read_committed ListOffsets answers 0 while a transaction is open in the partition:
    the scan used to take the partition for empty and return at once, so the records of the
    dangling transaction were written again once it was resolved. The scan must wait for the
    transaction's outcome and then agree with what a read_committed reader sees.
    """
    out = f"{topic}.pred"
    create_topic(kafka_bootstrap, out, partitions=2)
    kafka = KafkaConfig(client=client, bootstrap_servers=kafka_bootstrap, topic=topic)
    txn = f"riverbeam-test-{topic}"
    writer = subprocess.Popen([sys.executable, "-c", DANGLING, client, kafka_bootstrap, out, txn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "sent"
    finally:
        writer.kill()  # kill -9 with the transaction open
        writer.communicate()

    outputs = OutputWriter(None, None, out, scanner=lambda: make_consumer(kafka, group=False))
    scanned: list = []
    scan = threading.Thread(target=lambda: scanned.append(outputs.restore([("src", 0)], {f"{out}/0": 0, f"{out}/1": 0})))
    scan.start()
    time.sleep(2.0)  # the scan is under way while the dangling transaction is still open
    producer = make_producer(kafka, transactional_id=txn)  # the restarted writer: fences the old one, resolves its transaction
    scan.join(timeout=60)
    assert scanned == [None]
    producer.send(out, b"{}", key=b"src/0", headers=[(SOURCE_HEADER, source_header("src", 0, 99))], partition=1)
    producer.commit_transaction()
    producer.close()
    outputs.close()

    visible = [dict(r.headers)[SOURCE_HEADER].decode() for r in read_topic(kafka_bootstrap, out, client)]
    before_restart = [int(source.rsplit("/", 1)[1]) for source in visible if source != "src/0/99"]
    assert before_restart[:5] == [0, 1, 2, 3, 4] and visible[-1] == "src/0/99"  # committed records, then the new writer's
    # what the scan found is exactly what a reader sees of the killed writer: kept if visible, re-emitted if not
    assert outputs.written_through.get((out, ("src", 0))) == max(before_restart)


@pytest.mark.parametrize("client", CLIENTS)
def test_restore_waits_out_a_stalled_broker_instead_of_skipping_an_output_topic(kafka_broker, kafka_bootstrap, topic, client):
    """The broker stalls (SIGSTOP) while a restarted writer restores, so an output topic's metadata
    does not come in time. Taken for a missing topic, it made the restore skip that topic's scan,
    and every record already written there was written again (confluent-kafka: a checkpoint's
    worth of predictions, under load). The restore must wait for the answer instead."""
    out = f"{topic}.pred"
    create_topic(kafka_bootstrap, out, partitions=1)
    kafka = KafkaConfig(client=client, bootstrap_servers=kafka_bootstrap, topic=topic)
    producer = make_producer(kafka)
    for offset in range(5):
        producer.send(out, b"{}", key=b"src/0", headers=[(SOURCE_HEADER, source_header("src", 0, offset))], partition=0)
    producer.close()

    outputs = OutputWriter(None, None, out, scanner=lambda: make_consumer(kafka, group=False))
    broker = kafka_broker.pid()
    os.kill(broker, signal.SIGSTOP)
    resume = threading.Timer(4.0, os.kill, (broker, signal.SIGCONT))
    resume.start()
    try:
        outputs.restore([("src", 0)], None)  # no checkpoint recorded the topic: the look-up alone decides
    finally:
        resume.cancel()
        os.kill(broker, signal.SIGCONT)
        outputs.close()
    assert outputs.written_through == {(out, ("src", 0)): 4}  # all five records seen: none will be written again


@pytest.mark.parametrize("client", CLIENTS)
def test_restore_skips_an_output_topic_that_does_not_exist(kafka_bootstrap, topic, client):
    """A dead-letter topic that does not exist (never written, or deleted): the broker says so at
    once, the restore goes on, and what a checkpoint recorded as written ahead there is gone, so
    it is written again rather than skipped."""
    kafka = KafkaConfig(client=client, bootstrap_servers=kafka_bootstrap, topic=topic)
    outputs = OutputWriter(None, f"{topic}.dlq", None, scanner=lambda: make_consumer(kafka, group=False))
    outputs.restore([("src", 0)], None, ahead={f"{topic}.dlq": {"src/0": 40}})  # no answer would raise KafkaClientError
    outputs.close()
    assert outputs.written_through == {}


@pytest.mark.slow
@pytest.mark.both_brokers(tansu_clients=["kafka-python"])  # Apache Kafka with both clients
def test_keyed_units_killed_repeatedly_write_each_output_once(tmp_path, kafka_bootstrap, topic, client):
    """Per-key models on 4 partitions, with dead letters and predictions, killed three times mid-stream.

    Keyed units write through a plain idempotent producer (no transaction) and checkpoint per
    partition: a kill leaves each partition's outputs at a different point past its checkpoint.
    The restart must learn every event once and write every output once.
    """
    shops = ["a", "b", "c", "d", "e", "f"]
    events = [{**e, "shop": shops[i % len(shops)]} for i, e in enumerate(itertools.islice(itertools.cycle(PHISHING), 8_000))]
    values = [orjson.dumps(e) for e in events]
    keys = [e["shop"].encode() for e in events]
    bad = set(range(70, len(values), 401))
    for position in sorted(bad, reverse=True):
        values[position] = b"{broken"
    produce(kafka_bootstrap, topic, values, partitions=4, keys=keys)
    outputs = {"dead_letter_topic": f"{topic}.dlq", "predictions_topic": f"{topic}.pred", "poll_max_records": 100}
    config = job_config(tmp_path, kafka_bootstrap, topic, client, events={"target": "label", "key": "shop"}, kafka=outputs,
                        checkpoint={"every_events": 300, "every_seconds": 1})
    rng = random.Random(21)
    for _ in range(3):
        process = start_daemon(config)
        wait_for_log(process, '"msg":"restored"', '"msg":"starting fresh"', timeout=90)
        time.sleep(rng.uniform(0.3, 1.5))
        process.kill()  # kill -9 mid-stream
        process.communicate()

    summary = run_daemon(config, timeout=180)
    good = len(events) - len(bad)
    units = summary["units"].values()
    assert sum(u["events_seen"] for u in units) == sum(u["events_learned"] for u in units) == good  # each event learned once
    letters = [(orjson.loads(r.value)["source"]["partition"], orjson.loads(r.value)["source"]["offset"]) for r in read_topic(kafka_bootstrap, f"{topic}.dlq", client)]
    assert len(letters) == len(set(letters)) == len(bad)  # each dead letter once
    sources = [dict(r.headers)[SOURCE_HEADER] for r in read_topic(kafka_bootstrap, f"{topic}.pred", client)]
    assert len(sources) == len(set(sources)) == good  # each prediction once


def test_outputs_written_ahead_on_a_topic_since_recreated_skip_nothing(tmp_path, kafka_bootstrap, topic):
    """The state above (a checkpoint recording outputs ahead of its position), then the source
    topic is recreated with new events. The source offsets recorded as written ahead name the old
    events: the new events at those offsets must still get their outputs (with on_offset_gap: skip)."""
    produce_with_broken_lines(kafka_bootstrap, topic, 3000, first=150, every=299)
    outputs = {"dead_letter_topic": f"{topic}.dlq", "predictions_topic": f"{topic}.pred", "poll_max_records": 100, "on_offset_gap": "skip"}
    config = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", kafka=outputs, checkpoint={"every_events": 1000, "every_seconds": 600})
    checkpoints = tmp_path / "checkpoints"
    run_daemon(config)
    roll_back(checkpoints, 1)
    run_daemon(config)
    roll_back(checkpoints, 2)
    ahead = CheckpointStore(str(checkpoints)).load_latest().manifest["extra"]["outputs_ahead"]
    assert ahead[f"{topic}.pred"][f"{topic}/0"] > 2500  # the state under test: outputs recorded ahead of position ~2000
    predicted_before = len(read_topic(kafka_bootstrap, f"{topic}.pred"))

    recreate_topic(kafka_bootstrap, topic, [orjson.dumps(e) for e in PHISHING[:1000]])
    summary = run_daemon(config)
    assert summary["units"]["all"]["positions"] == {f"{topic}/0": 1000}
    assert len(read_topic(kafka_bootstrap, f"{topic}.pred")) - predicted_before == 1000  # every new event predicted, none skipped
