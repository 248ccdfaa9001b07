"""A user's short job pays for no heavy import it does not use (issue 30 item 4).

Each command runs for real in its own process; at exit the process writes which heavy modules it
imported. TensorFlow, Beam and TFX never load for consume, replay, predict or serve; pandas only
for mini-batch learning (River's ``learn_many`` takes a DataFrame).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest
import yaml

from tests.online.consume.test_daemon import job_config, produce
from tests.online.test_readers import phishing_events, write_jsonl

HEAVY = ("tensorflow", "tensorflow_transform", "apache_beam", "tfx_bsl", "pandas")
MODEL = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy"]}


def probe(out) -> list[str]:
    """``python -c`` code that runs the riverbeam command given after it and records its heavy imports at exit."""
    return [sys.executable, "-c",
            f"import atexit, sys; atexit.register(lambda: open({str(out)!r}, 'w').write(__import__('json').dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))); "
            "from riverbeam.cli import main; sys.exit(main())"]


def heavy_imports(out) -> list[str]:
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """Phishing as JSON lines, a replay job on it, and the checkpoints replay learned."""
    folder = tmp_path_factory.mktemp("startup")
    data = folder / "phishing.jsonl"
    write_jsonl(data, phishing_events())
    config = folder / "job.yaml"
    config.write_text(yaml.safe_dump({"model": MODEL, "events": {"target": "label"}, "checkpoint": {"uri": str(folder / "checkpoints")}}))
    out = folder / "replay.json"
    result = subprocess.run([*probe(out), "replay", "--config", str(config), "--input", str(data)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return folder, data, config, out


def test_replay_imports_nothing_heavy(learned):
    *_, out = learned
    assert heavy_imports(out) == []


def test_mini_batch_replay_imports_pandas_only(learned, tmp_path):
    folder, data, _, _ = learned
    config = tmp_path / "batch.yaml"
    config.write_text(yaml.safe_dump({"model": {**MODEL, "batch": {"size": 100}}, "events": {"target": "label"}}))
    out = tmp_path / "imports.json"
    result = subprocess.run([*probe(out), "replay", "--config", str(config), "--input", str(data), "--mode", "evaluate"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert heavy_imports(out) == ["pandas"]  # the probe sees what it should: pandas is there when it is used


def test_predict_imports_nothing_heavy(learned, tmp_path):
    folder, data, _, _ = learned
    out = tmp_path / "imports.json"
    first = data.read_text().splitlines()[0]
    result = subprocess.run([*probe(out), "predict", "--checkpoint", str(folder / "checkpoints")], input=first + "\n", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "prediction" in result.stdout and heavy_imports(out) == []


def test_serve_imports_nothing_heavy(learned, tmp_path):
    from tests.online.serving_support import free_port

    folder, *_ = learned
    out = tmp_path / "imports.json"
    port = free_port()
    process = subprocess.Popen([*probe(out), "serve", "--checkpoint", str(folder / "checkpoints"), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.poll() is not None else "not ready"
                time.sleep(0.3)
        body = orjson.dumps(phishing_events()[0])
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", data=body, headers={"Content-Type": "application/json"})
        assert "prediction" in json.loads(urllib.request.urlopen(request, timeout=10).read())
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert heavy_imports(out) == []


def test_consume_imports_nothing_heavy(tmp_path, kafka_bootstrap, topic):
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in phishing_events()[:200]])
    out = tmp_path / "imports.json"
    config = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python")
    result = subprocess.run([*probe(out), "consume", "--config", config, "--until-caught-up", "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["events_learned"] == 200
    assert heavy_imports(out) == []
