"""Shared fixtures: the real local Kafka brokers, GCS emulator and S3 server, started once per session.

They use the same launcher as ``riverbeam local up`` (`riverbeam.local_stack`).

Two brokers: Tansu (in the local stack, from PyPI) serves every test that asks for
``kafka_bootstrap``; a test marked ``@pytest.mark.both_brokers`` runs once on Tansu and once on
Apache Kafka 4 (``apache_kafka``: KRaft, Java 17, its jars fetched from Maven Central by
`core.maven` into ``~/.cache/riverbeam``). Where Java, Maven or the jars are missing the Apache
Kafka cases skip with the reason; with ``RIVERBEAM_TESTS_REQUIRE_APACHE_KAFKA=1`` (CI) they fail.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

# Never let google-auth probe the GCE metadata server from a test.
os.environ["NO_GCE_CHECK"] = "true"
os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "riverbeam-local")

from core.maven import JavaToolError  # noqa: E402
from online.config import KAFKA_CLIENTS  # noqa: E402
from riverbeam.local_stack import ApacheKafkaBroker, ApacheKafkaCluster, LocalService, LocalStack, fetch_apache_kafka, free_port  # noqa: E402

BROKERS = ["tansu", "apache"]


def pytest_configure(config):
    config.addinivalue_line("markers", "both_brokers(tansu_clients=None): run on Tansu and on Apache Kafka (a guarantee's test); "
                            "with tansu_clients, Tansu with those clients only and Apache Kafka with every client")
    check_xdist_groups_hold(config)


def check_xdist_groups_hold(config) -> None:
    """Refuse to run where ``--dist loadgroup`` would ignore the ``xdist_group`` marks: the tests they keep apart would run at once.

    pytest-xdist 3.8 groups by writing ``item._nodeid`` on the workers; pytest 9.2 derives node ids from a
    structured id, so the mark silently does nothing (pytest-dev/pytest-xdist#1386). The README stories,
    which share the default ports, then ran on both workers and one found another's broker on 9092. Hence
    ``pytest<9.2`` in setup.py and constraints.txt; this check says so where another pytest got installed.
    """
    from packaging.version import Version

    import xdist

    if config.getoption("dist", "no") == "loadgroup" and Version(pytest.__version__) >= Version("9.2") and Version(xdist.__version__) <= Version("3.8.0"):
        raise pytest.UsageError(f"--dist loadgroup ignores xdist_group marks with pytest {pytest.__version__} and pytest-xdist {xdist.__version__} "
                                "(pytest-dev/pytest-xdist#1386): pip install -c constraints.txt -e '.[dev]' installs the pinned pytest")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """The slow tests first (README stories, Flink, broker faults, kill -9 runs), in their own order otherwise:
    on CI's two workers (pytest-xdist) the longest work starts at once, so both workers end together."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_generate_tests(metafunc):
    """``both_brokers``: the test once per broker. ``both_brokers(tansu_clients=[...])`` on a test that takes
    ``client``: Apache Kafka with every client (`KAFKA_CLIENTS`), Tansu with the clients named only (the heaviest
    kill -9 tests run Tansu, the demo's broker, with its default client: the proof is Apache Kafka's)."""
    marker = metafunc.definition.get_closest_marker("both_brokers")
    if not marker or "kafka_broker" not in metafunc.fixturenames:
        return
    tansu_clients = marker.kwargs.get("tansu_clients")
    if tansu_clients is None or "client" not in metafunc.fixturenames:
        metafunc.parametrize("kafka_broker", BROKERS, indirect=True, scope="session")
        return
    pairs = [("tansu", client) for client in tansu_clients] + [("apache", client) for client in KAFKA_CLIENTS]
    metafunc.parametrize(("kafka_broker", "client"), pairs, indirect=["kafka_broker"], scope="session", ids=[f"{b}-{c}" for b, c in pairs])


def apache_kafka_or_skip() -> list[Path]:
    """Apache Kafka's class path, or a skip naming what is missing (a failure where CI requires it)."""
    try:
        return fetch_apache_kafka()
    except JavaToolError as error:
        if os.environ.get("RIVERBEAM_TESTS_REQUIRE_APACHE_KAFKA") == "1":
            pytest.fail(f"Apache Kafka is required here (RIVERBEAM_TESTS_REQUIRE_APACHE_KAFKA=1): {error}")
        pytest.skip(f"Apache Kafka is not available: {error}")


@pytest.fixture(scope="session")
def running_stack(tmp_path_factory) -> LocalStack:
    """The session's `LocalStack` itself (its services' pids, for tests that stall one)."""
    stack = LocalStack(tmp_path_factory.mktemp("local-stack"), kafka_port=0, gcs_port=0, s3_port=0)
    stack.up()
    yield stack
    stack.down()


@pytest.fixture(scope="session")
def local_stack(running_stack):
    """Settings of a running broker, GCS emulator and S3 server on free ports; stopped after the session.

    ``STORAGE_EMULATOR_HOST`` and the standard AWS variables (``AWS_ENDPOINT_URL``, keys, region)
    point this process and its children at the stack.
    """
    settings = running_stack.settings
    names = ["STORAGE_EMULATOR_HOST"] + [name for name in settings.environment() if name.startswith("AWS_")]
    previous = {name: os.environ.get(name) for name in names}
    os.environ.update({name: settings.environment()[name] for name in names})
    yield settings
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory) -> ApacheKafkaBroker:
    """A running Apache Kafka 4 broker (KRaft, one node) on a free port; stopped after the session."""
    apache_kafka_or_skip()
    broker = ApacheKafkaBroker("kafka", tmp_path_factory.mktemp("apache-kafka"), free_port(), free_port())
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def apache_kafka_cluster(tmp_path_factory) -> ApacheKafkaCluster:
    """Three Apache Kafka 4 nodes (each a broker and a KRaft controller voter) on free loopback ports,
    topics replicated 3 times with ``min.insync.replicas`` 2; one cluster per test module (its tests
    kill and restart nodes), stopped after it."""
    apache_kafka_or_skip()
    cluster = ApacheKafkaCluster(tmp_path_factory.mktemp("apache-kafka-cluster"), size=3)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def kafka_broker(request) -> LocalService:
    """The broker under test: Tansu, or each of Tansu and Apache Kafka for a test marked ``both_brokers``.

    Its ``pid()`` is the broker's process (for tests that stall it); ``kind`` is ``tansu`` or ``apache``.
    """
    kind = getattr(request, "param", "tansu")
    return request.getfixturevalue("running_stack").kafka if kind == "tansu" else request.getfixturevalue("apache_kafka")


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker, local_stack) -> str:
    """``host:port`` of the broker under test (`kafka_broker`); the local stack's environment is set."""
    return f"127.0.0.1:{kafka_broker.port}"


@pytest.fixture
def topic() -> str:
    """A fresh topic name for one test."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def gcs_client(local_stack):
    """A google-cloud-storage client on the emulator, anonymous, fixed project."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="riverbeam-local", credentials=AnonymousCredentials(), client_options={"api_endpoint": local_stack.storage_emulator_host})


@pytest.fixture
def gcs_prefix(local_stack) -> str:
    """A fresh ``gs://bucket/prefix`` on the emulator for one test."""
    return f"gs://{local_stack.bucket}/test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def s3_prefix(local_stack) -> str:
    """A fresh ``s3://bucket/prefix`` on the local S3 server for one test."""
    return f"s3://{local_stack.bucket}/test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def s3_client(local_stack):
    """A boto3 S3 client on the local S3 server (the one riverbeam itself uses)."""
    from core.s3 import s3_client

    return s3_client()


@pytest.fixture
def beam_gcs(local_stack, monkeypatch):
    """Test-only: let Beam's gs:// filesystem talk to the emulator.

    Beam waits ~20 s for credential discovery before going anonymous: mark its cached
    credentials as initialised-and-none. The emulator needs a Content-ID header on every part
    of a batch request, which google-cloud-storage does not send: add it (never in the product).
    """
    from apache_beam.internal.gcp import auth
    from google.cloud.storage import batch as gcs_batch

    monkeypatch.setattr(auth._Credentials, "_credentials_init", True, raising=False)
    monkeypatch.setattr(auth._Credentials, "_credentials", None, raising=False)
    original_init = gcs_batch.MIMEApplicationHTTP.__init__
    counter = iter(range(1 << 62))

    def init_with_content_id(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self["Content-ID"] = f"<part-{next(counter)}>"

    monkeypatch.setattr(gcs_batch.MIMEApplicationHTTP, "__init__", init_with_content_id)
    yield local_stack


def schema_registry_or_skip() -> None:
    """Java 21 and the schema registry's distribution are here, or a skip naming what is missing (a failure where CI requires it)."""
    from riverbeam.local_stack import fetch_schema_registry, registry_java

    try:
        registry_java()
        fetch_schema_registry()
    except JavaToolError as error:
        if os.environ.get("RIVERBEAM_TESTS_REQUIRE_SCHEMA_REGISTRY") == "1":
            pytest.fail(f"the schema registry is required here (RIVERBEAM_TESTS_REQUIRE_SCHEMA_REGISTRY=1): {error}")
        pytest.skip(f"the schema registry is not available: {error}")


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory):
    """A running schema registry (Apicurio Registry 3.3, in memory) on a free loopback port; stopped after the session.

    Its ``url`` is the Confluent-compatible API (what ``kafka.schema_registry.url`` takes). It
    needs Java 21+ and Maven (its distribution is fetched from Maven Central into the cache once):
    without them the tests that use it skip with the reason, or fail with
    ``RIVERBEAM_TESTS_REQUIRE_SCHEMA_REGISTRY=1`` (CI).
    """
    from riverbeam.local_stack import SchemaRegistry

    schema_registry_or_skip()
    registry = SchemaRegistry("schema-registry", tmp_path_factory.mktemp("schema-registry"), free_port())
    registry.start()
    yield registry
    registry.stop()


@pytest.fixture
def manifest_bucket(gcs_client):
    """The deploy manifests' ``gs://my-bucket`` on the GCS emulator: a job's start (and ``config check``)
    asks whether its checkpoint bucket exists, and the tests answer from the emulator, never from GCS."""
    from google.api_core.exceptions import Conflict

    try:
        gcs_client.create_bucket("my-bucket")
    except Conflict:
        pass
    return "my-bucket"
