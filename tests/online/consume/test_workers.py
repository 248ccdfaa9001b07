"""``riverbeam consume --workers N`` (online.consume.workers) against the real local broker.

A keyed topic with 4 partitions; per-key models. Two workers must learn every event exactly once
into per-key models equal to River's learned directly per key; a kill -9 of one worker loses and
doubles nothing (its partitions move to the other worker and come back when it is restarted);
SIGTERM to the supervisor stops all with their final checkpoints; bad ``workers`` values are one
line each.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import signal
import threading
import time
import urllib.request

import orjson
import pytest
from river import datasets

from online.checkpoints.persistence import checkpoint_store
from online.checkpoints.store import CheckpointStore
from online.checkpoints.units import partition_unit, unit_uri
from online.config import KafkaConfig
from online.consume.outputs import SOURCE_HEADER
from online.kafka_clients import create_topic, make_producer
from online.serving.predict import latest_model
from tests.online.checkpoints.test_checkpoint_matrix import keyed_answers
from tests.online.consume.test_daemon import (
    CLIENTS,
    job_config,
    no_daemon_left_behind,  # noqa: F401  (autouse: no daemon outlives a test)
    read_topic,
    start_daemon,
)

USERS = [f"u{i}" for i in range(8)]
PARTITIONS = 4


def keyed_events(count: int, start: int = 0) -> list[dict]:
    rows = itertools.islice(itertools.cycle(datasets.Phishing()), start, start + count)
    return [{**x, "label": y, "user": USERS[(start + i) % len(USERS)]} for i, (x, y) in enumerate(rows)]


def produce_keyed(bootstrap: str, topic: str, events: list[dict], create: bool = True) -> None:
    """`events` keyed by user, a user always on the same partition (two users per partition)."""
    if create:
        create_topic(bootstrap, topic, partitions=PARTITIONS)
    producer = make_producer(KafkaConfig(bootstrap_servers=bootstrap, topic=topic))
    for event in events:
        producer.send(topic, orjson.dumps(event), key=event["user"].encode(), partition=USERS.index(event["user"]) % PARTITIONS)
    producer.flush()
    producer.close()


def river_per_key(events: list[dict]) -> dict:
    """River's own pipelines, one per key, learned on that key's events in order."""
    from river import compose, linear_model, preprocessing

    models = {}
    for event in events:
        x = {k: v for k, v in event.items() if k not in ("label", "user")}
        models.setdefault(event["user"], compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())).learn_one(x, event["label"])
    return models


def assert_models_equal_river(uri: str, events: list[dict]) -> None:
    from online.learning.learner import probabilities_record

    probe = keyed_events(2 * len(USERS), start=len(events))
    found = latest_model(checkpoint_store(uri))  # every unit merged: what predict and serve read
    assert found is not None
    models = river_per_key(events)
    expected = [probabilities_record(models[e["user"]].predict_proba_one({k: v for k, v in e.items() if k not in ("label", "user")})) for e in probe]
    assert keyed_answers(found[1], probe) == json.loads(json.dumps(expected))


def unit_manifests(uri: str, topic: str) -> dict:
    found = {}
    for p in range(PARTITIONS):
        checkpoint = CheckpointStore(unit_uri(uri, partition_unit(topic, p))).load_latest()
        found[p] = checkpoint.manifest if checkpoint else None
    return found


def log_lines(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def assigned(lines: list[dict]) -> list[tuple[int, str, str]]:
    """(worker, unit, "restored" / "starting fresh") in the order the workers logged them."""
    return [(line["worker"], line["unit"], line["msg"]) for line in lines if line.get("msg") in ("restored", "starting fresh")]


def owners(log: "LogLines") -> dict:
    """Each unit's latest owner, as the workers logged it."""
    return {unit: worker for worker, unit, _ in assigned(log.lines)}


def checkpointed_then_stopped(process, log: "LogLines", uri: str, topic: str, count: int) -> dict:
    """Wait until the units' checkpoints hold `count` events in all, then SIGTERM the supervisor: its summary (exit 0 asserted)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        manifests = unit_manifests(uri, topic)
        if all(manifests.values()) and sum(m["events_seen"] for m in manifests.values()) == count:
            break
        assert process.poll() is None, "".join(log.text)[-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=90)
    log.thread.join(10)
    assert process.returncode == 0, "".join(log.text)[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def keyed_job(tmp_path, bootstrap, topic, client, **overrides) -> str:
    return job_config(tmp_path, bootstrap, topic, client, events={"target": "label", "key": "user"}, **overrides)


@pytest.mark.both_brokers
@pytest.mark.parametrize("client", CLIENTS)
def test_two_workers_learn_every_event_once_into_rivers_per_key_models(tmp_path, kafka_bootstrap, topic, client):
    """Half the events on the topic, two workers started: they split the partitions, 2 units each; the other half produced
    then: every event learned once, by the worker owning its partition, into River's per-key models.

    The split is waited for, not raced: on a small topic under `--until-caught-up`, one worker whose join is answered before
    the other's (Apache Kafka's test cluster has no initial rebalance delay; a loaded machine) can learn everything alone,
    and the group is then rightly caught up with the other worker holding nothing (stress saw it once).
    """
    head, tail = keyed_events(2000), keyed_events(2000, start=2000)
    produce_keyed(kafka_bootstrap, topic, head)
    config = keyed_job(tmp_path, kafka_bootstrap, topic, client, checkpoint={"every_events": 250, "every_seconds": 1})
    uri = str(tmp_path / "checkpoints")
    process = start_daemon(config, "--workers", "2")
    log = LogLines(process)
    log.wait_for(lambda line: sorted(collections.Counter(owners(log).values()).items()) == [(0, 2), (1, 2)], "the split, 2 units each",
                 process, timeout=90)
    produce_keyed(kafka_bootstrap, topic, tail, create=False)
    everything = head + tail
    summary = checkpointed_then_stopped(process, log, uri, topic, len(everything))  # checkpoints every 250 events, and 1 s after the last
    assert (summary["workers"], summary["worker_restarts"]) == (2, 0)
    assert summary["events_seen"] == summary["events_learned"] == summary["events_learned_total"] == len(everything)
    assert sorted(summary["units"]) == [f"{topic}.{p}" for p in range(PARTITIONS)]
    units = assigned(log.lines)
    # one rebalance at start at most: the workers subscribe together, so they join one generation, or (a join answered before the
    # other worker's arrives) a unit moves once; none after the split
    assert set(collections.Counter(unit for _, unit, _ in units)) == {f"{topic}.{p}" for p in range(PARTITIONS)}
    assert max(collections.Counter(unit for _, unit, _ in units).values()) <= 2, "".join(log.text)[-6000:]
    assert sorted(collections.Counter(owners(log).values()).items()) == [(0, 2), (1, 2)]  # still split at the end: both workers learned the tail
    for p, manifest in unit_manifests(uri, topic).items():  # each partition's unit: its events, each learned once
        assert manifest["positions"][f"{topic}/{p}"] == manifest["events_seen"] == manifest["events_learned"] == len(everything) // PARTITIONS
    assert_models_equal_river(uri, everything)


class LogLines:
    """A process's stderr read on a thread (the pipe never fills), its JSON lines kept in order."""

    def __init__(self, process):
        self.lines: list[dict] = []
        self.text: list[str] = []

        def read():
            for line in process.stderr:
                self.text.append(line)
                if line.startswith("{"):
                    self.lines.append(json.loads(line))

        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()

    def wait_for(self, found, what: str, process, timeout: float = 60):
        """The first line (from the start) for which `found` is true, waiting up to `timeout` s while `process` runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found(line):
                    return line
            assert process.poll() is None, "".join(self.text)[-3000:]
            time.sleep(0.02)
        raise AssertionError(f"never logged {what}: {''.join(self.text)[-3000:]}")


@pytest.mark.both_brokers(tansu_clients=["kafka-python"])  # Apache Kafka with both clients
@pytest.mark.slow
def test_kill_9_of_one_worker_loses_and_doubles_nothing(tmp_path, kafka_bootstrap, topic, client):
    """A worker killed, and killed again at each restart until the other worker took its partitions (at most 4 deaths):
    they move to the other worker once its session expires, come back when it is restarted, and every event is learned and
    predicted once."""
    head, tail = keyed_events(6000), keyed_events(2000, start=6000)
    produce_keyed(kafka_bootstrap, topic, head)
    outputs = {"predictions_topic": f"{topic}.pred", "poll_max_records": 100}
    config = keyed_job(tmp_path, kafka_bootstrap, topic, client, kafka=outputs, checkpoint={"every_events": 300, "every_seconds": 1})
    uri = str(tmp_path / "checkpoints")
    process = start_daemon(config, "--workers", "2")
    log = LogLines(process)
    victim = 1

    split = lambda line: sorted(collections.Counter(owners(log).values()).items()) == [(0, 2), (victim, 2)]  # noqa: E731
    log.wait_for(split, "the group's split, 2 units each", process, timeout=90)
    victims_units = {unit for unit, worker in owners(log).items() if worker == victim}
    assert len(victims_units) == 2  # the group split the partitions at start
    started = [line for line in log.lines if line.get("msg") == "worker started" and line["worker"] == victim]
    while not any(m and m["events_seen"] for m in unit_manifests(uri, topic).values()):  # learning: a checkpoint is written
        assert process.poll() is None
        time.sleep(0.05)
    alive = [line for line in log.lines if line.get("msg") == "worker started" and line["worker"] == victim]
    assert alive == started, "the victim was restarted before it was killed: " + "".join(log.text)[-6000:]
    units = ("restored", "starting fresh")  # the victim's units had a checkpoint or not yet
    killed, killed_at = [started[0]["pid"]], time.time()  # the clock of the log lines' "time"
    taken = lambda line: line.get("msg") in units and line["worker"] != victim and line["unit"] in victims_units and line["time"] > killed_at  # noqa: E731
    os.kill(killed[0], signal.SIGKILL)  # kill -9 of one worker mid-stream
    while True:
        restart = log.wait_for(lambda line: line.get("msg") == "worker started" and line["worker"] == victim and line["pid"] not in killed,
                               "the restart", process)
        if any(taken(line) for line in list(log.lines)) or len(killed) == 4:
            break
        # Killed again before it rejoins: a restart that joins within the dead one's session takes its units straight
        # back; the restarts wait 1, 2, 4, 8 s (a crash loop is 5 deaths), so the dead one's session lapses first.
        killed.append(restart["pid"])
        os.kill(restart["pid"], signal.SIGKILL)
    log.wait_for(taken, "the other worker taking the victim's units", process)
    log.wait_for(lambda line: line.get("msg") in units and line["worker"] == victim and line["time"] > restart["time"],
                 "the restarted worker taking units back", process)
    produce_keyed(kafka_bootstrap, topic, tail, create=False)
    everything = head + tail
    summary = checkpointed_then_stopped(process, log, uri, topic, len(everything))
    assert summary["worker_restarts"] == len(killed)
    moved = {line["unit"] for line in log.lines if taken(line)}
    assert victims_units <= moved  # the dead worker's partitions moved to the other worker
    for p, manifest in unit_manifests(uri, topic).items():
        assert manifest["positions"][f"{topic}/{p}"] == manifest["events_seen"] == manifest["events_learned"] == len(everything) // PARTITIONS
    sources = [dict(r.headers)[SOURCE_HEADER] for r in read_topic(kafka_bootstrap, f"{topic}.pred", client)]
    assert len(sources) == len(set(sources)) == len(everything)  # each prediction exactly once
    assert_models_equal_river(uri, everything)
    assert not [line for line in log.lines if "commit failed after" in line.get("error", "")]  # no commit held up a poll through a rebalance


def test_sigterm_to_the_supervisor_stops_every_worker_with_its_checkpoints_and_one_metrics_port(tmp_path, kafka_bootstrap, topic):
    from riverbeam.local_stack import free_port

    events = keyed_events(2000)
    produce_keyed(kafka_bootstrap, topic, events)
    port = free_port()
    config = keyed_job(tmp_path, kafka_bootstrap, topic, "confluent-kafka", checkpoint={"every_events": 100_000}, metrics={"port": port},
                       consume={"workers": 2})  # the YAML key: no flag
    process = start_daemon(config)

    def scrape(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, ""
        except OSError:
            return 0, ""

    def value(text: str, name: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))

    deadline = time.monotonic() + 90
    metrics = ""
    while time.monotonic() < deadline:
        status, metrics = scrape("/metrics")
        if status == 200 and value(metrics, "riverbeam_events_consumed_total") == len(events):
            break
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.3)
    assert value(metrics, "riverbeam_events_consumed_total") == value(metrics, "riverbeam_events_learned_total") == len(events)  # both workers', summed
    assert scrape("/healthz")[0] == 200 and scrape("/readyz")[0] == 200
    uri = str(tmp_path / "checkpoints")
    assert not any(unit_manifests(uri, topic).values())  # nothing checkpointed yet (every 100,000 events)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=90)
    assert process.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["workers"], summary["events_seen"], summary["events_learned"]) == (2, len(events), len(events))
    manifests = unit_manifests(uri, topic)
    assert all(manifests.values()) and sum(m["events_learned"] for m in manifests.values()) == len(events)  # the final checkpoints, every unit
    assert {line["worker"] for line in log_lines(err) if line.get("msg") == "stopped"} == {0, 1}


@pytest.mark.parametrize("where, args, expected", [
    ("flag", ["--workers", "0"], "argument --workers: at least 1 worker, got 0"),
    ("flag", ["--workers", "two"], "argument --workers: expected a whole number of worker processes, got 'two'"),
    ("yaml", {"workers": 0}, "consume.workers: Input should be greater than or equal to 1"),
    ("yaml", {"workers": "many"}, "consume.workers: "),
    ("yaml", {"threads": 2}, "consume.threads: "),
    ("global-flag", ["--workers", "2"], "--workers: 2 workers need per-key models (events.key): a global model is one model"),
    ("global-yaml", {"workers": 3}, "consume.workers: 3 workers need per-key models (events.key): a global model is one model"),
])  # fmt: skip
def test_bad_workers_values_are_one_line_configuration_errors(tmp_path, where, args, expected, capsys):
    from riverbeam.cli import main

    keyed = not where.startswith("global")
    overrides = {"events": {"target": "label", "key": "user"}} if keyed else {}
    if isinstance(args, dict):
        overrides["consume"] = args
        args = []
    config = job_config(tmp_path, "localhost:1", "t", "kafka-python", **overrides)
    if where == "flag":
        with pytest.raises(SystemExit) as stopped:
            main(["consume", "--config", config, *args])
        code = stopped.value.code
    else:
        code = main(["consume", "--config", config, *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("riverbeam")]
    assert code == 2 and len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err
    if where.startswith("global"):
        assert "mini-batches (model.batch)" in lines[0] and "Flink or Dataflow" in lines[0]


def test_a_worker_dying_again_and_again_stops_all_in_one_line(tmp_path, kafka_bootstrap, topic, monkeypatch):
    """Each worker is killed by its first event (a feature function that kill -9s its own process): restarted
    after 1, 2, 4, 8 s, then the fifth death in a row stops the group: exit 1, one line, no traceback."""
    (tmp_path / "crashing_steps.py").write_text("import os, signal\n\n\ndef derive(event):\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    produce_keyed(kafka_bootstrap, topic, keyed_events(400))
    config = keyed_job(tmp_path, kafka_bootstrap, topic, "confluent-kafka", model={"custom_modules": ["crashing_steps"]},
                       features={"function": "crashing_steps:derive"})
    process = start_daemon(config, "--workers", "2", "--until-caught-up")
    out, err = process.communicate(timeout=120)
    lines = [line for line in err.splitlines() if not line.startswith("{")]
    assert process.returncode == 1, err[-3000:]
    assert len(lines) == 1 and "died 5 times in a row, each within 60 s of its start (last: signal 9 (SIGKILL)): stopping all workers" in lines[0], err[-3000:]
    assert lines[0].startswith("riverbeam: error: worker ") and "Traceback" not in err and out == ""
    assert sum(1 for line in log_lines(err) if line.get("msg") == "worker died: restarting it") >= 4


def test_a_workers_one_line_error_stops_the_group_with_that_line(tmp_path, kafka_bootstrap, topic):
    """A checkpoint location that cannot be written: each worker stops in one line (as one daemon does), and the supervisor with it."""
    (tmp_path / "a-file").write_text("")
    uri = str(tmp_path / "a-file" / "checkpoints")
    produce_keyed(kafka_bootstrap, topic, keyed_events(40))
    process = start_daemon(keyed_job(tmp_path, kafka_bootstrap, topic, "kafka-python", checkpoint={"uri": uri}), "--workers", "2", "--until-caught-up")
    out, err = process.communicate(timeout=90)
    lines = [line for line in err.splitlines() if not line.startswith("{")]
    assert process.returncode == 1, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("riverbeam: error: worker ") and f": cannot write checkpoints at {uri}: " in lines[0], err[-3000:]
    assert "Not a directory" in lines[0] and "Traceback" not in err and out == ""
    assert not [line for line in log_lines(err) if line.get("msg") == "worker died: restarting it"]  # an error, not a death: no restart


@pytest.mark.slow
def test_a_worker_fenced_on_a_partition_is_restarted_not_the_groups_failure(tmp_path, kafka_bootstrap, topic):
    """A worker whose unit's checkpoint another writer moved (as a worker that took its partition while its session had
    lapsed under load would) is stale, not broken: it is restarted, resumes from the checkpoints, and the group goes on.
    Before, the supervisor stopped every worker with the fencing error's line (found by the Apache Kafka stress run)."""
    from online.checkpoints.persistence import LearnerSpec, save_learner
    from online.checkpoints.store import KAFKA_CONTEXT, FencingError

    head, tail = keyed_events(2000), keyed_events(4000, start=2000)
    events = head + tail
    produce_keyed(kafka_bootstrap, topic, head)
    config = keyed_job(tmp_path, kafka_bootstrap, topic, "confluent-kafka", kafka={"poll_max_records": 50}, checkpoint={"every_events": 100, "every_seconds": 1})
    uri = str(tmp_path / "checkpoints")
    process = start_daemon(config, "--workers", "2")
    log = LogLines(process)
    first = log.wait_for(lambda line: line.get("msg") == "checkpoint" and line.get("events_seen", 0) > 0, "a unit's first checkpoint", process, timeout=90)
    fenced_topic, fenced_partition = first["unit"].rsplit(".", 1)
    for _ in range(50):  # another writer moves LATEST: the same state, written again (raced by the worker's own checkpoints)
        store = CheckpointStore(unit_uri(uri, partition_unit(fenced_topic, int(fenced_partition))))
        latest = store.load_latest()
        learner = LearnerSpec.from_checkpoint(latest).restore(latest)
        extra = {key: latest.manifest["extra"][key] for key in KAFKA_CONTEXT if key in latest.manifest.get("extra", {})}
        try:
            save_learner(store, learner, latest.positions, extra=extra)
            break
        except FencingError:
            continue
    produce_keyed(kafka_bootstrap, topic, tail, create=False)  # more to learn: the unit checkpoints again, over the moved LATEST
    log.wait_for(lambda line: line.get("msg") == "worker is stale on a partition another worker took: restarting it", "the stale worker's restart", process)
    assert checkpointed_then_stopped(process, log, uri, topic, len(events))["worker_restarts"] >= 1
    for p, manifest in unit_manifests(uri, topic).items():  # nothing lost or learned twice
        assert manifest["positions"][f"{topic}/{p}"] == manifest["events_seen"] == manifest["events_learned"] == len(events) // PARTITIONS
    assert_models_equal_river(uri, events)


@pytest.mark.parametrize("kafka_broker", ["apache"], indirect=True)
def test_the_python_api_runs_the_workers_that_consume_workers_asks_for(tmp_path, kafka_bootstrap, topic):
    """`riverbeam.consume` in this process (here pytest's): the supervisor forks its workers from a fork server and returns the merged summary.

    On Apache Kafka: on Tansu 0.6 the second run's join waits up to minutes for the first run's
    leader, which has left (README, "Two brokers"; measured with plain confluent-kafka consumers).
    """
    import riverbeam
    import yaml

    events = keyed_events(800)
    produce_keyed(kafka_bootstrap, topic, events)
    config = yaml.safe_load(open(keyed_job(tmp_path, kafka_bootstrap, topic, "confluent-kafka", consume={"workers": 2})))
    for _ in range(2):  # a second run in the same process reuses the fork server
        summary = riverbeam.consume(config, until_caught_up=True)
        assert (summary["workers"], summary["events_seen"]) == (2, len(events) if _ == 0 else 0)
        assert summary["events_learned_total"] == len(events) and sorted(summary["units"]) == [f"{topic}.{p}" for p in range(PARTITIONS)]


@pytest.mark.parametrize("kafka_broker", ["apache"], indirect=True)
def test_a_keyed_daemon_kept_waiting_by_its_group_says_so_then_learns_when_assigned(tmp_path, kafka_bootstrap, topic, monkeypatch, caplog):
    """A member of the group that stops polling holds the daemon's join until it is dropped; the daemon says so meanwhile."""
    import logging

    import riverbeam
    import yaml
    from confluent_kafka import Consumer

    import online.consume.daemon as daemon_module

    events = keyed_events(400)
    produce_keyed(kafka_bootstrap, topic, events)
    config = yaml.safe_load(open(keyed_job(tmp_path, kafka_bootstrap, topic, "confluent-kafka")))
    holder = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": config["kafka"]["group_id"], "session.timeout.ms": 6000,
                       "heartbeat.interval.ms": 500, "max.poll.interval.ms": 8000})
    held = []
    holder.subscribe([topic], on_assign=lambda consumer, partitions: held.extend(partitions))
    deadline = time.monotonic() + 60
    while not held and time.monotonic() < deadline:
        holder.poll(0.2)
    assert len(held) == PARTITIONS  # the holder owns the topic and polls no more: the daemon's join waits for it to rejoin
    monkeypatch.setattr(daemon_module, "JOIN_LOG_EVERY", 1.0)
    try:
        with caplog.at_level(logging.INFO, logger="riverbeam.daemon"):
            summary = riverbeam.consume(config, until_caught_up=True)
    finally:
        holder.close()
    waits = [r for r in caplog.records if r.getMessage().startswith("no partitions assigned yet")]
    assert waits and waits[0].fields["group_id"] == config["kafka"]["group_id"]
    assert summary["events_learned"] == len(events)  # once the holder was dropped, the daemon had every partition
    messages = [r.getMessage() for r in caplog.records]
    last_wait = max(i for i, message in enumerate(messages) if message.startswith("no partitions assigned yet"))
    assert messages.index("starting fresh") > last_wait  # the lines stop once the group answers
