"""The Beam pipelines on a real, embedded Flink (Beam's FlinkRunner, ``--parallelism=2``).

The job server and Kafka's expansion service come from riverbeam's pinned Beam Java parts
(`pipelines.java_services`, fetched with Maven by `core.maven` and cached). Every job runs through
the CLI in a subprocess, as a user runs it: the JVMs it starts end with it. Skipped, with the
reason, where Java 17 or Maven is missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.beam, pytest.mark.java, pytest.mark.slow]


@pytest.fixture(scope="module")
def beam_java():
    """The cached Beam Java class path (fetched on first use); skip with the reason without Java or Maven."""
    from core.maven import JavaToolError, java_executable, maven_executable

    try:
        java_executable()
        maven_executable()
    except JavaToolError as error:
        pytest.skip(str(error))
    from pipelines.java_services import beam_java_classpath

    return beam_java_classpath()


def start(*args: str, log) -> subprocess.Popen:
    """Start ``riverbeam ARGS`` in a session of its own (output to `log`): `stop` ends it with the JVMs it started."""
    env = {**os.environ, "NO_GCE_CHECK": "true"}
    return subprocess.Popen([sys.executable, "-m", "riverbeam.cli", *args], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """End `process` and everything in its session (Beam's job server, the expansion service)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


def riverbeam(*args: str, tmp_path, timeout: float = 480) -> tuple[int, str]:
    """Run ``riverbeam ARGS`` to its end: its exit code and output (the JVMs it started end with it, even on a timeout)."""
    path = tmp_path / f"riverbeam-{args[0]}.log"
    with open(path, "wb") as log:
        process = start(*args, log=log)
        try:
            process.wait(timeout=timeout)
        finally:
            stop(process)
    return process.returncode, path.read_text(errors="replace")


# -- preprocess (TFT) ---------------------------------------------------------------------------


def _constants(document: dict) -> dict:
    """The fitted constants of fitted_transforms.json by (feature, field): numbers and lists of numbers."""
    found = {}
    for feature in document["features"]:
        for field, value in feature.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found[(feature["name"], field)] = [float(value)]
            elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
                found[(feature["name"], field)] = [float(v) for v in value]
    return found


@pytest.mark.timeout(900)
def test_preprocess_on_flink_equals_the_fnapi_runner(beam_java, tmp_path):
    """`riverbeam preprocess --runner=FlinkRunner --parallelism=2`: the same rows and fitted transforms as the FnApiRunner.

    Only ``--runner=FlinkRunner`` is given: riverbeam adds its job server jar and LOOPBACK workers,
    and waits for the job (before, the command returned with the job RUNNING and its embedded
    Flink was killed at exit: no output at all).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.preprocess import run
    from tests.pipelines.test_preprocess import FEATURES, read_parquet_rows, segment_rows, write_config

    rows = segment_rows(400)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "segment.parquet")
    source = {"pattern": str(tmp_path / "segment.parquet"), "format": "parquet"}
    outputs = {"formats": ["parquet"], "split": {"eval_fraction": 0.25}}
    flink_config = write_config(tmp_path / "flink.yaml", FEATURES, source, {"dir": str(tmp_path / "flink"), **outputs})
    local_config = write_config(tmp_path / "local.yaml", FEATURES, source, {"dir": str(tmp_path / "local"), **outputs})

    code, output = riverbeam("preprocess", "--config", flink_config, "--runner=FlinkRunner", "--parallelism=2", "--json", tmp_path=tmp_path)
    assert code == 0, output[-3000:]
    summary = json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))
    assert summary["state"] == "DONE" and summary["events_seen"] == 400, summary
    run(["--config", local_config, "--runner=FnApiRunner"])

    flink_fitted = json.loads((tmp_path / "flink" / "fitted_transforms.json").read_text())
    local_fitted = json.loads((tmp_path / "local" / "fitted_transforms.json").read_text())
    flink_constants, local_constants = _constants(flink_fitted), _constants(local_fitted)
    assert flink_constants.keys() == local_constants.keys() and len(flink_constants) >= 8
    for key, values in local_constants.items():
        assert flink_constants[key] == pytest.approx(values, abs=1e-6), key
    vocabulary = next(f for f in flink_fitted["features"] if f["transform"] == "vocabulary")
    assert vocabulary == next(f for f in local_fitted["features"] if f["name"] == vocabulary["name"])
    for split in ("train", "eval"):
        on_flink = read_parquet_rows(str(tmp_path / "flink" / "data" / f"{split}-*.parquet"))
        local = read_parquet_rows(str(tmp_path / "local" / "data" / f"{split}-*.parquet"))
        key = lambda row: json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, sort_keys=True)  # noqa: E731
        assert len(on_flink) == len(local) > 0
        for a, b in zip(sorted(on_flink, key=key), sorted(local, key=key)):
            assert a.keys() == b.keys()
            for name in a:
                assert a[name] == (pytest.approx(b[name], abs=1e-6) if isinstance(b[name], float) else b[name]), name


# -- stream-learn from Apache Kafka --------------------------------------------------------------

MODEL = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy", "LogLoss"]}


def produce(bootstrap: str, topic: str, events: list[dict]) -> None:
    import orjson

    from online.config import KafkaConfig
    from online.kafka_clients import make_producer

    producer = make_producer(KafkaConfig(bootstrap_servers=bootstrap, topic=topic))
    for event in events:
        producer.send(topic, orjson.dumps(event), partition=0)
    producer.flush()
    producer.close()


def learn_config(bootstrap: str, topic: str, checkpoints) -> dict:
    """The daemon's YAML, as both stream-learn and the daemon read it (kafka-python names for the consumer)."""
    return {
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "group_id": f"g-{os.urandom(4).hex()}",
                  "consumer": {"auto_offset_reset": "earliest", "session_timeout_ms": 6000, "heartbeat_interval_ms": 500}},
        "model": MODEL, "events": {"target": "label"}, "metrics": {"port": None},
        "checkpoint": {"uri": str(checkpoints), "every_events": 100, "lease_seconds": 3},
    }


def daemon_learns(config: dict, expected_seen: int):
    """Run the daemon until it has caught up with the topic; its latest checkpoint's manifest and learner."""
    from core.configuration import parse_config
    from online.checkpoints.store import CheckpointStore
    from online.config import ConsumeJobConfig
    from online.consume.daemon import run_daemon
    from online.checkpoints.persistence import restore_learner

    job = parse_config(config, ConsumeJobConfig, environ={})
    summary = run_daemon(job, until_caught_up=True, progress=False)
    assert summary["events_seen"] == expected_seen, summary
    checkpoint = CheckpointStore(config["checkpoint"]["uri"]).load_latest()
    return checkpoint.manifest, restore_learner(checkpoint, job.model, job.events, features=job.features)


@pytest.mark.timeout(900)
def test_stream_learn_from_kafka_on_flink_equals_the_daemon_and_the_daemon_takes_over(beam_java, apache_kafka, tmp_path):
    """`riverbeam stream-learn --runner=FlinkRunner` reads Apache Kafka through Beam's ReadFromKafka (riverbeam's expansion
    service, Java transforms in Flink's JVM) and learns exactly the daemon's model on the same topic (one partition: the
    same order). Its checkpoint records the daemon's positions, so the daemon takes over after it: every event once.

    Before: ReadFromKafka could not expand (Beam's 2.77 jar is not served; riverbeam's 2.62 Kafka IO refuses the 2.77
    configuration), and a stream-learn checkpoint held no Kafka positions, so a daemon would restart at offset 0.
    """
    import itertools

    import yaml
    from river import datasets

    from online.checkpoints.store import CheckpointStore
    from online.kafka_clients import create_topic

    bootstrap, topic = f"127.0.0.1:{apache_kafka.port}", f"t-{os.urandom(5).hex()}"
    events = [{**x, "label": y} for x, y in itertools.islice(datasets.Phishing(), 400)]
    create_topic(bootstrap, topic, partitions=1)
    produce(bootstrap, topic, events[:300])

    flink_config = learn_config(bootstrap, topic, tmp_path / "ckpt-flink")
    (tmp_path / "flink.yaml").write_text(yaml.safe_dump(flink_config))
    store, latest = CheckpointStore(str(tmp_path / "ckpt-flink")), None
    with open(tmp_path / "stream-learn.log", "wb") as log:  # a streaming job: it runs until stopped, like the daemon
        job = start("stream-learn", "--runner=FlinkRunner", "--parallelism=2", f"--learn_config={tmp_path / 'flink.yaml'}",
                    "--learn_max_records=300", log=log)
        try:
            deadline = time.monotonic() + 420
            while time.monotonic() < deadline and job.poll() is None:
                latest = store.load_latest() if store.latest_id() else None
                if latest is not None and latest.manifest["events_seen"] >= 300:
                    break
                time.sleep(2)
        finally:
            stop(job)
    assert latest is not None, (tmp_path / "stream-learn.log").read_text(errors="replace")[-3000:]
    on_flink = latest.manifest
    assert on_flink["positions"] == {f"{topic}/0": 300} and on_flink["events_seen"] == 300
    assert on_flink["extra"]["topic_ids"][topic] and on_flink["extra"]["pipeline"] == "stream-learn"

    daemon_config = learn_config(bootstrap, topic, tmp_path / "ckpt-daemon")
    alone, alone_learner = daemon_learns(daemon_config, 300)
    from core.configuration import parse_config
    from online.config import ConsumeJobConfig
    from online.checkpoints.persistence import restore_learner

    parsed = parse_config(flink_config, ConsumeJobConfig, environ={})
    flink_learner = restore_learner(latest, parsed.model, parsed.events, features=parsed.features)
    assert flink_learner.report() == alone_learner.report()
    probes = [{k: v for k, v in event.items() if k != "label"} for event in events[300:]]
    assert [flink_learner.model.predict_proba_one(dict(x)) for x in probes] == [alone_learner.model.predict_proba_one(dict(x)) for x in probes]

    produce(bootstrap, topic, events[300:])
    taken_over, taken_learner = daemon_learns(flink_config, 100)  # the daemon resumes at offset 300: only the new events
    alone, alone_learner = daemon_learns(daemon_config, 100)
    assert taken_over["positions"] == alone["positions"] == {f"{topic}/0": 400}
    assert taken_over["events_seen"] == alone["events_seen"] == 400
    assert taken_learner.report() == alone_learner.report()
