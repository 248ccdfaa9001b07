"""A wrong run never looks like a good one: learning nothing, or refusing most events, exits 1 in one line.

The summary is still printed (``--json`` carries the reason under ``failure``), then one line on
stderr names the likely cause; the Python API raises `core.errors.RunFailed` with the summary.
"""

from __future__ import annotations

import json
import subprocess
import sys

import orjson
import pytest
import yaml

import riverbeam
from core.errors import RunFailed
from tests.online.consume.test_daemon import job_config, produce
from tests.online.test_readers import phishing_events, write_jsonl

MODEL = {"pipeline": [{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], "metrics": ["Accuracy", "LogLoss"]}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "riverbeam.cli", *args], capture_output=True, text=True, timeout=180)


def replay_config(tmp_path, **events) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"model": MODEL, "events": {"target": "label", **events}}))
    return str(path)


@pytest.fixture(scope="module")
def phishing(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "phishing.jsonl"
    write_jsonl(path, phishing_events())
    return str(path)


def test_a_misspelled_target_fails_in_one_line_naming_it(tmp_path, phishing):
    result = run("replay", "--config", replay_config(tmp_path, target="lable"), "--input", phishing, "--mode", "evaluate", "--json")
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["events_seen"] == 1250 and summary["events_learned"] == 0
    assert summary["failure"].startswith("events.target: 'lable' is in none of 1,250 events")
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("riverbeam: error: events.target: 'lable' is in none of 1,250 events") and "Traceback" not in result.stderr


def test_a_run_that_dead_letters_every_event_fails_with_the_first_reason(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text("{broken\n" * 20)
    for mode in ("learn", "evaluate"):
        result = run("replay", "--config", replay_config(tmp_path), "--input", str(path), "--mode", mode, "--checkpoint-uri", str(tmp_path / mode))
        assert result.returncode == 1, (mode, result.stderr)
        assert "every one of 20 events was dead-lettered (first reason: not JSON" in result.stderr.strip().splitlines()[-1]
        assert "FAILED: every one of 20 events" in result.stdout  # the summary says it too
    dry = run("replay", "--config", replay_config(tmp_path), "--input", str(path), "--dry-run")
    assert dry.returncode == 1 and "every one of 20 events was dead-lettered" in dry.stderr


def test_dead_letters_past_the_configured_fraction_fail_and_below_it_pass(tmp_path):
    events = phishing_events()[:100]
    lines = [orjson.dumps(e).decode() if i % 10 < 4 else "{broken" for i, e in enumerate(events)]  # 60 of 100 broken
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    failed = run("replay", "--config", replay_config(tmp_path), "--input", str(path), "--mode", "evaluate", "--json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["failure"].startswith("60 of 100 events (60%) were dead-lettered, more than events.max_dead_letter_fraction 0.5")
    allowed = run("replay", "--config", replay_config(tmp_path, max_dead_letter_fraction=0.7), "--input", str(path), "--mode", "evaluate", "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert "failure" not in json.loads(allowed.stdout) and json.loads(allowed.stdout)["events_learned"] == 40


def test_an_unlabelled_run_with_delayed_labels_is_not_a_failure(tmp_path, phishing):
    """With events.id the labels may come in a later run: predicting only is legitimate there."""
    unlabelled = tmp_path / "unlabelled.jsonl"
    write_jsonl(unlabelled, [{**{k: v for k, v in e.items() if k != "label"}, "id": i} for i, e in enumerate(phishing_events()[:50])])
    result = run("replay", "--config", replay_config(tmp_path, id="id", exclude=["id"]), "--input", str(unlabelled), "--mode", "evaluate")
    assert result.returncode == 0, result.stderr


def test_the_python_api_raises_with_the_summary(tmp_path, phishing):
    from river import linear_model

    with pytest.raises(RunFailed, match=r"events.target: 'lable' is in none of 1,250 events") as raised:
        riverbeam.replay(linear_model.LogisticRegression(), [phishing], target="lable")
    assert raised.value.summary.counts["events_learned"] == 0


def test_consume_with_a_misspelled_target_exits_1_after_its_summary(tmp_path, kafka_bootstrap, topic):
    produce(kafka_bootstrap, topic, [orjson.dumps(e) for e in phishing_events()[:300]])
    config = job_config(tmp_path, kafka_bootstrap, topic, "kafka-python", events={"target": "lable"})
    result = run("consume", "--config", config, "--until-caught-up", "--json")
    assert result.returncode == 1, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["events_seen"] == 300 and summary["events_learned"] == 0
    assert summary["failure"].startswith("events.target: 'lable' is in none of 300 events")
    assert result.stderr.strip().splitlines()[-1].startswith("riverbeam: error: events.target: 'lable'")
