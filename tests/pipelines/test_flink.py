"""The Beam pipelines on a real, embedded Flink (Beam's FlinkRunner, ``--parallelism=2``), and preprocess on a local Spark.

The job servers and Kafka's expansion service come from riverbeam's pinned Beam Java parts
(`pipelines.java_services`, fetched with Maven by `core.maven` and cached). Every job runs through
the CLI in a subprocess, as a user runs it: the JVMs it starts end with it. Skipped, with the
reason, where Java 17 or Maven is missing.
"""

from __future__ import annotations

import json
import os
import re
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


@pytest.fixture(scope="module")
def beam_spark(beam_java):
    """The cached class path of Beam's Spark job server (fetched on first use)."""
    from pipelines.java_services import beam_spark_classpath

    return beam_spark_classpath()


RUNNERS = {"flink": ("--runner=FlinkRunner", "--parallelism=2"), "spark": ("--runner=SparkRunner", "--spark_master_url=local[2]")}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_preprocess_on_a_java_runner_equals_the_fnapi_runner(runner, beam_java, request, tmp_path):
    """`riverbeam preprocess --runner=FlinkRunner --parallelism=2` (an embedded Flink) and `--runner=SparkRunner` (a local
    master): the same rows and fitted transforms as the FnApiRunner.

    Only the runner is given: riverbeam adds its job server jar and LOOPBACK workers, and waits for the job (before, on
    Flink the command returned with the job RUNNING and its embedded Flink was killed at exit: no output at all; on Spark
    Beam looked for a 2.77 Spark job server jar that Maven Central does not serve, and stopped).
    """
    if runner == "spark":
        request.getfixturevalue("beam_spark")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.preprocess import run
    from tests.pipelines.test_preprocess import FEATURES, read_parquet_rows, segment_rows, write_config

    rows = segment_rows(400)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "segment.parquet")
    source = {"pattern": str(tmp_path / "segment.parquet"), "format": "parquet"}
    outputs = {"formats": ["parquet"], "split": {"eval_fraction": 0.25}}
    java_config = write_config(tmp_path / f"{runner}.yaml", FEATURES, source, {"dir": str(tmp_path / runner), **outputs})
    local_config = write_config(tmp_path / "local.yaml", FEATURES, source, {"dir": str(tmp_path / "local"), **outputs})

    code, output = riverbeam("preprocess", "--config", java_config, *RUNNERS[runner], "--json", tmp_path=tmp_path)
    assert code == 0, output[-3000:]
    summary = json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))
    assert summary["state"] == "DONE" and summary["events_seen"] == 400, summary
    run(["--config", local_config, "--runner=FnApiRunner"])

    java_fitted = json.loads((tmp_path / runner / "fitted_transforms.json").read_text())
    local_fitted = json.loads((tmp_path / "local" / "fitted_transforms.json").read_text())
    java_constants, local_constants = _constants(java_fitted), _constants(local_fitted)
    assert java_constants.keys() == local_constants.keys() and len(java_constants) >= 8
    for key, values in local_constants.items():
        assert java_constants[key] == pytest.approx(values, abs=1e-6), key
    vocabulary = next(f for f in java_fitted["features"] if f["transform"] == "vocabulary")
    assert vocabulary == next(f for f in local_fitted["features"] if f["name"] == vocabulary["name"])
    for split in ("train", "eval"):
        on_runner = read_parquet_rows(str(tmp_path / runner / "data" / f"{split}-*.parquet"))
        local = read_parquet_rows(str(tmp_path / "local" / "data" / f"{split}-*.parquet"))
        key = lambda row: json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, sort_keys=True)  # noqa: E731
        assert len(on_runner) == len(local) > 0
        for a, b in zip(sorted(on_runner, key=key), sorted(local, key=key)):
            assert a.keys() == b.keys()
            for name in a:
                assert a[name] == (pytest.approx(b[name], abs=1e-6) if isinstance(b[name], float) else b[name]), name


# -- stream-learn from Apache Kafka --------------------------------------------------------------

MODEL = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy", "LogLoss"]}


def produce(bootstrap: str, topic: str, events: list[dict], partitions: int = 1) -> None:
    """Send `events` in order, the i-th to partition ``i % partitions``."""
    import orjson

    from online.config import KafkaConfig
    from online.kafka_clients import make_producer

    producer = make_producer(KafkaConfig(bootstrap_servers=bootstrap, topic=topic))
    for i, event in enumerate(events):
        producer.send(topic, orjson.dumps(event), partition=i % partitions)
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


# -- archive from Apache Kafka -------------------------------------------------------------------


def wait_for(condition, seconds: float, job: subprocess.Popen, log_path) -> None:
    """Poll `condition` every second until it holds; fail with the job's log if `seconds` pass or the job ends first."""
    deadline = time.monotonic() + seconds
    while not condition():
        if job.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"gave up waiting (job exit code {job.poll()}):\n" + log_path.read_text(errors="replace")[-3000:])
        time.sleep(1)


@pytest.mark.timeout(600)
def test_archive_from_kafka_on_flink_unbounded_writes_every_record_once_in_the_layout_replay_reads(beam_java, apache_kafka, tmp_path):
    """`riverbeam archive --runner=FlinkRunner` reads Apache Kafka unbounded (two partitions) and writes each record once
    into ``date=.../hour=.../part-*.jsonl``, window by window, while it runs: records produced after it started arrive too,
    and ``riverbeam replay`` reads the archive back. The test stops the job, as an operator would.

    Before: archive built Beam's own ReadFromKafka (whose 2.77 expansion jar is not served), was not waited for on an
    embedded Flink, and with Kafka IO's splittable read the watermark never advanced: records were read, no window fired.
    """
    import yaml

    from online.kafka_clients import create_topic
    from pipelines.archive import read_archive

    bootstrap, topic = f"127.0.0.1:{apache_kafka.port}", f"t-{os.urandom(5).hex()}"
    events = [{"x": i, "y": i / 7, "label": i % 3 == 0} for i in range(300)]
    create_topic(bootstrap, topic, partitions=2)
    produce(bootstrap, topic, events[:200], partitions=2)
    config = {"kafka": {"bootstrap_servers": bootstrap, "topic": topic, "group_id": f"g-{os.urandom(4).hex()}",
                        "consumer": {"auto_offset_reset": "earliest"}},
              "model": MODEL, "events": {"target": "label"}}
    (tmp_path / "archive.yaml").write_text(yaml.safe_dump(config))
    output, log_path = tmp_path / "archive", tmp_path / "archive.log"
    pattern = f"{output}/date=*/hour=*/*.jsonl"
    with open(log_path, "wb") as log:
        job = start("archive", "--runner=FlinkRunner", "--parallelism=2", f"--archive_kafka_config={tmp_path / 'archive.yaml'}",
                    f"--archive_output={output}", "--archive_window_seconds=5", log=log)
        try:
            wait_for(lambda: len(list(read_archive(pattern))) >= 200, 360, job, log_path)
            produce(bootstrap, topic, events[200:], partitions=2)  # the job is running: these arrive in later windows
            wait_for(lambda: len(list(read_archive(pattern))) >= 300, 120, job, log_path)
            time.sleep(6)  # one more window: nothing else arrives
        finally:
            stop(job)
    archived = list(read_archive(pattern))
    assert sorted(archived, key=lambda e: e["x"]) == events  # every record once, none lost, none doubled
    assert not list(output.glob("dead_letter/**/*.jsonl"))
    names = sorted(str(p.relative_to(output)) for p in output.glob("date=*/hour=*/part-*.jsonl"))
    assert names and all(re.fullmatch(r"date=\d{4}-\d\d-\d\d/hour=\d\d/part-\d{8}T\d{6}Z-\d{5}-of-\d{5}\.jsonl", n) for n in names), names

    replay = subprocess.run([sys.executable, "-m", "riverbeam.cli", "replay", "--config", str(tmp_path / "archive.yaml"), "--input", pattern,
                             "--dry-run", "--json"], capture_output=True, text=True, env={**os.environ, "NO_GCE_CHECK": "true"}, timeout=120)
    assert replay.returncode == 0, replay.stderr
    text = replay.stdout
    summary = json.loads(next(line for line in reversed(text.splitlines()) if line.startswith("{")))
    assert summary["events_seen"] == 300, summary


# -- Flink checkpointing, and a kill -9 of the job mid-stream -----------------------------------


@pytest.mark.timeout(900)
def test_stream_learn_on_flink_killed_mid_stream_reruns_from_riverbeams_checkpoint_with_nothing_lost_or_doubled(beam_java, apache_kafka, tmp_path):
    """stream-learn reads Kafka unbounded on an embedded Flink with Flink's checkpointing on (``--checkpointing_interval``);
    the job (Python, its LOOPBACK workers and the Flink JVM: one process group) is killed with SIGKILL once riverbeam has
    checkpointed 200 of the 250 events it read; more events arrive; a rerun resumes from riverbeam's checkpoint. The
    final model equals the daemon's uninterrupted run over the same 300 events: nothing lost, nothing learned twice.

    An embedded Flink's own checkpoints die with its JVM, so riverbeam's checkpoint (model + Kafka positions) is what
    the rerun resumes from. Before: Java's Kafka consumer auto-committed what it had read (250) to the group, the
    rerun started there, and the 50 events read but not yet checkpointed were never learned (the job never reached 300).
    """
    import itertools

    import yaml
    from river import datasets

    from core.configuration import parse_config
    from online.checkpoints.persistence import restore_learner
    from online.checkpoints.store import CheckpointStore
    from online.config import ConsumeJobConfig
    from online.kafka_clients import create_topic

    bootstrap, topic = f"127.0.0.1:{apache_kafka.port}", f"t-{os.urandom(5).hex()}"
    events = [{**x, "label": y} for x, y in itertools.islice(datasets.Phishing(), 300)]
    create_topic(bootstrap, topic, partitions=1)
    produce(bootstrap, topic, events[:250])
    config = learn_config(bootstrap, topic, tmp_path / "ckpt")  # a checkpoint every 100 events
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    store = CheckpointStore(str(tmp_path / "ckpt"))
    flags = ("stream-learn", "--runner=FlinkRunner", "--parallelism=2", f"--learn_config={tmp_path / 'job.yaml'}",
             "--checkpointing_interval=2000", "--checkpoint_every_seconds=3600")

    def seen() -> int:
        return store.load_latest().manifest["events_seen"] if store.latest_id() else 0

    with open(tmp_path / "first.log", "wb") as log:
        job = start(*flags, log=log)
        try:
            wait_for(lambda: seen() >= 200, 420, job, tmp_path / "first.log")
            time.sleep(8)  # past the Java consumer's auto-commit interval (5 s): what it read would be committed by now
            os.killpg(job.pid, signal.SIGKILL)  # the job and its embedded Flink, with no chance to clean up
            job.wait(timeout=60)
        finally:
            stop(job)
    assert seen() == 200  # 50 more were read; they live only in the dead Flink's state

    produce(bootstrap, topic, events[250:])
    with open(tmp_path / "rerun.log", "wb") as log:
        job = start(*flags, log=log)
        try:
            wait_for(lambda: seen() >= 300, 420, job, tmp_path / "rerun.log")
        finally:
            stop(job)
    resumed = store.load_latest()
    assert resumed.manifest["positions"] == {f"{topic}/0": 300} and resumed.manifest["events_seen"] == 300

    _, alone = daemon_learns(learn_config(bootstrap, topic, tmp_path / "ckpt-daemon"), 300)
    parsed = parse_config(config, ConsumeJobConfig, environ={})
    learner = restore_learner(resumed, parsed.model, parsed.events, features=parsed.features)
    assert learner.report() == alone.report()
    probes = [{k: v for k, v in event.items() if k != "label"} for event in events[:50]]
    assert [learner.model.predict_proba_one(dict(x)) for x in probes] == [alone.model.predict_proba_one(dict(x)) for x in probes]


def test_the_cli_accepts_the_pinned_flink_runners_own_flags_on_flink_only(beam_java):
    """`FLINK_JAVA_FLAGS` are the getters of the pinned runner's FlinkPipelineOptions (read from the cached jar with
    javap), and the CLI accepts them on Flink, where Beam passes them to the job server (before: ``stream-learn: unknown
    flag --checkpointing_interval``), and still refuses them on any other runner."""
    from core.errors import UsageError
    from pipelines.java_services import FLINK_JAVA_FLAGS
    from pipelines.stream_learn import StreamLearnOptions
    from riverbeam.commands.beam_flags import check_beam_args

    jar = next(path for path in beam_java if re.fullmatch(r"beam-runners-flink-[\d.]+-[\d.]+\.jar", path.name))
    javap = subprocess.run(["javap", "-classpath", str(jar), "org.apache.beam.runners.flink.FlinkPipelineOptions"],
                           capture_output=True, text=True, check=True, timeout=120).stdout
    getters = re.findall(r" get(\w+)\(\);", javap)
    assert set(FLINK_JAVA_FLAGS) == {re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() for name in getters}

    flags = ["--runner=FlinkRunner", "--flink_master=flink.example:8081", "--checkpointing_interval=2000", "--object_reuse", "--learn_config=x.yaml"]
    assert check_beam_args(flags, StreamLearnOptions, "stream-learn") == flags
    with pytest.raises(UsageError, match="unknown flag --checkpointing_interval"):
        check_beam_args(["--runner=FnApiRunner", "--checkpointing_interval=2000"], StreamLearnOptions, "stream-learn")
