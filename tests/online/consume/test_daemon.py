"""The consumer daemon against the real local broker, with both Kafka clients."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import orjson
import pytest
import yaml
from river import datasets, evaluate, linear_model, metrics, preprocessing

from online.checkpoints.store import CheckpointStore
from online.checkpoints.units import partition_unit, unit_uri
from online.config import EventsConfig, KafkaConfig, ModelConfig
from online.kafka_clients import create_topic, make_consumer, make_producer
from online.learning.learner import Learner
from online.consume.outputs import SOURCE_HEADER

CLIENTS = ["kafka-python", "confluent-kafka"]
SHORT_GROUP_TIMEOUTS = {
    "kafka-python": {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300, "max_poll_interval_ms": 4000},
    # max.poll.interval.ms is also the group's rebalance timeout: librdkafka's 300 s default let a join wait 300 s for
    # members of an earlier run in the same group (the Python API workers test hung so in CI; kafka-python's is 4 s here)
    "confluent-kafka": {"session.timeout.ms": 2000, "heartbeat.interval.ms": 300, "max.poll.interval.ms": 10000},
}
MODEL = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy", "LogLoss"]}
PHISHING = [{**x, "label": y} for x, y in datasets.Phishing()]


def produce(bootstrap: str, topic: str, values: list[bytes], partitions: int = 1, keys: list[bytes] | None = None) -> None:
    create_topic(bootstrap, topic, partitions=partitions)
    producer = make_producer(KafkaConfig(bootstrap_servers=bootstrap, topic=topic))
    for i, value in enumerate(values):
        key = keys[i] if keys else None
        producer.send(topic, value, key=key, partition=None if keys else i % partitions)
    producer.flush()
    producer.close()


def job_config(tmp_path, bootstrap, topic, client, **overrides) -> str:
    config = {
        "kafka": {"client": client, "bootstrap_servers": bootstrap, "topic": topic, "group_id": f"g-{uuid.uuid4().hex[:8]}", "consumer": SHORT_GROUP_TIMEOUTS[client]},
        "model": MODEL,
        "events": {"target": "label"},
        "checkpoint": {"uri": str(tmp_path / "checkpoints"), "every_events": 500, "lease_seconds": 3},
        "metrics": {"port": None},
    }
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    path = tmp_path / f"consumer-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_daemon_left_behind():
    """Whatever a test does (or fails to do), no daemon it started outlives it."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()


def start_daemon(config_path: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, NO_GCE_CHECK="true", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "riverbeam.cli", "consume", "--config", config_path, "--json", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    STARTED.append(process)
    return process


def wait_for_log(process: subprocess.Popen, *needles: str, timeout: float = 60) -> str:
    """Read the daemon's stderr until one of `needles` appears (the rest is kept for communicate).

    A daemon silent past `timeout` is killed, so that the wait fails with what it logged (a read of a silent
    daemon's stderr blocks: a stuck standby ended in pytest's timeout, with none of its log).
    """
    import threading

    seen, lock, state = [], threading.Lock(), {"done": False, "killed": False}

    def give_up():
        with lock:
            if not state["done"]:
                state["killed"] = True
                process.kill()

    timer = threading.Timer(timeout, give_up)
    timer.daemon = True
    timer.start()
    try:
        while True:
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                break
            seen.append(line)
            if any(needle in line for needle in needles):
                with lock:
                    if not state["killed"]:
                        state["done"] = True
                        return "".join(seen)
                break
    finally:
        timer.cancel()
    silent = f" within {timeout:g} s (killed then)" if state["killed"] else ""
    raise AssertionError(f"daemon never logged {needles}{silent}: {''.join(seen)[-2000:]}")


def produce_with_broken_lines(bootstrap: str, topic: str, count: int, first: int, every: int, broken: bytes = b"{broken") -> tuple[list[dict], set[int]]:
    """`count` Phishing events (cycled) with a `broken` line at offsets `first`, `first + every`, ...: (the events, those offsets)."""
    events = list(itertools.islice(itertools.cycle(PHISHING), count))
    values = [orjson.dumps(e) for e in events]
    bad = set(range(first, count, every))
    for position in sorted(bad):  # ascending: each lands at its final offset
        values.insert(position, broken)
    produce(bootstrap, topic, values)
    return events, bad


def kill_9_after_checkpoints(config_path: str, times: int = 3, seed: int = 7) -> None:
    """Start the daemon and kill -9 it at a random moment (0 to 0.3 s, drawn from `seed`) after its first checkpoint of
    the run, `times` times: mid-stream, outputs written. A kill at a fixed 2.5-5 s after the start, as before, landed
    before the first event on a loaded machine (the killed runs wrote nothing): it tested nothing."""
    rng = random.Random(seed)
    for _ in range(times):
        process = start_daemon(config_path)
        wait_for_log(process, '"msg":"checkpoint"', timeout=90)
        time.sleep(rng.uniform(0.0, 0.3))
        process.kill()
        process.wait()


def run_daemon(config_path: str, timeout: float = 120) -> dict:
    process = start_daemon(config_path, "--until-caught-up")
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def read_topic(bootstrap: str, topic: str, client: str = "kafka-python") -> list:
    config = KafkaConfig(client=client, bootstrap_servers=bootstrap, topic=topic)
    consumer = make_consumer(config, group=False)
    try:
        tps = [(topic, p) for p in consumer.partitions_for(topic, timeout_s=10)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        ends = consumer.end_offsets(tps)
        records, idle = [], 0
        while idle < 4:
            batches = consumer.poll_batches(0.5, 5000)
            idle = 0 if batches else idle + 1
            for batch in batches:
                records.extend(batch.records)
            marks = consumer.high_watermarks()
            counts = {tp: sum(1 for r in records if (r.topic, r.partition) == tp) for tp in tps}
            if all(counts[tp] >= max(ends.get(tp, 0), marks.get(tp, 0)) for tp in tps) and idle:
                break
        return records
    finally:
        consumer.close()


def expected_phishing_metrics(events=PHISHING) -> dict:
    learner = Learner(ModelConfig(**MODEL), EventsConfig(target="label"))
    learner.process_many([dict(e) for e in events])  # the learner consumes its events; cycled lists repeat objects
    return learner.metric_values()


@pytest.mark.parametrize("client", CLIENTS)
def test_end_to_end_equals_progressive_val_score_with_dead_letters(tmp_path, kafka_bootstrap, topic, client):
    values = [orjson.dumps(e) for e in PHISHING]
    bad = {17: b"not json", 400: b"[1, 2]", 401: orjson.dumps({**PHISHING[0], "label": [1]}), 900: orjson.dumps({**PHISHING[0], "empty_server_form_handler": "x"})}
    for position, value in sorted(bad.items()):  # ascending: each lands at its final offset
        values.insert(position, value)
    produce(kafka_bootstrap, topic, values)
    summary = run_daemon(job_config(tmp_path, kafka_bootstrap, topic, client, kafka={"dead_letter_topic": f"{topic}.dlq"}))
    expected = evaluate.progressive_val_score(datasets.Phishing(), preprocessing.StandardScaler() | linear_model.LogisticRegression(), metrics.Accuracy() + metrics.LogLoss())
    unit = summary["units"]["all"]
    assert unit["metrics"] == {type(m).__name__: m.get() for m in expected}
    assert summary["events_seen"] == len(values) and unit["events_learned"] == 1250 and summary["events_dead_lettered"] == 4
    latest = CheckpointStore(str(tmp_path / "checkpoints")).load_latest().manifest
    assert latest["events_learned"] == 1250 and latest["positions"] == {f"{topic}/0": len(values)}
    dead = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, f"{topic}.dlq")]
    assert sorted(d["source"]["offset"] for d in dead) == sorted(bad)
    assert all(d["version"] == 1 and d["source"]["topic"] == topic for d in dead)
    reasons = {d["source"]["offset"]: d["reason"] for d in dead}
    assert reasons[17].startswith("not JSON") and reasons[400] == "event is not a JSON object but an array"
    assert reasons[401] == "label 'label' cannot be learned by this model: [1]"
    assert reasons[900] == "feature 'empty_server_form_handler' is not a number: 'x'"
    assert next(d for d in dead if d["source"]["offset"] == 17)["value"] == "not json"


def test_sigterm_writes_a_final_checkpoint(tmp_path, kafka_bootstrap, topic):
    events = list(itertools.islice(itertools.cycle(PHISHING), 30_000))
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in events])
    config = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", checkpoint={"every_events": 1_000_000, "every_seconds": 3600})
    process = start_daemon(config)
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    wait_for_log(process, '"msg":"restored"', '"msg":"starting fresh"')
    time.sleep(1)
    assert store.load_latest() is None  # no checkpoint was due yet
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    latest = store.load_latest().manifest
    assert latest["events_seen"] == summary["units"]["all"]["events_seen"] > 0
    assert latest["positions"][f"{topic}/0"] == summary["units"]["all"]["positions"][f"{topic}/0"]


# Tansu with confluent-kafka: test_restart_after_kill's kill -9 with outputs runs Tansu with kafka-python (the default
# client) and Apache Kafka with both, the same guarantee; so Tansu has each client's kill -9 once
@pytest.mark.parametrize("client", ["confluent-kafka"])
def test_kill_9_repeatedly_equals_uninterrupted_run_and_outputs_exactly_once(tmp_path, kafka_bootstrap, topic, client):
    events, bad_positions = produce_with_broken_lines(kafka_bootstrap, topic, 12_000, first=150, every=997)
    outputs = {"dead_letter_topic": f"{topic}.dlq", "predictions_topic": f"{topic}.pred", "poll_max_records": 500}
    config = job_config(tmp_path, kafka_bootstrap, topic, client, kafka=outputs, checkpoint={"every_events": 700})
    kill_9_after_checkpoints(config)
    written_before = len(read_topic(kafka_bootstrap, f"{topic}.pred", client))
    summary = run_daemon(config)
    assert 0 < written_before < len(events)  # the killed runs wrote some of the predictions, not all
    unit = summary["units"]["all"]
    assert unit["events_seen"] == unit["events_learned"] == len(events)
    assert unit["metrics"] == expected_phishing_metrics(events)
    dead = read_topic(kafka_bootstrap, f"{topic}.dlq", client)
    assert sorted(orjson.loads(r.value)["source"]["offset"] for r in dead) == sorted(bad_positions)  # each exactly once
    predictions = read_topic(kafka_bootstrap, f"{topic}.pred", client)
    sources = [dict(r.headers)[SOURCE_HEADER] for r in predictions]
    assert len(sources) == len(set(sources)) == len(events)  # no prediction missing or doubled


def test_checkpoints_on_gcs_emulator(tmp_path, kafka_bootstrap, topic, gcs_prefix):
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in PHISHING[:600]])
    config = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", checkpoint={"uri": gcs_prefix, "every_events": 200})
    summary = run_daemon(config)
    latest = CheckpointStore(gcs_prefix).load_latest()
    assert latest.manifest["events_seen"] == 600 == summary["units"]["all"]["events_seen"]
    assert latest.manifest["metrics"] == expected_phishing_metrics(PHISHING[:600])


def test_checkpoints_on_s3_survive_kill_9_as_on_local_disk(tmp_path, kafka_bootstrap, topic, s3_prefix):
    events = list(itertools.islice(itertools.cycle(PHISHING), 12_000))
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in events])
    # no output topics here: outputs exactly once across kills are the local kill -9 test's subject
    config = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", kafka={"poll_max_records": 500}, checkpoint={"uri": s3_prefix, "every_events": 700})
    store, seen = CheckpointStore(s3_prefix), 0
    for _ in range(2):
        process = start_daemon(config)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:  # kill -9 just after a new checkpoint on S3
            latest = store.list()
            if latest and latest[0]["events_seen"] > seen:
                seen = latest[0]["events_seen"]
                break
            time.sleep(0.02)
        process.kill()
        process.wait()
    before = store.load_latest().manifest
    assert 0 < before["events_seen"] < len(events)  # the last run resumes from a checkpoint the killed ones left
    unit = run_daemon(config)["units"]["all"]
    assert unit["events_seen"] == unit["events_learned"] == len(events)
    assert unit["metrics"] == expected_phishing_metrics(events)
    assert store.load_latest().manifest["events_seen"] == len(events)
    assert store.load_latest().positions == {f"{topic}/0": len(events)}


@pytest.mark.both_brokers
def test_global_model_standby_takes_over_after_kill(tmp_path, kafka_bootstrap, topic):
    events = list(itertools.islice(itertools.cycle(PHISHING), 15_000))
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in events], partitions=2)
    config = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", kafka={"poll_max_records": 300})
    active = start_daemon(config)
    wait_for_log(active, '"msg":"starting fresh"')
    standby = start_daemon(config, "--until-caught-up")
    wait_for_log(standby, '"msg":"standby')
    assert standby.poll() is None  # waiting, not learning
    active.kill()
    active.wait()
    out, err = standby.communicate(timeout=120)
    assert standby.returncode == 0, err[-2000:]
    assert '"msg":"restored"' in err  # took over from the active instance's last checkpoint
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["units"]["all"]["events_seen"] == len(events)


@pytest.mark.both_brokers(tansu_clients=["kafka-python"])  # Apache Kafka with both clients
def test_keyed_models_split_partitions_and_survive_a_kill(tmp_path, kafka_bootstrap, topic, client):
    shops = ["a", "b", "c", "d", "e", "f"]
    events = [{**e, "shop": shops[i % len(shops)]} for i, e in enumerate(itertools.islice(itertools.cycle(PHISHING), 12_000))]
    before, after = events[:8_000], events[8_000:]
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in before], partitions=4, keys=[e["shop"].encode() for e in before])
    outputs = {"dead_letter_topic": f"{topic}.dlq", "predictions_topic": f"{topic}.pred", "poll_max_records": 200}
    config = job_config(
        tmp_path, kafka_bootstrap, topic, client, events={"target": "label", "key": "shop"}, kafka=outputs,
        checkpoint={"every_seconds": 1},  # the tail of each partition is checkpointed within a second
    )  # fmt: skip
    first, second = start_daemon(config), start_daemon(config)
    wait_for_log(first, '"msg":"starting fresh"', '"msg":"restored"')
    wait_for_log(second, '"msg":"starting fresh"', '"msg":"restored"')  # the group split the partitions
    first.kill()  # kill -9 (it may have learned all it was given: 8,000 events take well under a second)
    first.wait()
    producer = make_producer(KafkaConfig(bootstrap_servers=kafka_bootstrap, topic=topic))
    for e in after:  # events on every partition after the kill: only the survivor, once it took over the victim's partitions, learns them
        producer.send(topic, orjson.dumps(e), key=e["shop"].encode())
    producer.flush()
    producer.close()

    def unit_manifests():
        found = {}
        for p in range(4):
            checkpoint = CheckpointStore(unit_uri(str(tmp_path / "checkpoints"), partition_unit(topic, p))).load_latest()
            found[p] = checkpoint.manifest if checkpoint else None
        return found

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        manifests = unit_manifests()
        if all(manifests.values()) and sum(m["events_seen"] for m in manifests.values()) == len(events):
            break
        time.sleep(1)
    second.send_signal(signal.SIGTERM)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    handover = [line for line in err.splitlines() if any(f'"msg":"{m}' in line for m in ("partitions ", "restored", "starting fresh", "lost"))]
    assert sorted(summary["units"]) == sorted(f"{topic}.{p}" for p in range(4)), "\n".join(handover[-30:]) + "\n" + err[-1500:]  # the survivor holds every partition
    said = {p for line in handover if '"msg":"partitions assigned"' in line for p in orjson.loads(line)["partitions"]}
    assert said == {f"{topic}/{p}" for p in range(4)}  # and said when it got them (one line, or an incremental one per rebalance)
    # every partition's unit holds exactly the events of its partition, each learned once
    manifests = unit_manifests()
    for p, manifest in manifests.items():
        assert manifest["positions"][f"{topic}/{p}"] == manifest["events_seen"] == manifest["events_learned"]
    assert sum(m["events_seen"] for m in manifests.values()) == len(events)
    sources = [dict(r.headers)[SOURCE_HEADER] for r in read_topic(kafka_bootstrap, f"{topic}.pred", client)]
    assert len(sources) == len(set(sources)) == len(events)  # the survivor took over the outputs too: each prediction once


def test_a_run_that_resumes_a_checkpoint_says_so_and_counts_this_run_apart_from_the_total(tmp_path, kafka_bootstrap, topic):
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in PHISHING[:300]])
    config = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python")
    first = run_daemon(config)
    assert (first["events_learned"], first["events_learned_total"]) == (300, 300) and "resumed_from" not in first
    checkpoint = CheckpointStore(str(tmp_path / "checkpoints")).load_latest().id
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in PHISHING[300:500]])
    process = start_daemon(config, "--until-caught-up")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-3000:]
    second = json.loads(out.strip().splitlines()[-1])
    assert (second["events_seen"], second["events_learned"], second["events_learned_total"]) == (200, 200, 500)  # per run, as replay counts
    assert second["resumed_from"] == {"checkpoint": checkpoint, "events_learned": 300}
    assert '"events_learned_before":300' in err  # the log's restore line says what the model had learned
    from online.consume.daemon import daemon_job_summary

    text = daemon_job_summary(second).to_text().splitlines()
    assert text[1:3] == [f"  resumed from checkpoint {checkpoint} (300 events learned before)",
                         "  events_seen 200 · events_learned 200 · events_learned_total 500 · events_dead_lettered 0"]


def test_metrics_and_health_endpoints(tmp_path, kafka_bootstrap, topic):
    from riverbeam.local_stack import free_port

    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in PHISHING[:300]])
    port = free_port()
    process = start_daemon(job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", metrics={"port": port, "host": "127.0.0.1"}))
    try:
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
                    if "riverbeam_events_learned_total 300.0" in body and "riverbeam_model_metric{" in body:
                        break
            except OSError:
                pass
            time.sleep(0.3)
        assert "riverbeam_events_learned_total 300.0" in body
        assert 'riverbeam_model_metric{metric="Accuracy",model="StandardScaler|LogisticRegression",unit="all"}' in body
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read() == b"ok\n"
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0


def test_unknown_client_option_is_a_configuration_error(tmp_path, kafka_bootstrap, topic):
    config = job_config(tmp_path, kafka_bootstrap, topic, "confluent-kafka", kafka={"consumer": {"session.timeout.mss": 2000}})
    process = start_daemon(config)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "kafka.consumer.session.timeout.mss" in err


def test_replay_equals_the_daemon_on_the_same_events(tmp_path, kafka_bootstrap, topic):
    """The same events through the daemon and through `riverbeam replay --mode learn`: the same checkpoint statistics and model."""
    from online.config import ReplayJobConfig
    from online.checkpoints.persistence import restore_learner
    from online.replay.job import ReplayOptions, run_replay
    from core.configuration import parse_config

    events = list(itertools.islice(itertools.cycle(PHISHING), 5000))
    values = [orjson.dumps(e) for e in events]
    values.insert(100, b"{broken")  # bad input is skipped by both
    produce(kafka_bootstrap, topic, values)
    run_daemon(job_config(tmp_path, kafka_bootstrap, topic, "confluent-kafka"))
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(values) + b"\n")
    job = parse_config({"model": MODEL, "events": {"target": "label"}, "checkpoint": {"uri": str(tmp_path / "replayed")}}, ReplayJobConfig, environ={})
    run_replay(job, ReplayOptions([str(tmp_path / "events.jsonl")], mode="learn"))
    daemon = CheckpointStore(str(tmp_path / "checkpoints")).load_latest()
    replayed = CheckpointStore(str(tmp_path / "replayed")).load_latest()
    for field in ("events_seen", "events_learned", "metrics", "config_hash"):
        assert daemon.manifest[field] == replayed.manifest[field], field
    assert daemon.manifest["events_seen"] == 5000
    probe = {k: v for k, v in PHISHING[3].items() if k != "label"}
    by_daemon, by_replay = restore_learner(daemon).state.models[None], restore_learner(replayed).state.models[None]
    assert by_daemon.predict_proba_one(dict(probe)) == by_replay.predict_proba_one(dict(probe))


def wait_for_position(store: CheckpointStore, key: str, target: int, timeout: float = 120, alive: tuple = ()) -> dict:
    """Wait until the latest checkpoint in `store` reached `target` at position `key`; the `alive` processes must not exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = store.load_latest()
        if latest is not None and latest.manifest["positions"].get(key) == target:
            return latest.manifest
        for process in alive:
            assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint reached {key}={target}")


def assert_outputs_exactly_once(bootstrap: str, topic: str, events: int, bad: set[int]) -> None:
    dead = read_topic(bootstrap, f"{topic}.dlq")
    assert sorted(orjson.loads(r.value)["source"]["offset"] for r in dead) == sorted(bad)
    sources = [dict(r.headers)[SOURCE_HEADER] for r in read_topic(bootstrap, f"{topic}.pred")]
    assert len(sources) == len(set(sources)) == events


@pytest.mark.both_brokers(tansu_clients=["kafka-python"])  # Apache Kafka with both clients
def test_stale_writer_resumed_after_takeover_writes_nothing_and_goes_back_to_standby(tmp_path, kafka_bootstrap, topic, client):
    """SIGSTOP the active instance past its lease, let the standby take over, SIGCONT it: no output doubled, nobody exits."""
    events, bad = produce_with_broken_lines(kafka_bootstrap, topic, 15_000, first=50, every=500)
    outputs = {"dead_letter_topic": f"{topic}.dlq", "predictions_topic": f"{topic}.pred", "poll_max_records": 100}
    config = job_config(tmp_path, kafka_bootstrap, topic, client, kafka=outputs, checkpoint={"every_events": 2000, "every_seconds": 1, "lease_seconds": 3})
    active = start_daemon(config)
    wait_for_log(active, '"msg":"starting fresh"')
    time.sleep(1.5)  # learning, with outputs sent but not yet committed
    active.send_signal(signal.SIGSTOP)
    standby = start_daemon(config)
    wait_for_log(standby, '"msg":"restored"', '"msg":"starting fresh"', timeout=60)  # took over once the lease expired
    active.send_signal(signal.SIGCONT)
    wait_for_log(active, "back to standby", timeout=60)  # the stale instance noticed, dropped its outputs, and waits
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    wait_for_position(store, f"{topic}/0", len(events) + len(bad), alive=(active, standby))
    assert active.poll() is None and standby.poll() is None
    for name, process in (("the new active", standby), ("the stale instance", active)):
        process.send_signal(signal.SIGTERM)
        err = process.communicate(timeout=60)[1]
        assert process.returncode == 0, f"{name} exited {process.returncode}: {err[-3000:]}"
    assert_outputs_exactly_once(kafka_bootstrap, topic, len(events), bad)
    assert store.load_latest().manifest["events_learned"] == len(events)


@pytest.mark.both_brokers(tansu_clients=["kafka-python"])  # Apache Kafka with both clients
def test_two_instances_started_together_with_a_short_lease_one_learns_and_both_stay(tmp_path, kafka_bootstrap, topic, client):
    """lease_seconds 3, started 1 s apart: one is active, the other standby; nobody exits and no output is doubled."""
    events, bad = produce_with_broken_lines(kafka_bootstrap, topic, 10_000, first=30, every=400, broken=b"[1]")
    outputs = {"dead_letter_topic": f"{topic}.dlq", "predictions_topic": f"{topic}.pred", "poll_max_records": 200}
    config = job_config(tmp_path, kafka_bootstrap, topic, client, kafka=outputs, checkpoint={"every_events": 1000, "every_seconds": 1, "lease_seconds": 3})
    first = start_daemon(config)
    time.sleep(1)
    second = start_daemon(config)
    store = CheckpointStore(str(tmp_path / "checkpoints"))
    wait_for_position(store, f"{topic}/0", len(events) + len(bad), alive=(first, second))
    time.sleep(3)  # more than a lease: neither may lose it to the other or exit
    assert first.poll() is None and second.poll() is None
    for process in (first, second):
        process.send_signal(signal.SIGTERM)
    logs = [process.communicate(timeout=60)[1] for process in (first, second)]
    assert [process.returncode for process in (first, second)] == [0, 0]
    assert sum('"msg":"standby' in log for log in logs) >= 1 and not any("back to standby" in log for log in logs)
    assert_outputs_exactly_once(kafka_bootstrap, topic, len(events), bad)


def recreate_topic(bootstrap: str, topic: str, values: list[bytes], partitions: int = 1) -> None:
    """Delete `topic` and produce `values` to it again, as a topic of `partitions` partitions."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()
    time.sleep(1)
    produce(bootstrap, topic, values, partitions=partitions)


@pytest.mark.both_brokers
@pytest.mark.parametrize("before, after", [(1000, 300), (300, 1000)], ids=["fewer", "more"])
def test_recreated_topic_is_an_offset_gap_failing_in_one_line_or_skipped(tmp_path, kafka_bootstrap, topic, before, after):
    """A topic recreated with fewer records (idled, lag 0) or more (first records skipped silently): fail, or skip counted."""
    values = [orjson.dumps(e) for e in PHISHING[:before]]
    produce(kafka_bootstrap, topic, values)
    config = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python")
    assert run_daemon(config)["units"]["all"]["events_seen"] == before
    recreate_topic(kafka_bootstrap, topic, [orjson.dumps(e) for e in PHISHING[:after]])

    process = start_daemon(config, "--until-caught-up")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"riverbeam: error: offset gap on {topic}[0]: the checkpoint resumes at offset {before}"), last
    assert "the topic was recreated (its id changed)" in last and "kafka.on_offset_gap: skip" in last
    assert f"[0, {after})" in last and "Traceback" not in err

    skipping = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", kafka={"on_offset_gap": "skip"})
    process = start_daemon(skipping, "--until-caught-up")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    assert '"msg":"offset gap skipped"' in err
    unit = json.loads(out.strip().splitlines()[-1])["units"]["all"]
    assert unit["events_seen"] == before + after  # the new topic read from its start, nothing skipped silently
    assert unit["positions"] == {f"{topic}/0": after}


def test_checkpoint_below_the_log_start_is_an_offset_gap(tmp_path, kafka_bootstrap, topic, monkeypatch):
    """Retention deleted records past the checkpoint (Tansu has no DeleteRecords: its log start is faked, the rest is real)."""
    from core.configuration import load_config
    from online.config import ConsumeJobConfig
    from online.consume.daemon import Daemon, DaemonError

    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in PHISHING[:100]])
    for policy, expected in (("fail", None), ("skip", 70)):
        job = load_config(job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", kafka={"on_offset_gap": policy}), ConsumeJobConfig)
        daemon = Daemon(job)
        daemon.consumer = make_consumer(job.kafka, group=False)
        try:
            monkeypatch.setattr(daemon.consumer, "beginning_offsets", lambda tps: {tp: 70 for tp in tps})
            if expected is None:
                with pytest.raises(DaemonError, match=rf"offset gap on {topic}\[0\]: the checkpoint resumes at offset 50 but the broker holds \[70, 100\): .*below the log start"):
                    daemon._resolve_offset_gaps({(topic, 0): 50}, {})
            else:
                assert daemon._resolve_offset_gaps({(topic, 0): 50}, {}) == {(topic, 0): 70}
                assert f'riverbeam_offsets_skipped_total{{partition="0",topic="{topic}"}} 20.0' in daemon.metrics.exposition().decode()
        finally:
            daemon.consumer.close()


def test_config_check_refuses_what_would_fail_at_run_time(tmp_path):
    """A drift detector that is not one, a port out of range, a lease shorter than its renewals, a URI scheme nobody writes."""
    config = {
        "kafka": {"topic": "t", "on_offset_gap": "ignore"},
        "model": {**MODEL, "drift": {"detector": "linear_model.LinearRegression"}},
        "events": {"target": "label", "max_abs_value": -1},
        "checkpoint": {"uri": "ftp://host/checkpoints", "lease_seconds": 1},
        "metrics": {"port": 99999},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "riverbeam.cli", "config", "check", str(path), "--job", "consume"], capture_output=True, text=True, env=dict(os.environ, NO_GCE_CHECK="true"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    for needle in ("kafka.on_offset_gap", "events.max_abs_value", "checkpoint.uri: ftp://host/checkpoints: unsupported scheme", "checkpoint.lease_seconds: must be at least", "metrics.port"):
        assert needle in result.stderr, (needle, result.stderr)
    config.update(kafka={"topic": "t"}, events={"target": "label"}, checkpoint={"uri": str(tmp_path)}, metrics={"port": 9108})
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "riverbeam.cli", "config", "check", str(path), "--job", "consume"], capture_output=True, text=True, env=dict(os.environ, NO_GCE_CHECK="true"))
    assert result.returncode == 2 and "model.drift.detector: linear_model.LinearRegression is not a drift detector" in result.stderr, result.stderr


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """Nested aliases expand into copies: depth 9 ran past 60 s and depth 7 took 163 MB before the bound."""
    from core.configuration import load_config
    from core.errors import ConfigError
    from online.config import ConsumeJobConfig

    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]" for p, c in zip("abcdefgh", "bcdefghi")]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="the document expands to more than 100000 values"):
        load_config(path, ConsumeJobConfig)
    assert time.monotonic() - started < 5


def test_storage_down_is_logged_counted_and_survived(tmp_path, kafka_bootstrap, topic, monkeypatch, caplog):
    """An upload that hangs, then one that fails: a log line while it retries, a gauge, a counter; the daemon goes on."""
    import logging

    from core.configuration import load_config
    from online.config import ConsumeJobConfig
    from online.consume.daemon import Daemon

    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in PHISHING[:1200]])
    job = load_config(job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", checkpoint={"every_events": 300}, kafka={"poll_max_records": 100}), ConsumeJobConfig)
    real_save = CheckpointStore.save
    calls = []

    def flaky_save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(6.5)  # storage unreachable: the client keeps retrying
        if len(calls) == 2:
            raise OSError("storage unreachable")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", flaky_save)
    daemon = Daemon(job, until_caught_up=True, progress=False)
    caplog.set_level(logging.INFO, logger="riverbeam.daemon")
    gauge = []
    watch = daemon._watch_uploads

    def watching(now):
        watch(now)
        gauge.append(daemon.metrics.storage_retrying._value.get())

    monkeypatch.setattr(daemon, "_watch_uploads", watching)
    summary = daemon.run()
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("checkpoint upload still retrying (storage slow or unreachable)") == 1  # once, then every 30 s
    assert "checkpoint upload failed; retrying at the next due checkpoint" in messages
    assert max(gauge) >= 5.0 and 'riverbeam_checkpoint_failures_total 1.0' in daemon.metrics.exposition().decode()
    assert summary["units"]["all"]["events_seen"] == 1200
    assert CheckpointStore(str(tmp_path / "checkpoints")).load_latest().manifest["events_seen"] == 1200


def test_lease_keeper_renews_through_a_slow_step_and_notices_a_takeover(tmp_path):
    from core.storage import open_store
    from online.checkpoints.lease import LEASE, Lease, LeaseKeeper

    store = open_store(str(tmp_path))
    mine, theirs = Lease(store, "mine", ttl=1.5), Lease(store, "theirs", ttl=1.5)
    assert mine.try_acquire()
    keeper = LeaseKeeper(mine, every=0.5).start()
    try:
        time.sleep(3.0)  # a restore slower than the lease: the keeper renewed it meanwhile
        assert keeper.valid() and not theirs.try_acquire()
        store.write_if_generation(LEASE, json.dumps({"owner": "theirs", "expires_at": time.time() + 60}).encode(), store.read_with_generation(LEASE)[1])
        deadline = time.monotonic() + 5
        while not keeper.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert keeper.lost.is_set() and not keeper.valid()
    finally:
        keeper.stop()


@pytest.mark.both_brokers
def test_keyed_unit_on_a_recreated_topic_is_an_offset_gap(tmp_path, kafka_bootstrap, topic):
    events = [{**e, "shop": "a"} for e in PHISHING[:400]]
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in events])
    config = job_config(tmp_path, kafka_bootstrap, topic, "confluent-kafka", events={"target": "label", "key": "shop"})
    assert run_daemon(config)["units"][f"{topic}.0"]["events_seen"] == 400
    recreate_topic(kafka_bootstrap, topic, [orjson.dumps(e) for e in events[:100]])
    process = start_daemon(config, "--until-caught-up")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"riverbeam: error: offset gap on {topic}[0]: the checkpoint resumes at offset 400 but the broker holds [0, 100)"), last


def test_a_checkpoint_location_that_cannot_be_written_fails_in_one_line(tmp_path, kafka_bootstrap, topic, monkeypatch):
    """A read-only checkpoint directory (faked: the tests run as root, who may write anywhere)."""
    from core.configuration import load_config
    from core.storage import local
    from online.config import ConsumeJobConfig
    from online.consume.daemon import Daemon, DaemonError

    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in PHISHING[:10]])
    job = load_config(job_config(tmp_path, kafka_bootstrap, topic, "kafka-python"), ConsumeJobConfig)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "checkpoints" / ".LEASE.lock"))

    monkeypatch.setattr(local.LocalStore, "write_if_generation", read_only)
    with pytest.raises(DaemonError, match=r"cannot write the lease at .*checkpoints: \[Errno 13\] Permission denied"):
        Daemon(job, until_caught_up=True, progress=False).run()


@pytest.mark.parametrize("where", ["under-a-file", "read-only-mount", "gs-no-bucket", "s3-no-bucket"])
@pytest.mark.parametrize("keyed", [False, True], ids=["global", "keyed"])
def test_a_checkpoint_location_that_will_not_heal_stops_the_daemon_in_one_line_before_it_consumes(tmp_path, kafka_bootstrap, topic, where, keyed):
    """Permission denied, a read-only disk, no such bucket: exit 1 with one line, never standby forever."""
    import subprocess as sp

    if where == "under-a-file":
        (tmp_path / "a-file").write_text("")
        uri, expected = str(tmp_path / "a-file" / "checkpoints"), "Not a directory"
    elif where == "read-only-mount":
        folder = tmp_path / "read-only"
        folder.mkdir()
        if sp.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True).returncode != 0:
            pytest.skip("cannot mount a read-only folder here (needs root)")
        uri, expected = str(folder / "checkpoints"), "Read-only file system"
    else:
        scheme = where[:2]
        uri, expected = f"{scheme}://no-such-bucket-{uuid.uuid4().hex[:8]}/checkpoints", "does not exist"
    produce(kafka_bootstrap, topic, [orjson.dumps({**e, "shop": "a"}) for e in PHISHING[:50]])
    events = {"target": "label", "key": "shop"} if keyed else {"target": "label"}
    try:
        for extra in (["--until-caught-up"], []) if (where, keyed) == ("under-a-file", False) else (["--until-caught-up"],):
            process = start_daemon(job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", checkpoint={"uri": uri}, events=events), *extra)
            out, err = process.communicate(timeout=90)
            lines = [line for line in err.splitlines() if not line.startswith("{")]  # the JSON log aside
            if where.endswith("no-bucket"):  # known at start: the configuration is refused before the daemon runs (exit 2)
                assert process.returncode == 2, err[-2000:]
                assert len(lines) == 1 and f"checkpoint.uri: cannot list {uri}/LATEST: bucket " in lines[0] and expected in lines[0], err[-2000:]
            else:
                assert process.returncode == 1, err[-2000:]
                assert len(lines) == 1 and lines[0].startswith(f"riverbeam: error: cannot write checkpoints at {uri}: ") and expected in lines[0], err[-2000:]
            assert "Traceback" not in err and '"events_seen"' not in out
    finally:
        if where == "read-only-mount":
            sp.run(["umount", str(tmp_path / "read-only")], check=True)


def test_partitions_that_vanished_with_a_recreated_topic_fail_in_one_line_or_are_skipped_and_counted(tmp_path, kafka_bootstrap, topic):
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in PHISHING[:400]], partitions=4)
    config = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python")
    assert run_daemon(config)["units"]["all"]["events_seen"] == 400
    recreate_topic(kafka_bootstrap, topic, [orjson.dumps(e) for e in PHISHING[:200]], partitions=2)  # with fewer partitions

    process = start_daemon(config, "--until-caught-up")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        f"riverbeam: error: partitions vanished: {topic}[2] (checkpointed at offset 100), {topic}[3] (checkpointed at offset 100): the checkpoint "
        "reads them but the broker no longer has them (topic recreated with fewer partitions?); set kafka.on_offset_gap: skip to go on without them"
    )
    skipping = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", kafka={"on_offset_gap": "skip"})
    process = start_daemon(skipping, "--until-caught-up")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    vanished = [json.loads(line) for line in err.splitlines() if '"msg":"partition vanished' in line]
    assert [(v["topic"], v["partition"], v["checkpointed"]) for v in vanished] == [(topic, 2, 100), (topic, 3, 100)]
    assert json.loads(out.strip().splitlines()[-1])["units"]["all"]["events_seen"] == 400 + 200


@pytest.mark.parametrize("client", CLIENTS)
def test_keyed_units_restored_together_are_checked_for_offset_gaps_and_outputs_in_one_look_up(tmp_path, kafka_bootstrap, topic, client, monkeypatch):
    """Each look-up of log starts and ends can wait behind a fetch the broker holds at the log end (up to
    fetch.wait.max.ms): restoring 4 keyed units checked them one partition at a time, 4 look-ups in a row
    (benchmarks/README.md, "Two daemons in one group", finding 5). Now one look-up for all. Likewise the
    restore scan of the output topics: once per unit and per output topic (8 scans of ~0.6 s or more
    here), now one scan of both topics for the 4 units, and still every output once."""
    from core.configuration import load_config
    from online.config import ConsumeJobConfig
    from online.consume import daemon as daemon_module
    from online.consume.outputs import OutputWriter

    shops = ["a", "b", "c", "d"]
    events = [{**e, "shop": shops[i % 4]} for i, e in enumerate(PHISHING[:800])]

    def send(part):  # shop i on partition i: every partition has events in each part
        producer = make_producer(KafkaConfig(bootstrap_servers=kafka_bootstrap, topic=topic))
        for event in part:
            producer.send(topic, orjson.dumps(event), key=event["shop"].encode(), partition=shops.index(event["shop"]))
        producer.flush()
        producer.close()

    create_topic(kafka_bootstrap, topic, partitions=4)
    send(events[:400])
    outputs = {"dead_letter_topic": f"{topic}.dlq", "predictions_topic": f"{topic}.pred"}
    create_topic(kafka_bootstrap, outputs["dead_letter_topic"], partitions=2)
    config = load_config(job_config(tmp_path, kafka_bootstrap, topic, client, events={"target": "label", "key": "shop"}, kafka=outputs), ConsumeJobConfig)
    assert daemon_module.run_daemon(config, until_caught_up=True, progress=False)["events_seen"] == 400
    send(events[400:])  # the restored units are behind the log end: each must be checked
    scans = []
    scan = OutputWriter._scan
    monkeypatch.setattr(OutputWriter, "_scan", lambda writer, tps, start, wanted: scans.append((sorted(tps), sorted(wanted))) or scan(writer, tps, start, wanted))

    looked_up = []
    opened = daemon_module.make_consumer

    def counting(kafka, group=True):
        consumer = opened(kafka, group=group)
        if group:
            beginning_offsets = consumer.beginning_offsets
            consumer.beginning_offsets = lambda tps: looked_up.append(sorted(tps)) or beginning_offsets(tps)
        return consumer

    monkeypatch.setattr(daemon_module, "make_consumer", counting)
    summary = daemon_module.run_daemon(config, until_caught_up=True, progress=False)
    assert summary["events_seen"] == 400 and summary["resumed_from"]["checkpoints"] == 4  # the 4 units restored, each checked
    assert looked_up == [[(topic, p) for p in range(4)]]
    assert scans == [([(f"{topic}.dlq", 0), (f"{topic}.dlq", 1)] + [(f"{topic}.pred", p) for p in range(4)], [(topic, p) for p in range(4)])]
    sources = [dict(r.headers)[SOURCE_HEADER] for r in read_topic(kafka_bootstrap, f"{topic}.pred", client)]
    assert len(sources) == len(set(sources)) == 800  # a prediction per event, each once


@pytest.mark.parametrize("client", CLIENTS)
def test_until_caught_up_takes_its_targets_from_the_fetch_high_watermarks(tmp_path, kafka_bootstrap, topic, client, monkeypatch):
    """`--until-caught-up` looked up every partition's end offset once its first fetch answered, although that
    fetch's high watermark is exact: the look-up waited behind the broker's held fetch (1.89 s in one call,
    benchmarks/README.md, "Two daemons in one group", finding 7). Now ListOffsets only for a partition no fetch answered."""
    from core.configuration import load_config
    from online.config import ConsumeJobConfig
    from online.consume import daemon as daemon_module

    events = [{**e, "shop": "abcd"[i % 4]} for i, e in enumerate(PHISHING[:400])]
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in events], partitions=4)
    config = load_config(job_config(tmp_path, kafka_bootstrap, topic, client, events={"target": "label", "key": "shop"}), ConsumeJobConfig)
    looked_up = []
    opened = daemon_module.make_consumer

    def counting(kafka, group=True):
        consumer = opened(kafka, group=group)
        if group:
            end_offsets = consumer.end_offsets
            consumer.end_offsets = lambda tps: looked_up.append(sorted(tps)) or end_offsets(tps)
        return consumer

    monkeypatch.setattr(daemon_module, "make_consumer", counting)
    assert daemon_module.run_daemon(config, until_caught_up=True, progress=False)["events_seen"] == len(events)  # caught up, everything read
    assert looked_up == []


@pytest.mark.parametrize("client", CLIENTS)
def test_a_keyed_daemon_stopped_by_an_error_closes_without_checkpointing_through_a_closed_uploader(tmp_path, kafka_bootstrap, topic, client, monkeypatch, caplog):
    """Storage refusing a checkpoint mid-stream stops the daemon in one line; closing then revokes its units without
    trying to checkpoint them (the uploader is shut down by then: it logged "cannot schedule new futures after
    shutdown"): the last durable checkpoint stands and the rest is read again at the next start."""
    import logging

    from core.configuration import load_config
    from core.storage import StorageUnusable
    from online.config import ConsumeJobConfig
    from online.consume.daemon import Daemon, DaemonError

    produce(kafka_bootstrap, topic, [orjson.dumps({**x, "label": y, "user": f"u{i % 4}"}) for i, (x, y) in enumerate(itertools.islice(datasets.Phishing(), 600))], partitions=2)
    job = load_config(job_config(tmp_path, kafka_bootstrap, topic, client, events={"target": "label", "key": "user"}, checkpoint={"every_events": 100}), ConsumeJobConfig)
    real_save, saves = CheckpointStore.save, []

    def refusing_save(self, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:  # one unit's first checkpoint is durable, the other's is refused
            raise StorageUnusable("permission denied")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", refusing_save)
    caplog.set_level(logging.WARNING)
    with pytest.raises(DaemonError, match="cannot write checkpoints"):
        Daemon(job, until_caught_up=True, progress=False).run()
    after_the_error = [f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [line for line in after_the_error if "shutdown" in line or "error while closing" in line], after_the_error
