"""Helpers for the serving and dashboard tests: real processes on loopback, reaped after each test."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid

import httpx
import yaml
from river import datasets

from online.config import KafkaConfig
from online.kafka_clients import create_topic, make_producer

MODEL = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy", "LogLoss"]}
PHISHING = [{**x, "label": y} for x, y in datasets.Phishing()]
ENV = dict(os.environ, NO_GCE_CHECK="true", PYTHONUNBUFFERED="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Started processes, killed (and waited for) when the test ends, whatever happened."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, args: list[str], log_path, env: dict | None = None) -> subprocess.Popen:
        log = open(log_path, "a")
        process = subprocess.Popen([sys.executable, "-m", "riverbeam.cli", *args], stdout=log, stderr=subprocess.STDOUT, env={**ENV, **(env or {})})
        self.started.append(process)
        return process

    def close(self) -> None:
        while self.started:
            process = self.started.pop()
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


def wait_until(condition, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def get_ok(url: str, headers: dict | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_serve(processes: Processes, tmp_path, config: dict, env: dict | None = None, ready: bool = True) -> tuple[subprocess.Popen, str, object]:
    """`riverbeam serve --config` on a free loopback port; returns (process, base URL, log path)."""
    port = free_port()
    path = tmp_path / f"serve-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / f"serve-{port}.log"
    process = processes.start(["serve", "--config", str(path), "--host", "127.0.0.1", "--port", str(port)], log_path, env)
    base = f"http://127.0.0.1:{port}"

    def up():
        if process.poll() is not None:
            raise AssertionError(f"serve exited {process.returncode}: {log_path.read_text()[-3000:]}")
        return get_ok(base + ("/readyz" if ready else "/healthz"))

    wait_until(up, timeout=60, what=f"serve on {base}")
    return process, base, log_path


def produce(bootstrap: str, topic: str, events: list[dict]) -> None:
    create_topic(bootstrap, topic, partitions=1)
    producer = make_producer(KafkaConfig(bootstrap_servers=bootstrap, topic=topic))
    for event in events:
        producer.send(topic, json.dumps(event).encode(), partition=0)
    producer.flush()
    producer.close()


def daemon_config(tmp_path, bootstrap: str, topic: str, metrics_port: int | None = None, **checkpoint) -> str:
    config = {
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "group_id": f"g-{uuid.uuid4().hex[:8]}", "poll_timeout_ms": 200,
                  "consumer": {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300, "max_poll_interval_ms": 4000}},
        "model": {**MODEL, "drift": {"detector": "drift.ADWIN"}},
        "events": {"target": "label"},
        "checkpoint": {"uri": str(tmp_path / "checkpoints"), "every_events": 300, "every_seconds": 1, "lease_seconds": 3, **checkpoint},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
    }  # fmt: skip
    path = tmp_path / "consumer.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def metric_names(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition offers (samples, and declared families with their suffixes)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            names.add(name)
            names.update({"counter": [name + "_total"], "histogram": [name + s for s in ("_bucket", "_sum", "_count")]}.get(kind, []))
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names
