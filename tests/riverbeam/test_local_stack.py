"""The embedded local stack with real processes, and the clients through the fixtures."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid

import orjson
import pytest

from core.errors import UsageError
from riverbeam.local_stack import LocalStack, LocalStackError, free_port
from tests.conftest import apache_kafka_or_skip


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_up_status_down_leaves_nothing_running(tmp_path):
    stack = LocalStack(tmp_path, kafka_port=0, gcs_port=0, s3_port=0)
    settings = stack.up()
    status = stack.status()
    pids = [state["pid"] for state in status.values()]
    assert sorted(status) == ["gcs", "kafka", "s3"]
    assert all(state["running"] and state["accepting"] for state in status.values())
    assert settings.bootstrap_servers == f"127.0.0.1:{status['kafka']['port']}"
    assert settings.s3_endpoint_url == f"http://127.0.0.1:{status['s3']['port']}"
    assert settings.environment()["AWS_ENDPOINT_URL"] == settings.s3_endpoint_url
    # a second launcher on the same directory finds the same processes through stack.json
    assert LocalStack(tmp_path).status()["gcs"]["pid"] == status["gcs"]["pid"]
    assert LocalStack(tmp_path).status()["s3"]["pid"] == status["s3"]["pid"]
    assert sorted(LocalStack(tmp_path).down()) == ["gcs", "kafka", "s3"]
    assert not any(_running(pid) for pid in pids)
    assert not any(state["running"] for state in LocalStack(tmp_path).status().values())


def test_the_exported_settings_leave_jobs_without_a_kafka_section_valid(tmp_path):
    """``eval "$(grep '^export' local-stack.txt)"`` (the README's story) then preprocess, serve or a file replay:
    an exported Kafka override would reach them and be refused (``kafka: unknown key``)."""
    from core.configuration import parse_config
    from online.config import ReplayJobConfig
    from online.config import ServeJobConfig

    settings = LocalStack(tmp_path, kafka_port=0, gcs_port=0, s3_port=0).settings
    replay = {"model": {"pipeline": [{"linear_model.LogisticRegression": {}}]}, "events": {"target": "label"}}
    assert parse_config(replay, ReplayJobConfig, environ=settings.environment()).kafka is None
    assert parse_config({"checkpoint": {"uri": str(tmp_path)}}, ServeJobConfig, environ=settings.environment()).checkpoint is not None
    override = parse_config({**replay, "kafka": {"topic": "t"}}, ReplayJobConfig, environ=settings.kafka_override())
    assert override.kafka.bootstrap_servers == settings.bootstrap_servers


def test_taken_port_is_a_clear_error(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        stack = LocalStack(tmp_path, kafka_port=port, gcs_port=0)
        with pytest.raises(LocalStackError, match=f"port {port} .* is taken by another process \\(pid {os.getpid()}: "):  # who holds it
            stack.up()
    assert not any(state["running"] for state in stack.status().values())


def test_cli_local_up_status_down(tmp_path):
    env = dict(os.environ, NO_GCE_CHECK="true")
    run = lambda *args: subprocess.run([sys.executable, "-m", "riverbeam.cli", "local", *args, "--dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=60)  # noqa: E731
    kafka_port, gcs_port, s3_port = free_port(), free_port(), free_port()
    up = subprocess.run(
        [sys.executable, "-m", "riverbeam.cli", "local", "up", "--dir", str(tmp_path), "--kafka-port", str(kafka_port), "--gcs-port", str(gcs_port), "--s3-port", str(s3_port)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        assert f"127.0.0.1:{kafka_port}" in up.stdout and f"STORAGE_EMULATOR_HOST=http://127.0.0.1:{gcs_port}" in up.stdout
        assert f"AWS_ENDPOINT_URL=http://127.0.0.1:{s3_port}" in up.stdout and "s3://riverbeam" in up.stdout
        # the variable riverbeam's configuration reads as kafka.bootstrap_servers (a job's YAML need not name the port),
        # for one job: exported, it would reach every command of the shell (see the next test)
        assert f"\n  RIVERBEAM__KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:{kafka_port} riverbeam consume ...\n" in up.stdout
        assert "export RIVERBEAM__KAFKA" not in up.stdout
        # the printed settings are all a client needs: the bucket exists on the S3 server
        exports = dict(line[len("export "):].split("=", 1) for line in up.stdout.splitlines() if line.startswith("export "))
        probe = subprocess.run(
            [sys.executable, "-c", "import boto3; print(boto3.client('s3').head_bucket(Bucket='riverbeam')['ResponseMetadata']['HTTPStatusCode'])"],
            capture_output=True, text=True, env={**env, **exports}, timeout=60,
        )  # fmt: skip
        assert probe.stdout.strip() == "200", probe.stderr[-1000:]
        status = run("status")
        assert status.returncode == 0 and "kafka: running" in status.stdout and "s3: running" in status.stdout
        again = subprocess.run([sys.executable, "-m", "riverbeam.cli", "local", "up", "--dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=60)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        down = run("down")
    assert down.returncode == 0 and "kafka" in down.stdout and "s3" in down.stdout
    assert run("status").returncode == 1


def test_kafka_produce_consume_1000_with_group(kafka_bootstrap, topic):
    from kafka import KafkaConsumer, KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for i in range(1000):
        producer.send(topic, value=f"message-{i}".encode(), partition=0)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        max_poll_interval_ms=2000,
    )
    seen = []
    try:
        for _ in range(100):
            for records in consumer.poll(timeout_ms=500).values():
                seen.extend(record.value.decode() for record in records)
            if len(seen) >= 1000:
                break
        consumer.commit()
    finally:
        consumer.close()
    assert seen == [f"message-{i}" for i in range(1000)]


def test_stack_without_an_s3_port_leaves_s3_out(tmp_path):
    stack = LocalStack(tmp_path, kafka_port=0, gcs_port=0)  # as the demo builds it: Kafka and GCS only
    assert stack.s3 is None and sorted(stack.status()) == ["gcs", "kafka"]
    assert "AWS_ENDPOINT_URL" not in stack.settings.environment()


def test_s3_server_write_read_and_conditional_writes(s3_client, local_stack):
    key = f"probe/{uuid.uuid4().hex}"
    first = s3_client.put_object(Bucket=local_stack.bucket, Key=key, Body=b"hello", IfNoneMatch="*")["ETag"]
    assert s3_client.get_object(Bucket=local_stack.bucket, Key=key)["Body"].read() == b"hello"
    for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"0123456789abcdef0123456789abcdef"'}):
        with pytest.raises(s3_client.exceptions.ClientError, match="PreconditionFailed"):
            s3_client.put_object(Bucket=local_stack.bucket, Key=key, Body=b"other", **condition)
    s3_client.put_object(Bucket=local_stack.bucket, Key=key, Body=b"again", IfMatch=first)


def test_gcs_emulator_write_read(gcs_client, local_stack):
    blob = gcs_client.bucket(local_stack.bucket).blob(f"probe/{uuid.uuid4().hex}.txt")
    blob.upload_from_string(b"hello riverbeam")
    assert blob.download_as_bytes() == b"hello riverbeam"


@pytest.mark.beam
def test_beam_gcs_filesystem_on_emulator(beam_gcs):
    pytest.importorskip("apache_beam")
    from apache_beam.io.filesystems import FileSystems

    path = f"gs://{beam_gcs.bucket}/beam-probe/{uuid.uuid4().hex}.txt"
    with FileSystems.create(path) as handle:
        handle.write(b"through beam")
    with FileSystems.open(path) as handle:
        assert handle.read() == b"through beam"
    assert FileSystems.exists(path)
    FileSystems.delete([path])  # a batch request: needs the test-only Content-ID fix
    assert not FileSystems.exists(path)


@pytest.mark.beam
def test_beam_s3_filesystem_on_the_s3_server(local_stack):
    pytest.importorskip("apache_beam")
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.filesystems import configure_filesystems

    configure_filesystems(PipelineOptions([]))  # Beam's S3 options from the standard AWS variables
    path = f"s3://{local_stack.bucket}/beam-probe/{uuid.uuid4().hex}.txt"
    with FileSystems.create(path) as handle:
        handle.write(b"through beam")
    with FileSystems.open(path) as handle:
        assert handle.read() == b"through beam"
    assert [m.path for m in FileSystems.match([path])[0].metadata_list] == [path]
    FileSystems.delete([path])
    assert not FileSystems.exists(path)


def cli(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "riverbeam.cli", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "NO_GCE_CHECK": "true", **(env or {})},
    )  # fmt: skip


@pytest.mark.slow
def test_cli_apache_kafka_up_then_consume_learns_from_it_then_down(tmp_path):
    """``local up --kafka apache``: a real Kafka broker; a job without a bootstrap address in its YAML learns from it."""
    apache_kafka_or_skip()
    import yaml

    from online.config import KafkaConfig
    from online.kafka_clients import create_topic, make_producer
    from tests.online.consume.test_daemon import MODEL, PHISHING, expected_phishing_metrics

    stack = ["--dir", str(tmp_path / "stack"), "--kafka-port", "0", "--gcs-port", "0", "--s3-port", "0"]
    up = cli("local", "up", "--kafka", "apache", *stack)
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        exports = dict(line[len("export "):].split("=", 1) for line in up.stdout.splitlines() if line.startswith("export "))
        override = next(line.split()[0] for line in up.stdout.splitlines() if line.startswith("  RIVERBEAM__KAFKA__BOOTSTRAP_SERVERS="))
        bootstrap = override.split("=", 1)[1]
        exports["RIVERBEAM__KAFKA__BOOTSTRAP_SERVERS"] = bootstrap  # as printed: for this consume only
        assert f"{bootstrap} (Apache Kafka)" in up.stdout
        status = cli("local", "status", "--dir", str(tmp_path / "stack"), "--json")
        kafka = json.loads(status.stdout)["kafka"]
        assert (kafka["broker"], kafka["running"], kafka["accepting"]) == ("apache", True, True)
        assert "kafka.Kafka" in open(f"/proc/{kafka['pid']}/cmdline").read()  # the JVM of Apache Kafka, not Tansu

        create_topic(bootstrap, "events", partitions=1)
        producer = make_producer(KafkaConfig(bootstrap_servers=bootstrap, topic="events"))
        for event in PHISHING[:300]:
            producer.send("events", orjson.dumps(event), partition=0)
        producer.flush()
        producer.close()
        job = {
            "kafka": {"topic": "events", "group_id": "g", "consumer": {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300, "max_poll_interval_ms": 4000}},
            "model": MODEL, "events": {"target": "label"}, "metrics": {"port": None},
            "checkpoint": {"uri": str(tmp_path / "checkpoints"), "every_events": 100},
        }  # fmt: skip
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
        consume = cli("consume", "--config", str(tmp_path / "job.yaml"), "--until-caught-up", "--json", env=exports)
        assert consume.returncode == 0, consume.stderr[-3000:]
        summary = json.loads(consume.stdout.strip().splitlines()[-1])
        unit = summary["units"]["all"]
        assert unit["events_learned"] == 300
        assert unit["metrics"] == expected_phishing_metrics(PHISHING[:300])
    finally:
        down = cli("local", "down", "--dir", str(tmp_path / "stack"))
    assert down.returncode == 0 and "kafka" in down.stdout
    assert not _running(kafka["pid"])
    assert cli("local", "status", "--dir", str(tmp_path / "stack")).returncode == 1


@pytest.mark.slow
def test_apache_kafka_keeps_its_topics_on_disk_across_down_and_up(tmp_path):
    apache_kafka_or_skip()
    from online.config import KafkaConfig
    from online.kafka_clients import create_topic, make_producer, read_records

    stack = LocalStack(tmp_path, kafka_port=0, gcs_port=0, kafka="apache")
    bootstrap = stack.up().bootstrap_servers
    try:
        config = KafkaConfig(bootstrap_servers=bootstrap, topic="kept")
        create_topic(bootstrap, "kept", partitions=1)
        producer = make_producer(config)
        for i in range(5):
            producer.send("kept", b"%d" % i, partition=0)
        producer.flush()
        producer.close()
    finally:
        assert stack.down() == ["gcs", "kafka"]
    again = LocalStack(tmp_path, kafka_port=0, gcs_port=0, kafka="apache")
    settings = again.up()
    try:
        values = [r.value for r in read_records(KafkaConfig(bootstrap_servers=settings.bootstrap_servers, topic="kept"), "kept")]
        assert values == [b"0", b"1", b"2", b"3", b"4"]
    finally:
        again.down()


def test_a_running_stack_keeps_its_broker_and_an_unknown_one_is_refused(tmp_path):
    (tmp_path / "stack.json").write_text('{"kafka": "apache", "kafka_port": 1, "gcs_port": 2, "kafka_controller_port": 3}')
    with pytest.raises(UsageError, match="runs the apache broker; run 'riverbeam local down' before choosing tansu"):
        LocalStack(tmp_path, kafka="tansu")
    assert LocalStack(tmp_path).kafka.kind == "apache" and LocalStack(tmp_path).kafka.controller_port == 3
    with pytest.raises(UsageError, match="unknown Kafka broker 'redpanda'"):
        LocalStack(tmp_path / "other", kafka="redpanda")


def test_without_java_apache_kafka_is_one_line_and_starts_nothing(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"PATH": str(empty), "JAVA_HOME": "", "RIVERBEAM_CACHE_DIR": str(tmp_path / "cache")}
    for args in (["local", "up", "--kafka", "apache", "--dir", str(tmp_path / "stack"), "--kafka-port", "0", "--gcs-port", "0", "--s3-port", "0"], ["local", "fetch"]):
        result = cli(*args, env=env)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == ["riverbeam: error: Java 17+ is needed and 'java' is not on PATH (nor in $JAVA_HOME): install a JDK 17"]
    assert not (tmp_path / "stack" / "kafka.pid").exists() and not (tmp_path / "stack" / "gcs.pid").exists()


@pytest.mark.java
def test_a_cluster_id_starting_with_a_dash_formats_the_storage(tmp_path):
    """One random KRaft cluster id in 64 starts with "-" (URL-safe base64): the storage tool must not read it as an option."""
    from riverbeam.local_stack import ApacheKafkaBroker, free_port, new_cluster_id

    apache_kafka_or_skip()
    broker = ApacheKafkaBroker("kafka", tmp_path, free_port(), free_port(), cluster_id="-" + new_cluster_id()[1:])
    broker.prepare()  # formats the storage; raised LocalStackError ("--cluster-id: expected one argument") before
    assert (broker.data_dir / "meta.properties").read_text().count(f"cluster.id={broker.cluster_id}") == 1
