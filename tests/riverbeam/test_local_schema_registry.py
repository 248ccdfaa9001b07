"""``riverbeam local up --schema-registry``: the local stack's schema registry (Apicurio Registry) on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

from riverbeam.local_stack import LocalStack, free_port
from tests.conftest import schema_registry_or_skip


def listening_addresses(pid: int) -> set[str]:
    """The local addresses `pid` listens on (from ``ss``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if f"pid={pid}," in line}


def running(pid: int) -> bool:
    """Whether `pid` runs (an exited process waiting to be reaped, state Z, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_local_up_with_a_schema_registry_serves_the_confluent_api_on_loopback_only_and_down_stops_it(tmp_path):
    schema_registry_or_skip()
    directory = tmp_path / "stack"
    env = dict(os.environ, NO_GCE_CHECK="true")
    command = [sys.executable, "-m", "riverbeam.cli", "local"]
    ports = ["--kafka-port", "0", "--gcs-port", "0", "--s3-port", "0", "--schema-registry-port", str(free_port())]
    up = subprocess.run([*command, "up", "--dir", str(directory), "--schema-registry", *ports], capture_output=True, text=True, env=env, timeout=400)
    pid = None
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        status = json.loads(subprocess.run([*command, "status", "--dir", str(directory), "--json"], capture_output=True, text=True, env=env, check=True).stdout)
        registry = status["schema-registry"]
        pid = registry["pid"]
        assert registry["running"] and registry["accepting"]
        url = f"http://127.0.0.1:{registry['port']}/apis/ccompat/v7"
        assert f"kafka.schema_registry:   {{url: {url}}}" in up.stdout
        assert LocalStack(directory).settings.schema_registry_url == url
        with urllib.request.urlopen(f"{url}/subjects", timeout=10) as response:
            assert json.loads(response.read()) == []
        assert listening_addresses(registry["pid"]) <= {"127.0.0.1", "[::ffff:127.0.0.1]"}  # its management interface too
    finally:
        down = subprocess.run([*command, "down", "--dir", str(directory)], capture_output=True, text=True, env=env, timeout=120)
    assert "schema-registry" in down.stdout
    assert pid is not None and not running(pid)


def test_local_fetch_with_the_schema_registry_names_where_it_is_cached():
    schema_registry_or_skip()
    from riverbeam.local_stack import fetch_schema_registry

    result = subprocess.run([sys.executable, "-m", "riverbeam.cli", "local", "fetch", "--schema-registry"], capture_output=True, text=True, timeout=900)

    assert result.returncode == 0, result.stderr[-2000:]
    assert f"The schema registry is in the cache: {fetch_schema_registry()}" in result.stdout
