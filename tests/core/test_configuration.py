"""Hostile configuration files: every mistake is one line naming where it is, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core.configuration import load_config, read_yaml
from core.errors import ConfigError
from online.config import ConsumeJobConfig

ENV = dict(os.environ, NO_GCE_CHECK="true")
CONSUME = "kafka: {topic: events}\ncheckpoint: {uri: /tmp/ck}\nevents: {target: label}\n"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "riverbeam.cli", *args], capture_output=True, text=True, env=ENV, timeout=120)


@pytest.mark.parametrize(
    "document, message",
    [
        (CONSUME + "model: &m {pipeline: [{linear_model.LogisticRegression: *m}]}\n", "model.pipeline[0].linear_model.LogisticRegression.pipeline"),
        ("model: " + "[" * 20_000 + "]" * 20_000 + "\n", "the document nests too deep to read"),
    ],
    ids=["self-referencing-alias", "20000-deep-list"],
)
def test_a_document_that_nests_for_ever_is_one_line(tmp_path, document, message):
    path = tmp_path / "job.yaml"
    path.write_text(document)
    with pytest.raises(ConfigError, match="nests"):
        load_config(path, ConsumeJobConfig)
    for command in (["config", "check", str(path), "--job", "consume"], ["consume", "--config", str(path)]):
        done = run_cli(*command)
        lines = done.stderr.splitlines()
        assert done.returncode == 2 and "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-2000:]
        assert lines[0].startswith(f"riverbeam: error: {path}: ") and message in lines[0], lines[0]


def test_duplicate_keys_are_errors_naming_each_key_path_at_once(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "kafka:\n  topic: events\n  group_id: a\n  group_id: b\n"
        "checkpoint: {uri: /tmp/ck, every_events: 10, every_events: 20}\n"
        "model:\n  pipeline: [{linear_model.LogisticRegression: {l2: 0.1, l2: 0.0}}]\n"
        "events: {target: label}\n"
        "kafka:\n  topic: other\n"
    )
    with pytest.raises(ConfigError) as error:
        read_yaml(path)
    assert [(e.path, e.message.split(";")[0]) for e in error.value.errors] == [
        ("checkpoint.every_events", "given twice (lines 5 and 5)"),
        ("kafka", "given twice (lines 1 and 9)"),
        ("kafka.group_id", "given twice (lines 3 and 4)"),
        ("model.pipeline[0].linear_model.LogisticRegression.l2", "given twice (lines 7 and 7)"),
    ]
    done = run_cli("config", "check", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 4, done.stderr
    assert f"riverbeam: error: {path}: kafka.group_id: given twice (lines 3 and 4); YAML would keep only the last: remove one" in done.stderr.splitlines()


def test_a_merge_key_overridden_is_not_a_duplicate(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("base: &base {topic: a, group_id: g}\nkafka:\n  <<: *base\n  topic: b\n")
    assert read_yaml(path)["kafka"] == {"topic": "b", "group_id": "g"}
