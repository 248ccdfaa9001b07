"""The Beam pipelines on a real, embedded Flink (Beam's FlinkRunner, ``--parallelism=2``).

The job server and Kafka's expansion service come from riverbeam's pinned Beam Java parts
(`pipelines.java_services`, fetched with Maven by `core.maven` and cached). Every job runs through
the CLI in a subprocess, as a user runs it: the JVMs it starts end with it. Skipped, with the
reason, where Java 17 or Maven is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


def riverbeam(*args: str, timeout: float = 480) -> subprocess.CompletedProcess:
    """Run ``riverbeam ARGS`` in a subprocess (stderr kept for the assertion messages)."""
    env = {**os.environ, "NO_GCE_CHECK": "true"}
    return subprocess.run([sys.executable, "-m", "riverbeam.cli", *args], capture_output=True, text=True, env=env, timeout=timeout)


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

    job = riverbeam("preprocess", "--config", flink_config, "--runner=FlinkRunner", "--parallelism=2", "--json")
    assert job.returncode == 0, job.stderr[-3000:]
    summary = json.loads(job.stdout.strip().splitlines()[-1])
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
